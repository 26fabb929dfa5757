"""One route and one recorded outcome (``candidates()`` + ``record()``), next to a bare call.

Each router routes over 3 and over 20 candidates and records a success (with
a latency and an exact cost) on the first one, as a session would once per
turn. The health-aware router reads a real CircuitBreaker (closed) and a real
RateLimiter (holding a few admissions) per candidate; one variant has the
first candidate's breaker open, so every route skips it and reads its
retry time. Two references run in the same rounds: one closed
``CircuitBreaker.call`` and one ``Session.run_turn`` (a breaker, usage given),
the turn a router will be asked from. Variants are timed in interleaved
rounds, best kept; the machine is shared, so compare within a run.

Run: ``.venv/bin/python -m bench.bench_routing``
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from decimal import Decimal

from bench._timing import interleaved, report, sync_loop_ns
from techrevati.runtime import Orchestrator, UsageSnapshot
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
OUTCOME = Outcome.success(0.42, cost_femto_usd=1_234_500_000_000)  # $0.0012345


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
    breaker = CircuitBreaker("reference")
    usage = UsageSnapshot(input_tokens=1200, output_tokens=300)
    orchestrator = Orchestrator(
        role="bench", phase="route", circuit_breaker=CircuitBreaker("turns")
    )
    with orchestrator.session() as session:
        for count, calls in CALLS.items():
            variants = {
                "bare call": _measure(_answer, calls),
                "(reference) CircuitBreaker.call, closed": _measure(
                    lambda: breaker.call(_answer), calls
                ),
                "(reference) Session.run_turn, breaker": _measure(
                    lambda: session.run_turn(_answer, model="m", usage=usage), calls
                ),
            }
            for name, router in _routers(count).items():
                variants[name] = _measure(_turn(router), calls)
            _table(count, interleaved(variants, rounds=ROUNDS))
    _outcomes()


def _table(count: int, best: dict[str, float]) -> None:
    print(f"{count} candidates, candidates() + record() (best of {ROUNDS} interleaved rounds):")
    report(list(best.items()), baseline=best["bare call"], unit="turn")
    turn = best["(reference) Session.run_turn, breaker"]
    print("as a share of the reference run_turn:")
    for name, ns in best.items():
        if not name.startswith(("bare", "(reference)")):
            print(f"  {name:<52} {ns / turn:>6.2f}x")
    print()


def _outcomes() -> None:
    outcome = interleaved(
        {
            "bare call": lambda: sync_loop_ns(_answer, 50_000),
            "Outcome.success(latency, Decimal cost)": lambda: sync_loop_ns(
                lambda: Outcome.success(0.42, Decimal("0.0012345")), 50_000
            ),
            "Outcome.success(latency, cost_femto_usd=int)": lambda: sync_loop_ns(
                lambda: Outcome.success(0.42, cost_femto_usd=1_234_500_000_000), 50_000
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
