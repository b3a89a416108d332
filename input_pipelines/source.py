"""What a training driver needs from an input pipeline, for one host.

This module depends on nothing of the benchmark contract, so that pipelines (``wmt``, ``movielens``,
``imagenet``, ...) can be imported and tested on their own. The driver's timing rules shape it:

- constructing a ``DataSource`` reads no data (the MLPerf clock has not started yet): it knows the
  sizes and shapes from metadata written by a one-time, untimed preparation step;
- ``train_spec`` / ``eval_spec`` give the global batch shapes, so the driver compiles ahead of time
  without peeking at a batch;
- what the metric needs from the data (BLEU references, COCO annotations) comes from
  ``eval_context()``, called inside the clock, never kept on the benchmark object.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import numpy as np

PyTree = Any
Batch = dict[str, np.ndarray]


class DatasetNotFoundError(FileNotFoundError):
    """A real dataset (or its prepared form) is missing; the message says where we looked and how
    to prepare it."""


@dataclasses.dataclass
class DataSource:
    """One host's view of a benchmark's data.

    ``train_epoch(epoch, skip_steps)`` yields this host's slice of each global batch of epoch
    ``epoch`` (numbered from 1), deterministic given the seed, the epoch and (when ``get_state`` is
    set) the data state, so that a resumed run can skip ``skip_steps`` batches and see exactly what
    an uninterrupted run sees.

    ``eval_batches()`` yields this host's slice of fixed-size eval batches; padded rows carry
    ``mask == 0`` so that metrics count every real example exactly once.

    Model-dependent data (MiniGo's self-play): ``before_epoch(epoch, params, model_state,
    programs)`` runs inside the clock before epoch ``epoch``'s data is drawn, with a copy of the
    current parameters that the train step does not donate, and the benchmark's extra compiled
    programs by name; it returns per-epoch hyperparameters to log (``{key: value}``) or None.
    ``epoch_steps(epoch)`` is that epoch's step count when it varies (asked after
    ``before_epoch``); otherwise every epoch has ``steps_per_epoch`` steps. When the data is not a
    pure function of (seed, epoch), ``get_state()`` returns a pytree of numpy arrays and scalars
    that goes into every checkpoint and ``set_state`` puts it back on resume.

    ``rates()`` reports the data side's own throughput over the run so far (MiniGo's
    ``{"self-play positions": positions/s}``), for the result table beside the train step's.
    """

    num_train_samples: int
    num_eval_samples: int
    steps_per_epoch: int
    train_epoch: Callable[[int, int], Iterator[Batch]]
    eval_batches: Callable[[], Iterator[Batch]]
    #: shapes and dtypes of one *global* train / eval batch (ahead-of-time compilation)
    train_spec: dict[str, Any]
    eval_spec: dict[str, Any]
    description: str = ""
    synthetic: bool = False
    #: called once per run inside the clock, before the first evaluation; passed to eval_metric
    eval_context: Callable[[], Any] | None = None
    before_epoch: Callable[[int, PyTree, PyTree, dict[str, Callable]], dict | None] | None = None
    epoch_steps: Callable[[int], int] | None = None
    get_state: Callable[[], PyTree] | None = None
    set_state: Callable[[PyTree], None] | None = None
    rates: Callable[[], dict[str, float]] | None = None

    def steps_in_epoch(self, epoch: int) -> int:
        return int(self.epoch_steps(epoch)) if self.epoch_steps is not None else self.steps_per_epoch


def global_spec(per_host: dict[str, tuple[tuple[int, ...], Any]], process_count: int
                ) -> dict[str, Any]:
    """``{key: ShapeDtypeStruct}`` of the global batch from this host's ``{key: (shape, dtype)}``."""
    import jax
    return {k: jax.ShapeDtypeStruct((s[0] * process_count,) + tuple(s[1:]), d)
            for k, (s, d) in per_host.items()}


class Once:
    """A value computed on first use, once, under a lock (prefetch threads may ask together)."""

    def __init__(self, fn: Callable[[], Any]):
        self._fn, self._lock, self._done, self._value = fn, threading.Lock(), False, None

    def __call__(self):
        if not self._done:
            with self._lock:
                if not self._done:
                    self._value = self._fn()
                    self._done = True
        return self._value


def prefetch(it: Iterable, size: int = 4, *, name: str | None = None) -> Iterator:
    """Iterate ``it`` on a thread, ``size`` items ahead (0: inline); its errors raise here."""
    if size <= 0:
        yield from it
        return
    q: queue.Queue = queue.Queue(maxsize=size)
    done = object()
    stop = threading.Event()

    def put(x) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer went away: let the thread end

    def work():
        try:
            for x in it:
                if not put(x):
                    return
        except BaseException as e:  # surfaced in the consumer
            put(e)
        finally:
            put(done)

    t = threading.Thread(target=work, daemon=True, name=name)
    t.start()
    try:
        while True:
            x = q.get()
            if x is done:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()


def read_json(path: str) -> dict | None:
    """A small metadata file (what preparation wrote), or None when it is missing or unreadable."""
    import json
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def epoch_seed(seed: int, epoch: int, process_index: int) -> int:
    """One shuffle/augmentation seed per (run seed, epoch, host): reproducible epochs that differ
    from each other and between hosts."""
    return int(np.random.SeedSequence([seed, epoch, process_index]).generate_state(1)[0])


def tf_data_options():
    """The ``tf.data.Options`` every pipeline here uses: deterministic order (resume and multi-host
    runs see the same batches), the shared thread pool, parallel maps."""
    import tensorflow as tf
    o = tf.data.Options()
    o.deterministic = True
    o.threading.private_threadpool_size = 0
    o.experimental_optimization.map_parallelization = True
    return o
