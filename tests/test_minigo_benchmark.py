"""The MiniGo benchmark through the driver: logs that pass the official checker in both line
formats (0.7.0 open rules; 0.6.0 minigo.yaml with save_model and eval_result), a killed run that
resumes to the same parameters (the replay window is the checkpointed data state), the board
symmetries of the training input, and self-play and the train step on 8 fake devices equal 1
device."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_python
from mlperf_jax import train as T
from mlperf_jax.configs import minigo as minigo_config


def _small(**kw):
    c = minigo_config.get_config("tiny")
    c.games_per_generation, c.eval_games, c.eval_batch_size = 32, 16, 16
    c.num_readouts, c.max_moves, c.num_epochs, c.num_runs = 4, 20, 3, 1
    c.global_batch_size, c.window_generations = 64, 2
    for k, v in kw.items():
        c[k] = v
    return c


def _checker(path, ruleset):
    proc = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                           "training", "--ruleset", ruleset, path], capture_output=True,
                          text=True, cwd=os.path.dirname(path))
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.parametrize("log_format,round_,ruleset", [("mllog", None, "0.7.0"),
                                                       ("v0.6", "v0.6", "0.6.0")])
def test_logs_pass_the_checker(tmp_path, log_format, round_, ruleset):
    # a short run against the random player (the tiny track itself plays the greedy one): this
    # checks the log lines, save_model each generation and v0.6's eval_result at the end
    config = _small(games_per_generation=64, num_readouts=8, max_moves=50, eval_games=20,
                    eval_batch_size=20, target_model="random", target=0.6)
    opts = T.RunOptions(workdir=str(tmp_path), progress=False, config_name="tiny", num_runs=1,
                        checkpoint=False, log_format=log_format, round=round_)
    result = T.train("minigo", config, opts, print_fn=lambda s: None)
    r = result.runs[0]
    assert r.status == "success", (r.reason, r.metrics)
    # the table carries self-play's own rate beside the train step's
    rate = r.rates["self-play positions"]
    assert rate > 0 and "self-play positions/s" in result.table and f"{rate:,.1f}" in result.table
    code, out = _checker(r.log_path, ruleset)
    assert code == 0, out
    text = open(r.log_path).read()
    assert "save_model" in text and "actual_selfplay_games_per_generation" in text
    if log_format == "v0.6":
        assert "eval_result" in text  # the generation that reached the target, and when


def test_killed_run_resumes_to_the_same_parameters(tmp_path):
    config = _small(target=0.999)  # unreachable: all three generations run

    class Killed(Exception):
        pass

    def kill(run, step):
        if step >= 3:
            raise Killed()

    def opts(d, **kw):
        return T.RunOptions(workdir=str(tmp_path / d), progress=False, config_name="tiny",
                            num_runs=1, **kw)

    full = T.train("minigo", config, opts("a", checkpoint=False), print_fn=lambda s: None)
    with pytest.raises(Killed):
        T.train("minigo", config, opts("b", checkpoint_every_steps=1), print_fn=lambda s: None,
                callbacks=T.Callbacks(on_step=kill))
    resumed = T.train("minigo", config, opts("b", checkpoint_every_steps=1),
                      print_fn=lambda s: None)
    assert resumed.runs[0].resumed == 1
    assert resumed.checksums[0] == pytest.approx(full.checksums[0], rel=1e-6)
    assert resumed.runs[0].samples == full.runs[0].samples


def test_symmetries_move_stones_and_policy_together():
    from mlperf_jax.benchmarks.minigo import symmetries
    n = 5
    obs = np.zeros((8, n, n, 17), bool)
    policy = np.zeros((8, n * n + 1), np.float32)
    obs[:, 1, 3, 0] = True             # one stone at row 1, column 3
    policy[:, 1 * n + 3] = 0.75        # the policy's mass on that point
    policy[:, -1] = 0.25               # and on the pass
    o, p = symmetries(obs, policy, np.arange(8))
    seen = set()
    for s in range(8):
        r, c = np.argwhere(o[s, :, :, 0])[0]
        assert p[s, r * n + c] == 0.75 and p[s, -1] == 0.25 and p[s].sum() == 1.0
        seen.add((int(r), int(c)))
    # (1, 3) is one step off the centre (2, 2) on both axes: its orbit under the 8 symmetries
    # of the square is the four diagonal neighbours of the centre
    assert seen == {(1, 1), (1, 3), (3, 1), (3, 3)}
    # and a point off the diagonals has 8 distinct images
    obs2 = np.zeros((8, n, n, 17), bool)
    obs2[:, 0, 1, 0] = True
    o2, _ = symmetries(obs2, policy, np.arange(8))
    assert len({tuple(np.argwhere(o2[s, :, :, 0])[0]) for s in range(8)}) == 8


SHARDED = """
import json, jax, numpy as np
from mlperf_jax import sharding as S
from mlperf_jax.benchmarks import minigo
from mlperf_jax.configs import minigo as cfg
from mlperf_jax.driver import compile as C, loop as L
c = cfg.get_config("tiny")
c.games_per_generation, c.num_readouts, c.max_moves, c.global_batch_size = 16, 4, 16, 64
c.eval_games = c.eval_batch_size = 16  # divisible by the 8 devices
bench = minigo.BENCHMARK
out = {}
for name, mesh in (("one", S.make_mesh(jax.devices()[:1])), ("eight", S.make_mesh())):
    data = bench.data_source(c, None, seed=0, process_index=0, process_count=1)
    comp = C.compile_benchmark(bench, c, mesh, 1, data.train_spec, data.eval_spec)
    rng = jax.random.key(0)
    state = comp.init(jax.random.fold_in(rng, 1))
    data.before_epoch(1, state.params, state.model_state, comp.programs)
    z = data.get_state()["z"]
    losses = []
    for batch in data.train_epoch(1, 0):
        state, m = comp.train_step(state, S.host_batch_to_global(batch, mesh), rng)
        losses.append(float(m["loss"]))
    leaves = [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(L.to_host(state.params))]
    out[name] = {"z": z.tolist(), "losses": losses, "params": np.concatenate(leaves).tolist()}
print("RESULT " + json.dumps({"n": jax.device_count(), **out}))
"""


def test_selfplay_and_train_step_on_8_fake_devices_equal_1_device():
    proc = run_python(["-c", SHARDED], devices=8, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1][7:])
    assert out["n"] == 8 and out["one"]["z"] == out["eight"]["z"] and out["one"]["losses"]
    np.testing.assert_allclose(out["eight"]["losses"], out["one"]["losses"], rtol=1e-4)
    p1, p8 = np.asarray(out["one"]["params"]), np.asarray(out["eight"]["params"])
    assert np.max(np.abs(p1 - p8)) <= 1e-4 * max(1.0, np.max(np.abs(p1)))
