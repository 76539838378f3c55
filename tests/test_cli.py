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
    "unknown model_type": (_mixtral(model_type="rwkv"), "unknown model_type 'rwkv'"),
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


# ------------------------------------------------------------------------------------------ issue 11: what it assumed

def test_structure_causal_and_active_convention(capsys):
    from whatruns.count import active_params_as
    rc, out, err = run(capsys, "count", "gpt-oss-120b", "--structure", "--causal", "--active-convention",
                       "whole_table")
    spec = catalog.spec("gpt-oss-120b")
    c = count(spec, seq_len=2048, causal=True)
    assert rc == 0 and err == ""
    assert "decoder: 36 layers, 18 times the 2 below" in out and "window 128" in out
    assert f"{c.flops_per_token:,.0f}" in out or f"{c.flops_per_token:,.1f}" in out
    assert f"{active_params_as(c, 'whole_table'):,}" in out
    assert "only the keys each query can see" in out.splitlines()[-1]  # the footer states the convention
    rc, out, _ = run(capsys, "count", "gpt-oss-120b", "--json", "--causal", "--structure")
    d = json.loads(out)
    assert d["causal"] is True and d["flops_per_token"] == c.flops_per_token and d["structure"][0].startswith("decoder")
    assert count(spec, seq_len=2048).flops_per_token > d["flops_per_token"]  # the window and the mask save work


def test_table_is_exact_past_2_to_the_53(capsys, tmp_path):
    """Integers past 2^53 print with every digit (a float would round them), and units go past T."""
    cfg = {"model_type": "llama", "vocab_size": 2 ** 32 - 1, "hidden_size": 1_048_575, "num_hidden_layers": 1,
           "num_attention_heads": 25, "intermediate_size": 1, "mlp_bias": True}  # an odd total: no float holds it
    rc, out, err = run(capsys, "count", _write(tmp_path, "big.json", cfg), "--json")
    total = json.loads(out)["total_params"]
    assert rc == 0 and total > 2 ** 53 and f"{float(total):,.0f}" != f"{total:,}"  # a float would lose digits
    rc, out, err = run(capsys, "count", str(tmp_path / "big.json"))
    assert rc == 0 and f"{total:,}" in out and "P)" in out  # 9.0e15: petaparameters


def test_wrapped_config_is_counted_as_its_text_model(capsys, tmp_path):
    text = catalog.config("mixtral-8x7b")
    wrapper = {"model_type": "llava", "text_config": text, "vision_config": {"model_type": "clip_vision_model"}}
    rc, out, _ = run(capsys, "count", _write(tmp_path, "config.json", wrapper), "--json")
    d = json.loads(out)
    assert rc == 0 and d["text_model_of"] == "llava"
    assert d["total_params"] == count(catalog.spec("mixtral-8x7b")).total_params
    rc, out, _ = run(capsys, "count", str(tmp_path / "config.json"))
    assert "counted as its text model (the 'llava' config's text_config)" in out
    wrapper["text_config"] = {**text, "model_type": "not_a_text_model"}
    rc, out, err = run(capsys, "count", _write(tmp_path, "bad.json", wrapper))
    assert_one_line_error(rc, out, err, "llava config", "'not_a_text_model'")


def _hf_cache(root, repo_id: str, config: dict, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face cache holding one config.json, laid out as huggingface_hub lays it out."""
    repo = root / "hub" / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(config))
    return root


def _cli(*argv, env=None, timeout=60):
    import os
    p = subprocess.run([sys.executable, "-m", "whatruns", *argv], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    return p.returncode, p.stdout, p.stderr


def test_hub_id_from_the_cache_offline(tmp_path):
    home = _hf_cache(tmp_path, "mistralai/Mixtral-8x7B-v0.1", catalog.config("mixtral-8x7b"))
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    rc, out, err = _cli("count", "mistralai/Mixtral-8x7B-v0.1", "--json", env=env)
    assert rc == 0 and err == "", err
    d = json.loads(out)
    assert d["total_params"] == count(catalog.spec("mixtral-8x7b")).total_params
    assert d["source"] == "mistralai/Mixtral-8x7B-v0.1 (Hugging Face Hub)"
    rc, out, err = _cli("count", "mistralai/Not-Cached", env=env)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "no config.json in the Hugging Face cache" in err and "give a path to its config.json" in err


def test_catalog_names_keep_precedence_and_paths_say_no_such_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run(capsys, "count", "MIXTRAL-8x7b", "--json")
    assert rc == 0 and json.loads(out)["source"].endswith("catalog 'mixtral-8x7b'")
    for path in ("configs/llama.json", "./llama", "~/nowhere/config.json"):
        rc, out, err = run(capsys, "count", path)
        assert_one_line_error(rc, out, err, "no such file")


HOSTILE = {
    # case: (config text, fragment)
    "10^18 layers": ('{"model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, '
                     '"num_hidden_layers": 1000000000000000000, "num_attention_heads": 32, '
                     '"intermediate_size": 11008}', "num_hidden_layers 1000000000000000000 is beyond the bound"),
    "10^300 vocabulary": ('{"model_type": "llama", "vocab_size": 1' + "0" * 300 + ', "hidden_size": 4096, '
                          '"num_hidden_layers": 2, "num_attention_heads": 32, "intermediate_size": 11008}',
                          "vocab_size 100000000000... (301 characters) is beyond the bound"),
    "10^13 experts": ('{"model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 2, '
                      '"num_attention_heads": 32, "intermediate_size": 14336, "num_local_experts": 10000000000000}',
                      "num_local_experts 10000000000000 is beyond the bound 16,777,216"),
    "100,000-deep nesting": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "5,000-digit integer": ('{"model_type": "llama", "vocab_size": ' + "9" * 5000 + "}", "4300 digits"),
    "model_type in capitals": ('{"model_type": "Mixtral"}', "did you mean 'mixtral'"),
    "absurd product of plausible sizes": (
        json.dumps({"model_type": "mixtral", "vocab_size": 32000, "hidden_size": 2 ** 20, "num_hidden_layers": 2 ** 16,
                    "num_attention_heads": 2 ** 10, "intermediate_size": 2 ** 20, "num_local_experts": 2 ** 20}),
        "beyond the bound 1e+16"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_is_one_line_fast_and_small(case):
    """Each is one line and exit 2, within seconds (a second or so of it is Python starting) and a few
    hundred MB: work does not grow with the numbers the config holds."""
    import resource
    import time
    text, fragment = HOSTILE[case]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "whatruns", "count", "-"], input=text, capture_output=True, text=True,
                       timeout=60)
    elapsed = time.perf_counter() - start
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert p.returncode == 2 and p.stdout == "", (p.stdout, p.stderr)
    assert p.stderr.count("\n") == 1 and p.stderr.startswith("whatruns: error: ") and "Traceback" not in p.stderr
    assert fragment in p.stderr, p.stderr
    assert elapsed < 10, elapsed  # generous for a loaded 2-core machine; about 1 s when quiet
    assert rss_mb < 400 or before / 1024 >= 400, rss_mb
