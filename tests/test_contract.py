"""The contract's newer parts through the real driver: a two-metric target logged as a dict, the
eval context, parameter-dependent data from an extra compiled program with a variable step count,
per-epoch hyperparameter lines and data state that survives a kill and resume."""
import json
import os
import subprocess
import sys
import time

import jax
import pytest

from _toy_benchmarks import SelfPlay, TwoMetric
from mlperf_jax import train as T


def _opts(workdir, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("config_name", "tiny")
    kw.setdefault("num_runs", 1)
    return T.RunOptions(workdir=str(workdir), **kw)


def _records(path):
    with open(path) as f:
        return [json.loads(l[len(":::MLLOG "):]) for l in f if l.startswith(":::MLLOG ")]


def _checker(path):
    proc = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                           "training", "--ruleset", "0.7.0", os.path.abspath(path)],
                          capture_output=True, text=True, cwd=os.path.dirname(path))
    return proc.returncode, proc.stdout + proc.stderr


def test_two_metric_target_needs_both_and_logs_a_dict(tmp_path):
    bench = TwoMetric()
    res = T.train(bench, bench.get_config("tiny"), _opts(tmp_path), print_fn=lambda s: None)
    r = res.runs[0]
    assert r.status == "success", r.reason
    evals = [x for x in _records(r.log_path) if x["key"] == "eval_accuracy"]
    values = [e["value"] for e in evals]
    assert all(set(v) == {"BBOX", "SEGM"} for v in values)
    # it stopped at the first eval where both thresholds hold, not at the first where one does
    both = [v["BBOX"] >= 0.9 and v["SEGM"] >= 0.9 for v in values]
    assert both[-1] and not any(both[:-1])
    assert any(v["BBOX"] >= 0.9 and v["SEGM"] < 0.9 for v in values[:-1]), values
    assert r.metrics == pytest.approx(values[-1]) and r.metric == values[-1]["BBOX"]
    # the official checker reads the dict form (open maskrcnn rules: BBOX and SEGM keys)
    code, out = _checker(r.log_path)
    assert code == 0, out
    with open(res.results_path) as f:
        assert json.load(f)["target"]["thresholds"] == {"BBOX": 0.9, "SEGM": 0.9}
    # killed after the final eval was checkpointed but before the result was recorded: resuming
    # finds the target already reached and trains no further
    os.remove(tmp_path / "run_0" / "result.json")
    lines = open(r.log_path).read().splitlines(True)
    assert '"run_stop"' in lines[-1]
    open(r.log_path, "w").write("".join(lines[:-1]))  # the kill came before run_stop
    again = T.train(bench, bench.get_config("tiny"), _opts(tmp_path), print_fn=lambda s: None)
    r2 = again.runs[0]
    assert r2.status == "success" and r2.resumed == 1
    assert r2.epochs == r.epochs and r2.samples == r.samples
    assert r2.time_to_train_s >= r.time_to_train_s * 0.5
    keys = [x["key"] for x in _records(r.log_path)]
    assert keys.count("run_stop") == 1 and keys[-2:] == ["run_resumed", "run_stop"]
    code, out = _checker(r.log_path)
    assert code == 0, out


def _self_play(tmp_path, record, callbacks=None, **kw):
    bench = SelfPlay(record)
    return T.train(bench, bench.get_config("tiny"), _opts(tmp_path, **kw), print_fn=lambda s: None,
                   callbacks=callbacks)


def test_parameter_dependent_data_through_the_driver(tmp_path):
    record = []
    res = _self_play(tmp_path, record, checkpoint=False)
    r = res.runs[0]
    assert r.status == "aborted" and r.epochs == 4  # target unreachable: the whole budget ran
    # the data of each epoch came from the compiled program and the parameters of that moment
    assert [e for e, _, _ in record] == [1, 2, 3, 4]
    assert record[0][1] == pytest.approx(0.4)  # the initial weights (4 x 0.1)
    assert len({round(s, 6) for _, s, _ in record}) == 4  # training moved them every epoch
    assert all(issubclass(t, jax.stages.Compiled) for _, _, t in record)
    # the step count grows with the replay window: 32 games, then 64 (2 epochs of games)
    assert r.samples == (2 + 4 + 4 + 4) * 16
    recs = _records(r.log_path)
    games = [x for x in recs if x["key"] == "actual_selfplay_games_per_generation"]
    assert [g["metadata"]["epoch_num"] for g in games] == [1, 2, 3, 4]
    assert all(g["value"] == 32 for g in games)
    code, out = _checker(r.log_path)
    assert code == 0, out


class _Killed(Exception):
    pass


def test_data_state_survives_kill_and_resume(tmp_path):
    full = _self_play(tmp_path / "a", [], checkpoint=False)

    def kill(run, step):
        if step >= 8:  # inside epoch 3 (steps 7-10), after the window grew
            raise _Killed()

    with pytest.raises(_Killed):
        _self_play(tmp_path / "b", [], checkpoint_every_steps=1,
                   callbacks=T.Callbacks(on_step=kill))
    record = []
    resumed = _self_play(tmp_path / "b", record, checkpoint_every_steps=1)
    # the window came back from the checkpoint: epoch 3 was not played again, epoch 4 was
    assert [e for e, _, _ in record] == [4]
    assert resumed.checksums[0] == pytest.approx(full.checksums[0], rel=1e-6)
    assert resumed.runs[0].samples == full.runs[0].samples
    assert resumed.runs[0].resumed == 1


def test_pretrained_weights_fill_the_named_subtree_before_the_clock(tmp_path):
    """--config.pretrained: a benchmark that names a subtree starts from an orbax checkpoint of
    ours (with a zero learning rate the parameters stay exactly the loaded ones)."""
    from _helpers import tiny_resnet_config
    from mlperf_jax.benchmarks.resnet50 import ResNet50Benchmark

    class FineTune(ResNet50Benchmark):
        name = "toy_finetune"

        def pretrained_subtree(self, config):
            return ""

    config = tiny_resnet_config(num_epochs=1)
    first = T.train("resnet50", config, _opts(tmp_path / "a"), print_fn=lambda s: None)
    lines = []
    frozen = tiny_resnet_config(num_epochs=1, base_learning_rate=0.0, weight_decay=0.0,
                                pretrained=str(tmp_path / "a" / "run_0" / "checkpoints"))
    second = T.train(FineTune(), frozen, _opts(tmp_path / "b", checkpoint=False),
                     print_fn=lines.append)
    assert second.checksums[0] == pytest.approx(first.checksums[0], rel=1e-7)
    assert any("pretrained weights for '(all)'" in l for l in lines), lines
    # a benchmark that takes no pretrained weights refuses the field with one sentence
    with pytest.raises(T.UserError, match="takes no pretrained weights"):
        T.train("resnet50", frozen, _opts(tmp_path / "c"), print_fn=lambda s: None)
    # a missing file is a user error naming it
    missing = tiny_resnet_config(pretrained=str(tmp_path / "nope.pth"))
    with pytest.raises(T.UserError, match="nope.pth"):
        T.train(FineTune(), missing, _opts(tmp_path / "d", checkpoint=False),
                print_fn=lambda s: None)


def test_explicit_eval_epochs(tmp_path):
    """``config.eval_epochs`` (SSD's reference evaluates at fixed epochs): evals there and at the
    end of the budget, and blocks sized to match."""
    bench = TwoMetric()
    config = bench.get_config("tiny")
    config.num_epochs, config.learning_rate = 6, 0.001  # too slow to reach 0.9 in 6 epochs
    config.eval_epochs = (2, 5)
    r = T.train(bench, config, _opts(tmp_path), print_fn=lambda s: None).runs[0]
    assert r.status == "aborted"
    recs = _records(r.log_path)
    assert [x["metadata"]["epoch_num"] for x in recs if x["key"] == "eval_accuracy"] == [2, 5, 6]
    blocks = [{k: x["metadata"][k] for k in ("first_epoch_num", "epoch_count")}
              for x in recs if x["key"] == "block_start"]
    assert blocks == [{"first_epoch_num": 1, "epoch_count": 2}, {"first_epoch_num": 3,
                      "epoch_count": 3}, {"first_epoch_num": 6, "epoch_count": 1}]


class _SlowUntimedEval(SelfPlay):
    """SelfPlay whose evaluation takes a second and is off the clock (as MiniGo's match)."""

    eval_timed = False

    def eval_metric(self, config, outputs, context):
        time.sleep(1.0)
        return super().eval_metric(config, outputs, context)


def test_untimed_evaluation_is_left_out_of_the_clock_and_the_log(tmp_path):
    bench = _SlowUntimedEval([])
    t0 = time.perf_counter()
    r = T.train(bench, bench.get_config("tiny"), _opts(tmp_path, checkpoint=False),
                print_fn=lambda s: None).runs[0]
    wall = time.perf_counter() - t0
    recs = _records(r.log_path)
    t = {k: [x["time_ms"] / 1000 for x in recs if x["key"] == k]
         for k in ("run_start", "run_stop", "epoch_stop", "eval_start", "eval_accuracy",
                   "eval_stop", "epoch_start")}
    logged = t["run_stop"][0] - t["run_start"][0]
    # four 1 s evaluations: neither the result nor the log's run counts them
    assert r.time_to_train_s < wall - 4.0 and abs(logged - r.time_to_train_s) < 0.5
    # each evaluation carries the moment its epoch's training ended, and time never runs back
    for stop, a, b, c in zip(t["epoch_stop"], t["eval_start"], t["eval_accuracy"], t["eval_stop"]):
        assert stop <= a == b == c < stop + 0.05
    times = [x["time_ms"] for x in recs]
    assert times == sorted(times)
    code, out = _checker(r.log_path)
    assert code == 0, out
