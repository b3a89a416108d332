"""The test driver: issues pre-generated queries to a SUT and records completions.

Design (speed): the schedule and sample indices are numpy arrays built before the clock
starts; the issue loop walks plain Python lists; completion from any thread writes a
timestamp into an array under one lock; latencies, percentiles and early stopping are
computed with numpy after the run.

Beyond the official LoadGen: a SUT that never answers ends the test at ``max_duration_ms``
(INVALID, with the reason) instead of hanging; an answer with an unknown or already used id
raises :class:`ResponseError` naming the id and makes the run INVALID; an exception raised by
the SUT stops the test, is written to the detail log, the logs are still written, and
:class:`SUTError` is raised afterwards.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import os
import threading
import time
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from . import schedule as _schedule
from .logs import AccuracyLog, DetailLog
from .results import PerformanceResult, PerformanceSummary
from .settings import (EffectiveSettings, LogSettings, TestMode, TestScenario, TestSettings)

__all__ = [
    "QuerySample", "QuerySampleResponse", "QuerySampleLibrary", "SystemUnderTest", "LoadGenError",
    "ResponseError", "SUTError", "TestResult", "start_test", "query_samples_complete", "VERSION",
]

VERSION = "mlperf_jax-loadgen 0.1 (pure Python; semantics of mlcommons-loadgen 6.0)"

_clock = time.perf_counter_ns


class LoadGenError(RuntimeError):
    pass


class ResponseError(LoadGenError):
    """A response with an unknown id, or a second response for the same sample."""


class SUTError(LoadGenError):
    """The SUT raised while the test ran (the logs were written before this is raised)."""


class QuerySample:
    """One sample of a query: ``id`` to answer with, ``index`` into the QSL."""

    __slots__ = ("id", "index")

    def __init__(self, id: int, index: int):  # noqa: A002
        self.id = id
        self.index = index

    def __repr__(self) -> str:
        return f"QuerySample(id={self.id}, index={self.index})"


class QuerySampleResponse:
    """An answer.  ``data``: bytes-like, a numpy array, or (official API) an int address with ``size``."""

    __slots__ = ("id", "data", "size", "n_tokens")

    def __init__(self, id: int, data: Any = None, size: int | None = None, n_tokens: int | None = None):  # noqa: A002
        self.id = id
        self.data = data
        self.size = size
        self.n_tokens = n_tokens

    def payload(self) -> bytes:
        d = self.data
        if d is None:
            return b""
        if isinstance(d, (bytes, bytearray, memoryview)):
            return bytes(d) if self.size is None else bytes(d)[: self.size]
        if isinstance(d, np.ndarray):
            return d.tobytes()
        if isinstance(d, int):
            n = int(self.size or 0)
            return ctypes.string_at(d, n) if (d and n) else b""
        if hasattr(d, "__array__"):
            return np.asarray(d).tobytes()
        raise TypeError(f"response {self.id}: unsupported data type {type(d).__name__}")


@runtime_checkable
class QuerySampleLibrary(Protocol):
    total_sample_count: int
    performance_sample_count: int

    def load_samples_to_ram(self, indices: Sequence[int]) -> None: ...

    def unload_samples_from_ram(self, indices: Sequence[int]) -> None: ...


@runtime_checkable
class SystemUnderTest(Protocol):
    def issue_queries(self, samples: list[QuerySample]) -> None: ...

    def flush_queries(self) -> None: ...


_ACTIVE: "_Test | None" = None
_ACTIVE_LOCK = threading.Lock()


def query_samples_complete(responses: Iterable[QuerySampleResponse], response_cb=None) -> None:
    """Answer samples of the running test; callable from any thread."""
    test = _ACTIVE
    if test is None:
        ids = [getattr(r, "id", r) for r in responses][:5]
        raise ResponseError(f"QuerySamplesComplete: no test is running (response ids {ids})")
    test.complete(responses, response_cb)


@dataclasses.dataclass
class TestResult:
    """What a test produced; ``summary`` is the performance summary (None in accuracy mode)."""

    __test__ = False

    settings: EffectiveSettings
    summary: PerformanceSummary | None
    outdir: str | None
    errors: list[str]
    accuracy_samples_logged: int
    peak_qps: float | None = None

    @property
    def valid(self) -> bool:
        return self.summary is not None and self.summary.valid


class _Run:
    """Bookkeeping for one IssueQueries call (one loadable set).

    Plain lists, not numpy arrays: per-element access from Python is several times faster,
    and the completion path is the hot loop of a fast SUT."""

    def __init__(self, q: _schedule.Queries, base_id: int, log_all: bool, log_prob: float,
                 acc_offset: float, acc_vals: np.ndarray | None):
        self.q = q
        self.base = base_id
        n = int(q.offsets[-1])
        self.n = n
        nq = q.count
        sizes = np.diff(q.offsets)
        self.uniform_spq = int(sizes[0]) if nq and np.all(sizes == sizes[0]) else 0
        # Few huge queries (Offline): numpy arrays and a vectorised completion path.
        # Many small queries: Python lists, faster per element.
        self.vector = nq <= 4 and n >= 256
        if self.vector:
            self.done = np.zeros(n, dtype=np.int64)
            self.sample_query = np.repeat(np.arange(nq), sizes)
            self.remaining = sizes.astype(np.int64)
            self.qdone = np.zeros(nq, dtype=np.int64)
        else:
            self.done = [0] * n
            self.sample_query = None if self.uniform_spq else np.repeat(np.arange(nq), sizes).tolist()
            self.remaining = sizes.tolist()
            self.qdone = self.done if self.uniform_spq == 1 else [0] * nq
        self.issued_samples = 0
        self.completed = 0
        self.completed_queries = 0
        self.wait_target = 1 << 62
        self.event = threading.Event()
        self.log_all = log_all
        self.log_prob = log_prob
        self.acc_offset = acc_offset
        self.acc_vals = acc_vals
        self.acc_rows: list[tuple[int, int, bytes]] = []
        self.samples_list = q.samples


class _Test:
    def __init__(self, sut, qsl, requested: TestSettings, log_settings: LogSettings, outdir: str | None):
        self.sut = sut
        self.qsl = qsl
        self.requested = requested
        self.lock = threading.Lock()
        self.run: _Run | None = None
        self.errors: list[str] = []
        self.seq = 0  # next sample sequence id (the official SequenceGen)
        self.t0 = _clock()
        self.outdir = outdir
        lo = log_settings.log_output
        self.paths = {}
        if outdir is not None:
            os.makedirs(outdir, exist_ok=True)
            stamp = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S.%f") + "_" if lo.prefix_with_datetime else ""
            for k, ext in (("summary", "txt"), ("detail", "txt"), ("accuracy", "json"), ("trace", "json")):
                self.paths[k] = os.path.join(outdir, f"{lo.prefix}{stamp}{k}{lo.suffix}.{ext}")
        self.log_settings = log_settings
        self.detail = DetailLog(self.paths.get("detail"), self.t0, lo.copy_detail_to_stdout)
        self.acc = AccuracyLog(self.paths.get("accuracy"))
        self.sut_exception: BaseException | None = None

    # ------------------------------------------------------------- completion
    def complete(self, responses, response_cb=None) -> None:
        t = _clock()
        with self.lock:
            run = self.run
            if run is None:
                ids = [r.id for r in responses][:5]
                self._error_locked(f"SUT answered ids {ids} while no query was outstanding")
                raise ResponseError(f"QuerySamplesComplete: response ids {ids} arrived while no query "
                                    "was outstanding")
            base, done, issued = run.base, run.done, run.issued_samples
            spq = run.uniform_spq
            logging = run.log_all or run.log_prob > 0
            k = 0
            try:
                if run.vector and len(responses) > 32:
                    k = self._complete_vector(run, responses, t, response_cb)
                elif spq == 1:
                    for r in responses:
                        pos = r.id - base
                        if pos < 0 or pos >= issued or done[pos]:
                            self._bad_response(run, r.id, pos, issued)
                        done[pos] = t
                        k += 1
                        if logging:
                            self._maybe_log(run, r, pos, response_cb)
                    run.completed_queries += k
                else:
                    remaining, qdone, sq = run.remaining, run.qdone, run.sample_query
                    for r in responses:
                        pos = r.id - base
                        if pos < 0 or pos >= issued or done[pos]:
                            self._bad_response(run, r.id, pos, issued)
                        done[pos] = t
                        k += 1
                        qi = pos // spq if spq else sq[pos]
                        rem = remaining[qi] - 1
                        remaining[qi] = rem
                        if rem == 0:
                            qdone[qi] = t
                            run.completed_queries += 1
                        if logging:
                            self._maybe_log(run, r, pos, response_cb)
            finally:
                run.completed += k
                if run.completed >= run.wait_target:
                    run.event.set()

    def _complete_vector(self, run: _Run, responses, t: int, response_cb) -> int:
        ids = np.fromiter((r.id for r in responses), dtype=np.int64, count=len(responses)) - run.base
        bad = (ids < 0) | (ids >= run.issued_samples)
        if bad.any():
            self._bad_response(run, int(ids[np.flatnonzero(bad)[0]] + run.base), -1, 0)
        seen = run.done[ids] != 0
        if seen.any():
            self._bad_response(run, int(ids[np.flatnonzero(seen)[0]] + run.base), 0, 1)
        uniq, counts = np.unique(ids, return_counts=True)
        if uniq.size != ids.size:
            self._bad_response(run, int(uniq[np.flatnonzero(counts > 1)[0]] + run.base), 0, 1)
        run.done[ids] = t
        qi, qc = np.unique(run.sample_query[ids], return_counts=True)
        run.remaining[qi] -= qc
        fin = qi[run.remaining[qi] == 0]
        run.qdone[fin] = t
        run.completed_queries += int(fin.size)
        if run.log_all or run.log_prob > 0:
            for r, pos in zip(responses, ids.tolist()):
                self._maybe_log(run, r, pos, response_cb)
        return int(ids.size)

    def _bad_response(self, run: _Run, rid, pos: int, issued: int) -> None:
        if isinstance(pos, int) and 0 <= pos < issued:
            self._error_locked(f"SUT answered sample id {rid} more than once")
            raise ResponseError(f"QuerySamplesComplete: response id {rid} answered more than once")
        self._error_locked(f"SUT answered unknown response id {rid}")
        raise ResponseError(f"QuerySamplesComplete: unknown response id {rid} "
                            f"(not an id of an issued, unanswered sample)")

    def _maybe_log(self, run: _Run, r: QuerySampleResponse, pos: int, response_cb) -> None:
        if not run.log_all:
            v = run.acc_vals[pos] + run.acc_offset
            if v >= 1.0:
                v -= 1.0
            if v > run.log_prob:
                return
        if response_cb is not None:
            response_cb(r)
        run.acc_rows.append((run.base + pos, int(run.samples_list[pos]), r.payload()))

    def _error_locked(self, msg: str) -> None:
        self.errors.append(msg)

    def error(self, msg: str, key: str = "error_runtime") -> None:
        with self.lock:
            self.errors.append(msg)
        self.detail.error(key, msg)

    # ---------------------------------------------------------------- issuing
    def _wait_completed(self, run: _Run, target: int, deadline: int | None) -> bool:
        """Wait until ``target`` samples of ``run`` are answered; False on deadline."""
        with self.lock:
            if run.completed >= target:
                return True
            run.wait_target = target
            run.event.clear()
        while True:
            if deadline is None:
                run.event.wait(0.5)
            else:
                left = (deadline - _clock()) / 1e9
                if left <= 0:
                    with self.lock:
                        ok = run.completed >= target
                        run.wait_target = 1 << 62
                    return ok
                run.event.wait(min(left, 0.5))
            with self.lock:
                if run.completed >= target:
                    run.wait_target = 1 << 62
                    return True
                if self.sut_exception is not None:
                    return False

    def _issue_server_fast(self, run: _Run, sched, samp, issued_at, start, max_dur, max_q, max_async) -> int:
        """Server, one sample per query, performance mode: the tight loop."""
        sut_issue = self.sut.issue_queries
        clock, sleep, QS = _clock, time.sleep, QuerySample
        base = run.base
        d = self.detail
        n = 0
        for i in range(len(sched)):
            target = start + sched[i]
            now = clock()
            while now < target:
                delta = target - now
                sleep(delta * 1e-9 if delta > 60_000 else 0)
                now = clock()
            issued_at[i] = now
            run.issued_samples = i + 1
            n = i + 1
            try:
                sut_issue([QS(base + i, samp[i])])
            except ResponseError:
                break
            except BaseException as e:  # noqa: BLE001 - reported, logs written, re-raised later
                self.sut_exception = e
                self.error(f"SUT raised {type(e).__name__}: {e} (in issue_queries, query {i})")
                break
            if self.errors:
                break
            if max_async and n - run.completed_queries > max_async:
                d.error("error_runtime", f"IssueQueryThread 0 Ending early: Too many outstanding queries. "
                        f"issued {n} outstanding {n - run.completed_queries}")
                break
            if max_q and n >= max_q:
                d.error("error_runtime", f"IssueQueryThread 0 Ending early: Max query count reached. query_count {n}")
                break
            if max_dur and now - start > max_dur:
                d.error("error_runtime", f"IssueQueryThread 0 Ending early: Max test duration reached. "
                        f"duration_ns {now - start}")
                break
        return n

    def _issue_generic(self, run: _Run, s: EffectiveSettings, sched, offs, samp, issued_at, scheduled_at,
                       start, deadline, accuracy, ran_out):
        scenario = s.scenario
        sut, d, base = self.sut, self.detail, run.base
        max_dur = s.max_duration_ms * 1_000_000
        target_dur = s.target_duration_ms * 1_000_000
        min_q, max_q, max_async = s.min_query_count, s.max_query_count, s.max_async_queries
        clock, sleep = _clock, time.sleep
        queries_issued = 0
        for i in range(len(sched)):
            if scenario == TestScenario.Server:
                target = start + sched[i]
                now = clock()
                while now < target:
                    delta = target - now
                    sleep(delta * 1e-9 if delta > 60_000 else 0)
                    now = clock()
                scheduled_at[i] = target
            elif scenario == TestScenario.Offline:
                now = clock()
                scheduled_at[i] = start
            else:
                if i:
                    if not self._wait_completed(run, offs[i], deadline):
                        if self.sut_exception is None:
                            self.error(f"SUT did not answer query {i - 1} (sample ids "
                                       f"{base + offs[i - 1]}..{base + offs[i] - 1}) before max_duration "
                                       f"({s.max_duration_ms} ms)")
                        ran_out = False
                        break
                now = clock()
                scheduled_at[i] = now
            issued_at[i] = now
            a, b = offs[i], offs[i + 1]
            qs = [QuerySample(base + j, samp[j]) for j in range(a, b)]
            run.issued_samples = b
            queries_issued += 1
            try:
                sut.issue_queries(qs)
            except ResponseError:
                ran_out = False
                break
            except BaseException as e:  # noqa: BLE001 - reported, logs written, re-raised later
                self.sut_exception = e
                self.error(f"SUT raised {type(e).__name__}: {e} (in issue_queries, query {i})")
                ran_out = False
                break
            if self.errors:
                ran_out = False
                break
            if accuracy:
                continue
            duration = now - start
            if scenario == TestScenario.Server:
                if max_async and queries_issued - run.completed_queries > max_async:
                    d.error("error_runtime", f"IssueQueryThread 0 Ending early: Too many outstanding queries. "
                            f"issued {queries_issued} outstanding {queries_issued - run.completed_queries}")
                    break
            elif queries_issued >= min_q and duration >= target_dur:
                d.log("generic_message", "Ending naturally: Minimum query count and test duration met.")
                ran_out = False
                break
            if max_q and queries_issued >= max_q:
                d.error("error_runtime", f"IssueQueryThread 0 Ending early: Max query count reached. "
                        f"query_count {queries_issued}")
                ran_out = False
                break
            if max_dur and duration > max_dur:
                d.error("error_runtime", f"IssueQueryThread 0 Ending early: Max test duration reached. "
                        f"duration_ns {duration}")
                ran_out = False
                break
        return queries_issued, ran_out

    def issue_queries(self, s: EffectiveSettings, mode: TestMode, loaded: _schedule.LoadableSet) -> PerformanceResult:
        q = _schedule.generate_queries(s, mode, loaded)
        d = self.detail
        d.log("generated_query_count", q.count)
        d.log("generated_samples_per_query", q.samples_per_query)
        d.log("generated_query_duration", q.duration_ns)
        accuracy = mode == TestMode.AccuracyOnly
        n_samples = int(q.offsets[-1])
        log_prob = 0.0
        acc_offset = 0.0
        acc_vals = None
        if not accuracy:
            log_prob = s.accuracy_log_probability
            if s.accuracy_log_sampling_target > 0:
                expected = int(s.target_qps * s.min_duration_ms / 1000)
                minimum = s.min_query_count * s.samples_per_query
                if s.scenario != TestScenario.Offline:
                    expected *= s.samples_per_query
                else:
                    minimum = s.min_sample_count
                log_prob = s.accuracy_log_sampling_target / max(expected, minimum, 1)
            if log_prob > 0:
                from ._rng import MT19937
                acc_offset = MT19937(s.accuracy_log_rng_seed).canonical()
                acc_vals = MT19937(s.accuracy_log_rng_seed ^ 0x5EED).canonicals(max(n_samples, 1))
        run = _Run(q, self.seq, accuracy, log_prob, acc_offset, acc_vals)
        self.seq += n_samples
        with self.lock:
            self.run = run

        sched = q.sched_ns.tolist()
        offs = q.offsets.tolist()
        samp = q.samples.tolist()
        nq = len(sched)
        issued_at = [0] * nq
        scheduled_at = [0] * nq
        sut = self.sut
        scenario = s.scenario
        base = run.base
        max_dur = s.max_duration_ms * 1_000_000
        max_q = s.max_query_count
        max_async = s.max_async_queries
        ran_out = scenario != TestScenario.Server
        start = _clock()
        start_wall = time.time()
        deadline = start + max_dur if max_dur else None
        if scenario == TestScenario.Server and run.uniform_spq == 1 and not accuracy:
            queries_issued = self._issue_server_fast(run, sched, samp, issued_at, start, max_dur, max_q, max_async)
            ran_out = False
        else:
            queries_issued, ran_out = self._issue_generic(
                run, s, sched, offs, samp, issued_at, scheduled_at, start, deadline, accuracy, ran_out)
        if scenario == TestScenario.Server:
            scheduled_at = [start + x for x in sched]

        if self.sut_exception is None:
            try:
                sut.flush_queries()
            except BaseException as e:  # noqa: BLE001
                self.sut_exception = e
                self.error(f"SUT raised {type(e).__name__}: {e} (in flush_queries)")
        if mode != TestMode.AccuracyOnly and ran_out and not self.errors:
            d.error("error_runtime", "Ending early: Ran out of generated queries to issue before the minimum "
                    "query count and test duration were reached. Please update the relevant expected latency "
                    "or target qps in the TestSettings so they are more accurate.")
        issued_samples = offs[queries_issued] if queries_issued else 0
        if self.sut_exception is None:
            ok = self._wait_completed(run, issued_samples, deadline)
        else:
            ok = run.completed >= issued_samples
        with self.lock:
            self.run = None  # late answers are errors from here on
            completed = run.completed
        extra: list[str] = []
        unanswered = issued_samples - completed
        if not ok and unanswered > 0:
            missing = np.flatnonzero(np.asarray(run.done[:issued_samples], dtype=np.int64) == 0)
            first = int(missing[0]) if missing.size else 0
            msg = (f"SUT did not answer {unanswered} of {issued_samples} issued samples before "
                   + (f"max_duration ({s.max_duration_ms} ms)" if max_dur else "the test ended")
                   + f"; first unanswered: id {base + first}, qsl index {int(q.samples[first])}")
            if self.sut_exception is None:
                self.error(msg)
        if self.errors:
            extra = list(dict.fromkeys(self.errors))
        # Power markers: wall clock of the start and of the last completion.
        done = np.asarray(run.done[:issued_samples], dtype=np.int64)
        last_done = int(done.max()) if issued_samples else start
        d.log("power_begin", _power_time(start_wall), event_type="INTERVAL_START")
        d.log("power_end", _power_time(start_wall + max(0, last_done - start) / 1e9), event_type="INTERVAL_END")
        self.acc.add_many(run.acc_rows)

        # ---- results ------------------------------------------------------
        nqi = queries_issued
        iss = np.asarray(issued_at[:nqi], dtype=np.int64)
        sch = np.asarray(scheduled_at[:nqi], dtype=np.int64)
        qid = ((np.arange(issued_samples) // run.uniform_spq) if run.uniform_spq
               else np.asarray(run.sample_query[:issued_samples], dtype=np.int64))
        answered = done != 0
        lat = (done - sch[qid])[answered]
        qd = np.asarray(run.qdone[:nqi], dtype=np.int64)
        q_lat = (qd - sch)[qd != 0] if scenario == TestScenario.MultiStream else np.empty(0, np.int64)
        if nqi:
            fq = nqi - 1
            final_sched = sched[fq] / 1e9
            final_issued = (issued_at[fq] - start) / 1e9
            final_done = (int(qd[fq]) - start) / 1e9 if qd[fq] else float("nan")
        else:
            final_sched = final_issued = final_done = 0.0
        lateness = (iss - sch) if scenario == TestScenario.Server else None
        return PerformanceResult(
            sample_latencies=lat, query_latencies=q_lat, queries_issued=nqi,
            max_latency=(int(lat.max()) / 1e9 if lat.size else 0.0), final_query_scheduled_time=final_sched,
            final_query_issued_time=final_issued, final_query_all_samples_done_time=final_done,
            extra_invalid_reasons=extra, issue_lateness_ns=lateness, unanswered_samples=int(unanswered))


def _power_time(t: float) -> str:
    dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return dt.strftime("%m-%d-%Y %H:%M:%S.") + f"{dt.microsecond // 1000:03d}"


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
               audit_config_filename: str = "audit.config") -> TestResult:
    """Run one test and write the official log files into ``outdir``.

    ``outdir`` defaults to ``log_settings.log_output.outdir``.  Returns a :class:`TestResult`;
    raises :class:`SUTError` (after writing the logs) if the SUT raised.
    """
    global _ACTIVE
    log_settings = log_settings or LogSettings()
    if outdir is None:
        outdir = log_settings.log_output.outdir
    settings = TestSettings(**dataclasses.asdict(settings)) if dataclasses.is_dataclass(settings) else settings
    settings.validate()  # also turns official-binding enums into ours
    total = int(qsl.total_sample_count)
    perf = int(qsl.performance_sample_count)
    if total <= 0:
        raise LoadGenError(f"QSL total_sample_count must be > 0, got {total}")
    if perf <= 0 and not settings.performance_sample_count_override:
        raise LoadGenError(f"QSL performance_sample_count must be > 0, got {perf}")
    with _ACTIVE_LOCK:
        if _ACTIVE is not None:
            raise LoadGenError("another test is already running in this process")
        test = _Test(sut, qsl, settings, log_settings, os.fspath(outdir) if outdir is not None else None)
        _ACTIVE = test
    d = test.detail
    summary: PerformanceSummary | None = None
    peak = None
    try:
        d.log("loadgen_version", VERSION, file="version.py")
        d.log("test_datetime", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
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
        eff = EffectiveSettings.from_requested(settings, total, perf)
        if eff.performance_sample_count > total:
            d.warning("warning_generic_message", f"performance_sample_count ({eff.performance_sample_count}) is "
                      f"larger than the QSL ({total}); using {total}")
            eff = eff.replace(performance_sample_count=total)
        _log_settings(d, settings, eff)
        mode = eff.mode
        if mode in (TestMode.SubmissionRun, TestMode.AccuracyOnly):
            _run_accuracy(test, eff)
        if test.sut_exception is None:
            if mode in (TestMode.SubmissionRun, TestMode.PerformanceOnly):
                summary = _run_performance(test, eff)
            elif mode == TestMode.FindPeakPerformance:
                summary, peak = _run_find_peak(test, eff)
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE = None
        if summary is not None:
            summary.log_detail(d)
        d.log("num_errors", d.errors, file="results.py")
        d.close()
        test.acc.close()
        text = summary.summary_text(d.warnings, d.errors) if summary is not None else _no_perf_summary(test, d)
        if "summary" in test.paths:
            with open(test.paths["summary"], "w") as f:
                f.write(text)
            if log_settings.enable_trace:
                with open(test.paths["trace"], "w") as f:
                    f.write('{ "traceEvents": [] }\n')
        if log_settings.log_output.copy_summary_to_stdout:
            print(text, end="", flush=True)
    result = TestResult(settings=eff, summary=summary, outdir=test.outdir, errors=list(test.errors),
                        accuracy_samples_logged=test.acc.count, peak_qps=peak)
    if test.sut_exception is not None:
        raise SUTError(f"the SUT raised {type(test.sut_exception).__name__}: {test.sut_exception} "
                       f"(logs written to {test.outdir})") from test.sut_exception
    return result


def _no_perf_summary(test: _Test, d: DetailLog) -> str:
    """Accuracy-only runs: the official summary holds just the warning/error counts.  When the
    run failed (an mlperf_jax-detected SUT problem) the reasons are listed first."""
    lines = []
    if test.errors:
        lines += ["Result is : INVALID"] + [" * " + e for e in dict.fromkeys(test.errors)]
    lines += ["", "No warnings encountered during test." if d.warnings == 0 else
              f"{d.warnings} warning{'s' if d.warnings > 1 else ''} encountered. See detailed log.", "",
              "No errors encountered during test." if d.errors == 0 else
              f"{d.errors} ERROR{'S' if d.errors > 1 else ''} encountered. See detailed log."]
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
    try:
        summary = _perf_once(test, perf, ls)
    finally:
        test.qsl.unload_samples_from_ram(list(ls.indices))
    summary.settings = eff  # the summary reports the requested mode (e.g. SubmissionRun)
    return summary


def _run_find_peak(test: _Test, eff: EffectiveSettings):
    """The official FindPeakPerformance (Server only): widen the QPS bound, then bisect."""
    d = test.detail
    d.log("generic_message", "Starting FindPeakPerformance mode")
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
