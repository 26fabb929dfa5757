"""One route and one recorded outcome (``candidates()`` + ``record()``), next to a bare call.

Each router routes over 3 and over 20 candidates and records a success (with
a latency and an exact cost) on the first one, as a session would once per
turn. The health-aware router reads a real CircuitBreaker (closed) and a real
RateLimiter (holding a few admissions) per candidate; one variant has the
first candidate's breaker open, so every route skips it and reads its
retry time. Variants are timed in interleaved rounds, best kept.

Run: ``.venv/bin/python -m bench.bench_routing``
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from decimal import Decimal

from bench._timing import interleaved, report, sync_loop_ns
from techrevati.runtime.circuit_breaker import CircuitBreaker
from techrevati.runtime.rate_limit import RateLimiter
from techrevati.runtime.routing import (
    Candidate,
    HealthAwareRouter,
    Outcome,
    ProviderRouter,
    RoundRobinRouter,
    StaticRouter,
    WeightedRouter,
)

ROUNDS = 9
CALLS = {3: 20_000, 20: 5_000}
OUTCOME = Outcome.success(0.42, Decimal("0.0012345"))


def _answer() -> str:
    return "ok"


def _bare_candidates(count: int) -> list[Candidate]:
    return [Candidate(f"model-{i}", f"p{i}", weight=i + 1) for i in range(count)]


def _guarded_candidates(count: int, *, limiters: bool, open_first: bool) -> list[Candidate]:
    candidates = []
    for i in range(count):
        breaker = CircuitBreaker(f"p{i}", failure_threshold=1, recovery_timeout_seconds=1e9)
        if open_first and i == 0:
            with contextlib.suppress(ConnectionError):
                breaker.call(_down)
        limiter = None
        if limiters:
            limiter = RateLimiter(requests_per_minute=10_000, tokens_per_minute=10_000_000)
            for _ in range(5):
                limiter.acquire(input_tokens=800, output_tokens=200).settle()
        candidates.append(Candidate(f"model-{i}", f"p{i}", breaker=breaker, limiter=limiter))
    return candidates


def _measure(fn: Callable[[], object], calls: int) -> Callable[[], float]:
    return lambda: sync_loop_ns(fn, calls)


def _down() -> None:
    raise ConnectionError("down")


def _turn(router: ProviderRouter) -> Callable[[], None]:
    def one() -> None:
        decision = router.candidates()
        router.record(decision[0], OUTCOME)

    return one


def _routers(count: int) -> dict[str, ProviderRouter]:
    rng = random.Random(1)
    return {
        "StaticRouter": StaticRouter(_bare_candidates(count)),
        "RoundRobinRouter": RoundRobinRouter(_bare_candidates(count)),
        "WeightedRouter": WeightedRouter(_bare_candidates(count), rng=rng),
        "HealthAwareRouter, no breakers or limiters": HealthAwareRouter(
            _bare_candidates(count), rng=rng
        ),
        "HealthAwareRouter, breakers": HealthAwareRouter(
            _guarded_candidates(count, limiters=False, open_first=False), rng=rng
        ),
        "HealthAwareRouter, breakers + limiters": HealthAwareRouter(
            _guarded_candidates(count, limiters=True, open_first=False), rng=rng
        ),
        "HealthAwareRouter, breakers + limiters, 1 open": HealthAwareRouter(
            _guarded_candidates(count, limiters=True, open_first=True), rng=rng
        ),
        "HealthAwareRouter by cost, breakers + limiters": HealthAwareRouter(
            _guarded_candidates(count, limiters=True, open_first=False), prefer="cost", rng=rng
        ),
    }


def main() -> None:
    """Print ns per route + record for each router at 3 and 20 candidates."""
    for count, calls in CALLS.items():
        variants = {"bare call": _measure(_answer, calls)}
        for name, router in _routers(count).items():
            variants[name] = _measure(_turn(router), calls)
        best = interleaved(variants, rounds=ROUNDS)
        print(f"{count} candidates, candidates() + record() (best of {ROUNDS} interleaved rounds):")
        report(list(best.items()), baseline=best["bare call"], unit="turn")
        print()
    outcome = interleaved(
        {
            "bare call": lambda: sync_loop_ns(_answer, 50_000),
            "Outcome.success(latency, Decimal cost)": lambda: sync_loop_ns(
                lambda: Outcome.success(0.42, Decimal("0.0012345")), 50_000
            ),
            "Outcome.failure(class, latency)": lambda: sync_loop_ns(
                lambda: Outcome.failure("provider_failure", 0.42), 50_000
            ),
        },
        rounds=ROUNDS,
    )
    print(f"building the outcome to record (best of {ROUNDS} interleaved rounds):")
    report(list(outcome.items()), baseline=outcome["bare call"])


if __name__ == "__main__":
    main()
