"""Writers for the official output files: detail (:::MLLOG lines), summary, accuracy json."""

from __future__ import annotations

import json
import math
import os
import threading
import time

__all__ = ["fmt_g", "fmt_fixed", "DetailLog", "AccuracyLog"]


def fmt_g(x) -> str:
    """A C++ ostream's default rendering of a number (``%g``, 6 significant digits)."""
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, int):
        return "%d" % x  # not str(): an IntEnum prints its name
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return "%.6g" % x


def fmt_fixed(x: float, precision: int = 2) -> str:
    """The official ``DoubleToString(value, precision)`` (fixed notation)."""
    return f"{float(x):.{precision}f}"


def _json_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return "%d" % v  # not str(): an IntEnum prints its name
    if isinstance(v, float):
        s = fmt_g(v)
        return s if s not in ("nan", "inf", "-inf") else json.dumps(s)
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_json_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    return json.dumps(str(v), ensure_ascii=False)


class DetailLog:
    """``mlperf_log_detail.txt``: one ``:::MLLOG {json}`` line per entry, official key names.

    ``log_mode`` is the official ``LoggingMode`` and decides only when lines reach the file:
    0 AsyncPoll (flushed every ``poll_ms``), 1 EndOfTestOnly (held until the end),
    2 Synchronous (flushed at once).  The file's content is the same in all three."""

    def __init__(self, path: str | None, t0_ns: int, copy_to_stdout: bool = False,
                 log_mode: int = 0, poll_ms: int = 1000):
        self._f = open(path, "w") if path else None
        self._mode = int(log_mode)
        self._poll_ns = max(0, int(poll_ms)) * 1_000_000
        self._last_flush = time.perf_counter_ns()
        self._held: list[str] = []
        self._t0 = t0_ns
        self._lock = threading.Lock()
        self._stdout = copy_to_stdout
        self.errors = 0
        self.warnings = 0
        self.entries: list[tuple[str, object]] = []
        self._pid = os.getpid()

    def log(self, key: str, value, *, error: bool = False, warning: bool = False,
            event_type: str = "POINT_IN_TIME", file: str = "loadgen.py", line_no: int = 0) -> None:
        t_ms = (time.perf_counter_ns() - self._t0) / 1e6
        meta = ('{"is_error": %s, "is_warning": %s, "file": %s, "line_no": %d, "pid": %d, "tid": %d}'
                % ("true" if error else "false", "true" if warning else "false", json.dumps(file),
                   line_no, self._pid, threading.get_native_id()))
        line = (':::MLLOG {"key": %s, "value": %s, "time_ms": %.6f, "namespace": "mlperf::logging", '
                '"event_type": "%s", "metadata": %s}' % (json.dumps(key), _json_value(value), t_ms,
                                                        event_type, meta))
        with self._lock:
            if error:
                self.errors += 1
            if warning:
                self.warnings += 1
            self.entries.append((key, value))
            if self._f:
                self._write_locked(line + "\n")
            if self._stdout:
                print(line, flush=True)

    def _write_locked(self, text: str) -> None:
        if self._mode == 1:
            self._held.append(text)
            return
        self._f.write(text)
        now = time.perf_counter_ns()
        if self._mode == 2 or now - self._last_flush >= self._poll_ns:
            self._f.flush()
            self._last_flush = now

    def error(self, key: str, value, **kw) -> None:
        self.log(key, value, error=True, **kw)

    def warning(self, key: str, value, **kw) -> None:
        self.log(key, value, warning=True, **kw)

    def values(self, key: str) -> list:
        return [v for k, v in self.entries if k == key]

    def close(self) -> None:
        if self._f:
            self._f.write("".join(self._held))
            self._held = []
            self._f.close()
            self._f = None


class AccuracyLog:
    """``mlperf_log_accuracy.json``: a JSON array of {seq_id, qsl_idx, data (upper-case hex)}."""

    def __init__(self, path: str | None):
        self._f = open(path, "w") if path else None
        self._n = 0
        self._lock = threading.Lock()
        if self._f:
            self._f.write("[\n")

    def add(self, seq_id: int, qsl_idx: int, data: bytes) -> None:
        line = '{ "seq_id" : %d, "qsl_idx" : %d, "data" : "%s" }' % (seq_id, qsl_idx, data.hex().upper())
        with self._lock:
            if self._f:
                self._f.write((",\n" if self._n else "") + line)
            self._n += 1

    def add_many(self, rows) -> None:
        for seq_id, qsl_idx, data in rows:
            self.add(seq_id, qsl_idx, data)

    @property
    def count(self) -> int:
        return self._n

    def close(self) -> None:
        if self._f:
            self._f.write(("\n" if self._n else "") + "]\n")
            self._f.close()
            self._f = None
