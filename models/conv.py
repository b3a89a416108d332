"""Convolution as matrix multiplication (im2col), for CPUs.

XLA:CPU runs a convolution's forward pass reasonably but its weight and input gradients far
below the machine's matmul rate; a GEMM runs near that rate. ``MatmulConv`` computes the same
function as ``flax.linen.Conv`` (same ``kernel`` parameter, shape ``[kh, kw, cin, cout]``, so
checkpoints are interchangeable) as shifted slices of the input concatenated along channels and
one matrix product; its gradients are then matrix products plus pads and slices. A 1x1
convolution is a single product. Larger kernels keep XLA's convolution for the forward pass,
where it beats the patch copy, and take the GEMM path for the gradients (a ``custom_vjp``). Memory grows by ``kh*kw`` for the patches, which is why it is
an option, not the default, on accelerators with good convolution kernels.
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
    cols = [xp[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
            for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]
    return jnp.dot(patches, k.reshape(kh * kw * cin, cout))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_fast_grad(x, k, strides, pads, out_hw):
    """Forward with XLA's convolution (fast on CPU), backward through the im2col GEMMs (XLA:CPU's
    convolution gradients are the slow part)."""
    return jax.lax.conv_general_dilated(x, k, strides, pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _conv_fwd(x, k, strides, pads, out_hw):
    return _conv_fast_grad(x, k, strides, pads, out_hw), (x, k)


def _conv_bwd(strides, pads, out_hw, res, dy):
    x, k = res
    _, vjp = jax.vjp(lambda a, b: _im2col_dot(a, b, strides, pads, out_hw), x, k)
    return vjp(dy)


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
            y = jnp.dot(xs, k.reshape(cin, self.features))
        else:
            y = _conv_fast_grad(x, k, (sh, sw), pads, (oh, ow))
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype
                               ).astype(self.dtype)
        return y
