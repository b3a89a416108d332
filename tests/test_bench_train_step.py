"""scripts/bench_train_step.py: ``--config.KEY=VALUE`` overrides, and the Transformer and NCF
train steps measured beside their PyTorch peers (scripts/torch_peers.py), on tiny shapes.

The parameter counts are checked against counts written out here from the architecture (not read
from either implementation), so both our model and the peer must match the same description."""
import os
import re

import pytest

from conftest import run_python

SCRIPT = "scripts/bench_train_step.py"
FAST = ["--steps=1", "--repeats=1", "--matmul_size=256"]


def _cache() -> str:
    """The suite's persistent compilation cache (tests/conftest.py), for the script's flag."""
    return f"--compilation_cache_dir={os.environ.get('JAX_COMPILATION_CACHE_DIR', '')}"

torch = pytest.importorskip("torch")


def _number(pattern: str, text: str) -> float:
    m = re.search(pattern, text, re.MULTILINE)
    assert m, f"no line matching {pattern!r} in:\n{text}"
    return float(m.group(1).replace(",", ""))


def transformer_params(vocab: int, d: int, d_ff: int, layers: int) -> int:
    """Shared embedding (tied output projection); per encoder layer: q, k, v, out projections
    without biases, the feed-forward with biases, two layer norms; per decoder layer the same with
    a second attention and a third layer norm; the final encoder and decoder layer norms."""
    ffn = 2 * d * d_ff + d_ff + d
    enc = 4 * d * d + ffn + 2 * 2 * d
    dec = 8 * d * d + ffn + 3 * 2 * d
    return vocab * d + layers * (enc + dec) + 2 * 2 * d


def neumf_params(users: int, items: int, mf_dim: int, sizes: tuple[int, ...]) -> int:
    """Four tables (GMF mf_dim, MLP sizes[0]/2 wide), the MLP's linear layers, the final layer."""
    tables = (users + items) * (mf_dim + sizes[0] // 2)
    mlp = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return tables + mlp + (sizes[-1] + mf_dim) + 1


def test_unknown_override_key_is_one_line_exit_2():
    p = run_python([SCRIPT, "--benchmark=transformer", "--config=tiny", "--config.model.dmodel=32"],
                   timeout=120)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "model.dmodel" in lines[0] and "model.d_model" in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_override_of_the_wrong_type_is_one_line_exit_2():
    p = run_python([SCRIPT, "--benchmark=ncf", "--config=tiny", "--config.mf_dim=wide"],
                   timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    assert len([ln for ln in p.stderr.splitlines() if ln.startswith("error:")]) == 1, p.stderr


def test_transformer_with_overrides_beside_torch():
    d, heads, d_ff, length, batch = 32, 2, 48, 12, 2
    p = run_python([SCRIPT, "--benchmark=transformer", "--config=tiny", f"--batch_size={batch}",
                    f"--config.model.d_model={d}", f"--config.model.num_heads={heads}",
                    f"--config.model.d_ff={d_ff}", f"--config.max_len={length}",
                    "--config.pack=False", *FAST, _cache()], timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    # the overrides took their fields' types (int, bool), and the batch has their shape
    header = next(ln for ln in out.splitlines() if ln.startswith("benchmark:"))
    assert f"model.d_model={d}," in header and "pack=False" in header and "max_len=12" in header
    assert f"batch: {batch} rows x {length} tokens (unpacked)" in out
    vocab, layers = 160, 2  # the tiny config's synthetic vocabulary and depth
    want = transformer_params(vocab, d, d_ff, layers)
    assert _number(r"^jax: ([\d,]+) parameters", out) == want
    assert _number(r"^torch: ([\d,]+) parameters", out) == want
    assert re.search(r"^jax: .* = \d+% of the float32 matmul peak", out, re.MULTILINE), out
    # XLA's FLOP count covers every matmul written out from the shapes, plus a little (softmax,
    # layer norms, Adam): a count that missed layers (a loop body counted once) would fall below
    assert 1.0 <= _number(r"XLA's count is ([\d.]+)x that", out) < 1.6
    assert _number(r"^jax: ([\d,.]+) tokens/s", out) > 0
    assert _number(r"^torch: ([\d,.]+) tokens/s", out) > 0
    assert _number(r"^ratio jax/torch: ([\d.]+)x", out) > 0


def test_ncf_beside_torch_with_memory_bandwidth():
    users, items = 1000, 2000  # the tiny config (multiples of its row_multiple: no padding)
    p = run_python([SCRIPT, "--benchmark=ncf", "--config=tiny", "--batch_size=256",
                    "--stream_mib=16", *FAST, _cache()], timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    out = p.stdout
    want = neumf_params(users, items, 16, (64, 32, 16, 8))
    assert _number(r"^jax: ([\d,]+) parameters", out) == want
    assert _number(r"^torch: ([\d,]+) parameters", out) == want
    assert _number(r"^jax: ([\d,.]+) samples/s", out) > 0
    assert _number(r"^torch: ([\d,.]+) samples/s", out) > 0
    assert _number(r"^ratio jax/torch: ([\d.]+)x", out) > 0
    assert _number(r"^jax: ([\d,.]+) MB/step accessed", out) > 0
    assert _number(r"memory bandwidth ([\d,.]+) GB/s measured now", out) > 0
    # the tables are 4 x float32: (users + items) * (16 + 32) floats; 8 passes over them
    tables_mb = (users + items) * (16 + 32) * 4 / 1e6
    assert _number(r"embedding tables \(([\d,.]+) MB\)", out) == pytest.approx(tables_mb, abs=0.05)
    assert _number(r"8 x = ([\d,.]+) MB/step", out) == pytest.approx(8 * tables_mb, abs=0.05)
