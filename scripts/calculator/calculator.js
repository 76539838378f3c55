/* The calculator page (book/calculator.md; built by scripts/calcext.py).

   Every number on the page is computed by the whatruns library itself, running under Pyodide in a web worker
   (worker.mjs calls whatruns.calc). This script only sends the inputs and lays out the JSON that comes back:
   every numeric field of `whatruns count --json`, whatever fields it has, and the per-step numbers beside it.
   It does no arithmetic on them; the readable forms ("46.7B") come from the library too.

   Presets in the address: ?model=mixtral-8x7b&experts=16&k=2&context=4096&batch=8&variant=paper */
(function () {
  "use strict";

  const settings = window.WHATRUNS_CALCULATOR || {};
  const scriptUrl = document.currentScript ? document.currentScript.src : location.href;
  const started = performance.now();
  const $ = (id) => document.getElementById(id);
  const root = $("whatruns-calculator");
  if (!root) return;

  // Names for the fields the command line prints today; a field it gains later is shown under its own name.
  const LABELS = {
    total_params: "Parameters stored (total)",
    active_params: "Parameters one token uses (active)",
    active_fraction: "Active fraction",
    embedding_params: "Embedding parameters",
    non_embedding_params: "Non-embedding parameters",
    flops_per_token: "Forward FLOPs per token",
    training_flops_per_token: "Training FLOPs per token (3 × forward)",
    seq_len: "Context T (tokens per sequence)",
    active_params_as_convention: "Active parameters, as the chosen convention counts them",
    params: "stored",
    active: "active",
    batch: "Batch B (sequences)",
    tokens_per_step: "Tokens per step (B × T)",
    forward_flops_per_step: "Forward FLOPs per step",
    training_flops_per_step: "Training FLOPs per step",
    experts_per_layer: "Experts per MoE layer (E)",
    experts_per_layer_one_token: "Experts one token runs, per layer (k)",
    experts_per_layer_decoding_batch: "Distinct experts a decoding step reads, per layer",
    kv_cache_bytes: "KV cache, bytes (B sequences of T tokens)",
    weight_bytes: "Weights as the checkpoint stores them, bytes",
    total: "total",
    scheme: "scheme",
    by_component: "by component",
    by_format: "by format",
    quantized_elements: "quantized elements",
    bytes_per_element: "bytes per cached element",
    mla: "MLA cached as",
    mla_latent: "MLA latent",
    mla_expanded: "MLA expanded (for comparison)",
    weight_bytes_unknown: "Weights as stored: not counted",
  };
  const label = (key) => LABELS[key] || key.replace(/_/g, " ");

  const state = { model: "mixtral-8x7b", variant: "", config: null, experts: null, top_k: null,
                  seq_len: null, batch: 1, causal: false, convention: "" };
  // How the choices of the command line's --active-convention read on the page
  const CONVENTIONS = { one_row: "one row of the embedding", whole_table: "the whole embedding table",
                        non_embedding: "no embedding table, no head" };
  let catalog = [];
  let sent = 0;
  let shown = 0;

  function setStatus(text, isError) {
    $("calc-status").textContent = text;
    $("calc-status").classList.toggle("calc-failed", !!isError);
  }

  // --- the worker ----------------------------------------------------------------------------------------------
  let worker = null;
  const pending = new Map();
  let nextId = 1;
  function ask(call, args) {
    return new Promise((resolve, reject) => {
      const id = nextId++;
      pending.set(id, { resolve, reject });
      worker.postMessage({ id, call, args, wheel: "./" + settings.wheel, runtime: "./" + settings.pyodide });
    });
  }
  function startWorker() {
    worker = new Worker(new URL(settings.worker, scriptUrl), { type: "module" });
    worker.onmessage = (event) => {
      const { id, result, fatal, ms } = event.data;
      const waiting = pending.get(id);
      pending.delete(id);
      if (!waiting) return;
      if (fatal) waiting.reject(new Error(fatal));
      else waiting.resolve({ result, ms });
    };
    worker.onerror = (event) => {
      const message = event.message || "the worker could not start";
      for (const waiting of pending.values()) waiting.reject(new Error(message));
      pending.clear();
    };
  }

  // --- inputs ----------------------------------------------------------------------------------------------------
  // A whole number goes to the library as a number, anything else as the text typed, for the library to refuse.
  function readNumber(text) {
    const t = String(text == null ? "" : text).trim();
    if (t === "") return null;
    return /^[0-9]+$/.test(t) ? Number(t) : t;
  }
  function fromAddress() {
    const q = new URLSearchParams(location.search);
    if (q.get("model")) state.model = q.get("model").trim();
    if (q.get("variant")) state.variant = q.get("variant").trim();
    state.experts = readNumber(q.get("experts") ?? q.get("E"));
    state.top_k = readNumber(q.get("k") ?? q.get("top_k"));
    state.seq_len = readNumber(q.get("context") ?? q.get("seq_len") ?? q.get("T"));
    const b = readNumber(q.get("batch") ?? q.get("B"));
    if (b !== null) state.batch = b;
    state.causal = ["1", "true", "yes"].includes((q.get("causal") || "").toLowerCase());
    state.convention = (q.get("convention") || "").trim();
  }
  function toAddress() {
    if (state.config !== null) return;  // a pasted config does not fit in an address
    const q = new URLSearchParams();
    q.set("model", state.model);
    if (state.variant) q.set("variant", state.variant);
    if (state.experts !== null) q.set("experts", state.experts);
    if (state.top_k !== null) q.set("k", state.top_k);
    if (state.seq_len !== null) q.set("context", state.seq_len);
    if (state.batch !== 1) q.set("batch", state.batch);
    if (state.causal) q.set("causal", "1");
    if (state.convention) q.set("convention", state.convention);
    history.replaceState(null, "", "?" + q.toString() + location.hash);
  }
  function fillVariants() {
    const entry = catalog.find((m) => m.name === state.model);
    const select = $("calc-variant");
    select.replaceChildren(new Option("as released", ""));
    for (const v of (entry && entry.variants) || []) select.append(new Option(v, v));
    select.value = state.variant;
    $("calc-variant-field").hidden = !(entry && entry.variants.length) || state.config !== null;
  }

  let timer = null;
  function soon() {
    clearTimeout(timer);
    timer = setTimeout(update, 150);
  }

  // --- results -----------------------------------------------------------------------------------------------------
  function cell(key, value, readable) {
    const td = document.createElement("td");
    td.className = "calc-value";
    td.dataset.key = key;
    td.dataset.value = readable && readable.json !== undefined ? readable.json : JSON.stringify(value);
    const exact = document.createElement("span");
    exact.className = "calc-exact";
    exact.textContent = readable ? readable.exact : String(value);
    td.append(exact);
    if (readable && readable.short !== readable.exact) {
      const short = document.createElement("span");
      short.className = "calc-short";
      short.textContent = readable.short;
      td.append(" ", short);
    }
    return td;
  }
  function row(name, ...cells) {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = name;
    tr.append(th, ...cells);
    return tr;
  }
  const isNumber = (v) => typeof v === "number";
  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  const isTable = (v) => isObject(v) && Object.values(v).length > 0 && Object.values(v).every(isObject);

  function renderCount(count, readable) {
    const table = $("calc-count");
    const parts = $("calc-parts");
    table.replaceChildren();
    parts.replaceChildren();
    for (const [key, value] of Object.entries(count)) {
      if (isNumber(value)) {
        table.append(row(label(key), cell(key, value, readable[key])));
      } else if (isTable(value)) {
        parts.append(componentTable(key, value, readable[key]));
      } else if (isObject(value)) {
        parts.append(heading(key), fieldTable(key, value, readable[key]));
      } else if (typeof value === "string" && key.endsWith("_unknown")) {
        const note = document.createElement("p");
        note.className = "calc-note";
        note.dataset.key = key;
        note.textContent = value;
        parts.append(heading(key), note);
      }
    }
  }
  // A field that holds fields (the weights' and the KV cache's bytes): its name, then one row per number or word
  // in it, nested fields named by their path ("by component: attention").
  function heading(key) {
    const p = document.createElement("p");
    p.className = "calc-heading calc-sub";
    p.textContent = label(key);
    return p;
  }
  function fieldTable(key, value, readable) {
    const table = document.createElement("table");
    table.className = "calc-table";
    table.dataset.key = key;
    const add = (path, name, v, r) => {
      if (isNumber(v)) {
        table.append(row(name, cell(path, v, r)));
      } else if (typeof v === "string") {
        const td = document.createElement("td");
        td.className = "calc-word";
        td.textContent = v;
        table.append(row(name, td));
      } else if (isObject(v)) {
        for (const [k, w] of Object.entries(v)) add(`${path}.${k}`, `${name}: ${label(k)}`, w, r[k]);
      }
    };
    for (const [k, v] of Object.entries(value)) add(`${key}.${k}`, label(k), v, readable[k]);
    return table;
  }
  function componentTable(key, rows, readable) {
    const table = document.createElement("table");
    table.className = "calc-table calc-parts-table";
    table.dataset.key = key;
    const fields = [];
    for (const r of Object.values(rows)) for (const f of Object.keys(r)) if (!fields.includes(f)) fields.push(f);
    const head = document.createElement("tr");
    head.append(document.createElement("th"));
    for (const f of fields) {
      const th = document.createElement("th");
      th.scope = "col";
      th.textContent = label(f);
      head.append(th);
    }
    const thead = document.createElement("thead");
    thead.append(head);
    const tbody = document.createElement("tbody");
    for (const [name, r] of Object.entries(rows)) {
      const cells = fields.map((f) => isNumber(r[f]) ? cell(`${key}.${name}.${f}`, r[f], readable[name][f])
                                                     : document.createElement("td"));
      const tr = row(name.replace(/_/g, " "), ...cells);
      if (fields.every((f) => !r[f])) tr.className = "calc-zero";
      tbody.append(tr);
    }
    table.append(thead, tbody);
    return table;
  }
  function renderPerStep(steps, readable) {
    const table = $("calc-per-step");
    table.replaceChildren();
    for (const [key, value] of Object.entries(steps)) {
      if (isNumber(value)) table.append(row(label(key), cell(`per_step.${key}`, value, readable[key])));
    }
  }

  function show(answer, id) {
    if (id !== sent) return;  // a newer request is on its way
    const r = answer.result;
    shown = id;
    if (!r.ok) {
      $("calc-error").textContent = r.error;
      $("calc-error").hidden = false;
      $("calc-results").classList.add("calc-stale");
    } else {
      $("calc-error").hidden = true;
      $("calc-results").classList.remove("calc-stale");
      $("calc-results").hidden = false;
      $("calc-source").textContent = r.count.source;
      renderCount(r.count, r.readable.count);
      renderPerStep(r.per_step, r.readable.per_step);
      $("calc-command").textContent = r.command;
      const moe = r.model.experts !== null;
      $("calc-experts").disabled = !moe;
      $("calc-topk").disabled = !moe;
      $("calc-reset").disabled = !moe;
      $("calc-experts").value = moe ? (state.experts ?? r.model.experts) : "";
      $("calc-topk").value = moe ? (state.top_k ?? r.model.top_k) : "";
      $("calc-experts").placeholder = moe ? "" : "no experts";
      $("calc-topk").placeholder = moe ? "" : "no experts";
      if (document.activeElement !== $("calc-context")) $("calc-context").value = state.seq_len ?? r.count.seq_len;
      if (document.activeElement !== $("calc-batch")) $("calc-batch").value = state.batch;
    }
    if (!root.dataset.firstResultMs) root.dataset.firstResultMs = String(Math.round(performance.now() - started));
    root.dataset.done = String(id);
    root.dataset.state = r.ok ? "ready" : "error";
  }

  async function update() {
    const id = ++sent;
    root.dataset.request = String(id);
    root.dataset.state = "busy";
    toAddress();
    const args = { seq_len: state.seq_len, batch: state.batch, experts: state.experts, top_k: state.top_k,
                   causal: state.causal, active_convention: state.convention || null };
    if (state.config !== null) args.config = state.config;
    else { args.model = state.model; args.variant = state.variant || null; }
    try {
      show(await ask("report", args), id);
    } catch (error) {
      fail(error);
    }
  }

  function fail(error) {
    root.dataset.state = "failed";
    setStatus(`The calculator could not run: ${error.message}`, true);
    console.error("calculator:", error.message);
  }

  // --- start -------------------------------------------------------------------------------------------------------
  function wire() {
    $("calc-model").addEventListener("change", () => {
      state.model = $("calc-model").value;
      state.variant = "";
      state.config = null;
      state.experts = null;
      state.top_k = null;
      fillVariants();
      update();
    });
    $("calc-variant").addEventListener("change", () => {
      state.variant = $("calc-variant").value;
      state.experts = null;
      state.top_k = null;
      update();
    });
    const knobs = [["calc-experts", "experts"], ["calc-topk", "top_k"], ["calc-context", "seq_len"],
                   ["calc-batch", "batch"]];
    for (const [id, key] of knobs) {
      $(id).addEventListener("input", () => {
        const v = readNumber($(id).value);
        state[key] = key === "batch" && v === null ? 1 : v;
        soon();
      });
    }
    $("calc-causal").addEventListener("change", () => {
      state.causal = $("calc-causal").checked;
      update();
    });
    $("calc-convention").addEventListener("change", () => {
      state.convention = $("calc-convention").value;
      update();
    });
    $("calc-reset").addEventListener("click", () => {
      state.experts = null;
      state.top_k = null;
      update();
    });
    $("calc-config-go").addEventListener("click", () => {
      state.config = $("calc-config").value;
      state.experts = null;
      state.top_k = null;
      $("calc-model").disabled = true;
      fillVariants();
      update();
    });
    $("calc-config-back").addEventListener("click", () => {
      state.config = null;
      state.experts = null;
      state.top_k = null;
      $("calc-model").disabled = false;
      fillVariants();
      update();
    });
  }

  async function start() {
    if (!settings.worker || !settings.wheel || !settings.pyodide) {
      fail(new Error("the page was built without its runtime (scripts/calcext.py)"));
      return;
    }
    if (location.protocol === "file:") {
      root.dataset.state = "needs-server";
      setStatus("The calculator runs Python in the browser, which needs the site served over HTTP: run " +
                "`python3 -m http.server -d _build/html` and open http://localhost:8000/book/calculator.html " +
                "(no network is needed).");
      return;
    }
    fromAddress();
    wire();
    try {
      startWorker();
      const boot = await ask("boot");
      const v = boot.result;
      catalog = (await ask("models")).result;
      const conventions = (await ask("options")).result.active_conventions;
      $("calc-convention").replaceChildren(...conventions.map(
        (c, i) => new Option(CONVENTIONS[c] || c.replace(/_/g, " "), i === 0 ? "" : c)));
      $("calc-convention").value = conventions.slice(1).includes(state.convention) ? state.convention : "";
      $("calc-causal").checked = state.causal;
      const select = $("calc-model");
      select.replaceChildren(...catalog.map((m) => new Option(`${m.title} (${m.name})`, m.name)));
      if (!catalog.some((m) => m.name === state.model)) select.append(new Option(state.model, state.model));
      select.value = state.model;
      fillVariants();
      setStatus(`Computed by whatruns ${v.whatruns} itself, running under Pyodide ${v.pyodide} ` +
                `(Python ${v.python}) in this page; started in ${(v.ms / 1000).toFixed(1)} s, offline.`);
      root.dataset.pyodide = v.pyodide;
      root.dataset.bootMs = JSON.stringify(v.stages);
      root.dataset.torchLoaded = String(v.torch_loaded);
      await update();
    } catch (error) {
      fail(error);
    }
  }

  start();
})();
