"""Expected test duration, the trial hint and --target_qps=auto (inference/planning.py).

Oracles: durations worked out by hand from the LoadGen rules (each case says how), the
early-stopping query counts of the rules (MLPERF_RULES.md 2.1: 64 at p90; mlperf.conf's
``*.MultiStream.min_query_count = 662``; p99 with no over-latency query: ceil(ln 0.01 / ln 0.99)
= 459), and for auto the length of a real LoadGen test run at the measured rate.
"""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from mlperf_jax import loadgen as lg
from mlperf_jax.inference import ClassifierSUT, SyntheticImageQSL, planning
from mlperf_jax.loadgen import rules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _settings(scenario, model="resnet50", rule="current", mode=lg.TestMode.PerformanceOnly, **kw):
    s = lg.TestSettings(scenario=lg.TestScenario[scenario], mode=mode)
    rules.get(rule).configure(s, model, scenario)
    s.mode = mode
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def _m(scenario, sps, latency=None):
    return planning.Measurement(lg.TestScenario[scenario], sps, latency, 100, 1, 2.0)


def test_offline():
    # resnet50 Offline (mlperf.conf: min_duration 600 s, min_query_count 24,576).
    # 50/s expected: int(1.1 x 600 x 50) = 33,000 > 24,576 -> 33,000 samples / 50 = 660 s.
    e = planning.estimate(_settings("Offline", offline_expected_qps=50.0), 50_000, 1024)
    assert (e.queries, e.samples, e.seconds) == (1, 33_000, pytest.approx(660.0))
    # 10/s: int(6,600) < 24,576 -> 24,576 / 10 = 2,457.6 s.
    e = planning.estimate(_settings("Offline", offline_expected_qps=10.0), 50_000, 1024)
    assert (e.samples, e.seconds) == (24_576, pytest.approx(2457.6)) and not e.warnings
    # The default expectation (1 sample/s): 24,576 s = 6 h 49 min, and the hint to shorten it.
    lines = planning.plan_lines(_settings("Offline"), 50_000, 1024)
    assert "about 6 h 49 min" in lines[0] and "24,576 samples" in lines[0]
    assert "--min_duration_ms=5000 --min_query_count=1" in lines[-1] and "NOT valid for submission" in lines[-1]
    # Measured 1,000/s with 24,576 samples: answered in 24.6 s < 600 s, so min_duration fails.
    e = planning.estimate(_settings("Offline", offline_expected_qps=10.0), 50_000, 1024, _m("Offline", 1000.0))
    assert e.seconds == pytest.approx(24.576) and any("before min_duration" in w for w in e.warnings)


def test_server():
    # Poisson at 50 QPS, min_duration 600 s, min_query_count 100 (default): ~30,001 queries, 600 s.
    e = planning.estimate(_settings("Server", server_target_qps=50.0), 50_000, 1024)
    assert (e.queries, e.seconds) == (30_001, pytest.approx(600.0))
    # v0.5 rules: min_query_count 270,336 at 100 QPS -> 2,703.36 s.
    e = planning.estimate(_settings("Server", rule="v0.5", server_target_qps=100.0), 50_000, 1024)
    assert (e.queries, e.seconds) == (270_336, pytest.approx(2703.36))
    # max_duration 60 s ends it early, and says why.
    e = planning.estimate(_settings("Server", server_target_qps=50.0, max_duration_ms=60_000), 50_000, 1024)
    assert e.seconds == pytest.approx(60.0) and any("max_duration" in w for w in e.warnings)
    # A target above the measured throughput cannot be kept up with.
    e = planning.estimate(_settings("Server", server_target_qps=50.0), 50_000, 1024, _m("Offline", 40.0))
    assert any("above the measured throughput" in w for w in e.warnings)


def test_single_stream():
    # Expected latency 10 ms (mlperf.conf *.SingleStream.target_latency), 600 s: 60,000 queries.
    e = planning.estimate(_settings("SingleStream"), 50_000, 1024)
    assert (e.queries, e.seconds) == (60_000, pytest.approx(600.0)) and not e.warnings
    # Measured 25 ms: 24,000 queries, still 600 s.
    e = planning.estimate(_settings("SingleStream"), 50_000, 1024, _m("SingleStream", 40.0, 0.025))
    assert (e.queries, e.seconds) == (24_000, pytest.approx(600.0))
    # Measured 2 ms: 300,000 needed, but the LoadGen generated ceil(2 x 600 s / 10 ms) + 1 =
    # 120,001, used up after 240.002 s (before min_duration: INVALID).
    e = planning.estimate(_settings("SingleStream"), 50_000, 1024, _m("SingleStream", 500.0, 0.002))
    assert (e.queries, e.seconds) == (120_001, pytest.approx(240.002)) and "run out" in e.warnings[0]


def test_multi_stream():
    # Expected 80 ms, 8 samples per query, min_query_count 662, 600 s: 7,500 queries, 60,000 samples.
    e = planning.estimate(_settings("MultiStream"), 50_000, 1024)
    assert (e.queries, e.samples, e.seconds) == (7_500, 60_000, pytest.approx(600.0))
    # 5 s trial: the 662 queries dominate: 662 x 80 ms = 52.96 s.
    e = planning.estimate(_settings("MultiStream", min_duration_ms=5_000), 50_000, 1024)
    assert (e.queries, e.seconds) == (662, pytest.approx(52.96))
    # v0.5 rules: a query every 1/20 s until 270,336 queries: 13,516.8 s.
    e = planning.estimate(_settings("MultiStream", rule="v0.5"), 50_000, 1024)
    assert (e.queries, e.seconds) == (270_336, pytest.approx(13_516.8))


def test_accuracy_and_submission_modes():
    # Every one of 50,000 samples once at 50/s: 1,000 s; SubmissionRun adds the 660 s run.
    acc = planning.estimate(_settings("Offline", mode=lg.TestMode.AccuracyOnly, offline_expected_qps=50.0),
                            50_000, 1024)
    assert (acc.samples, acc.seconds) == (50_000, pytest.approx(1000.0))
    sub = planning.estimate(_settings("Offline", mode=lg.TestMode.SubmissionRun, offline_expected_qps=50.0),
                            50_000, 1024)
    assert sub.seconds == pytest.approx(1660.0)


@pytest.mark.parametrize("scenario,count", [("Offline", 1), ("SingleStream", 64), ("MultiStream", 662),
                                            ("Server", 459)])
def test_trial_counts_are_the_early_stopping_minimums(scenario, count):
    flags, _ = planning.trial_overrides(_settings(scenario), 50_000, 1024)
    assert flags == {"min_duration_ms": 5_000, "min_query_count": count}


def test_parse_target_qps():
    assert planning.parse_target_qps(None) is None
    assert planning.parse_target_qps("auto") == "auto" and planning.parse_target_qps("12.5") == 12.5
    for bad in ("abc", "0", "-3", "nan", "inf"):
        with pytest.raises(ValueError, match="--target_qps"):
            planning.parse_target_qps(bad)


class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


@pytest.fixture(scope="module")
def tiny_sut():
    model = TinyNet()
    v = jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3))))(jax.random.key(0))
    qsl = SyntheticImageQSL(image_size=32, total=256, performance_sample_count=64, num_classes=10)
    with ClassifierSUT(model.apply, v, qsl, preprocessing="resnet50", image_size=32, batch_sizes=(1, 8)) as sut:
        yield sut, qsl


def test_auto_offline_rate_predicts_the_real_run(tiny_sut, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the probes must leave no log files behind
    sut, qsl = tiny_sut
    s = lg.TestSettings(scenario=lg.TestScenario.Offline, mode=lg.TestMode.PerformanceOnly,
                        min_duration_ms=1000, min_query_count=1)
    m, lines = planning.auto_target(sut, qsl, s, budget_s=1.0)
    assert m.samples_per_second > 0
    assert s.offline_expected_qps == pytest.approx(planning.OFFLINE_FACTOR * m.samples_per_second)
    assert "offline_expected_qps set to" in lines[0] and "measured" in lines[0]
    predicted = planning.estimate(s, qsl.total_sample_count, qsl.performance_sample_count, m)
    assert os.listdir(tmp_path) == []
    r = lg.start_test(sut, qsl, s, outdir=tmp_path / "run")
    actual = r.summary.pr.final_query_all_samples_done_time
    # The real run lasts about what the measured rate predicts (1.1 x min_duration here).
    assert r.summary.sample_count == predicted.samples
    assert 1 / 3 < actual / predicted.seconds < 3, (actual, predicted.seconds)


def test_auto_server_and_single_stream(tiny_sut):
    sut, qsl = tiny_sut
    s = lg.TestSettings(scenario=lg.TestScenario.Server)
    m, lines = planning.auto_target(sut, qsl, s, budget_s=0.5)
    assert m.samples_per_second > 0
    assert s.server_target_qps == pytest.approx(planning.SERVER_FRACTION * m.samples_per_second)
    assert f"server_target_qps set to {planning.SERVER_FRACTION:g} x" in lines[0]
    s = lg.TestSettings(scenario=lg.TestScenario.SingleStream)
    m, lines = planning.auto_target(sut, qsl, s, budget_s=0.5)
    assert m.query_latency_s > 0 and s.single_stream_expected_latency_ns == pytest.approx(m.query_latency_s * 1e9)
    assert "single_stream_expected_latency_ns set to" in lines[0]


def test_cli_bad_target_qps_is_one_line():
    p = subprocess.run([sys.executable, "-m", "mlperf_jax.infer", "--benchmark=resnet50", "--target_qps=abc"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert lines[0] == "infer: error: --target_qps=abc: expected a number > 0 or 'auto'"
