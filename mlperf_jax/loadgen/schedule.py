"""Loadable sample sets and pre-generated queries, drawn exactly as the official LoadGen draws them.

Everything is precomputed with numpy before the timed part of a test: query start offsets
(constant period, or Poisson arrivals for Server) and the QSL index of every sample.
With the same seeds and settings, the sets, the sample indices and the Server schedule are
identical to those of ``mlperf_loadgen`` 6.0 (see tests/test_loadgen_rng.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ._rng import MT19937
from .settings import EffectiveSettings, TestMode, TestScenario

__all__ = ["LoadableSet", "Queries", "generate_loadable_sets", "generate_queries"]


@dataclasses.dataclass
class LoadableSet:
    indices: list[int]          # QSL indices to load (MultiStream: plus padding)
    distribution_end: int       # samples before the MultiStream padding


@dataclasses.dataclass
class Queries:
    sched_ns: np.ndarray        # int64 [N]: scheduled offset from the test start
    samples: np.ndarray         # int64 [total samples]: QSL index of each sample, query-major
    offsets: np.ndarray         # int64 [N + 1]: samples of query q are samples[offsets[q]:offsets[q+1]]
    duration_ns: int            # the official generated_query_duration
    samples_per_query: int      # the official generated_samples_per_query (settings value)

    @property
    def count(self) -> int:
        return int(self.sched_ns.shape[0])


def generate_loadable_sets(s: EffectiveSettings, accuracy: bool) -> list[LoadableSet]:
    """Performance: one set, a permutation of the first performance_sample_count indices.
    Accuracy: a permutation of all accuracy_sample_count indices in chunks of
    performance_sample_count.  MultiStream sets are padded with their first spq-1 samples."""
    rng = MT19937(s.qsl_rng_seed)
    total = s.accuracy_sample_count if accuracy else s.performance_sample_count
    if s.qsl_total_count:
        total = min(total, s.qsl_total_count)  # official: capped to the QSL's size, silently
    samples = list(range(total))
    rng.shuffle(samples)
    size = max(1, s.performance_sample_count)
    pad = s.samples_per_query - 1 if s.scenario == TestScenario.MultiStream else 0
    sets = []
    for i in range(0, len(samples), size):
        chunk = samples[i:i + size]
        end = len(chunk)
        chunk = chunk + [chunk[j % end] for j in range(pad)] if pad else chunk
        sets.append(LoadableSet(chunk, end))
        if not accuracy:
            break
    return sets


def _shuffled(n_or_list, rng: MT19937) -> list[int]:
    seq = list(range(n_or_list)) if isinstance(n_or_list, int) else list(n_or_list)
    rng.shuffle(seq)
    return seq


def _query_count(ts_prev: np.ndarray, gen_ns: int, min_queries: int) -> int | None:
    """Smallest k >= 0 such that the official loop stops before query k.

    ts_prev[k] is the loop's prev_timestamp before query k (ts_prev[0] = 0)."""
    cond = (ts_prev < gen_ns) | (np.arange(ts_prev.shape[0]) < min_queries)
    stop = np.flatnonzero(~cond)
    return int(stop[0]) if stop.size else None


def generate_queries(s: EffectiveSettings, mode: TestMode, loaded: LoadableSet) -> Queries:
    scenario = s.scenario
    accuracy = mode == TestMode.AccuracyOnly
    loaded_samples = np.asarray(loaded.indices, dtype=np.int64)
    n_loaded = len(loaded.indices)
    dist_end = loaded.distribution_end

    gen_ns = (1 if scenario == TestScenario.Server else 2) * s.target_duration_ms * 1_000_000
    min_queries = s.min_query_count
    spq = s.samples_per_query
    if accuracy and scenario == TestScenario.Offline:
        spq = dist_end
    if accuracy or s.performance_issue_unique or s.performance_issue_same:
        gen_ns = 0
        min_queries = n_loaded // spq

    sample_rng = MT19937(s.sample_index_rng_seed)
    schedule_rng = MT19937(s.schedule_rng_seed)
    multi = scenario == TestScenario.MultiStream
    stride = spq if multi else 1
    # Construction order matters: each shuffle consumes the shared sample RNG.
    acc_order = _shuffled(range(0, dist_end, stride), sample_rng) if accuracy else None
    unique_order = _shuffled(range(0, dist_end, stride), sample_rng)
    equal_issue: list[int] = []
    perm = list(range(n_loaded))
    for _ in range(0, min_queries, n_loaded):
        sample_rng.shuffle(perm)  # the official reshuffles the same vector each round
        equal_issue.extend(perm)

    if (scenario == TestScenario.Offline and s.sample_concatenate_permutation and spq % n_loaded != 0):
        spq += n_loaded - spq % n_loaded

    # --- schedule -----------------------------------------------------------------
    if scenario == TestScenario.Server:
        intervals = np.empty(0, dtype=np.int64)
        chunk = max(1024, int(min_queries) + 1, int(gen_ns / 1e9 * s.target_qps * 1.05) + 64)
        while True:
            u = schedule_rng.canonicals(chunk)
            more = np.trunc((-np.log(1.0 - u) / s.target_qps) * 1e9).astype(np.int64)
            intervals = np.concatenate([intervals, more])
            ts = np.concatenate([[0], np.cumsum(intervals)])  # ts[k] = start of query k
            prev = np.concatenate([[0], ts[:-1]])               # prev_timestamp before query k
            n = _query_count(prev, gen_ns, min_queries)
            if n is not None:
                break
            chunk *= 2
        # The official loop draws one interval after every query, the last one included.
        sched = ts[:n].astype(np.int64)
        duration = int(ts[n]) if n > 0 else 0
        # Rewind is impossible; intervals past n were drawn only from our private schedule RNG.
    else:
        period = int(math.trunc((1.0 / s.target_qps) * 1e9))
        if period <= 0 and gen_ns > 0:
            raise ValueError("target_qps is so high that the query period rounds to 0 ns; "
                             "the official LoadGen would loop forever here")
        if period > 0:
            need = max(int(min_queries), int(-(-gen_ns // period)) + 1 if gen_ns > 0 else 0)
        else:
            need = max(int(min_queries), 1 if gen_ns > 0 else 0)
        k = np.arange(need + 2, dtype=np.int64)
        prev = np.maximum(k - 1, 0) * period
        n = _query_count(prev, gen_ns, min_queries)
        sched = np.arange(n, dtype=np.int64) * period
        duration = n * period

    # --- samples ------------------------------------------------------------------
    if multi:
        if s.performance_issue_unique:
            starts = np.asarray(unique_order[:n], dtype=np.int64)
        elif s.performance_issue_same:
            starts = np.full(n, s.performance_issue_same_index, dtype=np.int64)
        elif accuracy:
            starts = np.asarray(acc_order[:n], dtype=np.int64)
        else:
            starts = sample_rng.uniform_ints(n, 0, dist_end - 1)
        pos = starts[:, None] + np.arange(spq, dtype=np.int64)[None, :]
        samples = loaded_samples[pos].reshape(-1)
        offsets = np.arange(n + 1, dtype=np.int64) * spq
    elif scenario == TestScenario.Offline:
        per_query = []
        for _ in range(n):
            if s.performance_issue_same:
                q = np.full(spq, loaded_samples[s.performance_issue_same_index], dtype=np.int64)
            else:
                reps, rem = divmod(spq, n_loaded)
                parts = []
                if s.sample_concatenate_permutation:
                    for _ in range(reps):
                        block = list(loaded.indices)
                        sample_rng.shuffle(block)
                        parts.append(np.asarray(block, dtype=np.int64))
                elif reps:
                    parts.append(np.tile(loaded_samples, reps))  # the loaded set, reps times over
                parts.append(loaded_samples[:rem])
                q = np.concatenate(parts) if parts else np.empty(0, np.int64)
            per_query.append(q)
        sizes = [spq] * n
        if accuracy and n_loaded % spq:
            rem = n_loaded % spq
            # Official: the remainder query draws from the accuracy sample distribution.
            extra = acc_order[len(acc_order) - rem:] if acc_order else []
            per_query.append(loaded_samples[np.asarray(extra, dtype=np.int64)])
            sizes.append(rem)
            sched = np.append(sched, duration)
        samples = np.concatenate(per_query) if per_query else np.empty(0, np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    else:
        total = n * spq
        if s.performance_issue_unique:
            idx = np.asarray(unique_order, dtype=np.int64)[np.arange(total) % len(unique_order)]
        elif s.performance_issue_same:
            idx = np.full(total, s.performance_issue_same_index, dtype=np.int64)
        elif s.sample_concatenate_permutation and scenario == TestScenario.SingleStream and not accuracy:
            idx = np.asarray(equal_issue, dtype=np.int64)[np.arange(total) % max(1, len(equal_issue))]
        elif accuracy:
            idx = np.asarray(acc_order[:total], dtype=np.int64)
        else:
            idx = sample_rng.uniform_ints(total, 0, dist_end - 1)
        samples = loaded_samples[idx]
        offsets = np.arange(n + 1, dtype=np.int64) * spq
    return Queries(sched_ns=np.asarray(sched, dtype=np.int64), samples=samples.astype(np.int64),
                   offsets=offsets, duration_ns=int(duration), samples_per_query=int(spq))
