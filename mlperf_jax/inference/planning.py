"""Before a test: how long its settings make it, how to shorten it for a trial, and
``--target_qps=auto`` (measure the SUT briefly, then set the expected rate from it).

A first run with the rules' settings can take hours without a word (Offline: 24,576 samples at
the LoadGen's default expectation of 1 sample/s), so the CLI says up front what the settings
imply.  The formulas follow this LoadGen's rules (``loadgen/settings.py`` EffectiveSettings,
``schedule.py`` generate_queries, ``core.py`` issue loops), which are the official LoadGen's:

* Offline: one query of ``max(min_query_count, int(1.1 x min_duration x expected QPS))``
  samples; it lasts samples / throughput.
* Server: Poisson arrivals at ``target_qps`` until both min_duration has passed and
  min_query_count queries were scheduled: ``max(min_duration, min_query_count / target_qps)``.
* SingleStream, MultiStream: the next query goes out when the previous one completes, until
  both minimums are met: ``max(min_duration, min_query_count x query latency)``.  The LoadGen
  pre-generates ``max(min_query_count, ceil(2 x min_duration / expected latency) + 1)`` queries,
  so a SUT more than twice as fast as the expected latency runs out of them (INVALID).
* MultiStream under the v0.5 rules: a query every ``1 / multi_stream_target_qps``, so
  ``max(min_duration, min_query_count / multi_stream_target_qps)``.
* Accuracy: every accuracy sample once (Server: still Poisson-scheduled at target_qps).

``measure`` runs short PerformanceOnly tests of this LoadGen (logs discarded, before the real
test, so nothing of it is timed there): Offline for throughput (Offline, Server), the scenario
itself for query latency (SingleStream, MultiStream).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time

from mlperf_jax.loadgen import rules as _rules
from mlperf_jax.loadgen.early_stopping import MinPassingQueriesFinder
from mlperf_jax.loadgen.settings import EffectiveSettings, TestMode, TestScenario, TestSettings

__all__ = ["Estimate", "Measurement", "estimate", "trial_overrides", "plan_lines", "parse_target_qps",
           "measure", "apply_measurement", "auto_target", "SERVER_FRACTION", "OFFLINE_FACTOR", "TRIAL_MIN_DURATION_MS", "LONG_RUN_S"]

# Server's target_qps from --target_qps=auto: this fraction of the measured Offline throughput
# (Poisson arrivals at 100% of peak throughput queue without bound; --mode=find_peak searches for
# the highest QPS that meets the latency bound). Dynamic batching at a latency bound sustains far
# less than Offline's big batches; half the probe's rate left the tiny ResNet VALID where 0.8
# overloaded it (p99 ~500 ms against 15 ms).
SERVER_FRACTION = 0.5
# Offline: the LoadGen sizes its one query as 1.1 x min_duration x offline_expected_qps, so a SUT
# faster than expected (warm caches, a probe that saw compile stalls) ends before min_duration and
# is INVALID; 1.5 x the probe keeps a faster-than-measured SUT on the clock (the probe measured
# 5,321 samples/s for a SUT that ran 6,790 warm).
OFFLINE_FACTOR = 1.5
TRIAL_MIN_DURATION_MS = 5_000       # the suggested --min_duration_ms for a trial run
LONG_RUN_S = 120.0                  # above this expected duration, say how to shorten it
PROBE_BUDGET_S = 2.5                # --target_qps=auto: time spent measuring, about
PROBE_LOADED_SAMPLES = 64           # samples the probe loads (the real test loads its own)
PROBE_MAX_DURATION_MS = 120_000     # a SUT that stops answering ends a probe here


@dataclasses.dataclass(frozen=True)
class Measurement:
    """What ``measure`` found: samples/s (Offline probe) or seconds per query (stream probes)."""

    scenario: TestScenario             # the scenario the probe ran
    samples_per_second: float
    query_latency_s: float | None      # mean query latency (SingleStream/MultiStream probes)
    samples: int
    queries: int
    seconds: float                     # wall time of the probes, compilation excluded


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Expected length of a test: ``seconds`` for ``queries`` queries of ``samples`` samples."""

    seconds: float
    queries: int
    samples: int
    why: str                           # how the counts follow from the settings
    rate: str                          # the rate assumed, in words, with its source
    warnings: tuple[str, ...] = ()


def parse_target_qps(text: str | None) -> float | str | None:
    """The --target_qps flag: None (unset), a number > 0, or "auto".  ValueError otherwise."""
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return "auto"
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"--target_qps={text}: expected a number > 0 or 'auto'") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"--target_qps={text}: must be a finite number > 0 (or 'auto')")
    return v


def _effective(settings: TestSettings, total: int, performance: int) -> EffectiveSettings:
    """The settings the LoadGen will run with (as start_test derives them)."""
    eff = _rules.effective(settings, EffectiveSettings.from_requested(settings, total, performance))
    if eff.performance_sample_count > total:
        eff = eff.replace(performance_sample_count=total)
    return eff


def _fixed_rate_multistream(eff: EffectiveSettings) -> bool:
    return eff.scenario == TestScenario.MultiStream and _rules.profile_of(eff) is _rules.v0_5


def _g(x: float) -> str:
    return f"{x:,.4g}" if x < 1e4 else f"{x:,.0f}"


def _caps(eff: EffectiveSettings, queries: int, seconds: float, per_query_s: float,
          warnings: list[str]) -> tuple[int, float]:
    """Apply max_query_count and max_duration (they end the run early, as errors)."""
    if eff.max_query_count and queries > eff.max_query_count:
        queries = eff.max_query_count
        seconds = min(seconds, queries * per_query_s)
        warnings.append(f"max_query_count {eff.max_query_count:,} ends the run before the minimums (INVALID)")
    if eff.max_duration_ms and seconds > eff.max_duration_ms / 1000.0:
        seconds = eff.max_duration_ms / 1000.0
        queries = min(queries, max(1, int(seconds / per_query_s))) if per_query_s > 0 else queries
        warnings.append(f"max_duration {eff.max_duration_ms / 1000.0:g} s ends the run before the minimums "
                        "(INVALID)")
    return queries, seconds


def _performance(eff: EffectiveSettings, m: Measurement | None) -> Estimate:
    r = eff.requested
    md = eff.min_duration_ms / 1000.0
    mq = eff.min_query_count
    warnings: list[str] = []
    sc = eff.scenario
    if sc == TestScenario.Offline:
        samples = eff.samples_per_query
        if eff.sample_concatenate_permutation and samples % eff.performance_sample_count:
            samples += eff.performance_sample_count - samples % eff.performance_sample_count
        from_duration = int(1.1 * md * eff.target_qps)
        if r.performance_issue_unique:
            why = f"1 query of the {samples:,} loaded samples (performance_issue_unique)"
        else:
            why = (f"1 query of {samples:,} samples = max(min_query_count {r.min_query_count:,}, "
                   f"1.1 x min_duration {md:g} s x expected {_g(eff.target_qps)} samples/s = {from_duration:,})")
        if m is not None:
            rate, rate_s = m.samples_per_second, f"{_g(m.samples_per_second)} samples/s (measured)"
        else:
            rate, rate_s = eff.target_qps, f"{_g(eff.target_qps)} samples/s (offline_expected_qps)"
        seconds = samples / rate
        if seconds < md:
            warnings.append(f"at {_g(rate)} samples/s the query is answered before min_duration {md:g} s "
                            "(INVALID); raise the expected QPS")
        _, seconds = _caps(eff, 1, seconds, seconds, warnings)
        return Estimate(seconds, 1, samples, why, rate_s, tuple(warnings))
    if sc == TestScenario.Server or _fixed_rate_multistream(eff):
        qps = eff.target_qps
        queries = max(mq, int(md * qps) + 1)
        seconds = max(md, mq / qps)
        key = "server_target_qps" if sc == TestScenario.Server else "multi_stream_target_qps"
        what = "Poisson arrivals" if sc == TestScenario.Server else "a query every 1/target_qps"
        why = (f"{what} at {_g(qps)} queries/s until both min_duration {md:g} s and min_query_count "
               f"{mq:,} are reached: ~{queries:,} queries")
        rate_s = f"{_g(qps)} queries/s ({key})"
        if m is not None and sc == TestScenario.Server and qps > m.samples_per_second:
            warnings.append(f"target_qps {_g(qps)} is above the measured throughput "
                            f"{_g(m.samples_per_second)} samples/s: queries will pile up (INVALID)")
        queries, seconds = _caps(eff, queries, seconds, 1.0 / qps, warnings)
        return Estimate(seconds, queries, queries * eff.samples_per_query, why, rate_s, tuple(warnings))
    # SingleStream / MultiStream (current rules): back to back.
    expected_latency = 1.0 / eff.target_qps
    if m is not None and m.query_latency_s:
        latency, rate_s = m.query_latency_s, f"{_g(m.query_latency_s * 1e3)} ms per query (measured)"
    else:
        key = "single" if sc == TestScenario.SingleStream else "multi"
        latency = expected_latency
        rate_s = f"{_g(expected_latency * 1e3)} ms per query ({key}_stream_expected_latency_ns)"
    needed = max(mq, math.ceil(md / latency))
    period_ns = int(1e9 / eff.target_qps)
    gen_ns = 2 * eff.target_duration_ms * 1_000_000
    generated = max(mq, -(-gen_ns // period_ns) + 1) if gen_ns > 0 and period_ns > 0 else mq
    why = (f"queries back to back until both min_duration {md:g} s and min_query_count {mq:,} are "
           f"reached: ~{needed:,} queries")
    queries, seconds = needed, max(md, mq * latency)
    if needed > generated:
        queries, seconds = generated, generated * latency
        warnings.append(f"the LoadGen generates {generated:,} queries for the expected latency "
                        f"{_g(expected_latency * 1e3)} ms; at {_g(latency * 1e3)} ms they run out before "
                        "min_duration (INVALID); set the expected latency nearer the real one")
    queries, seconds = _caps(eff, queries, seconds, latency, warnings)
    return Estimate(seconds, queries, queries * eff.samples_per_query, why, rate_s, tuple(warnings))


def _accuracy(eff: EffectiveSettings, m: Measurement | None) -> Estimate:
    n = eff.accuracy_sample_count
    sc = eff.scenario
    if sc == TestScenario.Server:
        qps = eff.target_qps
        return Estimate(n / qps, n, n, f"every one of the {n:,} accuracy samples once, Poisson-scheduled",
                        f"{_g(qps)} queries/s (server_target_qps)")
    if m is not None:
        sps = m.samples_per_second if m.query_latency_s is None else eff.samples_per_query / m.query_latency_s
        rate_s = f"{_g(sps)} samples/s (measured)"
    elif sc == TestScenario.Offline:
        sps, rate_s = eff.target_qps, f"{_g(eff.target_qps)} samples/s (offline_expected_qps)"
    else:
        sps = eff.samples_per_query * eff.target_qps
        rate_s = f"{_g(sps)} samples/s (the expected latency)"
    q = n if sc != TestScenario.MultiStream else -(-n // eff.samples_per_query)
    return Estimate(n / sps, 1 if sc == TestScenario.Offline else q, n,
                    f"every one of the {n:,} accuracy samples once", rate_s)


def estimate(settings: TestSettings, qsl_total: int, qsl_performance: int,
             measured: Measurement | None = None) -> Estimate:
    """Expected length of the test ``settings`` describe (its mode decides which runs count;
    SubmissionRun is accuracy then performance; FindPeakPerformance counts its first run)."""
    eff = _effective(settings, qsl_total, qsl_performance)
    mode = TestMode(settings.mode)
    if mode == TestMode.AccuracyOnly:
        return _accuracy(eff, measured)
    perf = _performance(eff, measured)
    if mode == TestMode.SubmissionRun:
        acc = _accuracy(eff, measured)
        return dataclasses.replace(perf, seconds=perf.seconds + acc.seconds,
                                   why=f"accuracy: {acc.why}; then performance: {perf.why}")
    if mode == TestMode.FindPeakPerformance:
        return dataclasses.replace(perf, why=f"first run: {perf.why}; the search adds more runs")
    return perf


def _trial_query_count(eff: EffectiveSettings) -> int:
    """Offline: 1.  Otherwise the fewest queries early stopping needs for the scenario's
    percentile (as results.py asks: h(t=1) + 1 for Single/MultiStream, h(t=0) for Server)."""
    if eff.scenario == TestScenario.Offline:
        return 1
    p = eff.target_latency_percentile
    f = MinPassingQueriesFinder()
    return f(0, p, 0.0, 0.99) if eff.scenario == TestScenario.Server else f(1, p, 0.0, 0.99) + 1


def trial_overrides(settings: TestSettings, qsl_total: int, qsl_performance: int,
                    measured: Measurement | None = None) -> tuple[dict[str, int], Estimate]:
    """Flags for a short trial run (not valid for submission) and its expected length."""
    eff = _effective(settings, qsl_total, qsl_performance)
    flags = {"min_duration_ms": TRIAL_MIN_DURATION_MS, "min_query_count": _trial_query_count(eff)}
    trial = dataclasses.replace(settings, mode=TestMode.PerformanceOnly, **flags)
    return flags, estimate(trial, qsl_total, qsl_performance, measured)


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.3g} s"
    if seconds < 90 * 60:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def plan_lines(settings: TestSettings, qsl_total: int, qsl_performance: int,
               measured: Measurement | None = None) -> list[str]:
    """What the CLI says before a test: expected duration, why, and how to shorten it."""
    est = estimate(settings, qsl_total, qsl_performance, measured)
    sc = TestScenario(settings.scenario).name
    mode = TestMode(settings.mode).name
    if (TestMode(settings.mode) == TestMode.AccuracyOnly and measured is None
            and TestScenario(settings.scenario) != TestScenario.Server):
        # nothing paces these runs but the SUT: the expected QPS/latency settings say nothing
        return [f"expected duration: the SUT's ({sc} {mode}: {est.why}, as fast as it answers; "
                "--target_qps=auto measures its rate first)"]
    lines = [f"expected duration: about {human(est.seconds)} ({sc} {mode}: {est.why}; at {est.rate})"]
    lines += [f"WARNING: {w}" for w in est.warnings]
    if TestMode(settings.mode) != TestMode.AccuracyOnly and est.seconds > LONG_RUN_S:
        flags, trial = trial_overrides(settings, qsl_total, qsl_performance, measured)
        lines.append("for a quick trial (NOT valid for submission): "
                     + " ".join(f"--{k}={v}" for k, v in flags.items())
                     + f" (about {human(trial.seconds)})"
                     + ("; --target_qps=auto measures the SUT's rate first" if measured is None else ""))
    return lines


# ------------------------------------------------------------------------------ --target_qps=auto
def measure(sut, qsl, scenario: TestScenario, settings: TestSettings, *,
            budget_s: float = PROBE_BUDGET_S) -> Measurement:
    """Run short PerformanceOnly probes of this LoadGen against ``sut`` (logs discarded).

    Offline probes (for Offline and Server) give samples/s; SingleStream and MultiStream
    probes give the mean query latency.  Each probe sizes the next from what it saw until
    about ``budget_s`` has been spent; the last (largest) probe is reported.  RuntimeError if
    a probe fails.
    """
    from mlperf_jax import loadgen as lg
    scenario = TestScenario(scenario)
    probe = TestScenario.Offline if scenario in (TestScenario.Offline, TestScenario.Server) else scenario
    spq = int(settings.multi_stream_samples_per_query) if probe == TestScenario.MultiStream else 1
    batch = int(getattr(sut, "max_batch", 0) or 16)
    loaded = max(1, min(int(qsl.performance_sample_count), max(PROBE_LOADED_SAMPLES, spq)))
    n = 2 * batch if probe == TestScenario.Offline else 3
    start = time.perf_counter()
    result = None
    for _ in range(4):
        s = TestSettings(scenario=probe, mode=TestMode.PerformanceOnly, min_duration_ms=0, min_query_count=n,
                         max_duration_ms=PROBE_MAX_DURATION_MS, performance_sample_count_override=loaded,
                         multi_stream_samples_per_query=spq)
        with tempfile.TemporaryDirectory() as logs:  # start_test(outdir=None) would write to the cwd
            r = lg.start_test(sut, qsl, s, outdir=logs)
        summ = r.summary
        if summ is None or summ.sample_count == 0 or r.errors:
            raise RuntimeError("a short probe of the SUT failed: "
                               + (r.errors[0] if r.errors else "no sample was answered"))
        if probe == TestScenario.Offline:
            sps = float(summ.samples_per_second)
            took, latency = summ.sample_count / sps, None
        else:
            lat_ns = summ.sample_latency_mean if probe == TestScenario.SingleStream else summ.query_latency_mean
            latency = max(lat_ns, 1) / 1e9
            took, sps = summ.query_count * latency, spq / latency
        result = Measurement(probe, sps, latency, int(summ.sample_count), int(summ.query_count), took)
        left = budget_s - (time.perf_counter() - start)
        if left < 0.25 * budget_s:
            break
        per = took / max(1, n)
        n = max(2 * n, min(int(0.9 * left / per), n * 64)) if per > 0 else 2 * n
    assert result is not None
    return result


def auto_target(sut, qsl, settings: TestSettings, *, budget_s: float = PROBE_BUDGET_S
                ) -> tuple[Measurement | None, list[str]]:
    """--target_qps=auto: measure (when the scenario has a rate to set) and apply."""
    sc = TestScenario(settings.scenario)
    if _rules.profile_of(settings) is _rules.v0_5 and sc == TestScenario.MultiStream:
        return None, [f"--target_qps=auto: MultiStream under the v0.5 rules issues at the rules' fixed rate "
                      f"(multi_stream_target_qps {_g(settings.multi_stream_target_qps)}); nothing to set"]
    m = measure(sut, qsl, sc, settings, budget_s=budget_s)
    return m, apply_measurement(settings, m)


def apply_measurement(settings: TestSettings, m: Measurement) -> list[str]:
    """Set the scenario's expected rate from ``m``; the lines say what was measured and set."""
    sc = TestScenario(settings.scenario)
    head = (f"--target_qps=auto: measured {m.samples:,} samples in {m.queries:,} "
            f"{m.scenario.name} quer{'y' if m.queries == 1 else 'ies'} ({m.seconds:.2f} s, before the test, "
            "not part of it)")
    if sc == TestScenario.Offline:
        settings.offline_expected_qps = OFFLINE_FACTOR * m.samples_per_second
        return [f"{head}: {_g(m.samples_per_second)} samples/s; offline_expected_qps set to "
                f"{OFFLINE_FACTOR:g} x that = {_g(settings.offline_expected_qps)} (the query must outlast "
                "min_duration even if the SUT runs faster than the probe saw)"]
    if sc == TestScenario.Server:
        settings.server_target_qps = SERVER_FRACTION * m.samples_per_second
        return [f"{head}: {_g(m.samples_per_second)} samples/s; server_target_qps set to {SERVER_FRACTION:g} x "
                f"that = {_g(settings.server_target_qps)} (headroom for the latency bound; --mode=find_peak "
                "searches for the highest QPS that meets it)"]
    field = f"{'single' if sc == TestScenario.SingleStream else 'multi'}_stream_expected_latency_ns"
    setattr(settings, field, float(m.query_latency_s * 1e9))
    return [f"{head}: mean query latency {_g(m.query_latency_s * 1e3)} ms; {field} set to "
            f"{getattr(settings, field):.0f}"]
