"""Performance results: percentiles, early stopping, validity, and the summary/detail text.

Mirrors the official ``loadgen/results.cc`` (6.0): same percentile indexing
(``sorted[int(n * p)]``), integer mean, the same VALID/INVALID conditions, recommendation
strings and summary layout, so scripts written against official logs read ours.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import results_v05 as _v05
from .early_stopping import MinPassingQueriesFinder
from .logs import DetailLog, fmt_fixed, fmt_g
from .settings import EffectiveSettings, TestScenario

__all__ = ["PerformanceResult", "PerformanceSummary", "PERCENTILES"]

PERCENTILES = (0.50, 0.90, 0.95, 0.97, 0.99, 0.999)


@dataclasses.dataclass
class PerformanceResult:
    sample_latencies: np.ndarray            # int64 ns, one per answered sample
    query_latencies: np.ndarray             # int64 ns, MultiStream only
    queries_issued: int
    max_latency: float                      # seconds
    final_query_scheduled_time: float       # seconds from start
    final_query_issued_time: float          # seconds from start
    final_query_all_samples_done_time: float
    # mlperf_jax additions: problems the official LoadGen would hang or crash on.
    extra_invalid_reasons: list[str] = dataclasses.field(default_factory=list)
    issue_lateness_ns: np.ndarray | None = None   # Server: actual issue - scheduled time
    unanswered_samples: int = 0
    query_intervals: np.ndarray | None = None     # rules v0.5 MultiStream (multistream_v05.py)


class PerformanceSummary:
    def __init__(self, sut_name: str, settings: EffectiveSettings, pr: PerformanceResult):
        self.sut_name = sut_name
        self.settings = settings
        self.pr = pr
        s = settings
        lat = np.sort(np.asarray(pr.sample_latencies, dtype=np.int64))
        self.sorted_latencies = lat
        n = int(lat.shape[0])
        self.sample_count = n
        self.query_count = pr.queries_issued
        self.target_percentile = s.target_latency_percentile
        if n:
            self.sample_latency_mean = int(int(lat.sum(dtype=np.int64)) // n)
            self.sample_latency_min = int(lat[0])
            self.sample_latency_max = int(lat[-1])
            self.target_sample_latency = int(lat[int(n * s.target_latency_percentile)])
            self.percentile_latency = {p: int(lat[int(n * p)]) for p in PERCENTILES}
        else:
            self.sample_latency_mean = self.sample_latency_min = self.sample_latency_max = 0
            self.target_sample_latency = 0
            self.percentile_latency = {p: 0 for p in PERCENTILES}
        self.overlatency_query_count = 0
        if s.scenario == TestScenario.Server and n:
            self.overlatency_query_count = int(n - np.searchsorted(lat, s.target_latency_ns + 1, side="left"))
        ql = np.sort(np.asarray(pr.query_latencies, dtype=np.int64))
        self.sorted_query_latencies = ql
        qn = int(ql.shape[0])
        if s.scenario == TestScenario.MultiStream and qn:
            self.query_latency_mean = int(int(ql.sum(dtype=np.int64)) // qn)
            self.query_latency_min = int(ql[0])
            self.query_latency_max = int(ql[-1])
            self.target_query_latency = int(ql[int(qn * s.target_latency_percentile)])
            self.percentile_query_latency = {p: int(ql[int(qn * p)]) for p in PERCENTILES}
        else:
            self.query_latency_mean = self.query_latency_min = self.query_latency_max = 0
            self.target_query_latency = 0
            self.percentile_query_latency = {p: 0 for p in PERCENTILES}
        self.early_stopping_latency_ss = 0
        self.early_stopping_latency_ms = 0
        self.early_stopping_met, self.early_stopping_recommendation = self._early_stopping()
        self.min_duration_met, self.min_duration_recommendation = self._min_duration()
        self.min_queries_met = (pr.queries_issued >= s.min_query_count and n >= s.min_sample_count)
        self.perf_constraints_met, self.perf_constraints_recommendation = self._perf_constraints()
        self.official_valid = (self.min_duration_met and self.min_queries_met and self.perf_constraints_met
                               and self.early_stopping_met)
        self.valid = self.official_valid and not pr.extra_invalid_reasons
        if _v05.applies(s):  # MLPerf v0.5 rules decide instead (results_v05.py)
            _v05.finish(self)

    # ------------------------------------------------------------------ checks
    def _early_stopping(self) -> tuple[bool, str]:
        s = self.settings
        finder = MinPassingQueriesFinder()
        c, d = 0.99, 0.0
        # With unanswered samples (an mlperf_jax-only situation) use what was answered.
        queries = self.pr.queries_issued
        if s.scenario == TestScenario.MultiStream:
            queries = min(queries, int(self.sorted_query_latencies.shape[0]))
        elif s.scenario in (TestScenario.SingleStream, TestScenario.Server):
            queries = min(queries, self.sample_count)
        p = s.target_latency_percentile
        if s.scenario in (TestScenario.SingleStream, TestScenario.MultiStream):
            lat = self.sorted_latencies if s.scenario == TestScenario.SingleStream else self.sorted_query_latencies

            def estimate(pct: float):
                h_min = finder(1, pct, d, c)
                if queries < h_min + 1:
                    return h_min, None
                t = 1
                for i in range(2, queries + 1):
                    h = finder(i, pct, d, c)
                    if queries < h + i:
                        t = i - 1
                        break
                return h_min, t

            h_min, t = estimate(p)
            if t is None:
                return False, (f" * Only processed {queries} queries.\n * Need to process at least "
                               f"{h_min + 1} queries for early stopping.")
            est = int(lat[queries - t])
            rec = (f" * Processed at least {h_min + 1} queries ({queries}).\n * Would discard {t - 1} "
                   f"highest latency queries.\n * Early stopping {fmt_fixed(p * 100, 1)}th percentile "
                   f"estimate: {est}")
            if s.scenario == TestScenario.MultiStream:
                self.early_stopping_latency_ms = est
                return True, rec
            self.early_stopping_latency_ss = est
            ms_p = 0.99
            h_min2, t2 = estimate(ms_p)
            if t2 is None:
                rec += (f"\n * Not enough queries processed for {fmt_fixed(ms_p * 100, 1)}th percentile\n"
                        f" early stopping estimate (would need to process at\n least {h_min2 + 1} total queries).")
            else:
                est2 = int(lat[queries - t2])
                rec += f"\n * Early stopping {fmt_fixed(ms_p * 100, 1)}th percentile estimate: {est2}"
                self.early_stopping_latency_ms = est2
            return True, rec
        if s.scenario == TestScenario.Server:
            t = int(np.count_nonzero(self.sorted_latencies > s.target_latency_ns))
            h = finder(t, p, d, c)
            if queries >= h + t:
                return True, " * Run successful."
            return False, (f" * Run unsuccessful.\n * Processed {queries} queries.\n * Would need to run at "
                           f"least {h + t - queries} more queries,\n with the run being successful if every "
                           f"additional\n query were under latency.")
        return True, ""

    def _min_duration(self) -> tuple[bool, str]:
        s, pr = self.settings, self.pr
        min_d = s.min_duration_ms / 1000.0
        if s.scenario == TestScenario.Offline:
            met = pr.max_latency >= min_d
        elif s.scenario == TestScenario.Server:
            met = pr.final_query_scheduled_time >= min_d
        else:
            met = pr.final_query_issued_time >= min_d
        if met:
            return True, ""
        if s.scenario in (TestScenario.SingleStream, TestScenario.MultiStream):
            return False, "Decrease the expected latency so the loadgen pre-generates more queries."
        if s.scenario == TestScenario.Server:
            return False, "Increase the target QPS so the loadgen pre-generates more queries."
        return False, "Increase expected QPS so the loadgen pre-generates a larger (coalesced) query."

    def _perf_constraints(self) -> tuple[bool, str]:
        s = self.settings
        if s.scenario == TestScenario.Server and self.target_sample_latency > s.target_latency_ns:
            return False, "Reduce target QPS to improve latency."
        return True, ""

    # ----------------------------------------------------------------- metrics
    def _safe_div(self, a: float, b: float) -> float:
        return a / b if b else float("inf") if a else float("nan")

    @property
    def completed_samples_per_sec(self) -> float:
        return self._safe_div(self.sample_count - 1, self.pr.final_query_all_samples_done_time)

    @property
    def scheduled_samples_per_sec(self) -> float:
        return self._safe_div(self.sample_count - 1, self.pr.final_query_scheduled_time)

    @property
    def samples_per_second(self) -> float:
        return self._safe_div(self.sample_count, self.pr.max_latency)

    @property
    def metric(self) -> tuple[str, float]:
        """(name, value) of the scenario's headline metric."""
        if _v05.applies(self.settings):
            return _v05.metric(self)
        sc = self.settings.scenario
        if sc == TestScenario.SingleStream:
            return "latency_ns", float(self.target_sample_latency)
        if sc == TestScenario.MultiStream:
            return "latency_ns", float(self.target_query_latency)
        if sc == TestScenario.Server:
            return "completed_samples_per_sec", self.completed_samples_per_sec
        return "samples_per_second", self.samples_per_second

    # ----------------------------------------------------------------- output
    def summary_text(self, warnings: int, errors: int) -> str:
        if _v05.applies(self.settings):
            return _v05.summary_text(self, warnings, errors)
        s, pr = self.settings, self.pr
        sc = s.scenario
        out = ["================================================", "MLPerf Results Summary",
               "================================================",
               f"SUT name : {self.sut_name}", f"Scenario : {sc.name}", f"Mode     : {s.mode.name}"]
        if sc == TestScenario.SingleStream:
            out.append(f"{fmt_fixed(s.target_latency_percentile * 100, 1)}th percentile latency (ns) : "
                       f"{self.target_sample_latency}")
        elif sc == TestScenario.MultiStream:
            out.append(f"{fmt_fixed(s.target_latency_percentile * 100, 1)}th percentile latency (ns) : "
                       f"{self.target_query_latency}")
        elif sc == TestScenario.Server:
            out.append(f"Completed samples per second    : {fmt_fixed(self.completed_samples_per_sec)}")
        else:
            out.append(f"Samples per second: {fmt_g(self.samples_per_second)}")
        out.append(f"Result is : {'VALID' if self.valid else 'INVALID'}")
        if sc == TestScenario.Server:
            out.append(f"  Performance constraints satisfied : {'Yes' if self.perf_constraints_met else 'NO'}")
        out.append(f"  Min duration satisfied : {'Yes' if self.min_duration_met else 'NO'}")
        out.append(f"  Min queries satisfied : {'Yes' if self.min_queries_met else 'NO'}")
        out.append(f"  Early stopping satisfied: {'Yes' if self.early_stopping_met else 'NO'}")
        if not self.valid:
            out.append("Recommendations:")
            if not self.perf_constraints_met:
                out.append(" * " + self.perf_constraints_recommendation)
            if not self.min_duration_met:
                out.append(" * " + self.min_duration_recommendation)
            if not self.min_queries_met:
                out.append(" * The test exited early, before enough queries were issued.\n"
                           "   See the detailed log for why this may have occurred.")
            for reason in pr.extra_invalid_reasons:
                out.append(" * " + reason)
        if sc != TestScenario.Offline:
            out.append("Early Stopping Result:")
            out.append(self.early_stopping_recommendation)
        out.append("\n================================================\nAdditional Stats\n"
                   "================================================")
        if sc == TestScenario.SingleStream:
            qps_w = self._safe_div(self.sample_count - 1, pr.final_query_issued_time)
            qps_wo = self._safe_div(1.0, self.sample_latency_mean / 1e9)
            out += [f"QPS w/ loadgen overhead         : {fmt_fixed(qps_w)}",
                    f"QPS w/o loadgen overhead        : {fmt_fixed(qps_wo)}", ""]
        elif sc == TestScenario.Server:
            out.append(f"Scheduled samples per second : {fmt_fixed(self.scheduled_samples_per_sec)}")
        elif sc == TestScenario.MultiStream:
            out += ["Per-query latency:  ",
                    f"Min latency (ns)                : {self.query_latency_min}",
                    f"Max latency (ns)                : {self.query_latency_max}",
                    f"Mean latency (ns)               : {self.query_latency_mean}"]
            out += [f"{fmt_fixed(p * 100)} percentile latency (ns)   : {self.percentile_query_latency[p]}"
                    for p in PERCENTILES]
        if sc != TestScenario.MultiStream:
            out += [f"Min latency (ns)                : {self.sample_latency_min}",
                    f"Max latency (ns)                : {self.sample_latency_max}",
                    f"Mean latency (ns)               : {self.sample_latency_mean}"]
            out += [f"{fmt_fixed(p * 100)} percentile latency (ns)   : {self.percentile_latency[p]}"
                    for p in PERCENTILES]
        out += test_parameter_lines(s)
        if s.sample_concatenate_permutation:
            out.append("WARNING: sample_concatenate_permutation was set to true. \nGenerated samples per "
                       "query might be different as the one in the setting.\nCheck the "
                       "generated_samples_per_query line in the detailed log for the real\nsamples_per_query value")
        out += count_lines(warnings, errors)
        return "\n".join(out) + "\n"

    def log_detail(self, d: DetailLog) -> None:
        if _v05.applies(self.settings):
            return _v05.log_detail(self, d)
        s, pr = self.settings, self.pr
        sc = s.scenario
        f = "results.py"
        d.log("result_validity", "VALID" if self.valid else "INVALID", file=f)
        if sc == TestScenario.Server:
            d.log("result_perf_constraints_met", self.perf_constraints_met, file=f)
        d.log("result_min_duration_met", self.min_duration_met, file=f)
        d.log("result_min_queries_met", self.min_queries_met, file=f)
        d.log("early_stopping_met", self.early_stopping_met, file=f)
        if not self.valid:
            rec = ""
            if not self.perf_constraints_met:
                rec += self.perf_constraints_recommendation + " "
            if not self.min_duration_met:
                rec += self.min_duration_recommendation + " "
            if not self.min_queries_met:
                rec += "The test exited early, before enough queries were issued."
            for reason in pr.extra_invalid_reasons:
                rec += (" " if rec and not rec.endswith(" ") else "") + reason
            d.log("result_invalid_reason", rec.replace("\n", " "), file=f)
        d.log("early_stopping_result", self.early_stopping_recommendation.replace("\n", " "), file=f)
        d.log("result_query_count", self.query_count, file=f)
        if sc == TestScenario.Server:
            d.log("result_overlatency_query_count", self.overlatency_query_count, file=f)
        if sc == TestScenario.SingleStream:
            d.log("result_qps_with_loadgen_overhead",
                  self._safe_div(self.sample_count - 1, pr.final_query_issued_time), file=f)
            d.log("result_qps_without_loadgen_overhead", self._safe_div(1.0, self.sample_latency_mean / 1e9), file=f)
            d.log("early_stopping_latency_ss", self.early_stopping_latency_ss, file=f)
            d.log("early_stopping_latency_ms", self.early_stopping_latency_ms, file=f)
        elif sc == TestScenario.MultiStream:
            d.log("result_min_query_latency_ns", self.query_latency_min, file=f)
            d.log("result_max_query_latency_ns", self.query_latency_max, file=f)
            d.log("result_mean_query_latency_ns", self.query_latency_mean, file=f)
            for p in PERCENTILES:
                d.log(f"result_{fmt_fixed(p * 100)}_percentile_per_query_latency_ns",
                      self.percentile_query_latency[p], file=f)
            d.log("early_stopping_latency_ms", self.early_stopping_latency_ms, file=f)
        elif sc == TestScenario.Server:
            d.log("result_scheduled_samples_per_sec", self.scheduled_samples_per_sec, file=f)
            d.log("result_completed_samples_per_sec", self.completed_samples_per_sec, file=f)
        else:
            d.log("result_samples_per_second", self.samples_per_second, file=f)
        d.log("result_min_latency_ns", self.sample_latency_min, file=f)
        d.log("result_max_latency_ns", self.sample_latency_max, file=f)
        d.log("result_mean_latency_ns", self.sample_latency_mean, file=f)
        for p in PERCENTILES:
            d.log(f"result_{fmt_fixed(p * 100)}_percentile_latency_ns", self.percentile_latency[p], file=f)


def test_parameter_lines(s: EffectiveSettings, *, since_v05: bool = True) -> list[str]:
    """The summary's "Test Parameters Used" block; ``since_v05=False`` leaves out the two keys the
    r0.5 LoadGen did not have (accuracy_log_sampling_target, accuracy_sample_count)."""
    out = ["\n================================================\nTest Parameters Used\n"
           "================================================",
           f"samples_per_query : {s.samples_per_query}", f"target_qps : {fmt_g(s.target_qps)}",
           f"target_latency (ns): {s.target_latency_ns}", f"max_async_queries : {s.max_async_queries}",
           f"min_duration (ms): {s.min_duration_ms}", f"max_duration (ms): {s.max_duration_ms}",
           f"min_query_count : {s.min_query_count}", f"max_query_count : {s.max_query_count}",
           f"qsl_rng_seed : {s.qsl_rng_seed}", f"sample_index_rng_seed : {s.sample_index_rng_seed}",
           f"schedule_rng_seed : {s.schedule_rng_seed}", f"accuracy_log_rng_seed : {s.accuracy_log_rng_seed}",
           f"accuracy_log_probability : {fmt_g(s.accuracy_log_probability)}"]
    if since_v05:
        out.append(f"accuracy_log_sampling_target : {s.accuracy_log_sampling_target}")
    out += [f"print_timestamps : {int(s.print_timestamps)}",
            f"performance_issue_unique : {int(s.performance_issue_unique)}",
            f"performance_issue_same : {int(s.performance_issue_same)}",
            f"performance_issue_same_index : {s.performance_issue_same_index}",
            f"performance_sample_count : {s.performance_sample_count}"]
    if since_v05:
        out.append(f"accuracy_sample_count : {s.accuracy_sample_count}")
    return out


def count_lines(warnings: int, errors: int) -> list[str]:
    """The summary's closing warning and error counts, worded as the official LoadGen words them."""
    return ["", "No warnings encountered during test." if warnings == 0 else
            f"{warnings} warning{'s' if warnings > 1 else ''} encountered. See detailed log.", "",
            "No errors encountered during test." if errors == 0 else
            f"{errors} ERROR{'S' if errors > 1 else ''} encountered. See detailed log."]
