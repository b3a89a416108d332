"""instance_masks.paste_masks: against torchvision's ``paste_masks_in_image`` (in a subprocess,
when torchvision is installed), and on hand-worked boxes (numpy only).

The box mapping under test: our continuous ``[ymin, xmin, ymax, xmax]`` (integer corners cover
pixels ``ymin..ymax-1``) is torchvision's / maskrcnn-benchmark's legacy ``(x0, y0, x1, y1) =
float32(xmin, ymin, xmax - 1, ymax - 1)`` (``instance_masks.legacy_boxes``); the reference's mask
is ``paste_masks_in_image(...) > 0.5`` (``Masker(threshold=0.5, padding=1)``)."""
import importlib.util

import numpy as np
import pytest

from conftest import run_python
from mlperf_jax.input_pipelines.instance_masks import legacy_boxes, paste_masks


def _box_mask(box, height, width):
    m = np.zeros((height, width), np.uint8)
    y0, x0, y1, x1 = (int(v) for v in box)
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1
    return m


def _random_boxes(rng, k, h, w):
    """Boxes overlapping the image (torchvision's slicing raises on a box wholly outside),
    some past each edge."""
    y0, x0 = rng.uniform(-20, h - 1, k), rng.uniform(-20, w - 1, k)
    bh, bw = rng.uniform(0.2, h, k), rng.uniform(0.2, w, k)
    return np.stack([y0, x0, y0 + np.maximum(bh, 2 - y0), x0 + np.maximum(bw, 2 - x0)], -1)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="torchvision not installed")
def test_paste_masks_matches_torchvision(tmp_path):
    rng = np.random.RandomState(0)
    cases = {}
    for c in range(12):
        k, (h, w), m = 40, rng.randint(5, 300, 2), [7, 14, 28][c % 3]
        masks = rng.uniform(0, 1, (k, m, m)).astype(np.float32)
        if c % 2:   # 0/1 masks: their edges interpolate to exact 0.5 ties
            masks = (masks > 0.5).astype(np.float32)
        cases[str(c)] = (masks, _random_boxes(rng, k, h, w), h, w)
    # integer boxes and all-ones masks, every near-edge start and many sizes (tie-prone)
    ib = np.array([[y0, y0 + 2, y0 + s, y0 + 7 + s]
                   for y0 in range(-3, 5) for s in range(max(1, 1 - y0), 70, 3)], float)
    for m in (14, 28):
        cases[f"ones{m}"] = (np.ones((len(ib), m, m), np.float32), ib, 80, 90)
    arrays = {"padding": 1}
    for c, (masks, boxes, h, w) in cases.items():
        arrays.update({f"masks_{c}": masks, f"boxes_{c}": legacy_boxes(boxes),
                       f"size_{c}": np.array([h, w])})
    np.savez(tmp_path / "in.npz", **arrays)
    proc = run_python(["tests/_torchvision_paste.py", str(tmp_path / "in.npz"),
                       str(tmp_path / "out.npz")], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = np.load(tmp_path / "out.npz")
    for c, (masks, boxes, h, w) in cases.items():
        ours = paste_masks(masks, boxes, h, w, threshold=0.5, padding=1)
        theirs = (ref[f"prob_{c}"] > 0.5).astype(np.uint8)
        assert ours.shape == theirs.shape == (len(masks), h, w)
        # exact: the arithmetic is torch's float32 one, fused source index included
        np.testing.assert_array_equal(ours, theirs, err_msg=f"case {c}")


def test_all_ones_mask_fills_its_box():
    ones = np.ones((1, 28, 28), np.float32)
    # padding=0: exactly the box's pixels, every integer box
    for x0 in range(0, 4):
        for s in range(1, 120):
            box = np.array([[x0 + 1, x0, x0 + 1 + s, x0 + s]], float)
            got = paste_masks(ones, box, 130, 130, padding=0)[0]
            np.testing.assert_array_equal(got, _box_mask(box[0], 130, 130), err_msg=str(box))
    # padding=1 (the reference's): by hand for x 20..48 (pixels 20..47): legacy (20, 47), centre
    # 33.5, half 13.5 * 30 / 28 = 14.46 -> expanded (19.04, 47.96) -> truncated (19, 47), so 29
    # pixels resample the 30-wide padded mask: pixel 19 sees source 0.017 (0.017 < 0.5, off),
    # pixel 47 source 28.98 (value 0.017, off); pixels 20..46 are on: one short at the far edge
    got = paste_masks(ones, np.array([[20, 20, 48, 48]], float), 60, 60, padding=1)[0]
    np.testing.assert_array_equal(got, _box_mask([20, 20, 47, 47], 60, 60))
    # in general each edge lands within one pixel of the box's (truncation of the expanded
    # corners and the legacy w - 1 widths): first pixel x0 - 1 .. x0 + 1, last x1 - 2 .. x1 - 1
    for x0 in range(0, 6):
        for s in range(1, 200):
            got = paste_masks(ones, np.array([[0, x0, 5, x0 + s]], float), 5, 260)[0]
            cols = np.nonzero(got.any(0))[0]
            assert x0 - 1 <= cols[0] <= x0 + 1 and x0 + s - 2 <= cols[-1] <= x0 + s - 1, (x0, s)
            assert len(cols) == cols[-1] - cols[0] + 1


def test_boxes_past_the_image_are_clipped():
    ones = np.ones((3, 14, 14), np.float32)
    boxes = np.array([[-5, -7, 10, 12], [15, 25, 40, 50], [30, 40, 35, 45]], float)
    got = paste_masks(ones, boxes, 20, 30, padding=0)
    assert got.shape == (3, 20, 30) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[0], _box_mask(boxes[0], 20, 30))   # rows 0..9, cols 0..11
    np.testing.assert_array_equal(got[1], _box_mask(boxes[1], 20, 30))   # rows 15..19, 25..29
    assert not got[2].any()                                               # wholly outside
    assert got[0, :10, :12].all() and got[1, 15:, 25:].all()
    # with padding the clipped parts agree with the pasting into a larger image, cropped, where
    # the expanded corners stay >= 0 (the reference truncates toward zero, not down)
    rng = np.random.RandomState(3)
    masks = rng.uniform(0, 1, (8, 28, 28)).astype(np.float32)
    inside = np.array([[2, 3, 40, 50]] * 8, float) + rng.uniform(0, 5, (8, 4))
    big = paste_masks(masks, inside, 60, 70)
    np.testing.assert_array_equal(paste_masks(masks, inside, 25, 30), big[:, :25, :30])


def test_threshold_is_strict_and_soft_masks():
    # a 28-pixel box with padding 0 resizes 28 -> 28: the identity, so the threshold is seen bare
    m = np.full((1, 28, 28), 0.5, np.float32)
    m[0, :, 14:] = np.nextafter(np.float32(0.5), np.float32(1))
    box = np.array([[0, 0, 28, 28]], float)
    got = paste_masks(m, box, 28, 28, padding=0)[0]
    assert not got[:, :14].any() and got[:, 14:].all()          # > 0.5, as the reference
    soft = paste_masks(np.full((1, 28, 28), 0.7, np.float32), box, 28, 28, threshold=-1,
                       padding=0)[0]
    assert (soft == int(np.float32(0.7) * np.float32(255))).all()  # uint8(p * 255) truncated
    assert paste_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), 5, 6).shape == (0, 5, 6)


def test_legacy_box_mapping():
    np.testing.assert_array_equal(legacy_boxes(np.array([[10, 20, 30, 60]], float)),
                                  np.array([[20, 10, 59, 29]], np.float32))
