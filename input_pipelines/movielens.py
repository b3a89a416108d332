"""MovieLens-20M for NCF, per run: what ``movielens_prepare.prepare`` wrote (steps 1-4 of its
docstring; ``python scripts/prepare_data.py --benchmark=ncf --data_dir=DIR``, once, untimed), in
batches.

5. training negatives are drawn afresh every epoch, ``num_negatives`` (4) per positive, uniformly
   among the items that are not a training positive of that user (as the reference's
   ``CFTrainDataset`` does), with a vectorised rejection sampler.

``load_meta`` and ``data_source`` read only the ``.json`` sidecar, so they touch no data before
the clock; the arrays are loaded on the first ``train_epoch`` / ``eval_batches`` call, inside the
clock, once per data source.
"""
from __future__ import annotations

import os
import threading
from typing import Iterator

import numpy as np

from mlperf_jax.input_pipelines.source import (DataSource, DatasetNotFoundError, Once, prefetch,
                                               read_json)
# the preparation's names, also used from here (movielens.prepare, movielens.cache_path, ...)
from mlperf_jax.input_pipelines.movielens_prepare import (  # noqa: F401
    CACHE_VERSION, CSV_NAMES, DEFAULT_CACHE_SUBDIR, META_VERSION, MIN_RATINGS, ML20M_NUM_ITEMS,
    ML20M_NUM_USERS, NUM_EVAL_NEGATIVES, NUM_TRAIN_NEGATIVES, PREPARE_HELP, TFDS_NAME, PositiveSet,
    Prepared, cache_path, default_cache_dir, factorize, leave_one_out, load_raw_ratings, meta_path,
    prepare, prepare_command, prepare_from_raw, sample_distinct_negatives)


# ---------------------------------------------------------------------------------------- loading
class PreparedMeta:
    """A prepared dataset known by its sidecar only: the sizes now, the arrays (``get()``) loaded
    on first use, once, under a lock (the batch threads may ask together)."""

    def __init__(self, path: str, num_users: int, num_items: int, num_train_positives: int,
                 num_eval_negatives: int):
        self.path = path
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.num_train_positives = int(num_train_positives)
        self.num_eval_negatives = int(num_eval_negatives)
        self._prepared = Once(self._load)

    def get(self) -> Prepared:
        return self._prepared()

    def _load(self) -> Prepared:
        p = Prepared.load(self.path)
        want = {"num_users": self.num_users, "num_items": self.num_items,
                "num_train_positives": self.num_train_positives,
                "num_eval_negatives": self.num_eval_negatives}
        if p.sizes() != want:
            raise ValueError(f"{self.path} holds {p.sizes()} but its metadata says "
                             f"{want}: prepare the data again")
        return p


def load_meta(data_dir: str | None, *, cache_dir: str | None = None,
              num_eval_negatives: int = NUM_EVAL_NEGATIVES, min_ratings: int = MIN_RATINGS,
              data_seed: int = 0) -> PreparedMeta:
    """What ``prepare`` wrote, known by its sidecar only (no array is read). Raises
    ``DatasetNotFoundError`` naming the command to run when the preparation is missing."""
    cmd = prepare_command(data_dir, cache_dir=cache_dir, num_eval_negatives=num_eval_negatives,
                          min_ratings=min_ratings, data_seed=data_seed)
    if not data_dir:
        raise DatasetNotFoundError(
            "MovieLens-20M needs --data_dir (the directory holding ml-20m/ratings.csv or TFDS "
            f"'{TFDS_NAME}'), prepared once with `{cmd}`")
    path = cache_path(cache_dir or default_cache_dir(data_dir),
                      num_eval_negatives=num_eval_negatives, min_ratings=min_ratings,
                      data_seed=data_seed)
    meta = read_json(meta_path(path))
    if (meta is None or meta.get("version") != META_VERSION
            or meta.get("cache_version") != CACHE_VERSION or not os.path.isfile(path)
            or os.path.getsize(path) != meta.get("bytes")):
        raise DatasetNotFoundError(
            f"prepared MovieLens-20M not found ({meta_path(path)} and {os.path.basename(path)} "
            f"missing or out of date): run `{cmd}` once, untimed")
    return PreparedMeta(path, meta["num_users"], meta["num_items"], meta["num_train_positives"],
                        meta["num_eval_negatives"])


# --------------------------------------------------------------------------------------- sampling
def sample_negatives(rng: np.random.Generator, users: np.ndarray, positives: PositiveSet,
                     max_rounds: int = 1000) -> np.ndarray:
    """One uniformly random item per entry of ``users`` that is not in ``positives`` for that user.

    Rejection sampling, vectorised: draw for all, redraw the rejected ones. Every user must have at
    least one item outside its positives (``check_samplable``).
    """
    users = np.asarray(users)
    out = rng.integers(0, positives.num_items, size=users.shape, dtype=np.int32)
    bad = np.flatnonzero(positives.contains(users, out))
    for _ in range(max_rounds):
        if len(bad) == 0:
            return out
        out[bad] = rng.integers(0, positives.num_items, size=len(bad), dtype=np.int32)
        bad = bad[positives.contains(users[bad], out[bad])]
    raise RuntimeError("negative sampling did not finish: a user has (almost) every item as positive")


def check_samplable(num_users: int, positives: PositiveSet) -> None:
    counts = np.bincount((positives.keys // positives.num_items).astype(np.int64),
                         minlength=num_users)
    full = np.flatnonzero(counts >= positives.num_items)
    if len(full):
        raise ValueError(f"user {int(full[0])} interacted with every item: no negative exists")


# --------------------------------------------------------------------------------------- batching
class TrainBatches:
    """Training epochs: all positives plus ``num_negatives`` fresh negatives each, shuffled.

    Epoch ``e`` is a permutation (seeded by ``(seed, e)``) of ``P * (1 + k)`` sample slots; slot
    ``j`` is positive ``j // (1 + k)``, a negative when ``j % (1 + k) != 0``. Global batch ``s``
    takes slots ``[s*B, (s+1)*B)``; the last one is padded with ``weight == 0`` rows. Each host
    builds only its contiguous slice of every global batch. Batches are made in chunks of
    ``chunk_steps`` steps, several chunks at a time on ``num_workers`` threads; the negatives of a
    chunk come from a generator seeded by ``(seed, e, chunk, process_index)``. So an epoch is
    deterministic per (seed, epoch) for a given host layout, and a resumed run (``skip_steps``)
    sees what an uninterrupted run sees. The next epoch's permutation is computed in the
    background while this one runs.

    ``prepared`` is a ``Prepared`` or a ``PreparedMeta``: construction uses only the sizes; the
    arrays and the positive set are built on the first ``epoch`` (inside the clock).
    """

    def __init__(self, prepared: Prepared | PreparedMeta, global_batch_size: int, *,
                 num_negatives: int, seed: int, process_index: int = 0, process_count: int = 1,
                 prefetch: int = 4, num_workers: int | None = None, chunk_samples: int = 1 << 18):
        if global_batch_size % process_count:
            raise ValueError(f"global batch size {global_batch_size} does not split over "
                             f"{process_count} hosts")
        if num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {num_negatives}")
        self.source = prepared
        self.global_batch_size = int(global_batch_size)
        self.local_batch_size = self.global_batch_size // process_count
        self.k = int(num_negatives)
        self.seed = int(seed)
        self.process_index, self.process_count = process_index, process_count
        self.prefetch = prefetch
        self.num_workers = num_workers or max(1, min(4, (os.cpu_count() or 2) - 1))
        self.chunk_steps = max(1, int(chunk_samples) // self.local_batch_size)
        self.num_samples = int(prepared.num_train_positives) * (1 + self.k)
        self.steps_per_epoch = -(-self.num_samples // self.global_batch_size)
        self._perm_lock = threading.Lock()
        self._perm_next: tuple[int, threading.Thread, list] | None = None
        self._positives = Once(self._build_positives)

    @property
    def p(self) -> Prepared:
        """The arrays (loaded on first use)."""
        return self.source.get()

    @property
    def positives(self) -> PositiveSet:
        """The training positives' membership test (built on first use)."""
        return self._positives()

    def _build_positives(self) -> PositiveSet:
        p = self.p
        positives = PositiveSet(p.train_users, p.train_items, p.num_items)
        check_samplable(p.num_users, positives)
        return positives

    def permutation(self, epoch: int) -> np.ndarray:
        dtype = np.int32 if self.num_samples < 2 ** 31 else np.int64
        perm = np.arange(self.num_samples, dtype=dtype)
        np.random.default_rng([self.seed, epoch, 0x5045524D]).shuffle(perm)
        return perm

    def _permutation_prefetched(self, epoch: int) -> np.ndarray:
        """``permutation(epoch)``, from the background computation when one was started; then
        start the one for ``epoch + 1``."""
        with self._perm_lock:
            pending, self._perm_next = self._perm_next, None
        perm = None
        if pending is not None and pending[0] == epoch:
            pending[1].join()
            perm = pending[2][0] if pending[2] else None
        if perm is None:
            perm = self.permutation(epoch)
        box: list = []
        t = threading.Thread(target=lambda: box.append(self.permutation(epoch + 1)), daemon=True,
                             name="movielens-permutation")
        t.start()
        with self._perm_lock:
            self._perm_next = (epoch + 1, t, box)
        return perm

    def chunk(self, perm: np.ndarray, epoch: int, c: int) -> list[dict[str, np.ndarray]]:
        """The host batches of steps ``[c * chunk_steps, (c + 1) * chunk_steps)``."""
        b, g = self.local_batch_size, self.global_batch_size
        steps = np.arange(c * self.chunk_steps, min((c + 1) * self.chunk_steps, self.steps_per_epoch))
        idx = (steps[:, None] * g + self.process_index * b + np.arange(b)[None, :]).reshape(-1)
        valid = idx < self.num_samples
        slots = perm[np.where(valid, idx, 0)]
        pos = slots // (1 + self.k)
        neg = valid & ((slots % (1 + self.k)) != 0)
        users = np.where(valid, self.p.train_users[pos], 0).astype(np.int32)
        items = np.where(valid, self.p.train_items[pos], 0).astype(np.int32)
        rng = np.random.default_rng([self.seed, epoch, c, self.process_index, 0x4E4547])
        nidx = np.flatnonzero(neg)
        items[nidx] = sample_negatives(rng, users[nidx], self.positives)
        label = (valid & ~neg).astype(np.float32)
        weight = valid.astype(np.float32)
        n = len(steps)
        cols = {"user": users.reshape(n, b), "item": items.reshape(n, b),
                "label": label.reshape(n, b), "weight": weight.reshape(n, b)}
        return [{k: v[i] for k, v in cols.items()} for i in range(n)]

    def batch(self, perm: np.ndarray, epoch: int, step: int) -> dict[str, np.ndarray]:
        c, i = divmod(step, self.chunk_steps)
        return self.chunk(perm, epoch, c)[i]

    def epoch(self, epoch: int, skip_steps: int = 0) -> Iterator[dict[str, np.ndarray]]:
        if not 0 <= skip_steps <= self.steps_per_epoch:
            raise ValueError(f"skip_steps={skip_steps} outside [0, {self.steps_per_epoch}]")

        def gen():
            from concurrent.futures import ThreadPoolExecutor

            _ = self.positives  # load the arrays here, before the worker threads start
            perm = self._permutation_prefetched(epoch)
            first = skip_steps // self.chunk_steps
            n_chunks = -(-self.steps_per_epoch // self.chunk_steps)
            pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="movielens-chunks")
            try:
                window = [pool.submit(self.chunk, perm, epoch, c)
                          for c in range(first, min(first + self.num_workers + 1, n_chunks))]
                nxt = first + len(window)
                c = first
                while window:
                    batches = window.pop(0).result()
                    if nxt < n_chunks:
                        window.append(pool.submit(self.chunk, perm, epoch, nxt))
                        nxt += 1
                    start = skip_steps - c * self.chunk_steps if c == first else 0
                    yield from batches[start:]
                    c += 1
            finally:
                pool.shutdown(wait=False, cancel_futures=True)

        return prefetch(gen(), self.prefetch, name="movielens-batches")

    def spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        g = self.global_batch_size
        return {"user": ((g,), np.dtype(np.int32)), "item": ((g,), np.dtype(np.int32)),
                "label": ((g,), np.dtype(np.float32)), "weight": ((g,), np.dtype(np.float32))}


class EvalBatches:
    """Fixed-size eval batches of users: ``items[:, 0]`` is the held-out positive, the rest its
    negatives; padded rows have ``mask == 0``. Each host yields its slice of every global batch.
    Construction uses only the sizes of ``prepared`` (a ``Prepared`` or ``PreparedMeta``); the
    arrays are read when the first batch is asked for."""

    def __init__(self, prepared: Prepared | PreparedMeta, eval_batch_size: int, *,
                 process_index: int = 0, process_count: int = 1):
        if eval_batch_size % process_count:
            raise ValueError(f"eval batch size {eval_batch_size} does not split over "
                             f"{process_count} hosts")
        self.source = prepared
        self.num_users = int(prepared.num_users)
        self.num_candidates = 1 + int(prepared.num_eval_negatives)
        self.global_batch_size = int(eval_batch_size)
        self.local_batch_size = self.global_batch_size // process_count
        self.process_index = process_index
        self.num_batches = -(-self.num_users // self.global_batch_size)
        self._items = Once(self._build_items)

    @property
    def p(self) -> Prepared:
        return self.source.get()

    @property
    def items(self) -> np.ndarray:
        """``[num_users, 1 + negatives]``: the held-out item, then its negatives (built on first
        use)."""
        return self._items()

    def _build_items(self) -> np.ndarray:
        p = self.p
        return np.concatenate([p.test_items[:, None], p.eval_negatives], axis=1).astype(np.int32)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        b, n = self.local_batch_size, self.num_candidates
        all_items = self.items
        for s in range(self.num_batches):
            lo = s * self.global_batch_size + self.process_index * b
            hi = min(lo + b, self.num_users)
            m = max(hi - lo, 0)
            users = np.zeros(b, np.int32)
            items = np.zeros((b, n), np.int32)
            mask = np.zeros(b, np.float32)
            if m:
                users[:m] = np.arange(lo, hi, dtype=np.int32)
                items[:m] = all_items[lo:hi]
                mask[:m] = 1.0
            yield {"user": users, "items": items, "mask": mask}

    def spec(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        g, n = self.global_batch_size, self.num_candidates
        return {"user": ((g,), np.dtype(np.int32)), "items": ((g, n), np.dtype(np.int32)),
                "mask": ((g,), np.dtype(np.float32))}


# ------------------------------------------------------------------------------------ data source
def data_source(prepared: Prepared | PreparedMeta, *, global_batch_size: int,
                eval_batch_size: int, num_negatives: int = NUM_TRAIN_NEGATIVES, seed: int,
                process_index: int = 0, process_count: int = 1, synthetic: bool = False,
                name: str | None = None) -> DataSource:
    """This host's NCF data. ``prepared``: ``load_meta(...)`` for the real dataset (nothing is
    read until the first epoch or eval), or a ``Prepared`` built in memory (the synthetic tiny
    track). Train and eval specs are the global batch shapes."""
    import jax

    train = TrainBatches(prepared, int(global_batch_size), num_negatives=int(num_negatives),
                         seed=int(seed), process_index=process_index, process_count=process_count)
    ev = EvalBatches(prepared, int(eval_batch_size), process_index=process_index,
                     process_count=process_count)
    name = name or ("synthetic MovieLens-like" if synthetic else "MovieLens-20M")
    return DataSource(
        num_train_samples=train.num_samples, num_eval_samples=int(prepared.num_users),
        steps_per_epoch=train.steps_per_epoch, train_epoch=train.epoch, eval_batches=ev.__iter__,
        train_spec={k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in train.spec().items()},
        eval_spec={k: jax.ShapeDtypeStruct(s, d) for k, (s, d) in ev.spec().items()},
        description=(f"{name}: {prepared.num_users} users, {prepared.num_items} items, "
                     f"{prepared.num_train_positives} train positives x (1 + {num_negatives} "
                     f"negatives)"),
        synthetic=bool(synthetic))
