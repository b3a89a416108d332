"""Time-to-train command line: ``python -m mlperf_jax.train --benchmark=NAME``.

Only the command line lives here: flags become ``RunOptions`` and a config, and
``mlperf_jax.driver.runs.train`` does the work (importable from notebooks as
``from mlperf_jax.train import train``). User mistakes are one line on stderr and exit code 2.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from mlperf_jax import benchmarks as benchmarks_lib
from mlperf_jax import division as division_lib
from mlperf_jax import sharding as sharding_lib
from mlperf_jax.driver.options import Callbacks, DivergedError, RunOptions, UserError
from mlperf_jax.driver.runs import TrainResult, resolve, train, validate

__all__ = ["Callbacks", "DivergedError", "RunOptions", "TrainResult", "UserError", "resolve",
           "run_main", "train", "validate"]


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
    flags.DEFINE_string("data_dir", None, "data dir with the prepared real dataset")
    flags.DEFINE_integer("num_runs", None, "runs in the result (default: the benchmark's count)")
    flags.DEFINE_integer("seed", 0, "seed of the first run; run i uses seed+i")
    flags.DEFINE_enum("division", None, ["closed", "open"], "submission division")
    flags.DEFINE_enum("round", None, ["v0.5", "v0.6"], "MLPerf round whose targets apply "
                      "(default v0.6; v0.5 for ncf, which left the suite after v0.5)")
    flags.DEFINE_enum("log_format", "mllog", ["mllog", "v0.6"],
                      "MLPerf log lines: mllog (checked with ruleset 0.7.0) or v0.6 (:::MLL lines "
                      "for ruleset 0.6.0; needs --round=v0.6)")
    flags.DEFINE_bool("dry_run", False, "resolve and validate the config and division, print the "
                      "hyperparameters and what closed division would reject; touch no data")
    flags.DEFINE_bool("prepare_only", False, "run the one-time, untimed data preparation "
                      "(vocabularies, caches) and exit")
    flags.DEFINE_bool("fsdp", False, "shard parameters and optimizer state over the data axis")
    flags.DEFINE_integer("mesh_model", 1, "size of the mesh's model axis (the rest is data)")
    flags.DEFINE_bool("checkpoint", True, "save orbax checkpoints (switch off for timed runs)")
    flags.DEFINE_integer("checkpoint_every_steps", 0, "also checkpoint every N steps (0: at evals)")
    flags.DEFINE_integer("log_every_steps", 10, "read the loss back (NaN check, progress bar) "
                         "every N steps; between them steps stay queued on the device")
    flags.DEFINE_bool("resume", True, "resume unfinished runs from the workdir; --noresume starts over")
    flags.DEFINE_string("submission_org", "mlperf_jax", "submission_org for the MLPerf log")
    flags.DEFINE_string("submission_platform", "", "submission_platform (default: from devices)")
    flags.DEFINE_enum("submission_status", "research", ["onprem", "cloud", "research", "preview"],
                      "submission_status for the MLPerf log")
    flags.DEFINE_bool("progress", True, "show a progress bar")
    flags.DEFINE_string("compilation_cache_dir", None, "JAX's persistent compilation cache: later "
                        "runs load what the first compiled (default $JAX_COMPILATION_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/mlperf_jax/jax_cache; '' switches it off)")
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


def dry_run_report(bench, config, opts: RunOptions) -> tuple[str, list[str]]:
    """The resolved hyperparameters, grouped as closed division sees them, its verdict, and the
    violations that make the run fail (closed division only)."""
    r = resolve(bench, config, opts)
    groups = division_lib.split(config, tunable=bench.tunable_hparams,
                                implementation=bench.implementation_keys)
    lines = [f"benchmark {bench.name} ({bench.mlperf_name}), config {opts.config_name}, "
             f"division {r.division}, round {r.round}, target {r.target}"]
    for name in ("fixed", "tunable", "implementation"):
        lines.append(f"{name} ({len(groups[name])}):")
        lines.extend(f"  {k} = {v!r}" for k, v in sorted(groups[name].items()))
    if r.division == "closed":
        lines.append("closed division: " + ("accepted" if not r.violations else
                                            "rejects " + ", ".join(r.violations)))
    else:
        lines.append("open division: any hyperparameters accepted" +
                     (f" (closed would reject {', '.join(r.violations)})" if r.violations else ""))
    return "\n".join(lines), (r.violations if r.division == "closed" else [])


def _enable_compilation_cache(flag: str | None) -> None:
    from mlperf_jax import compilation_cache
    try:
        compilation_cache.enable_from_flag(flag)
    except ValueError as e:
        raise UserError(str(e)) from None


def _main(argv: Sequence[str]) -> None:
    from absl import flags
    from absl import logging as absl_logging
    FLAGS = flags.FLAGS
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax and TFDS are chatty below ERROR
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = FLAGS.config
    config_name = [a for a in sys.argv if a.startswith("--config=")][-1].rsplit(":", 1)[-1]
    workdir = FLAGS.workdir or os.path.join("runs", f"{FLAGS.benchmark}-{config_name}")
    opts = RunOptions(
        workdir=workdir, data_dir=FLAGS.data_dir, num_runs=FLAGS.num_runs, seed=FLAGS.seed,
        division=FLAGS.division, round=FLAGS.round, log_format=FLAGS.log_format, fsdp=FLAGS.fsdp,
        mesh_model=FLAGS.mesh_model, checkpoint=FLAGS.checkpoint,
        checkpoint_every_steps=FLAGS.checkpoint_every_steps,
        log_every_steps=FLAGS.log_every_steps, resume=FLAGS.resume,
        submission_org=FLAGS.submission_org, submission_platform=FLAGS.submission_platform,
        submission_status=FLAGS.submission_status, progress=FLAGS.progress,
        config_name=config_name)
    bench = benchmarks_lib.get(FLAGS.benchmark)
    if FLAGS.dry_run:
        report, bad = dry_run_report(bench, config, opts)
        print(report)
        if bad:
            raise UserError("closed division fixes these hyperparameters: " + ", ".join(bad))
        return
    sharding_lib.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                        FLAGS.process_id)
    _enable_compilation_cache(FLAGS.compilation_cache_dir)
    if config.get("dataset") != "synthetic":
        _import_tensorflow_quietly()
    if FLAGS.prepare_only:
        print(bench.prepare_data(config, FLAGS.data_dir) or f"{bench.name}: nothing to prepare")
        return
    result = train(bench, config, opts)
    import jax
    if jax.process_index() == 0:
        print()
        print(result.table)
        print(f"MLPerf logs: {opts.workdir}/result_*.txt   summary: {result.results_path}")
    if not result.score.valid:
        raise SystemExit(1)


def parse_flags(flag_values, args: list[str]) -> list[str]:
    """absl's parse, with its mistakes (an unknown flag, a bad ``--config.KEY=VALUE``) as
    one-line ``UserError``s: shared by the CLI and the benchmark scripts that take overrides."""
    from absl import flags
    try:
        return flag_values(args)
    except flags.Error as e:
        raise UserError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    except (KeyError, AttributeError, ValueError, TypeError) as e:
        raise UserError(f"bad --config override: {' '.join(str(e).split())}") from None


def run_main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: user mistakes become one line on stderr and exit code 2."""
    from absl import app
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
            return parse_flags(FLAGS, args)
        except UserError as e:
            _fail(str(e))

    def main(a):
        try:
            _main(a)
        except UserError as e:
            _fail(str(e))
        except benchmarks_lib.DatasetNotFoundError as e:
            _fail(str(e))
        except KeyboardInterrupt:
            _fail("interrupted; the same command resumes from the last checkpoint", code=130)

    app.run(main, argv=argv, flags_parser=parser)


if __name__ == "__main__":
    run_main()
