"""INT8 post-training quantization (inference/quantize.py): the calibration set, and the int8 model
against a brute-force numpy simulation of int8 rounding (tiny MobileNet-v1 at 64x64, CPU).

The oracle (``NumpyMobileNet``) is written here from the method's description, not from qwix: a
float64 MobileNet-v1 forward pass (im2col convolutions, TF "SAME" padding, BatchNorm, ReLU6), and
the same pass with every convolution and the classifier computed on integers: weights rounded per
output channel to ``round(w / s)``, ``s = max|w| / 127.5``; inputs rounded per tensor with the
static scale ``max|input| / 127.5``, the maximum over the calibration images in the FP32 pass;
round half to even, saturate at [-128, 127]; the integer product times both scales.

The stated error (``REL_L2_BOUND``): on held-out images the simulated int8 logits of this tiny
random-weight MobileNet differ from fp32 by a relative L2 error of 4.1-6.8% (weights of seeds 0-5);
the bound is 10%.  The same simulation with int4 (bound 7.5) gives 35-53%: the bound tells 8 bits
from 4.  Top-1 agreement with fp32 is 97% in the simulation for the seed used here (random logits
are close; 80-100% over seeds 0-5); the test asks for 90%.
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from mlperf_jax.inference import SyntheticImageQSL, quantize
from mlperf_jax.input_pipelines.preprocessing import normalize
from mlperf_jax.models import mobilenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, WIDTH, CLASSES = 64, 0.25, 10
REL_L2_BOUND = 0.10  # int8 vs fp32 logits (see the module docstring)
TOP1_AGREEMENT = 0.9  # int8 vs fp32 top-1 on the held-out images


# ----------------------------------------------------------------------------- the numpy oracle
def _same_pad(x, k, s):
    """TF "SAME": output ceil(n / s), the odd pixel of padding at the end."""
    n = x.shape[1]
    total = max((-(-n // s) - 1) * s + k - n, 0)
    lo = total // 2
    return np.pad(x, ((0, 0), (lo, total - lo), (lo, total - lo), (0, 0)))


def _conv(x, w, s, depthwise):
    k = w.shape[0]
    p = sliding_window_view(_same_pad(x, k, s), (k, k), axis=(1, 2))[:, ::s, ::s]  # b h w c kh kw
    if depthwise:
        return np.einsum("bhwcij,ijc->bhwc", p, w[:, :, 0, :])
    return np.einsum("bhwcij,ijco->bhwo", p, w)


def _round(v, bound):
    """Round half to even, saturate to the signed integer range of ``bound`` (127.5 -> int8)."""
    q = np.floor(bound)
    return np.clip(np.round(v), -q - 1, q)


def _rcp(v):
    """1 / v in float32."""
    return np.float32(1) / np.asarray(v, np.float32)


class NumpyMobileNet:
    """MobileNet-v1 (models/mobilenet.py's layer names) in float64 numpy: fp32, or every conv and the
    classifier on integers with the scales of a calibration (``calibrate``) at ``bound``."""

    def __init__(self, variables, bound=127.5):
        self.p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
        self.bs = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["batch_stats"])
        self.bound = bound
        self.absmax: dict[str, float] = {}
        self._record = False

    def calibrate(self, x):
        """The FP32 pass over calibration images: each layer's max |input|, over all of them."""
        self._record = True
        try:
            self(x, "fp32")
        finally:
            self._record = False

    def scale(self, name):
        return float(np.float32(self.absmax[name]) * _rcp(self.bound))

    def _layer(self, name, x, op, w, mode):
        if mode == "fp32":
            if self._record:
                self.absmax[name] = max(self.absmax.get(name, 0.0), float(np.abs(x).max()))
            return op(x, w)
        sx = self.scale(name)
        # Scales and divisions in float32 as XLA:CPU computes a / b, a * (1 / b): values on the
        # halves (MobileNet's first input (u - 127.5) / 127.5 with absmax 1 gives x / s = u - 127.5;
        # the weight -max|w| gives -127.5) round by their last bit.
        w32 = w.astype(np.float32)
        sw = np.abs(w32).reshape(-1, w.shape[-1]).max(axis=0) * _rcp(self.bound)  # per output channel
        xq = _round(x.astype(np.float32) * _rcp(sx), self.bound)
        wq = _round(w32 * _rcp(sw), self.bound)
        return op(xq.astype(np.float64), wq.astype(np.float64)) * sx * sw.astype(np.float64)

    def _bn(self, name, x, eps=1e-3):
        p, s = self.p[name], self.bs[name]
        return (x - s["mean"]) / np.sqrt(s["var"] + eps) * p["scale"] + p["bias"]

    def __call__(self, x, mode="fp32"):
        """``mode``: fp32, or int (the calibrated scales)."""
        relu6 = lambda v: np.clip(v, 0.0, 6.0)  # noqa: E731
        x = np.asarray(x, np.float64)
        x = self._layer("conv_init", x, lambda a, w: _conv(a, w, 2, False), self.p["conv_init"]["kernel"], mode)
        x = relu6(self._bn("bn_init", x))
        for i, (_, s) in enumerate(mobilenet.BLOCKS):
            n = f"block{i}_depthwise"
            x = self._layer(n, x, lambda a, w, s=s: _conv(a, w, s, True), self.p[n]["kernel"], mode)
            x = relu6(self._bn(f"{n}_bn", x))
            n = f"block{i}_pointwise"
            x = self._layer(n, x, lambda a, w: _conv(a, w, 1, False), self.p[n]["kernel"], mode)
            x = relu6(self._bn(f"{n}_bn", x))
        x = x.mean(axis=(1, 2))
        c = self.p["classifier"]
        return self._layer("classifier", x, lambda a, w: a @ w, c["kernel"], mode) + c["bias"]


def _inputs(images):
    """The float32 network input both the model and the oracle see (MobileNet's [-1, 1])."""
    return np.asarray(normalize(images, "mobilenet"))


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny():
    """The tiny MobileNet (random weights, seed 0) and 96 random uint8 images (0..31 calibrate)."""
    model = mobilenet.MobileNetV1(num_classes=CLASSES, width_multiplier=WIDTH)
    v = jax.jit(lambda k: model.init(k, jnp.zeros((1, SIZE, SIZE, 3)), train=False))(jax.random.key(0))
    qsl = SyntheticImageQSL(image_size=SIZE, total=96, num_classes=CLASSES, seed=3)
    return model, v, np.stack([qsl.load_sample(i) for i in range(96)])


@pytest.fixture(scope="module")
def quantized(tiny):
    """Calibrated on images 0..31 in two batches; the int8 model, and the oracle calibrated alike."""
    model, variables, images = tiny
    absmax = quantize.collect_absmax(model, variables, [images[:16], images[16:32]], preprocessing="mobilenet")
    ptq, qvars = quantize.quantize_variables(model, variables, absmax, SIZE)
    oracle = NumpyMobileNet(variables)
    oracle.calibrate(_inputs(images[:32]))
    return ptq, qvars, oracle


class SmallNet(nn.Module):
    """Two layers: enough for the calibration-set tests, cheap to compile."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2))(x))
        return nn.Dense(CLASSES)(jnp.mean(x, axis=(1, 2)))


@pytest.fixture(scope="module")
def small():
    model = SmallNet()
    return model, jax.jit(lambda k: model.init(k, jnp.zeros((1, 32, 32, 3))))(jax.random.key(1))


def _scales(qvars):
    """{layer: its activation scale} of the int8 model's parameters."""
    out = {}
    for name, layer in qvars["params"].items():
        for key, leaf in layer.items():
            if key.endswith("_lhs_scale"):
                out[name] = float(np.asarray(leaf.array).reshape(()))
    return out


# ----------------------------------------------------------------------------- tests
def test_shipped_calibration_lists():
    im, coco = quantize.calibration_list("imagenet"), quantize.calibration_list("coco")
    assert len(im) == len(set(im)) == 500 and len(coco) == len(set(coco)) == 500
    assert im[0] == "ILSVRC2012_val_00027145.JPEG" and all(n.startswith("ILSVRC2012_val_") for n in im)
    assert coco[0] == "000000391895.jpg" and all(len(n) == 16 and n.endswith(".jpg") for n in coco)


class RecordingQSL:
    """A QSL with file names (ImageNet's ``files`` or COCO's ``images``) that records every index read."""

    def __init__(self, names, coco=False):
        self.total_sample_count = self.performance_sample_count = len(names)
        if coco:
            self.images = [{"file_name": n, "id": i} for i, n in enumerate(names)]
        else:
            self.files = [f"val/{n}" for n in names]
        self.labels = np.zeros(len(names), np.int32)
        self.read: list[int] = []

    def load_sample(self, i):
        self.read.append(i)
        return np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)

    def load_samples_to_ram(self, indices):
        self.read.extend(indices)

    def get(self, indices):
        self.read.extend(indices)
        return np.stack([self.load_sample(i) for i in indices])


@pytest.mark.parametrize("dataset", ["imagenet", "coco"])
def test_calibration_reads_only_the_calibration_list(small, dataset):
    model, variables = small
    cal = quantize.calibration_list(dataset)
    other = [f"ILSVRC2012_val_{i:08d}.JPEG" if dataset == "imagenet" else f"{i:012d}.jpg" for i in range(1, 60)]
    other = [n for n in other if n not in set(cal)][:34]
    names = other[:10] + [cal[7], cal[3]] + other[10:20] + [cal[499], cal[0]] + other[20:] + [cal[250], cal[100]]
    qsl = RecordingQSL(names, coco=dataset == "coco")
    bench = "mobilenet" if dataset == "imagenet" else "ssd-mobilenet"
    _, qvars, desc = quantize.int8_model(model, variables, qsl, benchmark=bench, image_size=32)
    # each calibration image once, in the list's order: cal[0], cal[3], cal[7], cal[100], cal[250], cal[499]
    assert qsl.read == [names.index(cal[j]) for j in (0, 3, 7, 100, 250, 499)]
    assert "6 of the 500 images" in desc and "subset" in desc
    # the statistic is the maximum over exactly those images (hand-computed on the first layer's input)
    x = np.stack([qsl.load_sample(names.index(cal[j])) for j in (0, 3, 7, 100, 250, 499)])
    want = np.abs(np.asarray(normalize(x, bench))).max() * _rcp(127.5)
    assert _scales(qvars)["Conv_0"] == pytest.approx(float(want), rel=1e-6)
    with pytest.raises(ValueError, match="none of the 500 images"):
        quantize.calibration_indices(RecordingQSL(other, coco=dataset == "coco"), dataset)


def test_synthetic_qsl_stand_in_is_stated(small):
    model, variables = small
    read = []

    class Spy(SyntheticImageQSL):
        def load_sample(self, i):
            read.append(i)
            return super().load_sample(i)

    assert quantize.calibration_indices(SyntheticImageQSL(image_size=32, total=900), "imagenet")[0] == list(range(500))
    qsl = Spy(image_size=32, total=60, num_classes=CLASSES)
    _, _, desc = quantize.int8_model(model, variables, qsl, benchmark="mobilenet", image_size=32)
    assert read == list(range(60)) and "SYNTHETIC stand-in: QSL indices 0..59" in desc


def test_int8_weights_are_int8_and_layers_compute_on_int8(quantized):
    ptq, qvars, _ = quantized
    k = qvars["params"]["block3_pointwise"]["kernel"]
    assert k.array.qvalue.dtype == jnp.int8 and k.array.scale.shape == (1, 1, 1, k.shape[-1])
    # 28 quantized layers (stem, 13 depthwise, 13 pointwise, classifier): one int8 kernel each
    assert quantize.int8_leaves(qvars)[0] == 28 and len(_scales(qvars)) == 28
    hlo = jax.jit(lambda v, x: ptq.apply(v, x, train=False)).lower(qvars, jnp.zeros((2, SIZE, SIZE, 3))).as_text()
    convs = [ln for ln in hlo.splitlines() if "stablehlo.convolution" in ln]
    assert len(convs) == 27 and all(ln.count("xi8>") == 2 and ln.rstrip().endswith("xi32>") for ln in convs)
    dots = [ln for ln in hlo.splitlines() if "stablehlo.dot_general" in ln]
    assert len(dots) == 1 and dots[0].count("xi8>") == 2 and dots[0].rstrip().endswith("xi32>")


def test_int8_model_is_the_simulated_integer_arithmetic_and_stays_near_fp32(tiny, quantized):
    model, variables, images = tiny
    ptq, qvars, oracle = quantized
    scales = _scales(qvars)
    assert set(scales) == set(oracle.absmax)
    for name, s in scales.items():  # max over the calibration images of the FP32 input, / 127.5
        assert s == pytest.approx(oracle.scale(name), rel=2e-5), name
    held_out = _inputs(images[32:96])  # never seen by calibration
    int8, st = jax.jit(lambda v, x: ptq.apply(v, x, train=False, capture_intermediates=True,
                                              mutable=["intermediates"]))(qvars, held_out)
    out = {k: np.asarray(v["__call__"][0]) for k, v in st["intermediates"].items() if k != "__call__"}
    relu6 = lambda v: np.clip(v, 0.0, 6.0)  # noqa: E731
    # layer by layer, from the int8 model's own input to the layer: the oracle's integer arithmetic
    # (a rare value within an ulp of a rounding boundary may round the other way: 1e-3)
    layers = [("conv_init", held_out, lambda a, w: _conv(a, w, 2, False))]
    prev = "bn_init"
    for i, (_, s) in enumerate(mobilenet.BLOCKS):
        layers.append((f"block{i}_depthwise", relu6(out[prev]), lambda a, w, s=s: _conv(a, w, s, True)))
        layers.append((f"block{i}_pointwise", relu6(out[f"block{i}_depthwise_bn"]), lambda a, w: _conv(a, w, 1, False)))
        prev = f"block{i}_pointwise_bn"
    layers.append(("classifier", relu6(out[prev]).mean(axis=(1, 2)), lambda a, w: a @ w))
    for name, x, op in layers:
        want = oracle._layer(name, np.asarray(x, np.float64), op, oracle.p[name]["kernel"], "int")
        if name == "classifier":
            want = want + oracle.p[name]["bias"]
        assert _rel(out[name], want) < 1e-3, name
    # end to end: such a flip grows through 28 layers (measured up to 3e-3), the fp32 gap is ~5%
    fp32 = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, held_out))
    sim32, sim8 = oracle(held_out, "fp32"), oracle(held_out, "int")
    assert _rel(fp32, sim32) < 1e-5  # the oracle's float network is the model
    assert _rel(int8, sim8) < 1e-2 and np.mean(int8.argmax(-1) == sim8.argmax(-1)) >= 0.95
    err = _rel(int8, fp32)
    assert 0.01 < err < REL_L2_BOUND  # rounding is there, and small
    assert np.mean(int8.argmax(-1) == fp32.argmax(-1)) >= TOP1_AGREEMENT


def test_error_bound_separates_int8_from_int4(tiny):
    """The bound is not one any quantization meets: the oracle's int4 network breaks it."""
    _, variables, images = tiny
    oracle = NumpyMobileNet(variables, bound=7.5)
    oracle.calibrate(_inputs(images[:32]))
    x = _inputs(images[32:96])
    assert _rel(oracle(x, "int"), oracle(x, "fp32")) > 2 * REL_L2_BOUND


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mlperf_jax.infer", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_cli_int8_accuracy_prints_both_precisions(tmp_path):
    p = _cli("--benchmark=mobilenet", "--precision=int8", "--mode=accuracy", "--image_size=32",
             "--width_multiplier=0.25", "--batch_sizes=16", "--total_sample_count=48", f"--outdir={tmp_path}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "SYNTHETIC stand-in: QSL indices 0..47" in p.stdout
    line = next(x for x in p.stdout.splitlines() if "beside fp32" in x)
    labels = SyntheticImageQSL(image_size=32, total=48).labels  # the CLI's synthetic QSL
    for precision, log in (("int8", tmp_path), ("fp32", tmp_path / "fp32")):
        entries = json.loads((log / "mlperf_log_accuracy.json").read_text())
        pred = {e["qsl_idx"]: int(np.frombuffer(bytes.fromhex(e["data"]), np.int32)[0]) for e in entries}
        assert sorted(pred) == list(range(48))
        top1 = 100.0 * np.mean([pred[i] == labels[i] for i in range(48)])
        assert f"{precision} top-1={top1:.3f}%" in line
    assert "over the same 48 samples" in line and "98% of the FP32 reference 71.676% = 70.242%" in line


@pytest.mark.parametrize("args,needle", [
    (["--precision=int4"], "precision"),
    (["--precision=int8", "--dtype=bfloat16"], "--precision=int8"),
])
def test_cli_precision_errors_are_one_line(args, needle):
    p = _cli("--benchmark=mobilenet", *args)
    assert p.returncode == 2 and needle in p.stderr and "Traceback" not in p.stderr


def test_report_lines_hand_computed():
    line = quantize.accuracy_line("resnet50", ("top-1", 75.0, 100), ("top-1", 76.0, 100))
    assert "int8 keeps 98.68% of this model's fp32, < 99%" in line and "= 75.691%: FAIL" in line  # 0.99 * 76.456
    line = quantize.accuracy_line("ssd-mobilenet", ("mAP", 21.9, 50), ("mAP", 22.0, 50))
    assert ">= 99%" in line and "= 21.780%: PASS" in line
    assert "int8/fp32 = 2.50x" in quantize.throughput_line(("samples_per_second", 30.0), ("samples_per_second", 12.0))
    assert "int8 is 2.00x as fast" in quantize.throughput_line(("latency_ns", 5e6), ("latency_ns", 1e7))
