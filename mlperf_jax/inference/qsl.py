"""Query sample libraries for ImageNet classification (resnet50, mobilenet).

``ImageNetQSL`` reads the MLPerf reference layout: a directory with ``val_map.txt``
(``relative/path.JPEG label`` per line) and the validation JPEGs; samples are decoded and
preprocessed when LoadGen loads them to RAM, by ``preprocessing.eval_image`` for the model
(resize the shorter side to 256, 87.5% central crop: 224x224 uint8 HWC), the very function
training's eval pipeline uses.  ``SyntheticImageQSL`` has the same shapes and random pixels, for
runs without the dataset.
"""

from __future__ import annotations

import os

import numpy as np

from mlperf_jax.input_pipelines import preprocessing as pp

IMAGENET_VAL_COUNT = 50_000
PERFORMANCE_SAMPLE_COUNT = 1024


def find_imagenet_val(data_dir: str | None) -> str | None:
    """The directory holding val_map.txt under ``data_dir`` (itself, or val/, imagenet/val/)."""
    if not data_dir:
        return None
    for sub in ("", "val", "imagenet/val", "ILSVRC2012_img_val"):
        d = os.path.join(data_dir, sub)
        if os.path.isfile(os.path.join(d, "val_map.txt")):
            return d
    return None


class RamQSL:
    """The LoadGen QSL protocol over a dict of preprocessed samples: a subclass says how one
    sample is made (``load_sample``) and sets ``self._ram = {}``."""

    _ram: dict[int, np.ndarray]

    def load_sample(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def load_samples_to_ram(self, indices):
        for i in indices:
            if i not in self._ram:
                self._ram[i] = self.load_sample(i)

    def unload_samples_from_ram(self, indices):
        for i in indices:
            self._ram.pop(i, None)

    def get(self, indices) -> np.ndarray:
        return np.stack([self._ram[i] for i in indices])


def random_image(seed: int, index: int, size: int) -> np.ndarray:
    """Sample ``index`` of a synthetic QSL: uint8 noise, the same for the same (seed, index)."""
    return np.random.default_rng((seed, int(index))).integers(0, 256, (size, size, 3), dtype=np.uint8)


class ImageNetQSL(RamQSL):
    """``preprocessing`` names the model family whose convention the crops follow."""

    name = "ImageNetQSL"

    def __init__(self, val_dir: str, *, preprocessing: str, image_size: int = 224,
                 count: int | None = None, performance_sample_count: int = PERFORMANCE_SAMPLE_COUNT):
        pp.convention(preprocessing)  # unknown names fail here, not at the first load
        self.preprocessing = preprocessing
        self.val_dir = val_dir
        self.image_size = image_size
        files, labels = [], []
        with open(os.path.join(val_dir, "val_map.txt")) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2:
                    files.append(parts[0])
                    labels.append(int(parts[1]))
        if count:
            files, labels = files[:count], labels[:count]
        if not files:
            raise FileNotFoundError(f"{val_dir}/val_map.txt lists no images")
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int32)
        self.total_sample_count = len(files)
        self.performance_sample_count = min(performance_sample_count, len(files))
        self._ram: dict[int, np.ndarray] = {}

    def load_sample(self, i: int) -> np.ndarray:
        with open(os.path.join(self.val_dir, self.files[i]), "rb") as f:
            data = f.read()
        return pp.eval_image(data, self.preprocessing, self.image_size).numpy()


class SyntheticImageQSL(RamQSL):
    """Random uint8 images of the right shape; labels are random too (accuracy is meaningless)."""

    name = "SyntheticImageQSL"

    def __init__(self, image_size: int = 224, total: int = IMAGENET_VAL_COUNT,
                 performance_sample_count: int = PERFORMANCE_SAMPLE_COUNT, num_classes: int = 1000,
                 seed: int = 0):
        self.image_size = image_size
        self.total_sample_count = total
        self.performance_sample_count = min(performance_sample_count, total)
        self.labels = np.random.default_rng(seed).integers(0, num_classes, total, dtype=np.int32)
        self._seed = seed
        self._ram: dict[int, np.ndarray] = {}

    def load_sample(self, i: int) -> np.ndarray:
        return random_image(self._seed, i, self.image_size)
