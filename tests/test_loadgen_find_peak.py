"""FindPeakPerformance (Server): widen the QPS bound, then bisect, on a SUT of known capacity."""

import queue
import threading
import time

from mlperf_jax import loadgen as lg


class OneWorker:
    """Serves one query at a time, 2 ms each: capacity ~500 QPS."""

    def __init__(self):
        self.q = queue.Queue()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def issue_queries(self, qs):
        self.q.put(qs)

    def flush_queries(self):
        pass

    def run(self):
        while True:
            qs = self.q.get()
            if qs is None:
                return
            time.sleep(0.002)
            lg.query_samples_complete([lg.QuerySampleResponse(s.id, b"") for s in qs])


class QSL:
    total_sample_count = performance_sample_count = 64

    def load_samples_to_ram(self, i):
        pass

    def unload_samples_from_ram(self, i):
        pass


def test_find_peak_server(tmp_path):
    sut = OneWorker()
    s = lg.TestSettings(scenario=lg.TestScenario.Server, mode=lg.TestMode.FindPeakPerformance,
                        server_target_qps=50, server_target_latency_ns=30_000_000, min_duration_ms=300,
                        min_query_count=50, server_find_peak_qps_decimals_of_precision=0,
                        server_find_peak_qps_boundary_step_size=1.0)
    r = lg.start_test(sut, QSL(), s, outdir=tmp_path)
    sut.q.put(None)
    assert r.peak_qps is not None and 50 <= r.peak_qps < 800, r.peak_qps  # capacity ~500 QPS when idle
    detail = (tmp_path / "mlperf_log_detail.txt").read_text()
    assert "FindPeakPerformance: Found boundaries" in detail
    assert "FindPeakPerformance: Found peak performance field: target_qps" in detail
    assert "Mode     : FindPeakPerformance" in (tmp_path / "mlperf_log_summary.txt").read_text()


def test_find_peak_other_scenarios_is_an_error(tmp_path):
    s = lg.TestSettings(scenario=lg.TestScenario.Offline, mode=lg.TestMode.FindPeakPerformance)
    r = lg.start_test(OneWorker(), QSL(), s, outdir=tmp_path)
    assert r.summary is None and "Only Server scenario is supported" in (tmp_path / "mlperf_log_detail.txt").read_text()
