"""COCO box and mask evaluation with pycocotools: ground truth in memory, detections in, named
stats out.

The box metric is the MLPerf SSD one (spec ``detection.md`` 1.4): detections as ``{image_id,
category_id, bbox: [x, y, w, h] in pixels, score}`` go through ``COCO.loadRes`` and
``COCOeval(gt, dt, "bbox")``; ``"mAP"`` is ``stats[0]`` (AP at IoU .50:.95, all areas, 100
detections). The mask metric is Mask R-CNN's (spec 2, "Eval and target"): each detection's mask
pasted into the original image as ``Masker(threshold=0.5, padding=1)`` does
(``instance_masks.paste_masks``), RLE-encoded with ``pycocotools.mask.encode``, as ``{image_id,
category_id, segmentation, score}`` through ``COCOeval(gt, dt, "segm")``
(``segmentations_to_coco``, ``evaluate(..., iou_type="segm")``). pycocotools prints as it works;
everything here runs with its stdout swallowed.

Ground truth comes either from an annotation file (``instances_val2017.json``: the reference's
ground truth, crowd flags and segmentation areas included) or from arrays
(``ground_truth_from_arrays``: the synthetic tiny track, or COCO rebuilt from TFDS ``coco/2017``,
whose ``area`` is the annotation's area truncated to an integer). Either way it is a
``GroundTruth``: the ``pycocotools.coco.COCO`` and ``label_to_category`` (the model's contiguous
label -> COCO category id; entry 0, the background, maps to 0).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
from typing import Any, Sequence

import numpy as np

#: COCOeval.stats in order (``summarize()``'s twelve lines); "mAP" is stats[0]
#: the 80 COCO category ids in order: label l (1..80) is category COCO_CATEGORY_IDS[l - 1]
COCO_CATEGORY_IDS = tuple(i for i in range(1, 91)
                          if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))

STAT_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


@contextlib.contextmanager
def _quiet():
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@dataclasses.dataclass
class GroundTruth:
    """The eval context of a COCO-style metric: the ground truth and the label map."""

    coco: Any  # pycocotools.coco.COCO
    label_to_category: np.ndarray  # int64 [num_labels + 1]; [0] = 0 (background)

    @property
    def image_ids(self) -> list[int]:
        return sorted(self.coco.getImgIds())

    @property
    def num_images(self) -> int:
        return len(self.coco.getImgIds())

    @property
    def category_to_label(self) -> dict[int, int]:
        return {int(c): i for i, c in enumerate(self.label_to_category) if i > 0}


def coco_from_dataset(dataset: dict) -> Any:
    """A ``pycocotools.coco.COCO`` from an in-memory dataset dict (``images``, ``annotations``,
    ``categories``), indexed, without prints."""
    from pycocotools.coco import COCO

    with _quiet():
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def load_annotations(path: str) -> GroundTruth:
    """``GroundTruth`` from a COCO annotation json; labels are the categories sorted by id, 1..C."""
    from pycocotools.coco import COCO

    with _quiet():
        coco = COCO(path)
    cats = sorted(coco.getCatIds())
    return GroundTruth(coco, np.asarray([0] + cats, np.int64))


def _rle(mask: np.ndarray) -> dict:
    """pycocotools RLE of one ``[H, W]`` 0/1 mask, ``counts`` as str (json-able, as the reference
    writes its results)."""
    from pycocotools import mask as mask_util

    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def ground_truth_from_arrays(image_ids, orig_sizes, boxes, labels, num_boxes,
                             label_to_category=None, category_names: Sequence[str] | None = None,
                             *, is_crowd=None, areas=None, masks=None) -> GroundTruth:
    """``GroundTruth`` from padded arrays, for the synthetic task and for TFDS ``coco/2017``.

    ``image_ids`` [n]; ``orig_sizes`` [n, 2] (height, width) in pixels; ``boxes`` [n, M, 4]
    normalised ``[ymin, xmin, ymax, xmax]``; ``labels`` [n, M] (1..C-1, 0 = padding);
    ``num_boxes`` [n] (rows past it are ignored). ``label_to_category`` [C] maps labels to
    category ids (None: the identity, category id = label). ``category_names`` names the labels
    1..C-1 in order (None: "class_1", ... for every label of the map, or seen in ``labels``).
    Optional ``is_crowd`` [n, M] bool and ``areas`` [n, M] (pixels; default the box area, or the
    mask's pixel count with ``masks``). Optional ``masks`` [n, M, H, W] bool/0-1 full-image
    instance masks (or a length-n sequence of [M_i >= num_boxes[i], H_i, W_i]), each image's
    cropped to its ``orig_sizes`` from the top-left: every annotation then carries
    ``segmentation`` (compressed RLE, ``counts`` str) and can be scored with ``iou_type="segm"``.
    Annotation ids count from 1 (COCOeval treats id 0 as "unmatched").
    """
    image_ids = np.asarray(image_ids).astype(np.int64)
    orig_sizes = np.asarray(orig_sizes).astype(np.float64).reshape(-1, 2)
    boxes = np.asarray(boxes, np.float64)
    labels = np.asarray(labels).astype(np.int64)
    num_boxes = np.asarray(num_boxes).astype(np.int64)
    n, m = labels.shape
    if not (len(image_ids) == len(orig_sizes) == len(boxes) == len(num_boxes) == n):
        raise ValueError("image_ids, orig_sizes, boxes, labels and num_boxes disagree on the "
                         "number of images")
    if label_to_category is None:
        top = len(category_names) if category_names is not None else int(
            max([labels[i, :num_boxes[i]].max(initial=0) for i in range(n)], default=0))
        label_to_category = np.arange(top + 1, dtype=np.int64)
    label_to_category = np.asarray(label_to_category, np.int64)
    num_labels = len(label_to_category) - 1
    if category_names is None:
        category_names = [f"class_{i}" for i in range(1, num_labels + 1)]
    if len(category_names) != num_labels:
        raise ValueError(f"{len(category_names)} category names for {num_labels} labels")
    categories = [{"id": int(label_to_category[i]), "name": str(category_names[i - 1]),
                   "supercategory": ""} for i in range(1, num_labels + 1)]

    valid = np.arange(m)[None, :] < num_boxes[:, None]
    h, w = orig_sizes[:, 0:1], orig_sizes[:, 1:2]
    x0, y0 = boxes[..., 1] * w, boxes[..., 0] * h
    bw, bh = (boxes[..., 3] - boxes[..., 1]) * w, (boxes[..., 2] - boxes[..., 0]) * h
    area = bw * bh if areas is None else np.asarray(areas, np.float64)
    crowd = np.zeros((n, m), bool) if is_crowd is None else np.asarray(is_crowd, bool)
    lab = labels[valid]
    if lab.size and (lab.min() < 1 or lab.max() > num_labels):
        raise ValueError(f"labels outside 1..{num_labels}")
    img_of = np.broadcast_to(image_ids[:, None], (n, m))[valid]
    cols = [img_of.tolist(), label_to_category[lab].tolist(), x0[valid].tolist(),
            y0[valid].tolist(), bw[valid].tolist(), bh[valid].tolist(), area[valid].tolist(),
            crowd[valid].astype(int).tolist()]
    annotations = [
        {"id": k + 1, "image_id": i, "category_id": c, "bbox": [x, y, bw_, bh_], "area": a,
         "iscrowd": cr}
        for k, (i, c, x, y, bw_, bh_, a, cr) in enumerate(zip(*cols))]
    if masks is not None:
        if len(masks) != n:
            raise ValueError(f"masks for {len(masks)} images, expected {n}")
        k = 0
        for i in range(n):      # annotations run image by image, rows 0..num_boxes[i] - 1
            hh, ww = int(orig_sizes[i, 0]), int(orig_sizes[i, 1])
            mi = np.asarray(masks[i])
            if mi.ndim != 3 or mi.shape[0] < num_boxes[i] or mi.shape[1] < hh or mi.shape[2] < ww:
                raise ValueError(f"masks of image {i} have shape {mi.shape}; need at least "
                                 f"[{num_boxes[i]}, {hh}, {ww}]")
            for j in range(int(num_boxes[i])):
                mj = mi[j, :hh, :ww] != 0
                annotations[k]["segmentation"] = _rle(mj)
                if areas is None:
                    annotations[k]["area"] = float(np.count_nonzero(mj))
                k += 1
    images = [{"id": int(i), "height": int(hh), "width": int(ww)}
              for i, (hh, ww) in zip(image_ids.tolist(), orig_sizes.tolist())]
    coco = coco_from_dataset({"images": images, "annotations": annotations,
                              "categories": categories})
    return GroundTruth(coco, label_to_category)


def _detection_arrays(image_ids, boxes, scores, classes, valid, orig_size, mask):
    """The detection arrays as numpy, and which rows to keep (valid and not padding)."""
    keep = np.asarray(valid, bool).copy()
    if mask is not None:
        keep &= np.asarray(mask, bool)[:, None]
    return (np.asarray(image_ids).astype(np.int64), np.asarray(boxes, np.float64),
            np.asarray(scores, np.float64), np.asarray(classes).astype(np.int64), keep,
            np.asarray(orig_size, np.float64).reshape(-1, 2))


def detections_to_coco(image_ids, boxes, scores, classes, valid, orig_size,
                       label_to_category=None, *, mask=None) -> list[dict]:
    """Detections of ``n`` images -> pycocotools results (``bbox`` = [x, y, w, h] in pixels).

    ``image_ids`` [n]; ``boxes`` [n, K, 4] normalised ``[ymin, xmin, ymax, xmax]``; ``scores``
    [n, K]; ``classes`` [n, K] contiguous labels (1..C-1); ``valid`` [n, K] bool; ``orig_size``
    [n, 2] (height, width). ``label_to_category`` maps labels to COCO category ids (None: the
    classes are category ids already, as SSD-MobileNet's 91-way output). ``mask`` [n] drops padded
    rows of a last eval batch (rows with ``mask == False``).
    """
    image_ids, boxes, scores, classes, keep, orig = _detection_arrays(
        image_ids, boxes, scores, classes, valid, orig_size, mask)
    h, w = orig[:, 0:1], orig[:, 1:2]
    x0, y0 = boxes[..., 1] * w, boxes[..., 0] * h
    bw, bh = (boxes[..., 3] - boxes[..., 1]) * w, (boxes[..., 2] - boxes[..., 0]) * h
    cls = classes[keep]
    if label_to_category is not None:
        cls = np.asarray(label_to_category, np.int64)[cls]
    img = np.broadcast_to(image_ids[:, None], keep.shape)[keep]
    return [{"image_id": i, "category_id": c, "bbox": [x, y, ww, hh], "score": s}
            for i, c, x, y, ww, hh, s in zip(img.tolist(), cls.tolist(), x0[keep].tolist(),
                                             y0[keep].tolist(), bw[keep].tolist(),
                                             bh[keep].tolist(), scores[keep].tolist())]


def segmentations_to_coco(image_ids, boxes, scores, classes, valid, masks, orig_size,
                          label_to_category=None, *, mask=None, threshold: float = 0.5,
                          padding: int = 1) -> list[dict]:
    """Mask detections of ``n`` images -> pycocotools ``segm`` results ``{image_id, category_id,
    segmentation (RLE, counts str), score}``, as the reference's ``prepare_for_coco_segmentation``.

    ``masks`` [n, K, r, r] mask probabilities of the detections' classes; the other arguments as
    ``detections_to_coco``. Each kept detection's mask is pasted into its original image (box
    scaled by ``orig_size``) by ``instance_masks.paste_masks`` (``Masker(threshold, padding)``)
    and encoded with ``pycocotools.mask.encode``; one image's masks are in memory at a time.
    """
    from .instance_masks import paste_masks

    image_ids, boxes, scores, classes, keep, orig = _detection_arrays(
        image_ids, boxes, scores, classes, valid, orig_size, mask)
    l2c = None if label_to_category is None else np.asarray(label_to_category, np.int64)
    out = []
    for i in range(len(image_ids)):
        sel = np.nonzero(keep[i])[0]
        if not len(sel):
            continue
        h, w = orig[i]
        pix = boxes[i, sel] * np.array([h, w, h, w])
        pasted = paste_masks(np.asarray(masks[i])[sel], pix, int(h), int(w),
                             threshold=threshold, padding=padding)
        cats = classes[i, sel] if l2c is None else l2c[classes[i, sel]]
        img = int(image_ids[i])
        for m, c, s in zip(pasted, cats.tolist(), scores[i, sel].tolist()):
            out.append({"image_id": img, "category_id": c, "segmentation": _rle(m),
                        "score": s})
    return out


def evaluate(gt: GroundTruth, detections: list[dict], *, image_ids=None,
             iou_type: str = "bbox") -> dict[str, float]:
    """COCO ``iou_type`` ("bbox" or "segm") stats by name (``STAT_NAMES``); ``"mAP"`` is
    ``stats[0]``.

    ``image_ids`` restricts the evaluation to those images (as the inference accuracy script
    does with the images it saw); by default every ground-truth image counts, and images with
    neither ground truth nor detections are ignored by COCOeval. No detections give 0.0 for every
    stat (pycocotools cannot load an empty result). Detections on images the ground truth does not
    know raise ``ValueError``. The dicts of ``detections`` gain the keys ``loadRes`` adds. "segm"
    needs ground truth with masks (``segmentation`` on every annotation) and detections with
    ``segmentation`` (``segmentations_to_coco``).
    """
    from pycocotools.cocoeval import COCOeval

    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    if iou_type == "segm" and any("segmentation" not in a
                                  for a in gt.coco.dataset.get("annotations", [])):
        raise ValueError("segm evaluation needs ground-truth masks (annotations without "
                         "'segmentation'; pass masks= to ground_truth_from_arrays)")
    if not detections:
        return {k: 0.0 for k in STAT_NAMES}
    known = set(gt.coco.getImgIds())
    unknown = {d["image_id"] for d in detections} - known
    if unknown:
        raise ValueError(f"{len(unknown)} image ids with detections are not in the ground truth "
                         f"(e.g. {sorted(unknown)[:5]})")
    with _quiet():
        dt = gt.coco.loadRes(detections)
        ev = COCOeval(gt.coco, dt, iouType=iou_type)
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in np.asarray(image_ids).ravel())
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(v) for k, v in zip(STAT_NAMES, ev.stats)}
