"""MLPerf Inference with mlperf_jax.loadgen driving a JAX SUT.

    python -m mlperf_jax.infer --benchmark=resnet50 --scenario=Offline --mode=performance \
        [--user_conf=user.conf] [--data_dir=DIR] [--checkpoint_dir=WORKDIR] [--outdir=DIR]

Benchmarks (MLPerf Inference v0.5): resnet50 and mobilenet (ImageNet classification),
ssd-mobilenet (SSD-MobileNet-v1, COCO at 300x300) and ssd-resnet34 (SSD-ResNet34, COCO at
1200x1200).  Without --data_dir a synthetic QSL (random images at the model's input size) is
used, and said; without --checkpoint_dir the weights are random, and said.  Classification images
are preprocessed by the benchmark's convention in ``input_pipelines/preprocessing.py`` (resnet50:
area resize, mean subtraction; mobilenet: bilinear resize, [-1, 1]), the same functions training's
evaluation uses.  Detection reads COCO val2017 in the MLPerf layout (``annotations/
instances_val2017.json`` + ``val2017/``; qsl index = position in the json's ``images``), resizes
to the model's input (``inference/coco_qsl.py``), runs the SSD and its NMS on the device
(``inference/detection_sut.py``) and answers float32 ``[qsl_idx, ymin, xmin, ymax, xmax, score,
coco_category]`` groups, which ``scripts/accuracy_coco.py`` (like the official accuracy-coco.py)
scores.  ``--model=ssd_tiny`` swaps in the tiny SSD (64x64) for tests.  gnmt (GNMT, newstest2014
En-De; ``inference/gnmt_infer.py``) answers int32 token ids from a beam search compiled per (batch,
source length) bucket, scored with sacrebleu by ``scripts/accuracy_translation.py``; without
--data_dir it runs the tiny GNMT on the tiny track's synthetic task.  ``--precision=int8``
(vision models) runs the int8 model of ``inference/quantize.py``, calibrated on the MLPerf
calibration list before the test, then the FP32 model with the same settings (logs in OUTDIR/fp32)
and prints both.  Every user error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import sys
import time

from absl import app, flags

BENCHMARKS = ("resnet50", "mobilenet", "ssd-mobilenet", "ssd-resnet34", "gnmt")
# Detection benchmark -> its MLPerf model (models/ssd.py) and the number of classes of its label
# space (ssd-mobilenet: the TF model's 91 = COCO category ids; ssd-resnet34: 81 contiguous labels).
DETECTION = {"ssd-mobilenet": ("ssd300_mobilenet_v1", 91), "ssd-resnet34": ("ssd1200_resnet34", 81)}
TEST_MODELS = ("ssd_tiny",)
SCENARIOS = ("SingleStream", "MultiStream", "Server", "Offline")
MODES = {"accuracy": "AccuracyOnly", "performance": "PerformanceOnly", "submission": "SubmissionRun",
         "find_peak": "FindPeakPerformance"}

FLAGS = flags.FLAGS
flags.DEFINE_string("benchmark", None, f"One of {', '.join(BENCHMARKS)}.")
flags.DEFINE_string("scenario", "Offline", f"One of {', '.join(SCENARIOS)}.")
flags.DEFINE_string("mode", "performance", f"One of {', '.join(MODES)}.")
flags.DEFINE_string("user_conf", None, "user.conf (model.Scenario.key = value), applied after mlperf.conf.")
flags.DEFINE_string("data_dir", None, "The validation set in the MLPerf layout: ImageNet (val_map.txt + JPEGs) "
                    "or COCO 2017 (annotations/instances_val2017.json + val2017/), or for gnmt the WMT "
                    "preparation's vocabulary with its newstest2014 eval set or newstest2014.en/.de.")
flags.DEFINE_string("checkpoint_dir", None, "An orbax checkpoint directory written by training "
                    "(WORKDIR/run_N/checkpoints); its latest step is loaded.")
flags.DEFINE_string("outdir", "inference_results", "Where the mlperf_log_* files go.")
flags.DEFINE_list("batch_sizes", ["1", "2", "4", "8", "16", "32"], "Batch sizes compiled ahead of the test.")
flags.DEFINE_float("batch_timeout_ms", None, "Server dynamic batching: wait at most this long for a batch "
                   "to fill (default 2 ms for Server, 0 otherwise).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("image_size", None, "Input resolution (default: the model's; 224 for the classifiers; "
                     "the SSDs take only their own: 300, 1200, 64 for ssd_tiny).")
flags.DEFINE_string("model", None, "Detection only: the SSD of models/ssd.py (default: the benchmark's MLPerf "
                    "model; 'ssd_tiny' is a 64x64 test model, not an MLPerf one).")
flags.DEFINE_float("width_multiplier", 1.0, "MobileNet width multiplier (1.0 for MLPerf).")
flags.DEFINE_integer("total_sample_count", None, "Limit the QSL to this many samples (debugging).")
flags.DEFINE_integer("min_duration_ms", None, "Override min_duration (not valid for submission).")
flags.DEFINE_integer("min_query_count", None, "Override min_query_count (not valid for submission).")
flags.DEFINE_integer("max_duration_ms", None, "Override max_duration.")
flags.DEFINE_string("target_qps", None, "Override server_target_qps / offline_expected_qps, or 'auto': measure "
                    "the SUT briefly before the test and set the scenario's expected rate from it.")
flags.DEFINE_string("submission_dir", None, "Also write the run into this <division>/<submitter> directory of an "
                    "MLPerf Inference submission tree (inference/submission.py).")
flags.DEFINE_string("system_name", None, "The system's name in --submission_dir (default: derived from the "
                    "host and the JAX devices).")
flags.DEFINE_enum("rules", "current", ["current", "v0.5"], "Which round's LoadGen rules apply "
                  "(loadgen/rules.py): current (mlcommons-loadgen 6.0) or v0.5 (its mlperf.conf; MultiStream "
                  "issues every 1/target_qps and find_peak searches samples per query).")
flags.DEFINE_enum("precision", "fp32", ["fp32", "int8"], "fp32, or int8: post-training quantization calibrated "
                  "on the MLPerf calibration list (inference/quantize.py; resnet50, mobilenet and the SSDs).")
flags.DEFINE_string("compilation_cache_dir", None, "JAX's persistent compilation cache (default "
                    "$JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME/mlperf_jax/jax_cache; '' switches it off).")
flags.DEFINE_bool("compare_fp32", True, "With --precision=int8: also run the FP32 model with the same settings "
                  "(logs in OUTDIR/fp32) and report both precisions' accuracy or throughput.")


class UserError(Exception):
    pass


def _say(msg: str) -> None:
    print(f"infer: {msg}", file=sys.stderr, flush=True)


def _check_flags(bench: str) -> list[int]:
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
    if FLAGS.image_size is not None and FLAGS.image_size < 32:
        raise UserError(f"--image_size={FLAGS.image_size}: must be >= 32")
    if FLAGS.model is not None and bench not in DETECTION:
        raise UserError(f"--model={FLAGS.model}: only for the detection benchmarks ({', '.join(DETECTION)})")
    if FLAGS.user_conf and not os.path.isfile(FLAGS.user_conf):
        raise UserError(f"--user_conf: no file at {os.path.abspath(FLAGS.user_conf)}")
    if FLAGS.total_sample_count is not None and FLAGS.total_sample_count < 1:
        raise UserError("--total_sample_count: must be >= 1")
    if FLAGS.submission_dir and FLAGS.mode == "find_peak":
        raise UserError("--submission_dir: not with --mode=find_peak (run performance at the QPS it finds)")
    if FLAGS.system_name is not None:
        from mlperf_jax.inference import submission
        try:
            submission.check_system_name(FLAGS.system_name)
        except ValueError as e:
            raise UserError(str(e)) from None
    if FLAGS.precision == "int8":
        from mlperf_jax.inference.quantize import DATASETS
        if bench not in DATASETS:
            raise UserError(f"--precision=int8: not offered for {bench} (only {', '.join(DATASETS)})")
        if FLAGS.dtype != "float32":
            raise UserError(f"--precision=int8 quantizes the float32 model; not with --dtype={FLAGS.dtype}")
    return batch_sizes


def rules_for(bench: str) -> str:
    """The --rules profile to apply. GNMT left the inference suite after v0.5 and today's mlperf.conf
    has no entry for it (its Server bound would fall back to the 10 ms default), so GNMT runs by
    the v0.5 rules unless --rules says otherwise."""
    if bench == "gnmt" and not FLAGS["rules"].present:
        return "v0.5"
    if bench == "gnmt" and FLAGS.rules == "current":
        _say("WARNING: --rules=current has no gnmt entries in its mlperf.conf: the '*' defaults apply")
    return FLAGS.rules


def _settings(lg, bench: str, scenario: str):
    settings = lg.TestSettings(scenario=lg.TestScenario[scenario], mode=lg.TestMode[MODES[FLAGS.mode]])
    from mlperf_jax.loadgen import rules
    rules.get(rules_for(bench)).configure(settings, bench, scenario, FLAGS.user_conf)
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
    from mlperf_jax.inference import planning
    try:
        qps = planning.parse_target_qps(FLAGS.target_qps)
    except ValueError as e:
        raise UserError(str(e)) from None
    if isinstance(qps, float):
        settings.server_target_qps = settings.offline_expected_qps = qps
        overridden.append("target_qps")
    settings.validate()
    if overridden:
        _say(f"note: {', '.join(overridden)} overridden on the command line; not a valid submission setting.")
    return settings


def _build_sut(bench: str, batch_sizes: list[int], timeout: float, precision: str = "fp32", qsl=None):
    """(sut, qsl, qsl description, weights description) for ``bench``; ``qsl``: a (qsl, description)
    to reuse (the FP32 reference run of --precision=int8)."""
    from mlperf_jax.inference import builders
    try:
        return _build_system(builders, bench, batch_sizes, timeout, precision, qsl)
    except builders.SetupError as e:
        raise UserError(str(e)) from None


def _build_system(builders, bench: str, batch_sizes: list[int], timeout: float, precision: str, qsl):
    import jax
    name = f"mlperf_jax-{bench}-{jax.default_backend()}"
    if bench == "gnmt":  # inference/gnmt_infer.py: tiny GNMT on the synthetic task without --data_dir
        from mlperf_jax.inference import gnmt_infer
        try:
            return gnmt_infer.build_gnmt_sut(
                data_dir=FLAGS.data_dir, checkpoint_dir=FLAGS.checkpoint_dir, batch_sizes=batch_sizes,
                batch_timeout_ms=timeout, dtype=FLAGS.dtype, count=FLAGS.total_sample_count, name=name, say=_say)
        except gnmt_infer.GNMTSetupError as e:
            raise UserError(str(e)) from None
    if bench in DETECTION:
        from mlperf_jax.inference import DetectionSUT, detection_sut, ssd_detect_fn
        module, anchors, size, model_name = builders.build_detector(
            bench, FLAGS.model, FLAGS.dtype, *DETECTION[bench], TEST_MODELS, say=_say)
        if FLAGS.image_size is not None and FLAGS.image_size != size:
            raise UserError(f"--image_size={FLAGS.image_size}: {model_name} takes {size}x{size} images only "
                            f"(--model={TEST_MODELS[0]} is the small test model)")
        qsl, qsl_desc = qsl or builders.make_detection_qsl(FLAGS.data_dir, size, FLAGS.total_sample_count,
                                                           bench, say=_say)
        variables, var_desc = builders.load_variables(module, FLAGS.checkpoint_dir, size, say=_say)
        variables = {k: v for k, v in variables.items() if k != "intermediates"}  # sown feature maps
        # ssd-mobilenet's TF model answers in COCO category ids (91 classes); ssd-resnet34's labels
        # 1..80 are the 80 COCO categories in id order (the reference's label map from
        # instances_val2017.json): a property of the model, not of the annotation file at hand.
        table = None
        if bench == "ssd-resnet34":
            from mlperf_jax.inference.coco_qsl import COCO_CATEGORY_IDS, label_table
            table = label_table(COCO_CATEGORY_IDS)
            if len(table) != module.num_classes:
                raise UserError(f"{model_name} has {module.num_classes} classes; {bench} needs {len(table)}")
        if precision == "int8":
            module, variables, var_desc = _int8(module, variables, qsl, bench, size, var_desc)
        detect = ssd_detect_fn(module, anchors, **detection_sut.POSTPROCESS[bench])
        sut = DetectionSUT(detect, variables, qsl, preprocessing=bench, image_size=size, label_to_category=table,
                           batch_sizes=batch_sizes, batch_timeout_ms=timeout, name=name)
        return sut, qsl, qsl_desc, f"{var_desc} ({model_name})"
    from mlperf_jax.inference import ClassifierSUT
    size = FLAGS.image_size or 224
    qsl, qsl_desc = qsl or builders.make_qsl(FLAGS.data_dir, size, FLAGS.total_sample_count, bench, say=_say)
    model = builders.build_model(bench, FLAGS.dtype, FLAGS.width_multiplier)
    variables, var_desc = builders.load_variables(model, FLAGS.checkpoint_dir, size, say=_say)
    if precision == "int8":
        model, variables, var_desc = _int8(model, variables, qsl, bench, size, var_desc)
    sut = ClassifierSUT(model.apply, variables, qsl, preprocessing=bench, image_size=size,
                        batch_sizes=batch_sizes, batch_timeout_ms=timeout, name=name)
    return sut, qsl, qsl_desc, var_desc


def _int8(model, variables, qsl, bench: str, size: int, var_desc: str):
    """(int8 module, int8 variables, description): calibrated on the MLPerf calibration list."""
    from mlperf_jax.inference import quantize
    t0 = time.perf_counter()
    try:
        module, qvars, how = quantize.int8_model(model, variables, qsl, benchmark=bench, image_size=size)
    except ValueError as e:
        raise UserError(f"--precision=int8: {e}") from None
    return module, qvars, f"{var_desc}; INT8, {how} in {time.perf_counter() - t0:.1f} s (before the test)"


def _compare_fp32(bench: str, batch_sizes: list[int], timeout: float, qsl, qsl_desc: str, settings, result) -> None:
    """--precision=int8: run the FP32 model on the same QSL with the same settings (logs in
    OUTDIR/fp32) and print both precisions' accuracy (same samples) or headline metric."""
    from mlperf_jax import loadgen as lg
    from mlperf_jax.inference import quantize
    outdir = os.path.join(FLAGS.outdir, "fp32")
    sut, *_ = _build_sut(bench, batch_sizes, timeout, "fp32", qsl=(qsl, qsl_desc))
    print(f"infer: fp32 reference run, same settings; logs in {os.path.abspath(outdir)}", flush=True)
    try:
        ref = lg.start_test(sut, qsl, settings, outdir=outdir, progress=True)
    finally:
        sut.close()
    if sut.error is not None:
        raise UserError(f"the fp32 reference SUT failed: {type(sut.error).__name__}: {sut.error}")
    if result.summary is not None and ref.summary is not None:
        print(f"infer: {quantize.throughput_line(result.summary.metric, ref.summary.metric)}")
    if settings.mode in (lg.TestMode.AccuracyOnly, lg.TestMode.SubmissionRun):
        int8, fp32 = (quantize.log_accuracy(bench, d, qsl) for d in (FLAGS.outdir, outdir))
        print(f"infer: {quantize.accuracy_line(bench, int8, fp32)}")


def _report_accuracy(bench: str, qsl, qsl_desc: str) -> str | None:
    """Print the accuracy; return the line the reference accuracy script prints (None: no metric)."""
    path = os.path.join(FLAGS.outdir, "mlperf_log_accuracy.json")
    meaningless = qsl_desc == "synthetic" or not FLAGS.checkpoint_dir
    extra = " (synthetic data / random weights: meaningless)" if meaningless else ""
    if bench == "gnmt":
        from mlperf_jax.inference import gnmt_infer
        return f"BLEU: {gnmt_infer.report_accuracy(path, qsl, random_weights=not FLAGS.checkpoint_dir):.2f}"
    if bench in DETECTION:
        from mlperf_jax.inference import coco_accuracy
        if qsl_desc == "synthetic":
            from mlperf_jax.inference import accuracy
            entries = accuracy.read_accuracy_log(path)
            n = sum(len(e["data"]) // 56 for e in entries)  # 7 float32 = 28 bytes = 56 hex digits
            print(f"infer: {len({e['qsl_idx'] for e in entries})} samples, {n} detections; no mAP "
                  "without annotations (synthetic QSL)")
            return None
        m, counts = coco_accuracy.evaluate_log(path, qsl.annotation_file)
        tgt = coco_accuracy.target_map(bench)
        print(f"infer: mAP={100 * m:.3f}% over {counts['images']} images ({counts['detections']} detections); "
              f"target {tgt:.3f}%: {'PASS' if 100 * m >= tgt else 'FAIL'}{extra}")
        return f"mAP={100 * m:.3f}%"  # the reference accuracy-coco.py's line
    from mlperf_jax.inference import accuracy
    entries = accuracy.read_accuracy_log(path)
    acc, good, total = accuracy.top1(entries, qsl.labels)
    tgt = accuracy.target_top1(bench)
    print(f"infer: accuracy={acc:.3f}%, good={good}, total={total}; target {tgt:.3f}%: "
          f"{'PASS' if acc >= tgt else 'FAIL'}{extra}")
    return f"accuracy={acc:.3f}%, good={good}, total={total}"  # the reference accuracy-imagenet.py's line


def _cache_note(compiles) -> str:
    from mlperf_jax import compilation_cache
    return (f"; {compiles.hits} of {compiles.requests} compiles from the persistent compilation cache"
            if compilation_cache.in_use() else "")


def run(argv_unused=None) -> int:
    from mlperf_jax import loadgen as lg

    bench = FLAGS.benchmark
    batch_sizes = _check_flags(bench)
    scenario = FLAGS.scenario
    settings = _settings(lg, bench, scenario)

    import jax
    from mlperf_jax import compilation_cache
    try:
        compilation_cache.enable_from_flag(FLAGS.compilation_cache_dir)
    except ValueError as e:
        raise UserError(str(e)) from None
    timeout = FLAGS.batch_timeout_ms
    if timeout is None:
        timeout = 2.0 if scenario == "Server" else 0.0
    if scenario in ("SingleStream",):
        batch_sizes = [1] + batch_sizes
    t0 = time.perf_counter()
    with compilation_cache.count_compiles() as compiles:
        sut, qsl, qsl_desc, var_desc = _build_sut(bench, batch_sizes, timeout, FLAGS.precision)
    if bench == "gnmt" and not FLAGS["rules"].present:
        print("infer: gnmt runs by the v0.5 rules (as --rules=v0.5): the only round whose mlperf.conf "
              "has it (Server 250 ms at the 97th percentile)", flush=True)
    print(f"infer: {bench} {scenario} {FLAGS.mode}; QSL: {qsl_desc}; weights: {var_desc}; "
          f"{len(jax.local_devices())} {jax.default_backend()} device(s)", flush=True)
    print(f"infer: compiled batch sizes {sut.batch_sizes} in {time.perf_counter() - t0:.1f} s "
          f"(before the test; not timed){_cache_note(compiles)}", flush=True)
    from mlperf_jax.inference import planning
    measured = None
    if FLAGS.target_qps is not None and FLAGS.target_qps.strip().lower() == "auto":
        try:
            measured, lines = planning.auto_target(sut, qsl, settings)
        except RuntimeError as e:
            sut.close()
            raise UserError(f"--target_qps=auto: {e}") from None
        print(*(f"infer: {x}" for x in lines), sep="\n", flush=True)
    if settings.mode != lg.TestMode.FindPeakPerformance:
        for line in planning.plan_lines(settings, qsl.total_sample_count, qsl.performance_sample_count, measured):
            print(f"infer: {line}", flush=True)
    try:
        result = lg.start_test(sut, qsl, settings, outdir=FLAGS.outdir, progress=True)
    finally:
        sut.close()
    if sut.error is not None:
        raise UserError(f"the SUT failed: {type(sut.error).__name__}: {sut.error}")
    print(f"infer: logs in {os.path.abspath(FLAGS.outdir)}")
    if result.summary is not None:
        name, value = result.summary.metric
        print(f"infer: Result is : {'VALID' if result.valid else 'INVALID'}; {name} = {value:.6g}")
        from mlperf_jax.loadgen import results_v05
        for line in results_v05.report_lines(result.summary):  # rules v0.5: reasons, find-peak trials
            print(f"infer: {line}")
    acc_line = None
    if settings.mode in (lg.TestMode.AccuracyOnly, lg.TestMode.SubmissionRun):
        acc_line = _report_accuracy(bench, qsl, qsl_desc)
    if FLAGS.precision == "int8" and FLAGS.compare_fp32:
        _compare_fp32(bench, batch_sizes, timeout, qsl, qsl_desc, settings, result)
    if FLAGS.submission_dir:
        from mlperf_jax.inference import submission
        try:
            where = submission.write_run(
                FLAGS.submission_dir, outdir=FLAGS.outdir, benchmark=bench, scenario=scenario, mode=FLAGS.mode,
                settings=settings, accuracy_text=acc_line, command=sys.argv, user_conf=FLAGS.user_conf,
                system_name=FLAGS.system_name, weights=var_desc, variables=getattr(sut, "variables", None),
                dtype=FLAGS.dtype, checkpoint_dir=FLAGS.checkpoint_dir, data=qsl_desc,
                precision=FLAGS.precision)
        except (OSError, ValueError) as e:
            raise UserError(f"--submission_dir: {e}") from None
        print(f"infer: submission files in {where}")
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
