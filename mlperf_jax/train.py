"""Time-to-train driver: ``python -m mlperf_jax.train --benchmark=NAME``.

The logic is the library function ``train(...)`` (importable from notebooks and research code);
``main`` only turns flags into its arguments. Timing follows the MLPerf rules: model creation and
ahead-of-time compilation happen between ``init_start`` and ``init_stop``; the clock
(``run_start``) starts before the dataset is read and stops when the quality target is reached.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from mlperf_jax import benchmarks as benchmarks_lib
from mlperf_jax import checkpoint as checkpoint_lib
from mlperf_jax import mllog as mllog_lib
from mlperf_jax import results as results_lib
from mlperf_jax import sharding as sharding_lib
from mlperf_jax.benchmarks.base import Benchmark, DataSource

PyTree = Any
K = mllog_lib.constants


class UserError(Exception):
    """A mistake in the command line or the environment: reported as one line, exit code 2."""


class DivergedError(Exception):
    pass


class InjectedFailure(Exception):
    """Raised by ``fail_after_steps``: simulates a killed process for resume tests."""


@struct.dataclass
class TrainState:
    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: PyTree


@dataclasses.dataclass
class RunOptions:
    """Everything about a run that is not the benchmark's config."""

    workdir: str
    data_dir: str | None = None
    num_runs: int | None = None
    seed: int = 0
    division: str | None = None
    fsdp: bool = False
    checkpoint: bool = True
    checkpoint_every_steps: int = 0
    resume: bool = True
    submission_org: str = "mlperf_jax"
    submission_platform: str = ""
    submission_status: str = "research"
    progress: bool = True
    fail_after_steps: int = 0  # testing only: raise after this many steps of the first run
    config_name: str = ""


# ------------------------------------------------------------------------------------------ steps
@dataclasses.dataclass
class Compiled:
    """The ahead-of-time compiled functions of one benchmark on one mesh."""

    init: Callable
    train_step: Any
    eval_step: Any
    state_sharding: PyTree
    schedule: optax.Schedule
    compile_time_s: float


def _spec_from_batch(batch: dict[str, np.ndarray], process_count: int) -> dict[str, jax.ShapeDtypeStruct]:
    return {k: jax.ShapeDtypeStruct((v.shape[0] * process_count,) + v.shape[1:], v.dtype)
            for k, v in batch.items()}


def compile_benchmark(bench: Benchmark, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                      steps_per_epoch: int, train_spec: dict, eval_spec: dict | None, *,
                      fsdp: bool = False) -> Compiled:
    """Build and compile (ahead of time) init, the train step and (given its spec) the eval step."""
    tx, schedule = bench.optimizer(config, steps_per_epoch)

    def init_fn(rng):
        params, model_state = bench.init(config, rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                          opt_state=tx.init(params))

    rng_spec = jax.eval_shape(lambda: jax.random.key(0))
    abstract = jax.eval_shape(init_fn, rng_spec)
    state_sh = sharding_lib.state_shardings(abstract, mesh, fsdp)
    repl = sharding_lib.replicated(mesh)
    bsh = sharding_lib.batch_sharding(mesh)

    def train_step(state: TrainState, batch, base_rng):
        rng = jax.random.fold_in(base_rng, state.step)

        def lf(p):
            return bench.loss_fn(config, p, state.model_state, batch, rng)

        (loss, (model_state, metrics)), grads = jax.value_and_grad(lf, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, learning_rate=schedule(state.step))
        new = state.replace(step=state.step + 1, params=params, model_state=model_state,
                            opt_state=opt_state)
        return new, metrics

    def eval_step(state: TrainState, batch):
        return bench.eval_step(config, state.params, state.model_state, batch)

    t0 = time.perf_counter()
    init = jax.jit(init_fn, out_shardings=state_sh)
    init_c = init.lower(rng_spec).compile()
    train_c = jax.jit(
        train_step, in_shardings=(state_sh, {k: bsh for k in train_spec}, repl),
        out_shardings=(state_sh, repl), donate_argnums=(0,),
    ).lower(abstract, train_spec, rng_spec).compile()
    eval_c = None if eval_spec is None else jax.jit(
        eval_step, in_shardings=(state_sh, {k: bsh for k in eval_spec}),
    ).lower(abstract, eval_spec).compile()
    compile_s = time.perf_counter() - t0
    return Compiled(init_c, train_c, eval_c, state_sh, schedule, compile_s)


# ------------------------------------------------------------------------------------------ helpers
def params_checksum(params: PyTree) -> float:
    """A cheap fingerprint of the parameters, to compare runs (resume == uninterrupted)."""
    leaves = jax.tree.leaves(params)
    return float(sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves))


def _config_digest(config: ml_collections.ConfigDict, name: str, extra: dict) -> str:
    blob = json.dumps({"config": config.to_dict(), "benchmark": name, **extra}, sort_keys=True,
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _to_host(tree: PyTree) -> PyTree:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def _eval_epochs(config: ml_collections.ConfigDict) -> list[int]:
    every = int(config.get("eval_every_epochs", 1))
    offset = int(config.get("eval_offset_epochs", 0))
    n = int(config.num_epochs)
    epochs = [e for e in range(1, n + 1) if e > offset and (e - offset) % every == 0]
    if not epochs or epochs[-1] != n:
        epochs.append(n)  # always evaluate at the end of the budget
    return epochs


def _blocks(config: ml_collections.ConfigDict, steps_per_epoch: int) -> list[tuple[int, int, int]]:
    """Train blocks ending in an eval: (first_step, end_step, epoch at the end)."""
    every_samples = int(config.get("eval_every_samples", 0) or 0)
    total = int(config.num_epochs) * steps_per_epoch
    out = []
    if every_samples > 0:
        k = max(1, math.ceil(every_samples / int(config.global_batch_size)))
        for start in range(0, total, k):
            end = min(total, start + k)
            out.append((start, end, math.ceil(end / steps_per_epoch)))
        return out
    prev = 0
    for e in _eval_epochs(config):
        out.append((prev, e * steps_per_epoch, e))
        prev = e * steps_per_epoch
    return out


def _log_value(log: mllog_lib.RunLogger, key: str, value: Any) -> None:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        log.event(key, value[0], metadata=value[1])
    else:
        log.event(key, value)


def _train_batches(data: DataSource, start_step: int, end_step: int, params_fn) -> Iterator:
    """Host batches for global steps [start_step, end_step), crossing epochs."""
    spe = data.steps_per_epoch
    step = start_step
    while step < end_step:
        epoch = step // spe + 1
        skip = step % spe
        it = data.train_epoch(epoch, skip, params_fn())
        for batch in it:
            yield epoch, batch
            step += 1
            if step >= end_step or step % spe == 0:
                break
        else:
            if step % spe:
                raise RuntimeError(f"train_epoch({epoch}) ended after {step % spe} of {spe} steps")


# ------------------------------------------------------------------------------------------ one run
def run_once(bench: Benchmark, config: ml_collections.ConfigDict, opts: RunOptions, *, run: int,
             seed: int, mesh: jax.sharding.Mesh, log_path: str, ckpt_dir: str | None
             ) -> tuple[results_lib.RunResult, float]:
    """One timed run: init (untimed), then the clock from run_start to run_stop."""
    division = opts.division or config.get("division", "closed")
    log = mllog_lib.RunLogger(log_path)
    try:
        jax.clear_caches()
        log.event(K.CACHE_CLEAR, True)
        t_init = time.perf_counter()
        log.start(K.INIT_START)
        log.event(K.SUBMISSION_BENCHMARK, bench.mlperf_name)
        log.event(K.SUBMISSION_ORG, opts.submission_org)
        log.event(K.SUBMISSION_DIVISION, division)
        log.event(K.SUBMISSION_STATUS, opts.submission_status)
        log.event(K.SUBMISSION_PLATFORM, opts.submission_platform or _platform_name())
        log.event(K.SEED, seed)
        log.event(K.GLOBAL_BATCH_SIZE, int(config.global_batch_size))

        data = bench.data_source(config, opts.data_dir, seed=seed,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
        spe = data.steps_per_epoch
        for key, value in bench.hparams_to_log(config, spe).items():
            _log_value(log, key, value)
        log.event(K.GRADIENT_ACCUMULATION_STEPS, 1)
        train_spec = getattr(data, "train_spec", None)
        eval_spec = getattr(data, "eval_spec", None)
        if train_spec is None:
            train_spec = _spec_from_batch(next(iter(data.train_epoch(1, 0, None))),
                                          jax.process_count())
        if eval_spec is None:
            eval_spec = _spec_from_batch(next(iter(data.eval_batches())), jax.process_count())
        compiled = compile_benchmark(bench, config, mesh, spe, train_spec, eval_spec,
                                     fsdp=opts.fsdp)
        base_rng = jax.random.key(seed)
        state = compiled.init(jax.random.fold_in(base_rng, 0x1417))

        meta: dict = {}
        ckpt = checkpoint_lib.Checkpointer(ckpt_dir) if ckpt_dir else None
        if ckpt is not None and opts.resume and ckpt.latest_step() is not None:
            state, meta = ckpt.restore(state)
        start_step = int(state.step)

        log.event(K.TRAIN_SAMPLES, data.num_train_samples)
        log.event(K.EVAL_SAMPLES, data.num_eval_samples)
        log.end(K.INIT_STOP)
        init_s = time.perf_counter() - t_init

        target = bench.target(config)
        blocks = _blocks(config, spe)
        total_steps = blocks[-1][1]
        gbs = int(config.global_batch_size)
        sample_cadence = int(config.get("eval_every_samples", 0) or 0) > 0

        log.start(K.RUN_START)
        t_run = time.perf_counter()
        units_done, train_time = 0, float(meta.get("train_time_s", 0.0))
        units_name = "samples"
        last_metric: float | None = meta.get("last_metric")
        status, reason = "aborted", "epoch budget exhausted before the target was reached"
        bar = _progress(total_steps, start_step, run, opts.progress)
        steps_done = start_step
        try:
            for first, end, end_epoch in blocks:
                if end <= start_step:
                    continue
                first = max(first, start_step)
                first_epoch = first // spe + 1
                block_md = {"first_epoch_num": first_epoch,
                            "epoch_count": max(1, end_epoch - first_epoch + 1)}
                if sample_cadence:
                    block_md["samples_count"] = first * gbs
                log.start(K.BLOCK_START, metadata=block_md)
                t_block = time.perf_counter()
                pending = None
                cur_epoch = None
                for epoch, host_batch in _train_batches(data, first, end, lambda: state.params):
                    if epoch != cur_epoch:
                        if cur_epoch is not None and not sample_cadence:
                            log.end(K.EPOCH_STOP, metadata={"epoch_num": cur_epoch})
                        if not sample_cadence:
                            log.start(K.EPOCH_START, metadata={"epoch_num": epoch})
                        cur_epoch = epoch
                    units_name, n_units = bench.throughput_units(config, host_batch)
                    batch = sharding_lib.host_batch_to_global(host_batch, mesh)
                    state, metrics = compiled.train_step(state, batch, base_rng)
                    if pending is not None:  # check the previous step while this one runs
                        _check_finite(pending, steps_done)
                    pending = metrics
                    steps_done += 1
                    units_done += n_units
                    bar.update(1)
                    if steps_done % 10 == 0:
                        bar.set_postfix_str(_postfix(epoch, pending, last_metric, t_run),
                                            refresh=False)
                    if opts.checkpoint and ckpt and opts.checkpoint_every_steps and \
                            steps_done % opts.checkpoint_every_steps == 0 and steps_done < end:
                        ckpt.save(steps_done, state, {"train_time_s": train_time,
                                                      "last_metric": last_metric})
                    if opts.fail_after_steps and steps_done >= opts.fail_after_steps:
                        if ckpt:
                            ckpt.wait()
                        raise InjectedFailure(f"injected failure after step {steps_done}")
                if pending is not None:
                    _check_finite(pending, steps_done)
                train_time += time.perf_counter() - t_block
                if cur_epoch is not None and not sample_cadence:
                    log.end(K.EPOCH_STOP, metadata={"epoch_num": cur_epoch})
                log.end(K.BLOCK_STOP, metadata=block_md)

                epoch_md = {"epoch_num": end / spe if sample_cadence else end_epoch}
                if sample_cadence:
                    epoch_md["samples_count"] = end * gbs
                log.start(K.EVAL_START, metadata=epoch_md)
                outputs = [_to_host(compiled.eval_step(state, sharding_lib.host_batch_to_global(b, mesh)))
                           for b in data.eval_batches()]
                last_metric = float(bench.eval_metric(config, outputs))
                log.event(K.EVAL_ACCURACY, last_metric, metadata=epoch_md)
                log.end(K.EVAL_STOP, metadata=epoch_md)
                bar.set_postfix_str(_postfix(end_epoch, pending, last_metric, t_run))
                if ckpt and opts.checkpoint:
                    ckpt.save(end, state, {"train_time_s": train_time, "last_metric": last_metric})
                if target.reached(last_metric):
                    status, reason = "success", ""
                    break
        except DivergedError as e:
            status, reason = "aborted", str(e)
        finally:
            bar.close()
        log.end(K.RUN_STOP, metadata={"status": status})
        ttt = time.perf_counter() - t_run
        if ckpt:
            ckpt.close()
        steps_run = steps_done - start_step
        result = results_lib.RunResult(
            run=run, seed=seed, status=status, time_to_train_s=ttt, epochs=steps_done / spe,
            samples=steps_done * gbs, metric=last_metric,
            throughput=(units_done / train_time) if train_time > 0 and steps_run else 0.0,
            throughput_unit=units_name, compile_time_s=compiled.compile_time_s,
            init_time_s=init_s, log_path=log_path, reason=reason)
        return result, params_checksum(state.params)
    finally:
        log.close()


def _check_finite(metrics: dict, step: int) -> None:
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        raise DivergedError(f"training diverged: loss is {loss} at step {step}")


def _postfix(epoch: int, metrics: dict | None, last_metric: float | None, t0: float) -> str:
    loss = "-" if metrics is None else f"{float(metrics['loss']):.4f}"
    ev = "-" if last_metric is None else f"{last_metric:.4f}"
    return f"epoch {epoch} loss {loss} eval {ev} t {time.perf_counter() - t0:.1f}s"


class _NoBar:
    def update(self, n: int) -> None: ...
    def set_postfix_str(self, s: str, refresh: bool = True) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, initial: int, run: int, enabled: bool):
    if not enabled or jax.process_index() != 0:
        return _NoBar()
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=f"run {run}", unit="step", dynamic_ncols=True,
                mininterval=0.5, file=sys.stderr, leave=True)


def _platform_name() -> str:
    d = jax.devices()
    return f"{len(d)}x{d[0].device_kind}".replace(" ", "_")


# ------------------------------------------------------------------------------------------ N runs
@dataclasses.dataclass
class TrainResult:
    benchmark: str
    config_name: str
    division: str
    synthetic: bool
    runs: list[results_lib.RunResult]
    score: results_lib.Score
    checksums: list[float]
    table: str
    results_path: str


def validate(bench: Benchmark, config: ml_collections.ConfigDict, opts: RunOptions) -> str:
    """Check flags and config before any work; returns the division. Raises UserError."""
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
    if opts.data_dir is not None and not os.path.isdir(opts.data_dir):
        raise UserError(f"--data_dir {opts.data_dir} does not exist")
    if division == "closed":
        if config.get("dataset") == "synthetic":
            raise UserError("the tiny track trains on synthetic data and is open division only; "
                            "use --division=open or a real dataset with --data_dir")
        ref = bench.get_config("reference")
        bad = bench.closed_division_violations(config, ref)
        if bad:
            raise UserError("closed division fixes these hyperparameters: " + ", ".join(bad))
    n_dev = jax.device_count()
    for key in ("global_batch_size", "eval_batch_size"):
        if int(config[key]) % n_dev:
            raise UserError(f"config.{key}={config[key]} must be divisible by the {n_dev} devices")
    return division


def train(benchmark: str | Benchmark, config: ml_collections.ConfigDict, opts: RunOptions,
          *, print_fn: Callable[[str], None] = print) -> TrainResult:
    """Run a benchmark N times and score it as MLPerf does. Library entry point."""
    bench = benchmarks_lib.get(benchmark) if isinstance(benchmark, str) else benchmark
    division = validate(bench, config, opts)
    num_runs = opts.num_runs or int(config.get("num_runs", 5))
    synthetic = config.get("dataset") == "synthetic"
    os.makedirs(opts.workdir, exist_ok=True)
    digest = _config_digest(config, bench.name, {"division": division, "seed": opts.seed,
                                                 "fsdp": opts.fsdp, "data_dir": opts.data_dir})
    stamp = os.path.join(opts.workdir, "config_digest.txt")
    if opts.resume and os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().strip() != digest:
                raise UserError(f"workdir {opts.workdir} holds runs with other flags or config; "
                                "use another --workdir or --noresume")
    elif not opts.resume:
        import shutil
        for name in os.listdir(opts.workdir):
            if name.startswith("run_") or name.startswith("result_"):
                p = os.path.join(opts.workdir, name)
                shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    with open(stamp, "w") as f:
        f.write(digest)

    if synthetic:
        print_fn(f"NOTE: {bench.name} runs its TINY TRACK on synthetic data (no --data_dir given):"
                 " the whole time-to-train path runs for real, but the result is not an MLPerf"
                 " result.")
    mesh = sharding_lib.make_mesh()
    print_fn(f"{bench.name}: config {opts.config_name or '?'}, division {division}, {num_runs} runs,"
             f" mesh {dict(mesh.shape)} of {jax.devices()[0].platform}, workdir {opts.workdir}")
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
        seed = opts.seed + i
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
        log_path = os.path.join(opts.workdir, f"result_{i}.txt")
        r, cs = run_once(bench, config, dataclasses.replace(
            opts, fail_after_steps=opts.fail_after_steps if i == 0 else 0),
            run=i, seed=seed, mesh=mesh, log_path=log_path, ckpt_dir=ckpt_dir)
        runs.append(r)
        checksums.append(cs)
        if jax.process_index() == 0:
            os.makedirs(run_dir, exist_ok=True)
            with open(done_path, "w") as f:
                json.dump({"result": dataclasses.asdict(r), "params_checksum": cs}, f, indent=1)
        line = (f"run {i}: {r.status} in {r.time_to_train_s:.2f} s, {r.epochs:.2f} epochs, "
                f"{config.target_metric} {r.metric if r.metric is None else round(r.metric, 4)}")
        print_fn(line + (f" ({r.reason})" if r.reason else ""))
    if scored_k:
        score = results_lib.first_converged_score(runs, scored_k,
                                                  drop=int(config.get("olympic_drop", 1)))
    else:
        score = results_lib.olympic_score(
            runs, drop=int(config.get("olympic_drop", 1)),
            max_non_converged=config.get("max_non_converged", None))
    target = bench.target(config)
    table = results_lib.format_table(bench.name, opts.config_name, runs, score, target.value,
                                     target.metric, synthetic)
    results_path = os.path.join(opts.workdir, "results.json")
    if jax.process_index() == 0:
        results_lib.write_json(results_path, benchmark=bench.name, config_name=opts.config_name,
                               division=division, synthetic=synthetic, target=target.value,
                               metric=target.metric, results=runs, score=score)
    return TrainResult(bench.name, opts.config_name, division, synthetic, runs, score, checksums,
                       table, results_path)


# ------------------------------------------------------------------------------------------ CLI
def _expand_config_arg(argv: Sequence[str]) -> list[str]:
    """Let ``--config=tiny`` name a variant of the chosen benchmark's config file.

    ``config_flags`` wants ``path.py:variant``; a bare variant (or no ``--config``) is resolved
    against ``--benchmark`` here, before absl parses the flags.
    """
    argv = list(argv)
    bench_name, data_dir, cfg_idx = None, None, None
    for i, a in enumerate(argv):
        if a.startswith("--benchmark="):
            bench_name = a.split("=", 1)[1]
        elif a == "--benchmark" and i + 1 < len(argv):
            bench_name = argv[i + 1]
        elif a.startswith("--data_dir="):
            data_dir = a.split("=", 1)[1]
        elif a.startswith("--config="):
            cfg_idx = i
        elif a == "--config" and i + 1 < len(argv):
            argv[i:i + 2] = [f"--config={argv[i + 1]}"]
            cfg_idx = i
    if any(a in ("--help", "-h", "--helpfull", "--helpshort") for a in argv):
        bench_name = bench_name or "resnet50"
    if bench_name is None:
        raise UserError("--benchmark is required; known benchmarks: "
                        + ", ".join(benchmarks_lib.names()))
    try:
        path = benchmarks_lib.config_file(bench_name)
    except benchmarks_lib.UnknownBenchmarkError as e:
        raise UserError(str(e)) from None
    variants = benchmarks_lib.get(bench_name).config_names
    if cfg_idx is None:
        variant = variants[0] if data_dir else "tiny"
        argv.insert(1, f"--config={path}:{variant}")  # before any --config.KEY override
    else:
        value = argv[cfg_idx].split("=", 1)[1]
        if ".py" not in value:
            if value not in variants:
                raise UserError(f"unknown config {value!r} for {bench_name}; "
                                f"known: {', '.join(variants)}")
            argv[cfg_idx] = f"--config={path}:{value}"
    return argv


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    flags.DEFINE_string("benchmark", None, "benchmark to train: " + ", ".join(benchmarks_lib.names()))
    config_flags.DEFINE_config_file(
        "config", None, "config variant (reference, tiny, ...) or path.py:variant; "
        "override fields with --config.KEY=VALUE. Default: tiny without --data_dir.")
    flags.DEFINE_string("workdir", None, "where logs, checkpoints and results.json go "
                        "(default runs/BENCHMARK-CONFIG)")
    flags.DEFINE_string("data_dir", None, "TFDS data dir with the prepared real dataset")
    flags.DEFINE_integer("num_runs", None, "runs in the result (default: the benchmark's count)")
    flags.DEFINE_integer("seed", 0, "seed of the first run; run i uses seed+i")
    flags.DEFINE_enum("division", None, ["closed", "open"], "submission division")
    flags.DEFINE_bool("fsdp", False, "shard parameters and optimizer state over the data axis")
    flags.DEFINE_bool("checkpoint", True, "save orbax checkpoints (switch off for timed runs)")
    flags.DEFINE_integer("checkpoint_every_steps", 0, "also checkpoint every N steps (0: at evals)")
    flags.DEFINE_bool("resume", True, "resume unfinished runs from the workdir; --noresume starts over")
    flags.DEFINE_string("submission_org", "mlperf_jax", "submission_org for the MLPerf log")
    flags.DEFINE_string("submission_platform", "", "submission_platform (default: from devices)")
    flags.DEFINE_enum("submission_status", "research", ["onprem", "cloud", "research", "preview"],
                      "submission_status for the MLPerf log")
    flags.DEFINE_bool("progress", True, "show a progress bar")
    flags.DEFINE_integer("fail_after_steps", 0, "testing: stop the first run as if killed after N steps")
    flags.DEFINE_string("coordinator_address", None, "jax.distributed coordinator host:port")
    flags.DEFINE_integer("num_processes", None, "jax.distributed process count")
    flags.DEFINE_integer("process_id", None, "jax.distributed process id")
    return flags.FLAGS


def _import_tensorflow_quietly() -> None:
    """TensorFlow's C++ runtime prints start-up chatter on fd 2 at import, whatever the log level;
    a CLI whose errors are one line imports it with fd 2 pointed elsewhere."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _fail(msg: str, code: int = 2) -> None:
    sys.stderr.write(f"error: {msg}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def _main(argv: Sequence[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging
    FLAGS = flags.FLAGS
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax and TFDS are chatty below ERROR
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    sharding_lib.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
    config = FLAGS.config
    if config.get("dataset") != "synthetic":
        _import_tensorflow_quietly()
    config_name = [a for a in sys.argv if a.startswith("--config=")][-1].rsplit(":", 1)[-1]
    workdir = FLAGS.workdir or os.path.join("runs", f"{FLAGS.benchmark}-{config_name}")
    opts = RunOptions(
        workdir=workdir, data_dir=FLAGS.data_dir, num_runs=FLAGS.num_runs, seed=FLAGS.seed,
        division=FLAGS.division, fsdp=FLAGS.fsdp, checkpoint=FLAGS.checkpoint,
        checkpoint_every_steps=FLAGS.checkpoint_every_steps, resume=FLAGS.resume,
        submission_org=FLAGS.submission_org, submission_platform=FLAGS.submission_platform,
        submission_status=FLAGS.submission_status, progress=FLAGS.progress,
        fail_after_steps=FLAGS.fail_after_steps, config_name=config_name)
    result = train(FLAGS.benchmark, config, opts)
    if jax.process_index() == 0:
        print()
        print(result.table)
        print(f"MLPerf logs: {opts.workdir}/result_*.txt   summary: {result.results_path}")
    if not result.score.valid:
        raise SystemExit(1)


def run_main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    from absl import app, flags
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    argv = list(sys.argv if argv is None else argv)
    try:
        argv = _expand_config_arg(argv)
    except UserError as e:
        _fail(str(e))
    sys.argv = argv
    FLAGS = _define_flags()

    def parser(args):
        if {"--help", "-h", "--helpshort", "-?"} & set(args):
            print(FLAGS.main_module_help())
            raise SystemExit(0)
        if "--helpfull" in args:
            print(FLAGS.get_help())
            raise SystemExit(0)
        try:
            return FLAGS(args)
        except flags.Error as e:
            _fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
        except (KeyError, AttributeError, ValueError, TypeError) as e:
            _fail(f"bad --config override: {e}")

    def main(a):
        try:
            _main(a)
        except UserError as e:
            _fail(str(e))
        except benchmarks_lib.DatasetNotFoundError as e:
            _fail(str(e))
        except InjectedFailure as e:
            _fail(str(e), code=3)

    app.run(main, argv=argv, flags_parser=parser)


if __name__ == "__main__":
    run_main()
