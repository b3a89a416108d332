"""One train step sharded over 8 fake CPU devices, and over 2 processes, equals 1 device."""
import json
import socket
import subprocess
import sys

import numpy as np

from conftest import REPO, run_python


def _result(stdout):
    lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
    assert lines, stdout
    return json.loads(lines[-1][len("RESULT "):])


def test_eight_devices_equal_one_device_dp_and_fsdp():
    proc = run_python(["tests/_step_check.py", "devices"], devices=8, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _result(proc.stdout)
    assert out["n_devices"] == 8
    for mode in ("dp", "fsdp", "fsdp_4x2"):
        r = out[mode]
        np.testing.assert_allclose(r["loss_n"], r["loss_1"], rtol=1e-5)
        assert r["max_param_diff"] <= 1e-4 * max(1.0, r["param_scale"]), r
    assert out["dp"]["n_sharded"] == 0
    assert out["fsdp"]["n_sharded"] > 0  # FSDP really shards parameters over the data axis
    assert out["fsdp_4x2"]["n_sharded"] > 0


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_through_jax_distributed_equal_one_process():
    single = run_python(["tests/_step_check.py", "process", "1", "0", "-"], timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ref = _result(single.stdout)
    addr = f"127.0.0.1:{_free_port()}"
    import os
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, "tests/_step_check.py", "process", "2", str(i), addr],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    got = _result(outs[0][0])
    assert got["n_global"] == 2
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5)
    np.testing.assert_allclose(got["params"], ref["params"], rtol=1e-4, atol=1e-5)
