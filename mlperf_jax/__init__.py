"""mlperf_jax: the MLPerf training and inference suite in JAX and Flax."""

__version__ = "0.1.0"
