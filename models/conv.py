"""Convolution as matrix multiplication (im2col), for CPUs.

XLA:CPU runs a convolution's forward pass reasonably but its weight and input gradients far
below the machine's matmul rate; a GEMM runs near that rate. ``MatmulConv`` computes the same
function as ``flax.linen.Conv`` (same ``kernel`` parameter, shape ``[kh, kw, cin, cout]``, so
checkpoints are interchangeable) as shifted slices of the input concatenated along channels and
one matrix product; its gradients are then matrix products plus pads and slices. A 1x1
convolution is a single product on 2-D operands. Larger kernels keep XLA's convolution for the
forward pass, where it beats the patch copy; their backward pass (a ``custom_vjp``) takes the
weight gradient as im2col GEMMs over chunks of the batch (a ``lax.scan``, ~16 MiB of patches per
chunk) and the input gradient from XLA's transposed convolution where the stride is 1 and the map
not tiny, else from chunked GEMMs as well. Memory grows by ``kh*kw`` for a chunk's patches, which
is why it is an option, not the default, on accelerators with good convolution kernels.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def _im2col_dot(x, k, strides, pads, out_hw):
    """The convolution as shifted slices, one concatenation and one matrix product."""
    kh, kw, cin, cout = k.shape
    (sh, sw), (oh, ow) = strides, out_hw
    xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    if kh * kw > 9:
        # Large kernels (the 7x7 stem) in two passes, the kw column shifts then the kh row shifts
        # of those: kh + kw slices instead of kh * kw, each its own XLA:CPU kernel to compile
        # (ResNet-50's stem weight gradient: 1.1 -> 0.4 CPU-s of compile, no slower to run).
        # Same patches, same (i, j, c) order.
        xw = jnp.concatenate([xp[:, :, j:j + (ow - 1) * sw + 1:sw, :] for j in range(kw)], axis=-1)
        patches = jnp.concatenate([xw[:, i:i + (oh - 1) * sh + 1:sh] for i in range(kh)], axis=-1)
    else:
        cols = [xp[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
                for i in range(kh) for j in range(kw)]
        patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
    n = x.shape[0]
    # A 2-D product: XLA:CPU runs a dot contracting several dimensions (here the gradient's
    # n, h, w) well below the rate of the same product on 2-D operands.
    y = jnp.dot(patches.reshape(n * oh * ow, kh * kw * cin), k.reshape(kh * kw * cin, cout))
    return y.reshape(n, oh, ow, cout)


# Patch bytes per chunk of the gradient products: the batch is split into chunks whose im2col
# patches stay about this size, and a ``lax.scan`` runs the chunks. On a 2-core x86 CPU this halves
# the weight gradient of ResNet-50's 56x56 3x3 convolution against one whole-batch product
# (146 -> 73 ms at batch 16) and against XLA's own (132-167 ms).
_CHUNK_BYTES = 16 << 20


def _chunk(n: int, item_bytes: int) -> int:
    """The largest divisor of ``n`` whose chunk of patches stays within ``_CHUNK_BYTES``."""
    best = 1
    for d in range(1, n + 1):
        if n % d == 0 and d * item_bytes <= _CHUNK_BYTES:
            best = d
    return best


def _xla_conv(x, k, strides, pads):
    return jax.lax.conv_general_dilated(x, k, strides, pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_fast_grad(x, k, strides, pads, out_hw):
    """Forward with XLA's convolution (fast on CPU), backward mostly through im2col GEMMs over
    chunks of the batch (XLA:CPU's convolution gradients are the slow part)."""
    return _xla_conv(x, k, strides, pads)


def _conv_fwd(x, k, strides, pads, out_hw):
    return _conv_fast_grad(x, k, strides, pads, out_hw), (x, k)


def _conv_bwd(strides, pads, out_hw, res, dy):
    x, k = res
    n = x.shape[0]
    kh, kw, cin, _ = k.shape
    oh, ow = out_hw
    nb = _chunk(n, oh * ow * kh * kw * cin * x.dtype.itemsize)
    xs = x.reshape(n // nb, nb, *x.shape[1:])
    dys = dy.reshape(n // nb, nb, *dy.shape[1:])

    def dk_chunk(acc, xd):
        xc, dyc = xd
        _, vjp = jax.vjp(lambda b: _im2col_dot(xc, b, strides, pads, out_hw), k)
        return acc + vjp(dyc)[0].astype(jnp.float32), None

    dk = jax.lax.scan(dk_chunk, jnp.zeros(k.shape, jnp.float32), (xs, dys))[0].astype(k.dtype)
    if strides == (1, 1) and oh * ow >= 196:
        # XLA's input gradient of a stride-1 convolution is a forward-like convolution, as fast
        # as the forward pass; with strides or on small maps the GEMMs win.
        dx = jax.vjp(lambda a: _xla_conv(a, k, strides, pads), x)[1](dy)[0]
    else:
        def dx_chunk(carry, xd):
            xc, dyc = xd
            _, vjp = jax.vjp(lambda a: _im2col_dot(a, k, strides, pads, out_hw), xc)
            return carry, vjp(dyc)[0]

        dx = jax.lax.scan(dx_chunk, 0, (xs, dys))[1].reshape(x.shape)
    return dx, dk


_conv_fast_grad.defvjp(_conv_fwd, _conv_bwd)


class MatmulConv(nn.Module):
    features: int
    kernel_size: Sequence[int]
    strides: Sequence[int] = (1, 1)
    padding: Any = "SAME"
    use_bias: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x):
        kh, kw = self.kernel_size
        sh, sw = self.strides
        cin = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, cin, self.features),
                            self.param_dtype)
        x = x.astype(self.dtype)
        k = kernel.astype(self.dtype)
        _, h, w, _ = x.shape
        if self.padding == "SAME":
            oh, ow = -(-h // sh), -(-w // sw)
            ph = max((oh - 1) * sh + kh - h, 0)
            pw = max((ow - 1) * sw + kw - w, 0)
            pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
        elif self.padding == "VALID":
            pads = ((0, 0), (0, 0))
            oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
        else:
            pads = tuple(tuple(p) for p in self.padding)
            oh = (h + pads[0][0] + pads[0][1] - kh) // sh + 1
            ow = (w + pads[1][0] + pads[1][1] - kw) // sw + 1
        if kh == 1 and kw == 1 and pads == ((0, 0), (0, 0)):
            xs = x[:, ::sh, ::sw, :] if (sh, sw) != (1, 1) else x
            n, oh, ow, _ = xs.shape
            # 2-D operands: the weight gradient then contracts one dimension, not n, h and w,
            # which XLA:CPU runs 1.5-3x faster (64->256 at 56x56, batch 16: 54 -> 16 ms).
            y = jnp.dot(xs.reshape(n * oh * ow, cin), k.reshape(cin, self.features))
            y = y.reshape(n, oh, ow, self.features)
        else:
            y = _conv_fast_grad(x, k, (sh, sw), pads, (oh, ow))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype
                               ).astype(self.dtype)
        return y
