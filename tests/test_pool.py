"""models/pool.py against JAX's own max-pool gradient (select-and-scatter), ties included."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlperf_jax.models.pool import max_pool


@pytest.mark.parametrize("padding", ["SAME", [(1, 1), (1, 1)], "VALID"])
@pytest.mark.parametrize("strides", [(2, 2), (1, 1)])
def test_values_and_gradient_match_flax_max_pool_after_a_relu(padding, strides):
    rng = np.random.default_rng(0)
    # after a ReLU about half the inputs are 0: many windows tie, some are all zeros
    x = jnp.asarray(np.maximum(rng.standard_normal((2, 13, 12, 3)), 0).astype(np.float32))
    ref_y, ref_vjp = jax.vjp(lambda a: nn.max_pool(a, (3, 3), strides, padding), x)
    y, vjp = jax.vjp(lambda a: max_pool(a, (3, 3), strides, padding), x)
    np.testing.assert_array_equal(y, ref_y)
    dy = jnp.asarray(rng.uniform(1.0, 2.0, ref_y.shape).astype(np.float32))
    ref_dx, dx = ref_vjp(dy)[0], vjp(dy)[0]
    # the same inputs receive gradient (ties go to the same element) ...
    np.testing.assert_array_equal(np.asarray(dx) != 0, np.asarray(ref_dx) != 0)
    # ... and the same sums, up to the order of adding overlapping windows' contributions
    np.testing.assert_allclose(dx, ref_dx, rtol=1e-6)
    assert float(jnp.sum(dx)) == pytest.approx(float(jnp.sum(dy)), rel=1e-5)  # mass preserved


def test_an_all_zero_window_sends_its_gradient_to_the_first_element():
    x = jnp.zeros((1, 5, 5, 1))
    dy = jnp.arange(1.0, 5.0).reshape(1, 2, 2, 1)
    dx = jax.vjp(lambda a: max_pool(a, (3, 3), (2, 2), "VALID"), x)[1](dy)[0]
    want = np.zeros((5, 5))
    want[0, 0], want[0, 2], want[2, 0], want[2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx[0, :, :, 0], want)
