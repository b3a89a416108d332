"""The WMT input pipeline under ``tfds.testing.mock_data``: one-time preparation (vocabulary,
tokenised eval set, counts), a data source that reads no data before the clock, tokenisation,
length filter, padding and packing, eval batches with mask/index, missing-data errors."""
import numpy as np
import pytest
import tensorflow_datasets as tfds  # a runtime dependency of the project: no skipping

from mlperf_jax.configs import transformer as tb
from mlperf_jax.input_pipelines import wmt
from mlperf_jax.input_pipelines.source import DatasetNotFoundError


def _config(pack: bool):
    c = tb.get_config("reference")
    c.vocab_size = 64
    c.max_len = 48 if pack else 24
    c.max_eval_len = 32
    c.max_decode_len = 32
    c.global_batch_size = 4
    c.eval_batch_size = 8
    c.pack = pack
    c.shuffle_buffer = 64
    return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("tfds"))
    with tfds.testing.mock_data(num_examples=60):
        wmt.train_vocab(d, "wmt17_translate/de-en", 64, max_sentences=60, hard_vocab_limit=False)
        for pack in (False, True):  # the vocabulary exists: prepare keeps it
            wmt.prepare(_config(pack), d)
    return d


def test_vocab_is_cached_with_reserved_ids(data_dir):
    sp = wmt.load_vocab(wmt.vocab_path(data_dir, "wmt17_translate/de-en", 64))
    assert sp.pad_id() == 0 and sp.eos_id() == 1 and sp.unk_id() == 2 and sp.bos_id() == -1
    assert sp.get_piece_size() <= 64


@pytest.mark.parametrize("pack", [False, True])
def test_train_and_eval_batches(data_dir, pack):
    c = _config(pack)
    ds = wmt.data_source(c, data_dir, seed=3, process_index=0, process_count=1)  # reads no data
    assert ds.steps_per_epoch > 0
    with tfds.testing.mock_data(num_examples=60):
        batches = list(ds.train_epoch(1, 0))
        again = list(ds.train_epoch(1, 0))
        other = list(ds.train_epoch(2, 0))
        skipped = list(ds.train_epoch(1, 1))
    evals = list(ds.eval_batches())  # from the prepared eval set: no TFDS
    context = ds.eval_context()
    assert len(batches) == ds.steps_per_epoch
    assert set(batches[0]) == set(ds.train_spec)
    for b in batches:
        for k, v in b.items():
            assert v.shape == (4, c.max_len) and v.dtype == np.int32, k
        # every real row ends with EOS; nothing longer than max_len survives (length filter)
        assert np.all(b["targets"][:, 0] > 0)
    # deterministic per (seed, epoch), different across epochs, resumable by skipping
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["inputs"], b["inputs"])
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(batches, other))
    np.testing.assert_array_equal(skipped[0]["inputs"], batches[1]["inputs"])
    if pack:
        b = batches[0]
        assert b["targets_segmentation"].max() >= 2  # short mock sentences do get packed
        # positions restart at 0 in each segment; padding has segment 0
        seg, pos = b["inputs_segmentation"], b["inputs_position"]
        starts = (seg > 0) & (np.pad(seg, ((0, 0), (1, 0)))[:, :-1] != seg)
        assert np.all(pos[starts] == 0)
        assert np.all((b["inputs"] == 0) == (seg == 0))
        # each segment ends with EOS
        ends = (seg > 0) & (np.pad(seg, ((0, 0), (0, 1)))[:, 1:] != seg)
        assert np.all(b["inputs"][ends] == wmt.EOS_ID)
    # eval: all 60 examples exactly once, padded rows masked, raw references kept
    assert ds.num_eval_samples == 60 and len(context["references"]) == 60
    idx = np.concatenate([e["index"][e["mask"] == 1] for e in evals])
    np.testing.assert_array_equal(np.sort(idx), np.arange(60))
    assert evals[-1]["mask"].sum() == 60 - 8 * (len(evals) - 1)
    assert all(e["inputs"].shape == (8, 32) for e in evals)
    assert {k: v.shape for k, v in evals[0].items()} == {k: s.shape
                                                         for k, s in ds.eval_spec.items()}
    # the detokeniser inverts the tokenisation of the references (up to sentencepiece
    # normalisation of runs of spaces)
    row = evals[0]["targets"][0]
    assert (context["detokenize"](row).split()
            == context["references"][int(evals[0]["index"][0])].split())


def test_pack_rows_keeps_pairs_together():
    exs = [{"inputs": np.array([5, 6, 1]), "targets": np.array([7, 1])},
           {"inputs": np.array([8, 1]), "targets": np.array([9, 9, 9, 1])},
           {"inputs": np.array([3, 3, 3, 3, 1]), "targets": np.array([4, 1])}]
    rows = list(wmt.pack_rows(iter(exs), 6))
    assert len(rows) == 2
    np.testing.assert_array_equal(rows[0]["inputs"], [5, 6, 1, 8, 1, 0])
    np.testing.assert_array_equal(rows[0]["targets"], [7, 1, 9, 9, 9, 1])
    np.testing.assert_array_equal(rows[0]["targets_segmentation"], [1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(rows[0]["targets_position"], [0, 1, 0, 1, 2, 3])
    np.testing.assert_array_equal(rows[1]["inputs_segmentation"], [1, 1, 1, 1, 1, 0])


def test_data_source_reads_no_data_before_the_clock(data_dir, monkeypatch):
    """Constructing the source touches neither TFDS, the eval arrays nor the vocabulary; the
    first eval and epoch do."""
    import sentencepiece as spm

    def forbidden(*args, **kwargs):
        raise AssertionError("data read while constructing the data source")

    c = _config(True)
    with monkeypatch.context() as m:
        m.setattr(tfds, "load", forbidden)
        m.setattr(tfds, "builder", forbidden)
        m.setattr(np, "load", forbidden)
        m.setattr(wmt, "load_vocab", forbidden)
        m.setattr(spm, "SentencePieceProcessor", forbidden)
        ds = wmt.data_source(c, data_dir, seed=0, process_index=0, process_count=1)
    assert {k: (s.shape, s.dtype) for k, s in ds.train_spec.items()} == {
        k: ((4, 48), np.int32) for k in ("inputs", "targets", "inputs_segmentation",
                                         "targets_segmentation", "inputs_position",
                                         "targets_position")}
    assert {k: s.shape for k, s in ds.eval_spec.items()} == {
        "inputs": (8, 32), "targets": (8, 32), "mask": (8,), "index": (8,)}
    assert ds.num_eval_samples == 60 and ds.num_train_samples == 4 * ds.steps_per_epoch > 0
    assert callable(ds.eval_context) and not ds.synthetic
    # inside the clock: now the data is read
    assert len(ds.eval_context()["references"]) == 60
    with tfds.testing.mock_data(num_examples=60):
        assert len(list(ds.train_epoch(1, 0))) == ds.steps_per_epoch


def test_prepare_is_idempotent_and_multi_host(data_dir, monkeypatch):
    c = _config(False)
    with monkeypatch.context() as m:  # everything is there: no data is read again
        m.setattr(tfds, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("read")))
        assert "already prepared" in wmt.prepare(c, data_dir)
    with pytest.raises(DatasetNotFoundError, match="--process_count=2"):
        wmt.data_source(c, data_dir, seed=0, process_index=0, process_count=2)
    with tfds.testing.mock_data(num_examples=60):
        line = wmt.prepare(c, data_dir, process_count=2)
    assert "2 host(s)" in line
    hosts = [wmt.data_source(c, data_dir, seed=0, process_index=h, process_count=2)
             for h in range(2)]
    # every host runs the same number of steps; specs are global shapes
    assert hosts[0].steps_per_epoch == hosts[1].steps_per_epoch > 0
    assert hosts[0].train_spec["inputs"].shape == (4, 24)
    assert hosts[0].eval_spec["mask"].shape == (8,)
    with tfds.testing.mock_data(num_examples=60):
        b = next(iter(hosts[1].train_epoch(1, 0)))
    assert b["inputs"].shape == (2, 24)
    e0, e1 = (next(iter(h.eval_batches())) for h in hosts)
    np.testing.assert_array_equal(np.concatenate([e0["index"], e1["index"]]), np.arange(8))


def test_missing_data_says_where_and_how(tmp_path):
    c = _config(False)
    with pytest.raises(DatasetNotFoundError) as e:
        wmt.data_source(c, str(tmp_path), seed=0, process_index=0, process_count=1)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg
    # the exact command, with the config keys that change what is prepared
    assert (f"`python scripts/prepare_data.py --benchmark=transformer --data_dir={tmp_path} "
            "--config.vocab_size=64 --config.max_len=24 --config.max_eval_len=32`") in msg
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path)):
        wmt.train_vocab(str(tmp_path), "wmt17_translate/de-en", 64)
    with pytest.raises(DatasetNotFoundError, match="data_dir"):
        wmt.data_source(c, None, seed=0, process_index=0, process_count=1)


def test_prefetch_thread_ends_when_the_consumer_stops():
    import threading
    from mlperf_jax.input_pipelines.source import prefetch  # wmt's and movielens's batch thread
    before = threading.active_count()
    it = prefetch(iter(range(1000)), size=2)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
    import time
    for _ in range(50):
        if threading.active_count() <= before:
            break
        time.sleep(0.05)
    assert threading.active_count() <= before
