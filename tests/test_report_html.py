"""Plots and the HTML report: plotted data checked against hand-written logs, and a page made from
a real (tiny) training run and a real LoadGen run, rendered by headless Chromium.

Chromium: ``apt-get install -y chromium`` (Debian); without a binary the browser test is skipped.
"""
from __future__ import annotations

import base64
import html.parser
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from mlperf_jax import mllog
from mlperf_jax import results as results_lib
from mlperf_jax.report import html as html_report
from mlperf_jax.report import logread, plots


# ----------------------------------------------------------------------------- hand-written logs
def _mllog(t_ms: float, key: str, value=None, **meta) -> str:
    return ":::MLLOG " + json.dumps({"namespace": "", "time_ms": t_ms, "event_type": "POINT_IN_TIME",
                                     "key": key, "value": value, "metadata": meta})


@pytest.fixture()
def workdir(tmp_path):
    """Three runs: run 0 (:::MLLOG, evals at 10/20/30 s, train_loss lines), run 1 (the v0.6
    :::MLL format, evals at 5/12 s), run 2 (:::MLLOG, resumed: eval at 8 s, a 92 s outage, eval 4 s
    after the resume, so at 12 s). Times to train 30.5, 12.0, 12.5 s: the olympic mean uses run 2."""
    t0 = 1_700_000_000_000.0
    (tmp_path / "result_0.txt").write_text("\n".join([
        _mllog(t0 - 5000, "init_start"), _mllog(t0, "run_start"),
        _mllog(t0 + 9000, "train_loss", 2.0, epoch_num=1), _mllog(t0 + 10000, "eval_accuracy", 0.3, epoch_num=1),
        _mllog(t0 + 19000, "train_loss", 1.5, epoch_num=2), _mllog(t0 + 20000, "eval_accuracy", 0.6, epoch_num=2),
        _mllog(t0 + 30000, "eval_accuracy", 0.85, epoch_num=3),
        _mllog(t0 + 30500, "run_stop", status="success")]) + "\n")
    s0 = 5000.0
    (tmp_path / "result_1.txt").write_text("\n".join([
        mllog.format_v06("run_start", None, {}, now=s0),
        mllog.format_v06("eval_accuracy", 0.5, {"epoch_num": 1}, now=s0 + 5),
        mllog.format_v06("eval_accuracy", 0.82, {"epoch_num": 2}, now=s0 + 12),
        mllog.format_v06("run_stop", None, {"status": "success"}, now=s0 + 12)]) + "\n")
    (tmp_path / "result_2.txt").write_text("\n".join([
        _mllog(t0, "run_start"), _mllog(t0 + 8000, "eval_accuracy", 0.4, epoch_num=1),
        _mllog(t0 + 100000, "run_resumed", 8.0, epoch_num=2),
        _mllog(t0 + 104000, "eval_accuracy", 0.81, epoch_num=2),
        _mllog(t0 + 104500, "run_stop", status="success")]) + "\n")
    runs = [results_lib.RunResult(
        run=i, seed=i, status="success", time_to_train_s=t, epochs=2.0, samples=1, metric=0.8,
        throughput=100.0, throughput_unit="images", compile_time_s=1.0, init_time_s=1.0)
        for i, t in enumerate([30.5, 12.0, 12.5])]
    score = results_lib.olympic_score(runs)
    assert score.used_runs == [2]
    results_lib.write_json(str(tmp_path / "results.json"), benchmark="resnet50", config_name="tiny",
                           division="open", synthetic=True, target={"top1": 0.8}, metric="top1",
                           results=runs, score=score, round="v0.6")
    return str(tmp_path)


def _lines(ax) -> dict:
    return {ln.get_label(): ln for ln in ax.get_lines()}


def test_eval_curves_plot_the_logged_points(workdir):
    fig = plots.eval_curves(workdir)
    lines = _lines(fig.axes[0])
    assert {"run 0 (dropped)", "run 1 (dropped)", "run 2 (used)", "target top1 0.8"} <= set(lines)
    np.testing.assert_allclose(lines["run 0 (dropped)"].get_xdata(), [10, 20, 30], atol=1e-3)
    np.testing.assert_allclose(lines["run 0 (dropped)"].get_ydata(), [0.3, 0.6, 0.85])
    np.testing.assert_allclose(lines["run 1 (dropped)"].get_xdata(), [5, 12], atol=1e-3)
    np.testing.assert_allclose(lines["run 2 (used)"].get_xdata(), [8, 12], atol=1e-3)  # outage left out
    np.testing.assert_allclose(lines["target top1 0.8"].get_ydata(), [0.8, 0.8])
    assert lines["run 0 (dropped)"].get_linestyle() == "--"
    assert lines["run 2 (used)"].get_linestyle() == "-"
    stars = [ln for ln in fig.axes[0].get_lines() if ln.get_marker() == "*"]
    assert len(stars) == 1 and list(stars[0].get_xdata()) == pytest.approx([12], abs=1e-3)


def test_ttt_bars_and_loss_curves(workdir):
    fig = plots.ttt_bars([workdir])
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([30.5, 12.0, 12.5])
    (mean,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("olympic mean")]
    assert list(mean.get_ydata()) == pytest.approx([12.5, 12.5])
    lines = _lines(plots.loss_curves(workdir).axes[0])
    np.testing.assert_allclose(lines["run 0 train_loss"].get_xdata(), [1, 2])
    np.testing.assert_allclose(lines["run 0 train_loss"].get_ydata(), [2.0, 1.5])


def _detail(path, entries):
    path.write_text("".join(_mllog(float(i), k, v) + "\n" for i, (k, v) in enumerate(entries)))
    return str(path)


def test_latency_from_trace_and_percentiles(tmp_path):
    base = [("effective_scenario", "Server"), ("effective_test_mode", "PerformanceOnly"),
            ("effective_target_latency_ns", 50_000_000), ("effective_target_latency_percentile", 0.99),
            ("result_validity", "VALID"), ("result_min_latency_ns", 1_000_000),
            ("result_50.00_percentile_latency_ns", 20_000_000),
            ("result_99.00_percentile_latency_ns", 40_000_000), ("result_max_latency_ns", 60_000_000)]
    detail = _detail(tmp_path / "mlperf_log_detail.txt", base)
    fig = plots.latency_hist_cdf(detail)  # no trace: the percentiles
    assert "percentiles" in fig.get_suptitle()
    cdf = fig.axes[1].get_lines()[0]
    np.testing.assert_allclose(cdf.get_xdata(), [1, 20, 40, 60])
    np.testing.assert_allclose(cdf.get_ydata(), [0, 0.5, 0.99, 1])
    # bars: each band's share over its width: 0.5/19, 0.49/20, 0.01/20 per ms
    np.testing.assert_allclose([p.get_height() for p in fig.axes[0].patches], [0.5 / 19, 0.49 / 20, 0.01 / 20])
    assert any(ln.get_label().startswith("bound 50 ms") for ln in fig.axes[0].get_lines())
    lat = [1e6 * (i + 1) for i in range(100)]  # 1..100 ms
    (tmp_path / "mlperf_log_trace.json").write_text(json.dumps({"traceEvents": [
        {"name": "Sample", "ph": "b", "id": i, "args": {"complete_ns": v}} for i, v in enumerate(lat)]
        + [{"name": "Sample", "ph": "e", "id": 0}, {"name": "LastTrace"}]}))
    fig = plots.latency_hist_cdf(detail, bound_ns=30e6)
    assert "100 samples" in fig.get_suptitle()
    assert sum(p.get_height() for p in fig.axes[0].patches) == 100
    step = fig.axes[1].get_lines()[0]
    assert step.get_ydata()[-1] == 1.0 and step.get_xdata()[49] == pytest.approx(50.0)
    assert any(ln.get_label().startswith("bound 30 ms") for ln in fig.axes[1].get_lines())


def test_find_peak_attempts(tmp_path):
    msgs = [("FindPeakPerformance: Check validity of the base settings field: target_qps = 10.0", 30, 3.0),
            ("FindBoundaries: Checking fields [target_qps = 10.0, target_qps = 20.0)", 60, 3.0),
            ("FindBoundaries: Checking fields [target_qps = 20.0, target_qps = 40.0)", 120, 4.0),
            ("FindPeakPerformanceBinarySearch: Testing the mid value of bounds [target_qps = 20.0, "
             "target_qps = 40.0): target_qps = 30.0", 90, 4.5)]
    entries = [("effective_test_mode", "FindPeakPerformance")]
    for msg, n, dur in msgs:
        entries += [("generic_message", msg), ("generated_query_count", n),
                    ("generated_samples_per_query", 1), ("power_begin", "01-02-2030 00:00:01.000"),
                    ("power_end", f"01-02-2030 00:00:{1 + dur:06.3f}")]
    entries += [("generic_message", "FindPeakPerformance: Found peak performance field: target_qps = 20.0"),
                ("result_completed_samples_per_sec", 19.5)]
    detail = _detail(tmp_path / "mlperf_log_detail.txt", entries)
    attempts, peak = logread.find_peak_attempts(logread.read_detail(detail))
    assert peak == 20.0
    assert [a.target_qps for a in attempts] == [10, 20, 40, 30]
    assert [a.passed for a in attempts] == [True, True, False, False]
    assert [a.throughput for a in attempts] == pytest.approx([10, 20, 30, 20])
    fig = plots.findpeak_throughput(detail)
    assert "4 attempts" in fig.axes[0].get_title()


def test_newest_and_errors(workdir, tmp_path, capsys):
    out = tmp_path / "page.html"
    assert html_report.main([f"--runs={workdir}", f"--out={out}"]) == 0
    assert str(out) in capsys.readouterr().out
    assert html_report.main(["--runs=/nonexistent/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("report: error:")
    assert html_report.main([f"--runs={workdir}", "--benchmark=ssd", "--newest", f"--out={out}"]) == 2


# ----------------------------------------------------------------------------- the real page
def _env() -> dict:
    e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    e.pop("XLA_FLAGS", None)
    return e


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One tiny NCF training run and one short MobileNet Server run, made at the same time."""
    root = tmp_path_factory.mktemp("report")
    wd, inf = root / "runs" / "ncf-tiny", root / "inference"
    cmds = [[sys.executable, "-m", "mlperf_jax.train", "--benchmark=ncf", "--num_runs=1",
             f"--workdir={wd}", "--noprogress", "--noresume"],
            [sys.executable, "-m", "mlperf_jax.infer", "--benchmark=mobilenet", "--width_multiplier=0.25",
             "--image_size=32", "--scenario=Server", "--mode=performance", "--min_duration_ms=500",
             "--min_query_count=50", "--target_qps=200", "--batch_sizes=1,8",
             "--total_sample_count=64", f"--outdir={inf}"]]
    procs = [subprocess.Popen(c, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in cmds]
    train_out = procs[0].communicate(timeout=300)[0]
    infer_out = procs[1].communicate(timeout=300)[0]
    assert procs[0].returncode == 0 and (wd / "results.json").exists(), train_out[-3000:]
    # a result LoadGen calls INVALID (a busy machine misses the bound) still has its logs
    assert (inf / "mlperf_log_detail.txt").exists(), infer_out[-3000:]
    page = root / "report.html"
    r = subprocess.run([sys.executable, "-m", "mlperf_jax.report", "html", f"--runs={root / 'runs'}",
                        f"--inference={inf}", f"--out={page}"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"report: {page}"
    return page


class _Dom(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.imgs: list[str] = []
        self.text: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        for k in ("href", "src"):
            if a.get(k) and tag != "img":
                self.links.append(a[k])

    def handle_data(self, data):
        self.text.append(data)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


def test_page_renders_in_headless_chromium(made, tmp_path):
    text = made.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium binary (apt-get install -y chromium)")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--disable-dev-shm-usage", "--window-size=1200,2400"]
    shot = tmp_path / "page.png"
    subprocess.run(flags + [f"--screenshot={shot}", made.as_uri()], capture_output=True, timeout=120)
    dom = subprocess.run(flags + ["--dump-dom", made.as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    parsed = _Dom()
    parsed.feed(dom)
    body = " ".join(parsed.text)
    assert parsed.tags.get("table", 0) >= 3  # overview, runs, inference
    for needle in ("Training: time to train", "ncf", "hr@10", "Inference (LoadGen)", "Server",
                   "latency p99", "not MLPerf results"):
        assert needle in body, needle
    # the training plots (time to train, eval, loss) and the inference latency plot
    assert len(parsed.imgs) == 4
    for src in parsed.imgs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.verify()
        assert img.size[0] > 300 and img.size[1] > 200
    assert not parsed.links
    px = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert px.shape == (2400, 1200)
    assert px.std() > 20 and (px < 128).mean() > 0.01  # not blank: text, tables and plots drawn
