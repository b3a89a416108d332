"""The Transformer: reference parameter count (without allocating it), packing, attention path."""
import jax
import jax.numpy as jnp
import numpy as np

from mlperf_jax.benchmarks import transformer as tb
from mlperf_jax.models import transformer as T


def test_reference_parameter_count_without_allocating():
    config = tb.BENCHMARK.get_config("reference")
    shapes = jax.eval_shape(lambda r: tb.BENCHMARK.init(config, r)[0], jax.random.key(0))
    n = T.param_count(shapes)
    d, f, v, layers = 1024, 4096, 33708, 6
    attn = 4 * d * d                      # q, k, v, out projections, no biases
    ffn = d * f + f + f * d + d
    ln = 2 * d
    expected = (v * d                       # one embedding shared by source, target and softmax
                + layers * (attn + ffn + 2 * ln)
                + layers * (2 * attn + ffn + 3 * ln)
                + 2 * ln)                   # final encoder and decoder layer norms
    assert n == expected
    assert 200e6 < n < 215e6                # "Transformer big": about 210M with this vocabulary
    # every weight is float32 (bf16 is a compute dtype only)
    assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}


def test_packed_rows_equal_separate_examples():
    cfg = T.TransformerConfig(vocab_size=30, d_model=32, num_heads=4, num_layers=2, d_ff=64,
                              max_len=12)
    m = T.Transformer(cfg)
    a_in, a_tg = np.array([5, 6, 7, 1]), np.array([8, 9, 1])
    b_in, b_tg = np.array([11, 12, 1]), np.array([13, 14, 15, 16, 1])

    def pad(x, n=12):
        return np.pad(x, (0, n - len(x)))[None].astype(np.int32)

    params = m.init(jax.random.key(0), pad(a_in), pad(a_tg))["params"]
    la = m.apply({"params": params}, pad(a_in), pad(a_tg))[0, :3]
    lb = m.apply({"params": params}, pad(b_in), pad(b_tg))[0, :5]
    inputs = pad(np.concatenate([a_in, b_in]))
    targets = pad(np.concatenate([a_tg, b_tg]))
    iseg = pad(np.array([1] * 4 + [2] * 3))
    tseg = pad(np.array([1] * 3 + [2] * 5))
    ipos = pad(np.array([0, 1, 2, 3, 0, 1, 2]))
    tpos = pad(np.array([0, 1, 2, 0, 1, 2, 3, 4]))
    packed = m.apply({"params": params}, inputs, targets, inputs_segmentation=iseg,
                     targets_segmentation=tseg, inputs_position=ipos, targets_position=tpos)[0]
    np.testing.assert_allclose(packed[:3], la, atol=1e-5)
    np.testing.assert_allclose(packed[3:8], lb, atol=1e-5)


def test_attention_dropout_path_matches_fused_path_without_dropout():
    # training with attention dropout spells attention out; at rate 0 it must agree with
    # jax.nn.dot_product_attention
    cfg = T.TransformerConfig(vocab_size=30, d_model=32, num_heads=4, num_layers=1, d_ff=64,
                              max_len=8, dropout_rate=0.0, relu_dropout_rate=0.0,
                              attention_dropout_rate=0.0)
    x = jnp.asarray(np.random.RandomState(0).randint(1, 30, (2, 8)), jnp.int32)
    params = T.Transformer(cfg).init(jax.random.key(0), x, x)["params"]
    fused = T.Transformer(cfg).apply({"params": params}, x, x)
    train_cfg = cfg.replace(deterministic=False, attention_dropout_rate=1e-9)
    spelled = T.Transformer(train_cfg).apply({"params": params}, x, x,
                                             rngs={"dropout": jax.random.key(1)})
    np.testing.assert_allclose(fused, spelled, atol=1e-4)


def test_bfloat16_compute_keeps_float32_logits():
    config = tb.BENCHMARK.get_config("tiny")
    config.dtype = "bfloat16"
    x = jnp.ones((2, 16), jnp.int32)

    @jax.jit
    def f(rng):
        params, _ = tb.BENCHMARK.init(config, rng)
        return tb.BENCHMARK.logits(config, params, {"inputs": x, "targets": x}, None, train=False)

    logits = f(jax.random.key(0))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_tied_projection_gradient_is_autodiffs_of_the_einsum():
    """The hand-written backward of the output projection (a layout choice for XLA:CPU) against
    JAX's autodiff of the plain einsum."""
    from mlperf_jax.models.transformer import tied_projection
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 5, 8)), jnp.float32)
    table = jnp.asarray(rng.standard_normal((11, 8)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 5, 11)), jnp.float32)

    def loss(f):
        return lambda a, b: jnp.sum(jnp.tanh(f(a, b)) * w)
    plain = jax.grad(loss(lambda a, b: jnp.einsum("btd,vd->btv", a, b)), argnums=(0, 1))(x, table)
    ours = jax.grad(loss(tied_projection), argnums=(0, 1))(x, table)
    np.testing.assert_allclose(tied_projection(x, table), jnp.einsum("btd,vd->btv", x, table),
                               rtol=1e-6)
    for a, b in zip(ours, plain):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
