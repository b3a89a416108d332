"""The MLPerf Transformer (Vaswani et al. 2017), as in the MLPerf reference (the TensorFlow
official-models transformer: pre-layer-norm residual blocks, shared source/target embeddings tied
to the output projection, sinusoidal positions, dropout 0.1).

Attention goes through ``jax.nn.dot_product_attention`` so that GPUs get the fused kernel. The
decoder has an autoregressive cache (``decode=True`` with a mutable ``cache`` collection) for beam
search; ``Transformer.decode`` with the cache gives the same logits as the full forward pass.

Packed batches are supported: ``*_segmentation`` (segment ids, 0 = padding) and ``*_position``
(position within the segment) keep attention inside each packed example.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    vocab_size: int = 33708
    d_model: int = 1024
    num_heads: int = 16
    num_layers: int = 6
    d_ff: int = 4096
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    relu_dropout_rate: float = 0.1
    max_len: int = 256
    dtype: Any = jnp.float32           # compute dtype; parameters stay float32
    share_embeddings: bool = True       # source, target and output projection share one matrix
    deterministic: bool = True
    decode: bool = False
    # None: let JAX pick (cuDNN flash attention on GPU when shapes allow, XLA elsewhere)
    attention_implementation: str | None = None

    def replace(self, **kw) -> "TransformerConfig":
        return dataclasses.replace(self, **kw)


def sinusoidal_positions(max_len: int, d: int) -> np.ndarray:
    """[max_len, d] positional table, sin on the first half of the channels, cos on the second
    (as the MLPerf/official TF reference's ``get_position_encoding``)."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    num_timescales = d // 2
    log_inc = np.log(1.0e4) / max(num_timescales - 1, 1)
    inv = np.exp(np.arange(num_timescales, dtype=np.float64) * -log_inc)
    scaled = pos * inv[None, :]
    table = np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1)
    if d % 2:
        table = np.pad(table, ((0, 0), (0, 1)))
    return table.astype(np.float32)


def shift_right(x: Array, segmentation: Array | None = None) -> Array:
    """Decoder inputs: targets shifted one step right with 0 (the start symbol) in front; with
    packing, the first token of every segment is also replaced by 0."""
    out = jnp.pad(x, ((0, 0), (1, 0)))[:, :-1]
    if segmentation is not None:
        prev = jnp.pad(segmentation, ((0, 0), (1, 0)))[:, :-1]
        out = jnp.where(segmentation != prev, 0, out)
    return out


class MultiHeadAttention(nn.Module):
    config: TransformerConfig
    causal_cache: bool = False   # this is decoder self-attention (the one that caches in decode)

    @nn.compact
    def __call__(self, x_q: Array, x_kv: Array, mask: Array | None) -> Array:
        cfg = self.config
        h = cfg.num_heads
        dh = cfg.d_model // h
        dense = lambda name: nn.DenseGeneral((h, dh), use_bias=False, dtype=cfg.dtype,
                                             kernel_init=nn.initializers.xavier_uniform(), name=name)
        q, k, v = dense("query")(x_q), dense("key")(x_kv), dense("value")(x_kv)  # [B, T, H, D]

        if cfg.decode and self.causal_cache:
            # One new position per call; keys and values go into a fixed-size cache.
            is_init = not self.has_variable("cache", "cached_key")
            b, _, _, _ = q.shape
            ck = self.variable("cache", "cached_key", jnp.zeros, (b, cfg.max_len, h, dh), k.dtype)
            cv = self.variable("cache", "cached_value", jnp.zeros, (b, cfg.max_len, h, dh), v.dtype)
            ci = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
            if not is_init:
                i = ci.value
                ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, i, 0, 0))
                cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, i, 0, 0))
                ci.value = i + 1
                k, v = ck.value, cv.value
                # attend to positions 0..i
                mask = (jnp.arange(cfg.max_len) <= i)[None, None, None, :]

        dropout_attn = cfg.attention_dropout_rate > 0 and not cfg.deterministic
        if dropout_attn:
            # jax.nn.dot_product_attention has no dropout; spell it out for training.
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(dh).astype(q.dtype)
            if mask is not None:
                logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
            w = jax.nn.softmax(logits.astype(jnp.float32)).astype(cfg.dtype)
            w = nn.Dropout(cfg.attention_dropout_rate)(w, deterministic=False)
            out = jnp.einsum("bhqk,bkhd->bqhd", w, v)
        else:
            if mask is not None:
                mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
            out = jax.nn.dot_product_attention(q, k, v, mask=mask,
                                               implementation=cfg.attention_implementation)
        return nn.DenseGeneral(cfg.d_model, axis=(-2, -1), use_bias=False, dtype=cfg.dtype,
                               kernel_init=nn.initializers.xavier_uniform(), name="out")(out)


class FeedForward(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        y = nn.Dense(cfg.d_ff, dtype=cfg.dtype, kernel_init=nn.initializers.xavier_uniform(),
                     name="filter")(x)
        y = nn.relu(y)
        y = nn.Dropout(cfg.relu_dropout_rate)(y, deterministic=cfg.deterministic)
        return nn.Dense(cfg.d_model, dtype=cfg.dtype, kernel_init=nn.initializers.xavier_uniform(),
                        name="output")(y)


def _residual(cfg: TransformerConfig, x: Array, y: Array) -> Array:
    return x + nn.Dropout(cfg.dropout_rate)(y, deterministic=cfg.deterministic)


def _ln(name: str, cfg: TransformerConfig) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=1e-6, dtype=cfg.dtype, name=name)


class EncoderLayer(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array, mask: Array) -> Array:
        cfg = self.config
        y = _ln("ln_attn", cfg)(x)
        x = _residual(cfg, x, MultiHeadAttention(cfg, name="self_attention")(y, y, mask))
        y = _ln("ln_ffn", cfg)(x)
        return _residual(cfg, x, FeedForward(cfg, name="ffn")(y))


class DecoderLayer(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x: Array, encoded: Array, self_mask: Array | None, cross_mask: Array) -> Array:
        cfg = self.config
        y = _ln("ln_self", cfg)(x)
        x = _residual(cfg, x, MultiHeadAttention(cfg, causal_cache=True, name="self_attention")(
            y, y, self_mask))
        y = _ln("ln_cross", cfg)(x)
        x = _residual(cfg, x, MultiHeadAttention(cfg, name="cross_attention")(y, encoded, cross_mask))
        y = _ln("ln_ffn", cfg)(x)
        return _residual(cfg, x, FeedForward(cfg, name="ffn")(y))


class Embed(nn.Module):
    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.embedding = self.param("embedding", nn.initializers.normal(cfg.d_model ** -0.5),
                                    (cfg.vocab_size, cfg.d_model), jnp.float32)

    def __call__(self, ids: Array) -> Array:
        cfg = self.config
        x = jnp.take(self.embedding, ids, axis=0).astype(cfg.dtype)
        x = x * jnp.sqrt(jnp.asarray(cfg.d_model, cfg.dtype))
        return jnp.where((ids > 0)[..., None], x, 0)   # padding embeds to zero (as the reference)

    def attend(self, x: Array) -> Array:
        return tied_projection(x, self.embedding.astype(self.config.dtype))


@jax.custom_vjp
def tied_projection(x: Array, table: Array) -> Array:
    """``einsum("...d,vd->...v")``: the output projection through the embedding table.

    Its table gradient is ``dlogits^T @ x``. Left to autodiff, XLA:CPU materialises the
    logits' gradient transposed ([vocab, tokens]: 138 MB at 16 x 64 tokens, vocab 33,708) inside
    the softmax's backward fusion, reading its inputs column by column; here the gradient is
    ``(x^T @ dlogits)^T``, whose transposes are of the small ``x`` and of the table-sized result
    (Transformer-base's loss and projection gradient: 1.10 -> 0.77 s on 2 CPU cores). Same
    products, so the same values up to summation order."""
    return jnp.einsum("...d,vd->...v", x, table)


def _tied_projection_fwd(x, table):
    return tied_projection(x, table), (x, table)


def _tied_projection_bwd(res, g):
    x, table = res
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    return (g2 @ table).reshape(x.shape).astype(x.dtype), (x2.T @ g2).T.astype(table.dtype)


tied_projection.defvjp(_tied_projection_fwd, _tied_projection_bwd)


def _add_positions(cfg: TransformerConfig, x: Array, positions: Array | None) -> Array:
    table = jnp.asarray(sinusoidal_positions(cfg.max_len, cfg.d_model), cfg.dtype)
    if positions is None:
        return x + table[None, : x.shape[1]]
    return x + jnp.take(table, positions, axis=0)


class _PositionCounter(nn.Module):
    """Decode-time position of the next target token, kept in the ``cache`` collection."""

    @nn.compact
    def __call__(self) -> Array:
        is_init = not self.has_variable("cache", "position")
        pos = self.variable("cache", "position", lambda: jnp.zeros((), jnp.int32))
        current = pos.value
        if not is_init:
            pos.value = current + 1
        return current


class Transformer(nn.Module):
    """Encoder-decoder. ``__call__`` is teacher-forced training/scoring; ``encode`` and ``decode``
    are used by beam search (``decode`` with ``config.decode=True`` consumes one token a call)."""

    config: TransformerConfig

    def setup(self):
        cfg = self.config
        self.embed = Embed(cfg)
        if not cfg.share_embeddings:
            self.target_embed = Embed(cfg)
        self.encoder_layers = [EncoderLayer(cfg, name=f"encoder_{i}") for i in range(cfg.num_layers)]
        self.decoder_layers = [DecoderLayer(cfg, name=f"decoder_{i}") for i in range(cfg.num_layers)]
        self.encoder_norm = _ln("encoder_norm", cfg)
        self.decoder_norm = _ln("decoder_norm", cfg)
        self.dropout = nn.Dropout(cfg.dropout_rate)
        if cfg.decode:
            self.position_counter = _PositionCounter()

    def _tgt_embed(self) -> Embed:
        return self.embed if self.config.share_embeddings else self.target_embed

    def encode(self, inputs: Array, inputs_segmentation: Array | None = None,
               inputs_position: Array | None = None) -> Array:
        cfg = self.config
        seg = inputs_segmentation if inputs_segmentation is not None else (inputs > 0).astype(jnp.int32)
        mask = (seg[:, None, :, None] == seg[:, None, None, :]) & (seg[:, None, None, :] > 0)
        x = _add_positions(cfg, self.embed(inputs), inputs_position)
        x = self.dropout(x, deterministic=cfg.deterministic)
        for layer in self.encoder_layers:
            x = layer(x, mask)
        return self.encoder_norm(x)

    def decode(self, encoded: Array, inputs: Array, decoder_inputs: Array,
               inputs_segmentation: Array | None = None, targets_segmentation: Array | None = None,
               targets_position: Array | None = None) -> Array:
        """Logits [B, T, vocab] (float32). ``inputs`` only supplies the source padding mask."""
        cfg = self.config
        src_seg = inputs_segmentation if inputs_segmentation is not None else (inputs > 0).astype(jnp.int32)
        emb = self._tgt_embed()
        x = emb(decoder_inputs)
        if cfg.decode:
            # one token at the position given by the first layer's cache index
            assert decoder_inputs.shape[1] == 1
            table = jnp.asarray(sinusoidal_positions(cfg.max_len, cfg.d_model), cfg.dtype)
            x = x + jax.lax.dynamic_slice_in_dim(table, self.position_counter(), 1)[None]
            self_mask = None
            cross_mask = (src_seg[:, None, None, :] > 0)
        else:
            # embed() zeroes id 0, so the shifted-in start symbol carries its position only
            # (as in the reference).
            x = _add_positions(cfg, x, targets_position)
            t = decoder_inputs.shape[1]
            causal = jnp.tril(jnp.ones((t, t), bool))[None, None]
            if targets_segmentation is not None:
                tseg = targets_segmentation
                self_mask = causal & (tseg[:, None, :, None] == tseg[:, None, None, :])
                cross_mask = (tseg[:, None, :, None] == src_seg[:, None, None, :]) & (
                    src_seg[:, None, None, :] > 0)
            else:
                self_mask = causal
                cross_mask = (src_seg[:, None, None, :] > 0)
        x = self.dropout(x, deterministic=cfg.deterministic)
        for layer in self.decoder_layers:
            x = layer(x, encoded, self_mask, cross_mask)
        x = self.decoder_norm(x)
        return emb.attend(x).astype(jnp.float32)

    def __call__(self, inputs: Array, targets: Array, inputs_segmentation: Array | None = None,
                 targets_segmentation: Array | None = None, inputs_position: Array | None = None,
                 targets_position: Array | None = None) -> Array:
        encoded = self.encode(inputs, inputs_segmentation, inputs_position)
        decoder_inputs = shift_right(targets, targets_segmentation)
        return self.decode(encoded, inputs, decoder_inputs, inputs_segmentation,
                           targets_segmentation, targets_position)


def param_count(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
