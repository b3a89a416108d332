"""``python -m mlperf_jax.report summary``: per-benchmark speedups against reference times and
their weighted geometric mean, per system and per chip. A CUSTOM SUMMARY, NOT AN MLPERF SCORE.

    python -m mlperf_jax.report summary --results=runs/ --reference=ref.json [--weights=w.json]
        [--json=summary.json]

Why the label: MLPerf has no official summary score. The training rules define a *custom summary
result* as "the weighted geometric mean of an arbitrary set of results from a specific submission"
and say MLPerf "endorses this methodology for computing custom summary results but does not
endorse any official summary result" (mlcommons/training_policies, training_rules.adoc,
commit d73e20f1). The results messaging guidelines add that a composite result "is not sanctioned
by MLCommons and may not be represented as an official or verified MLPerf result or score", and
that derived metrics (per-chip here) "must not be presented as official or verified MLPerf
metrics" (mlcommons/policies, MLPerf_Results_Messaging_Guidelines.adoc, commit c195f80f).

Inputs
  --results    results.json files (``WORKDIR/results.json`` as training writes it) or directories
               searched for them, repeated or comma-separated. Each gives one benchmark's olympic
               mean (``score_minutes``); a result with ``score_valid`` false or no score is listed
               and left out of the mean. System: ``system_name`` (or ``system``) in results.json,
               else its ``devices`` ("1 x cpu"), else one unnamed system. Chips: ``device_count``,
               else ``devices[].count``, else the runs' ``device_count`` (``chip_count``).
  --reference  reference times, one per benchmark, as
                 JSON  ``{"resnet50": 30.5, "ssd": 12.0}`` (minutes), or
                       ``{"name": "...", "unit": "minutes"|"seconds",
                          "times": {"resnet50": 30.5 | {"time": 30.5, "chips": 8}}}``
                 CSV   header ``benchmark,minutes`` or ``benchmark,seconds``, optional ``chips``
               ``chips`` (default 1) is the chip count the reference time was measured on.
  --weights    optional: JSON ``{"resnet50": 2, "ssd": 1}``, CSV ``benchmark,weight``, or inline
               ``resnet50=2,ssd=1``. Equal weights when absent. A scored benchmark without a
               weight is an error; weight 0 leaves a benchmark out.

Outputs, per system
  speedup_b          = reference_minutes_b / olympic_mean_minutes_b           (higher is faster)
  per_chip_speedup_b = (reference_minutes_b x reference_chips_b) / (minutes_b x chips_b),
                       the ratio of chip-minutes (needs ``device_count``)
  summary            = exp(sum_b w_b ln s_b / sum_b w_b) over the benchmarks with a valid result,
                       a reference and w_b > 0.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
from typing import Mapping, Sequence

LABEL = "CUSTOM SUMMARY, NOT AN MLPERF SCORE"
RULES_NOTE = (
    "MLPerf endorses the weighted geometric mean as a method for custom summary results but does "
    "not endorse any official summary result (training_policies, training_rules.adoc); a "
    "composite or per-chip figure may not be presented as an official or verified MLPerf result "
    "or score (policies, MLPerf_Results_Messaging_Guidelines.adoc).")
UNNAMED_SYSTEM = "(unnamed system)"


class SummaryError(ValueError):
    """Bad input: one line for the user."""


@dataclasses.dataclass
class Reference:
    minutes: float
    chips: int = 1


@dataclasses.dataclass
class Row:
    benchmark: str
    minutes: float | None  # the olympic mean; None: no valid score
    chips: int | None
    reference: Reference | None
    weight: float
    tiny_track: bool
    source: str
    note: str = ""

    @property
    def speedup(self) -> float | None:
        if self.minutes is None or self.reference is None or self.minutes <= 0:
            return None
        return self.reference.minutes / self.minutes

    @property
    def per_chip_speedup(self) -> float | None:
        if self.speedup is None or not self.chips:
            return None
        return self.speedup * self.reference.chips / self.chips


@dataclasses.dataclass
class SystemSummary:
    system: str
    rows: list[Row]
    geomean: float | None
    per_chip_geomean: float | None
    used: list[str]  # benchmarks in the mean


def weighted_geomean(values: Sequence[float], weights: Sequence[float]) -> float:
    """``exp(sum w ln v / sum w)``; values must be > 0 and the weights sum > 0."""
    if len(values) != len(weights) or not values:
        raise SummaryError("weighted geometric mean of nothing")
    if any(v <= 0 for v in values) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise SummaryError("weighted geometric mean needs values > 0 and weights >= 0 summing > 0")
    return math.exp(sum(w * math.log(v) for v, w in zip(values, weights)) / sum(weights))


# ----------------------------------------------------------------------------- inputs
def _read_table(path: str) -> tuple[object, str]:
    if not os.path.isfile(path):
        raise SummaryError(f"{path}: no such file")
    with open(path, newline="") as f:
        text = f.read()
    if path.lower().endswith(".csv") or not text.lstrip().startswith(("{", "[")):
        return list(csv.DictReader(text.splitlines())), "csv"
    try:
        return json.loads(text), "json"
    except json.JSONDecodeError as e:
        raise SummaryError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def _num(x, what: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise SummaryError(f"{what}: {x!r} is not a number") from None
    if not math.isfinite(v):
        raise SummaryError(f"{what}: {x!r} is not finite")
    return v


def load_reference(path: str) -> dict[str, Reference]:
    """Reference times in minutes, keyed by benchmark (formats: the module docstring)."""
    data, kind = _read_table(path)
    out: dict[str, Reference] = {}
    if kind == "csv":
        if not data:
            raise SummaryError(f"{path}: no rows")
        cols = {c.strip().lower() for c in data[0].keys() if c}
        unit = "minutes" if "minutes" in cols else "seconds" if "seconds" in cols else None
        if "benchmark" not in cols or unit is None:
            raise SummaryError(f"{path}: CSV needs a 'benchmark' column and a 'minutes' or 'seconds' column")
        for row in data:
            row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
            t = _num(row[unit], f"{path}: {row['benchmark']}")
            chips = int(_num(row.get("chips") or 1, f"{path}: {row['benchmark']} chips"))
            out[row["benchmark"]] = Reference(t / 60 if unit == "seconds" else t, chips)
    else:
        if not isinstance(data, dict):
            raise SummaryError(f"{path}: expected a JSON object")
        unit = data.get("unit", "minutes") if "times" in data else "minutes"
        if unit not in ("minutes", "seconds"):
            raise SummaryError(f"{path}: unit {unit!r}: expected 'minutes' or 'seconds'")
        times = data["times"] if "times" in data else data
        if not isinstance(times, dict):
            raise SummaryError(f"{path}: 'times' must be an object of benchmark -> time")
        for bench, v in times.items():
            chips = 1
            if isinstance(v, dict):
                chips = int(_num(v.get("chips", 1), f"{path}: {bench} chips"))
                v = v.get("time", v.get(unit))
            t = _num(v, f"{path}: {bench}")
            out[bench] = Reference(t / 60 if unit == "seconds" else t, chips)
    for bench, r in out.items():
        if r.minutes <= 0 or r.chips <= 0:
            raise SummaryError(f"{path}: {bench}: reference time and chips must be > 0")
    if not out:
        raise SummaryError(f"{path}: no reference times")
    return out


def load_weights(spec: str) -> dict[str, float]:
    """Weights from a JSON/CSV file or an inline ``name=w,name=w`` list."""
    if os.path.isfile(spec) or spec.lower().endswith((".json", ".csv")):
        data, kind = _read_table(spec)
        if kind == "csv":
            try:
                pairs = [(r["benchmark"].strip(), r["weight"]) for r in data]
            except (KeyError, AttributeError):
                raise SummaryError(f"{spec}: CSV needs 'benchmark' and 'weight' columns") from None
        elif isinstance(data, dict):
            pairs = list(data.items())
        else:
            raise SummaryError(f"{spec}: expected a JSON object of benchmark -> weight")
    else:
        pairs = []
        for item in filter(None, (s.strip() for s in spec.split(","))):
            if "=" not in item:
                raise SummaryError(f"--weights: {item!r}: expected NAME=WEIGHT")
            k, v = item.split("=", 1)
            pairs.append((k.strip(), v))
    out = {k: _num(v, f"weight of {k}") for k, v in pairs}
    if any(w < 0 for w in out.values()):
        raise SummaryError("--weights: weights must be >= 0")
    return out


def find_results(paths: Sequence[str]) -> list[str]:
    """results.json files named, or found under the directories named (sorted, no repeats)."""
    found: list[str] = []
    for p in paths:
        if os.path.isfile(p):
            found.append(p)
        elif os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                if "results.json" in files:
                    found.append(os.path.join(root, "results.json"))
        else:
            raise SummaryError(f"{p}: no such file or directory")
    out = list(dict.fromkeys(os.path.normpath(f) for f in found))
    if not out:
        raise SummaryError(f"no results.json under {', '.join(paths)}")
    return out


def _load_json(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise SummaryError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict) or "benchmark" not in data:
        raise SummaryError(f"{path}: not a training results.json (no 'benchmark')")
    return data


# ----------------------------------------------------------------------------- the summary
def chip_count(res: Mapping) -> int | None:
    """The chips a result ran on: ``device_count``, else the one count in ``devices``
    (``[{"count": n, "kind": k}]``), else the runs' ``device_count`` when the olympic-mean runs
    agree; None when unknown (results written before these fields) or ambiguous."""
    def ok(n) -> int | None:
        return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and n > 0 else None
    if ok(res.get("device_count")):
        return ok(res.get("device_count"))
    counts = {ok(d.get("count")) for d in res.get("devices") or [] if isinstance(d, Mapping)}
    if len(counts) == 1 and None not in counts:
        return counts.pop()
    used = set(res.get("score_runs_used") or [])
    counts = {ok(r.get("device_count")) for r in res.get("runs") or []
              if isinstance(r, Mapping) and (not used or r.get("run") in used)}
    return counts.pop() if len(counts) == 1 and None not in counts else None


def system_name(res: Mapping) -> str:
    """``system_name`` (or ``system``) of results.json; else its devices ("8 x TPU v4"), since
    a system with other chips or another chip count is another system; else one unnamed system."""
    name = res.get("system_name") or res.get("system")
    if name:
        return str(name)
    devs = [d for d in res.get("devices") or [] if isinstance(d, Mapping) and d.get("count")]
    if devs:
        return "; ".join(f"{d['count']} x {d.get('kind') or 'device'}" for d in devs)
    return UNNAMED_SYSTEM


def summarize(results: Sequence[tuple[str, Mapping]], reference: Mapping[str, Reference],
              weights: Mapping[str, float] | None = None) -> list[SystemSummary]:
    """One SystemSummary per system from ``(source, results.json dict)`` pairs."""
    systems: dict[str, dict[str, Row]] = {}
    for source, res in results:
        system = system_name(res)
        bench = str(res["benchmark"])
        if bench in systems.setdefault(system, {}):
            raise SummaryError(f"{source}: a second result for {bench} on system {system!r} "
                               f"(first: {systems[system][bench].source}); pass one per benchmark")
        valid = res.get("score_valid", True) and res.get("score_minutes") is not None
        row = Row(bench, float(res["score_minutes"]) if valid else None, chip_count(res),
                  reference.get(bench), 1.0, bool(res.get("tiny_track", False)), source)
        if not valid:
            row.note = "invalid result: left out"
        elif row.reference is None:
            row.note = "no reference time: left out"
        if weights is not None and row.speedup is not None:
            if bench not in weights:
                raise SummaryError(f"--weights: no weight for {bench} (give 0 to leave it out)")
            row.weight = float(weights[bench])
            if row.weight == 0:
                row.note = "weight 0: left out"
        systems[system][bench] = row
    out = []
    for system, rows_by in systems.items():
        rows = sorted(rows_by.values(), key=lambda r: r.benchmark)
        scored = [r for r in rows if r.speedup is not None and r.weight > 0]
        gm = weighted_geomean([r.speedup for r in scored], [r.weight for r in scored]) if scored else None
        pc = (weighted_geomean([r.per_chip_speedup for r in scored], [r.weight for r in scored])
              if scored and all(r.per_chip_speedup is not None for r in scored) else None)
        out.append(SystemSummary(system, rows, gm, pc, [r.benchmark for r in scored]))
    return out


def _f(x: float | None, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def format_summary(summaries: Sequence[SystemSummary], reference_name: str = "") -> str:
    """The table printed by the command, labelled as the rules require."""
    lines = [f"{LABEL}: speedups against reference times"
             + (f" ({reference_name})" if reference_name else "")]
    for s in summaries:
        lines.append("")
        lines.append(f"system: {s.system}")
        hdr = (f"{'benchmark':<14} {'minutes':>10} {'chips':>5} {'ref min':>10} {'ref chips':>9} "
               f"{'weight':>6} {'speedup':>9} {'per chip':>9}  note")
        lines += [hdr, "-" * len(hdr)]
        for r in s.rows:
            ref = r.reference
            note = r.note + ("; " if r.note and r.tiny_track else "") + (
                "tiny track: not an MLPerf result" if r.tiny_track else "")
            lines.append(f"{r.benchmark:<14} {_f(r.minutes):>10} {r.chips or '-':>5} "
                         f"{_f(ref.minutes if ref else None):>10} {ref.chips if ref else '-':>9} "
                         f"{r.weight:>6g} {_f(r.speedup):>9} {_f(r.per_chip_speedup):>9}  {note}")
        lines.append("-" * len(hdr))
        over = f"over {len(s.used)} benchmark(s): {', '.join(s.used) or 'none'}"
        lines.append(f"weighted geometric mean of speedups: {_f(s.geomean, '.4f')}   ({over})")
        lines.append("weighted geometric mean of per-chip speedups: "
                     + (_f(s.per_chip_geomean, '.4f') if s.per_chip_geomean is not None else
                        "- (needs the chip count of every result used: device_count or devices)"))
    lines += ["", f"{LABEL}. {RULES_NOTE}",
              "summary = exp(sum_b w_b ln(ref_b / time_b) / sum_b w_b); per chip: chip-minutes "
              "(time x chips) in place of minutes."]
    return "\n".join(lines)


def to_json(summaries: Sequence[SystemSummary]) -> dict:
    return {"label": LABEL, "rules": RULES_NOTE, "systems": [
        {"system": s.system, "geomean_speedup": s.geomean, "geomean_per_chip_speedup": s.per_chip_geomean,
         "benchmarks_used": s.used,
         "rows": [{"benchmark": r.benchmark, "minutes": r.minutes, "chips": r.chips,
                   "reference_minutes": r.reference.minutes if r.reference else None,
                   "reference_chips": r.reference.chips if r.reference else None,
                   "weight": r.weight, "speedup": r.speedup, "per_chip_speedup": r.per_chip_speedup,
                   "tiny_track": r.tiny_track, "note": r.note, "source": r.source} for r in s.rows]}
        for s in summaries]}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"report: error: summary: {message}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str]) -> int:
    p = _Parser(prog="python -m mlperf_jax.report summary",
                description=f"Speedups and their weighted geometric mean: {LABEL}.")
    p.add_argument("--results", action="append", nargs="+", required=True,
                   help="results.json files or directories holding them (comma-separated or repeated)")
    p.add_argument("--reference", required=True, help="reference times per benchmark (JSON or CSV)")
    p.add_argument("--weights", default=None, help="weights per benchmark (JSON, CSV or name=w,...)")
    p.add_argument("--json", default=None, help="also write the summary as JSON to this path")
    args = p.parse_args(argv)
    try:
        paths = [x for group in args.results for item in group for x in item.split(",") if x]
        files = find_results(paths)
        reference = load_reference(args.reference)
        weights = load_weights(args.weights) if args.weights else None
        summaries = summarize([(f, _load_json(f)) for f in files], reference, weights)
    except SummaryError as e:
        print(f"report: error: summary: {e}", file=sys.stderr)
        return 2
    ref_name = ""
    if args.reference.lower().endswith(".json"):
        with open(args.reference) as f:
            data = json.load(f)
        ref_name = str(data.get("name", "")) if isinstance(data, dict) and "times" in data else ""
    print(format_summary(summaries, ref_name or os.path.basename(args.reference)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(to_json(summaries), f, indent=2)
    return 0
