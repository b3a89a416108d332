"""Mask R-CNN with a ResNet-FPN backbone in Flax linen: the MLPerf heavyweight detector.

One module, ``MaskRCNN(spec)``, builds both the reference model (ResNet-50-FPN, maskrcnn-benchmark
``e2e_mask_rcnn_R_50_FPN_1x``; sources in docs/specs/detection.md section 2) and the tiny track's
small one; ``MaskRCNNSpec`` holds every size. Everything runs under jit with fixed shapes: the
target assignment, proposal selection, RoI sampling and detection post-processing
(``models/rcnn_boxes.py``, ``models/rcnn_proposals.py``) use top-k and masks instead of dynamic
filtering, and RoIAlign is ``models/roi_align.py``.

- backbone "resnet50": torchvision's ResNet-50 (stride on the 3x3, as torchvision's weights; the
  reference's Caffe2 weights stride on the 1x1), its parameters named as ``models.resnet.ResNet``
  names them so ``pretrained.restore_subtree(..., subtree="backbone")`` fills them from a
  torchvision ``resnet50`` state dict or this project's ResNet-50 checkpoint. BatchNorm is frozen
  (running statistics, never updated; its scale and bias get no updates, see
  ``benchmarks/maskrcnn.py``), and so are the stem and res2 (``FREEZE_CONV_BODY_AT=2``).
- backbone "tiny": three stride-2 stages of 3x3 conv + BatchNorm (trainable, batch statistics in
  training) for 64x64 images, trained from scratch.
- FPN: lateral 1x1 and output 3x3 convolutions with biases (kaiming-uniform, a=1), nearest x2
  top-down; the extra top level is a stride-2 subsample of the last (``LastLevelMaxPool``, k=1).
- RPN head: shared 3x3 conv + ReLU, 1x1 objectness (A) and 1x1 deltas (4A), N(0, 0.01) init.
- box head: RoIAlign 7x7 over the FPN levels, two FC layers with ReLU, class logits N(0, 0.01)
  and class-specific deltas N(0, 0.001).
- mask head: RoIAlign 14x14, ``mask_convs`` 3x3 convs + ReLU, a 2x2 stride-2 transposed conv +
  ReLU, 1x1 conv to per-class logits at 28x28 (kaiming-normal fan-out).

Box deltas are ``[dy, dx, dh, dw]`` (y first, as our boxes); a maskrcnn-benchmark checkpoint
would need the (x, y) permutation of its head outputs, which nothing here loads.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mlperf_jax.models import rcnn_boxes, rcnn_proposals, resnet, roi_align


@dataclasses.dataclass(frozen=True)
class MaskRCNNSpec:
    """Every size of the model and of its target assignment (hashable: it is a module field)."""

    num_classes: int = 81                      # background + 80 COCO categories
    image_size: int = 1344                     # the padded square input
    backbone: str = "resnet50"                 # "resnet50" | "tiny"
    tiny_channels: tuple[int, ...] = (32, 64, 64)
    fpn_channels: int = 256
    rpn_levels: tuple[int, ...] = (2, 3, 4, 5, 6)
    roi_levels: tuple[int, ...] = (2, 3, 4, 5)
    anchor_sizes: tuple[float, ...] = (32., 64., 128., 256., 512.)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_fg_iou: float = 0.7
    rpn_bg_iou: float = 0.3
    rpn_batch_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_pre_nms_train: int = 2000
    rpn_post_nms_train: int = 1000             # per image: the reference's 2000 per 2-image GPU batch
    rpn_pre_nms_test: int = 1000
    rpn_post_nms_test: int = 1000
    rpn_nms_iou: float = 0.7
    roi_batch_per_image: int = 512
    roi_positive_fraction: float = 0.25
    roi_fg_iou: float = 0.5
    roi_bg_iou: float = 0.5
    box_weights: tuple[float, ...] = (10., 10., 5., 5.)
    box_pool: int = 7
    mask_pool: int = 14
    sampling_ratio: int = 2
    canonical_scale: float = 224.
    canonical_level: int = 4
    box_fc: int = 1024
    mask_convs: int = 4
    mask_channels: int = 256
    num_mask_rois: int = 128                   # the most positives 512 x 25% can give
    score_threshold: float = 0.05
    nms_iou: float = 0.5
    max_detections: int = 100

    @property
    def mask_size(self) -> int:
        return 2 * self.mask_pool


@functools.lru_cache(maxsize=8)
def anchors_per_level(spec: MaskRCNNSpec) -> tuple[np.ndarray, ...]:
    """The RPN anchors of each level, in the order the RPN head flattens its outputs."""
    return tuple(rcnn_boxes.anchor_grid((spec.image_size, spec.image_size), spec.rpn_levels,
                                        spec.anchor_sizes, spec.aspect_ratios))


kaiming_uniform_a1 = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")  # a=1: gain 1
kaiming_normal_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class ResNetBackbone(nn.Module):
    """ResNet-50 up to res5, returning C2..C5; frozen BatchNorm (running statistics)."""

    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x):
        conv, norm = resnet.conv_and_norm(self.conv_impl, self.dtype, False, 0.9, 1e-5)
        x = conv(64, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], name="conv_init")(x)
        x = nn.relu(norm(name="bn_init")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=resnet.window_padding("torch"))
        feats, k = [], 0
        for i, n in enumerate((3, 4, 6, 3)):
            for j in range(n):
                x = resnet.BottleneckBlock(64 * 2 ** i, conv=conv, norm=norm, act=nn.relu,
                                           strides=2 if i > 0 and j == 0 else 1,
                                           pad_mode="torch", name=f"BottleneckBlock_{k}")(x)
                k += 1
            if i == 0:
                # stem and res2 are frozen (FREEZE_CONV_BODY_AT=2): no backward pass through them
                x = jax.lax.stop_gradient(x)
            feats.append(x)
        return feats


class TinyBackbone(nn.Module):
    """Stride-2 3x3 conv stages (BatchNorm in training mode) for the tiny track."""

    channels: Sequence[int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                                 dtype=self.dtype, param_dtype=jnp.float32)
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                                 kernel_init=kaiming_normal_out)
        x = nn.relu(norm()(conv(self.channels[0] // 2, (3, 3), (2, 2))(x)))
        feats = []
        for c in self.channels:
            x = nn.relu(norm()(conv(c, (3, 3), (2, 2))(x)))
            x = nn.relu(norm()(conv(c, (3, 3))(x)))
            feats.append(x)
        return feats


class FPN(nn.Module):
    channels: int
    num_outputs: int            # levels returned: the inputs' plus subsampled extra ones
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats):
        conv = functools.partial(nn.Conv, self.channels, dtype=self.dtype,
                                 kernel_init=kaiming_uniform_a1)
        last = conv((1, 1), name=f"inner_{len(feats) - 1}")(feats[-1])
        outs = [conv((3, 3), name=f"layer_{len(feats) - 1}")(last)]
        for i in range(len(feats) - 2, -1, -1):
            up = jnp.repeat(jnp.repeat(last, 2, axis=1), 2, axis=2)
            lateral = conv((1, 1), name=f"inner_{i}")(feats[i])
            last = lateral + up[:, :lateral.shape[1], :lateral.shape[2]]
            outs.insert(0, conv((3, 3), name=f"layer_{i}")(last))
        while len(outs) < self.num_outputs:
            outs.append(outs[-1][:, ::2, ::2])
        return outs


class RPNHead(nn.Module):
    channels: int
    num_anchors: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats):
        init = nn.initializers.normal(0.01)
        conv = nn.Conv(self.channels, (3, 3), dtype=self.dtype, kernel_init=init, name="conv")
        cls = nn.Conv(self.num_anchors, (1, 1), dtype=self.dtype, kernel_init=init, name="cls")
        box = nn.Conv(4 * self.num_anchors, (1, 1), dtype=self.dtype, kernel_init=init,
                      name="box")
        logits, deltas = [], []
        for f in feats:
            t = nn.relu(conv(f))
            b = f.shape[0]
            logits.append(cls(t).reshape(b, -1).astype(jnp.float32))
            deltas.append(box(t).reshape(b, -1, 4).astype(jnp.float32))
        return logits, deltas


class BoxHead(nn.Module):
    fc: int
    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, k = x.shape[:2]
        x = x.reshape(b, k, -1)
        x = nn.relu(nn.Dense(self.fc, dtype=self.dtype, kernel_init=kaiming_uniform_a1)(x))
        x = nn.relu(nn.Dense(self.fc, dtype=self.dtype, kernel_init=kaiming_uniform_a1)(x))
        logits = nn.Dense(self.num_classes, dtype=self.dtype,
                          kernel_init=nn.initializers.normal(0.01), name="cls_score")(x)
        deltas = nn.Dense(4 * self.num_classes, dtype=self.dtype,
                          kernel_init=nn.initializers.normal(0.001), name="bbox_pred")(x)
        return (logits.astype(jnp.float32),
                deltas.reshape(b, k, self.num_classes, 4).astype(jnp.float32))


class Deconv2x(nn.Module):
    """A 2x2 stride-2 transposed convolution as one matmul and a depth-to-space: the windows do
    not overlap, so each input pixel makes its own 2x2 output block. Same mathematics as
    ``nn.ConvTranspose``, whose gradient XLA's CPU backend runs ~30x slower than this."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        k = self.param("kernel", kaiming_normal_out, (2, 2, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        n, h, w, c = x.shape
        kk = jnp.transpose(k, (2, 0, 1, 3)).reshape(c, 4 * self.features).astype(self.dtype)
        y = (x.reshape(-1, c) @ kk).reshape(n, h, w, 2, 2, self.features)
        y = y.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, self.features)
        return y + bias.astype(self.dtype)


class MaskHead(nn.Module):
    convs: int
    channels: int
    num_classes: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, k = x.shape[:2]
        x = x.reshape((b * k,) + x.shape[2:])
        for i in range(self.convs):
            x = nn.relu(nn.Conv(self.channels, (3, 3), dtype=self.dtype,
                                kernel_init=kaiming_normal_out, name=f"fcn{i + 1}")(x))
        x = nn.relu(Deconv2x(self.channels, dtype=self.dtype, name="deconv")(x))
        x = nn.Conv(self.num_classes, (1, 1), dtype=self.dtype, kernel_init=kaiming_normal_out,
                    name="logits")(x)
        return x.reshape((b, k) + x.shape[1:]).astype(jnp.float32)


class MaskRCNN(nn.Module):
    """``__call__(images, batch, rng, train=True)`` -> losses; ``predict(images, image_hw)`` ->
    detections with per-detection mask probabilities."""

    spec: MaskRCNNSpec
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    def setup(self):
        s = self.spec
        if s.backbone == "resnet50":
            self.backbone = ResNetBackbone(dtype=self.dtype, conv_impl=self.conv_impl)
        elif s.backbone == "tiny":
            self.backbone = TinyBackbone(s.tiny_channels, dtype=self.dtype)
        else:
            raise ValueError(f"unknown Mask R-CNN backbone {s.backbone!r}")
        self.fpn = FPN(s.fpn_channels, len(s.rpn_levels), dtype=self.dtype)
        self.rpn = RPNHead(s.fpn_channels, len(s.aspect_ratios), dtype=self.dtype)
        self.box_head = BoxHead(s.box_fc, s.num_classes, dtype=self.dtype)
        self.mask_head = MaskHead(s.mask_convs, s.mask_channels, s.num_classes, dtype=self.dtype)

    def _features(self, images, train: bool):
        x = images.astype(self.dtype)
        feats = self.backbone(x, train) if self.spec.backbone == "tiny" else self.backbone(x)
        pyramid = self.fpn(feats)
        levels = dict(zip(self.spec.rpn_levels, pyramid))
        return levels, self.rpn(pyramid)

    def _roi_features(self, levels, boxes, size: int):
        s = self.spec
        maps = {l: levels[l] for l in s.roi_levels}
        return roi_align.multilevel_roi_align(
            maps, boxes, output_size=size, sampling_ratio=s.sampling_ratio,
            canonical_scale=s.canonical_scale, canonical_level=s.canonical_level)

    def __call__(self, images, batch, rng, train: bool = True):
        s = self.spec
        rng_rpn, rng_roi = jax.random.split(rng)
        levels, (obj, deltas) = self._features(images, train)
        anchors = anchors_per_level(s)
        gt_boxes, gt_classes, num_gt = batch["boxes"], batch["classes"], batch["num_gt"]
        image_hw = batch["image_hw"]

        rpn_t = rcnn_boxes.rpn_targets(
            jnp.asarray(np.concatenate(anchors)), gt_boxes, num_gt, image_hw, rng_rpn,
            fg_iou=s.rpn_fg_iou, bg_iou=s.rpn_bg_iou, num_samples=s.rpn_batch_per_image,
            positive_fraction=s.rpn_positive_fraction)
        rpn_cls, rpn_box = rcnn_boxes.rpn_loss(jnp.concatenate(obj, 1),
                                               jnp.concatenate(deltas, 1), rpn_t)

        props, _, props_valid = rcnn_proposals.generate_proposals(
            obj, deltas, anchors, image_hw, pre_nms_top_n=s.rpn_pre_nms_train,
            post_nms_top_n=s.rpn_post_nms_train, nms_iou=s.rpn_nms_iou)
        samples = rcnn_proposals.sample_rois(
            props, props_valid, gt_boxes, gt_classes, num_gt, rng_roi,
            num_samples=s.roi_batch_per_image, positive_fraction=s.roi_positive_fraction,
            fg_iou=s.roi_fg_iou, bg_iou=s.roi_bg_iou, weights=s.box_weights)
        logits, box_deltas = self.box_head(self._roi_features(levels, samples["rois"],
                                                              s.box_pool))
        cls_loss, box_loss = rcnn_proposals.box_head_loss(logits, box_deltas, samples)

        # the mask head sees the positive RoIs only: sample_rois puts them first, and at most
        # num_mask_rois of them (the positive quota of the sample)
        k = s.num_mask_rois
        m_rois, m_cls, m_gt, m_pos = (samples[n][:, :k] for n in
                                      ("rois", "classes", "matched_gt", "positive"))
        mask_logits = self.mask_head(self._roi_features(levels, m_rois, s.mask_pool))
        targets = roi_align.mask_targets(batch["masks"], gt_boxes, m_rois, m_gt,
                                         output_size=s.mask_size)
        mask_loss = roi_align.mask_loss(mask_logits, m_cls, targets, m_pos)
        return {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "cls": cls_loss, "box": box_loss,
                "mask": mask_loss}

    def predict(self, images, image_hw):
        s = self.spec
        levels, (obj, deltas) = self._features(images, False)
        props, _, props_valid = rcnn_proposals.generate_proposals(
            obj, deltas, anchors_per_level(s), image_hw, pre_nms_top_n=s.rpn_pre_nms_test,
            post_nms_top_n=s.rpn_post_nms_test, nms_iou=s.rpn_nms_iou)
        logits, box_deltas = self.box_head(self._roi_features(levels, props, s.box_pool))
        det = rcnn_proposals.detect(logits, box_deltas, props, props_valid, image_hw,
                                    score_threshold=s.score_threshold, nms_iou=s.nms_iou,
                                    max_detections=s.max_detections, weights=s.box_weights)
        mask_logits = self.mask_head(self._roi_features(levels, det["boxes"], s.mask_pool))
        cls = jnp.clip(det["classes"], 0, s.num_classes - 1)
        picked = jnp.take_along_axis(mask_logits, cls[:, :, None, None, None], axis=-1)[..., 0]
        return dict(det, masks=jax.nn.sigmoid(picked))
