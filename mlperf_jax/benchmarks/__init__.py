"""Benchmark registry: ``--benchmark=NAME`` -> the module that defines it.

Each module defines ``BENCHMARK`` (a ``base.Benchmark``); its configs live in
``mlperf_jax/configs/<name>.py`` (``--config=tiny`` is ``configs/<name>.py:tiny``). Modules are
imported lazily: asking for one benchmark never imports the others' dependencies.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

from mlperf_jax.benchmarks.base import Benchmark, DataSource, DatasetNotFoundError, Program, Target

_MODULES = {
    "resnet50": "mlperf_jax.benchmarks.resnet50",
    "transformer": "mlperf_jax.benchmarks.transformer",
    "gnmt": "mlperf_jax.benchmarks.gnmt",
    "ncf": "mlperf_jax.benchmarks.ncf",
    "ssd": "mlperf_jax.benchmarks.ssd",
    "maskrcnn": "mlperf_jax.benchmarks.maskrcnn",
    "minigo": "mlperf_jax.benchmarks.minigo",
}


class UnknownBenchmarkError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want a plain sentence
        return self.args[0]


def names() -> list[str]:
    """Benchmarks whose module is present in this installation."""
    return [n for n, m in _MODULES.items() if importlib.util.find_spec(m) is not None]


def get(name: str) -> Benchmark:
    if name not in names():
        raise UnknownBenchmarkError(
            f"unknown benchmark {name!r}; known benchmarks: {', '.join(names())}")
    return importlib.import_module(_MODULES[name]).BENCHMARK


def config_file(name: str) -> str:
    """Path of the benchmark's config file, for ``config_flags``."""
    return os.path.abspath(get(name).config_file())


__all__ = ["Benchmark", "DataSource", "DatasetNotFoundError", "Program", "Target", "get", "names",
           "config_file", "UnknownBenchmarkError"]
