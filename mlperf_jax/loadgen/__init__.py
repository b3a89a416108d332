"""A pure-Python MLPerf LoadGen with the semantics and output files of the official one.

    from mlperf_jax import loadgen as lg
    settings = lg.TestSettings(scenario=lg.TestScenario.Server, server_target_qps=100)
    settings.from_config("user.conf", "resnet50", "Server")
    result = lg.start_test(sut, qsl, settings, outdir="results/")

A SUT has ``issue_queries(samples)`` and ``flush_queries()``; it answers (from any thread)
with ``lg.query_samples_complete([lg.QuerySampleResponse(s.id, data) ...])``.  A QSL has
``total_sample_count``, ``performance_sample_count``, ``load_samples_to_ram(indices)`` and
``unload_samples_from_ram(indices)``.  ``mlperf_jax.loadgen.compat`` offers the official
Python API names (``ConstructSUT``, ``StartTest``...) for existing harnesses.
"""

from .core import (VERSION, LoadGenError, QuerySample, QuerySampleLibrary, QuerySampleResponse,
                   ResponseError, SUTError, SystemUnderTest, TestResult, query_samples_complete)
from .runner import start_test
from .results import PerformanceResult, PerformanceSummary
from .settings import (ConfigError, EffectiveSettings, LoggingMode, LogOutputSettings, LogSettings,
                       TestMode, TestScenario, TestSettings, official_mlperf_conf, parse_config)

__all__ = [
    "VERSION", "LoadGenError", "QuerySample", "QuerySampleLibrary", "QuerySampleResponse", "ResponseError",
    "SUTError", "SystemUnderTest", "TestResult", "query_samples_complete", "start_test",
    "PerformanceResult", "PerformanceSummary", "ConfigError", "EffectiveSettings", "LoggingMode",
    "LogOutputSettings", "LogSettings", "TestMode", "TestScenario", "TestSettings", "official_mlperf_conf",
    "parse_config",
]
