"""One timed run: init and compile outside the clock, then epochs, evals and the stop at the target.

The clock is honest across interruptions: a checkpoint carries the time already spent inside
``run_start``..``run_stop``, the units and samples done and the data position, so a resumed run's
time-to-train is the time before the interruption plus the time after it (re-initialisation and
compilation excluded, as for any run), and its MLPerf log is appended to, never truncated.
"""
from __future__ import annotations

import dataclasses
import math
import pickle
import sys
import time
from typing import Any

import jax
import ml_collections

from mlperf_jax import checkpoint as checkpoint_lib
from mlperf_jax import energy as energy_lib
from mlperf_jax import mllog as mllog_lib
from mlperf_jax import results as results_lib
from mlperf_jax import sharding as sharding_lib
from mlperf_jax.benchmarks.base import Benchmark, Target
from mlperf_jax.driver.compile import Compiled, compile_benchmark, copy_tree
from mlperf_jax.driver.options import Callbacks, DivergedError, RunOptions, UserError

PyTree = Any
K = mllog_lib.constants


def params_checksum(params: PyTree) -> float:
    """A cheap fingerprint of the parameters, to compare runs (resume == uninterrupted)."""
    import jax.numpy as jnp
    leaves = jax.tree.leaves(params)
    return float(sum(jnp.sum(jnp.abs(x.astype(jnp.float32))) for x in leaves))


def to_host(tree: PyTree) -> PyTree:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def _log_value(log: mllog_lib.RunLogger, key: str, value: Any, metadata: dict | None = None
               ) -> None:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], dict):
        log.event(key, value[0], metadata={**value[1], **(metadata or {})})
    else:
        log.event(key, value, metadata=metadata)


def _check_finite(metrics: dict | None, step: int) -> None:
    if metrics is None:
        return
    loss = float(metrics["loss"])
    if not math.isfinite(loss):
        raise DivergedError(f"training diverged: loss is {loss} at step {step}")


def platform_name() -> str:
    """``submission_platform``'s default: device count and kind (``1xcpu``, ``8xTPU_v5_lite``)."""
    d = jax.devices()
    return f"{len(d)}x{d[0].device_kind}".replace(" ", "_")


def log_submission(log: mllog_lib.RunLogger, bench: Benchmark, config: ml_collections.ConfigDict,
                   opts: RunOptions, division: str, seed: int) -> None:
    """``cache_clear``, ``init_start`` and the submission keys: the head of every run's log."""
    log.event(K.CACHE_CLEAR, True)
    log.start(K.INIT_START)
    log.event(K.SUBMISSION_BENCHMARK, bench.mlperf_name)
    log.event(K.SUBMISSION_ORG, opts.submission_org)
    log.event(K.SUBMISSION_DIVISION, division)
    log.event(K.SUBMISSION_STATUS, opts.submission_status)
    platform = opts.submission_platform or platform_name()
    log.event(K.SUBMISSION_PLATFORM, platform)
    if opts.log_format == "v0.6":  # ruleset 0.6.0 wants these two as well
        log.event("submission_poc_name", opts.submission_poc_name or opts.submission_org)
        log.event("submission_entry", platform)
    log.event(K.SEED, seed)
    log.event(K.GLOBAL_BATCH_SIZE, int(config.global_batch_size))


def log_hparams(log: mllog_lib.RunLogger, bench: Benchmark, config: ml_collections.ConfigDict,
                steps_per_epoch: int) -> None:
    """The benchmark's hyperparameter keys, as its ruleset names them."""
    for key, value in bench.hparams_to_log(config, steps_per_epoch).items():
        _log_value(log, key, value)
    log.event(K.GRADIENT_ACCUMULATION_STEPS, 1)


def _restore_pretrained(bench: Benchmark, config: ml_collections.ConfigDict, state,
                        compiled: Compiled, print_fn) -> Any:
    """``--config.pretrained=PATH``: the named subtree of the fresh parameters (and BatchNorm
    statistics) from an orbax checkpoint of ours or a torchvision state dict."""
    from mlperf_jax import pretrained
    subtree = bench.pretrained_subtree(config)
    try:
        loaded = pretrained.load(str(config.pretrained), arch=bench.pretrained_arch(config) or None,
                                 conv_impl=bench.conv_impl(config))
        if subtree and subtree in loaded.params:
            # whole-model weights (e.g. the MLPerf SSD-ResNet34): take the named part
            loaded = dataclasses.replace(
                loaded, params=loaded.params[subtree],
                model_state={c: t[subtree] for c, t in loaded.model_state.items() if subtree in t},
                source=f"{loaded.source}, {subtree}")
        params, model_state, unused = pretrained.restore_subtree(
            to_host(state.params), to_host(state.model_state), loaded, subtree=subtree)
    except (FileNotFoundError, ImportError, ValueError, pickle.UnpicklingError) as e:
        raise UserError(f"--config.pretrained={config.pretrained}: {e}") from None
    state = state.replace(
        params=jax.device_put(params, compiled.state_sharding.params),
        model_state=jax.device_put(model_state, compiled.state_sharding.model_state))
    print_fn(f"pretrained weights for '{subtree or '(all)'}' from {loaded.source}"
             + (f" ({len(unused)} unused tensors, e.g. {unused[0]})" if unused else ""))
    return state


def run_once(bench: Benchmark, config: ml_collections.ConfigDict, opts: RunOptions, *, run: int,
             seed: int, mesh: jax.sharding.Mesh, log_path: str, ckpt_dir: str | None,
             callbacks: Callbacks | None = None, print_fn=print
             ) -> tuple[results_lib.RunResult, float]:
    """One run: ``init_start``..``init_stop`` (untimed), then the clock to ``run_stop``."""
    callbacks = callbacks or Callbacks()
    division = opts.division or config.get("division", "closed")
    target = bench.target(config, opts.round)
    ckpt = checkpoint_lib.Checkpointer(ckpt_dir) if ckpt_dir else None
    resuming = bool(ckpt is not None and opts.resume and ckpt.latest_step() is not None)
    # the first part's time as its log shows it (up to its last line, which may be later than
    # the last checkpoint): read before the log is reopened for appending
    logged_before = mllog_lib.elapsed_in_run(log_path) if resuming else 0.0
    log = mllog_lib.RunLogger(log_path, log_format=opts.log_format, append=resuming)
    try:
        jax.clear_caches()
        t_init = time.perf_counter()
        if not resuming:
            log_submission(log, bench, config, opts, division, seed)

        data = bench.data_source(config, opts.data_dir, seed=seed,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())
        spe = data.steps_per_epoch
        if not resuming:
            log_hparams(log, bench, config, spe)
        compiled = compile_benchmark(bench, config, mesh, spe, data.train_spec, data.eval_spec,
                                     fsdp=opts.fsdp)
        base_rng = jax.random.key(seed)
        state = compiled.init(jax.random.fold_in(base_rng, 0x1417))
        if config.get("pretrained"):
            state = _restore_pretrained(bench, config, state, compiled, print_fn)

        meta: dict = {}
        if resuming:
            state, meta, data_state = ckpt.restore(state)
            # wall time the interrupted part spent on the clock: what the checkpoint counted, or
            # what its log shows when that is more (work after the checkpoint is done again)
            meta["elapsed_s"] = max(float(meta.get("elapsed_s", 0.0)), logged_before)
            if data_state is not None and data.set_state is not None:
                data.set_state(data_state)
        else:
            log.event(K.TRAIN_SAMPLES, data.num_train_samples)
            log.event(K.EVAL_SAMPLES, data.num_eval_samples)
            log.end(K.INIT_STOP)
        init_s = time.perf_counter() - t_init
        return _timed(bench, config, opts, data, compiled, state, base_rng, target, meta, log,
                      ckpt, mesh, callbacks, run=run, seed=seed, init_s=init_s,
                      log_path=log_path)
    finally:
        if ckpt is not None:
            ckpt.close()
        log.close()


def _timed(bench, config, opts: RunOptions, data, compiled: Compiled, state, base_rng,
           target: Target, meta: dict, log, ckpt, mesh, callbacks: Callbacks, *, run: int,
           seed: int, init_s: float, log_path: str) -> tuple[results_lib.RunResult, float]:
    """``run_start``..``run_stop``: the part of a run that MLPerf times."""
    resumed = bool(meta)
    elapsed_before = float(meta.get("elapsed_s", 0.0))
    units_done = int(meta.get("units", 0))
    samples_done = int(meta.get("samples", 0))
    train_time = float(meta.get("train_time_s", 0.0))
    start_epoch = int(meta.get("epoch", 1))
    start_skip = int(meta.get("step_in_epoch", 0))
    last_metrics: dict | None = meta.get("last_metrics")
    n_resumes = int(meta.get("resumes", 0)) + (1 if resumed else 0)
    units_name = meta.get("units_name", "samples")
    num_epochs = int(config.num_epochs)
    eval_epochs = bench.eval_epochs(config)
    gbs = int(config.global_batch_size)
    step = int(state.step)
    epoch = start_epoch
    context_cache: list = []

    def block_first(e: int) -> int:
        return max([x for x in eval_epochs if x < e], default=0) + 1

    # energy of the part before an interruption, carried like train_time_s (None: not metered)
    energy_before = meta.get("energy_j", None if resumed else 0.0)
    energy_s_before = float(meta.get("energy_s", 0.0))
    meter = energy_lib.auto_meter()  # NVML init and the like: before the clock
    t_run = time.perf_counter()
    session = meter.start()  # read at run_start
    if resumed:
        log.event("run_resumed", elapsed_before,
                  metadata={"epoch_num": start_epoch, "step": step, "resumes": n_resumes})
    else:
        log.start(K.RUN_START)
    t_log_start = float(meta.get("log_run_start_s", log.last_time_s or 0.0))
    model_times = dict(meta.get("model_times", {}))  # epoch -> end of its training, log clock

    paused = [0.0]  # seconds of untimed evaluation (Benchmark.eval_timed False)

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - t_run - paused[0]

    def save(next_epoch: int, skip: int) -> None:
        if ckpt is None or not opts.checkpoint:
            return
        so_far = energy_lib.total_over_processes(session.snapshot())
        ckpt.save(step, state, {
            "elapsed_s": elapsed(), "units": units_done, "samples": samples_done,
            "units_name": units_name, "train_time_s": train_time, "epoch": next_epoch,
            "step_in_epoch": skip, "last_metrics": last_metrics, "resumes": n_resumes,
            "log_run_start_s": t_log_start, "model_times": model_times,
            "energy_j": None if energy_before is None or so_far.joules is None
            else energy_before + so_far.joules, "energy_s": energy_s_before + so_far.seconds},
            data.get_state() if data.get_state is not None else None)

    status, reason = "aborted", "epoch budget exhausted before the target was reached"
    bar = _progress(num_epochs * data.steps_per_epoch, step, run, opts.progress)
    epochs_done = float(start_epoch - 1)
    if start_skip:
        epochs_done += start_skip / data.steps_in_epoch(start_epoch)
    if resumed and start_skip == 0 and last_metrics and target.reached(last_metrics):
        # killed after the eval that reached the target was checkpointed: the run is over
        status, reason, start_epoch = "success", "", num_epochs + 1
    try:
        for epoch in range(start_epoch, num_epochs + 1):
            skip = start_skip if epoch == start_epoch else 0
            first = block_first(epoch)
            if skip == 0 and epoch == first:
                log.start(K.BLOCK_START, metadata={
                    "first_epoch_num": first,
                    "epoch_count": min(x for x in eval_epochs if x >= epoch) - first + 1})
            if skip == 0:
                log.start(K.EPOCH_START, metadata={"epoch_num": epoch})
                if data.before_epoch is not None:
                    lines = data.before_epoch(epoch, copy_tree(state.params),
                                              copy_tree(state.model_state), compiled.programs)
                    for key, value in (lines or {}).items():
                        _log_value(log, key, value, {"epoch_num": epoch})
            n = data.steps_in_epoch(epoch)
            t_epoch = time.perf_counter()
            prev = last = None
            it = iter(data.train_epoch(epoch, skip))
            for i in range(skip, n):
                try:
                    host_batch = next(it)
                except StopIteration:
                    raise RuntimeError(f"train_epoch({epoch}) ended after {i} of {n} steps") from None
                units_name, n_units = bench.throughput_units(config, host_batch)
                batch = sharding_lib.host_batch_to_global(host_batch, mesh)
                state, metrics = compiled.train_step(state, batch, base_rng)
                prev, last = last, metrics
                step += 1
                epochs_done = (epoch - 1) + (i + 1) / n
                bar.update(1)
                units_done += n_units
                samples_done += gbs
                if opts.log_every_steps and step % opts.log_every_steps == 0:
                    # the previous step has finished (or nearly): reading its loss keeps the
                    # current one queued on the device
                    _check_finite(prev, step - 1)
                    bar.set_postfix_str(_postfix(epoch, prev, last_metrics, target, elapsed()),
                                        refresh=False)
                if (opts.checkpoint_every_steps and step % opts.checkpoint_every_steps == 0
                        and i + 1 < n):
                    train_time += time.perf_counter() - t_epoch
                    t_epoch = time.perf_counter()
                    save(epoch, i + 1)
                if callbacks.on_step is not None:
                    callbacks.on_step(run, step)
            _check_finite(last, step)
            train_time += time.perf_counter() - t_epoch
            for key, value in bench.epoch_end_lines(config, epoch).items():
                _log_value(log, key, value, {"epoch_num": epoch})
            # when this epoch's model was final (MiniGo's save_model line, if any)
            model_times[str(epoch)] = round((log.last_time_s or 0.0) - t_log_start, 3)
            log.end(K.EPOCH_STOP, metadata={"epoch_num": epoch})
            if epoch not in eval_epochs:
                continue
            log.end(K.BLOCK_STOP, metadata={"first_epoch_num": first})
            if not bench.eval_timed:
                t_pause = time.perf_counter()
                log.pause()
                session.pause()
            log.start(K.EVAL_START, metadata={"epoch_num": epoch})
            if not context_cache:
                context_cache.append(data.eval_context() if data.eval_context else None)
            outputs = [to_host(compiled.eval_step(state, sharding_lib.host_batch_to_global(b, mesh)))
                       for b in data.eval_batches()]
            last_metrics = {k: float(v) for k, v in
                            bench.eval_metric(config, outputs, context_cache[0]).items()}
            log.event(K.EVAL_ACCURACY, target.log_value(last_metrics),
                      metadata={"epoch_num": epoch})
            log.end(K.EVAL_STOP, metadata={"epoch_num": epoch})
            if not bench.eval_timed:
                log.resume()
                session.resume()
                paused[0] += time.perf_counter() - t_pause
            bar.set_postfix_str(_postfix(epoch, last, last_metrics, target, elapsed()))
            save(epoch + 1, 0)
            if target.reached(last_metrics):
                status, reason = "success", ""
                for key, value in bench.success_lines(
                        config, epoch, model_times.get(str(epoch), 0.0)).items():
                    _log_value(log, key, value)
                break
    except DivergedError as e:
        status, reason = "aborted", str(e)
    finally:
        bar.close()
        session.close()
    log.end(K.RUN_STOP, metadata={"status": status})
    ttt = elapsed()
    part = energy_lib.total_over_processes(session.stop())  # read at run_stop
    energy_j = (None if energy_before is None or part.joules is None
                else energy_before + part.joules)
    energy_s = energy_s_before + part.seconds
    energy_src = part.source
    if energy_before is None and part.joules is not None:
        energy_src = "not measured (the part before the resume was not metered)"
    primary = None if last_metrics is None else last_metrics.get(target.primary)
    result = results_lib.RunResult(
        run=run, seed=seed, status=status, time_to_train_s=ttt, epochs=epochs_done,
        samples=samples_done, metric=primary, metrics=dict(last_metrics or {}),
        throughput=(units_done / train_time) if train_time > 0 else 0.0,
        throughput_unit=units_name, compile_time_s=compiled.compile_time_s, init_time_s=init_s,
        compile_programs=compiled.num_programs, compile_cache_hits=compiled.cache_hits,
        log_path=log_path, reason=reason, resumed=n_resumes,
        rates=dict(data.rates()) if data.rates is not None else {},
        device_count=jax.device_count(), device_kind=jax.devices()[0].device_kind,
        energy_j=energy_j, energy_source=energy_src,
        avg_power_w=energy_j / energy_s if energy_j is not None and energy_s > 0 else None)
    return result, params_checksum(state.params)


def _postfix(epoch: int, metrics: dict | None, last: dict | None, target: Target,
             elapsed: float) -> str:
    loss = "-" if metrics is None else f"{float(metrics['loss']):.4f}"
    ev = "-" if not last else " ".join(f"{k} {last.get(k, float('nan')):.4f}"
                                       for k in target.thresholds)
    return f"epoch {epoch} loss {loss} eval {ev} t {elapsed:.1f}s"


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
