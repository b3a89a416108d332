"""MLPerf Inference v0.5 rules profile (loadgen/rules.py, multistream_v05.py, results_v05.py).

Oracles: the numbers of the primary sources typed in by hand (mlcommons/inference@r0.5
v0.5/mlperf.conf and test_settings_internal.cc; inference_policies@32c6bfa), and schedules
worked out by hand from the r0.5 MultiStream algorithm (ticks every 1/target_qps; query k
waits for query k-1, then takes the first tick not before now; query k's intervals = the
ticks query k+1 advanced; VALID iff sorted intervals[int(n * percentile)] < 2).
"""

import subprocess
import sys
import threading

import numpy as np
import pytest

from mlperf_jax import loadgen as lg
from mlperf_jax.loadgen import multistream_v05 as ms05
from mlperf_jax.loadgen import results_v05, rules
from mlperf_jax.loadgen.settings import EffectiveSettings, parse_config

MS = lg.TestScenario.MultiStream


# ----------------------------------------------------------------------------- the table
@pytest.mark.parametrize("model,qsl,server_ms,ms_qps,ms_interval_ms,pct,min_q", [
    ("resnet50", 1024, 15, 20.0, 50.0, 0.99, 270_336),
    ("mobilenet", 1024, 10, 20.0, 50.0, 0.99, 270_336),
    ("ssd-mobilenet", 256, 10, 20.0, 50.0, 0.99, 270_336),
    ("ssd-resnet34", 64, 100, 15.0, 1000 / 15, 0.99, 270_336),
    ("gnmt", 3_903_900, 250, 10.0, 100.0, 0.97, 90_112),
])
def test_table_values(model, qsl, server_ms, ms_qps, ms_interval_ms, pct, min_q):
    v = lambda sc, k: rules.value(model, sc, k)  # noqa: E731
    assert v("*", "performance_sample_count") == qsl
    assert v("Server", "target_latency_ms") == server_ms
    assert v("MultiStream", "target_qps") == ms_qps
    assert v("MultiStream", "interval_ms") == pytest.approx(ms_interval_ms)
    assert v("MultiStream", "max_async_queries") == 1
    assert v("MultiStream", "target_latency_percentile") == v("Server", "target_latency_percentile") == pct
    assert v("MultiStream", "min_query_count") == v("Server", "min_query_count") == min_q
    assert v("SingleStream", "target_latency_percentile") == 0.90
    assert v("SingleStream", "min_query_count") == 1024
    assert v("Offline", "min_sample_count") == 24_576
    for sc in ("SingleStream", "MultiStream", "Server", "Offline"):
        assert v(sc, "min_duration_ms") == 60_000
    assert v("*", "qsl_rng_seed") == 3133965575612453542
    assert v("*", "sample_index_rng_seed") == 665484352860916858
    assert v("*", "schedule_rng_seed") == 3622009729038561421
    assert all(s.source for s in rules.V0_5_TABLE.values())


def test_shipped_conf_agrees_with_table():
    text = open(rules.v0_5.conf_path()).read()
    verbatim = text.split("# ---- verbatim from r0.5 v0.5/mlperf.conf ----")[1].split("# ---- end of verbatim part")[0]
    kv = {k: float(v) for k, (_, v) in parse_config(verbatim).items()}
    assert kv["*.MultiStream.target_qps"] == 20 and kv["ssd-resnet34.MultiStream.target_qps"] == 15
    assert kv["gnmt.MultiStream.target_qps"] == 10 and kv["*.MultiStream.max_async_queries"] == 1
    assert kv["*.MultiStream.min_query_count"] == 270336 and kv["gnmt.Server.min_query_count"] == 90112
    assert kv["*.Offline.min_query_count"] == 1  # r0.5; the overlay below the verbatim part adds 24576
    assert parse_config(text)["*.Offline.min_query_count"][1] == "24576"
    # Every table entry sourced to a conf line holds that line's value (percent -> fraction).
    checked = 0
    for (_, _, key), src in rules.V0_5_TABLE.items():
        if src.source.startswith(rules.CONF + " "):
            line = src.source[len(rules.CONF) + 1:]
            assert kv[line] == pytest.approx(src.value * (100 if key.endswith("percentile") else 1)), line
            checked += 1
    assert checked == 5 * 15 + 3  # per model: QSL, 4 durations, 2 SingleStream, 5 MultiStream, 3 Server; seeds


def _effective(model, scenario, **over):
    s = rules.v0_5.configure(lg.TestSettings(scenario=lg.TestScenario[scenario]), model, scenario)
    for k, v in over.items():
        setattr(s, k, v)
    return rules.effective(s, EffectiveSettings.from_requested(s, 10_000_000, 1024))


def test_effective_settings_follow_r05():
    e = _effective("resnet50", "MultiStream")
    assert (e.target_qps, e.target_latency_ns, e.max_async_queries) == (20.0, 50_000_000, 1)
    assert (e.samples_per_query, e.target_latency_percentile, e.min_query_count, e.min_duration_ms) == \
           (4, 0.99, 270_336, 60_000)
    assert (e.qsl_rng_seed, e.performance_sample_count) == (3133965575612453542, 1024)
    assert _effective("ssd-resnet34", "MultiStream").target_latency_ns == 66_666_666  # 1/15 s, truncated
    g = _effective("gnmt", "MultiStream")
    assert (g.target_latency_ns, g.target_latency_percentile, g.min_query_count) == (100_000_000, 0.97, 90_112)
    srv = _effective("resnet50", "Server")
    assert (srv.target_latency_ns, srv.target_latency_percentile, srv.min_query_count) == (15_000_000, 0.99, 270_336)
    assert _effective("gnmt", "Server").target_latency_ns == 250_000_000
    ss = _effective("mobilenet", "SingleStream")
    assert (ss.target_latency_percentile, ss.min_query_count, ss.min_duration_ms) == (0.90, 1024, 60_000)
    assert _effective("resnet50", "Offline").samples_per_query == 24_576  # max(24576, 1.1 * 60 s * 1 qps)
    # The default profile is untouched: MultiStream's rate is still 1 / expected latency.
    d = lg.TestSettings(scenario=MS)
    assert d.rules == "current" and rules.profile_of(d) is rules.current
    assert rules.effective(d, EffectiveSettings.from_requested(d, 100, 100)).target_qps == 1e9 / 8e6


# ------------------------------------------------------------- hand-computed schedules
def test_schedule_model_hand_computed():
    # 50 ms ticks.  q0 tick 50, done 60; q1 tick 100; q2 tick 150, done 220; q3: 200 < 220 so
    # tick 250 (2 ticks), done 260; q4 tick 300, done 430; q5: ticks 350, 400 passed, tick 450.
    got = ms05.query_intervals(np.array([10, 10, 70, 10, 130, 10]) * 1_000_000, 20.0)
    assert got.tolist() == [1, 1, 2, 1, 3, 1]
    # The last query has no successor: ceil(qps * latency) = ceil(20 * 0.12) = 3.
    assert ms05.query_intervals([1_000_000, 120_000_000], 20.0).tolist() == [1, 3]
    assert ms05.decide([1] * 18 + [2, 3], 0.90) == (False, 2)   # index 18 of 20
    assert ms05.decide([1] * 19 + [3], 0.90) == (True, 1)
    assert ms05.decide([1] * 99 + [2], 0.99) == (False, 2)      # index 99 of 100
    assert ms05.decide([1] * 199 + [2], 0.99) == (True, 1)      # index 198 of 200


class _LatencySUT:
    """Answers query k (issue order) after latency(k, n_samples) seconds; inline when 0."""

    def __init__(self, latency):
        self.latency, self.k, self.timers = latency, 0, []

    def issue_queries(self, qs):
        lat = self.latency(self.k, len(qs))
        self.k += 1
        answer = lambda: lg.query_samples_complete([lg.QuerySampleResponse(q.id, b"") for q in qs])  # noqa: E731
        if lat <= 0:
            answer()
        else:
            t = threading.Timer(lat, answer)
            self.timers.append(t)
            t.start()

    def flush_queries(self):
        pass


class _QSL:
    total_sample_count = performance_sample_count = 1024

    def load_samples_to_ram(self, idx):
        pass

    def unload_samples_from_ram(self, idx):
        pass


def _ms_settings(mode=lg.TestMode.PerformanceOnly, **over):
    s = rules.v0_5.configure(lg.TestSettings(scenario=MS, mode=mode), "resnet50", "MultiStream")
    s.mode = mode
    s.min_duration_ms = 0
    for k, v in over.items():
        setattr(s, k, v)
    return s


@pytest.mark.parametrize("slow,intervals,skipped,valid,final_tick", [
    # q3 takes 75 ms: q4 skips the tick at 250 ms (2 intervals); q9 takes 125 ms: q10 skips
    # two ticks (3).  Sorted: 18 x 1, 2, 3; index int(20 * 0.9) = 18 -> 2: INVALID.
    ({3: 0.075, 9: 0.125}, [1, 1, 1, 2] + [1] * 5 + [3] + [1] * 10, 3, False, 23),
    # Only q9 slow: sorted 19 x 1, 3; index 18 -> 1: VALID.
    ({9: 0.125}, [1] * 9 + [3] + [1] * 10, 2, True, 22),
])
def test_multistream_run_matches_hand_schedule(tmp_path, slow, intervals, skipped, valid, final_tick):
    nominal = [slow.get(k, 0.0) for k in range(20)]
    for attempt in range(3):  # the machine is shared: redo a run whose latencies show jitter
        out = tmp_path / str(attempt)
        s = _ms_settings(min_query_count=20, max_query_count=20, multi_stream_target_latency_percentile=0.90)
        r = lg.start_test(_LatencySUT(lambda k, n: nominal[k]), _QSL(), s, outdir=str(out))
        lat = r.summary.pr.query_latencies / 1e9
        if len(lat) == 20 and np.all(np.abs(lat - np.asarray(nominal)) < 0.02):
            break
    else:
        pytest.skip(f"3 runs with > 20 ms scheduling jitter on this machine: {lat}")
    ps = r.summary
    assert r.settings.target_qps == 20.0 and r.settings.samples_per_query == 4
    assert ps.pr.query_intervals.tolist() == intervals
    assert (ps.perf_constraints_met, ps.valid) == (valid, valid)
    assert ps.v05_skipped_intervals == skipped and ps.v05_spilled_queries == sum(i >= 2 for i in intervals)
    # Query 19 went out at tick final_tick: final_tick x 50 ms after the start.
    assert final_tick * 0.05 <= ps.pr.final_query_issued_time < final_tick * 0.05 + 0.02
    text = (out / "mlperf_log_summary.txt").read_text()
    assert "Rules    : v0.5: MLPerf Inference v0.5" in text and "Samples per query : 4" in text
    assert f"Result is : {'VALID' if valid else 'INVALID'}" in text
    assert f"Performance constraints satisfied : {'Yes' if valid else 'NO'}" in text
    assert "Early stopping" not in text
    if not valid:
        assert " * Reduce samples per query to improve latency." in text
    detail = (out / "mlperf_log_detail.txt").read_text()
    assert '"key": "rules_applied", "value": "v0.5: ' in detail
    assert '"key": "result_spilled_query_count"' in detail


def _search(tmp_path, start_n):
    # Latency grows with N: N ms up to N = 11, then 60 ms + N ms (> one 40 ms interval).
    sut = _LatencySUT(lambda k, n: n / 1000 if n <= 11 else 0.060 + n / 1000)
    s = _ms_settings(lg.TestMode.FindPeakPerformance, multi_stream_target_qps=25.0, min_query_count=10,
                     multi_stream_samples_per_query=start_n, multi_stream_target_latency_percentile=0.8)
    return lg.start_test(sut, _QSL(), s, outdir=str(tmp_path))


def test_find_peak_doubles_then_bisects(tmp_path):
    r = _search(tmp_path, 4)
    # Hand: 4 pass, 8 pass, 16 fail -> [8, 16); 12 fail; 10 pass; 11 pass -> [11, 12): 11.
    assert [n for n, _ in r.summary.find_peak_trials] == [4, 8, 16, 12, 10, 11]
    assert [ok for _, ok in r.summary.find_peak_trials] == [True, True, False, False, True, True]
    assert r.summary.settings.samples_per_query == 11 and r.valid
    assert r.summary.metric == ("samples_per_query", 11.0)
    text = (tmp_path / "mlperf_log_summary.txt").read_text()
    assert "Mode     : Find Peak Performance" in text and "Samples per query : 11" in text
    assert "Found peak performance field: 11" in (tmp_path / "mlperf_log_detail.txt").read_text()


def test_find_peak_failing_start_stops(tmp_path):
    r = _search(tmp_path, 16)
    assert r.summary.find_peak_trials == [(16, False)] and not r.valid
    assert r.summary.settings.samples_per_query == 16
    assert "find_peak: no VALID samples per query (the start, 16, fails)" in results_v05.report_lines(r.summary)


# ----------------------------------------------------------------------- the defaults
def test_default_rules_unchanged(tmp_path):
    s = lg.TestSettings(scenario=MS, min_duration_ms=0, min_query_count=5)
    r = lg.start_test(_LatencySUT(lambda k, n: 0.0), _QSL(), s, outdir=str(tmp_path))
    text = (tmp_path / "mlperf_log_summary.txt").read_text()
    assert "Rules" not in text and "Samples per query" not in text and "Early stopping satisfied" in text
    assert r.summary.pr.query_intervals is None
    assert '"key": "rules_applied", "value": "current: ' in (tmp_path / "mlperf_log_detail.txt").read_text()


def test_unknown_rules_refused(tmp_path):
    with pytest.raises(lg.ConfigError, match="unknown rules 'v0.4'"):
        lg.start_test(_LatencySUT(lambda k, n: 0.0), _QSL(), lg.TestSettings(rules="v0.4"), outdir=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "mlperf_jax.infer", "--benchmark=resnet50", "--rules=v0.4"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("infer: error: ") and len(p.stderr.strip().splitlines()) == 1
