"""JAX SUT, infer CLI, MobileNet-v1 and the accuracy script (tiny shapes, CPU)."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlperf_jax import loadgen as lg
from mlperf_jax.inference import ClassifierSUT, SyntheticImageQSL, accuracy
from mlperf_jax.models import mobilenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32


def test_mobilenet_v1_shapes_and_size():
    v = jax.eval_shape(lambda: mobilenet.MobileNetV1().init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                                            train=False))
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v["params"]))
    assert 4_200_000 < n < 4_260_000  # MobileNet-v1 1.0-224: 4.2M parameters
    assert set(v) == {"params", "batch_stats"}
    m = mobilenet.MobileNetV1(num_classes=10, width_multiplier=0.25)
    out = jax.eval_shape(lambda: m.apply(m.init(jax.random.key(0), jnp.zeros((2, SIZE, SIZE, 3)), train=False),
                                         jnp.ones((3, SIZE, SIZE, 3)), train=False))
    assert out.shape == (3, 10) and out.dtype == jnp.float32


class TinyNet(nn.Module):
    """A small CNN with the classifier interface (MobileNet itself is exercised by the CLI test)."""

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


@pytest.fixture(scope="module")
def tiny():
    model = TinyNet()
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((1, SIZE, SIZE, 3)), train=False))(jax.random.key(1))
    return model, variables


def _settings(scenario, mode=lg.TestMode.PerformanceOnly, **kw):
    s = lg.TestSettings(scenario=scenario, mode=mode, min_duration_ms=300, min_query_count=50,
                        server_target_qps=150, offline_expected_qps=300, server_target_latency_ns=200_000_000)
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def test_accuracy_log_matches_direct_predictions(tmp_path, tiny):
    model, variables = tiny
    qsl = SyntheticImageQSL(image_size=SIZE, total=40, performance_sample_count=16, num_classes=10)
    with ClassifierSUT(model.apply, variables, qsl, preprocessing="resnet50", image_size=SIZE,
                       batch_sizes=(1, 8)) as sut:
        r = lg.start_test(sut, qsl, _settings(lg.TestScenario.Offline, lg.TestMode.AccuracyOnly), outdir=tmp_path)
    assert r.accuracy_samples_logged == 40
    entries = json.loads((tmp_path / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(40))
    qsl.load_samples_to_ram(range(40))
    # pre_process_vgg of the MLPerf reference (vision/classification_and_detection/python/dataset.py)
    x = qsl.get(range(40)).astype(np.float32) - np.array([123.68, 116.78, 103.94], np.float32)
    want = np.argmax(jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x), -1)
    got = {e["qsl_idx"]: int(np.frombuffer(bytes.fromhex(e["data"]), np.int32)[0]) for e in entries}
    assert [got[i] for i in range(40)] == want.tolist()
    acc, good, total = accuracy.top1(entries, want)
    assert (acc, good, total) == (100.0, 40, 40)


def test_offline_and_server_performance(tmp_path, tiny):
    model, variables = tiny
    qsl = SyntheticImageQSL(image_size=SIZE, total=64, performance_sample_count=32, num_classes=10)
    with ClassifierSUT(model.apply, variables, qsl, preprocessing="mobilenet", image_size=SIZE,
                       batch_sizes=(1, 4, 16), batch_timeout_ms=5) as sut:
        off = lg.start_test(sut, qsl, _settings(lg.TestScenario.Offline), outdir=tmp_path / "off")
        assert sut.batches_run[16] > 0  # Offline fills the largest batch
        srv = lg.start_test(sut, qsl, _settings(lg.TestScenario.Server), outdir=tmp_path / "srv")
    assert off.summary.min_queries_met and off.summary.sample_count == max(50, int(1.1 * 0.3 * 300))
    assert srv.summary.sample_count == srv.summary.query_count > 0
    assert srv.summary.perf_constraints_met  # 200 ms bound at 150 QPS for a tiny model
    assert "Result is :" in (tmp_path / "srv" / "mlperf_log_summary.txt").read_text()


def test_sharded_over_two_fake_devices(tmp_path):
    code = f"""
import jax, jax.numpy as jnp, numpy as np
from mlperf_jax import loadgen as lg
from mlperf_jax.inference import ClassifierSUT, SyntheticImageQSL
import flax.linen as nn
assert len(jax.local_devices()) == 2
class TinyNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))
m = TinyNet()
v = jax.jit(lambda k: m.init(k, jnp.zeros((1, {SIZE}, {SIZE}, 3)), train=False))(jax.random.key(0))
qsl = SyntheticImageQSL(image_size={SIZE}, total=20, performance_sample_count=8, num_classes=10)
with ClassifierSUT(m.apply, v, qsl, preprocessing="resnet50", image_size={SIZE}, batch_sizes=(1, 3)) as sut:
    assert sut.batch_sizes == [2, 4], sut.batch_sizes  # rounded up to multiples of the device count
    r = lg.start_test(sut, qsl, lg.TestSettings(scenario=lg.TestScenario.Offline, mode=lg.TestMode.AccuracyOnly),
                      outdir={str(tmp_path)!r})
    assert r.accuracy_samples_logged == 20
print("OK")
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-2000:]


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mlperf_jax.infer", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("args,needle", [
    (["--benchmark=foo"], "--benchmark=foo: unknown benchmark"),
    (["--benchmark=resnet50", "--scenario=server"], "--scenario=server"),
    (["--benchmark=resnet50", "--bogus=1"], "bogus"),
    (["--benchmark=resnet50", "--image_size=abc"], "image_size"),
    (["--benchmark=resnet50", "--user_conf=/nonexistent/user.conf"], "/nonexistent/user.conf"),
])
def test_cli_user_errors_are_one_line(args, needle):
    p = _cli(*args)
    assert p.returncode == 2
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_cli_bad_user_conf_and_missing_dataset(tmp_path):
    conf = tmp_path / "user.conf"
    conf.write_text("mobilenet.Offline.target_qqps = 5\n")
    p = _cli("--benchmark=mobilenet", f"--user_conf={conf}")
    assert p.returncode == 2 and "mobilenet.Offline.target_qqps" in p.stderr and "Traceback" not in p.stderr
    p = _cli("--benchmark=mobilenet", f"--data_dir={tmp_path}")
    err = [x for x in p.stderr.splitlines() if "error" in x]
    assert p.returncode == 2 and len(err) == 1 and "val_map.txt" in err[0]


def test_cli_offline_run_tiny(tmp_path):
    p = _cli("--benchmark=mobilenet", "--scenario=Offline", "--mode=performance", f"--image_size={SIZE}",
             "--width_multiplier=0.25", "--batch_sizes=8", "--min_duration_ms=200", "--target_qps=200",
             "--total_sample_count=64", f"--outdir={tmp_path}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "SYNTHETIC" in p.stderr and "RANDOM weights" in p.stderr
    text = (tmp_path / "mlperf_log_summary.txt").read_text()
    assert "Scenario : Offline" in text and "Samples per second:" in text


@pytest.mark.parametrize("bench", ["mobilenet", "resnet50"])
def test_cli_gives_qsl_and_sut_the_benchmarks_preprocessing(tmp_path, bench):
    (tmp_path / "val_map.txt").write_text("img0.JPEG 3\n")  # the QSL reads images only when loading
    spy = f"""
import sys
from mlperf_jax import inference, infer
class Spy(inference.ClassifierSUT):
    def __init__(self, apply_fn, variables, qsl, **kw):
        print("preprocessing: qsl", qsl.preprocessing, "sut", kw["preprocessing"], flush=True)
        sys.exit(0)  # before compiling: the names are all this test wants
inference.ClassifierSUT = Spy
sys.argv = ["infer", "--benchmark={bench}", "--data_dir={tmp_path}", "--image_size={SIZE}",
            "--width_multiplier=0.25", "--outdir={tmp_path}"]
infer.run_main()
"""
    p = subprocess.run([sys.executable, "-c", spy], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert p.returncode == 0 and f"preprocessing: qsl {bench} sut {bench}" in p.stdout, p.stderr[-2000:]


def test_accuracy_script(tmp_path):
    labels = np.array([3, 1, 4, 1, 5])
    preds = [3, 1, 0, 1, 5]  # 4 of 5 right
    entries = [{"seq_id": i, "qsl_idx": i, "data": np.array([p], np.int32).tobytes().hex().upper()}
               for i, p in enumerate(preds)]
    entries.append(dict(entries[2], seq_id=9))  # duplicates are ignored
    (tmp_path / "acc.json").write_text(json.dumps(entries))
    (tmp_path / "val_map.txt").write_text("".join(f"img{i}.JPEG {l}\n" for i, l in enumerate(labels)))
    script = os.path.join(ROOT, "scripts", "accuracy_imagenet.py")
    p = subprocess.run([sys.executable, script, f"--mlperf-accuracy-file={tmp_path / 'acc.json'}",
                        f"--imagenet-val-file={tmp_path / 'val_map.txt'}", "--benchmark=mobilenet"],
                       capture_output=True, text=True, timeout=120)
    assert "accuracy=80.000%, good=4, total=5" in p.stdout and p.returncode == 0  # 80% >= 70.242%
    entries[0]["data"] = np.array([7], np.int32).tobytes().hex()  # now 3 of 5: 60% < 75.69%
    (tmp_path / "acc2.json").write_text(json.dumps(entries))
    p = subprocess.run([sys.executable, script, f"--mlperf-accuracy-file={tmp_path / 'acc2.json'}",
                        f"--imagenet-val-file={tmp_path / 'val_map.txt'}", "--benchmark=resnet50"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "accuracy=60.000%" in p.stdout and "FAIL" in p.stdout
