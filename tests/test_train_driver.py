"""The time-to-train driver on the tiny track: stop at target, abort on NaN, resume, MLPerf logs."""
import json
import os
import subprocess
import sys
import time

import pytest

from mlperf_jax import train as T
from mlperf_jax import results as R
from _helpers import tiny_resnet_config


def _opts(workdir, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("config_name", "tiny")
    return T.RunOptions(workdir=str(workdir), **kw)


def _log_records(path):
    out = []
    with open(path) as f:
        for line in f:
            if line.startswith(":::MLLOG "):
                out.append(json.loads(line[len(":::MLLOG "):]))
    return out


def compliance(path, ruleset="0.7.0"):
    """The official checker, with its own rule files (it writes a log file into its cwd)."""
    return subprocess.run(
        [sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage", "training",
         "--ruleset", ruleset, os.path.abspath(path)], capture_output=True, text=True,
        cwd=os.path.dirname(os.path.abspath(path)))


@pytest.fixture(scope="module")
def converged_run(tmp_path_factory):
    """The real tiny config, one run: it must reach the target."""
    from mlperf_jax.configs import resnet50
    config = resnet50.get_config("tiny")
    wd = tmp_path_factory.mktemp("converged")
    return T.train("resnet50", config, _opts(wd, num_runs=1, checkpoint=False),
                   print_fn=lambda s: None)


def test_tiny_track_reaches_target_and_stops(converged_run):
    r = converged_run.runs[0]
    assert r.status == "success", r.reason
    assert r.metric >= 0.80
    assert r.epochs < 10  # stopped at the target, before the budget
    recs = _log_records(r.log_path)
    keys = [x["key"] for x in recs]
    evals = [x for x in recs if x["key"] == "eval_accuracy"]
    # it stopped right after the first eval that met the target
    assert evals[-1]["value"] >= 0.80 and all(e["value"] < 0.80 for e in evals[:-1])
    assert keys.index("init_stop") < keys.index("run_start") < keys.index("block_start")
    assert recs[-1]["key"] == "run_stop" and recs[-1]["metadata"]["status"] == "success"
    assert r.throughput > 0 and r.compile_time_s > 0
    assert "TINY TRACK" in converged_run.table and "olympic" in converged_run.table


def test_run_log_passes_compliance_checker(converged_run):
    proc = compliance(converged_run.runs[0].log_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_closed_division_log_keys_pass_closed_rules(tmp_path):
    """A closed-division run (forced onto synthetic data by the library API) logs every key the
    closed resnet ruleset asks for; the checker fails it only on the accuracy bound."""
    config = tiny_resnet_config(num_epochs=1)
    config.division = "closed"
    config.dataset = "synthetic"
    from mlperf_jax import benchmarks, sharding
    from mlperf_jax.driver.loop import run_once
    bench = benchmarks.get("resnet50")
    opts = _opts(tmp_path, num_runs=1, checkpoint=False)
    mesh = sharding.make_mesh()
    r, _ = run_once(bench, config, opts, run=0, seed=3, mesh=mesh,
                      log_path=str(tmp_path / "result_0.txt"), ckpt_dir=None)
    out = compliance(r.log_path)
    text = out.stdout + out.stderr
    # every required key is present and valid: the one failed check is the accuracy target,
    # which a two-epoch run on synthetic data cannot meet
    assert "closed_resnet_sgd.yaml" in text, text
    assert "Required" not in text, text
    failed = [l for l in text.splitlines() if "Failed" in l]
    assert len(failed) == 1 and "eval_accuracy" in failed[0] and "0.7590" in failed[0], text


def test_nan_loss_aborts_at_the_next_log_point(tmp_path):
    config = tiny_resnet_config(base_learning_rate=1e30, num_epochs=2)
    res = T.train("resnet50", config, _opts(tmp_path, num_runs=1, checkpoint=False,
                                            log_every_steps=3), print_fn=lambda s: None)
    r = res.runs[0]
    assert r.status == "aborted"
    assert "diverged" in r.reason and ("nan" in r.reason or "inf" in r.reason)
    recs = _log_records(r.log_path)
    assert recs[-1]["key"] == "run_stop" and recs[-1]["metadata"]["status"] == "aborted"
    # the loss is read back every 3 steps (the previous step's): it stops at a log point, within
    # the first epoch of 8 steps, naming the step whose loss was not finite
    import re
    bad_step = int(re.search(r"at step (\d+)", r.reason).group(1))
    stopped = round(r.epochs * 8)
    assert stopped % 3 == 0 and bad_step == stopped - 1 and r.epochs < 1, (r.reason, r.epochs)


class _Killed(Exception):
    pass


def _kill_after(n_steps, times):
    def on_step(run, step):
        times.append(time.perf_counter())
        if run == 0 and step >= n_steps:
            raise _Killed(f"killed after step {step}")
    return T.Callbacks(on_step=on_step)


def test_kill_and_resume_matches_uninterrupted(tmp_path, converged_run):
    """The real tiny track, killed in its second epoch (128 steps each) and resumed, ends as the
    uninterrupted run did, with an honest clock and one log that passes the checker."""
    from mlperf_jax.configs import resnet50
    config = resnet50.get_config("tiny")
    full = converged_run
    times = []
    with pytest.raises(_Killed):
        T.train("resnet50", config, _opts(tmp_path / "b", num_runs=1, checkpoint_every_steps=64),
                print_fn=lambda s: None, callbacks=_kill_after(200, times))
    before_kill = times[-1] - times[0]  # from the first step's dispatch to the kill
    ckpt_dir = tmp_path / "b" / "run_0" / "checkpoints"
    assert "192" in os.listdir(ckpt_dir)  # last periodic checkpoint before the kill at step 200
    log_before = open(tmp_path / "b" / "result_0.txt").read()
    resumed = T.train("resnet50", config, _opts(tmp_path / "b", num_runs=1,
                                               checkpoint_every_steps=4), print_fn=lambda s: None)
    r = resumed.runs[0]
    # same parameters and metric as the uninterrupted run
    assert resumed.checksums[0] == pytest.approx(full.checksums[0], rel=1e-6)
    assert r.metric == pytest.approx(full.runs[0].metric, abs=1e-6)
    assert r.epochs == full.runs[0].epochs and r.samples == full.runs[0].samples
    # the clock: the time before the kill counts, and the time after it
    assert r.resumed == 1
    assert r.time_to_train_s >= before_kill > 0
    recs = _log_records(tmp_path / "b" / "result_0.txt")
    assert r.time_to_train_s >= resumed_time_floor(recs)
    # the log keeps the first part (appended to, never truncated) and passes the checker
    log_after = open(tmp_path / "b" / "result_0.txt").read()
    assert log_after.startswith(log_before)
    keys = [x["key"] for x in _log_records(tmp_path / "b" / "result_0.txt")]
    assert keys.count("run_start") == 1 and keys.count("run_stop") == 1
    assert keys.count("init_start") == 1 and "run_resumed" in keys
    proc = compliance(tmp_path / "b" / "result_0.txt")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # results.json and the table say it was resumed
    with open(resumed.results_path) as f:
        saved = json.load(f)
    assert saved["runs"][0]["resumed"] == 1 and saved["resumed_runs"] == [0]
    assert "(resumed)" in resumed.table
    # a rerun after completion reuses the finished run
    again = T.train("resnet50", config, _opts(tmp_path / "b", num_runs=1), print_fn=lambda s: None)
    assert again.runs[0].time_to_train_s == r.time_to_train_s


def resumed_time_floor(recs):
    """The first part's time as the log shows it: from run_start to the last line before the
    run_resumed line; the run_resumed value (what the driver counted) is at least that."""
    start = next(x for x in recs if x["key"] == "run_start")["time_ms"]
    k = next(i for i, x in enumerate(recs) if x["key"] == "run_resumed")
    first_part = (recs[k - 1]["time_ms"] - start) / 1000
    assert recs[k]["value"] >= first_part - 1e-3
    return first_part


def test_resume_refuses_a_workdir_with_other_flags(tmp_path):
    config = tiny_resnet_config(num_epochs=1)
    T.train("resnet50", config, _opts(tmp_path, num_runs=1, checkpoint=False),
            print_fn=lambda s: None)
    other = tiny_resnet_config(num_epochs=1, base_learning_rate=0.3)
    with pytest.raises(T.UserError, match="other flags or config"):
        T.train("resnet50", other, _opts(tmp_path, num_runs=1), print_fn=lambda s: None)


def _rr(run, t, ok=True):
    return R.RunResult(run=run, seed=run, status="success" if ok else "aborted",
                       time_to_train_s=t, epochs=1, samples=1, metric=0.9, throughput=1.0,
                       throughput_unit="images", compile_time_s=0.1, init_time_s=0.2)


def test_olympic_mean_drops_fastest_and_slowest():
    s = R.olympic_score([_rr(0, 60), _rr(1, 120), _rr(2, 180), _rr(3, 240), _rr(4, 600)])
    assert s.valid and s.value == pytest.approx((120 + 180 + 240) / 3 / 60)
    assert sorted(s.dropped_runs) == [0, 4]


def test_olympic_mean_one_non_converged_run_allowed_two_invalid():
    one = R.olympic_score([_rr(0, 60), _rr(1, 120), _rr(2, 180), _rr(3, 240), _rr(4, 9, ok=False)])
    assert one.valid and one.value == pytest.approx((120 + 180 + 240) / 3 / 60)
    assert 4 in one.dropped_runs
    two = R.olympic_score([_rr(0, 60), _rr(1, 120), _rr(2, 180), _rr(3, 5, False), _rr(4, 9, False)])
    assert not two.valid and two.value is None and "2 runs did not converge" in two.reason


def test_first_converged_runs_rule_v05_ncf():
    runs = [_rr(0, 60), _rr(1, 5, ok=False), _rr(2, 120), _rr(3, 180), _rr(4, 240), _rr(5, 300)]
    s = R.first_converged_score(runs, 4)
    # runs 0, 2, 3, 4 are the first four converged; drop 60 and 240
    assert s.valid and s.value == pytest.approx((120 + 180) / 2 / 60)
    assert sorted(s.used_runs) == [2, 3]
    short = R.first_converged_score(runs[:3], 4)
    assert not short.valid and "only 2 of the 4" in short.reason
