"""The Mask R-CNN tiny track's data: the synthetic shapes of ``synthetic_detection`` with masks.

Each shape's mask is its rasterised geometry (the whole shape, as its box is, also where a later
shape covers part of it). Training batches carry what the COCO pipeline carries
(``maskrcnn_input``): boxes in pixels, every mask as a fixed-size crop of its box
(``instance_masks.crop_masks``), the instance count and the valid image size; a horizontal flip
with probability 1/2 mirrors the image, the boxes and the crops. Evaluation scores boxes and
full-image masks with pycocotools (``coco_eval.ground_truth_from_arrays`` with ``masks``).
"""
from __future__ import annotations

import functools
from typing import Iterator

import ml_collections
import numpy as np

from mlperf_jax.input_pipelines.source import DataSource

_CROP_CHUNK = 1024  # images whose masks are cropped at a time (bounds memory)


@functools.lru_cache(maxsize=2)
def make_arrays(n: int, seed: int, size: int, max_objects: int, mask_size: int
                ) -> dict[str, np.ndarray]:
    """``synthetic_detection.make_split`` with pixel boxes and ``crops`` uint8 [n, M, R, R]."""
    from mlperf_jax.input_pipelines import instance_masks, synthetic_detection as sd
    split = sd.make_split(n, seed=seed, image_size=size, max_objects=max_objects,
                          return_masks=True)
    boxes = split["boxes"] * np.float32(size)
    crops = np.zeros((n, max_objects, mask_size, mask_size), np.uint8)
    for c in range(0, n, _CROP_CHUNK):
        sl = slice(c, c + _CROP_CHUNK)
        crop = instance_masks.crop_masks(split["masks"][sl], boxes[sl], mask_size)
        crops[sl] = np.round(crop * 255.0).astype(np.uint8)
    return dict(split, boxes=boxes, crops=crops)


def data_source(config: ml_collections.ConfigDict, seed: int, process_index: int,
                process_count: int, train_spec, eval_spec) -> DataSource:
    from mlperf_jax.input_pipelines import coco_eval, synthetic_detection as sd
    gbs, ebs = int(config.global_batch_size), int(config.eval_batch_size)
    lbs, lebs = gbs // process_count, ebs // process_count
    size, m, r = int(config.image_size), int(config.max_instances), int(config.gt_mask_size)
    train = make_arrays(int(config.train_examples), 1, size, m, r)
    evals = make_arrays(int(config.eval_examples), 2, size, m, r)
    n_train, n_eval = len(train["images"]), len(evals["images"])
    spe = n_train // gbs
    if spe == 0:
        raise ValueError(f"global batch {gbs} is larger than the {n_train} training examples")
    hw = np.full((lbs, 2), size, np.int32)

    def train_epoch(epoch: int, skip: int) -> Iterator:
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(n_train)
        flips = rng.random(n_train) < 0.5
        for step in range(skip, spe):
            idx = perm[step * gbs + process_index * lbs: step * gbs + (process_index + 1) * lbs]
            f = flips[idx]
            img = np.where(f[:, None, None, None], train["images"][idx][:, :, ::-1],
                           train["images"][idx])
            boxes = train["boxes"][idx].copy()
            # a horizontal flip maps x to W - x: xmin' = W - xmax, xmax' = W - xmin
            boxes[f, :, 1], boxes[f, :, 3] = size - boxes[f, :, 3], size - boxes[f, :, 1]
            crops = np.where(f[:, None, None, None], train["crops"][idx][..., ::-1],
                             train["crops"][idx])
            num = train["num_boxes"][idx]
            boxes[np.arange(m)[None, :] >= num[:, None]] = 0.0
            yield {"image": img, "boxes": boxes, "classes": train["labels"][idx],
                   "masks": np.ascontiguousarray(crops), "num_gt": num, "image_hw": hw}

    def eval_batches() -> Iterator:
        for start in range(0, n_eval, ebs):
            idx = np.arange(start + process_index * lebs, start + (process_index + 1) * lebs)
            mask = idx < n_eval
            idx = np.where(mask, idx, 0)
            yield {"image": evals["images"][idx], "image_id": (idx + 1).astype(np.int32),
                   "image_hw": np.full((len(idx), 2), size, np.int32),
                   "orig_size": np.full((len(idx), 2), size, np.int32), "mask": mask}

    def eval_context():
        return coco_eval.ground_truth_from_arrays(
            np.arange(1, n_eval + 1), np.full((n_eval, 2), size), evals["boxes"] / size,
            evals["labels"], evals["num_boxes"], category_names=sd.CLASS_NAMES,
            masks=evals["masks"])

    return DataSource(
        num_train_samples=spe * gbs, num_eval_samples=n_eval, steps_per_epoch=spe,
        train_epoch=train_epoch, eval_batches=eval_batches, train_spec=train_spec,
        eval_spec=eval_spec, eval_context=eval_context, synthetic=True,
        description="synthetic shapes with instance masks (tiny track)")
