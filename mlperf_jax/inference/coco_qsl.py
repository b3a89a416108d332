"""Query sample libraries for COCO detection inference (MLPerf Inference v0.5 ssd-mobilenet, ssd-resnet34).

``CocoQSL`` reads the MLPerf reference layout: ``ROOT/annotations/instances_val2017.json`` and
``ROOT/val2017/*.jpg``.  The qsl index of a sample is its position in the json's ``images`` list,
which is what the official ``tools/accuracy-coco.py`` assumes when it maps ``qsl_idx`` back to an
image (``image_map = cocoGt.dataset["images"]``); the reference harness (``python/coco.py``) keeps
the same order.  Samples are decoded and resized when LoadGen loads them to RAM: uint8
``size`` x ``size`` x 3, no aspect-preserving crop (the reference's ``maybe_resize``: a plain
bilinear resize to the model's input).  ``SyntheticDetectionQSL`` has the same shapes and random
pixels, for runs without the dataset.

Preprocessing is ``input_pipelines/preprocessing.py``'s detection conventions ("ssd-mobilenet",
"ssd-resnet34"): ``detection_image`` on the host (whole-image bilinear resize to S x S, uint8),
``normalize`` on the device (SSD-MobileNet: ``(x - 127.5) / 127.5``; SSD-ResNet34: ``/255`` then
ImageNet mean/std), the same functions the SSD training and evaluation pipelines use.
"""

from __future__ import annotations

import json
import os

import numpy as np

from mlperf_jax.inference.qsl import RamQSL, random_image
from mlperf_jax.input_pipelines import preprocessing as pp
# the 80 COCO 2017 category ids in annotation-file order (= sorted): contiguous label l (1..80) is
# category COCO_CATEGORY_IDS[l - 1]; used when no annotation file is at hand (synthetic QSL)
from mlperf_jax.input_pipelines.coco_eval import COCO_CATEGORY_IDS

COCO_VAL_COUNT = 5_000
# Per benchmark: the model input size and performance_sample_count (the v0.5 QSL size).
DETECTION_BENCHMARKS = {
    "ssd-mobilenet": {"image_size": 300, "performance_sample_count": 256},
    "ssd-resnet34": {"image_size": 1200, "performance_sample_count": 64},
}


def check_preprocessing(model: str) -> None:
    """ValueError unless ``model`` names a detection convention of ``preprocessing.py``."""
    detection = [m for m, c in pp.CONVENTIONS.items() if getattr(c, "task", "") == "detection"]
    if model not in detection:
        raise ValueError(f"no COCO detection preprocessing for {model!r}; expected one of {', '.join(detection)}")


def label_table(categories: list[int] | tuple[int, ...]) -> np.ndarray:
    """Contiguous label -> COCO category id: ``[0] + categories`` (index 0 = background), as the
    official accuracy script's ``inv_map = [0] + cocoGt.getCatIds()``."""
    return np.asarray([0, *categories], np.int32)


def detection_image(image_bytes: bytes, model: str, size: int) -> np.ndarray:
    """Encoded image -> uint8 ``size`` x ``size`` x 3 RGB for ``model`` (host side, TF)."""
    return np.asarray(pp.detection_image(image_bytes, model, size))


def detection_normalize(images, model: str):
    """uint8 NHWC -> float32 for ``model``; jit-friendly (device side)."""
    return pp.normalize(images, model)


def find_coco_val(data_dir: str | None) -> str | None:
    """The directory holding ``annotations/instances_val2017.json`` under ``data_dir`` (itself, coco/, coco2017/)."""
    if not data_dir:
        return None
    for sub in ("", "coco", "coco2017", "coco-2017"):
        d = os.path.join(data_dir, sub)
        if os.path.isfile(os.path.join(d, "annotations", "instances_val2017.json")):
            return d
    return None


class CocoQSL(RamQSL):
    """COCO val2017 in the MLPerf layout; ``preprocessing`` names the model ("ssd-mobilenet", "ssd-resnet34").

    Attributes for accuracy: ``images`` (the json's image dicts, in qsl order), ``image_ids``,
    ``image_sizes`` [n, 2] (h, w), ``categories`` (category ids in file order), ``label_to_category``.
    """

    name = "CocoQSL"

    def __init__(self, coco_dir: str, *, preprocessing: str, image_size: int, count: int | None = None,
                 performance_sample_count: int | None = None):
        check_preprocessing(preprocessing)
        self.preprocessing = preprocessing
        self.coco_dir = coco_dir
        self.annotation_file = os.path.join(coco_dir, "annotations", "instances_val2017.json")
        self.image_dir = os.path.join(coco_dir, "val2017")
        self.image_size = image_size
        try:
            with open(self.annotation_file) as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{self.annotation_file}: not valid json ({e})") from None
        images = data.get("images") or []
        if count:
            images = images[:count]
        if not images:
            raise FileNotFoundError(f"{self.annotation_file} lists no images")
        missing = [im["file_name"] for im in images
                   if not os.path.isfile(os.path.join(self.image_dir, im["file_name"]))]
        if missing:
            # The qsl index is the position in the json: a missing file would shift every later one.
            raise FileNotFoundError(f"{len(missing)} of the {len(images)} images listed in {self.annotation_file} "
                                    f"are not in {self.image_dir} (first: {missing[0]}); the MLPerf layout needs "
                                    "all of val2017/")
        self.images = images
        self.image_ids = np.asarray([im["id"] for im in images], np.int64)
        self.image_sizes = np.asarray([(im["height"], im["width"]) for im in images], np.int32)
        self.categories = tuple(int(c["id"]) for c in data.get("categories", []))
        self.label_to_category = label_table(self.categories)
        self.total_sample_count = len(images)
        psc = performance_sample_count or DETECTION_BENCHMARKS.get(preprocessing, {}).get(
            "performance_sample_count", 64)
        self.performance_sample_count = min(psc, self.total_sample_count)
        self._ram: dict[int, np.ndarray] = {}

    def load_sample(self, i: int) -> np.ndarray:
        with open(os.path.join(self.image_dir, self.images[i]["file_name"]), "rb") as f:
            data = f.read()
        return detection_image(data, self.preprocessing, self.image_size)


class SyntheticDetectionQSL(RamQSL):
    """Random uint8 images of the model's input size (accuracy is meaningless); the 80 COCO categories."""

    name = "SyntheticDetectionQSL"

    def __init__(self, image_size: int, total: int = COCO_VAL_COUNT, performance_sample_count: int = 64,
                 seed: int = 0, preprocessing: str | None = None):
        self.preprocessing = preprocessing
        self.image_size = image_size
        self.total_sample_count = total
        self.performance_sample_count = min(performance_sample_count, total)
        self.categories = COCO_CATEGORY_IDS
        self.label_to_category = label_table(COCO_CATEGORY_IDS)
        self._seed = seed
        self._ram: dict[int, np.ndarray] = {}

    def load_sample(self, i: int) -> np.ndarray:
        return random_image(self._seed, i, self.image_size)
