// The calculator's web worker (book/calculator.md, scripts/calcext.py): Pyodide, from this site's own copy,
// with the wheel of whatruns that the build wrote, installed as it is (no dependency is resolved or fetched:
// the counting path imports neither torch nor numpy). Every answer is whatruns.calc.call(name, arguments).
let booting = null;
let calc = null;

async function boot(wheel, runtime) {
  const start = performance.now();
  const indexURL = new URL(runtime, import.meta.url).href;
  const { loadPyodide } = await import(indexURL + "pyodide.mjs");
  const py = await loadPyodide({
    indexURL,
    stdout: () => {},
    stderr: () => {},
  });
  const booted = performance.now();
  const problems = [];
  // A URL to a wheel: Pyodide installs that file alone (loadPackage resolves no dependencies for a URL).
  await py.loadPackage(new URL(wheel, import.meta.url).href, {
    messageCallback: () => {},
    errorCallback: (message) => problems.push(message),
  });
  if (problems.length) throw new Error(`could not install whatruns: ${problems.join("; ")}`);
  const installed = performance.now();
  calc = py.pyimport("whatruns.calc");
  const imported = performance.now();
  const versions = JSON.parse(py.runPython(
    "import json, sys, importlib.metadata as m\n" +
    "json.dumps({'python': sys.version.split()[0], 'whatruns': m.version('whatruns'), " +
    "'torch_loaded': 'torch' in sys.modules})"));
  const ms = (a, b) => Math.round(b - a);
  return { ...versions, pyodide: py.version, ms: ms(start, performance.now()),
           stages: { python: ms(start, booted), install: ms(booted, installed), import: ms(installed, imported) } };
}

self.onmessage = async (event) => {
  const { id, call, args, wheel, runtime } = event.data;
  try {
    if (call === "boot") {
      booting = booting || boot(wheel, runtime);
      self.postMessage({ id, result: await booting });
      return;
    }
    await booting;
    const start = performance.now();
    const answer = calc.call(call, JSON.stringify(args || {}));
    self.postMessage({ id, result: JSON.parse(answer), ms: performance.now() - start });
  } catch (error) {
    self.postMessage({ id, fatal: String((error && error.message) || error) });
  }
};
