"""Runs train steps of the tiny ResNet in a fresh process and prints the results as JSON.

``devices`` mode: on this process's (fake) devices, compares a 1-device mesh with an all-device
mesh, data parallel and FSDP. ``process`` mode: one process of a ``jax.distributed`` job (or a
single process when NUM == 1); process 0 prints the loss and a parameter fingerprint.
"""
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _helpers import tiny_resnet_config  # noqa: E402

from mlperf_jax import sharding as S  # noqa: E402
from mlperf_jax.driver import compile as C, loop as L  # noqa: E402
from mlperf_jax.benchmarks import resnet50  # noqa: E402

STEPS = 2


def run_steps(mesh, fsdp, process_index=0, process_count=1):
    config = tiny_resnet_config(global_batch_size=32, eval_batch_size=64)
    bench = resnet50.BENCHMARK
    data = bench.data_source(config, None, seed=0, process_index=process_index,
                             process_count=process_count)
    c = C.compile_benchmark(bench, config, mesh, data.steps_per_epoch, data.train_spec,
                            data.eval_spec, fsdp=fsdp)
    rng = jax.random.key(0)
    state = c.init(jax.random.fold_in(rng, 1))
    losses = []
    it = data.train_epoch(1, 0)
    for _ in range(STEPS):
        state, m = c.train_step(state, S.host_batch_to_global(next(it), mesh), rng)
        losses.append(float(m["loss"]))
    params = L.to_host(state.params)
    sharded = [str(x.sharding.spec) for x in jax.tree.leaves(state.params)]
    return losses, params, sharded


def flat(tree):
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def main():
    mode = sys.argv[1]
    if mode == "devices":
        out = {"n_devices": jax.device_count()}
        l1, p1, _ = run_steps(S.make_mesh(jax.devices()[:1]), False)
        meshes = {"dp": (S.make_mesh(), False), "fsdp": (S.make_mesh(), True),
                  # a (data=4, model=2) mesh: the batch splits over data only, FSDP over data
                  "fsdp_4x2": (S.make_mesh(data=4, model=2), True)}
        for name, (mesh, fsdp) in meshes.items():
            ln, pn, specs = run_steps(mesh, fsdp)
            out[name] = {"loss_1": l1, "loss_n": ln,
                         "max_param_diff": float(np.max(np.abs(flat(p1) - flat(pn)))),
                         "param_scale": float(np.max(np.abs(flat(p1)))),
                         "n_sharded": sum("data" in s for s in specs)}
        print("RESULT " + json.dumps(out))
    else:
        num, pid, addr = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
        if num > 1:
            S.initialize_distributed(addr, num, pid)
        losses, params, _ = run_steps(S.make_mesh(), False, jax.process_index(),
                                      jax.process_count())
        if jax.process_index() == 0:
            print("RESULT " + json.dumps({"losses": losses, "params": flat(params).tolist()[:4096],
                                          "n_global": jax.device_count()}))


if __name__ == "__main__":
    main()
