"""Run aggregation as MLPerf scores it, and the summaries we print and save."""
from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from typing import Sequence

from mlperf_jax import variance as variance_lib


@dataclasses.dataclass
class RunResult:
    """One timed run. ``time_to_train_s`` is run_start..run_stop, compile excluded (it is in
    init); for a resumed run the time before the interruption plus the time after it.
    ``metric`` is the target's primary metric at the last eval (``None``: no eval happened),
    ``metrics`` all of them."""

    run: int
    seed: int
    status: str  # "success" | "aborted"
    time_to_train_s: float
    epochs: float
    samples: int
    metric: float | None
    throughput: float  # train samples (or the benchmark's unit) per second, compile excluded
    throughput_unit: str
    compile_time_s: float
    init_time_s: float
    log_path: str | None = None
    reason: str = ""
    metrics: dict = dataclasses.field(default_factory=dict)
    resumed: int = 0  # how many times this run was resumed from a checkpoint
    rates: dict = dataclasses.field(default_factory=dict)  # the data side's units/s (self-play)
    # the system (0 / "" in results saved before these fields existed)
    device_count: int = 0
    device_kind: str = ""
    # energy of the timed region (mlperf_jax.energy); None: not measured, energy_source says why
    energy_j: float | None = None
    avg_power_w: float | None = None
    energy_source: str = ""
    # compile_time_s's programs, and how many the persistent compilation cache served (None: no
    # cache in use, or a result saved before these fields existed)
    compile_programs: int = 0
    compile_cache_hits: int | None = None

    @property
    def cached_compile(self) -> str:
        """``hits/programs`` (the compile column's second part), ``-`` without a cache."""
        if self.compile_cache_hits is None:
            return "-"
        return f"{self.compile_cache_hits}/{self.compile_programs}"

    @property
    def converged(self) -> bool:
        return self.status == "success"

    @property
    def per_chip_throughput(self) -> float | None:
        return self.throughput / self.device_count if self.device_count else None


@dataclasses.dataclass
class Score:
    value: float | None  # minutes, None when the result is invalid
    used_runs: list[int]
    dropped_runs: list[int]
    valid: bool
    reason: str = ""


def olympic_score(results: Sequence[RunResult], *, drop: int = 1,
                  max_non_converged: int | None = None) -> Score:
    """MLPerf's olympic mean in minutes: drop the ``drop`` fastest and slowest runs, average the rest.

    Non-converged runs count as infinitely slow; up to ``drop`` of them may be among the dropped
    slowest runs (``max_non_converged`` overrides that), more make the result invalid.
    """
    max_nc = drop if max_non_converged is None else max_non_converged
    times = [(r.time_to_train_s if r.converged else math.inf, r.run) for r in results]
    n_nc = sum(1 for t, _ in times if math.isinf(t))
    if len(times) < 2 * drop + 1:
        kept = [(t, i) for t, i in times]
        valid = n_nc == 0 and len(times) > 0
        finite = [t for t, _ in kept if not math.isinf(t)]
        value = sum(finite) / len(finite) / 60 if finite and valid else None
        why = "" if valid else ("no converged run" if not finite else "a run did not converge")
        if len(times) < 2 * drop + 1:
            why = (why + "; " if why else "") + (
                f"{len(times)} run(s) are fewer than the {2 * drop + 1} an olympic mean needs: "
                "plain mean shown")
        return Score(value, [i for _, i in kept], [], valid, why)
    ordered = sorted(times)
    used, dropped = ordered[drop:len(ordered) - drop], ordered[:drop] + ordered[len(ordered) - drop:]
    if n_nc > max_nc:
        return Score(None, [i for _, i in used], [i for _, i in dropped], False,
                     f"{n_nc} runs did not converge; at most {max_nc} may")
    value = sum(t for t, _ in used) / len(used) / 60
    return Score(value, [i for _, i in used], [i for _, i in dropped], True)


def first_converged_score(results: Sequence[RunResult], k: int, *, drop: int = 1) -> Score:
    """MLPerf v0.5 NCF: "run 100, use the first 50 that converge", olympic mean over those."""
    conv = [r for r in results if r.converged][:k]
    if len(conv) < k:
        return Score(None, [r.run for r in conv], [], False,
                     f"only {len(conv)} of the {k} converged runs the rules score were reached "
                     f"in {len(results)} runs")
    s = olympic_score(conv, drop=drop, max_non_converged=0)
    s.reason = (f"first {k} converged runs of {len(results)} scored" +
                (f"; {s.reason}" if s.reason else ""))
    return s


def format_table(benchmark: str, config_name: str, results: Sequence[RunResult], score: Score,
                 target: str, metric: str, synthetic: bool, round: str = "") -> str:
    """The time-to-train table printed at the end of a training command (``target`` as text,
    e.g. ``top1 >= 0.759``)."""
    lines = []
    title = f"Time to train: {benchmark} ({config_name} config{', ' + round if round else ''})"
    if synthetic:
        title += " -- TINY TRACK on synthetic data: not an MLPerf result"
    lines.append(title)
    extra = sorted({k for r in results for k in r.rates})
    hdr = (f"{'run':>3} {'seed':>11} {'status':>8} {'ttt (s)':>9} {'epochs':>7} "
           f"{metric + ' (final)':>14} {'throughput':>18} {'per chip':>11}"
           + "".join(f" {k + '/s':>{max(14, len(k) + 2)}}" for k in extra) + f" {'compile (s)':>11}")
    cached = any(r.compile_cache_hits is not None for r in results)
    # energy columns while the table (with its row marks) stays within 120 columns, else lines
    marks = {r.run: ("" if r.run in score.used_runs else " (dropped)")
             + (f" (resumed{'' if r.resumed == 1 else ' x' + str(r.resumed)})" if r.resumed else "")
             for r in results}
    widest_mark = max(map(len, marks.values()), default=0)
    energy_cols = (any(r.energy_j is not None for r in results)
                   and len(hdr) + len(" energy (J)   avg W") + widest_mark <= 120)
    if energy_cols:
        hdr += f" {'energy (J)':>10} {'avg W':>7}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in results:
        m = "-" if r.metric is None else f"{r.metric:.4f}"
        tp = f"{r.throughput:,.1f} {r.throughput_unit}/s"
        mark = marks[r.run]
        rates = "".join(f" {r.rates[k]:>{max(14, len(k) + 2)},.1f}" if k in r.rates
                        else f" {'-':>{max(14, len(k) + 2)}}" for k in extra)
        chip = "-" if r.per_chip_throughput is None else f"{r.per_chip_throughput:,.1f}"
        energy = (f" {_joules(r.energy_j):>10} {_watts(r.avg_power_w):>7}" if energy_cols else "")
        lines.append(f"{r.run:>3} {r.seed:>11} {r.status:>8} {r.time_to_train_s:>9.2f} "
                     f"{r.epochs:>7.2f} {m:>14} {tp:>18} {chip:>11}{rates} "
                     f"{_compile_cell(r, cached):>11}{energy}{mark}")
    lines.append("-" * len(hdr))
    conv = sum(r.converged for r in results)
    lines.append(f"target: {target}   converged runs: {conv}/{len(results)}")
    if any(r.resumed for r in results):
        lines.append("resumed runs: time to train is the time before the interruption plus the "
                     "time after it")
    if score.value is not None:
        lines.append(f"olympic mean time to train: {score.value:.3f} min "
                     f"({score.value * 60:.2f} s) over runs {sorted(score.used_runs)}"
                     f"{'' if score.valid else ' [INVALID]'}")
    else:
        lines.append("olympic mean time to train: none (result invalid)")
    if score.reason:
        lines.append(f"note: {score.reason}")
    if results:
        mean_tp = sum(r.throughput for r in results) / len(results)
        mean_ct = sum(r.compile_time_s for r in results) / len(results)
        lines.append(f"mean train throughput: {mean_tp:,.1f} {results[0].throughput_unit}/s "
                     f"(compile excluded); mean compile time: {mean_ct:.2f} s")
        if cached:
            lines.append("compile: seconds, then programs loaded from the persistent compilation "
                         "cache / programs compiled (- without a cache)")
        for k in extra:
            vals = [r.rates[k] for r in results if k in r.rates]
            lines.append(f"mean {k} throughput: {sum(vals) / len(vals):,.1f} {k}/s "
                         "(inside the timed run; compile excluded)")
        lines += _system_lines(results, score, energy_cols)
        lines += variance_lib.lines(variance_lib.analyse(results, benchmark))
    return "\n".join(lines)


def _compile_cell(r: RunResult, cached: bool) -> str:
    """``4.27`` or, where a persistent compilation cache was in use, ``0.66 3/3``."""
    return f"{r.compile_time_s:.2f}" + (f" {r.cached_compile}" if cached else "")


def _joules(j: float | None) -> str:
    return "-" if j is None else (f"{j:,.0f}" if j >= 100 else f"{j:.2f}")


def _watts(w: float | None) -> str:
    return "-" if w is None else f"{w:,.1f}"


def _system_lines(results: Sequence[RunResult], score: Score, energy_cols: bool) -> list[str]:
    """Devices, per-chip throughput and energy: the lines under the table."""
    out = []
    known = [r for r in results if r.device_count]
    if known:
        systems = sorted({(r.device_count, r.device_kind) for r in known})
        n = known[0].device_count
        mean_chip = sum(r.per_chip_throughput for r in known) / len(known)
        out.append(f"devices: {'; '.join(f'{c} x {k}' for c, k in systems)}; mean per-chip "
                   f"throughput {mean_chip:,.1f} {known[0].throughput_unit}/s (throughput / {n}:"
                   " derived, not an MLPerf figure)")
    measured = [r for r in results if r.energy_j is not None]
    if not measured:
        why = next((r.energy_source for r in results if r.energy_source), "")
        if why and not why.startswith("not measured"):
            why = f"not measured ({why})"
        out.append(f"energy: {why or 'not measured (no meter ran)'}")
        return [w for line in out for w in textwrap.wrap(line, 118, subsequent_indent="  ")]
    mean_j = sum(r.energy_j for r in measured) / len(measured)
    watts = [r.avg_power_w for r in measured if r.avg_power_w is not None]
    out.append(f"energy: {measured[0].energy_source} -- device counters, not MLPerf's wall-power"
               " measurement")
    line = f"energy of the timed run: mean {_joules(mean_j)} J"
    if watts:
        line += f", mean {_watts(sum(watts) / len(watts))} W"
    line += f" over {len(measured)} run(s)"
    used = [r for r in results if r.run in score.used_runs]
    if used and all(r.energy_j is not None for r in used) and score.valid:
        line += (f"; {_joules(sum(r.energy_j for r in used) / len(used))} J over the runs the "
                 "score uses (as MLPerf's power score averages them)")
    out.append(line)
    if not energy_cols:
        out.append("energy per run: " + ", ".join(
            f"run {r.run} {_joules(r.energy_j)} J / {_watts(r.avg_power_w)} W" for r in measured))
    missing = [r for r in results if r.energy_j is None]
    if missing:
        out.append(f"energy not measured for runs {[r.run for r in missing]}: "
                   f"{missing[0].energy_source or 'no meter ran'}")
    return [w for line in out for w in textwrap.wrap(line, 118, subsequent_indent="  ")]


def energy_summary(results: Sequence[RunResult], score: Score) -> dict:
    """results.json's ``energy``: what was measured and its means (None where nothing was)."""
    measured = [r for r in results if r.energy_j is not None]
    used = [r for r in results if r.run in score.used_runs]
    watts = [r.avg_power_w for r in measured if r.avg_power_w is not None]
    return {
        "measured_runs": [r.run for r in measured],
        "source": (measured[0].energy_source if measured else
                   next((r.energy_source for r in results if r.energy_source), "not measured")),
        "mean_j": sum(r.energy_j for r in measured) / len(measured) if measured else None,
        "mean_avg_power_w": sum(watts) / len(watts) if watts else None,
        "score_runs_mean_j": (sum(r.energy_j for r in used) / len(used)
                              if used and score.valid and all(r.energy_j is not None for r in used)
                              else None),
        "note": "device energy counters (NVML / RAPL), not MLPerf wall-power measurement",
    }


def write_json(path: str, *, benchmark: str, config_name: str, division: str, synthetic: bool,
               target: dict[str, float], metric: str, results: Sequence[RunResult], score: Score,
               round: str = "") -> None:
    payload = {
        "benchmark": benchmark,
        "config": config_name,
        "division": division,
        "round": round,
        "tiny_track": synthetic,
        "note": "tiny track on synthetic data: not an MLPerf result" if synthetic else "",
        "target": {"metric": metric, "thresholds": dict(target)},
        "resumed_runs": [r.run for r in results if r.resumed],
        "runs": [dataclasses.asdict(r) for r in results],  # each loads back as RunResult(**run)
        "score_minutes": score.value,
        "score_valid": score.valid,
        "score_runs_used": score.used_runs,
        "score_runs_dropped": score.dropped_runs,
        "score_note": score.reason,
        "mean_throughput": (sum(r.throughput for r in results) / len(results)) if results else None,
        "throughput_unit": results[0].throughput_unit if results else None,
        "mean_compile_time_s": (sum(r.compile_time_s for r in results) / len(results))
        if results else None,
        "devices": [{"count": c, "kind": k} for c, k in
                    sorted({(r.device_count, r.device_kind) for r in results if r.device_count})],
        "mean_per_chip_throughput": (
            sum(r.per_chip_throughput for r in results) / len(results)
            if results and all(r.device_count for r in results) else None),
        "energy": energy_summary(results, score),
        "variance": variance_lib.analyse(results, benchmark).to_dict(),
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
