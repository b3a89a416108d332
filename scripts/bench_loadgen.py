"""Ours vs the official mlperf_loadgen on the same null SUT, side by side.

    python scripts/bench_loadgen.py [--min_duration_ms=2000] [--qps=25000,50000,100000,150000,200000]
    python scripts/bench_loadgen.py --scenarios offline --repeats 5    # Offline only, 5 alternating runs

For each implementation, in a fresh subprocess per run: the Server scenario at each target
QPS (10 ms latency bound, p99, early stopping) -> the highest VALID QPS, plus latency
percentiles of the null SUT (which answer inline, so latency = how late the LoadGen issued
the query + the answer path), our pure issue lateness (issue time - scheduled time); and
Offline samples/s for one large query (``samples / max latency``, the official summary's
"Samples per second"; the query is sized by --offline_qps x min_duration x 1.1, so a LoadGen
faster than that ends before min_duration and reports INVALID: raise --offline_qps for a VALID
run).  Prints a table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from mlperf_jax.cli import ArgumentParser

CHILD = r"""
import json, sys, time
impl, scenario, qps, min_ms, outdir = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if impl == "official":
    import mlperf_loadgen as lg
else:
    from mlperf_jax.loadgen import compat as lg
    from mlperf_jax.loadgen import core
R = lg.QuerySampleResponse
C = lg.QuerySamplesComplete
def issue(qs):
    C([R(q.id, 0, 0) for q in qs])
s = lg.TestSettings()
s.scenario = getattr(lg.TestScenario, scenario)
s.mode = lg.TestMode.PerformanceOnly
s.min_duration_ms = min_ms
s.min_query_count = 100
s.server_target_qps = qps
s.server_target_latency_ns = 10_000_000
s.offline_expected_qps = qps
ls = lg.LogSettings(); ls.log_output.outdir = outdir; ls.enable_trace = False
sut = lg.ConstructSUT(issue, lambda: None)
qsl = lg.ConstructQSL(1024, 1024, lambda x: None, lambda x: None)
lateness = None
t_start = time.perf_counter()
if impl == "ours":
    res = core.start_test(sut, qsl, s, ls)
    if res.summary is not None and res.summary.pr.issue_lateness_ns is not None:
        import numpy as np
        la = np.sort(res.summary.pr.issue_lateness_ns)
        lateness = {p: int(la[int(len(la) * p)]) for p in (0.5, 0.9, 0.99)}
else:
    lg.StartTestWithLogSettings(sut, qsl, s, ls)
wall = time.perf_counter() - t_start
vals = {}
for line in open(outdir + "/mlperf_log_detail.txt"):
    if line.startswith(":::MLLOG"):
        e = json.loads(line[9:])
        vals[e["key"]] = e["value"]
print(json.dumps({"valid": vals.get("result_validity"), "p50": vals.get("result_50.00_percentile_latency_ns"),
                  "p99": vals.get("result_99.00_percentile_latency_ns"),
                  "completed_qps": vals.get("result_completed_samples_per_sec"),
                  "sps": vals.get("result_samples_per_second"), "lateness": lateness, "wall_s": wall,
                  "samples": vals.get("generated_samples_per_query"),
                  "reason": vals.get("result_invalid_reason"), "es": vals.get("early_stopping_met")}))
"""


def run(impl, scenario, qps, min_ms, timeout):
    with tempfile.TemporaryDirectory() as d:
        p = subprocess.run([sys.executable, "-c", CHILD, impl, scenario, str(qps), str(min_ms), d],
                           capture_output=True, text=True, timeout=timeout,
                           cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        if p.returncode != 0:
            return {"valid": "ERROR", "reason": (p.stderr.strip().splitlines() or ["?"])[-1]}
        return json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = ArgumentParser(prog="bench_loadgen", description=__doc__.splitlines()[0])
    ap.add_argument("--min_duration_ms", type=int, default=2000)
    ap.add_argument("--qps", default="25000,50000,100000,150000,200000,300000")
    ap.add_argument("--offline_qps", type=float, default=500_000, help="offline_expected_qps (sizes the query)")
    ap.add_argument("--impl", default="official,ours")
    ap.add_argument("--scenarios", default="server,offline", help="which parts to run: server, offline or both")
    ap.add_argument("--repeats", type=int, default=1, help="Offline runs per implementation (alternating)")
    ap.add_argument("--timeout", type=int, default=300)
    a = ap.parse_args(argv)
    impls = a.impl.split(",")
    scen = {x.strip().lower() for x in a.scenarios.split(",") if x.strip()}
    qps_list = [float(x) for x in a.qps.split(",")] if "server" in scen else []
    rows = {}
    for impl in impls:
        for q in qps_list:
            r = run(impl, "Server", q, a.min_duration_ms, a.timeout)
            rows[(impl, q)] = r
            print(f"  {impl:8s} Server {q:>9.0f} QPS: {r.get('valid')}  p50={r.get('p50')} p99={r.get('p99')} "
                  f"lateness={r.get('lateness')} {('reason: ' + str(r.get('reason'))) if r.get('valid') != 'VALID' else ''}",
                  flush=True)
    offs = {impl: [] for impl in impls}
    for rep in range(a.repeats if "offline" in scen else 0):
        for impl in impls:  # alternating, so a busy spell on a shared machine hits both
            r = run(impl, "Offline", a.offline_qps, a.min_duration_ms, a.timeout)
            offs[impl].append(r)
            print(f"  {impl:8s} Offline run {rep + 1}: {r.get('valid')} {_num(r.get('sps'))} samples/s, "
                  f"{r.get('samples')} samples, start_test wall {r.get('wall_s', 0):.2f} s"
                  f"{'' if r.get('valid') == 'VALID' else ' (' + str(r.get('reason')) + ')'}", flush=True)
    off = {i: (sorted(v, key=lambda r: r.get("sps") or 0)[len(v) // 2] if v else {}) for i, v in offs.items()}
    print()
    print(f"null SUT, Server latency bound 10 ms, min_duration {a.min_duration_ms} ms, {os.cpu_count()} CPUs")
    print(f"{'':36s}" + "".join(f"{i:>16s}" for i in impls))
    best = {i: max([q for q in qps_list if rows[(i, q)].get("valid") == "VALID"], default=0) for i in impls}
    if qps_list:
        print(f"{'highest VALID Server QPS':36s}" + "".join(f"{best[i]:>16.0f}" for i in impls))
    for q in qps_list:
        print(f"{f'  Server {q:.0f} QPS: result':36s}" + "".join(f"{str(rows[(i, q)].get('valid')):>16s}" for i in impls))
        print(f"{f'    latency p50 / p99 (us)':36s}" + "".join(
            f"{_us(rows[(i, q)].get('p50')):>7s} /{_us(rows[(i, q)].get('p99')):>7s}" for i in impls))
        lat = [rows[(i, q)].get("lateness") for i in impls]
        if any(lat):
            print(f"{'    issue lateness p50/p90/p99 (us)':36s}" + "".join(
                f"{('-' if not l else '/'.join(_us(l[k]) for k in ('0.5', '0.9', '0.99'))):>16s}" for l in lat))
    if not offs[impls[0]]:
        return
    print(f"{'Offline samples/s (one query, median)':36s}" + "".join(f"{_num(off[i].get('sps')):>16s}" for i in impls))
    if a.repeats > 1:
        print(f"{'  min .. max':36s}" + "".join(
            f"{_k(min(r.get('sps') or 0 for r in offs[i])) + '..' + _k(max(r.get('sps') or 0 for r in offs[i])):>16s}"
            for i in impls))
    print(f"{'  start_test wall s (median run)':36s}" + "".join(f"{off[i].get('wall_s', 0):>16.2f}" for i in impls))
    print(f"{'  Offline result':36s}" + "".join(f"{str(off[i].get('valid')):>16s}" for i in impls))


def _us(ns):
    return "-" if ns is None else f"{ns / 1000:.0f}"


def _k(x):
    return f"{x / 1000:.0f}k"


def _num(x):
    return "-" if x is None else f"{x:.0f}"


if __name__ == "__main__":
    main()
