"""Mask R-CNN (FPN) anchors, box coding, IoU, the matcher, the balanced sampler and the RPN
targets and loss, following maskrcnn-benchmark (the MLPerf ``object_detection`` reference:
``modeling/anchor_generator.py``, ``box_coder.py``, ``matcher.py``,
``balanced_positive_negative_sampler.py``, ``rpn/loss.py``) in JAX with fixed shapes.

Conventions
-----------
* Boxes are absolute pixel ``[ymin, xmin, ymax, xmax]`` in the resized, padded input image,
  continuous (pixel ``i`` spans ``[i, i + 1)``), so a box's height is ``ymax - ymin``: the
  reference's legacy ``+ 1`` / ``- 1`` (``TO_REMOVE``) is dropped everywhere, and anchors are
  centred at ``(i + 0.5) * stride`` with unrounded sides.
* Box codes are the reference ``BoxCoder``'s in y-first order: ``[wy*dy, wx*dx, wh*log(h/ha),
  ww*log(w/wa)]`` (the reference is x-first; its weights (10, 10, 5, 5) are symmetric).
* Ground truth comes padded: ``gt_boxes [B, M, 4]``, ``num_gt [B]`` (rows ``>= num_gt`` are
  padding); ``image_hw [B, 2]`` is the valid (unpadded) image height and width.

Deviation: with ``allow_low_quality`` the matcher only promotes ties with a GT's highest IoU when
that IoU is > 0; the reference also promotes every candidate when a GT overlaps none of them (all
IoU 0), which would make every anchor positive for that GT.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mlperf_jax.models import ssd_boxes

DEFAULT_SCALE_CLIP = math.log(1000.0 / 16.0)  # the reference's bbox_xform_clip


# ------------------------------------------------------------------------------------------------
# Anchors.

def anchor_grid(image_size: tuple[int, int], levels: Sequence[int], sizes: Sequence[float],
                aspect_ratios: Sequence[float]) -> list[np.ndarray]:
    """The FPN anchors, one float32 ``[H_l * W_l * A, 4]`` array per level ``l`` (stride ``2**l``,
    ``H_l = ceil(H / 2**l)``, the size of the level's feature map for a padded image).

    Order: row, column, then ratio (the reference's ``grid_anchors`` and its RPN head's
    ``permute_and_flatten``), so a head output ``[B, H_l, W_l, A * D]`` reshapes directly to
    ``[B, H_l * W_l * A, D]``. ``sizes[k]`` is the anchor size of ``levels[k]``; ratio
    ``r = h / w``.
    """
    if len(sizes) != len(levels):
        raise ValueError(f"one anchor size per level: {len(levels)} levels, {len(sizes)} sizes")
    height, width = image_size
    out = []
    for level, size in zip(levels, sizes):
        stride = 2 ** level
        hl, wl = -(-height // stride), -(-width // stride)
        r = np.asarray(aspect_ratios, np.float64)
        ah, aw = size * np.sqrt(r), size / np.sqrt(r)                     # [A]
        cy = (np.arange(hl, dtype=np.float64) + 0.5) * stride
        cx = (np.arange(wl, dtype=np.float64) + 0.5) * stride
        cy = cy[:, None, None]
        cx = cx[None, :, None]
        boxes = np.stack(np.broadcast_arrays(cy - ah / 2, cx - aw / 2, cy + ah / 2, cx + aw / 2),
                         axis=-1)                                           # [H, W, A, 4]
        out.append(boxes.reshape(-1, 4).astype(np.float32))
    return out


# ------------------------------------------------------------------------------------------------
# Geometry and coding.

def pairwise_iou(a, b):
    """IoU of every box in ``a [..., N, 4]`` with every box in ``b [..., M, 4]`` ->
    ``[..., N, M]``; 0 where the union is empty."""
    a = jnp.asarray(a, jnp.float32)[..., :, None, :]
    b = jnp.asarray(b, jnp.float32)[..., None, :, :]
    return ssd_boxes.iou(a, b)


def _centre_size(b):
    return (0.5 * (b[..., 0] + b[..., 2]), 0.5 * (b[..., 1] + b[..., 3]),
            b[..., 2] - b[..., 0], b[..., 3] - b[..., 1])


def encode_boxes(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Codes ``[..., 4]`` of ``boxes`` relative to ``anchors`` (broadcast), the reference
    ``BoxCoder.encode`` y-first. Boxes of zero size give infinite codes: mask them."""
    wy, wx, wh, ww = weights
    cy, cx, h, w = _centre_size(jnp.asarray(boxes, jnp.float32))
    acy, acx, ah, aw = _centre_size(jnp.asarray(anchors, jnp.float32))
    return jnp.stack([wy * (cy - acy) / ah, wx * (cx - acx) / aw,
                      wh * jnp.log(h / ah), ww * jnp.log(w / aw)], axis=-1)


def decode_boxes(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0),
                 scale_clip: float = DEFAULT_SCALE_CLIP):
    """Boxes ``[..., 4]`` from codes and ``anchors`` (broadcast), the inverse of ``encode_boxes``;
    the log-scales are clamped at ``scale_clip`` so that ``exp`` cannot overflow (as the
    reference)."""
    wy, wx, wh, ww = weights
    d = jnp.asarray(deltas, jnp.float32)
    acy, acx, ah, aw = _centre_size(jnp.asarray(anchors, jnp.float32))
    cy = d[..., 0] / wy * ah + acy
    cx = d[..., 1] / wx * aw + acx
    h = jnp.exp(jnp.minimum(d[..., 2] / wh, scale_clip)) * ah
    w = jnp.exp(jnp.minimum(d[..., 3] / ww, scale_clip)) * aw
    return jnp.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def clip_boxes(boxes, image_hw):
    """Clip ``boxes [..., 4]`` to ``[0, h] x [0, w]``; ``image_hw [..., 2]`` broadcasts against the
    boxes' leading dims (e.g. ``[B, 1, 2]`` for boxes ``[B, K, 4]``)."""
    hw = jnp.asarray(image_hw, jnp.float32)
    lim = jnp.stack([hw[..., 0], hw[..., 1], hw[..., 0], hw[..., 1]], axis=-1)
    return jnp.clip(jnp.asarray(boxes, jnp.float32), 0.0, lim)


# ------------------------------------------------------------------------------------------------
# Matching and sampling.

def match(iou, gt_valid, fg_iou: float, bg_iou: float, allow_low_quality: bool):
    """The reference ``Matcher`` on one image: ``iou [N, M]`` (candidates x GT), ``gt_valid [M]``.

    Returns ``(matched [N] int32, labels [N] int32)``: each candidate's best valid GT (first index
    on ties) and label 1 (IoU >= fg_iou), 0 (< bg_iou) or -1 (in between: ignored). With
    ``allow_low_quality``, a candidate that ties a GT's highest IoU (> 0) is labelled 1, keeping
    its own best GT as matched. Without any valid GT every label is 0.
    """
    iou = jnp.asarray(iou, jnp.float32)
    gt_valid = jnp.asarray(gt_valid, bool)
    masked = jnp.where(gt_valid[None, :], iou, -1.0)
    matched = jnp.argmax(masked, axis=1).astype(jnp.int32)
    best = jnp.max(masked, axis=1)
    labels = jnp.where(best >= fg_iou, 1, jnp.where(best < bg_iou, 0, -1))
    if allow_low_quality:
        highest = jnp.max(jnp.where(gt_valid[None, :], iou, 0.0), axis=0)     # [M]
        ties = gt_valid[None, :] & (highest[None, :] > 0) & (iou == highest[None, :])
        labels = jnp.where(jnp.any(ties, axis=1), 1, labels)
    return matched, labels.astype(jnp.int32)


def _random_subset(eligible, keys, count, k_max):
    """``count`` (traced, <= k_max) of the ``eligible [N]`` entries of highest random ``keys``."""
    n = eligible.shape[0]
    k = min(k_max, n)
    if k <= 0:
        return jnp.zeros((n,), bool)
    _, idx = jax.lax.top_k(jnp.where(eligible, keys, -1.0), k)
    take = jnp.arange(k) < count
    return jnp.zeros((n,), bool).at[idx].set(take)  # top_k indices are distinct


def sample_balanced(labels, rng, num_samples: int, positive_fraction: float):
    """The reference ``BalancedPositiveNegativeSampler`` per image.

    ``labels [B, N]``: 1 positive, 0 negative, -1 ignored. Takes ``num_pos = min(#pos,
    int(num_samples * positive_fraction))`` positives and ``min(#neg, num_samples - num_pos)``
    negatives, uniformly at random without replacement (top-k of uniform keys).
    Returns ``(sampled [B, N] bool, positive [B, N] bool)``.
    """
    labels = jnp.asarray(labels, jnp.int32)
    bsz, n = labels.shape
    max_pos = int(num_samples * positive_fraction)
    keys = jax.random.uniform(rng, (bsz, n), jnp.float32)

    def one(lab, key):
        pos, neg = lab == 1, lab == 0
        num_pos = jnp.minimum(jnp.sum(pos), max_pos)
        num_neg = jnp.minimum(jnp.sum(neg), num_samples - num_pos)
        take_pos = _random_subset(pos, key, num_pos, max_pos)
        take_neg = _random_subset(neg, key, num_neg, num_samples)
        return take_pos | take_neg, take_pos

    return jax.vmap(one)(labels, keys)


# ------------------------------------------------------------------------------------------------
# RPN targets and loss.

def rpn_targets(anchors, gt_boxes, num_gt, image_hw, rng, *, fg_iou: float = 0.7,
                bg_iou: float = 0.3, num_samples: int = 256, positive_fraction: float = 0.5,
                straddle_thresh: float = 0.0) -> dict:
    """RPN training targets as the reference ``RPNLossComputation`` (low-quality matches on).

    ``anchors [N, 4]`` (all levels concatenated). Anchors reaching outside the valid image by more
    than ``straddle_thresh`` are ignored. Returns ``labels [B, N]`` float32 (1 at anchors matched
    as foreground, sampled or not; 0 elsewhere), ``sampled [B, N]`` bool, ``positive [B, N]`` bool
    (sampled foreground) and ``box_targets [B, N, 4]`` (weights 1, zero at non-positives).
    """
    anchors = jnp.asarray(anchors, jnp.float32)
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    num_gt = jnp.asarray(num_gt, jnp.int32)
    image_hw = jnp.asarray(image_hw, jnp.float32)
    m = gt_boxes.shape[1]
    t = straddle_thresh

    def one(gt, ngt, hw):
        gt_valid = jnp.arange(m) < ngt
        matched, labels = match(pairwise_iou(anchors, gt), gt_valid, fg_iou, bg_iou, True)
        inside = ((anchors[:, 0] >= -t) & (anchors[:, 1] >= -t)
                  & (anchors[:, 2] < hw[0] + t) & (anchors[:, 3] < hw[1] + t))
        labels = jnp.where(inside, labels, -1)
        return labels, encode_boxes(gt[matched], anchors)

    labels, codes = jax.vmap(one)(gt_boxes, num_gt, image_hw)
    sampled, positive = sample_balanced(labels, rng, num_samples, positive_fraction)
    out = {
        "labels": (labels == 1).astype(jnp.float32),
        "sampled": sampled,
        "positive": positive,
        "box_targets": jnp.where(positive[..., None], codes, 0.0),
    }
    return jax.lax.stop_gradient(out)


def smooth_l1(x, beta: float):
    """The reference ``smooth_l1_loss`` element-wise: ``0.5 x^2 / beta`` if ``|x| < beta`` else
    ``|x| - 0.5 beta``."""
    ax = jnp.abs(x)
    if beta <= 0:
        return ax
    return jnp.where(ax < beta, 0.5 * x * x / beta, ax - 0.5 * beta)


def rpn_loss(objectness, deltas, targets: dict, beta: float = 1.0 / 9.0):
    """``(cls_loss, box_loss)`` of the RPN as the reference: BCE-with-logits averaged over the
    sampled anchors of the batch; smooth-L1 (``beta``) summed over the positives and divided by
    the number of sampled anchors of the batch."""
    objectness = jnp.asarray(objectness, jnp.float32)
    sampled = targets["sampled"].astype(jnp.float32)
    positive = targets["positive"].astype(jnp.float32)
    count = jnp.maximum(jnp.sum(sampled), 1.0)
    y = targets["labels"]
    bce = (jnp.maximum(objectness, 0.0) - objectness * y
           + jnp.log1p(jnp.exp(-jnp.abs(objectness))))
    cls_loss = jnp.sum(bce * sampled) / count
    sl1 = jnp.sum(smooth_l1(jnp.asarray(deltas, jnp.float32) - targets["box_targets"], beta),
                  axis=-1)
    box_loss = jnp.sum(sl1 * positive) / count
    return cls_loss, box_loss
