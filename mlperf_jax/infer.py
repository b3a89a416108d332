"""MLPerf Inference with mlperf_jax.loadgen driving a JAX SUT.

    python -m mlperf_jax.infer --benchmark=resnet50 --scenario=Offline --mode=performance \
        [--user_conf=user.conf] [--data_dir=DIR] [--checkpoint_dir=WORKDIR] [--outdir=DIR]

Without --data_dir a synthetic QSL (random 224x224 images) is used, and said; without
--checkpoint_dir the weights are random, and said.  Images are preprocessed by the benchmark's
convention in ``input_pipelines/preprocessing.py`` (resnet50: area resize, mean subtraction;
mobilenet: bilinear resize, [-1, 1]), the same functions training's evaluation uses.  Every
user error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

BENCHMARKS = ("resnet50", "mobilenet")
SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
MODES = {"accuracy": "AccuracyOnly", "performance": "PerformanceOnly", "submission": "SubmissionRun",
         "find_peak": "FindPeakPerformance"}

FLAGS = flags.FLAGS
flags.DEFINE_string("benchmark", None, f"One of {', '.join(BENCHMARKS)}.")
flags.DEFINE_string("scenario", "Offline", f"One of {', '.join(SCENARIOS)}.")
flags.DEFINE_string("mode", "performance", f"One of {', '.join(MODES)}.")
flags.DEFINE_string("user_conf", None, "user.conf (model.Scenario.key = value), applied after mlperf.conf.")
flags.DEFINE_string("data_dir", None, "ImageNet validation set in the MLPerf layout (val_map.txt + JPEGs).")
flags.DEFINE_string("checkpoint_dir", None, "An orbax checkpoint directory written by training "
                    "(WORKDIR/run_N/checkpoints); its latest step is loaded.")
flags.DEFINE_string("outdir", "inference_results", "Where the mlperf_log_* files go.")
flags.DEFINE_list("batch_sizes", ["1", "2", "4", "8", "16", "32"], "Batch sizes compiled ahead of the test.")
flags.DEFINE_float("batch_timeout_ms", None, "Server dynamic batching: wait at most this long for a batch "
                   "to fill (default 2 ms for Server, 0 otherwise).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("image_size", 224, "Input resolution (224 for the MLPerf models).")
flags.DEFINE_float("width_multiplier", 1.0, "MobileNet width multiplier (1.0 for MLPerf).")
flags.DEFINE_integer("total_sample_count", None, "Limit the QSL to this many samples (debugging).")
flags.DEFINE_integer("min_duration_ms", None, "Override min_duration (not valid for submission).")
flags.DEFINE_integer("min_query_count", None, "Override min_query_count (not valid for submission).")
flags.DEFINE_integer("max_duration_ms", None, "Override max_duration.")
flags.DEFINE_float("target_qps", None, "Override server_target_qps / offline_expected_qps.")


class UserError(Exception):
    pass


def _say(msg: str) -> None:
    print(f"infer: {msg}", file=sys.stderr, flush=True)


def build_model(benchmark: str, dtype: str, width: float):
    import jax.numpy as jnp
    dt = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    if benchmark == "resnet50":
        from mlperf_jax.models import resnet
        return resnet.ResNet50(num_classes=1000, dtype=dt)
    from mlperf_jax.models import mobilenet
    return mobilenet.MobileNetV1(num_classes=1000, width_multiplier=width, dtype=dt)


def load_variables(model, checkpoint_dir: str | None, image_size: int):
    import jax
    import jax.numpy as jnp
    if checkpoint_dir:
        from mlperf_jax import checkpoint
        try:
            return checkpoint.restore_variables(checkpoint_dir), f"checkpoint {checkpoint_dir}"
        except FileNotFoundError as e:
            raise UserError(f"--checkpoint_dir: {e}") from None
    _say("WARNING: no --checkpoint_dir: using RANDOM weights; accuracy results are meaningless.")
    return (jax.jit(lambda k: model.init(k, jnp.zeros((1, image_size, image_size, 3)), train=False))(
        jax.random.key(0)), "random init")


def make_qsl(data_dir: str | None, image_size: int, count: int | None, benchmark: str):
    from mlperf_jax.inference import ImageNetQSL, SyntheticImageQSL, find_imagenet_val
    if data_dir:
        val = find_imagenet_val(data_dir)
        if val is None:
            raise UserError(f"--data_dir: no ImageNet validation set under {os.path.abspath(data_dir)} "
                            "(looked for val_map.txt in ., val/, imagenet/val/); prepare it as the MLPerf "
                            "reference does: the 50,000 validation JPEGs plus val_map.txt ('file label' lines)")
        return (ImageNetQSL(val, preprocessing=benchmark, image_size=image_size, count=count),
                f"ImageNet {val}")
    _say(f"WARNING: no --data_dir: using a SYNTHETIC QSL of random {image_size}x{image_size} images; "
         "accuracy results are meaningless.")
    return SyntheticImageQSL(image_size=image_size, total=count or 50_000), "synthetic"


def run(argv_unused=None) -> int:
    from mlperf_jax import loadgen as lg

    bench = FLAGS.benchmark
    if bench is None:
        raise UserError(f"--benchmark is required (one of {', '.join(BENCHMARKS)})")
    if bench not in BENCHMARKS:
        raise UserError(f"--benchmark={bench}: unknown benchmark; expected one of {', '.join(BENCHMARKS)}")
    if FLAGS.scenario not in SCENARIOS:
        raise UserError(f"--scenario={FLAGS.scenario}: expected one of {', '.join(SCENARIOS)}")
    if FLAGS.mode not in MODES:
        raise UserError(f"--mode={FLAGS.mode}: expected one of {', '.join(MODES)}")
    try:
        batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    except ValueError:
        raise UserError(f"--batch_sizes={','.join(FLAGS.batch_sizes)}: expected integers") from None
    if not batch_sizes or min(batch_sizes) < 1:
        raise UserError("--batch_sizes: every batch size must be >= 1")
    if FLAGS.image_size < 32:
        raise UserError(f"--image_size={FLAGS.image_size}: must be >= 32")
    if FLAGS.user_conf and not os.path.isfile(FLAGS.user_conf):
        raise UserError(f"--user_conf: no file at {os.path.abspath(FLAGS.user_conf)}")
    if FLAGS.total_sample_count is not None and FLAGS.total_sample_count < 1:
        raise UserError("--total_sample_count: must be >= 1")

    scenario = FLAGS.scenario
    settings = lg.TestSettings(scenario=lg.TestScenario[scenario], mode=lg.TestMode[MODES[FLAGS.mode]])
    settings.from_config(FLAGS.user_conf, bench, scenario)
    settings.mode = lg.TestMode[MODES[FLAGS.mode]]  # the flag wins over a 'mode' key
    overridden = []
    for flag, field in (("min_duration_ms", "min_duration_ms"), ("min_query_count", "min_query_count"),
                        ("max_duration_ms", "max_duration_ms")):
        v = getattr(FLAGS, flag)
        if v is not None:
            if v < 0:
                raise UserError(f"--{flag}={v}: must be >= 0")
            setattr(settings, field, v)
            overridden.append(flag)
    if FLAGS.target_qps is not None:
        if FLAGS.target_qps <= 0:
            raise UserError(f"--target_qps={FLAGS.target_qps}: must be > 0")
        settings.server_target_qps = settings.offline_expected_qps = FLAGS.target_qps
        overridden.append("target_qps")
    settings.validate()
    if overridden:
        _say(f"note: {', '.join(overridden)} overridden on the command line; not a valid submission setting.")

    qsl, qsl_desc = make_qsl(FLAGS.data_dir, FLAGS.image_size, FLAGS.total_sample_count, bench)
    model = build_model(bench, FLAGS.dtype, FLAGS.width_multiplier)
    variables, var_desc = load_variables(model, FLAGS.checkpoint_dir, FLAGS.image_size)

    import jax
    from mlperf_jax.inference import ClassifierSUT
    timeout = FLAGS.batch_timeout_ms
    if timeout is None:
        timeout = 2.0 if scenario == "Server" else 0.0
    if scenario in ("SingleStream",):
        batch_sizes = [1] + batch_sizes
    print(f"infer: {bench} {scenario} {FLAGS.mode}; QSL: {qsl_desc}; weights: {var_desc}; "
          f"{len(jax.local_devices())} {jax.default_backend()} device(s)", flush=True)
    t0 = time.perf_counter()
    sut = ClassifierSUT(model.apply, variables, qsl, preprocessing=bench, image_size=FLAGS.image_size,
                        batch_sizes=batch_sizes, batch_timeout_ms=timeout,
                        name=f"mlperf_jax-{bench}-{jax.default_backend()}")
    print(f"infer: compiled batch sizes {sut.batch_sizes} in {time.perf_counter() - t0:.1f} s "
          "(before the test; not timed)", flush=True)
    try:
        result = lg.start_test(sut, qsl, settings, outdir=FLAGS.outdir)
    finally:
        sut.close()
    if sut.error is not None:
        raise UserError(f"the SUT failed: {type(sut.error).__name__}: {sut.error}")
    print(f"infer: logs in {os.path.abspath(FLAGS.outdir)}")
    if result.summary is not None:
        name, value = result.summary.metric
        print(f"infer: Result is : {'VALID' if result.valid else 'INVALID'}; {name} = {value:.6g}")
    if settings.mode in (lg.TestMode.AccuracyOnly, lg.TestMode.SubmissionRun):
        from mlperf_jax.inference import accuracy
        entries = accuracy.read_accuracy_log(os.path.join(FLAGS.outdir, "mlperf_log_accuracy.json"))
        acc, good, total = accuracy.top1(entries, qsl.labels)
        tgt = accuracy.target_top1(bench)
        extra = " (synthetic data / random weights: meaningless)" if qsl_desc == "synthetic" or not FLAGS.checkpoint_dir else ""
        print(f"infer: accuracy={acc:.3f}%, good={good}, total={total}; target {tgt:.3f}%: "
              f"{'PASS' if acc >= tgt else 'FAIL'}{extra}")
    return 0


def _parse_flags(argv):
    try:
        return FLAGS(argv)
    except flags.Error as e:
        print(f"infer: error: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv) -> None:
    from mlperf_jax.loadgen import ConfigError, LoadGenError
    if len(argv) > 1:
        _say(f"error: unexpected arguments {' '.join(argv[1:])}")
        sys.exit(2)
    try:
        sys.exit(run())
    except (UserError, ConfigError, LoadGenError, FileNotFoundError) as e:
        _say(f"error: {e}")
        sys.exit(2)
    except KeyboardInterrupt:
        _say("interrupted")
        sys.exit(130)


def run_main() -> None:
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run_main()
