"""A per-run MLPerf logger over ``mlperf_logging.mllog``, with the v0.6 line format as an option.

The official package keeps one process-wide logger; one log file per run (and several runs in one
process) needs a logger of its own each time, so we give ``mllog.MLLogger`` a fresh
``logging.Logger`` with a file handler. In the default ``"mllog"`` format, lines are always
formatted by the official package.

The ``"v0.6"`` format (``:::MLL <seconds> <key>: {"value": ..., "metadata": ...}``) is the only one
ruleset 0.6.0 of the compliance checker parses (``mlp_parser/ruleset_060.py``). The official package
has no writer for it any more, so that format alone is written here, following the v0.6 reference
helpers (``LOG_TEMPLATE = ':::MLL {:.3f} {}: {{"value": {}, "metadata": {}}}'``).
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from typing import Any

import jax
import numpy as np
from mlperf_logging.mllog import mllog as _mllog_impl
from mlperf_logging.mllog import constants

_ids = itertools.count()

LOG_FORMATS = ("mllog", "v0.6")
"""``mllog``: ``:::MLLOG {json}`` (ruleset 0.7.0 on); ``v0.6``: ``:::MLL secs key: {json}``."""

# The v0.6 parser's grammar for a key (ruleset_060.LINE_PATTERN): anything else is unparsable.
_V06_KEY = re.compile(r"[A-Za-z0-9_]+")


class _JSONEncoder(json.JSONEncoder):
    """numpy scalars and arrays as plain JSON, as the official package's encoder does."""

    def default(self, o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        return super().default(o)


def format_v06(key: str, value: Any, metadata: dict | None, *, now: float | None = None) -> str:
    """One v0.6 line: ``:::MLL <unix seconds, 3 decimals> <key>: {"value": ..., "metadata": ...}``.

    Seconds (not the ms of later rounds): ruleset 0.6.0 compares timestamps against ``20*60``.
    """
    if not _V06_KEY.fullmatch(key):
        raise ValueError(f"key {key!r} cannot be written in the v0.6 log format, whose parser "
                         "accepts only letters, digits and '_' in a key")
    t = time.time() if now is None else float(now)
    body = json.dumps({"value": value, "metadata": metadata or {}}, cls=_JSONEncoder)
    return f":::MLL {t:.3f} {key}: {body}"


class RunLogger:
    """MLPerf log lines for one run, written by process 0 only (MLPerf wants one log per run).

    ``log_format``: ``"mllog"`` (default; ``:::MLLOG`` lines from the official ``mlperf_logging``
    package) or ``"v0.6"`` (``:::MLL`` lines for ruleset 0.6.0, written by :func:`format_v06`
    because the official package has no v0.6 writer). v0.6 lines have no event type: ``start``,
    ``end`` and ``event`` differ only in the key the caller passes (``run_start``/``run_stop``).

    ``append``: open the file in append mode, so that a resumed run continues its log instead of
    erasing what the first attempt wrote.
    """

    def __init__(self, path: str | None, *, echo: bool = False, log_format: str = "mllog",
                 append: bool = False) -> None:
        if log_format not in LOG_FORMATS:
            raise ValueError(f"unknown log_format {log_format!r}; expected one of "
                             f"{', '.join(LOG_FORMATS)}")
        self.path = path
        self.log_format = log_format
        self.enabled = jax.process_index() == 0
        self._logger = logging.getLogger(f"mlperf_jax.mllog.{os.getpid()}.{next(_ids)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handlers: list[logging.Handler] = []
        if self.enabled and path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._handlers.append(logging.FileHandler(path, mode="a" if append else "w"))
        if self.enabled and echo:
            self._handlers.append(logging.StreamHandler())
        if not self._handlers:
            self._handlers.append(logging.NullHandler())
        for h in self._handlers:
            h.setLevel(logging.INFO)
            self._logger.addHandler(h)
        # stack offset 2: report the driver line that called event()/start()/end() here.
        self._ml = _mllog_impl.MLLogger(logger=self._logger, default_stack_offset=2)
        # the log's clock: wall time minus the time spent paused (untimed evaluations)
        self._paused_s = 0.0
        self._frozen: float | None = None
        #: the time the last line carries (what a later line's check may compare with)
        self.last_time_s: float | None = None

    def now(self) -> float:
        """The time the next line carries (seconds since the epoch, paused time left out), to
        the millisecond the lines are written with."""
        t = self._frozen if self._frozen is not None else time.time() - self._paused_s
        return round(t, 3)

    def pause(self) -> None:
        """Stop the log's clock: lines carry this moment until ``resume`` (MiniGo's reference
        stamps each untimed evaluation with the time its model finished training)."""
        if self._frozen is None:
            self._frozen = self.now()

    def resume(self) -> None:
        """Restart the clock where it stopped: the paused time is left out of every later line."""
        if self._frozen is not None:
            self._paused_s = time.time() - self._frozen
            self._frozen = None

    def _v06(self, key: str, value: Any, metadata: dict | None) -> None:
        # stack: get_caller <- _v06 <- event/start/end <- the caller we report
        md = _mllog_impl.get_caller(3)
        md.update(metadata or {})
        self.last_time_s = self.now()
        self._logger.info(format_v06(key, value, md, now=self.last_time_s))

    def event(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        if self.log_format == "v0.6":
            self._v06(key, value, metadata)
        else:
            self.last_time_s = self.now()
            self._ml.event(key=key, value=value, metadata=metadata,
                          time_ms=int(round(self.last_time_s * 1000)))

    def start(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        if self.log_format == "v0.6":
            self._v06(key, value, metadata)
        else:
            self.last_time_s = self.now()
            self._ml.start(key=key, value=value, metadata=metadata,
                          time_ms=int(round(self.last_time_s * 1000)))

    def end(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        if self.log_format == "v0.6":
            self._v06(key, value, metadata)
        else:
            self.last_time_s = self.now()
            self._ml.end(key=key, value=value, metadata=metadata,
                          time_ms=int(round(self.last_time_s * 1000)))

    def close(self) -> None:
        for h in self._handlers:
            h.flush()
            h.close()
            self._logger.removeHandler(h)


__all__ = ["RunLogger", "LOG_FORMATS", "format_v06", "constants"]


def read_events(path: str) -> list[tuple[str, float, Any]]:
    """``(key, time in seconds, value)`` for each MLPerf line of a log in either format, so that a
    resumed run can see how long its first part ran (lines it cannot parse are skipped)."""
    out: list[tuple[str, float, Any]] = []
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            try:
                if line.startswith(":::MLLOG "):
                    rec = json.loads(line[len(":::MLLOG "):])
                    out.append((rec["key"], float(rec["time_ms"]) / 1000.0, rec.get("value")))
                elif line.startswith(":::MLL "):
                    _, t, rest = line.split(" ", 2)
                    key, payload = rest.split(": ", 1)
                    out.append((key, float(t), json.loads(payload).get("value")))
            except (ValueError, KeyError):
                continue
    return out


def elapsed_in_run(path: str) -> float:
    """Seconds from ``run_start`` to the last line of the log (0 without a ``run_start``)."""
    events = read_events(path)
    starts = [t for k, t, _ in events if k == "run_start"]
    return max(0.0, events[-1][1] - starts[0]) if starts else 0.0
