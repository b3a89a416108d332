"""The test driver: issues pre-generated queries to a SUT and records completions.

Design (speed): the schedule and sample indices are numpy arrays built before the clock
starts; the issue loop walks plain Python lists; completion from any thread writes a
timestamp into an array under one lock; latencies, percentiles and early stopping are
computed with numpy after the run.  While the clock runs, Python's cyclic collector is held
back (gc_hold.py): with the default thresholds, a million live sample and response objects
cost more in collections than everything else.  A huge answer (Offline) with consecutive ids
is recorded with slice writes.

As the official LoadGen: issuing stops at ``max_duration_ms`` (checked after each issue, so
one query may go out just past it), then the test waits for every issued sample.

Beyond the official LoadGen: a SUT that never answers does not hang the test forever: when
max_duration is set, the wait gives up at the *answer guard* (``max(ANSWER_GUARD_MIN_MS,
ANSWER_GUARD_FACTOR x max_duration)`` after the run's start, extended while answers still
arrive within ``ANSWER_GUARD_IDLE_MS``) and the run is INVALID with that reason in the
summary and the detail log.  An answer with an unknown, old or already used id is never raised
into the SUT's thread: it is logged as an ``error_runtime`` naming the id (the official logs
"Received completion for an old sample" / "Attempted to complete a sample twice") and makes
the run INVALID.  An answer when no test is running is ignored with a note on stderr.  An
exception raised by the SUT stops the test, is written to the detail log, the logs are still
written, and :class:`SUTError` is raised afterwards.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import operator
import os
import sys
import threading
import time
from typing import Any, Iterable, Protocol, Sequence, runtime_checkable

import numpy as np

from . import gc_hold as _gc_hold
from . import multistream_v05 as _ms05
from . import schedule as _schedule
from ._rng import MT19937
from .logs import AccuracyLog, DetailLog
from .results import PerformanceResult, PerformanceSummary
from .settings import EffectiveSettings, LogSettings, TestMode, TestScenario, TestSettings
from .trace import TraceLog

__all__ = [
    "QuerySample", "QuerySampleResponse", "QuerySampleLibrary", "SystemUnderTest", "LoadGenError",
    "ResponseError", "SUTError", "TestResult", "start_test", "query_samples_complete", "VERSION",
]

VERSION = "mlperf_jax-loadgen 0.1 (pure Python; semantics of mlcommons-loadgen 6.0)"

_clock = time.perf_counter_ns
_get_id = operator.attrgetter("id")

# The answer guard (see the module docstring).  Module constants so a test can shorten them.
ANSWER_GUARD_MIN_MS = 300_000     # 5 minutes
ANSWER_GUARD_FACTOR = 10          # x max_duration_ms
ANSWER_GUARD_IDLE_MS = 60_000     # keep waiting while answers arrived this recently

# The official SequenceGen draws every sample's accuracy-log value from one std::mt19937 per
# test that is never seeded (InitAccLogRng is not called): the default seed 5489.  Only the
# offset added to those values comes from accuracy_log_rng_seed.
_ACC_LOG_SAMPLE_SEED = 5489

_BAD_LOGGED_MAX = 100  # bad answers (unknown/old/repeated ids) logged per test
_NO_BAD: list[str] = []  # shared empty list: never appended to (`bad = bad or []` first)
_BULK_SAMPLES = 4096  # a query this large is built with the collector off, then frozen (gc_hold.py)
PROGRESS_INTERVAL_S = 2.0  # start_test(progress=True): seconds between progress lines


class LoadGenError(RuntimeError):
    pass


class ResponseError(LoadGenError):
    """Kept for API compatibility: responses with unknown or repeated ids are now logged as
    errors (and make the run INVALID), never raised into the SUT's thread."""


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


_STRAY_NOTES_MAX = 10
_stray_notes = 0


def query_samples_complete(responses: Iterable[QuerySampleResponse], response_cb=None) -> None:
    """Answer samples of the running test; callable from any thread; never raises for a bad
    or late id (that is logged; see the module docstring)."""
    global _stray_notes
    test = _ACTIVE
    if test is None:
        # After the test (e.g. a SUT still answering after the answer guard gave up): there is
        # no detail log to write to any more; one note on stderr, the answers are dropped.
        _stray_notes += 1
        if _stray_notes <= _STRAY_NOTES_MAX:
            responses = list(responses)
            ids = [getattr(r, "id", r) for r in responses][:5]
            more = " (further notes suppressed)" if _stray_notes == _STRAY_NOTES_MAX else ""
            print(f"LoadGen: QuerySamplesComplete: no test is running; ignored {len(responses)} "
                  f"response(s), ids {ids}{more}", file=sys.stderr, flush=True)
        return
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
        self.last_answer = 0  # perf_counter_ns of the latest answer
        self.start = 0  # perf_counter_ns when issuing began (0 before)
        self.wait_target = 1 << 62
        self.event = threading.Event()
        self.log_all = log_all
        self.log_prob = log_prob
        self.acc_offset = acc_offset
        self.acc_vals = acc_vals
        self.acc_rows: list[tuple[int, int, bytes]] = []
        self.samples_list = q.samples
        self.gc: _gc_hold.Hold | None = None  # set while the run's clock runs


class _Test:
    def __init__(self, sut, qsl, requested: TestSettings, log_settings: LogSettings, outdir: str | None):
        self.sut = sut
        self.qsl = qsl
        self.requested = requested
        self.lock = threading.Lock()
        self.run: _Run | None = None
        self.errors: list[str] = []
        self.seq = 0  # next sample sequence id (the official SequenceGen)
        self.qseq = 0  # next query sequence id
        self.acc_rng = MT19937(_ACC_LOG_SAMPLE_SEED)  # the SequenceGen's accuracy-log values
        self.bad_answers = 0
        self.t0 = _clock()
        self.outdir = outdir
        lo = log_settings.log_output
        self.paths = {}
        # The official names the files with the local date and time ("%FT%TZ", 'Z' included).
        self.datetime = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        if outdir is not None:
            os.makedirs(outdir, exist_ok=True)
            stamp = self.datetime + "_" if lo.prefix_with_datetime else ""
            kinds = [("summary", "txt"), ("detail", "txt"), ("accuracy", "json")]
            if log_settings.enable_trace:
                kinds.append(("trace", "json"))
            for k, ext in kinds:
                self.paths[k] = os.path.join(outdir, f"{lo.prefix}{stamp}{k}{lo.suffix}.{ext}")
        self.log_settings = log_settings
        self.trace = TraceLog(self.t0, time.time()) if log_settings.enable_trace else None
        self.detail = DetailLog(self.paths.get("detail"), self.t0, lo.copy_detail_to_stdout,
                                int(log_settings.log_mode), log_settings.log_mode_async_poll_interval_ms)
        self.acc = AccuracyLog(self.paths.get("accuracy"))
        self.sut_exception: BaseException | None = None

    # ------------------------------------------------------------- completion
    def complete(self, responses, response_cb=None) -> None:
        t = _clock()
        bad: list[str] = _NO_BAD
        with self.lock:
            run = self.run
            if run is None:
                bad, responses = [], list(responses)
                for r in responses[:1]:
                    bad.append(self._bad_msg(None, r.id) + (f" (and {len(responses) - 1} more in the same call)"
                                                            if len(responses) > 1 else ""))
            else:
                # One inlined body (this is the hot path of a fast SUT).
                base, done, issued = run.base, run.done, run.issued_samples
                spq = run.uniform_spq
                logging = run.log_all or run.log_prob > 0
                k = 0
                try:
                    if run.vector and len(responses) > 32:
                        bad = []
                        k = self._complete_vector(run, responses, t, response_cb, bad)
                    elif spq == 1:
                        for r in responses:
                            pos = r.id - base
                            if pos < 0 or pos >= issued or done[pos]:
                                bad = bad or []
                                bad.append(self._bad_msg(run, r.id))
                                continue
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
                                bad = bad or []
                                bad.append(self._bad_msg(run, r.id))
                                continue
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
                    if k:
                        run.completed += k
                        run.last_answer = t
                    if run.completed >= run.wait_target:
                        run.event.set()
            if bad:
                bad = self._count_bad_locked(bad)
                self.errors.extend(bad)
        if bad:
            for msg in bad:
                self.detail.error("error_runtime", msg)

    def _complete_vector(self, run: _Run, responses, t: int, response_cb, bad: list[str]) -> int:
        n = len(responses)
        ids = np.fromiter(map(_get_id, responses), dtype=np.int64, count=n) - run.base
        done = run.done
        lo, hi = int(ids[0]), int(ids[-1])
        if 0 <= lo and hi < run.issued_samples and hi - lo == n - 1 and (
                n == 1 or bool((ids[1:] > ids[:-1]).all())):
            # The common answer: one consecutive block of ids, in order (no repeats possible).
            if done[lo:hi + 1].any():  # some answered before: the general path sorts it out
                return self._complete_vector_any(run, responses, ids, t, response_cb, bad)
            done[lo:hi + 1] = t
            self._count_queries(run, run.sample_query[lo:hi + 1], t)
            if run.log_all or run.log_prob > 0:
                self._log_vector(run, responses, np.arange(n), ids, response_cb)
            return n
        return self._complete_vector_any(run, responses, ids, t, response_cb, bad)

    def _complete_vector_any(self, run: _Run, responses, ids: np.ndarray, t: int, response_cb,
                             bad: list[str]) -> int:
        """Any ids: out of range, answered before, repeated within the call are bad."""
        ok = (ids >= 0) & (ids < run.issued_samples)
        ok[ok] = run.done[ids[ok]] == 0
        cand = np.flatnonzero(ok)
        _, first = np.unique(ids[cand], return_index=True)  # a repeat within this call is bad too
        keep = np.sort(cand[first])
        if keep.size != ids.size:
            good = np.zeros(ids.size, dtype=bool)
            good[keep] = True
            for j in np.flatnonzero(~good).tolist():
                bad.append(self._bad_msg(run, int(ids[j]) + run.base))
            ids = ids[keep]
        run.done[ids] = t
        self._count_queries(run, run.sample_query[ids], t)
        if run.log_all or run.log_prob > 0:
            self._log_vector(run, responses, keep, ids, response_cb)
        return int(ids.size)

    @staticmethod
    def _count_queries(run: _Run, sq: np.ndarray, t: int) -> None:
        """Samples answered, by query (``sq``: their query numbers): finished queries get ``t``."""
        if sq.size == 0:
            return
        counts = np.bincount(sq)
        qi = np.flatnonzero(counts)
        qc = counts[qi]
        run.remaining[qi] -= qc
        fin = qi[run.remaining[qi] == 0]
        run.qdone[fin] = t
        run.completed_queries += int(fin.size)

    def _log_vector(self, run: _Run, responses, js: np.ndarray, ids: np.ndarray, response_cb) -> None:
        """The accuracy log for answers ``responses[js]`` (positions ``ids``): the sampling
        draw (see _maybe_log) vectorised, the chosen ones logged in answer order."""
        if not run.log_all:
            v = run.acc_vals[ids] + run.acc_offset
            v[v >= 1.0] -= 1.0
            sel = v <= run.log_prob
            js, ids = js[sel], ids[sel]
        for j, pos in zip(js.tolist(), ids.tolist()):
            if response_cb is not None:
                response_cb(responses[j])
            run.acc_rows.append((run.base + pos, int(run.samples_list[pos]), responses[j].payload()))

    def _bad_msg(self, run: _Run | None, rid) -> str:
        """The error for an answer that matches no issued, unanswered sample of the current run."""
        if run is not None and isinstance(rid, int) and 0 <= rid - run.base < run.issued_samples:
            return (f"SUT answered sample id {rid} more than once (the second answer is ignored; "
                    "the official LoadGen logs: Attempted to complete a sample twice.)")
        first = run.base if run is not None else self.seq
        if isinstance(rid, int) and 0 <= rid < first and rid < self.seq:
            return (f"SUT answered sample id {rid} after its run ended (ignored; the official LoadGen logs: "
                    f"Received completion for an old sample. Min expected id: {first} Actual id: {rid})")
        return f"SUT answered unknown response id {rid} (not an id of an issued, unanswered sample; ignored)"

    def _count_bad_locked(self, bad: list[str]) -> list[str]:
        """At most _BAD_LOGGED_MAX bad-answer errors per test reach the logs."""
        room = _BAD_LOGGED_MAX - self.bad_answers
        self.bad_answers += len(bad)
        if room <= 0:
            return []
        if len(bad) > room:
            bad = bad[:room] + ["further bad answers are not logged (see the errors above)"]
        return bad

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

    def error(self, msg: str, key: str = "error_runtime") -> None:
        with self.lock:
            self.errors.append(msg)
        self.detail.error(key, msg)

    # ---------------------------------------------------------------- issuing
    def _wait_completed(self, run: _Run, target: int, guard: int | None) -> bool:
        """Wait until ``target`` samples of ``run`` are answered.  False if the SUT raised, or
        once past the answer guard ``guard`` (perf_counter_ns; None: wait for ever, as the
        official) with no answer for ANSWER_GUARD_IDLE_MS."""
        with self.lock:
            if run.completed >= target:
                return True
            run.wait_target = target
            run.event.clear()
        idle = ANSWER_GUARD_IDLE_MS * 1_000_000
        while True:
            timeout = 0.5
            if guard is not None:
                now = _clock()
                end = max(guard, run.last_answer + idle)
                if now >= end:
                    with self.lock:
                        ok = run.completed >= target
                        run.wait_target = 1 << 62
                    return ok
                timeout = min(timeout, (end - now) / 1e9)
            run.event.wait(timeout)
            with self.lock:
                if run.completed >= target:
                    run.wait_target = 1 << 62
                    return True
                if self.sut_exception is not None:
                    return False

    def _issue_server_fast(self, run: _Run, sched, samp, issued_at, issue_end, start, max_dur, max_q,
                           max_async) -> int:
        """Server, one sample per query, performance mode, no coalescing: the tight loop."""
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
            except BaseException as e:  # noqa: BLE001 - reported, logs written, re-raised later
                self.sut_exception = e
                self.error(f"SUT raised {type(e).__name__}: {e} (in issue_queries, query {i})")
                break
            issue_end[i] = clock()
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
                       issue_end, start, guard, accuracy, ran_out):
        scenario = s.scenario
        sut, d, base = self.sut, self.detail, run.base
        max_dur = s.max_duration_ms * 1_000_000
        target_dur = s.target_duration_ms * 1_000_000
        min_q, max_q, max_async = s.min_query_count, s.max_query_count, s.max_async_queries
        # Official: overdue Server queries (one sample each) go out together in one call.
        coalesce = scenario == TestScenario.Server and bool(s.requested.server_coalesce_queries)
        clock, sleep = _clock, time.sleep
        queries_issued = 0
        nq = len(sched)
        i = 0
        while i < nq:
            last = i  # the last query of this issue call
            if scenario == TestScenario.Server:
                target = start + sched[i]
                now = clock()
                while now < target:
                    delta = target - now
                    sleep(delta * 1e-9 if delta > 60_000 else 0)
                    now = clock()
                scheduled_at[i] = target
                if coalesce:
                    while last + 1 < nq and now >= start + sched[last + 1]:
                        last += 1
                        scheduled_at[last] = start + sched[last]
                        issued_at[last] = now
            elif scenario == TestScenario.Offline:
                now = clock()
                scheduled_at[i] = start
            elif run.ms05 is not None:  # MLPerf v0.5 MultiStream: fixed-rate ticks (multistream_v05.py)
                now = run.ms05.wait(self, run, i, offs, guard)
                if now is None:
                    ran_out = False
                    break
                scheduled_at[i] = run.ms05.tick
            else:
                # The official waits for the previous query for ever; we give up at the guard
                # (the run's final accounting reports the unanswered samples).
                if i and not self._wait_completed(run, offs[i], guard):
                    ran_out = False
                    break
                now = clock()
                scheduled_at[i] = now
            issued_at[i] = now
            a, b = offs[i], offs[last + 1]
            if b - a >= _BULK_SAMPLES and run.gc is not None:  # one huge query (Offline)
                qs = run.gc.build(lambda: list(map(QuerySample, range(base + a, base + b), samp[a:b])))
            else:
                qs = [QuerySample(base + j, samp[j]) for j in range(a, b)]
            run.issued_samples = b
            queries_issued += last - i + 1
            try:
                sut.issue_queries(qs)
            except BaseException as e:  # noqa: BLE001 - reported, logs written, re-raised later
                self.sut_exception = e
                self.error(f"SUT raised {type(e).__name__}: {e} (in issue_queries, query {i})")
                ran_out = False
                break
            issue_end[i] = clock()
            i = last + 1
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
        t_gen = _clock()
        q = _schedule.generate_queries(s, mode, loaded)
        if self.trace is not None:
            self.trace.complete("GenerateQueries", t_gen, _clock())
        d = self.detail
        d.log("generated_query_count", q.count)
        d.log("generated_samples_per_query", q.samples_per_query)
        d.log("generated_query_duration", q.duration_ns)
        accuracy = mode == TestMode.AccuracyOnly
        n_samples = int(q.offsets[-1])
        log_prob = 0.0
        # Every generated sample draws its value, logged or not, as the official SequenceGen.
        acc_vals = self.acc_rng.canonicals(n_samples)
        acc_offset = MT19937(s.accuracy_log_rng_seed).canonical()
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
        run = _Run(q, self.seq, accuracy, log_prob, acc_offset, acc_vals)
        self.seq += n_samples
        first_query_seq = self.qseq
        self.qseq += q.count
        with self.lock:
            self.run = run

        sched = q.sched_ns.tolist()
        offs = q.offsets.tolist()
        samp = q.samples.tolist()
        nq = len(sched)
        issued_at = [0] * nq
        scheduled_at = [0] * nq
        issue_end = [0] * nq
        sut = self.sut
        scenario = s.scenario
        base = run.base
        max_dur = s.max_duration_ms * 1_000_000
        max_q = s.max_query_count
        max_async = s.max_async_queries
        ran_out = scenario != TestScenario.Server
        guard_ms = max(ANSWER_GUARD_MIN_MS, ANSWER_GUARD_FACTOR * s.max_duration_ms) if max_dur else 0
        # The clock runs from here to the last answer: Python's collector is held back (gc_hold.py).
        with _gc_hold.held() as gc_hold:
            run.gc = gc_hold
            start = _clock()
            start_wall = time.time()
            run.start = start
            run.ms05 = _ms05.for_run(s, start)  # None unless rules v0.5 MultiStream
            guard = start + guard_ms * 1_000_000 if max_dur else None
            if (scenario == TestScenario.Server and run.uniform_spq == 1 and not accuracy
                    and not s.requested.server_coalesce_queries):
                queries_issued = self._issue_server_fast(run, sched, samp, issued_at, issue_end, start, max_dur,
                                                         max_q, max_async)
                ran_out = False
            else:
                queries_issued, ran_out = self._issue_generic(
                    run, s, sched, offs, samp, issued_at, scheduled_at, issue_end, start, guard, accuracy, ran_out)
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
                ok = self._wait_completed(run, issued_samples, guard)  # as the official: wait for all
            else:
                ok = run.completed >= issued_samples
        with self.lock:
            self.run = None  # late answers are logged errors from here on
            completed = run.completed
        extra: list[str] = []
        unanswered = issued_samples - completed
        if not ok and unanswered > 0:
            missing = np.flatnonzero(np.asarray(run.done[:issued_samples], dtype=np.int64) == 0)
            first = int(missing[0]) if missing.size else 0
            if self.sut_exception is None:
                self.error(f"SUT did not answer {unanswered} of {issued_samples} issued samples: the answer "
                           f"guard gave up {(_clock() - start) / 1e9:.1f} s after the start (guard "
                           f"{guard_ms} ms = max({ANSWER_GUARD_MIN_MS} ms, {ANSWER_GUARD_FACTOR} x max_duration "
                           f"{s.max_duration_ms} ms), no answer in the last {ANSWER_GUARD_IDLE_MS} ms); first "
                           f"unanswered: id {base + first}, qsl index {int(q.samples[first])}")
        if self.errors:
            extra = list(dict.fromkeys(self.errors))
        # Power markers: wall clock of the start and of the last completion.
        done = np.asarray(run.done[:issued_samples], dtype=np.int64)
        last_done = int(done.max()) if issued_samples else start
        d.log("power_begin", _power_time(start_wall))  # POINT_IN_TIME events, as the official writes them
        d.log("power_end", _power_time(start_wall + max(0, last_done - start) / 1e9))
        self.acc.add_many(run.acc_rows)
        if self.trace is not None:
            qid_list = ((np.arange(issued_samples) // run.uniform_spq).tolist() if run.uniform_spq
                        else list(run.sample_query[:issued_samples]))
            self.trace.run(server=scenario == TestScenario.Server, first_seq=base, first_query_seq=first_query_seq,
                           sample_query=qid_list, sample_index=samp[:issued_samples], sched_ns=scheduled_at,
                           issued_ns=issued_at[:queries_issued], issue_end_ns=issue_end[:queries_issued],
                           done_ns=done.tolist(), tid=threading.get_native_id())

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
            extra_invalid_reasons=extra, issue_lateness_ns=lateness, unanswered_samples=int(unanswered),
            query_intervals=run.ms05.query_intervals(qd) if run.ms05 is not None else None)


def _power_time(t: float) -> str:
    dt = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
    return dt.strftime("%m-%d-%Y %H:%M:%S.") + f"{dt.microsecond // 1000:03d}"


def _activate(test: "_Test") -> None:
    """Make ``test`` the one running test (query_samples_complete routes answers to it)."""
    global _ACTIVE, _stray_notes
    with _ACTIVE_LOCK:
        if _ACTIVE is not None:
            raise LoadGenError("another test is already running in this process")
        _ACTIVE, _stray_notes = test, 0


def _deactivate() -> None:
    global _ACTIVE
    with _ACTIVE_LOCK:
        _ACTIVE = None


def start_test(*args, **kwargs) -> TestResult:
    """See :func:`mlperf_jax.loadgen.runner.start_test` (kept here for ``core.start_test``)."""
    from .runner import start_test as run
    return run(*args, **kwargs)
