"""``python -m mlperf_jax.report summary``: speedups and weighted geometric means checked against
values computed by hand (times chosen so that every speedup is a power of two), on results.json
files written by training's own writer (``mlperf_jax.results.write_json``)."""
from __future__ import annotations

import json
import math

import pytest

from mlperf_jax import results as results_lib
from mlperf_jax.report import summary


def _write(path, benchmark, times_s, *, chips=0, kind="", valid=True, system=None):
    runs = [results_lib.RunResult(
        run=i, seed=i, status="success" if valid else "aborted", time_to_train_s=t, epochs=1.0,
        samples=1, metric=0.9, throughput=1.0, throughput_unit="images", compile_time_s=0.0,
        init_time_s=0.0, device_count=chips, device_kind=kind) for i, t in enumerate(times_s)]
    score = results_lib.olympic_score(runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    results_lib.write_json(str(path), benchmark=benchmark, config_name="tiny", division="open",
                           synthetic=True, target={"top1": 0.8}, metric="top1", results=runs,
                           score=score, round="v0.6")
    if system:
        data = json.loads(path.read_text())
        data["system_name"] = system
        path.write_text(json.dumps(data))
    return path


@pytest.fixture()
def tree(tmp_path):
    """System "8 x tpu": resnet50 olympic mean 10 min (runs 500..700 s: 500 and 700 dropped,
    mean of 540, 600, 660 = 600 s), ssd 2.5 min. System "box-b": resnet50 80 min, ssd invalid."""
    _write(tmp_path / "a" / "resnet50" / "results.json", "resnet50", [600, 540, 660, 500, 700],
           chips=8, kind="tpu")
    _write(tmp_path / "a" / "ssd" / "results.json", "ssd", [150, 140, 160], chips=8, kind="tpu")
    _write(tmp_path / "b" / "resnet50" / "results.json", "resnet50", [4800, 4700, 4900], system="box-b")
    _write(tmp_path / "b" / "ssd" / "results.json", "ssd", [1, 2, 3], valid=False, system="box-b")
    # reference: resnet50 40 min on 1 chip, ssd 20 min on 2 chips (CSV in seconds)
    (tmp_path / "ref.csv").write_text("benchmark,seconds,chips\nresnet50,2400,1\nssd,1200,2\n")
    return tmp_path


def _run(argv, capsys):
    rc = summary.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_equal_weights_per_system_and_per_chip(tree, capsys):
    rc, out, _ = _run([f"--results={tree}", f"--reference={tree}/ref.csv",
                       f"--json={tree}/s.json"], capsys)
    assert rc == 0
    data = json.loads((tree / "s.json").read_text())
    systems = {s["system"]: s for s in data["systems"]}
    a, b = systems["8 x tpu"], systems["box-b"]
    rows = {r["benchmark"]: r for r in a["rows"]}
    # speedups 40/10 = 4 and 20/2.5 = 8; per chip (40x1)/(10x8) = 0.5 and (20x2)/(2.5x8) = 2
    assert rows["resnet50"]["minutes"] == pytest.approx(10.0)
    assert rows["resnet50"]["speedup"] == pytest.approx(4.0)
    assert rows["ssd"]["speedup"] == pytest.approx(8.0)
    assert rows["resnet50"]["per_chip_speedup"] == pytest.approx(0.5)
    assert rows["ssd"]["per_chip_speedup"] == pytest.approx(2.0)
    assert a["geomean_speedup"] == pytest.approx(2 ** 2.5)  # sqrt(4 x 8)
    assert a["geomean_per_chip_speedup"] == pytest.approx(1.0)  # sqrt(0.5 x 2)
    # box-b: resnet50 40/80 = 0.5; its invalid ssd is listed and left out; no chip count known
    assert b["benchmarks_used"] == ["resnet50"]
    assert b["geomean_speedup"] == pytest.approx(0.5)
    assert b["geomean_per_chip_speedup"] is None
    assert {r["benchmark"]: r["note"] for r in b["rows"]}["ssd"].startswith("invalid")
    # labelled as the rules require
    assert "CUSTOM SUMMARY, NOT AN MLPERF SCORE" in out
    assert "does not endorse any official summary result" in out
    assert data["label"] == "CUSTOM SUMMARY, NOT AN MLPERF SCORE"


def test_weighted(tree, capsys):
    (tree / "w.json").write_text(json.dumps({"resnet50": 3, "ssd": 1}))
    ref = tree / "ref.json"  # the same reference, JSON form, minutes with chips
    ref.write_text(json.dumps({"name": "hand", "unit": "minutes",
                               "times": {"resnet50": 40, "ssd": {"time": 20, "chips": 2}}}))
    rc, out, _ = _run([f"--results={tree}/a", f"--reference={ref}", f"--weights={tree}/w.json",
                       f"--json={tree}/s.json"], capsys)
    assert rc == 0
    (a,) = json.loads((tree / "s.json").read_text())["systems"]
    # exp((3 ln 4 + ln 8) / 4) = 2^(9/4); per chip exp((3 ln 0.5 + ln 2) / 4) = 2^(-1/2)
    assert a["geomean_speedup"] == pytest.approx(2 ** 2.25)
    assert a["geomean_per_chip_speedup"] == pytest.approx(2 ** -0.5)
    assert f"{2 ** 2.25:.4f}" in out
    # inline weights, weight 0 leaves a benchmark out: the summary is resnet50's speedup alone
    rc, _, _ = _run([f"--results={tree}/a", f"--reference={ref}", "--weights=resnet50=1,ssd=0",
                     f"--json={tree}/s.json"], capsys)
    (a,) = json.loads((tree / "s.json").read_text())["systems"]
    assert rc == 0 and a["geomean_speedup"] == pytest.approx(4.0) and a["benchmarks_used"] == ["resnet50"]


def test_weighted_geomean_by_hand():
    assert summary.weighted_geomean([2, 8], [1, 1]) == pytest.approx(4.0)
    assert summary.weighted_geomean([1, 1000], [2, 1]) == pytest.approx(10.0)
    assert summary.weighted_geomean([3], [5]) == pytest.approx(3.0)
    assert math.isclose(summary.weighted_geomean([0.25, 4, 1], [1, 1, 1]), 1.0)


@pytest.mark.parametrize("extra, needle", [
    (["--weights=resnet50=1"], "no weight for ssd"),
    (["--reference=/nonexistent/ref.json"], "no such file"),
    (["--weights=resnet50"], "expected NAME=WEIGHT"),
])
def test_errors_are_one_line_exit_2(tree, capsys, extra, needle):
    argv = [f"--results={tree}/a", f"--reference={tree}/ref.csv"] + extra
    rc, _, err = _run(argv, capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("report: error:") and needle in err


def test_two_results_of_one_benchmark_on_one_system_is_an_error(tree, capsys):
    _write(tree / "c" / "results.json", "resnet50", [1, 2, 3], chips=8, kind="tpu")
    rc, _, err = _run([f"--results={tree}/a,{tree}/c", f"--reference={tree}/ref.csv"], capsys)
    assert rc == 2 and "a second result for resnet50" in err


def test_missing_flag_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        summary.main(["--results=x"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--reference" in err
