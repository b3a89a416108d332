"""SSD default boxes, box coding, anchor matching, the SSD loss and post-processing (NMS).

Everything here follows the MLPerf SSD reference (mlcommons/training
``single_stage_detector/ssd/utils.py`` ``DefaultBoxes``/``Encoder`` and ``base_model.py`` ``Loss``
@ f0699d47), written in JAX with fixed shapes: every device function is jittable and works on a
batch (``match`` is a ``vmap`` of a per-image function).

Conventions
-----------
* Boxes given to or returned by this module as "corners" are normalised ``[ymin, xmin, ymax, xmax]``
  (the TFDS order). Anchors (default boxes) are normalised ``[cy, cx, h, w]``.
* Box codes (``encode``, the network's ``loc`` output, ``match``'s ``loc_targets``) are
  ``[ty, tx, th, tw]``: ``ty = (gcy - acy) / ah / v0``, ``th = log(gh / ah) / v1`` with the
  variances ``(v0, v1) = (0.1, 0.2)``. That is the reference's ``Loss._loc_vec`` in y/x order
  (the reference itself is ``[tx, ty, tw, th]``) and the TF FasterRcnnBoxCoder with scales
  (10, 10, 5, 5), which is ``[ty, tx, th, tw]`` as here. Weights ported from the PyTorch
  SSD-ResNet34 must have their 4 box channels permuted (x, y, w, h) -> (y, x, h, w).

Box order: ``FLATTEN_ORDER = "khw"``
------------------------------------
The reference's ``DefaultBoxes`` loops ``for idx, sfeat in enumerate(feat_size): ... for w, h in
all_sizes: for i, j in itertools.product(range(sfeat), repeat=2)``: level first, then the box kind
(size-major), then row ``i`` (y), then column ``j`` (x). Its network agrees: ``ssd300.py``
``bbox_view`` does ``l(s).view(B, 4, -1)`` on the NCHW head output, so box ``d*H*W + i*W + j`` is
channel ``coord*nd + d``. The kinds at a location are, in order: ``(sk_l, sk_l)``,
``(sqrt(sk_l*sk_l+1), same)``, then for each ratio ``a``: the wide box ``w = sk_l*sqrt(a),
h = sk_l/sqrt(a)`` and its tall transpose. The network must therefore flatten each level's head
output ``[B, H, W, k * D] -> [B, H, W, k, D] -> transpose -> [B, k, H, W, D] -> [B, k*H*W, D]`` and
concatenate the levels in order. (Which channel of the conv holds which kind does not matter for a
model trained from scratch; only the order of the flattened boxes does.)

SSD-MobileNet-v1 (the TF object detection API anchors) is ``"hwk"``: row, column, then kind
fastest, i.e. a plain ``[B, H, W, k*D] -> [B, H*W*k, D]`` reshape; ``ssd_mobilenet_boxes`` returns
that order with its anchors.

Default boxes are clipped as the reference clips them: the ``[cy, cx, h, w]`` values are clamped
to [0, 1], not the corners (a box near the border may still reach past it). The SSD-MobileNet
anchors are not clipped at all (the TF generator has no clip window).

Deviations from the reference, all in degenerate cases
------------------------------------------------------
* ``match`` ignores ground-truth boxes with zero (or negative) area as it ignores padding: the
  reference would force-match such a box to anchor 0 and its ``log(0)`` width code makes the loss
  infinite.
* ``ssd_loss`` never counts a positive as a negative. The reference ranks positives with their CE
  zeroed, so a positive is counted twice when fewer than ``3 * num_pos`` negatives have CE > 0
  (then torch's sort order among the zeros decides); in every other case the two agree.
* ``decode`` clamps ``th * v1`` and ``tw * v1`` at ``log(1000 / 16)`` (as torchvision does) so that
  a wild prediction cannot overflow ``exp``; only boxes over 62x their anchor's size are affected.
* ``postprocess`` returns the detections in descending score order (the reference returns them
  ascending); the set is the same. (Not deviations: NMS suppresses a box whose IoU with a kept
  one is ``>= nms_iou``, as the reference keeps ``iou < criteria``, and runs on the unclipped
  decoded boxes as the reference does; only the returned boxes are clipped to [0, 1].)

Hard-negative mining
--------------------
``ssd_loss`` keeps, per image, the ``min(3 * num_pos, N)`` negatives with the largest
cross-entropy. Two exact implementations: ``mining="sort"`` ranks by a double argsort (the
reference's own method), and ``mining="bisect"`` (the default) finds the k-th largest CE per image
by a 31-step binary search on the float32 bit pattern (CE >= 0, so the int32 bits order like the
floats), then takes every value above it plus the first ties by index: O(31 N) element-wise work,
no sort. Both give the same loss (ties between equal CEs change which anchors are picked, never the
sum). On 2 CPU cores at N = 8732 the mask alone compiles in 0.4-0.5 s (bisect) vs 0.1-0.3 s (sort)
but runs in 2 ms vs 29 ms at batch 8 and 6 ms vs 106 ms at batch 32; sort-free is also what TPUs
prefer (Google's MLPerf JAX SSD does the same search).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

FLATTEN_ORDER = "khw"
MOBILENET_FLATTEN_ORDER = "hwk"

DEFAULT_VARIANCES = (0.1, 0.2)
# decode: the largest log-scale a box code may ask for (torchvision's bbox_xform_clip).
_MAX_LOG_SCALE = math.log(1000.0 / 16.0)


@dataclasses.dataclass(frozen=True)
class BoxSpec:
    """The default boxes of a reference-style SSD (``DefaultBoxes``).

    ``steps`` are in pixels; a level's centres are ``(j + 0.5) / fk`` with ``fk = image_size /
    step`` (not the feature size: for SSD300 level 0, fk = 37.5 on a 38x38 map, as the reference).
    ``scales`` (pixels) has one entry per level plus one: level ``l`` uses ``scales[l]`` and the
    geometric mean of ``scales[l]`` and ``scales[l + 1]``.
    """
    image_size: int
    feature_sizes: tuple[int, ...]
    steps: tuple[float, ...]
    scales: tuple[float, ...]
    aspect_ratios: tuple[tuple[int, ...], ...]
    variances: tuple[float, float] = DEFAULT_VARIANCES

    def __post_init__(self):
        n = len(self.feature_sizes)
        if len(self.steps) != n or len(self.aspect_ratios) != n or len(self.scales) != n + 1:
            raise ValueError(
                f"BoxSpec needs one step and one ratio list per level and levels + 1 scales; got "
                f"{n} feature sizes, {len(self.steps)} steps, {len(self.aspect_ratios)} ratio "
                f"lists, {len(self.scales)} scales")

    @property
    def boxes_per_location(self) -> tuple[int, ...]:
        return tuple(2 + 2 * len(r) for r in self.aspect_ratios)

    @property
    def num_boxes(self) -> int:
        return sum(k * f * f for k, f in zip(self.boxes_per_location, self.feature_sizes))


# The MLPerf training SSD (dboxes300_coco): 8732 boxes.
SSD300 = BoxSpec(300, (38, 19, 10, 5, 3, 1), (8, 16, 32, 64, 100, 300),
                 (21, 45, 99, 153, 207, 261, 315),
                 ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)))

# The MLPerf inference SSD-ResNet34 at 1200x1200 (mlcommons/inference r0.5
# v0.5/classification_and_detection/python/models/ssd_r34.py, dboxes_R34_coco): scales are the
# SSD300 ones x4 (int(s * 1200 / 300)); there the steps are int(1200 / fs) = 24, 48, 92, 171, 400,
# 400 and the centre divisor is ``1200 // step`` = the feature size, so the steps here are chosen as
# 1200 / fs to give image_size / step = fs. 15130 boxes.
SSD1200 = BoxSpec(1200, (50, 25, 13, 7, 3, 3),
                  (24.0, 48.0, 1200.0 / 13.0, 1200.0 / 7.0, 400.0, 400.0),
                  (84, 180, 396, 612, 828, 1044, 1260),
                  ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,)))

# SSD-MobileNet-v1 (TF object detection API ssd_anchor_generator, MLPerf inference v0.5 model).
MOBILENET_FEATURE_SIZES = (19, 10, 5, 3, 2, 1)
MOBILENET_BOXES_PER_LOCATION = (3, 6, 6, 6, 6, 6)


def default_boxes(spec: BoxSpec) -> np.ndarray:
    """The default boxes of ``spec``: float32 ``[N, 4]`` in ``[cy, cx, h, w]``, reference order
    (level, box kind, row, column: ``FLATTEN_ORDER = "khw"``), values clamped to [0, 1]."""
    out = []
    for level, fsize in enumerate(spec.feature_sizes):
        fk = spec.image_size / spec.steps[level]
        sk1 = spec.scales[level] / spec.image_size
        sk2 = spec.scales[level + 1] / spec.image_size
        sk3 = math.sqrt(sk1 * sk2)
        sizes = [(sk1, sk1), (sk3, sk3)]  # (h, w) pairs
        for a in spec.aspect_ratios[level]:
            r = math.sqrt(a)
            sizes.append((sk1 / r, sk1 * r))  # the reference's (w, h) = (sk*sqrt(a), sk/sqrt(a))
            sizes.append((sk1 * r, sk1 / r))  # and its transpose
        centres = (np.arange(fsize, dtype=np.float64) + 0.5) / fk
        cy, cx = np.meshgrid(centres, centres, indexing="ij")  # [H, W]: row i, column j
        for h, w in sizes:
            out.append(np.stack([cy.ravel(), cx.ravel(), np.full(cy.size, h),
                                 np.full(cy.size, w)], axis=-1))
    boxes = np.concatenate(out, axis=0).astype(np.float32)
    return np.clip(boxes, 0.0, 1.0)


def ssd_mobilenet_boxes(feature_sizes: Sequence[int] = MOBILENET_FEATURE_SIZES,
                        min_scale: float = 0.2, max_scale: float = 0.95,
                        aspect_ratios: Sequence[float] = (1.0, 2.0, 0.5, 3.0, 0.3333),
                        interpolated_scale_aspect_ratio: float = 1.0,
                        reduce_boxes_in_lowest_layer: bool = True) -> tuple[np.ndarray, str]:
    """The SSD-MobileNet-v1 anchors of the TF object detection API (``create_ssd_anchors`` +
    ``MultipleGridAnchorGenerator`` with default strides and offsets, square image, no clipping):
    ``(anchors float32 [1917, 4] in [cy, cx, h, w], "hwk")``. Ratio 0.3333 as the TF pipeline.config
    (not 1/3). Per layer ``l >= 1``: the ratios in order at scale ``s_l``, then ratio 1 at
    ``sqrt(s_l * s_{l+1})``; layer 0 (reduced): (0.1, 1), (s_0, 2), (s_0, 0.5)."""
    n = len(feature_sizes)
    scales = [min_scale + (max_scale - min_scale) * i / (n - 1) for i in range(n)] + [1.0]
    out = []
    for layer, fsize in enumerate(feature_sizes):
        s, s_next = scales[layer], scales[layer + 1]
        if layer == 0 and reduce_boxes_in_lowest_layer:
            specs = [(0.1, 1.0), (s, 2.0), (s, 0.5)]
        else:
            specs = [(s, a) for a in aspect_ratios]
            if interpolated_scale_aspect_ratio > 0:
                specs.append((math.sqrt(s * s_next), interpolated_scale_aspect_ratio))
        hs = np.array([sc / math.sqrt(a) for sc, a in specs])
        ws = np.array([sc * math.sqrt(a) for sc, a in specs])
        centres = (np.arange(fsize, dtype=np.float64) + 0.5) / fsize
        k = len(specs)
        cy = np.broadcast_to(centres[:, None, None], (fsize, fsize, k))
        cx = np.broadcast_to(centres[None, :, None], (fsize, fsize, k))
        h = np.broadcast_to(hs[None, None, :], (fsize, fsize, k))
        w = np.broadcast_to(ws[None, None, :], (fsize, fsize, k))
        out.append(np.stack([cy, cx, h, w], axis=-1).reshape(-1, 4))
    return np.concatenate(out, axis=0).astype(np.float32), MOBILENET_FLATTEN_ORDER


# ------------------------------------------------------------------------------------------------
# Box geometry and coding.

def cychw_to_corners(b):
    """``[cy, cx, h, w]`` -> ``[ymin, xmin, ymax, xmax]`` (numpy or jax arrays)."""
    xp = jnp if isinstance(b, jax.Array) else np
    cy, cx, h, w = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return xp.stack([cy - 0.5 * h, cx - 0.5 * w, cy + 0.5 * h, cx + 0.5 * w], axis=-1)


def corners_to_cychw(b):
    """``[ymin, xmin, ymax, xmax]`` -> ``[cy, cx, h, w]`` (numpy or jax arrays)."""
    xp = jnp if isinstance(b, jax.Array) else np
    y0, x0, y1, x1 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return xp.stack([0.5 * (y0 + y1), 0.5 * (x0 + x1), y1 - y0, x1 - x0], axis=-1)


def iou(a, b):
    """IoU of corner boxes ``a [..., 4]`` and ``b [..., 4]`` (broadcast) -> ``[...]``.
    Zero where the union is empty (two empty boxes)."""
    a = jnp.asarray(a)
    b = jnp.asarray(b)
    ih = jnp.maximum(jnp.minimum(a[..., 2], b[..., 2]) - jnp.maximum(a[..., 0], b[..., 0]), 0.0)
    iw = jnp.maximum(jnp.minimum(a[..., 3], b[..., 3]) - jnp.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = ih * iw
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def encode(gt_corners, anchors_cychw, variances=DEFAULT_VARIANCES):
    """Box codes ``[..., N, 4]`` (``[ty, tx, th, tw]``) of corner boxes ``[..., N, 4]`` against
    anchors ``[N, 4]`` (``[cy, cx, h, w]``)."""
    g = corners_to_cychw(jnp.asarray(gt_corners, jnp.float32))
    a = jnp.asarray(anchors_cychw, jnp.float32)
    v0, v1 = variances
    t_yx = (g[..., :2] - a[:, :2]) / a[:, 2:] / v0
    t_hw = jnp.log(g[..., 2:] / a[:, 2:]) / v1
    return jnp.concatenate([t_yx, t_hw], axis=-1)


def decode(loc, anchors_cychw, variances=DEFAULT_VARIANCES):
    """Corner boxes ``[..., N, 4]`` (unclipped) from box codes ``[..., N, 4]`` and anchors."""
    loc = jnp.asarray(loc, jnp.float32)
    a = jnp.asarray(anchors_cychw, jnp.float32)
    v0, v1 = variances
    c = loc[..., :2] * v0 * a[:, 2:] + a[:, :2]
    s = jnp.exp(jnp.minimum(loc[..., 2:] * v1, _MAX_LOG_SCALE)) * a[:, 2:]
    return jnp.concatenate([c - 0.5 * s, c + 0.5 * s], axis=-1)


# ------------------------------------------------------------------------------------------------
# Matching (the reference's Encoder.encode, batched).

def _match_one(gt_boxes, gt_labels, num_gt, anchor_corners, anchors_cychw, iou_threshold,
               variances):
    m = gt_boxes.shape[0]
    n = anchor_corners.shape[0]
    area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])
    valid = (jnp.arange(m) < num_gt) & (area > 0)                       # [M]
    ious = iou(gt_boxes[:, None, :], anchor_corners[None, :, :])         # [M, N]
    # Each anchor's best (valid) GT; first index on ties, as torch.max.
    masked = jnp.where(valid[:, None], ious, -1.0)
    best_gt = jnp.argmax(masked, axis=0)                                 # [N]
    best_iou = jnp.max(masked, axis=0)                                   # [N]
    # Each valid GT's best anchor is forced to it; a later GT overwrites an earlier one.
    best_anchor = jnp.argmax(ious, axis=1)                               # [M]
    forced_gt = jnp.full((n,), -1, jnp.int32).at[best_anchor].max(       # [N]
        jnp.where(valid, jnp.arange(m, dtype=jnp.int32), -1))
    forced = forced_gt >= 0
    gt_idx = jnp.where(forced, forced_gt, best_gt)
    positive = forced | (best_iou > iou_threshold)
    labels = jnp.where(positive, gt_labels[gt_idx], 0).astype(jnp.int32)
    codes = encode(gt_boxes[gt_idx], anchors_cychw, variances)
    loc_targets = jnp.where(positive[:, None], codes, 0.0)
    return loc_targets, labels


def match(gt_boxes, gt_labels, num_gt, anchors, iou_threshold: float = 0.5,
          variances=DEFAULT_VARIANCES):
    """Assign ground truth to anchors as the reference ``Encoder.encode`` does.

    ``gt_boxes [B, M, 4]`` corners, ``gt_labels [B, M]`` (1..C-1), ``num_gt [B]`` (boxes at index
    ``>= num_gt`` are padding), ``anchors [N, 4]`` ``[cy, cx, h, w]``. Each anchor takes the GT of
    highest IoU; each GT's highest-IoU anchor is then forced to that GT (a later GT wins a shared
    anchor); an anchor is positive if forced or if its IoU is ``> iou_threshold``.
    Returns ``(loc_targets [B, N, 4]`` float32 codes, zero at negatives, ``labels [B, N]`` int32,
    0 = background``)``.
    """
    anchors_cychw = jnp.asarray(anchors, jnp.float32)
    anchor_corners = cychw_to_corners(anchors_cychw)
    fn = lambda b, l, n: _match_one(b, l, n, anchor_corners, anchors_cychw, iou_threshold,
                                    variances)
    return jax.vmap(fn)(jnp.asarray(gt_boxes, jnp.float32), jnp.asarray(gt_labels, jnp.int32),
                        jnp.asarray(num_gt, jnp.int32))


# ------------------------------------------------------------------------------------------------
# The loss.

def _smooth_l1(x):
    ax = jnp.abs(x)
    return jnp.where(ax < 1.0, 0.5 * x * x, ax - 0.5)


def _rank_mask(values, k, exclude):
    """``rank < k`` per row among the entries not excluded, rank by descending value (the
    reference's double argsort)."""
    v = jnp.where(exclude, -jnp.inf, values)
    order = jnp.argsort(-v, axis=-1)
    rank = jnp.argsort(order, axis=-1)
    return (rank < k[:, None]) & ~exclude


def _bisect_topk_mask(values, k, exclude):
    """A mask of the ``k`` largest entries of each row of non-negative float32 ``values [B, N]``
    that are not excluded (``k [B]`` int32, 0..N), without sorting: binary search for the k-th
    largest value on the int32 bit pattern (for floats >= 0 it orders as the values), then every
    value above it plus the first ties (by index) up to ``k``."""
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)
    bits = jnp.maximum(bits, 0)          # -0.0 -> +0.0
    bits = jnp.where(exclude, -1, bits)  # below every candidate, never taken
    kk = k[:, None]
    # Invariant: count(bits >= lo) >= k and count(bits >= hi) < k (hi: above +inf's bits).
    lo = jnp.zeros_like(k)
    hi = jnp.full_like(k, 0x7F800001)

    def body(_, carry):
        lo, hi = carry
        mid = lo + (hi - lo) // 2
        ok = jnp.sum(bits >= mid[:, None], axis=-1) >= k
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, body, (lo, hi))
    thr = lo[:, None]
    above = bits > thr
    tie = bits == thr
    room = kk - jnp.sum(above, axis=-1, keepdims=True)
    take_tie = tie & (jnp.cumsum(tie.astype(jnp.int32), axis=-1) <= room)
    return (above | take_tie) & (kk > 0)


def ssd_loss(loc, logits, loc_targets, labels, neg_pos_ratio: int = 3, *,
             mining: str = "bisect"):
    """The reference SSD loss (``base_model.Loss``).

    ``loc [B, N, 4]`` predicted codes, ``logits [B, N, C]``, ``loc_targets [B, N, 4]`` and
    ``labels [B, N]`` from ``match``. Per image: smooth-L1 (beta 1) summed over the 4 coordinates
    of the positives, plus softmax cross-entropy summed over the positives and the
    ``min(neg_pos_ratio * num_pos, N)`` negatives of highest CE (at most all the negatives; a
    positive is never also counted as a negative), divided by ``num_pos``; an image with no
    positive contributes 0; then the batch mean.
    ``mining``: "bisect" (sort-free, default) or "sort" (double argsort); both are exact.
    Returns ``(loss, metrics)`` with metrics ``loc_loss``, ``cls_loss`` (the two parts, normalised
    like the loss), ``num_pos`` and ``num_neg`` (means per image).
    """
    loc = jnp.asarray(loc, jnp.float32)
    logits = jnp.asarray(logits, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    n = labels.shape[-1]
    pos = labels > 0
    num_pos = jnp.sum(pos, axis=-1)                                      # [B]
    posf = pos.astype(jnp.float32)

    sl1 = jnp.sum(_smooth_l1(loc - loc_targets), axis=-1)                # [B, N]
    sl1 = jnp.sum(sl1 * posf, axis=-1)                                   # [B]

    logp = jax.nn.log_softmax(logits, axis=-1)
    ce = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]  # [B, N]
    num_neg = jnp.minimum(neg_pos_ratio * num_pos, n).astype(jnp.int32)
    if mining == "sort":
        neg = _rank_mask(ce, num_neg, pos)
    elif mining == "bisect":
        neg = _bisect_topk_mask(ce, num_neg, pos)
    else:
        raise ValueError(f"mining must be 'bisect' or 'sort', got {mining!r}")
    cls = jnp.sum(ce * (posf + neg.astype(jnp.float32)), axis=-1)       # [B]

    has_pos = (num_pos > 0).astype(jnp.float32)
    denom = jnp.maximum(num_pos.astype(jnp.float32), 1e-6)
    scale = has_pos / denom
    loc_part = sl1 * scale
    cls_part = cls * scale
    loss = jnp.mean(loc_part + cls_part)
    metrics = {
        "loc_loss": jnp.mean(loc_part),
        "cls_loss": jnp.mean(cls_part),
        "num_pos": jnp.mean(num_pos.astype(jnp.float32)),
        "num_neg": jnp.mean(jnp.sum(neg, axis=-1).astype(jnp.float32)),
    }
    return loss, metrics


# ------------------------------------------------------------------------------------------------
# Post-processing: decode, per-class threshold + top-k + greedy NMS, overall top-k.

def greedy_nms(boxes, valid, iou_threshold):
    """Greedy NMS over candidates already in descending score order.

    ``boxes [K, 4]`` corners, ``valid [K]`` -> ``keep [K]`` bool. Candidate ``i`` is kept if valid
    and not suppressed by a kept earlier one; a kept box suppresses later boxes whose IoU with it is
    not ``< iou_threshold`` (the reference keeps ``iou < criteria``)."""
    k = boxes.shape[0]
    idx = jnp.arange(k)

    def body(i, carry):
        keep, suppressed = carry
        keep_i = valid[i] & ~suppressed[i]
        overlap = ~(iou(boxes[i], boxes) < iou_threshold)
        suppressed = suppressed | (keep_i & overlap & (idx > i))
        return keep.at[i].set(keep_i), suppressed

    keep0 = jnp.zeros((k,), bool)
    keep, _ = jax.lax.fori_loop(0, k, body, (keep0, jnp.zeros((k,), bool)))
    return keep


def postprocess(loc, logits, anchors, *, score_threshold: float = 0.05,
                per_class_top_k: int = 200, nms_iou: float = 0.5, max_detections: int = 200,
                background: bool = True, sigmoid: bool = False, variances=DEFAULT_VARIANCES):
    """Detections from the network outputs, as the reference ``Encoder.decode_batch``.

    ``loc [B, N, 4]`` codes, ``logits [B, N, C]``, ``anchors [N, 4]`` ``[cy, cx, h, w]``.
    Scores are the softmax over classes (or per-class sigmoids with ``sigmoid=True``). For each
    class (class 0 skipped when ``background``): keep scores ``> score_threshold``, take the top
    ``per_class_top_k``, greedy NMS on the decoded (unclipped) boxes; then keep the overall top
    ``max_detections`` by score, in descending score order.
    Returns a dict: ``boxes [B, K, 4]`` corners clipped to [0, 1], ``scores [B, K]``, ``classes
    [B, K]`` int32, ``valid [B, K]`` bool (``K = max_detections``; invalid rows are zeros).
    """
    boxes = decode(loc, anchors, variances)                              # [B, N, 4]
    logits = jnp.asarray(logits, jnp.float32)
    probs = jax.nn.sigmoid(logits) if sigmoid else jax.nn.softmax(logits, axis=-1)
    first = 1 if background else 0
    probs = jnp.swapaxes(probs[..., first:], -1, -2)                     # [B, C', N]
    n = probs.shape[-1]
    k = min(per_class_top_k, n)
    masked = jnp.where(probs > score_threshold, probs, -jnp.inf)
    cand_scores, cand_idx = jax.lax.top_k(masked, k)                     # [B, C', K]
    cand_valid = cand_scores > -jnp.inf
    cand_boxes = jax.vmap(lambda b, i: b[i])(boxes, cand_idx)           # [B, C', K, 4]
    nms = jax.vmap(jax.vmap(lambda b, v: greedy_nms(b, v, nms_iou)))
    keep = nms(cand_boxes, cand_valid)                                   # [B, C', K]

    bsz, ncls = keep.shape[:2]
    flat_scores = jnp.where(keep, cand_scores, -jnp.inf).reshape(bsz, ncls * k)
    flat_boxes = cand_boxes.reshape(bsz, ncls * k, 4)
    m = min(max_detections, ncls * k)
    top_scores, top_idx = jax.lax.top_k(flat_scores, m)
    valid = top_scores > -jnp.inf
    out_boxes = jnp.take_along_axis(flat_boxes, top_idx[..., None], axis=1)
    out_boxes = jnp.where(valid[..., None], jnp.clip(out_boxes, 0.0, 1.0), 0.0)
    classes = jnp.where(valid, top_idx // k + first, 0).astype(jnp.int32)
    scores = jnp.where(valid, top_scores, 0.0)
    if m < max_detections:  # fewer candidates than slots: pad to the fixed size
        pad = max_detections - m
        out_boxes = jnp.pad(out_boxes, ((0, 0), (0, pad), (0, 0)))
        scores = jnp.pad(scores, ((0, 0), (0, pad)))
        classes = jnp.pad(classes, ((0, 0), (0, pad)))
        valid = jnp.pad(valid, ((0, 0), (0, pad)))
    return {"boxes": out_boxes, "scores": scores, "classes": classes, "valid": valid}
