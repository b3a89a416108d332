"""Sample indices, loaded sets and the Server schedule are identical to mlperf_loadgen's."""

import json

import mlperf_loadgen as lg  # the official LoadGen: a test dependency (the `test` extra)
import numpy as np
import pytest

from mlperf_jax import loadgen as ours
from mlperf_jax.loadgen import compat as _compat  # noqa: F401  (makes ours.compat available)
from mlperf_jax.loadgen import _rng
from mlperf_jax.loadgen.early_stopping import MinPassingQueriesFinder, odds


def _record(mod, scenario, mode, outdir, total=50, perf=20, **kw):
    issued, loads = [], []

    def issue(qs):
        issued.append([q.index for q in qs])
        mod.QuerySamplesComplete([mod.QuerySampleResponse(q.id, 0, 0) for q in qs])

    s = mod.TestSettings()
    s.scenario = getattr(mod.TestScenario, scenario)
    s.mode = getattr(mod.TestMode, mode)
    s.min_duration_ms, s.min_query_count = 40, 30
    s.server_target_qps = s.offline_expected_qps = 1000
    s.single_stream_expected_latency_ns = 1_000_000
    s.qsl_rng_seed, s.sample_index_rng_seed, s.schedule_rng_seed = 1780908523862526354, 7, 18209322760996052031
    for k, v in kw.items():
        setattr(s, k, v)
    ls = mod.LogSettings()
    ls.log_output.outdir = str(outdir)
    ls.enable_trace = False
    sut = mod.ConstructSUT(issue, lambda: None)
    qsl = mod.ConstructQSL(total, perf, lambda x: loads.append(list(x)), lambda x: None)
    mod.StartTestWithLogSettings(sut, qsl, s, ls)
    mod.DestroyQSL(qsl)
    mod.DestroySUT(sut)
    detail = {}
    for line in open(outdir / "mlperf_log_detail.txt"):
        if line.startswith(":::MLLOG"):
            e = json.loads(line[len(":::MLLOG "):])
            detail.setdefault(e["key"], []).append(e["value"])
    return issued, loads, detail


@pytest.mark.parametrize("scenario", ["SingleStream", "MultiStream", "Server", "Offline"])
@pytest.mark.parametrize("mode", ["PerformanceOnly", "AccuracyOnly"])
def test_same_queries_as_official(tmp_path, scenario, mode):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    kw = dict(total=45, perf=16) if mode == "AccuracyOnly" else {}
    i1, l1, d1 = _record(lg, scenario, mode, tmp_path / "a", **kw)
    i2, l2, d2 = _record(ours.compat, scenario, mode, tmp_path / "b", **kw)
    assert l1 == l2
    assert i1 == i2
    for key in ("loaded_qsl_set", "generated_query_count", "generated_samples_per_query",
                "generated_query_duration", "effective_samples_per_query", "effective_min_sample_count",
                "effective_target_qps", "effective_performance_sample_count"):
        assert d1.get(key) == d2.get(key), key


def test_issue_unique_and_concatenate_permutation(tmp_path):
    for i, kw in enumerate([dict(performance_issue_unique=True), dict(sample_concatenate_permutation=True)]):
        (tmp_path / f"a{i}").mkdir(), (tmp_path / f"b{i}").mkdir()
        i1, _, _ = _record(lg, "SingleStream", "PerformanceOnly", tmp_path / f"a{i}", **kw)
        i2, _, _ = _record(ours.compat, "SingleStream", "PerformanceOnly", tmp_path / f"b{i}", **kw)
        assert i1 == i2, kw


def _reference_mt19937(seed, n):
    """``n`` outputs of MT19937 seeded by Matsumoto-Nishimura's ``init_genrand`` (what
    ``std::mt19937(seed)`` does with ``seed mod 2**32``), from numpy's legacy ``RandomState``."""
    _, key, pos, *_ = np.random.RandomState(seed & 0xFFFFFFFF).get_state()
    bg = np.random.MT19937()
    bg.state = {"bit_generator": "MT19937", "state": {"key": key, "pos": pos}}
    return bg.random_raw(n).tolist()


def test_mt19937_and_distributions():
    r = _rng.MT19937(5489)
    assert r.next() == 3499211612  # the first output of a default-seeded std::mt19937
    for _ in range(9998):
        r.next()
    assert r.next() == 4123659995  # the C++ standard's check value: the 10000th output [rand.predef]
    for seed in (0, 3, 1780908523862526354, 18209322760996052031):  # incl. the 64-bit LoadGen seeds
        r = _rng.MT19937(seed)
        assert [r.next() for _ in range(700)] == _reference_mt19937(seed, 700), seed  # > 624: a twist
    r = _rng.MT19937(0)
    seq = list(range(20))
    r.shuffle(seq)
    assert seq == [0, 13, 1, 17, 9, 11, 4, 16, 6, 10, 3, 18, 14, 2, 7, 8, 19, 5, 15, 12]  # official loaded set
    a, b = _rng.MT19937(3), _rng.MT19937(3)
    assert a.uniform_ints(5000, 0, 999).tolist() == [b.uniform_int(0, 999) for _ in range(5000)]


def test_early_stopping_counts():
    f = MinPassingQueriesFinder()
    # The official summaries say: 64 queries for p90, 662 for p99, 459 with no over-latency query.
    assert f(1, 0.9, 0.0, 0.99) + 1 == 64
    assert f(1, 0.99, 0.0, 0.99) + 1 == 662
    assert f(0, 0.99, 0.0, 0.99) == 459
    # h is the least h with P(<= t over-latency in h + t) < 1 - c, by a direct binomial sum.
    from scipy import stats
    for t in (0, 3, 17):
        h = MinPassingQueriesFinder()(t, 0.99, 0.0, 0.99)
        assert stats.binom.cdf(t, h + t, 0.01) < 0.01 <= stats.binom.cdf(t, h - 1 + t, 0.01)
        assert odds(h, t, 0.99, 0.0) == pytest.approx(stats.binom.cdf(t, h + t, 0.01), rel=1e-9)
    assert odds(10, 2, 0.9, 0.0) == pytest.approx(stats.binom.cdf(2, 12, 0.1), rel=1e-9)  # p = 0.9
    assert odds(10, 2, 0.9, 0.05) == pytest.approx(stats.binom.cdf(2, 12, 0.15), rel=1e-9)  # p - d
