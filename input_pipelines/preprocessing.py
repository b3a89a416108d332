"""Image preprocessing: one convention per model family, shared by training and inference.

Training's eval pipeline (``imagenet.py``), the inference QSL (``inference/qsl.py``), the SUT
(``inference/sut.py``) and the training step all call these functions, so a model is always
evaluated on the pixels it was trained for. Host side (TF, in tf.data or eagerly): decode, resize
the shorter side to ``int(size / 0.875)``, central crop ``size`` x ``size``: uint8 HWC, the bytes
that travel to the device. Device side (jnp): ``normalize`` turns uint8 into the model's floats.

| model | JPEG decode | resize (shorter side to 256 for 224) | uint8 -> float |
|---|---|---|---|
| resnet50 | libjpeg ISLOW | area (cv2 ``INTER_AREA``) | ``x - [123.68, 116.78, 103.94]``, no std |
| mobilenet | libjpeg ISLOW | bilinear, no antialias (cv2 ``INTER_LINEAR``) | ``x / 127.5 - 1`` in [-1, 1] |

Sources (the MLPerf references, not torchvision):
- mlcommons/inference ``vision/classification_and_detection/python/dataset.py``:
  ``resize_with_aspectratio`` (scale 87.5, sizes truncated with ``int``), ``center_crop``,
  ``pre_process_vgg`` (ResNet-50: ``INTER_AREA``, subtract the means above) and
  ``pre_process_mobilenet`` (``INTER_LINEAR``, ``/255 - 0.5, *2``). The v0.5 accuracy targets
  (76.456%, 71.676%) were measured with exactly this.
- mlcommons/training ``image_classification/tensorflow/official/resnet/imagenet_preprocessing.py``
  (the v0.6 reference; ``tensorflow2/`` since v1.0 is the same): ``_CHANNEL_MEANS`` = the same
  three means, mean subtraction only. Training and inference references agree on ResNet-50's
  normalisation, so our own weights follow it. They differ on the eval resize (the training
  reference uses TF1 bilinear); we use area in both, so that the accuracy seen in training is
  the accuracy the inference harness measures for the same weights.
- cv2.imread decodes JPEG with libjpeg's accurate integer DCT (ISLOW); TF's default is the fast
  one, up to 4 levels off on most pixels, hence ``dct_method="INTEGER_ACCURATE"``.

Detection (SSD) resizes the whole image to ``size`` x ``size``, ignoring the aspect ratio (no
crop): ``detection_image`` on the host, the same ``normalize`` on the device.

| model | resize to S x S | uint8 -> float |
|---|---|---|
| ssd (training, SSD300-ResNet34) | bilinear, antialiased | ``/255``, torchvision mean/std |
| ssd-resnet34 (inference, 1200) | bilinear, antialiased | as ssd |
| ssd-mobilenet (inference, 300) | bilinear, no antialias | ``(x - 127.5) / 127.5`` |

Sources: the training reference (mlcommons/training ``single_stage_detector/ssd/utils.py``
``SSDTransformer``) resizes PIL images with torchvision's bilinear ``Resize`` (PIL antialiases
when it shrinks) and normalises with mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225) after
``ToTensor``'s /255. The inference reference (``python/dataset.py``) has
``pre_process_coco_resnet34`` (``cv2.resize``, INTER_LINEAR, to 1200, then the same /255 and
mean/std) and ``pre_process_coco_pt_mobilenet`` (``(x - 127.5) / 127.5``; the TF graph fed by
``pre_process_coco_mobilenet`` computes ``2x/255 - 1`` inside the model, the same), the latter on
images resized beforehand to 300 with cv2 INTER_LINEAR (``tools/upscale_coco``). COCO images
are at most 640 pixels, so the 1200 resize only enlarges, where antialiasing changes nothing
and TF's bilinear is cv2's; the 300 resize shrinks: antialiased for our training (as PIL), not
for ssd-mobilenet (as cv2). The mean and std are stored in uint8 units (x 255) so that
``normalize`` stays one subtraction and one division.

Our TF resize matches cv2's within one grey level (tested in ``tests/test_preprocessing.py``).
TensorFlow is imported inside the host functions only, so the SUT and the training step can use
``normalize`` without loading it.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

# resize_with_aspectratio's ``scale``: the central crop keeps 87.5% of the shorter side.
CROP_PERCENT = 87.5


@dataclasses.dataclass(frozen=True)
class Convention:
    """How one model family's images are resized on the host and normalised on the device."""

    resize_method: str  # tf.image.resize method
    mean: tuple[float, float, float]  # RGB, subtracted from uint8 values
    std: tuple[float, float, float]  # RGB, divides after the subtraction
    antialias: bool = False  # tf.image.resize antialias (matters only when shrinking)
    task: str = "classification"  # "classification": resize + central crop; "detection": resize


# torchvision's ImageNet statistics, in uint8 units (x 255)
_TORCH_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_TORCH_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


CONVENTIONS: dict[str, Convention] = {
    "resnet50": Convention("area", (123.68, 116.78, 103.94), (1.0, 1.0, 1.0)),
    "mobilenet": Convention("bilinear", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    # detection: whole-image resize to S x S (see the module docstring)
    "ssd": Convention("bilinear", _TORCH_MEAN, _TORCH_STD, antialias=True, task="detection"),
    "ssd-resnet34": Convention("bilinear", _TORCH_MEAN, _TORCH_STD, antialias=True,
                               task="detection"),
    "ssd-mobilenet": Convention("bilinear", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5),
                                task="detection"),
    # Mask R-CNN with torchvision's ResNet-50 weights (the reference's Caffe2 weights take BGR
    # minus means instead); its resize (short side 800) is in input_pipelines/maskrcnn_input.py
    "maskrcnn": Convention("bilinear", _TORCH_MEAN, _TORCH_STD, task="detection"),
}
MODELS = tuple(CONVENTIONS)


def convention(model: str) -> Convention:
    """The convention of ``model``; ValueError naming the known ones otherwise."""
    try:
        return CONVENTIONS[model]
    except KeyError:
        raise ValueError(f"no image preprocessing for {model!r}; expected one of "
                         f"{', '.join(MODELS)}") from None


def _convention_for(model: str, task: str) -> Convention:
    c = convention(model)
    if c.task != task:
        names = ", ".join(m for m, k in CONVENTIONS.items() if k.task == task)
        raise ValueError(f"{model!r} is a {c.task} convention, not {task}; expected one of {names}")
    return c


def resize_target(size: int) -> int:
    """The shorter side before the central crop: 256 for 224, as the reference computes it."""
    return int(100.0 * size / CROP_PERCENT)


# ---------------------------------------------------------------- device side (jnp)
def normalize(images: jax.Array | np.ndarray, model: str) -> jax.Array:
    """uint8 NHWC (or HWC) -> float32 the way ``model`` was trained; jit-friendly, runs on device."""
    c = convention(model)
    mean = np.asarray(c.mean, np.float32)
    std = np.asarray(c.std, np.float32)
    x = jnp.asarray(images).astype(jnp.float32) - mean
    return x if np.all(std == 1.0) else x / std


# ---------------------------------------------------------------- host side (TF)
def decode(image_bytes: "tf.Tensor | bytes") -> "tf.Tensor":
    """Encoded image -> uint8 HWC RGB, JPEG with the accurate DCT as cv2.imread does; graph-safe."""
    import tensorflow as tf

    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(image_bytes, channels=3, expand_animations=False))


def resize_and_crop(image: "tf.Tensor | np.ndarray", model: str, size: int = 224) -> "tf.Tensor":
    """uint8 HWC of any size -> uint8 ``size`` x ``size`` x 3: aspect-preserving resize, central crop.

    The resized shape is the reference's ``resize_with_aspectratio``: shorter side
    ``resize_target(size)``, longer side ``int(short * long / shorter)`` (float64, as Python
    computes it). Values are rounded half up, as cv2 does for uint8.
    """
    import tensorflow as tf

    method = _convention_for(model, "classification").resize_method
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short = resize_target(size)
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    tall = h > w
    nh = tf.where(tall, tf.cast(tf.floor(short * hf / wf), tf.int32), short)
    nw = tf.where(tall, short, tf.cast(tf.floor(short * wf / hf), tf.int32))
    resized = tf.image.resize(image, tf.stack([nh, nw]), method=method, antialias=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    crop = resized[top:top + size, left:left + size]
    crop = tf.ensure_shape(crop, [size, size, 3])
    return tf.cast(tf.clip_by_value(tf.floor(crop + 0.5), 0, 255), tf.uint8)


def eval_image(image_bytes: "tf.Tensor | bytes", model: str, size: int = 224) -> "tf.Tensor":
    """Encoded image -> the uint8 ``size`` x ``size`` x 3 crop ``model`` is evaluated on."""
    return resize_and_crop(decode(image_bytes), model, size)


def resize_detection(image: "tf.Tensor | np.ndarray", model: str, size: int) -> "tf.Tensor":
    """uint8 (or float) HWC of any size -> uint8 ``size`` x ``size`` x 3, aspect ratio ignored.

    The detection models' resize (SSD: training, eval and inference alike); values are rounded
    half up and clipped. Graph-safe (tf.data).
    """
    import tensorflow as tf

    c = _convention_for(model, "detection")
    image = tf.convert_to_tensor(image)
    resized = tf.image.resize(image, [size, size], method=c.resize_method, antialias=c.antialias)
    resized = tf.ensure_shape(resized, [size, size, 3])
    return tf.cast(tf.clip_by_value(tf.floor(resized + 0.5), 0, 255), tf.uint8)


def detection_image(image_bytes: "tf.Tensor | bytes", model: str, size: int) -> "tf.Tensor":
    """Encoded image -> the uint8 ``size`` x ``size`` x 3 input of detection model ``model``."""
    return resize_detection(decode(image_bytes), model, size)
