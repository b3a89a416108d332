"""SUTs that misbehave: never answer, answer twice, answer unknown ids, raise."""

import json
import threading

import pytest

from mlperf_jax import loadgen as lg


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
def test_never_answers_ends_invalid_at_max_duration(tmp_path, scenario):
    r = lg.start_test(Silent(), QSL(), settings(scenario, max_duration_ms=300), outdir=tmp_path)
    assert not r.valid
    text = (tmp_path / "mlperf_log_summary.txt").read_text()
    assert "Result is : INVALID" in text
    assert "did not answer" in text and "max_duration (300 ms)" in text
    errs = [v for k, v, e in detail(tmp_path) if e]
    assert any("did not answer" in v for v in errs)
    reason = [v for k, v, e in detail(tmp_path) if k == "result_invalid_reason"]
    assert reason and "did not answer" in reason[0]


class Twice:
    def __init__(self, when=5):
        self.n, self.when, self.raised = 0, when, None

    def issue_queries(self, qs):
        self.n += 1
        resp = [lg.QuerySampleResponse(q.id, b"x") for q in qs]
        lg.query_samples_complete(resp)
        if self.n == self.when:
            try:
                lg.query_samples_complete(resp[:1])
            except lg.ResponseError as e:
                self.raised = e
                raise

    def flush_queries(self):
        pass


def test_answers_twice_names_the_id(tmp_path):
    sut = Twice()
    r = lg.start_test(sut, QSL(), settings(lg.TestScenario.SingleStream), outdir=tmp_path)
    assert sut.raised is not None
    dup_id = str(sut.raised).split("response id ")[1].split()[0]
    assert "more than once" in str(sut.raised)
    assert not r.valid
    assert any(f"sample id {dup_id} more than once" in e for e in r.errors)
    assert f"sample id {dup_id} more than once" in (tmp_path / "mlperf_log_summary.txt").read_text()


class Unknown:
    def issue_queries(self, qs):
        lg.query_samples_complete([lg.QuerySampleResponse(q.id + 10_000, b"") for q in qs])

    def flush_queries(self):
        pass


@pytest.mark.parametrize("scenario", [lg.TestScenario.Server, lg.TestScenario.Offline])
def test_unknown_id_names_the_id(tmp_path, scenario):
    errors = []

    class Wrapped(Unknown):
        def issue_queries(self, qs):
            try:
                super().issue_queries(qs)
            except lg.ResponseError as e:
                errors.append((str(e), qs[0].id + 10_000))
                raise

    r = lg.start_test(Wrapped(), QSL(), settings(scenario, max_duration_ms=2000), outdir=tmp_path)
    msg, bad = errors[0]
    assert f"unknown response id {bad}" in msg
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


def test_answer_from_another_thread_after_end_is_an_error(tmp_path):
    late = []

    class Late:
        def issue_queries(self, qs):
            lg.query_samples_complete([lg.QuerySampleResponse(q.id, b"") for q in qs])
            late.extend(qs)

        def flush_queries(self):
            pass

    lg.start_test(Late(), QSL(), settings(lg.TestScenario.Offline), outdir=tmp_path)
    err = []

    def answer():
        try:
            lg.query_samples_complete([lg.QuerySampleResponse(late[0].id, b"")])
        except lg.ResponseError as e:
            err.append(str(e))

    t = threading.Thread(target=answer)
    t.start()
    t.join()
    assert err and "no test is running" in err[0] and str(late[0].id) in err[0]


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
            try:
                lg.query_samples_complete(resp)
            except lg.ResponseError as e:
                seen.append((str(e), qs))
                raise

        def flush_queries(self):
            pass

    r = lg.start_test(Big(), QSL(), settings(lg.TestScenario.Offline, offline_expected_qps=10_000,
                                             max_duration_ms=1000), outdir=tmp_path)
    msg, qs = seen[0]
    want = (f"unknown response id {qs[-1].id + 7}" if bad == "unknown" else f"response id {qs[499].id} answered more than once")
    assert want in msg and not r.valid
