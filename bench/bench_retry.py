"""The retry path per call: ours next to backoff, stamina and tenacity, in the same run.

Run: ``.venv/bin/python -m bench.bench_retry``

Two tables, each measured interleaved: every round times each variant once
(``timeit``, garbage collector off, the call count sized so one measurement
takes about 60 ms) and each variant keeps its minimum over the rounds. Every
variant is called through the same zero-argument closure, the bare call
included, so the ratios compare like with like.

1. Success path, nothing to retry: a bare call; ``retry_call(fn,
   policy=policy)`` with ``policy = RetryPolicy()`` built once, as a caller
   keeps it; a ``@retrying()`` function (the default policy);
   ``backoff.on_exception(backoff.expo, Exception, max_tries=3)``;
   ``stamina.retry(on=Exception, attempts=3)`` (active, not in testing mode);
   ``tenacity.retry(stop=stop_after_attempt(3))``. Every decorator is applied
   once, outside the timed loop.
2. One failure, then success: the function raises a fresh ``TimeoutError``
   on every other call, so each measured call retries exactly once. The bare
   row is the hand-written ``try: f() except TimeoutError: f()``. Nobody
   really sleeps: ours gets ``RetryPolicy(sleep=...)`` a no-op, tenacity
   ``wait_none()`` and a no-op ``sleep=``, backoff ``backoff.constant`` with
   ``interval=0`` and ``jitter=None``, stamina ``wait_initial=0, wait_max=0,
   wait_jitter=0``. backoff and stamina (through tenacity's default sleep)
   call ``time.sleep(0)`` even for a zero wait, and cannot be handed a sleep,
   so while this table runs their module's ``time`` is swapped for one whose
   ``sleep`` does nothing; ``time.sleep(0)`` itself is timed and printed, as
   what they pay per retry as shipped. Ours does not log a retry and neither
   does tenacity by default, so the main rows turn the peers' logging off
   (backoff ``logger=None``, stamina no instrumentation hooks); two extra rows
   show backoff and stamina with their default logging, sent to a
   ``NullHandler``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TypeVar

import backoff
import backoff._sync
import stamina
import tenacity
import tenacity.nap
from stamina.instrumentation import RetryHook

from bench._timing import Measure, interleaved, sync_loop_ns
from techrevati.runtime import RetryPolicy, is_testing, retry_call, retrying

ROUNDS = 9
TARGET_SECONDS = 0.06  # per measurement

_T = TypeVar("_T")


def _answer() -> str:
    return "ok"


def _flaky(calls: list[int]) -> Callable[[], str]:
    """A function raising a fresh ``TimeoutError`` on every other call, counted in ``calls``."""

    def flaky() -> str:
        calls[0] += 1
        if calls[0] & 1:
            raise TimeoutError("flaky")
        return "ok"

    return flaky


def _no_sleep(seconds: float) -> None:
    return None


class _NoSleepTime:
    """Stands in for the ``time`` module where a peer calls ``time.sleep`` itself."""

    sleep = staticmethod(_no_sleep)


@contextmanager
def _peer_sleeps_disabled() -> Iterator[None]:
    """Make backoff's and tenacity's default sleep a no-op inside the block."""
    modules: tuple[ModuleType, ...] = (backoff._sync, tenacity.nap)
    saved = [vars(module)["time"] for module in modules]
    for module in modules:
        vars(module)["time"] = _NoSleepTime
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            vars(module)["time"] = original


def _closure(fn: Callable[[], _T]) -> Callable[[], _T]:
    """Wrap ``fn`` in one closure, the layer every other variant's call also goes through."""

    def call() -> _T:
        return fn()

    return call


def _calibrated(fn: Callable[[], object]) -> Measure:
    """A measurement of ``fn`` with the call count sized to take about TARGET_SECONDS."""
    fn()
    probe = 200
    per_call = sync_loop_ns(fn, probe) / 1e9
    number = max(probe, int(TARGET_SECONDS / per_call))
    return lambda: sync_loop_ns(fn, number)


def _table(best: dict[str, float], *, bare: str, ours: str) -> None:
    for name, ns in best.items():
        print(
            f"{name:<58} {ns:>9.1f} ns/call {ns / best[bare]:>7.1f}x bare "
            f"{ns / best[ours]:>6.2f}x ours"
        )


def _success_path() -> None:
    policy = RetryPolicy()

    @retrying()
    def decorated() -> str:
        return "ok"

    with_backoff = backoff.on_exception(backoff.expo, Exception, max_tries=3)(_answer)
    with_stamina = stamina.retry(on=Exception, attempts=3)(_answer)
    with_tenacity = tenacity.retry(stop=tenacity.stop_after_attempt(3))(_answer)
    variants = {
        "bare call": _calibrated(_closure(_answer)),
        "retry_call(fn, policy=RetryPolicy())": _calibrated(
            lambda: retry_call(_answer, policy=policy)
        ),
        "@retrying() function": _calibrated(_closure(decorated)),
        "backoff.on_exception(expo, Exception, max_tries=3)": _calibrated(_closure(with_backoff)),
        "stamina.retry(on=Exception, attempts=3)": _calibrated(_closure(with_stamina)),
        "tenacity.retry(stop=stop_after_attempt(3))": _calibrated(_closure(with_tenacity)),
    }
    best = interleaved(variants, rounds=ROUNDS)
    print(f"success path, nothing to retry (best of {ROUNDS} interleaved rounds):")
    _table(best, bare="bare call", ours="retry_call(fn, policy=RetryPolicy())")


def _retried_once(fn: Callable[[], _T], calls: list[int]) -> Callable[[], _T]:
    """Check that one call of ``fn`` makes exactly two counted calls; return ``fn``."""
    before = calls[0]
    fn()
    if calls[0] - before != 2:
        raise AssertionError(f"expected one retry, saw {calls[0] - before - 1}")
    return fn


@contextmanager
def _stamina_hooks(hooks: tuple[RetryHook, ...]) -> Iterator[None]:
    """Run the block with stamina's retry hooks set to ``hooks``; none afterwards."""
    stamina.instrumentation.set_on_retry_hooks(hooks)
    try:
        yield
    finally:
        stamina.instrumentation.set_on_retry_hooks(())


def _hooked(measure: Measure, hooks: tuple[RetryHook, ...]) -> Measure:
    def run() -> float:
        with _stamina_hooks(hooks):
            return measure()

    return run


def _failure_path() -> None:
    policy = RetryPolicy(sleep=_no_sleep)
    names = ("bare", "ours", "backoff", "backoff_log", "stamina", "stamina_log", "tenacity")
    calls = {name: [0] for name in names}
    flaky = {name: _flaky(calls[name]) for name in names}

    def by_hand() -> str:
        try:
            return flaky["bare"]()
        except TimeoutError:
            return flaky["bare"]()

    def ours() -> str:
        return retry_call(flaky["ours"], policy=policy)

    with_backoff = backoff.on_exception(
        backoff.constant, Exception, max_tries=3, jitter=None, interval=0, logger=None
    )(flaky["backoff"])
    with_backoff_log = backoff.on_exception(
        backoff.constant, Exception, max_tries=3, jitter=None, interval=0
    )(flaky["backoff_log"])
    with_stamina, with_stamina_log = (
        stamina.retry(on=Exception, attempts=3, wait_initial=0, wait_max=0, wait_jitter=0)(
            flaky[name]
        )
        for name in ("stamina", "stamina_log")
    )
    with_tenacity = tenacity.retry(
        stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(), sleep=_no_sleep
    )(flaky["tenacity"])

    stamina_log = logging.getLogger("stamina")
    stamina_log.addHandler(logging.NullHandler())
    stamina_log.propagate = False
    stamina.instrumentation.set_on_retry_hooks(None)
    default_hooks = stamina.instrumentation.get_on_retry_hooks()
    candidates: dict[str, tuple[Callable[[], object], str, tuple[RetryHook, ...]]] = {
        "by hand: try f() except TimeoutError: f()": (by_hand, "bare", ()),
        "retry_call(fn, policy=RetryPolicy(sleep=no-op))": (ours, "ours", ()),
        "backoff (constant 0, jitter=None, logger=None)": (
            _closure(with_backoff),
            "backoff",
            (),
        ),
        "stamina (waits 0, no hooks)": (_closure(with_stamina), "stamina", ()),
        "tenacity (wait_none(), sleep=no-op)": (_closure(with_tenacity), "tenacity", ()),
        "backoff, default logger (NullHandler)": (
            _closure(with_backoff_log),
            "backoff_log",
            (),
        ),
        "stamina, default logging hook (to a NullHandler)": (
            _closure(with_stamina_log),
            "stamina_log",
            default_hooks,
        ),
    }
    variants: dict[str, Measure] = {}
    with _peer_sleeps_disabled():
        for label, (fn, name, hooks) in candidates.items():
            with _stamina_hooks(hooks):
                measure = _calibrated(_retried_once(fn, calls[name]))
            variants[label] = _hooked(measure, hooks)
        best = interleaved(variants, rounds=ROUNDS)
    sleep0 = min(sync_loop_ns(lambda: time.sleep(0), 2_000) for _ in range(5))
    print(f"\none failure, then success (best of {ROUNDS} interleaved rounds):")
    _table(
        best,
        bare="by hand: try f() except TimeoutError: f()",
        ours="retry_call(fn, policy=RetryPolicy(sleep=no-op))",
    )
    print(
        f"time.sleep(0) here: {sleep0:,.0f} ns; backoff and stamina add it to every "
        "retry as shipped, even with a zero wait"
    )
    print(f"stamina's default hooks here: {[h.__module__ for h in default_hooks]}")


def main() -> None:
    """Print the success-path and the one-retry tables."""
    stamina.set_active(True)
    stamina.set_testing(False)
    if not stamina.is_active() or stamina.is_testing() or is_testing():
        raise RuntimeError("stamina must be active and neither library in testing mode")
    started = time.perf_counter()
    _success_path()
    _failure_path()
    print(f"\n(took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
