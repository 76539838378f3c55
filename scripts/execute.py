"""Execute notebooks in place, storing their outputs (the book's claims, which nbval re-derives).

    python scripts/execute.py book/02_dense.ipynb ...     # or no arguments: every notebook in book/

Runs each notebook from its own folder, prints how long it took.
"""

import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient

paths = [pathlib.Path(p) for p in sys.argv[1:]] or sorted(pathlib.Path("book").glob("*.ipynb"))
for path in paths:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    print(f"{path}: {time.perf_counter() - start:.1f} s")
