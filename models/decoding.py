"""Fixed-shape, jittable beam search and greedy search for the translation models.

The model is seen through a step function

    step_fn(ids [B*K, 1] int32, cache) -> (logits [B*K, V], new_cache, attention [B*K, S] or None)

where ``cache`` is any pytree whose array leaves have a leading ``B*K`` dimension (scalar leaves,
such as a cache index, are shared by all beams). Encoder outputs go in the cache, tiled over the
beams with ``tile_beams``. Everything has static shapes, so one compilation serves every batch; the
loop is a ``lax.while_loop`` that stops once no alive hypothesis can beat the finished ones.

Each step keeps the best K candidates that did not end (alive) and finalises the EOS candidates
among the best K (fairseq's rule, so that beam 1 is exactly greedy decoding).

Scores follow GNMT (Wu et al. 2016), as both MLPerf references do:
``log P(y) / lp(y) + cp``, with ``lp = ((len_norm_const + |y|) / (len_norm_const + 1)) ** alpha``
(the Transformer reference: const 5, alpha 0.6) and the coverage penalty
``cp = beta * sum_src log(min(sum_t attention, 1))`` (GNMT reference: beta 0.1; 0 turns it off).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any
NEG_INF = -1.0e7


def tile_beams(x: PyTree, beam_size: int) -> PyTree:
    """[B, ...] -> [B*K, ...] (each row repeated K times, beams of one example adjacent)."""
    def one(a):
        if a.ndim == 0:
            return a
        return jnp.repeat(a, beam_size, axis=0)
    return jax.tree.map(one, x)


def _gather_beams(x: PyTree, beam_idx: Array, batch_size: int, old_k: int) -> PyTree:
    """Select beams: leaves [B*old_k, ...] -> [B*new_k, ...] (``beam_idx`` [B, new_k])."""
    new_k = beam_idx.shape[1]

    def one(a):
        if a.ndim == 0:
            return a
        a = a.reshape((batch_size, old_k) + a.shape[1:])
        idx = beam_idx.reshape(beam_idx.shape + (1,) * (a.ndim - 2))
        out = jnp.take_along_axis(a, idx, axis=1)
        return out.reshape((batch_size * new_k,) + a.shape[2:])
    return jax.tree.map(one, x)


def _take(a: Array, idx: Array) -> Array:
    """a [B, K, ...], idx [B, K'] -> [B, K', ...]."""
    idx = idx.reshape(idx.shape + (1,) * (a.ndim - 2))
    return jnp.take_along_axis(a, idx, axis=1)


def length_penalty(length: Array, alpha: float, const: float = 5.0) -> Array:
    return ((const + length.astype(jnp.float32)) / (const + 1.0)) ** alpha


def beam_search(step_fn: Callable, cache: PyTree, *, batch_size: int, beam_size: int,
                max_decode_len: int, eos_id: int, alpha: float = 0.6, len_norm_const: float = 5.0,
                cov_penalty: float = 0.0, src_len: int | None = None, src_mask: Array | None = None,
                bos_id: int = 0, pad_id: int = 0) -> tuple[Array, Array]:
    """Returns ``(sequences [B, K, max_decode_len], scores [B, K])``, best first.

    Sequences hold the generated tokens (EOS included when one was produced), 0 after it. With
    ``beam_size=1`` and ``alpha=0`` the result is the greedy decode. ``cache`` must already be
    tiled over beams. ``cov_penalty > 0`` needs the step function's attention and ``src_len``
    (and ``src_mask`` [B, S] to ignore padded source positions).
    """
    b, k, L = batch_size, beam_size, max_decode_len
    use_cov = cov_penalty > 0
    if use_cov and src_len is None:
        raise ValueError("coverage penalty needs src_len")
    S = src_len or 1
    if src_mask is None:
        src_mask = jnp.ones((b, S), bool)
    src_mask = src_mask.astype(bool)

    def coverage(cov):  # cov [B, K, S]
        if not use_cov:
            return jnp.zeros(cov.shape[:2], jnp.float32)
        c = jnp.log(jnp.minimum(jnp.maximum(cov, 1e-10), 1.0))
        return cov_penalty * jnp.sum(jnp.where(src_mask[:, None, :], c, 0.0), axis=-1)

    seqs0 = jnp.full((b, k, L + 1), 0, jnp.int32).at[:, :, 0].set(bos_id)
    state = dict(
        i=jnp.zeros((), jnp.int32),
        alive_seqs=seqs0,
        alive_logp=jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1)),
        alive_cov=jnp.zeros((b, k, S), jnp.float32),
        fin_seqs=seqs0,
        fin_scores=jnp.full((b, k), NEG_INF, jnp.float32),
        fin_flags=jnp.zeros((b, k), bool),
        cache=cache,
    )
    best_lp = length_penalty(jnp.asarray(L), alpha, len_norm_const)

    def cond(s):
        # stop early when the best alive hypothesis, even at full length and no coverage
        # penalty, cannot beat the worst finished one in every batch row
        best_alive = s["alive_logp"][:, 0] / best_lp
        worst_fin = jnp.min(jnp.where(s["fin_flags"], s["fin_scores"], NEG_INF), axis=1)
        all_full = jnp.all(s["fin_flags"], axis=1)
        done = jnp.all(all_full & (worst_fin > best_alive))
        return (s["i"] < L) & ~done

    def body(s):
        i = s["i"]
        ids = jax.lax.dynamic_slice_in_dim(s["alive_seqs"], i, 1, axis=2).reshape(b * k, 1)
        logits, new_cache, attn = step_fn(ids, s["cache"])
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        logp = logp.at[:, pad_id].set(NEG_INF).reshape(b, k, -1)  # padding is never emitted
        v = logp.shape[-1]
        cand = (s["alive_logp"][:, :, None] + logp).reshape(b, k * v)
        top_logp, top_idx = jax.lax.top_k(cand, 2 * k)              # [B, 2K]
        top_beam = top_idx // v
        top_tok = (top_idx % v).astype(jnp.int32)
        top_seqs = _take(s["alive_seqs"], top_beam)                 # [B, 2K, L+1]
        top_seqs = jax.lax.dynamic_update_slice_in_dim(top_seqs, top_tok[:, :, None], i + 1, axis=2)
        if use_cov:
            cov = s["alive_cov"] + attn.reshape(b, k, -1).astype(jnp.float32)
        else:
            cov = s["alive_cov"]
        top_cov = _take(cov, top_beam)
        is_eos = top_tok == eos_id
        last = i + 1 >= L

        # alive: the best K candidates that did not just end
        alive_cand = jnp.where(is_eos, NEG_INF, top_logp)
        a_logp, a_pos = jax.lax.top_k(alive_cand, k)
        a_seqs = _take(top_seqs, a_pos)
        a_cov = _take(top_cov, a_pos)
        a_cache = _gather_beams(new_cache, _take(top_beam, a_pos), b, k)

        # finished: EOS among the best K candidates (as fairseq: an EOS ranked below K is not a
        # hypothesis the beam holds, so beam 1 is exactly greedy), or everything at the last
        # step; merged with the old
        in_beam = jnp.arange(2 * k)[None, :] < k
        ends = (is_eos & in_beam) | last
        f_new = top_logp / length_penalty(i + 1, alpha, len_norm_const) + coverage(top_cov)
        f_new = jnp.where(ends & (top_logp > NEG_INF / 2), f_new, NEG_INF)
        all_scores = jnp.concatenate([s["fin_scores"], f_new], axis=1)
        all_flags = jnp.concatenate([s["fin_flags"], f_new > NEG_INF / 2], axis=1)
        all_seqs = jnp.concatenate([s["fin_seqs"], top_seqs], axis=1)
        f_scores, f_pos = jax.lax.top_k(jnp.where(all_flags, all_scores, NEG_INF * 2), k)
        return dict(
            i=i + 1,
            alive_seqs=a_seqs,
            alive_logp=a_logp,
            alive_cov=a_cov,
            fin_seqs=_take(all_seqs, f_pos),
            fin_scores=jnp.where(_take(all_flags, f_pos), f_scores, NEG_INF),
            fin_flags=_take(all_flags, f_pos),
            cache=a_cache,
        )

    s = jax.lax.while_loop(cond, body, state)
    # rows with no finished hypothesis (cannot happen once the loop ran to L, kept for safety)
    any_fin = jnp.any(s["fin_flags"], axis=1)
    seqs = jnp.where(any_fin[:, None, None], s["fin_seqs"], s["alive_seqs"])
    scores = jnp.where(any_fin[:, None], s["fin_scores"], s["alive_logp"])
    return _strip_after_eos(seqs[:, :, 1:], eos_id), scores


def _strip_after_eos(seqs: Array, eos_id: int) -> Array:
    is_eos = seqs == eos_id
    after = jnp.cumsum(is_eos, axis=-1) - is_eos.astype(jnp.int32) > 0
    return jnp.where(after, 0, seqs)


def greedy_search(step_fn: Callable, cache: PyTree, *, batch_size: int, max_decode_len: int,
                  eos_id: int, bos_id: int = 0, pad_id: int = 0) -> Array:
    """[B, max_decode_len] argmax decode, 0 after the first EOS (reference for beam 1 tests)."""

    def body(carry, _):
        ids, cache, done = carry
        logits, cache, _ = step_fn(ids, cache)
        nxt = jnp.argmax(logits.at[:, pad_id].set(-jnp.inf), axis=-1).astype(jnp.int32)
        out = jnp.where(done, 0, nxt)
        done = done | (nxt == eos_id)
        return (nxt[:, None], cache, done), out

    ids0 = jnp.full((batch_size, 1), bos_id, jnp.int32)
    _, out = jax.lax.scan(body, (ids0, cache, jnp.zeros((batch_size,), bool)), None,
                          length=max_decode_len)
    return out.T
