"""CircuitBreaker overhead next to a bare call and pybreaker, measured in the same run.

Run: ``.venv/bin/python -m bench.bench_circuit_breaker``
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bench._timing import interleaved, per_call_ns, report, sync_loop_ns
from techrevati.runtime.circuit_breaker import CircuitBreaker, CircuitOpenError, SlidingWindow

ASYNC_CALLS = 100_000
CLOSED_CALLS = 50_000
CLOSED_ROUNDS = 15


def _answer() -> str:
    return "ok"


async def _aanswer() -> str:
    return "ok"


def _raising(call: Callable[[], object], error: type[BaseException]) -> Callable[[], None]:
    def run() -> None:
        # try/except, not contextlib.suppress: time what a caller writes.
        try:  # noqa: SIM105
            call()
        except error:
            pass

    return run


def _async_ns(run_one: Callable[[], object], repeat: int = 5) -> float:
    """Best ns per awaited call of ``run_one()`` (a coroutine factory) in one event loop."""

    async def loop() -> float:
        best = float("inf")
        for _ in range(repeat):
            start = time.perf_counter()
            for _ in range(ASYNC_CALLS):
                await run_one()  # type: ignore[misc]
            best = min(best, time.perf_counter() - start)
        return best / ASYNC_CALLS * 1e9

    return asyncio.run(loop())


def main() -> None:
    """Print closed-state, open-state and async overheads, and the ratio to pybreaker's."""
    import pybreaker

    breaker = CircuitBreaker("bench")
    count_window = CircuitBreaker("bench-count", window=SlidingWindow(kind="count", size=100))
    time_window = CircuitBreaker(
        "bench-time",
        window=SlidingWindow(kind="time", size=60, slow_call_duration_seconds=5.0),
    )
    peer = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)

    # Interleaved rounds, minimum kept: the machine is shared and noisy.
    closed = interleaved(
        {
            "bare call": lambda: sync_loop_ns(_answer, CLOSED_CALLS),
            "CircuitBreaker.call (consecutive)": lambda: sync_loop_ns(
                lambda: breaker.call(_answer), CLOSED_CALLS
            ),
            "CircuitBreaker.call (count window)": lambda: sync_loop_ns(
                lambda: count_window.call(_answer), CLOSED_CALLS
            ),
            "CircuitBreaker.call (time window + slow calls)": lambda: sync_loop_ns(
                lambda: time_window.call(_answer), CLOSED_CALLS
            ),
            "pybreaker 1.4 CircuitBreaker.call": lambda: sync_loop_ns(
                lambda: peer.call(_answer), CLOSED_CALLS
            ),
        },
        rounds=CLOSED_ROUNDS,
    )
    bare = closed["bare call"]
    ours = closed["CircuitBreaker.call (consecutive)"]
    theirs = closed["pybreaker 1.4 CircuitBreaker.call"]
    print(f"closed state, successful call (best of {CLOSED_ROUNDS} interleaved rounds):")
    report(list(closed.items()), baseline=bare)
    ratio = (ours - bare) / (theirs - bare)
    print(f"overhead over a bare call: ours {ours - bare:.0f} ns, pybreaker {theirs - bare:.0f} ns")
    print(f"our overhead / pybreaker's: {ratio:.2f}x (goal <= 0.5x)")

    breaker.force_open()
    opened = CircuitBreaker("bench-open", failure_threshold=1, recovery_timeout_seconds=1e9)
    _raising(lambda: opened.call(_raise_connection_error), ConnectionError)()
    peer.open()
    print("\nopen state, rejected call:")
    report(
        [
            ("bare call", bare),
            (
                "call -> raise + catch CircuitOpenError (open)",
                per_call_ns(
                    _raising(lambda: opened.call(_answer), CircuitOpenError), number=50_000
                ),
            ),
            (
                "call -> raise + catch CircuitOpenError (forced)",
                per_call_ns(
                    _raising(lambda: breaker.call(_answer), CircuitOpenError), number=50_000
                ),
            ),
            ("try_acquire() -> None (open)", per_call_ns(opened.try_acquire, number=50_000)),
            ("try_acquire() -> None (forced)", per_call_ns(breaker.try_acquire, number=50_000)),
            (
                "pybreaker 1.4 raise + catch CircuitBreakerError",
                per_call_ns(
                    _raising(lambda: peer.call(_answer), pybreaker.CircuitBreakerError),
                    number=50_000,
                ),
            ),
        ],
        baseline=bare,
    )

    breaker.reset()
    abare = _async_ns(_aanswer)
    print("\nasync, closed state, successful call (awaited in one event loop):")
    report(
        [
            ("await bare coroutine", abare),
            ("await CircuitBreaker.acall", _async_ns(lambda: breaker.acall(_aanswer))),
        ],
        baseline=abare,
    )


def _raise_connection_error() -> None:
    raise ConnectionError("down")


if __name__ == "__main__":
    main()
