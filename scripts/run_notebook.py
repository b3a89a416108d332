"""Execute a notebook top to bottom with nbclient, so that CI catches a notebook that has rotted.

    .venv/bin/python scripts/run_notebook.py notebooks/quickstart.ipynb [--quick] [--out DIR]

The kernel is this interpreter (a private kernelspec, whatever the user's Jupyter setup says), its
working directory the notebook's folder. ``--quick`` sets ``MLPERF_JAX_NOTEBOOK_QUICK=1`` in the
kernel's environment (the notebook then trains fewer runs and keeps its LoadGen tests short);
``MLPERF_JAX_NOTEBOOK_WORKDIR`` points the notebook's runs and logs into the output folder. The
executed copy (outputs included, also after a failure) is written to ``--out`` (default: a new
temporary folder), never over the committed notebook, which stays without outputs.

Exit status 0 when every cell ran; 1 with one line on stderr naming the failing cell (its index
among all cells, from 0, and its first line of code) and its error; 2 for a bad command line or a
file that is not a notebook.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

PROG = "run_notebook"


def _fail(msg: str, code: int) -> int:
    sys.stderr.write(f"{PROG}: error: {msg}\n")
    sys.stderr.flush()
    return code


def _private_kernelspec(root: str) -> str:
    """A ``python3`` kernelspec that runs this interpreter; returns a JUPYTER_PATH entry.

    JUPYTER_PATH comes first in Jupyter's search path, so a user-level ``python3`` kernel
    pointing at another Python cannot run the notebook against the wrong environment."""
    spec_dir = os.path.join(root, "jupyter", "kernels", "python3")
    os.makedirs(spec_dir, exist_ok=True)
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                   "display_name": "Python 3 (run_notebook)", "language": "python"}, f)
    return os.path.join(root, "jupyter")


def _first_line(source: str) -> str:
    lines = [x.strip() for x in source.splitlines() if x.strip() and not x.strip().startswith("#")]
    text = lines[0] if lines else "(empty)"
    return text if len(text) <= 60 else text[:57] + "..."


def _parse(argv: list[str]) -> argparse.Namespace:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # one line, exit 2, as every CLI here
            raise SystemExit(_fail(message, 2))

    p = Parser(prog=PROG, description="Execute a notebook with nbclient; fail naming the cell.")
    p.add_argument("notebook", help="path of the .ipynb to execute")
    p.add_argument("--quick", action="store_true",
                   help="set MLPERF_JAX_NOTEBOOK_QUICK=1 for the kernel (the short CI run)")
    p.add_argument("--out", default=None,
                   help="folder for the executed copy and the notebook's runs (default: a new "
                        "temporary folder)")
    p.add_argument("--timeout", type=int, default=1800,
                   help="seconds one cell may run before it counts as failed (default 1800)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        import nbformat
        from nbclient import NotebookClient
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    except ImportError as e:
        return _fail(f"{e.name} is not installed (pip install nbclient nbformat ipykernel)", 2)
    path = os.path.abspath(args.notebook)
    if not os.path.isfile(path):
        return _fail(f"no notebook at {path}", 2)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:  # nbformat raises several kinds for a file that is not a notebook
        first = (str(e).splitlines() or [""])[0]
        return _fail(f"{path} is not a readable notebook: {type(e).__name__}: {first}", 2)
    if args.timeout <= 0:
        return _fail(f"--timeout must be positive, got {args.timeout}", 2)
    out = os.path.abspath(args.out or tempfile.mkdtemp(prefix="run_notebook_"))
    os.makedirs(out, exist_ok=True)
    executed = os.path.join(out, os.path.basename(path))
    if executed == path:
        return _fail(f"--out {out} holds the notebook itself; its executed copy would overwrite it", 2)
    env = dict(os.environ, JUPYTER_PATH=_private_kernelspec(out),
               MLPERF_JAX_NOTEBOOK_WORKDIR=os.path.join(out, "work"))
    if args.quick:
        env["MLPERF_JAX_NOTEBOOK_QUICK"] = "1"
    quick = env.get("MLPERF_JAX_NOTEBOOK_QUICK") == "1"

    current = {"index": -1, "t": 0.0}
    times: list[tuple[float, int]] = []

    def on_start(cell, cell_index):
        current.update(index=cell_index, t=time.perf_counter())

    def on_done(cell, cell_index, execute_reply):
        times.append((time.perf_counter() - current["t"], cell_index))

    client = NotebookClient(nb, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}},
                            on_cell_start=on_start, on_cell_executed=on_done)
    kernel_log = os.path.join(out, "kernel.log")  # the kernel process's own chatter, not cells'
    t0 = time.perf_counter()
    err: str | None = None
    try:
        with open(kernel_log, "w") as klog:
            client.execute(env=env, stderr=klog)
    except CellExecutionError as e:
        err = f"{e.ename}: {e.evalue}".splitlines()[0] if e.ename else str(e).splitlines()[-1]
    except CellTimeoutError:
        err = f"timed out after {args.timeout} s"
    except DeadKernelError:
        err = f"the kernel died (out of memory?); its log: {kernel_log}"
    except Exception as e:  # noqa: BLE001 - e.g. a kernel that does not start: still one line
        err = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}; kernel log: {kernel_log}"
    finally:
        nbformat.write(nb, executed)
    total = time.perf_counter() - t0
    if err is not None:
        i = current["index"]
        where = (f"cell {i} ({_first_line(nb.cells[i].source)!r}) failed" if 0 <= i < len(nb.cells)
                 else "failed before any cell ran")
        return _fail(f"{os.path.basename(path)} {where} after {total:.0f} s: {err}; "
                     f"executed copy: {executed}", 1)
    slowest = ", ".join(f"cell {i} {s:.0f} s" for s, i in sorted(times, reverse=True)[:3])
    print(f"{PROG}: {os.path.basename(path)} ran in {total:.1f} s"
          f"{' (quick mode)' if quick else ''}; slowest: {slowest}; executed copy: {executed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
