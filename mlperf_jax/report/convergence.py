"""Convergence check: do a workdir's runs need no fewer epochs than the reference convergence points
(RCPs) allow?

The rules (docs/MLPERF_RULES.md § 1.4 "RCPs", mlcommons/training_policies § RCPs) and
mlperf-logging's ``rcp_checker``: each RCP is a list of epochs-to-converge of reference runs at one
batch size. Its mean drops the fastest and the slowest point (4 each for unet3d); a one-sided
t-test at p = 0.05 (equal variances, the RCP's stdev for both sides, the rules' N-2 olympic
submission runs) gives the fewest mean epochs a submission may need. Points slower than the
interpolation of their neighbours are pruned first; a batch size between two points is
interpolated, one below the smallest is held to the smallest point, one above the largest has no
RCP. A submission faster than the RCP mean but within the bound has its score scaled by
``RCP mean / submission mean``.

The bound is computed in closed form here (``mean + t_ppf(alpha, dof) * stdev * sqrt(1/n1 + 1/n2)``)
rather than by the official checker's bisection; the tests hold the two to the same numbers.

Which RCPs: those mlperf-logging ships for the ruleset the logs were written for. Rulesets 0.6.0
and 0.7.0 (the only ones our logs are written for) have none; then the RCP file the benchmark's
config module cites (``rcp_checker/training_X/rcps_<bench>.json``, e.g. ResNet-50's LARS points in
``mlperf_jax/configs/resnet50.py``) is used and named. Tiny-track runs train a synthetic task no
RCP describes: they are not checked.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
from typing import Mapping, Sequence

import mlperf_logging
import scipy.stats

from mlperf_jax.report import logread

ALPHA = 0.05
RCP_DIR = os.path.join(os.path.dirname(mlperf_logging.__file__), "rcp_checker")
_ALIASES = {"resnet": "resnet50"}  # MLPerf name -> this project's benchmark (config module) name


@dataclasses.dataclass
class Point:
    """One reference convergence point (or one interpolated between two)."""

    name: str
    batch_size: int
    mean: float
    stdev: float
    min_epochs: float  # the fewest mean epochs a submission may need at this batch size
    hyperparams: dict = dataclasses.field(default_factory=dict)

    @property
    def max_speedup(self) -> float:
        return self.mean / self.min_epochs if self.min_epochs else math.inf


@dataclasses.dataclass
class ConvergenceResult:
    """The verdict for one workdir; ``passed`` is None when no check applies."""

    benchmark: str
    config: str
    passed: bool | None
    verdict: str  # one line
    source: str = ""  # the RCP file used, and why that one
    batch_size: int | None = None
    epochs: list[float] = dataclasses.field(default_factory=list)  # per run; inf: not converged
    mean_epochs: float | None = None  # olympic mean of the runs' epochs to converge
    point: Point | None = None
    match: str = ""  # "exact", "interpolated", "below smallest", "above largest", "none"
    norm_factor: float = 1.0  # RCP mean / submission mean when faster than the mean, else 1


def _olympic(values: Sequence[float], drop: int) -> float:
    v = sorted(values)
    kept = v[drop:len(v) - drop] if len(v) > 2 * drop else v
    return float(sum(kept) / len(kept))


def min_acceptable_mean(mean: float, stdev: float, n_ref: int, n_subm: int,
                        alpha: float = ALPHA) -> float:
    """The smallest submission mean whose one-sided t-test against the reference (equal variance,
    ``stdev`` on both sides) still has p > alpha."""
    if stdev == 0:
        return float(mean)
    dof = n_ref + n_subm - 2
    bound = mean + scipy.stats.t.ppf(alpha, dof) * stdev * math.sqrt(1 / n_ref + 1 / n_subm)
    return float(max(bound, 0.0))


def submission_runs(benchmark: str) -> int:
    """How many runs the rules score for ``benchmark`` (mlperf_logging's table)."""
    from mlperf_logging.benchmark_meta import get_result_file_counts
    return int(get_result_file_counts("training").get(benchmark, 5))


def points(raw: Mapping[str, Mapping], benchmark: str) -> list[Point]:
    """Pruned reference points, by batch size, from an RCP json's records."""
    drop = _drop(benchmark)
    n_subm = submission_runs(benchmark) - 2  # as mlperf_logging's rcp_checker counts them
    pts = []
    for name, rec in raw.items():
        ep = [float(e) for e in rec.get("Epochs to converge", rec.get("samples to converge", []))]
        mean, sd = _olympic(ep, drop), _pstdev(ep)
        pts.append(Point(name, int(rec["BS"]), mean, sd,
                         min_acceptable_mean(mean, sd, len(ep) - 2 * drop, n_subm),
                         dict(rec.get("Hyperparams", {}))))
    pts.sort(key=lambda p: p.batch_size)
    if not pts:
        return pts
    fastest = min(pts, key=lambda p: p.mean)  # no smaller batch may converge slower than it
    pts = [p for p in pts if p.batch_size >= fastest.batch_size]
    i = 1
    while i < len(pts) - 1:  # drop a point slower than the line through its neighbours
        if pts[i].mean > _interp(pts[i].batch_size, pts[i - 1], pts[i + 1], benchmark).mean:
            del pts[i]  # and test the next point against the same left neighbour
        else:
            i += 1
    return pts


def _drop(benchmark: str) -> int:
    """Points the RCP mean drops at each end: 4 for unet3d, 1 for the rest (rcp_checker)."""
    return 4 if benchmark == "unet3d" else 1


def _pstdev(values: Sequence[float]) -> float:
    """Population standard deviation of all the points (as mlperf_logging's rcp_checker)."""
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def _interp(bs: int, lo: Point, hi: Point, benchmark: str) -> Point:
    f = (bs - lo.batch_size) / (hi.batch_size - lo.batch_size)
    mean = lo.mean + f * (hi.mean - lo.mean)
    sd = lo.stdev + f * (hi.stdev - lo.stdev)
    n = submission_runs(benchmark)  # an interpolated point counts as 2N reference runs
    return Point(f"{benchmark}_interp_{bs}", bs, mean, sd,
                 min_acceptable_mean(mean, sd, 2 * n, n - 2))


def compare(epochs: Sequence[float], batch_size: int, pts: Sequence[Point], benchmark: str
            ) -> tuple[bool | None, str, Point | None, float, float | None]:
    """``(passed, match, point, norm_factor, olympic mean epochs)`` of runs' epochs to converge
    (``inf`` for a run that did not converge) against pruned points."""
    drop = _drop(benchmark)
    if sum(math.isinf(e) for e in epochs) > drop:
        return False, "insufficient convergence", None, 1.0, None
    mean = _olympic([1e9 if math.isinf(e) else e for e in epochs], drop)
    exact = [p for p in pts if p.batch_size == batch_size]
    lower = [p for p in pts if p.batch_size < batch_size]
    upper = [p for p in pts if p.batch_size > batch_size]
    if exact:
        point, match = exact[0], "exact"
    elif lower and upper:
        point, match = _interp(batch_size, lower[-1], upper[0], benchmark), "interpolated"
    elif upper:
        point, match = pts[0], "below smallest"
    else:
        return (False if pts else None), ("above largest" if pts else "none"), None, 1.0, mean
    ok = mean >= point.min_epochs
    norm = point.mean / mean if ok and mean < point.mean else 1.0
    return ok, match, point, norm, mean


def find_rcp_file(benchmark: str, ruleset: str) -> tuple[str | None, str]:
    """The RCP json for ``benchmark`` and why: the ruleset's own, else the one its config cites."""
    own = os.path.join(RCP_DIR, f"training_{ruleset}", f"rcps_{benchmark}.json")
    if os.path.isfile(own):
        return own, f"mlperf_logging RCPs of ruleset {ruleset}"
    module = f"mlperf_jax.configs.{_ALIASES.get(benchmark, benchmark)}"
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return None, f"no reference convergence points for ruleset {ruleset}"
    with open(spec.origin) as f:
        pattern = rf"rcp_checker/training_(\d+\.\d+\.\d+)/rcps_{re.escape(benchmark)}\.json"
        cited = re.findall(pattern, f.read())
    for version in sorted(set(cited), key=lambda v: tuple(map(int, v.split("."))), reverse=True):
        path = os.path.join(RCP_DIR, f"training_{version}", f"rcps_{benchmark}.json")
        if os.path.isfile(path):
            return path, (f"ruleset {ruleset} has no RCPs; using those of ruleset {version} that "
                          f"{module.replace('.', '/')}.py cites")
    return None, f"no reference convergence points for ruleset {ruleset}"


def log_ruleset(path: str) -> str:
    """The checker ruleset a log is written for: 0.7.0 (``:::MLLOG``) or 0.6.0 (``:::MLL``)."""
    with open(path, encoding="latin-1") as f:
        head = f.read(1 << 16)
    return "0.7.0" if ":::MLLOG " in head else "0.6.0"


def epochs_to_converge(path: str) -> tuple[float, int | None, str | None]:
    """``(epochs, global batch size, MLPerf benchmark name)`` of one log: as the RCP checker reads
    it, the epoch of the last ``eval_accuracy`` before a successful ``run_stop`` (inf otherwise)."""
    epoch, bs, bench, status = math.inf, None, None, None
    for _, key, value, meta in logread.parse_mlperf_log(path):
        if key == "global_batch_size":
            bs = int(value)
        elif key == "submission_benchmark":
            bench = str(value)
        elif key == "eval_accuracy":
            epoch = float(meta.get("epoch_num", meta.get("samples_count", math.inf)))
        elif key == "run_stop":
            status = meta.get("status")
    return (epoch if status == "success" else math.inf), bs, bench


def check(workdir: str, log_paths: Sequence[str] | None = None, *,
          rcp_path: str | None = None) -> ConvergenceResult:
    """The convergence verdict for a finished training workdir (its ``results.json`` and logs;
    ``log_paths``: only these of its runs, e.g. the ones packaged; ``rcp_path``: an RCP json to
    use instead of the one found for the logs' ruleset)."""
    res = logread.load_results(workdir)
    config = str(res.get("config") or "?")
    if log_paths is None:
        log_paths = [t.path for t in logread.train_logs(workdir)]
    paths = list(log_paths)
    if not paths:
        raise logread.ReportError(f"{workdir}: no result_N.txt logs")
    read = [epochs_to_converge(p) for p in paths]
    epochs = [e for e, _, _ in read]
    bench = next((b for _, _, b in read if b), str(res.get("benchmark", "?")))
    sizes = {b for _, b, _ in read if b is not None}
    bs = sizes.pop() if len(sizes) == 1 else None
    out = ConvergenceResult(bench, config, None, "", epochs=epochs, batch_size=bs)
    if res.get("tiny_track") or "tiny" in config:
        out.verdict = (f"{bench} ({config} config): tiny track on a synthetic task, which no "
                       "reference convergence point describes: not checked")
        return out
    ruleset = log_ruleset(paths[0])
    path, why = (rcp_path, "given") if rcp_path else find_rcp_file(bench, ruleset)
    out.source = why if path is None else f"{path} ({why})"
    if path is None:
        out.verdict = f"{bench} ({config} config): {why}: not checked"
        return out
    if bs is None:
        out.passed = False
        out.verdict = f"{bench} ({config} config): the logs do not agree on one global_batch_size"
        return out
    with open(path) as f:
        pts = points(json.load(f), bench)
    passed, match, point, norm, mean = compare(epochs, bs, pts, bench)
    out.passed, out.match, out.point, out.norm_factor = passed, match, point, norm
    out.mean_epochs = mean
    n = len(epochs)
    if match == "insufficient convergence":
        out.verdict = (f"{bench} ({config} config, batch {bs}): "
                       f"{sum(math.isinf(e) for e in epochs)} of {n} runs did not converge: FAIL")
        return out
    if point is None:
        out.verdict = (f"{bench} ({config} config, batch {bs}): no RCP at or above this batch size "
                       f"in {os.path.basename(path)} (new RCPs needed): FAIL")
        return out
    where = {"exact": f"RCP {point.name}", "interpolated": f"RCP interpolated at batch {bs}",
             "below smallest": f"smallest-batch RCP {point.name} (batch {bs} is below it)"}[match]
    few = "" if n >= 2 * _drop(bench) + 1 else f" (only {n} runs: plain mean)"
    verdict = "within the rules' bound: PASS" if passed else "faster than the rules allow: FAIL"
    out.verdict = (f"{bench} ({config} config, batch {bs}): mean epochs to converge "
                   f"{mean:.2f}{few} vs {where}: mean {point.mean:.2f}, at least "
                   f"{point.min_epochs:.2f} allowed; {verdict}"
                   + (f"; score scaled by {norm:.4f}" if norm != 1.0 else ""))
    return out


__all__ = ["ConvergenceResult", "Point", "check", "compare", "points", "find_rcp_file",
           "min_acceptable_mean", "epochs_to_converge", "submission_runs"]
