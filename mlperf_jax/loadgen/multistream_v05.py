"""MLPerf Inference v0.5 MultiStream: fixed-rate ticks, skipped intervals, find-peak over N.

What the r0.5 LoadGen did (mlcommons/inference@r0.5 ``loadgen/loadgen.cc``), implemented here
from its description:

* **Issue** (``QueryScheduler<MultiStream>::Wait``): before query k goes out, wait until query
  k - max_async_queries has completed; then advance a tick counter i (ticks at
  ``start + i / target_qps``) until the tick is not before now, and issue at that tick.  The
  number of ticks advanced is the query's ``scheduled_intervals`` (1 when the SUT kept up).
  The first query goes out at tick 1, one interval after the start.
* **Latency** of a query: from its tick to its last sample's completion.
* **Intervals** of query k: ``scheduled_intervals`` of query k + max_async_queries (how many
  ticks the next query had to skip because of it); for the last max_async_queries queries,
  ``ceil(target_qps * latency)``.
* **Decision** (``PerformanceSummary::PerfConstraintsMet``): sort the intervals; the run meets
  the performance constraint iff the one at index ``int(n * percentile)`` is below 2, i.e. at
  the target percentile no query spilled past one interval.
* **Find peak** (``FindPeakPerformanceMode``, ``WidenPerformanceField``, ``MidOfBoundaries``,
  ``IsFinished``): run the user's N; if it fails, stop (INVALID).  Otherwise double N until a
  run fails, then bisect ``mid = lo + (hi - lo) // 2`` until ``lo + 1 >= hi``; the answer is
  lo (its run's summary is the one written).  Only the performance constraint steers the
  search, not min duration or query count.

Not reproduced: the r0.5 sample-index draws (this LoadGen draws MultiStream start samples
with the 6.0 sequence of the sample RNG), and with max_async_queries > 1 the wait is for the
first k - max_async_queries + 1 queries' samples to be answered (exact for in-order answers and
for max_async_queries = 1, the only v0.5 value).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from . import rules as _rules
from . import schedule as _schedule
from .settings import EffectiveSettings, TestScenario

__all__ = ["TickScheduler", "applies", "for_run", "query_intervals", "decide", "find_peak"]

# Find-peak stops doubling here even if every run passes (r0.5 had no bound).
MAX_SEARCH_SAMPLES_PER_QUERY = 1 << 16
# Intervals given to an issued query that was never answered (it spilled, by any count).
UNANSWERED_INTERVALS = 1 << 30


def applies(s: EffectiveSettings) -> bool:
    return s.scenario == TestScenario.MultiStream and _rules.profile_of(s) is _rules.v0_5


class TickScheduler:
    """The r0.5 MultiStream clock for one run: ``next_tick(now)`` gives the query's issue tick."""

    def __init__(self, target_qps: float, max_async_queries: int, start_ns: int):
        self.qps = float(target_qps)
        self.max_async = int(max_async_queries)
        self.start = int(start_ns)
        self.i_period = 0
        self.ticks: list[int] = []        # absolute ns of each query's tick
        self.intervals: list[int] = []    # scheduled_intervals of each query
        self.tick = self.start

    def tick_at(self, i: int) -> int:
        return self.start + int(i / self.qps * 1e9)  # SecondsToDuration truncates

    def next_tick(self, now_ns: int) -> int:
        old = self.i_period
        self.i_period += 1
        # Jump close to now in one step (same result as stepping one tick at a time).
        if self.tick_at(self.i_period) < now_ns:
            self.i_period = max(self.i_period, int((now_ns - self.start) * self.qps / 1e9) - 1)
        while self.tick_at(self.i_period) < now_ns:
            self.i_period += 1
        self.tick = self.tick_at(self.i_period)
        self.ticks.append(self.tick)
        self.intervals.append(self.i_period - old)
        return self.tick

    # ------------------------------------------------------------- in the run
    def wait(self, test, run, i: int, offs: list[int], guard: int | None) -> int | None:
        """Block until query i may go out (core._Test._issue_generic); the issue time, or
        None when the earlier queries were not answered by the answer guard (the run's final
        accounting reports the unanswered samples)."""
        k = i - self.max_async
        if k >= 0 and not test._wait_completed(run, offs[k + 1], guard):
            return None
        tick = self.next_tick(time.perf_counter_ns())
        while True:
            now = time.perf_counter_ns()
            if now >= tick:
                return now
            delta = tick - now
            time.sleep(delta * 1e-9 if delta > 60_000 else 0)

    def query_intervals(self, done_ns) -> np.ndarray:
        """Per issued query, as the r0.5 IssueQueries computed ``query_intervals``;
        ``done_ns``: each issued query's completion time (0: never answered)."""
        n, ma = len(done_ns), self.max_async
        out = np.empty(n, dtype=np.int64)
        head = max(0, n - ma)
        out[:head] = np.asarray(self.intervals[ma:ma + head], dtype=np.int64)
        for i in range(head, n):
            done = int(done_ns[i])
            out[i] = math.ceil(self.qps * (done - self.ticks[i]) / 1e9) if done else UNANSWERED_INTERVALS
        return out


def for_run(s: EffectiveSettings, start_ns: int) -> TickScheduler | None:
    """The scheduler for a run under v0.5 MultiStream rules (any mode, as r0.5); else None."""
    return TickScheduler(s.target_qps, s.max_async_queries, start_ns) if applies(s) else None


def query_intervals(latencies_ns, target_qps: float, max_async_queries: int = 1) -> np.ndarray:
    """The intervals a SUT earns whose query k answers ``latencies_ns[k]`` after its tick, with
    nothing else taking time: a model of the schedule, to check a run against by hand.  Query
    k waits for query k - max_async_queries, then takes the first tick not before that."""
    sched = TickScheduler(target_qps, max_async_queries, 0)
    done: list[int] = []
    for k, lat in enumerate(latencies_ns):
        j = k - max_async_queries
        done.append(sched.next_tick(max(done[: j + 1]) if j >= 0 else 0) + int(lat))
    return sched.query_intervals(done)


def decide(intervals, percentile: float) -> tuple[bool, int]:
    """(constraint met, intervals at the target percentile) from per-query intervals."""
    iv = np.sort(np.asarray(intervals, dtype=np.int64))
    if iv.size == 0:
        return False, 0
    at = int(iv[int(iv.size * percentile)])
    return at < 2, at


def find_peak(test, eff: EffectiveSettings, perf_once: Callable) -> tuple[object, None]:
    """The r0.5 MultiStream find-peak over samples per query; returns (summary, None).

    ``perf_once(test, settings, loadable_set)`` runs one performance test (core._perf_once).
    The returned summary is the highest passing N's (or the failing start's); its
    ``find_peak_trials`` lists (N, constraint met) in the order tried.
    """
    d = test.detail
    trials: list[tuple[int, bool]] = []

    def run_at(n: int):
        s = eff.replace(samples_per_query=n, min_sample_count=eff.min_query_count * n)
        ls = _schedule.generate_loadable_sets(s, accuracy=False)[0]
        d.log("loaded_qsl_set", ls.indices)
        test.qsl.load_samples_to_ram(list(ls.indices))
        try:
            summary = perf_once(test, s, ls)
        finally:
            test.qsl.unload_samples_from_ram(list(ls.indices))
        trials.append((n, bool(summary.perf_constraints_met)))
        d.log("find_peak_v05_trial", f"samples_per_query {n}: performance constraints "
              f"{'met' if summary.perf_constraints_met else 'NOT met'}; {summary.v05_intervals_at_target} "
              f"intervals at the {summary.target_percentile * 100:g}th percentile (must be < 2); "
              f"{summary.v05_spilled_queries} of {summary.query_count} queries spilled; "
              f"{summary.target_percentile * 100:g}th percentile query latency {summary.target_query_latency} ns",
              file="multistream_v05.py")
        return summary

    def stop() -> bool:
        return bool(test.errors) or test.sut_exception is not None

    n0 = int(eff.samples_per_query)
    d.log("generic_message", f"FindPeakPerformance: Check validity of the base settings field: {n0}")
    lower = run_at(n0)
    if not lower.perf_constraints_met or stop():
        d.error("error_runtime", "FindPeakPerformance: Initial lower bound does not satisfy performance "
                f"constraints, msg: {lower.perf_constraints_recommendation}")
        lower.find_peak_trials = trials
        return lower, None
    upper = None
    while not stop():
        n = 2 * lower.settings.samples_per_query
        if n > MAX_SEARCH_SAMPLES_PER_QUERY:
            d.warning("warning_generic_message", f"FindBoundaries: every N up to {n // 2} passed; stopping "
                      f"at the search bound {MAX_SEARCH_SAMPLES_PER_QUERY}")
            break
        d.log("generic_message", f"FindBoundaries: Checking fields [{lower.settings.samples_per_query}, {n})")
        m = run_at(n)
        if m.perf_constraints_met:
            lower = m
        else:
            upper = m
            break
    if upper is not None:
        d.log("generic_message", f"FindPeakPerformance: Found boundaries: [{lower.settings.samples_per_query}, "
                                 f"{upper.settings.samples_per_query})")
        while lower.settings.samples_per_query + 1 < upper.settings.samples_per_query and not stop():
            lo, hi = lower.settings.samples_per_query, upper.settings.samples_per_query
            mid = lo + (hi - lo) // 2
            d.log("generic_message", f"FindPeakPerformanceBinarySearch: Testing the mid value of bounds "
                                     f"[{lo}, {hi}): {mid}")
            m = run_at(mid)
            if m.perf_constraints_met:
                lower = m
            else:
                upper = m
    d.log("generic_message", f"FindPeakPerformance: Found peak performance field: {lower.settings.samples_per_query}")
    lower.find_peak_trials = trials
    return lower, None

