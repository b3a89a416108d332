"""Small configs for fast tests."""
from mlperf_jax.configs import resnet50


def tiny_resnet_config(**overrides):
    """The tiny track shrunk further: a few hundred images, a couple of epochs."""
    c = resnet50.get_config("tiny")
    c.train_examples = 512
    c.eval_examples = 256
    c.global_batch_size = 64
    c.eval_batch_size = 128
    c.num_epochs = 2
    c.decay_epochs = 2
    c.num_runs = 1
    for k, v in overrides.items():
        c[k] = v
    return c


# A fresh interpreter's script (run on 8 fake devices) that trains one epoch of a benchmark's
# tiny config on a 1-device mesh and on the all-device mesh and prints losses and parameters.
_SHARDED = """
import json, jax, numpy as np
from mlperf_jax import benchmarks, sharding as S
from mlperf_jax.driver import compile as C, loop as L
bench = benchmarks.get({name!r})
c = bench.get_config("tiny")
for k, v in {overrides!r}.items():
    c[k] = v
data = bench.data_source(c, None, seed=0, process_index=0, process_count=1)
out = {{}}
for name, mesh in (("one", S.make_mesh(jax.devices()[:1])), ("eight", S.make_mesh())):
    comp = C.compile_benchmark(bench, c, mesh, data.steps_per_epoch, data.train_spec, None)
    rng = jax.random.key(0)
    state = comp.init(jax.random.fold_in(rng, 1))
    losses = []
    for batch in data.train_epoch(1, 0):
        state, m = comp.train_step(state, S.host_batch_to_global(batch, mesh), rng)
        losses.append(float(m["loss"]))
    leaves = [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(L.to_host(state.params))]
    out[name] = {{"losses": losses, "params": np.concatenate(leaves).tolist()}}
print("RESULT " + json.dumps({{"n": jax.device_count(), **out}}))
"""


def sharded_step_script(name: str, **overrides) -> str:
    """The script above for benchmark ``name``'s tiny config with ``overrides``."""
    return _SHARDED.format(name=name, overrides=overrides)
