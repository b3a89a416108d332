"""Rules profiles: which MLPerf Inference round's LoadGen semantics a test runs under.

``current`` (the default) is this LoadGen as it always was: the semantics of the official
``mlcommons-loadgen`` 6.0 with its ``mlperf.conf``; the official LoadGen stays its oracle.
``v0_5`` is MLPerf Inference v0.5 (October 2019): the r0.5 LoadGen's MultiStream (a query of N
samples every ``1/multi_stream_target_qps``, skipped intervals, validity by intervals at the
target percentile, find-peak over N; ``multistream_v05.py``), no early stopping, the r0.5
summary (``results_v05.py``) and the v0.5 ``mlperf.conf`` (``mlperf_v0.5.conf``).

    from mlperf_jax.loadgen import rules
    settings = rules.v0_5.configure(lg.TestSettings(scenario=...), "resnet50", "MultiStream")

:data:`V0_5_TABLE` holds every v0.5 number this package uses, each with its source, so a reader
can check them.  Sources (read for this table):

* ``CONF``: mlcommons/inference branch r0.5 (head 413dbabc), ``v0.5/mlperf.conf``.
* ``TSI``: same branch, ``loadgen/test_settings_internal.cc`` and ``test_settings.h``.
* ``LOADGEN``: same branch, ``loadgen/loadgen.cc``.
* ``POLICY``: mlcommons/inference_policies@32c6bfa, ``inference_rules.adoc`` (the v0.5 rules).

Where they disagree the LoadGen wins, because it is what decided VALID in v0.5; the notes say
where (SSD-ResNet34's MultiStream bound: policy 66 ms, LoadGen 1/15 s = 66.67 ms; MultiStream
search: policy "binary search, then reduce by one on failure", LoadGen doubling then bisection
with no re-check; Offline 24,576 samples: policy only, the r0.5 conf has min_query_count 1).
"""

from __future__ import annotations

import dataclasses
import math
from importlib import resources
from typing import Any

from .settings import ConfigError, EffectiveSettings, TestScenario, TestSettings, parse_config

__all__ = ["Sourced", "RulesProfile", "V0_5_TABLE", "V0_5_MODELS", "current", "v0_5", "PROFILES",
           "get", "value", "profile_of"]

CONF = "mlcommons/inference@r0.5 (413dbabc) v0.5/mlperf.conf"
TSI = "mlcommons/inference@r0.5 loadgen/test_settings_internal.cc"
LOADGEN = "mlcommons/inference@r0.5 loadgen/loadgen.cc"
POLICY = "mlcommons/inference_policies@32c6bfa inference_rules.adoc"


@dataclasses.dataclass(frozen=True)
class Sourced:
    """A rule value and where it comes from."""

    value: Any
    source: str
    note: str = ""


V0_5_MODELS = ("resnet50", "mobilenet", "ssd-mobilenet", "ssd-resnet34", "gnmt")


def _v05_table() -> dict[tuple[str, str, str], Sourced]:
    """(model, scenario or "*", key) -> Sourced."""
    t: dict[tuple[str, str, str], Sourced] = {}
    qsl = {"resnet50": 1024, "mobilenet": 1024, "ssd-mobilenet": 256, "ssd-resnet34": 64, "gnmt": 3_903_900}
    server_ms = {"resnet50": 15, "mobilenet": 10, "ssd-mobilenet": 10, "ssd-resnet34": 100, "gnmt": 250}
    ms_qps = {"resnet50": 20.0, "mobilenet": 20.0, "ssd-mobilenet": 20.0, "ssd-resnet34": 15.0, "gnmt": 10.0}
    policy_ms_bound = {"resnet50": 50, "mobilenet": 50, "ssd-mobilenet": 50, "ssd-resnet34": 66, "gnmt": 100}
    for m in V0_5_MODELS:
        gnmt = m == "gnmt"

        def conf(scn: str, key: str, own: bool = False) -> str:
            """The conf line a value comes from: the model's own line, or the wildcard's."""
            return f"{CONF} {m if own else '*'}.{scn}.{key}"

        t[m, "*", "performance_sample_count"] = Sourced(
            qsl[m], conf("*", "performance_sample_count_override", True), "policy 'QSL Size' column agrees")
        for sc in ("SingleStream", "MultiStream", "Server", "Offline"):
            t[m, sc, "min_duration_ms"] = Sourced(60_000, conf(sc, "min_duration"),
                                                  "policy: '60 seconds' for every scenario")
        t[m, "SingleStream", "target_latency_percentile"] = Sourced(
            0.90, conf("SingleStream", "target_latency_percentile"))
        t[m, "SingleStream", "min_query_count"] = Sourced(1024, conf("SingleStream", "min_query_count"),
                                                          "policy: '1024 queries and 60 seconds'")
        t[m, "MultiStream", "target_qps"] = Sourced(ms_qps[m], conf("MultiStream", "target_qps", ms_qps[m] != 20.0))
        t[m, "MultiStream", "max_async_queries"] = Sourced(1, conf("MultiStream", "max_async_queries"))
        t[m, "MultiStream", "interval_ms"] = Sourced(
            1000.0 / ms_qps[m], TSI + " target_latency = max_async_queries / multi_stream_target_qps",
            f"policy 'Multi-Stream latency constraint' says {policy_ms_bound[m]} ms"
            + ("; the LoadGen's ticks are 1/15 s = 66.67 ms apart and decide validity" if m == "ssd-resnet34" else ""))
        t[m, "MultiStream", "target_latency_percentile"] = Sourced(
            0.97 if gnmt else 0.99, conf("MultiStream", "target_latency_percentile", gnmt),
            "policy: 99% for image models, 97% otherwise")
        t[m, "MultiStream", "min_query_count"] = Sourced(
            90_112 if gnmt else 270_336, conf("MultiStream", "min_query_count", gnmt),
            "policy: 270,336 for image models, 90,112 otherwise")
        t[m, "MultiStream", "samples_per_query"] = Sourced(
            4, conf("MultiStream", "samples_per_query"), "the starting N; find-peak searches upward from it")
        t[m, "Server", "target_latency_ms"] = Sourced(
            server_ms[m], conf("Server", "target_latency", server_ms[m] != 10),
            "policy 'Server latency constraint' agrees")
        t[m, "Server", "target_latency_percentile"] = Sourced(
            0.97 if gnmt else 0.99, conf("Server", "target_latency_percentile", gnmt))
        t[m, "Server", "min_query_count"] = Sourced(
            90_112 if gnmt else 270_336, conf("Server", "min_query_count", gnmt))
        t[m, "Server", "runs"] = Sourced(5, POLICY + " 'Server: 5'", "not enforced by the LoadGen")
        t[m, "Offline", "min_sample_count"] = Sourced(
            24_576, POLICY + " Scenarios table 'At least 24,576'",
            "r0.5 conf: *.Offline.min_query_count = 1; mlperf_v0.5.conf adds the policy floor")
    t["*", "*", "qsl_rng_seed"] = Sourced(3133965575612453542, CONF + " *.*.qsl_rng_seed")
    t["*", "*", "sample_index_rng_seed"] = Sourced(665484352860916858, CONF + " *.*.sample_index_rng_seed")
    t["*", "*", "schedule_rng_seed"] = Sourced(3622009729038561421, CONF + " *.*.schedule_rng_seed")
    t["*", "MultiStream", "valid_if_intervals_at_percentile_below"] = Sourced(
        2, LOADGEN + " PerformanceSummary::PerfConstraintsMet (query_intervals >= 2 fails)")
    t["*", "MultiStream", "find_peak"] = Sourced(
        "double N until a run fails, then bisect until lower + 1 >= upper",
        TSI.replace(".cc", ".h") + " WidenPerformanceField/MidOfBoundaries/IsFinished; " + LOADGEN + " FindBoundaries",
        "policy text: 'binary search ... if one run fails, reduce by one and try again' (not what r0.5 did)")
    t["*", "*", "early_stopping"] = Sourced(False, LOADGEN + " (no early stopping before v2.0)")
    return t


V0_5_TABLE: dict[tuple[str, str, str], Sourced] = _v05_table()


def value(model: str, scenario: str, key: str) -> Any:
    """The v0.5 value of ``key`` for ``model`` in ``scenario`` (falling back to wildcards)."""
    for k in ((model, scenario, key), (model, "*", key), ("*", scenario, key), ("*", "*", key)):
        if k in V0_5_TABLE:
            return V0_5_TABLE[k].value
    raise KeyError(f"no v0.5 rule {key!r} for {model} {scenario}")


@dataclasses.dataclass(frozen=True)
class RulesProfile:
    """One round's rules: its name (``TestSettings.rules``), a one-line description for the
    logs, and the mlperf.conf it applies before a user.conf."""

    name: str
    title: str
    conf_file: str

    def describe(self) -> str:
        return f"{self.name}: {self.title}"

    def conf_path(self) -> str:
        return str(resources.files(__package__).joinpath(self.conf_file))

    def configure(self, settings: TestSettings, model: str, scenario: str,
                  user_conf: str | None = None) -> TestSettings:
        """Set ``settings.rules``, apply this round's mlperf.conf, then ``user_conf``."""
        settings.rules = self.name
        if self.name == current.name:  # exactly as before rules existed: the built-in mlperf.conf
            return settings.from_config(user_conf, model, scenario)
        settings.from_config(user_conf, model, scenario, mlperf_conf=self.conf_path())
        if self.name == v0_5.name:
            _apply_v05_multistream_keys(settings, model, [self.conf_path()] + ([user_conf] if user_conf else []))
        return settings


def _apply_v05_multistream_keys(settings: TestSettings, model: str, paths: list[str]) -> None:
    """The r0.5 FromConfig also read MultiStream.target_qps and MultiStream.max_async_queries
    (fields that later LoadGens dropped); later files win, lookup order as the official."""
    for path in paths:
        with open(path) as f:
            kv = parse_config(f.read(), path)
        for key, field, conv in (("target_qps", "multi_stream_target_qps", float),
                                 ("max_async_queries", "multi_stream_max_async_queries", int)):
            for k in (f"{model}.MultiStream.{key}", f"*.MultiStream.{key}", f"{model}.*.{key}", f"*.*.{key}"):
                if k in kv:
                    try:
                        setattr(settings, field, conv(float(kv[k][1])))
                    except ValueError:
                        raise ConfigError(f"{k}: expected a number, got {kv[k][1]!r}") from None
                    break


current = RulesProfile("current", "this LoadGen's default semantics (mlcommons-loadgen 6.0, its mlperf.conf)",
                       "mlperf.conf")
v0_5 = RulesProfile("v0.5", "MLPerf Inference v0.5 (mlcommons/inference r0.5 LoadGen and v0.5/mlperf.conf; "
                    "inference_policies@32c6bfa)", "mlperf_v0.5.conf")
PROFILES = {p.name: p for p in (current, v0_5)}


def get(name: str) -> RulesProfile:
    """The profile called ``name``; ConfigError naming the choices otherwise."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"rules: unknown rules {name!r}; expected one of {', '.join(PROFILES)}") from None


def profile_of(settings: TestSettings | EffectiveSettings) -> RulesProfile:
    r = settings.requested if isinstance(settings, EffectiveSettings) else settings
    return get(getattr(r, "rules", current.name))


def effective(requested: TestSettings, eff: EffectiveSettings) -> EffectiveSettings:
    """The r0.5 TestSettingsInternal differences: MultiStream's rate, queue depth and bound
    (``target_latency = max_async_queries / multi_stream_target_qps``)."""
    if profile_of(requested) is not v0_5 or eff.scenario != TestScenario.MultiStream:
        return eff
    qps, ma = requested.multi_stream_target_qps, requested.multi_stream_max_async_queries
    if isinstance(qps, bool) or not isinstance(qps, (int, float)) or not math.isfinite(qps) or qps <= 0:
        raise ConfigError(f"multi_stream_target_qps: must be a finite number > 0, got {qps!r}")
    if isinstance(ma, bool) or not isinstance(ma, int) or ma < 1:
        raise ConfigError(f"multi_stream_max_async_queries: must be an integer >= 1, got {ma!r}")
    return eff.replace(target_qps=float(qps), max_async_queries=ma, target_latency_ns=int(ma / qps * 1e9))
