import jax
import jax.numpy as jnp
import numpy as np

from mlperf_jax.models import resnet


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_resnet50_parameter_count_and_output_shape():
    model = resnet.ResNet50(num_classes=1000)
    x = jnp.zeros((2, 224, 224, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    assert _count(variables["params"]) == 25_557_032  # MLPerf ResNet-50 v1.5
    out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert out.shape == (2, 1000) and out.dtype == jnp.float32


def test_v15_stride_on_3x3_conv_and_zero_init_last_bn():
    model = resnet.ResNet50(num_classes=10)
    x = jnp.zeros((1, 64, 64, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    # First block of stage 2 downsamples: its 3x3 conv (Conv_1) carries the stride, so the
    # 1x1 conv before it sees the full 16x16 map (v1 would stride the 1x1).
    _, state = model.apply(
        jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables), x, train=False,
        capture_intermediates=lambda mdl, name: isinstance(mdl, resnet.nn.Conv),
        mutable=["intermediates"])
    inter = state["intermediates"]["BottleneckBlock_3"]
    assert inter["Conv_0"]["__call__"][0].shape[1:3] == (16, 16)
    assert inter["Conv_1"]["__call__"][0].shape[1:3] == (8, 8)
    real = model.init(jax.random.key(0), x, train=False)
    for i in range(16):
        blk = real["params"][f"BottleneckBlock_{i}"]
        assert np.all(np.asarray(blk["BatchNorm_2"]["scale"]) == 0)
        assert np.any(np.asarray(blk["BatchNorm_0"]["scale"]) != 0)


def test_bfloat16_compute_keeps_float32_params():
    model = resnet.ResNet(stage_sizes=[1, 1], block_cls=resnet.BasicBlock, num_filters=8,
                          num_classes=5, small_stem=True, dtype=jnp.bfloat16)
    x = jnp.ones((2, 16, 16, 3))
    v = model.init(jax.random.key(0), x, train=False)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(v["params"]))
    logits = model.apply(v, x, train=False)
    assert logits.shape == (2, 5) and logits.dtype == jnp.float32


def test_matmul_conv_equals_lax_conv_values_and_gradients():
    """The CPU-friendly convolution computes the same function and gradients as nn.Conv."""
    from mlperf_jax.models.conv import MatmulConv
    x = jax.random.normal(jax.random.key(1), (2, 13, 13, 5))
    for ks, st, pad in [((3, 3), (1, 1), "SAME"), ((3, 3), (2, 2), "SAME"),
                        ((1, 1), (2, 2), "SAME"), ((1, 1), (1, 1), "SAME"),
                        ((7, 7), (2, 2), [(3, 3), (3, 3)])]:
        ref = resnet.nn.Conv(7, ks, st, padding=pad, use_bias=False)
        mm = MatmulConv(7, ks, st, padding=pad)
        v = ref.init(jax.random.key(0), x)
        np.testing.assert_allclose(mm.apply(v, x), ref.apply(v, x), atol=2e-5)

        def loss(m):
            return lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)))
        g_ref = jax.grad(loss(ref), argnums=(0, 1))(v, x)
        g_mm = jax.grad(loss(mm), argnums=(0, 1))(v, x)
        for a, b in zip(jax.tree.leaves(g_mm), jax.tree.leaves(g_ref)):
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
