"""The SSD tiny track's synthetic shapes: determinism, layout, and boxes from the geometry."""
import time

import numpy as np
import pytest

from mlperf_jax.input_pipelines import coco_eval, synthetic_detection as sd


@pytest.fixture(scope="module")
def split():
    return sd.make_split(256, seed=3, return_masks=True)


def test_shapes_dtypes_and_padding(split):
    n, m, s = 256, 4, 64
    assert split["images"].shape == (n, s, s, 3) and split["images"].dtype == np.uint8
    assert split["boxes"].shape == (n, m, 4) and split["boxes"].dtype == np.float32
    assert split["labels"].shape == (n, m) and split["labels"].dtype == np.int32
    assert split["num_boxes"].shape == (n,) and split["num_boxes"].dtype == np.int32
    assert split["num_boxes"].min() >= 1 and split["num_boxes"].max() <= m
    rows = np.arange(m)[None] < split["num_boxes"][:, None]
    assert (split["labels"][rows] >= 1).all() and (split["labels"][rows] <= 4).all()
    assert (split["labels"][~rows] == 0).all() and (split["boxes"][~rows] == 0).all()
    b = split["boxes"][rows]
    assert (b >= 0).all() and (b <= 1).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    # sizes 12..40 pixels per side
    side = np.concatenate([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]]) * s
    assert side.min() >= 11 and side.max() <= 41
    # every class and every object count occurs
    assert set(np.unique(split["labels"][rows])) == {1, 2, 3, 4}
    assert set(np.unique(split["num_boxes"])) == {1, 2, 3, 4}


def test_deterministic_in_the_seed():
    a = sd.make_split(40, seed=5)
    b = sd.make_split(40, seed=5)
    c = sd.make_split(40, seed=6)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["images"], c["images"])
    # return_masks does not change the data
    d = sd.make_split(40, seed=5, return_masks=True)
    for k in a:
        np.testing.assert_array_equal(a[k], d[k])


def test_boxes_are_the_tight_boxes_of_the_shapes(split):
    s = 64
    for i in range(len(split["images"])):
        for j in range(split["num_boxes"][i]):
            mask = split["masks"][i, j]
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose(split["boxes"][i, j] * s,
                                       [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], atol=1e-4)
        assert not split["masks"][i, split["num_boxes"][i]:].any()


def test_shapes_are_visible_and_overlap_little(split):
    fractions = []
    for i in range(len(split["images"])):
        n = split["num_boxes"][i]
        masks = split["masks"][i, :n]
        for j in range(n):
            later = masks[j + 1:].any(0) if j + 1 < n else np.zeros_like(masks[j])
            fractions.append((masks[j] & ~later).sum() / masks[j].sum())
    assert min(fractions) >= 0.5  # the overlap rule bounds how much a later shape hides
    assert np.mean(np.array(fractions) < 1) > 0.02  # but some shapes do overlap


def test_shape_pixels_differ_from_the_background(split):
    img = split["images"].astype(np.float32)
    for i in range(32):
        n = split["num_boxes"][i]
        inside = split["masks"][i, :n].any(0)
        top = split["masks"][i, n - 1]  # the last shape drawn is fully visible
        obj = img[i][top].mean(0)
        bg = img[i][~inside].mean(0)
        assert np.linalg.norm(obj - bg) > 40


def test_perfect_detections_on_the_ground_truth_score_one():
    d = sd.make_split(20, seed=1)
    n = len(d["images"])
    gt = coco_eval.ground_truth_from_arrays(np.arange(1, n + 1), np.full((n, 2), 64), d["boxes"],
                                            d["labels"], d["num_boxes"],
                                            category_names=sd.CLASS_NAMES)
    valid = np.arange(4)[None] < d["num_boxes"][:, None]
    dets = coco_eval.detections_to_coco(np.arange(1, n + 1), d["boxes"], np.ones((n, 4)),
                                        d["labels"], valid, np.full((n, 2), 64))
    assert coco_eval.evaluate(gt, dets)["mAP"] == pytest.approx(1.0)


def test_fast_enough():
    t = time.perf_counter()
    sd.make_split(2048, seed=0)
    assert time.perf_counter() - t < 10  # about 0.7 s on one free core; 8k images in ~3 s
