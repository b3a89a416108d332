"""Bad input gives one clear line on stderr and a non-zero exit; --help works."""
import os

import pytest

from conftest import run_python

CLI = ["-m", "mlperf_jax.train"]


def _one_line_error(proc, *needles):
    assert proc.returncode != 0
    err = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert len(err) == 1, proc.stderr
    assert err[0].startswith("error: ")
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in err[0], err[0]


@pytest.mark.parametrize("args,needles", [
    (["--benchmark=alexnet"], ["unknown benchmark 'alexnet'", "resnet50"]),
    ([], ["--benchmark is required"]),
    (["--benchmark=resnet50", "--data_dir=/nonexistent/imagenet"], ["/nonexistent/imagenet"]),
    (["--benchmark=resnet50", "--config.global_batch_size=-8"], ["global_batch_size", "positive"]),
    (["--benchmark=resnet50", "--config.no_such_key=3"], ["no_such_key"]),
    (["--benchmark=resnet50", "--config=huge"], ["unknown config 'huge'", "tiny"]),
    (["--benchmark=resnet50", "--division=closed"], ["open division only"]),
    (["--benchmark=resnet50", "--num_runs=0"], ["--num_runs must be positive"]),
])
def test_bad_input_is_one_line(args, needles, tmp_path):
    proc = run_python(CLI + args + [f"--workdir={tmp_path}"], timeout=120)
    _one_line_error(proc, *needles)


def test_missing_imagenet_says_where_and_how(tmp_path):
    proc = run_python(CLI + ["--benchmark=resnet50", f"--data_dir={tmp_path}",
                             f"--workdir={tmp_path / 'w'}"], timeout=120)
    _one_line_error(proc, str(tmp_path), "imagenet2012", "manual")


def test_help_lists_flags():
    proc = run_python(CLI + ["--helpshort"], timeout=120)
    assert proc.returncode == 0
    assert "--benchmark" in proc.stdout and "--num_runs" in proc.stdout


# closed division through the command line, for every benchmark: (a tunable change, a fixed one)
DIVISION_CASES = {
    "resnet50": ("--config.base_learning_rate=9.0", "--config.label_smoothing=0.2"),
    "transformer": ("--config.learning_rate=1.5", "--config.label_smoothing=0.2"),
    "gnmt": ("--config.learning_rate=0.001", "--config.label_smoothing=0.2"),
    "ncf": ("--config.learning_rate=0.001", "--config.mf_dim=32"),
    "ssd": ("--config.base_learning_rate=0.1", "--config.neg_pos_ratio=4"),
}


def _dry(bench, *extra):
    return run_python(CLI + [f"--benchmark={bench}", "--config=reference", "--dry_run", *extra],
                      timeout=120)


@pytest.mark.parametrize("bench", sorted(DIVISION_CASES))
def test_dry_run_closed_division(bench):
    tunable, fixed = DIVISION_CASES[bench]
    key = fixed.split("=")[0][len("--config."):]
    ref = _dry(bench)
    assert ref.returncode == 0, ref.stderr
    assert ref.stdout.strip().endswith("closed division: accepted"), ref.stdout
    assert f"  {key} = " in ref.stdout  # the resolved hyperparameters are printed
    tun = _dry(bench, tunable)
    assert tun.returncode == 0 and tun.stdout.strip().endswith("accepted"), tun.stdout + tun.stderr
    bad = _dry(bench, fixed)
    _one_line_error(bad, "closed division fixes these hyperparameters", key)
    assert f"closed division: rejects {key}=" in bad.stdout
    for extra in ((tunable,), (fixed,)):
        open_ = _dry(bench, "--division=open", *extra)
        assert open_.returncode == 0, open_.stderr
        assert "open division: any hyperparameters accepted" in open_.stdout


def test_dry_run_implementation_switch_is_not_a_hyperparameter():
    proc = _dry("resnet50", "--config.conv_impl=xla")
    assert proc.returncode == 0 and proc.stdout.strip().endswith("accepted"), proc.stdout
    assert "implementation (" in proc.stdout and "conv_impl = 'xla'" in proc.stdout


def test_dry_run_touches_no_data(tmp_path):
    """The reference config with a data dir that holds nothing: a dry run still succeeds."""
    proc = _dry("transformer", f"--data_dir={tmp_path}", f"--workdir={tmp_path / 'w'}")
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp_path) == []  # no workdir, no caches, no logs


def test_round_v05_targets_and_bad_format_combination():
    proc = _dry("resnet50", "--round=v0.5")
    assert proc.returncode == 0 and "round v0.5, target top1 >= 0.749" in proc.stdout
    bad = _dry("resnet50", "--round=v0.5", "--log_format=v0.6")
    _one_line_error(bad, "--log_format=v0.6", "--round=v0.6")


@pytest.mark.parametrize("script", ["accuracy_coco", "accuracy_imagenet", "accuracy_translation",
                                    "bench_infer", "bench_input", "bench_loadgen"])
def test_scripts_reject_an_unknown_flag_in_one_line(script):
    """The scripts' argparse errors (mlperf_jax.cli.ArgumentParser): one line, exit 2."""
    r = run_python([f"scripts/{script}.py", "--no_such_flag"], timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: "), r.stderr
