"""The SSD benchmark through the driver: the tiny track reaches a target and its log passes the
official checker; a train step sharded over 8 fake devices equals one device; the schedule."""
import json
import subprocess
import sys

import numpy as np

from _helpers import sharded_step_script
from conftest import run_python
from mlperf_jax.configs import ssd as ssd_config


def _small(**kw):
    c = ssd_config.get_config("tiny")
    c.train_examples, c.eval_examples, c.num_epochs = 2048, 128, 8
    c.decay_boundary_epochs, c.num_runs = (6, 7), 1
    for k, v in kw.items():
        c[k] = v
    return c


def test_tiny_track_through_the_driver_passes_the_checker(tmp_path):
    from mlperf_jax import train as T
    config = _small(target=0.3)
    opts = T.RunOptions(workdir=str(tmp_path), progress=False, config_name="tiny", num_runs=1,
                        checkpoint=False)
    res = T.train("ssd", config, opts, print_fn=lambda s: None)
    r = res.runs[0]
    assert r.status == "success", (r.reason, r.metrics)
    assert r.metrics["mAP"] >= 0.3 and r.throughput_unit == "images"
    recs = [json.loads(l[9:]) for l in open(r.log_path) if l.startswith(":::MLLOG")]
    evals = [x["value"] for x in recs if x["key"] == "eval_accuracy"]
    assert evals[-1] >= 0.3 and all(v < 0.3 for v in evals[:-1])
    proc = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                           "training", "--ruleset", "0.7.0", r.log_path], capture_output=True,
                          text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "open_ssd.yaml" in proc.stdout + proc.stderr


def test_schedule_warms_up_then_decays_at_the_boundaries():
    from mlperf_jax.benchmarks.ssd import lr_schedule
    c = ssd_config.get_config("reference")
    spe = 117266 // c.global_batch_size  # 114 steps per epoch at batch 1024
    sched = lr_schedule(c, spe)
    base = 2.5e-3 * 1024 / 32
    # linear from factor 0 over 300 steps, then the base rate, x0.1 at epoch 40, x0.01 at 50
    np.testing.assert_allclose([float(sched(s)) for s in (0, 150, 300, 40 * spe - 1, 40 * spe,
                                                          50 * spe)],
                               [0.0, base / 2, base, base, base * 0.1, base * 0.01], rtol=1e-6)




def test_train_step_on_8_fake_devices_equals_1_device():
    script = sharded_step_script("ssd", train_examples=64, eval_examples=32, global_batch_size=32)
    proc = run_python(["-c", script], devices=8, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
    assert out["n"] == 8 and len(out["one"]["losses"]) == 2
    np.testing.assert_allclose(out["eight"]["losses"], out["one"]["losses"], rtol=1e-5)
    p1, p8 = np.asarray(out["one"]["params"]), np.asarray(out["eight"]["params"])
    assert np.max(np.abs(p1 - p8)) <= 1e-4 * max(1.0, np.max(np.abs(p1)))
