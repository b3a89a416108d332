"""Run-to-run spread and the vision criterion (mlperf_jax.variance) on hand-made results, with
hand-computed values and training_policies' own CV table as oracles."""
import dataclasses
import json
import os

import pytest

from mlperf_jax import results as R
from mlperf_jax import variance as V


def _rr(run, t, epochs=4.0, ok=True, **kw):
    return R.RunResult(run=run, seed=run, status="success" if ok else "aborted",
                       time_to_train_s=t, epochs=epochs, samples=1, metric=0.9, throughput=100.0,
                       throughput_unit="images", compile_time_s=0.1, init_time_s=0.2, **kw)


def test_spread_by_hand():
    s = V.spread([10.0, 12.0, 14.0])
    # mean 12, sample variance ((-2)^2 + 0 + 2^2) / (3 - 1) = 4, sd 2, CV 2/12
    assert (s.n, s.min, s.max, s.mean) == (3, 10.0, 14.0, 12.0)
    assert s.cv == pytest.approx(1 / 6)
    assert V.spread([5.0]).cv is None and V.spread([]).n == 0


def test_cv_matches_training_policies_table():
    """CONTRIBUTING.md of mlcommons/training_policies (d73e20f) lists rgat at batch 4096: mean
    epochs 0.79, std 0.0347926187, from rcp_checker/training_5.1.0/rcps_rgat.json."""
    import mlperf_logging.rcp_checker as rc
    path = os.path.join(os.path.dirname(rc.__file__), "training_5.1.0", "rcps_rgat.json")
    epochs = json.load(open(path))["rgat_ref_4096"]["Epochs to converge"]
    s = V.spread(epochs)
    assert s.mean == pytest.approx(0.79)
    assert s.cv * s.mean == pytest.approx(0.0347926187, abs=1e-10)
    assert round(s.cv, 2) == 0.04


def test_vision_criterion_five_runs_one_outlier_named():
    runs = [_rr(0, 100.0), _rr(1, 101.0), _rr(2, 99.0), _rr(3, 100.5), _rr(4, 110.0)]
    b = V.band_check(runs, "resnet50")
    # median 100.5; band 100.5 +- 5.025 = [95.475, 105.525]; 110 is +9.45%
    assert b.median_s == 100.5 and b.applies and b.enough_runs
    assert b.within == [0, 1, 2, 3] and b.outside == [(4, "+9.5%")]
    assert not b.met  # 4/5 = 80% < 90%
    ok = V.band_check(runs[:4] + [_rr(4, 105.5)], "resnet50")  # +4.98%: inside
    assert ok.met and ok.outside == []


def test_vision_criterion_edges_and_non_converged():
    # exactly 5% off the median (100) is inside
    assert V.band_check([_rr(i, t) for i, t in enumerate([95.0, 100, 100, 100, 105])]).met
    # ten runs: 9 inside is 90%, met; 8 inside is not
    ten = [_rr(i, 100.0) for i in range(9)] + [_rr(9, 200.0)]
    assert V.band_check(ten, "ssd").met
    nine_in = ten[:8] + [_rr(8, 50.0), _rr(9, 200.0)]
    b = V.band_check(nine_in, "ssd")
    assert not b.met and [r for r, _ in b.outside] == [8, 9]
    # a run that did not converge is outside, named, and left out of the median
    runs = [_rr(0, 100.0), _rr(1, 102.0), _rr(2, 98.0), _rr(3, 101.0), _rr(4, 3.0, ok=False)]
    b = V.band_check(runs, "maskrcnn")
    assert b.median_s == 100.5 and b.outside == [(4, "did not converge")] and not b.met
    assert not V.band_check(runs, "ncf").applies


def test_table_and_json_carry_spread_and_criterion(tmp_path):
    runs = [_rr(0, 100.0, 4), _rr(1, 101.0, 4), _rr(2, 99.0, 4), _rr(3, 100.5, 5),
            _rr(4, 110.0, 5)]
    score = R.olympic_score(runs)
    table = R.format_table("resnet50", "tiny", runs, score, "top1 >= 0.759", "top1", True)
    # time: min 99, max 110, mean 102.1, sample sd sqrt(80.2 / 4); epochs 4,4,4,5,5: sd sqrt(0.3)
    assert "time to train min 99.00 s, max 110.00 s, CV 4.4%" in table
    assert "epochs to converge min 4.00, max 5.00, CV 12.4%" in table
    assert "vision criterion: 4/5 runs within 5% of the median 100.50 s (90% needed): NOT met" \
        in table
    assert "outside the band: run 4 (+9.5%)" in table
    assert max(len(line) for line in table.splitlines()) <= 120
    path = tmp_path / "results.json"
    R.write_json(str(path), benchmark="resnet50", config_name="tiny", division="open",
                 synthetic=True, target={"top1": 0.759}, metric="top1", results=runs,
                 score=score)
    v = json.load(open(path))["variance"]
    assert v["time_to_train_s"]["min"] == 99.0 and v["time_to_train_s"]["max"] == 110.0
    assert v["time_to_train_s"]["cv"] == pytest.approx(4.47772264 / 102.1, rel=1e-7)
    assert v["epochs_to_converge"]["cv"] == pytest.approx(0.5477225575 / 4.4, rel=1e-8)
    assert v["band"]["outside"] == [{"run": 4, "why": "+9.5%"}] and v["band"]["met"] is False


def test_old_result_json_still_loads_and_prints():
    """A run_N/result.json written before the device and energy fields existed."""
    old = dataclasses.asdict(_rr(0, 100.0))
    for k in ("device_count", "device_kind", "energy_j", "avg_power_w", "energy_source"):
        old.pop(k)
    r = R.RunResult(**old)
    assert r.device_count == 0 and r.energy_j is None and r.per_chip_throughput is None
    table = R.format_table("resnet50", "tiny", [r], R.olympic_score([r]), "t", "top1", True)
    assert "energy: not measured (no meter ran)" in table
    assert "energy (J)" not in table


def test_energy_lines_when_columns_do_not_fit():
    """Five runs (row marks for the dropped ones): energy goes under the table, per run."""
    kw = dict(device_count=8, device_kind="NVIDIA H200", energy_source="NVML total energy, 8 GPU(s)")
    runs = [_rr(i, 100.0 + i, energy_j=1000.0 * (i + 1), avg_power_w=10.0 * (i + 1), **kw)
            for i in range(5)]
    score = R.olympic_score(runs)
    table = R.format_table("resnet50", "tiny", runs, score, "t", "top1", True)
    assert max(len(line) for line in table.splitlines()) <= 120
    assert "energy (J)" not in table.splitlines()[1]
    assert "run 0 1,000 J / 10.0 W" in table
    # mean 3000 J and 30 W over 5 runs; the score's runs 1..3 average 3000 J
    assert "mean 3,000 J, mean 30.0 W over 5 run(s); 3,000 J over the runs the score uses" in table
    assert "devices: 8 x NVIDIA H200; mean per-chip throughput 12.5 images/s" in table
