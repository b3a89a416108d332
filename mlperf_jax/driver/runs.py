"""N runs of a benchmark and their score, as MLPerf counts them; resume and result bookkeeping.

``train(...)`` is the library entry point (notebooks, research code); ``mlperf_jax/train.py`` only
turns flags into its arguments.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from typing import Callable

import jax
import ml_collections

from mlperf_jax import benchmarks as benchmarks_lib
from mlperf_jax import results as results_lib
from mlperf_jax import rounds as rounds_lib
from mlperf_jax import sharding as sharding_lib
from mlperf_jax.benchmarks.base import Benchmark
from mlperf_jax.driver.loop import run_once
from mlperf_jax.driver.options import Callbacks, RunOptions, UserError

LOG_FORMATS = ("mllog", "v0.6")


@dataclasses.dataclass
class TrainResult:
    benchmark: str
    config_name: str
    division: str
    round: str
    synthetic: bool
    runs: list[results_lib.RunResult]
    score: results_lib.Score
    checksums: list[float]
    table: str
    results_path: str


@dataclasses.dataclass
class Resolved:
    """A validated config: what ``--dry_run`` prints and what a run starts from."""

    division: str
    round: str
    violations: list[str]      # what closed division rejects (empty when it accepts)
    target: str


def resolve(bench: Benchmark, config: ml_collections.ConfigDict, opts: RunOptions) -> Resolved:
    """Check flags and config before any work. Raises UserError (one line) for mistakes, except
    closed-division violations, which are returned so that ``--dry_run`` can list them."""
    try:
        bench.check_config(config)
    except ValueError as e:
        raise UserError(str(e)) from None
    division = opts.division or config.get("division", "closed")
    if division not in ("closed", "open"):
        raise UserError(f"--division must be closed or open, got {division!r}")
    if opts.num_runs is not None and opts.num_runs <= 0:
        raise UserError(f"--num_runs must be positive, got {opts.num_runs}")
    if opts.seed < 0:
        raise UserError(f"--seed must be non-negative, got {opts.seed}")
    if opts.log_format not in LOG_FORMATS:
        raise UserError(f"--log_format must be one of {', '.join(LOG_FORMATS)}, got "
                        f"{opts.log_format!r}")
    try:
        rnd = opts.round or _default_round(bench.name)
        target = bench.target(config, rnd)
    except ValueError as e:
        raise UserError(str(e)) from None
    if opts.log_format == "v0.6" and rnd != "v0.6":
        raise UserError(f"--log_format=v0.6 writes the v0.6 round's log lines; it needs "
                        f"--round=v0.6, not {rnd}")
    if opts.data_dir is not None and not os.path.isdir(opts.data_dir):
        raise UserError(f"--data_dir {opts.data_dir} does not exist")
    bad: list[str] = []
    if division == "closed":
        if config.get("dataset") == "synthetic":
            raise UserError("the tiny track trains on synthetic data and is open division only; "
                            "use --division=open or a real dataset with --data_dir")
        bad = bench.closed_division_violations(config, bench.reference_config(config))
    if opts.mesh_model <= 0 or jax.device_count() % opts.mesh_model:
        raise UserError(f"--mesh_model={opts.mesh_model} must divide the {jax.device_count()} "
                        "devices")
    n_data = jax.device_count() // opts.mesh_model
    for key in ("global_batch_size", "eval_batch_size"):
        if int(config[key]) % n_data:
            raise UserError(f"config.{key}={config[key]} must be divisible by the {n_data} "
                            "data-parallel devices")
    return Resolved(division, rnd, bad, target.describe())


def _default_round(name: str) -> str:
    """The newest round that has the benchmark (a benchmark of no round: the default round)."""
    try:
        return rounds_lib.default_round(name)
    except ValueError:
        return rounds_lib.DEFAULT_ROUND


def validate(bench: Benchmark, config: ml_collections.ConfigDict, opts: RunOptions) -> Resolved:
    """``resolve`` that also rejects closed-division violations (one line naming the keys)."""
    r = resolve(bench, config, opts)
    if r.violations:
        raise UserError("closed division fixes these hyperparameters: " + ", ".join(r.violations))
    return r


def _config_digest(config: ml_collections.ConfigDict, name: str, extra: dict) -> str:
    blob = json.dumps({"config": config.to_dict(), "benchmark": name, **extra}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _claim_workdir(opts: RunOptions, digest: str) -> None:
    """A workdir holds runs of one set of flags: resuming with other flags is refused, and
    ``--noresume`` clears earlier runs."""
    os.makedirs(opts.workdir, exist_ok=True)
    stamp = os.path.join(opts.workdir, "config_digest.txt")
    if opts.resume and os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().strip() != digest:
                raise UserError(f"workdir {opts.workdir} holds runs with other flags or config; "
                                "use another --workdir or --noresume")
    elif not opts.resume:
        for name in os.listdir(opts.workdir):
            if name.startswith("run_") or name.startswith("result_"):
                p = os.path.join(opts.workdir, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    with open(stamp, "w") as f:
        f.write(digest)


def train(benchmark: str | Benchmark, config: ml_collections.ConfigDict, opts: RunOptions,
          *, print_fn: Callable[[str], None] = print, callbacks: Callbacks | None = None
          ) -> TrainResult:
    """Run a benchmark N times and score it as MLPerf does. Library entry point."""
    bench = benchmarks_lib.get(benchmark) if isinstance(benchmark, str) else benchmark
    resolved = validate(bench, config, opts)
    division, rnd = resolved.division, resolved.round
    opts = dataclasses.replace(opts, round=rnd)
    num_runs = opts.num_runs or int(config.get("num_runs", 5))
    synthetic = config.get("dataset") == "synthetic"
    _claim_workdir(opts, _config_digest(config, bench.name, {
        "division": division, "seed": opts.seed, "fsdp": opts.fsdp, "data_dir": opts.data_dir,
        "round": rnd, "log_format": opts.log_format, "mesh_model": opts.mesh_model}))

    if synthetic:
        print_fn(f"NOTE: {bench.name} runs its TINY TRACK on synthetic data (no --data_dir given):"
                 " the whole time-to-train path runs for real, but the result is not an MLPerf"
                 " result.")
    prepared = bench.prepare_data(config, opts.data_dir)  # one-time, untimed
    if prepared:
        print_fn(f"data preparation (untimed, once): {prepared}")
    mesh = sharding_lib.make_mesh(model=opts.mesh_model)
    print_fn(f"{bench.name}: config {opts.config_name or '?'}, division {division}, round {rnd}, "
             f"target {resolved.target}, {num_runs} runs, mesh {dict(mesh.shape)} of "
             f"{jax.devices()[0].platform}, workdir {opts.workdir}")
    runs: list[results_lib.RunResult] = []
    checksums: list[float] = []
    # v0.5 NCF: launch up to num_runs, score the first `converged_runs_scored` that converge
    scored_k = int(config.get("converged_runs_scored", 0) or 0)
    if scored_k and opts.num_runs is not None and opts.num_runs < scored_k:
        scored_k = 0  # fewer runs asked for than the rule scores: plain olympic mean, said below
        print_fn(f"note: --num_runs={opts.num_runs} is below the {config.converged_runs_scored} "
                 "converged runs the rules score for this benchmark: plain olympic mean")
    for i in range(num_runs):
        if scored_k and sum(r.converged for r in runs) >= scored_k:
            break
        run_dir = os.path.join(opts.workdir, f"run_{i}")
        done_path = os.path.join(run_dir, "result.json")
        if opts.resume and os.path.exists(done_path):
            with open(done_path) as f:
                saved = json.load(f)
            runs.append(results_lib.RunResult(**saved["result"]))
            checksums.append(saved["params_checksum"])
            print_fn(f"run {i}: finished earlier, result reused ({done_path})")
            continue
        ckpt_dir = os.path.join(run_dir, "checkpoints") if opts.checkpoint else None
        r, cs = run_once(bench, config, opts, run=i, seed=opts.seed + i, mesh=mesh,
                         log_path=os.path.join(opts.workdir, f"result_{i}.txt"),
                         ckpt_dir=ckpt_dir, callbacks=callbacks, print_fn=print_fn)
        runs.append(r)
        checksums.append(cs)
        if jax.process_index() == 0:
            os.makedirs(run_dir, exist_ok=True)
            with open(done_path, "w") as f:
                json.dump({"result": dataclasses.asdict(r), "params_checksum": cs}, f, indent=1)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in r.metrics.items()) or "no eval"
        line = (f"run {i}: {r.status} in {r.time_to_train_s:.2f} s, {r.epochs:.2f} epochs, {shown}"
                + (" (resumed)" if r.resumed else ""))
        print_fn(line + (f" ({r.reason})" if r.reason else ""))
    if scored_k:
        score = results_lib.first_converged_score(runs, scored_k,
                                                  drop=int(config.get("olympic_drop", 1)))
    else:
        score = results_lib.olympic_score(
            runs, drop=int(config.get("olympic_drop", 1)),
            max_non_converged=config.get("max_non_converged", None))
    target = bench.target(config, rnd)
    table = results_lib.format_table(bench.name, opts.config_name, runs, score, target.describe(),
                                     target.primary, synthetic, round=rnd)
    results_path = os.path.join(opts.workdir, "results.json")
    if jax.process_index() == 0:
        results_lib.write_json(results_path, benchmark=bench.name, config_name=opts.config_name,
                               division=division, synthetic=synthetic,
                               target=dict(target.thresholds), metric=target.primary,
                               results=runs, score=score, round=rnd)
    return TrainResult(bench.name, opts.config_name, division, rnd, synthetic, runs, score,
                       checksums, table, results_path)
