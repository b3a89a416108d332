"""GNMT: reference parameter count (without allocating it), step decoder == teacher forcing,
padding invariance of the bidirectional encoder, the learning-rate schedule."""
import jax
import jax.numpy as jnp
import numpy as np

from mlperf_jax.benchmarks import gnmt as gb
from mlperf_jax.models import gnmt as G
from mlperf_jax.models.transformer import param_count


def test_reference_parameter_count_without_allocating():
    config = gb.BENCHMARK.get_config("reference")
    shapes = jax.eval_shape(lambda r: gb.BENCHMARK.init(config, r)[0], jax.random.key(0))
    h, v = 1024, 32000

    def lstm(i):
        return 4 * h * i + 4 * h * h + 2 * 4 * h

    expected = (v * h                               # shared embedding
                + 2 * lstm(h) + lstm(2 * h) + 2 * lstm(h)   # encoder: bi, then 3 layers
                + lstm(h) + 3 * lstm(2 * h)                 # decoder: attention LSTM, 3 layers
                + 2 * h * h + h + 1 + h                     # normalised Bahdanau attention
                + h * v + v)                                # classifier
    assert param_count(shapes) == expected
    assert 150e6 < expected < 170e6


def _small():
    cfg = G.GNMTConfig(vocab_size=40, hidden=16, num_layers=4)
    rng = np.random.RandomState(0)
    inputs = rng.randint(2, 40, (3, 9)).astype(np.int32)
    inputs[0, 5:] = 0
    targets = rng.randint(2, 40, (3, 8)).astype(np.int32)
    m = G.GNMT(cfg)
    params = m.init(jax.random.key(0), inputs, targets)["params"]
    return m, params, jnp.asarray(inputs), jnp.asarray(targets)


def test_decode_step_matches_teacher_forcing():
    m, params, inputs, targets = _small()
    full = m.apply({"params": params}, inputs, targets)
    memory = m.apply({"params": params}, inputs, method=G.GNMT.encode)
    state = m.apply({"params": params}, 3, method=G.GNMT.init_state)
    dec_in = jnp.pad(targets, ((0, 0), (1, 0)))[:, :-1]
    outs = []
    step = jax.jit(lambda mem, st, ids: m.apply({"params": params}, mem, st, ids,
                                                method=G.GNMT.decode_step))
    for t in range(targets.shape[1]):
        logits, state, attn = step(memory, state, dec_in[:, t:t + 1])
        outs.append(logits)
        np.testing.assert_allclose(attn.sum(-1), 1.0, rtol=1e-5)
        assert float(attn[0, 5:].max()) == 0.0   # no attention on padding
    np.testing.assert_allclose(np.stack(outs, 1), full, atol=1e-5)


def test_encoder_ignores_padding():
    m, params, inputs, _ = _small()
    row = inputs[:1, :5]
    short = m.apply({"params": params}, row, method=G.GNMT.encode)["values"]
    padded = m.apply({"params": params}, jnp.pad(row, ((0, 0), (0, 6))),
                     method=G.GNMT.encode)["values"]
    np.testing.assert_allclose(short, padded[:, :5], atol=1e-6)


def test_warmup_multistep_schedule():
    c = gb.BENCHMARK.get_config("reference")
    c.num_epochs, c.warmup_steps = 3, 10
    sched, d = gb.lr_schedule(c, steps_per_epoch=100)        # 300 steps
    base = c.learning_rate
    assert d["remain_steps"] == 199 and d["decay_interval"] == 25
    np.testing.assert_allclose(sched(0), base * 0.01, rtol=1e-5)   # exponential warm-up from 1%
    np.testing.assert_allclose(sched(10), base, rtol=1e-5)
    np.testing.assert_allclose(sched(198), base, rtol=1e-5)
    np.testing.assert_allclose(sched(199), base * 0.5, rtol=1e-5)
    np.testing.assert_allclose(sched(223), base * 0.5, rtol=1e-5)
    np.testing.assert_allclose(sched(224), base * 0.25, rtol=1e-5)
    np.testing.assert_allclose(sched(299), base * 0.5 ** 4, rtol=1e-5)  # at most 4 decays
