"""Systems under test for mlperf_jax.loadgen: JAX image classifiers and detectors, ImageNet and COCO QSLs."""

from .coco_qsl import CocoQSL, SyntheticDetectionQSL, find_coco_val
from .detection_sut import DetectionSUT, ssd_detect_fn
from .qsl import ImageNetQSL, SyntheticImageQSL, find_imagenet_val
from .sut import ClassifierSUT

__all__ = ["ImageNetQSL", "SyntheticImageQSL", "find_imagenet_val", "ClassifierSUT",
           "CocoQSL", "SyntheticDetectionQSL", "find_coco_val", "DetectionSUT", "ssd_detect_fn"]
