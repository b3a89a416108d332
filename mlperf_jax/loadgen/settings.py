"""Test settings: the official ``TestSettings`` fields and defaults, and mlperf.conf/user.conf parsing.

Field names, defaults and the config-file key mapping follow the official LoadGen
(``loadgen/test_settings.h`` and ``TestSettings::FromConfig``).  Differences, on purpose:

* Unknown keys, unknown scenarios, malformed lines and out-of-range values raise
  :class:`ConfigError` naming the key (the official parser skips or only logs them).
* The official defaults (``mlperf.conf`` of the LoadGen release we test against) ship with
  the package and are always applied before a user.conf, on every call.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
from importlib import resources
from typing import Any

__all__ = [
    "ConfigError",
    "TestScenario",
    "TestMode",
    "TestSettings",
    "LogOutputSettings",
    "LogSettings",
    "LoggingMode",
    "EffectiveSettings",
    "SCENARIO_NAMES",
    "official_mlperf_conf",
    "UNSUPPORTED",
    "refuse_unsupported",
]


class ConfigError(ValueError):
    """A bad setting or config file entry; the message names the key."""


class TestScenario(enum.IntEnum):
    __test__ = False  # not a pytest class
    SingleStream = 0
    MultiStream = 1
    Server = 2
    Offline = 3

    def __str__(self) -> str:
        # "TestScenario.Offline", as the official pybind11 enum prints (harnesses print and key
        # results by it); the log files write ``.name`` ("Offline"), as the official ToString.
        return f"{type(self).__name__}.{self.name}"


class TestMode(enum.IntEnum):
    __test__ = False
    SubmissionRun = 0
    AccuracyOnly = 1
    PerformanceOnly = 2
    FindPeakPerformance = 3

    def __str__(self) -> str:  # "TestMode.PerformanceOnly", as the official binding
        return f"{type(self).__name__}.{self.name}"


class LoggingMode(enum.IntEnum):
    AsyncPoll = 0
    EndOfTestOnly = 1
    Synchronous = 2

    def __str__(self) -> str:  # "LoggingMode.AsyncPoll", as the official binding
        return f"{type(self).__name__}.{self.name}"


SCENARIO_NAMES = tuple(s.name for s in TestScenario)

_U64 = (1 << 64) - 1


@dataclasses.dataclass
class TestSettings:
    """The official ``mlperf::TestSettings`` (same names, same defaults)."""

    __test__ = False

    scenario: TestScenario = TestScenario.SingleStream
    mode: TestMode = TestMode.PerformanceOnly
    # SingleStream
    single_stream_expected_latency_ns: float = 1_000_000.0
    single_stream_target_latency_percentile: float = 0.90
    # MultiStream
    multi_stream_expected_latency_ns: float = 8_000_000.0
    multi_stream_target_latency_percentile: float = 0.99
    multi_stream_samples_per_query: int = 8
    # Server
    server_target_qps: float = 1.0
    server_target_latency_ns: int = 100_000_000
    server_target_latency_percentile: float = 0.99
    server_coalesce_queries: bool = False
    server_find_peak_qps_decimals_of_precision: int = 1
    server_find_peak_qps_boundary_step_size: float = 1.0
    server_max_async_queries: int = 0
    server_num_issue_query_threads: int = 0
    # Offline
    offline_expected_qps: float = 1.0
    sample_concatenate_permutation: bool = False
    # Test duration
    min_duration_ms: int = 10_000
    max_duration_ms: int = 0
    min_query_count: int = 100
    max_query_count: int = 0
    # Random number generation
    qsl_rng_seed: int = 0
    sample_index_rng_seed: int = 0
    schedule_rng_seed: int = 0
    accuracy_log_rng_seed: int = 0
    accuracy_log_probability: float = 0.0
    accuracy_log_sampling_target: int = 0
    print_timestamps: bool = False
    performance_issue_unique: bool = False
    performance_issue_same: bool = False
    performance_issue_same_index: int = 0
    performance_sample_count_override: int = 0
    accuracy_sample_count_override: int = 0
    test05: bool = False
    test05_qsl_rng_seed: int = 0
    test05_sample_index_rng_seed: int = 0
    test05_schedule_rng_seed: int = 0
    # Token latencies (LLM benchmarks); carried for config compatibility.
    use_token_latencies: bool = False
    ttft_latency: int = 100_000_000
    tpot_latency: int = 100_000_000
    infer_token_latencies: bool = False
    token_latency_scaling_factor: int = 0
    # mlperf_jax: the round whose rules apply (rules.py): "current" (the official 6.0 semantics)
    # or "v0.5".  The two MultiStream fields below are the r0.5 TestSettings' (defaults
    # included); only rules="v0.5" reads them.
    rules: str = "current"
    multi_stream_target_qps: float = 10.0
    multi_stream_max_async_queries: int = 1

    # ------------------------------------------------------------------ config
    def from_config(self, path: str | os.PathLike | None, model: str, scenario: str,
                    *, mlperf_conf: str | os.PathLike | None = None) -> "TestSettings":
        """Apply the official defaults (``mlperf.conf``), then ``path`` (a user.conf).

        ``mlperf_conf`` replaces the built-in defaults file.  ``path`` may be None to apply
        only the defaults.  Returns self.  Raises :class:`ConfigError` naming the key.
        """
        if scenario not in SCENARIO_NAMES:
            raise ConfigError(f"scenario: unknown scenario {scenario!r}; expected one of {', '.join(SCENARIO_NAMES)}")
        if mlperf_conf is None:
            text, name = official_mlperf_conf(), "mlperf.conf (built in)"
        else:
            text, name = _read(mlperf_conf), str(mlperf_conf)
        self._apply(parse_config(text, name), model, scenario, official=True)
        if path is not None:
            self._apply(parse_config(_read(path), str(path)), model, scenario, official=False)
        self.validate()
        return self

    def FromConfig(self, path: str, model: str, scenario: str, conf_type: int = 1) -> int:  # noqa: N802
        """Official-API spelling.  conf_type=1: defaults + user.conf; 0: defaults only."""
        self.from_config(path if conf_type != 0 else None, model, scenario)
        return 0

    def _apply(self, kv: dict[str, tuple[str, str]], model: str, scenario: str, official: bool) -> None:
        def look(scn: str, key: str):
            for k in (f"{model}.{scn}.{key}", f"*.{scn}.{key}", f"{model}.*.{key}", f"*.*.{key}"):
                if k in kv:
                    return kv[k]
            return None

        def num(key_scn: str, key: str, *, integer: bool, mult: float = 1.0, lo=None, hi=None,
                lo_open=False, hi_open=False):
            found = look(key_scn, key)
            if found is None:
                return None
            full, raw = found
            v = _parse_number(full, raw)
            if integer:
                if isinstance(v, float):
                    if not v.is_integer():
                        raise ConfigError(f"{full}: expected an integer, got {raw!r}")
                    v = int(v)
                if v < 0:
                    raise ConfigError(f"{full}: must be >= 0, got {raw!r}")
                v = v * int(mult) if mult != 1.0 else v
                if v > _U64:
                    raise ConfigError(f"{full}: value {raw!r} does not fit in 64 bits")
            else:
                v = float(v) * mult
                if not math.isfinite(v):
                    raise ConfigError(f"{full}: must be finite, got {raw!r}")
            if lo is not None and (v < lo or (lo_open and v == lo)):
                raise ConfigError(f"{full}: value {raw!r} out of range (must be {'>' if lo_open else '>='} {lo / mult if mult != 1.0 else lo})")
            if hi is not None and (v > hi or (hi_open and v == hi)):
                raise ConfigError(f"{full}: value {raw!r} out of range (must be {'<' if hi_open else '<='} {hi / mult if mult != 1.0 else hi})")
            return v

        def boolean(key_scn: str, key: str):
            v = num(key_scn, key, integer=True)
            return None if v is None else bool(v)

        def setv(field: str, v):
            if v is not None:
                setattr(self, field, v)

        m = num(scenario, "mode", integer=True, hi=3)
        if m is not None:
            self.mode = TestMode(m)
        if official:
            for key in ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed",
                        "test05_qsl_rng_seed", "test05_sample_index_rng_seed", "test05_schedule_rng_seed"):
                setv(key, num(scenario, key, integer=True))
            setv("accuracy_log_probability", num(scenario, "accuracy_log_probability", integer=False, mult=0.01, lo=0.0, hi=1.0))
            setv("test05", boolean(scenario, "test05"))
        else:
            # The official LoadGen reads these only from mlperf.conf; a user.conf cannot move them.
            for key in ("qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed", "accuracy_log_probability",
                        "test05", "test05_qsl_rng_seed", "test05_sample_index_rng_seed", "test05_schedule_rng_seed"):
                found = look(scenario, key)
                if found is not None:
                    raise ConfigError(f"{found[0]}: may only be set in mlperf.conf, not in a user.conf "
                                      "(the official LoadGen ignores it there)")
        setv("use_token_latencies", boolean(scenario, "use_token_latencies"))
        if self.use_token_latencies:
            setv("ttft_latency", num("Server", "ttft_latency", integer=True, mult=1_000_000))
            setv("tpot_latency", num("Server", "tpot_latency", integer=True, mult=1_000_000))
        setv("infer_token_latencies", boolean(scenario, "infer_token_latencies"))
        if self.infer_token_latencies:
            setv("token_latency_scaling_factor", num(scenario, "token_latency_scaling_factor", integer=True))
        pct = dict(integer=False, mult=0.01, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        setv("single_stream_target_latency_percentile", num("SingleStream", "target_latency_percentile", **pct))
        setv("multi_stream_target_latency_percentile", num("MultiStream", "target_latency_percentile", **pct))
        setv("multi_stream_samples_per_query", num("MultiStream", "samples_per_query", integer=True, lo=1))
        setv("server_target_latency_percentile", num("Server", "target_latency_percentile", **pct))
        setv("server_target_latency_ns", num("Server", "target_latency", integer=True, mult=1_000_000))
        setv("performance_issue_unique", boolean(scenario, "performance_issue_unique"))
        setv("performance_issue_same", boolean(scenario, "performance_issue_same"))
        setv("performance_issue_same_index", num(scenario, "performance_issue_same_index", integer=True))
        setv("sample_concatenate_permutation", boolean(scenario, "sample_concatenate_permutation"))
        setv("server_coalesce_queries", boolean("Server", "coalesce_queries"))
        setv("server_max_async_queries", num("Server", "max_async_queries", integer=True))
        setv("min_duration_ms", num(scenario, "min_duration", integer=True))
        setv("max_duration_ms", num(scenario, "max_duration", integer=True))
        setv("min_query_count", num(scenario, "min_query_count", integer=True))
        setv("max_query_count", num(scenario, "max_query_count", integer=True))
        setv("performance_sample_count_override", num(scenario, "performance_sample_count_override", integer=True))
        setv("accuracy_sample_count_override", num(scenario, "accuracy_sample_count_override", integer=True))
        setv("single_stream_expected_latency_ns", num("SingleStream", "target_latency", integer=False, mult=1e6, lo=0.0, lo_open=True))
        setv("multi_stream_expected_latency_ns", num("MultiStream", "target_latency", integer=False, mult=1e6, lo=0.0, lo_open=True))
        setv("server_target_qps", num("Server", "target_qps", integer=False, lo=0.0, lo_open=True))
        setv("offline_expected_qps", num("Offline", "target_qps", integer=False, lo=0.0, lo_open=True))
        setv("print_timestamps", boolean(scenario, "print_timestamps"))
        setv("accuracy_log_rng_seed", num(scenario, "accuracy_log_rng_seed", integer=True))
        setv("accuracy_log_sampling_target", num(scenario, "accuracy_log_sampling_target", integer=True))

    # -------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ConfigError naming the first field whose value is out of range."""
        self.scenario = _coerce_enum(TestScenario, self.scenario, "scenario")
        self.mode = _coerce_enum(TestMode, self.mode, "mode")
        for f in ("single_stream_target_latency_percentile", "multi_stream_target_latency_percentile",
                  "server_target_latency_percentile"):
            v = getattr(self, f)
            if not (0.0 < float(v) < 1.0):
                raise ConfigError(f"{f}: must be in (0, 1), got {v!r}")
        for f in ("single_stream_expected_latency_ns", "multi_stream_expected_latency_ns",
                  "server_target_qps", "offline_expected_qps"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{f}: must be a finite number > 0, got {v!r}")
        if not (0.0 <= float(self.accuracy_log_probability) <= 1.0):
            raise ConfigError(f"accuracy_log_probability: must be in [0, 1], got {self.accuracy_log_probability!r}")
        if self.server_find_peak_qps_boundary_step_size <= 0:
            raise ConfigError("server_find_peak_qps_boundary_step_size: must be > 0, "
                              f"got {self.server_find_peak_qps_boundary_step_size!r}")
        for f in ("multi_stream_samples_per_query",):
            if int(getattr(self, f)) < 1:
                raise ConfigError(f"{f}: must be >= 1, got {getattr(self, f)!r}")
        for f in ("server_target_latency_ns", "min_duration_ms", "max_duration_ms", "min_query_count",
                  "max_query_count", "qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed",
                  "accuracy_log_rng_seed", "accuracy_log_sampling_target", "performance_issue_same_index",
                  "performance_sample_count_override", "accuracy_sample_count_override",
                  "server_max_async_queries", "server_num_issue_query_threads",
                  "server_find_peak_qps_decimals_of_precision"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v > _U64:
                raise ConfigError(f"{f}: must be a non-negative integer, got {v!r}")
        if self.performance_issue_unique and self.performance_issue_same:
            raise ConfigError("performance_issue_unique, performance_issue_same: cannot both be true")


# Settings the official TestSettings accepts that this LoadGen does not implement: refused
# (only when set to a non-default value) instead of silently ignored.
#   server_num_issue_query_threads: the official then waits for that many SUT threads to call
#     RegisterIssueQueryThread, which its Python binding does not expose (it hangs).
#   use_token_latencies / infer_token_latencies: LLM token metrics (first-token and
#     per-output-token latencies) are not modelled.  ttft_latency, tpot_latency and
#     token_latency_scaling_factor act only with these on, in the official LoadGen too.
UNSUPPORTED = {
    "server_num_issue_query_threads": "issue threads registered by the SUT are not supported",
    "use_token_latencies": "token latencies (TTFT/TPOT) are not implemented",
    "infer_token_latencies": "inferred token latencies are not implemented",
}


def refuse_unsupported(s: "TestSettings") -> None:
    """Raise ConfigError naming every unsupported setting that is set to a non-default value."""
    default = TestSettings()
    bad = [f"{k} = {getattr(s, k)!r} ({why})" for k, why in UNSUPPORTED.items()
           if getattr(s, k) != getattr(default, k)]
    if bad:
        raise ConfigError("unsupported setting" + ("s" if len(bad) > 1 else "") + ": " + "; ".join(bad))


def _coerce_enum(cls, v, field: str):
    """Accept our enums, names, ints, or the official binding's enum values."""
    try:
        if isinstance(v, cls):
            return v
        if isinstance(v, str):
            return cls[v]
        return cls(int(v))
    except (KeyError, ValueError, TypeError):
        raise ConfigError(f"{field}: invalid value {v!r}; expected one of {', '.join(m.name for m in cls)}") from None


# Every key the official FromConfig understands (plus target_duration, present in the official
# mlperf.conf but read by nothing).
KNOWN_KEYS = frozenset({
    "mode", "qsl_rng_seed", "sample_index_rng_seed", "schedule_rng_seed", "accuracy_log_probability",
    "test05", "test05_qsl_rng_seed", "test05_sample_index_rng_seed", "test05_schedule_rng_seed",
    "use_token_latencies", "ttft_latency", "tpot_latency", "infer_token_latencies",
    "token_latency_scaling_factor", "target_latency_percentile", "samples_per_query", "target_latency",
    "performance_issue_unique", "performance_issue_same", "performance_issue_same_index",
    "sample_concatenate_permutation", "coalesce_queries", "max_async_queries", "min_duration",
    "max_duration", "min_query_count", "max_query_count", "performance_sample_count_override",
    "accuracy_sample_count_override", "target_qps", "print_timestamps", "accuracy_log_rng_seed",
    "accuracy_log_sampling_target", "target_duration",
})


def official_mlperf_conf() -> str:
    return resources.files(__package__).joinpath("mlperf.conf").read_text()


def _read(path) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise ConfigError(f"config file {os.fspath(path)!r}: cannot read it ({e.strerror})") from None


def _parse_number(full: str, raw: str):
    s = raw.strip()
    try:
        if s.lower().startswith(("0x", "-0x", "+0x")):
            return int(s, 16)
        return int(s, 10)
    except ValueError:
        pass
    try:
        return float(s)
    except ValueError:
        raise ConfigError(f"{full}: value needs to be an integer or a number, got {raw!r}") from None


def parse_config(text: str, name: str = "<config>") -> dict[str, tuple[str, str]]:
    """Parse ``model.scenario.key = value`` lines; later lines override earlier ones.

    Returns {full_key: (full_key, raw_value)}.  Raises ConfigError naming the key (or the
    line, when no key can be read) for anything the official format does not allow.
    """
    kv: dict[str, tuple[str, str]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if not body:
            continue
        if "=" not in body:
            raise ConfigError(f"{name}:{lineno}: expected 'model.scenario.key = value', got {line.strip()!r}")
        key, _, value = body.partition("=")
        key, value = key.strip(), value.strip()
        parts = key.rsplit(".", 2)  # model names may contain dots (e.g. wan-2.2-t2v-a14b)
        if len(parts) != 3 or not all(parts) or any(c.isspace() for c in key):
            raise ConfigError(f"{name}:{lineno}: key {key!r} is not of the form model.scenario.key")
        model, scenario, k = parts
        if scenario != "*" and scenario not in SCENARIO_NAMES:
            raise ConfigError(f"{key}: unknown scenario {scenario!r} ({name}:{lineno}); "
                              f"expected one of *, {', '.join(SCENARIO_NAMES)}")
        if k not in KNOWN_KEYS:
            raise ConfigError(f"{key}: unknown key {k!r} ({name}:{lineno})")
        if not value or len(value.split()) != 1:
            raise ConfigError(f"{key}: expected exactly one value ({name}:{lineno}), got {value!r}")
        _parse_number(key, value)
        kv[key] = (key, value)
    return kv


@dataclasses.dataclass
class LogOutputSettings:
    outdir: str = "."
    prefix: str = "mlperf_log_"
    suffix: str = ""
    prefix_with_datetime: bool = False
    copy_detail_to_stdout: bool = False
    copy_summary_to_stdout: bool = False


@dataclasses.dataclass
class LogSettings:
    log_output: LogOutputSettings = dataclasses.field(default_factory=LogOutputSettings)
    log_mode: LoggingMode = LoggingMode.AsyncPoll
    log_mode_async_poll_interval_ms: int = 1000
    enable_trace: bool = True


@dataclasses.dataclass
class EffectiveSettings:
    """The official ``TestSettingsInternal``: what the test actually runs with."""

    requested: TestSettings
    scenario: TestScenario
    mode: TestMode
    samples_per_query: int
    target_qps: float
    target_latency_ns: int
    target_latency_percentile: float
    max_async_queries: int
    target_duration_ms: int
    min_duration_ms: int
    max_duration_ms: int
    min_query_count: int
    max_query_count: int
    min_sample_count: int
    qsl_rng_seed: int
    sample_index_rng_seed: int
    schedule_rng_seed: int
    accuracy_log_rng_seed: int
    accuracy_log_probability: float
    accuracy_log_sampling_target: int
    print_timestamps: bool
    performance_issue_unique: bool
    performance_issue_same: bool
    performance_issue_same_index: int
    performance_sample_count: int
    accuracy_sample_count: int
    sample_concatenate_permutation: bool
    # The QSL's size: loadable sets are capped to it, as the official GenerateLoadableSets
    # does (the logged performance/accuracy counts stay as requested).  0: no cap.
    qsl_total_count: int = 0

    @classmethod
    def from_requested(cls, r: TestSettings, qsl_total: int, qsl_performance: int) -> "EffectiveSettings":
        scenario = TestScenario(r.scenario)
        target_latency_ns = 0
        max_async = 0
        target_qps = 1.0
        if scenario == TestScenario.SingleStream:
            target_qps = 1e9 / r.single_stream_expected_latency_ns
            max_async = 1
            pct = r.single_stream_target_latency_percentile
        elif scenario == TestScenario.MultiStream:
            target_qps = 1e9 / r.multi_stream_expected_latency_ns
            max_async = 1
            pct = r.multi_stream_target_latency_percentile
        elif scenario == TestScenario.Server:
            target_qps = float(r.server_target_qps)
            target_latency_ns = int(r.server_target_latency_ns)
            pct = r.server_target_latency_percentile
            max_async = int(r.server_max_async_queries)
        else:
            pct = 0.99
            target_qps = float(r.offline_expected_qps)
            max_async = 1
        perf_count = r.performance_sample_count_override or qsl_performance
        acc_count = r.accuracy_sample_count_override or qsl_total
        samples_per_query = 1
        min_query_count = int(r.min_query_count)
        target_duration_ms = int(r.min_duration_ms)
        if scenario == TestScenario.MultiStream:
            samples_per_query = int(r.multi_stream_samples_per_query)
        if scenario == TestScenario.Offline:
            target_sample_count = int(1.1 * (target_duration_ms / 1000.0) * target_qps)
            samples_per_query = perf_count if r.performance_issue_unique else max(min_query_count, target_sample_count)
            min_query_count = 1
            target_duration_ms = 0
        if r.sample_concatenate_permutation and scenario == TestScenario.SingleStream:
            expected = int(2.0 * (target_duration_ms / 1000.0) * target_qps)
            min_query_count = max(min_query_count, expected)
            min_query_count += qsl_performance - (min_query_count % qsl_performance)
        return cls(
            requested=r, scenario=scenario, mode=TestMode(r.mode), samples_per_query=samples_per_query,
            target_qps=target_qps, target_latency_ns=target_latency_ns, target_latency_percentile=float(pct),
            max_async_queries=max_async, target_duration_ms=target_duration_ms,
            min_duration_ms=int(r.min_duration_ms), max_duration_ms=int(r.max_duration_ms),
            min_query_count=min_query_count, max_query_count=int(r.max_query_count),
            min_sample_count=min_query_count * samples_per_query, qsl_rng_seed=int(r.qsl_rng_seed),
            sample_index_rng_seed=int(r.sample_index_rng_seed), schedule_rng_seed=int(r.schedule_rng_seed),
            accuracy_log_rng_seed=int(r.accuracy_log_rng_seed),
            accuracy_log_probability=float(r.accuracy_log_probability),
            accuracy_log_sampling_target=int(r.accuracy_log_sampling_target),
            print_timestamps=bool(r.print_timestamps), performance_issue_unique=bool(r.performance_issue_unique),
            performance_issue_same=bool(r.performance_issue_same),
            performance_issue_same_index=int(r.performance_issue_same_index),
            performance_sample_count=int(perf_count), accuracy_sample_count=int(acc_count),
            sample_concatenate_permutation=bool(r.sample_concatenate_permutation),
            qsl_total_count=int(qsl_total),
        )

    def replace(self, **kw: Any) -> "EffectiveSettings":
        return dataclasses.replace(self, **kw)
