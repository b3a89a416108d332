"""The MLPerf GNMT (Wu et al. 2016 as in the MLPerf ``rnn_translator`` reference).

- Shared source/target embedding (1024), all weights uniform(-0.1, 0.1) as the reference.
- Encoder: a bidirectional LSTM layer (1024 each way), then 3 unidirectional LSTM layers;
  residual connections from the third layer on; dropout 0.2 on every layer's input.
- Decoder: LSTM layer 0 feeds a normalised Bahdanau attention over the encoder outputs; layers 1-3
  take ``[h, context]``; residual connections from layer 2 on; a dense classifier over the vocab.
  There is no input feeding (the reference's ``RecurrentAttention``), so in training each layer is
  one ``lax.scan`` over time and the attention is computed for all steps at once.

Every recurrence is a ``lax.scan`` over time steps with the input projection hoisted out of the
loop, so one compilation serves every batch of a given shape. ``decode_step`` runs one decoder
step for beam search with the same parameters.
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
class GNMTConfig:
    vocab_size: int = 32320
    hidden: int = 1024
    num_layers: int = 4           # per side (encoder and decoder)
    dropout_rate: float = 0.2
    init_scale: float = 0.1
    share_embedding: bool = True
    dtype: Any = jnp.float32
    deterministic: bool = True

    def replace(self, **kw) -> "GNMTConfig":
        return dataclasses.replace(self, **kw)


def _uniform(scale: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)
    return init


class LSTM(nn.Module):
    """One LSTM layer (PyTorch gate order i, f, g, o, two bias vectors as the reference)."""

    features: int
    in_features: int
    config: GNMTConfig

    def setup(self):
        cfg = self.config
        h = self.features
        init = _uniform(cfg.init_scale)
        self.w_ih = self.param("w_ih", init, (self.in_features, 4 * h))
        self.w_hh = self.param("w_hh", init, (h, 4 * h))
        self.b_ih = self.param("b_ih", init, (4 * h,))
        self.b_hh = self.param("b_hh", init, (4 * h,))

    def _cell(self, carry, gx):
        c, h = carry
        dt = self.config.dtype
        g = gx + jnp.dot(h.astype(dt), self.w_hh.astype(dt)).astype(jnp.float32)
        i, f, gg, o = jnp.split(g, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (c, h), h

    def input_proj(self, x: Array) -> Array:
        dt = self.config.dtype
        return (jnp.dot(x.astype(dt), self.w_ih.astype(dt)).astype(jnp.float32)
                + self.b_ih + self.b_hh)

    def __call__(self, x: Array, reverse_lengths: Array | None = None) -> Array:
        """x [B, T, F] -> [B, T, H]; ``reverse_lengths`` [B]: run right-to-left over each row's
        first ``length`` steps (the backward half of a bidirectional layer)."""
        if reverse_lengths is not None:
            x = _reverse_padded(x, reverse_lengths)
        gx = self.input_proj(x)
        b = x.shape[0]
        zeros = jnp.zeros((b, self.features), jnp.float32)
        _, hs = jax.lax.scan(self._cell, (zeros, zeros), jnp.swapaxes(gx, 0, 1))
        hs = jnp.swapaxes(hs, 0, 1)
        if reverse_lengths is not None:
            hs = _reverse_padded(hs, reverse_lengths)
        return hs

    def step(self, carry, x: Array):
        """One step: carry (c, h) each [B, H], x [B, F] -> (carry, h)."""
        return self._cell(carry, self.input_proj(x))


def _lstm(features: int, in_features: int, config: GNMTConfig, name: str) -> LSTM:
    return LSTM(features, in_features, config, name=name)


def _reverse_padded(x: Array, lengths: Array) -> Array:
    """Reverse each row's first ``lengths[b]`` steps, leaving padding in place."""
    t = x.shape[1]
    pos = jnp.arange(t)[None, :]
    idx = jnp.where(pos < lengths[:, None], lengths[:, None] - 1 - pos, pos)
    return jnp.take_along_axis(x, idx[:, :, None], axis=1)


class BahdanauAttention(nn.Module):
    """Normalised Bahdanau attention: ``v_g · tanh(W_q q + W_k k + b)`` with ``v_g = g v/|v|``."""

    units: int
    config: GNMTConfig

    def setup(self):
        cfg = self.config
        init = _uniform(cfg.init_scale)
        self.w_q = self.param("w_q", init, (cfg.hidden, self.units))
        self.w_k = self.param("w_k", init, (cfg.hidden, self.units))
        self.v = self.param("v", init, (self.units,))
        self.g = self.param("g", lambda k, s: jnp.full(s, 1.0 / np.sqrt(self.units)), (1,))
        self.b = self.param("b", nn.initializers.zeros, (self.units,))

    def keys(self, enc: Array) -> Array:
        dt = self.config.dtype
        return jnp.dot(enc.astype(dt), self.w_k.astype(dt))

    def __call__(self, q: Array, keys: Array, values: Array, src_mask: Array):
        """q [B, Tq, H]; keys [B, S, U]; values [B, S, H]; src_mask [B, S] ->
        (context [B, Tq, H], weights [B, Tq, S])."""
        dt = self.config.dtype
        pq = jnp.dot(q.astype(dt), self.w_q.astype(dt))
        v = (self.g * self.v / jnp.linalg.norm(self.v)).astype(dt)
        s = jnp.tanh(pq[:, :, None, :] + keys[:, None, :, :] + self.b.astype(dt))
        scores = jnp.einsum("bqsu,u->bqs", s, v).astype(jnp.float32)
        scores = jnp.where(src_mask[:, None, :], scores, -1e9)
        w = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("bqs,bsh->bqh", w.astype(dt), values.astype(dt)).astype(jnp.float32)
        return ctx, w


class GNMT(nn.Module):
    config: GNMTConfig

    def setup(self):
        cfg = self.config
        h = cfg.hidden
        init = _uniform(cfg.init_scale)
        self.embedding = self.param("embedding", init, (cfg.vocab_size, h))
        if not cfg.share_embedding:
            self.target_embedding = self.param("target_embedding", init, (cfg.vocab_size, h))
        self.enc_fwd = _lstm(h, h, cfg, "encoder_0_fwd")
        self.enc_bwd = _lstm(h, h, cfg, "encoder_0_bwd")
        enc = [_lstm(h, 2 * h, cfg, "encoder_1")]
        enc += [_lstm(h, h, cfg, f"encoder_{i}") for i in range(2, cfg.num_layers)]
        self.enc_layers = enc
        self.dec0 = _lstm(h, h, cfg, "decoder_0")
        self.dec_layers = [_lstm(h, 2 * h, cfg, f"decoder_{i}") for i in range(1, cfg.num_layers)]
        self.attention = BahdanauAttention(h, cfg, name="attention")
        self.classifier = nn.Dense(cfg.vocab_size, kernel_init=init, bias_init=init,
                                   dtype=cfg.dtype, name="classifier")
        self.dropout = nn.Dropout(cfg.dropout_rate)

    def _drop(self, x):
        return self.dropout(x, deterministic=self.config.deterministic)

    def _embed_tgt(self, ids):
        table = self.embedding if self.config.share_embedding else self.target_embedding
        return jnp.take(table, ids, axis=0)

    def encode(self, inputs: Array) -> dict:
        """inputs [B, S] (0 = padding, right-padded) -> encoder memory for the decoder."""
        mask = inputs > 0
        lengths = jnp.sum(mask, axis=1).astype(jnp.int32)
        x = self._drop(jnp.take(self.embedding, inputs, axis=0))
        x = jnp.concatenate([self.enc_fwd(x), self.enc_bwd(x, reverse_lengths=lengths)], axis=-1)
        x = self.enc_layers[0](self._drop(x))
        for i, layer in enumerate(self.enc_layers[1:]):
            x = x + layer(self._drop(x))
        return {"values": x, "keys": self.attention.keys(x), "mask": mask}

    def decode(self, memory: dict, decoder_inputs: Array) -> Array:
        """Teacher-forced decoder: decoder_inputs [B, T] -> logits [B, T, V] (float32)."""
        x = self._drop(self._embed_tgt(decoder_inputs))
        h = self.dec0(x)
        ctx, _ = self.attention(h, memory["keys"], memory["values"], memory["mask"])
        for i, layer in enumerate(self.dec_layers):
            y = layer(jnp.concatenate([self._drop(h), ctx], axis=-1))
            h = y if i == 0 else h + y
        return self.classifier(h).astype(jnp.float32)

    def __call__(self, inputs: Array, targets: Array) -> Array:
        decoder_inputs = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
        return self.decode(self.encode(inputs), decoder_inputs)

    # ------------------------------------------------------------ decoding
    def init_state(self, batch_size: int) -> list:
        h = self.config.hidden
        z = jnp.zeros((batch_size, h), jnp.float32)
        return [(z, z) for _ in range(self.config.num_layers)]

    def decode_step(self, memory: dict, state: list, ids: Array):
        """ids [B, 1] -> (logits [B, V], new state, attention weights [B, S])."""
        x = self._embed_tgt(ids[:, 0])
        carry, h = self.dec0.step(state[0], x)
        new_state = [carry]
        ctx, w = self.attention(h[:, None], memory["keys"], memory["values"], memory["mask"])
        ctx, w = ctx[:, 0], w[:, 0]
        for i, layer in enumerate(self.dec_layers):
            carry, y = layer.step(state[i + 1], jnp.concatenate([h, ctx], axis=-1))
            new_state.append(carry)
            h = y if i == 0 else h + y
        return self.classifier(h).astype(jnp.float32), new_state, w
