"""Shared timing helper for the benchmark scripts (not part of the package)."""

from __future__ import annotations

import timeit
from collections.abc import Callable

__all__ = ["per_call_ns", "report"]


def per_call_ns(fn: Callable[[], object], *, number: int = 200_000, repeat: int = 7) -> float:
    """Return the best time per call of ``fn`` in nanoseconds (best of ``repeat``)."""
    timer = timeit.Timer(fn)
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number * 1e9


def report(rows: list[tuple[str, float]], *, baseline: float) -> None:
    """Print one line per row: name, ns per call, and the ratio to ``baseline``."""
    for name, ns in rows:
        print(f"{name:<48} {ns:>10.1f} ns/call  {ns / baseline:>7.1f}x bare")
