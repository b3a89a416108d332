"""scripts/bench_infer.py on a tiny shape: each scenario's side-by-side rows come out, with the
model-only reference measured the way the scenario uses the model, and bad arguments are one line."""
import re

import pytest

from conftest import run_python

SCRIPT = "scripts/bench_infer.py"
TINY = ["--benchmark", "mobilenet", "--batch_size", "2", "--image_size", "32", "--seconds", "0.5",
        "--torch", "off"]


def _row(label: str, text: str) -> tuple[float, float]:
    m = re.search(rf"^{re.escape(label)}\s+([0-9.]+)\s+([0-9.]+)$", text, re.MULTILINE)
    assert m, f"no row {label!r} in:\n{text}"
    return float(m.group(1)), float(m.group(2))


@pytest.mark.parametrize("scenario,model_row,e2e_row", [
    ("Offline", "model only (images/s)", "Offline end to end (samples/s)"),
    ("Server", "Server target (QPS)", "Server completed (samples/s)"),
    ("SingleStream", "model batch 1 p90 latency (ms)", "SingleStream p90 latency (ms)"),
])
def test_each_scenario_prints_the_model_and_the_end_to_end_row(scenario, model_row, e2e_row):
    r = run_python([SCRIPT, *TINY, "--scenario", scenario], timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    model, one = _row(model_row, r.stdout)
    e2e, ratio = _row(e2e_row, r.stdout)
    assert one == 1.0 and model > 0 and e2e > 0
    # the ratio column is the end-to-end figure against the model's, oriented so 1.0 is parity
    want = e2e / model if scenario != "SingleStream" else model / e2e
    assert ratio == pytest.approx(want, abs=2e-3)


def test_bad_arguments_are_one_line_and_exit_2():
    r = run_python([SCRIPT, "--batch_size", "0"], timeout=120)
    assert r.returncode == 2
    assert "--batch_size >= 1" in r.stderr and len(r.stderr.strip().splitlines()) == 1
