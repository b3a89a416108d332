"""An optional progress line on stderr while a performance run is in flight.

Off by default (``start_test(progress=False)``; the compat module never turns it on, so an
official harness sees no extra output).  About every ``interval_s`` it prints elapsed time
against min_duration, samples issued and answered, and the throughput over the last
interval; on a TTY the line is overwritten in place with '\\r', otherwise one line each time.
"""

from __future__ import annotations

import sys
import threading
from typing import Callable, TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, state: Callable[[], tuple[float, int, int] | None], min_duration_s: float,
                 stream: TextIO | None = None, interval_s: float = 2.0):
        """``state()`` returns (elapsed_s, samples_issued, samples_answered) of the run in
        flight, or None between runs."""
        self._state = state
        self._min = min_duration_s
        self._out = stream if stream is not None else sys.stderr
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tty = bool(getattr(self._out, "isatty", lambda: False)())
        self._width = 0
        self._last: tuple[float, int] | None = None
        self.lines = 0

    def __enter__(self) -> "Progress":
        self._thread = threading.Thread(target=self._loop, name="loadgen-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._tty and self._width:
            self._out.write("\n")
            self._out.flush()

    def line(self) -> str | None:
        st = self._state()
        if st is None:
            return None
        elapsed, issued, answered = st
        if self._last is None or elapsed <= self._last[0]:
            rate = answered / elapsed if elapsed > 0 else 0.0
        else:
            rate = (answered - self._last[1]) / (elapsed - self._last[0])
        self._last = (elapsed, answered)
        return (f"loadgen: {elapsed:.1f} s of min_duration {self._min:.1f} s; {issued} samples issued, "
                f"{answered} answered; {rate:.1f} samples/s")

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            text = self.line()
            if text is None:
                continue
            if self._tty:
                pad = max(0, self._width - len(text))
                self._out.write("\r" + text + " " * pad)
                self._width = len(text)
            else:
                self._out.write(text + "\n")
            self._out.flush()
            self.lines += 1
