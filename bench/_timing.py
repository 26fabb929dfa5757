"""Shared timing helpers for the benchmark scripts (not part of the package).

``per_call_ns`` times one callable on its own (best of ``repeat``). The
interleaved helpers time several variants in rounds, one measurement of each
variant per round, and keep each variant's minimum: on a shared, noisy
machine a burst of load then hits every variant of a round instead of
whichever happened to be running, so ratios taken within one run stay fair.
Every timed loop runs with the garbage collector off, as ``timeit`` does.
"""

from __future__ import annotations

import asyncio
import gc
import time
import timeit
from collections.abc import Awaitable, Callable, Coroutine, Mapping

__all__ = [
    "AsyncMeasure",
    "Measure",
    "async_loop_ns",
    "interleaved",
    "per_call_ns",
    "report",
    "run_async",
    "sync_loop_ns",
]

Measure = Callable[[], float]
"""One measurement of a variant: runs it and returns nanoseconds per call."""

AsyncMeasure = Callable[[], Coroutine[object, object, float]]
"""One async measurement: a coroutine factory; :func:`run_async` makes it a :data:`Measure`."""


def per_call_ns(fn: Callable[[], object], *, number: int = 200_000, repeat: int = 7) -> float:
    """Return the best time per call of ``fn`` in nanoseconds (best of ``repeat``)."""
    timer = timeit.Timer(fn)
    best = min(timer.repeat(repeat=repeat, number=number))
    return best / number * 1e9


def sync_loop_ns(fn: Callable[[], object], number: int) -> float:
    """Time ``number`` calls of ``fn`` once; return nanoseconds per call."""
    return timeit.Timer(fn).timeit(number) / number * 1e9


async def async_loop_ns(make: Callable[[], Awaitable[object]], number: int) -> float:
    """Await ``make()`` ``number`` times in the running loop; return nanoseconds per await."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            await make()
        elapsed = time.perf_counter() - start
    finally:
        if enabled:
            gc.enable()
    return elapsed / number * 1e9


def interleaved(variants: Mapping[str, Measure], *, rounds: int) -> dict[str, float]:
    """Run one measurement of every variant per round, ``rounds`` times; keep each minimum.

    Each round starts one variant further along, so no variant always runs
    right after the same neighbour.
    """
    names = list(variants)
    best = dict.fromkeys(names, float("inf"))
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            best[name] = min(best[name], variants[name]())
    return best


def run_async(measure: AsyncMeasure) -> Measure:
    """Wrap an async measurement so each call runs it in a fresh ``asyncio.run``."""
    return lambda: asyncio.run(measure())


def report(
    rows: list[tuple[str, float]],
    *,
    baseline: float,
    label: str = "bare",
    unit: str = "call",
    digits: int = 1,
) -> None:
    """Print one line per row: name, ns per ``unit``, and the ratio to ``baseline``."""
    for name, ns in rows:
        print(f"{name:<48} {ns:>10.1f} ns/{unit}  {ns / baseline:>7.{digits}f}x {label}")
