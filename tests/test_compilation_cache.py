"""The persistent compilation cache: a second run loads what the first compiled, says so in the
compile column, and trains to the same parameters as a run without a cache.

Oracles: JAX's own cache folder (the entries it wrote) and its own log line for each hit
("Persistent compilation cache hit for '<program>'"), XLA's default compile of the init program
(bit for bit), hand-made cache entries for the size bound, and hand-written table cells.
"""
import logging
import os
import re

import jax
import numpy as np
import pytest

from _helpers import tiny_resnet_config
from conftest import run_python
from mlperf_jax import compilation_cache as CC
from mlperf_jax import results as R
from mlperf_jax import train as T

PROGRAMS = ("jit_init_fn", "jit_train_step", "jit_eval_step")


@pytest.fixture
def restore_cache():
    """The suite's cache (conftest) comes back after a test that points JAX elsewhere."""
    yield
    CC.enable(CC.resolve_dir(None))


def _train(workdir):
    config = tiny_resnet_config(num_epochs=1, train_examples=256, eval_examples=128)
    opts = T.RunOptions(workdir=str(workdir), num_runs=1, checkpoint=False, progress=False,
                        config_name="tiny")
    return T.train("resnet50", config, opts, print_fn=lambda s: None)


def _hits_logged(caplog) -> list[str]:
    return [m.group(1) for r in caplog.records
            if (m := re.search(r"Persistent compilation cache hit for '([^']+)'", r.getMessage()))]


def test_second_run_loads_every_program_and_trains_the_same(tmp_path, caplog, restore_cache):
    caplog.set_level(logging.DEBUG, logger="jax._src.compiler")
    cache = tmp_path / "cache"
    assert CC.enable(str(cache), min_compile_time_s=0.0) == str(cache)

    first = _train(tmp_path / "a")
    written = sorted(n.split("-")[0] for n in os.listdir(cache) if n.endswith("-cache"))
    assert all(p in written for p in PROGRAMS), written
    r0 = first.runs[0]
    assert (r0.compile_cache_hits, r0.compile_programs) == (0, 3)
    assert not [h for h in _hits_logged(caplog) if h in PROGRAMS]

    caplog.clear()
    second = _train(tmp_path / "b")
    r1 = second.runs[0]
    logged = sorted(h for h in _hits_logged(caplog) if h in PROGRAMS)
    assert logged == sorted(PROGRAMS)  # JAX's own word: all three programs came from the cache
    assert (r1.compile_cache_hits, r1.compile_programs) == (3, 3)
    row = next(line for line in second.table.splitlines() if line.lstrip().startswith("0 "))
    assert re.search(rf" {r1.compile_time_s:.2f} 3/3$", row), row
    assert "persistent compilation cache / programs compiled" in second.table

    assert CC.enable(None) is None and CC.in_use() is None
    plain = _train(tmp_path / "c")
    r2 = plain.runs[0]
    assert r2.compile_cache_hits is None
    assert "persistent compilation cache" not in plain.table
    # the loaded executables compute what a fresh compile computes
    assert second.checksums == plain.checksums == first.checksums
    assert r1.metrics == r2.metrics == r0.metrics
    assert r1.epochs == r2.epochs and r1.samples == r2.samples


def test_init_at_llvm_o1_gives_the_default_compiles_values():
    """driver.compile's init options change compile time only: XLA's default compile is the
    oracle, compared bit for bit."""
    from mlperf_jax import benchmarks
    from mlperf_jax.driver import compile as C
    bench = benchmarks.get("resnet50")
    config = tiny_resnet_config()
    lowered = jax.jit(lambda k: bench.init(config, k)).lower(jax.random.key(0))
    key = jax.random.key(7)
    plain = jax.tree.leaves(lowered.compile()(key))
    fast = jax.tree.leaves(lowered.compile(C.init_compiler_options())(key))
    assert C.init_compiler_options() == {"xla_backend_optimization_level": 1}  # CPU in tests
    assert len(plain) == len(fast) == 47
    for a, b in zip(plain, fast):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resolve_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/env/cache")
    assert CC.resolve_dir("/flag/cache") == "/flag/cache"
    assert CC.resolve_dir("") is None
    assert CC.resolve_dir(None) == "/env/cache"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")
    assert CC.resolve_dir(None) is None
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert CC.resolve_dir(None) == os.path.join(str(tmp_path), "mlperf_jax", "jax_cache")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", "/home/someone")
    assert CC.resolve_dir(None) == "/home/someone/.cache/mlperf_jax/jax_cache"


def test_prune_drops_least_recently_used_entries_to_the_bound(tmp_path):
    # four entries of 100 bytes, used at times 1..4 (the -atime stamps JAX writes)
    for i, used in zip("abcd", (3, 1, 4, 2)):
        (tmp_path / f"{i}-cache").write_bytes(b"x" * 100)
        stamp = tmp_path / f"{i}-atime"
        stamp.write_bytes(b"")
        os.utime(stamp, (used, used))
    assert CC.prune(str(tmp_path), 250) == 200  # 400 bytes -> at most 250: b (1), then d (2) go
    assert sorted(os.listdir(tmp_path)) == ["a-atime", "a-cache", "c-atime", "c-cache"]
    assert CC.prune(str(tmp_path), 250) == 0


def test_old_results_load_and_print_as_before_and_hits_print_beside_compile_time():
    saved = dict(run=0, seed=0, status="success", time_to_train_s=10.0, epochs=2.0, samples=100,
                 metric=0.9, throughput=5.0, throughput_unit="images", compile_time_s=1.5,
                 init_time_s=2.0)
    r = R.RunResult(**saved)
    assert (r.compile_cache_hits, r.compile_programs, r.cached_compile) == (None, 0, "-")
    score = R.olympic_score([r])
    table = R.format_table("resnet50", "tiny", [r], score, "top1 >= 0.8", "top1", True)
    assert "persistent compilation cache" not in table
    assert table.splitlines()[3].endswith("       1.50")  # as before the cache existed
    hit = R.RunResult(**saved, compile_programs=3, compile_cache_hits=2)
    table = R.format_table("resnet50", "tiny", [r, hit], score, "top1 >= 0.8", "top1", True)
    rows = [line for line in table.splitlines() if line.lstrip().startswith("0 ")]
    assert [line[-11:] for line in rows] == ["     1.50 -", "   1.50 2/3"]


@pytest.mark.parametrize("cli,args,prefix", [
    ("mlperf_jax.train", ["--benchmark=resnet50", "--division=open"], "error: "),
    ("mlperf_jax.infer", ["--benchmark=resnet50"], "infer: error: "),
])
def test_clis_refuse_a_cache_folder_they_cannot_make(tmp_path, cli, args, prefix):
    blocker = tmp_path / "file"
    blocker.write_text("")
    p = run_python(["-m", cli, *args, f"--outdir={tmp_path / 'wd'}" if cli.endswith("infer")
                    else f"--workdir={tmp_path / 'wd'}", f"--compilation_cache_dir={blocker / 'sub'}"],
                   timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix + "--compilation_cache_dir "), p.stderr
