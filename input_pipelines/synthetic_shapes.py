"""The ResNet tiny track's data: a small image task with structure a model must learn.

Ten classes, each a (shape, stripe orientation) pair: five shapes (disk, square, triangle, cross,
ring) filled with horizontal or vertical stripes, at a random position, size and colour pair, on a
noisy background of random colour. A classifier must find the shape and read its texture; neither
the mean colour nor the position gives the class away.

A fixed fraction of labels is flipped to a random other class, in training and evaluation alike,
so a perfect model scores about ``1 - label_noise``: top-1 on this set lies in [0, 1) as the
MLPerf compliance checker wants of ``eval_accuracy``, and an honest model has headroom to show.
The images are a fixed dataset (its own seed, like a real one); run seeds only shuffle and init.
"""
from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
SHAPES = ("disk", "square", "triangle", "cross", "ring")


def _shape_masks(kind: np.ndarray, cx, cy, r, size: int) -> np.ndarray:
    """Boolean masks [n, size, size] for each sample's shape (vectorised over samples)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx = xx[None] - cx[:, None, None]
    dy = yy[None] - cy[:, None, None]
    rr = r[:, None, None]
    dist = np.sqrt(dx ** 2 + dy ** 2)
    disk = dist <= rr
    square = (np.abs(dx) <= rr * 0.85) & (np.abs(dy) <= rr * 0.85)
    # upright triangle: below the apex, inside the two slanted edges
    tri = (dy <= rr * 0.8) & (dy >= -rr) & (np.abs(dx) <= (dy + rr) * 0.6)
    cross = ((np.abs(dx) <= rr * 0.3) | (np.abs(dy) <= rr * 0.3)) & \
            (np.abs(dx) <= rr) & (np.abs(dy) <= rr)
    ring = (dist <= rr) & (dist >= rr * 0.55)
    masks = np.stack([disk, square, tri, cross, ring], axis=1)  # [n, 5, H, W]
    return masks[np.arange(len(kind)), kind]


def make_split(n: int, *, seed: int, image_size: int = 32, label_noise: float = 0.08
               ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8 [n, S, S, 3]) and labels (int32 [n]), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, n)
    kind, vertical = labels // 2, labels % 2
    s = image_size
    r = rng.uniform(0.22, 0.38, n) * s
    cx = rng.uniform(r, s - r)
    cy = rng.uniform(r, s - r)
    mask = _shape_masks(kind, cx, cy, r, s)
    period = rng.integers(3, 5, n)[:, None, None]
    phase = rng.integers(0, 4, n)[:, None, None]
    yy, xx = np.mgrid[0:s, 0:s]
    coord = np.where(vertical[:, None, None] == 1, xx[None], yy[None])
    stripes = ((coord + phase) // period) % 2 == 0
    bg = rng.uniform(0, 255, (n, 1, 1, 3))
    fg1 = rng.uniform(0, 255, (n, 1, 1, 3))
    fg2 = 255 - fg1  # stripes always contrast
    img = np.where(stripes[..., None], fg1, fg2)
    img = np.where(mask[..., None], img, bg)
    img = img + rng.normal(0, 20, img.shape)
    images = np.clip(img, 0, 255).astype(np.uint8)
    flip = rng.random(n) < label_noise
    noisy = (labels + rng.integers(1, NUM_CLASSES, n)) % NUM_CLASSES
    labels = np.where(flip, noisy, labels).astype(np.int32)
    return images, labels
