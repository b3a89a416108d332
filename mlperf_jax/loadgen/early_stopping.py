"""Early stopping, computed as the official ``loadgen/early_stopping.cc`` does.

``odds(h, t, p, d)`` is the probability of at most ``t`` over-latency queries among
``h + t`` when each is under latency with probability ``p - d``: the binomial CDF, i.e. the
regularized incomplete beta ``I_{p-d}(h, t + 1)``, taken from scipy instead of the
official hand-written hypergeometric series.  ``MinPassingQueriesFinder`` keeps the official
cache, interpolation bounds and binary search, so the same ``h`` comes out.
"""

from __future__ import annotations

import bisect
import math

from scipy import special

__all__ = ["odds", "MinPassingQueriesFinder"]


def odds(h: int, t: int, p: float, d: float) -> float:
    """P(at most t over-latency queries in h + t), each under latency with prob p - d."""
    if h <= 0:
        return 1.0
    return float(special.betainc(h, 1 + t, p - d))


def _find_min_passing(min_h: int, max_h: int, t: int, p: float, d: float, c: float) -> int:
    count = max_h - min_h
    while count > 0:
        step = count // 2
        h = min_h + step
        if odds(h, t, p, d) < 1 - c:
            count = step
        else:
            min_h = h + 1
            count -= step + 1
    return min_h


def _trunc(x: float) -> int:
    # C++ double -> int64_t conversion truncates toward zero.
    return int(math.trunc(x))


class MinPassingQueriesFinder:
    """Minimum h with odds(h, t, p, d) <= 1 - c (official cache and search bounds)."""

    def __init__(self) -> None:
        self._caches: dict[tuple[float, float, float], tuple[list[int], dict[int, int]]] = {}

    def __call__(self, t: int, p: float, d: float, c: float) -> int:
        keys, cache = self._caches.setdefault((p, d, c), ([], {}))
        if t in cache:
            return cache[t]
        pos = bisect.bisect_left(keys, t)  # keys[pos] is the official lower_bound(t)
        x0, y0 = -1, 0
        x1, y1 = 0, int(math.ceil(math.log(1 - c) / math.log(p - d)))
        if pos > 0:
            x1, y1 = keys[pos - 1], cache[keys[pos - 1]]
            if pos > 1:
                x0, y0 = keys[pos - 2], cache[keys[pos - 2]]
        min_slope = (p - d) / (1 - p + d)
        max_slope = float((y1 - y0) * (x1 - x0))  # sic: the official multiplies
        min_h = _trunc((t - x1) * min_slope + y1)
        max_h = _trunc((t - x1) * max_slope + y1 + 1)
        h = _find_min_passing(min_h, max_h, t, p, d, c)
        cache[t] = h
        bisect.insort(keys, t)
        return h
