"""The sample queue both batching SUTs share: samples wait here until a batcher thread takes a
batch (up to ``max_batch``, or fewer once ``timeout_s`` has passed since it began to wait)."""
from __future__ import annotations

import time


class SampleQueue:
    """Mixin: the owner sets ``_cv`` (a Condition), ``_pending`` (a deque), ``_stop``,
    ``_done_cv``, ``_threads``, ``timeout_s`` and ``max_batch``."""

    def flush_queries(self) -> None:
        with self._cv:
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        with self._done_cv:
            self._done_cv.notify_all()
        for t in self._threads:
            t.join(timeout=30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- threads
    def _take_batch(self):
        with self._cv:
            while not self._pending and not self._stop:
                self._cv.wait()
            if self._stop:
                return None
            if self.timeout_s > 0 and len(self._pending) < self.max_batch:
                deadline = time.perf_counter() + self.timeout_s
                while len(self._pending) < self.max_batch and not self._stop:
                    left = deadline - time.perf_counter()
                    if left <= 0:
                        break
                    self._cv.wait(left)
            n = min(len(self._pending), self.max_batch)
            return [self._pending.popleft() for _ in range(n)]

    def _push_done(self, out, batch) -> None:
        """Hand a dispatched batch (outputs still on the device) to the completer thread."""
        with self._done_cv:
            self._done_q.append((out, batch))
            self._done_cv.notify()

    def _next_done(self):
        """The next dispatched ``(outputs, batch)``, or None once closed and drained."""
        with self._done_cv:
            while not self._done_q and not self._stop:
                self._done_cv.wait()
            return self._done_q.popleft() if self._done_q else None
