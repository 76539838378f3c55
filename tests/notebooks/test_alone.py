"""Every chapter runs alone, as a reader downloads it, and means the same with torch's generic CPU kernels.

Each notebook the toc lists is copied by itself into an empty folder and checked there by nbval in strict
mode (every stored output re-derived), with the package installed from a wheel of this checkout into a
folder of its own (so only what the wheel ships is found: no ``src/``, no ``book/``, no ``../`` paths),
and with ``ATEN_CPU_CAPABILITY=default``, torch's kernels for a CPU without vector instructions, which
round like a different machine. Where this CPU has more than AVX2 (AVX-512), it runs once more with
``ATEN_CPU_CAPABILITY=avx2``, the kernels the book was executed with. ``make test`` runs this after the
notebooks' native nbval run; ``make check NB=book/X.ipynb`` runs both for one chapter.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import booktools  # noqa: E402

NOTEBOOKS = booktools.chapters(ROOT)


def native_capability() -> str:
    """The CPU kernels torch picks on this machine (``AVX2``, ``AVX512``, ...), or ``DEFAULT``."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                               if k != "ATEN_CPU_CAPABILITY"})
    return out.stdout.strip().upper() or "DEFAULT"


def capabilities() -> list[str]:
    """``default`` everywhere; ``avx2`` too where the CPU has more than AVX2."""
    return ["default"] + (["avx2"] if native_capability().startswith("AVX512") else [])


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> pathlib.Path:
    """A folder holding the package as a wheel of this checkout installs it, not editable."""
    base = tmp_path_factory.mktemp("installed")
    # built from a copy of what the package is made of, so that nothing left in a build/ folder here gets in
    source = base / "source"
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    try:
        import setuptools  # noqa: F401
        isolation = ["--no-build-isolation"]   # build with the environment's setuptools: no network needed
    except ImportError:
        isolation = []
    quiet = ["-q", "--disable-pip-version-check"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", *quiet, "--no-deps", *isolation, "-w", str(base / "wheel"),
                    str(source)], check=True, capture_output=True)
    wheel, = (base / "wheel").glob("whatruns-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", *quiet, "--no-deps", "--no-index", "--target",
                    str(base / "site"), str(wheel)], check=True, capture_output=True)
    return base / "site"


@pytest.mark.parametrize("capability", capabilities())
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_runs_alone(installed, tmp_path, notebook, capability):
    folder = tmp_path / "reader"
    folder.mkdir()
    shutil.copy(notebook, folder / notebook.name)
    env = {**os.environ, "PYTHONPATH": str(installed), "ATEN_CPU_CAPABILITY": capability,
           "PYTHONDONTWRITEBYTECODE": "1"}
    probe = subprocess.run([sys.executable, "-c", "import torch, whatruns; "
                            "print(torch.backends.cpu.get_cpu_capability()); print(whatruns.__file__)"],
                           cwd=folder, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert probe[0] == capability.upper(), f"torch ignored ATEN_CPU_CAPABILITY={capability}: {probe[0]}"
    assert pathlib.Path(probe[1]).is_relative_to(installed), f"not the installed package: {probe[1]}"
    r = subprocess.run([sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", "-p", "no:cacheprovider",
                        "-q", "--color=no", notebook.name], cwd=folder, env=env, capture_output=True, text=True)
    assert r.returncode == 0, f"{notebook.name} alone, ATEN_CPU_CAPABILITY={capability}:\n{r.stdout[-6000:]}{r.stderr[-2000:]}"
