"""COCO 2017 for SSD: the MLPerf reference augmentation in tf.data, from TFDS or the raw layout.

Two sources of the same data (``source=``):

- ``"tfds"``: TFDS ``coco/2017`` (boxes normalised ``[ymin, xmin, ymax, xmax]``, labels 0..79 in
  category-id order, ``image/id`` the COCO image id), prepared once with ``download_and_prepare``;
- ``"coco_raw"``: the files of cocodataset.org: ``DATA_DIR/train2017/*.jpg``, ``val2017/*.jpg``
  and ``annotations/instances_{train,val}2017.json`` (read with pycocotools, images read as JPEG
  files through tf.data);
- ``"auto"`` (the default): the raw layout when ``annotations/instances_val2017.json`` is there,
  TFDS otherwise.

Labels are contiguous 1..80 (the categories sorted by id; 0 is the background and padding).

Training (the reference's ``SSDTransformer``, spec ``detection.md`` 1.2): images without
annotations are dropped (117,266 of 118,287 remain; crowd boxes are kept, as the reference does);
each image gets the SSD random crop (``ssd_crop``), is resized to ``image_size`` squared ignoring
its aspect ratio, flipped left-right with probability 1/2 and colour-jittered (torchvision
``ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05)``: factors drawn
uniformly, the four adjustments in a random order). Every random choice is a stateless function
of (seed, epoch, host, position in the host's shuffled epoch), so an epoch is reproducible and a
resumed run can skip to where it stopped. Ground-truth boxes travel padded to ``max_boxes`` rows
(100 by default; COCO train2017 has at most 93 per image) with the count in ``num_boxes``; an
image with more keeps its first ``max_boxes`` (by annotation id) and drops the rest *before* the
crop.

Evaluation: images resized to ``image_size`` squared (no crop), with ``image_id``, the original
``(height, width)`` and ``mask`` (False on the rows that pad the last batch); like the reference,
the val images without annotations are skipped (4,952 of 5,000 remain; ``skip_empty=False``
keeps them). The metric's ground truth (``ground_truth``) is the annotation file when the raw
layout is there, else it is rebuilt from the TFDS validation split (``coco_eval.py`` notes the
small differences).

Element specs (per host; ``train_spec`` / ``eval_spec`` give them as ``{key: (shape, dtype)}``):
    train: image uint8 [b, S, S, 3], boxes float32 [b, M, 4] (normalised yxyx, zero rows past
           num_boxes), labels int32 [b, M] (1..80, 0 past num_boxes), num_boxes int32 [b]
    eval:  image uint8 [b, S, S, 3], image_id int32 [b], orig_size int32 [b, 2] (h, w),
           mask bool [b]
Images leave the pipeline as uint8; the device normalises (``preprocessing.normalize(x, "ssd")``).
"""
from __future__ import annotations

import os
import threading
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mlperf_jax.input_pipelines import coco_eval, preprocessing
from mlperf_jax.input_pipelines.source import DatasetNotFoundError, epoch_seed, tf_data_options

NAME = "coco/2017"
AUTOTUNE = tf.data.AUTOTUNE
MAX_BOXES = 100
TRAIN_IMAGES, VAL_IMAGES = 118287, 5000
TRAIN_IMAGES_WITH_BOXES, VAL_IMAGES_WITH_BOXES = 117266, 4952
COCO_CATEGORY_IDS = coco_eval.COCO_CATEGORY_IDS
LABEL_TO_CATEGORY = np.asarray((0,) + COCO_CATEGORY_IDS, np.int64)

#: the SSD crop's choices: 0 = no crop, then the minimum IoU, then -inf = no IoU constraint
CROP_MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9)
_MODE_MIN_IOU = (0.0,) + CROP_MIN_IOUS + (-np.inf,)
NUM_CROP_MODES = len(_MODE_MIN_IOU)  # 7, drawn uniformly

PREPARE_HELP = (
    "Prepare COCO 2017 either with TFDS: python -c \"import tensorflow_datasets as tfds; "
    "tfds.builder('coco/2017', data_dir='DATA_DIR').download_and_prepare()\" (downloads about "
    "25 GB from cocodataset.org), or as the raw layout DATA_DIR/train2017/, DATA_DIR/val2017/ and "
    "DATA_DIR/annotations/instances_{train,val}2017.json (unzip train2017.zip, val2017.zip and "
    "annotations_trainval2017.zip from cocodataset.org there).")

_RAW_SPLITS = {"train": "train2017", "validation": "val2017", "val": "val2017"}
_SOURCES = ("auto", "tfds", "coco_raw")


# ------------------------------------------------------------------ layout and checks
def _annotation_file(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, "annotations", f"instances_{_RAW_SPLITS[split]}.json")


def resolve_source(data_dir: str | None, source: str = "auto") -> str:
    """"tfds" or "coco_raw" for ``source`` ("auto": the raw layout if its val annotations exist)."""
    if source not in _SOURCES:
        raise ValueError(f"unknown COCO source {source!r}; expected one of {', '.join(_SOURCES)}")
    if source != "auto":
        return source
    if data_dir and os.path.isfile(_annotation_file(data_dir, "validation")):
        return "coco_raw"
    return "tfds"


def check_prepared(data_dir: str | None, source: str = "auto") -> None:
    """Raise ``DatasetNotFoundError`` (one line: where we looked, how to prepare) if COCO is
    missing."""
    if not data_dir:
        raise DatasetNotFoundError(f"COCO 2017 needs a data directory. {PREPARE_HELP}")
    kind = resolve_source(data_dir, source)
    where = os.path.abspath(data_dir)
    if kind == "coco_raw":
        need = [os.path.join(where, "train2017"), os.path.join(where, "val2017"),
                _annotation_file(where, "train"), _annotation_file(where, "validation")]
        missing = [p for p in need if not os.path.exists(p)]
        if missing:
            raise DatasetNotFoundError(
                f"no COCO 2017 raw layout in {where}: missing {', '.join(missing)}. "
                f"{PREPARE_HELP.replace('DATA_DIR', where)}")
        return
    builder = tfds.builder(NAME, data_dir=data_dir)
    if not builder.is_prepared():
        raise DatasetNotFoundError(
            f"no prepared TFDS {NAME} in {builder.data_dir} (nor the raw layout's "
            f"{_annotation_file(where, 'validation')}). {PREPARE_HELP.replace('DATA_DIR', where)}")


def train_spec(batch_size: int, image_size: int, max_boxes: int = MAX_BOXES
               ) -> dict[str, tuple[tuple[int, ...], Any]]:
    """This host's train batch as ``{key: (shape, dtype)}`` (``source.global_spec`` takes it)."""
    b, s, m = batch_size, image_size, max_boxes
    return {"image": ((b, s, s, 3), np.uint8), "boxes": ((b, m, 4), np.float32),
            "labels": ((b, m), np.int32), "num_boxes": ((b,), np.int32)}


def eval_spec(batch_size: int, image_size: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    b, s = batch_size, image_size
    return {"image": ((b, s, s, 3), np.uint8), "image_id": ((b,), np.int32),
            "orig_size": ((b, 2), np.int32), "mask": ((b,), np.bool_)}



# ------------------------------------------------------------------ the SSD random crop (TF)
def box_iou(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """IoU of corner boxes ``a`` [..., 4] and ``b`` [..., 4] (broadcast); 0 where the union is 0."""
    ih = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    iw = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = ih * iw
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    return tf.math.divide_no_nan(inter, area(a) + area(b) - inter)


def _centres_inside(windows: tf.Tensor, boxes: tf.Tensor) -> tf.Tensor:
    """[..., M]: box centres strictly inside windows [..., 4] (the reference's ``>`` / ``<``)."""
    cy = (boxes[:, 0] + boxes[:, 2]) / 2
    cx = (boxes[:, 1] + boxes[:, 3]) / 2
    w = windows[..., None, :]
    return (cy > w[..., 0]) & (cy < w[..., 2]) & (cx > w[..., 1]) & (cx < w[..., 3])


def crop_is_valid(windows: tf.Tensor, boxes: tf.Tensor, valid: tf.Tensor, min_iou: tf.Tensor
                  ) -> tf.Tensor:
    """The reference's acceptance test, for windows [..., 4] against GT ``boxes`` [M, 4].

    A window is accepted when the IoU of **every** valid GT box with it is > ``min_iou`` (shape
    ``[...]``; -inf: no constraint) and at least one valid GT centre lies strictly inside it.
    """
    valid = tf.cast(valid, tf.bool)
    ious = box_iou(windows[..., None, :], boxes)  # [..., M]
    iou_ok = tf.reduce_all((ious > min_iou[..., None]) | ~valid, axis=-1)
    return iou_ok & tf.reduce_any(_centres_inside(windows, boxes) & valid, axis=-1)


def default_max_trials(max_samples: int) -> int:
    """Rounds drawn per image: 32 with one sample per round (every round draws "no crop" with
    probability 1/7, so at most (6/7)^32 < 1% of the images reach the fallback, fewer the more
    windows fit), 8 with many samples per round (a round rarely fails then)."""
    return 32 if max_samples <= 1 else 8


def sample_crop_window(boxes: tf.Tensor, num_boxes: tf.Tensor, seed: tf.Tensor, *,
                       max_samples: int = 1, max_trials: int | None = None
                       ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The SSD crop window of one image: ``(window [4] yxyx, min_iou, cropped)``.

    The reference (``SSDCropping``) loops until it returns: draw a choice uniformly among {no
    crop, min IoU 0.1, 0.3, 0.5, 0.7, 0.9, no constraint}; no crop returns the image; otherwise
    draw ``max_samples`` candidates (the reference 1, Google's 50; the v0.7 rules allow 1 or 50):
    w, h ~ U(0.3, 1) relative to the image, rejected unless 0.5 <= w/h <= 2, left ~ U(0, 1-w),
    top ~ U(0, 1-h), accepted by ``crop_is_valid``; the first accepted one is the crop, else draw
    the choice again. Here ``max_trials`` such rounds (default: ``default_max_trials``) are drawn
    at once (fixed shapes, no loop) and the first round that ends (no crop, or an accepted
    candidate) decides; if none does, no crop (what the reference's loop also returns sooner or
    later for an image no window fits). With ``max_samples=1`` the distribution of crops matches
    a direct port of the reference's loop (checked by simulation: crop rate, window area, boxes
    kept).
    ``min_iou`` is the decisive round's constraint (0.0 for no crop, -inf for none).
    """
    m = tf.shape(boxes)[0]
    valid = tf.range(m) < tf.cast(num_boxes, tf.int32)
    k = int(max_samples)
    t = int(max_trials) if max_trials is not None else default_max_trials(k)
    s = tf.random.experimental.stateless_split(seed, 5)
    mode = tf.random.stateless_uniform([t], s[0], minval=0, maxval=NUM_CROP_MODES, dtype=tf.int32)
    min_iou = tf.gather(tf.constant(_MODE_MIN_IOU, tf.float32), mode)
    w = tf.random.stateless_uniform([t, k], s[1], 0.3, 1.0)
    h = tf.random.stateless_uniform([t, k], s[2], 0.3, 1.0)
    left = tf.random.stateless_uniform([t, k], s[3]) * (1.0 - w)
    top = tf.random.stateless_uniform([t, k], s[4]) * (1.0 - h)
    windows = tf.stack([top, left, top + h, left + w], axis=-1)  # [t, k, 4]
    aspect_ok = (w / h >= 0.5) & (w / h <= 2.0)
    ok = aspect_ok & crop_is_valid(windows, tf.cast(boxes, tf.float32), valid, min_iou[:, None])
    done = (mode == 0) | tf.reduce_any(ok, axis=1)
    r = tf.argmax(tf.cast(done, tf.int32), output_type=tf.int32)  # the first round that ends
    j = tf.argmax(tf.cast(ok[r], tf.int32), output_type=tf.int32)
    cropped = tf.reduce_any(done) & (mode[r] != 0)
    window = tf.where(cropped, windows[r, j], tf.constant([0.0, 0.0, 1.0, 1.0]))
    return window, tf.where(tf.reduce_any(done), min_iou[r], 0.0), cropped


def crop_boxes(boxes: tf.Tensor, labels: tf.Tensor, num_boxes: tf.Tensor, window: tf.Tensor
               ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """GT of a crop: keep the valid boxes whose centre lies strictly inside ``window`` (yxyx),
    clip them to it, renormalise to it; kept rows first (in order), zero rows after."""
    m = tf.shape(boxes)[0]
    boxes = tf.cast(boxes, tf.float32)
    valid = tf.range(m) < tf.cast(num_boxes, tf.int32)
    keep = _centres_inside(window, boxes) & valid
    top, left, bottom, right = tf.unstack(window)
    clipped = tf.stack([tf.maximum(boxes[:, 0], top), tf.maximum(boxes[:, 1], left),
                        tf.minimum(boxes[:, 2], bottom), tf.minimum(boxes[:, 3], right)], -1)
    scale = tf.stack([bottom - top, right - left, bottom - top, right - left])
    renorm = tf.clip_by_value((clipped - tf.stack([top, left, top, left])) / scale, 0.0, 1.0)
    order = tf.argsort(tf.cast(~keep, tf.int32), stable=True)
    n = tf.reduce_sum(tf.cast(keep, tf.int32))
    rows = tf.range(m) < n
    out_boxes = tf.where(rows[:, None], tf.gather(renorm, order), 0.0)
    out_labels = tf.where(rows, tf.gather(labels, order), tf.zeros_like(labels))
    return out_boxes, out_labels, n


def ssd_crop(image: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor, num_boxes: tf.Tensor,
             seed: tf.Tensor, *, max_samples: int = 1, max_trials: int | None = None):
    """The SSD random crop of an HWC image with padded GT: ``(image, boxes, labels, num_boxes)``.

    The window is chosen on normalised coordinates (``sample_crop_window``); the pixels kept are
    rows ``int(top * H)`` to ``int(bottom * H)`` and columns likewise, and the boxes are clipped
    and renormalised to the window itself, both as the reference does.
    """
    window, _, cropped = sample_crop_window(boxes, num_boxes, seed, max_samples=max_samples,
                                            max_trials=max_trials)

    def crop():
        shape = tf.shape(image)
        hw = tf.cast(tf.stack([shape[0], shape[1], shape[0], shape[1]]), tf.float32)
        px = tf.cast(tf.floor(window * hw), tf.int32)
        y0, x0 = px[0], px[1]
        y1, x1 = tf.maximum(px[2], y0 + 1), tf.maximum(px[3], x0 + 1)
        b, lab, n = crop_boxes(boxes, labels, num_boxes, window)
        return image[y0:y1, x0:x1], b, lab, n

    def keep():
        return image, tf.cast(boxes, tf.float32), labels, tf.cast(num_boxes, tf.int32)

    return tf.cond(cropped, crop, keep)


# ------------------------------------------------------------------ flip, colour jitter (TF)
def flip_left_right(image: tf.Tensor, boxes: tf.Tensor, num_boxes: tf.Tensor, flip: tf.Tensor):
    """Mirror the image and its valid boxes (x -> 1 - x) when ``flip``; padding rows stay 0."""
    m = tf.shape(boxes)[0]
    rows = tf.range(m) < num_boxes
    mirrored = tf.stack([boxes[:, 0], 1.0 - boxes[:, 3], boxes[:, 2], 1.0 - boxes[:, 1]], -1)
    boxes = tf.where(flip & rows[:, None], mirrored, boxes)
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    return image, boxes


def _blend(image, other, factor):
    return tf.clip_by_value(factor * image + (1.0 - factor) * other, 0.0, 1.0)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, *, brightness: float = 0.125,
                 contrast: float = 0.5, saturation: float = 0.5, hue: float = 0.05) -> tf.Tensor:
    """torchvision ``ColorJitter`` on a float RGB image in [0, 1], stateless in ``seed``.

    Factors ~ U(1 - x, 1 + x) (hue shift ~ U(-hue, hue), in turns), applied in a random order:
    brightness scales, contrast blends with the mean grey level, saturation with the grey image,
    hue rotates in HSV; the result is clipped to [0, 1] after each, as torchvision does.
    """
    s = tf.random.experimental.stateless_split(seed, 5)
    bf = tf.random.stateless_uniform([], s[0], 1.0 - brightness, 1.0 + brightness)
    cf = tf.random.stateless_uniform([], s[1], 1.0 - contrast, 1.0 + contrast)
    sf = tf.random.stateless_uniform([], s[2], 1.0 - saturation, 1.0 + saturation)
    hf = tf.random.stateless_uniform([], s[3], -hue, hue)
    order = tf.argsort(tf.random.stateless_uniform([4], s[4]))
    ops = [
        lambda x: tf.clip_by_value(x * bf, 0.0, 1.0),
        lambda x: _blend(x, tf.reduce_mean(tf.image.rgb_to_grayscale(x)), cf),
        lambda x: _blend(x, tf.image.rgb_to_grayscale(x), sf),
        lambda x: tf.clip_by_value(tf.image.adjust_hue(x, hf), 0.0, 1.0),
    ]
    for i in range(4):
        image = tf.switch_case(order[i], [lambda f=f: f(image) for f in ops])
    return image


def _pad_gt(boxes: tf.Tensor, labels: tf.Tensor, max_boxes: int):
    """The first ``max_boxes`` boxes and labels, zero-padded to ``max_boxes`` rows; their count."""
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 4])[:max_boxes]
    labels = tf.cast(labels, tf.int32)[:max_boxes]
    n = tf.shape(labels)[0]
    boxes = tf.pad(boxes, [[0, max_boxes - n], [0, 0]])
    labels = tf.pad(labels, [[0, max_boxes - n]])
    return tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(labels, [max_boxes]), n


def preprocess_train(image_bytes: tf.Tensor, boxes: tf.Tensor, labels: tf.Tensor,
                     seed: tf.Tensor, *, image_size: int = 300, max_boxes: int = MAX_BOXES,
                     max_samples: int = 1, max_trials: int | None = None, model: str = "ssd"
                     ) -> dict[str, tf.Tensor]:
    """One training example: decode, crop, resize, flip, jitter; GT padded to ``max_boxes``."""
    conv = preprocessing.convention(model)
    boxes, labels, n = _pad_gt(boxes, labels, max_boxes)
    s = tf.random.experimental.stateless_split(seed, 3)
    image = preprocessing.decode(image_bytes)
    image, boxes, labels, n = ssd_crop(image, boxes, labels, n, s[0], max_samples=max_samples,
                                       max_trials=max_trials)
    image = tf.image.resize(image, [image_size, image_size], method=conv.resize_method,
                            antialias=conv.antialias)
    flip = tf.random.stateless_uniform([], s[1]) < 0.5
    image, boxes = flip_left_right(image, boxes, n, flip)
    image = color_jitter(image / 255.0, s[2]) * 255.0
    image = tf.cast(tf.clip_by_value(tf.floor(image + 0.5), 0, 255), tf.uint8)
    return {"image": tf.ensure_shape(image, [image_size, image_size, 3]),
            "boxes": tf.ensure_shape(boxes, [max_boxes, 4]),
            "labels": tf.ensure_shape(labels, [max_boxes]),
            "num_boxes": tf.cast(n, tf.int32)}


def preprocess_eval(image_bytes: tf.Tensor, image_size: int = 300, model: str = "ssd"):
    """``(uint8 image_size^2 x 3, orig_size int32 [2])``: the eval (and inference) input."""
    image = preprocessing.decode(image_bytes)
    orig = tf.shape(image)[:2]
    return preprocessing.resize_detection(image, model, image_size), tf.cast(orig, tf.int32)


# ------------------------------------------------------------------ raw layout
_RAW_CACHE: dict[str, dict[str, Any]] = {}
_RAW_LOCK = threading.Lock()


def raw_index(data_dir: str, split: str) -> dict[str, Any]:
    """The annotation file of ``split`` as arrays, in the file's ``images`` order (cached).

    ``files`` (paths), ``image_ids`` int64 [n], ``orig_sizes`` int32 [n, 2] (h, w),
    ``box_start``/``box_count`` int64 [n] into ``boxes`` float32 [N, 4] (normalised yxyx,
    clipped to [0, 1]; an image's boxes by annotation id) and ``labels`` int32 [N] (1..C, the
    categories sorted by id), ``label_to_category`` int64 [C + 1].
    """
    path = _annotation_file(data_dir, split)
    with _RAW_LOCK:
        if path in _RAW_CACHE:
            return _RAW_CACHE[path]
    gt = coco_eval.load_annotations(path)
    coco = gt.coco
    cat_to_label = gt.category_to_label
    image_dir = os.path.join(data_dir, _RAW_SPLITS[split])
    files, ids, sizes, starts, counts, boxes, labels = [], [], [], [], [], [], []
    for img in coco.dataset["images"]:
        anns = sorted(coco.imgToAnns.get(img["id"], []), key=lambda a: a["id"])
        h, w = float(img["height"]), float(img["width"])
        files.append(os.path.join(image_dir, img["file_name"]))
        ids.append(img["id"])
        sizes.append((img["height"], img["width"]))
        starts.append(len(boxes))
        counts.append(len(anns))
        for a in anns:
            x, y, bw, bh = a["bbox"]
            boxes.append((y / h, x / w, (y + bh) / h, (x + bw) / w))
            labels.append(cat_to_label[a["category_id"]])
    out = {"files": np.asarray(files, dtype=object), "image_ids": np.asarray(ids, np.int64),
           "orig_sizes": np.asarray(sizes, np.int32).reshape(-1, 2),
           "box_start": np.asarray(starts, np.int64), "box_count": np.asarray(counts, np.int64),
           "boxes": np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0.0, 1.0),
           "labels": np.asarray(labels, np.int32), "label_to_category": gt.label_to_category}
    with _RAW_LOCK:
        _RAW_CACHE[path] = out
    return out


def _host_slice(n: int, process_index: int, process_count: int, drop_remainder: bool) -> slice:
    """A contiguous, disjoint share of ``n`` rows (equal sizes when ``drop_remainder``)."""
    if drop_remainder:
        per = n // process_count
        return slice(process_index * per, (process_index + 1) * per)
    bounds = [n * i // process_count for i in range(process_count + 1)]
    return slice(bounds[process_index], bounds[process_index + 1])


def _raw_examples(data_dir: str, split: str, rows: np.ndarray) -> tf.data.Dataset:
    """{image (bytes), image_id, boxes [k, 4], labels [k]} for the index rows ``rows``, in order."""
    idx = raw_index(data_dir, split)
    all_boxes = tf.constant(idx["boxes"])
    all_labels = tf.constant(idx["labels"])
    ds = tf.data.Dataset.from_tensor_slices({
        "path": tf.constant([str(f) for f in idx["files"][rows]], tf.string, shape=[len(rows)]),
        "image_id": tf.constant(idx["image_ids"][rows], tf.int64),
        "start": tf.constant(idx["box_start"][rows], tf.int64),
        "count": tf.constant(idx["box_count"][rows], tf.int64)})

    def read(ex):
        return {"image": tf.io.read_file(ex["path"]), "image_id": ex["image_id"],
                "boxes": all_boxes[ex["start"]:ex["start"] + ex["count"]],
                "labels": all_labels[ex["start"]:ex["start"] + ex["count"]]}
    return ds.map(read, num_parallel_calls=AUTOTUNE)


# ------------------------------------------------------------------ TFDS
def host_split(split: str, process_index: int, process_count: int, drop_remainder: bool) -> str:
    """This host's disjoint share of ``split`` (TFDS sub-split syntax)."""
    return tfds.even_splits(split, n=process_count, drop_remainder=drop_remainder)[process_index]


def _tfds_examples(data_dir, split: str, process_index: int, process_count: int, *,
                   drop_remainder: bool, shuffle_seed: int | None) -> tf.data.Dataset:
    builder = tfds.builder(NAME, data_dir=data_dir)
    ds = builder.as_dataset(
        split=host_split(split, process_index, process_count, drop_remainder),
        shuffle_files=shuffle_seed is not None, decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, skip_prefetch=True))
    return ds.map(lambda ex: {"image": ex["image"], "image_id": ex["image/id"],
                              "boxes": ex["objects"]["bbox"],
                              "labels": tf.cast(ex["objects"]["label"], tf.int32) + 1},
                  num_parallel_calls=AUTOTUNE)


# ------------------------------------------------------------------ pipelines
def train_dataset(data_dir: str | None, *, batch_size: int, seed: int, epoch: int,
                  image_size: int = 300, max_boxes: int = MAX_BOXES, max_samples: int = 1,
                  max_trials: int | None = None, process_index: int = 0, process_count: int = 1,
                  source: str = "auto", shuffle_buffer: int | None = None,
                  steps: int | None = None, model: str = "ssd") -> tf.data.Dataset:
    """This host's batches of one training epoch (``batch_size`` is the per-host batch).

    Without ``steps``: one pass over this host's images with annotations, the last partial batch
    dropped. With ``steps``: exactly ``steps`` batches, the host's shuffled images repeated when
    they run short (TFDS hosts differ by a few images once the empty ones are dropped; every host
    must run the same number of steps).
    """
    kind = resolve_source(data_dir, source)
    eseed = epoch_seed(seed, epoch, process_index)
    if kind == "coco_raw":
        idx = raw_index(data_dir, "train")
        nonempty = np.nonzero(idx["box_count"] > 0)[0]
        rows = nonempty[_host_slice(len(nonempty), process_index, process_count, True)]
        rows = rows[np.random.default_rng(eseed).permutation(len(rows))]
        ds = _raw_examples(data_dir, "train", rows)
    else:
        ds = _tfds_examples(data_dir, "train", process_index, process_count, drop_remainder=True,
                            shuffle_seed=eseed)
        ds = ds.filter(lambda ex: tf.size(ex["labels"]) > 0)
        ds = ds.shuffle(shuffle_buffer or 16 * batch_size, seed=eseed,
                        reshuffle_each_iteration=False)
    if steps is not None:
        ds = ds.repeat()
    ds = ds.enumerate()
    base = tf.constant(eseed % (2 ** 31), tf.int64)

    def prep(i, ex):
        return preprocess_train(ex["image"], ex["boxes"], ex["labels"], tf.stack([base, i]),
                                image_size=image_size, max_boxes=max_boxes,
                                max_samples=max_samples, max_trials=max_trials, model=model)

    ds = ds.map(prep, num_parallel_calls=AUTOTUNE).batch(batch_size, drop_remainder=True)
    if steps is not None:
        ds = ds.take(steps)
    return ds.with_options(tf_data_options()).prefetch(AUTOTUNE)


def eval_dataset(data_dir: str | None, *, batch_size: int, image_size: int = 300,
                 process_index: int = 0, process_count: int = 1, source: str = "auto",
                 skip_empty: bool = True, num_examples: int | None = None,
                 model: str = "ssd") -> tf.data.Dataset:
    """This host's share of val2017, padded to whole batches (``mask`` marks real rows).

    Every host yields the same number of batches (multi-host collectives need it): with TFDS the
    count is set by the unfiltered split (``num_examples``, default 5,000), so a host may end with
    batches that are all padding. ``model`` names the resize convention (``preprocessing``).
    """
    preprocessing.convention(model)
    kind = resolve_source(data_dir, source)
    if kind == "coco_raw":
        idx = raw_index(data_dir, "validation")
        rows = np.nonzero(idx["box_count"] > 0)[0] if skip_empty else np.arange(
            len(idx["image_ids"]))
        total = len(rows)
        rows = rows[_host_slice(total, process_index, process_count, False)]
        ds = _raw_examples(data_dir, "validation", rows)
    else:
        total = num_examples
        if total is None:
            info = tfds.builder(NAME, data_dir=data_dir).info
            total = info.splits["validation"].num_examples if "validation" in info.splits \
                else VAL_IMAGES
        ds = _tfds_examples(data_dir, "validation", process_index, process_count,
                            drop_remainder=False, shuffle_seed=None)
        if skip_empty:
            ds = ds.filter(lambda ex: tf.size(ex["labels"]) > 0)
    per_host = -(-total // process_count)  # ceil: the largest host share
    n_batches = -(-per_host // batch_size)

    def prep(ex):
        image, orig = preprocess_eval(ex["image"], image_size, model)
        return {"image": image, "image_id": tf.cast(ex["image_id"], tf.int32),
                "orig_size": orig, "mask": tf.constant(True)}

    ds = ds.map(prep, num_parallel_calls=AUTOTUNE)
    pad = tf.data.Dataset.from_tensors({
        "image": tf.zeros([image_size, image_size, 3], tf.uint8),
        "image_id": tf.constant(0, tf.int32), "orig_size": tf.zeros([2], tf.int32),
        "mask": tf.constant(False)}).repeat()
    ds = ds.concatenate(pad).take(n_batches * batch_size).batch(batch_size)
    return ds.with_options(tf_data_options()).prefetch(AUTOTUNE)


def eval_batches(data_dir: str | None, **kw) -> Iterator[dict[str, np.ndarray]]:
    """``eval_dataset`` as numpy batches (same keywords)."""
    return iter(eval_dataset(data_dir, **kw).as_numpy_iterator())


# ------------------------------------------------------------------ ground truth, QSL helpers
def find_annotation_file(data_dir: str | None, split: str = "validation") -> str | None:
    """``instances_{train,val}2017.json`` of the raw layout, or the copy TFDS's
    ``download_and_prepare`` left in ``DATA_DIR/downloads/extracted/*/annotations/``; None."""
    if not data_dir:
        return None
    path = _annotation_file(data_dir, split)
    if os.path.isfile(path):
        return path
    name = os.path.basename(path)
    found = sorted(tf.io.gfile.glob(os.path.join(data_dir, "downloads", "extracted", "*",
                                                 "annotations", name)))
    return found[0] if found else None


def ground_truth(data_dir: str | None, *, source: str = "auto", split: str = "validation",
                 annotation_file: str | None = None) -> coco_eval.GroundTruth:
    """The metric's ground truth, from the original annotation file when there is one.

    That is ``annotation_file``, else the raw layout's, else the copy TFDS's download left in
    ``DATA_DIR/downloads/extracted`` (``find_annotation_file``). Failing those (TFDS prepared
    elsewhere, downloads deleted) it is rebuilt from the TFDS split, reading every image's
    header for its size: every image of the split (also those without boxes: COCOeval ignores
    images with neither ground truth nor detections), boxes scaled back to pixels from the
    normalised ones, TFDS's ``area`` (the annotation's, truncated to an integer) and ``is_crowd``.
    """
    path = annotation_file or find_annotation_file(data_dir, split)
    if path is None and resolve_source(data_dir, source) == "coco_raw":
        path = _annotation_file(data_dir, split)  # missing: pycocotools raises FileNotFoundError
    if path is not None:
        return coco_eval.load_annotations(path)
    builder = tfds.builder(NAME, data_dir=data_dir)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})

    def shape(ex):
        img = ex["image"]
        hw = tf.cond(tf.io.is_jpeg(img), lambda: tf.image.extract_jpeg_shape(img)[:2],
                     lambda: tf.shape(tf.io.decode_image(img, channels=3,
                                                         expand_animations=False))[:2])
        o = ex["objects"]
        return {"id": ex["image/id"], "hw": tf.cast(hw, tf.int32), "bbox": o["bbox"],
                "label": o["label"], "crowd": o["is_crowd"], "area": o["area"]}

    rows = list(ds.map(shape, num_parallel_calls=AUTOTUNE).as_numpy_iterator())
    n = len(rows)
    m = max([len(r["label"]) for r in rows] + [1])
    boxes = np.zeros((n, m, 4), np.float32)
    labels = np.zeros((n, m), np.int32)
    crowd = np.zeros((n, m), bool)
    area = np.zeros((n, m), np.float64)
    counts = np.zeros(n, np.int32)
    for i, r in enumerate(rows):
        k = len(r["label"])
        counts[i] = k
        boxes[i, :k], labels[i, :k] = r["bbox"], np.asarray(r["label"]) + 1
        crowd[i, :k], area[i, :k] = r["crowd"], r["area"]
    try:
        names = list(builder.info.features["objects"]["label"].names)
    except Exception:  # noqa: BLE001 - metadata without names: numbered categories
        names = None
    if not names or len(names) != len(COCO_CATEGORY_IDS):
        names = [f"category_{c}" for c in COCO_CATEGORY_IDS]
    return coco_eval.ground_truth_from_arrays(
        [r["id"] for r in rows], np.asarray([r["hw"] for r in rows]).reshape(-1, 2), boxes,
        labels, counts, LABEL_TO_CATEGORY, names, is_crowd=crowd, areas=area)


def val_index(data_dir: str) -> dict[str, Any]:
    """The val2017 images for an inference QSL, in ``instances_val2017.json`` order (the order
    the MLPerf accuracy script's ``qsl_idx`` refers to): ``files``, ``image_ids``, ``orig_sizes``
    (h, w) and ``label_to_category``. Needs the raw layout."""
    ann = _annotation_file(data_dir, "validation")
    if not os.path.isfile(ann):
        raise DatasetNotFoundError(f"no {ann} (the QSL reads the raw COCO layout). "
                                   f"{PREPARE_HELP.replace('DATA_DIR', os.path.abspath(data_dir))}")
    idx = raw_index(data_dir, "validation")
    return {k: idx[k] for k in ("files", "image_ids", "orig_sizes", "label_to_category")}


def load_image(path_or_bytes: str | bytes, model: str, image_size: int) -> np.ndarray:
    """One image file (or its bytes) -> the uint8 [S, S, 3] input of detection model ``model``
    ("ssd-resnet34" at 1200, "ssd-mobilenet" at 300, "ssd" at 300): decode, resize."""
    data = path_or_bytes
    if isinstance(data, str):
        data = tf.io.read_file(data)
    return preprocessing.detection_image(data, model, image_size).numpy()
