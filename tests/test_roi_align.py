"""models/roi_align: RoIAlign against a numpy transcription of torchvision's CPU kernel (and, when
torchvision is installed, against ``torchvision.ops.roi_align`` itself in a subprocess), the FPN
level mapper, multi-level pooling, mask targets from stored R x R crops against cropping the
full-image (pycocotools) mask directly, and the mask loss against a numpy BCE."""
import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pycocotools import mask as mask_util

from conftest import run_python
from mlperf_jax.input_pipelines.instance_masks import crop_masks
from mlperf_jax.models import roi_align as ra


# ---------------------------------------------------------------- numpy reference (torchvision)
def _bilinear(f, y, x):
    """torchvision ``roi_align_kernel.cpp`` ``bilinear_interpolate`` (with its pre_calc rules)."""
    h, w = f.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[-1])
    y, x = max(y, 0.0), max(x, 0.0)
    y_lo, x_lo = int(y), int(x)
    if y_lo >= h - 1:
        y_hi = y_lo = h - 1
        y = float(y_lo)
    else:
        y_hi = y_lo + 1
    if x_lo >= w - 1:
        x_hi = x_lo = w - 1
        x = float(x_lo)
    else:
        x_hi = x_lo + 1
    ly, lx = y - y_lo, x - x_lo
    hy, hx = 1.0 - ly, 1.0 - lx
    return (hy * hx * f[y_lo, x_lo] + hy * lx * f[y_lo, x_hi]
            + ly * hx * f[y_hi, x_lo] + ly * lx * f[y_hi, x_hi])


def _ref_roi_align(feats, boxes, scale, oh, ow, sr, aligned):
    """Loops per box, bin and sample point, as ``roi_align_forward_kernel_impl``."""
    b_, k_ = boxes.shape[:2]
    out = np.zeros((b_, k_, oh, ow, feats.shape[-1]))
    off = 0.5 if aligned else 0.0
    for b in range(b_):
        for k in range(k_):
            y0, x0, y1, x1 = (float(v) * scale - off for v in boxes[b, k])
            rh, rw = y1 - y0, x1 - x0
            if not aligned:
                rh, rw = max(rh, 1.0), max(rw, 1.0)
            bh, bw = rh / oh, rw / ow
            for ph in range(oh):
                for pw in range(ow):
                    acc = 0.0
                    for iy in range(sr):
                        y = y0 + ph * bh + (iy + 0.5) * bh / sr
                        for ix in range(sr):
                            x = x0 + pw * bw + (ix + 0.5) * bw / sr
                            acc = acc + _bilinear(feats[b], y, x)
                    out[b, k, ph, pw] = acc / (sr * sr)
    return out


def _boxes(rng, b, k, img_h, img_w):
    """Random boxes in image pixels: inside, partly outside the map (each side), tiny, empty,
    wholly outside."""
    y0 = rng.uniform(-0.2 * img_h, img_h, (b, k))
    x0 = rng.uniform(-0.2 * img_w, img_w, (b, k))
    h = np.exp(rng.uniform(np.log(0.5), np.log(img_h), (b, k)))
    w = np.exp(rng.uniform(np.log(0.5), np.log(img_w), (b, k)))
    boxes = np.stack([y0, x0, y0 + h, x0 + w], -1)
    boxes[:, 0] = [-9.3, -7.1, img_h + 3.2, img_w + 5.3]          # over every edge
    boxes[:, 1] = [5.2, 6.9, 5.5, 7.05]                            # tiny (< 1 feature pixel)
    boxes[:, 2] = [8.0, 8.0, 8.0, 8.0]                              # empty
    boxes[:, 3] = [img_h + 10, img_w + 12, img_h + 30, img_w + 40]  # wholly past the end
    boxes[:, 4] = [-40.0, -30.0, -10.0, -2.0]                       # wholly before the start
    boxes[:, 5] = [img_h - 3.7, img_w - 2.9, img_h + 0.2, img_w]    # at the far corner
    return boxes.astype(np.float32)


CASES = [  # (oh, ow, spatial_scale, sampling_ratio, aligned)
    (7, 7, 0.25, 2, False), (7, 7, 0.25, 2, True), (3, 5, 0.5, 2, False), (3, 5, 0.5, 2, True),
    (4, 4, 0.25, 1, False), (2, 3, 0.25, 3, True)]


def _data(seed=0):
    rng = np.random.RandomState(seed)
    feats = rng.randn(2, 13, 17, 3).astype(np.float32)
    return feats, _boxes(rng, 2, 12, 52, 68)


def _jit_roi_align(scale, size, sr, aligned):
    return jax.jit(functools.partial(ra.roi_align, spatial_scale=scale, output_size=size,
                                     sampling_ratio=sr, aligned=aligned))


@pytest.mark.parametrize("case", CASES)
def test_roi_align_matches_numpy_reference(case):
    oh, ow, scale, sr, aligned = case
    feats, boxes = _data()
    got = _jit_roi_align(scale, (oh, ow), sr, aligned)(feats, boxes)
    assert got.shape == (2, 12, oh, ow, 3) and got.dtype == jnp.float32
    want = _ref_roi_align(feats, boxes, scale, oh, ow, sr, aligned)
    np.testing.assert_allclose(np.asarray(got), want, atol=2e-5, rtol=1e-5)
    assert np.all(np.asarray(got)[:, 3] == 0) and np.all(np.asarray(got)[:, 4] == 0)


def test_roi_align_int_output_size_and_jit():
    feats, boxes = _data(1)
    f = jax.jit(lambda a, b: ra.roi_align(a, b, spatial_scale=0.25, output_size=7))
    np.testing.assert_allclose(np.asarray(f(feats, boxes)),
                               _ref_roi_align(feats, boxes, 0.25, 7, 7, 2, False), atol=2e-5)


def test_roi_align_backward_is_the_transpose():
    """<roi_align(F), G> == <F, vjp(G)> (the custom VJP is the forward's adjoint), and the boxes
    get no gradient."""
    feats, boxes = _data(2)
    rng = np.random.RandomState(3)
    f = _jit_roi_align(0.25, (3, 5), 2, False)
    out, vjp = jax.vjp(f, jnp.asarray(feats), jnp.asarray(boxes))
    g = rng.randn(*out.shape).astype(np.float32)
    d_feats, d_boxes = vjp(jnp.asarray(g))
    np.testing.assert_allclose(float(jnp.vdot(out, g)), float(jnp.vdot(feats, d_feats)),
                               rtol=1e-5)
    assert not np.any(np.asarray(d_boxes))


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is None,
                    reason="torchvision not installed")
def test_roi_align_matches_torchvision(tmp_path):
    feats, boxes = _data(4)
    rng = np.random.RandomState(5)
    arrays = {"features": feats, "boxes": boxes}
    for c, (oh, ow, scale, sr, aligned) in enumerate(CASES):
        arrays[f"config_{c}"] = np.array([oh, ow, scale, sr, aligned], np.float64)
        arrays[f"cot_{c}"] = rng.randn(*boxes.shape[:2], oh, ow, feats.shape[-1]).astype(np.float32)
    np.savez(tmp_path / "in.npz", **arrays)
    proc = run_python(["tests/_torchvision_roi_align.py", str(tmp_path / "in.npz"),
                       str(tmp_path / "out.npz")], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = np.load(tmp_path / "out.npz")

    @jax.jit
    def ours(feats, cots):   # every case in one program: one compilation
        res = []
        for (oh, ow, scale, sr, aligned), cot in zip(CASES, cots):
            f = functools.partial(ra.roi_align, boxes=boxes, spatial_scale=scale,
                                  output_size=(oh, ow), sampling_ratio=sr, aligned=aligned)
            out, vjp = jax.vjp(f, feats)
            res.append((out, vjp(cot)[0]))
        return res

    res = ours(feats, [arrays[f"cot_{c}"] for c in range(len(CASES))])
    for c, (out, grad) in enumerate(res):
        np.testing.assert_allclose(np.asarray(out), ref[f"out_{c}"], atol=2e-5, rtol=1e-5,
                                   err_msg=f"forward {CASES[c]}")
        np.testing.assert_allclose(np.asarray(grad), ref[f"grad_{c}"], atol=2e-5, rtol=1e-5,
                                   err_msg=f"backward {CASES[c]}")


# ---------------------------------------------------------------- FPN levels
def test_fpn_level():
    def sq(s, y=10.0, x=20.0):
        return [y, x, y + s, x + s]
    boxes = np.array([sq(224), sq(112), sq(448), sq(2), sq(5000), [5, 5, 5, 5], [9, 9, 3, 3],
                      [0, 0, 112, 448], sq(223.9), sq(111.9)], np.float32)
    want = [4, 3, 5, 2, 5, 2, 2, 4, 3, 2]
    f = jax.jit(ra.fpn_level, static_argnums=(1, 2))
    np.testing.assert_array_equal(np.asarray(f(boxes, 2, 5)), want)
    got = f(jnp.asarray(boxes).reshape(2, 5, 4), 2, 5)
    assert got.dtype == jnp.int32 and got.shape == (2, 5)
    np.testing.assert_array_equal(np.asarray(got).ravel(), want)
    np.testing.assert_array_equal(np.asarray(f(boxes[:3], 3, 4)), [4, 3, 4])


# ---------------------------------------------------------------- multi-level pooling
def test_multilevel_roi_align_uses_each_boxs_level():
    rng = np.random.RandomState(6)
    img, levels = 256, range(2, 6)
    feats = {l: jnp.asarray(rng.randn(2, img >> l, (img + 64) >> l, 4).astype(np.float32))
             for l in levels}
    sizes = np.exp(rng.uniform(np.log(3), np.log(800), (2, 40, 2)))
    yx = rng.uniform(-30, img, (2, 40, 2))
    boxes = jnp.asarray(np.concatenate([yx, yx + sizes], -1).astype(np.float32))
    lvl = np.asarray(ra.fpn_level(boxes, 2, 5))
    assert set(np.unique(lvl)) == set(levels)
    size = (3, 4)
    got = jax.jit(lambda f, b: ra.multilevel_roi_align(f, b, output_size=size))(feats, boxes)
    per_level = {l: np.asarray(_jit_roi_align(2.0 ** -l, size, 2, False)(feats[l], boxes))
                 for l in levels}
    want = np.choose(lvl[..., None, None, None] - 2, [per_level[l] for l in levels])
    # float32 sample positions (jit vs jit rounding) move values by up to ~2e-5
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4)
    # the backward is the forward's adjoint, level by level: <ML(F), G> == sum_l <F_l, dF_l>
    cot = jnp.asarray(rng.randn(*got.shape).astype(np.float32))
    g = jax.jit(jax.grad(lambda f: jnp.vdot(ra.multilevel_roi_align(f, boxes, output_size=size),
                                            cot)))(feats)
    lhs = float(jnp.vdot(got, cot))
    np.testing.assert_allclose(sum(float(jnp.vdot(feats[l], g[l])) for l in levels), lhs,
                               rtol=1e-5)
    for l in levels:   # and each level's share is that level's own
        share = float(jnp.vdot(jnp.asarray(per_level[l]) * (lvl == l)[..., None, None, None], cot))
        np.testing.assert_allclose(float(jnp.vdot(feats[l], g[l])), share, rtol=1e-4, atol=1e-3)


def test_multilevel_roi_align_bfloat16():
    rng = np.random.RandomState(7)
    feats = {l: jnp.asarray(rng.randn(1, 64 >> l, 64 >> l, 8), jnp.bfloat16) for l in (2, 3)}
    boxes = jnp.asarray([[[3, 4, 20, 30], [0, 0, 60, 50]]], jnp.float32)
    f = jax.jit(functools.partial(ra.multilevel_roi_align, output_size=4))
    got = f(feats, boxes)
    assert got.dtype == jnp.bfloat16
    want = f({l: v.astype(jnp.float32) for l, v in feats.items()}, boxes)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want), atol=0.05)


# ---------------------------------------------------------------- mask targets
IMG_H, IMG_W = 120, 160


def _polygon_mask(cy, cx, radius, n, seed):
    """An irregular (star-like, non-convex) polygon rasterised by pycocotools."""
    rng = np.random.RandomState(seed)
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    rad = radius * rng.uniform(0.35, 1.0, n)
    xy = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], -1).ravel().tolist()
    rle = mask_util.merge(mask_util.frPyObjects([xy], IMG_H, IMG_W))
    return mask_util.decode(rle).astype(np.uint8)


def _tight_box(m):
    ys, xs = np.nonzero(m)
    return np.array([ys.min(), xs.min(), ys.max() + 1, xs.max() + 1], np.float64)


def _rois(g):
    h, w = g[2] - g[0], g[3] - g[1]
    return np.array([
        g,                                                   # the GT box itself
        g + [5, -7, 5, -7],                                  # shifted
        g + [-0.2 * h, -0.15 * w, 0.1 * h, 0.25 * w],        # larger
        g + [0.15 * h, 0.2 * w, -0.15 * h, -0.1 * w],        # smaller
        g + [0.5 * h, 0.4 * w, 0.5 * h, 0.4 * w],            # partly outside the GT box
        [g[0] - 30, g[1] - 50, g[0] + 0.5 * h, g[1] + 0.5 * w],  # partly outside the image
        g + [0.3, 0.7, -0.4, 0.2],                           # sub-pixel offsets
        [g[2] + 1, g[3] + 1, g[2] + 20, g[3] + 30],          # disjoint from the GT box
    ])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # pycocotools' decode on numpy 2
@pytest.mark.parametrize("stored", ["float", "uint8"])
def test_mask_targets_match_cropping_the_full_mask(stored):
    """Targets resampled from the stored 112x112 crops against ``crop_masks(full, roi, 28) >= .5``
    on the full pycocotools masks. Measured: >= 99.74% of pixels agree for every RoI (at most 2 of
    784 differ), and the RoI equal to its GT box differs in 0 to 2 pixels per mask, always ones
    whose direct value is within 0.05 of the threshold: the 28 cell centres fall midway between
    two of the 112 crop centres, and bilinear of bilinear is not bilinear (for boxes over 112
    pixels the crop also subsamples), so no exact equality is possible short of storing full
    masks."""
    b, m, r, out = 2, 3, 112, 28
    gt_masks = np.zeros((b, m, r, r), np.float32)
    gt_boxes = np.zeros((b, m, 4), np.float32)
    full = {}
    seed = 0
    for i in range(b):
        for j in range(m - 1):               # the last slot is padding
            full[i, j] = _polygon_mask(55 + 5 * j, 70 + 10 * i, 40 + 4 * j, 9 + 2 * j, seed)
            seed += 1
            g = _tight_box(full[i, j])
            gt_boxes[i, j] = g
            gt_masks[i, j] = crop_masks(full[i, j], g, r)
    if stored == "uint8":
        gt_masks = np.round(gt_masks * 255).astype(np.uint8)
    rois, matched, direct = [], [], []
    for i in range(b):
        ri, mi, di = [], [], []
        for j in (1, 0):                     # RoIs not in GT order
            rj = _rois(gt_boxes[i, j].astype(np.float64))
            ri.append(rj)
            mi += [j] * len(rj)
            di.append(crop_masks(full[i, j], rj, out))
        rois.append(np.concatenate(ri))
        matched.append(mi)
        direct.append(np.concatenate(di))
    rois = np.stack(rois).astype(np.float32)
    direct = np.stack(direct)                # [B, S, 28, 28] soft
    got = jax.jit(ra.mask_targets, static_argnums=4)(
        jnp.asarray(gt_masks), jnp.asarray(gt_boxes), jnp.asarray(rois),
        jnp.asarray(np.array(matched, np.int32)), out)
    got = np.asarray(got)
    assert got.shape == direct.shape and got.dtype == np.float32
    assert set(np.unique(got)) <= {0.0, 1.0}
    want = (direct >= 0.5).astype(np.float32)
    agree = (got == want).mean(axis=(2, 3))
    assert agree.min() >= 0.995, agree
    n = len(_rois(gt_boxes[0, 0]))
    for i in range(b):
        for s in (0, n):                     # each RoI that equals its GT box
            diff = got[i, s] != want[i, s]
            assert diff.sum() <= 2, diff.sum()
            assert np.all(np.abs(direct[i, s][diff] - 0.5) < 0.05)
        np.testing.assert_array_equal(got[i, n - 1], 0)       # disjoint RoIs: empty
        np.testing.assert_array_equal(got[i, 2 * n - 1], 0)


def test_mask_targets_all_ones_fills_the_overlap():
    """An all-ones crop: the target is 1 exactly on the cells whose centres lie inside the GT box
    (the bilinear edge ramp reaches 0.5 at the box edge itself)."""
    gt = np.array([[[10.0, 20.0, 50.0, 60.0]]], np.float32)
    roi = np.array([[[0.0, 0.0, 28.0, 56.0]]], np.float32)   # cell centres y = i + .5, x = 2j + 1
    f = jax.jit(ra.mask_targets, static_argnums=4)
    got = np.asarray(f(jnp.ones((1, 1, 16, 16)), gt, roi, jnp.zeros((1, 1), jnp.int32), 28))[0, 0]
    # a background RoI's matched_gt of -1 is clipped to a valid GT (the loss masks it out)
    np.testing.assert_array_equal(
        np.asarray(f(jnp.ones((1, 1, 16, 16)), gt, roi, -jnp.ones((1, 1), jnp.int32), 28))[0, 0],
        got)
    yc, xc = np.arange(28) + 0.5, 2 * np.arange(28) + 1.0
    want = ((yc >= 10) & (yc <= 50))[:, None] & ((xc >= 20) & (xc <= 60))[None, :]
    np.testing.assert_array_equal(got, want.astype(np.float32))


# ---------------------------------------------------------------- mask loss
def test_mask_loss_matches_numpy_bce():
    rng = np.random.RandomState(8)
    b, s, out, c = 2, 5, 4, 6
    logits = (rng.randn(b, s, out, out, c) * 3).astype(np.float32)
    classes = rng.randint(0, c, (b, s)).astype(np.int32)
    targets = (rng.rand(b, s, out, out) > 0.5).astype(np.float32)
    positive = rng.rand(b, s) > 0.4
    positive[0, 0] = True
    x = np.take_along_axis(logits, classes[:, :, None, None, None], axis=-1)[..., 0]
    x = x.astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-x))
    bce = -(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    want = bce[positive].mean()
    got = jax.jit(ra.mask_loss)(logits, classes, targets, positive)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    none = jax.jit(ra.mask_loss)(logits, classes, targets, np.zeros((b, s), bool))
    assert float(none) == 0.0
    g = jax.jit(jax.grad(ra.mask_loss))(logits, classes, targets, np.zeros((b, s), bool))
    assert np.all(np.asarray(g) == 0)
