"""MiniGo's dual network in Flax linen: one residual tower, a policy head and a value head.

As the MLPerf reference (mlcommons/training ``reinforcement/tensorflow/minigo/dual_net.py``; the
v0.6 9x9 flags ``--conv_width=32 --fc_width=64 --trunk_layers=9 --value_cost_weight=0.25``;
docs/specs/minigo_quant_loadgen05.md section 1): a 3x3 convolution and ``trunk_layers`` residual
blocks (conv-BN-ReLU-conv-BN, skip, ReLU) of ``conv_width`` filters; the policy head is a 1x1
convolution to 2 planes, BN, ReLU and a dense layer to the N*N+1 moves (pass last); the value head a
1x1 convolution to 1 plane, BN, ReLU, a dense layer of ``fc_width`` with ReLU and a dense output
with tanh. BatchNorm as the reference's ``tf.layers.batch_normalization(momentum=.997,
epsilon=1e-5, center=True, scale=False)``.

Input: the 17 AlphaGo Zero planes ``[B, N, N, 17]`` as pgx gives them (8 history positions x own
and opponent stones, then the colour to move); outputs are from the point of view of the player to
move: policy logits ``[B, N*N+1]`` and value ``[B]`` in [-1, 1].
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


class DualNet(nn.Module):
    board_size: int
    conv_width: int = 32
    fc_width: int = 64
    trunk_layers: int = 9
    #: the reference's 0.997 suits its long training; a short run's search needs running
    #: statistics that have caught up with the weights (the tiny track uses 0.9)
    bn_momentum: float = 0.997
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, obs, train: bool = False):
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                                 epsilon=1e-5, use_scale=False, dtype=self.dtype)
        x = obs.astype(self.dtype)
        x = nn.relu(norm()(conv(self.conv_width, (3, 3))(x)))
        for _ in range(self.trunk_layers):
            y = nn.relu(norm()(conv(self.conv_width, (3, 3))(x)))
            y = norm()(conv(self.conv_width, (3, 3))(y))
            x = nn.relu(x + y)
        b = x.shape[0]
        p = nn.relu(norm()(conv(2, (1, 1))(x))).reshape(b, -1)
        logits = nn.Dense(self.board_size ** 2 + 1, dtype=self.dtype, name="policy")(p)
        v = nn.relu(norm()(conv(1, (1, 1))(x))).reshape(b, -1)
        v = nn.relu(nn.Dense(self.fc_width, dtype=self.dtype)(v))
        v = jnp.tanh(nn.Dense(1, dtype=self.dtype, name="value")(v))[:, 0]
        return logits.astype(jnp.float32), v.astype(jnp.float32)


def l2_penalty(params) -> jax.Array:
    """The reference's ``l2_strength * sum(tf.nn.l2_loss(w))`` over kernels (not biases; BN has no
    scale here): half the sum of squares."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(0.5 * jnp.sum(jnp.square(x)) for p, x in leaves
               if str(getattr(p[-1], "key", p[-1])) == "kernel")


def loss(policy_logits, value, target_policy, target_value, mask, *, value_cost_weight: float
         ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Policy cross-entropy against the search's visit distribution plus ``value_cost_weight`` x
    the value's mean squared error against the game outcome, over the ``mask``-ed positions."""
    m = mask.astype(jnp.float32)
    n = jnp.maximum(jnp.sum(m), 1.0)
    ce = jnp.sum(optax.softmax_cross_entropy(policy_logits, target_policy) * m) / n
    mse = jnp.sum(jnp.square(value - target_value) * m) / n
    return ce + value_cost_weight * mse, {"policy_loss": ce, "value_loss": mse}
