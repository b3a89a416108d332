"""MovieLens-20M in the MLPerf NCF form (v0.5 reference ``recommendation/pytorch/convert.py``).

From the raw ratings (TFDS ``movielens/20m-ratings`` or the original ``ratings.csv``):

1. every rating is an implicit positive interaction; users with fewer than 20 ratings are dropped
   (none in ML-20M); repeated (user, item) pairs keep their latest interaction;
2. users and items are re-indexed ``0..n-1`` in order of first appearance in the source;
3. leave-one-out: each user's latest interaction (by timestamp, ties broken by source order) is
   held out for evaluation, the rest are training positives;
4. each held-out positive gets ``num_eval_negatives`` (999) sampled items the user never interacted
   with, fixed by ``data_seed``;
5. training negatives are drawn afresh every epoch, ``num_negatives`` (4) per positive, uniformly
   among the items that are not a training positive of that user (as the reference's
   ``CFTrainDataset`` does), with a vectorised rejection sampler.

Steps 1-4 are the one-time, untimed preparation (``prepare``; ``python scripts/prepare_data.py
--benchmark=ncf --data_dir=DIR``): one ``.npz`` of arrays in ``DIR/ncf_cache`` (or ``cache_dir``)
and, next to it, a small ``.json`` of sizes. ``data_source`` reads only that JSON, so it touches no
data before the clock; the arrays are loaded on the first ``train_epoch`` / ``eval_batches`` call,
inside the clock, once per data source.

Differences from the reference, on purpose: the 999 evaluation negatives are distinct and never
equal to the held-out item (the reference samples with replacement from a set that still contains
the held-out item, so some of its users effectively have fewer than 999 negatives).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import queue
import threading
from typing import Iterator

import numpy as np

from mlperf_jax.input_pipelines.source import DataSource, DatasetNotFoundError

TFDS_NAME = "movielens/20m-ratings"
CSV_NAMES = ("ratings.csv", os.path.join("ml-20m", "ratings.csv"))
MIN_RATINGS = 20
NUM_EVAL_NEGATIVES = 999
NUM_TRAIN_NEGATIVES = 4
CACHE_VERSION = 1
META_VERSION = 1
DEFAULT_CACHE_SUBDIR = "ncf_cache"
# ML-20M after the reference's preprocessing.
ML20M_NUM_USERS = 138493
ML20M_NUM_ITEMS = 26744

PREPARE_HELP = (
    "prepare it with TFDS (python -c \"import tensorflow_datasets as tfds; "
    f"tfds.builder('{TFDS_NAME}', data_dir='DATA_DIR').download_and_prepare()\") or unzip "
    "https://files.grouplens.org/datasets/movielens/ml-20m.zip into DATA_DIR (giving "
    "DATA_DIR/ml-20m/ratings.csv)")


def _help(data_dir: str) -> str:
    return PREPARE_HELP.replace("DATA_DIR", data_dir)


# ----------------------------------------------------------------------------------------- arrays
@dataclasses.dataclass
class Prepared:
    """The preprocessed dataset; every array is int32.

    ``train_users``/``train_items``: training positives sorted by (user, item).
    ``test_items[u]``: user u's held-out item. ``eval_negatives[u]``: its evaluation negatives.
    """

    num_users: int
    num_items: int
    train_users: np.ndarray
    train_items: np.ndarray
    test_items: np.ndarray
    eval_negatives: np.ndarray

    @property
    def num_train_positives(self) -> int:
        return int(self.train_users.shape[0])

    @property
    def num_eval_negatives(self) -> int:
        return int(self.eval_negatives.shape[1])

    def get(self) -> "Prepared":
        """The arrays (already in memory); ``PreparedMeta.get`` loads them."""
        return self

    def sizes(self) -> dict[str, int]:
        return {"num_users": int(self.num_users), "num_items": int(self.num_items),
                "num_train_positives": self.num_train_positives,
                "num_eval_negatives": self.num_eval_negatives}

    def save(self, path: str) -> None:
        """The arrays as ``path`` (.npz), then their sizes as ``meta_path(path)`` (.json)."""
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:
            np.savez(f, version=CACHE_VERSION, num_users=self.num_users, num_items=self.num_items,
                     train_users=self.train_users, train_items=self.train_items,
                     test_items=self.test_items, eval_negatives=self.eval_negatives)
        os.replace(tmp, path)
        self.write_meta(path)

    def write_meta(self, path: str) -> None:
        """The sidecar ``data_source`` reads instead of the arrays at ``path``."""
        mpath = meta_path(path)
        tmp = f"{mpath}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump({"version": META_VERSION, "cache_version": CACHE_VERSION,
                       "file": os.path.basename(path), "bytes": os.path.getsize(path),
                       **self.sizes()}, f, indent=1)
        os.replace(tmp, mpath)

    @classmethod
    def load(cls, path: str) -> "Prepared":
        with np.load(path) as z:
            if int(z["version"]) != CACHE_VERSION:
                raise ValueError(f"{path}: cache version {int(z['version'])}, want {CACHE_VERSION}")
            return cls(int(z["num_users"]), int(z["num_items"]), z["train_users"], z["train_items"],
                       z["test_items"], z["eval_negatives"])


def meta_path(npz_path: str) -> str:
    """The metadata sidecar of a prepared ``.npz``."""
    return npz_path[: -len(".npz")] + ".json" if npz_path.endswith(".npz") else npz_path + ".json"


class PreparedMeta:
    """A prepared dataset known by its sidecar only: the sizes now, the arrays (``get()``) loaded
    on first use, once, under a lock (the batch threads may ask together)."""

    def __init__(self, path: str, num_users: int, num_items: int, num_train_positives: int,
                 num_eval_negatives: int):
        self.path = path
        self.num_users, self.num_items = int(num_users), int(num_items)
        self.num_train_positives = int(num_train_positives)
        self.num_eval_negatives = int(num_eval_negatives)
        self._lock = threading.Lock()
        self._prepared: Prepared | None = None

    def get(self) -> Prepared:
        if self._prepared is None:
            with self._lock:
                if self._prepared is None:
                    p = Prepared.load(self.path)
                    want = {"num_users": self.num_users, "num_items": self.num_items,
                            "num_train_positives": self.num_train_positives,
                            "num_eval_negatives": self.num_eval_negatives}
                    if p.sizes() != want:
                        raise ValueError(f"{self.path} holds {p.sizes()} but its metadata says "
                                         f"{want}: prepare the data again")
                    self._prepared = p
        return self._prepared


def factorize(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Codes ``0..n-1`` in order of first appearance, and ``n`` (hash based, O(n))."""
    import pandas as pd  # a dependency of mlperf-logging

    codes, uniques = pd.factorize(np.asarray(values))
    return codes.astype(np.int32), len(uniques)


def leave_one_out(users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, *,
                  min_ratings: int = MIN_RATINGS):
    """Steps 1-3 of the module docstring on raw arrays (any hashable ids, in source order).

    Returns ``(num_users, num_items, train_users, train_items, test_items)``, train pairs sorted by
    (user, item) and ``test_items`` indexed by the new user id.
    """
    users, items = np.asarray(users), np.asarray(items)
    timestamps = np.asarray(timestamps, np.int64)
    if not (len(users) == len(items) == len(timestamps)):
        raise ValueError("users, items and timestamps must have the same length")
    u, _ = factorize(users)
    keep = np.bincount(u)[u] >= min_ratings
    u, items, timestamps = u[keep], items[keep], timestamps[keep]
    if len(u) == 0:
        raise ValueError(f"no user has {min_ratings} or more ratings")
    users_kept = np.asarray(users)[keep]
    u, num_users = factorize(users_kept)
    it, num_items = factorize(items)
    # by user, then time, then source order (two stable sorts; np.lexsort is slow at 20M rows)
    t0 = timestamps - timestamps.min()
    if t0.max() < (1 << 40) and num_users < (1 << 22):  # one composite key, one stable sort
        order = np.argsort((u.astype(np.int64) << 40) | t0, kind="stable")
    else:
        order = np.argsort(timestamps, kind="stable")
        order = order[np.argsort(u[order], kind="stable")]
    u, it = u[order], it[order]
    # repeated (user, item) pairs: keep the latest one
    key = u.astype(np.int64) * num_items + it
    by_key = np.argsort(key, kind="stable")  # equal keys stay in time order
    ks = key[by_key]
    last = np.sort(by_key[np.r_[ks[1:] != ks[:-1], True]])
    u, it = u[last], it[last]
    is_last = np.append(u[1:] != u[:-1], True)
    test_items = np.empty(num_users, np.int32)
    test_items[u[is_last]] = it[is_last]
    train_u, train_i = u[~is_last], it[~is_last]
    order = np.lexsort((train_i, train_u))
    return num_users, num_items, train_u[order], train_i[order], test_items


# --------------------------------------------------------------------------------------- sampling
def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique`` for 1-D ints; fast when already sorted (np.unique can be very slow here)."""
    if len(x) > 1 and not np.all(x[1:] >= x[:-1]):
        x = np.sort(x, kind="stable")
    return x[np.r_[True, x[1:] != x[:-1]]] if len(x) else x


class PositiveSet:
    """Membership test for (user, item) pairs, vectorised.

    A bitmap over ``user * num_items + item`` when it fits in ``max_bitmap_bytes`` (ML-20M: 463
    MB, O(1) lookups), else sorted int64 keys and ``searchsorted``."""

    def __init__(self, users: np.ndarray, items: np.ndarray, num_items: int,
                 max_bitmap_bytes: int = 1 << 30):
        self.num_items = int(num_items)
        self.keys = _sorted_unique(users.astype(np.int64) * self.num_items + items)
        n_users = int(self.keys[-1] // self.num_items) + 1 if len(self.keys) else 0
        nbytes = (n_users * self.num_items + 7) // 8
        self.bitmap = None
        if 0 < nbytes <= max_bitmap_bytes:
            bitmap = np.zeros(nbytes, np.uint8)
            byte = self.keys >> 3  # sorted; bits within a byte are distinct, so OR == sum
            starts = np.flatnonzero(np.r_[True, byte[1:] != byte[:-1]])
            bitmap[byte[starts]] = np.add.reduceat((1 << (self.keys & 7)).astype(np.uint8), starts)
            self.bitmap = bitmap
            self._limit = n_users * self.num_items

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        q = users.astype(np.int64) * self.num_items + items
        if len(self.keys) == 0:
            return np.zeros(q.shape, bool)
        if self.bitmap is not None:
            inside = q < self._limit
            qc = np.where(inside, q, 0)
            return inside & ((self.bitmap[qc >> 3] >> (qc & 7).astype(np.uint8)) & 1).astype(bool)
        pos = np.searchsorted(self.keys, q)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == q


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


def sample_distinct_negatives(rng: np.random.Generator, num_users: int, n: int,
                              positives: PositiveSet, chunk: int | None = None) -> np.ndarray:
    """``(num_users, n)`` items: for each user ``n`` distinct items outside its positives.

    Vectorised per chunk of users: draw more candidates than needed, drop positives and repeats
    (keeping first occurrences, so what is kept stays a uniform random subset), take the first
    ``n``; users left short are redrawn with more candidates. Repeats are found without sorting:
    write each candidate's position into a (rows x items) scratch table in reverse order, so the
    first occurrence is what remains.
    """
    ni = positives.num_items
    counts = np.bincount((positives.keys // ni).astype(np.int64), minlength=num_users)
    if np.any(ni - counts < n):
        u = int(np.argmax(ni - counts < n))
        raise ValueError(f"user {u} has only {ni - counts[u]} items it never "
                         f"interacted with; {n} evaluation negatives are needed")
    chunk = chunk or max(1, (1 << 25) // ni)
    scratch = np.empty(min(chunk, num_users) * ni, np.int32)
    out = np.empty((num_users, n), np.int32)
    todo = np.arange(num_users)
    extra = 1.25
    while len(todo):
        left = []
        for start in range(0, len(todo), chunk):
            us = todo[start:start + chunk]
            r = len(us)
            free = ni - counts[us]
            m = int(np.ceil(n * extra * ni / max(int(free.min()), 1))) + 8
            m = min(m, 64 * ni)
            cand = rng.integers(0, ni, size=(r, m), dtype=np.int32)
            ok = ~positives.contains(np.repeat(us, m).reshape(r, m), cand)
            flat = (np.arange(r, dtype=np.int64)[:, None] * ni + cand).reshape(-1)
            pos = np.arange(r * m, dtype=np.int32)
            scratch[flat[::-1]] = pos[::-1]  # the last write (= first occurrence) wins
            ok &= (scratch[flat] == pos).reshape(r, m)
            enough = ok.sum(axis=1) >= n
            rows = np.flatnonzero(enough)
            if len(rows):
                okr = ok[rows]
                sel = okr & (np.cumsum(okr, axis=1) <= n)
                out[us[rows]] = cand[rows][sel].reshape(len(rows), n)
            left.append(us[~enough])
        todo = np.concatenate(left)
        extra *= 2
    return out


def check_samplable(num_users: int, positives: PositiveSet) -> None:
    counts = np.bincount((positives.keys // positives.num_items).astype(np.int64),
                         minlength=num_users)
    full = np.flatnonzero(counts >= positives.num_items)
    if len(full):
        raise ValueError(f"user {int(full[0])} interacted with every item: no negative exists")


def prepare_from_raw(users, items, timestamps, *, num_eval_negatives: int = NUM_EVAL_NEGATIVES,
                     min_ratings: int = MIN_RATINGS, data_seed: int = 0) -> Prepared:
    """Steps 1-4 of the module docstring."""
    num_users, num_items, tu, ti, test = leave_one_out(users, items, timestamps,
                                                       min_ratings=min_ratings)
    all_pos = PositiveSet(np.concatenate([tu, np.arange(num_users, dtype=np.int32)]),
                          np.concatenate([ti, test]), num_items)
    rng = np.random.default_rng([data_seed, 0x4E4346])
    negs = sample_distinct_negatives(rng, num_users, num_eval_negatives, all_pos)
    return Prepared(num_users, num_items, tu.astype(np.int32), ti.astype(np.int32),
                    test.astype(np.int32), negs)


# ---------------------------------------------------------------------------------------- loading
def _find_csv(data_dir: str) -> str | None:
    for name in CSV_NAMES:
        p = os.path.join(data_dir, name)
        if os.path.isfile(p):
            return p
    return None


def _read_csv(path: str):
    import pandas as pd  # a dependency of mlperf-logging

    df = pd.read_csv(path, usecols=["userId", "movieId", "timestamp"],
                     dtype={"userId": np.int64, "movieId": np.int64, "timestamp": np.int64})
    return df["userId"].to_numpy(), df["movieId"].to_numpy(), df["timestamp"].to_numpy()


def _read_tfds(data_dir: str | None):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    try:
        ds = tfds.load(TFDS_NAME, split="train", data_dir=data_dir, download=False,
                       shuffle_files=False)
    except (AssertionError, FileNotFoundError, tfds.core.DatasetNotFoundError) as e:  # not prepared
        looked = ", ".join(os.path.join(data_dir, n) for n in CSV_NAMES)
        raise DatasetNotFoundError(
            f"MovieLens-20M not found: looked for {looked} and for TFDS '{TFDS_NAME}' in "
            f"{data_dir}; {_help(data_dir)}") from e
    ds = ds.map(lambda x: (x["user_id"], x["movie_id"], x["timestamp"]),
                num_parallel_calls=tf.data.AUTOTUNE).batch(1 << 16)
    us, its, ts = [], [], []
    for u, i, t in ds.as_numpy_iterator():
        us.append(u), its.append(i), ts.append(t)
    if not us:
        raise DatasetNotFoundError(f"TFDS '{TFDS_NAME}' in {data_dir} is empty; {_help(data_dir)}")
    us, its = np.concatenate(us), np.concatenate(its)
    try:  # MovieLens ids are numeric strings; ints factorize faster than bytes
        us, its = us.astype(np.bytes_).astype(np.int64), its.astype(np.bytes_).astype(np.int64)
    except ValueError:
        pass
    return us, its, np.concatenate(ts)


def load_raw_ratings(data_dir: str):
    """``(users, items, timestamps)`` in source order from ``ratings.csv`` or TFDS."""
    if not data_dir or not os.path.isdir(data_dir):
        raise DatasetNotFoundError(f"MovieLens-20M not found: data dir {data_dir!r} does not exist; "
                                   f"{_help(data_dir or 'DATA_DIR')}")
    csv = _find_csv(data_dir)
    if csv is not None:
        return _read_csv(csv)
    return _read_tfds(data_dir)


def default_cache_dir(data_dir: str) -> str:
    return os.path.join(data_dir, DEFAULT_CACHE_SUBDIR)


def cache_path(cache_dir: str, *, num_eval_negatives: int, min_ratings: int, data_seed: int) -> str:
    tag = hashlib.sha1(f"{CACHE_VERSION}:{num_eval_negatives}:{min_ratings}:{data_seed}".encode()
                       ).hexdigest()[:10]
    return os.path.join(cache_dir, f"ncf_ml20m_{tag}.npz")


def prepare_command(data_dir: str | None, *, cache_dir: str | None = None,
                    num_eval_negatives: int = NUM_EVAL_NEGATIVES, min_ratings: int = MIN_RATINGS,
                    data_seed: int = 0) -> str:
    """The command that writes what ``load_meta`` looks for with these arguments."""
    extra = "".join(f" --config.{k}={v}" for k, v, default in (
        ("cache_dir", cache_dir or None, None), ("num_eval_negatives", num_eval_negatives,
                                         NUM_EVAL_NEGATIVES),
        ("min_ratings", min_ratings, MIN_RATINGS), ("data_seed", data_seed, 0)) if v != default)
    return (f"python scripts/prepare_data.py --benchmark=ncf --data_dir={data_dir or 'DATA_DIR'}"
            + extra)


def prepare(data_dir: str, *, cache_dir: str | None = None,
            num_eval_negatives: int = NUM_EVAL_NEGATIVES, min_ratings: int = MIN_RATINGS,
            data_seed: int = 0, force: bool = False, log=print) -> Prepared:
    """The one-time preparation: the preprocessed dataset, written to ``cache_dir`` (default
    ``data_dir/ncf_cache``) as ``.npz`` plus its ``.json`` sidecar; from the cache when it is
    there (unless ``force``). Raises ``OSError`` when it cannot write them."""
    if not cache_dir:
        if not data_dir:
            raise DatasetNotFoundError(f"MovieLens-20M not found: no data dir given; "
                                       f"{_help('DATA_DIR')}")
        cache_dir = default_cache_dir(data_dir)
    path = cache_path(cache_dir, num_eval_negatives=num_eval_negatives, min_ratings=min_ratings,
                      data_seed=data_seed)
    if not force and os.path.isfile(path):
        try:
            prepared = Prepared.load(path)
        except Exception as e:  # a broken cache is rebuilt, never trusted
            log(f"movielens: ignoring unreadable cache {path}: {e}")
        else:
            meta = _read_json(meta_path(path))
            if meta is None or meta.get("bytes") != os.path.getsize(path) or any(
                    meta.get(k) != v for k, v in prepared.sizes().items()):
                prepared.write_meta(path)  # caches from before the sidecar existed
            return prepared
    users, items, ts = load_raw_ratings(data_dir)
    prepared = prepare_from_raw(users, items, ts, num_eval_negatives=num_eval_negatives,
                                min_ratings=min_ratings, data_seed=data_seed)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        prepared.save(path)
    except OSError as e:
        raise OSError(f"could not write the prepared MovieLens data {path}: {e}") from e
    return prepared


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


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
    meta = _read_json(meta_path(path))
    if (meta is None or meta.get("version") != META_VERSION
            or meta.get("cache_version") != CACHE_VERSION or not os.path.isfile(path)
            or os.path.getsize(path) != meta.get("bytes")):
        raise DatasetNotFoundError(
            f"prepared MovieLens-20M not found ({meta_path(path)} and {os.path.basename(path)} "
            f"missing or out of date): run `{cmd}` once, untimed")
    return PreparedMeta(path, meta["num_users"], meta["num_items"], meta["num_train_positives"],
                        meta["num_eval_negatives"])


# --------------------------------------------------------------------------------------- batching
def _threaded(gen_fn, prefetch: int) -> Iterator:
    """Run a generator in a background thread, ``prefetch`` items ahead; stops when closed."""
    if prefetch <= 0:
        yield from gen_fn()
        return
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker():
        try:
            for item in gen_fn():
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # re-raised in the consumer
            put(e)

    t = threading.Thread(target=worker, daemon=True, name="movielens-batches")
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


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
        self._positives_lock = threading.Lock()
        self._positives: PositiveSet | None = None

    @property
    def p(self) -> Prepared:
        """The arrays (loaded on first use)."""
        return self.source.get()

    @property
    def positives(self) -> PositiveSet:
        """The training positives' membership test (built on first use)."""
        if self._positives is None:
            with self._positives_lock:
                if self._positives is None:
                    p = self.p
                    positives = PositiveSet(p.train_users, p.train_items, p.num_items)
                    check_samplable(p.num_users, positives)
                    self._positives = positives
        return self._positives

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

        return _threaded(gen, self.prefetch)

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
        self._items_lock = threading.Lock()
        self._items: np.ndarray | None = None

    @property
    def p(self) -> Prepared:
        return self.source.get()

    @property
    def items(self) -> np.ndarray:
        """``[num_users, 1 + negatives]``: the held-out item, then its negatives (built on first
        use)."""
        if self._items is None:
            with self._items_lock:
                if self._items is None:
                    p = self.p
                    self._items = np.concatenate([p.test_items[:, None], p.eval_negatives],
                                                 axis=1).astype(np.int32)
        return self._items

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
