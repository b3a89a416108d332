"""One LoadGen test from start to end: settings logged, accuracy and performance modes, the
find-peak searches, and the summary, detail, accuracy and trace files written."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import time

from . import multistream_v05 as _ms05
from . import rules as _rules
from . import schedule as _schedule
from . import core as _core
from .core import (VERSION, LoadGenError, QuerySampleLibrary, SUTError,
                   SystemUnderTest, TestResult, _activate, _clock, _deactivate, _Test)
from .logs import DetailLog
from .progress import Progress
from .results import PerformanceSummary, count_lines
from .settings import (EffectiveSettings, LogSettings, TestMode, TestScenario, TestSettings,
                       refuse_unsupported)


def _log_settings(d: DetailLog, r: TestSettings, e: EffectiveSettings) -> None:
    f = "settings.py"
    d.log("requested_scenario", r.scenario.name, file=f)
    d.log("requested_test_mode", TestMode(r.mode).name, file=f)
    sc = r.scenario
    if sc == TestScenario.SingleStream:
        d.log("requested_single_stream_expected_latency_ns", float(r.single_stream_expected_latency_ns), file=f)
        d.log("requested_single_stream_target_latency_percentile", float(r.single_stream_target_latency_percentile), file=f)
    elif sc == TestScenario.MultiStream:
        d.log("requested_multi_stream_expected_latency_ns", float(r.multi_stream_expected_latency_ns), file=f)
        d.log("requested_multi_stream_target_latency_percentile", float(r.multi_stream_target_latency_percentile), file=f)
        d.log("requested_multi_stream_samples_per_query", int(r.multi_stream_samples_per_query), file=f)
    elif sc == TestScenario.Server:
        d.log("requested_server_target_qps", float(r.server_target_qps), file=f)
        d.log("requested_server_target_latency_ns", int(r.server_target_latency_ns), file=f)
        d.log("requested_server_target_latency_percentile", float(r.server_target_latency_percentile), file=f)
        d.log("requested_server_coalesce_queries", bool(r.server_coalesce_queries), file=f)
        d.log("requested_server_find_peak_qps_decimals_of_precision", int(r.server_find_peak_qps_decimals_of_precision), file=f)
        d.log("requested_server_find_peak_qps_boundary_step_size", float(r.server_find_peak_qps_boundary_step_size), file=f)
        d.log("requested_server_max_async_queries", int(r.server_max_async_queries), file=f)
        d.log("requested_server_num_issue_query_threads", int(r.server_num_issue_query_threads), file=f)
    else:
        d.log("requested_offline_expected_qps", float(r.offline_expected_qps), file=f)
    for k in ("min_duration_ms", "max_duration_ms", "min_query_count", "max_query_count", "qsl_rng_seed",
              "sample_index_rng_seed", "schedule_rng_seed", "accuracy_log_rng_seed"):
        d.log("requested_" + k, int(getattr(r, k)), file=f)
    d.log("requested_accuracy_log_probability", float(r.accuracy_log_probability), file=f)
    d.log("requested_accuracy_log_sampling_target", int(r.accuracy_log_sampling_target), file=f)
    d.log("requested_print_timestamps", bool(r.print_timestamps), file=f)
    d.log("requested_performance_issue_unique", bool(r.performance_issue_unique), file=f)
    d.log("requested_performance_issue_same", bool(r.performance_issue_same), file=f)
    d.log("requested_performance_issue_same_index", int(r.performance_issue_same_index), file=f)
    d.log("requested_performance_sample_count_override", int(r.performance_sample_count_override), file=f)
    d.log("requested_accuracy_sample_count_override", int(r.accuracy_sample_count_override), file=f)
    d.log("requested_sample_concatenate_permutation", bool(r.sample_concatenate_permutation), file=f)
    d.log("effective_scenario", e.scenario.name, file=f)
    d.log("effective_test_mode", e.mode.name, file=f)
    d.log("effective_samples_per_query", e.samples_per_query, file=f)
    d.log("effective_target_qps", e.target_qps, file=f)
    d.log("effective_target_latency_ns", e.target_latency_ns, file=f)
    d.log("effective_target_latency_percentile", e.target_latency_percentile, file=f)
    d.log("effective_max_async_queries", e.max_async_queries, file=f)
    d.log("effective_target_duration_ms", e.target_duration_ms, file=f)
    for k in ("min_duration_ms", "max_duration_ms", "min_query_count", "max_query_count", "min_sample_count",
              "qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed", "accuracy_log_rng_seed"):
        d.log("effective_" + k, getattr(e, k), file=f)
    d.log("effective_accuracy_log_probability", e.accuracy_log_probability, file=f)
    d.log("effective_accuracy_log_sampling_target", e.accuracy_log_sampling_target, file=f)
    d.log("effective_print_timestamps", e.print_timestamps, file=f)
    d.log("effective_performance_issue_unique", e.performance_issue_unique, file=f)
    d.log("effective_performance_issue_same", e.performance_issue_same, file=f)
    d.log("effective_performance_issue_same_index", e.performance_issue_same_index, file=f)
    d.log("effective_performance_sample_count", e.performance_sample_count, file=f)
    d.log("effective_accuracy_sample_count", e.accuracy_sample_count, file=f)
    d.log("effective_sample_concatenate_permutation", e.sample_concatenate_permutation, file=f)


def _name(obj, default: str) -> str:
    n = getattr(obj, "name", None)
    if callable(n):
        n = n()
    return str(n) if n else default


def start_test(sut: SystemUnderTest, qsl: QuerySampleLibrary, settings: TestSettings,
               log_settings: LogSettings | None = None, outdir: str | os.PathLike | None = None,
               audit_config_filename: str = "audit.config", *, progress: bool = False) -> TestResult:
    """Run one test and write the official log files into ``outdir``.

    ``outdir`` defaults to ``log_settings.log_output.outdir``.  ``log_settings=None`` means the
    official defaults except ``enable_trace`` (a trace costs time and disk: pass LogSettings()
    with enable_trace=True for one).  ``progress=True`` prints a progress line on stderr about
    every 2 s while a performance run is in flight.  Returns a :class:`TestResult`; raises
    :class:`SUTError` (after writing the logs) if the SUT raised, and ConfigError naming a
    setting this LoadGen does not implement (see settings.UNSUPPORTED).
    """
    log_settings = log_settings or LogSettings(enable_trace=False)
    if outdir is None:
        outdir = log_settings.log_output.outdir
    settings = TestSettings(**dataclasses.asdict(settings)) if dataclasses.is_dataclass(settings) else settings
    settings.validate()  # also turns official-binding enums into ours
    refuse_unsupported(settings)
    _rules.profile_of(settings)  # ConfigError for an unknown rules name
    total = int(qsl.total_sample_count)
    perf = int(qsl.performance_sample_count)
    if total <= 0:
        raise LoadGenError(f"QSL total_sample_count must be > 0, got {total}")
    if perf <= 0 and not settings.performance_sample_count_override:
        raise LoadGenError(f"QSL performance_sample_count must be > 0, got {perf}")
    test = _Test(sut, qsl, settings, log_settings, os.fspath(outdir) if outdir is not None else None)
    _activate(test)
    d = test.detail
    summary: PerformanceSummary | None = None
    peak = None
    try:
        d.log("loadgen_version", VERSION, file="version.py")
        d.log("test_datetime", test.datetime)
        d.log("sut_name", _name(sut, "PySUT"))
        d.log("qsl_name", _name(qsl, "PyQSL"))
        d.log("qsl_reported_total_count", total)
        d.log("qsl_reported_performance_count", perf)
        if audit_config_filename and os.path.exists(audit_config_filename):
            d.warning("warning_generic_message", "Found Audit Config file (audit.config). Overriding "
                      "TestSettings from audit.config file.")
            from .settings import parse_config
            settings._apply(parse_config(open(audit_config_filename).read(), audit_config_filename), "*",
                            settings.scenario.name, official=False)
        if settings.test05:  # the official compliance TEST05: other seeds, performance only
            d.warning("warning_generic_message", "Test05 flag detected Overriding random seeds")
            settings.mode = TestMode.PerformanceOnly
            settings.qsl_rng_seed = settings.test05_qsl_rng_seed
            settings.sample_index_rng_seed = settings.test05_sample_index_rng_seed
            settings.schedule_rng_seed = settings.test05_schedule_rng_seed
        eff = _rules.effective(settings, EffectiveSettings.from_requested(settings, total, perf))
        # A performance_sample_count above the QSL's size: the loadable set is capped to the QSL
        # (schedule.generate_loadable_sets), silently and with the count logged as requested, as
        # the official 6.0 does.
        _log_settings(d, settings, eff)
        d.log("rules_applied", _rules.profile_of(settings).describe(), file="rules.py")
        mode = eff.mode
        if mode in (TestMode.SubmissionRun, TestMode.AccuracyOnly):
            _run_accuracy(test, eff)
        if test.sut_exception is None and mode != TestMode.AccuracyOnly:
            with _progress(test, eff, progress):
                if mode in (TestMode.SubmissionRun, TestMode.PerformanceOnly):
                    summary = _run_performance(test, eff)
                elif mode == TestMode.FindPeakPerformance:
                    summary, peak = _run_find_peak(test, eff)
            report = getattr(sut, "report_latency_results", None)
            if summary is not None and report is not None:  # pre-6.0 API (compat.ConstructSUT)
                report(summary.pr.sample_latencies.tolist())
    finally:
        _deactivate()
        if summary is not None:
            summary.log_detail(d)
        d.log("num_errors", d.errors, file="results.py")
        d.close()
        test.acc.close()
        text = summary.summary_text(d.warnings, d.errors) if summary is not None else _no_perf_summary(test, d)
        if "summary" in test.paths:
            with open(test.paths["summary"], "w") as f:
                f.write(text)
        if test.trace is not None and "trace" in test.paths:
            test.trace.write(test.paths["trace"])
        if log_settings.log_output.copy_summary_to_stdout:
            print(text, end="", flush=True)
    result = TestResult(settings=eff, summary=summary, outdir=test.outdir, errors=list(test.errors),
                        accuracy_samples_logged=test.acc.count, peak_qps=peak)
    if test.sut_exception is not None:
        raise SUTError(f"the SUT raised {type(test.sut_exception).__name__}: {test.sut_exception} "
                       f"(logs written to {test.outdir})") from test.sut_exception
    return result


def _progress(test: _Test, eff: EffectiveSettings, on: bool):
    """The progress line's context (a no-op context when off)."""
    if not on:
        return contextlib.nullcontext()

    def state():
        run = test.run
        if run is None or not run.start or run.log_all:
            return None
        return (_clock() - run.start) / 1e9, run.issued_samples, run.completed

    return Progress(state, eff.min_duration_ms / 1000.0, interval_s=_core.PROGRESS_INTERVAL_S)


def _no_perf_summary(test: _Test, d: DetailLog) -> str:
    """Accuracy-only runs: the official summary holds just the warning/error counts.  When the
    run failed (an mlperf_jax-detected SUT problem) the reasons are listed first."""
    lines = []
    if test.errors:
        lines += ["Result is : INVALID"] + [" * " + e for e in dict.fromkeys(test.errors)]
    lines += count_lines(d.warnings, d.errors)
    return "\n".join(lines) + "\n"


def _run_accuracy(test: _Test, eff: EffectiveSettings) -> None:
    d = test.detail
    d.log("generic_message", "Starting accuracy mode")
    acc = eff.replace(mode=TestMode.AccuracyOnly)
    for ls in _schedule.generate_loadable_sets(acc, accuracy=True):
        d.log("loaded_qsl_set", ls.indices)
        test.qsl.load_samples_to_ram(list(ls.indices))
        test.issue_queries(acc, TestMode.AccuracyOnly, ls)
        test.qsl.unload_samples_from_ram(list(ls.indices))
        if test.sut_exception is not None or test.errors:
            break


def _perf_once(test: _Test, eff: EffectiveSettings, ls) -> PerformanceSummary:
    pr = test.issue_queries(eff, TestMode.PerformanceOnly, ls)
    return PerformanceSummary(_name(test.sut, "PySUT"), eff, pr)


def _run_performance(test: _Test, eff: EffectiveSettings) -> PerformanceSummary:
    d = test.detail
    d.log("generic_message", "Starting performance mode")
    perf = eff.replace(mode=TestMode.PerformanceOnly)
    ls = _schedule.generate_loadable_sets(perf, accuracy=False)[0]
    d.log("loaded_qsl_set", ls.indices)
    test.qsl.load_samples_to_ram(list(ls.indices))
    pc0, sc0 = _clock(), time.time()
    if eff.print_timestamps:  # the official's lines, verbatim (typo included)
        print(f"Loadgen :: Perf mode start. system_clock Timestamp = {int(sc0)}", flush=True)
    try:
        summary = _perf_once(test, perf, ls)
    finally:
        test.qsl.unload_samples_from_ram(list(ls.indices))
    if eff.print_timestamps:
        pc_ms, sc_ms = (_clock() - pc0) // 1_000_000, int((time.time() - sc0) * 1000)
        print(f"Loadgen :: Perf mode stop. systme_clock Timestamp = {int(time.time())}\n"
              f"Loadgen :: PerfClock Perf duration = {pc_ms}ms\n"
              f"Loadgen :: system_clock Perf duration = {sc_ms}ms\n"
              f"Loadgen :: PerfClock/system_clock ratio = {pc_ms / sc_ms if sc_ms else float('nan'):.4f}",
              flush=True)
    summary.settings = eff  # the summary reports the requested mode (e.g. SubmissionRun)
    return summary


def _run_find_peak(test: _Test, eff: EffectiveSettings):
    """The official FindPeakPerformance (Server only): widen the QPS bound, then bisect."""
    d = test.detail
    d.log("generic_message", "Starting FindPeakPerformance mode")
    if _ms05.applies(eff):  # MLPerf v0.5: MultiStream searches samples per query
        return _ms05.find_peak(test, eff, _perf_once)
    if eff.scenario != TestScenario.Server:
        d.error("error_invalid_config", "Not supported scenario. Only Server scenario is supported.")
        return None, None
    step = eff.requested.server_find_peak_qps_boundary_step_size
    decimals = eff.requested.server_find_peak_qps_decimals_of_precision
    def run_at(qps: float) -> PerformanceSummary:
        s = eff.replace(target_qps=qps)  # keeps mode FindPeakPerformance for the summary
        ls = _schedule.generate_loadable_sets(s, accuracy=False)[0]
        d.log("loaded_qsl_set", ls.indices)
        test.qsl.load_samples_to_ram(list(ls.indices))
        try:
            return _perf_once(test, s, ls)
        finally:
            test.qsl.unload_samples_from_ram(list(ls.indices))

    d.log("generic_message", f"FindPeakPerformance: Check validity of the base settings field: "
                             f"target_qps = {eff.target_qps}")
    lower = run_at(eff.target_qps)
    if not lower.perf_constraints_met:
        d.error("error_runtime", "FindPeakPerformance: Initial lower bound does not satisfy performance "
                f"constraints, msg: {lower.perf_constraints_recommendation}")
        return lower, None
    upper = lower
    while upper.perf_constraints_met and not test.errors:
        lower = upper
        qps = lower.settings.target_qps * (1 + step)
        d.log("generic_message", f"FindBoundaries: Checking fields [target_qps = {lower.settings.target_qps}, "
                                 f"target_qps = {qps})")
        upper = run_at(qps)
    d.log("generic_message", f"FindPeakPerformance: Found boundaries: [target_qps = {lower.settings.target_qps}, "
                             f"target_qps = {upper.settings.target_qps})")
    precision = 10.0 ** (-decimals)
    while upper.settings.target_qps - lower.settings.target_qps > precision and not test.errors:
        mid = lower.settings.target_qps + (upper.settings.target_qps - lower.settings.target_qps) / 2
        mid = round(mid, decimals)
        if mid <= lower.settings.target_qps or mid >= upper.settings.target_qps:
            break
        d.log("generic_message", f"FindPeakPerformanceBinarySearch: Testing the mid value of bounds "
                                 f"[target_qps = {lower.settings.target_qps}, target_qps = "
                                 f"{upper.settings.target_qps}): target_qps = {mid}")
        m = run_at(mid)
        if m.perf_constraints_met:
            lower = m
        else:
            upper = m
    d.log("generic_message", f"FindPeakPerformance: Found peak performance field: target_qps = "
                             f"{lower.settings.target_qps}")
    return lower, lower.settings.target_qps
