"""COCO 2017 for Mask R-CNN: the timed tf.data pipelines over ``coco_instances``' TFRecords.

Training, as maskrcnn-benchmark's transforms (spec ``detection.md`` section 2):

- resize (bilinear; antialiased when it shrinks, as PIL is) to ``get_size``: the shorter side to
  ``min_size`` unless the longer side would then pass ``max_size``, in which case the shorter side
  is ``int(round(max_size * short / long))`` (Python's round: half to even); the other side is
  ``int(size * other / side)`` (truncated), and an image whose shorter side already is ``size``
  keeps its shape. Boxes are scaled by ``new / old`` per axis;
- horizontal flip with probability 1/2: the image, the boxes (``x -> w - x`` in continuous pixels
  of the resized image) and every mask crop (left-right: a crop covers its box, so the flip of the
  image is the flip of the crop). The draw is a stateless function of (seed, epoch, the example's
  index in the prepared split): an epoch is reproducible, and an example's flip does not depend
  on the number of hosts or on its place in the shuffle;
- the image is zero-padded bottom/right to ``pad_size`` squared (``pad_size`` at least ``max_size``
  rounded up to 32, as ``SIZE_DIVISIBILITY=32`` needs); ``image_hw`` is the resized size;
- instances beyond ``max_instances`` are dropped: an image keeps its first ``max_instances`` by
  annotation id (COCO train2017 has at most 93 non-crowd instances in an image);
- shuffle: this host's shard files in an order drawn from (seed, epoch, host), read 16 at a time
  interleaved, then a ``shuffle_buffer`` (1024 by default) seeded the same way, all
  deterministic, so ``.skip(n)`` resumes an epoch exactly;
- hosts: each takes a contiguous, disjoint run of ``num_examples // process_count`` examples
  (``coco._host_slice``; the last ``num_examples % process_count`` are never seen), reading only
  the shards that hold it.

Evaluation: every val image in the prepared order, resized the same way (no flip) and padded;
the last batch is padded with rows whose ``mask`` is False, and every host yields the same number
of batches (``ceil(ceil(n / process_count) / batch_size)``).

Element specs (per host; ``train_spec`` / ``eval_spec`` give them as ``{key: (shape, dtype)}``):
    train: image uint8 [b, P, P, 3], boxes float32 [b, M, 4] ([ymin, xmin, ymax, xmax] pixels of
           the resized image, zero rows past num_gt), classes int32 [b, M] (1..80, 0 past
           num_gt), masks uint8 [b, M, R, R] (0..255 crops of the boxes), num_gt int32 [b],
           image_hw int32 [b, 2] (resized h, w)
    eval:  image uint8 [b, P, P, 3], image_id int32 [b], image_hw int32 [b, 2],
           orig_size int32 [b, 2] (original h, w), mask bool [b]
Images leave the pipeline as uint8 RGB; the device normalises (``preprocessing.normalize``).
"""
from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np
import tensorflow as tf

from mlperf_jax.input_pipelines import coco, coco_instances, preprocessing
from mlperf_jax.input_pipelines.source import epoch_seed, tf_data_options

AUTOTUNE = tf.data.AUTOTUNE
MIN_SIZE, MAX_SIZE, PAD_SIZE = 800, 1333, 1344
MAX_INSTANCES = 100
SIZE_DIVISIBILITY = 32
SHUFFLE_BUFFER = 1024
CYCLE_LENGTH = 16

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "image_id": tf.io.FixedLenFeature([], tf.int64),
    "index": tf.io.FixedLenFeature([], tf.int64),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
    "num_instances": tf.io.FixedLenFeature([], tf.int64),
    "boxes": tf.io.VarLenFeature(tf.float32),
    "classes": tf.io.VarLenFeature(tf.int64),
    "ann_ids": tf.io.VarLenFeature(tf.int64),
    "masks": tf.io.FixedLenFeature([], tf.string),
}


# ------------------------------------------------------------------ specs, sizes
def train_spec(batch_size: int, pad_size: int = PAD_SIZE, max_instances: int = MAX_INSTANCES,
               mask_size: int = coco_instances.MASK_SIZE
               ) -> dict[str, tuple[tuple[int, ...], Any]]:
    """This host's train batch as ``{key: (shape, dtype)}`` (``source.global_spec`` takes it)."""
    b, p, m, r = batch_size, pad_size, max_instances, mask_size
    return {"image": ((b, p, p, 3), np.uint8), "boxes": ((b, m, 4), np.float32),
            "classes": ((b, m), np.int32), "masks": ((b, m, r, r), np.uint8),
            "num_gt": ((b,), np.int32), "image_hw": ((b, 2), np.int32)}


def eval_spec(batch_size: int, pad_size: int = PAD_SIZE
              ) -> dict[str, tuple[tuple[int, ...], Any]]:
    b, p = batch_size, pad_size
    return {"image": ((b, p, p, 3), np.uint8), "image_id": ((b,), np.int32),
            "image_hw": ((b, 2), np.int32), "orig_size": ((b, 2), np.int32),
            "mask": ((b,), np.bool_)}


def min_pad_size(max_size: int) -> int:
    """The smallest allowed ``pad_size``: ``max_size`` rounded up to a multiple of 32."""
    return -(-int(max_size) // SIZE_DIVISIBILITY) * SIZE_DIVISIBILITY


def _check_sizes(min_size: int, max_size: int, pad_size: int) -> None:
    if not 0 < min_size <= max_size:
        raise ValueError(f"need 0 < min_size <= max_size, got {min_size} and {max_size}")
    if pad_size < min_pad_size(max_size):
        raise ValueError(f"pad_size {pad_size} is smaller than max_size {max_size} rounded up to "
                         f"a multiple of {SIZE_DIVISIBILITY} ({min_pad_size(max_size)})")


def get_size(height: int, width: int, min_size: int = MIN_SIZE, max_size: int | None = MAX_SIZE
             ) -> tuple[int, int]:
    """maskrcnn-benchmark ``Resize.get_size`` (one ``min_size``): the resized ``(h, w)``."""
    w, h = width, height
    size = min_size
    if max_size is not None:
        lo, hi = float(min((w, h))), float(max((w, h)))
        if hi / lo * size > max_size:
            size = int(round(max_size * lo / hi))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def tf_get_size(height: tf.Tensor, width: tf.Tensor, min_size: int = MIN_SIZE,
                max_size: int = MAX_SIZE) -> tuple[tf.Tensor, tf.Tensor]:
    """``get_size`` in TF (float64 as Python; ``tf.round`` is half to even like ``round``)."""
    h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
    lo, hi = tf.minimum(h, w), tf.maximum(h, w)
    size = tf.constant(float(min_size), tf.float64)
    size = tf.where(hi / lo * size > max_size, tf.round(max_size * lo / hi), size)
    same = ((w <= h) & tf.equal(w, size)) | ((h <= w) & tf.equal(h, size))
    oh = tf.where(w < h, tf.floor(size * h / w), size)
    ow = tf.where(w < h, size, tf.floor(size * w / h))
    oh, ow = tf.where(same, h, oh), tf.where(same, w, ow)
    return tf.cast(oh, tf.int32), tf.cast(ow, tf.int32)


def resize(image: tf.Tensor, oh: tf.Tensor, ow: tf.Tensor) -> tf.Tensor:
    """uint8 HWC -> uint8 [oh, ow, 3], bilinear (antialiased when shrinking), rounded half up."""
    shape = tf.shape(image)
    size = tf.stack([oh, ow])
    shrink = (oh < shape[0]) | (ow < shape[1])
    out = tf.cond(shrink,
                  lambda: tf.image.resize(image, size, method="bilinear", antialias=True),
                  lambda: tf.image.resize(image, size, method="bilinear", antialias=False))
    return tf.cast(tf.clip_by_value(tf.floor(out + 0.5), 0, 255), tf.uint8)


def _pad_image(image: tf.Tensor, pad_size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Zero-pad bottom/right to pad_size^2 (cut past it: no COCO image gets there); (image, hw)."""
    image = image[:pad_size, :pad_size]
    hw = tf.shape(image)[:2]
    image = tf.image.pad_to_bounding_box(image, 0, 0, pad_size, pad_size)
    return tf.ensure_shape(image, [pad_size, pad_size, 3]), tf.cast(hw, tf.int32)


# ------------------------------------------------------------------ examples
def parse(serialized: tf.Tensor, mask_size: int) -> dict[str, tf.Tensor]:
    """One stored example: image (bytes), image_id, index, height, width, boxes [n, 4],
    classes int64 [n], ann_ids int64 [n], masks uint8 [n, R, R]."""
    ex = tf.io.parse_single_example(serialized, _FEATURES)
    for k in ("boxes", "classes", "ann_ids"):
        ex[k] = tf.sparse.to_dense(ex[k])
    ex["boxes"] = tf.reshape(ex["boxes"], [-1, 4])
    raw = tf.io.decode_raw(tf.io.decode_compressed(ex["masks"], compression_type="ZLIB"),
                           tf.uint8)
    ex["masks"] = tf.reshape(raw, [-1, mask_size, mask_size])
    return ex


def flip_seed_base(seed: int, epoch: int) -> int:
    """The stateless flip seed's first word for (seed, epoch); the second is the example index."""
    return epoch_seed(seed, epoch, 0)


def draw_flip(base: int | tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """bool: whether example ``index`` is flipped in the epoch of ``base`` (p = 1/2)."""
    s = tf.stack([tf.cast(base, tf.int64), tf.cast(index, tf.int64)])
    return tf.random.stateless_uniform([], s) < 0.5


def preprocess_train(ex: dict[str, tf.Tensor], flip: tf.Tensor, *, min_size: int, max_size: int,
                     pad_size: int, max_instances: int, mask_size: int) -> dict[str, tf.Tensor]:
    """A parsed example -> the train element (module docstring)."""
    image = preprocessing.decode(ex["image"])
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    oh, ow = tf_get_size(h, w, min_size, max_size)
    image = resize(image, oh, ow)
    m = max_instances
    n = tf.minimum(tf.shape(ex["classes"])[0], m)
    sy = tf.cast(oh, tf.float32) / tf.cast(h, tf.float32)
    sx = tf.cast(ow, tf.float32) / tf.cast(w, tf.float32)
    boxes = ex["boxes"][:n] * tf.stack([sy, sx, sy, sx])
    masks = ex["masks"][:n]
    owf = tf.cast(ow, tf.float32)
    mirrored = tf.stack([boxes[:, 0], owf - boxes[:, 3], boxes[:, 2], owf - boxes[:, 1]], -1)
    boxes = tf.where(flip, mirrored, boxes)
    masks = tf.cond(flip, lambda: tf.reverse(masks, axis=[2]), lambda: masks)
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    image, hw = _pad_image(image, pad_size)
    hwf = tf.cast(tf.concat([hw, hw], 0), tf.float32)
    boxes = tf.minimum(boxes, hwf)  # only past pad_size (never in COCO)
    pad = m - n
    return {
        "image": image,
        "boxes": tf.ensure_shape(tf.pad(boxes, [[0, pad], [0, 0]]), [m, 4]),
        "classes": tf.ensure_shape(tf.pad(tf.cast(ex["classes"][:n], tf.int32), [[0, pad]]), [m]),
        "masks": tf.ensure_shape(tf.pad(masks, [[0, pad], [0, 0], [0, 0]]),
                                 [m, mask_size, mask_size]),
        "num_gt": tf.cast(n, tf.int32), "image_hw": hw}


def preprocess_eval(image_bytes: tf.Tensor, *, min_size: int, max_size: int, pad_size: int
                    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(uint8 [P, P, 3] image, resized hw, original hw) of one encoded image."""
    image = preprocessing.decode(image_bytes)
    orig = tf.shape(image)[:2]
    oh, ow = tf_get_size(orig[0], orig[1], min_size, max_size)
    image, hw = _pad_image(resize(image, oh, ow), pad_size)
    return image, hw, tf.cast(orig, tf.int32)


def _host_records(meta: dict[str, Any], data_dir: str, rows: slice
                  ) -> tuple[list[str], bool]:
    """The shard paths holding examples ``rows`` (in order) and whether they hold others too."""
    files = coco_instances.shard_paths(data_dir, meta["split"])
    bounds = np.concatenate([[0], np.cumsum(meta["shard_counts"])])
    pick = [k for k in range(len(files))
            if bounds[k] < rows.stop and bounds[k + 1] > rows.start and bounds[k + 1] > bounds[k]]
    exact = bool(pick) and bounds[pick[0]] == rows.start and bounds[pick[-1] + 1] == rows.stop
    return [files[k] for k in pick], not exact


def _index_in(start: int, stop: int):
    spec = {"index": tf.io.FixedLenFeature([], tf.int64)}

    def keep(serialized):
        i = tf.io.parse_single_example(serialized, spec)["index"]
        return (i >= start) & (i < stop)
    return keep


# ------------------------------------------------------------------ pipelines
def steps_per_epoch(data_dir: str, *, batch_size: int, process_count: int = 1) -> int:
    """Batches in one ``train_dataset`` epoch without ``steps`` (``batch_size`` per host)."""
    n = int(coco_instances.metadata(data_dir, "train")["num_examples"])
    return (n // process_count) // batch_size


def train_dataset(data_dir: str, *, batch_size: int, seed: int, epoch: int,
                  min_size: int = MIN_SIZE, max_size: int = MAX_SIZE, pad_size: int = PAD_SIZE,
                  max_instances: int = MAX_INSTANCES, process_index: int = 0,
                  process_count: int = 1, steps: int | None = None,
                  shuffle_buffer: int | None = None) -> tf.data.Dataset:
    """This host's batches of one training epoch (``batch_size`` per host, last partial batch
    dropped); with ``steps``: exactly ``steps`` batches, the host's examples repeated (in the same
    order, with the same flips) if they run short."""
    _check_sizes(min_size, max_size, pad_size)
    meta = coco_instances.metadata(data_dir, "train")
    r = int(meta["mask_size"])
    rows = coco._host_slice(int(meta["num_examples"]), process_index, process_count, True)
    if rows.stop <= rows.start:
        raise ValueError(f"{meta['num_examples']} training examples cannot be shared by "
                         f"{process_count} hosts")
    files, partial = _host_records(meta, data_dir, rows)
    host_seed = epoch_seed(seed, epoch, process_index)
    files = [files[i] for i in np.random.default_rng(host_seed).permutation(len(files))]
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string))
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(CYCLE_LENGTH, len(files)),
                       block_length=1, num_parallel_calls=AUTOTUNE, deterministic=True)
    if partial:
        ds = ds.filter(_index_in(rows.start, rows.stop))
    buf = shuffle_buffer or min(SHUFFLE_BUFFER, rows.stop - rows.start)
    ds = ds.shuffle(buf, seed=host_seed % (2 ** 63), reshuffle_each_iteration=False)
    if steps is not None:
        ds = ds.repeat()
    base = tf.constant(flip_seed_base(seed, epoch), tf.int64)

    def prep(serialized):
        ex = parse(serialized, r)
        return preprocess_train(ex, draw_flip(base, ex["index"]), min_size=min_size,
                                max_size=max_size, pad_size=pad_size,
                                max_instances=max_instances, mask_size=r)

    ds = ds.map(prep, num_parallel_calls=AUTOTUNE).batch(batch_size, drop_remainder=True)
    if steps is not None:
        ds = ds.take(steps)
    return ds.with_options(tf_data_options()).prefetch(AUTOTUNE)


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
    """Batches every host yields: ``ceil(ceil(n / process_count) / batch_size)``."""
    return math.ceil(math.ceil(num_examples / process_count) / batch_size)


def eval_dataset(data_dir: str, *, batch_size: int, min_size: int = MIN_SIZE,
                 max_size: int = MAX_SIZE, pad_size: int = PAD_SIZE, process_index: int = 0,
                 process_count: int = 1) -> tf.data.Dataset:
    """This host's share of val2017 (every image), padded to whole batches (``mask``)."""
    _check_sizes(min_size, max_size, pad_size)
    meta = coco_instances.metadata(data_dir, "val")
    total = int(meta["num_examples"])
    rows = coco._host_slice(total, process_index, process_count, False)
    n_batches = num_eval_batches(total, batch_size, process_count)

    def prep(serialized):
        ex = tf.io.parse_single_example(serialized, {k: _FEATURES[k]
                                                     for k in ("image", "image_id")})
        image, hw, orig = preprocess_eval(ex["image"], min_size=min_size, max_size=max_size,
                                          pad_size=pad_size)
        return {"image": image, "image_id": tf.cast(ex["image_id"], tf.int32), "image_hw": hw,
                "orig_size": orig, "mask": tf.constant(True)}

    pad = tf.data.Dataset.from_tensors({
        "image": tf.zeros([pad_size, pad_size, 3], tf.uint8), "image_id": tf.constant(0, tf.int32),
        "image_hw": tf.zeros([2], tf.int32), "orig_size": tf.zeros([2], tf.int32),
        "mask": tf.constant(False)}).repeat()
    if rows.stop > rows.start:
        files, partial = _host_records(meta, data_dir, rows)
        ds = tf.data.TFRecordDataset(files)
        if partial:
            ds = ds.filter(_index_in(rows.start, rows.stop))
        ds = ds.map(prep, num_parallel_calls=AUTOTUNE).concatenate(pad)
    else:
        ds = pad
    ds = ds.take(n_batches * batch_size).batch(batch_size)
    return ds.with_options(tf_data_options()).prefetch(AUTOTUNE)


def eval_batches(data_dir: str, **kw) -> Iterator[dict[str, np.ndarray]]:
    """``eval_dataset`` as numpy batches (same keywords)."""
    return iter(eval_dataset(data_dir, **kw).as_numpy_iterator())
