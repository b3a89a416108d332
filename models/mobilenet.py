"""MobileNet-v1 (Howard et al. 2017), the MLPerf Inference v0.5 "mobilenet" model, in Flax linen.

NHWC input; 13 depthwise-separable blocks after a 3x3/2 stem, global average pooling and a
dense classifier.  ``width_multiplier`` (alpha) scales every layer's channels as in the paper
(MLPerf uses 1.0 at 224x224).  BatchNorm after every convolution, ReLU6 as in the TF reference.
Functional: ``variables = MobileNetV1().init(rng, x, train=False)``,
``logits = MobileNetV1().apply(variables, x, train=False)``.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

# (output channels, stride) of the 13 depthwise-separable blocks.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
          (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def relu6(x):
    return jnp.minimum(nn.relu(x), 6.0)


def _trunk(x, train, *, width_multiplier, dtype, bn_momentum, bn_epsilon, keep=()):
    """The stem and the 13 blocks, as submodules of the calling module (called from a compact
    ``__call__``). Returns the last map and the outputs of the blocks numbered in ``keep``."""
    conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype,
                             kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal"))
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=bn_momentum,
                             epsilon=bn_epsilon, dtype=dtype, param_dtype=jnp.float32)

    def ch(c):
        return max(8, int(c * width_multiplier))

    x = x.astype(dtype)
    x = conv(ch(32), (3, 3), strides=(2, 2), padding="SAME", name="conv_init")(x)
    x = relu6(norm(name="bn_init")(x))
    kept = []
    for i, (c, s) in enumerate(BLOCKS[:max(keep) + 1] if keep else BLOCKS):
        cin = x.shape[-1]
        x = conv(cin, (3, 3), strides=(s, s), padding="SAME", feature_group_count=cin,
                 name=f"block{i}_depthwise")(x)
        x = relu6(norm(name=f"block{i}_depthwise_bn")(x))
        x = conv(ch(c), (1, 1), name=f"block{i}_pointwise")(x)
        x = relu6(norm(name=f"block{i}_pointwise_bn")(x))
        if i in keep:
            kept.append(x)
    return x, kept


class MobileNetV1(nn.Module):
    num_classes: int = 1000
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x, train: bool = True):
        x, _ = _trunk(x, train, width_multiplier=self.width_multiplier, dtype=self.dtype,
                      bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return x.astype(jnp.float32)


class MobileNetV1Features(nn.Module):
    """The classifier's stem and blocks, returning the maps after the blocks numbered in
    ``feature_blocks`` (0-based; SSD-MobileNet-v1 takes blocks 10 and 12, TF's
    ``Conv2d_11_pointwise`` and ``Conv2d_13_pointwise``: 19x19x512 and 10x10x1024 at 300x300).
    Same parameter names as ``MobileNetV1``, so its checkpoints fill this module (less the
    classifier); blocks after the last one kept are not built."""

    feature_blocks: tuple[int, ...] = (10, 12)
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32
    bn_momentum: float = 0.997
    bn_epsilon: float = 1e-3

    @nn.compact
    def __call__(self, x, train: bool = True):
        if not self.feature_blocks or not all(0 <= b < len(BLOCKS) for b in self.feature_blocks):
            raise ValueError(f"feature_blocks must be block numbers 0..{len(BLOCKS) - 1}, "
                             f"got {self.feature_blocks!r}")
        _, kept = _trunk(x, train, width_multiplier=self.width_multiplier, dtype=self.dtype,
                         bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                         keep=tuple(sorted(self.feature_blocks)))
        return kept


MobileNet = MobileNetV1
