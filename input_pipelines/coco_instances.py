"""COCO 2017 instances for Mask R-CNN: the raw reader with masks, and the one-time, untimed
preparation into TFRecords (``maskrcnn_input`` reads them inside the clock).

Source: the raw layout of cocodataset.org, ``DATA_DIR/{train2017,val2017}/*.jpg`` and
``DATA_DIR/annotations/instances_{train,val}2017.json`` (TFDS ``coco/2017`` has no instance
masks, spec ``detection.md`` section 5). The annotations are read with pycocotools; every mask
is ``COCO.annToMask`` of its annotation (polygons, compressed or uncompressed RLE), joined on the
annotation id.

What is kept, as maskrcnn-benchmark's ``COCODataset`` (spec section 2):

- images in increasing image id (the reference sorts its ids); instances of an image in
  increasing annotation id;
- crowd annotations (``iscrowd=1``) are removed;
- boxes ``[x, y, w, h]`` become corners ``[ymin, xmin, ymax, xmax]`` in continuous pixels of the
  original image, clipped to ``[0, H] x [0, W]``. The reference's boxes live in its inclusive
  ``TO_REMOVE=1`` convention (``xmax = x + w - 1``) and ``clip_to_image(remove_empty=True)`` keeps a
  box only when ``clamp(x + w - 1, 0, W - 1) > clamp(x, 0, W - 1)`` (likewise in y): an instance
  narrower or lower than about one pixel is *empty* there, so it is dropped here by exactly that
  test (``keep_box``), and the boxes that stay are the clipped continuous corners;
- labels are contiguous 1..80 in the order of ``coco_eval.COCO_CATEGORY_IDS`` (0 is the
  background); another category id is an error;
- train: images without a valid annotation are removed. The reference's test
  (``has_valid_annotation``) is "some annotation has ``w > 1`` and ``h > 1``", counted before it
  removes the crowd ones; here an image is kept when at least one instance remains after the crowd
  and empty ones are removed, which is the same test except that an image whose only such
  annotations are crowd ones is dropped (the reference would train on it with no targets);
- val: every image of the json (5,000), instances kept as for train (the metric reads the json).

``prepare(data_dir, split)`` writes ``DATA_DIR/maskrcnn/{split}-%05d-of-%05d.tfrecord`` (contiguous
runs of the image order above) and ``DATA_DIR/maskrcnn/{split}.json`` (``metadata``). One
``tf.train.Example`` per image:

    image           bytes   the JPEG file as it is
    image_id        int64   the COCO image id
    index           int64   position in the prepared split (0..num_examples-1)
    height, width   int64   from the json
    num_instances   int64   n
    boxes           float   [n * 4]: [ymin, xmin, ymax, xmax] per instance, original pixels
    classes         int64   [n]: 1..80
    ann_ids         int64   [n]: the COCO annotation ids
    masks           bytes   zlib (``zlib.compress``, zlib container) of uint8 [n, R, R] in C order

Each mask is the instance's full-image mask cropped to its (clipped) box and resampled to
``R x R`` (``mask_size``, 112 by default) by ``instance_masks.crop_masks``, then quantised as
``floor(255 * m + 0.5)``.

Preparation is idempotent: when ``{split}.json`` exists, matches (format version, mask size, the
annotation file and its size, shard count when given) and all its shards are there, ``prepare``
returns at once. The masks may be computed on ``num_workers`` processes (``spawn``ed: the calling
script needs the usual ``if __name__ == "__main__":`` guard, which the repository's entry points
have; ``num_workers=1`` uses none); the main process reads the JPEGs and writes the shards. About
1 ms of CPU per instance (``annToMask`` mostly), 0.9 KB per stored 112x112 mask.

This module imports TensorFlow only to write or to find the raw layout (``coco``), so its mask
workers start light.
"""
from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import time
import zlib
from typing import Any, Iterator

import numpy as np

from mlperf_jax.input_pipelines import coco_eval, instance_masks
from mlperf_jax.input_pipelines.source import DatasetNotFoundError, read_json

log = logging.getLogger(__name__)

SUBDIR = "maskrcnn"
MASK_SIZE = 112
FORMAT_VERSION = 1
MASK_FORMAT = "zlib uint8 [n, R, R] C order"
SPLITS = ("train", "val")
DEFAULT_NUM_SHARDS = {"train": 256, "val": 16}
COCO_CATEGORY_IDS = coco_eval.COCO_CATEGORY_IDS
CATEGORY_TO_LABEL = {c: i + 1 for i, c in enumerate(COCO_CATEGORY_IDS)}
LABEL_TO_CATEGORY = (0,) + COCO_CATEGORY_IDS
_RAW_DIRS = {"train": "train2017", "val": "val2017"}
_PREPARE_CMD = "python -m mlperf_jax.train --benchmark=maskrcnn --data_dir={} --prepare_only"


# ------------------------------------------------------------------ layout
def canonical_split(split: str) -> str:
    """"train" or "val" ("validation" is "val")."""
    s = {"train": "train", "val": "val", "validation": "val"}.get(split)
    if s is None:
        raise ValueError(f"unknown COCO split {split!r}; expected train or val")
    return s


def annotation_file(data_dir: str, split: str) -> str:
    from mlperf_jax.input_pipelines import coco  # the SSD pipeline's layout (imports TF)
    return coco._annotation_file(data_dir, canonical_split(split))


def image_dir(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, _RAW_DIRS[canonical_split(split)])


def prepared_dir(data_dir: str, out_dir: str | None = None) -> str:
    """Where ``prepare`` writes: ``out_dir``, by default ``DATA_DIR/maskrcnn``."""
    return out_dir if out_dir else os.path.join(data_dir, SUBDIR)


def metadata_path(data_dir: str, split: str, out_dir: str | None = None) -> str:
    return os.path.join(prepared_dir(data_dir, out_dir), f"{canonical_split(split)}.json")


def shard_name(split: str, k: int, num_shards: int) -> str:
    return f"{canonical_split(split)}-{k:05d}-of-{num_shards:05d}.tfrecord"


def _missing_raw(path: str, zip_name: str, data_dir: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{path} not found: download {zip_name} from cocodataset.org and unzip it into "
        f"{os.path.abspath(data_dir)}")


def _check_raw(data_dir: str, split: str) -> tuple[str, str]:
    """(annotation file, image dir) of ``split``; one-line ``DatasetNotFoundError`` if missing."""
    ann, imgs = annotation_file(data_dir, split), image_dir(data_dir, split)
    if not os.path.isfile(ann):
        raise _missing_raw(ann, "annotations_trainval2017.zip", data_dir)
    if not os.path.isdir(imgs):
        raise _missing_raw(imgs, f"{_RAW_DIRS[canonical_split(split)]}.zip", data_dir)
    return ann, imgs


# ------------------------------------------------------------------ boxes, masks
def keep_box(bbox_xywh: np.ndarray, height: int, width: int) -> np.ndarray:
    """[n] bool: the boxes maskrcnn-benchmark's ``clip_to_image(remove_empty=True)`` keeps.

    In its inclusive convention the box is ``[x, x + max(w - 1, 0)]``, both ends clamped to
    ``[0, W - 1]``, and it stays when the right end is strictly past the left (likewise in y).
    """
    b = np.asarray(bbox_xywh, np.float32).reshape(-1, 4)
    x, y, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    x0, y0 = np.clip(x, 0, width - 1), np.clip(y, 0, height - 1)
    x1 = np.clip(x + np.maximum(w - 1, 0), 0, width - 1)
    y1 = np.clip(y + np.maximum(h - 1, 0), 0, height - 1)
    return (x1 > x0) & (y1 > y0)


def corner_boxes(bbox_xywh: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [n, 4] ``[ymin, xmin, ymax, xmax]`` (continuous pixels), clipped to the image."""
    b = np.asarray(bbox_xywh, np.float64).reshape(-1, 4)
    x, y, w, h = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    out = np.stack([np.clip(y, 0, height), np.clip(x, 0, width),
                    np.clip(y + h, 0, height), np.clip(x + w, 0, width)], -1)
    return out.astype(np.float32)


def ann_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """uint8 [H, W] 0/1: ``pycocotools.coco.COCO.annToMask`` of an annotation with this
    ``segmentation`` (polygons, uncompressed or compressed RLE) on an H x W image."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons: one RLE each, merged
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, height, width)
    else:
        rle = segmentation
    return mask_utils.decode(rle)


def quantize(masks: np.ndarray) -> np.ndarray:
    """float masks in [0, 1] -> uint8 0..255, rounded half up."""
    return np.floor(np.clip(masks, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def encode_masks(masks_u8: np.ndarray) -> bytes:
    return zlib.compress(np.ascontiguousarray(masks_u8, np.uint8).tobytes(), 6)


def decode_masks(data: bytes, mask_size: int) -> np.ndarray:
    """uint8 [n, R, R] from the stored ``masks`` bytes."""
    return np.frombuffer(zlib.decompress(data), np.uint8).reshape(-1, mask_size, mask_size)


# ------------------------------------------------------------------ the raw reader
def read_split(data_dir: str, split: str, *, annotations: Any = None) -> dict[str, Any]:
    """The instances of ``split`` as kept for Mask R-CNN (module docstring), without masks.

    Returns ``{"records": [...], "num_images_in_json": int, "annotation_file": str}``; a record
    is ``{file, image_id, height, width, boxes float32 [n, 4], classes int64 [n], ann_ids int64
    [n], segmentations [n]}``, records in increasing image id; train records all have n >= 1.
    ``annotations``: an already loaded ``pycocotools.coco.COCO`` of the split's json.
    """
    split = canonical_split(split)
    ann_path, imgs = _check_raw(data_dir, split)
    coco_gt = annotations if annotations is not None else \
        coco_eval.load_annotations(ann_path).coco
    records = []
    for img_id in sorted(coco_gt.imgs):
        img = coco_gt.imgs[img_id]
        h, w = int(img["height"]), int(img["width"])
        anns = sorted((a for a in coco_gt.imgToAnns.get(img_id, []) if not a.get("iscrowd", 0)),
                      key=lambda a: a["id"])
        bbox = np.asarray([a["bbox"] for a in anns], np.float64).reshape(-1, 4)
        keep = keep_box(bbox, h, w)
        anns = [a for a, k in zip(anns, keep) if k]
        if split == "train" and not anns:
            continue
        unknown = {a["category_id"] for a in anns} - set(CATEGORY_TO_LABEL)
        if unknown:
            raise ValueError(f"{ann_path}: category ids {sorted(unknown)} are not COCO 2017's")
        records.append({
            "file": os.path.join(imgs, img["file_name"]), "image_id": int(img_id),
            "height": h, "width": w, "boxes": corner_boxes(bbox[keep], h, w),
            "classes": np.asarray([CATEGORY_TO_LABEL[a["category_id"]] for a in anns], np.int64),
            "ann_ids": np.asarray([a["id"] for a in anns], np.int64),
            "segmentations": [a["segmentation"] for a in anns]})
    return {"records": records, "num_images_in_json": len(coco_gt.imgs),
            "annotation_file": os.path.abspath(ann_path)}


def record_masks(record: dict[str, Any], mask_size: int) -> np.ndarray:
    """uint8 [n, R, R]: the record's instance masks cropped to their boxes, quantised."""
    h, w = record["height"], record["width"]
    out = np.zeros((len(record["segmentations"]), mask_size, mask_size), np.uint8)
    for i, (segm, box) in enumerate(zip(record["segmentations"], record["boxes"])):
        out[i] = quantize(instance_masks.crop_masks(ann_to_mask(segm, h, w), box, mask_size))
    return out


def _encoded_masks(args: tuple[list[dict[str, Any]], int]) -> list[bytes]:
    """A worker's job: the stored ``masks`` bytes of a chunk of records."""
    records, mask_size = args
    return [encode_masks(record_masks(r, mask_size)) for r in records]


# ------------------------------------------------------------------ preparation
def _serialize(record: dict[str, Any], index: int, image: bytes, masks: bytes) -> bytes:
    import tensorflow as tf

    def ints(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(x) for x in v]))

    def floats(v):
        return tf.train.Feature(float_list=tf.train.FloatList(value=list(v)))

    def data(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    f = {"image": data(image), "image_id": ints([record["image_id"]]), "index": ints([index]),
         "height": ints([record["height"]]), "width": ints([record["width"]]),
         "num_instances": ints([len(record["classes"])]),
         "boxes": floats(np.asarray(record["boxes"], np.float32).reshape(-1).tolist()),
         "classes": ints(record["classes"]), "ann_ids": ints(record["ann_ids"]),
         "masks": data(masks)}
    return tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString()


def _matches(meta: dict | None, out: str, *, mask_size: int, num_shards: int | None,
             ann_path: str) -> bool:
    if not meta or meta.get("version") != FORMAT_VERSION or meta.get("mask_size") != mask_size:
        return False
    if num_shards is not None and meta.get("num_shards") != num_shards:
        return False
    if os.path.isfile(ann_path) and (
            meta.get("annotation_file") != os.path.abspath(ann_path)
            or meta.get("annotation_bytes") != os.path.getsize(ann_path)):
        return False
    return all(os.path.isfile(os.path.join(out, s)) for s in meta.get("shards", ["?"]))


def describe(meta: dict[str, Any], out: str) -> str:
    return (f"COCO {meta['split']}2017 for Mask R-CNN: {meta['num_examples']} images "
            f"({meta['num_images_in_json'] - meta['num_examples']} without a valid annotation "
            f"dropped), {meta['num_instances']} instances (at most {meta['max_instances']} per "
            f"image), {meta['mask_size']}x{meta['mask_size']} masks, {meta['num_shards']} "
            f"TFRecord shards in {out}")


def prepare(data_dir: str, split: str, *, mask_size: int = MASK_SIZE,
            num_shards: int | None = None, out_dir: str | None = None,
            num_workers: int | None = None) -> str:
    """Write ``split`` ("train" or "val") as TFRecords + ``{split}.json``; a one-line summary.

    ``num_shards``: default 256 for train, 16 for val (never more than the images);
    ``num_workers``: processes computing masks (default: the CPUs, at most 16; 1: this process).
    Returns at once (summary ending "already prepared") when matching output is there.
    """
    split = canonical_split(split)
    if not data_dir:
        raise DatasetNotFoundError(
            "Mask R-CNN needs --data_dir holding COCO 2017 in the raw layout (train2017/, "
            "val2017/, annotations/ from cocodataset.org)")
    out = prepared_dir(data_dir, out_dir)
    ann_path = annotation_file(data_dir, split)
    mpath = metadata_path(data_dir, split, out_dir)
    old = read_json(mpath)
    if _matches(old, out, mask_size=mask_size, num_shards=num_shards, ann_path=ann_path):
        return describe(old, out) + " (already prepared)"

    t0 = time.time()
    raw = read_split(data_dir, split)
    records = raw["records"]
    missing = [r["file"] for r in records if not os.path.isfile(r["file"])]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetNotFoundError(
            f"{missing[0]}{more} not found, though listed in {os.path.basename(ann_path)}: "
            f"download {_RAW_DIRS[split]}.zip from cocodataset.org and unzip it into "
            f"{os.path.abspath(data_dir)}")
    n = len(records)
    shards = max(1, min(num_shards or DEFAULT_NUM_SHARDS[split], n))
    bounds = [n * k // shards for k in range(shards + 1)]
    names = [shard_name(split, k, shards) for k in range(shards)]
    os.makedirs(out, exist_ok=True)
    if os.path.exists(mpath):
        os.remove(mpath)  # stale: rewritten last, so a crash never leaves a matching one
    workers = num_workers if num_workers is not None else min(os.cpu_count() or 1, 16)
    workers = max(1, min(workers, n))
    chunk = 64
    jobs = [(records[i:i + chunk], mask_size) for i in range(0, n, chunk)]
    pool = None
    if workers > 1:
        pool = concurrent.futures.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"))
        encoded: Iterator[list[bytes]] = pool.map(_encoded_masks, jobs)
    else:
        encoded = map(_encoded_masks, jobs)
    try:
        masks_iter = (m for chunk_masks in encoded for m in chunk_masks)
        _write_shards(out, names, bounds, records, masks_iter)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    counts = [int(len(r["classes"])) for r in records]
    meta = {
        "version": FORMAT_VERSION, "split": split, "num_examples": n,
        "num_images_in_json": raw["num_images_in_json"], "num_instances": int(sum(counts)),
        "max_instances": int(max(counts, default=0)), "mask_size": int(mask_size),
        "mask_format": MASK_FORMAT, "annotation_file": raw["annotation_file"],
        "annotation_bytes": os.path.getsize(ann_path),
        "image_dir": os.path.abspath(image_dir(data_dir, split)),
        "label_to_category": list(LABEL_TO_CATEGORY), "num_shards": shards, "shards": names,
        "shard_counts": [bounds[k + 1] - bounds[k] for k in range(shards)],
        "seconds": round(time.time() - t0, 1)}
    tmp = mpath + ".tmp"
    import json
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, mpath)
    return describe(meta, out)


def _write_shards(out: str, names: list[str], bounds: list[int], records: list[dict],
                  masks: Iterator[bytes]) -> None:
    import tensorflow as tf

    for k, name in enumerate(names):
        path = os.path.join(out, name)
        tmp = path + ".tmp"
        with tf.io.TFRecordWriter(tmp) as w:
            for i in range(bounds[k], bounds[k + 1]):
                r = records[i]
                with open(r["file"], "rb") as f:
                    image = f.read()
                w.write(_serialize(r, i, image, next(masks)))
        os.replace(tmp, path)
        if (k + 1) % 16 == 0 or k + 1 == len(names):
            log.info("maskrcnn prepare: %d/%d shards written to %s", k + 1, len(names), out)


# ------------------------------------------------------------------ checks
def check_prepared(data_dir: str | None, split: str, *, out_dir: str | None = None
                   ) -> dict[str, Any]:
    """The metadata of prepared ``split``; one-line ``DatasetNotFoundError`` saying how to prepare
    when it or a shard is missing."""
    split = canonical_split(split)
    cmd = _PREPARE_CMD.format(os.path.abspath(data_dir) if data_dir else "DATA_DIR")
    if not data_dir:
        raise DatasetNotFoundError(f"Mask R-CNN needs --data_dir holding COCO 2017 (raw layout) "
                                   f"prepared into TFRecords: run {cmd}")
    out = prepared_dir(data_dir, out_dir)
    mpath = metadata_path(data_dir, split, out_dir)
    meta = read_json(mpath)
    if not meta or "shards" not in meta:
        what = f"{mpath} not found"
    else:
        absent = [s for s in meta["shards"] if not os.path.isfile(os.path.join(out, s))]
        if not absent:
            return meta
        what = f"{os.path.join(out, absent[0])} not found ({len(absent)} of "\
               f"{len(meta['shards'])} shards missing)"
    raise DatasetNotFoundError(
        f"no prepared Mask R-CNN {split} data: {what}; run {cmd} (it reads the raw COCO 2017 "
        f"layout: train2017/, val2017/ and annotations/instances_{{train,val}}2017.json from "
        f"cocodataset.org, unzipped into the data dir)")


def metadata(data_dir: str, split: str, *, out_dir: str | None = None) -> dict[str, Any]:
    """The prepared split's ``{split}.json`` (``check_prepared``'s errors when missing)."""
    return check_prepared(data_dir, split, out_dir=out_dir)


def shard_paths(data_dir: str, split: str, *, out_dir: str | None = None) -> list[str]:
    meta = metadata(data_dir, split, out_dir=out_dir)
    return [os.path.join(prepared_dir(data_dir, out_dir), s) for s in meta["shards"]]
