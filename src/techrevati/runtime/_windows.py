"""The sliding windows a circuit breaker can trip on: the last N calls, or the last N seconds.

Private to :mod:`~techrevati.runtime.circuit_breaker`; guarded by the
breaker's lock. Both add and evict in O(1) (amortised for the time window).
"""

from __future__ import annotations

import math

__all__ = ["_CountWindow", "_TimeWindow", "_Window"]


class _Window:
    """The counts a sliding window keeps; subclasses decide what falls out."""

    __slots__ = ("calls", "failures", "slow")

    def __init__(self) -> None:
        self.calls = 0
        self.failures = 0
        self.slow = 0

    def add(self, now: float, failed: bool, slow: bool) -> None:
        """Record one call that finished at ``now``."""
        raise NotImplementedError

    def advance(self, now: float) -> None:
        """Drop what is too old at ``now``."""

    def clear(self) -> None:
        """Forget everything."""
        raise NotImplementedError


class _CountWindow(_Window):
    """The last ``size`` outcomes in a ring; O(1) add with subtract-on-evict."""

    __slots__ = ("_pos", "_ring", "_size")

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._ring = bytearray(size)  # bit 0: failed, bit 1: slow
        self._pos = 0

    def add(self, now: float, failed: bool, slow: bool) -> None:
        pos = self._pos
        ring = self._ring
        if self.calls == self._size:
            old = ring[pos]
            if old:
                self.failures -= old & 1
                self.slow -= old >> 1
        else:
            self.calls += 1
        if failed or slow:
            ring[pos] = failed | (slow << 1)
            self.failures += failed
            self.slow += slow
        else:
            ring[pos] = 0
        pos += 1
        self._pos = 0 if pos == self._size else pos

    def clear(self) -> None:
        self._ring = bytearray(self._size)
        self._pos = self.calls = self.failures = self.slow = 0


class _TimeWindow(_Window):
    """Outcomes of the last ``size`` whole seconds, one bucket per second.

    Moving to a later second empties the buckets it skips over, each once,
    so eviction is O(1) amortised and never more than ``size`` buckets.
    """

    __slots__ = ("_b_calls", "_b_failures", "_b_slow", "_head", "_size")

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._b_calls = [0] * size
        self._b_failures = [0] * size
        self._b_slow = [0] * size
        self._head: int | None = None  # the latest whole second seen

    def advance(self, now: float) -> None:
        second = math.floor(now)
        head = self._head
        if head is None or second - head >= self._size:
            if self.calls:
                self.clear()
            self._head = second
            return
        if second <= head:
            return  # same second, or a clock that stepped back: keep the newest bucket
        size = self._size
        for s in range(head + 1, second + 1):
            index = s % size
            if self._b_calls[index]:
                self.calls -= self._b_calls[index]
                self.failures -= self._b_failures[index]
                self.slow -= self._b_slow[index]
                self._b_calls[index] = self._b_failures[index] = self._b_slow[index] = 0
        self._head = second

    def add(self, now: float, failed: bool, slow: bool) -> None:
        self.advance(now)
        assert self._head is not None
        index = self._head % self._size
        self._b_calls[index] += 1
        self._b_failures[index] += failed
        self._b_slow[index] += slow
        self.calls += 1
        self.failures += failed
        self.slow += slow

    def clear(self) -> None:
        size = self._size
        self._b_calls = [0] * size
        self._b_failures = [0] * size
        self._b_slow = [0] * size
        self.calls = self.failures = self.slow = 0
