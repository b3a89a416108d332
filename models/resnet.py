"""ResNet v1.5 in Flax linen: the MLPerf reference image classifier.

v1.5 puts the stride-2 of a downsampling bottleneck on the 3x3 convolution (v1 has it on the first
1x1), and zero-initialises the last BatchNorm scale of each residual block so that every block
starts as the identity. ``ResNet50`` has 25,557,032 parameters with 1000 classes.

``pad_mode`` says how strided windows are padded. "same" (the default) is TF's "SAME": at an even
input size a stride-2 3x3 convolution or max-pool pads (0, 1), as the MLPerf TF reference does.
"torch" pads (1, 1) on both sides, as torchvision does, so that torchvision weights (the SSD and
Mask R-CNN backbones) see the windows they were trained on. The two agree at odd sizes and on
every stride-1 layer; the parameters are the same.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mlperf_jax.models import pool as pool_lib
from mlperf_jax.models.conv import MatmulConv

ModuleDef = Any

# The MLPerf TF reference: variance scaling (fan_in, truncated normal) for convolutions and
# N(0, 0.01) for the classifier.
conv_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
dense_init = nn.initializers.normal(stddev=0.01)

PAD_MODES = ("same", "torch")


def window_padding(pad_mode: str, kernel: int = 3):
    """The ``padding`` argument of a ``kernel`` x ``kernel`` window (convolution or pool) with a
    possible stride: "SAME" (TF) or torch's symmetric ``kernel // 2`` on each side."""
    if pad_mode == "same":
        return "SAME"
    if pad_mode == "torch":
        return [(kernel // 2, kernel // 2)] * 2
    raise ValueError(f"pad_mode must be one of {', '.join(PAD_MODES)}, got {pad_mode!r}")


def conv_and_norm(conv_impl: str, dtype: Any, train: bool, bn_momentum: float,
                  bn_epsilon: float, **conv_kwargs) -> tuple[ModuleDef, ModuleDef]:
    """The convolution (bias-free; lax convs or im2col GEMMs by ``conv_impl``) and BatchNorm
    constructors that ResNet-style trunks share."""
    if conv_impl not in ("xla", "matmul"):
        raise ValueError(f"conv_impl must be xla or matmul, got {conv_impl!r}")
    conv_cls = MatmulConv if conv_impl == "matmul" else nn.Conv
    conv = functools.partial(conv_cls, use_bias=False, dtype=dtype, kernel_init=conv_init,
                             **conv_kwargs)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=bn_momentum,
                             epsilon=bn_epsilon, dtype=dtype, param_dtype=jnp.float32)
    return conv, norm


class BottleneckBlock(nn.Module):
    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    pad_mode: str = "same"

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (1, 1))(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3), strides=(self.strides, self.strides),  # v1.5
                      padding=window_padding(self.pad_mode))(y)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters * 4, (1, 1), strides=(self.strides, self.strides),
                                 name="proj_conv")(residual)
            residual = self.norm(name="proj_bn")(residual)
        return self.act(residual + y)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions: for the small ResNets of the tiny track."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    strides: int = 1
    pad_mode: str = "same"

    @nn.compact
    def __call__(self, x):
        residual = x
        y = self.conv(self.filters, (3, 3), strides=(self.strides, self.strides),
                      padding=window_padding(self.pad_mode))(x)
        y = self.act(self.norm()(y))
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros)(y)
        if residual.shape != y.shape:
            residual = self.conv(self.filters, (1, 1), strides=(self.strides, self.strides),
                                 name="proj_conv")(residual)
            residual = self.norm(name="proj_bn")(residual)
        return self.act(residual + y)


class ResNet(nn.Module):
    """ResNet over NHWC images. ``dtype`` is the compute dtype; parameters stay float32.

    ``small_stem`` replaces the 7x7/2 convolution and max-pool with one 3x3/1 convolution, for
    small images (the tiny track); the reference model keeps the ImageNet stem.
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef = BottleneckBlock
    num_classes: int = 1000
    num_filters: int = 64
    dtype: Any = jnp.float32
    act: Callable = nn.relu
    small_stem: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    #: "xla" (lax convolutions) or "matmul" (im2col GEMMs, faster on CPUs; same parameters)
    conv_impl: str = "xla"
    #: "same" (TF "SAME" windows) or "torch" (symmetric, as torchvision): see the module docstring
    pad_mode: str = "same"

    @nn.compact
    def __call__(self, x, train: bool = True):
        conv, norm = conv_and_norm(self.conv_impl, self.dtype, train, self.bn_momentum,
                                   self.bn_epsilon)
        pool_padding = window_padding(self.pad_mode)  # also checks pad_mode
        x = x.astype(self.dtype)
        if self.small_stem:
            x = conv(self.num_filters, (3, 3), name="conv_init")(x)
            x = self.act(norm(name="bn_init")(x))
        else:
            x = conv(self.num_filters, (7, 7), (2, 2), padding=[(3, 3), (3, 3)],
                     name="conv_init")(x)
            x = self.act(norm(name="bn_init")(x))
            # the CPU path (matmul convolutions) also takes the pool whose gradient is elementwise
            pool = pool_lib.max_pool if self.conv_impl == "matmul" else nn.max_pool
            x = pool(x, (3, 3), strides=(2, 2), padding=pool_padding)
        for i, block_size in enumerate(self.stage_sizes):
            for j in range(block_size):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(self.num_filters * 2 ** i, strides=strides, conv=conv,
                                   norm=norm, act=self.act, pad_mode=self.pad_mode)(x)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=dense_init)(x)
        return x.astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=[2, 2, 2, 2], block_cls=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=[3, 4, 6, 3], block_cls=BottleneckBlock)
