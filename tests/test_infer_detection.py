"""Detection inference (ssd-mobilenet, ssd-resnet34): the SUT's response layout, the COCO QSL, the
accuracy script against pycocotools, and the infer CLI (tiny SSD, CPU).

The decoder below reads responses the way the official ``tools/accuracy-coco.py`` does:
``np.frombuffer(bytes.fromhex(data), np.float32)``, groups of seven ``[qsl_idx, ymin, xmin, ymax,
xmax, score, class]``, fewer than seven floats = no detections.
"""

import array
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from mlperf_jax import loadgen as lg
from mlperf_jax.inference import CocoQSL, DetectionSUT, SyntheticDetectionQSL, coco_accuracy, find_coco_val
from mlperf_jax.inference.coco_qsl import COCO_CATEGORY_IDS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "accuracy_coco.py")
SIZE = 16
K = 6  # detection slots of the fake detector


def official_decode(hex_data: str) -> np.ndarray:
    """The official reading: [n, 7] float32 (n = 0 when fewer than seven floats)."""
    data = np.frombuffer(bytes.fromhex(hex_data), np.float32)
    if len(data) < 7:
        return np.zeros((0, 7), np.float32)
    return data.reshape(-1, 7)


def fake_detect(variables, x):
    """Known detections from the image: image i (its pixel mean encodes qsl_idx) gets
    ``(idx % 4)`` valid detections; box j = [0.1j, 0.05, 0.1j + 0.3, 0.5], score 0.9 - 0.1j,
    label j + 1; invalid rows hold garbage that must not come out."""
    b = x.shape[0]
    j = jnp.arange(K, dtype=jnp.float32)
    boxes = jnp.stack([0.1 * j, jnp.full_like(j, 0.05), 0.1 * j + 0.3, jnp.full_like(j, 0.5)], -1)
    idx = jnp.round((x[:, 0, 0, 0] + 1.0) * 127.5).astype(jnp.int32)  # undo ssd-mobilenet's (x - 127.5) / 127.5
    valid = jnp.arange(K)[None, :] < (idx % 4)[:, None]
    garbage = jnp.where(valid[..., None], 0.0, 7.0)
    return {"boxes": jnp.broadcast_to(boxes, (b, K, 4)) * variables["one"] + garbage,
            "scores": jnp.broadcast_to(0.9 - 0.1 * j, (b, K)),
            "classes": jnp.broadcast_to(jnp.arange(1, K + 1), (b, K)).astype(jnp.int32),
            "valid": valid}


class IndexQSL(SyntheticDetectionQSL):
    """Image i is filled with the value i (so the fake detector can see which sample it got)."""

    def load_samples_to_ram(self, indices):
        for i in indices:
            self._ram[i] = np.full((self.image_size, self.image_size, 3), i, np.uint8)


def _expected(idx: int, table=None) -> np.ndarray:
    n = idx % 4
    rows = []
    for j in range(n):
        label = j + 1
        cls = label if table is None else table[label]
        rows.append([idx, 0.1 * j, 0.05, 0.1 * j + 0.3, 0.5, 0.9 - 0.1 * j, cls])
    return np.asarray(rows, np.float32).reshape(-1, 7)


@pytest.mark.parametrize("table", [None, "coco"])
def test_responses_decode_to_the_official_layout(tmp_path, table):
    total = 30
    qsl = IndexQSL(image_size=SIZE, total=total, performance_sample_count=8)
    l2c = qsl.label_to_category if table else None
    with DetectionSUT(fake_detect, {"one": jnp.float32(1)}, qsl, preprocessing="ssd-mobilenet", image_size=SIZE,
                      label_to_category=l2c, batch_sizes=(1, 4, 8)) as sut:
        r = lg.start_test(sut, qsl, lg.TestSettings(scenario=lg.TestScenario.Offline,
                                                     mode=lg.TestMode.AccuracyOnly), outdir=tmp_path)
    assert r.accuracy_samples_logged == total and sut.error is None
    entries = json.loads((tmp_path / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(total))
    for e in entries:
        got = official_decode(e["data"])
        want = _expected(e["qsl_idx"], None if l2c is None else l2c)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
        if e["qsl_idx"] % 4 == 0:
            assert e["data"] == ""  # no detections: an empty response
    if table:  # labels 1..6 -> COCO ids 1..6 (ids below 12 are contiguous); 7 would be 7, 12 -> 13
        assert list(l2c[:14]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14]
    assert sut.detections_answered == sum(i % 4 for i in range(total))


def test_official_loadgen_reads_the_responses(tmp_path):
    """The same SUT under the official LoadGen (mlperf_loadgen, accuracy mode, Server): its
    accuracy log decodes to the same groups of seven."""
    mlperf_loadgen = pytest.importorskip("mlperf_loadgen")
    qsl = IndexQSL(image_size=SIZE, total=24, performance_sample_count=24)
    qsl.load_samples_to_ram(range(24))

    def complete(responses):
        bufs = [array.array("B", r.payload()) for r in responses]
        mlperf_loadgen.QuerySamplesComplete([
            mlperf_loadgen.QuerySampleResponse(r.id, b.buffer_info()[0] if len(b) else 0, len(b))
            for r, b in zip(responses, bufs)])

    with DetectionSUT(fake_detect, {"one": jnp.float32(1)}, qsl, preprocessing="ssd-mobilenet", image_size=SIZE,
                      batch_sizes=(1, 4), batch_timeout_ms=1, complete=complete) as sut:
        settings = mlperf_loadgen.TestSettings()
        settings.scenario = mlperf_loadgen.TestScenario.Server
        settings.mode = mlperf_loadgen.TestMode.AccuracyOnly
        settings.server_target_qps = 500
        settings.server_target_latency_ns = 500_000_000
        log = mlperf_loadgen.LogSettings()
        log.log_output.outdir = str(tmp_path)
        log.enable_trace = False
        s = mlperf_loadgen.ConstructSUT(sut.issue_queries, sut.flush_queries)
        q = mlperf_loadgen.ConstructQSL(24, 24, lambda idx: None, lambda idx: None)
        mlperf_loadgen.StartTestWithLogSettings(s, q, settings, log)
        mlperf_loadgen.DestroyQSL(q)
        mlperf_loadgen.DestroySUT(s)
    entries = json.loads((tmp_path / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(24))
    for e in entries:
        np.testing.assert_allclose(official_decode(e["data"]), _expected(e["qsl_idx"]), atol=1e-6)


def test_sharded_over_two_fake_devices(tmp_path):
    code = f"""
import json, jax, jax.numpy as jnp, numpy as np
from mlperf_jax import loadgen as lg
from mlperf_jax.inference import DetectionSUT, SyntheticDetectionQSL
assert len(jax.local_devices()) == 2
def detect(v, x):
    b = x.shape[0]
    return dict(boxes=jnp.full((b, 3, 4), 0.25), scores=jnp.full((b, 3), 0.5),
                classes=jnp.ones((b, 3), jnp.int32), valid=jnp.ones((b, 3), bool))
qsl = SyntheticDetectionQSL(image_size=8, total=11, performance_sample_count=4)
with DetectionSUT(detect, {{}}, qsl, preprocessing="ssd-resnet34", image_size=8,
                  label_to_category=qsl.label_to_category, batch_sizes=(1, 3)) as sut:
    assert sut.batch_sizes == [2, 4], sut.batch_sizes
    r = lg.start_test(sut, qsl, lg.TestSettings(scenario=lg.TestScenario.Offline, mode=lg.TestMode.AccuracyOnly),
                      outdir={str(tmp_path)!r})
e = json.load(open({str(tmp_path / "mlperf_log_accuracy.json")!r}))
assert sorted(x["qsl_idx"] for x in e) == list(range(11))
for x in e:
    d = np.frombuffer(bytes.fromhex(x["data"]), np.float32).reshape(-1, 7)
    assert d.shape == (3, 7) and (d[:, 0] == x["qsl_idx"]).all() and (d[:, 6] == 1).all()
print("OK")
"""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr[-2000:]


# --------------------------------------------------------------------------- a tiny COCO
CATS = [1, 3, 18]  # non-contiguous COCO ids: label 1 -> 1, 2 -> 3, 3 -> 18
IMAGES = [(11, 40, 60), (22, 50, 30), (33, 32, 32), (44, 64, 48)]  # (id, height, width)
ANNS = [  # (image id, category, [x, y, w, h] pixels)
    (11, 1, [5, 4, 20, 16]), (11, 3, [30, 10, 25, 20]),
    (22, 18, [2, 2, 20, 30]), (22, 1, [10, 30, 15, 15]),
    (44, 3, [4, 8, 30, 40]),
]  # image 33 has no annotations


def make_coco(root, with_images=True):
    import cv2  # the test extra

    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    ds = {"images": [{"id": i, "height": h, "width": w, "file_name": f"{i:012d}.jpg"} for i, h, w in IMAGES],
          "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3],
                           "iscrowd": 0} for n, (i, c, b) in enumerate(ANNS)],
          "categories": [{"id": c, "name": f"c{c}", "supercategory": "x"} for c in CATS]}
    with open(os.path.join(root, "annotations", "instances_val2017.json"), "w") as f:
        json.dump(ds, f)
    if with_images:
        os.makedirs(os.path.join(root, "val2017"), exist_ok=True)
        rng = np.random.default_rng(0)
        for i, h, w in IMAGES:
            ok, buf = cv2.imencode(".jpg", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            assert ok
            (root / "val2017" / f"{i:012d}.jpg").write_bytes(buf.tobytes())
    return os.path.join(root, "annotations", "instances_val2017.json")


# Detections per qsl index, in COCO category ids, normalised [ymin, xmin, ymax, xmax].
def _norm(bb, h, w, jitter=0.0):
    x, y, bw, bh = bb
    return [(y + jitter) / h, (x + jitter) / w, (y + bh) / h, (x + bw + jitter) / w]


def hand_made_log(inv: bool = False):
    """(entries, detections by qsl_idx) with hits, a miss, a wrong class, an empty image, a duplicate."""
    inv_of = {c: l + 1 for l, c in enumerate(CATS)}
    by_idx = {
        0: [(_norm([5, 4, 20, 16], 40, 60), 0.9, 1), (_norm([30, 10, 25, 20], 40, 60, 2.0), 0.8, 3),
            ([0.0, 0.0, 0.2, 0.2], 0.3, 18)],
        1: [(_norm([2, 2, 20, 30], 50, 30, 1.0), 0.7, 18), (_norm([10, 30, 15, 15], 50, 30), 0.6, 3)],
        2: [],
        3: [(_norm([4, 8, 30, 40], 64, 48, 3.0), 0.95, 3), ([0.5, 0.5, 0.9, 0.9], 0.4, 3)],
    }
    entries = []
    for seq, (idx, dets) in enumerate(by_idx.items()):
        rows = [[idx, *box, score, inv_of[c] if inv else c] for box, score, c in dets]
        entries.append({"seq_id": seq, "qsl_idx": idx,
                        "data": np.asarray(rows, np.float32).reshape(-1).tobytes().hex().upper()})
    entries.append(dict(entries[1], seq_id=9, data=""))  # a duplicate qsl_idx: the first one counts
    return entries


def direct_map(ann_file, entries) -> float:
    """pycocotools on the same detections, computed here as the official script describes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = COCO(ann_file)
    images = gt.dataset["images"]
    dets, ids, seen = [], set(), set()
    for e in entries:
        if e["qsl_idx"] in seen:
            continue
        seen.add(e["qsl_idx"])
        im = images[e["qsl_idx"]]
        ids.add(im["id"])
        for g in official_decode(e["data"]):
            ymin, xmin, ymax, xmax = g[1] * im["height"], g[2] * im["width"], g[3] * im["height"], g[4] * im["width"]
            dets.append({"image_id": im["id"], "category_id": int(g[6]), "score": float(g[5]),
                         "bbox": [float(xmin), float(ymin), float(xmax - xmin), float(ymax - ymin)]})
    ev = COCOeval(gt, gt.loadRes(dets), "bbox")
    ev.params.imgIds = sorted(ids)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return float(ev.stats[0])


def _script(*args):
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("inv", [False, True])
def test_accuracy_script_gives_pycocotools_map(tmp_path, inv):
    ann = make_coco(tmp_path, with_images=False)
    entries = hand_made_log(inv)
    (tmp_path / "acc.json").write_text(json.dumps(entries))
    want = direct_map(ann, hand_made_log(False))
    assert 0.3 < want < 1.0  # partial credit: hits, a poor box, false positives
    m, counts = coco_accuracy.evaluate_log(str(tmp_path / "acc.json"), ann, use_inv_map=inv)
    assert m == want  # exactly, not approximately
    assert counts["images"] == 4 and counts["no_results"] == 1 and counts["dupes"] == 1
    p = _script(f"--mlperf-accuracy-file={tmp_path / 'acc.json'}", f"--coco-dir={tmp_path}",
                "--benchmark=ssd-mobilenet", *(["--use-inv-map"] if inv else []))
    assert f"mAP={100 * want:.3f}%" in p.stdout, p.stdout + p.stderr
    assert p.returncode == 0 and "PASS" in p.stdout  # > 21.78%


def test_accuracy_script_fail_and_no_detections(tmp_path):
    make_coco(tmp_path, with_images=False)
    wrong = [{"seq_id": i, "qsl_idx": i,
              "data": np.asarray([i, 0.0, 0.0, 0.05, 0.05, 0.5, 1], np.float32).tobytes().hex()} for i in range(4)]
    (tmp_path / "bad.json").write_text(json.dumps(wrong))
    p = _script(f"--mlperf-accuracy-file={tmp_path / 'bad.json'}", f"--coco-dir={tmp_path}",
                "--benchmark=ssd-resnet34")
    assert p.returncode == 1 and "mAP=0.000%" in p.stdout and "FAIL" in p.stdout, p.stdout + p.stderr
    empty = [{"seq_id": i, "qsl_idx": i, "data": ""} for i in range(4)]
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    p = _script(f"--mlperf-accuracy-file={tmp_path / 'empty.json'}", f"--coco-dir={tmp_path}",
                "--benchmark=ssd-resnet34")
    assert p.returncode == 1 and "mAP=0.000%" in p.stdout and "Traceback" not in p.stderr


@pytest.mark.parametrize("case,needle", [
    ("missing_log", "no file at"),
    ("missing_coco", "annotations/instances_val2017.json"),
    ("bad_benchmark", "--benchmark"),
    ("no_benchmark", "--benchmark"),
    ("not_sevens", "not groups of 7"),
    ("bad_index", "qsl_idx 9"),
    ("bad_hex", "not hex"),
    ("bad_label", "class 40"),
])
def test_accuracy_script_errors_are_one_line(tmp_path, case, needle):
    make_coco(tmp_path / "coco", with_images=False)
    log = tmp_path / "acc.json"
    data = {"not_sevens": np.zeros(10, np.float32).tobytes().hex(), "bad_hex": "XYZ"}.get(case, "")
    if case == "bad_label":
        data = np.asarray([0, 0, 0, 1, 1, 0.5, 40], np.float32).tobytes().hex()
    log.write_text(json.dumps([{"seq_id": 0, "qsl_idx": 9 if case == "bad_index" else 0, "data": data}]))
    coco = f"--coco-dir={tmp_path / 'coco'}"
    args = {"missing_log": [f"--mlperf-accuracy-file={tmp_path / 'nope.json'}", coco, "--benchmark=ssd-mobilenet"],
            "missing_coco": [f"--mlperf-accuracy-file={log}", f"--coco-dir={tmp_path}", "--benchmark=ssd-mobilenet"],
            "bad_benchmark": [f"--mlperf-accuracy-file={log}", coco, "--benchmark=ssd"],
            "no_benchmark": [f"--mlperf-accuracy-file={log}", coco],
            }.get(case, [f"--mlperf-accuracy-file={log}", coco, "--benchmark=ssd-mobilenet",
                         *(["--use-inv-map"] if case == "bad_label" else [])])
    p = _script(*args)
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_coco_qsl_reads_the_reference_layout(tmp_path):
    make_coco(tmp_path / "coco")
    assert find_coco_val(str(tmp_path)) == str(tmp_path / "coco")
    qsl = CocoQSL(find_coco_val(str(tmp_path)), preprocessing="ssd-resnet34", image_size=40)
    assert qsl.total_sample_count == 4 and qsl.performance_sample_count == 4
    assert list(qsl.image_ids) == [11, 22, 33, 44] and qsl.image_sizes.tolist()[1] == [50, 30]
    assert list(qsl.label_to_category) == [0, 1, 3, 18]
    qsl.load_samples_to_ram([3, 1])
    x = qsl.get([3, 1])
    assert x.shape == (2, 40, 40, 3) and x.dtype == np.uint8 and x.std() > 10
    small = CocoQSL(str(tmp_path / "coco"), preprocessing="ssd-mobilenet", image_size=30, count=2)
    assert small.total_sample_count == 2
    os.remove(tmp_path / "coco" / "val2017" / f"{33:012d}.jpg")
    with pytest.raises(FileNotFoundError, match="1 of the 4 images"):
        CocoQSL(str(tmp_path / "coco"), preprocessing="ssd-mobilenet", image_size=30)
    with pytest.raises(ValueError, match="detection preprocessing"):
        CocoQSL(str(tmp_path / "coco"), preprocessing="resnet50", image_size=30)
    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CATEGORY_IDS[-1] == 90


# --------------------------------------------------------------------------- the CLI
def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mlperf_jax.infer", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.mark.parametrize("args,needle", [
    (["--benchmark=ssd-mobilenet", "--model=ssd300_resnet34"], "--model=ssd300_resnet34"),
    (["--benchmark=resnet50", "--model=ssd_tiny"], "--model=ssd_tiny: only for the detection"),
    (["--benchmark=ssd-resnet34", "--model=ssd_tiny", "--image_size=300"], "--image_size=300: ssd_tiny takes 64x64"),
    (["--benchmark=ssd-mobilenet", "--model=ssd_tiny", "--data_dir=/nonexistent"], "instances_val2017.json"),
    (["--benchmark=ssd-mobilenet", "--image_size=8"], "--image_size=8"),
])
def test_cli_detection_user_errors_are_one_line(args, needle):
    p = _cli(*args)
    err = [x for x in p.stderr.splitlines() if "error" in x]
    assert p.returncode == 2 and len(err) == 1 and needle in err[0] and "Traceback" not in p.stderr, p.stderr


def test_cli_accuracy_run_synthetic_tiny(tmp_path):
    n = 10
    p = _cli("--benchmark=ssd-mobilenet", "--model=ssd_tiny", "--scenario=Offline", "--mode=accuracy",
             "--batch_sizes=4", f"--total_sample_count={n}", f"--outdir={tmp_path}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "SYNTHETIC" in p.stderr and "RANDOM weights" in p.stderr and "TEST model" in p.stderr
    entries = json.loads((tmp_path / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == list(range(n))
    total = 0
    for e in entries:
        d = official_decode(e["data"])
        assert len(bytes.fromhex(e["data"])) == 28 * len(d)  # whole groups of seven float32
        assert (d[:, 0] == e["qsl_idx"]).all()
        assert ((d[:, 1:5] >= 0) & (d[:, 1:5] <= 1)).all()
        assert (d[:, 3] >= d[:, 1]).all() and (d[:, 4] >= d[:, 2]).all()
        assert ((d[:, 5] > 0.3) & (d[:, 5] <= 1)).all()  # ssd-mobilenet: sigmoid scores above 0.3
        assert ((d[:, 6] >= 1) & (d[:, 6] <= 90) & (d[:, 6] == np.round(d[:, 6]))).all()  # COCO ids
        assert len(d) <= 100
        total += len(d)
    assert total > 0  # random weights: sigmoid(~0) = 0.5 > 0.3, so boxes come out
    assert f"{n} samples, {total} detections" in p.stdout


def test_cli_accuracy_run_on_coco_layout(tmp_path):
    make_coco(tmp_path / "coco")
    p = _cli("--benchmark=ssd-resnet34", "--model=ssd_tiny", "--scenario=SingleStream", "--mode=accuracy",
             "--batch_sizes=1", f"--data_dir={tmp_path}", f"--outdir={tmp_path / 'out'}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "QSL: COCO" in p.stdout and "SYNTHETIC" not in p.stderr
    entries = json.loads((tmp_path / "out" / "mlperf_log_accuracy.json").read_text())
    assert sorted(e["qsl_idx"] for e in entries) == [0, 1, 2, 3]
    for e in entries:
        d = official_decode(e["data"])
        assert (d[:, 0] == e["qsl_idx"]).all() and set(d[:, 6].tolist()) <= set(COCO_CATEGORY_IDS)
    assert "infer: mAP=" in p.stdout and "over 4 images" in p.stdout and "target 19.800%" in p.stdout
    # and the accuracy script reads the same log
    s = _script(f"--mlperf-accuracy-file={tmp_path / 'out' / 'mlperf_log_accuracy.json'}",
                f"--coco-dir={tmp_path / 'coco'}", "--benchmark=ssd-resnet34")
    assert s.returncode in (0, 1) and "mAP=" in s.stdout, s.stderr


@pytest.mark.parametrize("bench,table", [("ssd-mobilenet", "None"), ("ssd-resnet34", "81 [0, 1, 2, 3] 90")])
def test_cli_gives_qsl_and_sut_the_benchmarks_conventions(tmp_path, bench, table):
    make_coco(tmp_path / "coco", with_images=True)
    spy = f"""
import sys
from mlperf_jax import inference, infer
class Spy(inference.DetectionSUT):
    def __init__(self, detect_fn, variables, qsl, **kw):
        t = kw["label_to_category"]
        print("conventions:", qsl.preprocessing, kw["preprocessing"], kw["image_size"], qsl.total_sample_count,
              None if t is None else f"{{len(t)}} {{[int(v) for v in t[:4]]}} {{int(t[-1])}}", flush=True)
        sys.exit(0)
inference.DetectionSUT = Spy
sys.argv = ["infer", "--benchmark={bench}", "--model=ssd_tiny", "--data_dir={tmp_path}", "--outdir={tmp_path}"]
infer.run_main()
"""
    p = subprocess.run([sys.executable, "-c", spy], capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert p.returncode == 0 and f"conventions: {bench} {bench} 64 4 {table}" in p.stdout, p.stderr[-2000:]


def test_mlperf_conf_v05_detection_bounds():
    for model, latency_ms, psc in (("ssd-mobilenet", 10, 256), ("ssd-resnet34", 100, 64)):
        s = lg.TestSettings(scenario=lg.TestScenario.Server).from_config(None, model, "Server")
        assert s.server_target_latency_ns == latency_ms * 1_000_000 and s.performance_sample_count_override == psc
