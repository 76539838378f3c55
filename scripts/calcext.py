"""Sphinx extension for the calculator page (book/calculator.md), loaded by ``_config.yml``'s local_extensions.

- ``{calculator}``: the calculator's form and result tables. The page's script starts a web worker that loads
  Pyodide and installs a wheel of this repository's ``whatruns``, then calls :mod:`whatruns.calc`: the numbers
  are computed by the library itself, in the browser.
- At the start of the build, :func:`build_wheel` writes that wheel (pure Python, built from ``src/`` with the
  standard library, byte for byte the same for the same sources), and it goes with Pyodide (from
  ``node_modules/``, where ``npm ci`` put the version ``package.json`` pins) and the page's script, worker and
  stylesheet to ``_static/calculator/``. The wheel lies in a folder named by its hash and Pyodide in one named by
  its version: a browser keeps both in its cache from one page or visit to the next, and never runs a stale copy.
  Nothing is fetched from another host, by the build or by the page.

A missing Pyodide is a warning, so ``make book`` (``-W``) fails; ``make book`` runs ``npm ci`` first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import shutil
import tomllib
import zipfile

from docutils import nodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

ROOT = pathlib.Path(__file__).resolve().parent.parent
ASSETS = pathlib.Path(__file__).resolve().parent / "calculator"
PYODIDE = ROOT / "node_modules" / "pyodide"
# What the page needs of the npm package: the loader, the WebAssembly runtime and the standard library. No
# package of Pyodide's own is loaded (whatruns needs none), so their lock entries point nowhere it goes.
PYODIDE_FILES = ("pyodide.mjs", "pyodide.asm.mjs", "pyodide.asm.wasm", "python_stdlib.zip", "pyodide-lock.json",
                 "package.json", "README.md")  # package.json and README.md: its version and licence (MPL-2.0)
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


# --- the wheel ----------------------------------------------------------------------------------------------------

def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(out_dir: pathlib.Path, root: pathlib.Path = ROOT) -> pathlib.Path:
    """A pure-Python wheel (PEP 427) of the package in ``root/src``, as ``pyproject.toml`` describes it: every
    module, its JSON data (the catalog, the accelerators), metadata with the declared dependencies (which the page does not install:
    the counting path imports neither torch nor numpy). Entries are sorted and dated 1980, so the same sources
    give the same bytes."""
    meta = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    name, version = meta["name"], meta["version"]
    src = root / "src" / name
    files = sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and p.suffix in (".py", ".json"))
    dist = f"{name}-{version}.dist-info"
    metadata = "\n".join(
        ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", f"Summary: {meta.get('description', '')}",
         f"Requires-Python: {meta.get('requires-python', '')}"]
        + [f"Requires-Dist: {d}" for d in meta.get("dependencies", [])]) + "\n"
    scripts = meta.get("scripts", {})
    entries = [(f"{name}/{p.relative_to(src).as_posix()}", p.read_bytes()) for p in files]
    entries += [(f"{dist}/METADATA", metadata.encode()),
                (f"{dist}/WHEEL", b"Wheel-Version: 1.0\nGenerator: whatruns scripts/calcext.py\n"
                                  b"Root-Is-Purelib: true\nTag: py3-none-any\n")]
    if scripts:
        entries.append((f"{dist}/entry_points.txt",
                        ("[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())).encode()))
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in entries) + f"{dist}/RECORD,,\n"
    entries.append((f"{dist}/RECORD", record.encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in entries:
            info = zipfile.ZipInfo(path, ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            z.writestr(info, data)
    return wheel


def pyodide_version() -> str | None:
    """The Pyodide version ``npm ci`` installed, or None; checked against the one ``package.json`` pins."""
    pkg = PYODIDE / "package.json"
    if not pkg.exists():
        return None
    return json.loads(pkg.read_text(encoding="utf-8")).get("version")


def pinned_pyodide() -> str:
    return json.loads((ROOT / "package.json").read_text(encoding="utf-8"))["dependencies"]["pyodide"]


# --- the page -------------------------------------------------------------------------------------------------------

class calculator(nodes.General, nodes.Element):
    """Where the calculator's form goes."""


def _visit_html(self, node):
    self.body.append((ASSETS / "calculator.html").read_text(encoding="utf-8"))
    raise nodes.SkipNode


def _skip(self, node):
    raise nodes.SkipNode


class Calculator(SphinxDirective):
    has_content = False

    def run(self):
        self.env.note_dependency(str(ASSETS / "calculator.html"))
        return [calculator()]


def _copy(src: pathlib.Path, dst: pathlib.Path):
    if dst.exists() and dst.stat().st_size == src.stat().st_size and dst.stat().st_mtime >= src.stat().st_mtime:
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dst)


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _builder_inited(app):
    """Build the wheel and put it, Pyodide and the page's files into ``_static/calculator/`` before any page is
    written (so that Sphinx stamps the page's links to them with their checksums)."""
    app.whatruns_calculator = None
    if app.builder.format != "html":
        return
    found, pinned = pyodide_version(), pinned_pyodide()
    if found != pinned:
        logger.warning(f"the calculator page needs Pyodide {pinned} in node_modules/ (found {found or 'none'}): "
                       "run `npm ci` (make book does)")
    out = pathlib.Path(app.outdir) / "_static" / "calculator"
    for f in ("calculator.js", "worker.mjs", "calculator.css"):
        _copy(ASSETS / f, out / f)
    for stale in [*out.glob("wheel"), *out.glob("pyodide-*")]:
        if stale.name != f"pyodide-{pinned}":
            shutil.rmtree(stale)  # an older wheel or runtime
    stage = pathlib.Path(app.outdir).parent / "calculator"
    wheel = build_wheel(stage)
    wheel_url = f"wheel/{_digest(wheel)}/{wheel.name}"  # a new wheel, a new address: no stale copy in a cache
    _copy(wheel, out / wheel_url)
    if found == pinned:
        for f in PYODIDE_FILES:
            if (PYODIDE / f).exists():
                _copy(PYODIDE / f, out / f"pyodide-{pinned}" / f)  # the version in the address, for caches
    app.whatruns_calculator = {"wheel": wheel_url, "pyodide": f"pyodide-{pinned}/",
                               "worker": f"worker.mjs?v={_digest(ASSETS / 'worker.mjs')}"}


def _page_context(app, pagename, templatename, context, doctree):
    """The calculator's script and stylesheet, only on pages that hold a calculator."""
    if doctree is None or not any(True for _ in doctree.findall(calculator)):
        return
    config = json.dumps(app.whatruns_calculator or {})
    app.add_js_file(None, body=f"window.WHATRUNS_CALCULATOR = {config};", priority=400)
    app.add_js_file("calculator/calculator.js", priority=500, loading_method="defer")
    app.add_css_file("calculator/calculator.css")


def setup(app):
    app.add_node(calculator, html=(_visit_html, None), latex=(_skip, None), text=(_skip, None),
                 man=(_skip, None), texinfo=(_skip, None))
    app.add_directive("calculator", Calculator)
    app.connect("builder-inited", _builder_inited)
    app.connect("html-page-context", _page_context)
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
