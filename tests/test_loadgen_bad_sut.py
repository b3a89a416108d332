"""SUTs that misbehave: never answer, answer twice, answer unknown ids, raise.

Bad answers are logged errors that make the run INVALID, never exceptions in the SUT's thread
(a harness worker thread must survive them)."""

import json
import threading

import pytest

from mlperf_jax import loadgen as lg
from mlperf_jax.loadgen import core


class QSL:
    total_sample_count = 64
    performance_sample_count = 16
    name = "TestQSL"

    def load_samples_to_ram(self, idx):
        pass

    def unload_samples_from_ram(self, idx):
        pass


def settings(scenario, **kw):
    s = lg.TestSettings(scenario=scenario, mode=lg.TestMode.PerformanceOnly, min_duration_ms=100,
                        min_query_count=20, server_target_qps=200, offline_expected_qps=200,
                        single_stream_expected_latency_ns=1_000_000)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def detail(outdir):
    out = []
    for line in open(outdir / "mlperf_log_detail.txt"):
        e = json.loads(line[len(":::MLLOG "):])
        out.append((e["key"], e["value"], e["metadata"]["is_error"]))
    return out


class Silent:
    name = "Silent"

    def issue_queries(self, qs):
        pass

    def flush_queries(self):
        pass


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", list(lg.TestScenario))
def test_never_answers_ends_invalid_at_the_answer_guard(tmp_path, scenario, monkeypatch):
    # The guard is max(ANSWER_GUARD_MIN_MS, FACTOR x max_duration) (minutes by default): shortened.
    monkeypatch.setattr(core, "ANSWER_GUARD_MIN_MS", 0)
    monkeypatch.setattr(core, "ANSWER_GUARD_FACTOR", 2)
    monkeypatch.setattr(core, "ANSWER_GUARD_IDLE_MS", 100)
    r = lg.start_test(Silent(), QSL(), settings(scenario, max_duration_ms=300), outdir=tmp_path)
    assert not r.valid
    text = (tmp_path / "mlperf_log_summary.txt").read_text()
    assert "Result is : INVALID" in text
    assert "did not answer" in text and "answer guard" in text and "max_duration 300 ms" in text
    errs = [v for k, v, e in detail(tmp_path) if e]
    assert any("did not answer" in v for v in errs)
    reason = [v for k, v, e in detail(tmp_path) if k == "result_invalid_reason"]
    assert reason and "did not answer" in reason[0]


class Twice:
    def __init__(self, when=5):
        self.n, self.when, self.dup = 0, when, None

    def issue_queries(self, qs):
        self.n += 1
        resp = [lg.QuerySampleResponse(q.id, b"x") for q in qs]
        lg.query_samples_complete(resp)
        if self.n == self.when:
            self.dup = resp[0].id
            lg.query_samples_complete(resp[:1])  # must not raise

    def flush_queries(self):
        pass


def test_answers_twice_names_the_id(tmp_path):
    sut = Twice()
    r = lg.start_test(sut, QSL(), settings(lg.TestScenario.SingleStream), outdir=tmp_path)
    dup_id = sut.dup
    assert dup_id is not None
    assert any(f"sample id {dup_id} more than once" in v for k, v, e in detail(tmp_path) if e)
    assert not r.valid
    assert any(f"sample id {dup_id} more than once" in e for e in r.errors)
    assert f"sample id {dup_id} more than once" in (tmp_path / "mlperf_log_summary.txt").read_text()


class Unknown:
    def issue_queries(self, qs):
        lg.query_samples_complete([lg.QuerySampleResponse(q.id + 10_000, b"") for q in qs])

    def flush_queries(self):
        pass


@pytest.mark.parametrize("scenario", [lg.TestScenario.Server, lg.TestScenario.Offline])
def test_unknown_id_names_the_id(tmp_path, scenario, monkeypatch):
    monkeypatch.setattr(core, "ANSWER_GUARD_MIN_MS", 0)  # the real samples are never answered
    monkeypatch.setattr(core, "ANSWER_GUARD_FACTOR", 1)
    monkeypatch.setattr(core, "ANSWER_GUARD_IDLE_MS", 100)
    seen = []

    class Wrapped(Unknown):
        def issue_queries(self, qs):
            seen.append(qs[0].id + 10_000)
            super().issue_queries(qs)  # must not raise

    r = lg.start_test(Wrapped(), QSL(), settings(scenario, max_duration_ms=1000), outdir=tmp_path)
    bad = seen[0]
    assert any(f"unknown response id {bad}" in v for k, v, e in detail(tmp_path) if e)
    assert not r.valid
    assert f"unknown response id {bad}" in (tmp_path / "mlperf_log_summary.txt").read_text()


class Raises:
    def __init__(self, on="issue"):
        self.on, self.n = on, 0

    def issue_queries(self, qs):
        self.n += 1
        if self.on == "issue" and self.n == 3:
            raise RuntimeError("model exploded")
        lg.query_samples_complete([lg.QuerySampleResponse(q.id, b"") for q in qs])

    def flush_queries(self):
        if self.on == "flush":
            raise ValueError("flush failed")


@pytest.mark.parametrize("on", ["issue", "flush"])
def test_sut_raises_reported_and_logs_written(tmp_path, on):
    with pytest.raises(lg.SUTError) as e:
        lg.start_test(Raises(on), QSL(), settings(lg.TestScenario.SingleStream), outdir=tmp_path)
    want = "model exploded" if on == "issue" else "flush failed"
    assert want in str(e.value)
    errs = [v for k, v, err in detail(tmp_path) if err]
    assert any(want in v for v in errs)
    text = (tmp_path / "mlperf_log_summary.txt").read_text()
    assert "Result is : INVALID" in text and want in text
    assert json.loads((tmp_path / "mlperf_log_accuracy.json").read_text()) == []


def test_answer_from_another_thread_after_end_is_noted_not_raised(tmp_path, capsys):
    late = []

    class Late:
        def issue_queries(self, qs):
            lg.query_samples_complete([lg.QuerySampleResponse(q.id, b"") for q in qs])
            late.extend(qs)

        def flush_queries(self):
            pass

    lg.start_test(Late(), QSL(), settings(lg.TestScenario.Offline), outdir=tmp_path)
    capsys.readouterr()
    err = []

    def answer():
        try:
            lg.query_samples_complete([lg.QuerySampleResponse(late[0].id, b"")])
        except Exception as e:  # noqa: BLE001
            err.append(e)

    t = threading.Thread(target=answer)
    t.start()
    t.join()
    note = capsys.readouterr().err
    assert not err and "no test is running" in note and str(late[0].id) in note


@pytest.mark.parametrize("bad", ["unknown", "twice"])
def test_large_offline_answer_errors_name_the_id(tmp_path, bad):
    """The vectorised completion path (one big Offline answer) reports ids like the scalar one."""
    seen = []

    class Big:
        def issue_queries(self, qs):
            resp = [lg.QuerySampleResponse(q.id, b"") for q in qs]
            if bad == "unknown":
                resp[500] = lg.QuerySampleResponse(qs[-1].id + 7, b"")
            else:
                resp[500] = resp[499]
            seen.append(qs)
            lg.query_samples_complete(resp)  # must not raise
            lg.query_samples_complete([lg.QuerySampleResponse(qs[500].id, b"")])  # the one left

        def flush_queries(self):
            pass

    r = lg.start_test(Big(), QSL(), settings(lg.TestScenario.Offline, offline_expected_qps=10_000,
                                             max_duration_ms=1000), outdir=tmp_path)
    qs = seen[0]
    want = (f"unknown response id {qs[-1].id + 7}" if bad == "unknown" else f"sample id {qs[499].id} more than once")
    assert any(want in e for e in r.errors) and not r.valid
    assert r.summary.sample_count == len(qs)  # every issued sample answered once, as counted


@pytest.mark.parametrize("raises", [False, True])
@pytest.mark.parametrize("caller_froze", [False, True])
def test_gc_is_the_callers_again_after_a_run(tmp_path, raises, caller_froze):
    """The collector is held back only while the clock runs (loadgen/gc_hold.py): after a test,
    even one whose SUT raised, Python's gc thresholds, frozen set and on/off state are what the
    caller left; a caller's own gc.freeze() is never undone."""
    import gc
    from mlperf_jax.loadgen import gc_hold
    keep = [[i] for i in range(1000)]  # tracked objects alive before the run
    old = gc.get_threshold()
    gc.set_threshold(900, 11, 12)
    if caller_froze:
        gc.freeze()
    frozen = gc.get_freeze_count()
    during = []

    class Big:
        def issue_queries(self, qs):
            during.append((gc.get_threshold(), gc.get_freeze_count(), len(qs)))
            if raises:
                raise RuntimeError("boom")
            lg.query_samples_complete([lg.QuerySampleResponse(q.id, b"") for q in qs])

        def flush_queries(self):
            pass

    try:
        s = settings(lg.TestScenario.Offline, offline_expected_qps=50_000, min_query_count=1)
        if raises:
            with pytest.raises(core.SUTError):
                lg.start_test(Big(), QSL(), s, outdir=tmp_path)
        else:
            assert lg.start_test(Big(), QSL(), s, outdir=tmp_path).summary.sample_count == during[0][2]
        (t0, t1, t2), frozen_during, n = during[0]
        assert n >= 4096 and (t0, t1, t2) == (gc_hold.YOUNG_THRESHOLD, gc_hold.MIDDLE_THRESHOLD, 12)
        # Frozen during the run: nothing more if the caller froze (frozen objects may die, so <=);
        # else the pre-run objects and the query's samples.
        assert (frozen_during <= frozen) if caller_froze else (frozen_during >= len(keep) + n)
        assert gc.get_threshold() == (900, 11, 12) and gc.isenabled()
        # The caller's frozen objects (`keep` among them, still alive) are still frozen.
        assert len(keep) < gc.get_freeze_count() <= frozen if caller_froze else gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*old)
