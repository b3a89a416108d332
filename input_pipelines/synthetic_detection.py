"""The SSD tiny track's data: a small detection task with structure a model must learn.

Each ``image_size`` x ``image_size`` image (64 by default) holds 1 to ``max_objects`` filled shapes
of four classes (1 rectangle, 2 ellipse, 3 upright triangle, 4 plus-shaped cross; 0 is the
background), each of a random size (12 to 40 pixels per side at 64, scaled with the image, aspect
ratio 1/2 to 2), position and colour, on a noisy, smoothly textured background of random
colour. Colour is independent of the class (and kept away from the background's), so the class
comes from the shape alone. Shapes may overlap a little: a new shape is placed only where it
covers at most a quarter of any earlier shape's box (and vice versa), else it is left out; later
shapes are drawn on top.

Ground truth is the geometry: each box is the tight box of its shape's rasterised pixels (the
whole shape, also where a later shape covers it), ``[ymin, xmin, ymax, xmax]`` normalised with
pixel edges (pixel ``i`` spans ``[i, i + 1) / size``). The data is a fixed function of (``n``,
``seed``, ``image_size``, ``max_objects``); it is vectorised over images (8k 64x64 images in a
few seconds on one core).
"""
from __future__ import annotations

import numpy as np

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "cross")
NUM_CLASSES = len(CLASS_NAMES) + 1  # with the background
MAX_OVERLAP = 0.25  # intersection / smaller box area allowed between two shapes
_CHUNK = 512  # images rasterised at a time (bounds memory; the result does not depend on it)
_TRIES = 12  # placements tried per object
_COARSE = 5  # background texture grid (per side)


def _shape_masks(kind: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """Boolean [n, size, size] masks of shapes ``kind`` (1..4) in nominal boxes ``box`` [n, 4]
    (y0, x0, y1, x1 in pixels), tested at pixel centres."""
    c = np.arange(size, dtype=np.float32) + 0.5
    cy, cx = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    hy, hx = (box[:, 2] - box[:, 0]) / 2, (box[:, 3] - box[:, 1]) / 2
    v = ((c[None, :] - cy[:, None]) / hy[:, None])[:, :, None]  # [n, S, 1], -1..1 inside
    u = ((c[None, :] - cx[:, None]) / hx[:, None])[:, None, :]  # [n, 1, S]
    out = np.zeros((len(kind), size, size), bool)
    for k in range(1, 5):
        i = np.nonzero(kind == k)[0]
        if not len(i):
            continue
        uu, vv = u[i], v[i]
        inside_u, inside_v = np.abs(uu) <= 1, np.abs(vv) <= 1
        if k == 1:  # rectangle
            m = inside_u & inside_v
        elif k == 2:  # ellipse
            m = uu * uu + vv * vv <= 1
        elif k == 3:  # upright triangle: apex at the top (v = -1), base at the bottom
            m = inside_v & (np.abs(uu) <= (vv + 1) / 2)
        else:  # plus-shaped cross, bars a third of the box thick
            m = (inside_u & (np.abs(vv) <= 1 / 3)) | (inside_v & (np.abs(uu) <= 1 / 3))
        out[i] = m
    return out


def _tight_boxes(masks: np.ndarray) -> np.ndarray:
    """[n, S, S] masks -> [n, 4] pixel-edge boxes (y0, x0, y1, x1) of their pixels."""
    s = masks.shape[-1]
    rows, cols = masks.any(2), masks.any(1)
    y0, x0 = rows.argmax(1), cols.argmax(1)
    y1, x1 = s - rows[:, ::-1].argmax(1), s - cols[:, ::-1].argmax(1)
    return np.stack([y0, x0, y1, x1], 1).astype(np.float32)


def _overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over the smaller area of boxes a [..., 4] and b [..., 4] (y0, x0, y1, x1)."""
    ih = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iw = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    return ih * iw / np.maximum(np.minimum(area(a), area(b)), 1e-6)


def _place(rng: np.random.Generator, n: int, size: int, max_objects: int):
    """Kinds [n, M] (0 = none), nominal boxes [n, M, 4] in pixels, colours [n, M, 3]."""
    lo, hi = 12.0 * size / 64, 40.0 * size / 64
    want = rng.integers(1, max_objects + 1, n)
    kinds = np.zeros((n, max_objects), np.int64)
    boxes = np.zeros((n, max_objects, 4), np.float32)
    count = np.zeros(n, np.int64)
    for j in range(max_objects):
        # _TRIES candidate boxes per image: side lengths in [lo, hi], aspect 1/2..2, inside
        hgt = rng.uniform(lo, hi, (n, _TRIES))
        ratio = np.exp(rng.uniform(np.log(0.5), np.log(2.0), (n, _TRIES)))
        wid = np.clip(hgt * ratio, lo, hi)
        y0 = rng.uniform(0, 1, (n, _TRIES)) * (size - hgt)
        x0 = rng.uniform(0, 1, (n, _TRIES)) * (size - wid)
        cand = np.stack([y0, x0, y0 + hgt, x0 + wid], -1).astype(np.float32)
        kind = rng.integers(1, 5, n)
        ok = np.ones((n, _TRIES), bool)
        for p in range(j):
            placed = p < count  # [n]
            ov = _overlap(cand, boxes[:, p:p + 1])  # [n, _TRIES] against the p-th placed box
            ok &= ~(placed[:, None] & (ov > MAX_OVERLAP))
        first = ok.argmax(1)
        accept = ok.any(1) & (j < want)
        rows = np.nonzero(accept)[0]
        slot = count[rows]
        boxes[rows, slot] = cand[rows, first[rows]]
        kinds[rows, slot] = kind[rows]
        count[rows] += 1
    return kinds, boxes, count


def _colours(rng: np.random.Generator, bg: np.ndarray, m: int) -> np.ndarray:
    """[n, m, 3] object colours at least 100 (RGB distance) from each image's background."""
    n = len(bg)
    cand = rng.uniform(0, 255, (n, m, 8, 3))
    far = np.linalg.norm(cand - bg[:, None, None, :], axis=-1) >= 100
    pick = far.argmax(-1)
    col = np.take_along_axis(cand, pick[..., None, None].repeat(3, -1), 2)[:, :, 0]
    fallback = np.where(bg[:, None, :] < 128, 255.0, 0.0)  # the far corner of the RGB cube
    return np.where(far.any(-1)[..., None], col, fallback).astype(np.float32)


def _interp_matrix(size: int, coarse: int) -> np.ndarray:
    """[size, coarse] linear interpolation weights from a coarse grid to pixel centres."""
    pos = (np.arange(size) + 0.5) / size * (coarse - 1)
    i0 = np.clip(np.floor(pos).astype(int), 0, coarse - 2)
    f = pos - i0
    a = np.zeros((size, coarse), np.float32)
    a[np.arange(size), i0] = 1 - f
    a[np.arange(size), i0 + 1] = f
    return a


def make_split(n: int, seed: int, image_size: int = 64, max_objects: int = 4, *,
               return_masks: bool = False) -> dict[str, np.ndarray]:
    """``n`` images with their ground truth, deterministic in (``n``, ``seed``, sizes).

    Returns ``images`` uint8 [n, S, S, 3], ``boxes`` float32 [n, M, 4] (normalised ``[ymin,
    xmin, ymax, xmax]``, zero rows past ``num_boxes``), ``labels`` int32 [n, M] (1..4, 0 past
    ``num_boxes``), ``num_boxes`` int32 [n] (1..M) with M = ``max_objects``. With
    ``return_masks``, also ``masks`` bool [n, M, S, S]: each shape's full pixels.
    """
    if n < 0 or max_objects < 1 or image_size < 16:
        raise ValueError("need n >= 0, max_objects >= 1 and image_size >= 16")
    s, m = int(image_size), int(max_objects)
    rng = np.random.default_rng([seed, s, m])
    kinds, nominal, count = _place(rng, n, s, m)
    bg = rng.uniform(0, 255, (n, 3)).astype(np.float32)
    colours = _colours(rng, bg, m)
    texture = rng.normal(0, 22, (n, _COARSE, _COARSE, 3)).astype(np.float32)
    noise_seed = int(rng.integers(0, 2 ** 63))
    interp = _interp_matrix(s, _COARSE)

    images = np.empty((n, s, s, 3), np.uint8)
    boxes = np.zeros((n, m, 4), np.float32)
    masks_out = np.zeros((n, m, s, s), bool) if return_masks else None
    for c0 in range(0, n, _CHUNK):
        sl = slice(c0, min(n, c0 + _CHUNK))
        k = sl.stop - sl.start
        tex = interp @ texture[sl].transpose(0, 3, 1, 2) @ interp.T  # [k, 3, S, S]
        img = np.ascontiguousarray(bg[sl, None, None, :] + tex.transpose(0, 2, 3, 1))
        for j in range(m):
            present = kinds[sl, j] > 0
            idx = np.nonzero(present)[0]
            if not len(idx):
                continue
            mk = _shape_masks(kinds[sl, j][idx], nominal[sl, j][idx], s)
            full = np.zeros((k, s, s), bool)
            full[idx] = mk
            boxes[sl.start + idx, j] = _tight_boxes(mk) / s
            np.copyto(img, colours[sl, j][:, None, None, :], where=full[..., None])
            if masks_out is not None:
                masks_out[sl, j] = full
        crng = np.random.default_rng([noise_seed, c0])
        img += 8.0 * crng.standard_normal(img.shape, dtype=np.float32)
        images[sl] = np.clip(np.floor(img + 0.5), 0, 255).astype(np.uint8)
    out = {"images": images, "boxes": boxes, "labels": kinds.astype(np.int32),
           "num_boxes": count.astype(np.int32)}
    if masks_out is not None:
        out["masks"] = masks_out
    return out
