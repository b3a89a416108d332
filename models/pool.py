"""Max pooling whose gradient is a handful of elementwise passes, for CPUs.

XLA:CPU differentiates ``reduce_window(max)`` through select-and-scatter, which it expands into a
variadic reduce-window carrying four int32 index maps the size of the input (ResNet-50's stem
pool at batch 16: four ``[16, 113, 113, 64]`` iotas and the reduce-window, ~9% of the train
step's CPU time, though on 2 cores it ran beside other work and the step's wall time did not
move). Here the forward pass takes the window's maximum over its ``kh * kw`` shifted strided
slices and keeps, as an int8 map the size of the output, which slice won; the backward pass
scatters ``dy`` to the winners with one strided pad per slice, all fused into one loop.

Ties go to the first slice in row-major window order, as XLA's select-and-scatter (``ge``) does,
so the gradient equals ``jax.grad`` of ``flax.linen.max_pool`` even after a ReLU, where ties
between zeros are the rule.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp


def _pads(padding, window, strides, hw) -> tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        return tuple(p for p in jax.lax.padtype_to_pads(hw, window, strides, padding))
    return tuple(tuple(p) for p in padding)


def _slices(xp, window, strides, out_hw):
    (kh, kw), (sh, sw), (oh, ow) = window, strides, out_hw
    return [xp[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]
            for i in range(kh) for j in range(kw)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x, window, strides, pads):
    return _max_pool_fwd(x, window, strides, pads)[0]


def _out_hw(x, window, strides, pads):
    return tuple((x.shape[1 + d] + sum(pads[d]) - window[d]) // strides[d] + 1 for d in (0, 1))


def _max_pool_fwd(x, window, strides, pads):
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    cols = _slices(xp, window, strides, _out_hw(x, window, strides, pads))
    best, arg = cols[0], jnp.zeros(cols[0].shape, jnp.int8)
    for k, c in enumerate(cols[1:], start=1):
        take = c > best  # strict: an equal later value leaves the first maximum in place
        best = jnp.where(take, c, best)
        arg = jnp.where(take, jnp.int8(k), arg)
    return best, (arg, x.shape)


def _max_pool_bwd(window, strides, pads, res, dy):
    arg, shape = res
    (kh, kw), (sh, sw) = window, strides
    oh, ow = dy.shape[1:3]
    hp, wp = shape[1] + sum(pads[0]), shape[2] + sum(pads[1])
    zero = jnp.zeros((), dy.dtype)
    dxp = None
    for i in range(kh):
        for j in range(kw):
            g = jnp.where(arg == i * kw + j, dy, zero)
            # the transpose of the strided slice xp[:, i::sh, j::sw]: a pad with interior holes
            g = jax.lax.pad(g, zero, ((0, 0, 0), (i, hp - i - (oh - 1) * sh - 1, sh - 1),
                                      (j, wp - j - (ow - 1) * sw - 1, sw - 1), (0, 0, 0)))
            dxp = g if dxp is None else dxp + g
    (pt, _), (pl, _) = pads
    return (dxp[:, pt:pt + shape[1], pl:pl + shape[2], :],)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int],
             padding: str | Sequence[tuple[int, int]] = "VALID") -> jax.Array:
    """``flax.linen.max_pool`` on NHWC input (same arguments, same values and gradient)."""
    window, strides = tuple(window), tuple(strides)
    return _max_pool(x, window, strides, _pads(padding, window, strides, x.shape[1:3]))
