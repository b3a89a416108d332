"""NeuMF (He et al. 2017, "Neural Collaborative Filtering") as in the MLPerf v0.5 reference.

Two branches over separate user/item embeddings: GMF (element-wise product of ``mf_dim``-factor
embeddings) and an MLP over the concatenated ``mlp_layer_sizes[0] // 2``-dim embeddings with ReLU
layers ``mlp_layer_sizes``; their outputs are concatenated into one logit. Reference sizes:
``mf_dim=64``, ``mlp_layer_sizes=(256, 256, 128, 64)``.

Initialisation follows the reference (``neumf.py``): embeddings N(0, 0.01), MLP kernels Glorot
uniform, the final kernel LeCun uniform, biases PyTorch's ``nn.Linear`` default
U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

Shapes: ``users`` is ``(b,)``; ``items`` is ``(b,)`` (training pairs) or ``(b, n)`` (n candidate
items per user, for ranking). In the second case the user's embeddings are broadcast instead of
repeated, and the first MLP layer is applied to the user and item halves separately (the same
kernel, split by rows), so scoring ``1 + 999`` candidates costs the item side only.

Embedding tables are padded to a multiple of ``row_multiple`` rows (padding rows are never looked
up, so they get zero gradients and stay put under Adam) so that their row dimension can be sharded
over mesh axes (``PARTITION_RULES``, or the driver's FSDP option).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

EMBED_NAMES = ("mf_user_embed", "mf_item_embed", "mlp_user_embed", "mlp_item_embed")


def _torch_bias_init(fan_in: int):
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def round_up(n: int, m: int) -> int:
    return -(-int(n) // int(m)) * int(m)


class NeuMF(nn.Module):
    num_users: int
    num_items: int
    mf_dim: int = 64
    mlp_layer_sizes: Sequence[int] = (256, 256, 128, 64)
    row_multiple: int = 64
    dtype: Any = jnp.float32

    def setup(self):
        if self.mlp_layer_sizes[0] % 2:
            raise ValueError("mlp_layer_sizes[0] must be even (user and item halves)")
        emb_init = nn.initializers.normal(stddev=0.01)
        nu, ni = round_up(self.num_users, self.row_multiple), round_up(self.num_items, self.row_multiple)
        half = self.mlp_layer_sizes[0] // 2
        self.mf_user_embed = self.param("mf_user_embed", emb_init, (nu, self.mf_dim))
        self.mf_item_embed = self.param("mf_item_embed", emb_init, (ni, self.mf_dim))
        self.mlp_user_embed = self.param("mlp_user_embed", emb_init, (nu, half))
        self.mlp_item_embed = self.param("mlp_item_embed", emb_init, (ni, half))
        sizes = list(self.mlp_layer_sizes)
        self.mlp_kernels = [self.param(f"mlp_{i}_kernel", nn.initializers.glorot_uniform(),
                                       (sizes[i], sizes[i + 1])) for i in range(len(sizes) - 1)]
        self.mlp_biases = [self.param(f"mlp_{i}_bias", _torch_bias_init(sizes[i]), (sizes[i + 1],))
                           for i in range(len(sizes) - 1)]
        fin = sizes[-1] + self.mf_dim
        self.final_kernel = self.param("final_kernel", nn.initializers.lecun_uniform(), (fin, 1))
        self.final_bias = self.param("final_bias", _torch_bias_init(fin), (1,))

    def __call__(self, users: jax.Array, items: jax.Array) -> jax.Array:
        """Logits, shaped like ``items``."""
        dt = self.dtype
        ranking = items.ndim == users.ndim + 1
        mfu = jnp.take(self.mf_user_embed, users, axis=0).astype(dt)
        mfi = jnp.take(self.mf_item_embed, items, axis=0).astype(dt)
        mlu = jnp.take(self.mlp_user_embed, users, axis=0).astype(dt)
        mli = jnp.take(self.mlp_item_embed, items, axis=0).astype(dt)
        if ranking:  # (b, d) -> (b, 1, d), broadcast over the n candidates
            mfu, mlu = mfu[:, None, :], mlu[:, None, :]
        gmf = mfu * mfi
        half = self.mlp_layer_sizes[0] // 2
        k0 = self.mlp_kernels[0].astype(dt) if self.mlp_kernels else None
        if k0 is None:
            x = jnp.concatenate(jnp.broadcast_arrays(mlu, mli), axis=-1)
        else:
            # concat(u, i) @ K == u @ K[:half] + i @ K[half:]
            x = mlu @ k0[:half] + mli @ k0[half:] + self.mlp_biases[0].astype(dt)
            x = nn.relu(x)
            for k, b in zip(self.mlp_kernels[1:], self.mlp_biases[1:]):
                x = nn.relu(x @ k.astype(dt) + b.astype(dt))
        x = jnp.concatenate([gmf, x], axis=-1)
        logits = x @ self.final_kernel.astype(dt) + self.final_bias.astype(dt)
        return logits[..., 0].astype(jnp.float32)


EMBED_RULE = r"(^|/)(mf|mlp)_(user|item)_embed$"
"""Matches the four embedding tables by name wherever they sit in a train state
(``params/mf_user_embed``, ``opt_state/0/mu/mf_user_embed``, ...), for ``re.search``."""


def partition_rules(axes: str | tuple[str, ...] = ("data", "model")) -> tuple[tuple[str, P], ...]:
    """Partition rules (``mlperf_jax.sharding`` format) that shard the tables' rows over ``axes``.

    The default splits the rows over *both* axes of a (data, model) mesh, so each device keeps
    1/N of every table and of its Adam ``mu``/``nu``. The tables are nearly all of NeuMF's
    parameters (reference: 31.7M of 31.8M), so that is where the memory is; over ``model`` alone
    each data replica would keep a full copy of its shard, all-reduce a dense table-sized gradient
    across replicas and repeat the same Adam update, where over both axes the gradient is only
    reduce-scattered and each row is updated once. On a pure data mesh (``model`` of size 1) this
    is rows over ``data``, and on one device it is a no-op. Rows are padded to ``row_multiple``
    (64 in the reference config) so that they divide by the device count. The small MLP layers get
    no rule: they take the driver's fallback (replicated, or FSDP over ``data``).
    """
    return ((EMBED_RULE, P(axes, None)),)


PARTITION_RULES = partition_rules()


def param_partition_specs(params: Any, axis: str | tuple[str, ...] = "data") -> Any:
    """PartitionSpecs of a params tree under ``partition_rules(axis)``; the rest replicated.

    Kept for callers that place a bare params tree; train states go through
    ``mlperf_jax.sharding.state_shardings(..., rules=PARTITION_RULES)``.
    """
    (pattern, spec), = partition_rules(axis)

    def one(path, x):
        name = jax.tree_util.keystr(tuple(path), simple=True, separator="/")
        return spec if re.search(pattern, name) else P()

    return jax.tree_util.tree_map_with_path(one, params)
