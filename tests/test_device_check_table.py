"""scripts/device_check_table.py: each table cell read from the step outputs of
scripts/device_check.sh, in the exact line formats scripts/bench_train_step.py and mlperf_jax.infer
print (the CPU and Offline samples are a smoke run's lines, figures changed; the GPU sample is
those lines with made-up figures)."""
import importlib.util
import os

import pytest

from conftest import REPO

SPEC = importlib.util.spec_from_file_location(
    "device_check_table", os.path.join(REPO, "scripts", "device_check_table.py"))
table = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(table)

GPU_TRAIN = """\
benchmark: transformer (reference model), batch 128, bfloat16, 1 gpu device(s)
batch: 128 rows x 256 tokens (packed), 27,311 non-padding target tokens (the unit counted)
jax: 412,345.67 tokens/s  (66.2 ms/step, compile excluded)
jax: 210,963,456 parameters
jax: compile time 23.41 s wall, 22.80 CPU-s (init 4.12 s + train step 19.29 s wall)
jax: peak device memory 61.37 GiB
jax: 512,345.0 GFLOP/s achieved (33,918.01 GFLOP/step) = 54% of the bfloat16 matmul peak \
948,123.4 GFLOP/s measured now
"""

CPU_TRAIN = """\
benchmark: ncf (tiny model), batch 1024, float32, 1 cpu device(s)
jax: 305,817.06 samples/s  (3.3 ms/step, compile excluded)
jax: compile time 2.49 s wall, 2.61 CPU-s (init 0.52 s + train step 1.97 s wall; 0/2 from the \
persistent compilation cache)
jax: peak device memory n/a (cpu reports no memory stats); peak host RSS 0.39 GiB
jax: 3.9 GFLOP/s achieved (0.01 GFLOP/step) = 5% of the float32 matmul peak 81.1 GFLOP/s measured now
"""

OFFLINE = """\
infer: resnet50 Offline performance; QSL: synthetic; weights: random init; 1 gpu device(s)
infer: compiled batch sizes [64, 128, 256] in 31.5 s (before the test; not timed); 0 of 12 \
compiles from the persistent compilation cache
infer: Result is : VALID; samples_per_second = 52341.5
"""


def _write(outdir, name: str, text: str, rc: str) -> None:
    (outdir / f"{name}.txt").write_text(text)
    (outdir / f"{name}.rc").write_text(rc + "\n")


def test_device_peak_memory_and_the_other_cells(tmp_path):
    _write(tmp_path, "transformer_train", GPU_TRAIN, "0 97")
    r = table.row(str(tmp_path), "transformer_train")
    assert r == {"rate": "412,345.67 tokens/s", "compile": "23.41", "peak": "61.37 GiB",
                 "device": "1 gpu device(s)", "extra": "54% of matmul peak", "status": "ok",
                 "wall": "97"}


def test_cpu_reports_host_rss_instead():
    assert table._peak_memory(CPU_TRAIN) == "host RSS 0.39 GiB"


def test_missing_line_is_a_dash():
    text = GPU_TRAIN.replace("jax: peak device memory 61.37 GiB\n", "")
    assert table._peak_memory(text) == "-"


def test_table_has_the_peak_memory_column(tmp_path, capsys):
    _write(tmp_path, "transformer_train", GPU_TRAIN, "0 97")
    _write(tmp_path, "ncf_train", CPU_TRAIN, "0 10")
    _write(tmp_path, "resnet50_offline", OFFLINE, "0 80")
    _write(tmp_path, "resnet50_train", "jax: compile time 5.", "124 150")  # killed mid-line
    assert table.main(["device_check_table.py", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    head = lines[0].split("  ")
    assert "peak memory" in [h.strip() for h in head if h.strip()]
    start = lines[0].index("peak memory")
    cells = {ln.split("  ")[0]: ln[start:].split("  ")[0].strip() for ln in lines[2:6]}
    assert cells == {"ResNet-50 train step, bf16": "-",
                     "Transformer-big train step, bf16": "61.37 GiB",
                     "NCF train step": "host RSS 0.39 GiB",
                     "ResNet-50 Offline SUT, bf16": "-"}
    assert "TIMEOUT" in lines[2] and "52,341.5 samples/s" in lines[5] and "VALID" in lines[5]


@pytest.mark.parametrize("argv", [["t.py"], ["t.py", "/no/such/folder"]])
def test_usage_error_is_one_line(argv, capsys):
    assert table.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("device_check_table: error:") and err.count("\n") == 1
