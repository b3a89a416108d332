"""MovieLens pipeline for NCF: leave-one-out, samplers, batching, TFDS under mock data, the
one-time preparation and a data source that reads no data before the clock."""
from __future__ import annotations

import os

import numpy as np
import pytest

from mlperf_jax.input_pipelines.source import DatasetNotFoundError
from mlperf_jax.input_pipelines import movielens as ml
from mlperf_jax.input_pipelines import synthetic_movielens as sm

# A hand-made ratings table in source order: (user, item, timestamp).
# user 7: items 100@5, 200@1, 300@9 -> held out 300, train {100, 200}
# user 3: items 200@4, 400@4, 500@2 -> tie at 4: the later row in the source (400) is "latest"
# user 9: items 100@1, 100@8, 600@3 -> repeated pair keeps its latest (8): held out 100, train {600}
# user 5: one rating only -> dropped with min_ratings=2
TABLE = [
    (7, 100, 5), (3, 200, 4), (7, 200, 1), (9, 100, 1), (3, 400, 4), (5, 700, 1),
    (7, 300, 9), (3, 500, 2), (9, 100, 8), (9, 600, 3),
]


def _table():
    u, i, t = (np.array(x) for x in zip(*TABLE))
    return u, i, t


def test_leave_one_out_hand_table():
    n_users, n_items, tu, ti, test = ml.leave_one_out(*_table(), min_ratings=2)
    # users re-indexed by first appearance (5 dropped): 7->0, 3->1, 9->2
    # items by first appearance among kept rows: 100->0, 200->1, 400->2, 300->3, 500->4, 600->5
    assert (n_users, n_items) == (3, 6)
    assert test.tolist() == [3, 2, 0]
    train = sorted(zip(tu.tolist(), ti.tolist()))
    assert train == [(0, 0), (0, 1), (1, 1), (1, 4), (2, 5)]
    assert list(zip(tu.tolist(), ti.tolist())) == train  # sorted by (user, item)
    # no held-out item is also a training positive of its user
    assert not any((u, test[u]) in train for u in range(n_users))


def test_leave_one_out_min_ratings_drops_everyone():
    with pytest.raises(ValueError, match="no user"):
        ml.leave_one_out(*_table(), min_ratings=10)


def _random_positives(rng, n_users=50, n_items=300, max_pos=200):
    users, items = [], []
    for u in range(n_users):
        k = int(rng.integers(1, max_pos))
        items.append(rng.choice(n_items, size=k, replace=False))
        users.append(np.full(k, u))
    return np.concatenate(users), np.concatenate(items), n_users, n_items


def test_train_negative_sampler_never_positive():
    rng = np.random.default_rng(0)
    u, i, n_users, n_items = _random_positives(rng, max_pos=290)  # some users nearly full
    pos = ml.PositiveSet(u, i, n_items)
    users = np.repeat(np.arange(n_users), 400)
    neg = ml.sample_negatives(np.random.default_rng(1), users, pos)
    assert neg.shape == users.shape and neg.min() >= 0 and neg.max() < n_items
    assert not pos.contains(users, neg).any()
    pos_sets = [set(i[u == k].tolist()) for k in range(n_users)]
    assert all(int(x) not in pos_sets[int(k)] for k, x in zip(users, neg))
    # uniform over the allowed items: a user with few positives sees most of the others
    k = int(np.argmin([len(s) for s in pos_sets]))
    seen = set(ml.sample_negatives(np.random.default_rng(2), np.full(5000, k), pos).tolist())
    assert len(seen) >= 0.95 * (n_items - len(pos_sets[k]))


def test_eval_negatives_distinct_and_not_positive():
    rng = np.random.default_rng(0)
    u, i, n_users, n_items = _random_positives(rng, n_items=400, max_pos=200)
    pos = ml.PositiveSet(u, i, n_items)
    negs = ml.sample_distinct_negatives(np.random.default_rng(3), n_users, 199, pos, chunk=16)
    assert negs.shape == (n_users, 199)
    assert not pos.contains(np.repeat(np.arange(n_users), 199), negs.reshape(-1)).any()
    assert all(len(set(row.tolist())) == 199 for row in negs)
    again = ml.sample_distinct_negatives(np.random.default_rng(3), n_users, 199, pos, chunk=16)
    np.testing.assert_array_equal(negs, again)  # fixed by the seed
    with pytest.raises(ValueError, match="evaluation negatives"):
        ml.sample_distinct_negatives(np.random.default_rng(3), n_users, 399, pos)


@pytest.fixture(scope="module")
def small():
    prepared, _ = sm.make(120, 400, mean_interactions=12, min_interactions=4, num_eval_negatives=99,
                          data_seed=0)
    return prepared


def test_prepared_eval_negatives_exclude_all_user_items(small):
    p = small
    assert p.eval_negatives.shape == (p.num_users, 99)
    by_user = {}
    for u, i in zip(p.train_users.tolist(), p.train_items.tolist()):
        by_user.setdefault(u, set()).add(i)
    for u in range(p.num_users):
        row = set(p.eval_negatives[u].tolist())
        assert len(row) == 99
        assert p.test_items[u] not in row and not (row & by_user.get(u, set()))


def test_train_batches_ratio_determinism_and_skip(small):
    k, B = 4, 64
    tb = ml.TrainBatches(small, B, num_negatives=k, seed=5, prefetch=2)
    batches = list(tb.epoch(1))
    assert len(batches) == tb.steps_per_epoch == -(-small.num_train_positives * (1 + k) // B)
    cat = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    w = cat["weight"] > 0
    assert w.sum() == small.num_train_positives * (1 + k)  # every sample exactly once
    labels = cat["label"][w]
    assert labels.sum() * k == (labels == 0).sum()  # the requested ratio, exactly
    # positives are exactly the training pairs; negatives are never a positive of their user
    pos_pairs = sorted(zip(cat["user"][w][labels == 1].tolist(), cat["item"][w][labels == 1].tolist()))
    assert pos_pairs == sorted(zip(small.train_users.tolist(), small.train_items.tolist()))
    assert not tb.positives.contains(cat["user"][w][labels == 0], cat["item"][w][labels == 0]).any()
    # the held-out items are not used as positives
    assert not set(pos_pairs) & set(enumerate(small.test_items.tolist()))
    # deterministic per (seed, epoch); fresh negatives in another epoch; skip = resume
    again = list(tb.epoch(1))
    assert all(np.array_equal(a["item"], b["item"]) for a, b in zip(batches, again))
    other = list(tb.epoch(2))
    assert not all(np.array_equal(a["item"], b["item"]) for a, b in zip(batches, other))
    skipped = list(tb.epoch(1, skip_steps=3))
    assert len(skipped) == len(batches) - 3
    assert all(np.array_equal(a["item"], b["item"]) and np.array_equal(a["user"], b["user"])
               for a, b in zip(batches[3:], skipped))
    # an early close of the (threaded) iterator, or stopping right after the last batch without
    # exhausting it (as the driver does at an epoch's end), leaves no producer thread behind
    it = tb.epoch(3)
    next(it)
    it.close()
    it = tb.epoch(4)
    for _ in range(tb.steps_per_epoch):
        next(it)
    it.close()
    import threading
    import time
    deadline = time.time() + 5
    while time.time() < deadline and any(t.name == "movielens-batches" for t in threading.enumerate()):
        time.sleep(0.05)
    assert not any(t.name == "movielens-batches" for t in threading.enumerate())


def test_train_batches_host_slices(small):
    full = ml.TrainBatches(small, 64, num_negatives=4, seed=5, prefetch=0)
    hosts = [ml.TrainBatches(small, 64, num_negatives=4, seed=5, process_index=h, process_count=2,
                             prefetch=0) for h in range(2)]
    b0, h0, h1 = next(iter(full.epoch(1))), next(iter(hosts[0].epoch(1))), next(iter(hosts[1].epoch(1)))
    assert h0["user"].shape == (32,)
    # the same samples (positives identical; negatives drawn per host)
    np.testing.assert_array_equal(np.concatenate([h0["user"], h1["user"]]), b0["user"])
    np.testing.assert_array_equal(np.concatenate([h0["label"], h1["label"]]), b0["label"])


def test_eval_batches_padding_and_hosts(small):
    ev = ml.EvalBatches(small, 50, process_index=0, process_count=1)
    batches = list(ev)
    assert len(batches) == 3 and batches[0]["items"].shape == (50, 100)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == small.num_users and mask[small.num_users:].sum() == 0
    users = np.concatenate([b["user"] for b in batches])[mask > 0]
    np.testing.assert_array_equal(users, np.arange(small.num_users))
    items = np.concatenate([b["items"] for b in batches])[mask > 0]
    np.testing.assert_array_equal(items[:, 0], small.test_items)
    hs = [list(ml.EvalBatches(small, 50, process_index=h, process_count=2)) for h in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([hs[0][1]["user"], hs[1][1]["user"]]), batches[1]["user"])


def test_synthetic_is_learnable():
    # the tiny config's dataset: chance HR@10 is 1%
    p, aff = sm.make(1000, 2000, mean_interactions=30, sharpness=3.0, data_seed=0)
    oracle = sm.oracle_hit_rate(p, aff)
    pop = np.bincount(p.train_items, minlength=p.num_items).astype(np.float32)
    popularity = sm.oracle_hit_rate(p, np.broadcast_to(pop, (p.num_users, p.num_items)))
    assert oracle > 0.5 and 0.03 < popularity < 0.15  # structure beats popularity by far


# ------------------------------------------------------------------ real-data path (TFDS / csv)
def _mock_ratings_fn(builder, split=None, **kwargs):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, 31), 25)  # 30 users x 25 ratings (>= 20: all kept)
    items = np.concatenate([rng.choice(np.arange(1, 1200), 25, replace=False) for _ in range(30)])
    ts = rng.integers(0, 10 ** 9, len(users))
    order = rng.permutation(len(users))
    return tf.data.Dataset.from_tensor_slices({
        "user_id": tf.constant([str(x).encode() for x in users[order]]),
        "movie_id": tf.constant([str(x).encode() for x in items[order]]),
        "timestamp": tf.constant(ts[order], tf.int64),
        "user_rating": tf.constant(np.full(len(users), 4.0, np.float32)),
    })


def test_tfds_mock_pipeline_and_cache(tmp_path):
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path)
    with tfds.testing.mock_data(as_dataset_fn=_mock_ratings_fn):
        p = ml.prepare(data_dir, cache_dir=os.path.join(data_dir, "cache"), num_eval_negatives=99)
    assert p.num_users == 30 and p.num_train_positives == 30 * 24
    cached = [f for f in os.listdir(os.path.join(data_dir, "cache")) if f.endswith(".npz")]
    assert len(cached) == 1
    sidecar = os.path.join(data_dir, "cache", cached[0][: -len(".npz")] + ".json")
    assert os.path.isfile(sidecar)
    os.remove(sidecar)  # a cache from before the sidecar existed gets one from the next prepare
    # the second run reads the cache: no TFDS (not mocked now, so it would fail) is touched
    p2 = ml.prepare(data_dir, cache_dir=os.path.join(data_dir, "cache"), num_eval_negatives=99)
    for f in ("train_users", "train_items", "test_items", "eval_negatives"):
        np.testing.assert_array_equal(getattr(p, f), getattr(p2, f))
    assert os.path.isfile(sidecar)
    # another eval-negative count is another cache entry, so it needs the data again
    with pytest.raises(DatasetNotFoundError):
        ml.prepare(data_dir, cache_dir=os.path.join(data_dir, "cache"), num_eval_negatives=98)


def test_tfds_mock_random_examples(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=40):
        u, i, t = ml.load_raw_ratings(str(tmp_path))
    assert len(u) == len(i) == len(t) == 40


def test_csv_source(tmp_path):
    d = tmp_path / "ml-20m"
    d.mkdir()
    lines = ["userId,movieId,rating,timestamp"] + [f"{u},{i},4.0,{t}" for u, i, t in TABLE]
    (d / "ratings.csv").write_text("\n".join(lines) + "\n")
    u, i, t = ml.load_raw_ratings(str(tmp_path))
    np.testing.assert_array_equal(u, [r[0] for r in TABLE])
    n_users, n_items, tu, ti, test = ml.leave_one_out(u, i, t, min_ratings=2)
    assert test.tolist() == [3, 2, 0]


def test_missing_dataset_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        ml.prepare(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "ratings.csv" in msg and "download_and_prepare" in msg
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        ml.prepare(str(tmp_path / "nope"))


# ------------------------------------------------------------ prepared once, read inside the clock
def _write_ratings_csv(root, n_users=30, per_user=25, n_items=400):
    rng = np.random.default_rng(0)
    d = root / "ml-20m"
    d.mkdir()
    rows = ["userId,movieId,rating,timestamp"]
    for u in range(1, n_users + 1):
        for i in rng.choice(np.arange(1, n_items), per_user, replace=False):
            rows.append(f"{u},{i},3.5,{rng.integers(10 ** 9)}")
    (d / "ratings.csv").write_text("\n".join(rows) + "\n")


def test_data_source_reads_only_the_sidecar(tmp_path, monkeypatch):
    import threading

    import tensorflow_datasets as tfds

    _write_ratings_csv(tmp_path)
    p = ml.prepare(str(tmp_path), num_eval_negatives=99)  # default cache: DATA_DIR/ncf_cache
    files = os.listdir(tmp_path / "ncf_cache")
    assert sorted(f.rsplit(".", 1)[1] for f in files) == ["json", "npz"]

    def forbidden(*args, **kwargs):
        raise AssertionError("data read while constructing the data source")

    with monkeypatch.context() as m:
        for mod, name in ((np, "load"), (ml.Prepared, "load"), (ml, "load_raw_ratings"),
                          (tfds, "load")):
            m.setattr(mod, name, forbidden)
        meta = ml.load_meta(str(tmp_path), num_eval_negatives=99)
        src = ml.data_source(meta, global_batch_size=64, eval_batch_size=16, num_negatives=4,
                             seed=1)
    assert (meta.num_users, meta.num_items, meta.num_train_positives) == (
        30, p.num_items, 30 * 24)
    assert src.num_train_samples == 30 * 24 * 5 and src.num_eval_samples == 30
    assert src.steps_per_epoch == -(-30 * 24 * 5 // 64) and not src.synthetic
    assert {k: s.shape for k, s in src.train_spec.items()} == {
        "user": (64,), "item": (64,), "label": (64,), "weight": (64,)}
    assert {k: s.shape for k, s in src.eval_spec.items()} == {
        "user": (16,), "items": (16, 100), "mask": (16,)}

    # inside the clock: the arrays are loaded once, however many threads ask at the same time
    loads = []
    real_load = ml.Prepared.load
    monkeypatch.setattr(ml.Prepared, "load", classmethod(
        lambda cls, path: loads.append(path) or real_load.__func__(cls, path)))
    threads = [threading.Thread(target=meta.get) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1
    evals = list(src.eval_batches())
    assert sum(e["mask"].sum() for e in evals) == 30
    np.testing.assert_array_equal(np.concatenate([e["items"] for e in evals])[:30, 0], p.test_items)
    batches = list(src.train_epoch(1, 0))
    assert len(batches) == src.steps_per_epoch
    assert sum(b["label"].sum() for b in batches) == 30 * 24
    assert {k: v.shape for k, v in batches[0].items()} == {k: s.shape
                                                           for k, s in src.train_spec.items()}
    assert len(loads) == 1


def test_synthetic_goes_through_the_same_builder(small):
    src = ml.data_source(small, global_batch_size=64, eval_batch_size=50, num_negatives=4,
                         seed=0, synthetic=True)
    assert src.synthetic and src.description.startswith("synthetic")
    assert src.num_eval_samples == small.num_users
    assert src.eval_spec["items"].shape == (50, 100)
    b = next(iter(src.train_epoch(1, 0)))
    assert b["user"].shape == (64,)


def test_missing_preparation_names_the_command(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        ml.load_meta(str(tmp_path), num_eval_negatives=99)
    msg = str(e.value)
    assert "\n" not in msg and "ncf_cache" in msg
    assert (f"`python scripts/prepare_data.py --benchmark=ncf --data_dir={tmp_path} "
            "--config.num_eval_negatives=99`") in msg
    with pytest.raises(DatasetNotFoundError, match="--data_dir"):
        ml.load_meta(None)
