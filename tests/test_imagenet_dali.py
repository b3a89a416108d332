"""The DALI ImageNet path (CPU backend) against the tf.data one, on the same TFDS-format TFRecord.

Eval: DALI's crops of the same JPEGs must equal ``imagenet.preprocess_eval``'s up to the resize
filter (DALI has no area filter; its antialiased linear one is used). Measured on these images:
max abs difference 4 grey levels, mean 0.01-0.45 per image. Bounds: max 8, mean 1.0 per image.
A crop shifted by one pixel, with tf.data's own resize, is off by 3.7-8.1 on average (measured),
so a wrong crop offset, resize target or normalisation cannot pass; the test checks that too.
"""
import numpy as np
import pytest

pytest.importorskip("nvidia.dali", reason="nvidia-dali is not installed (the optional 'dali' "
                    "extra: pip install 'mlperf-jax[dali]')")
import tensorflow as tf  # noqa: E402

from mlperf_jax.input_pipelines import imagenet, imagenet_dali, preprocessing  # noqa: E402

# shapes around ImageNet's typical 500x375 / 375x500, both orientations, one barely shrunk
SIZES = [(375, 500), (500, 375), (333, 500), (480, 640), (300, 451), (257, 300), (500, 500),
         (211, 400)]
MAX_DIFF, MEAN_DIFF = 8, 1.0


def _image(rng, h, w):
    # smooth colour fields with some mid-frequency texture: photo-like, not noise
    low = rng.normal(size=(1, h // 16 + 2, w // 16 + 2, 3)).astype(np.float32)
    mid = rng.normal(size=(1, h // 4, w // 4, 3)).astype(np.float32)
    x = (128 + 50 * tf.image.resize(low, [h, w], method="bicubic")[0]
         + 15 * tf.image.resize(mid, [h, w])[0])
    return np.clip(x.numpy(), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """One TFRecord in TFDS's imagenet2012 example format, its DALI index, and the JPEGs."""
    d = tmp_path_factory.mktemp("imagenet")
    path = str(d / "imagenet2012-validation.tfrecord-00000-of-00001")
    rng = np.random.default_rng(0)
    jpegs = []
    with tf.io.TFRecordWriter(path) as w:
        for i, (h, wd) in enumerate(SIZES):
            b = tf.io.encode_jpeg(_image(rng, h, wd), quality=90).numpy()
            jpegs.append(b)
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[10 + i])),
                "file_name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x.JPEG"])),
            })).SerializeToString())
    return [path], imagenet_dali.write_indices([path], str(d / "idx")), jpegs


def test_index_matches_the_records(records):
    files, idx, jpegs = records
    lines = open(idx[0]).read().split("\n")[:-1]
    offsets = [tuple(map(int, ln.split())) for ln in lines]
    assert len(offsets) == len(jpegs) and offsets[0][0] == 0
    assert all(o + s == o2 for (o, s), (o2, _) in zip(offsets, offsets[1:]))
    import os
    assert offsets[-1][0] + offsets[-1][1] == os.path.getsize(files[0])


def test_eval_crops_match_tfdata(records):
    files, idx, jpegs = records
    batches = list(imagenet_dali.eval_batches(files, idx, total=len(SIZES), batch_size=3,
                                              device="cpu", num_threads=1))
    assert len(batches) == 3 and [int(b["mask"].sum()) for b in batches] == [3, 3, 2]
    assert all(b["image"].dtype == np.uint8 and b["image"].shape == (3, 224, 224, 3)
               for b in batches)
    assert (batches[-1]["image"][~batches[-1]["mask"]] == 0).all()
    got = np.concatenate([b["image"] for b in batches])[:len(SIZES)].astype(int)
    labels = np.concatenate([b["label"] for b in batches])[:len(SIZES)]
    np.testing.assert_array_equal(labels, 10 + np.arange(len(SIZES)))
    ref = np.stack([imagenet.preprocess_eval(j).numpy() for j in jpegs]).astype(int)
    diff = np.abs(got - ref)
    assert diff.max() <= MAX_DIFF, diff.max()
    assert diff.mean(axis=(1, 2, 3)).max() <= MEAN_DIFF, diff.mean(axis=(1, 2, 3))
    # the bound discriminates: tf.data's own resize, crop one pixel lower, fails it
    for j, (h, w) in enumerate(SIZES):
        s = preprocessing.resize_target(224)
        nh, nw = (int(s * h / w), s) if h > w else (s, int(s * w / h))
        full = tf.image.resize(preprocessing.decode(jpegs[j]), [nh, nw], method="area")
        top, left = (nh - 224) // 2 + 1, (nw - 224) // 2
        shifted = tf.cast(tf.floor(full[top:top + 224, left:left + 224] + 0.5), tf.int32)
        assert np.abs(shifted.numpy() - ref[j]).mean() > 3 * MEAN_DIFF


def test_eval_two_hosts_split_the_set(records):
    files, idx, _ = records
    hosts = [list(imagenet_dali.eval_batches(files, idx, total=len(SIZES), batch_size=3,
                                             process_index=i, process_count=2, device="cpu",
                                             num_threads=1)) for i in range(2)]
    assert [len(h) for h in hosts] == [2, 2]
    assert [sum(int(b["mask"].sum()) for b in h) for h in hosts] == [4, 4]
    labels = sorted(int(x) for h in hosts for b in h for x in b["label"][b["mask"]])
    assert labels == list(10 + np.arange(len(SIZES)))


def test_train_epoch_is_deterministic_and_epochs_differ(records):
    files, idx, _ = records

    def epoch(e, skip=0):
        return list(imagenet_dali.train_batches(files, idx, batch_size=2, seed=3, epoch=e,
                                                steps=3, skip=skip, image_size=64, device="cpu",
                                                num_threads=1, shuffle_buffer=8))
    a, b, c = epoch(1), epoch(1), epoch(2)
    assert len(a) == 3 and a[0]["image"].shape == (2, 64, 64, 3)
    assert a[0]["image"].dtype == np.uint8 and a[0]["label"].dtype == np.int32
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))
    resumed = epoch(1, skip=1)
    assert len(resumed) == 2
    np.testing.assert_array_equal(resumed[0]["image"], a[1]["image"])


def test_auto_backend_is_tfdata_without_a_gpu():
    import jax
    backend, why = imagenet_dali.choose_backend("auto")
    if jax.default_backend() != "gpu":
        assert backend == "tfdata" and "not a GPU" in why
    assert imagenet_dali.choose_backend("tfdata")[0] == "tfdata"
    with pytest.raises(ValueError, match="tfdata, dali or auto"):
        imagenet_dali.choose_backend("nvjpeg")
