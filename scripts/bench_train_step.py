"""Train-step throughput of a benchmark, compile time apart, against this machine's matmul peak.

    python scripts/bench_train_step.py --benchmark=resnet50 --batch_size=16 --steps=5 \
        [--dtype=float32|bfloat16] [--config=reference] [--torch]

Prints ``N <unit>/s`` (compile excluded), the compile time, and the achieved FLOP/s (XLA's cost
analysis of the compiled step) as a fraction of the peak measured in the same run by a large
matmul. For MiniGo it also measures self-play (``--selfplay_games`` games of ``--selfplay_moves``
moves, the config's readouts per move): moves/s and network evaluations/s, beside its peer measured
in the same run: pgx's Go environment alone (random legal moves, same board, same games under
``vmap`` in one ``lax.scan``), which is how pgx measures its own throughput. For ResNet-50 with ``--torch`` (default: on when torch is importable) it measures
torchvision's ResNet-50 training step on the same machine, same batch, side by side.

Compile time is our init and train step as the driver compiles them (wall and CPU seconds: the
machine may be shared; CPU seconds move less with load), and for ResNet-50 with ``--flax_peer``
(default on) beside the same two programs of the flax examples' ImageNet ResNet-50
(``scripts/flax_resnet_peer.py``: linen, lax convolutions, SGD with Nesterov momentum and an L2
penalty) on the same batch and dtype, compiled in the same process. ``--compilation_cache_dir``
(default: none) measures warm compiles instead.
"""
from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("benchmark", "resnet50", "benchmark whose train step to measure")
flags.DEFINE_string("config", "reference", "config variant (the model to measure)")
flags.DEFINE_integer("batch_size", 16, "global batch size")
flags.DEFINE_integer("steps", 5, "timed steps (after one warm-up step)")
flags.DEFINE_integer("repeats", 3, "timed repetitions; the best is reported")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "compute dtype (default: config's)")
flags.DEFINE_bool("torch", None, "also measure torchvision (ResNet-50 only); default: if installed")
flags.DEFINE_integer("matmul_size", 4096, "size of the square matmul that measures the peak")
flags.DEFINE_bool("fsdp", False, "shard parameters over the devices")
flags.DEFINE_integer("selfplay_games", 16, "minigo: games played at once in the self-play measurement")
flags.DEFINE_integer("selfplay_moves", 4, "minigo: moves per game in the self-play measurement")
flags.DEFINE_bool("flax_peer", True, "resnet50: also compile the flax examples' ResNet-50 train step")
flags.DEFINE_string("compilation_cache_dir", "", "JAX's persistent compilation cache ('': none, cold "
                    "compiles)")
FLAGS = flags.FLAGS


def matmul_peak_jax(n: int, dtype) -> float:
    import jax
    import jax.numpy as jnp
    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    f = jax.jit(lambda x, y: x @ y)
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def bench_jax():
    import jax
    import numpy as np

    from mlperf_jax import benchmarks, sharding
    from mlperf_jax.driver import compile as T

    bench = benchmarks.get(FLAGS.benchmark)
    config = bench.get_config(FLAGS.config)
    config.global_batch_size = FLAGS.batch_size
    if "games_per_generation" in config:  # minigo: the self-play program measured below
        config.games_per_generation = FLAGS.selfplay_games
        config.max_moves = FLAGS.selfplay_moves
    if FLAGS.dtype:
        config.dtype = FLAGS.dtype
    rng = np.random.default_rng(0)
    try:
        batch = bench.fake_train_batch(config, rng)
    except NotImplementedError:
        tiny = bench.get_config("tiny")
        tiny.global_batch_size = FLAGS.batch_size
        config = tiny
        data = bench.data_source(config, None, seed=0, process_index=0, process_count=1)
        batch = next(iter(data.train_epoch(1, 0, None)))
        print(f"note: {bench.name} has no fake batch; measuring its tiny config instead")
    mesh = sharding.make_mesh()
    spec = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
    jax.jit(lambda x: x + 1).lower(1.0).compile()  # the compiler's one-time start-up, not ours
    cpu0 = time.process_time()
    c = T.compile_benchmark(bench, config, mesh, 1000, spec, None, fsdp=FLAGS.fsdp)
    compile_s = c.compile_time_s  # init and train step, ahead of time
    compile_cpu = time.process_time() - cpu0
    # The model's FLOPs, counted on its plain-XLA form: XLA's cost analysis counts a loop body
    # once, so a step whose convolution gradients run in a lax.scan would be under-counted.
    ref = c
    if config.get("conv_impl", "xla") != "xla":
        plain = config.copy_and_resolve_references()
        plain.conv_impl = "xla"
        ref = T.compile_benchmark(bench, plain, mesh, 1000, spec, None, fsdp=FLAGS.fsdp)
    flops = (ref.train_step.cost_analysis() or {})
    if isinstance(flops, list):
        flops = flops[0] if flops else {}
    step_flops = float(flops.get("flops", 0.0))
    del ref
    key = jax.random.key(0)
    state = c.init(key)
    gbatch = sharding.host_batch_to_global(batch, mesh)
    state, m = c.train_step(state, gbatch, key)
    m["loss"].block_until_ready()
    best = float("inf")
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        for _ in range(FLAGS.steps):
            state, m = c.train_step(state, gbatch, key)
        jax.block_until_ready(state.params)
        best = min(best, (time.perf_counter() - t) / FLAGS.steps)
    unit, per_step = bench.throughput_units(config, batch)
    r = {"unit": unit, "per_step": per_step, "step_s": best, "compile_s": compile_s,
         "compile_cpu_s": compile_cpu, "program_times": c.program_times,
         "cache_hits": c.cache_hits, "programs": c.num_programs,
         "flops": step_flops, "dtype": config.get("dtype", "float32"),
         "platform": jax.devices()[0].platform, "n_devices": jax.device_count()}
    if "selfplay" in c.programs:
        r["selfplay"] = bench_selfplay(c.programs["selfplay"], state, config)
    return r


def bench_selfplay(play, state, config) -> dict:
    """Moves/s of the compiled self-play program (already compiled: the first call is timed too,
    the best of ``--repeats`` is kept)."""
    import jax
    import numpy as np
    keys = jax.random.split(jax.random.key(1), int(config.games_per_generation))
    best, moves = float("inf"), 0
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        out = play(state.params, state.model_state, keys)
        valid = np.asarray(jax.device_get(out["valid"]))
        best = min(best, time.perf_counter() - t)
        moves = int(valid.sum())
    return {"moves": moves, "seconds": best, "readouts": int(config.num_readouts),
            "env_steps_s": bench_pgx_env(int(config.board_size), float(config.komi),
                                         int(config.games_per_generation)),
            "games": int(config.games_per_generation), "board": int(config.board_size),
            "search": str(config.search)}


def bench_pgx_env(board: int, komi: float, games: int, moves: int = 64) -> float:
    """pgx Go steps/s with uniformly random legal moves: ``games`` boards under ``vmap``, ``moves``
    plies in one compiled ``lax.scan`` (games that end stay ended; every step counts)."""
    import jax
    import jax.numpy as jnp

    from mlperf_jax.input_pipelines import go_selfplay
    env = go_selfplay.make_env(board, komi, None)

    @jax.jit
    def play(key):
        state = jax.vmap(env.init)(jax.random.split(key, games))

        def step(state, k):
            logits = jnp.where(state.legal_action_mask, 0.0, -jnp.inf)
            action = jax.random.categorical(k, logits)
            return jax.vmap(env.step)(state, action), None
        state, _ = jax.lax.scan(step, state, jax.random.split(key, moves))
        return state.current_player

    key = jax.random.key(2)
    play(key).block_until_ready()  # compile
    best = float("inf")
    for _ in range(FLAGS.repeats):
        t = time.perf_counter()
        play(key).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return games * moves / best


def matmul_peak_torch(n: int) -> float:
    import torch
    a = torch.ones(n, n)
    b = torch.ones(n, n)
    a @ b
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best


def bench_torch(batch_size: int, steps: int, repeats: int):
    import torch
    import torchvision
    model = torchvision.models.resnet50()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    x = torch.randn(batch_size, 3, 224, 224)
    y = torch.randint(0, 1000, (batch_size,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            step()
        best = min(best, (time.perf_counter() - t) / steps)
    return best


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        raise SystemExit(2)
    if FLAGS.batch_size <= 0 or FLAGS.steps <= 0:
        print("error: --batch_size and --steps must be positive", file=sys.stderr)
        raise SystemExit(2)
    import jax.numpy as jnp
    from mlperf_jax import compilation_cache
    try:
        compilation_cache.enable(FLAGS.compilation_cache_dir or None)
    except OSError as e:
        print(f"error: --compilation_cache_dir {FLAGS.compilation_cache_dir}: {e.strerror or e}",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        r = bench_jax()
    except (KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    peak = matmul_peak_jax(FLAGS.matmul_size,
                           jnp.bfloat16 if r["dtype"] == "bfloat16" else jnp.float32)
    rate = r["per_step"] / r["step_s"]
    achieved = r["flops"] / r["step_s"]
    print(f"benchmark: {FLAGS.benchmark} ({FLAGS.config} model), batch {FLAGS.batch_size}, "
          f"{r['dtype']}, {r['n_devices']} {r['platform']} device(s)")
    print(f"jax: {rate:,.2f} {r['unit']}/s  ({r['step_s'] * 1e3:.1f} ms/step, compile excluded)")
    pt = r["program_times"]
    cached = "" if r["cache_hits"] is None else (f"; {r['cache_hits']}/{r['programs']} from the "
                                                 "persistent compilation cache")
    print(f"jax: compile time {r['compile_s']:.2f} s wall, {r['compile_cpu_s']:.2f} CPU-s (init "
          f"{pt.get('init', 0):.2f} s + train step {pt.get('train_step', 0):.2f} s wall{cached})")
    if FLAGS.flax_peer and FLAGS.benchmark == "resnet50" and FLAGS.config != "tiny":
        import flax_resnet_peer
        f = flax_resnet_peer.compile_times(FLAGS.batch_size, r["dtype"])
        print(f"flax examples' ResNet-50: compile time {f['total_s']:.2f} s wall, "
              f"{f['cpu_s']:.2f} CPU-s (init {f['init_s']:.2f} s + train step "
              f"{f['train_step_s']:.2f} s wall; linen, lax convolutions, SGD-Nesterov + L2)")
        print(f"compile ratio ours/flax: {r['compile_cpu_s'] / f['cpu_s']:.2f}x CPU-s, "
              f"{r['compile_s'] / f['total_s']:.2f}x wall (train step "
              f"{pt.get('train_step', 0) / f['train_step_s']:.2f}x, init "
              f"{pt.get('init', 0) / f['init_s']:.2f}x)")
    print(f"jax: {achieved / 1e9:,.1f} GFLOP/s achieved ({r['flops'] / 1e9:,.2f} GFLOP/step) = "
          f"{100 * achieved / peak:.0f}% of the {r['dtype']} matmul peak {peak / 1e9:,.1f} GFLOP/s "
          f"measured now")
    if "selfplay" in r:
        sp = r["selfplay"]
        mps = sp["moves"] / sp["seconds"]
        print(f"jax: self-play {mps:,.2f} moves/s ({sp['moves']} moves in {sp['games']} games "
              f"on {sp['board']}x{sp['board']}, {sp['readouts']} readouts per move, "
              f"{sp['search']} search) = {mps * sp['readouts']:,.0f} network evaluations/s "
              f"({sp['seconds']:.2f} s, compile excluded)")
        print(f"pgx: Go environment alone {sp['env_steps_s']:,.0f} steps/s (same board and games, "
              f"random legal moves; the peer): each search simulation is one environment step plus "
              f"one network evaluation, and runs at {mps * sp['readouts'] / sp['env_steps_s']:.1%} "
              "of the bare environment's rate")
    use_torch = FLAGS.torch
    if use_torch is None:
        try:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
            use_torch = FLAGS.benchmark == "resnet50"
        except ImportError:
            use_torch = False
            print("torch: not installed (pip install '.[bench]' to measure it side by side)")
    if use_torch:
        if FLAGS.benchmark != "resnet50":
            print("torch: the side-by-side comparison exists for resnet50 only")
            return
        t = bench_torch(FLAGS.batch_size, FLAGS.steps, FLAGS.repeats)
        tpeak = matmul_peak_torch(FLAGS.matmul_size)
        trate = FLAGS.batch_size / t
        print(f"torch: {trate:,.2f} images/s  ({t * 1e3:.1f} ms/step, torchvision resnet50, fp32)")
        print(f"torch: {r['flops'] / t / 1e9:,.1f} GFLOP/s (same FLOP count) = "
              f"{100 * r['flops'] / t / tpeak:.0f}% of torch's fp32 matmul peak "
              f"{tpeak / 1e9:,.1f} GFLOP/s")
        print(f"ratio jax/torch: {rate / trate:.2f}x")


if __name__ == "__main__":
    app.run(main)
