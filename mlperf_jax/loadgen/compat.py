"""The official ``mlperf_loadgen`` Python API, on top of mlperf_jax.loadgen.

An existing harness runs unchanged except for its import::

    from mlperf_jax.loadgen import compat as lg   # instead of: import mlperf_loadgen as lg

Responses may point at memory as in the official binding (``QuerySampleResponse(id, address,
size)``, e.g. from ``array.array(...).buffer_info()``); the bytes are read only when the
response is logged (accuracy mode), while the SUT still owns the buffer.
"""

from __future__ import annotations

import sys

from . import core as _core
from . import runner as _runner
from .core import QuerySample, QuerySampleResponse
from .settings import LoggingMode, LogOutputSettings, LogSettings, TestMode, TestScenario, TestSettings

__all__ = [
    "QuerySample", "QuerySampleResponse", "TestSettings", "TestScenario", "TestMode", "LogSettings",
    "LogOutputSettings", "LoggingMode", "ConstructSUT", "ConstructFastSUT", "DestroySUT", "ConstructQSL",
    "DestroyQSL", "StartTest", "StartTestWithLogSettings", "QuerySamplesComplete", "FirstTokenComplete",
]


class _SUT:
    def __init__(self, issue_cb, flush_cb, report_cb=None, name: str = "PySUT"):
        self._issue = issue_cb
        self._flush = flush_cb
        self._report = report_cb
        self.name = name

    def issue_queries(self, samples):
        self._issue(samples)

    def flush_queries(self):
        self._flush()

    def report_latency_results(self, latencies_ns: list[int]) -> None:
        """The third ConstructSUT callback of the LoadGen before 6.0 (r0.5 harnesses use it):
        called once with every sample latency (ns) of the performance run."""
        if self._report is not None:
            self._report(latencies_ns)


class _FastSUT(_SUT):
    """``ConstructFastSUT``: the callback receives (ids, indices) lists."""

    def issue_queries(self, samples):
        self._issue([s.id for s in samples], [s.index for s in samples])


class _QSL:
    def __init__(self, total: int, perf: int, load_cb, unload_cb, name: str = "PyQSL"):
        self.total_sample_count = int(total)
        self.performance_sample_count = int(perf)
        self._load = load_cb
        self._unload = unload_cb
        self.name = name

    def load_samples_to_ram(self, indices):
        self._load(indices)

    def unload_samples_from_ram(self, indices):
        self._unload(indices)


def ConstructSUT(issue_cb, flush_cb, report_latency_results_cb=None):  # noqa: N802 (official names)
    """6.0: (issue, flush).  Earlier LoadGens (r0.5 to v0.7 harnesses) also took a callback that
    receives the run's sample latencies in ns; it is called as they called it."""
    return _SUT(issue_cb, flush_cb, report_latency_results_cb)


def ConstructFastSUT(fast_issue_cb, flush_cb, report_latency_results_cb=None):  # noqa: N802
    return _FastSUT(fast_issue_cb, flush_cb, report_latency_results_cb)


def DestroySUT(sut) -> None:  # noqa: N802
    pass


DestroyFastSUT = DestroySUT


def ConstructQSL(total_sample_count, performance_sample_count, load_cb, unload_cb):  # noqa: N802
    return _QSL(total_sample_count, performance_sample_count, load_cb, unload_cb)


def DestroyQSL(qsl) -> None:  # noqa: N802
    pass


# The official name for core.query_samples_complete itself (not a wrapper: one Python call
# less per answer, which a fast Server SUT makes hundreds of thousands of times a second).
QuerySamplesComplete = _core.query_samples_complete


def FirstTokenComplete(responses, response_cb=None) -> None:  # noqa: N802
    """Token latencies are not modelled (use_token_latencies is refused), so a first-token
    report has nothing to feed; accepted and dropped."""


def StartTest(sut, qsl, settings, audit_config_filename: str = "audit.config") -> None:  # noqa: N802
    StartTestWithLogSettings(sut, qsl, settings, LogSettings(), audit_config_filename)


def StartTestWithLogSettings(sut, qsl, settings, log_settings, audit_config_filename: str = "audit.config") -> None:  # noqa: N802
    try:
        _runner.start_test(sut, qsl, settings, log_settings, audit_config_filename=audit_config_filename)
    except _core.SUTError as e:
        # The official LoadGen would abort the process; we report and keep the logs.
        print(f"LoadGen: {e}", file=sys.stderr)
        raise
