"""Every shipped closed-division config writes a log head that passes its closed rules in the
official compliance checker (ruleset 0.7.0; NCF with the adapted v0.5 rules), and the v0.6 line
format passes ruleset 0.6.0 for the benchmarks it covers."""
import os
import subprocess
import sys

import pytest

from mlperf_jax import benchmarks, mllog, rounds
from mlperf_jax.driver import loop
from mlperf_jax.driver.options import RunOptions

K = mllog.constants
# steps per epoch as the real datasets give them (ResNet: ImageNet's 1,281,167 images)
SHIPPED = [("resnet50", v) for v in benchmarks.get("resnet50").config_names if v != "tiny"] + [
    ("transformer", "reference"), ("gnmt", "reference"), ("ncf", "reference"),
    ("ssd", "reference"), ("maskrcnn", "reference")]


def _write_log(path, bench, config, *, log_format="mllog", metric_value=None):
    """The lines a converged run writes, with the config's own hyperparameters."""
    opts = RunOptions(workdir=os.path.dirname(path), log_format=log_format,
                      submission_platform="test_platform")
    spe = {"resnet50": 1281167, "ssd": 117266}.get(bench.name, 1000 * int(
        config.global_batch_size)) // int(config.global_batch_size)
    target = bench.target(config)
    value = target.log_value({k: v + 1e-3 for k, v in target.thresholds.items()}) \
        if metric_value is None else metric_value
    log = mllog.RunLogger(str(path), log_format=log_format)
    loop.log_submission(log, bench, config, opts, "closed", seed=1)
    loop.log_hparams(log, bench, config, spe)
    log.event(K.TRAIN_SAMPLES, spe * int(config.global_batch_size))
    log.event(K.EVAL_SAMPLES, int(config.get("num_users", 1000)))  # NCF: one per user
    log.end(K.INIT_STOP)
    log.start(K.RUN_START)
    log.start(K.BLOCK_START, metadata={"first_epoch_num": 1, "epoch_count": 1})
    log.start(K.EPOCH_START, metadata={"epoch_num": 1})
    log.end(K.EPOCH_STOP, metadata={"epoch_num": 1})
    log.end(K.BLOCK_STOP, metadata={"first_epoch_num": 1})
    log.start(K.EVAL_START, metadata={"epoch_num": 1})
    log.event(K.EVAL_ACCURACY, value, metadata={"epoch_num": 1})
    log.end(K.EVAL_STOP, metadata={"epoch_num": 1})
    log.end(K.RUN_STOP, metadata={"status": "success"})
    log.close()


def _check(path, ruleset):
    proc = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                           "training", "--ruleset", ruleset, str(path)],
                          capture_output=True, text=True, cwd=os.path.dirname(path))
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("name,variant", SHIPPED)
def test_shipped_config_passes_closed_rules(tmp_path, name, variant):
    bench = benchmarks.get(name)
    config = bench.get_config(variant)
    assert not bench.closed_division_violations(config, bench.get_config("reference"))
    path = tmp_path / "result_0.txt"
    _write_log(path, bench, config)
    if name == "ncf":
        from mlperf_jax.benchmarks import ncf
        ok, messages = ncf.check_log(str(path))
        assert ok, messages
        return
    code, out = _check(path, "0.7.0")
    assert code == 0 and f"closed_{bench.mlperf_name}" in out, out


def test_checker_rejects_a_log_below_the_target(tmp_path):
    """The same log with the accuracy just under the target fails: the test above can fail."""
    bench = benchmarks.get("resnet50")
    path = tmp_path / "result_0.txt"
    _write_log(path, bench, bench.get_config("reference"), metric_value=0.7589)
    code, out = _check(path, "0.7.0")
    assert code != 0 and "eval_accuracy" in out


def test_lars_weight_decays_are_what_the_closed_rule_allows():
    """closed_resnet_lars.yaml: weight decay must be 1e-4 * 2^k (lars_4096 once had 2e-3)."""
    import math
    from mlperf_jax.configs import resnet50
    for batch, (_, _, _, wd, _) in resnet50.LARS_POINTS.items():
        assert math.log2(wd / 1e-4) == int(math.log2(wd / 1e-4)), (batch, wd)


@pytest.mark.parametrize("name", ["resnet50", "transformer", "gnmt", "ssd", "maskrcnn"])
def test_v06_line_format_passes_ruleset_060(tmp_path, name):
    bench = benchmarks.get(name)
    path = tmp_path / "result_0.txt"
    _write_log(path, bench, bench.get_config("reference"), log_format="v0.6")
    assert open(path).read().startswith(":::MLL ")
    code, out = _check(path, rounds.checker_ruleset("v0.6"))
    assert code == 0, out


def test_driver_writes_v06_lines_that_pass_ruleset_060(tmp_path):
    """The driver end to end with --round=v0.6 --log_format=v0.6 (a shrunk Transformer tiny
    track): the log is :::MLL lines with the keys 0.6.0 wants, and the checker accepts it."""
    from mlperf_jax import train as T
    bench = benchmarks.get("transformer")
    config = bench.get_config("tiny")
    config.synthetic.num_train, config.synthetic.num_eval = 2048, 64
    config.eval_batch_size, config.beam_size, config.target, config.num_epochs = 64, 2, 0.30, 6
    opts = T.RunOptions(workdir=str(tmp_path), progress=False, config_name="tiny", num_runs=1,
                        checkpoint=False, round="v0.6", log_format="v0.6")
    run = T.train(bench, config, opts, print_fn=lambda s: None).runs[0]
    assert run.status == "success", run.reason
    text = open(run.log_path).read()
    assert text.startswith(":::MLL ") and "submission_poc_name" in text
    code, out = _check(run.log_path, "0.6.0")
    assert code == 0, out
