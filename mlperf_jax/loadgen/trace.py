"""``mlperf_log_trace.json``: the official Chrome trace (``chrome://tracing``, Perfetto).

Written only when ``LogSettings.enable_trace`` is true, with the official event names:
``Sample`` async begin/end pairs (scheduled time to completion, args sample_seq, query_seq,
sample_idx, issue_start_ns, complete_ns), ``Latency`` counters in the Server scenario,
``IssueQuery`` / ``GenerateQueries`` / ``LoadSamples`` / ``UnloadSampes`` (sic) complete
events, and the official footer.  Unlike the official file ours is valid JSON (string
arguments are quoted once).  Events are formatted after each run, outside the timed part.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Sequence

__all__ = ["TraceLog"]


class TraceLog:
    def __init__(self, origin_ns: int, origin_wall_s: float):
        self._origin = origin_ns
        self._wall_us = origin_wall_s * 1e6
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._events: list[str] = []

    def _us(self, t_ns: int) -> str:
        return "%.3f" % ((t_ns - self._origin) / 1e3)

    def complete(self, name: str, start_ns: int, end_ns: int, tid: int | None = None, **args) -> None:
        """One ``ph: X`` event (a timed span on one thread)."""
        tid = threading.get_native_id() if tid is None else tid
        a = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in args.items())
        ev = ('{"name":%s,"ph":"X","pid":%d,"tid":%d,"ts":%s,"dur":%.3f,"args":{%s}}'
              % (json.dumps(name), self._pid, tid, self._us(start_ns), (end_ns - start_ns) / 1e3, a))
        with self._lock:
            self._events.append(ev)

    def run(self, *, server: bool, first_seq: int, first_query_seq: int, sample_query: Sequence[int],
            sample_index: Sequence[int], sched_ns: Sequence[int], issued_ns: Sequence[int],
            issue_end_ns: Sequence[int], done_ns: Sequence[int], tid: int) -> None:
        """The events of one run: per issued query an ``IssueQuery`` span, per answered sample a
        ``Sample`` begin/end pair (and a ``Latency`` counter in Server).  Times are absolute
        perf_counter_ns; ``sample_query[i]`` is the query of sample i (issued samples only)."""
        pid, us = self._pid, self._us
        out: list[str] = []
        for q in range(len(issued_ns)):
            if issue_end_ns[q]:
                out.append('{"name":"IssueQuery","ph":"X","pid":%d,"tid":%d,"ts":%s,"dur":%.3f,"args":{}}'
                           % (pid, tid, us(issued_ns[q]), (issue_end_ns[q] - issued_ns[q]) / 1e3))
        for i in range(len(sample_query)):
            done = done_ns[i]
            if not done:
                continue
            q = sample_query[i]
            sch, iss = sched_ns[q], issued_ns[q]
            seq = first_seq + i
            if server:
                out.append('{"name":"Latency","ph":"C","pid":%d,"ts":%s,"args":{"issue_delay":%d,'
                           '"issue_to_done":%d}}' % (pid, us(sch), iss - sch, done - iss))
            out.append('{"name":"Sample","cat":"default","ph":"b","pid":%d,"id":%d,"ts":%s,"args":'
                       '{"sample_seq":%d,"query_seq":%d,"sample_idx":%d,"issue_start_ns":%d,"complete_ns":%d}}'
                       % (pid, seq, us(sch), seq, first_query_seq + q, sample_index[i], iss - sch, done - sch))
            out.append('{"name":"Sample","cat":"default","ph":"e","pid":%d,"id":%d,"ts":%s}' % (pid, seq, us(done)))
        with self._lock:
            self._events.extend(out)

    @property
    def event_count(self) -> int:
        return len(self._events)

    def write(self, path: str) -> None:
        with self._lock:
            events = list(self._events)
        with open(path, "w") as f:
            f.write('{"traceEvents":[\n')
            for ev in events:
                f.write(ev + ",\n")
            f.write('{"name":"LastTrace"}\n],\n"displayTimeUnit":"ns",\n"otherData":{\n'
                    '"ts":%.3f,\n"version":"MLPerf LoadGen v1.0"\n}\n}\n' % self._wall_us)
