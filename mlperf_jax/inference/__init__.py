"""Systems under test for mlperf_jax.loadgen: JAX image classifiers and ImageNet QSLs."""

from .qsl import ImageNetQSL, SyntheticImageQSL, find_imagenet_val
from .sut import ClassifierSUT

__all__ = ["ImageNetQSL", "SyntheticImageQSL", "find_imagenet_val", "ClassifierSUT"]
