"""Train-step throughput of a benchmark, compile time apart, against this machine's matmul peak.

    python scripts/bench_train_step.py --benchmark=resnet50 --batch_size=16 --steps=5 \
        [--dtype=float32|bfloat16] [--config=reference] [--config.KEY=VALUE ...] [--torch]

    # Transformer-base, fp32, 16 rows of 64 tokens, unpacked:
    python scripts/bench_train_step.py --benchmark=transformer --batch_size=16 --dtype=float32 \
        --config.model.d_model=512 --config.model.num_heads=8 --config.model.d_ff=2048 \
        --config.model.num_layers=6 --config.max_len=64 --config.pack=False

``--config`` names the variant of the benchmark's config file (``reference``, ``tiny``);
``--config.KEY=VALUE`` overrides one of its fields (``ml_collections.config_flags``, as
``mlperf_jax.train``: the value takes the field's type; an unknown key is an error). The header
line lists the overridden fields with their effective values; ``--batch_size`` and ``--dtype``
win over ``--config.global_batch_size`` and ``--config.dtype``.

Prints ``N <unit>/s`` (compile excluded), the compile time, and the achieved FLOP/s (XLA's cost
analysis of the compiled step) as a fraction of the peak measured in the same run by a large
matmul. For MiniGo it also measures self-play (``--selfplay_games`` games of ``--selfplay_moves``
moves, the config's readouts per move): moves/s and network evaluations/s, beside its peer measured
in the same run: pgx's Go environment alone (random legal moves, same board, same games under
``vmap`` in one ``lax.scan``), which is how pgx measures its own throughput.

With ``--torch`` (default: on when torch is importable) ResNet-50, the Transformer and NCF are also
measured as PyTorch peers (``scripts/torch_peers.py``: torchvision's ResNet-50,
``torch.nn.Transformer``, the MLPerf reference's NeuMF) on the same machine, same batch, side by
side: ``torch: N unit/s`` and ``ratio jax/torch``. The peers run on CUDA when torch sees a GPU.

The fraction of the machine's limit: the achieved FLOP/s as a fraction of the matmul peak (for the
Transformer beside an analytic count of its matmul FLOPs, as a check of XLA's count), and for NCF,
whose step is memory-bound, the achieved bytes/s as a fraction of the memory bandwidth measured in
the same run (a jitted ``a * x + y`` over ``--stream_mib`` MiB arrays): the bytes per step are
XLA's cost analysis ("bytes accessed") and, beside it, the estimate of the dominant traffic (the
dense Adam update of the embedding tables).

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
from ml_collections import config_flags  # noqa: E402

flags.DEFINE_string("benchmark", "resnet50", "benchmark whose train step to measure")
config_flags.DEFINE_config_file("config", None, "config variant (reference, tiny) or "
                                "path.py:variant; override fields with --config.KEY=VALUE")
flags.DEFINE_integer("batch_size", 16, "global batch size")
flags.DEFINE_integer("steps", 5, "timed steps (after one warm-up step)")
flags.DEFINE_integer("repeats", 3, "timed repetitions; the best is reported")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "compute dtype (default: config's)")
flags.DEFINE_bool("torch", None, "also measure the PyTorch peer (resnet50, transformer, ncf); "
                  "default: if torch is installed")
flags.DEFINE_integer("stream_mib", 256, "ncf: size of each array of the memory-bandwidth "
                     "measurement")
flags.DEFINE_integer("matmul_size", 4096, "size of the square matmul that measures the peak")
flags.DEFINE_bool("fsdp", False, "shard parameters over the devices")
flags.DEFINE_integer("selfplay_games", 16, "minigo: games played at once in the self-play measurement")
flags.DEFINE_integer("selfplay_moves", 4, "minigo: moves per game in the self-play measurement")
flags.DEFINE_bool("flax_peer", True, "resnet50: also compile the flax examples' ResNet-50 train step")
flags.DEFINE_string("compilation_cache_dir", "", "JAX's persistent compilation cache ('': none, cold "
                    "compiles)")
FLAGS = flags.FLAGS
TORCH_PEERS = ("resnet50", "transformer", "ncf")
_CLI: dict = {"variant": "reference", "overrides": []}  # set from the command line in __main__


def matmul_peak_jax(n: int, dtype) -> float:
    import jax
    import jax.numpy as jnp
    a = jnp.ones((n, n), dtype)
    b = jnp.ones((n, n), dtype)
    return 2 * n ** 3 / _best_seconds(jax.jit(lambda x, y: x @ y), a, b)


def _best_seconds(f, *args, repeats: int = 3) -> float:
    """Best of ``repeats`` timed calls of a jitted ``f`` (after one untimed call)."""
    f(*args).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(*args).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best


def stream_bandwidth_jax(mib: int) -> float:
    """Memory bandwidth in bytes/s: a jitted ``1.5 * x + y`` over float32 arrays of ``mib`` MiB
    (two read, one written), best of 3."""
    import jax
    import jax.numpy as jnp
    n = max(1, mib * 2 ** 20 // 4)
    x = jnp.ones((n,), jnp.float32)
    y = jnp.ones((n,), jnp.float32)
    return 3 * 4 * n / _best_seconds(jax.jit(lambda x, y: 1.5 * x + y), x, y)


def transformer_matmul_flops(config, batch) -> float:
    """Training FLOPs of the Transformer's matrix products on ``batch`` (3x the forward: one
    forward and two backward products), from the shapes alone: projections, feed-forward,
    attention scores and values over the full (padded) rows, and the output projection. Softmax,
    layer norms and the optimizer are left out, so XLA's count should be a little above it."""
    m = config.model
    d, ff, L, v = int(m.d_model), int(m.d_ff), int(m.num_layers), int(config.vocab_size)
    b, s = batch["inputs"].shape
    t = batch["targets"].shape[1]
    enc = L * (2 * s * 4 * d * d + 2 * s * 2 * d * ff + 2 * 2 * s * s * d)
    dec = L * (2 * t * 4 * d * d + 2 * 2 * t * t * d                      # self-attention
               + 2 * t * 2 * d * d + 2 * s * 2 * d * d + 2 * 2 * t * s * d  # cross-attention
               + 2 * t * 2 * d * ff)
    return 3.0 * b * (enc + dec + 2 * t * d * v)


def peak_memory() -> str:
    """The peak memory so far, as the ``jax: peak device memory`` line's text: the first local
    device's ``peak_bytes_in_use``, or, where the platform keeps no memory stats (CPU), the
    process's peak resident set size, so that the line says which of the two it is."""
    import resource

    import jax
    dev = jax.local_devices()[0]
    stats = dev.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return f"{stats['peak_bytes_in_use'] / 2 ** 30:.2f} GiB"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    rss *= 1 if sys.platform == "darwin" else 1024
    return f"n/a ({dev.platform} reports no memory stats); peak host RSS {rss / 2 ** 30:.2f} GiB"


def bench_jax():
    import jax
    import numpy as np

    from mlperf_jax import benchmarks, sharding
    from mlperf_jax.driver import compile as T

    bench = benchmarks.get(FLAGS.benchmark)
    config = FLAGS.config
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
    step_bytes = float(flops.get("bytes accessed", 0.0))
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
    peak_mem = peak_memory()  # after the timed steps, before anything else allocates
    unit, per_step = bench.throughput_units(config, batch)
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    from mlperf_jax.models.ncf import EMBED_NAMES as tables
    r = {"unit": unit, "per_step": per_step, "step_s": best, "compile_s": compile_s,
         "compile_cpu_s": compile_cpu, "program_times": c.program_times, "peak_mem": peak_mem,
         "cache_hits": c.cache_hits, "programs": c.num_programs,
         "flops": step_flops, "bytes": step_bytes, "dtype": config.get("dtype", "float32"),
         "platform": jax.devices()[0].platform, "n_devices": jax.device_count(),
         "params": int(sum(x.size for _, x in leaves)),
         "table_bytes": int(sum(x.size * x.dtype.itemsize for p, x in leaves
                                if jax.tree_util.keystr(p, simple=True, separator="/") in tables)),
         "config": config, "batch": batch}
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


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        raise SystemExit(2)
    if FLAGS.batch_size <= 0 or FLAGS.steps <= 0:
        print("error: --batch_size and --steps must be positive", file=sys.stderr)
        raise SystemExit(2)
    import jax.numpy as jnp
    from mlperf_jax import compilation_cache
    try:  # default '': cold compiles, whatever JAX_COMPILATION_CACHE_DIR says
        compilation_cache.enable_from_flag(FLAGS.compilation_cache_dir, resolve=False)
    except ValueError as e:
        _fail(str(e))
    try:
        r = bench_jax()
    except (KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    peak = matmul_peak_jax(FLAGS.matmul_size,
                           jnp.bfloat16 if r["dtype"] == "bfloat16" else jnp.float32)
    rate = r["per_step"] / r["step_s"]
    achieved = r["flops"] / r["step_s"]
    overrides = ", ".join(f"{k}={_get_path(r['config'], k)!r}" for k in _CLI["overrides"])
    print(f"benchmark: {FLAGS.benchmark} ({_CLI['variant']} model), batch {FLAGS.batch_size}, "
          f"{r['dtype']}, {r['n_devices']} {r['platform']} device(s)"
          + (f"; overrides: {overrides}" if overrides else ""))
    batch = r["batch"]
    if getattr(batch.get("targets"), "ndim", 0) == 2:  # translation: rows x tokens
        rows, length = batch["targets"].shape
        print(f"batch: {rows} rows x {length} tokens "
              f"({'packed' if r['config'].get('pack', False) else 'unpacked'}), "
              f"{r['per_step']:,} non-padding target {r['unit']} (the unit counted)")
    print(f"jax: {rate:,.2f} {r['unit']}/s  ({r['step_s'] * 1e3:.1f} ms/step, compile excluded)")
    print(f"jax: {r['params']:,} parameters")
    pt = r["program_times"]
    cached = "" if r["cache_hits"] is None else (f"; {r['cache_hits']}/{r['programs']} from the "
                                                 "persistent compilation cache")
    print(f"jax: compile time {r['compile_s']:.2f} s wall, {r['compile_cpu_s']:.2f} CPU-s (init "
          f"{pt.get('init', 0):.2f} s + train step {pt.get('train_step', 0):.2f} s wall{cached})")
    print(f"jax: peak device memory {r['peak_mem']}")
    if FLAGS.flax_peer and FLAGS.benchmark == "resnet50" and _CLI["variant"] != "tiny":
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
    if FLAGS.benchmark == "transformer":
        mm = transformer_matmul_flops(r["config"], batch)
        print(f"jax: check of the FLOP count: the matmuls alone (analytic, from the shapes: 3x the "
              f"forward products) {mm / 1e9:,.2f} GFLOP/step; XLA's count is "
              f"{r['flops'] / mm:.2f}x that (it adds softmax, layer norms, dropout and Adam)")
    if FLAGS.benchmark == "ncf":
        bw = stream_bandwidth_jax(FLAGS.stream_mib)
        got = r["bytes"] / r["step_s"]
        print(f"jax: {r['bytes'] / 1e6:,.1f} MB/step accessed (XLA cost analysis) -> "
              f"{got / 1e9:,.2f} GB/s = {100 * got / bw:.0f}% of the memory bandwidth "
              f"{bw / 1e9:,.2f} GB/s measured now (1.5 * x + y over float32 arrays of "
              f"{FLAGS.stream_mib} MiB: 2 read, 1 written)")
        est = 8 * r["table_bytes"]
        print(f"jax: dominant traffic, estimated: the dense Adam update of the embedding tables "
              f"({r['table_bytes'] / 1e6:,.1f} MB) reads param, grad, m, v and writes param, m, v "
              f"(7x) after the dense gradient is written (1x): 8 x = {est / 1e6:,.1f} MB/step -> "
              f"{est / r['step_s'] / 1e9:,.2f} GB/s = {100 * est / r['step_s'] / bw:.0f}% of the "
              f"measured bandwidth")
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
        use_torch = FLAGS.benchmark in TORCH_PEERS
        if use_torch:
            try:
                import torch  # noqa: F401
                if FLAGS.benchmark == "resnet50":
                    import torchvision  # noqa: F401
            except ImportError:
                use_torch = False
                print("torch: not installed (pip install '.[bench]' to measure it side by side)")
    if use_torch:
        if FLAGS.benchmark not in TORCH_PEERS:
            print(f"torch: no PyTorch peer for {FLAGS.benchmark} (there is one for "
                  f"{', '.join(TORCH_PEERS)})")
            return
        bench_torch_peer(r, rate)


def bench_torch_peer(r: dict, rate: float) -> None:
    """Time the PyTorch peer of ``--benchmark`` and print its rate beside ours (``rate``)."""
    import torch_peers
    if FLAGS.benchmark == "resnet50":
        t = torch_peers.bench_torch(FLAGS.batch_size, FLAGS.steps, FLAGS.repeats)
        tdtype, trate = "float32", FLAGS.batch_size / t
        print(f"torch: {trate:,.2f} images/s  ({t * 1e3:.1f} ms/step, torchvision resnet50, fp32, "
              f"{torch_peers.device()})")
    else:
        model, step, desc = torch_peers.PEERS[FLAGS.benchmark](r["config"], r["batch"])
        n = torch_peers.param_count(model)
        pad = ("" if r["params"] == n or FLAGS.benchmark != "ncf" else
               f" (ours has {r['params'] - n:,} more: table rows padded to a multiple of "
               f"row_multiple={r['config'].row_multiple}, never read)")
        print(f"torch: {n:,} parameters{pad}")
        t = torch_peers.time_steps(step, FLAGS.steps, FLAGS.repeats, torch_peers.device())
        tdtype, trate = r["dtype"], r["per_step"] / t
        print(f"torch: {trate:,.2f} {r['unit']}/s  ({t * 1e3:.1f} ms/step, {desc})")
    if FLAGS.benchmark != "ncf":
        tpeak = torch_peers.matmul_peak_torch(FLAGS.matmul_size, tdtype)
        print(f"torch: {r['flops'] / t / 1e9:,.1f} GFLOP/s (same FLOP count) = "
              f"{100 * r['flops'] / t / tpeak:.0f}% of torch's {tdtype} matmul peak "
              f"{tpeak / 1e9:,.1f} GFLOP/s")
    print(f"ratio jax/torch: {rate / trate:.2f}x")


def _fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _get_path(config, key: str):
    """``config.a.b`` for ``key='a.b'``; KeyError if a part is missing."""
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def _keys(config, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        out.append(prefix + k)
        if hasattr(v, "items"):
            out.extend(_keys(v, prefix + k + "."))
    return out


def _prepare_argv(argv: list[str]) -> list[str]:
    """Resolve ``--config=VARIANT`` to the benchmark's config file (``mlperf_jax.train``'s
    helper), default to the reference config of resnet50, and check the ``--config.KEY``
    overrides against the chosen config: an unknown key is one line on stderr and exit code 2."""
    import difflib

    from mlperf_jax import benchmarks
    from mlperf_jax.driver.options import UserError
    from mlperf_jax.train import _expand_config_arg
    argv = list(argv)
    if not any(a == "--benchmark" or a.startswith("--benchmark=") for a in argv[1:]):
        argv.insert(1, "--benchmark=resnet50")
    if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
        argv.insert(1, "--config=reference")
    try:
        argv = _expand_config_arg(argv)
    except UserError as e:
        _fail(str(e))
    value = [a for a in argv if a.startswith("--config=")][-1].split("=", 1)[1]
    path, variant = value.rsplit(":", 1) if ":" in value else (value, "")
    _CLI["variant"] = variant or os.path.basename(path)
    keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    _CLI["overrides"] = list(dict.fromkeys(keys))
    name = [a for a in argv if a.startswith("--benchmark=")]
    name = name[-1].split("=", 1)[1] if name else argv[argv.index("--benchmark") + 1]
    bench = benchmarks.get(name)
    if os.path.abspath(path) == benchmarks.config_file(name) and variant in bench.config_names:
        config = bench.get_config(variant)
        known = _keys(config)
        for k in _CLI["overrides"]:
            if k not in known:
                near = difflib.get_close_matches(k, known, n=1)
                _fail(f"unknown config key {k!r} for {name} ({variant})"
                      + (f"; did you mean {near[0]!r}?" if near else ""))
    return argv


def _flags_parser(args: list[str]) -> list[str]:
    from mlperf_jax.train import UserError, parse_flags
    try:
        return parse_flags(FLAGS, args)
    except UserError as e:
        _fail(str(e))


if __name__ == "__main__":
    sys.argv = _prepare_argv(sys.argv)
    app.run(main, argv=sys.argv, flags_parser=_flags_parser)
