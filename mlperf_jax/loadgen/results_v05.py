"""MLPerf Inference v0.5 results: validity and the summary/detail text of the r0.5 LoadGen.

Under ``rules="v0.5"`` (rules.py) a :class:`results.PerformanceSummary` is re-decided here, as
mlcommons/inference@r0.5 ``loadgen/loadgen.cc`` ``PerformanceSummary`` did: VALID iff min
duration, min queries (and samples) and the performance constraint are met; no early stopping
(it arrived in v2.0).  Performance constraint: Server, the target-percentile sample latency
within the bound; MultiStream, the target-percentile query intervals below 2
(multistream_v05.py); none for SingleStream and Offline.  The summary follows the r0.5 layout
(scenario and mode names, "Samples per query" for MultiStream, "Scheduled samples per second"
for Server, the interval percentiles), plus a "Rules" line and, for MultiStream, the counts of
queries that spilled and of intervals skipped.
"""

from __future__ import annotations

import numpy as np

from . import multistream_v05 as _ms
from . import results as _results
from . import rules as _rules
from .logs import DetailLog, fmt_fixed, fmt_g
from .settings import EffectiveSettings, TestMode, TestScenario

__all__ = ["applies", "finish", "summary_text", "log_detail", "metric", "report_lines"]

PERCENTILES = (0.50, 0.90, 0.95, 0.97, 0.99, 0.999)  # r0.5 latency_percentiles
_SCENARIO = {TestScenario.SingleStream: "Single Stream", TestScenario.MultiStream: "Multi Stream",
             TestScenario.Server: "Server", TestScenario.Offline: "Offline"}
_MODE = {TestMode.SubmissionRun: "Submission", TestMode.AccuracyOnly: "Accuracy",
         TestMode.PerformanceOnly: "Performance", TestMode.FindPeakPerformance: "Find Peak Performance"}
_MIN_DURATION_REC = {
    TestScenario.SingleStream: "Decrease the expected latency so the loadgen pre-generates more queries.",
    TestScenario.MultiStream: "MultiStream should always meet the minimum duration. Please file a bug.",
    TestScenario.Server: "Increase the target QPS so the loadgen pre-generates more queries.",
    TestScenario.Offline: "Increase expected QPS so the loadgen pre-generates a larger (coalesced) query.",
}


def applies(s: EffectiveSettings) -> bool:
    return _rules.profile_of(s) is _rules.v0_5


def finish(ps) -> None:
    """Re-decide ``ps`` (a PerformanceSummary) by the v0.5 rules."""
    s, pr = ps.settings, ps.pr
    sc = s.scenario
    ps.early_stopping_met, ps.early_stopping_recommendation = True, ""
    ps.v05_intervals_at_target = 0
    ps.v05_interval_percentiles = {p: 0 for p in PERCENTILES}
    ps.v05_spilled_queries = ps.v05_skipped_intervals = 0
    if sc == TestScenario.MultiStream:
        iv = np.asarray(pr.query_intervals if pr.query_intervals is not None else [], dtype=np.int64)
        ok, at = _ms.decide(iv, s.target_latency_percentile)
        ps.v05_intervals_at_target = at
        srt = np.sort(iv)
        ps.v05_interval_percentiles = {p: int(srt[int(srt.size * p)]) if srt.size else 0 for p in PERCENTILES}
        ps.v05_spilled_queries = int(np.count_nonzero(iv >= 2))
        ps.v05_skipped_intervals = int(np.clip(iv[iv < _ms.UNANSWERED_INTERVALS] - 1, 0, None).sum())
        ps.perf_constraints_met = ok
        ps.perf_constraints_recommendation = "" if ok else "Reduce samples per query to improve latency."
    if not ps.min_duration_met:
        ps.min_duration_recommendation = _MIN_DURATION_REC[sc]
    ps.official_valid = ps.min_duration_met and ps.min_queries_met and ps.perf_constraints_met
    ps.valid = ps.official_valid and not pr.extra_invalid_reasons


def metric(ps) -> tuple[str, float]:
    sc = ps.settings.scenario
    if sc == TestScenario.MultiStream:
        return "samples_per_query", float(ps.settings.samples_per_query)
    if sc == TestScenario.Server:
        return "scheduled_samples_per_sec", ps.scheduled_samples_per_sec
    if sc == TestScenario.SingleStream:
        return "latency_ns", float(ps.target_sample_latency)
    return "samples_per_second", ps.samples_per_second


def _reasons(ps) -> list[str]:
    out = []
    if not ps.perf_constraints_met:
        out.append(ps.perf_constraints_recommendation)
    if not ps.min_duration_met:
        out.append(ps.min_duration_recommendation)
    if not ps.min_queries_met:
        out.append("The test exited early, before enough queries were issued.\n"
                   "   See the detailed log for why this may have occurred.")
    return out + list(ps.pr.extra_invalid_reasons)


def summary_text(ps, warnings: int, errors: int) -> str:
    s, pr = ps.settings, ps.pr
    sc = s.scenario
    out = ["================================================", "MLPerf Results Summary",
           "================================================",
           f"SUT name : {ps.sut_name}", f"Scenario : {_SCENARIO[sc]}", f"Mode     : {_MODE[s.mode]}",
           f"Rules    : {_rules.v0_5.describe()}"]
    if sc == TestScenario.SingleStream:
        out.append(f"{fmt_fixed(s.target_latency_percentile * 100, 0)}th percentile latency (ns) : "
                   f"{ps.target_sample_latency}")
    elif sc == TestScenario.MultiStream:
        out.append(f"Samples per query : {s.samples_per_query}")
    elif sc == TestScenario.Server:
        out.append(f"Scheduled samples per second : {fmt_fixed(ps.scheduled_samples_per_sec)}")
    else:
        out.append(f"Samples per second: {fmt_g(ps.samples_per_second)}")
    out.append(f"Result is : {'VALID' if ps.valid else 'INVALID'}")
    if sc in (TestScenario.MultiStream, TestScenario.Server):
        out.append(f"  Performance constraints satisfied : {'Yes' if ps.perf_constraints_met else 'NO'}")
    out.append(f"  Min duration satisfied : {'Yes' if ps.min_duration_met else 'NO'}")
    out.append(f"  Min queries satisfied : {'Yes' if ps.min_queries_met else 'NO'}")
    if not ps.valid:
        out.append("Recommendations:")
        out += [" * " + r for r in _reasons(ps)]
    out.append("\n================================================\nAdditional Stats\n"
               "================================================")
    if sc == TestScenario.SingleStream:
        qps_w = ps._safe_div(ps.sample_count - 1, pr.final_query_issued_time)
        qps_wo = ps._safe_div(1.0, ps.sample_latency_mean / 1e9)
        out += [f"QPS w/ loadgen overhead         : {fmt_fixed(qps_w)}",
                f"QPS w/o loadgen overhead        : {fmt_fixed(qps_wo)}", ""]
    elif sc == TestScenario.Server:
        out += [f"Completed samples per second    : {fmt_fixed(ps.completed_samples_per_sec)}", ""]
    elif sc == TestScenario.MultiStream:
        out.append(f'Intervals between each IssueQuery:  "qps" : {fmt_g(s.target_qps)}, '
                   f'"ms" : {fmt_g(1000.0 / s.target_qps)}')
        out += [f"{fmt_fixed(p * 100)} percentile : {ps.v05_interval_percentiles[p]}" for p in PERCENTILES]
        out += [f"Queries that spilled past one interval : {ps.v05_spilled_queries} of {pr.queries_issued}",
                f"Intervals skipped                      : {ps.v05_skipped_intervals}", ""]
        out.append(f'Per-query latency:  "target_ns" : {s.target_latency_ns}, '
                   f'"target_ms" : {fmt_g(s.target_latency_ns / 1e6)}')
        out += [f"{fmt_fixed(p * 100)} percentile latency (ns)   : {ps.percentile_query_latency[p]}"
                for p in PERCENTILES]
        out += ["", "Per-sample latency:"]
    out += [f"Min latency (ns)                : {ps.sample_latency_min}",
            f"Max latency (ns)                : {ps.sample_latency_max}",
            f"Mean latency (ns)               : {ps.sample_latency_mean}"]
    out += [f"{fmt_fixed(p * 100)} percentile latency (ns)   : {ps.percentile_latency[p]}" for p in PERCENTILES]
    out += _results.test_parameter_lines(s, since_v05=False) + _results.count_lines(warnings, errors)
    return "\n".join(out) + "\n"


def log_detail(ps, d: DetailLog) -> None:
    s = ps.settings
    sc = s.scenario
    f = "results_v05.py"
    d.log("result_validity", "VALID" if ps.valid else "INVALID", file=f)
    if sc in (TestScenario.MultiStream, TestScenario.Server):
        d.log("result_perf_constraints_met", ps.perf_constraints_met, file=f)
    d.log("result_min_duration_met", ps.min_duration_met, file=f)
    d.log("result_min_queries_met", ps.min_queries_met, file=f)
    if not ps.valid:
        d.log("result_invalid_reason", " ".join(r.replace("\n", " ") for r in _reasons(ps)), file=f)
    d.log("result_query_count", ps.query_count, file=f)
    if sc == TestScenario.MultiStream:
        d.log("result_samples_per_query", s.samples_per_query, file=f)
        d.log("result_query_intervals_at_target_percentile", ps.v05_intervals_at_target, file=f)
        for p in PERCENTILES:
            d.log(f"result_{fmt_fixed(p * 100)}_percentile_query_intervals", ps.v05_interval_percentiles[p], file=f)
        d.log("result_spilled_query_count", ps.v05_spilled_queries, file=f)
        d.log("result_skipped_interval_count", ps.v05_skipped_intervals, file=f)
        for p in PERCENTILES:
            d.log(f"result_{fmt_fixed(p * 100)}_percentile_per_query_latency_ns",
                  ps.percentile_query_latency[p], file=f)
    elif sc == TestScenario.Server:
        d.log("result_scheduled_samples_per_sec", ps.scheduled_samples_per_sec, file=f)
        d.log("result_completed_samples_per_sec", ps.completed_samples_per_sec, file=f)
    elif sc == TestScenario.Offline:
        d.log("result_samples_per_second", ps.samples_per_second, file=f)
    d.log("result_min_latency_ns", ps.sample_latency_min, file=f)
    d.log("result_max_latency_ns", ps.sample_latency_max, file=f)
    d.log("result_mean_latency_ns", ps.sample_latency_mean, file=f)
    for p in PERCENTILES:
        d.log(f"result_{fmt_fixed(p * 100)}_percentile_latency_ns", ps.percentile_latency[p], file=f)


def report_lines(ps) -> list[str]:
    """What a CLI adds under rules v0.5 after "Result is": the reasons, MultiStream's interval
    statistics, and find-peak's sequence of N; [] under the current rules."""
    if ps is None or not applies(ps.settings):
        return []
    s = ps.settings
    out = [f"rules {_rules.v0_5.describe()}"]
    if s.scenario == TestScenario.MultiStream:
        out.append(f"Samples per query : {s.samples_per_query}; {ps.v05_spilled_queries} of {ps.pr.queries_issued} "
                   f"queries spilled past one {fmt_g(1000.0 / s.target_qps)} ms interval; intervals at the "
                   f"{fmt_g(s.target_latency_percentile * 100)}th percentile: {ps.v05_intervals_at_target} "
                   "(VALID needs < 2)")
    if not ps.valid:
        out += ["INVALID because: " + r.replace("\n   ", " ") for r in _reasons(ps)]
    trials = getattr(ps, "find_peak_trials", None)
    if trials:
        out.append("find_peak tried N = " + ", ".join(f"{n} ({'pass' if ok else 'fail'})" for n, ok in trials))
        ok = [n for n, good in trials if good]
        out.append(f"find_peak: highest VALID samples per query = {max(ok)}" if ok else
                   f"find_peak: no VALID samples per query (the start, {trials[0][0]}, fails)")
    return out
