"""whatruns.calc, what the calculator page runs (under Pyodide, from the wheel scripts/calcext.py builds): it
shows the command line's JSON for every model, counts the spec with E and k changed, and needs no torch; the
wheel holds the package and installs without its dependencies. tests/browser/test_calculator.py checks the
page itself in Chromium."""

import base64
import hashlib
import json
import pathlib
import subprocess
import sys
import zipfile

import pytest

import whatruns
from whatruns import calc, catalog, serve
from whatruns.count import experts_touched
from whatruns.spec import SpecError

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))


@pytest.mark.parametrize("name", catalog.names())
def test_report_is_the_cli_json_for_every_catalog_model(name, capsys):
    assert whatruns.cli.main(["count", name, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    r = calc.report(name)
    assert r["ok"] and r["count"] == printed and not r["changed"]
    assert r["command"] == f"whatruns count {name} --json"
    assert r["readable"]["count"]["total_params"]["exact"] == f"{printed['total_params']:,}"


def test_changing_e_and_k_counts_the_changed_spec():
    base = catalog.entry("mixtral-8x7b").spec()
    r = calc.report("mixtral-8x7b", experts=16, top_k=4, seq_len=4096, batch=8)
    c = whatruns.count(base.with_(moe=base.moe.__class__(experts=16, top_k=4, expert=base.moe.expert,
                                                         router=base.moe.router)), seq_len=4096)
    assert r["ok"] and r["changed"]
    assert {k: r["count"][k] for k in c.as_dict()} == c.as_dict()
    assert r["count"]["active_fraction"] == c.active_fraction
    assert r["count"]["source"].endswith("with E = 16 and k = 4")
    assert r["per_step"]["tokens_per_step"] == 8 * 4096
    assert r["per_step"]["forward_flops_per_step"] == c.flops_per_token * 8 * 4096
    assert r["per_step"]["experts_per_layer_decoding_batch"] == experts_touched(16, 4, 8)
    # doubling E doubles the routed experts' parameters, not what a token runs
    one, two = calc.report("mixtral-8x7b", experts=8)["count"], calc.report("mixtral-8x7b", experts=16)["count"]
    parts = lambda c: c["breakdown"]["routed_experts"]  # noqa: E731
    assert parts(two)["params"] == 2 * parts(one)["params"] and parts(two)["active"] == parts(one)["active"]
    # and doubles their bytes as stored; the KV cache follows the batch, not E
    stored = lambda c: c["weight_bytes"]["by_component"]["routed_experts"]  # noqa: E731
    assert stored(two) == 2 * stored(one) and two["kv_cache_bytes"] == one["kv_cache_bytes"]
    assert r["count"]["kv_cache_bytes"]["total"] == 8 * serve.kv_cache_bytes(base, 4096).total
    assert r["readable"]["count"]["weight_bytes"]["total"]["short"].endswith(" GB")
    assert r["readable"]["count"]["kv_cache_bytes"]["seq_len"]["short"] == "4,096"
    # giving E and k their loaded values is no change: the command line counts the catalog entry itself
    same = calc.report("mixtral-8x7b", experts=8, top_k=2)
    assert not same["changed"] and same["count"] == calc.report("mixtral-8x7b")["count"]


def test_the_cli_options_pass_through(capsys):
    assert whatruns.cli.main(["count", "dbrx", "--json", "--causal", "--active-convention", "whole_table",
                              "--seq-len", "8192"]) == 0
    r = calc.report("dbrx", causal=True, active_convention="whole_table", seq_len=8192)
    assert r["count"] == json.loads(capsys.readouterr().out)
    assert r["command"] == "whatruns count dbrx --json --seq-len 8192 --causal --active-convention whole_table"
    assert json.loads(calc.call("options"))["active_conventions"][0] == "one_row"
    big = calc.report("deepseek-v3", batch=4096, seq_len=32768)["readable"]["per_step"]["training_flops_per_step"]
    assert int(big["json"]) > 2 ** 53 and big["exact"] == f"{int(big['json']):,}"  # every digit kept


def test_with_experts_keeps_everything_else_and_validates():
    spec = whatruns.load("deepseek-v3")
    changed = calc.with_experts(spec, experts=64)
    assert changed.moe.experts == 64 and changed.moe.top_k == spec.moe.top_k
    assert changed.moe.shared == spec.moe.shared and changed.layers == spec.layers
    assert calc.with_experts(spec) is spec
    with pytest.raises(SpecError, match="cannot exceed"):
        calc.with_experts(spec, experts=4)
    with pytest.raises(SpecError, match="no mixture-of-experts"):
        calc.with_experts(whatruns.load("gpt3-small"), experts=4)
    with pytest.raises(SpecError, match="whole number"):
        calc.with_experts(spec, experts="many")


@pytest.mark.parametrize("text", ['{"model_type": "llama",', "[1]", '{"model_type": "bert"}', '{"model_type": "llama"}'])
def test_a_bad_config_gives_the_cli_one_line_error(text):
    ran = subprocess.run([sys.executable, "-m", "whatruns", "count", "-", "--json"], input=text,
                         capture_output=True, text=True)
    assert ran.returncode == 2
    r = calc.report(config=text)
    assert not r["ok"] and r["error"] == ran.stderr.strip() and "\n" not in r["error"]


def test_bad_settings_are_one_line_each():
    assert calc.report("mixtral-8x7b", seq_len=0)["error"].startswith("whatruns: error: argument --seq-len")
    assert calc.report("mixtral-8x7b", batch=0)["error"] == \
        "whatruns: error: the batch B must be a positive whole number, got 0"
    assert calc.report("mixtral-8x7b", experts=1)["error"] == \
        "whatruns: error: MoE: top_k (2) cannot exceed the number of experts (1)"
    assert "unknown catalog model 'nope'" in calc.report("nope")["error"]
    assert calc.report("switch-c-2048", variant="paper")["count"]["total_params"] > \
        calc.report("switch-c-2048")["count"]["total_params"]
    out = json.loads(calc.call("report", json.dumps({"model": "dlrm-v2", "batch": 4})))
    assert out["ok"] and out["per_step"]["tokens_per_step"] == 4  # one "token" of a recommendation model: an example
    assert json.loads(calc.call("nope"))["error"].startswith("whatruns: error: unexpected")
    models = json.loads(calc.call("models"))
    assert [m["name"] for m in models] == catalog.names()
    assert next(m for m in models if m["name"] == "mixtral-8x7b")["experts"] == 8


def test_the_counting_path_imports_neither_torch_nor_numpy():
    code = ("import sys, whatruns.calc as c; c.report('mixtral-8x7b', experts=16); c.report(config=open("
            f"{str(ROOT / 'tests' / 'configs' / 'Qwen3-30B-A3B.json')!r}).read()); "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert ran.stdout.split() == ["False", "False"]


def test_the_wheel_holds_the_package_and_installs_without_dependencies(tmp_path):
    import calcext

    wheel = calcext.build_wheel(tmp_path / "a")
    assert wheel.read_bytes() == calcext.build_wheel(tmp_path / "b").read_bytes()  # reproducible
    src = ROOT / "src" / "whatruns"
    expected = {f"whatruns/{p.relative_to(src).as_posix()}" for p in src.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".json")}
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert {n for n in names if not n.startswith("whatruns-")} == expected
        meta = z.read("whatruns-0.1.0.dist-info/METADATA").decode()
        assert "Requires-Dist: torch==2.13.0" in meta and "Name: whatruns" in meta
        for line in z.read("whatruns-0.1.0.dist-info/RECORD").decode().splitlines():
            path, digest, size = line.split(",")
            if digest:
                data = z.read(path)
                assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(
                    b"=").decode() and int(size) == len(data)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target",
                    str(target), str(wheel)], check=True, capture_output=True)
    code = (f"import sys; sys.path.insert(0, {str(target)!r}); import whatruns.calc as c; "
            "assert c.__file__.startswith(sys.path[0]), c.__file__; "
            "print(c.report('mixtral-8x7b')['count']['total_params'], 'torch' in sys.modules)")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert ran.stdout.split() == [str(calc.report("mixtral-8x7b")["count"]["total_params"]), "False"]
