"""The ImageNet pipeline under tfds.testing.mock_data: shapes, dtypes, ranges, per-host split."""
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mlperf_jax.input_pipelines.source import DatasetNotFoundError
from mlperf_jax.input_pipelines import imagenet


@pytest.fixture
def mock_imagenet():
    with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def _take(ds, n):
    return [b for _, b in zip(range(n), ds.as_numpy_iterator())]


def test_train_batches_shapes_dtypes_ranges(mock_imagenet):
    ds = imagenet.train_dataset(None, batch_size=4, seed=0, epoch=1, image_size=64)
    batches = _take(ds, 3)
    assert len(batches) == 3
    for b in batches:
        assert b["image"].shape == (4, 64, 64, 3) and b["image"].dtype == np.uint8
        assert b["label"].shape == (4,) and b["label"].dtype == np.int32
        assert b["label"].min() >= 0 and b["label"].max() < 1000
        assert b["image"].max() > b["image"].min()  # real pixels, not padding


def test_train_epoch_is_deterministic_and_epochs_differ(mock_imagenet):
    a = _take(imagenet.train_dataset(None, batch_size=4, seed=7, epoch=1, image_size=32), 2)
    b = _take(imagenet.train_dataset(None, batch_size=4, seed=7, epoch=1, image_size=32), 2)
    c = _take(imagenet.train_dataset(None, batch_size=4, seed=7, epoch=2, image_size=32), 2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_eval_center_crop_padding_and_per_host_split(mock_imagenet):
    # mock_data yields 24 examples for any (sub-)split
    whole = list(imagenet.eval_dataset(None, batch_size=5, image_size=48, num_examples=24)
                 .as_numpy_iterator())
    assert len(whole) == 5 and sum(int(b["mask"].sum()) for b in whole) == 24
    assert all(b["image"].shape == (5, 48, 48, 3) and b["image"].dtype == np.uint8 for b in whole)
    assert (whole[-1]["image"][~whole[-1]["mask"]] == 0).all()
    assert whole[0]["image"].max() > 0
    # two hosts of a 48-example set: each gets 24 rows in the same number of batches
    hosts = [list(imagenet.eval_dataset(None, batch_size=5, image_size=48, process_index=i,
                                        process_count=2, num_examples=48).as_numpy_iterator())
             for i in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == 5
    assert [sum(int(b["mask"].sum()) for b in h) for h in hosts] == [24, 24]


def test_host_splits_are_disjoint_and_cover_the_split():
    import tensorflow_datasets as tfds
    for n in (1, 2, 3, 8):
        parts = [imagenet.host_split("validation", i, n, drop_remainder=False) for i in range(n)]
        assert len(set(parts)) == n
        # resolve the sub-split strings against a 50000-example split: contiguous, disjoint, whole
        info = {"validation": tfds.core.SplitInfo(name="validation", shard_lengths=[50000],
                                                  num_bytes=0, filename_template=tfds.core.ShardedFileTemplate(
                    data_dir="/x", dataset_name="imagenet2012", split="validation",
                    filetype_suffix="tfrecord"))}
        splits = tfds.core.SplitDict(list(info.values()))
        counts = [splits[p].num_examples for p in parts]
        assert sum(counts) == 50000 and max(counts) - min(counts) <= 1


def test_missing_data_raises_with_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        imagenet.check_prepared(str(tmp_path))
    assert str(tmp_path) in str(e.value) and "download_and_prepare" in str(e.value)
