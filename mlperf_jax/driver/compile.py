"""Ahead-of-time compilation of a benchmark on a mesh: init, the train step, the eval step and the
benchmark's extra programs, all with explicit shardings (``jit(...).lower(...).compile()``), so that
compile time is spent between ``init_start`` and ``init_stop`` and reported apart, with how many of
the programs the persistent compilation cache served (``mlperf_jax.compilation_cache``)."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct

from mlperf_jax import compilation_cache as cache_lib
from mlperf_jax import sharding as sharding_lib
from mlperf_jax.benchmarks.base import Benchmark

PyTree = Any


@struct.dataclass
class TrainState:
    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: PyTree


@dataclasses.dataclass
class Compiled:
    """The compiled functions of one benchmark on one mesh."""

    init: Callable
    train_step: Any
    eval_step: Any
    programs: dict[str, Any]
    state_sharding: PyTree
    abstract_state: PyTree
    schedule: optax.Schedule
    compile_time_s: float
    cache_hits: int | None = None  # programs served by the persistent cache (None: no cache)
    program_times: dict = dataclasses.field(default_factory=dict)  # name -> lower+compile s

    @property
    def num_programs(self) -> int:
        """Programs compiled: init, train step, eval step and the benchmark's extras."""
        return len(self.program_times)


def init_compiler_options() -> dict:
    """XLA options for the init program. On CPU, LLVM at -O1: init hashes threefry for every
    parameter, which LLVM's -O3 pipeline spends seconds on (ResNet-50's init 6.8 -> 4.2 CPU-s, the
    tiny track's 6.2 -> 1.2) for a program that runs once. Same values bit for bit: XLA:CPU
    does not use fast math, so the optimisation level does not change arithmetic."""
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else {}


def compile_benchmark(bench: Benchmark, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                      steps_per_epoch: int, train_spec: dict, eval_spec: dict | None, *,
                      fsdp: bool = False) -> Compiled:
    """Build and compile init, the train step, the eval step (given its spec) and the benchmark's
    programs. Parameters follow the benchmark's partition rules, then the default (replicated, or
    FSDP over the data axis)."""
    tx, schedule = bench.optimizer(config, steps_per_epoch)

    def init_fn(rng):
        params, model_state = bench.init(config, rng)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                          opt_state=tx.init(params))

    rng_spec = jax.eval_shape(lambda: jax.random.key(0))
    abstract = jax.eval_shape(init_fn, rng_spec)
    state_sh = sharding_lib.state_shardings(abstract, mesh, fsdp=fsdp,
                                            rules=tuple(bench.partition_rules(config)))
    repl = sharding_lib.replicated(mesh)
    bsh = sharding_lib.batch_sharding(mesh)

    def train_step(state: TrainState, batch, base_rng):
        rng = jax.random.fold_in(base_rng, state.step)

        def lf(p):
            return bench.loss_fn(config, p, state.model_state, batch, rng)

        (loss, (model_state, metrics)), grads = jax.value_and_grad(lf, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss, learning_rate=schedule(state.step))
        new = state.replace(step=state.step + 1, params=params, model_state=model_state,
                            opt_state=opt_state)
        return new, metrics

    def eval_step(state: TrainState, batch):
        return bench.eval_step(config, state.params, state.model_state, batch)

    times: dict[str, float] = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        times[name] = time.perf_counter() - t
        return out

    t0 = time.perf_counter()
    with cache_lib.count_compiles() as count:
        init_c = timed("init", lambda: jax.jit(init_fn, out_shardings=state_sh).lower(
            rng_spec).compile(init_compiler_options()))
        train_c = timed("train_step", lambda: jax.jit(
            train_step, in_shardings=(state_sh, {k: bsh for k in train_spec}, repl),
            out_shardings=(state_sh, repl), donate_argnums=(0,),
        ).lower(abstract, train_spec, rng_spec).compile())
        eval_c = None if eval_spec is None else timed("eval_step", lambda: jax.jit(
            eval_step, in_shardings=(state_sh, {k: bsh for k in eval_spec}),
        ).lower(abstract, eval_spec).compile())
        programs = {}
        for name, prog in bench.programs(config).items():
            arg_sh = tuple(bsh if i in prog.sharded_args else getattr(s, "sharding", None) or repl
                           for i, s in enumerate(prog.arg_specs))
            programs[name] = timed(name, lambda prog=prog, arg_sh=arg_sh: jax.jit(
                prog.fn, in_shardings=(state_sh.params, state_sh.model_state) + arg_sh,
            ).lower(abstract.params, abstract.model_state, *prog.arg_specs).compile())
    compile_s = time.perf_counter() - t0
    return Compiled(init_c, train_c, eval_c, programs, state_sh, abstract, schedule, compile_s,
                    program_times=times,
                    cache_hits=count.hits if cache_lib.in_use() else None)


def copy_tree(tree: PyTree) -> PyTree:
    """A device copy that outlives the donation of the train state (for ``before_epoch``)."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)
