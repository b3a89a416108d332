"""Plots of training and inference runs, as matplotlib Figures (no pyplot, no global state).

Stable API (a notebook builds on these names and signatures):

    eval_curves(workdir: str) -> Figure         eval metric against time, every run of a workdir
    ttt_bars(workdirs: list[str]) -> Figure     time-to-train bars per benchmark (one panel each)
    loss_curves(workdir: str) -> Figure         loss values the MLPerf logs hold (see below)
    latency_hist_cdf(detail_log: str, bound_ns: float | None = None) -> Figure
    findpeak_throughput(detail_log: str) -> Figure
    save_png(fig, path) / png_bytes(fig)        render with the Agg backend

Figures are made with ``matplotlib.figure.Figure`` and rendered by the Agg canvas, so nothing here
changes the caller's pyplot backend or opens a window; in Jupyter, show a returned Figure with
``%matplotlib inline`` active (or ``display(fig)``).

What the logs hold, and so what is drawn:
  * training ``result_N.txt``: ``eval_accuracy`` (with ``epoch_num``) at every eval, ``run_start``,
    ``run_stop``. The driver logs no train loss (the loss only reaches the progress bar), so
    ``loss_curves`` draws any ``*loss*`` key it finds and otherwise says so and draws the eval
    metric per epoch, which is what exists.
  * inference ``mlperf_log_detail.txt``: LoadGen logs latency percentiles, not per-sample
    latencies. ``latency_hist_cdf`` uses per-sample latencies from ``mlperf_log_trace.json``
    beside it when a trace was enabled, else the logged percentiles (its title says which).
"""
from __future__ import annotations

import io
import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mlperf_jax.report import logread

__all__ = ["eval_curves", "ttt_bars", "loss_curves", "latency_hist_cdf", "findpeak_throughput",
           "save_png", "png_bytes"]

_USED, _DROPPED, _FAILED = "#1f77b4", "#9aa5b1", "#d62728"


def _fig(w: float = 7.5, h: float = 4.2, **kw) -> Figure:
    fig = Figure(figsize=(w, h), dpi=100, **kw)
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (Agg)."""
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def save_png(fig: Figure, path: str) -> str:
    """Write the figure as a PNG file; returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png_bytes(fig))
    return path


def _empty(fig: Figure, ax, msg: str) -> Figure:
    ax.text(0.5, 0.5, msg, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()
    return fig


def _run_roles(results: dict) -> dict[int, str]:
    """run -> "used" | "dropped" | "aborted" from results.json's olympic-mean fields."""
    used, dropped = set(results.get("score_runs_used") or []), set(results.get("score_runs_dropped") or [])
    roles = {}
    for r in results.get("runs", []):
        n = r.get("run")
        roles[n] = ("aborted" if r.get("status") != "success" and n not in used
                    else "used" if n in used else "dropped" if n in dropped else "dropped")
    return roles


def _time_unit(seconds: float) -> tuple[float, str]:
    return (60.0, "min") if seconds > 300 else (1.0, "s")


def _series(logs: list[logread.TrainLog]) -> list[str]:
    """The names of the eval series: "" for a float eval_accuracy, else the dict's keys."""
    keys: list[str] = []
    for lg in logs:
        for e in lg.evals:
            for k in (e.value.keys() if isinstance(e.value, dict) else [""]):
                if k not in keys:
                    keys.append(k)
    return keys or [""]


def _val(v, key: str) -> float:
    if isinstance(v, dict):
        x = v.get(key, v.get(key.upper(), v.get(key.lower())))
        return float("nan") if x is None else float(x)
    return float(v)


def _threshold(thresholds: dict, key: str, n_series: int) -> tuple[str, float] | None:
    if not thresholds:
        return None
    for k, v in thresholds.items():
        if key and k.lower() == key.lower():
            return k, float(v)
    if n_series == 1:
        k, v = next(iter(thresholds.items()))
        return k, float(v)
    return None


def eval_curves(workdir: str) -> Figure:
    """Eval metric against time since ``run_start`` for every run of a training workdir, with the
    quality target as a horizontal line; runs the olympic mean used are solid and marked with a
    star at their last eval, dropped runs dashed grey, aborted runs red."""
    results = logread.load_results(workdir)
    logs = logread.train_logs(workdir)
    roles = _run_roles(results)
    keys = _series(logs)
    fig = _fig(7.5, 4.2 * (1 if len(keys) == 1 else 0.8 * len(keys)))
    axes = fig.subplots(len(keys), 1, squeeze=False)[:, 0]
    metric = (results.get("target") or {}).get("metric", "eval")
    thresholds = (results.get("target") or {}).get("thresholds") or {}
    tmax = max([e.t_s for lg in logs for e in lg.evals] + [1.0])
    scale, unit = _time_unit(tmax)
    for ax, key in zip(axes, keys):
        for lg in logs:
            if not lg.evals:
                continue
            role = roles.get(lg.run, "used" if lg.status == "success" else "aborted")
            t = [e.t_s / scale for e in lg.evals]
            y = [_val(e.value, key) for e in lg.evals]
            style = {"used": dict(color=None, ls="-", marker="o", ms=4, alpha=1.0),
                     "dropped": dict(color=_DROPPED, ls="--", marker="o", ms=3, alpha=0.9),
                     "aborted": dict(color=_FAILED, ls=":", marker="x", ms=4, alpha=0.9)}[role]
            line, = ax.plot(t, y, label=f"run {lg.run} ({role})", **style)
            if role == "used":
                ax.plot(t[-1], y[-1], marker="*", ms=13, color=line.get_color(), mec="black", mew=0.6)
        th = _threshold(thresholds, key, len(keys))
        if th:
            ax.axhline(th[1], color="black", lw=1.2, ls="-.", label=f"target {th[0]} {th[1]:g}")
        ax.set_ylabel(key or metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel(f"time since run_start ({unit})")
    title = f"{results.get('benchmark', '?')} ({results.get('config', '?')}): eval {metric} against time"
    axes[0].set_title(title + "\n★ last eval of a run the olympic mean used", fontsize=10)
    if not any(lg.evals for lg in logs):
        return _empty(fig, axes[0], f"no eval_accuracy lines in {workdir}/result_*.txt")
    fig.tight_layout()
    return fig


def ttt_bars(workdirs: list[str]) -> Figure:
    """Time to train of every run, one panel per workdir (benchmark), the olympic mean as a line;
    used runs blue, dropped grey, aborted red (drawn at their stop time, hatched)."""
    workdirs = list(workdirs)
    n = max(1, len(workdirs))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = _fig(max(6.0, 4.0 * cols + 0.5), 3.6 * rows + 0.3)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(workdirs):]:
        ax.set_axis_off()
    if not workdirs:
        return _empty(fig, axes[0], "no training workdirs")
    for ax, wd in zip(axes, workdirs):
        res = logread.load_results(wd)
        roles = _run_roles(res)
        runs = res.get("runs", [])
        times = [float(r.get("time_to_train_s") or 0.0) for r in runs]
        scale, unit = _time_unit(max(times + [1.0]))
        colors = [{"used": _USED, "dropped": _DROPPED, "aborted": _FAILED}[roles.get(r["run"], "dropped")]
                  for r in runs]
        bars = ax.bar([str(r["run"]) for r in runs], [t / scale for t in times], color=colors)
        for b, r in zip(bars, runs):
            if r.get("status") != "success":
                b.set_hatch("//")
        score = res.get("score_minutes")
        if score is not None:
            ax.axhline(score * 60 / scale, color="black", ls="--", lw=1.2,
                       label=f"olympic mean {score * 60 / scale:.2f} {unit}"
                             + ("" if res.get("score_valid", True) else " (INVALID)"))
            ax.legend(fontsize=8, loc="upper right")
        ax.set_xlabel("run")
        ax.set_ylabel(f"time to train ({unit})")
        cfg = str(res.get("config", "?"))
        tag = ", tiny track" if res.get("tiny_track") and cfg != "tiny" else ""
        ax.set_title(f"{res.get('benchmark', os.path.basename(wd))} ({cfg}{tag})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("time to train per run\nblue: used by the olympic mean, grey: dropped, red: aborted",
                 fontsize=9)
    fig.tight_layout()
    return fig


def loss_curves(workdir: str) -> Figure:
    """Loss against epoch from the ``*loss*`` keys of the runs' MLPerf logs. Our driver logs none
    (the train loss only reaches the progress bar): then the figure says so and shows the eval
    metric per epoch instead, which the logs do hold."""
    results = logread.load_results(workdir)
    logs = logread.train_logs(workdir)
    keys = sorted({k for lg in logs for k in lg.losses})
    fig = _fig()
    ax = fig.subplots()
    bench = f"{results.get('benchmark', '?')} ({results.get('config', '?')})"
    if keys:
        for lg in logs:
            for k in keys:
                pts = lg.losses.get(k, [])
                if pts:
                    x = [p[1] if p[1] is not None else p[0] for p in pts]
                    ax.plot(x, [p[2] for p in pts], marker=".", label=f"run {lg.run} {k}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.set_title(f"{bench}: loss values in the MLPerf logs", fontsize=10)
    else:
        metric = (results.get("target") or {}).get("metric", "eval")
        skeys = _series(logs)
        for lg in logs:
            for k in skeys:
                pts = [(e.epoch, _val(e.value, k)) for e in lg.evals if e.epoch is not None]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                            label=f"run {lg.run}" + (f" {k}" if k else ""))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"eval {metric}")
        ax.set_title(f"{bench}: no loss in the MLPerf logs (the driver logs none);\n"
                     f"eval {metric} per epoch shown instead", fontsize=10)
        if not any(lg.evals for lg in logs):
            return _empty(fig, ax, "no loss and no eval_accuracy lines in the logs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def latency_hist_cdf(detail_log: str, bound_ns: float | None = None) -> Figure:
    """Latency histogram and CDF of an inference run, the latency bound marked.

    Per-sample latencies come from ``mlperf_log_trace.json`` beside the detail log when there is
    one (all runs of the test; a find-peak trace holds every attempt); otherwise from the
    percentiles the detail log holds (min, 50..99.9 %, max), drawn as a CDF through those points
    and as the histogram those points imply (each band's share over its width). ``bound_ns``
    defaults to the Server scenario's ``effective_target_latency_ns``."""
    entries = logread.read_detail(detail_log)
    d = logread.detail_dict(entries)
    scenario = d.get("effective_scenario", "?")
    if bound_ns is None and scenario == "Server" and isinstance(d.get("effective_target_latency_ns"), (int, float)):
        bound_ns = float(d["effective_target_latency_ns"])
    pct = d.get("effective_target_latency_percentile") if scenario == "Server" else None
    trace = logread.trace_path_for(detail_log)
    lat = np.asarray(logread.trace_latencies_ns(trace), dtype=float) if trace else np.zeros(0)
    fig = _fig(10, 4)
    ax_h, ax_c = fig.subplots(1, 2)
    if lat.size:
        ms = lat / 1e6
        source = f"per-sample latencies from {os.path.basename(trace)} ({lat.size} samples)"
        ax_h.hist(ms, bins=min(60, max(10, int(np.sqrt(ms.size)))), color=_USED, alpha=0.85)
        ax_h.set_ylabel("samples")
        xs = np.sort(ms)
        ax_c.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", color=_USED)
    else:
        pts = logread.latency_percentiles(d)
        if len(pts) < 2:
            _empty(fig, ax_c, "")
            return _empty(fig, ax_h, f"no latencies in {os.path.basename(detail_log)} "
                                     "(not a performance run?)")
        source = ("latency percentiles in mlperf_log_detail.txt "
                  "(per-sample latencies are not logged; no trace file)")
        f = np.array([p[0] for p in pts])
        x = np.array([p[1] for p in pts]) / 1e6
        widths = np.diff(x)
        mass = np.diff(f)
        ok = widths > 0
        ax_h.bar(x[:-1][ok], (mass[ok] / widths[ok]), width=widths[ok], align="edge",
                 color=_USED, alpha=0.85, edgecolor="white")
        ax_h.set_ylabel("share of samples per ms (implied by the percentiles)")
        ax_c.plot(x, f, marker="o", color=_USED)
        for fi, xi in zip(f, x):
            if any(abs(fi - q) < 1e-9 for q in (0.5, 0.9, 0.99)):
                ax_c.annotate(f"p{fi * 100:g}", (xi, fi), fontsize=7, xytext=(4, -10),
                              textcoords="offset points")
    for ax in (ax_h, ax_c):
        ax.set_xlabel("latency (ms)")
        ax.grid(alpha=0.3)
        if bound_ns:
            ax.axvline(bound_ns / 1e6, color=_FAILED, ls="--", lw=1.3,
                       label=f"bound {bound_ns / 1e6:g} ms" + (f" at p{float(pct) * 100:g}" if pct else ""))
            ax.legend(fontsize=8, loc="lower right" if ax is ax_c else "upper right")
    if pct:
        ax_c.axhline(float(pct), color=_FAILED, ls=":", lw=1)
    ax_c.set_ylabel("fraction of samples ≤ latency")
    ax_c.set_ylim(0, 1.02)
    ax_h.set_title("latency histogram", fontsize=10)
    ax_c.set_title("latency CDF", fontsize=10)
    validity = d.get("result_validity", "?")
    fig.suptitle(f"{d.get('sut_name', '?')} {scenario} {d.get('effective_test_mode', '')}: "
                 f"result {validity}\nsource: {source}", fontsize=9)
    fig.tight_layout()
    return fig


def findpeak_throughput(detail_log: str) -> Figure:
    """Throughput against target QPS for each attempt of a Server FindPeakPerformance run.

    The detail log holds each attempt's target QPS and its samples and start..last-completion
    wall times (``generated_query_count``, ``power_begin``/``power_end``, ms resolution), so the
    throughput drawn per attempt is samples / that duration; LoadGen's own
    ``result_completed_samples_per_sec`` exists for the final (peak) attempt only and is marked.
    Passing attempts green, failing red (a QPS passed iff it is at most the peak found)."""
    entries = logread.read_detail(detail_log)
    d = logread.detail_dict(entries)
    attempts, peak = logread.find_peak_attempts(entries)
    fig = _fig(7.5, 4.5)
    ax = fig.subplots()
    if not attempts:
        return _empty(fig, ax, f"{os.path.basename(detail_log)}: no FindPeakPerformance attempts "
                               f"(test mode {d.get('effective_test_mode', '?')})")
    colors = {True: "#2ca02c", False: _FAILED, None: _DROPPED}
    for ok in (True, False, None):
        sel = [a for a in attempts if a.passed is ok and a.throughput is not None]
        if sel:
            ax.scatter([a.target_qps for a in sel], [a.throughput for a in sel], color=colors[ok],
                       s=28, zorder=3, label={True: "met the latency bound", False: "missed it",
                                              None: "outcome not logged"}[ok])
    hi = max([a.target_qps for a in attempts] + [a.throughput or 0 for a in attempts])
    ax.plot([0, hi * 1.05], [0, hi * 1.05], color="black", lw=0.8, ls=":", label="throughput = target QPS")
    if peak is not None:
        ax.axvline(peak, color="#2ca02c", ls="--", lw=1.2, label=f"peak found: {peak:g} QPS")
        done = d.get("result_completed_samples_per_sec")
        if isinstance(done, (int, float)):
            ax.scatter([peak], [done], marker="*", s=160, color="#2ca02c", edgecolor="black", zorder=4,
                       label=f"LoadGen completed samples/s at the peak: {done:g}")
    ax.set_xlabel("target QPS of the attempt")
    ax.set_ylabel("completed samples / s")
    ax.set_title(f"{d.get('sut_name', '?')}: FindPeakPerformance, {len(attempts)} attempts", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig
