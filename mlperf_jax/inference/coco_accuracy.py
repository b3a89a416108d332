"""COCO mAP of a detection accuracy run (``mlperf_log_accuracy.json``, ours or the official LoadGen's).

The reading follows the official ``vision/classification_and_detection/tools/accuracy-coco.py``
(MLPerf Inference): entries are deduplicated by ``qsl_idx`` (first one wins); ``data`` is
``np.frombuffer(bytes.fromhex(data), np.float32)`` in groups of seven
``[qsl_idx, ymin, xmin, ymax, xmax, score, class]``; fewer than seven floats means no detections,
and the image still counts.  ``qsl_idx`` indexes the ``images`` list of
``annotations/instances_val2017.json``; boxes are scaled by that image's height and width (in
float32, as the official script's numpy scalars do) to ``[x, y, w, h]`` pixels; ``class`` is the
COCO category id, or a contiguous label 1..80 mapped through ``[0] + getCatIds()`` with
``use_inv_map``.  ``COCOeval`` (bbox) then runs over the images seen; mAP is ``stats[0]``.

Targets (MLPerf Inference v0.5, 99% of the FP32 reference): SSD-MobileNet 0.22, SSD-ResNet34 0.20,
i.e. 21.78% and 19.8% mAP.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Iterable

import numpy as np

# benchmark: (FP32 reference mAP in %, fraction of it required)
TARGETS = {"ssd-mobilenet": (22.0, 0.99), "ssd-resnet34": (20.0, 0.99)}


def target_map(benchmark: str) -> float:
    """The quality bound in % mAP."""
    ref, frac = TARGETS[benchmark]
    return ref * frac


def load_coco_gt(annotation_file: str, quiet: bool = True):
    """``pycocotools.coco.COCO`` of an annotation file; FileNotFoundError naming it when absent."""
    from pycocotools.coco import COCO

    if not os.path.isfile(annotation_file):
        raise FileNotFoundError(f"no COCO annotation file at {os.path.abspath(annotation_file)}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        return COCO(annotation_file)


def image_map(coco_gt, remove_empty: bool = False) -> list[dict]:
    """qsl_idx -> image dict: the annotation file's ``images`` list, or (``remove_empty``, for
    harnesses that dropped the 48 val images without annotations) the images with annotations, in
    the official script's order for that option."""
    if not remove_empty:
        return coco_gt.dataset["images"]
    ids: list[int] = []
    for c in coco_gt.getCatIds():
        ids += coco_gt.catToImgs[c]
    return [coco_gt.imgs[i] for i in list(set(ids))]


def accuracy_log_to_coco(entries: Iterable[dict], images: list[dict], *, inv_map: list[int] | None = None
                         ) -> tuple[list[dict], set, dict]:
    """Accuracy-log entries -> (COCO result dicts, image ids seen, counts).

    ``counts``: ``results`` (entries), ``images`` (unique qsl_idx), ``no_results`` (images without
    detections), ``dupes``, ``mismatches`` (groups whose first float disagrees with the entry's qsl_idx).
    Raises ValueError on data that cannot be read (bad hex, a length that is not groups of 7, an
    index beyond the image list, a class beyond ``inv_map``).
    """
    detections: list[dict] = []
    image_ids: set = set()
    seen: set = set()
    n = no_results = mismatches = 0
    for e in entries:
        n += 1
        idx = int(e["qsl_idx"])
        if idx in seen:
            continue
        seen.add(idx)
        if not 0 <= idx < len(images):
            raise ValueError(f"qsl_idx {idx} is outside the {len(images)} images of the annotation file")
        try:
            data = np.frombuffer(bytes.fromhex(e["data"]), np.float32)
        except ValueError:
            raise ValueError(f"qsl_idx {idx}: data is not hex-encoded float32") from None
        image = images[idx]
        if len(data) < 7:
            image_ids.add(image["id"])
            no_results += 1
            continue
        if len(data) % 7:
            raise ValueError(f"qsl_idx {idx}: {len(data)} floats, not groups of 7 "
                             "[qsl_idx, ymin, xmin, ymax, xmax, score, class]")
        height, width = np.float32(image["height"]), np.float32(image["width"])
        for g in data.reshape(-1, 7):
            if int(g[0]) != idx:
                mismatches += 1
            ymin, xmin, ymax, xmax = g[1] * height, g[2] * width, g[3] * height, g[4] * width
            label = int(g[6])
            if inv_map is not None:
                if not 0 <= label < len(inv_map):
                    raise ValueError(f"qsl_idx {idx}: class {label} is not a label 0..{len(inv_map) - 1} "
                                     "(--use-inv-map expects contiguous labels)")
                label = inv_map[label]
            detections.append({"image_id": image["id"], "category_id": label,
                               "bbox": [float(xmin), float(ymin), float(xmax - xmin), float(ymax - ymin)],
                               "score": float(g[5])})
            image_ids.add(image["id"])
    counts = {"results": n, "images": len(image_ids), "no_results": no_results, "dupes": n - len(seen),
              "mismatches": mismatches}
    return detections, image_ids, counts


def coco_map(coco_gt, detections: list[dict], image_ids: Iterable[int], *, quiet: bool = True
             ) -> tuple[float, np.ndarray]:
    """(mAP = ``stats[0]``, the 12 stats) of bbox ``detections`` over ``image_ids``; no detections -> 0."""
    from pycocotools.cocoeval import COCOeval

    image_ids = list(image_ids)
    if not detections:  # loadRes([]) fails; COCOeval of nothing is 0 everywhere
        return 0.0, np.zeros(12)
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        dt = coco_gt.loadRes([dict(d) for d in detections])
        ev = COCOeval(coco_gt, dt, iouType="bbox")
        ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), np.asarray(ev.stats)


def evaluate_log(accuracy_file: str, annotation_file: str, *, use_inv_map: bool = False,
                 remove_empty: bool = False, quiet: bool = True) -> tuple[float, dict]:
    """mAP (fraction) and counts of an accuracy log against an annotation file."""
    import json

    if not os.path.isfile(accuracy_file):
        raise FileNotFoundError(f"no accuracy log at {os.path.abspath(accuracy_file)}")
    gt = load_coco_gt(annotation_file, quiet=True)
    try:
        with open(accuracy_file) as f:
            entries = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{accuracy_file}: not valid json ({e})") from None
    if not isinstance(entries, list):
        raise ValueError(f"{accuracy_file}: expected a json list of accuracy entries")
    inv_map = [0, *gt.getCatIds()] if use_inv_map else None
    dets, ids, counts = accuracy_log_to_coco(entries, image_map(gt, remove_empty), inv_map=inv_map)
    m, stats = coco_map(gt, dets, ids, quiet=quiet)
    counts["detections"] = len(dets)
    counts["stats"] = stats
    return m, counts
