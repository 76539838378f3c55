"""The command line: `whatruns count` and `whatruns catalog`, in-process (main(argv) with capsys) and,
once each way, as a real `python -m whatruns` process (to prove that bad input never shows a traceback)."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from whatruns import catalog, count
from whatruns.cli import human, main


def run(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, out, err, *fragments):
    assert rc == 2
    assert out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("whatruns: error: ")
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)


# ------------------------------------------------------------------------------------------ count

def test_count_catalog_name_table(capsys):
    rc, out, err = run(capsys, "count", "mixtral-8x7b")
    c = count(catalog.spec("mixtral-8x7b"), seq_len=2048)
    assert rc == 0 and err == ""
    assert "Mixtral 8x7B" in out and "seq_len 2048" in out
    assert f"{c.total_params:,}" in out and "46.70B" in out  # exact integers beside human units
    assert f"{c.active_params:,}" in out
    for component in ("embedding", "attention", "routed_experts", "router", "head", "total"):
        assert any(line.startswith(component) for line in out.splitlines()), component
    assert "shared_experts" not in out  # components with nothing in them are left out


def test_count_json_matches_count(capsys):
    rc, out, err = run(capsys, "count", "deepseek-v3", "--seq-len", "4096", "--json")
    assert rc == 0 and err == ""
    d = json.loads(out)  # one JSON object, nothing else on stdout
    c = count(catalog.spec("deepseek-v3"), seq_len=4096)
    assert d["total_params"] == c.total_params
    assert d["active_params"] == c.active_params
    assert d["embedding_params"] == c.embedding_params
    assert d["flops_per_token"] == c.flops_per_token
    assert d["seq_len"] == 4096
    assert d["breakdown"] == json.loads(json.dumps(c.as_dict()["breakdown"]))
    assert sum(p["params"] for p in d["breakdown"].values()) == d["total_params"]


def test_count_path_folder_and_stdin_agree_with_the_catalog(capsys, monkeypatch, tmp_path):
    cfg = catalog.config("qwen3-235b-a22b")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    expected = count(catalog.spec("qwen3-235b-a22b"), seq_len=512).as_dict()
    for source in (str(tmp_path / "config.json"), str(tmp_path)):
        rc, out, _ = run(capsys, "count", source, "--seq-len", "512", "--json")
        assert rc == 0 and json.loads(out)["total_params"] == expected["total_params"]
    rc, out, _ = run(capsys, "count", "-", "--json", "--seq-len", "512", stdin=json.dumps(cfg), monkeypatch=monkeypatch)
    assert rc == 0 and json.loads(out)["active_params"] == expected["active_params"]


def test_count_own_format_file_and_variant(capsys, tmp_path):
    path = tmp_path / "glam.json"
    path.write_text(json.dumps(catalog.config("glam-64b-64e")))
    rc, out, _ = run(capsys, "count", str(path), "--json")
    assert rc == 0 and json.loads(out)["total_params"] == count(catalog.spec("glam-64b-64e")).total_params
    rc, out, _ = run(capsys, "count", "switch-c-2048", "--variant", "paper", "--json")
    assert rc == 0 and json.loads(out)["total_params"] == count(catalog.spec("switch-c-2048", "paper")).total_params


def test_count_embedding_model(capsys):
    rc, out, _ = run(capsys, "count", "dlrm-v2")
    assert rc == 0 and "interaction" in out and "mlp" in out


def test_human():
    assert human(46_702_792_704) == "46.70B"
    assert human(1_571_308_972_448) == "1.57T"
    assert human(4096) == "4.10k" and human(12) == "12" and human(0) == "0"


# ------------------------------------------------------------------------------------------ catalog

def test_catalog_table(capsys):
    rc, out, err = run(capsys, "catalog")
    assert rc == 0 and err == ""
    for name in catalog.names():
        assert name in out
    assert "switch-c-2048 (paper)" in out and "46.70B" in out and "46.7B" in out


def test_catalog_json(capsys):
    rc, out, _ = run(capsys, "catalog", "--seq-len", "1024", "--json")
    d = json.loads(out)
    assert rc == 0 and d["seq_len"] == 1024
    rows = {r.name: r for r in catalog.table(seq_len=1024)}
    assert [m["name"] for m in d["models"]] == list(rows)
    for m in d["models"]:
        r = rows[m["name"]]
        assert (m["total_params"], m["active_params"], m["flops_per_token"]) == \
            (r.total_params, r.active_params, r.flops_per_token)
    assert next(m for m in d["models"] if m["name"] == "mixtral-8x7b")["published_total_as_printed"] == "46.7B"


# ------------------------------------------------------------------------------------------ bad input

def _write(tmp_path, name, data) -> str:
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _mixtral(**changes):
    d = catalog.config("mixtral-8x7b")
    for k, v in changes.items():
        if v is KeyError:
            del d[k]
        else:
            d[k] = v
    return d


BAD_CONFIGS = {
    # case: (file contents, a fragment the message must hold)
    "malformed JSON": ('{"model_type": "mixtral",', "not valid JSON"),
    "JSON not an object": ([1, 2, 3], "expected a JSON object"),
    "not UTF-8": (b"\xff\xfe{\x00", "cannot read"),
    "no model_type": ({"hidden_size": 4096}, "model_type"),
    "unknown model_type": (_mixtral(model_type="bert"), "unknown model_type 'bert'"),
    "size missing": (_mixtral(hidden_size=KeyError), "hidden_size is missing"),
    "size a string": (_mixtral(hidden_size="4096"), "must be an integer"),
    "size a float": (_mixtral(hidden_size=4096.0), "must be an integer"),
    "size a boolean": (_mixtral(num_hidden_layers=True), "must be an integer"),
    "size zero": (_mixtral(hidden_size=0), "must be positive"),
    "size negative": (_mixtral(intermediate_size=-1), "must be positive"),
    "heads do not divide the width": (_mixtral(num_attention_heads=40), "must be a multiple of num_attention_heads"),
    "kv heads do not divide the heads": (_mixtral(num_key_value_heads=5), "multiple of num_key_value_heads"),
    "top-k above the experts": (_mixtral(num_experts_per_tok=9), "cannot exceed the number of experts"),
    "own format, bad": ({"whatruns": "transformer", "vocab": 10}, "missing field"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_file(capsys, tmp_path, case):
    data, fragment = BAD_CONFIGS[case]
    rc, out, err = run(capsys, "count", _write(tmp_path, "config.json", data))
    assert_one_line_error(rc, out, err, fragment)


@pytest.mark.parametrize("case", sorted(k for k, (d, _) in BAD_CONFIGS.items() if not isinstance(d, bytes)))
def test_bad_config_on_stdin(capsys, monkeypatch, case):
    data, fragment = BAD_CONFIGS[case]
    text = data if isinstance(data, str) else json.dumps(data)
    rc, out, err = run(capsys, "count", "-", stdin=text, monkeypatch=monkeypatch)
    assert_one_line_error(rc, out, err)


@pytest.mark.parametrize("argv, fragment", [
    (["count", "no/such/config.json"], "no such file"),
    (["count", "mixtral-8x7"], "did you mean mixtral-8x7b"),
    (["count", "not-a-model"], "unknown catalog model"),
    (["count", "mixtral-8x7b", "--seq-len", "0"], "--seq-len"),
    (["count", "mixtral-8x7b", "--seq-len", "-5"], "positive integer"),
    (["count", "mixtral-8x7b", "--seq-len", "x"], "positive integer"),
    (["count", "mixtral-8x7b", "--seq-len", "1.5"], "positive integer"),
    (["catalog", "--seq-len", "0"], "positive integer"),
    (["count", "gpt3-13b", "--variant", "nope"], "no variant 'nope'"),
    (["count"], "SOURCE"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
    (["count", "mixtral-8x7b", "--bogus"], "unrecognized arguments"),
])
def test_bad_arguments(capsys, argv, fragment):
    rc, out, err = run(capsys, *argv)
    assert_one_line_error(rc, out, err, fragment)


def test_folder_without_config(capsys, tmp_path):
    rc, out, err = run(capsys, "count", str(tmp_path))
    assert_one_line_error(rc, out, err, "no such file")


def test_unexpected_error_is_one_line(capsys, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("something broke\non two lines")
    monkeypatch.setattr(sys.modules["whatruns.count"], "count", boom)
    rc, out, err = run(capsys, "count", "mixtral-8x7b")
    assert_one_line_error(rc, out, err, "unexpected RuntimeError: something broke on two lines")


def test_help_exits_zero(capsys):
    rc = main(["--help"])
    out, _ = capsys.readouterr()
    assert rc == 0 and "count" in out and "catalog" in out


# ------------------------------------------------------------------------------------------ a real process

def test_python_dash_m_whatruns(tmp_path):
    """As a process: bad input gives status 2 and one line on stderr (no traceback); good input works."""
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    p = subprocess.run([sys.executable, "-m", "whatruns", "count", str(bad)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("whatruns: error:") and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "whatruns", "count", "gpt3-175b", "--json"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == ""
    assert json.loads(p.stdout)["total_params"] == count(catalog.spec("gpt3-175b")).total_params
