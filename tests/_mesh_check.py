"""Checks of the (data, model) mesh on 8 fake CPU devices, run in a fresh process.

``python tests/_mesh_check.py OUT_DIR`` (with ``--xla_force_host_platform_device_count=8``) writes
``OUT_DIR/result.json`` (mesh shapes, error messages, batch placement, the shardings the train
state really got) and ``OUT_DIR/{one,mesh}.npz`` (losses and the final train state of NCF steps on
a 1-device mesh and on a (4, 2) mesh with NCF's partition rules), for tests/test_partition_rules.py
to assert on.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from mlperf_jax import sharding as S
from mlperf_jax.benchmarks import ncf
from mlperf_jax.models import ncf as ncf_model

STEPS = 3


def errors() -> dict[str, str]:
    """The message of each bad mesh request (or 'NO ERROR')."""
    out = {}
    for args in ((3, 1), (-1, 3), (4, 4), (0, 1), (-1, -1), (2, -2), (16, -1)):
        try:
            S.make_mesh(*args)
            out[str(args)] = "NO ERROR"
        except ValueError as e:
            out[str(args)] = str(e)
    return out


def mesh_info(mesh) -> dict:
    return {"axis_names": list(mesh.axis_names), "shape": [int(s) for s in mesh.devices.shape],
            "axis_types": [str(t) for t in getattr(mesh, "axis_types", ())],
            "device_ids": [[int(d.id) for d in row] for row in mesh.devices]}


def batch_placement(mesh) -> dict:
    """Where each device's rows of a (1028, 3) batch landed, by the device's mesh coordinate."""
    coord = {d.id: [int(i) for i in idx] for idx, d in np.ndenumerate(mesh.devices)}
    batch = {"x": np.arange(1028 * 3, dtype=np.int32).reshape(1028, 3)}
    g = S.host_batch_to_global(batch, mesh)["x"]
    shards = [{"coord": coord[s.device.id],
               "rows": [int(s.data[0, 0]) // 3, int(s.data[-1, 0]) // 3],
               "shape": list(s.data.shape)} for s in g.addressable_shards]
    bsh = S.batch_sharding(mesh)
    try:
        S.local_batch_size(1030, mesh)
        bad = "NO ERROR"
    except ValueError as e:
        bad = str(e)
    return {"shard_shape_1d": list(bsh.shard_shape((1024,))),
            "shard_shape_2d": list(bsh.shard_shape((1028, 3))),
            "global_shape": list(g.shape), "equal": bool(np.array_equal(np.asarray(g), batch["x"])),
            "shards": shards, "data_parallel_size": S.data_parallel_size(mesh),
            "local_batch_size": S.local_batch_size(1028, mesh), "local_batch_size_error": bad}


def train(mesh, rules, fsdp: bool):
    """STEPS jitted NCF train steps with the state placed by ``rules``; losses and final state."""
    b = ncf.BENCHMARK
    c = b.get_config("tiny")
    tx, _ = b.optimizer(c, 10)

    def init_fn(rng):
        params, model_state = b.init(c, rng)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "model_state": model_state,
                "opt_state": tx.init(params)}

    def step_fn(state, batch):
        def lf(p):
            return b.loss_fn(c, p, state["model_state"], batch, None)

        (loss, (model_state, _)), grads = jax.value_and_grad(lf, has_aux=True)(state["params"])
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = jax.tree.map(lambda p, u: p + u, state["params"], updates)
        return {"step": state["step"] + 1, "params": params, "model_state": model_state,
                "opt_state": opt_state}, loss

    key_spec = jax.eval_shape(lambda: jax.random.key(0))
    abstract = jax.eval_shape(init_fn, key_spec)
    state_sh = S.state_shardings(abstract, mesh, fsdp=fsdp, rules=rules)
    bsh = S.batch_sharding(mesh)
    batch_keys = ("user", "item", "label", "weight")
    init = jax.jit(init_fn, out_shardings=state_sh)
    step = jax.jit(step_fn, in_shardings=(state_sh, {k: bsh for k in batch_keys}),
                   out_shardings=(state_sh, S.replicated(mesh)), donate_argnums=(0,))
    state = init(jax.random.key(0))
    losses = []
    for i in range(STEPS):
        host = b.fake_train_batch(c, np.random.default_rng(i))
        state, loss = step(state, S.host_batch_to_global(host, mesh))
        losses.append(float(loss))
    flat = S.path_dict(state)
    placed = {k: {"spec": str(v.sharding.spec),
                  "shard_shape": list(v.addressable_shards[0].data.shape),
                  "n_devices": len(v.sharding.device_set)} for k, v in flat.items()}
    arrays = {k: np.asarray(jax.device_get(v)) for k, v in flat.items()}
    return losses, arrays, placed


def main():
    out_dir = sys.argv[1]
    assert jax.device_count() == 8, jax.devices()
    res = {"n_devices": jax.device_count(), "errors": errors()}
    res["meshes"] = {"default": mesh_info(S.make_mesh()), "model2": mesh_info(S.make_mesh(model=2)),
                     "4x2": mesh_info(S.make_mesh(4, 2)),
                     "old_signature": mesh_info(S.make_mesh(jax.devices()[:1])),
                     "explicit": mesh_info(S.make_mesh(2, 1, devices=jax.devices()[2:4]))}
    mesh = S.make_mesh(4, 2)
    res["batch"] = batch_placement(mesh)
    one = S.make_mesh(1, 1, devices=jax.devices()[:1])
    l1, a1, _ = train(one, ncf_model.PARTITION_RULES, False)
    ln, an, placed = train(mesh, ncf_model.PARTITION_RULES, False)
    res["placed"] = placed
    np.savez(os.path.join(out_dir, "one.npz"), losses=np.asarray(l1), **a1)
    np.savez(os.path.join(out_dir, "mesh.npz"), losses=np.asarray(ln), **an)
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(res, f)
    print("MESH-CHECK-OK")


if __name__ == "__main__":
    main()
