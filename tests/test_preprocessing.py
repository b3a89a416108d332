"""ImageNet eval preprocessing against the MLPerf inference reference (cv2), a box-filter oracle,
and across its users (training's eval pipeline, the QSL, the SUT).

The reference is mlcommons/inference ``vision/classification_and_detection/python/dataset.py``:
``pre_process_vgg`` (ResNet-50) and ``pre_process_mobilenet``; its resize and crop are restated
below in cv2 and numpy, from that file, as the oracle.
"""
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from mlperf_jax.input_pipelines import imagenet, preprocessing as pp
from mlperf_jax.inference import ClassifierSUT, ImageNetQSL
from mlperf_jax.loadgen import QuerySample

# Tolerances against cv2: one grey level at most (cv2 rounds in fixed point, TF in float32), and
# on average (over pixels) at most this many levels.
MEAN_ABS_TOL = {"resnet50": 0.1, "mobilenet": 0.2}


def _image(h: int, w: int, seed: int, gray: bool = False) -> np.ndarray:
    """A photo-like uint8 image: smooth colour waves plus noise (edges and texture to resample)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([128 + 100 * np.sin(x / (7.0 + 5 * c) + c) * np.cos(y / (11.0 + 3 * c) - c)
                    for c in range(3)], -1) + rng.normal(0, 20, (h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[..., 0] if gray else img


# --------------------------------------------------------------------------- the reference, in cv2
def _reference_crop(cv2, data: bytes, model: str, size: int) -> np.ndarray:
    """dataset.py: cv2.imread, BGR->RGB, resize_with_aspectratio(scale=87.5), center_crop."""
    img = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    inter = cv2.INTER_AREA if model == "resnet50" else cv2.INTER_LINEAR
    height, width, _ = img.shape
    new = int(100. * size / 87.5)
    if height > width:
        w, h = new, int(new * height / width)
    else:
        h, w = new, int(new * width / height)
    img = cv2.resize(img, (w, h), interpolation=inter)
    left, top = int((w - size) / 2), int((h - size) / 2)
    return img[top:top + size, left:left + size]


@pytest.mark.parametrize("model", ["resnet50", "mobilenet"])
@pytest.mark.parametrize("shape,fmt,gray", [
    ((375, 500), ".jpg", False),  # the typical ImageNet landscape, downscaled
    ((500, 333), ".jpg", False),  # portrait
    ((300, 300), ".png", False),  # square, lossless
    ((200, 150), ".png", False),  # smaller than 256: upscaled
    ((257, 999), ".jpg", True),  # grayscale, extreme aspect ratio
])
def test_eval_image_matches_the_mlperf_reference(model, shape, fmt, gray):
    import cv2  # the test extra: the MLPerf reference resizes with OpenCV
    img = _image(*shape, seed=shape[0], gray=gray)
    enc = img if gray else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(fmt, enc, [cv2.IMWRITE_JPEG_QUALITY, 90] if fmt == ".jpg" else [])
    assert ok
    want = _reference_crop(cv2, buf.tobytes(), model, 224).astype(int)
    got = pp.eval_image(buf.tobytes(), model, 224).numpy()
    assert got.shape == (224, 224, 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want)
    assert diff.max() <= 1 and diff.mean() <= MEAN_ABS_TOL[model], (diff.max(), diff.mean())


@pytest.mark.parametrize("model", ["resnet50", "mobilenet"])
def test_halving_is_a_two_by_two_box_mean(model):
    """At exactly half size, area averaging and half-pixel bilinear both take the mean of each 2x2
    block: a numpy oracle that needs no image library."""
    img = _image(256, 384, seed=3)  # size 112 -> shorter side int(112 / 0.875) = 128: scale 1/2
    box = img.astype(np.float64).reshape(128, 2, 192, 2, 3).mean(axis=(1, 3))
    want = np.floor(box + 0.5)[8:8 + 112, 40:40 + 112]  # central crop offsets (128-112)//2, (192-112)//2
    got = pp.resize_and_crop(img, model, 112).numpy()
    np.testing.assert_array_equal(got, want.astype(np.uint8))


def test_resize_target_is_the_reference_87_5_percent():
    assert pp.resize_target(224) == 256 and pp.resize_target(299) == 341 and pp.resize_target(32) == 36


# --------------------------------------------------------------------------- normalisation
def test_normalize_gives_the_reference_values_for_known_pixels():
    px = np.array([[[0, 0, 0], [255, 255, 255], [124, 117, 104], [128, 128, 128]]], np.uint8)
    f = px.astype(np.float32)
    vgg = f - np.array([123.68, 116.78, 103.94], np.float32)  # pre_process_vgg
    mob = (f / 255.0 - 0.5) * 2  # pre_process_mobilenet
    np.testing.assert_allclose(pp.normalize(px, "resnet50"), vgg, rtol=0, atol=1e-5)
    np.testing.assert_allclose(pp.normalize(px, "mobilenet"), mob, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pp.normalize(px, "mobilenet")[0, :2], [[-1] * 3, [1] * 3], atol=1e-7)
    np.testing.assert_allclose(pp.normalize(px, "resnet50")[0, 2], [0.32, 0.22, 0.06], atol=1e-4)
    out = jax.jit(lambda x: pp.normalize(x, "mobilenet"))(jnp.asarray(px))
    assert out.dtype == jnp.float32 and out.shape == px.shape
    with pytest.raises(ValueError, match="resnet50, mobilenet"):
        pp.normalize(px, "vgg")


# --------------------------------------------------------------------------- one path for all users
def test_training_eval_pipeline_and_qsl_make_the_same_crop(tmp_path):
    images = [_image(375, 500, 1), _image(333, 500, 2), _image(240, 180, 3)]
    lines = []
    for i, img in enumerate(images):
        (tmp_path / f"img{i}.JPEG").write_bytes(tf.io.encode_jpeg(img, quality=90).numpy())
        lines.append(f"img{i}.JPEG {i}\n")
    (tmp_path / "val_map.txt").write_text("".join(lines))
    qsl = ImageNetQSL(str(tmp_path), preprocessing="resnet50", image_size=64)
    qsl.load_samples_to_ram(range(3))
    from_qsl = qsl.get(range(3))
    files = [str(tmp_path / f"img{i}.JPEG") for i in range(3)]
    ds = tf.data.Dataset.from_tensor_slices(files).map(tf.io.read_file).map(
        lambda b: imagenet.preprocess_eval(b, 64))  # in a tf.data graph, as eval_dataset runs it
    from_training = np.stack(list(ds.as_numpy_iterator()))
    assert from_qsl.shape == (3, 64, 64, 3) and from_qsl.dtype == np.uint8
    np.testing.assert_array_equal(from_training, from_qsl)
    with pytest.raises(ValueError, match="expected one of"):
        ImageNetQSL(str(tmp_path), preprocessing="inception")


class _ConstantQSL:
    """Sample i is an image whose every pixel is ``values[i]``."""

    def __init__(self, values, size):
        self.values, self.size = values, size

    def get(self, indices):
        return np.stack([np.full((self.size, self.size, 3), self.values[i], np.uint8) for i in indices])


def _sut_normalised_means(preprocessing: str, values) -> list[float]:
    """Run the SUT with a model whose top-1 class encodes the mean of its (normalised) input."""
    grid = jnp.arange(-20000, 20001, dtype=jnp.float32) / 100  # classes = values -200.00 .. 200.00

    def apply_fn(v, x, train=False):
        return -jnp.abs(grid[None] - jnp.mean(x, axis=(1, 2, 3))[:, None])

    answers, done = {}, threading.Event()

    def complete(responses):
        for r in responses:
            answers[r.id] = int(np.frombuffer(r.data, np.int32)[0])
        if len(answers) == len(values):
            done.set()

    qsl = _ConstantQSL(values, 8)
    with ClassifierSUT(apply_fn, {}, qsl, preprocessing=preprocessing, image_size=8, batch_sizes=(4,),
                       complete=complete) as sut:
        sut.issue_queries([QuerySample(100 + i, i) for i in range(len(values))])
        assert done.wait(60), sut.error
    return [float(grid[answers[100 + i]]) for i in range(len(values))]


def test_sut_normalises_for_the_named_model():
    got = _sut_normalised_means("mobilenet", [0, 255, 51])
    np.testing.assert_allclose(got, [-1.0, 1.0, (51 / 255 - 0.5) * 2], atol=0.006)
    got = _sut_normalised_means("resnet50", [0, 255])
    mean = np.mean([123.68, 116.78, 103.94])
    np.testing.assert_allclose(got, [-mean, 255 - mean], atol=0.006)
    with pytest.raises(ValueError, match="expected one of"):
        ClassifierSUT(lambda v, x, train=False: x, {}, None, preprocessing="imagenet")
