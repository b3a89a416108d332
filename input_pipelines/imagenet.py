"""ImageNet (TFDS ``imagenet2012``) for ResNet-50: the MLPerf reference preprocessing in tf.data.

Training: Inception-style random crop (area 8-100%, aspect 3/4-4/3) decoded straight from the
JPEG, resized to 224, random horizontal flip. Evaluation: ``preprocessing.eval_image``, the same
function the inference QSL calls (shorter side to 256 with area resize, central crop 224; the
training reference resizes bilinearly here, ``preprocessing.py`` says why we do not). Images
leave the pipeline as uint8 (a quarter of the bytes of float32 to the device); normalisation runs
on the device (``preprocessing.normalize``). Every random choice is a stateless function of (seed,
epoch, example position), so an epoch is reproducible and a resumed run can skip to where it stopped.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mlperf_jax.input_pipelines.source import DatasetNotFoundError, epoch_seed, tf_data_options
from mlperf_jax.input_pipelines import preprocessing

NAME = "imagenet2012"
AUTOTUNE = tf.data.AUTOTUNE

PREPARE = (
    "ImageNet must be prepared once with TFDS (manual download): put ILSVRC2012_img_train.tar and "
    "ILSVRC2012_img_val.tar in DATA_DIR/downloads/manual/ and run "
    "python -c \"import tensorflow_datasets as tfds; "
    "tfds.builder('imagenet2012', data_dir='DATA_DIR').download_and_prepare()\"")


def check_prepared(data_dir: str | None) -> None:
    """Raise ``DatasetNotFoundError`` saying where we looked and how to prepare the data."""
    if not data_dir:
        raise DatasetNotFoundError(f"{NAME} needs --data_dir. {PREPARE}")
    builder = tfds.builder(NAME, data_dir=data_dir)
    if not builder.is_prepared():
        raise DatasetNotFoundError(
            f"no prepared {NAME} in {builder.data_dir}. {PREPARE.replace('DATA_DIR', data_dir)}")



def _decode_crop(image_bytes: tf.Tensor, seed: tf.Tensor, size: int) -> tf.Tensor:
    shape = tf.image.extract_jpeg_shape(image_bytes)
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=seed,
        min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    y, x, _ = tf.unstack(begin)
    h, w, _ = tf.unstack(crop_size)
    image = tf.image.decode_and_crop_jpeg(image_bytes, tf.stack([y, x, h, w]), channels=3)
    return tf.image.resize(image, [size, size], method="bilinear")


def preprocess_train(image_bytes: tf.Tensor, seed: tf.Tensor, size: int = 224) -> tf.Tensor:
    image = _decode_crop(image_bytes, seed, size)
    image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def preprocess_eval(image_bytes: tf.Tensor, size: int = 224, model: str = "resnet50") -> tf.Tensor:
    """The uint8 eval crop, exactly as the inference QSL makes it for ``model``."""
    return preprocessing.eval_image(image_bytes, model, size)


def host_split(split: str, process_index: int, process_count: int, drop_remainder: bool) -> str:
    """This host's disjoint share of ``split`` (TFDS sub-split syntax)."""
    return tfds.even_splits(split, n=process_count, drop_remainder=drop_remainder)[process_index]


def train_dataset(data_dir: str | None, *, batch_size: int, seed: int, epoch: int,
                  image_size: int = 224, process_index: int = 0, process_count: int = 1,
                  shuffle_buffer: int | None = None) -> tf.data.Dataset:
    """This host's batches of one training epoch (``batch_size`` is the per-host batch)."""
    builder = tfds.builder(NAME, data_dir=data_dir)
    split = host_split("train", process_index, process_count, drop_remainder=True)
    shuffle_seed = epoch_seed(seed, epoch, process_index)
    ds = builder.as_dataset(
        split=split, shuffle_files=True, decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, skip_prefetch=True))
    ds = ds.shuffle(shuffle_buffer or 16 * batch_size, seed=shuffle_seed,
                    reshuffle_each_iteration=False)
    ds = ds.enumerate()

    def prep(i, ex):
        s = tf.stack([tf.constant(shuffle_seed % (2 ** 31), tf.int64), i])
        return {"image": preprocess_train(ex["image"], s, image_size),
                "label": tf.cast(ex["label"], tf.int32)}

    ds = ds.map(prep, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.with_options(tf_data_options()).prefetch(AUTOTUNE)


def eval_dataset(data_dir: str | None, *, batch_size: int, image_size: int = 224,
                 process_index: int = 0, process_count: int = 1,
                 num_examples: int | None = None, model: str = "resnet50") -> tf.data.Dataset:
    """This host's share of the validation set, padded to whole batches (``mask`` marks real rows).

    Every host yields the same number of batches (multi-host collectives need that), so shares
    are padded to the largest one. ``model`` names the preprocessing convention.
    """
    preprocessing.convention(model)  # fail before building the pipeline
    builder = tfds.builder(NAME, data_dir=data_dir)
    total = builder.info.splits["validation"].num_examples if num_examples is None else num_examples
    split = host_split("validation", process_index, process_count, drop_remainder=False)
    per_host = -(-total // process_count)
    n_batches = -(-per_host // batch_size)
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda ex: {"image": preprocess_eval(ex["image"], image_size, model),
                            "label": tf.cast(ex["label"], tf.int32),
                            "mask": tf.constant(True)}, num_parallel_calls=AUTOTUNE)
    pad = tf.data.Dataset.from_tensors({
        "image": tf.zeros([image_size, image_size, 3], tf.uint8),
        "label": tf.constant(0, tf.int32), "mask": tf.constant(False)}).repeat()
    ds = ds.concatenate(pad).take(n_batches * batch_size).batch(batch_size)
    return ds.with_options(tf_data_options()).prefetch(AUTOTUNE)


def eval_batches(data_dir: str | None, **kw) -> Iterator[dict[str, np.ndarray]]:
    return iter(eval_dataset(data_dir, **kw).as_numpy_iterator())
