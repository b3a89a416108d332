"""Bad input gives one clear line on stderr and a non-zero exit; --help works."""
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
