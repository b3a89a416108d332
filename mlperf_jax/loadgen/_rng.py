"""Bit-exact re-implementation of the C++ random machinery the official LoadGen uses.

The official LoadGen draws everything from ``std::mt19937`` engines (libstdc++):
``std::shuffle``, ``std::uniform_int_distribution``, ``std::exponential_distribution``
and ``std::uniform_real_distribution``.  Reproducing the same algorithms here makes our
sample indices, loaded sets and Server arrival schedule identical to the official ones
for the same seeds (checked in tests/test_loadgen_rng.py against ``mlperf_loadgen``).

The engine is numpy's MT19937 (the same generator), seeded the way ``std::mt19937(seed)``
is (``init_genrand`` on the low 32 bits of the seed), so bulk draws are vectorised.
"""

from __future__ import annotations

import numpy as np

_MASK32 = 0xFFFFFFFF


def _init_genrand(seed: int) -> np.ndarray:
    key = np.empty(624, dtype=np.uint32)
    x = seed & _MASK32
    key[0] = x
    for i in range(1, 624):
        x = (1812433253 * (x ^ (x >> 30)) + i) & _MASK32
        key[i] = x
    return key


class MT19937:
    """``std::mt19937`` with a buffered, vectorised ``raw(n)``."""

    def __init__(self, seed: int):
        self._bg = np.random.MT19937(0)
        self._bg.state = {
            "bit_generator": "MT19937",
            "state": {"key": _init_genrand(int(seed)), "pos": 624},
        }

    def raw(self, n: int) -> np.ndarray:
        """The next ``n`` 32-bit outputs, as uint64."""
        return np.asarray(self._bg.random_raw(n), dtype=np.uint64)  # already uint64: no copy

    def next(self) -> int:
        return int(self._bg.random_raw())

    # --- libstdc++ distributions -------------------------------------------------
    def uniform_int(self, lo: int, hi: int) -> int:
        """``std::uniform_int_distribution(lo, hi)(gen)`` (Lemire, 32-bit engine)."""
        rng = hi - lo + 1
        if rng > _MASK32:
            raise ValueError("range too large for a 32-bit engine")
        if rng == 1 << 32:
            return lo + self.next()
        product = self.next() * rng
        low = product & _MASK32
        if low < rng:
            threshold = ((1 << 32) - rng) % rng
            while low < threshold:
                product = self.next() * rng
                low = product & _MASK32
        return lo + (product >> 32)

    def uniform_ints(self, n: int, lo: int, hi: int) -> np.ndarray:
        """``n`` successive ``uniform_int_distribution(lo, hi)`` draws, vectorised."""
        rng = hi - lo + 1
        threshold = ((1 << 32) - rng) % rng
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            need = n - filled
            raw = self.raw(need)
            product = raw * np.uint64(rng)
            low = product & np.uint64(_MASK32)
            bad = np.flatnonzero(low < np.uint64(threshold))
            if bad.size == 0:
                out[filled:] = (product >> np.uint64(32)).astype(np.int64) + lo
                break
            # Accept everything before the first rejection, then redo from there with the
            # scalar path (a rejection shifts every later draw).
            first = int(bad[0])
            out[filled:filled + first] = (product[:first] >> np.uint64(32)).astype(np.int64) + lo
            # Rewind: the engine consumed `need` outputs but we keep only `first`+1 of them.
            self._rewind(need - first)
            filled += first
            out[filled] = self.uniform_int(lo, hi)
            filled += 1
        return out

    def _rewind(self, k: int) -> None:
        # numpy's MT19937 cannot step back; re-derive the state by replaying.
        # Only used on the (probability ~range/2^32) Lemire rejection path.
        st = self._bg.state
        pos = st["state"]["pos"]
        if pos >= k:
            st["state"]["pos"] = pos - k
            self._bg.state = st
            return
        raise RuntimeError("cannot rewind across a twist")  # pragma: no cover

    def canonical(self) -> float:
        """``std::generate_canonical<double, 53>`` (two 32-bit draws)."""
        a = self.next()
        b = self.next()
        r = (a + b * 4294967296.0) / 18446744073709551616.0
        if r >= 1.0:
            r = np.nextafter(1.0, 0.0)
        return float(r)

    def canonicals(self, n: int) -> np.ndarray:
        raw = self._bg.random_raw(2 * n).astype(np.float64).reshape(n, 2)  # 32-bit values: exact
        r = (raw[:, 0] + raw[:, 1] * 4294967296.0) / 18446744073709551616.0
        return np.minimum(r, np.nextafter(1.0, 0.0))

    def shuffle(self, seq: list) -> None:
        """``std::shuffle(seq.begin(), seq.end(), gen)`` as libstdc++ implements it."""
        n = len(seq)
        if n <= 1:
            return
        if n <= 0xFFFF:  # urngrange / urange >= urange: two positions per draw
            i = 1
            if n % 2 == 0:
                j = self.uniform_int(0, 1)
                seq[i], seq[j] = seq[j], seq[i]
                i += 1
            while i != n:
                r = i + 1
                x = self.uniform_int(0, r * (r + 1) - 1)
                p1, p2 = divmod(x, r + 1)
                seq[i], seq[p1] = seq[p1], seq[i]
                i += 1
                seq[i], seq[p2] = seq[p2], seq[i]
                i += 1
            return
        for i in range(1, n):
            j = self.uniform_int(0, i)
            seq[i], seq[j] = seq[j], seq[i]
