"""``python -m mlperf_jax.report html``: one self-contained HTML page of training and inference
runs (tables, and the plots of :mod:`mlperf_jax.report.plots` inlined as base64 PNG data URIs; no
external resources, so the file can be mailed or opened offline).

    python -m mlperf_jax.report html --runs=runs/ [--inference=inference_results/] [--out=report.html]
    python -m mlperf_jax.report html --runs=runs/ --benchmark=resnet50 --newest   (what make train runs)

``--runs``: a training workdir (holding results.json) or a directory of them; repeatable or
comma-separated. ``--inference``: LoadGen output directories (holding mlperf_log_detail.txt) or
directories searched for them. ``--out`` defaults to WORKDIR/report.html for one workdir, else
report.html in the first --runs (or --inference) directory. Prints the page's absolute path.
"""
from __future__ import annotations

import argparse
import base64
import datetime
import html
import json
import os
import sys

from mlperf_jax.report import logread, plots

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#1d2330;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:2px solid #dde3ea;padding-bottom:4px;margin-top:36px}
h3{margin-top:26px}.note{background:#fff6d6;border:1px solid #ecd77a;padding:8px 12px;border-radius:6px}
table{border-collapse:collapse;margin:10px 0;font-size:.9em}th,td{border:1px solid #cfd6de;padding:4px 9px;
text-align:right}td{white-space:nowrap}th{background:#eef2f6}td.l,th.l{text-align:left}tr.dropped td{color:#7b8794}
tr.aborted td{color:#c0392b}img{max-width:100%;border:1px solid #e3e8ee;margin:8px 0;display:block}
.muted{color:#6b7785;font-size:.85em}.scroll{overflow-x:auto}.kv td{white-space:normal;max-width:900px}
"""

_KNOWN = {"benchmark", "config", "division", "round", "tiny_track", "note", "target", "resumed_runs",
          "runs", "score_minutes", "score_valid", "score_runs_used", "score_runs_dropped",
          "score_note", "mean_throughput", "throughput_unit", "mean_compile_time_s"}


def _e(x) -> str:
    return html.escape("" if x is None else str(x))


def _num(x, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt) if isinstance(x, (int, float)) else _e(x)


def _table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None,
           left: int = 1) -> str:
    """An HTML table; cells are already-escaped HTML; the first ``left`` columns align left."""
    def cls(i: int) -> str:
        return ' class="l"' if i < left else ""
    out = ['<div class="scroll"><table>',
           "<tr>" + "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(header)) + "</tr>"]
    for j, r in enumerate(rows):
        rc = f' class="{row_classes[j]}"' if row_classes and row_classes[j] else ""
        out.append(f"<tr{rc}>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(r)) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def _img(fig, alt: str) -> str:
    data = base64.b64encode(plots.png_bytes(fig)).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _plot(make, alt: str) -> str:
    """A plot as an <img>, or one line saying why it could not be drawn."""
    try:
        return _img(make(), alt)
    except (logread.ReportError, OSError, ValueError, KeyError) as e:
        return f'<p class="muted">{_e(alt)}: not drawn ({_e(e)})</p>'


# ----------------------------------------------------------------------------- training
def _overview(workdirs: list[str], results: dict[str, dict]) -> str:
    rows = []
    for wd in workdirs:
        r = results[wd]
        runs = r.get("runs", [])
        conv = sum(1 for x in runs if x.get("status") == "success")
        thr = r.get("thresholds") or (r.get("target") or {}).get("thresholds") or {}
        score = r.get("score_minutes")
        rows.append([
            _e(r.get("benchmark")), _e(r.get("config")), _e(r.get("division")), _e(r.get("round")),
            "tiny, synthetic" if r.get("tiny_track") else "real data",
            ", ".join(f"{_e(k)} &ge; {v:g}" for k, v in thr.items()),
            f"{conv}/{len(runs)}",
            _num(score, ".3f"), _num(None if score is None else score * 60, ".2f"),
            "yes" if r.get("score_valid") else "<b>NO</b>",
            _e(sorted(r.get("score_runs_used") or [])),
            _num(r.get("mean_throughput"), ",.1f") + " " + _e(r.get("throughput_unit") or "")])
    return _table(["benchmark", "config", "division", "round", "track", "target", "converged",
                   "olympic mean (min)", "(s)", "valid", "runs used", "mean throughput /s"],
                  rows, left=5)


def _runs_table(r: dict) -> str:
    used, dropped = set(r.get("score_runs_used") or []), set(r.get("score_runs_dropped") or [])
    rows, classes = [], []
    for x in r.get("runs", []):
        role = ("used" if x["run"] in used else "dropped" if x["run"] in dropped else "-")
        if x.get("status") != "success":
            classes.append("aborted")
        else:
            classes.append("dropped" if role == "dropped" else "")
        metric = x.get("metric")
        rows.append([str(x.get("run")), _e(x.get("status")), _e(role), _e(x.get("seed")),
                     _num(x.get("time_to_train_s")), _num(x.get("epochs")),
                     _num(metric, ".4f"),
                     _num(x.get("throughput"), ",.1f") + " " + _e(x.get("throughput_unit") or ""),
                     _num(x.get("per_chip_throughput"), ",.1f"), _e(_devices(x)),
                     _num(x.get("energy_j"), ",.1f"),
                     _num(x.get("compile_time_s")), _num(x.get("init_time_s")),
                     _e(x.get("resumed") or ""), _e(x.get("reason") or "")])
    metric_name = (r.get("target") or {}).get("metric", "metric")
    header = ["run", "status", "olympic mean", "seed", "time to train (s)", "epochs",
              f"{metric_name} (final)", "throughput /s", "per chip /s", "devices", "energy (J)",
              "compile (s)", "init (s)", "resumed", "reason"]
    # columns no run has a value in (results written before a field existed) are left out
    keep = [i for i in range(len(header))
            if i < 8 or i in (11, 12) or any(row[i] not in ("-", "") for row in rows)]
    return _table([header[i] for i in keep], [[row[i] for i in keep] for row in rows], classes,
                  left=3)


def _devices(run: dict) -> str:
    n = run.get("device_count")
    return f"{n} x {run.get('device_kind') or '?'}" if n else "-"


def _extra_fields(r: dict) -> str:
    """Fields of results.json beyond the ones the tables show (devices, energy, variance, as
    newer writers add them), nested values as compact JSON: shown whatever they hold."""
    items = [(k, v) for k, v in r.items() if k not in _KNOWN and v not in ("", None, [], {})]
    if not items:
        return ""

    def show(v) -> str:
        if isinstance(v, (dict, list)):
            text = json.dumps(v, separators=(", ", ": "), default=str)
            return _e(text if len(text) <= 600 else text[:600] + " ...")
        return _num(v, ",.4g") if isinstance(v, float) else _e(v)
    return '<div class="kv">' + _table(["field", "value"], [[_e(k), show(v)] for k, v in items],
                                       left=2) + "</div>"


def _training_section(workdirs: list[str]) -> str:
    results = {wd: logread.load_results(wd) for wd in workdirs}
    parts = ["<h2>Training: time to train</h2>", _overview(workdirs, results),
             '<p class="muted">Olympic mean: the fastest and the slowest run are dropped and the rest '
             "averaged (MLPerf training rules); a run that did not converge counts as the slowest.</p>",
             _plot(lambda: plots.ttt_bars(workdirs), "time to train per run")]
    for wd in workdirs:
        r = results[wd]
        parts.append(f"<h3>{_e(r.get('benchmark'))} ({_e(r.get('config'))}) "
                     f'<span class="muted">{_e(os.path.abspath(wd))}</span></h3>')
        notes = [r.get("note"), r.get("score_note")]
        if r.get("resumed_runs"):
            notes.append(f"resumed runs: {r['resumed_runs']} (time before the interruption plus after)")
        for n in filter(None, notes):
            parts.append(f'<p class="note">{_e(n)}</p>')
        parts.append(_runs_table(r))
        parts.append(_extra_fields(r))
        parts.append(_plot(lambda wd=wd: plots.eval_curves(wd), f"{r.get('benchmark')} eval curves"))
        parts.append(_plot(lambda wd=wd: plots.loss_curves(wd), f"{r.get('benchmark')} loss curves"))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- inference
_METRIC_KEYS = [("result_samples_per_second", "samples per second"),
                ("result_completed_samples_per_sec", "completed samples per second"),
                ("result_scheduled_samples_per_sec", "scheduled samples per second"),
                ("result_qps_with_loadgen_overhead", "QPS with LoadGen overhead"),
                ("result_qps_without_loadgen_overhead", "QPS without LoadGen overhead")]


def _inference_table(d: dict) -> str:
    rows = [["SUT", _e(d.get("sut_name"))], ["scenario", _e(d.get("effective_scenario"))],
            ["mode", _e(d.get("effective_test_mode"))],
            ["result", "<b>" + _e(d.get("result_validity", "-")) + "</b>"]]
    if d.get("result_invalid_reason"):
        rows.append(["why invalid", _e(d["result_invalid_reason"])])
    for k, label in _METRIC_KEYS:
        if k in d:
            rows.append([label, _num(d[k], ",.2f")])
    if d.get("effective_scenario") == "Server":
        rows.append(["target QPS", _num(d.get("effective_target_qps"), "g")])
        if isinstance(d.get("effective_target_latency_ns"), (int, float)):
            rows.append(["latency bound", f"{d['effective_target_latency_ns'] / 1e6:g} ms at "
                                          f"p{float(d.get('effective_target_latency_percentile', 0)) * 100:g}"])
    rows.append(["queries", _e(d.get("result_query_count", "-"))])
    for frac, ns in logread.latency_percentiles(d):
        label = "min" if frac == 0 else "max" if frac == 1 else f"p{frac * 100:g}"
        rows.append([f"latency {label}", f"{ns / 1e6:.3f} ms"])
    if isinstance(d.get("result_mean_latency_ns"), (int, float)):
        rows.append(["latency mean", f"{d['result_mean_latency_ns'] / 1e6:.3f} ms"])
    return _table(["", "value"], rows, left=1)


def _inference_section(detail_logs: list[str]) -> str:
    parts = ["<h2>Inference (LoadGen)</h2>"]
    for path in detail_logs:
        parts.append(f'<h3>{_e(os.path.basename(os.path.dirname(os.path.abspath(path))))} '
                     f'<span class="muted">{_e(os.path.abspath(path))}</span></h3>')
        try:
            entries = logread.read_detail(path)
        except logread.ReportError as e:
            parts.append(f'<p class="muted">{_e(e)}</p>')
            continue
        d = logread.detail_dict(entries)
        parts.append(_inference_table(d))
        if any(logread.PERCENTILE_KEY.match(k) for k in d):
            parts.append(_plot(lambda p=path: plots.latency_hist_cdf(p), "latency histogram and CDF"))
        if d.get("effective_test_mode") == "FindPeakPerformance":
            parts.append(_plot(lambda p=path: plots.findpeak_throughput(p),
                               "find-peak throughput against target QPS"))
    return "\n".join(parts)


def find_detail_logs(paths: list[str]) -> list[str]:
    out = []
    for p in paths:
        if os.path.isfile(p):
            out.append(p)
            continue
        if not os.path.isdir(p):
            raise logread.ReportError(f"--inference: {p}: no such file or directory")
        for root, dirs, files in os.walk(p):
            dirs.sort()
            out += [os.path.join(root, f) for f in sorted(files)
                    if f.endswith(".txt") and "mlperf_log_detail" in f]
    if paths and not out:
        raise logread.ReportError(f"--inference: no mlperf_log_detail.txt under {', '.join(paths)}")
    return out


def render(workdirs: list[str], detail_logs: list[str], title: str = "") -> str:
    """The whole page as one string."""
    title = title or "mlperf_jax results"
    tiny = any(logread.load_results(wd).get("tiny_track") for wd in workdirs)
    body = [f"<h1>{_e(title)}</h1>",
            f'<p class="muted">written {_e(datetime.datetime.now().isoformat(timespec="seconds"))} by '
            "python -m mlperf_jax.report html</p>"]
    if tiny:
        body.append('<p class="note">Tiny track on synthetic data: these are not MLPerf results.</p>')
    if workdirs:
        body.append(_training_section(workdirs))
    if detail_logs:
        body.append(_inference_section(detail_logs))
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"report: error: html: {message}", file=sys.stderr)
        raise SystemExit(2)


def _split(groups) -> list[str]:
    return [x for g in (groups or []) for item in g for x in item.split(",") if x]


def main(argv: list[str]) -> int:
    p = _Parser(prog="python -m mlperf_jax.report html", description="one self-contained HTML page")
    p.add_argument("--runs", action="append", nargs="+", help="training workdirs or directories of them")
    p.add_argument("--inference", action="append", nargs="+",
                   help="LoadGen output directories (mlperf_log_detail.txt) or directories of them")
    p.add_argument("--out", default=None, help="the HTML file (default: see the module docstring)")
    p.add_argument("--title", default="", help="the page's title")
    p.add_argument("--benchmark", default=None, help="only the workdirs of this benchmark")
    p.add_argument("--newest", action="store_true",
                   help="only the most recently written workdir (after --benchmark)")
    args = p.parse_args(argv)
    runs, inference = _split(args.runs), _split(args.inference)
    if not runs and not inference:
        p.error("give --runs and/or --inference")
    try:
        workdirs = [w for r in runs for w in logread.find_workdirs(r)]
        if args.benchmark:
            workdirs = [w for w in workdirs if logread.load_results(w).get("benchmark") == args.benchmark]
        if args.newest and workdirs:
            workdirs = [max(workdirs, key=lambda w: os.path.getmtime(os.path.join(w, "results.json")))]
        if runs and not workdirs:
            raise logread.ReportError(f"no training results.json under {', '.join(runs)}"
                                      + (f" for {args.benchmark}" if args.benchmark else ""))
        detail_logs = find_detail_logs(inference)
        base = workdirs[0] if len(workdirs) == 1 else (runs or inference)[0]
        out = args.out or os.path.join(base if os.path.isdir(base) else os.path.dirname(base),
                                       "report.html")
        page = render(workdirs, detail_logs, args.title)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write(page)
    except (logread.ReportError, OSError) as e:
        print(f"report: error: html: {e}", file=sys.stderr)
        return 2
    print(f"report: {os.path.abspath(out)}")
    return 0
