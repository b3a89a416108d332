"""Ours behaves like mlperf_loadgen (the official LoadGen, 6.0) where users of the MLPerf
reference harnesses found it differed: max_duration stops issuing and the test then waits for
every issued sample; enum str(); accuracy-log sampling; the trace file; settings that used to
be ignored; the reference vision harness flow.  Oracle: the official module, run on the same
settings (in-process, or in a subprocess where its FromConfig keeps process-wide state)."""

import json
import os
import re
import subprocess
import sys
import threading
import time

import mlperf_loadgen  # the official LoadGen: a test dependency (the `test` extra)
import pytest

from mlperf_jax import loadgen as lg
from mlperf_jax.loadgen import compat, core
from mlperf_jax.loadgen.progress import Progress

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_vision_harness.py")


def _detail(path):
    return [json.loads(x[len(":::MLLOG "):]) for x in open(path) if x.startswith(":::MLLOG")]


def _run(mod, outdir, issue=None, trace=False, total=100, perf=50, **kw):
    """One test through the official Python API of ``mod``; returns the issued index lists."""
    os.makedirs(outdir, exist_ok=True)
    calls = []

    def default_issue(qs):
        calls.append([q.index for q in qs])
        mod.QuerySamplesComplete([mod.QuerySampleResponse(q.id, 0, 0) for q in qs])

    s = mod.TestSettings()
    s.mode = mod.TestMode.PerformanceOnly
    s.min_duration_ms, s.min_query_count = 50, 200
    s.server_target_qps = s.offline_expected_qps = 2000
    s.single_stream_expected_latency_ns = 500_000
    for k, v in kw.items():
        setattr(s, k, getattr(mod.TestScenario, v) if k == "scenario" else getattr(mod.TestMode, v) if k == "mode" else v)
    ls = mod.LogSettings()
    ls.log_output.outdir = str(outdir)
    ls.enable_trace = trace
    sut = mod.ConstructSUT(issue(mod, calls) if issue else default_issue, lambda: None)
    qsl = mod.ConstructQSL(total, perf, lambda x: None, lambda x: None)
    mod.StartTestWithLogSettings(sut, qsl, s, ls)
    mod.DestroyQSL(qsl)
    mod.DestroySUT(sut)
    return calls


# ---------------------------------------------------------------- enums (defect 2)
def test_enum_str_format_repr_match_official():
    for name in ("TestScenario", "TestMode", "LoggingMode"):
        off, ours = getattr(mlperf_loadgen, name), getattr(compat, name)
        assert list(off.__members__) == list(ours.__members__)
        for m in off.__members__:
            a, b = getattr(off, m), getattr(ours, m)
            assert (str(b), f"{b}", "{}".format(b), repr(b), int(b)) == (str(a), f"{a}", "{}".format(a), repr(a), int(a))
    assert str(compat.TestScenario.Offline) == "TestScenario.Offline"


def test_logs_still_write_the_bare_scenario_name(tmp_path):
    for name, mod in (("official", mlperf_loadgen), ("ours", compat)):
        _run(mod, tmp_path / name, scenario="Offline")
    for name in ("official", "ours"):
        lines = (tmp_path / name / "mlperf_log_summary.txt").read_text().splitlines()
        assert lines[4] == "Scenario : Offline" and lines[5] == "Mode     : PerformanceOnly", name
        d = {e["key"]: e["value"] for e in _detail(tmp_path / name / "mlperf_log_detail.txt")}
        assert (d["requested_scenario"], d["effective_test_mode"]) == ("Offline", "PerformanceOnly"), name


# ------------------------------------------------------- accuracy-log sampling (defect 3)
@pytest.mark.parametrize("scenario,mode,kw", [
    ("SingleStream", "PerformanceOnly", dict(accuracy_log_probability=0.1)),
    ("MultiStream", "PerformanceOnly", dict(accuracy_log_probability=0.05, accuracy_log_rng_seed=720381539243781796)),
    ("Server", "PerformanceOnly", dict(accuracy_log_probability=0.2, accuracy_log_rng_seed=12345)),
    ("Offline", "PerformanceOnly", dict(accuracy_log_sampling_target=30, accuracy_log_rng_seed=3)),
    # Accuracy first, then performance: the per-sample values continue one stream.
    ("SingleStream", "SubmissionRun", dict(accuracy_log_probability=0.1, accuracy_log_rng_seed=99)),
])
def test_accuracy_log_samples_same_as_official(tmp_path, scenario, mode, kw):
    logs = {}
    for name, mod in (("official", mlperf_loadgen), ("ours", compat)):
        _run(mod, tmp_path / name, scenario=scenario, mode=mode, **kw)
        logs[name] = sorted((e["seq_id"], e["qsl_idx"]) for e in
                            json.loads((tmp_path / name / "mlperf_log_accuracy.json").read_text()))
    assert len(logs["official"]) >= 10  # the draw picked a real subset
    assert logs["ours"] == logs["official"]


# --------------------------------------------------------------------- trace (defect 4)
def test_trace_is_a_real_chrome_trace_or_absent(tmp_path):
    for name, mod in (("official", mlperf_loadgen), ("ours", compat)):
        calls = _run(mod, tmp_path / name, trace=True, scenario="Server", min_query_count=60)
    data = json.loads((tmp_path / "ours" / "mlperf_log_trace.json").read_text())  # valid JSON
    ev = data["traceEvents"]
    assert data["displayTimeUnit"] == "ns" and ev[-1] == {"name": "LastTrace"}
    begins = [e for e in ev if e["name"] == "Sample" and e["ph"] == "b"]
    ends = {e["id"]: e for e in ev if e["name"] == "Sample" and e["ph"] == "e"}
    issued = [i for c in calls for i in c]
    assert [b["args"]["sample_idx"] for b in sorted(begins, key=lambda b: b["id"])] == issued
    for b in begins:
        assert ends[b["id"]]["ts"] >= b["ts"] and b["args"]["complete_ns"] >= b["args"]["issue_start_ns"]
    assert sum(e["name"] == "IssueQuery" for e in ev) == len(calls)
    assert sum(e["name"] == "Latency" for e in ev) == len(issued)
    # The official file is not valid JSON (it double-quotes some args): read its names by regex.
    off_names = set(re.findall(r'"name":"([^"]+)"', (tmp_path / "official" / "mlperf_log_trace.json").read_text()))
    assert {e["name"] for e in ev} <= off_names
    # enable_trace=False: the official leaves an empty file, we write none.
    _run(mlperf_loadgen, tmp_path / "off2", scenario="Offline")
    _run(compat, tmp_path / "ours2", scenario="Offline")
    assert (tmp_path / "off2" / "mlperf_log_trace.json").stat().st_size == 0
    assert not (tmp_path / "ours2" / "mlperf_log_trace.json").exists()


# ----------------------------------------------------- settings that were ignored (defect 5)
@pytest.mark.parametrize("field,value", [("server_num_issue_query_threads", 2), ("use_token_latencies", True),
                                         ("infer_token_latencies", True)])
def test_unimplemented_settings_are_refused_by_name(tmp_path, field, value):
    s = lg.TestSettings(scenario=lg.TestScenario.Server)
    setattr(s, field, value)
    with pytest.raises(lg.ConfigError, match=field):
        lg.start_test(compat._SUT(lambda q: None, lambda: None), compat._QSL(10, 10, None, None), s, outdir=tmp_path)
    assert not (tmp_path / "mlperf_log_summary.txt").exists()


def _coalesce_sut(mod, calls):
    def issue(qs):
        calls.append([q.index for q in qs])
        if len(calls) == 3:
            time.sleep(0.06)  # the SUT stalls: queries scheduled meanwhile are overdue
        mod.QuerySamplesComplete([mod.QuerySampleResponse(q.id, 0, 0) for q in qs])
    return issue


def test_server_coalesce_queries_like_official(tmp_path):
    sizes, details = {}, {}
    for name, mod in (("official", mlperf_loadgen), ("ours", compat)):
        calls = _run(mod, tmp_path / name, issue=_coalesce_sut, scenario="Server", server_coalesce_queries=True,
                     min_duration_ms=100, min_query_count=100, server_target_qps=1000)
        sizes[name] = [len(c) for c in calls]
        details[name] = {e["key"]: e["value"] for e in _detail(tmp_path / name / "mlperf_log_detail.txt")}
    for name in sizes:
        assert sizes[name][3] >= 20, (name, sizes[name][:6])  # ~60 overdue queries go out together
        assert sum(sizes[name]) == details[name]["result_query_count"]
    assert details["ours"]["result_query_count"] == details["official"]["result_query_count"]
    plain = _run(compat, tmp_path / "plain", issue=_coalesce_sut, scenario="Server", min_duration_ms=100,
                 min_query_count=100, server_target_qps=1000)
    assert {len(c) for c in plain} == {1}


def test_print_timestamps_like_official(tmp_path, capfd):
    out = {}
    for name, mod in (("official", mlperf_loadgen), ("ours", compat)):
        capfd.readouterr()
        _run(mod, tmp_path / name, scenario="Offline", print_timestamps=True)
        out[name] = [re.sub(r"\d+(\.\d+)?", "N", x) for x in capfd.readouterr().out.splitlines()
                     if x.startswith("Loadgen ::")]
    assert out["ours"] == out["official"] and len(out["ours"]) == 5


def test_test05_seeds_like_official(tmp_path):
    issued = {}
    for name, mod in (("official", mlperf_loadgen), ("ours", compat)):
        issued[name] = _run(mod, tmp_path / name, scenario="SingleStream", mode="AccuracyOnly", test05=True,
                            test05_qsl_rng_seed=11, test05_sample_index_rng_seed=22, test05_schedule_rng_seed=33,
                            min_query_count=60)
        d = {e["key"]: e["value"] for e in _detail(tmp_path / name / "mlperf_log_detail.txt")}
        assert d["effective_test_mode"] == "PerformanceOnly" and d["effective_sample_index_rng_seed"] == 22
    assert issued["ours"] == issued["official"] and len(issued["ours"]) >= 60


def test_pre_6_report_latency_callback_is_called(tmp_path):
    """r0.5 harnesses pass a third ConstructSUT callback (ReportLatencyResults) and build their
    results from it.  Oracle: the SUT's own count of issued queries and its 2 ms answer delay."""
    got, issued = [], []

    def issue(qs):
        issued.append(len(qs))
        time.sleep(0.002)
        compat.QuerySamplesComplete([compat.QuerySampleResponse(q.id, 0, 0) for q in qs])

    s = compat.TestSettings()
    s.scenario, s.mode = compat.TestScenario.SingleStream, compat.TestMode.PerformanceOnly
    s.min_duration_ms, s.min_query_count = 50, 20
    ls = compat.LogSettings()
    ls.log_output.outdir = str(tmp_path)
    sut = compat.ConstructSUT(issue, lambda: None, lambda lat: got.append(list(lat)))
    compat.StartTestWithLogSettings(sut, compat.ConstructQSL(10, 10, lambda x: None, lambda x: None), s, ls)
    assert len(got) == 1 and len(got[0]) == sum(issued) >= 20
    assert min(got[0]) >= 2_000_000
    with pytest.raises(TypeError):
        compat.ConstructQSL(10, 10, lambda x: None, lambda x: None, "extra")  # as the official


@pytest.mark.parametrize("log_mode,visible", [("EndOfTestOnly", False), ("Synchronous", True)])
def test_log_mode_decides_when_detail_lines_reach_the_file(tmp_path, log_mode, visible):
    seen = []
    path = tmp_path / "mlperf_log_detail.txt"

    class SUT:
        def issue_queries(self, qs):
            seen.append(path.stat().st_size)
            lg.query_samples_complete([lg.QuerySampleResponse(q.id) for q in qs])

        def flush_queries(self):
            pass

    ls = lg.LogSettings(log_mode=getattr(lg.LoggingMode, log_mode), enable_trace=False)
    ls.log_output.outdir = str(tmp_path)
    lg.start_test(SUT(), compat._QSL(20, 10, lambda x: None, lambda x: None),
                  lg.TestSettings(scenario=lg.TestScenario.Offline, min_duration_ms=10), ls)
    assert (seen[0] > 0) == visible
    assert [e["key"] for e in _detail(path)][-1] == "num_errors"


# ------------------------------------------------------------ progress line (issue item 6)
class _Silence:
    def __init__(self, delay):
        self.delay = delay

    def issue_queries(self, qs):
        def later():
            time.sleep(self.delay)
            lg.query_samples_complete([lg.QuerySampleResponse(q.id) for q in qs])
        threading.Thread(target=later).start()

    def flush_queries(self):
        pass


def test_progress_line_only_when_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(core, "PROGRESS_INTERVAL_S", 0.1)
    s = lg.TestSettings(scenario=lg.TestScenario.Offline, min_duration_ms=300, offline_expected_qps=1000,
                        min_query_count=1)
    qsl = compat._QSL(50, 50, lambda x: None, lambda x: None)
    lg.start_test(_Silence(0.5), qsl, s, outdir=tmp_path / "quiet")
    compat.StartTestWithLogSettings(_Silence(0.5), qsl, s, lg.LogSettings(log_output=lg.LogOutputSettings(
        outdir=str(tmp_path / "compat"))))
    assert capsys.readouterr().err == ""
    lg.start_test(_Silence(0.5), qsl, s, outdir=tmp_path / "loud", progress=True)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) >= 3  # stderr is not a TTY here: one plain line each time
    pat = r"^loadgen: (\d+\.\d) s of min_duration 0\.3 s; 330 samples issued, (\d+) answered; [\d.]+ samples/s$"
    assert all(re.match(pat, x) for x in lines), lines
    assert re.match(pat, lines[0]).group(2) == "0"  # the SUT answers at 0.5 s


def test_progress_overwrites_in_place_on_a_tty():
    class TTY:
        def __init__(self):
            self.text = ""

        def isatty(self):
            return True

        def write(self, s):
            self.text += s

        def flush(self):
            pass

    out = TTY()
    state = iter([(2.0, 10, 4), (4.0, 10, 10)])
    with Progress(lambda: next(state, None), 10.0, stream=out, interval_s=0.05):
        time.sleep(0.3)
    parts = out.text.split("\r")
    assert parts[0] == "" and len(parts) == 3 and out.text.endswith("\n")
    assert parts[1].startswith("loadgen: 2.0 s of min_duration 10.0 s; 10 samples issued, 4 answered; 2.0 samples/s")
    assert parts[2].startswith("loadgen: 4.0 s of min_duration 10.0 s; 10 samples issued, 10 answered; 3.0 samples/s")


# ------------------------------------------------------------ max_duration (defect 1)
def _late_offline_sut(mod, calls):
    def issue(qs):
        calls.append([q.index for q in qs])

        def later():
            time.sleep(0.35)  # answers after max_duration (150 ms)
            mod.QuerySamplesComplete([mod.QuerySampleResponse(q.id, 0, 0) for q in qs])
        threading.Thread(target=later).start()
    return issue


def test_offline_answered_after_max_duration_is_valid_on_both(tmp_path):
    summaries = {}
    for name, mod in (("official", mlperf_loadgen), ("ours", compat)):
        calls = _run(mod, tmp_path / name, issue=_late_offline_sut, scenario="Offline", min_duration_ms=150,
                     max_duration_ms=150, min_query_count=1)
        summaries[name] = (tmp_path / name / "mlperf_log_summary.txt").read_text()
        assert [len(c) for c in calls] == [330], name
    for text in summaries.values():
        assert "Result is : VALID" in text and "samples_per_query : 330" in text
        assert "No errors encountered during test." in text


def test_bad_and_late_answers_never_raise_in_the_sut_thread(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(core, "ANSWER_GUARD_MIN_MS", 0)  # give up at 1 x max_duration (200 ms)...
    monkeypatch.setattr(core, "ANSWER_GUARD_FACTOR", 1)
    monkeypatch.setattr(core, "ANSWER_GUARD_IDLE_MS", 50)  # ...once 50 ms pass without an answer
    died, done = [], threading.Event()
    monkeypatch.setattr(threading, "excepthook", lambda a: died.append(a.exc_value))

    class SUT:
        def issue_queries(self, qs):
            def worker():
                R = compat.QuerySampleResponse
                compat.QuerySamplesComplete([R(q.id, 0, 0) for q in qs[:10]])
                compat.QuerySamplesComplete([R(qs[0].id, 0, 0), R(qs[-1].id + 999, 0, 0)])  # twice, unknown
                time.sleep(0.6)  # past the guard: the test has ended
                compat.QuerySamplesComplete([R(q.id, 0, 0) for q in qs[10:]])
                done.set()
            threading.Thread(target=worker).start()

        def flush_queries(self):
            pass

    s = lg.TestSettings(scenario=lg.TestScenario.Offline, min_duration_ms=100, max_duration_ms=200,
                        offline_expected_qps=1000, min_query_count=1)
    r = lg.start_test(SUT(), compat._QSL(50, 50, lambda x: None, lambda x: None), s, outdir=tmp_path)
    assert done.wait(5) and not died
    assert "no test is running" in capsys.readouterr().err
    errs = [e["value"] for e in _detail(tmp_path / "mlperf_log_detail.txt") if e["metadata"]["is_error"]]
    assert any("more than once" in e for e in errs) and any("unknown response id" in e for e in errs)
    text = (tmp_path / "mlperf_log_summary.txt").read_text()
    assert not r.valid and "answer guard" in text and "did not answer 100 of 110" in text


# ------------------------------------------------- the reference vision harness (defect 6)
def _harness(lg_name, out, *args):
    p = subprocess.run([sys.executable, HARNESS, "--lg", lg_name, "--output", str(out), *args],
                       capture_output=True, text=True, timeout=90, cwd=out.parent)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def _summary(path):
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*(.+?)\s*:\s*(\S.*)$", line)
        if m:
            out.setdefault(m.group(1), m.group(2))
    return out


@pytest.fixture
def harness_dir(tmp_path):
    (tmp_path / "user.conf").write_text("*.Offline.min_query_count = 100\n*.Server.min_query_count = 100\n"
                                        "*.Server.target_latency = 1000\n")
    return tmp_path


@pytest.mark.timeout(120)
def test_vision_harness_offline_past_max_duration(harness_dir):
    """The issue's report, scaled down: Offline, --time 1, the SUT needs ~1.4 s: VALID on both,
    same issued count, every worker thread alive, the same files (less the empty trace)."""
    rep, summ = {}, {}
    for name in ("official", "ours"):
        rep[name] = _harness(name, harness_dir / name, "--scenario", "Offline", "--time", "1", "--qps", "2000",
                             "--delay", "0.04")
        summ[name] = _summary(harness_dir / name / "mlperf_log_summary.txt")
    for name in rep:
        assert rep[name]["scenario"] == "TestScenario.Offline" and list(rep[name]["results"]) == ["TestScenario.Offline"]
        assert rep[name]["answered"] == 2200 and rep[name]["worker_deaths"] == []
    for key in ("Result is", "Min duration satisfied", "Min queries satisfied", "samples_per_query"):
        assert summ["ours"][key] == summ["official"][key], key
    assert summ["ours"]["Result is"] == "VALID" and summ["ours"]["samples_per_query"] == "2200"
    assert set(rep["ours"]["files"]) == set(rep["official"]["files"]) - {"mlperf_log_trace.json"}
    assert (harness_dir / "official" / "mlperf_log_trace.json").stat().st_size == 0


@pytest.mark.timeout(120)
def test_vision_harness_server_last_query_after_max_duration(harness_dir):
    rep, summ, qc = {}, {}, {}
    for name in ("official", "ours"):
        rep[name] = _harness(name, harness_dir / name, "--scenario", "Server", "--time", "1", "--qps", "600",
                             "--delay", "0.005", "--threads", "8")
        summ[name] = _summary(harness_dir / name / "mlperf_log_summary.txt")
        d = _detail(harness_dir / name / "mlperf_log_detail.txt")
        qc[name] = [e["value"] for e in d if e["key"] == "result_query_count"][0]
        assert rep[name]["answered"] == qc[name] and rep[name]["worker_deaths"] == [], name
        assert not any("did not answer" in str(e["value"]) for e in d)
    for key in ("Result is", "Performance constraints satisfied", "Min duration satisfied", "Min queries satisfied",
                "Early stopping satisfied"):
        assert summ["ours"][key] == summ["official"][key], key
    assert summ["ours"]["Result is"] == "VALID"
    assert abs(qc["ours"] - qc["official"]) <= 1  # the same schedule; the last one may straddle 1 s


@pytest.mark.timeout(120)
def test_vision_harness_accuracy_with_trace(harness_dir):
    logs = {}
    for name in ("official", "ours"):
        rep = _harness(name, harness_dir / name, "--scenario", "Offline", "--accuracy", "--count", "50", "--debug")
        assert rep["answered"] == 50 and rep["results"]["TestScenario.Offline"]["good"] == 50
        assert "mlperf_log_trace.json" in rep["files"]
        logs[name] = sorted((e["seq_id"], e["qsl_idx"], e["data"]) for e in
                            json.loads((harness_dir / name / "mlperf_log_accuracy.json").read_text()))
        assert (harness_dir / name / "mlperf_log_summary.txt").read_text() == (
            "\nNo warnings encountered during test.\n\nNo errors encountered during test.\n"), name
    assert logs["ours"] == logs["official"] and len(logs["ours"]) == 50
    trace = json.loads((harness_dir / "ours" / "mlperf_log_trace.json").read_text())
    assert sum(e["name"] == "Sample" for e in trace["traceEvents"]) == 100
