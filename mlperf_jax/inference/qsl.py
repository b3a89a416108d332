"""Query sample libraries for ImageNet classification (resnet50, mobilenet).

``ImageNetQSL`` reads the MLPerf reference layout: a directory with ``val_map.txt``
(``relative/path.JPEG label`` per line) and the validation JPEGs; samples are decoded and
preprocessed (resize shorter side to 256 -> 87.5% central crop, 224x224, uint8 NHWC) when
LoadGen loads them to RAM.  ``SyntheticImageQSL`` has the same shapes and random pixels, for
runs without the dataset.
"""

from __future__ import annotations

import os

import numpy as np

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


def preprocess(jpeg_bytes: bytes, image_size: int = 224) -> np.ndarray:
    """Decode, resize the shorter side to image_size/0.875, central crop: uint8 HWC."""
    import tensorflow as tf  # only needed with a real dataset

    img = tf.io.decode_image(jpeg_bytes, channels=3, expand_animations=False)
    h, w = int(img.shape[0]), int(img.shape[1])
    scale = (image_size / 0.875) / min(h, w)
    nh, nw = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    img = tf.image.resize(img, (nh, nw), method="area")
    top, left = (nh - image_size) // 2, (nw - image_size) // 2
    img = img[top:top + image_size, left:left + image_size]
    return np.clip(np.round(img.numpy()), 0, 255).astype(np.uint8)


class ImageNetQSL:
    name = "ImageNetQSL"

    def __init__(self, val_dir: str, image_size: int = 224, count: int | None = None,
                 performance_sample_count: int = PERFORMANCE_SAMPLE_COUNT):
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

    def load_samples_to_ram(self, indices):
        for i in indices:
            if i not in self._ram:
                with open(os.path.join(self.val_dir, self.files[i]), "rb") as f:
                    self._ram[i] = preprocess(f.read(), self.image_size)

    def unload_samples_from_ram(self, indices):
        for i in indices:
            self._ram.pop(i, None)

    def get(self, indices) -> np.ndarray:
        return np.stack([self._ram[i] for i in indices])


class SyntheticImageQSL:
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

    def load_samples_to_ram(self, indices):
        for i in indices:
            if i not in self._ram:
                rng = np.random.default_rng((self._seed, int(i)))
                self._ram[i] = rng.integers(0, 256, (self.image_size, self.image_size, 3), dtype=np.uint8)

    def unload_samples_from_ram(self, indices):
        for i in indices:
            self._ram.pop(i, None)

    def get(self, indices) -> np.ndarray:
        return np.stack([self._ram[i] for i in indices])
