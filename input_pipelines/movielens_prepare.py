"""MovieLens-20M in the MLPerf NCF form (v0.5 reference ``recommendation/pytorch/convert.py``):
the one-time, untimed preparation.

From the raw ratings (TFDS ``movielens/20m-ratings`` or the original ``ratings.csv``):

1. every rating is an implicit positive interaction; users with fewer than 20 ratings are dropped
   (none in ML-20M); repeated (user, item) pairs keep their latest interaction;
2. users and items are re-indexed ``0..n-1`` in order of first appearance in the source;
3. leave-one-out: each user's latest interaction (by timestamp, ties broken by source order) is
   held out for evaluation, the rest are training positives;
4. each held-out positive gets ``num_eval_negatives`` (999) sampled items the user never interacted
   with, fixed by ``data_seed``.

``prepare`` (``python scripts/prepare_data.py --benchmark=ncf --data_dir=DIR``) writes one ``.npz``
of arrays in ``DIR/ncf_cache`` (or ``cache_dir``) and, next to it, a small ``.json`` of sizes, the
only file ``movielens.load_meta`` reads before the clock. Training negatives (step 5) are drawn
every epoch, by ``movielens``.

Differences from the reference, on purpose: the 999 evaluation negatives are distinct and never
equal to the held-out item (the reference samples with replacement from a set that still contains
the held-out item, so some of its users effectively have fewer than 999 negatives).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from mlperf_jax.input_pipelines.source import DatasetNotFoundError, read_json

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
        """The arrays (already in memory); ``movielens.PreparedMeta.get`` loads them."""
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
        """The sidecar ``movielens.load_meta`` reads instead of the arrays at ``path``."""
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
            meta = read_json(meta_path(path))
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

