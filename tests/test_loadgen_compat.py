"""The compat module runs official-demo-style harnesses unchanged except for the import, and
writes files with the official layout (keys, summary lines, accuracy json)."""

import array
import json
import os
import threading
import time

import mlperf_loadgen  # the official LoadGen: a test dependency (the `test` extra)
import numpy as np
import pytest

from mlperf_jax.loadgen import compat


def demo_offline(mlperf_loadgen, slice_s=0.1):
    """The pattern of loadgen/demos/py_demo_offline.py: 3 threads answer 3 slices of the query."""

    def load_samples_to_ram(query_samples):
        del query_samples

    def unload_samples_from_ram(query_samples):
        del query_samples

    def process_query_async(query_samples, i_slice):
        time.sleep(slice_s * (i_slice + 1))
        responses = []
        for s in query_samples[i_slice:len(query_samples):3]:
            responses.append(mlperf_loadgen.QuerySampleResponse(s.id, 0, 0))
        mlperf_loadgen.QuerySamplesComplete(responses)

    def issue_query(query_samples):
        for i in range(3):
            threading.Thread(target=process_query_async, args=(query_samples, i)).start()

    def flush_queries():
        pass

    settings = mlperf_loadgen.TestSettings()
    settings.scenario = mlperf_loadgen.TestScenario.Offline
    settings.mode = mlperf_loadgen.TestMode.PerformanceOnly
    settings.offline_expected_qps = 1000
    settings.min_duration_ms = 100
    sut = mlperf_loadgen.ConstructSUT(issue_query, flush_queries)
    qsl = mlperf_loadgen.ConstructQSL(1024, 128, load_samples_to_ram, unload_samples_from_ram)
    mlperf_loadgen.StartTest(sut, qsl, settings)
    mlperf_loadgen.DestroyQSL(qsl)
    mlperf_loadgen.DestroySUT(sut)


def demo_server_accuracy(mlperf_loadgen, outdir):
    """py_demo_server.py style, in accuracy mode, answering with array.array buffers."""
    keep = []

    def process_query_async(query_samples):
        time.sleep(0.001)
        responses = []
        for s in query_samples:
            buf = array.array("B", np.arange(4, dtype=np.uint8) + (s.index % 200))
            keep.append(buf)
            addr, n = buf.buffer_info()
            responses.append(mlperf_loadgen.QuerySampleResponse(s.id, addr, n))
        mlperf_loadgen.QuerySamplesComplete(responses)

    def issue_query(query_samples):
        threading.Thread(target=process_query_async, args=[query_samples]).start()

    settings = mlperf_loadgen.TestSettings()
    settings.scenario = mlperf_loadgen.TestScenario.Server
    settings.mode = mlperf_loadgen.TestMode.AccuracyOnly
    settings.server_target_qps = 2000
    settings.server_target_latency_ns = 100000000
    log_settings = mlperf_loadgen.LogSettings()
    log_settings.log_output.outdir = str(outdir)
    log_settings.enable_trace = False
    sut = mlperf_loadgen.ConstructSUT(issue_query, lambda: None)
    qsl = mlperf_loadgen.ConstructQSL(300, 128, lambda s: None, lambda s: None)
    mlperf_loadgen.StartTestWithLogSettings(sut, qsl, settings, log_settings)
    mlperf_loadgen.DestroyQSL(qsl)
    mlperf_loadgen.DestroySUT(sut)


def _detail(path):
    return [json.loads(line[len(":::MLLOG "):]) for line in open(path) if line.startswith(":::MLLOG")]


def test_offline_demo_runs_on_both(tmp_path):
    summaries = {}
    for name, mod in (("official", mlperf_loadgen), ("ours", compat)):
        d = tmp_path / name
        d.mkdir()
        cwd = os.getcwd()
        os.chdir(d)  # StartTest writes into "."
        try:
            demo_offline(mod)
        finally:
            os.chdir(cwd)
        summaries[name] = (d / "mlperf_log_summary.txt").read_text()
    for name, text in summaries.items():
        lines = text.splitlines()
        assert lines[1] == "MLPerf Results Summary"
        assert lines[4] == "Scenario : Offline" and lines[5] == "Mode     : PerformanceOnly"
        assert lines[6].startswith("Samples per second: ")
        assert lines[7] == "Result is : VALID", name
    sps = {k: float(v.splitlines()[6].split(":")[1]) for k, v in summaries.items()}
    assert abs(sps["ours"] - sps["official"]) <= 0.25 * sps["official"], sps  # shared machine: wide
    off_keys = {e["key"] for e in _detail(tmp_path / "official" / "mlperf_log_detail.txt")}
    our_keys = {e["key"] for e in _detail(tmp_path / "ours" / "mlperf_log_detail.txt")}
    internal = {k for k in off_keys if k.startswith(("loadgen_", "logger_", "get_sut_name"))}
    assert off_keys - internal <= our_keys, sorted(off_keys - internal - our_keys)


def test_server_accuracy_demo_same_accuracy_log(tmp_path):
    logs = {}
    for name, mod in (("official", mlperf_loadgen), ("ours", compat)):
        d = tmp_path / name
        d.mkdir()
        demo_server_accuracy(mod, d)
        logs[name] = json.loads((d / "mlperf_log_accuracy.json").read_text())
    off, ours = logs["official"], logs["ours"]
    assert len(ours) == 300 and {e["qsl_idx"] for e in ours} == set(range(300))
    key = lambda e: e["seq_id"]  # noqa: E731 - answers arrive out of order on both
    assert sorted(off, key=key) == sorted(ours, key=key)
    # A decoder written for the official file works on ours.
    for e in ours:
        data = np.frombuffer(bytes.fromhex(e["data"]), np.uint8)
        assert data.tolist() == [(e["qsl_idx"] % 200 + i) % 256 for i in range(4)]
    off_lines = (tmp_path / "official" / "mlperf_log_accuracy.json").read_text().splitlines()
    our_lines = (tmp_path / "ours" / "mlperf_log_accuracy.json").read_text().splitlines()
    assert off_lines[0] == our_lines[0] == "[" and off_lines[-1] == our_lines[-1] == "]"


def test_fast_sut_and_settings_from_config(tmp_path):
    got = []

    def fast_issue(ids, indices):
        got.extend(indices)
        compat.QuerySamplesComplete([compat.QuerySampleResponse(i, 0, 0) for i in ids])

    s = compat.TestSettings()
    conf = tmp_path / "user.conf"
    conf.write_text("*.Offline.target_qps = 2000\n*.Offline.min_duration = 100\n")
    assert s.FromConfig(str(conf), "resnet50", "Offline") == 0
    s.scenario = compat.TestScenario.Offline
    ls = compat.LogSettings()
    ls.log_output.outdir = str(tmp_path)
    sut = compat.ConstructFastSUT(fast_issue, lambda: None)
    qsl = compat.ConstructQSL(2048, 1024, lambda s: None, lambda s: None)
    compat.StartTestWithLogSettings(sut, qsl, s, ls)
    # resnet50 Offline: min_query_count 24576 from mlperf.conf > 1.1 * 0.1 s * 2000.
    assert len(got) == 24576
    text = (tmp_path / "mlperf_log_summary.txt").read_text()
    assert "Min queries satisfied : Yes" in text and "samples_per_query : 24576" in text


def test_accuracy_mode_summary_same_as_official(tmp_path):
    texts = {}
    for name, mod in (("official", mlperf_loadgen), ("ours", compat)):
        d = tmp_path / name
        d.mkdir()
        s = mod.TestSettings()
        s.scenario = mod.TestScenario.Offline
        s.mode = mod.TestMode.AccuracyOnly
        ls = mod.LogSettings()
        ls.log_output.outdir = str(d)
        sut = mod.ConstructSUT(lambda qs, m=mod: m.QuerySamplesComplete([m.QuerySampleResponse(q.id, 0, 0) for q in qs]),
                               lambda: None)
        mod.StartTestWithLogSettings(sut, mod.ConstructQSL(30, 10, lambda x: None, lambda x: None), s, ls)
        texts[name] = (d / "mlperf_log_summary.txt").read_text()
    assert texts["ours"] == texts["official"]


@pytest.mark.parametrize("scenario", ["SingleStream", "MultiStream", "Server", "Offline"])
def test_summary_layout_identical_to_official(tmp_path, scenario):
    """Line by line, with every number masked, our summary equals the official one (the
    official may add a warning about its own log buffer growing)."""
    import re
    keep = []
    texts = {}
    for name, mod in (("official", mlperf_loadgen), ("ours", compat)):
        def issue(qs, m=mod):
            resp = []
            for q in qs:
                b = array.array("B", [q.index % 256, 1, 2, 3])
                keep.append(b)
                resp.append(m.QuerySampleResponse(q.id, *b.buffer_info()))
            m.QuerySamplesComplete(resp)
        s = mod.TestSettings()
        s.scenario = getattr(mod.TestScenario, scenario)
        s.mode = mod.TestMode.PerformanceOnly
        s.min_duration_ms, s.min_query_count = 100, 50
        s.server_target_qps = s.offline_expected_qps = 1000
        ls = mod.LogSettings()
        ls.log_output.outdir = str(tmp_path / name)
        ls.enable_trace = False
        (tmp_path / name).mkdir()
        mod.StartTestWithLogSettings(mod.ConstructSUT(issue, lambda: None),
                                     mod.ConstructQSL(50, 20, lambda x: None, lambda x: None), s, ls)
        mask = lambda line: re.sub(r"\d+(\.\d+)?(e[+-]\d+)?", "N", line)  # noqa: E731
        texts[name] = [mask(x) for x in (tmp_path / name / "mlperf_log_summary.txt").read_text().splitlines()
                       if not re.match(r"^\d+ warnings? encountered|^No warnings encountered", x)]
    assert texts["ours"] == texts["official"]
