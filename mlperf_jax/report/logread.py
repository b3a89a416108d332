"""Reading what runs left behind, for the plots and the HTML page: a training workdir
(``results.json`` + the ``result_N.txt`` MLPerf logs) and a LoadGen output directory
(``mlperf_log_detail.txt``, and ``mlperf_log_trace.json`` when a trace was enabled).

MLPerf log lines are parsed with the official ``mlperf_logging`` parsers (ruleset 0.7.0's for
``:::MLLOG {json}`` lines, timestamps in ms; ruleset 0.6.0's for ``:::MLL secs key: {json}``),
so that what we plot is what the compliance checker reads.
"""
from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import re

from mlperf_logging.compliance_checker.mlp_parser import ruleset_060, ruleset_070


class ReportError(ValueError):
    """Input the report cannot use (missing files, unreadable logs): one line for the user."""


# ----------------------------------------------------------------------------- training
@dataclasses.dataclass
class EvalPoint:
    t_s: float  # seconds since run_start on the log's clock (time before a resume added)
    epoch: float | None
    value: float | dict  # eval_accuracy: a float, or a dict for several thresholds


@dataclasses.dataclass
class TrainLog:
    path: str
    run: int
    evals: list[EvalPoint]
    losses: dict[str, list[tuple[float, float | None, float]]]  # key -> (t_s, epoch, value)
    status: str | None  # run_stop's status, None when the run did not stop
    duration_s: float | None  # run_start..run_stop on the log's clock


def parse_mlperf_log(path: str) -> list[tuple[float, str, object, dict]]:
    """``(time in seconds, key, value, metadata)`` of every MLPerf line in ``path``, in order;
    either log format, read by the official parser of its ruleset."""
    with open(path, encoding="latin-1") as f:
        head = f.read(1 << 16)
    if ":::MLLOG " in head:
        lines, _ = ruleset_070.parse_file(path)
        scale = 1e-3  # ruleset 0.7.0's timestamp is time_ms
    elif ":::MLL " in head:
        lines, _ = ruleset_060.parse_file(path)
        scale = 1.0
    else:
        raise ReportError(f"{path}: no MLPerf log lines (:::MLLOG or :::MLL)")
    out = []
    for ll in lines:
        body = ll.value if isinstance(ll.value, dict) else {"value": ll.value}
        out.append((ll.timestamp * scale, ll.key, body.get("value"), body.get("metadata") or {}))
    return out


def read_train_log(path: str) -> TrainLog:
    """The eval points, any logged loss values and the run's end of one ``result_N.txt``.

    A resumed run logs ``run_start`` once and ``run_resumed`` (value: seconds timed before the
    interruption) when it restarts: times after it continue from that value, so the gap while
    the run was down is left out, as its time to train leaves it out."""
    m = re.search(r"result_(\d+)\.txt$", path)
    run = int(m.group(1)) if m else -1
    t0 = None
    offset = 0.0
    evals: list[EvalPoint] = []
    losses: dict[str, list] = {}
    status = duration = None
    for t, key, value, meta in parse_mlperf_log(path):
        if key == "run_start" and t0 is None:
            t0 = t
            continue
        if key == "run_resumed":
            offset, t0 = float(value or 0.0), t
            continue
        if t0 is None:
            continue
        rel = offset + t - t0
        epoch = meta.get("epoch_num", meta.get("epoch"))
        if key == "eval_accuracy" and value is not None:
            evals.append(EvalPoint(rel, epoch, value if isinstance(value, dict) else float(value)))
        elif "loss" in key and isinstance(value, (int, float)):
            losses.setdefault(key, []).append((rel, epoch, float(value)))
        elif key == "run_stop":
            status, duration = meta.get("status"), rel
    return TrainLog(path, run, evals, losses, status, duration)


def load_results(workdir: str) -> dict:
    """``WORKDIR/results.json`` as training wrote it (``mlperf_jax.results.write_json``)."""
    path = os.path.join(workdir, "results.json")
    if not os.path.isfile(path):
        raise ReportError(f"{workdir}: no results.json (not a finished training workdir)")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: unreadable ({e})") from None


def train_logs(workdir: str) -> list[TrainLog]:
    """Every ``result_N.txt`` of a workdir, by run number. (``log_path`` in results.json is
    relative to where training ran, so the workdir's own files are read.)"""
    paths = glob.glob(os.path.join(workdir, "result_*.txt"))
    logs = [read_train_log(p) for p in paths if re.search(r"result_\d+\.txt$", p)]
    return sorted(logs, key=lambda lg: lg.run)


def find_workdirs(root: str) -> list[str]:
    """``root`` itself when it holds results.json, else its subdirectories that do (sorted)."""
    if os.path.isfile(os.path.join(root, "results.json")):
        return [root]
    if not os.path.isdir(root):
        raise ReportError(f"{root}: no such directory")
    found = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "*", "results.json")))
    return found


# ----------------------------------------------------------------------------- inference
def read_detail(path: str) -> list[tuple[str, object]]:
    """``(key, value)`` of every line of a LoadGen ``mlperf_log_detail.txt``, in order."""
    if not os.path.isfile(path):
        raise ReportError(f"{path}: no such file")
    lines, _ = ruleset_070.parse_file(path)
    if not lines:
        raise ReportError(f"{path}: no :::MLLOG lines (not a LoadGen detail log)")
    return [(ll.key, ll.value.get("value")) for ll in lines]


def detail_dict(entries: list[tuple[str, object]]) -> dict:
    """The last value of each key (the final result lines win in a find-peak log)."""
    return {k: v for k, v in entries}


PERCENTILE_KEY = re.compile(r"^result_(\d+\.\d+)_percentile_latency_ns$")


def latency_percentiles(d: dict) -> list[tuple[float, float]]:
    """``(fraction, latency ns)`` from the per-sample ``result_XX.XX_percentile_latency_ns``
    lines, with ``result_min_latency_ns`` at 0 and ``result_max_latency_ns`` at 1."""
    pts = [(float(m.group(1)) / 100, float(v)) for k, v in d.items()
           if (m := PERCENTILE_KEY.match(k)) and isinstance(v, (int, float))]
    if isinstance(d.get("result_min_latency_ns"), (int, float)):
        pts.append((0.0, float(d["result_min_latency_ns"])))
    if isinstance(d.get("result_max_latency_ns"), (int, float)):
        pts.append((1.0, float(d["result_max_latency_ns"])))
    return sorted(pts)


def trace_path_for(detail_log: str) -> str | None:
    """The trace LoadGen wrote beside a detail log (same prefix/suffix), if any."""
    d, name = os.path.split(detail_log)
    cand = os.path.join(d, name.replace("mlperf_log_detail", "mlperf_log_trace").replace(".txt", ".json"))
    return cand if cand != detail_log and os.path.isfile(cand) else None


def trace_latencies_ns(trace: str) -> list[float]:
    """Per-sample latencies (scheduled to completed, ns) from the ``Sample`` begin events of
    ``mlperf_log_trace.json`` (``args.complete_ns``, the official trace's field)."""
    with open(trace) as f:
        events = json.load(f).get("traceEvents", [])
    return [float(e["args"]["complete_ns"]) for e in events
            if e.get("name") == "Sample" and e.get("ph") == "b" and "complete_ns" in e.get("args", {})]


@dataclasses.dataclass
class PeakAttempt:
    target_qps: float
    samples: int | None  # generated_query_count x generated_samples_per_query
    duration_s: float | None  # power_begin..power_end: start to last completion (ms resolution)
    passed: bool | None  # met the latency constraint (None: the log does not say)

    @property
    def throughput(self) -> float | None:
        if self.samples is None or not self.duration_s:
            return None
        return self.samples / self.duration_s


_QPS_IN_MSG = [re.compile(r"^FindPeakPerformance: Check validity of the base settings field: target_qps = ([\d.eE+-]+)"),
               re.compile(r"^FindBoundaries: Checking fields \[target_qps = [\d.eE+-]+, target_qps = ([\d.eE+-]+)\)"),
               re.compile(r"^FindPeakPerformanceBinarySearch: .*\): target_qps = ([\d.eE+-]+)$")]
_PEAK_MSG = re.compile(r"^FindPeakPerformance: Found peak performance field: target_qps = ([\d.eE+-]+)")


def _power_time(s: str) -> float:
    return datetime.datetime.strptime(s, "%m-%d-%Y %H:%M:%S.%f").timestamp()


def find_peak_attempts(entries: list[tuple[str, object]]) -> tuple[list[PeakAttempt], float | None]:
    """The attempts of a Server FindPeakPerformance run and the peak it found (None if none).

    The detail log has the tested target QPS in its ``generic_message`` lines and, per attempt,
    ``generated_query_count``, ``generated_samples_per_query`` and ``power_begin``/``power_end``;
    LoadGen's own per-attempt summaries are not logged (only the final one). An attempt passed
    iff its QPS is at most the peak: the search keeps the last passing QPS as its lower bound."""
    attempts: list[PeakAttempt] = []
    peak = None
    cur: dict | None = None
    for key, value in entries:
        if key == "generic_message" and isinstance(value, str):
            for rx in _QPS_IN_MSG:
                if m := rx.match(value):
                    cur = {"qps": float(m.group(1))}
                    attempts.append(PeakAttempt(cur["qps"], None, None, None))
            if m := _PEAK_MSG.match(value):
                peak = float(m.group(1))
        elif cur is not None and attempts:
            a = attempts[-1]
            if key == "generated_query_count":
                cur["n"] = int(value)
            elif key == "generated_samples_per_query":
                a.samples = int(cur.get("n", 0)) * int(value)
            elif key == "power_begin":
                cur["t0"] = _power_time(str(value))
            elif key == "power_end" and "t0" in cur:
                a.duration_s = _power_time(str(value)) - cur["t0"]
    for a in attempts:
        if peak is not None:
            a.passed = a.target_qps <= peak
    if peak is None and attempts and any(
            k == "error_runtime" and "Initial lower bound does not satisfy" in str(v) for k, v in entries):
        attempts[0].passed = False
    return attempts, peak
