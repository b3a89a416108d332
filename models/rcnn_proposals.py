"""Mask R-CNN proposals, RoI sampling, the box-head loss and the final detections, following
maskrcnn-benchmark (the MLPerf ``object_detection`` reference: ``rpn/inference.py``
``RPNPostProcessor``, ``roi_heads/box_head/loss.py`` ``FastRCNNLossComputation`` and
``roi_heads/box_head/inference.py`` ``PostProcessor``) in JAX with fixed shapes.

Conventions as ``rcnn_boxes`` (absolute pixel ``[ymin, xmin, ymax, xmax]``, padded ground truth,
``image_hw [B, 2]``). Everything is padded to a fixed number of rows with a ``valid`` mask.

Differences from the reference, none of which changes a result except on exact ties:
* The RPN's final "top N" is taken per image (the reference, in training, takes it over the whole
  batch); proposals are ranked across levels by logit (the reference by sigmoid, which saturates
  in float32 above logit ~17).
* NMS suppresses IoU >= threshold (``ssd_boxes.greedy_nms``); IoU has no legacy ``+ 1``.
* ``detect`` returns exactly the top ``max_detections`` (the reference's ``kthvalue`` cut keeps all
  ties with the 100th score).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mlperf_jax.models.rcnn_boxes import (clip_boxes, decode_boxes, encode_boxes, match,
                                          pairwise_iou, sample_balanced, smooth_l1)
from mlperf_jax.models.ssd_boxes import greedy_nms

_nms2 = jax.vmap(jax.vmap(greedy_nms, in_axes=(0, 0, None)), in_axes=(0, 0, None))


def _pad_rows(x, n: int, axis: int = 1, value=0):
    """Pad ``x`` along ``axis`` to ``n`` rows with ``value``."""
    extra = n - x.shape[axis]
    if extra <= 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _gather_rows(x, idx):
    """``x [B, N, ...]`` rows ``idx [B, K]`` -> ``[B, K, ...]``."""
    return jax.vmap(lambda a, i: a[i])(x, idx)


# ------------------------------------------------------------------------------------------------
# RPN proposals.

def generate_proposals(objectness: Sequence[jax.Array], deltas: Sequence[jax.Array],
                       anchors: Sequence[np.ndarray | jax.Array], image_hw, *,
                       pre_nms_top_n: int, post_nms_top_n: int, nms_iou: float = 0.7,
                       min_size: float = 0.0):
    """Proposals from the RPN outputs (the reference ``RPNPostProcessor`` with FPN).

    Per level (``objectness [B, N_l]`` logits, ``deltas [B, N_l, 4]``, ``anchors [N_l, 4]``): the
    top ``min(pre_nms_top_n, N_l)`` anchors by logit, decoded (weights 1), clipped to ``image_hw``,
    boxes with a side < ``min_size`` dropped, greedy NMS at ``nms_iou``; then the top
    ``post_nms_top_n`` over all levels per image. (The reference also caps each level at
    ``post_nms_top_n`` after NMS; that never changes the overall top ``post_nms_top_n``.) The
    levels are padded to a common size so that one NMS loop serves them all.
    Returns ``(boxes [B, K, 4], scores [B, K] sigmoid, valid [B, K])``, ``K = post_nms_top_n``,
    zeros on invalid rows; no gradient flows through them.
    """
    image_hw = jnp.asarray(image_hw, jnp.float32)
    ks = [min(pre_nms_top_n, int(o.shape[1])) for o in objectness]
    kmax = max(ks)
    logits_l, boxes_l, valid_l = [], [], []
    for obj, dl, anc, k in zip(objectness, deltas, anchors, ks):
        logit, idx = jax.lax.top_k(jnp.asarray(obj, jnp.float32), k)           # [B, k]
        d = _gather_rows(jnp.asarray(dl, jnp.float32), idx)
        a = jnp.asarray(anc, jnp.float32)[idx]
        boxes = clip_boxes(decode_boxes(d, a), image_hw[:, None, :])
        ok = ((boxes[..., 2] - boxes[..., 0] >= min_size)
              & (boxes[..., 3] - boxes[..., 1] >= min_size))
        logits_l.append(_pad_rows(logit, kmax, value=-jnp.inf))
        boxes_l.append(_pad_rows(boxes, kmax))
        valid_l.append(_pad_rows(ok, kmax, value=False))
    logits = jnp.stack(logits_l, axis=1)                                         # [B, L, k]
    boxes = jnp.stack(boxes_l, axis=1)                                           # [B, L, k, 4]
    keep = _nms2(boxes, jnp.stack(valid_l, axis=1), nms_iou)                     # [B, L, k]

    bsz, nlev = keep.shape[:2]
    keep = keep.reshape(bsz, nlev * kmax)
    logits = logits.reshape(bsz, nlev * kmax)
    boxes = boxes.reshape(bsz, nlev * kmax, 4)
    m = min(post_nms_top_n, nlev * kmax)
    _, idx = jax.lax.top_k(jnp.where(keep, logits, -jnp.inf), m)
    valid = jnp.take_along_axis(keep, idx, axis=1)
    scores = jnp.where(valid, jax.nn.sigmoid(jnp.take_along_axis(logits, idx, axis=1)), 0.0)
    out_boxes = jnp.where(valid[..., None], _gather_rows(boxes, idx), 0.0)
    out = (_pad_rows(out_boxes, post_nms_top_n), _pad_rows(scores, post_nms_top_n),
           _pad_rows(valid, post_nms_top_n, value=False))
    return jax.lax.stop_gradient(out)


# ------------------------------------------------------------------------------------------------
# RoI sampling and the box-head loss.

def sample_rois(proposals, proposal_valid, gt_boxes, gt_classes, num_gt, rng, *,
                num_samples: int = 512, positive_fraction: float = 0.25, fg_iou: float = 0.5,
                bg_iou: float = 0.5, weights=(10.0, 10.0, 5.0, 5.0)) -> dict:
    """The box head's training RoIs and targets (the reference ``add_gt_proposals`` +
    ``FastRCNNLossComputation.subsample``).

    The valid GT boxes join the valid proposals as candidates, which are matched to the GT (no
    low-quality matches) and balanced-sampled. Returns ``S = num_samples`` rows, the sampled
    positives first (so at most ``int(S * positive_fraction)`` leading rows can be positive: a
    mask head may slice them), then the negatives, then padding (``valid`` False, zero box):
    ``rois [B, S, 4]``, ``classes [B, S]`` int32 (GT class at positives, else 0),
    ``box_targets [B, S, 4]`` (codes with ``weights``, zero at non-positives), ``matched_gt [B, S]``
    int32, ``positive [B, S]`` and ``valid [B, S]`` bool. No gradient flows through them.
    """
    proposals = jnp.asarray(proposals, jnp.float32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_classes = jnp.asarray(gt_classes, jnp.int32)
    m = gt_boxes.shape[1]
    gt_valid = jnp.arange(m)[None, :] < jnp.asarray(num_gt, jnp.int32)[:, None]   # [B, M]
    cand = jnp.concatenate([proposals, gt_boxes], axis=1)                         # [B, K+M, 4]
    cand_valid = jnp.concatenate([jnp.asarray(proposal_valid, bool), gt_valid], axis=1)

    def one(c, cv, gt, gv):
        matched, labels = match(pairwise_iou(c, gt), gv, fg_iou, bg_iou, False)
        return matched, jnp.where(cv, labels, -1)

    matched, labels = jax.vmap(one)(cand, cand_valid, gt_boxes, gt_valid)
    sampled, positive = sample_balanced(labels, rng, num_samples, positive_fraction)

    s = min(num_samples, cand.shape[1])
    priority = sampled.astype(jnp.int32) + positive.astype(jnp.int32)             # 2, 1, 0
    _, idx = jax.lax.top_k(priority, s)                                           # stable
    valid = jnp.take_along_axis(sampled, idx, axis=1)
    pos = jnp.take_along_axis(positive, idx, axis=1)
    mgt = jnp.where(valid, jnp.take_along_axis(matched, idx, axis=1), 0)
    rois = jnp.where(valid[..., None], _gather_rows(cand, idx), 0.0)
    tgt_boxes = _gather_rows(gt_boxes, mgt)
    codes = encode_boxes(tgt_boxes, rois, weights)
    out = {
        "rois": rois,
        "classes": jnp.where(pos, jnp.take_along_axis(gt_classes, mgt, axis=1), 0),
        "box_targets": jnp.where(pos[..., None], codes, 0.0),
        "matched_gt": mgt.astype(jnp.int32),
        "positive": pos,
        "valid": valid,
    }
    out = {k: _pad_rows(v, num_samples, value=False if v.dtype == bool else 0)
           for k, v in out.items()}
    return jax.lax.stop_gradient(out)


def box_head_loss(class_logits, box_deltas, samples: dict):
    """``(cls_loss, box_loss)`` of the box head as the reference ``FastRCNNLossComputation``:
    softmax CE averaged over the valid sampled RoIs of the batch; smooth-L1 (beta 1) of the
    true class's deltas summed over positives, divided by the number of valid sampled RoIs."""
    logits = jnp.asarray(class_logits, jnp.float32)
    classes = samples["classes"].astype(jnp.int32)
    valid = samples["valid"].astype(jnp.float32)
    count = jnp.maximum(jnp.sum(valid), 1.0)
    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, classes[..., None], axis=-1)[..., 0]
    cls_loss = jnp.sum(ce * valid) / count
    d = jnp.take_along_axis(jnp.asarray(box_deltas, jnp.float32),
                            classes[..., None, None], axis=2)[..., 0, :]          # [B, S, 4]
    sl1 = jnp.sum(smooth_l1(d - samples["box_targets"], 1.0), axis=-1)
    box_loss = jnp.sum(sl1 * samples["positive"].astype(jnp.float32)) / count
    return cls_loss, box_loss


# ------------------------------------------------------------------------------------------------
# Detections.

def detect(class_logits, box_deltas, rois, roi_valid, image_hw, *, score_threshold: float = 0.05,
           nms_iou: float = 0.5, max_detections: int = 100, per_class_top_k: int | None = None,
           weights=(10.0, 10.0, 5.0, 5.0)) -> dict:
    """Final detections as the reference box-head ``PostProcessor``.

    Softmax over classes, class-specific decode of ``box_deltas [B, K, C, 4]`` against ``rois``,
    clip to ``image_hw``; per class 1..C-1: scores > ``score_threshold`` at valid RoIs, the top
    ``per_class_top_k`` (None: all K), greedy NMS at ``nms_iou``; then the overall top
    ``max_detections`` in descending score. Returns ``boxes [B, D, 4]``, ``scores [B, D]``,
    ``classes [B, D]`` int32, ``valid [B, D]`` bool and ``roi_index [B, D]`` int32 (the source
    RoI, e.g. for the mask head), ``D = max_detections``, zeros on invalid rows.
    """
    logits = jnp.asarray(class_logits, jnp.float32)
    bsz, k_rois, ncls = logits.shape
    probs = jax.nn.softmax(logits, axis=-1)
    boxes = decode_boxes(box_deltas, jnp.asarray(rois, jnp.float32)[:, :, None, :], weights)
    boxes = clip_boxes(boxes, jnp.asarray(image_hw, jnp.float32)[:, None, None, :])
    fg = jnp.swapaxes(probs[..., 1:], 1, 2)                                       # [B, C', K]
    fg_boxes = jnp.swapaxes(boxes[:, :, 1:], 1, 2)                                # [B, C', K, 4]
    ok = (fg > score_threshold) & jnp.asarray(roi_valid, bool)[:, None, :]
    k = k_rois if per_class_top_k is None else min(per_class_top_k, k_rois)
    cand_scores, cand_idx = jax.lax.top_k(jnp.where(ok, fg, -jnp.inf), k)         # [B, C', k]
    cand_ok = jnp.take_along_axis(ok, cand_idx, axis=-1)
    cand_boxes = jnp.take_along_axis(fg_boxes, cand_idx[..., None], axis=2)
    keep = _nms2(cand_boxes, cand_ok, nms_iou)

    n = (ncls - 1) * k
    keep = keep.reshape(bsz, n)
    m = min(max_detections, n)
    top, idx = jax.lax.top_k(jnp.where(keep, cand_scores.reshape(bsz, n), -jnp.inf), m)
    valid = jnp.take_along_axis(keep, idx, axis=1)
    out = {
        "boxes": jnp.where(valid[..., None], _gather_rows(cand_boxes.reshape(bsz, n, 4), idx),
                           0.0),
        "scores": jnp.where(valid, top, 0.0),
        "classes": jnp.where(valid, idx // k + 1, 0).astype(jnp.int32),
        "valid": valid,
        "roi_index": jnp.where(valid, jnp.take_along_axis(cand_idx.reshape(bsz, n), idx, axis=1),
                               0).astype(jnp.int32),
    }
    return {key: _pad_rows(v, max_detections, value=False if v.dtype == bool else 0)
            for key, v in out.items()}
