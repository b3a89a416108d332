"""The COCO pipeline: TFDS ``coco/2017`` under tfds.testing.mock_data, the raw layout on files made
here, the SSD random crop on hand-checkable cases, and the detection preprocessing conventions.

TFDS's random mock examples are not valid COCO (a Sequence's fields get different lengths, boxes
have ymin > ymax), so the mock serves COCO-like examples made below, encoded and decoded through
the real ``coco/2017`` features (JPEG images, BBoxFeature, ClassLabel).
"""
import functools
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from mlperf_jax.input_pipelines import coco, preprocessing as pp
from mlperf_jax.input_pipelines.source import DatasetNotFoundError

N_MOCK = 12


def _mock_examples(n: int = N_MOCK):
    """COCO-like examples: image i has i % 5 boxes (0 for i = 0, 5, 10: dropped in training),
    except image 7 with 11 boxes (more than the max_boxes=8 used below)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 40 + 3 * i, 64 - 2 * i
        k = 11 if i == 7 else i % 5
        y0, x0 = rng.uniform(0, 0.6, k), rng.uniform(0, 0.6, k)
        bh, bw = rng.uniform(0.1, 0.4, k), rng.uniform(0.1, 0.4, k)
        bbox = np.stack([y0, x0, y0 + bh, x0 + bw], -1).astype(np.float32).reshape(-1, 4)
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * 4 + 30 * c) % 256 for c in range(3)], -1) + rng.integers(0, 20, (h, w, 3))
        yield {"image": img.astype(np.uint8), "image/filename": f"{i:012d}.jpg",
               "image/id": 1000 + i,
               "objects": {"id": np.arange(k, dtype=np.int64) + 100 * i, "area": np.full(k, 50, np.int64),
                           "bbox": bbox, "label": (np.arange(k) * 17 + i) % 80,
                           "is_crowd": np.arange(k) == 1}}


def _mock_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    features = self.info.features
    encoded = [features.encode_example(e) for e in _mock_examples()]
    spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype),
                                 features.get_serialized_info())
    ds = tf.data.Dataset.from_generator(lambda: iter(encoded), output_signature=spec)
    return ds.map(functools.partial(features.decode_example, decoders=decoders))


@pytest.fixture
def mock_coco():
    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE,
                                as_dataset_fn=_mock_as_dataset):
        yield


def _take(ds, n=None):
    it = ds.as_numpy_iterator()
    return list(it) if n is None else [b for _, b in zip(range(n), it)]


# --------------------------------------------------------------------------- TFDS under mock_data
def test_train_batches_shapes_dtypes_padding(mock_coco):
    batches = _take(coco.train_dataset(None, batch_size=3, seed=0, epoch=1, image_size=48,
                                       max_boxes=8, source="tfds"))
    assert len(batches) == 3  # 9 images with boxes (of 12), batches of 3
    for b in batches:
        assert b["image"].shape == (3, 48, 48, 3) and b["image"].dtype == np.uint8
        assert b["boxes"].shape == (3, 8, 4) and b["boxes"].dtype == np.float32
        assert b["labels"].shape == (3, 8) and b["labels"].dtype == np.int32
        assert b["num_boxes"].shape == (3,) and b["num_boxes"].dtype == np.int32
        for i, n in enumerate(b["num_boxes"]):
            assert 1 <= n <= 8  # a crop keeps at least one box; image 7's 11 boxes are cut to 8
            assert (b["labels"][i, :n] >= 1).all() and (b["labels"][i, :n] <= 80).all()
            assert (b["labels"][i, n:] == 0).all() and (b["boxes"][i, n:] == 0).all()
            bx = b["boxes"][i, :n]
            assert (bx >= 0).all() and (bx <= 1).all()
            assert (bx[:, 2] >= bx[:, 0]).all() and (bx[:, 3] >= bx[:, 1]).all()
        assert b["image"].max() > b["image"].min()


def test_train_epoch_is_deterministic_and_epochs_differ(mock_coco):
    kw = dict(batch_size=3, seed=7, image_size=32, max_boxes=8, source="tfds")
    a = _take(coco.train_dataset(None, epoch=1, **kw))
    b = _take(coco.train_dataset(None, epoch=1, **kw))
    c = _take(coco.train_dataset(None, epoch=2, **kw))
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))


def test_train_steps_wrap_around(mock_coco):
    batches = _take(coco.train_dataset(None, batch_size=4, seed=0, epoch=1, image_size=32,
                                       max_boxes=8, source="tfds", steps=5))
    assert len(batches) == 5  # 20 examples from 9 images: the epoch repeats, never runs short


def test_eval_padding_mask_ids_and_sizes(mock_coco):
    ex = list(_mock_examples())
    nonempty = [e for e in ex if len(e["objects"]["label"])]
    batches = _take(coco.eval_dataset(None, batch_size=5, image_size=40, source="tfds",
                                      num_examples=N_MOCK))
    assert len(batches) == 3  # 12 rows in the unfiltered split -> 3 batches of 5
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == len(nonempty) == 9 and not mask[9:].any()
    for b in batches:
        assert b["image"].shape == (5, 40, 40, 3) and b["image"].dtype == np.uint8
        assert b["image_id"].dtype == np.int32 and b["orig_size"].dtype == np.int32
        assert b["mask"].dtype == bool
        assert (b["image"][~b["mask"]] == 0).all()
    ids = np.concatenate([b["image_id"] for b in batches])[mask]
    sizes = np.concatenate([b["orig_size"] for b in batches])[mask]
    assert ids.tolist() == [e["image/id"] for e in nonempty]
    assert sizes.tolist() == [list(e["image"].shape[:2]) for e in nonempty]
    # skip_empty=False keeps the images without boxes
    allrows = _take(coco.eval_dataset(None, batch_size=5, image_size=40, source="tfds",
                                      num_examples=N_MOCK, skip_empty=False))
    assert sum(int(b["mask"].sum()) for b in allrows) == N_MOCK


def test_ground_truth_from_tfds(mock_coco):
    gt = coco.ground_truth(None, source="tfds")
    ex = list(_mock_examples())
    assert gt.num_images == N_MOCK
    assert len(gt.coco.getAnnIds()) == sum(len(e["objects"]["label"]) for e in ex)
    assert gt.label_to_category[1] == 1 and gt.label_to_category[80] == 90
    assert len(gt.coco.getCatIds()) == 80
    e = ex[3]
    h, w = e["image"].shape[:2]
    anns = gt.coco.loadAnns(gt.coco.getAnnIds(imgIds=[1003]))
    ymin, xmin, ymax, xmax = e["objects"]["bbox"][0]
    np.testing.assert_allclose(anns[0]["bbox"], [xmin * w, ymin * h, (xmax - xmin) * w,
                                                 (ymax - ymin) * h], rtol=1e-5, atol=1e-4)
    assert anns[0]["category_id"] == coco.COCO_CATEGORY_IDS[e["objects"]["label"][0]]
    assert [a["iscrowd"] for a in anns] == [0, 1, 0]


def test_ground_truth_prefers_the_annotation_file_tfds_downloaded(tmp_path):
    ann = tmp_path / "downloads" / "extracted" / "ZIP.annotations_trainval2017.zip" / "annotations"
    os.makedirs(ann)
    (ann / "instances_val2017.json").write_text(json.dumps({
        "images": [{"id": 9, "height": 10, "width": 20}], "annotations": [],
        "categories": [{"id": 1, "name": "person"}]}))
    assert coco.find_annotation_file(str(tmp_path)) == str(ann / "instances_val2017.json")
    gt = coco.ground_truth(str(tmp_path), source="tfds")
    assert gt.image_ids == [9] and gt.label_to_category.tolist() == [0, 1]


def test_tfds_host_splits_are_disjoint():
    parts = [coco.host_split("train", i, 4, drop_remainder=True) for i in range(4)]
    assert len(set(parts)) == 4


# --------------------------------------------------------------------------- the SSD crop
def _t(x, dtype=tf.float32):
    return tf.constant(np.asarray(x), dtype)


def test_crop_keeps_exactly_the_boxes_whose_centres_it_contains():
    boxes = _t([[0.1, 0.1, 0.3, 0.3],     # centre (0.2, 0.2): inside
                [0.0, 0.0, 0.2, 0.8],     # centre (0.1, 0.4): above the window
                [0.4, 0.4, 0.9, 0.9],     # centre (0.65, 0.65): inside, clipped
                [0.5, 0.05, 0.7, 0.15],   # centre (0.6, 0.1): left of the window
                [0.15, 0.15, 0.25, 0.25], # centre inside but a padding row
                [0.0, 0.0, 0.0, 0.0]])
    labels = _t([5, 6, 7, 8, 9, 0], tf.int32)
    window = _t([0.15, 0.15, 0.75, 0.75])
    b, lab, n = coco.crop_boxes(boxes, labels, 4, window)
    assert int(n) == 2
    assert lab.numpy().tolist() == [5, 7, 0, 0, 0, 0]
    np.testing.assert_allclose(b.numpy()[:2], [[0.0, 0.0, 0.25, 0.25],
                                               [0.25 / 0.6, 0.25 / 0.6, 1.0, 1.0]], atol=1e-6)
    assert (b.numpy()[2:] == 0).all()
    # a centre exactly on the window's edge is out (the reference's strict inequalities)
    _, _, n = coco.crop_boxes(_t([[0.1, 0.1, 0.2, 0.2]]), _t([1], tf.int32), 1,
                              _t([0.15, 0.0, 1.0, 1.0]))
    assert int(n) == 0


def test_crop_min_iou_rule():
    boxes = _t([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    valid = _t([True, True], tf.bool)
    # window = the first box: IoU 1 with it, 0 with the second
    w = _t([0.0, 0.0, 0.5, 0.5])
    assert not coco.crop_is_valid(w, boxes, valid, _t(0.1)).numpy()  # box 2 has IoU 0 <= 0.1
    assert coco.crop_is_valid(w, boxes, valid, _t(-np.inf)).numpy()  # unconstrained
    # ... valid once box 2 is padding (only valid boxes count)
    assert coco.crop_is_valid(w, boxes, _t([True, False], tf.bool), _t(0.9)).numpy()
    # the whole image: IoU 0.25 with both, both centres inside
    full = _t([0.0, 0.0, 1.0, 1.0])
    assert coco.crop_is_valid(full, boxes, valid, _t(0.1)).numpy()
    assert not coco.crop_is_valid(full, boxes, valid, _t(0.3)).numpy()
    # IoU must be strictly greater: 0.25 is not > 0.25
    assert not coco.crop_is_valid(full, boxes, valid, _t(0.25)).numpy()
    # no centre inside: rejected even without an IoU constraint
    assert not coco.crop_is_valid(_t([0.0, 0.6, 0.4, 1.0]), boxes, valid, _t(-np.inf)).numpy()
    # batched windows [2, 4] with per-window min IoU
    ws = tf.stack([w, full])
    assert coco.crop_is_valid(ws, boxes, valid, _t([-np.inf, 0.3])).numpy().tolist() == [True, False]


@pytest.mark.parametrize("max_samples", [1, 50])
def test_sampled_windows_follow_the_rules(max_samples):
    boxes = _t([[0.2, 0.3, 0.5, 0.6], [0.55, 0.1, 0.9, 0.5], [0, 0, 0, 0]])
    f = tf.function(lambda s: coco.sample_crop_window(boxes, 2, s, max_samples=max_samples))
    seen_iou, crops = set(), 0
    for i in range(150):
        window, min_iou, cropped = (x.numpy() for x in f(_t([3, i], tf.int64)))
        if not cropped:
            np.testing.assert_array_equal(window, [0, 0, 1, 1])
            continue
        crops += 1
        seen_iou.add(round(float(min_iou), 1))
        h, w = window[2] - window[0], window[3] - window[1]
        assert 0.3 <= h <= 1 and 0.3 <= w <= 1 and 0.5 <= w / h <= 2
        assert 0 <= window[0] and window[2] <= 1 + 1e-6 and 0 <= window[1] and window[3] <= 1 + 1e-6
        assert coco.crop_is_valid(_t(window), boxes, _t([True, True, False], tf.bool),
                                  _t(min_iou)).numpy()
    assert 20 < crops < 150  # no crop is one of seven choices; the others mostly succeed
    assert float("-inf") in seen_iou and 0.1 in seen_iou
    # deterministic in the seed
    a = [x.numpy() for x in f(_t([3, 5], tf.int64))]
    b = [x.numpy() for x in f(_t([3, 5], tf.int64))]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_no_boxes_means_no_crop():
    boxes = tf.zeros([4, 4])
    for i in range(20):
        _, _, cropped = coco.sample_crop_window(boxes, 0, _t([0, i], tf.int64), max_samples=50)
        assert not cropped.numpy()


def test_ssd_crop_cuts_the_pixels_of_the_window():
    image = tf.reshape(tf.range(50 * 80 * 3, dtype=tf.int32) % 251, [50, 80, 3])
    boxes = _t([[0.3, 0.3, 0.6, 0.6]] + [[0, 0, 0, 0]] * 3)
    labels = _t([3, 0, 0, 0], tf.int32)
    for i in range(40):
        seed = _t([11, i], tf.int64)
        window, _, cropped = coco.sample_crop_window(boxes, 1, seed)
        img, b, lab, n = coco.ssd_crop(image, boxes, labels, 1, seed)
        if not cropped.numpy():
            assert img.shape == (50, 80, 3) and int(n) == 1
            continue
        y0, x0, y1, x1 = (int(v) for v in np.floor(window.numpy() * [50, 80, 50, 80]))
        np.testing.assert_array_equal(img.numpy(), image.numpy()[y0:y1, x0:x1])
        assert int(n) == 1 and lab.numpy()[0] == 3


def test_flip_mirrors_valid_boxes_only():
    image = tf.reshape(tf.range(2 * 3 * 3, dtype=tf.float32), [2, 3, 3])
    boxes = _t([[0.1, 0.2, 0.5, 0.3], [0, 0, 0, 0]])
    img, b = coco.flip_left_right(image, boxes, 1, tf.constant(True))
    np.testing.assert_allclose(b.numpy(), [[0.1, 0.7, 0.5, 0.8], [0, 0, 0, 0]], atol=1e-6)
    np.testing.assert_array_equal(img.numpy(), image.numpy()[:, ::-1])


def test_color_jitter_range_and_identity():
    x = tf.random.stateless_uniform([16, 16, 3], [1, 2])
    y = coco.color_jitter(x, tf.constant([5, 6], tf.int64))
    assert y.shape == x.shape and float(tf.reduce_min(y)) >= 0 and float(tf.reduce_max(y)) <= 1
    assert not np.allclose(y.numpy(), x.numpy())
    same = coco.color_jitter(x, tf.constant([5, 6], tf.int64), brightness=0, contrast=0,
                             saturation=0, hue=0)
    np.testing.assert_allclose(same.numpy(), x.numpy(), atol=1e-5)


# --------------------------------------------------------------------------- the raw layout
def _write_raw(root, n_train=7, n_val=5):
    """A tiny COCO: categories 1, 3, 7 (labels 1, 2, 3); image 0 of each split has no boxes."""
    cats = [{"id": 7, "name": "c7"}, {"id": 1, "name": "c1"}, {"id": 3, "name": "c3"}]
    rng = np.random.default_rng(1)
    ann_id = 1
    for split, n in (("train2017", n_train), ("val2017", n_val)):
        os.makedirs(root / split, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            h, w = 30 + 5 * i, 50 - 3 * i
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            name = f"{split}_{i:04d}.jpg"
            (root / split / name).write_bytes(tf.io.encode_jpeg(img).numpy())
            images.append({"id": 500 + 10 * i, "file_name": name, "height": h, "width": w})
            for j in range(i % 3 if i else 0):
                anns.append({"id": ann_id, "image_id": 500 + 10 * i, "category_id": [1, 3, 7][j],
                             "bbox": [2.0 + j, 3.0, 10.0, 8.0 + j], "area": 80.0,
                             "iscrowd": 0})
                ann_id += 1
            if i and i % 3 == 0:  # make sure every non-first image has a box
                anns.append({"id": ann_id, "image_id": 500 + 10 * i, "category_id": 7,
                             "bbox": [1.0, 1.0, 5.0, 5.0], "area": 25.0, "iscrowd": 1})
                ann_id += 1
        os.makedirs(root / "annotations", exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": cats}))
    coco._RAW_CACHE.clear()


def test_raw_index_reads_the_annotations(tmp_path):
    _write_raw(tmp_path)
    coco.check_prepared(str(tmp_path))  # auto -> raw layout, complete
    assert coco.resolve_source(str(tmp_path)) == "coco_raw"
    idx = coco.raw_index(str(tmp_path), "validation")
    assert idx["image_ids"].tolist() == [500, 510, 520, 530, 540]
    assert idx["orig_sizes"].tolist() == [[30 + 5 * i, 50 - 3 * i] for i in range(5)]
    assert idx["box_count"].tolist() == [0, 1, 2, 1, 1]
    assert idx["label_to_category"].tolist() == [0, 1, 3, 7]
    # image 2 (h 40, w 44): boxes [2, 3, 10, 8] cat 1 and [3, 3, 10, 9] cat 3
    s = idx["box_start"][2]
    np.testing.assert_allclose(idx["boxes"][s:s + 2], [[3 / 40, 2 / 44, 11 / 40, 12 / 44],
                                                       [3 / 40, 3 / 44, 12 / 40, 13 / 44]],
                               rtol=1e-6)
    assert idx["labels"][s:s + 2].tolist() == [1, 2]
    v = coco.val_index(str(tmp_path))
    assert v["files"][0].endswith("val2017_0000.jpg")


def test_raw_train_drops_empty_images_and_splits_hosts(tmp_path):
    _write_raw(tmp_path, n_train=7)
    seen = []
    for host in range(2):
        ds = coco.train_dataset(str(tmp_path), batch_size=1, seed=0, epoch=1, image_size=32,
                                max_boxes=4, process_index=host, process_count=2)
        batches = _take(ds)
        assert len(batches) == 3  # 6 images with boxes, 3 per host
        for b in batches:
            assert b["image"].shape == (1, 32, 32, 3) and 1 <= b["num_boxes"][0] <= 4
            assert set(b["labels"][0, :b["num_boxes"][0]].tolist()) <= {1, 2, 3}
        seen.append(len(batches))
    a = _take(coco.train_dataset(str(tmp_path), batch_size=2, seed=3, epoch=1, image_size=32,
                                 max_boxes=4))
    b = _take(coco.train_dataset(str(tmp_path), batch_size=2, seed=3, epoch=1, image_size=32,
                                 max_boxes=4))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["boxes"], y["boxes"])


def test_raw_eval_and_ground_truth(tmp_path):
    _write_raw(tmp_path, n_val=5)
    hosts = [_take(coco.eval_dataset(str(tmp_path), batch_size=3, image_size=24,
                                     process_index=i, process_count=2)) for i in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == 1  # 4 images with boxes: 2 per host, 1 batch each
    ids = sorted(int(i) for h in hosts for b in h for i, m in zip(b["image_id"], b["mask"]) if m)
    assert ids == [510, 520, 530, 540]
    b = hosts[0][0]
    assert b["orig_size"][b["mask"]].tolist() == [[35, 47], [40, 44]]
    gt = coco.ground_truth(str(tmp_path))
    assert gt.num_images == 5 and len(gt.coco.getAnnIds()) == 5
    assert gt.label_to_category.tolist() == [0, 1, 3, 7]
    img = coco.load_image(coco.val_index(str(tmp_path))["files"][1], "ssd-mobilenet", 30)
    assert img.shape == (30, 30, 3) and img.dtype == np.uint8


def test_missing_data_raises_with_where_and_how(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        coco.check_prepared(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "download_and_prepare" in msg and "instances_" in msg
    assert "\n" not in msg
    os.makedirs(tmp_path / "annotations")
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    with pytest.raises(DatasetNotFoundError, match="train2017"):
        coco.check_prepared(str(tmp_path))
    with pytest.raises(DatasetNotFoundError):
        coco.check_prepared(None)
    with pytest.raises(ValueError, match="unknown COCO source"):
        coco.check_prepared(str(tmp_path), source="lmdb")


# --------------------------------------------------------------------------- preprocessing
def test_ssd_normalisation_conventions():
    x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, -1)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for model in ("ssd", "ssd-resnet34"):
        np.testing.assert_allclose(np.asarray(pp.normalize(x, model)),
                                   (x / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(pp.normalize(x, "ssd-mobilenet")),
                               (x.astype(np.float32) - 127.5) / 127.5, atol=1e-6)
    with pytest.raises(ValueError, match="detection"):
        pp.resize_and_crop(np.zeros((8, 8, 3), np.uint8), "ssd", 4)
    with pytest.raises(ValueError, match="classification"):
        pp.resize_detection(np.zeros((8, 8, 3), np.uint8), "resnet50", 4)


def test_detection_resize_matches_cv2_when_enlarging():
    import cv2  # the inference reference resizes with cv2.resize (INTER_LINEAR)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:64]
    img = np.clip(np.stack([128 + 90 * np.sin(xx / (5.0 + c)) * np.cos(yy / 7.0)
                            for c in range(3)], -1) + rng.normal(0, 10, (48, 64, 3)), 0, 255
                  ).astype(np.uint8)
    for model in ("ssd-resnet34", "ssd-mobilenet"):
        ours = pp.resize_detection(img, model, 120).numpy().astype(int)
        ref = cv2.resize(img, (120, 120), interpolation=cv2.INTER_LINEAR).astype(int)
        assert np.abs(ours - ref).max() <= 1
    small = pp.resize_detection(img, "ssd-mobilenet", 30).numpy().astype(int)
    ref = cv2.resize(img, (30, 30), interpolation=cv2.INTER_LINEAR).astype(int)
    assert np.abs(small - ref).max() <= 1  # shrinking without antialias: as cv2
