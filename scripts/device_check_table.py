"""The table of ``scripts/device_check.sh``: one row per step, parsed from each step's output.

    python scripts/device_check_table.py OUTDIR
"""
from __future__ import annotations

import os
import re
import sys

STEPS = (("resnet50_train", "ResNet-50 train step, bf16"),
         ("transformer_train", "Transformer-big train step, bf16"),
         ("ncf_train", "NCF train step"),
         ("resnet50_offline", "ResNet-50 Offline SUT, bf16"))


def _find(pattern: str, text: str) -> str | None:
    m = re.search(pattern, text, re.MULTILINE)
    return m.group(1) if m else None


def _peak_memory(text: str) -> str:
    """The device's peak (``X.XX GiB``), or ``host RSS X.XX GiB`` where the platform keeps no
    device memory stats (CPU: the line then gives the process's peak resident set instead)."""
    dev = _find(r"^jax: peak device memory ([\d.]+ GiB)", text)
    if dev:
        return dev
    rss = _find(r"^jax: peak device memory n/a \(.*\); peak host RSS ([\d.]+ GiB)", text)
    return f"host RSS {rss}" if rss else "-"


def row(outdir: str, name: str) -> dict[str, str]:
    """What one step measured; every missing figure is '-' and the status says why."""
    text = open(os.path.join(outdir, f"{name}.txt"), errors="replace").read() \
        if os.path.exists(os.path.join(outdir, f"{name}.txt")) else ""
    rc, secs = (open(os.path.join(outdir, f"{name}.rc")).read().split() + ["?", "?"])[:2] \
        if os.path.exists(os.path.join(outdir, f"{name}.rc")) else ("?", "?")
    status = {"0": "ok", "124": "TIMEOUT", "137": "KILLED"}.get(rc, f"exit {rc}")
    if name.endswith("_offline"):
        rate = _find(r"samples_per_second = ([\d.e+]+)", text)
        valid = _find(r"Result is : (VALID|INVALID)", text)
        return {"rate": f"{float(rate):,.1f} samples/s" if rate else "-", "compile": _find(
            r"compiled batch sizes .* in ([\d.]+) s", text) or "-", "peak": "-", "device": _find(
                r"(\d+ \w+ device\(s\))", text) or "-", "extra": valid or "-",
                "status": status, "wall": secs}
    rate = _find(r"^jax: ([\d,.]+ \w+/s)", text)
    frac = _find(r"= (\d+%) of the \w+ matmul peak", text)
    return {"rate": rate or "-", "compile": _find(r"^jax: compile time ([\d.]+) s", text) or "-",
            "peak": _peak_memory(text),
            "device": _find(r"^benchmark: .*?, (\d+ \w+ device\(s\))", text) or "-",
            "extra": f"{frac} of matmul peak" if frac else "-", "status": status, "wall": secs}


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not os.path.isdir(argv[1]):
        print("device_check_table: error: usage: device_check_table.py OUTDIR (a device_check.sh "
              "output folder)", file=sys.stderr)
        return 2
    head = ("step", "throughput", "compile (s)", "peak memory", "devices", "note", "status", "wall (s)")
    rows = [(title, *(r[k] for k in ("rate", "compile", "peak", "device", "extra", "status", "wall")))
            for name, title in STEPS for r in [row(argv[1], name)]]
    widths = [max(len(str(x[i])) for x in (head, *rows)) for i in range(len(head))]
    line = lambda xs: "  ".join(str(x).ljust(w) for x, w in zip(xs, widths))  # noqa: E731
    print(line(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))
    print(f"(full outputs in {os.path.abspath(argv[1])})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
