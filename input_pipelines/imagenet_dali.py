"""ImageNet for ResNet-50 through NVIDIA DALI: JPEG decode on the GPU (nvJPEG), same DataSource.

An optional backend to ``imagenet.py`` (``input_backend`` in ``configs/resnet50.py``): the CPU
cores a host has are often too few to decode 7,000 images/s per accelerator
(``scripts/bench_input.py`` measures that), so DALI's ``mixed`` decoder moves the Huffman
decode and everything after it to the GPU. It reads the very TFRecords TFDS prepared (DALI needs
one small index file per TFRecord, written once by ``write_indices``) and yields what the tf.data
pipeline yields: uint8 NHWC images, int32 labels, an eval ``mask``; normalisation stays on the
device (``preprocessing.normalize``), whichever backend made the pixels.

Eval: the ResNet-50 convention of ``preprocessing.py`` -- shorter side to ``resize_target(size)``
(longer side truncated as ``resize_with_aspectratio`` does, in integers), central crop with the
same floor offsets. DALI has no area (box) filter, so the resize is its antialiased linear
(triangle) filter: the crops differ from tf.data's by a grey level or two on average, never in
geometry (``tests/test_imagenet_dali.py`` measures it). Train: Inception-style random crop
(area 8-100%, aspect 3/4-4/3, 10 attempts) fused into the decode, bilinear resize to ``size``
(no antialias, as ``tf.image.resize``), random flip. The random draws are DALI's own, seeded by
(seed, epoch, host), so an epoch is reproducible but not the same crops as tf.data's.

``nvidia-dali-cuda120`` is the ``dali`` extra; nothing here is imported unless it is installed.
"""
from __future__ import annotations

import os
import struct
from typing import Iterator

import numpy as np

from mlperf_jax.input_pipelines.preprocessing import resize_target
from mlperf_jax.input_pipelines.source import epoch_seed


def dali_importable() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.jax  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(requested: str) -> tuple[str, str]:
    """``(backend, why)`` for ``input_backend`` = "tfdata" | "dali" | "auto".

    "auto" is DALI only when it is importable and JAX runs on a GPU (the CPU backend gains
    nothing over tf.data); "dali" insists and raises ValueError when DALI is missing.
    """
    if requested not in ("tfdata", "dali", "auto"):
        raise ValueError(f"input_backend must be tfdata, dali or auto, got {requested!r}")
    if requested == "tfdata":
        return "tfdata", "requested"
    have = dali_importable()
    if requested == "dali":
        if not have:
            raise ValueError("input_backend='dali' needs nvidia-dali (pip install "
                             "'mlperf-jax[dali]')")
        return "dali", "requested"
    import jax
    if not have:
        return "tfdata", "auto: nvidia.dali is not installed"
    if jax.default_backend() != "gpu":
        return "tfdata", f"auto: JAX runs on {jax.default_backend()}, not a GPU"
    return "dali", "auto: nvidia.dali installed and a GPU present"


# ------------------------------------------------------------------ TFRecord indices
def _index_records(tfrecord: str) -> list[tuple[int, int]]:
    """``(offset, size)`` of each record: 8-byte length, 4-byte CRC, data, 4-byte CRC."""
    out = []
    with open(tfrecord, "rb") as f:
        offset = 0
        while True:
            head = f.read(8)
            if not head:
                return out
            if len(head) < 8:
                raise ValueError(f"{tfrecord}: truncated record at byte {offset}")
            (n,) = struct.unpack("<Q", head)
            size = 8 + 4 + n + 4
            out.append((offset, size))
            offset += size
            f.seek(offset)


def write_indices(tfrecords: list[str], index_dir: str) -> list[str]:
    """DALI's index file (``offset size`` per line) of each TFRecord, written once into
    ``index_dir``; returns their paths in the order of ``tfrecords``."""
    os.makedirs(index_dir, exist_ok=True)
    paths = []
    for rec in tfrecords:
        path = os.path.join(index_dir, os.path.basename(rec) + ".idx")
        if not os.path.exists(path):
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(f"{o} {s}\n" for o, s in _index_records(rec))
            os.replace(tmp, path)
        paths.append(path)
    return paths


def split_files(data_dir: str, split: str) -> list[str]:
    """The TFRecord shards TFDS prepared for ``split`` of imagenet2012, in order."""
    import tensorflow_datasets as tfds
    builder = tfds.builder("imagenet2012", data_dir=data_dir)
    return [os.fspath(p) for p in builder.info.splits[split].filepaths]


# ------------------------------------------------------------------ graphs
def _read(files, indices, *, shard_id, num_shards, shuffle, seed, shuffle_buffer, pad):
    import nvidia.dali.fn as fn
    import nvidia.dali.tfrecord as tfrec
    ex = fn.readers.tfrecord(
        path=files, index_path=indices, name="reader",
        features={"image": tfrec.FixedLenFeature((), tfrec.string, ""),
                  "label": tfrec.FixedLenFeature([1], tfrec.int64, -1)},
        shard_id=shard_id, num_shards=num_shards, random_shuffle=shuffle, seed=seed,
        initial_fill=shuffle_buffer, pad_last_batch=pad)
    return ex["image"], ex["label"]


def eval_graph(jpegs, size: int, device: str):
    """Encoded JPEGs -> the uint8 ``size`` x ``size`` x 3 ResNet-50 eval crops (HWC)."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    shape = fn.peek_image_shape(jpegs, dtype=types.INT32)  # (H, W, C), read from the header
    h, w = shape[0], shape[1]
    short = resize_target(size)
    tall = fn.cast(h > w, dtype=types.INT32)
    # resize_with_aspectratio: int(short * long / shorter), the floor of a positive ratio
    nh = tall * ((short * h) // w) + (1 - tall) * short
    nw = tall * short + (1 - tall) * ((short * w) // h)
    images = fn.decoders.image(jpegs, device="mixed" if device == "gpu" else "cpu",
                               output_type=types.RGB)
    images = fn.resize(images, resize_x=fn.cast(nw, dtype=types.FLOAT),
                       resize_y=fn.cast(nh, dtype=types.FLOAT),
                       interp_type=types.INTERP_LINEAR, antialias=True, dtype=types.UINT8)
    start = fn.stack((nh - size) // 2, (nw - size) // 2)  # the floor offsets of resize_and_crop
    return fn.slice(images, start, [size, size], axes=[0, 1], normalized_anchor=False,
                    normalized_shape=False)


def train_graph(jpegs, size: int, device: str, seed: int):
    """Encoded JPEGs -> uint8 ``size`` x ``size`` x 3 random crops, randomly flipped."""
    import nvidia.dali.fn as fn
    import nvidia.dali.types as types
    images = fn.decoders.image_random_crop(
        jpegs, device="mixed" if device == "gpu" else "cpu", output_type=types.RGB,
        random_area=[0.08, 1.0], random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10, seed=seed)
    images = fn.resize(images, resize_x=size, resize_y=size, interp_type=types.INTERP_LINEAR,
                       antialias=False, dtype=types.UINT8)
    return fn.flip(images, horizontal=fn.random.coin_flip(seed=seed + 1))


def _pipeline(graph, *, batch_size: int, device: str, num_threads: int, seed: int):
    from nvidia.dali import pipeline_def
    device_id = 0 if device == "gpu" else None

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  seed=seed, prefetch_queue_depth=2)
    def pipe():
        return graph()

    return pipe()


def _iterator(pipe, outputs, *, fill: bool):
    from nvidia.dali.plugin.base_iterator import LastBatchPolicy
    from nvidia.dali.plugin.jax import DALIGenericIterator
    return DALIGenericIterator(
        [pipe], outputs, reader_name="reader",
        last_batch_policy=LastBatchPolicy.FILL if fill else LastBatchPolicy.DROP)


def _shard_size(total: int, shard: int, shards: int) -> int:
    # DALI's readers give shard i the examples [i * N // k, (i + 1) * N // k)
    return (shard + 1) * total // shards - shard * total // shards


# ------------------------------------------------------------------ batches
def eval_batches(files: list[str], indices: list[str], *, total: int, batch_size: int,
                 image_size: int = 224, process_index: int = 0, process_count: int = 1,
                 device: str = "gpu", num_threads: int = 4) -> Iterator[dict[str, np.ndarray]]:
    """This host's eval batches, padded as ``imagenet.eval_dataset`` pads them: every host yields
    ``ceil(ceil(total / hosts) / batch)`` batches; padded rows are zeros with ``mask`` False."""
    n_batches = -(-(-(-total // process_count)) // batch_size)
    mine = _shard_size(total, process_index, process_count)

    def graph():
        jpegs, labels = _read(files, indices, shard_id=process_index, num_shards=process_count,
                              shuffle=False, seed=0, shuffle_buffer=1, pad=True)
        return eval_graph(jpegs, image_size, device), labels

    pipe = _pipeline(graph, batch_size=batch_size, device=device, num_threads=num_threads, seed=0)
    it = _iterator(pipe, ["image", "label"], fill=True)
    seen = 0
    for b in range(n_batches):
        rows = np.arange(b * batch_size, (b + 1) * batch_size)
        mask = rows < mine
        if seen < mine:
            out = next(it)
            image = np.asarray(out["image"])
            label = np.asarray(out["label"]).reshape(-1).astype(np.int32)
            image = np.where(mask[:, None, None, None], image, 0).astype(np.uint8)
            label = np.where(mask, label, 0).astype(np.int32)
            seen += batch_size
        else:
            image = np.zeros((batch_size, image_size, image_size, 3), np.uint8)
            label = np.zeros((batch_size,), np.int32)
        yield {"image": image, "label": label, "mask": mask}


def train_batches(files: list[str], indices: list[str], *, batch_size: int, seed: int,
                  epoch: int, steps: int, skip: int = 0, image_size: int = 224,
                  process_index: int = 0, process_count: int = 1, device: str = "gpu",
                  num_threads: int = 4, shuffle_buffer: int | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
    """``steps - skip`` batches of epoch ``epoch`` (the first ``skip`` are drawn and dropped, so
    a resumed epoch continues the same sequence)."""
    dali_seed = epoch_seed(seed, epoch, process_index) % (2 ** 31 - 2)

    def graph():
        jpegs, labels = _read(files, indices, shard_id=process_index, num_shards=process_count,
                              shuffle=True, seed=dali_seed,
                              shuffle_buffer=shuffle_buffer or 16 * batch_size, pad=False)
        return train_graph(jpegs, image_size, device, dali_seed), labels

    pipe = _pipeline(graph, batch_size=batch_size, device=device, num_threads=num_threads,
                     seed=dali_seed)
    it = _iterator(pipe, ["image", "label"], fill=False)
    for step in range(steps):
        out = next(it)
        if step < skip:
            continue
        yield {"image": out["image"] if device == "gpu" else np.asarray(out["image"]),
               "label": np.asarray(out["label"]).reshape(-1).astype(np.int32)}
