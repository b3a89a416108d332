"""Run aggregation as MLPerf scores it, and the summaries we print and save."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Sequence


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

    @property
    def converged(self) -> bool:
        return self.status == "success"


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
           f"{metric + ' (final)':>14} {'throughput':>18}"
           + "".join(f" {k + '/s':>{max(14, len(k) + 2)}}" for k in extra) + f" {'compile (s)':>11}")
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in results:
        m = "-" if r.metric is None else f"{r.metric:.4f}"
        tp = f"{r.throughput:,.1f} {r.throughput_unit}/s"
        mark = "" if r.run in score.used_runs else " (dropped)"
        if r.resumed:
            mark += f" (resumed{'' if r.resumed == 1 else ' x' + str(r.resumed)})"
        rates = "".join(f" {r.rates[k]:>{max(14, len(k) + 2)},.1f}" if k in r.rates
                        else f" {'-':>{max(14, len(k) + 2)}}" for k in extra)
        lines.append(f"{r.run:>3} {r.seed:>11} {r.status:>8} {r.time_to_train_s:>9.2f} "
                     f"{r.epochs:>7.2f} {m:>14} {tp:>18}{rates} {r.compile_time_s:>11.2f}{mark}")
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
        for k in extra:
            vals = [r.rates[k] for r in results if k in r.rates]
            lines.append(f"mean {k} throughput: {sum(vals) / len(vals):,.1f} {k}/s "
                         "(inside the timed run; compile excluded)")
    return "\n".join(lines)


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
        "runs": [dataclasses.asdict(r) for r in results],
        "score_minutes": score.value,
        "score_valid": score.valid,
        "score_runs_used": score.used_runs,
        "score_runs_dropped": score.dropped_runs,
        "score_note": score.reason,
        "mean_throughput": (sum(r.throughput for r in results) / len(results)) if results else None,
        "throughput_unit": results[0].throughput_unit if results else None,
        "mean_compile_time_s": (sum(r.compile_time_s for r in results) / len(results))
        if results else None,
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
