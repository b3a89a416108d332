"""COCO instances for Mask R-CNN: the raw reader and preparation (coco_instances) and the tf.data
pipelines over the prepared TFRecords (maskrcnn_input), on a tiny raw COCO tree written here."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mlperf_jax.input_pipelines import coco_instances as ci
from mlperf_jax.input_pipelines import maskrcnn_input as mi
from mlperf_jax.input_pipelines.coco_eval import COCO_CATEGORY_IDS
from mlperf_jax.input_pipelines.instance_masks import crop_masks
from mlperf_jax.input_pipelines.source import DatasetNotFoundError

R = 16
SIZES = dict(min_size=32, max_size=60, pad_size=64)
# image id -> (height, width); listed out of id order in the json on purpose
IMAGES = {60: (32, 50), 10: (48, 64), 40: (29, 120), 20: (64, 40), 50: (40, 40), 30: (20, 80)}
TRAIN_IDS = (10, 20, 30, 40)  # 50: no annotation; 60: only a 1-pixel-wide one


def _poly_ann(ann_id, image_id, cat, polys, iscrowd=0):
    xs = [x for p in polys for x in p[0::2]]
    ys = [y for p in polys for y in p[1::2]]
    bbox = [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)]
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": polys,
            "bbox": [float(v) for v in bbox], "area": float(bbox[2] * bbox[3]),
            "iscrowd": iscrowd}


def _rle_ann(ann_id, image_id, cat, mask, *, compressed, iscrowd=0):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    bbox = [float(v) for v in mask_utils.toBbox(rle)]
    if compressed:
        seg = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    else:  # uncompressed: run lengths in column-major order
        flat = mask.astype(np.uint8).flatten(order="F")
        counts, cur, run = [], 0, 0
        for v in flat:
            if v != cur:
                counts.append(run)
                cur, run = v, 0
            run += 1
        counts.append(run)
        seg = {"size": list(mask.shape), "counts": counts}
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "segmentation": seg,
            "bbox": bbox, "area": float(mask.sum()), "iscrowd": iscrowd}


def _annotations():
    yy, xx = np.mgrid[:64, :40]
    ellipse = ((yy - 30) / 20.0) ** 2 + ((xx - 18) / 12.0) ** 2 <= 1.0
    crowd = np.zeros((48, 64), bool)
    crowd[30:46, 2:30] = True
    anns = [
        _poly_ann(102, 10, 90, [[35, 10, 60, 10, 60, 40, 35, 40], [40, 42, 50, 42, 45, 47]]),
        _poly_ann(101, 10, 1, [[5, 5, 30, 6, 28, 30, 6, 25]]),
        _rle_ann(103, 10, 1, crowd, compressed=False, iscrowd=1),
        _rle_ann(201, 20, 13, ellipse, compressed=True),
        _poly_ann(202, 20, 44, [[2.5, 50, 30, 52, 20, 63]]),
        _poly_ann(301, 30, 2, [[60, 2, 85, 2, 85, 17, 60, 17]]),  # past the right edge (80)
        _poly_ann(404, 40, 3, [[70, 5, 80, 5, 75, 12]]),
        _poly_ann(401, 40, 3, [[10, 3, 100, 3, 100, 25, 10, 25]]),
        _poly_ann(402, 40, 1, [[2, 2, 8, 2, 8, 9]]),
        _poly_ann(403, 40, 90, [[104, 10, 118, 10, 118, 27, 104, 27]]),
        _poly_ann(601, 60, 1, [[10, 5, 11, 5, 11, 20, 10, 20]]),  # 1 pixel wide: empty
    ]
    cats = [{"id": c, "name": f"cat{c}", "supercategory": "x"} for c in (1, 2, 3, 13, 44, 90)]
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": h, "width": w}
              for i, (h, w) in IMAGES.items()]
    return {"images": images, "annotations": anns, "categories": cats}


def _write_tree(root):
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    data = _annotations()
    for split in ("train2017", "val2017"):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i, (h, w) in IMAGES.items():
            yy, xx = np.mgrid[:h, :w]
            img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) % 64 * 4], -1)
            img = np.clip(img + rng.integers(0, 30, img.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(root, split, f"{i:012d}.jpg"), quality=90)
        with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(data, f)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco"))
    _write_tree(root)
    ci.prepare(root, "train", mask_size=R, num_shards=3, num_workers=1)
    ci.prepare(root, "val", mask_size=R, num_shards=2, num_workers=1)
    return root


def _stored(data_dir, split):
    """Every stored example of ``split`` as numpy, by image id."""
    ds = tf.data.TFRecordDataset(ci.shard_paths(data_dir, split)).map(lambda s: mi.parse(s, R))
    return {int(e["image_id"]): e for e in ds.as_numpy_iterator()}


def _expected_box(ann, h, w):
    x, y, bw, bh = ann["bbox"]
    return np.clip([y, x, y + bh, x + bw], 0, [h, w, h, w]).astype(np.float32)


# ------------------------------------------------------------------ preparation
def test_prepare_counts_and_metadata(data_dir):
    train, val = ci.metadata(data_dir, "train"), ci.metadata(data_dir, "val")
    assert train["num_examples"] == 4 and train["num_images_in_json"] == 6
    assert val["num_examples"] == 6
    assert train["mask_size"] == val["mask_size"] == R
    assert train["num_instances"] == 2 + 2 + 1 + 4 and train["max_instances"] == 4
    assert val["num_instances"] == train["num_instances"]  # 601 is empty, 103 crowd
    assert train["shards"] == [f"train-{k:05d}-of-00003.tfrecord" for k in range(3)]
    assert sum(train["shard_counts"]) == 4 and val["num_shards"] == 2
    assert train["annotation_file"] == os.path.join(data_dir, "annotations",
                                                    "instances_train2017.json")
    stored = _stored(data_dir, "train")
    assert sorted(stored) == list(TRAIN_IDS)
    assert [int(stored[i]["index"]) for i in TRAIN_IDS] == [0, 1, 2, 3]  # by image id
    assert sorted(_stored(data_dir, "val")) == sorted(IMAGES)


def test_annotations_joined_on_id(data_dir):
    coco = COCO(os.path.join(data_dir, "annotations", "instances_train2017.json"))
    seen = []
    for img_id, ex in _stored(data_dir, "train").items():
        h, w = IMAGES[img_id]
        assert (int(ex["height"]), int(ex["width"])) == (h, w)
        ids = list(ex["ann_ids"])
        assert ids == sorted(ids) and 103 not in ids  # by annotation id, crowd removed
        assert ex["masks"].shape == (len(ids), R, R) and ex["masks"].dtype == np.uint8
        with open(os.path.join(data_dir, "train2017", coco.imgs[img_id]["file_name"]), "rb") as f:
            assert ex["image"] == f.read()  # the JPEG as in the file
        for k, a in enumerate(ids):
            ann = coco.anns[int(a)]
            np.testing.assert_array_equal(ex["boxes"][k], _expected_box(ann, h, w))
            assert ex["classes"][k] == COCO_CATEGORY_IDS.index(ann["category_id"]) + 1
            ref = crop_masks(coco.annToMask(ann), ex["boxes"][k], R) * 255.0
            assert np.abs(ex["masks"][k].astype(np.float64) - ref).max() <= 0.5 + 1e-6, a
            assert ex["masks"][k].max() == 255
            seen.append(int(a))
    assert sorted(seen) == [101, 102, 201, 202, 301, 401, 402, 403, 404]
    stored = _stored(data_dir, "train")
    np.testing.assert_array_equal(stored[30]["boxes"][0], [2, 60, 17, 80])  # clipped at w=80
    assert list(stored[20]["classes"]) == [12, 40]  # category 13 -> 12, 44 -> 40
    assert list(stored[10]["classes"]) == [1, 80]


def test_prepare_is_idempotent(data_dir):
    meta_path = ci.metadata_path(data_dir, "train")
    shard = ci.shard_paths(data_dir, "train")[0]
    before = (os.path.getmtime(meta_path), os.path.getmtime(shard))
    msg = ci.prepare(data_dir, "train", mask_size=R, num_workers=1)
    assert "already prepared" in msg and "\n" not in msg and "4 images" in msg
    assert (os.path.getmtime(meta_path), os.path.getmtime(shard)) == before
    msg = ci.prepare(data_dir, "train", mask_size=R, num_shards=3, num_workers=1)
    assert "already prepared" in msg


def test_prepare_redoes_on_change_and_workers_agree(data_dir, tmp_path):
    out1, out2 = str(tmp_path / "a"), str(tmp_path / "b")
    ci.prepare(data_dir, "val", mask_size=8, num_shards=1, out_dir=out1, num_workers=1)
    ci.prepare(data_dir, "val", mask_size=8, num_shards=2, out_dir=out2, num_workers=2)
    assert ci.metadata(data_dir, "val", out_dir=out1)["mask_size"] == 8
    recs = [[r for p in ci.shard_paths(data_dir, "val", out_dir=o)
             for r in tf.data.TFRecordDataset(p).as_numpy_iterator()] for o in (out1, out2)]
    assert recs[0] == recs[1] and len(recs[0]) == 6
    msg = ci.prepare(data_dir, "val", mask_size=16, num_shards=1, out_dir=out1, num_workers=1)
    assert "already prepared" not in msg
    assert ci.metadata(data_dir, "val", out_dir=out1)["mask_size"] == 16


def test_missing_files_one_line(tmp_path):
    root = str(tmp_path)
    with pytest.raises(DatasetNotFoundError) as e:
        ci.check_prepared(root, "train")
    assert "\n" not in str(e.value) and "--prepare_only" in str(e.value)
    assert f"--data_dir={root}" in str(e.value)
    with pytest.raises(DatasetNotFoundError) as e:
        ci.prepare(root, "train")
    msg = str(e.value)
    assert "\n" not in msg and "annotations_trainval2017.zip" in msg
    assert msg.startswith(os.path.join(root, "annotations", "instances_train2017.json") +
                          " not found")
    os.makedirs(os.path.join(root, "annotations"))
    with open(os.path.join(root, "annotations", "instances_val2017.json"), "w") as f:
        json.dump(_annotations(), f)
    with pytest.raises(DatasetNotFoundError) as e:
        ci.prepare(root, "val")
    assert "\n" not in str(e.value) and "val2017.zip" in str(e.value)
    os.makedirs(os.path.join(root, "val2017"))
    with pytest.raises(DatasetNotFoundError) as e:
        ci.prepare(root, "val")
    msg = str(e.value)
    assert "\n" not in msg and "000000000010.jpg (and 5 more) not found" in msg
    with pytest.raises(DatasetNotFoundError) as e:
        mi.eval_dataset(root, batch_size=2, **SIZES)
    assert "\n" not in str(e.value) and "--prepare_only" in str(e.value)


def test_missing_shard_reported(data_dir, tmp_path):
    root = str(tmp_path)
    shutil.copytree(os.path.join(data_dir, "maskrcnn"), os.path.join(root, "maskrcnn"))
    os.remove(os.path.join(root, "maskrcnn", "val-00001-of-00002.tfrecord"))
    with pytest.raises(DatasetNotFoundError) as e:
        ci.check_prepared(root, "val")
    assert "val-00001-of-00002.tfrecord not found" in str(e.value)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ sizes
def test_get_size_by_hand():
    lo, hi = 32, 60
    assert mi.get_size(48, 64, lo, hi) == (32, 42)    # int(32 * 64 / 48) = int(42.67)
    assert mi.get_size(64, 40, lo, hi) == (51, 32)    # int(32 * 64 / 40) = int(51.2)
    assert mi.get_size(20, 80, lo, hi) == (15, 60)    # 80/20*32 > 60: round(60 * 20/80) = 15
    assert mi.get_size(29, 120, lo, hi) == (14, 57)   # round(14.5) = 14 (half to even)
    assert mi.get_size(32, 50, lo, hi) == (32, 50)    # short side already 32
    assert mi.get_size(480, 640) == (800, 1066)
    assert mi.get_size(427, 640) == (800, 1199)
    assert mi.get_size(200, 640) == (417, 1334)       # round(416.56); int(417 * 3.2): past 1333
    h, w = np.meshgrid(np.arange(1, 160, 3), np.arange(1, 160, 5), indexing="ij")
    for lo_, hi_ in ((32, 60), (800, 1333)):
        oh, ow = mi.tf_get_size(tf.constant(h.ravel()), tf.constant(w.ravel()), lo_, hi_)
        want = np.array([mi.get_size(a, b, lo_, hi_) for a, b in zip(h.ravel(), w.ravel())])
        np.testing.assert_array_equal(np.stack([oh.numpy(), ow.numpy()], -1), want)


def test_pad_size_checked(data_dir):
    with pytest.raises(ValueError, match="multiple of 32"):
        mi.train_dataset(data_dir, batch_size=1, seed=0, epoch=1, min_size=32, max_size=60,
                         pad_size=60)
    with pytest.raises(ValueError, match="1344"):
        mi.eval_dataset(data_dir, batch_size=1, pad_size=1333)


# ------------------------------------------------------------------ train pipeline
_EPOCHS = {}


def _epoch(data_dir, epoch):
    """Epoch ``epoch`` (seed 0, batch 2, 3 instances), computed once for all tests."""
    if epoch not in _EPOCHS:
        _EPOCHS[epoch] = _train(data_dir, epoch, max_instances=3)
    return _EPOCHS[epoch]


def _train(data_dir, epoch, seed=0, batch_size=2, **kw):
    return list(mi.train_dataset(data_dir, batch_size=batch_size, seed=seed, epoch=epoch,
                                 **{**SIZES, **kw}).as_numpy_iterator())


def _rows(batches):
    return [{k: v[i] for k, v in b.items()} for b in batches for i in range(len(b["image"]))]


def test_train_shapes_and_dtypes(data_dir):
    batches = _epoch(data_dir, 1)
    assert len(batches) == 2
    spec = mi.train_spec(2, 64, 3, R)
    for b in batches:
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == \
               {k: (s, np.dtype(d)) for k, (s, d) in spec.items()}
    with pytest.raises(ValueError):
        mi.train_dataset(data_dir, batch_size=1, seed=0, epoch=1, process_count=5, **SIZES)
    assert mi.steps_per_epoch(data_dir, batch_size=2) == 2
    assert len(_train(data_dir, 1, batch_size=3, steps=3)) == 3  # repeats past the 4 examples


def test_train_resize_flip_boxes_masks(data_dir):
    stored = {mi.get_size(*IMAGES[i], 32, 60): ex for i, ex in _stored(data_dir, "train").items()}
    flips = []
    for epoch in range(1, 5):
        for row in _rows(_epoch(data_dir, epoch)):
            hw = tuple(int(v) for v in row["image_hw"])
            ex = stored[hw]  # the resized sizes of the 4 images differ
            h, w = int(ex["height"]), int(ex["width"])
            n = min(len(ex["classes"]), 3)  # 40 has 4 instances: keeps 401, 402, 403
            assert row["num_gt"] == n and list(row["classes"][:n]) == list(ex["classes"][:n])
            assert not row["classes"][n:].any() and not row["boxes"][n:].any()
            assert not row["masks"][n:].any()
            scale = np.array([hw[0] / h, hw[1] / w] * 2, np.float32)
            boxes = ex["boxes"][:n] * scale
            mirrored = np.stack([boxes[:, 0], hw[1] - boxes[:, 3], boxes[:, 2],
                                 hw[1] - boxes[:, 1]], -1)
            image = mi.resize(mi.preprocessing.decode(ex["image"]), *hw).numpy()
            flipped = not np.allclose(row["boxes"][:n], boxes, atol=1e-4)
            flips.append(flipped)
            if flipped:
                np.testing.assert_allclose(row["boxes"][:n], mirrored, atol=1e-4)
                np.testing.assert_array_equal(row["masks"][:n], ex["masks"][:n, :, ::-1])
                np.testing.assert_array_equal(row["image"][:hw[0], :hw[1]], image[:, ::-1])
            else:
                np.testing.assert_array_equal(row["masks"][:n], ex["masks"][:n])
                np.testing.assert_array_equal(row["image"][:hw[0], :hw[1]], image)
            assert not row["image"][hw[0]:].any() and not row["image"][:, hw[1]:].any()
    assert len(flips) == 16 and 0 < sum(flips) < 16


def test_train_reproducible_and_epochs_differ(data_dir):
    a, b = _epoch(data_dir, 3), _train(data_dir, 3, max_instances=3)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    skipped = list(mi.train_dataset(data_dir, batch_size=2, seed=0, epoch=3, max_instances=3,
                                    **SIZES).skip(1).as_numpy_iterator())
    assert len(skipped) == 1
    for k in a[1]:
        np.testing.assert_array_equal(skipped[0][k], a[1][k])

    def key(batches):  # the order and the flips of an epoch
        return tuple((tuple(r["image_hw"]), float(r["boxes"][0, 1])) for r in _rows(batches))
    assert len({key(_epoch(data_dir, e)) for e in range(1, 5)}) > 1


def test_train_hosts_disjoint(data_dir):
    seen = []
    for p in range(2):
        rows = _rows(_train(data_dir, 1, batch_size=1, process_index=p, process_count=2))
        assert len(rows) == 2
        seen += [tuple(r["image_hw"]) for r in rows]
    assert sorted(seen) == sorted(mi.get_size(*IMAGES[i], 32, 60) for i in TRAIN_IDS)


# ------------------------------------------------------------------ eval pipeline
def test_eval_padding_and_sizes(data_dir):
    batches = list(mi.eval_batches(data_dir, batch_size=4, **SIZES))
    assert len(batches) == 2
    spec = mi.eval_spec(4, 64)
    for b in batches:
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == \
               {k: (s, np.dtype(d)) for k, (s, d) in spec.items()}
    rows = _rows(batches)
    assert [bool(r["mask"]) for r in rows] == [True] * 6 + [False] * 2
    real = rows[:6]
    assert [int(r["image_id"]) for r in real] == sorted(IMAGES)
    for r in real:
        h, w = IMAGES[int(r["image_id"])]
        assert tuple(r["orig_size"]) == (h, w)
        assert tuple(r["image_hw"]) == mi.get_size(h, w, 32, 60)
    assert tuple(real[-1]["image_hw"]) == (32, 50)  # image 60 keeps its size
    for r in rows[6:]:
        assert not r["image"].any() and not r["image_hw"].any() and r["image_id"] == 0


@pytest.mark.parametrize("hosts", [2, 4])
def test_eval_hosts_cover_every_image_once(data_dir, hosts):
    ids, counts = [], set()
    for p in range(hosts):
        batches = list(mi.eval_batches(data_dir, batch_size=2, process_index=p,
                                       process_count=hosts, **SIZES))
        counts.add(len(batches))
        ids += [int(r["image_id"]) for r in _rows(batches) if r["mask"]]
    assert len(counts) == 1  # every host the same number of batches
    assert sorted(ids) == sorted(IMAGES)
