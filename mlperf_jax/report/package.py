"""``python -m mlperf_jax.report package --runs=runs/ --out=submission/``: the MLPerf training
submission tree of finished runs, which mlperf-logging's own tools read unchanged::

    OUT/<org>/systems/<system>.json                         system description (system_desc.py)
    OUT/<org>/results/<system>/<benchmark>/result_<i>.txt   the runs' MLPerf logs
    OUT/<org>/benchmarks/<benchmark>/implementations/mlperf_jax/README.md   what made them
    OUT/mlperf_jax_package.json                             what was packaged, skipped, checked

The ruleset is the one the logs are written for (``:::MLLOG`` lines: 0.7.0; ``:::MLL`` lines of
``--log_format=v0.6``: 0.6.0). A benchmark folder holds exactly the rules' number of result files
(mlperf_logging ``benchmark_meta``): a workdir with fewer runs is skipped and said so; with more,
the N consecutive runs closest to the median are packaged (training rules, "Benchmark Results").
Tiny-track runs go under a system named ``..._TINY-TRACK-not-an-MLPerf-result`` whose notes say so,
so that every row the result summarizer writes for them carries the label.

After writing, the official package checker and result summarizer are run on the tree (``--nocheck``
skips them) and the commands are printed for anyone to rerun.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys

from mlperf_jax.report import convergence, logread
from mlperf_jax.report import system_desc as sysdesc

MANIFEST = "mlperf_jax_package.json"
IMPL = "mlperf_jax"


class PackageError(ValueError):
    """A user error: one line, exit status 2."""


@dataclasses.dataclass
class Workdir:
    path: str
    results: dict
    logs: list[str]  # the result files to package, in run order
    ruleset: str
    benchmark: str  # MLPerf name (the logs' submission_benchmark)
    platform: str
    division: str
    status: str
    tiny: bool
    note: str = ""
    system: str = ""
    verdict: str = ""


def _head(path: str) -> dict:
    """The ``submission_*`` values of a log (read before ``run_start``)."""
    out = {}
    for _, key, value, _ in logread.parse_mlperf_log(path):
        if key == "run_start":
            break
        if key.startswith("submission_"):
            out[key] = value
    return out


def _choose(runs: list[dict], need: int) -> tuple[int, str]:
    """First index of the ``need`` consecutive runs whose median time is closest to the median of
    all (non-converged runs count as infinitely slow), and a note when that is not all of them."""
    t = [r["time_to_train_s"] if r.get("status") == "success" else 1e18 for r in runs]
    if len(t) == need:
        return 0, ""
    med = sorted(t)[len(t) // 2]
    best = min(range(len(t) - need + 1), key=lambda s: abs(sorted(t[s:s + need])[need // 2] - med))
    return best, (f"runs {best}..{best + need - 1} of {len(t)} packaged: the {need} consecutive "
                  "runs closest to the median (training rules, Benchmark Results)")


def read_workdir(path: str, counts: dict[str, int]) -> Workdir:
    """A finished workdir and the logs to package; PackageError says why it cannot be."""
    try:
        res = logread.load_results(path)
    except logread.ReportError as e:
        raise PackageError(str(e)) from None
    runs = sorted(res.get("runs") or [], key=lambda r: r["run"])
    logs = [os.path.join(path, f"result_{r['run']}.txt") for r in runs]
    missing = [p for p in logs if not os.path.isfile(p)]
    if not runs or missing:
        raise PackageError(f"{path}: " + (f"{missing[0]} is missing" if missing else "no runs"))
    head = _head(logs[0])
    bench = str(head.get("submission_benchmark") or res.get("benchmark"))
    need = counts.get(bench)
    if need is None:
        raise PackageError(f"{path}: {bench} has no MLPerf training result-file count")
    if len(runs) < need:
        raise PackageError(f"{path}: {len(runs)} runs; the rules take exactly {need} result files "
                           f"for {bench} (train with --num_runs={need})")
    start, note = _choose(runs, need)
    tiny = bool(res.get("tiny_track")) or "tiny" in str(res.get("config", ""))
    return Workdir(path, res, logs[start:start + need], convergence.log_ruleset(logs[0]), bench,
                   str(head.get("submission_platform") or "unknown"),
                   str(head.get("submission_division") or res.get("division") or "open"),
                   str(head.get("submission_status") or "research"), tiny, note)


def _train_command(wd: Workdir) -> str:
    r = wd.results
    parts = [f"python -m mlperf_jax.train --benchmark={r.get('benchmark')}",
             f"--config={r.get('config')}" if r.get("config") else "",
             f"--round={r['round']}" if r.get("round") else "", f"--division={wd.division}",
             "--log_format=v0.6" if wd.ruleset == "0.6.0" else "", f"--num_runs={len(r['runs'])}"]
    return " ".join(p for p in parts if p)


def _git_commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + (" (with uncommitted changes)" if sha and dirty else "")


def _readme(bench: str, wds: list[Workdir]) -> str:
    import importlib.metadata as md
    try:
        version = md.version("mlperf-jax")
    except md.PackageNotFoundError:
        version = "unknown"
    lines = [f"# {bench}: mlperf_jax (JAX/Flax)", "",
             f"Implementation: the `mlperf_jax` Python package, version {version}, git commit "
             f"{_git_commit()}. Benchmark definition: `mlperf_jax/benchmarks/"
             f"{wds[0].results.get('benchmark')}.py`; configs: `mlperf_jax/configs/`.", "",
             "Results in this tree, and the commands that made them (config overrides given with "
             "`--config.KEY=VALUE` are not recorded; the hyperparameters as run are in the logs):",
             ""]
    for wd in wds:
        lines += [f"- `results/{wd.system}/{bench}`: `{_train_command(wd)}` (workdir `{wd.path}`)"]
        if wd.tiny:
            lines += [f"  - {sysdesc.TINY_NOTE}."]
        if wd.note:
            lines += [f"  - {wd.note}."]
        lines += [f"  - Convergence: {wd.verdict}"]
    return "\n".join(lines) + "\n"


def _name_systems(wds: list[Workdir], base: str | None) -> None:
    """One system per (platform, division, tiny); names that would collide get ``_<division>``."""
    keys = sorted({(w.platform, w.division, w.tiny) for w in wds})
    names = {k: sysdesc.system_name(k[0], base=base, tiny=k[2]) for k in keys}
    for k in keys:
        if sum(names[j] == names[k] for j in keys) > 1:
            names[k] = sysdesc.system_name(f"{base or k[0]}_{k[1]}", tiny=k[2])
    if len(set(names.values())) < len(keys):
        raise PackageError("runs from different platforms would share --system_name "
                           f"{base!r}; package them separately")
    for w in wds:
        w.system = names[(w.platform, w.division, w.tiny)]


def write_tree(wds: list[Workdir], out: str, org: str) -> tuple[str, list[str]]:
    """Write the tree under ``out/org``; returns its path and the fields nobody here can tell."""
    root = os.path.join(out, org)
    if os.path.exists(root):
        if not os.path.isfile(os.path.join(out, MANIFEST)):
            raise PackageError(f"{root} exists and was not written by this command; "
                               "use another --out")
        shutil.rmtree(root)
    unknown: list[str] = []
    for w in wds:
        desc_path = os.path.join(root, "systems", f"{w.system}.json")
        if not os.path.exists(desc_path):
            desc, unk = sysdesc.describe(w.platform, submitter=org, division=w.division,
                                         status=w.status, system_name=w.system, tiny=w.tiny)
            unknown += [u for u in unk if u not in unknown]
            os.makedirs(os.path.dirname(desc_path), exist_ok=True)
            with open(desc_path, "w") as f:
                json.dump(desc, f, indent=2)
        dest = os.path.join(root, "results", w.system, w.benchmark)
        if os.path.exists(dest):
            raise PackageError(f"{w.path} and another workdir are both {w.benchmark} on system "
                               f"{w.system}; package them separately")
        os.makedirs(dest)
        for i, log in enumerate(w.logs):
            shutil.copyfile(log, os.path.join(dest, f"result_{i}.txt"))
    for bench in sorted({w.benchmark for w in wds}):
        impl = os.path.join(root, "benchmarks", bench, "implementations", IMPL)
        os.makedirs(impl, exist_ok=True)
        with open(os.path.join(impl, "README.md"), "w") as f:
            f.write(_readme(bench, [w for w in wds if w.benchmark == bench]))
    return root, unknown


def commands(root: str, ruleset: str, out: str) -> list[list[str]]:
    """The official checker and summarizer commands for the tree."""
    return [["python", "-m", "mlperf_logging.package_checker", root, "training", ruleset,
             "--log_output", os.path.join(out, "package_checker.log")],
            ["python", "-m", "mlperf_logging.result_summarizer", root, "training", ruleset,
             "--csv", os.path.join(out, "summary.csv")]]


def summary_rows(out: str) -> list[str]:
    """The summarizer's rows (from its CSV: it prints only a heading): system, labels, scores."""
    path = os.path.join(out, "summary.csv")
    if not os.path.isfile(path):
        return []
    from mlperf_logging.benchmark_meta import _ALL_ALLOWED_BENCHMARKS
    benches = {b for v in _ALL_ALLOWED_BENCHMARKS["training"].values() for b in v}
    rows = []
    with open(path) as f:
        for row in csv.DictReader(f):
            scores = [f"{b} {float(v):.4g} min" for b, v in row.items() if b in benches and v]
            tiny = sysdesc.TINY_LABEL in row["system"]
            label = " -- TINY TRACK: not an MLPerf result" if tiny else ""
            rows.append(f"{row['submitter']}/{row['system']} [{row['division']}, "
                        f"{row['availability']}]: {', '.join(scores) or 'no score'}{label}")
    return rows


def run_checks(root: str, ruleset: str, out: str) -> bool:
    """Run the official tools on the tree and print their verdicts; True when both are content."""
    ok = True
    for cmd in commands(root, ruleset, out):
        proc = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, cwd=out)
        text = proc.stdout + proc.stderr
        tool = cmd[2].split(".")[-1]
        if tool == "package_checker":
            passed = proc.returncode == 0 and "PACKAGE CHECKER FOUND NO ERRORS" in text
            errors = [ln for ln in text.splitlines() if ln.startswith(("ERROR", "CRITICAL"))]
            print(f"{tool}: {'no errors, SUCCESS' if passed else 'FOUND ERRORS'}"
                  + "".join(f"\n  {e}" for e in errors[:10]))
        else:
            bad = [ln for ln in text.splitlines() if "ERROR" in ln or "Traceback" in ln]
            passed = proc.returncode == 0 and not bad
            print(f"{tool}: {'ok' if passed else 'FAILED'}" + "".join(f"\n  {e}" for e in bad[:10]))
            for row in summary_rows(out):
                print(f"  {row}")
        ok = ok and passed
    return ok


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"report: error: package: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m mlperf_jax.report package",
                description="the MLPerf training submission tree of finished runs")
    p.add_argument("--runs", required=True, help="a training workdir, or a directory of them")
    p.add_argument("--out", required=True, help="where the tree goes (OUT/ORG/...)")
    p.add_argument("--org", default="mlperf_jax", help="submitter (the tree's top folder)")
    p.add_argument("--system_name", default=None,
                   help="system name (default: the logs' platform, e.g. 1xcpu); tiny-track runs "
                        f"always get the suffix _{sysdesc.TINY_LABEL}")
    p.add_argument("--division", choices=("closed", "open"), default=None,
                   help="package only the runs of this division (default: all)")
    p.add_argument("--nocheck", action="store_true",
                   help="do not run the official package checker and result summarizer")
    return p


def _collect(args) -> tuple[list[Workdir], list[str]]:
    from mlperf_logging.benchmark_meta import get_allowed_benchmarks, get_result_file_counts
    try:
        paths = logread.find_workdirs(args.runs)
    except logread.ReportError as e:
        raise PackageError(str(e)) from None
    if not paths:
        raise PackageError(f"{args.runs}: no training workdir (results.json) in it or below it")
    wds, skipped = [], []
    for p in paths:
        try:
            wds.append(read_workdir(p, get_result_file_counts("training")))
        except (PackageError, logread.ReportError) as e:
            skipped.append(str(e))
    if args.division:
        skipped += [f"{w.path}: division {w.division}, not --division={args.division}"
                    for w in wds if w.division != args.division]
        wds = [w for w in wds if w.division == args.division]
    if not wds:
        raise PackageError("nothing to package: " + "; ".join(skipped))
    # one ruleset per tree: the one most workdirs' logs are written for (ties: the newer)
    used = [w.ruleset for w in wds]
    ruleset = max(set(used), key=lambda r: (used.count(r), r))
    kept = []
    for w in wds:
        allowed = get_allowed_benchmarks("training", ruleset)
        if w.ruleset != ruleset:
            skipped.append(f"{w.path}: logs for ruleset {w.ruleset}, the tree is {ruleset} "
                           "(package it separately)")
        elif w.benchmark not in allowed:
            skipped.append(f"{w.path}: {w.benchmark} is not a benchmark of ruleset {ruleset} "
                           "(mlperf_logging benchmark_meta); the checkers would skip it")
        else:
            kept.append(w)
    if not kept:
        raise PackageError("nothing to package: " + "; ".join(skipped))
    return kept, skipped


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        wds, skipped = _collect(args)
        ruleset = wds[0].ruleset
        for w in wds:
            w.verdict = convergence.check(w.path, w.logs).verdict
        _name_systems(wds, args.system_name)
        os.makedirs(args.out, exist_ok=True)
        root, unknown = write_tree(wds, args.out, sysdesc.sanitize(args.org) or "org")
    except (PackageError, logread.ReportError, OSError) as e:
        print(f"report: error: package: {e}", file=sys.stderr)
        return 2
    fmt = ":::MLLOG lines" if ruleset != "0.6.0" else ":::MLL lines (--log_format=v0.6)"
    print(f"submission tree: {root} (training ruleset {ruleset}: the logs' {fmt})")
    for w in wds:
        print(f"  results/{w.system}/{w.benchmark}: {len(w.logs)} runs from {w.path}"
              + (" -- TINY TRACK on synthetic data: not an MLPerf result" if w.tiny else "")
              + (f"; {w.note}" if w.note else ""))
    for s in skipped:
        print(f"  skipped: {s}")
    if unknown:
        print("system description: not detectable here, fill in before submitting: "
              + ", ".join(unknown))
    numeric = [k for k in ("number_of_nodes", "host_processors_per_node", "accelerators_per_node")
               if k in unknown]
    if numeric:
        print(f"note: the result summarizer reads {', '.join(numeric)} as numbers: it fails until "
              "they are filled in")
    for w in wds:
        print(f"convergence: {w.verdict}")
    print(f"no --rcp-bypass or --seed-checker-bypass: ruleset {ruleset} runs neither the seed nor "
          "the RCP checker (mlperf_logging runs them from 1.0.0, closed division only)")
    if ruleset == "0.6.0":
        print("note: the installed result summarizer reads time in milliseconds; ruleset 0.6.0 "
              "logs stamp seconds, so its minutes are 1000x too small")
    with open(os.path.join(args.out, MANIFEST), "w") as f:
        json.dump({"tree": root, "ruleset": ruleset, "skipped": skipped, "unknown_fields": unknown,
                   "packaged": [{"workdir": w.path, "system": w.system, "benchmark": w.benchmark,
                                 "tiny_track": w.tiny, "logs": w.logs, "note": w.note,
                                 "convergence": w.verdict} for w in wds],
                   "commands": [" ".join(c) for c in commands(root, ruleset, args.out)]},
                  f, indent=2)
    ok = args.nocheck or run_checks(os.path.abspath(root), ruleset, os.path.abspath(args.out))
    print("check it yourself:")
    for c in commands(root, ruleset, args.out):
        print("  " + " ".join(c))
    print("  (the summarizer prints only a heading; its table is in "
          f"{os.path.join(args.out, 'summary.csv')} and summary.json)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
