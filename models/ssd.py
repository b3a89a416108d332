"""SSD detectors in Flax linen: the MLPerf training SSD300-ResNet34, the inference SSD1200-ResNet34
and SSD-MobileNet-v1, and a tiny SSD for the 2-core tiny track, all built by one module, ``SSD``.

``SSD()(images [B, S, S, 3] float (normalised), train) -> (loc [B, N, 4], logits [B, N, C])``, both
float32 whatever the compute ``dtype``. ``ssd_model(name, **overrides)`` returns the module and its
default boxes (a ``ssd_boxes.BoxSpec`` or an anchors array): box n of the outputs is default box n.

The pieces, as the references define them (sources in docs/specs/detection.md sections 1 and 3):

- backbone "resnet34": torchvision ResNet-34's stem, layer1, layer2 and layer3, the first block of
  layer3 at stride 1 (its 3x3 conv and its 1x1 projection): 38x38x256 at 300x300. Its parameters
  are ``params["backbone"]``, named as ``models.resnet.ResNet(stage_sizes=[3, 4, 6, 3],
  block_cls=BasicBlock)`` names them (``conv_init``, ``bn_init``, ``BasicBlock_0`` ..
  ``BasicBlock_12``, each with ``Conv_0``/``Conv_1``, ``BatchNorm_0``/``BatchNorm_1``, and
  ``proj_conv``/``proj_bn`` in blocks 3 and 7), so ``mlperf_jax.pretrained.restore_subtree(...,
  subtree="backbone")`` fills it from torchvision's resnet34 (whose layer4 and fc come back
  unused). ``pad_mode="torch"`` pads strided windows as torch does. BatchNorm with PyTorch's
  defaults (momentum 0.1, i.e. Flax 0.9; eps 1e-5), trainable.
- extra layers (training reference ``ssd300.py``, inference ``ssd_r34.py``): per block a 1x1 conv
  and a 3x3 conv, each with bias and ReLU, no BN; the 3x3 pads 1 with stride 2, or pads 0 (stride
  1 at 300; stride 2 then 1 at 1200) in the last two blocks. ``extras`` lists
  ``(mid, out, stride, pad)``.
- heads: per feature map one 3x3 conv (pad 1) for locations (k*4) and one for classes (k*C); in
  the 1200 model they have stride 3, which is how the inference reference gets 50/25/13/7/3/3
  grids from 150/75/38/19/9/7 maps. Kernels of extras and heads are xavier-uniform (the
  reference's ``xavier_uniform_``), biases PyTorch's default U(+-1/sqrt(fan_in)).
- backbone "mobilenet_v1": ``models.mobilenet.MobileNetV1Features`` (blocks 10 and 12: 19x19x512
  and 10x10x1024), extras 1x1 then 3x3/2 "SAME" with bias and ReLU6 (the inference reference's
  PyTorch port of the TF graph, BN folded into the biases), 1x1 heads, 91 classes (TF's 90 plus
  background).
- backbone "tiny": ``tiny_channels`` stages of a 3x3/2 conv + BN + ReLU and ``tiny_depth`` - 1
  3x3/1 conv + BN + ReLU; the last stages (one per level not made by ``extras``) are the maps.

Flattening (``flatten_order``), which must match the default boxes' order:

- "khw" (the MLPerf PyTorch references, ``ssd_boxes.FLATTEN_ORDER``): per level, for each box kind
  k, each row i, each column j. The reference views a head's NCHW output ``[B, D*k, H, W]`` as
  ``[B, D, k*H*W]``, so its channel c = d*k + kind (D-major); we keep that channel layout
  (``[B, H, W, D, k]`` -> ``[B, k, H, W, D]`` -> ``[B, k*H*W, D]``) so that reference weights
  convert by an OIHW -> HWIO transpose (plus, for the loc heads, the (x, y, w, h) -> (y, x, h, w)
  permutation of the box codes that models/ssd_boxes.py describes). The box order, which is what
  the default boxes see, is the same as for a k-major channel layout.
- "hwk" (TF object detection API, SSD-MobileNet): per location, k fastest; channel = kind*D + d.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlperf_jax.models import mobilenet, resnet, ssd_boxes
from mlperf_jax.models.conv import MatmulConv

BACKBONES = ("resnet34", "mobilenet_v1", "tiny")
FLATTEN_ORDERS = ("khw", "hwk")

# (mid channels of the 1x1, out channels of the 3x3, stride of the 3x3, padding of the 3x3: an int
# for torch's symmetric padding or "SAME" for TF's).
EXTRAS_SSD300 = ((256, 512, 2, 1), (256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0),
                 (128, 256, 1, 0))
EXTRAS_SSD1200 = ((256, 512, 2, 1), (256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 2, 0),
                  (128, 256, 1, 0))
EXTRAS_MOBILENET = ((256, 512, 2, "SAME"), (128, 256, 2, "SAME"), (128, 256, 2, "SAME"),
                    (64, 128, 2, "SAME"))

xavier_uniform = nn.initializers.xavier_uniform()


def torch_bias_init(fan_in: int) -> Callable:
    """PyTorch's default ``Conv2d`` bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _padding(pad):
    return pad if isinstance(pad, str) else [(pad, pad), (pad, pad)]


class ResNet34Trunk(nn.Module):
    """ResNet stem and ``stage_sizes`` stages of BasicBlocks with ``stage_strides``, named as
    ``models.resnet.ResNet`` names them. Returns ``[last map]``. The SSD default is ResNet-34's
    layer1..layer3 with layer3 (conv4_x) at stride 1: 300x300 -> 38x38x256."""

    stage_sizes: Sequence[int] = (3, 4, 6)
    stage_strides: Sequence[int] = (1, 2, 1)
    num_filters: int = 64
    pad_mode: str = "torch"
    conv_impl: str = "xla"
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv, norm = resnet.conv_and_norm(self.conv_impl, self.dtype, train, self.bn_momentum,
                                          self.bn_epsilon)
        pool_padding = resnet.window_padding(self.pad_mode)
        x = x.astype(self.dtype)
        x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pool_padding)
        for i, (n_blocks, stride) in enumerate(zip(self.stage_sizes, self.stage_strides)):
            for j in range(n_blocks):
                x = resnet.BasicBlock(self.num_filters * 2 ** i, strides=stride if j == 0 else 1,
                                      conv=conv, norm=norm, act=nn.relu,
                                      pad_mode=self.pad_mode)(x)
        return [x]


class TinyTrunk(nn.Module):
    """Stride-2 stages of ``depth`` 3x3 conv + BN + ReLU each; returns the last ``levels`` maps."""

    channels: Sequence[int] = (16, 32, 64, 64, 64)
    depth: int = 2
    levels: int = 3
    pad_mode: str = "torch"
    conv_impl: str = "xla"
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x, train: bool = True):
        if not 1 <= self.levels <= len(self.channels):
            raise ValueError(f"tiny trunk: {self.levels} levels from {len(self.channels)} stages")
        conv, norm = resnet.conv_and_norm(self.conv_impl, self.dtype, train, self.bn_momentum,
                                          self.bn_epsilon,
                                          padding=resnet.window_padding(self.pad_mode))
        x = x.astype(self.dtype)
        maps = []
        for i, c in enumerate(self.channels):
            for j in range(self.depth):
                s = 2 if j == 0 else 1
                x = conv(c, (3, 3), strides=(s, s), name=f"conv{i}_{j}")(x)
                x = nn.relu(norm(name=f"bn{i}_{j}")(x))
            maps.append(x)
        return maps[-self.levels:]


class SSD(nn.Module):
    """Single-shot detector: backbone, extra layers, per-level loc/conf heads (module docstring)."""

    backbone: str = "resnet34"
    num_classes: int = 81  # including background 0
    boxes_per_location: tuple[int, ...] = (4, 6, 6, 6, 4, 4)
    extras: tuple[tuple[int, int, int, Any], ...] = EXTRAS_SSD300
    head_kernel: int = 3
    head_stride: int = 1
    flatten_order: str = ssd_boxes.FLATTEN_ORDER  # "khw", the reference's
    input_size: int = 300
    dtype: Any = jnp.float32
    #: "xla" or "matmul" (im2col GEMMs, faster on CPUs; same parameters, see models/conv.py). The
    #: MobileNet backbone's convolutions stay XLA's (depthwise).
    conv_impl: str = "xla"
    #: padding of the ResNet/tiny trunks' strided windows: "torch" (torchvision's, the default) or
    #: "same" (TF's)
    pad_mode: str = "torch"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    tiny_channels: tuple[int, ...] = (16, 32, 64, 64, 64)
    tiny_depth: int = 2

    def _check(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown SSD backbone {self.backbone!r}: expected one of "
                             f"{', '.join(BACKBONES)}")
        if self.flatten_order not in FLATTEN_ORDERS:
            raise ValueError(f"flatten_order must be one of {', '.join(FLATTEN_ORDERS)}, "
                             f"got {self.flatten_order!r}")
        if self.conv_impl not in ("xla", "matmul"):
            raise ValueError(f"conv_impl must be xla or matmul, got {self.conv_impl!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background too: >= 2, got {self.num_classes}")

    @nn.compact
    def __call__(self, images, train: bool = True):
        self._check()
        if images.ndim != 4 or images.shape[1:] != (self.input_size, self.input_size, 3):
            raise ValueError(f"SSD expects images [B, {self.input_size}, {self.input_size}, 3], "
                             f"got {list(images.shape)}")
        conv_cls = MatmulConv if self.conv_impl == "matmul" else nn.Conv
        act = mobilenet.relu6 if self.backbone == "mobilenet_v1" else nn.relu

        def conv(features, kernel, cin, stride=1, padding=0, name=None):
            return conv_cls(features, (kernel, kernel), strides=(stride, stride),
                            padding=_padding(padding), use_bias=True, dtype=self.dtype,
                            kernel_init=xavier_uniform,
                            bias_init=torch_bias_init(cin * kernel * kernel), name=name)

        maps = list(backbone_module(self, name="backbone")(images, train=train))
        x = maps[-1]
        for i, (mid, out, stride, pad) in enumerate(self.extras):
            x = act(conv(mid, 1, x.shape[-1], name=f"extra{i}_1x1")(x))
            x = act(conv(out, 3, mid, stride, pad, name=f"extra{i}_3x3")(x))
            maps.append(x)
        if len(maps) != len(self.boxes_per_location):
            raise ValueError(f"{len(maps)} feature maps but boxes_per_location has "
                             f"{len(self.boxes_per_location)} levels")
        self.sow("intermediates", "feature_maps", tuple(maps))

        locs, logits = [], []
        pad = self.head_kernel // 2
        for i, (m, k) in enumerate(zip(maps, self.boxes_per_location)):
            cin = m.shape[-1]
            loc = conv(k * 4, self.head_kernel, cin, self.head_stride, pad, name=f"loc{i}")(m)
            conf = conv(k * self.num_classes, self.head_kernel, cin, self.head_stride, pad,
                        name=f"conf{i}")(m)
            locs.append(flatten_head(loc, k, 4, self.flatten_order))
            logits.append(flatten_head(conf, k, self.num_classes, self.flatten_order))
        return (jnp.concatenate(locs, axis=1).astype(jnp.float32),
                jnp.concatenate(logits, axis=1).astype(jnp.float32))


def backbone_module(model: SSD, name: str | None = None) -> nn.Module:
    """The backbone that ``model`` builds as ``params["backbone"]``; usable on its own:
    ``backbone_module(model).apply({"params": params["backbone"], ...}, x, train=False)`` gives
    the list of its feature maps."""
    common = dict(dtype=model.dtype, bn_momentum=model.bn_momentum,
                  bn_epsilon=model.bn_epsilon, name=name)
    if model.backbone == "resnet34":
        return ResNet34Trunk(pad_mode=model.pad_mode, conv_impl=model.conv_impl, **common)
    if model.backbone == "mobilenet_v1":
        return mobilenet.MobileNetV1Features(feature_blocks=(10, 12), **common)
    if model.backbone == "tiny":
        return TinyTrunk(channels=model.tiny_channels, depth=model.tiny_depth,
                         levels=len(model.boxes_per_location) - len(model.extras),
                         pad_mode=model.pad_mode, conv_impl=model.conv_impl, **common)
    raise ValueError(f"unknown SSD backbone {model.backbone!r}: expected one of "
                     f"{', '.join(BACKBONES)}")


def flatten_head(y, k: int, d: int, order: str):
    """A head's ``[B, H, W, k*d]`` output as ``[B, k*H*W, d]`` in box ``order`` (module docstring):
    "khw": channel = coordinate*k + kind (the PyTorch reference), boxes kind-major, then rows, then
    columns; "hwk": channel = kind*d + coordinate (TF), boxes by row, column, then kind."""
    b, h, w, c = y.shape
    if c != k * d:
        raise ValueError(f"a head with {c} channels is not {k} boxes x {d}")
    if order == "hwk":
        return y.reshape(b, h * w * k, d)
    if order != "khw":
        raise ValueError(f"flatten order must be one of {', '.join(FLATTEN_ORDERS)}, got {order!r}")
    return y.reshape(b, h, w, d, k).transpose(0, 4, 1, 2, 3).reshape(b, k * h * w, d)


def feature_sizes(model: SSD) -> tuple[int, ...]:
    """The side of each grid of default boxes: the heads' output maps (the feature maps
    themselves unless ``head_stride`` > 1). Shapes only, nothing is computed."""
    x = jax.ShapeDtypeStruct((1, model.input_size, model.input_size, 3), jnp.float32)

    def run(x):  # mutable=True: init then keeps the sown feature maps too
        v = model.init(jax.random.key(0), x, train=False, mutable=True)
        return v["intermediates"]["feature_maps"][0]

    maps = jax.eval_shape(run, x)
    pad = model.head_kernel // 2
    return tuple((int(m.shape[1]) + 2 * pad - model.head_kernel) // model.head_stride + 1
                 for m in maps)


def num_boxes(model: SSD) -> int:
    """Default boxes the model predicts for: sum over levels of side**2 * boxes per location
    (the model's output length N)."""
    return sum(s * s * k for s, k in zip(feature_sizes(model), model.boxes_per_location))


# --- default boxes (models/ssd_boxes.py) -------------------------------------------------------

BoxSpec = ssd_boxes.BoxSpec

# The tiny track's boxes: 64x64 input, maps 8/4/2 (tiny trunk stages 3..5), the MLPerf formula
# with scales for the synthetic shapes' 12-40 px (squares of 12, 15.5, 20, 25, 32, 39 px and their
# 2:1 variants), 4 boxes per location: 8*8*4 + 4*4*4 + 2*2*4 = 336.
SSD_TINY = BoxSpec(64, (8, 4, 2), (8, 16, 32), (12, 20, 32, 48), ((2,), (2,), (2,)))


def _boxes(name: str):
    if name == "ssd300_resnet34":
        return ssd_boxes.SSD300
    if name == "ssd1200_resnet34":
        return ssd_boxes.SSD1200
    if name == "ssd300_mobilenet_v1":
        anchors, order = ssd_boxes.ssd_mobilenet_boxes()
        if order != CONFIGS[name]["flatten_order"]:
            raise RuntimeError(f"SSD-MobileNet anchors come in order {order!r}, the network "
                               f"flattens {CONFIGS[name]['flatten_order']!r}")
        return anchors
    return SSD_TINY


CONFIGS: dict[str, dict] = {
    # MLPerf training v0.6/v0.7: 300x300, 81 classes, 8732 boxes.
    "ssd300_resnet34": dict(backbone="resnet34", num_classes=81,
                            boxes_per_location=(4, 6, 6, 6, 4, 4), extras=EXTRAS_SSD300,
                            input_size=300),
    # MLPerf inference v0.5 "ssd-large": 1200x1200, 15130 boxes.
    "ssd1200_resnet34": dict(backbone="resnet34", num_classes=81,
                             boxes_per_location=(4, 6, 6, 6, 4, 4), extras=EXTRAS_SSD1200,
                             head_stride=3, input_size=1200),
    # MLPerf inference v0.5 "ssd-small": 300x300, 91 classes, 1917 anchors, sigmoid scores.
    "ssd300_mobilenet_v1": dict(backbone="mobilenet_v1", num_classes=91,
                                boxes_per_location=ssd_boxes.MOBILENET_BOXES_PER_LOCATION,
                                extras=EXTRAS_MOBILENET, head_kernel=1,
                                flatten_order=ssd_boxes.MOBILENET_FLATTEN_ORDER,
                                input_size=300, bn_momentum=0.997, bn_epsilon=1e-3),
    # The tiny track (64x64, input_pipelines/synthetic_detection.py): 4 shape classes +
    # background, 336 boxes.
    "ssd_tiny": dict(backbone="tiny", num_classes=5, boxes_per_location=(4, 4, 4), extras=(),
                     input_size=64),
}


def ssd_model(name: str, **overrides) -> tuple[SSD, Any]:
    """The named SSD and its default boxes: ``(module, boxes)``.

    ``boxes`` is a ``BoxSpec`` (the ResNet-34 and tiny models) or an anchors array ``[N, 4]``
    (SSD-MobileNet). ``overrides`` replace ``SSD`` fields (``dtype``, ``conv_impl``,
    ``num_classes``, ``tiny_channels``, ...); ``boxes=spec`` replaces the default boxes, and with a
    BoxSpec also sets ``input_size`` and ``boxes_per_location`` from it.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown SSD model {name!r}: expected one of {', '.join(CONFIGS)}")
    config = dict(CONFIGS[name])
    boxes = overrides.pop("boxes", None)
    if boxes is None:
        boxes = _boxes(name)
    elif hasattr(boxes, "boxes_per_location"):
        config.update(input_size=int(boxes.image_size),
                      boxes_per_location=tuple(boxes.boxes_per_location))
    unknown = set(overrides) - {f.name for f in dataclasses.fields(SSD)}
    if unknown:
        raise ValueError(f"unknown SSD option(s) {', '.join(sorted(unknown))}")
    config.update(overrides)
    return SSD(**config), boxes


def default_box_count(boxes) -> int:
    """How many default boxes a BoxSpec or an anchors array holds."""
    if hasattr(boxes, "feature_sizes"):
        return int(sum(s * s * k for s, k in zip(boxes.feature_sizes, boxes.boxes_per_location)))
    return int(np.shape(boxes)[0])
