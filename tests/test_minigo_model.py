"""MiniGo's dual network: the reference 9x9 architecture's parameter count worked out by hand from
dual_net.py's layers, output shapes and ranges, and the loss against numpy."""
import jax
import jax.numpy as jnp
import numpy as np

from mlperf_jax.models import minigo


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_reference_9x9_parameter_count_and_outputs():
    net = minigo.DualNet(board_size=9)  # conv_width 32, fc_width 64, 9 trunk layers
    obs = jnp.zeros((3, 9, 9, 17), jnp.bool_)
    variables = net.init(jax.random.key(0), obs)
    # stem conv 3*3*17*32 + BN offsets 32; 9 blocks of two 3*3*32*32 convs + 2*32 offsets;
    # policy: 1x1 conv 32*2 + 2, dense 162*82 + 82; value: 1x1 conv 32 + 1, dense 81*64 + 64,
    # dense 64 + 1 (BatchNorm has no scale: center=True, scale=False)
    expected = (9 * 17 * 32 + 32) + 9 * (2 * 9 * 32 * 32 + 64) + (64 + 2 + 162 * 82 + 82) \
        + (32 + 1 + 81 * 64 + 64 + 64 + 1)
    assert _count(variables["params"]) == expected == 190170
    logits, value = net.apply(variables, obs)
    assert logits.shape == (3, 82) and value.shape == (3,)
    assert np.all(np.abs(np.asarray(value)) <= 1.0)


def test_loss_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 26)).astype(np.float32)
    target = rng.dirichlet(np.ones(26), size=4).astype(np.float32)
    value = np.tanh(rng.normal(size=4)).astype(np.float32)
    z = np.array([1, -1, 1, -1], np.float32)
    mask = np.array([1, 1, 1, 0], bool)
    total, parts = minigo.loss(jnp.asarray(logits), jnp.asarray(value), jnp.asarray(target),
                               jnp.asarray(z), jnp.asarray(mask), value_cost_weight=0.25)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -(target * logp).sum(-1)[:3].mean()
    mse = ((value - z) ** 2)[:3].mean()
    np.testing.assert_allclose(float(parts["policy_loss"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(parts["value_loss"]), mse, rtol=1e-5)
    np.testing.assert_allclose(float(total), ce + 0.25 * mse, rtol=1e-5)


def test_l2_penalty_covers_kernels_only():
    net = minigo.DualNet(board_size=5, conv_width=8, fc_width=8, trunk_layers=1)
    params = net.init(jax.random.key(1), jnp.zeros((1, 5, 5, 17)))["params"]
    kernels = [x for p, x in jax.tree_util.tree_leaves_with_path(params)
               if jax.tree_util.keystr(p).endswith("['kernel']")]
    want = sum(0.5 * float(np.sum(np.square(np.asarray(k)))) for k in kernels)
    np.testing.assert_allclose(float(minigo.l2_penalty(params)), want, rtol=1e-5)
