"""Python's cyclic garbage collector, held back while a test's clock runs.

Why: every QuerySample the LoadGen builds and every QuerySampleResponse the SUT builds is a
GC-tracked Python object (the official binding's pybind11 objects are not tracked).  With
the default thresholds, a million of them alive at once (one Offline query) trigger a dozen
full collections, each walking every live object: measured, 0.6 s of a 1.1 M-sample run,
more than all the LoadGen's own work.  So for the timed part of each run (issue, flush, wait
for the answers) the LoadGen

* freezes what was alive before the run (``gc.freeze``): those objects are left out of the
  run's collections, and given back (``gc.unfreeze``) when the run ends;
* raises the young-generation threshold to ``YOUNG_THRESHOLD`` (and the middle one to at
  least ``MIDDLE_THRESHOLD``), so collections come rarer and find only the run's survivors;
* builds a huge query's samples with the collector off and freezes them at once, as the
  official's are outside Python's collector.

Collection still runs during the test (cyclic garbage of a long SUT run is reclaimed); the
thresholds are restored afterwards.  Nothing is changed when the collector was disabled by
the caller; when the caller had frozen objects itself, the LoadGen freezes nothing (an
unfreeze would undo the caller's freeze).
"""

from __future__ import annotations

import contextlib
import gc
from typing import Callable, Iterator, TypeVar

__all__ = ["Hold", "held", "YOUNG_THRESHOLD", "MIDDLE_THRESHOLD", "ENABLED"]

YOUNG_THRESHOLD = 100_000  # net allocations between young collections during a run (default 700)
MIDDLE_THRESHOLD = 50      # young collections between middle ones during a run (default 10)
ENABLED = True             # False: leave the collector alone (e.g. to compare)

T = TypeVar("T")


class Hold:
    """What :func:`held` changed, so that it is undone exactly."""

    __slots__ = ("active", "froze", "thresholds")

    def __init__(self) -> None:
        self.active = ENABLED and gc.isenabled()
        self.froze = False
        self.thresholds = gc.get_threshold()

    def build(self, make: Callable[[], T]) -> T:
        """``make()`` with the collector off, its result frozen (it lives for the run).
        Must not run SUT code: the collector is off for the whole call."""
        if not self.froze:
            return make()
        gc.disable()
        try:
            out = make()
        finally:
            gc.freeze()  # O(1); also resets the young count the build ran up
            gc.enable()
        return out


@contextlib.contextmanager
def held() -> Iterator[Hold]:
    h = Hold()
    if h.active:
        t0, t1, t2 = h.thresholds
        if t0 > 0:  # threshold 0 also means "collector off"
            gc.set_threshold(max(t0, YOUNG_THRESHOLD), max(t1, MIDDLE_THRESHOLD), t2)
        if gc.get_freeze_count() == 0:
            gc.freeze()
            h.froze = True
    try:
        yield h
    finally:
        if h.active:
            if h.froze:
                gc.unfreeze()
            gc.set_threshold(*h.thresholds)
