"""A per-run MLPerf logger over ``mlperf_logging.mllog``.

The official package keeps one process-wide logger; one log file per run (and several runs in one
process) needs a logger of its own each time, so we give ``mllog.MLLogger`` a fresh
``logging.Logger`` with a file handler. Lines are always formatted by the official package.
"""
from __future__ import annotations

import itertools
import logging
import os
from typing import Any

import jax
from mlperf_logging.mllog import mllog as _mllog_impl
from mlperf_logging.mllog import constants

_ids = itertools.count()


class RunLogger:
    """``:::MLLOG`` lines for one run, written by process 0 only (MLPerf wants one log per run)."""

    def __init__(self, path: str | None, *, echo: bool = False) -> None:
        self.path = path
        self.enabled = jax.process_index() == 0
        self._logger = logging.getLogger(f"mlperf_jax.mllog.{os.getpid()}.{next(_ids)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        self._handlers: list[logging.Handler] = []
        if self.enabled and path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._handlers.append(logging.FileHandler(path, mode="w"))
        if self.enabled and echo:
            self._handlers.append(logging.StreamHandler())
        if not self._handlers:
            self._handlers.append(logging.NullHandler())
        for h in self._handlers:
            h.setLevel(logging.INFO)
            self._logger.addHandler(h)
        # stack offset 2: report the driver line that called event()/start()/end() here.
        self._ml = _mllog_impl.MLLogger(logger=self._logger, default_stack_offset=2)

    def event(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        self._ml.event(key=key, value=value, metadata=metadata)

    def start(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        self._ml.start(key=key, value=value, metadata=metadata)

    def end(self, key: str, value: Any = None, metadata: dict | None = None) -> None:
        self._ml.end(key=key, value=value, metadata=metadata)

    def close(self) -> None:
        for h in self._handlers:
            h.flush()
            h.close()
            self._logger.removeHandler(h)


__all__ = ["RunLogger", "constants"]
