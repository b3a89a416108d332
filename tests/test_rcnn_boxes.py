"""Mask R-CNN box machinery (models/rcnn_boxes.py, models/rcnn_proposals.py) against oracles written
here as plain numpy loops that transcribe maskrcnn-benchmark's rules (AnchorGenerator, BoxCoder,
Matcher, BalancedPositiveNegativeSampler, RPNLossComputation, RPNPostProcessor,
FastRCNNLossComputation, PostProcessor) in this project's conventions (absolute pixel
[ymin, xmin, ymax, xmax], no legacy +1)."""
import math

import jax
import numpy as np
import pytest

from mlperf_jax.models import rcnn_boxes as rb
from mlperf_jax.models import rcnn_proposals as rp

RATIOS = (0.5, 1.0, 2.0)
W_BOX = (10.0, 10.0, 5.0, 5.0)


# ------------------------------------------------------------------------------------------------
# Oracles.

def iou_s(a, b):
    ih = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    iw = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = ih * iw
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def iou_mat(a, b, dtype=np.float64):
    out = np.zeros((len(a), len(b)), dtype)
    for i in range(len(a)):
        for j in range(len(b)):
            out[i, j] = iou_s([dtype(v) for v in a[i]], [dtype(v) for v in b[j]])
    return out


def encode_s(g, a, w=(1, 1, 1, 1)):
    gh, gw, ah, aw = g[2] - g[0], g[3] - g[1], a[2] - a[0], a[3] - a[1]
    return [w[0] * ((g[0] + g[2]) / 2 - (a[0] + a[2]) / 2) / ah,
            w[1] * ((g[1] + g[3]) / 2 - (a[1] + a[3]) / 2) / aw,
            w[2] * math.log(gh / ah), w[3] * math.log(gw / aw)]


def decode_s(d, a, w=(1, 1, 1, 1), clip=math.log(1000 / 16)):
    ah, aw = a[2] - a[0], a[3] - a[1]
    cy, cx = d[0] / w[0] * ah + (a[0] + a[2]) / 2, d[1] / w[1] * aw + (a[1] + a[3]) / 2
    h, w_ = math.exp(min(d[2] / w[2], clip)) * ah, math.exp(min(d[3] / w[3], clip)) * aw
    return [cy - h / 2, cx - w_ / 2, cy + h / 2, cx + w_ / 2]


def clip_s(b, h, w):
    return [min(max(b[0], 0), h), min(max(b[1], 0), w), min(max(b[2], 0), h), min(max(b[3], 0), w)]


def match_np(iou, valid, fg, bg, low_quality):
    n, m = iou.shape
    matched, labels = np.zeros(n, int), np.zeros(n, int)
    if not valid.any():
        return matched, labels
    for i in range(n):
        best, arg = -1.0, 0
        for j in range(m):
            if valid[j] and iou[i, j] > best:
                best, arg = iou[i, j], j
        matched[i] = arg
        labels[i] = 1 if best >= fg else (0 if best < bg else -1)
    if low_quality:
        for j in range(m):
            highest = max(iou[i, j] for i in range(n))
            if valid[j] and highest > 0:
                for i in range(n):
                    if iou[i, j] == highest:
                        labels[i] = 1
    return matched, labels


def nms_np(boxes, valid, thr):
    kept = []
    for i in range(len(boxes)):
        if valid[i] and all(iou_s(boxes[i], boxes[j]) < thr for j in kept):
            kept.append(i)
    return kept


def random_boxes(rng, n, lo=0.0, hi=64.0, min_side=1.0, max_side=30.0):
    y0, x0 = rng.uniform(lo, hi - min_side, (2, n))
    h, w = rng.uniform(min_side, max_side, (2, n))
    return np.stack([y0, x0, y0 + h, x0 + w], -1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# Anchors, coding, IoU.

def test_anchor_counts():
    grid = rb.anchor_grid((64, 64), (2, 3, 4, 5), (8, 16, 32, 64), RATIOS)
    assert [g.shape for g in grid] == [(16 * 16 * 3, 4), (8 * 8 * 3, 4), (4 * 4 * 3, 4),
                                       (2 * 2 * 3, 4)]
    grid = rb.anchor_grid((50, 70), (2, 6), (32, 512), RATIOS)      # ceil on both sides
    assert [len(g) for g in grid] == [13 * 18 * 3, 1 * 2 * 3]
    ref = rb.anchor_grid((1344, 1344), (2, 3, 4, 5, 6), (32, 64, 128, 256, 512), RATIOS)
    assert [len(g) for g in ref] == [336 ** 2 * 3, 168 ** 2 * 3, 84 ** 2 * 3, 42 ** 2 * 3,
                                     21 ** 2 * 3]
    assert sum(len(g) for g in ref) == 451143
    assert all(g.dtype == np.float32 for g in ref)


def test_anchor_geometry():
    levels, sizes = (2, 3), (8.0, 16.0)
    grid = rb.anchor_grid((24, 40), levels, sizes, RATIOS)
    for g, level, size in zip(grid, levels, sizes):
        s = 2 ** level
        want = []
        for i in range(-(-24 // s)):
            for j in range(-(-40 // s)):
                for r in RATIOS:
                    h, w = size * math.sqrt(r), size / math.sqrt(r)
                    cy, cx = (i + 0.5) * s, (j + 0.5) * s
                    want.append([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2])
        np.testing.assert_allclose(g, np.array(want), rtol=0, atol=1e-5)
        h, w = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        np.testing.assert_allclose(h / w, np.tile(RATIOS, len(g) // 3), rtol=1e-5)
        np.testing.assert_allclose(np.sqrt(h * w), size, rtol=1e-5)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), W_BOX])
def test_box_coding(weights):
    rng = np.random.default_rng(0)
    boxes, anchors = random_boxes(rng, 50), random_boxes(rng, 50)
    enc = jax.jit(lambda b, a: rb.encode_boxes(b, a, weights))
    dec = jax.jit(lambda d, a: rb.decode_boxes(d, a, weights))
    codes = np.asarray(enc(boxes, anchors))
    want = np.array([encode_s(g, a, weights) for g, a in zip(boxes.astype(float), anchors)])
    np.testing.assert_allclose(codes, want, rtol=1e-4, atol=1e-4)
    back = np.asarray(dec(codes, anchors))
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-3)
    deltas = rng.normal(0, 2, (50, 4)).astype(np.float32) * np.array(weights, np.float32)
    deltas[0, 2:] = 100.0                                               # hits the scale clip
    want = np.array([decode_s(d, a, weights) for d, a in zip(deltas.astype(float), anchors)])
    np.testing.assert_allclose(np.asarray(dec(deltas, anchors)), want,
                               rtol=1e-4, atol=1e-2)
    hw = np.array([40.0, 50.0])
    clipped = np.asarray(jax.jit(rb.clip_boxes)(want * 2 - 20, hw))
    np.testing.assert_allclose(clipped, [clip_s(b, 40, 50) for b in want * 2 - 20], atol=1e-4)


def test_pairwise_iou():
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, 13), random_boxes(rng, 7)
    a[0] = [5, 5, 5, 9]                                                 # empty box
    b[1] = a[2]                                                         # identical: IoU 1
    iou = jax.jit(rb.pairwise_iou)
    got = np.asarray(iou(a, b))
    np.testing.assert_allclose(got, iou_mat(a, b), atol=1e-6)
    assert got[2, 1] == pytest.approx(1.0)
    batched = np.asarray(iou(np.stack([a, a[::-1]]), np.stack([b, b])))
    np.testing.assert_allclose(batched[1], iou_mat(a[::-1], b), atol=1e-6)
    assert iou(np.zeros((1, 4)), np.zeros((1, 4)))[0, 0] == 0.0


# ------------------------------------------------------------------------------------------------
# Matcher and sampler.

@pytest.mark.parametrize("low_quality", [False, True])
def test_match(low_quality):
    rng = np.random.default_rng(2)
    fn = jax.jit(lambda i, v: rb.match(i, v, 0.7, 0.3, low_quality))
    for trial in range(6):
        # IoUs on a coarse grid so that ties (per candidate and per GT) are frequent.
        iou = (rng.integers(0, 9, (40, 6)) / 10.0).astype(np.float32)
        iou[:, 4] = np.where(rng.random(40) < 0.9, 0.0, 0.1)             # a GT with few overlaps
        iou[:, 5] = 0.0                                                  # a GT overlapping nothing
        valid = np.array([True] * 6) if trial == 0 else rng.random(6) < 0.7
        if trial == 5:
            valid[:] = False
        matched, labels = map(np.asarray, fn(iou, valid))
        want_m, want_l = match_np(iou, valid, 0.7, 0.3, low_quality)
        np.testing.assert_array_equal(labels, want_l)
        np.testing.assert_array_equal(matched, want_m)


def test_sample_balanced_counts():
    rng = np.random.default_rng(3)
    labels = rng.choice([-1, 0, 1], (4, 300), p=[0.3, 0.6, 0.1]).astype(np.int32)
    labels[1] = np.where(labels[1] == 1, 0, labels[1])                   # no positive
    labels[2, :250] = 1                                                  # too many positives
    labels[3] = np.where(np.arange(300) < 40, 1, -1)                     # no negative
    fn = jax.jit(lambda lab, key: rb.sample_balanced(lab, key, 64, 0.25))
    sampled, positive = map(np.asarray, fn(labels, jax.random.PRNGKey(0)))
    for b in range(4):
        npos, nneg = int(np.sum(labels[b] == 1)), int(np.sum(labels[b] == 0))
        want_pos = min(npos, 16)
        want_neg = min(nneg, 64 - want_pos)
        assert positive[b].sum() == want_pos
        assert (sampled[b] & ~positive[b]).sum() == want_neg
        assert np.all(labels[b][positive[b]] == 1)
        assert np.all(labels[b][sampled[b] & ~positive[b]] == 0)
    s2, _ = map(np.asarray, fn(labels, jax.random.PRNGKey(1)))
    assert not np.array_equal(sampled, s2)
    # every eligible entry can be drawn: over a few keys each positive of row 0 shows up
    seen = np.zeros(300, bool)
    for k in range(40):
        seen |= np.asarray(fn(labels, jax.random.PRNGKey(k))[1])[0]
    assert np.array_equal(seen, labels[0] == 1)


# ------------------------------------------------------------------------------------------------
# RPN targets and loss.

def _rpn_case():
    anchors = np.concatenate(rb.anchor_grid((32, 32), (2, 3), (8.0, 16.0), RATIOS))  # 240
    gt = np.zeros((2, 4, 4), np.float32)
    gt[0, :3] = [[2, 3, 14, 11], [16, 16, 30, 31], [20, 12, 23, 16]]   # the last one is tiny
    gt[1, :2] = [[0, 0, 16, 16], [5, 9, 26, 20]]
    return anchors, gt, np.array([3, 2]), np.array([[32, 32], [28, 24]], np.float32)


def rpn_labels_np(anchors, gt, ngt, hw):
    valid = np.arange(len(gt)) < ngt
    iou = iou_mat(anchors, gt, np.float32)
    matched, labels = match_np(iou, valid, 0.7, 0.3, True)
    for i, a in enumerate(anchors):
        if not (a[0] >= 0 and a[1] >= 0 and a[2] < hw[0] and a[3] < hw[1]):
            labels[i] = -1
    return matched, labels


def test_rpn_targets():
    anchors, gt, ngt, hw = _rpn_case()
    fn = jax.jit(lambda key, n: rb.rpn_targets(anchors, gt, ngt, hw, key, num_samples=n),
                 static_argnums=1)
    t = {k: np.asarray(v) for k, v in fn(jax.random.PRNGKey(0), 1000).items()}
    for b in range(2):
        matched, labels = rpn_labels_np(anchors, gt[b], ngt[b], hw[b])
        assert (labels == 1).sum() > 0 and (labels == -1).sum() > 0
        np.testing.assert_array_equal(t["labels"][b], (labels == 1).astype(np.float32))
        np.testing.assert_array_equal(t["sampled"][b], labels != -1)     # all fit in 1000
        np.testing.assert_array_equal(t["positive"][b], labels == 1)
        want = np.zeros((len(anchors), 4))
        for i in np.nonzero(labels == 1)[0]:
            want[i] = encode_s(gt[b, matched[i]].astype(float), anchors[i].astype(float))
        np.testing.assert_allclose(t["box_targets"][b], want, atol=1e-4)
    # the tiny GT of image 0 gets its best anchors by the low-quality rule
    iou_tiny = iou_mat(anchors, gt[0, 2:3])[:, 0]
    assert iou_tiny.max() < 0.7 and np.all(t["positive"][0][iou_tiny == iou_tiny.max()])
    t = {k: np.asarray(v) for k, v in fn(jax.random.PRNGKey(1), 16).items()}
    for b in range(2):
        _, labels = rpn_labels_np(anchors, gt[b], ngt[b], hw[b])
        npos = min((labels == 1).sum(), 8)
        assert t["positive"][b].sum() == npos and t["sampled"][b].sum() == 16
        assert np.all(labels[t["sampled"][b]] != -1)


def test_rpn_loss():
    rng = np.random.default_rng(4)
    anchors, gt, ngt, hw = _rpn_case()
    obj = rng.normal(0, 2, (2, len(anchors))).astype(np.float32)
    deltas = rng.normal(0, 0.2, (2, len(anchors), 4)).astype(np.float32)

    @jax.jit
    def fn(o, d):
        t = rb.rpn_targets(anchors, gt, ngt, hw, jax.random.PRNGKey(0), num_samples=32)
        return rb.rpn_loss(o, d, t), t

    (cls, box), t = fn(obj, deltas)
    t = {k: np.asarray(v) for k, v in t.items()}
    n = t["sampled"].sum()
    bce = sum(math.log1p(math.exp(-abs(x))) + max(x, 0) - x * y
              for x, y, s in zip(obj.ravel(), t["labels"].ravel(), t["sampled"].ravel()) if s)
    sl1 = 0.0
    for d, g, p in zip(deltas.reshape(-1, 4), t["box_targets"].reshape(-1, 4),
                       t["positive"].ravel()):
        if p:
            for x in d - g:
                sl1 += 0.5 * x * x * 9 if abs(x) < 1 / 9 else abs(x) - 0.5 / 9
    assert float(cls) == pytest.approx(bce / n, rel=1e-5)
    assert float(box) == pytest.approx(sl1 / n, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Proposals.

def test_generate_proposals():
    rng = np.random.default_rng(5)
    anchors = rb.anchor_grid((32, 32), (2, 3), (8.0, 16.0), RATIOS)            # 192, 48
    hw = np.array([[32, 32], [20, 28]], np.float32)
    obj = [rng.normal(0, 2, (2, len(a))).astype(np.float32) for a in anchors]
    deltas = [rng.normal(0, 0.3, (2, len(a), 4)).astype(np.float32) for a in anchors]
    pre, post, thr, min_size = 50, 40, 0.7, 3.0
    boxes, scores, valid = map(np.asarray, jax.jit(
        lambda o, d: rp.generate_proposals(o, d, anchors, hw, pre_nms_top_n=pre,
                                           post_nms_top_n=post, nms_iou=thr,
                                           min_size=min_size))(obj, deltas))
    assert boxes.shape == (2, post, 4) and scores.shape == valid.shape == (2, post)
    for b in range(2):
        cands = []
        for o, d, a in zip(obj, deltas, anchors):
            order = np.argsort(-o[b], kind="stable")[:min(pre, len(a))]
            bx = [clip_s(decode_s(d[b, i].astype(float), a[i].astype(float)), *hw[b])
                  for i in order]
            ok = [(x[2] - x[0] >= min_size) and (x[3] - x[1] >= min_size) for x in bx]
            kept = nms_np(bx, ok, thr)[:post]
            cands += [(1 / (1 + math.exp(-o[b, order[i]])), bx[i]) for i in kept]
        cands.sort(key=lambda c: -c[0])
        cands = cands[:post]
        n = len(cands)
        assert valid[b].sum() == n and np.all(valid[b, :n])
        np.testing.assert_allclose(scores[b, :n], [c[0] for c in cands], rtol=1e-5)
        np.testing.assert_allclose(boxes[b, :n], [c[1] for c in cands], atol=1e-3)
        assert np.all(boxes[b, n:] == 0) and np.all(scores[b, n:] == 0)


# ------------------------------------------------------------------------------------------------
# RoI sampling and the box-head loss.

def _roi_case(rng):
    gt = np.zeros((2, 5, 4), np.float32)
    gt[0, :3] = random_boxes(rng, 3, min_side=8)
    gt[1, :5] = random_boxes(rng, 5, min_side=8)
    classes = np.where(np.arange(5) < np.array([[3], [5]]), rng.integers(1, 6, (2, 5)), 0)
    props = np.zeros((2, 30, 4), np.float32)
    for b in range(2):   # half jittered copies of GT (some positives), half random
        src = gt[b, rng.integers(0, [3, 5][b], 15)]
        props[b, :15] = src + rng.normal(0, 2, src.shape)
        props[b, 15:] = random_boxes(rng, 15)
    props[..., 2:] = np.maximum(props[..., 2:], props[..., :2] + 1)
    pvalid = rng.random((2, 30)) < 0.85
    return props, pvalid, gt, classes.astype(np.int32), np.array([3, 5], np.int32)


def test_sample_rois():
    rng = np.random.default_rng(6)
    props, pvalid, gt, classes, ngt = _roi_case(rng)
    fn = jax.jit(lambda key, s: rp.sample_rois(props, pvalid, gt, classes, ngt, key,
                                               num_samples=s, positive_fraction=0.25),
                 static_argnums=1)
    decode = jax.jit(lambda d, a: rb.decode_boxes(d, a, W_BOX))
    for s in (200, 16):                   # everything eligible fits / the balanced subset
        out = {k: np.asarray(v) for k, v in fn(jax.random.PRNGKey(s), s).items()}
        for b in range(2):
            cand = np.concatenate([props[b], gt[b, :ngt[b]]])
            cvalid = np.concatenate([pvalid[b], np.ones(ngt[b], bool)])
            matched, labels = match_np(iou_mat(cand, gt[b], np.float32),
                                       np.arange(5) < ngt[b], 0.5, 0.5, False)
            labels[~cvalid] = -1
            npos = min((labels == 1).sum(), int(s * 0.25))
            nneg = min((labels == 0).sum(), s - npos)
            v, pos = out["valid"][b], out["positive"][b]
            assert pos.sum() == npos and v.sum() == npos + nneg
            assert np.all(pos[:npos]) and np.all(v[:npos + nneg]) and not v[npos + nneg:].any()
            for r in np.nonzero(v)[0]:    # each row is a distinct eligible candidate
                i = np.nonzero(np.all(cand == out["rois"][b, r], axis=1))[0][0]
                assert labels[i] == pos[r] and out["matched_gt"][b, r] == matched[i]
                assert out["classes"][b, r] == (classes[b, matched[i]] if pos[r] else 0)
            rows = [tuple(x) for x in out["rois"][b][v]]
            assert len(set(rows)) == len(rows)
            if s == 200:                   # every valid GT box is a positive candidate
                for g in range(ngt[b]):
                    assert tuple(gt[b, g]) in {tuple(x) for x in out["rois"][b][pos]}
            dec = np.asarray(decode(out["box_targets"][b], out["rois"][b]))
            np.testing.assert_allclose(dec[pos], gt[b, out["matched_gt"][b][pos]], atol=1e-3)
            assert np.all(out["box_targets"][b][~pos] == 0)


def test_box_head_loss():
    rng = np.random.default_rng(7)
    props, pvalid, gt, classes, ngt = _roi_case(rng)
    logits = rng.normal(0, 1, (2, 40, 6)).astype(np.float32)
    deltas = rng.normal(0, 1, (2, 40, 6, 4)).astype(np.float32)

    @jax.jit
    def fn(lg, dl):
        smp = rp.sample_rois(props, pvalid, gt, classes, ngt, jax.random.PRNGKey(0),
                             num_samples=40)
        return rp.box_head_loss(lg, dl, smp), smp

    (cls, box), smp = fn(logits, deltas)
    smp = {k: np.asarray(v) for k, v in smp.items()}
    ce = sl1 = 0.0
    for b in range(2):
        for r in range(40):
            if not smp["valid"][b, r]:
                continue
            c = smp["classes"][b, r]
            ce += math.log(np.exp(logits[b, r].astype(float)).sum()) - logits[b, r, c]
            if smp["positive"][b, r]:
                for x in deltas[b, r, c] - smp["box_targets"][b, r]:
                    sl1 += 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5
    n = smp["valid"].sum()
    assert float(cls) == pytest.approx(ce / n, rel=1e-5)
    assert float(box) == pytest.approx(sl1 / n, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Detections.

@pytest.mark.parametrize("top_k,max_det", [(None, 8), (4, 50)])
def test_detect(top_k, max_det):
    rng = np.random.default_rng(8)
    bsz, k, c = 2, 12, 4
    rois = random_boxes(rng, bsz * k, min_side=6).reshape(bsz, k, 4)
    rois[:, 6:] = rois[:, :6] + rng.normal(0, 1, (bsz, 6, 4)).astype(np.float32)  # overlaps
    logits = rng.normal(0, 1.5, (bsz, k, c)).astype(np.float32)
    deltas = rng.normal(0, 0.5, (bsz, k, c, 4)).astype(np.float32)
    rvalid = rng.random((bsz, k)) < 0.9
    hw = np.array([[64, 64], [40, 50]], np.float32)
    out = {n: np.asarray(v) for n, v in jax.jit(lambda *a: rp.detect(
        *a, score_threshold=0.1, nms_iou=0.5, max_detections=max_det,
        per_class_top_k=top_k))(logits, deltas, rois, rvalid, hw).items()}
    for b in range(bsz):
        dets = []
        for j in range(1, c):
            probs = [math.exp(x) / np.exp(logits[b, i].astype(float)).sum()
                     for i, x in enumerate(logits[b, :, j].astype(float))]
            order = [i for i in np.argsort(-np.array(probs), kind="stable")
                     if probs[i] > 0.1 and rvalid[b, i]][:top_k or k]
            bx = [clip_s(decode_s(deltas[b, i, j].astype(float), rois[b, i].astype(float),
                                  W_BOX), *hw[b]) for i in order]
            for q in nms_np(bx, [True] * len(bx), 0.5):
                dets.append((probs[order[q]], bx[q], j, order[q]))
        dets.sort(key=lambda d: -d[0])
        dets = dets[:max_det]
        n = len(dets)
        assert out["valid"][b].sum() == n and np.all(out["valid"][b, :n])
        np.testing.assert_allclose(out["scores"][b, :n], [d[0] for d in dets], rtol=1e-5)
        np.testing.assert_allclose(out["boxes"][b, :n], [d[1] for d in dets], atol=1e-3)
        np.testing.assert_array_equal(out["classes"][b, :n], [d[2] for d in dets])
        np.testing.assert_array_equal(out["roi_index"][b, :n], [d[3] for d in dets])
        assert np.all(out["scores"][b, n:] == 0) and np.all(out["classes"][b, n:] == 0)
    assert out["boxes"].shape == (bsz, max_det, 4)
