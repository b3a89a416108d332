"""How far a result's runs spread, and the seed's run-to-run criterion for vision.

Spread: min, max and coefficient of variation (CV = sample standard deviation / mean, n-1 in the
denominator) of time to train and of epochs to converge, over the runs that converged. That is
the CV training_policies uses to choose a benchmark's number of runs (``CONTRIBUTING.md``,
"How to choose the number of submission runs": "Coefficient of Variation (CV) = standard
deviation / mean"; its table's std is the sample one: rgat at batch 4096 shows 0.0347926187 for
the 20 epochs in mlperf_logging's ``rcp_checker/training_5.1.0/rcps_rgat.json``).

The vision criterion, "5 runs, 90% of runs on the same system within 5%", is not in any version
of ``training_rules.adoc`` (TP v0.5 at ``6e02163``, § Benchmark Results, gives only the run
counts, "based on a combination of the variance of the benchmark result, the cost of each run,
and the likelihood of convergence": Vision 5, Translation 10, Recommendation "run 100, use first
50 that converge", RL 20; ``CONTRIBUTING.md`` and the issues on run counts, #85, #199, #297, give
no band either). It reads as the rationale for those counts that the MLPerf Training Benchmark
paper gives (Mattson et al., MLSys 2020, arXiv:1910.01500), whose wording was not checked here and
which may speak of results rather than runs; MLCommons' v1.0 training results page puts the spread
left in a result at "very roughly +/- 2.5%" for imaging. Here it is checked on the runs
themselves, read as follows:

- the centre is the **median** time to train of the converged runs: the rules' own centre (a
  submitter who launched more runs must submit "the N consecutive runs closest to the median")
  and, unlike the mean, not pulled by the outlier being judged;
- a run is **within 5%** when ``|t - median| <= 0.05 * median``; a run that did not converge is
  outside (the rules count it as infinitely slow);
- the criterion is **met** when at least 90% of the runs are within: ``within / n >= 0.9``, so 5
  of 5 runs, 9 of 10; with fewer runs than the criterion names it is shown but marked as such.

Vision benchmarks here: resnet50, ssd, maskrcnn (the v0.5 table's Vision area). For the others the
same check is printed as information, not as a criterion of theirs.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import textwrap
from typing import Sequence

VISION = ("resnet50", "ssd", "maskrcnn")
BAND = 0.05          # "within 5%"
FRACTION = 0.9       # "90% of runs"
RUNS = 5             # "5 runs"


@dataclasses.dataclass
class Spread:
    """min, max, mean and CV of some numbers (``cv`` is ``None`` for fewer than 2)."""

    n: int
    min: float | None
    max: float | None
    mean: float | None
    cv: float | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def spread(values: Sequence[float]) -> Spread:
    vals = [float(v) for v in values]
    if not vals:
        return Spread(0, None, None, None, None)
    mean = statistics.fmean(vals)
    cv = statistics.stdev(vals) / mean if len(vals) >= 2 and mean != 0 else None
    return Spread(len(vals), min(vals), max(vals), mean, cv)


@dataclasses.dataclass
class BandCheck:
    """The vision criterion on one result's runs."""

    n: int
    median_s: float | None
    within: list[int]                    # run ids inside the band
    outside: list[tuple[int, str]]       # (run id, why: "+7.2%" or "did not converge")
    met: bool
    applies: bool                        # a vision benchmark
    enough_runs: bool                    # at least RUNS runs
    band: float = BAND
    fraction: float = FRACTION

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["outside"] = [{"run": r, "why": w} for r, w in self.outside]
        d["rule"] = (f"{RUNS} runs, {self.fraction:.0%} of runs within {self.band:.0%} of the "
                     "median time to train of the converged runs")
        return d


def band_check(results: Sequence, benchmark: str = "", *, band: float = BAND,
               fraction: float = FRACTION) -> BandCheck:
    """``results``: RunResults (``run``, ``converged``, ``time_to_train_s``)."""
    times = [r.time_to_train_s for r in results if r.converged]
    med = statistics.median(times) if times else None
    within, outside = [], []
    for r in results:
        if not r.converged:
            outside.append((r.run, "did not converge"))
        elif abs(r.time_to_train_s - med) <= band * med:
            within.append(r.run)
        else:
            outside.append((r.run, f"{(r.time_to_train_s - med) / med:+.1%}"))
    n = len(results)
    met = n > 0 and len(within) >= math.ceil(round(fraction * n, 9))
    return BandCheck(n, med, within, outside, met, benchmark in VISION, n >= RUNS, band, fraction)


@dataclasses.dataclass
class Variance:
    time_to_train_s: Spread
    epochs: Spread
    band: BandCheck

    def to_dict(self) -> dict:
        return {"time_to_train_s": self.time_to_train_s.to_dict(),
                "epochs_to_converge": self.epochs.to_dict(), "band": self.band.to_dict()}


def analyse(results: Sequence, benchmark: str = "") -> Variance:
    conv = [r for r in results if r.converged]
    return Variance(spread([r.time_to_train_s for r in conv]), spread([r.epochs for r in conv]),
                    band_check(results, benchmark))


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def lines(v: Variance, unit: str = "s", width: int = 118) -> list[str]:
    """The lines under the time-to-train table (wrapped at ``width``)."""
    t, e, b = v.time_to_train_s, v.epochs, v.band
    out = []
    if t.n:
        out.append(f"run-to-run spread ({t.n} converged run(s)): time to train min "
                   f"{_num(t.min, '.2f')} {unit}, max {_num(t.max, '.2f')} {unit}, CV "
                   f"{_num(t.cv, '.1%')};")
        out.append(f"  epochs to converge min {_num(e.min, '.2f')}, max {_num(e.max, '.2f')}, "
                   f"CV {_num(e.cv, '.1%')}")
    else:
        out.append("run-to-run spread: no converged run")
    label = "vision criterion" if b.applies else "vision criterion (information only here)"
    verdict = "met" if b.met else "NOT met"
    if not b.enough_runs:
        verdict += f" (it asks for {RUNS} runs, {b.n} here)"
    med = "-" if b.median_s is None else f"{b.median_s:.2f} {unit}"
    out.append(f"{label}: {len(b.within)}/{b.n} runs within {b.band:.0%} of the median {med} "
               f"({b.fraction:.0%} needed): {verdict}")
    if b.outside:
        out.append("outside the band: " + ", ".join(f"run {r} ({w})" for r, w in b.outside))
    return [w for line in out for w in textwrap.wrap(line, width, subsequent_indent="  ")]
