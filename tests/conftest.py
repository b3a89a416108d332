"""Shared test set-up: quiet TensorFlow, one persistent compilation cache for the whole suite, and
helpers for subprocess runs on fake devices."""
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    """Every compile of the suite, in this process and in the command lines it starts (they read
    JAX_COMPILATION_CACHE_DIR), goes through one persistent compilation cache kept in pytest's
    cache folder (.pytest_cache, cleared by --cache-clear): the same tiny programs compile once,
    not in every test, and a second ``make test`` loads them. JAX_COMPILATION_CACHE_DIR set by
    the caller wins ("" runs the suite without a cache)."""
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        cache = getattr(config, "cache", None)  # None under -p no:cacheprovider
        os.environ["JAX_COMPILATION_CACHE_DIR"] = (
            str(cache.mkdir("jax_compilation_cache")) if cache is not None
            else os.path.join(REPO, ".pytest_cache", "jax_compilation_cache"))
    from mlperf_jax import compilation_cache
    compilation_cache.enable(compilation_cache.resolve_dir(None))


def run_python(args, *, devices: int | None = None, env: dict | None = None, timeout: int = 600,
               cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` in a fresh interpreter, optionally with N fake CPU devices."""
    e = dict(os.environ)
    e["TF_CPP_MIN_LOG_LEVEL"] = "3"
    e["JAX_PLATFORMS"] = "cpu"
    if devices:
        e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    if env:
        e.update(env)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=cwd or REPO)
