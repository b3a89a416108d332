"""Instance masks on the host: full-image masks cropped to their box at a fixed resolution.

Mask R-CNN's input keeps each ground-truth mask as a fixed ``R x R`` crop of its box rather than
at full image size (the TPU implementations' layout: Google's MLPerf v0.6 Mask R-CNN crops to
112x112), so that a batch has fixed shapes and the mask targets of the sampled RoIs are a
resampling of the crop (``models/roi_align.mask_targets``).

Coordinates are continuous pixels: pixel ``(i, j)`` covers ``[i, i + 1) x [j, j + 1)``, its value
sits at its centre ``(i + 0.5, j + 0.5)``, and boxes are ``[ymin, xmin, ymax, xmax]``. Output cell
``(a, b)`` of a crop samples the box at ``(ymin + (a + 0.5) h / R, xmin + (b + 0.5) w / R)`` by
bilinear interpolation between pixel centres, zero outside the image.
"""
from __future__ import annotations

import numpy as np


def _axis_weights(lo: np.ndarray, hi: np.ndarray, size: int, extent: int) -> np.ndarray:
    """Bilinear weights ``[..., size, extent]`` of ``size`` sample points spread over
    ``[lo, hi)`` against the ``extent`` pixel centres of one axis (zero past the edges)."""
    t = (np.arange(size, dtype=np.float64) + 0.5) / size
    pos = lo[..., None] + t * (hi - lo)[..., None] - 0.5          # in pixel-centre units
    k0 = np.floor(pos)
    f = (pos - k0)[..., None]
    k = np.arange(extent)
    return (k == k0[..., None]) * (1.0 - f) + (k == k0[..., None] + 1) * f


def crop_masks(masks: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """``masks [..., H, W]`` (0/1) cropped to ``boxes [..., 4]`` (pixels) and resampled to
    ``[..., size, size]`` float32 in [0, 1]; batched over the leading axes."""
    masks = np.asarray(masks, np.float64)
    boxes = np.asarray(boxes, np.float64)
    h, w = masks.shape[-2:]
    wy = _axis_weights(boxes[..., 0], boxes[..., 2], size, h)       # [..., R, H]
    wx = _axis_weights(boxes[..., 1], boxes[..., 3], size, w)       # [..., R, W]
    out = np.matmul(np.matmul(wy, masks), np.swapaxes(wx, -1, -2))
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Pasting predicted masks back into the image (evaluation)
#
# The reference (maskrcnn-benchmark ``Masker(threshold=0.5, padding=1)``, the same arithmetic as
# torchvision's ``paste_masks_in_image`` followed by ``> 0.5``) works on legacy boxes
# ``(x0, y0, x1, y1)`` whose ``x1``/``y1`` are the *last* pixel covered (widths ``x1 - x0 + 1``).
# Our boxes are continuous: ``[ymin, xmin, ymax, xmax]`` with integer corners covers pixels
# ``ymin..ymax-1``, so the legacy box fed to the reference arithmetic is
#
#     (x0, y0, x1, y1) = float32(xmin), float32(ymin), float32(xmax - 1), float32(ymax - 1)
#
# (``legacy_boxes``). From there every step mirrors the reference in float32, as torch computes
# it: the mask is padded by ``padding`` zeros on each side, the box expanded about its centre by
# ``(M + 2 padding) / M``, its corners truncated toward zero to integers (``.to(int)``), the padded
# mask resized to ``(y1 - y0 + 1, x1 - x0 + 1)`` pixels (at least 1) by bilinear interpolation
# with ``align_corners=False`` (torch's source index ``scale * (j + 0.5) - 0.5`` clamped at 0,
# ``scale = in / out``, rounded once as torch's fused multiply-add does: that rounding decides
# the exact 0.5 ties at the edges of 0/1 masks), thresholded with ``> threshold`` and pasted into
# a zero image, clipped to it.
# ---------------------------------------------------------------------------------------------

def legacy_boxes(boxes: np.ndarray) -> np.ndarray:
    """Continuous ``[..., 4]`` ``[ymin, xmin, ymax, xmax]`` pixel boxes -> the reference's legacy
    ``(x0, y0, x1, y1)`` (last covered pixel inclusive) in float32, as fed to
    torchvision's ``paste_masks_in_image`` / maskrcnn-benchmark's ``Masker``."""
    b = np.asarray(boxes, np.float64)
    return np.stack([b[..., 1], b[..., 0], b[..., 3] - 1.0, b[..., 2] - 1.0],
                    axis=-1).astype(np.float32)


def _resize_taps(out_size: int, in_size: int, rows: np.ndarray):
    """torch's bilinear (align_corners=False) taps for output indices ``rows`` of an
    ``in_size -> out_size`` resize, in float32: (index0, index1, lambda0, lambda1)."""
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    # scale * (j + 0.5) - 0.5 as one fused multiply-add (as torch's compiled kernels do): the
    # product of a float32 and a half-integer is exact in float64, so one rounding to float32
    src = (np.float64(scale) * (rows + 0.5) - 0.5).astype(f32)
    src = np.maximum(src, f32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    l1 = np.clip(src - i0.astype(f32), f32(0.0), f32(1.0)).astype(f32)
    i1 = i0 + (i0 < in_size - 1)
    return i0, i1, (f32(1.0) - l1).astype(f32), l1


def _paste_one(mask: np.ndarray, box: np.ndarray, out: np.ndarray, threshold: float) -> None:
    """One padded float32 mask ``[P, Q]`` into ``out [H, W]`` (uint8, zeros) at the expanded,
    truncated integer legacy ``box`` (x0, y0, x1, y1)."""
    height, width = out.shape
    x0, y0, x1, y1 = (int(v) for v in box)
    w, h = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
    vx0, vx1 = max(x0, 0), min(x1 + 1, width)
    vy0, vy1 = max(y0, 0), min(y1 + 1, height)
    if vx1 <= vx0 or vy1 <= vy0:
        return
    # only the visible rows / columns of the resized mask are computed
    iy0, iy1, ly0, ly1 = _resize_taps(h, mask.shape[0], np.arange(vy0 - y0, vy1 - y0))
    ix0, ix1, lx0, lx1 = _resize_taps(w, mask.shape[1], np.arange(vx0 - x0, vx1 - x0))
    r0, r1 = mask[iy0], mask[iy1]
    t0 = lx0 * r0[:, ix0] + lx1 * r0[:, ix1]       # width first, then height (torch's order)
    t1 = lx0 * r1[:, ix0] + lx1 * r1[:, ix1]
    val = ly0[:, None] * t0 + ly1[:, None] * t1
    if threshold >= 0:
        res = val > np.float32(threshold)
    else:                                           # the reference's soft-mask branch
        res = (val * np.float32(255.0)).astype(np.uint8)
    out[vy0:vy1, vx0:vx1] = res


def paste_masks(masks: np.ndarray, boxes: np.ndarray, height: int, width: int, *,
                threshold: float = 0.5, padding: int = 1) -> np.ndarray:
    """Predicted masks pasted into an image: maskrcnn-benchmark's ``Masker`` (torchvision's
    ``paste_masks_in_image`` then ``> threshold``) on continuous boxes.

    ``masks`` [K, M, M] probabilities (the box's ``M x M`` mask head output); ``boxes`` [K, 4]
    ``[ymin, xmin, ymax, xmax]`` in pixels of the ``height x width`` target image (mapped to the
    reference's legacy boxes by ``legacy_boxes``). Returns uint8 [K, height, width] of 0/1
    (``threshold < 0``: the reference's ``uint8(p * 255)`` soft masks instead).
    """
    masks = np.asarray(masks, np.float32)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [K, M, M], got shape {masks.shape}")
    k = masks.shape[0]
    boxes = np.asarray(boxes).reshape(k, 4)
    out = np.zeros((k, int(height), int(width)), np.uint8)
    if k == 0:
        return out
    f32 = np.float32
    m = masks.shape[-1]
    padded = np.pad(masks, ((0, 0), (padding, padding), (padding, padding)))
    scale = f32(float(m + 2 * padding) / m)
    lb = legacy_boxes(boxes)                                         # float32 (x0, y0, x1, y1)
    half_w = (lb[:, 2] - lb[:, 0]) * f32(0.5) * scale
    half_h = (lb[:, 3] - lb[:, 1]) * f32(0.5) * scale
    cx = (lb[:, 2] + lb[:, 0]) * f32(0.5)
    cy = (lb[:, 3] + lb[:, 1]) * f32(0.5)
    expanded = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)
    expanded = np.trunc(expanded).astype(np.int64)                   # torch .to(int): toward 0
    for i in range(k):
        _paste_one(padded[i], expanded[i], out[i], threshold)
    return out
