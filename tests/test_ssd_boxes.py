"""SSD boxes: default boxes (counts, hand-computed coordinates, the reference's loop order), box
coding, matching, the loss with hard-negative mining and post-processing with NMS, each against an
oracle written here: plain numpy loops that transcribe the rules of the MLPerf reference
(mlcommons/training single_stage_detector/ssd/utils.py DefaultBoxes / Encoder and base_model.py
Loss; the TF object detection anchor generator for SSD-MobileNet), or numbers worked out by hand."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlperf_jax.models import ssd_boxes as sb

# A small SSD for the brute-force oracles: 8*8*4 + 4*4*6 + 2*2*6 + 1*4 = 380 boxes.
TINY = sb.BoxSpec(64, (8, 4, 2, 1), (8, 16, 32, 64), (6, 14, 26, 40, 60),
                  ((2,), (2, 3), (2, 3), (2,)))


# ------------------------------------------------------------------------------------------------
# Oracles.

def ref_default_boxes(image_size, feat_size, steps, scales, aspect_ratios, int_fk=False):
    """The reference DefaultBoxes loops, transcribed: (cx, cy, w, h) in loop order, clamped, then
    re-ordered to [cy, cx, h, w]. ``int_fk``: the inference SSD-R34 variant (fk = size // step)."""
    out = []
    for idx, sfeat in enumerate(feat_size):
        fk = image_size // steps[idx] if int_fk else image_size / steps[idx]
        sk1 = scales[idx] / image_size
        sk2 = scales[idx + 1] / image_size
        sk3 = math.sqrt(sk1 * sk2)
        all_sizes = [(sk1, sk1), (sk3, sk3)]
        for alpha in aspect_ratios[idx]:
            w, h = sk1 * math.sqrt(alpha), sk1 / math.sqrt(alpha)
            all_sizes.append((w, h))
            all_sizes.append((h, w))
        for w, h in all_sizes:
            for i, j in itertools.product(range(sfeat), repeat=2):
                cx, cy = (j + 0.5) / fk, (i + 0.5) / fk
                out.append((cx, cy, w, h))
    b = np.clip(np.array(out, np.float32), 0, 1)
    return b[:, [1, 0, 3, 2]]


def iou_scalar(a, b):
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def to_corners(a):
    cy, cx, h, w = a
    return (cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2)


def encode_scalar(g, a, v=(0.1, 0.2)):
    gcy, gcx = (g[0] + g[2]) / 2, (g[1] + g[3]) / 2
    gh, gw = g[2] - g[0], g[3] - g[1]
    return ((gcy - a[0]) / a[2] / v[0], (gcx - a[1]) / a[3] / v[0],
            math.log(gh / a[2]) / v[1], math.log(gw / a[3]) / v[1])


def ref_match_one(gt_boxes, gt_labels, num_gt, anchors, criteria=0.5):
    """Encoder.encode for one image, as loops, over the first num_gt boxes."""
    gts = [tuple(map(float, g)) for g in gt_boxes[:num_gt]]
    anc = [tuple(map(float, a)) for a in anchors]
    corners = [to_corners(a) for a in anc]
    n = len(anc)
    ious = [[iou_scalar(g, c) for c in corners] for g in gts]
    best_iou = [-1.0] * n
    best_gt = [0] * n
    for k in range(n):
        for m in range(len(gts)):
            if ious[m][k] > best_iou[k]:
                best_iou[k], best_gt[k] = ious[m][k], m
    for m in range(len(gts)):           # in order: a later GT overwrites an earlier one
        best_a = max(range(n), key=lambda k: (ious[m][k], -k))   # first maximum
        best_iou[best_a] = 2.0
        best_gt[best_a] = m
    labels = np.zeros(n, np.int64)
    loc = np.zeros((n, 4))
    for k in range(n):
        if best_iou[k] > criteria:
            labels[k] = gt_labels[best_gt[k]]
            loc[k] = encode_scalar(gts[best_gt[k]], anc[k])
    return loc, labels


def ref_loss(loc, logits, loc_t, labels, ratio=3):
    """base_model.Loss as loops, per image."""
    total = []
    for b in range(loc.shape[0]):
        pos = [k for k in range(labels.shape[1]) if labels[b, k] > 0]
        neg = [k for k in range(labels.shape[1]) if labels[b, k] == 0]
        sl1 = 0.0
        for k in pos:
            for c in range(4):
                d = abs(float(loc[b, k, c]) - float(loc_t[b, k, c]))
                sl1 += 0.5 * d * d if d < 1 else d - 0.5
        x = logits[b].astype(np.float64)
        lse = np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1)) + x.max(-1)
        ce = lse - x[np.arange(x.shape[0]), labels[b]]
        hard = sorted(neg, key=lambda k: -ce[k])[:min(ratio * len(pos), labels.shape[1])]
        closs = sum(ce[k] for k in pos) + sum(ce[k] for k in hard)
        total.append((sl1 + closs) / len(pos) if pos else 0.0)
    return float(np.mean(total))


def ref_postprocess(boxes, probs, score_thr, top_k, nms_thr, max_det, first):
    """Encoder.decode_single as loops: per class threshold, top-k, greedy NMS keeping IoU < thr,
    then the overall top max_det (here in descending order). Returns [(class, score, box)]."""
    dets = []
    for c in range(first, probs.shape[1]):
        cand = [k for k in range(probs.shape[0]) if probs[k, c] > score_thr]
        cand = sorted(cand, key=lambda k: -probs[k, c])[:top_k]
        while cand:
            i = cand[0]
            dets.append((c, float(probs[i, c]), boxes[i]))
            cand = [k for k in cand[1:] if iou_scalar(boxes[i], boxes[k]) < nms_thr]
    dets.sort(key=lambda d: -d[1])
    return dets[:max_det]


def random_corners(rng, shape, lo=0.03, hi=0.6):
    c = rng.uniform(0.05, 0.95, shape + (2,))
    s = rng.uniform(lo, hi, shape + (2,))
    return np.concatenate([c - s / 2, c + s / 2], -1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Default boxes.

def test_box_counts():
    assert sb.SSD300.boxes_per_location == (4, 6, 6, 6, 4, 4)
    assert sb.default_boxes(sb.SSD300).shape == (8732, 4)
    assert sb.default_boxes(sb.SSD1200).shape == (15130, 4)
    anchors, order = sb.ssd_mobilenet_boxes()
    assert anchors.shape == (1917, 4) and anchors.dtype == np.float32 and order == "hwk"
    assert sb.FLATTEN_ORDER == "khw"
    assert sum(k * f * f for k, f in zip(sb.MOBILENET_BOXES_PER_LOCATION,
                                         sb.MOBILENET_FEATURE_SIZES)) == 1917


def test_ssd300_hand_coordinates():
    b = sb.default_boxes(sb.SSD300)
    assert b.dtype == np.float32 and b.min() >= 0 and b.max() <= 1
    # Level starts: 38*38*4 = 5776, +19*19*6 = 7942, +600 = 8542, +150 = 8692, +36 = 8728.
    starts = [0, 5776, 7942, 8542, 8692, 8728]
    for s, step, scale in zip(starts, (8, 16, 32, 64, 100, 300), (21, 45, 99, 153, 207, 261)):
        c = 0.5 * step / 300          # (0 + 0.5) / (300 / step)
        np.testing.assert_allclose(b[s], [c, c, scale / 300, scale / 300], rtol=1e-6)
    # Level 0: centre 0.5/37.5; sizes 21/300 = 0.07, sqrt(21*45)/300, then ratio 2 wide and tall.
    c0 = 0.5 / 37.5
    np.testing.assert_allclose(b[1444], [c0, c0, math.sqrt(945) / 300, math.sqrt(945) / 300],
                               rtol=1e-6)
    np.testing.assert_allclose(b[2 * 1444], [c0, c0, 0.07 / math.sqrt(2), 0.07 * math.sqrt(2)],
                               rtol=1e-6)   # reference (w, h) = (sk*sqrt2, sk/sqrt2)
    np.testing.assert_allclose(b[3 * 1444], [c0, c0, 0.07 * math.sqrt(2), 0.07 / math.sqrt(2)],
                               rtol=1e-6)
    # Row-major within a kind: box 2*38 + 5 is row i=2, column j=5.
    np.testing.assert_allclose(b[2 * 38 + 5], [2.5 / 37.5, 5.5 / 37.5, 0.07, 0.07], rtol=1e-6)
    np.testing.assert_allclose(b[1443], [1.0, 1.0, 0.07, 0.07], rtol=1e-6)   # 37.5 / 37.5
    # Level 1, kind 4 (ratio 3 wide) at row 0, column 1: 7942 - 2166 + 4*361 + 1.
    np.testing.assert_allclose(b[5776 + 4 * 361 + 1],
                               [0.5 / 18.75, 1.5 / 18.75, 0.15 / math.sqrt(3), 0.15 * math.sqrt(3)],
                               rtol=1e-6)
    # Clipping: the 1x1 level's ratio-2 boxes are 0.87*sqrt(2) = 1.23 wide -> 1.0.
    s3 = math.sqrt(261 * 315) / 300
    np.testing.assert_allclose(b[8729], [0.5, 0.5, s3, s3], rtol=1e-6)
    np.testing.assert_allclose(b[8730], [0.5, 0.5, 0.87 / math.sqrt(2), 1.0], rtol=1e-6)
    np.testing.assert_allclose(b[8731], [0.5, 0.5, 1.0, 0.87 / math.sqrt(2)], rtol=1e-6)


def test_default_boxes_match_reference_loops():
    s = sb.SSD300
    np.testing.assert_allclose(
        sb.default_boxes(s),
        ref_default_boxes(300, s.feature_sizes, s.steps, s.scales, s.aspect_ratios), atol=1e-7)
    # Inference SSD-R34 (ssd_r34.py dboxes_R34_coco): int steps, int(s*1200/300), fk = 1200//step.
    fs = [50, 25, 13, 7, 3, 3]
    steps = [int(1200 / f) for f in fs]
    scales = [int(x * 1200 / 300) for x in [21, 45, 99, 153, 207, 261, 315]]
    assert steps == [24, 48, 92, 171, 400, 400] and tuple(scales) == sb.SSD1200.scales
    np.testing.assert_allclose(
        sb.default_boxes(sb.SSD1200),
        ref_default_boxes(1200, fs, steps, scales, sb.SSD1200.aspect_ratios, int_fk=True),
        atol=1e-6)
    np.testing.assert_allclose(
        sb.default_boxes(TINY),
        ref_default_boxes(64, TINY.feature_sizes, TINY.steps, TINY.scales, TINY.aspect_ratios),
        atol=1e-7)


def test_mobilenet_hand_coordinates():
    a, _ = sb.ssd_mobilenet_boxes()
    c = 0.5 / 19
    r2 = math.sqrt(2)
    # Layer 0 (19x19, reduced): (0.1, 1), (0.2, 2), (0.2, 0.5); h = s/sqrt(r), w = s*sqrt(r).
    np.testing.assert_allclose(a[0], [c, c, 0.1, 0.1], rtol=1e-6)
    np.testing.assert_allclose(a[1], [c, c, 0.2 / r2, 0.2 * r2], rtol=1e-6)
    np.testing.assert_allclose(a[2], [c, c, 0.2 * r2, 0.2 / r2], rtol=1e-6)
    np.testing.assert_allclose(a[3], [c, 1.5 / 19, 0.1, 0.1], rtol=1e-6)       # k fastest, then x
    np.testing.assert_allclose(a[3 * 19], [1.5 / 19, c, 0.1, 0.1], rtol=1e-6)  # then y
    # Layer 1 (10x10) starts at 19*19*3 = 1083: scale 0.35, ratios 1, 2, .5, 3, .3333, interp.
    np.testing.assert_allclose(a[1083], [0.05, 0.05, 0.35, 0.35], rtol=1e-6)
    np.testing.assert_allclose(a[1086], [0.05, 0.05, 0.35 / math.sqrt(3), 0.35 * math.sqrt(3)],
                               rtol=1e-6)
    np.testing.assert_allclose(a[1087], [0.05, 0.05, 0.35 / math.sqrt(0.3333),
                                         0.35 * math.sqrt(0.3333)], rtol=1e-6)
    np.testing.assert_allclose(a[1088], [0.05, 0.05, math.sqrt(0.35 * 0.5),
                                         math.sqrt(0.35 * 0.5)], rtol=1e-6)
    # Last layer (1x1, scale 0.95; interpolated with 1.0), not clipped.
    np.testing.assert_allclose(a[1911], [0.5, 0.5, 0.95, 0.95], rtol=1e-6)
    np.testing.assert_allclose(a[1916], [0.5, 0.5, math.sqrt(0.95), math.sqrt(0.95)], rtol=1e-6)
    assert a[1, 3] > 0 and a[1, 1] - a[1, 3] / 2 < 0    # reaches past the border: no clipping


# ------------------------------------------------------------------------------------------------
# Geometry and coding.

def test_iou_hand():
    a = jnp.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.2, 0.2, 0.2, 0.2]])
    b = jnp.array([[0.5, 0.5, 1.5, 1.5], [2.0, 2.0, 3.0, 3.0], [0.2, 0.2, 0.2, 0.2]])
    np.testing.assert_allclose(jax.jit(sb.iou)(a, b), [0.25 / 1.75, 0.0, 0.0], rtol=1e-6)


def test_encode_hand_and_round_trip():
    anchor = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    gt = np.array([[0.42, 0.3, 0.62, 0.7],       # centre moved 0.02 down: ty = .02/.2/.1 = 1
                   [0.3, 0.1, 0.7, 0.9]],        # twice the size: th = tw = log 2 / 0.2
                  np.float32)[:, None, :]
    t = np.asarray(jax.jit(sb.encode)(gt, anchor))
    np.testing.assert_allclose(t[0, 0], [1.0, 0.0, 0.0, 0.0], atol=1e-5)
    np.testing.assert_allclose(t[1, 0], [0, 0, math.log(2) / 0.2, math.log(2) / 0.2], atol=1e-5)

    anchors = sb.default_boxes(sb.SSD300)
    rng = np.random.default_rng(0)
    g = random_corners(rng, (2, anchors.shape[0]), lo=0.01, hi=0.9)
    enc = jax.jit(sb.encode)(g, anchors)
    assert enc.shape == (2, 8732, 4)
    np.testing.assert_allclose(jax.jit(sb.decode)(enc, anchors), g, atol=2e-6)
    # The anchors themselves encode to zeros.
    np.testing.assert_allclose(jax.jit(sb.encode)(sb.cychw_to_corners(anchors), anchors), 0,
                               atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Matching.

def unambiguous_gt(rng, anchors, shape, margin=1e-4):
    """Random GT boxes whose best anchor is unique and whose IoUs stay clear of 0.5 by ``margin``.
    (All ratio boxes at a location have the same area sk^2, so a small GT inside several of them
    ties exactly; both the reference and this code then pick by float rounding.)"""
    corners = [to_corners(a) for a in anchors.astype(np.float64)]
    out = np.zeros(shape + (4,), np.float32)
    for idx in np.ndindex(*shape):
        while True:
            g = random_corners(rng, ())
            ious = np.sort([iou_scalar(g, c) for c in corners])
            if ious[-1] - ious[-2] > margin and np.all(np.abs(ious - 0.5) > margin):
                out[idx] = g
                break
    return out


def test_match_against_reference_loops():
    anchors = sb.default_boxes(TINY)
    rng = np.random.default_rng(1)
    B, M = 4, 8
    gt = unambiguous_gt(rng, anchors, (B, M))
    labels = rng.integers(1, 10, (B, M)).astype(np.int32)
    num_gt = np.array([8, 3, 0, 5], np.int32)
    # Padding rows carry garbage that would match strongly if it were not ignored.
    gt[1, 3] = sb.cychw_to_corners(anchors[0])
    labels[1, 3:] = 99
    loc, lab = jax.jit(sb.match)(gt, labels, num_gt, anchors)
    assert loc.shape == (B, 380, 4) and lab.shape == (B, 380) and lab.dtype == jnp.int32
    for b in range(B):
        rloc, rlab = ref_match_one(gt[b], labels[b], num_gt[b], anchors)
        np.testing.assert_array_equal(np.asarray(lab[b]), rlab)
        np.testing.assert_allclose(np.asarray(loc[b]), rloc, atol=1e-4)
    assert int((lab[2] > 0).sum()) == 0 and not np.any(np.asarray(lab) == 99)
    assert int((lab[0] > 0).sum()) >= 8          # every GT gets at least its forced anchor


def test_match_force_and_later_gt_wins():
    anchors = sb.default_boxes(TINY)
    corners = np.asarray(sb.cychw_to_corners(anchors))
    y = 3 * 8 + 3                  # level 0, kind 0 (sk1 square), row 3, column 3
    x = 64 + y                     # the sk3 square at the same location (kind 1)
    cy, cx = anchors[y, :2]
    gt = np.zeros((1, 4, 4), np.float32)
    gt[0, 0] = corners[x]                                     # A: exactly anchor X
    # B: tiny, inside Y near its corner, outside Y's same-area ratio boxes: best anchor Y.
    gt[0, 1] = [cy - 0.045, cx - 0.045, cy - 0.035, cx - 0.035]
    # C and D share a best anchor Z (level 0, row 6, column 1): D comes later and must win it.
    z = 6 * 8 + 1
    gt[0, 2] = corners[z] + np.array([0.004, 0, 0.004, 0], np.float32)
    gt[0, 3] = corners[z] + np.array([0, 0.006, 0, 0.006], np.float32)
    labels = np.array([[1, 2, 3, 4]], np.int32)

    ious = np.array([[iou_scalar(g, c) for c in corners] for g in gt[0]])
    assert ious[1].argmax() == y and ious[0, y] > ious[1, y] and ious[0, y] < 0.5
    assert ious[2].argmax() == z and ious[3].argmax() == z

    loc, lab = jax.jit(sb.match)(gt, labels, np.array([4]), anchors)
    lab = np.asarray(lab[0])
    assert lab[x] == 1
    assert lab[y] == 2             # forced to B although A overlaps Y more
    assert lab[z] == 4             # the later of C and D
    np.testing.assert_allclose(np.asarray(loc[0, y]), encode_scalar(gt[0, 1], anchors[y]),
                               atol=1e-4)
    rloc, rlab = ref_match_one(gt[0], labels[0], 4, anchors)
    np.testing.assert_array_equal(lab, rlab)
    np.testing.assert_allclose(np.asarray(loc[0]), rloc, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# Loss.

def _loss_case(rng, B, N, C, pos_frac, num_levels=None):
    loc = rng.normal(size=(B, N, 4)).astype(np.float32) * 1.5
    loc_t = rng.normal(size=(B, N, 4)).astype(np.float32)
    logits = rng.normal(size=(B, N, C)).astype(np.float32) * 2
    if num_levels:   # few distinct logit rows: many exact CE ties among negatives
        logits = np.round(logits * num_levels) / num_levels
    labels = np.where(rng.random((B, N)) < pos_frac, rng.integers(1, C, (B, N)), 0)
    return loc, logits, loc_t, labels.astype(np.int32)


@pytest.mark.parametrize("mining", ["bisect", "sort"])
def test_loss_against_reference_loops(mining):
    rng = np.random.default_rng(2)
    fn = jax.jit(lambda *a: sb.ssd_loss(*a, mining=mining))
    loc, logits, loc_t, labels = _loss_case(rng, 5, 300, 6, 0.03)
    labels[1] = 0                                 # an image with no positive contributes 0
    labels[2, :] = 0
    labels[2, :100] = 1                           # 3 * 100 > 200 negatives: all are taken
    loss, metrics = fn(loc, logits, loc_t, labels)
    np.testing.assert_allclose(float(loss), ref_loss(loc, logits, loc_t, labels), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loc_loss"]) + float(metrics["cls_loss"]),
                               float(loss), rtol=1e-5)
    npos = (labels > 0).sum(1)
    assert float(metrics["num_pos"]) == pytest.approx(npos.mean())
    nneg = np.minimum(3 * npos, (labels == 0).sum(1))
    assert float(metrics["num_neg"]) == pytest.approx(nneg.mean())
    # Only the batch mean changes when the zero-positive image is dropped.
    keep = [0, 2, 3, 4]
    loss4, _ = fn(loc[keep], logits[keep], loc_t[keep], labels[keep])
    np.testing.assert_allclose(float(loss) * 5 / 4, float(loss4), rtol=1e-5)


@pytest.mark.parametrize("mining", ["bisect", "sort"])
def test_loss_ties_and_full_size(mining):
    rng = np.random.default_rng(3)
    loc, logits, loc_t, labels = _loss_case(rng, 3, 400, 4, 0.05, num_levels=1)
    loss, _ = jax.jit(lambda *a: sb.ssd_loss(*a, mining=mining))(loc, logits, loc_t, labels)
    np.testing.assert_allclose(float(loss), ref_loss(loc, logits, loc_t, labels), rtol=1e-5)
    # SSD300 size, 2 images, vectorised oracle for the hard-negative sum.
    loc, logits, loc_t, labels = _loss_case(rng, 2, 8732, 81, 0.004)
    loss, m = jax.jit(lambda *a: sb.ssd_loss(*a, mining=mining))(loc, logits, loc_t, labels)
    np.testing.assert_allclose(float(loss), ref_loss(loc, logits, loc_t, labels), rtol=1e-5)


def test_loss_all_background_batch_and_grad():
    rng = np.random.default_rng(4)
    loc, logits, loc_t, labels = _loss_case(rng, 2, 50, 3, 0.0)
    labels[:] = 0
    loss, m = jax.jit(sb.ssd_loss)(loc, logits, loc_t, labels)
    assert float(loss) == 0.0 and float(m["num_neg"]) == 0.0
    labels[0, 3] = 2
    g = jax.jit(jax.grad(lambda l, c: sb.ssd_loss(l, c, loc_t, labels)[0], argnums=(0, 1)))(
        loc, logits)
    assert all(np.isfinite(np.asarray(x)).all() for x in g)
    # Gradient reaches the positive's box and the 3 hard negatives' logits only.
    assert np.count_nonzero(np.abs(np.asarray(g[0])).sum(-1)) == 1
    assert np.count_nonzero(np.abs(np.asarray(g[1])).sum(-1)) == 4


# ------------------------------------------------------------------------------------------------
# Post-processing.

@pytest.mark.parametrize("cfg", [
    dict(C=5, score_threshold=0.05, per_class_top_k=200, nms_iou=0.5, max_detections=200,
         sigmoid=False, background=True),
    dict(C=4, score_threshold=0.1, per_class_top_k=20, nms_iou=0.45, max_detections=30,
         sigmoid=False, background=True),
    dict(C=4, score_threshold=0.3, per_class_top_k=100, nms_iou=0.6, max_detections=100,
         sigmoid=True, background=True),
    dict(C=2, score_threshold=0.6, per_class_top_k=200, nms_iou=0.5, max_detections=300,
         sigmoid=False, background=False),
])
def test_postprocess_against_greedy_nms(cfg):
    cfg = dict(cfg)
    C = cfg.pop("C")
    anchors = sb.default_boxes(TINY)
    rng = np.random.default_rng(5)
    B, N = 2, anchors.shape[0]
    loc = (rng.normal(size=(B, N, 4)) * 0.7).astype(np.float32)
    logits = (rng.normal(size=(B, N, C)) * 2).astype(np.float32)
    out = jax.jit(lambda l, c: sb.postprocess(l, c, anchors, **cfg))(loc, logits)
    K = cfg["max_detections"]
    assert out["boxes"].shape == (B, K, 4) and out["scores"].shape == (B, K)
    assert out["classes"].dtype == jnp.int32 and out["valid"].dtype == jnp.bool_
    boxes = np.asarray(jax.jit(sb.decode)(loc, anchors), np.float64)
    x = logits.astype(np.float64)
    if cfg["sigmoid"]:
        probs = 1 / (1 + np.exp(-x))
    else:
        probs = np.exp(x - x.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
    first = 1 if cfg["background"] else 0
    total = 0
    for b in range(B):
        ref = ref_postprocess(boxes[b], probs[b], cfg["score_threshold"], cfg["per_class_top_k"],
                              cfg["nms_iou"], K, first)
        n = int(out["valid"][b].sum())
        total += n
        assert n == len(ref)
        assert np.all(np.asarray(out["valid"][b, :n]))        # valid rows come first
        np.testing.assert_array_equal(np.asarray(out["classes"][b, :n]), [d[0] for d in ref])
        np.testing.assert_allclose(np.asarray(out["scores"][b, :n]), [d[1] for d in ref],
                                   rtol=1e-5)
        np.testing.assert_allclose(np.asarray(out["boxes"][b, :n]),
                                   np.clip([d[2] for d in ref], 0, 1), atol=1e-6)
        assert np.all(np.asarray(out["scores"][b, n:]) == 0)
        assert np.all(np.asarray(out["classes"][b, n:]) == 0)
    assert 0 < total    # the case exercises something
    if cfg["max_detections"] == 200:
        assert total == 2 * 200   # truncated by max_detections


def test_postprocess_nms_hand():
    # Three boxes of one class on one anchor [0.4, 0.4, 0.6, 0.6]. Box 1 is shifted 0.05 in x
    # (tx = 0.05 / 0.2 / 0.1 = 2.5): overlap 0.2 x 0.15 = 0.03, union 0.05, IoU 0.6 with box 0,
    # suppressed at 0.5. Box 2 is shifted 0.12 in y (ty = 6): IoU 0.016 / 0.064 = 0.25, kept.
    anchors = np.array([[0.5, 0.5, 0.2, 0.2]] * 3, np.float32)
    loc = np.zeros((1, 3, 4), np.float32)
    loc[0, 1, 1] = 2.5
    loc[0, 2, 0] = 6.0
    logits = np.log(np.array([[[0.1, 0.9], [0.2, 0.8], [0.3, 0.7]]], np.float32))
    out = jax.jit(lambda l, c: sb.postprocess(l, c, anchors, max_detections=4))(loc, logits)
    assert np.asarray(out["valid"][0]).tolist() == [True, True, False, False]
    np.testing.assert_allclose(np.asarray(out["scores"][0, :2]), [0.9, 0.7], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out["boxes"][0, 1]), [0.52, 0.4, 0.72, 0.6], atol=1e-6)
    out = jax.jit(lambda l, c: sb.postprocess(l, c, anchors, max_detections=4, nms_iou=0.61))(
        loc, logits)
    assert int(out["valid"][0].sum()) == 3
