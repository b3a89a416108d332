"""A JAX translation SUT (GNMT): beam search compiled ahead of time for a fixed grid of
(batch size, source length) buckets, batches cut by source length.

- Compilation: ``jax.jit(translate).lower(...).compile()`` for every (batch, length) bucket before
  the test (not timed), sharded over the mesh's ``data`` axis as ``batching.BatchingSUT`` does.
- Offline: LoadGen issues every sample in one query; they are sorted by source length before they
  are queued, so consecutive batches of ``max(batch_sizes)`` hold sentences of similar length and
  each goes to the shortest length bucket that fits its longest sentence (the reference harness
  batched in file order).
- Server: dynamic batching: the batcher waits at most ``batch_timeout_ms`` after the first queued
  sample for the batch to fill (the reference's ServerGNMTRunner aggregated what was queued).
- A batch of n samples runs in the smallest compiled batch size >= n; the spare rows hold a lone
  EOS.  A completer thread fetches the ids and answers LoadGen, so host work overlaps device work.

Response, per sample: the best beam's token ids as int32 bytes, trailing padding removed (EOS
kept when the model emitted one); ``translation_accuracy.decode_response`` reads it back.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mlperf_jax.inference.sample_queue import SampleQueue

from mlperf_jax.loadgen import QuerySampleResponse, query_samples_complete

EOS_ID = 1


def length_buckets(longest: int, smallest: int = 16) -> list[int]:
    """Source-length buckets: powers of two from ``smallest``, the last capped at ``longest``
    (newstest2014 truncated to 150 tokens: 16, 32, 64, 128, 150)."""
    out, b = [], smallest
    while True:
        out.append(min(b, longest))
        if b >= longest:
            return out
        b *= 2


def response_ids(row: np.ndarray) -> np.ndarray:
    """One decoded row -> the ids answered: trailing padding (0) removed."""
    nz = np.flatnonzero(row)
    return np.ascontiguousarray(row[: nz[-1] + 1] if nz.size else row[:0], dtype=np.int32)


class TranslationSUT(SampleQueue):
    """``translate_fn(variables, src [B, S] int32, 0-padded) -> ids [B, L] int32`` (jittable,
    fixed shapes); ``qsl``: a ``translation_qsl.TranslationQSL`` (``get``, ``source_length``)."""

    def __init__(self, translate_fn: Callable, variables: Any, qsl, *, batch_sizes: Sequence[int],
                 src_lengths: Sequence[int], batch_timeout_ms: float = 0.0, mesh: Mesh | None = None,
                 name: str = "JaxTranslationSUT", complete: Callable = query_samples_complete,
                 record_batches: bool = False):
        self.name = name
        self.qsl = qsl
        self.mesh = mesh or Mesh(np.asarray(jax.local_devices()), ("data",))
        n_dev = self.mesh.size
        self.batch_sizes = sorted({-(-int(b) // n_dev) * n_dev for b in batch_sizes if int(b) > 0})
        self.src_lengths = sorted({int(s) for s in src_lengths if int(s) > 0})
        if not self.batch_sizes or not self.src_lengths:
            raise ValueError("need at least one positive batch size and source length")
        longest = getattr(qsl, "max_source_length", None)
        if longest is not None and longest > self.src_lengths[-1]:
            raise ValueError(f"the QSL's longest source has {longest} tokens, more than the largest "
                             f"length bucket {self.src_lengths[-1]}")
        self.max_batch = self.batch_sizes[-1]
        self.timeout_s = batch_timeout_ms / 1000.0
        self._complete = complete
        rep = NamedSharding(self.mesh, P())
        self._sharding = NamedSharding(self.mesh, P("data"))
        self.variables = jax.device_put(variables, rep)
        jitted = jax.jit(translate_fn, in_shardings=(rep, self._sharding))
        abstract_vars = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep),
                                     self.variables)
        t0 = time.perf_counter()
        self._compiled = {}
        for b in self.batch_sizes:
            for s in self.src_lengths:
                spec = jax.ShapeDtypeStruct((b, s), jnp.int32, sharding=self._sharding)
                self._compiled[(b, s)] = jitted.lower(abstract_vars, spec).compile()
        self.compile_seconds = time.perf_counter() - t0
        self.batches_run: collections.Counter = collections.Counter()  # (batch, length) -> count
        # record_batches (tests): (batch, length, qsl indices) of every batch, in run order
        self.batch_log: list[tuple[int, int, list[int]]] | None = [] if record_batches else None
        self.samples_answered = 0
        self.error: BaseException | None = None
        self._pending: collections.deque = collections.deque()
        self._cv = threading.Condition()
        self._done_q: collections.deque = collections.deque()
        self._done_cv = threading.Condition()
        self._stop = False
        self._threads = [threading.Thread(target=self._batcher, name="sut-batcher", daemon=True),
                         threading.Thread(target=self._completer, name="sut-completer", daemon=True)]
        for t in self._threads:
            t.start()

    # ---------------------------------------------------------------- SUT API
    def issue_queries(self, samples) -> None:
        samples = list(samples)
        if len(samples) > 1:  # Offline (or any multi-sample query): batch by source length
            samples.sort(key=lambda s: self.qsl.source_length(s.index))
        with self._cv:
            self._pending.extend(samples)
            self._cv.notify()

    def _batcher(self):
        try:
            while True:
                batch = self._take_batch()
                if batch is None:
                    return
                n = len(batch)
                srcs = self.qsl.get([s.index for s in batch])
                longest = max(len(x) for x in srcs)
                b = next(v for v in self.batch_sizes if v >= n)
                s = next((v for v in self.src_lengths if v >= longest), None)
                if s is None:
                    raise ValueError(f"a source of {longest} tokens is longer than the largest length "
                                     f"bucket {self.src_lengths[-1]}")
                x = np.zeros((b, s), np.int32)
                for i, src in enumerate(srcs):
                    x[i, :len(src)] = src
                x[n:, 0] = EOS_ID
                out = self._compiled[(b, s)](self.variables, jax.device_put(x, self._sharding))
                self.batches_run[(b, s)] += 1
                if self.batch_log is not None:
                    self.batch_log.append((b, s, [int(q.index) for q in batch]))
                self._push_done(out, batch)
        except BaseException as e:  # noqa: BLE001 - surfaced through .error; LoadGen ends at max_duration
            self.error = e
            raise

    def _completer(self):
        try:
            while True:
                item = self._next_done()
                if item is None:
                    return
                out, batch = item
                ids = np.asarray(out)
                responses = [QuerySampleResponse(q.id, response_ids(ids[i]).tobytes())
                             for i, q in enumerate(batch)]
                self.samples_answered += len(batch)
                self._complete(responses)
        except BaseException as e:  # noqa: BLE001 - surfaced through .error
            self.error = e
            raise
