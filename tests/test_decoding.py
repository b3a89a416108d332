"""Beam search: greedy at beam 1, the best-scoring sequence on hand-checked toy models, the
Transformer decoder cache, the coverage penalty plumbing."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlperf_jax.models import decoding

EOS = 1
NEG = -1e9


def _markov_step(table):
    """A toy 'model' whose next-token log-probs depend only on the last token: table [V, V]."""
    table = jnp.asarray(table, jnp.float32)

    def step_fn(ids, cache):
        return table[ids[:, 0]], cache, None
    return step_fn


def _lp(n, alpha):
    return ((5.0 + n) / 6.0) ** alpha


def _brute_force(table, L, alpha):
    """Best (sequence, score) over every sequence that ends in EOS within L tokens, or any of
    length L (what beam search finishes with at the length limit)."""
    table = np.asarray(table, np.float64)
    v = table.shape[0]
    logp = table - np.log(np.exp(table).sum(-1, keepdims=True))
    best = (None, -np.inf)
    for n in range(1, L + 1):
        for seq in itertools.product(range(1, v), repeat=n):
            if EOS in seq[:-1]:
                continue
            if n < L and seq[-1] != EOS:
                continue
            prev, s = 0, 0.0
            for t in seq:
                s += logp[prev, t]
                prev = t
            score = s / _lp(n, alpha)
            if score > best[1]:
                best = (seq, score)
    return best


def test_beam_finds_what_greedy_misses():
    # from the start: 'a' (2) is likelier than 'b' (3), but after 'a' every continuation is
    # poor, while 'b' is followed by EOS with certainty
    t = np.full((4, 4), NEG)
    t[0, 2], t[0, 3] = np.log(0.6), np.log(0.4)
    t[2, 1], t[2, 2], t[2, 3] = np.log(1 / 3), np.log(1 / 3), np.log(1 / 3)
    t[3, 1] = 0.0
    t[1, 1] = 0.0
    step = _markov_step(t)
    greedy = decoding.greedy_search(step, {}, batch_size=1, max_decode_len=3, eos_id=EOS)
    np.testing.assert_array_equal(greedy[0], [2, 1, 0])   # a EOS: p = 0.6 * 1/3 = 0.2
    seqs, scores = decoding.beam_search(step, {}, batch_size=1, beam_size=2, max_decode_len=3,
                                        eos_id=EOS, alpha=0.0)
    np.testing.assert_array_equal(seqs[0, 0], [3, 1, 0])  # b EOS: p = 0.4
    np.testing.assert_allclose(scores[0, 0], np.log(0.4), rtol=1e-5)
    np.testing.assert_allclose(scores[0, 1], np.log(0.2), rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_exhaustive_beam_equals_brute_force(alpha):
    # 3 real tokens (EOS, 2, 3) and 3 steps: at most 4 alive hypotheses and 12 candidates a
    # step, so beam 16 holds every hypothesis and is exact
    rng = np.random.RandomState(int(alpha * 10))
    t = rng.normal(size=(4, 4)) * 2
    t[:, 0] = NEG
    L = 3
    seqs, scores = decoding.beam_search(_markov_step(t), {}, batch_size=1, beam_size=16,
                                        max_decode_len=L, eos_id=EOS, alpha=alpha)
    best_seq, best_score = _brute_force(t, L, alpha)
    got = [int(x) for x in seqs[0, 0] if x]
    assert tuple(got) == best_seq
    np.testing.assert_allclose(float(scores[0, 0]), best_score, rtol=1e-4)
    assert np.all(np.diff(np.asarray(scores[0])) <= 1e-6)  # best first


def _tiny_transformer():
    from mlperf_jax.models import transformer as T
    cfg = T.TransformerConfig(vocab_size=24, d_model=32, num_heads=4, num_layers=2, d_ff=64,
                              max_len=10)
    rng = np.random.RandomState(0)
    inputs = rng.randint(2, 24, (3, 7)).astype(np.int32)
    inputs[1, 4:] = 0
    model = T.Transformer(cfg)
    params = model.init(jax.random.key(0), inputs, inputs)["params"]
    return T, cfg, params, jnp.asarray(inputs)


def _transformer_step(T, cfg, params, inputs, k):
    enc = T.Transformer(cfg).apply({"params": params}, inputs, method=T.Transformer.encode)
    dm = T.Transformer(cfg.replace(decode=True))
    enc, inp = decoding.tile_beams((enc, inputs), k)
    _, v = dm.apply({"params": params}, enc, inp, jnp.zeros((inp.shape[0], 1), jnp.int32),
                    method=T.Transformer.decode, mutable=["cache"])

    def step(ids, cache):
        logits, new = dm.apply({"params": params, "cache": cache}, enc, inp, ids,
                               method=T.Transformer.decode, mutable=["cache"])
        return logits[:, 0], new["cache"], None
    return step, v["cache"]


def test_beam_one_is_greedy_on_a_transformer():
    T, cfg, params, inputs = _tiny_transformer()
    step, cache = _transformer_step(T, cfg, params, inputs, 1)
    greedy = jax.jit(lambda c: decoding.greedy_search(step, c, batch_size=3, max_decode_len=10,
                                                      eos_id=EOS))(cache)
    beam, _ = jax.jit(lambda c: decoding.beam_search(step, c, batch_size=3, beam_size=1,
                                                     max_decode_len=10, eos_id=EOS,
                                                     alpha=0.0))(cache)
    np.testing.assert_array_equal(np.asarray(beam[:, 0]), np.asarray(greedy))


def test_transformer_cache_matches_full_forward():
    T, cfg, params, inputs = _tiny_transformer()
    targets = jnp.asarray(np.random.RandomState(1).randint(2, 24, (3, 10)), jnp.int32)
    full = T.Transformer(cfg).apply({"params": params}, inputs, targets)
    step, cache = _transformer_step(T, cfg, params, inputs, 1)
    dec_in = T.shift_right(targets)
    outs = []
    for t in range(10):
        logits, cache, _ = step(dec_in[:, t:t + 1], cache)
        outs.append(logits)
    np.testing.assert_allclose(np.stack(outs, 1), full, atol=1e-4, rtol=1e-4)


def test_coverage_penalty_uses_attention():
    # two continuations with equal probability; the one whose attention covers the source wins
    t = np.full((4, 4), NEG)
    t[0, 2], t[0, 3] = np.log(0.5), np.log(0.5)
    t[2, 1] = t[3, 1] = t[1, 1] = 0.0
    table = jnp.asarray(t, jnp.float32)

    def step(ids, cache):
        tok = ids[:, 0]
        # after token 2 the model has attended to both source words, after 3 to only the first
        attn = jnp.where((tok == 3)[:, None], jnp.array([1.0, 0.0]), jnp.array([0.5, 0.5]))
        attn = jnp.where((tok == 0)[:, None], jnp.array([0.5, 0.5]), attn)
        return table[tok], cache, attn

    kw = dict(batch_size=1, beam_size=2, max_decode_len=3, eos_id=EOS, alpha=0.0, src_len=2)
    seqs, scores = decoding.beam_search(step, {}, cov_penalty=0.1, **kw)
    assert int(seqs[0, 0, 0]) == 2
    np.testing.assert_allclose(scores[0, 0], np.log(0.5), rtol=1e-5)       # full coverage
    assert float(scores[0, 1]) < float(scores[0, 0])
    _, no_cov = decoding.beam_search(step, {}, cov_penalty=0.0, **kw)
    np.testing.assert_allclose(no_cov[0], [np.log(0.5)] * 2, rtol=1e-5)
