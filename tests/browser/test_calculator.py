"""The calculator page (book/calculator.md) in headless Chromium, with the network off.

The page runs the whatruns library under Pyodide. For every catalog model the numbers it shows are those of
``whatruns count NAME --json`` (run here as a separate process); a pasted config.json, good or malformed, shows
what ``whatruns count - --json`` prints for it, the same one-line error included; E, k, the context and the
batch set from the address or typed in give the library's own count of the changed spec. The browser is
started with every host but 127.0.0.1 unresolvable and a proxy that leads nowhere, any request off 127.0.0.1
fails the test, and after the first result the page is put offline altogether and must still answer. The
Pyodide runtime is fetched once per browser, not once per page. Timings go to
``_build/screenshots/calculator.json``.

Needs a built site (``make book``) and ``/usr/bin/chromium``; skipped otherwise, unless
``WHATRUNS_REQUIRE_BROWSER=1``.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from test_site import CHROMIUM, CHROMIUM_ARGS, ROOT, SHOTS, SITE, _missing, _skip_or_fail, serving

PAGE = "book/calculator.html"
BOOT_TIMEOUT_MS = 180_000  # Pyodide starting on a busy two-core machine; a laptop takes a few seconds
STEP_TIMEOUT_MS = 30_000
WHATRUNS = [sys.executable, "-m", "whatruns"]
# No name resolves but 127.0.0.1's, and the proxy for everything else is a closed port: the network is off.
OFFLINE_ARGS = CHROMIUM_ARGS + ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                                "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"]


def cli(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``whatruns ARGS`` as a separate process, as a reader runs it."""
    return subprocess.run([*WHATRUNS, *args], input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def leaves(tree, prefix=""):
    """Every number in a JSON tree, by its dotted path."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(leaves(value, path + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[path] = value
    return out


class _Counting(http.server.SimpleHTTPRequestHandler):
    """Serves the site and remembers which files it sent whole (200) and which it only confirmed (304)."""
    sent: list = []

    def log_message(self, *args):
        pass

    def send_response(self, code, message=None):
        self.sent.append((self.path.split("?")[0], int(code)))
        super().send_response(code, message)


@pytest.fixture(scope="module")
def server():
    reason = _missing()
    if reason:
        _skip_or_fail(reason)
    if not (SITE / PAGE).exists():
        pytest.fail(f"{PAGE} was not built (make book)")
    _Counting.sent = []
    with serving(functools.partial(_Counting, directory=str(SITE))) as url:
        yield url


@pytest.fixture(scope="module")
def context(server):
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="whatruns-calculator-")
    with sync_playwright() as p:
        # a profile on disk, as a reader's browser has: its cache keeps files as large as Pyodide's runtime
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                   args=OFFLINE_ARGS, viewport={"width": 1280, "height": 1000},
                                                   service_workers="block")
        ctx.set_default_timeout(STEP_TIMEOUT_MS)
        ctx.external, ctx.errors = [], []
        # Watched, not routed: routing would turn the browser's cache off, and the cache is under test. With
        # OFFLINE_ARGS a request off 127.0.0.1 cannot succeed anyway; any attempt fails the test.
        ctx.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:"))
               else ctx.external.append(r.url))
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def _favicon(message) -> bool:
    """Chromium asks every site for /favicon.ico, which this one does not have (a 404, not the page's error)."""
    return message.location.get("url", "").endswith("/favicon.ico")


def open_page(context, server, query=""):
    tab = context.new_page()
    tab.on("console", lambda m: context.errors.append(m.text) if m.type == "error" and not _favicon(m) else None)
    tab.on("pageerror", lambda e: context.errors.append(str(e)))
    start = time.perf_counter()
    tab.goto(f"{server}/{PAGE}{query}", wait_until="load")
    tab.wait_for_function("() => ['ready', 'error', 'failed'].includes("
                          "document.getElementById('whatruns-calculator').dataset.state)", timeout=BOOT_TIMEOUT_MS)
    state = tab.evaluate("() => document.getElementById('whatruns-calculator').dataset.state")
    assert state != "failed", tab.inner_text("#calc-status")
    return tab, time.perf_counter() - start


def requests(tab) -> int:
    return int(tab.evaluate("() => document.getElementById('whatruns-calculator').dataset.request"))


def settle(tab, after: int | None = None):
    """Wait until the page has sent a request after request number ``after`` (if given; typing waits a moment
    before it asks) and shown the answer to its latest one."""
    tab.wait_for_function("after => { const d = document.getElementById('whatruns-calculator').dataset;"
                          " return (after === null || Number(d.request) > after) && d.request === d.done"
                          " && d.state !== 'busy'; }", arg=after)


def shown(tab) -> dict:
    """Every number the page shows, by the dotted path of the JSON field it comes from, checked against the
    text printed beside it."""
    cells = tab.evaluate("() => [...document.querySelectorAll('#calc-results [data-key]')].filter("
                         "e => e.dataset.value !== undefined).map(e => [e.dataset.key, e.dataset.value,"
                         " e.querySelector('.calc-exact').textContent])")
    out = {}
    for key, value, text in cells:
        number = json.loads(value)
        out[key] = number
        if float(number).is_integer():
            assert text.replace(",", "") == str(int(number)), (key, value, text)
    return out


def record(**values):
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / "calculator.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data.update(values)
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


@pytest.fixture(scope="module")
def page(context, server):
    tab, seconds = open_page(context, server)
    first_ms = int(tab.evaluate("() => document.getElementById('whatruns-calculator').dataset.firstResultMs"))
    boot = json.loads(tab.evaluate("() => document.getElementById('whatruns-calculator').dataset.bootMs"))
    record(first_result_ms=first_ms, boot_stages_ms=boot, load_average=os.getloadavg()[0])
    print(f"calculator: first result after {first_ms} ms ({boot}), load average {os.getloadavg()[0]:.1f}")
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / "calculator.png"), full_page=True)
    yield tab
    tab.close()


def test_every_catalog_model_shows_what_the_cli_prints(page):
    from whatruns import catalog

    names = catalog.names()
    with ThreadPoolExecutor(4) as pool:
        printed = dict(zip(names, pool.map(lambda n: cli("count", n, "--json"), names)))
    listed = page.evaluate("() => [...document.querySelectorAll('#calc-model option')].map(o => o.value)")
    assert sorted(listed) == sorted(names)
    for name in names:
        assert printed[name].returncode == 0, printed[name].stderr
        expected = json.loads(printed[name].stdout)
        page.select_option("#calc-model", name)
        settle(page)
        assert page.inner_text("#calc-source") == expected["source"]
        got = shown(page)
        want = leaves(expected)
        assert {k: got.get(k) for k in want} == want, name
        extra = {k for k in got if k not in want and not k.startswith("per_step.")}
        assert not extra, f"{name}: numbers that are not the command line's: {extra}"
        assert page.inner_text("#calc-command") == f"whatruns count {name} --json"
    assert not page.context.external and not page.context.errors


BAD_CONFIGS = {
    "not JSON": '{"model_type": "llama", "hidden_size": 64,',
    "not an object": "[1, 2, 3]",
    "unknown model type": '{"model_type": "bert", "hidden_size": 768}',
    "a field missing": '{"model_type": "llama", "hidden_size": 64}',
}


def _paste(page, text):
    page.evaluate("() => { document.getElementById('calc-paste').open = true; }")
    page.fill("#calc-config", text)
    page.click("#calc-config-go")
    settle(page)


def test_a_pasted_config_gives_the_cli_count_or_its_one_line_error(page):
    cases = dict(BAD_CONFIGS)
    mixtral = json.loads((ROOT / "tests" / "configs" / "Mixtral-8x22B-v0.1.json").read_text())
    cases["more experts per token than experts"] = json.dumps({**mixtral, "num_experts_per_tok": 9})
    for what, text in cases.items():
        ran = cli("count", "-", "--json", stdin=text)
        assert ran.returncode == 2 and len(ran.stderr.strip().splitlines()) == 1, (what, ran.stderr)
        _paste(page, text)
        assert page.is_visible("#calc-error"), what
        assert page.inner_text("#calc-error") == ran.stderr.strip(), what
    for name in ("Qwen1.5-MoE-A2.7B.json", "Llama-3.2-1B.json"):
        text = (ROOT / "tests" / "configs" / name).read_text()
        ran = cli("count", "-", "--json", stdin=text)
        _paste(page, text)
        assert not page.is_visible("#calc-error"), page.inner_text("#calc-error")
        got, want = shown(page), leaves(json.loads(ran.stdout))
        assert {k: got.get(k) for k in want} == want, name
    page.click("#calc-config-back")
    settle(page)
    assert not page.context.external and not page.context.errors


def test_changing_e_k_context_and_batch_offline_counts_the_changed_spec(page, context):
    import whatruns
    from whatruns.calc import with_experts
    from whatruns.count import active_params_as, experts_touched

    page.select_option("#calc-model", "mixtral-8x7b")
    settle(page)
    context.set_offline(True)  # from here on the page cannot fetch anything at all
    try:
        before = requests(page)
        for selector, value in (("#calc-experts", "16"), ("#calc-topk", "4"), ("#calc-context", "4096"),
                                ("#calc-batch", "8")):
            page.fill(selector, value)
        page.wait_for_timeout(400)
        settle(page, before)
        got = shown(page)
        spec = with_experts(whatruns.catalog.entry("mixtral-8x7b").spec(), 16, 4)
        c = whatruns.count(spec, seq_len=4096)
        want = leaves({**c.as_dict(), "active_fraction": c.active_fraction})
        assert {k: got.get(k) for k in want} == want
        assert got["per_step.batch"] == 8 and got["per_step.tokens_per_step"] == 8 * 4096
        assert got["per_step.experts_per_layer_decoding_batch"] == experts_touched(16, 4, 8)
        assert "E = 16 and k = 4" in page.inner_text("#calc-source")
        assert "experts=16" in page.url and "k=4" in page.url and "context=4096" in page.url
        # the command line's --causal and --active-convention, as a checkbox and a choice
        before = requests(page)
        page.check("#calc-causal")
        page.select_option("#calc-convention", "whole_table")
        page.wait_for_timeout(400)
        settle(page, before)
        got = shown(page)
        c = whatruns.count(spec, seq_len=4096, causal=True)
        assert got["flops_per_token"] == c.flops_per_token < want["flops_per_token"]
        assert got["active_params_as_convention"] == active_params_as(c, "whole_table")
        assert "causal=1" in page.url and "convention=whole_table" in page.url
        # an impossible setting: the library's one line, and the last good numbers stay, dimmed
        before = requests(page)
        page.fill("#calc-topk", "17")
        page.wait_for_timeout(400)
        settle(page, before)
        assert page.inner_text("#calc-error") == \
            "whatruns: error: MoE: top_k (17) cannot exceed the number of experts (16)"
    finally:
        context.set_offline(False)
    assert page.evaluate("() => document.getElementById('whatruns-calculator').dataset.torchLoaded") == "false"
    assert not context.external and not context.errors


def test_a_preset_in_the_address_and_pyodide_fetched_once(page, context, server):
    """A second page opened with a preset (as the chapters and the instructors page link to it) counts the
    preset, and the browser does not fetch the Pyodide runtime again: it keeps it from the first page."""
    import whatruns
    from whatruns.calc import with_experts

    first = [p for p, code in _Counting.sent if p.endswith("pyodide.asm.wasm")]
    assert len(first) == 1 and first[0].startswith("/_static/calculator/pyodide-"), _Counting.sent
    tab, seconds = open_page(context, server, "?model=qwen3-235b-a22b&experts=64&k=8&context=1024")
    try:
        settle(tab)
        got = shown(tab)
        c = whatruns.count(with_experts(whatruns.catalog.entry("qwen3-235b-a22b").spec(), 64, 8), seq_len=1024)
        assert got["total_params"] == c.total_params and got["flops_per_token"] == c.flops_per_token
        assert tab.input_value("#calc-experts") == "64" and tab.input_value("#calc-context") == "1024"
        whole = [(p, code) for p, code in _Counting.sent if p.endswith(("pyodide.asm.wasm", "python_stdlib.zip"))
                 and code == 200]
        assert len(whole) == 2, f"the runtime was sent again: {whole}"
        record(second_page_seconds=round(seconds, 1))
    finally:
        tab.close()
    assert not context.external and not context.errors


# what calculator.js reads from the address (fromAddress)
ADDRESS_KEYS = {"model", "variant", "experts", "E", "k", "top_k", "context", "seq_len", "T", "batch", "B", "causal",
                "convention"}


def chapter_presets() -> dict:
    """Every link from a page of the built book to the calculator with a preset, by page: {page: [query, ...]}."""
    import html
    import re
    import urllib.parse

    out = {}
    for built in sorted((SITE / "book").glob("*.html")):
        if built.name == "calculator.html":
            continue
        hrefs = re.findall(r'href="calculator\.html\?([^"#]*)"', built.read_text(encoding="utf-8"))
        if hrefs:
            out[built.name] = [urllib.parse.parse_qs(html.unescape(h)) for h in hrefs]
    return out


def test_the_chapters_presets_are_ones_the_calculator_reads():
    """The chapters link to the calculator (chapter 3: Mixtral with more experts and with more per token;
    chapter 5: Switch-C's two versions, DeepSeek-V3 at its pre-training context), and every link names a catalog
    model, a variant it has and only settings the page reads from its address."""
    if _missing():
        _skip_or_fail(_missing())
    from whatruns import catalog

    presets = chapter_presets()
    for page, queries in presets.items():
        for q in queries:
            assert set(q) <= ADDRESS_KEYS and all(len(v) == 1 for v in q.values()), (page, q)
            assert q["model"][0] in catalog.names(), (page, q)
            if "variant" in q:
                assert q["variant"][0] in catalog.entry(q["model"][0]).variants, (page, q)
    flat = {page: [{k: v[0] for k, v in q.items()} for q in queries] for page, queries in presets.items()}
    assert {"model": "mixtral-8x7b", "experts": "16"} in flat.get("03_moe.html", []), flat
    assert {"model": "mixtral-8x7b", "experts": "8", "k": "4"} in flat["03_moe.html"], flat
    chapter5 = flat.get("05_real_models.html", [])
    assert {"model": "switch-c-2048", "variant": "paper"} in chapter5 and {"model": "switch-c-2048"} in chapter5
    context = catalog.entry("deepseek-v3").published["pretraining_context"].value
    assert {"model": "deepseek-v3", "context": str(int(context))} in chapter5, chapter5


def test_a_chapter_link_opens_its_preset(context, server):
    """Chapter 3's link to Mixtral 8x7B with 16 experts, clicked in the browser, opens the calculator counting that
    spec: the library's count of Mixtral with E = 16 and its k of 2."""
    import whatruns
    from whatruns.calc import with_experts

    tab = context.new_page()
    tab.on("console", lambda m: context.errors.append(m.text) if m.type == "error" and not _favicon(m) else None)
    tab.on("pageerror", lambda e: context.errors.append(str(e)))
    try:
        tab.goto(f"{server}/book/03_moe.html", wait_until="load")
        link = tab.locator('a[href="calculator.html?model=mixtral-8x7b&experts=16"]')
        assert link.count() == 1
        link.click()
        tab.wait_for_url("**/book/calculator.html?model=mixtral-8x7b&experts=16*")
        tab.wait_for_function("() => ['ready', 'error', 'failed'].includes("
                              "document.getElementById('whatruns-calculator').dataset.state)", timeout=BOOT_TIMEOUT_MS)
        settle(tab)
        assert not tab.is_visible("#calc-error"), tab.inner_text("#calc-error")
        got = shown(tab)
        c = whatruns.count(with_experts(whatruns.catalog.entry("mixtral-8x7b").spec(), 16))
        assert got["total_params"] == c.total_params and got["flops_per_token"] == c.flops_per_token
        assert tab.input_value("#calc-experts") == "16" and tab.input_value("#calc-model") == "mixtral-8x7b"
    finally:
        tab.close()
    assert not context.external and not context.errors


def test_opened_from_disk_it_says_what_it_needs(context):
    tab = context.new_page()
    errors = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        tab.goto((SITE / PAGE).as_uri(), wait_until="load")
        tab.wait_for_function("() => document.getElementById('whatruns-calculator').dataset.state === 'needs-server'")
        assert "http.server" in tab.inner_text("#calc-status")
    finally:
        tab.close()
    assert not errors


def test_the_runtime_is_in_the_build_and_its_size_is_known():
    if _missing():
        _skip_or_fail(_missing())
    static = SITE / "_static" / "calculator"
    files = [p for p in static.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"pyodide.mjs", "pyodide.asm.wasm", "python_stdlib.zip", "worker.mjs", "calculator.js"} <= names
    wheels = list(static.glob("wheel/*/whatruns-*-py3-none-any.whl"))
    assert len(wheels) == 1
    record(static_bytes=sum(p.stat().st_size for p in files), wheel_bytes=wheels[0].stat().st_size)
