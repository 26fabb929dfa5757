"""Routers: the four rules, health read from real breakers and limiters without taking from
them, exact averages, explanations, the all-unhealthy error, threads and invariants."""

from __future__ import annotations

import contextlib
import json
import math
import pickle
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal, localcontext
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime.circuit_breaker import CircuitBreaker, CircuitState
from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.events import AgentFailureClass
from techrevati.runtime.rate_limit import RateLimiter
from techrevati.runtime.routing import (
    Candidate,
    HealthAwareRouter,
    NoHealthyProviderError,
    Outcome,
    ProviderRouter,
    RoundRobinRouter,
    RouteDecision,
    RouteRequest,
    SkipReason,
    StaticRouter,
    WeightedRouter,
    router_from_fallbacks,
)
from techrevati.runtime.usage import UsageSnapshot
from tests.conftest import FakeClock, examples

if TYPE_CHECKING:
    from tests.redis_servers import RedisServer

WAIT = 10.0  # seconds a thread barrier waits before the test fails


def _down() -> None:
    raise ConnectionError("down")


def breaker(clock: FakeClock, name: str = "b", **settings_: object) -> CircuitBreaker:
    return CircuitBreaker(name, 1, 30.0, clock=clock, **settings_)  # type: ignore[arg-type]


def trip(guard: CircuitBreaker) -> None:
    with contextlib.suppress(ConnectionError):
        guard.call(_down)


def limiter(clock: FakeClock, **limits: int) -> RateLimiter:
    return RateLimiter(clock=clock, sleep=clock.sleep, **limits)  # type: ignore[arg-type]


class Stratified(random.Random):
    """A Random whose random() returns the given values in order (then fails the test)."""

    def __init__(self, values: Sequence[float]) -> None:
        super().__init__(0)
        self._values = iter(values)

    def random(self) -> float:
        return next(self._values)


class NeverDraws(random.Random):
    def random(self) -> float:
        raise AssertionError("the router drew a random number")


def labels(decision: RouteDecision) -> list[str]:
    return [candidate.label for candidate in decision]


def skipped(decision: RouteDecision) -> dict[str, SkipReason]:
    return {entry.candidate.label: entry.reason for entry in decision.skipped}


# ---- values ----------------------------------------------------------------------------


def test_a_candidate_is_labelled_by_provider_and_model_and_keeps_extra_read_only() -> None:
    plain = Candidate("gpt-4o")
    placed = Candidate("gpt-4o", "openai", extra={"base_url": "http://127.0.0.1"})
    assert plain.label == "gpt-4o"
    assert placed.label == "openai/gpt-4o"
    assert placed.extra["base_url"] == "http://127.0.0.1"
    with pytest.raises(TypeError):
        placed.extra["base_url"] = "elsewhere"  # type: ignore[index]
    assert plain.extra == {}
    assert plain.weight == 1.0
    assert Candidate("m", weight=2).weight == 2.0
    assert hash(Candidate("m", "p")) == hash(Candidate("m", "p"))


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"model": ""}, "model must be a non-empty str, got ''"),
        ({"model": "  "}, "model must be a non-empty str"),
        ({"model": 3}, "got 3"),
        ({"model": "m", "provider": None}, "provider must be a str, got None"),
        ({"model": "m", "breaker": "b"}, "breaker must be a CircuitBreaker or None, got 'b'"),
        ({"model": "m", "limiter": 5}, "limiter must be a RateLimiter or None, got 5"),
        ({"model": "m", "weight": -1}, "weight must be a finite number >= 0, got -1"),
        ({"model": "m", "weight": math.nan}, "got nan"),
        ({"model": "m", "weight": math.inf}, "got inf"),
        ({"model": "m", "weight": True}, "got True"),
        ({"model": "m", "extra": [1]}, "extra must be a mapping, got [1]"),
    ],
)
def test_a_bad_candidate_is_refused_naming_the_value(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidValueError, match=re.escape(named)):
        Candidate(**kwargs)  # type: ignore[arg-type]


def test_outcomes_are_exact_and_say_why_a_failure_failed() -> None:
    ok = Outcome.success(0.25, "0.000123")
    assert ok.ok
    assert ok.cost_usd == Decimal("0.000123")
    assert type(ok.cost_usd) is Decimal
    assert ok.failure_class is None
    assert Outcome.success(1, 0.1).cost_usd == Decimal("0.1")  # a float by its shortest repr
    assert Outcome.success(1).cost_usd is None
    failed = Outcome.failure("llm_timeout", 30.0)
    assert failed.failure_class is AgentFailureClass.LLM_TIMEOUT
    assert not failed.ok
    assert Outcome.failure(AgentFailureClass.RATE_LIMIT).latency_seconds == 0.0


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: Outcome.success(-1.0), "latency_seconds must be a finite number >= 0, got -1.0"),
        (lambda: Outcome.success(math.inf), "got inf"),
        (lambda: Outcome.success(1.0, "-0.5"), "cost_usd"),
        (lambda: Outcome.failure("nope"), "unknown failure class 'nope'"),
        (lambda: Outcome(False), "a failed outcome needs its failure_class, got None"),
        (
            lambda: Outcome(True, failure_class=AgentFailureClass.UNKNOWN),
            "a successful outcome has no failure_class",
        ),
        (lambda: Outcome(1), "ok must be a bool, got 1"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_outcome_is_refused(make: Callable[[], Outcome], named: str) -> None:
    with pytest.raises(InvalidValueError, match=named):
        make()


def test_a_route_request_reads_its_estimate_once_and_refuses_bad_values() -> None:
    request = RouteRequest(UsageSnapshot(input_tokens=700, output_tokens=300), 2, ["a", "b"])
    assert request.tokens == (700, 300)
    assert request.max_wait == 2.0
    assert request.exclude == frozenset({"a", "b"})
    assert RouteRequest(max_wait=math.inf).max_wait == math.inf
    with pytest.raises(InvalidValueError, match="max_wait must be a number >= 0"):
        RouteRequest(max_wait=-1)
    with pytest.raises(InvalidValueError, match="exclude must be a collection of labels, got 'ab'"):
        RouteRequest(exclude="ab")
    with pytest.raises(InvalidValueError, match="exclude must hold str labels"):
        RouteRequest(exclude=[1])  # type: ignore[list-item]
    with pytest.raises(InvalidValueError, match="input_tokens must be an int >= 0"):
        RouteRequest(_Negative())


class _Negative:
    input_tokens = -1
    output_tokens = 0


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: StaticRouter([]), "candidates must not be empty"),
        (lambda: StaticRouter("ab"), "candidates must be a sequence of Candidate"),  # type: ignore[arg-type]
        (lambda: StaticRouter(Candidate("m")), "candidates must be a sequence"),  # type: ignore[arg-type]
        (lambda: StaticRouter(["m"]), "candidates must hold Candidate values, got 'm'"),  # type: ignore[list-item]
        (
            lambda: StaticRouter([Candidate("m"), Candidate("m")]),
            "candidate labels must be unique, got 'm' twice",
        ),
        (lambda: HealthAwareRouter([Candidate("m")], prefer="speed"), "prefer must be"),  # type: ignore[arg-type]
        (lambda: HealthAwareRouter([Candidate("m")], explore=1.5), "explore must be a number"),
        (lambda: HealthAwareRouter([Candidate("m")], explore=-0.1), "explore must be"),
        (lambda: HealthAwareRouter([Candidate("m")], smoothing=0), "smoothing must be"),
        (lambda: HealthAwareRouter([Candidate("m")], smoothing=1.5), "smoothing must be"),
        (lambda: HealthAwareRouter([Candidate("m")], max_wait=-1), "max_wait must be"),
        (lambda: HealthAwareRouter([Candidate("m")], stale_after=-1), "stale_after must be"),
        (
            lambda: HealthAwareRouter([Candidate("m")], if_none_healthy="wait"),  # type: ignore[arg-type]
            "if_none_healthy must be",
        ),
        (lambda: HealthAwareRouter([Candidate("m")], rng=3), "rng must be a random.Random"),  # type: ignore[arg-type]
        (lambda: WeightedRouter([Candidate("m")], rng=random), "rng must be a random.Random"),  # type: ignore[arg-type]
        (lambda: StaticRouter([Candidate("m")], clock=5), "clock must be callable"),  # type: ignore[arg-type]
        (lambda: WeightedRouter([Candidate("m", weight=0)]), "at least one candidate needs"),
    ],
)
def test_a_bad_router_is_refused(make: Callable[[], object], named: str) -> None:
    with pytest.raises(InvalidValueError, match=named):
        make()


@pytest.mark.parametrize(
    "make",
    [
        StaticRouter,
        RoundRobinRouter,
        lambda cs: WeightedRouter(cs, rng=random.Random(1)),
        lambda cs: HealthAwareRouter(cs, rng=random.Random(1)),
    ],
)
def test_every_router_is_a_provider_router_and_refuses_strangers(
    make: Callable[[list[Candidate]], ProviderRouter],
) -> None:
    mine = [Candidate("a"), Candidate("b")]
    router = make(mine)
    assert isinstance(router, ProviderRouter)
    router.record(Candidate("a"), Outcome.success(1.0))  # an equal candidate is the same one
    with pytest.raises(InvalidValueError, match=r"one of this router's \(a, b\), got Candidate"):
        router.record(Candidate("c"), Outcome.success(1.0))
    with pytest.raises(InvalidValueError, match="one of this router's"):
        router.record(Candidate("a", weight=2), Outcome.success(1.0))  # not the same candidate
    with pytest.raises(InvalidValueError, match="outcome must be an Outcome, got 'ok'"):
        router.record(mine[0], "ok")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="request must be a RouteRequest or None"):
        router.candidates("fast")  # type: ignore[arg-type]
    decision = router.candidates(RouteRequest(max_wait=1.0))
    assert json.loads(json.dumps(decision.to_dict()))["order"] == labels(decision)
    assert [e.max_wait for e in decision.ranked] == [1.0, 1.0]
    later = router.candidates(RouteRequest(max_wait=2.0))
    assert [e.max_wait for e in later.ranked] == [2.0, 2.0]
    assert [e.max_wait for e in router.candidates().ranked] == [None, None]
    assert sorted(labels(decision)) == ["a", "b"]
    assert decision.first is decision[0]


# ---- static, and the bare fallback list -------------------------------------------------


def test_a_static_router_gives_the_same_decision_every_time_and_reads_no_health() -> None:
    clock = FakeClock()
    guard = breaker(clock)
    trip(guard)
    router = StaticRouter([Candidate("a", breaker=guard), Candidate("b")])
    first = router.candidates()
    assert router.candidates() is first
    assert router.candidates(RouteRequest()) is first
    assert labels(first) == ["a", "b"]  # its open breaker left in place
    assert first.explain() == "static: 1. a (position 1); 2. b (position 2)"
    left = router.candidates(RouteRequest(exclude={"a"}))
    assert labels(left) == ["b"]
    assert skipped(left) == {"a": SkipReason.EXCLUDED}
    with pytest.raises(NoHealthyProviderError, match="a: excluded by the request; b: excluded"):
        router.candidates(RouteRequest(exclude={"a", "b"}))


def test_the_bare_fallback_list_is_a_static_router_of_the_same_models() -> None:
    router = router_from_fallbacks("gpt-4o", ["claude", "gpt-4o", "llama"])
    assert isinstance(router, StaticRouter)
    assert [c.model for c in router.candidates()] == ["gpt-4o", "claude", "llama"]
    assert [c.model for c in router_from_fallbacks("m").candidates()] == ["m"]


def test_the_bare_fallback_list_is_checked_as_the_session_checks_it() -> None:
    with pytest.raises(InvalidValueError, match="a list, not a str"):
        router_from_fallbacks("m", "claude")
    with pytest.raises(InvalidValueError, match="non-empty str model names, got ''"):
        router_from_fallbacks("m", [""])
    with pytest.raises(InvalidValueError, match="primary must be a non-empty str"):
        router_from_fallbacks("", ["m"])


# ---- round robin -----------------------------------------------------------------------


def test_round_robin_starts_one_further_each_time_and_wraps() -> None:
    router = RoundRobinRouter([Candidate("a"), Candidate("b"), Candidate("c")])
    orders = ["".join(labels(router.candidates())) for _ in range(4)]
    assert orders == ["abc", "bca", "cab", "abc"]
    decision = router.candidates(RouteRequest(exclude={"c"}))  # the 5th: b, c, a
    assert decision.explain() == (
        "round-robin: 1. b (rotation 2 of 3); 2. a; skipped: c (excluded by the request)"
    )
    assert labels(router.candidates(RouteRequest(exclude={"c"}))) == ["a", "b"]  # c, a, b


def test_round_robin_is_exactly_fair_across_threads() -> None:
    router = RoundRobinRouter([Candidate(name) for name in "abcde"])
    threads_n, rounds = 8, 500
    firsts: list[list[str]] = [[] for _ in range(threads_n)]
    start = threading.Barrier(threads_n, timeout=WAIT)

    def worker(n: int) -> None:
        start.wait()
        for _ in range(rounds):
            decision = router.candidates()
            firsts[n].append(decision[0].label)
            router.record(decision[0], Outcome.success(0.1))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    counts = Counter(label for seen in firsts for label in seen)
    assert counts == dict.fromkeys("abcde", threads_n * rounds // 5)
    assert {s.candidate.label: s.successes for s in router.stats()} == counts


# ---- weighted --------------------------------------------------------------------------


def test_weighted_draws_match_the_weights_exactly_over_evenly_spread_draws() -> None:
    weights = [5, 3, 0, 2]
    total, spread = sum(weights), 40
    draws = [(k + 0.5) / (total * spread) for k in range(total * spread)]
    router = WeightedRouter(
        [Candidate(name, weight=w) for name, w in zip("abcd", weights, strict=True)],
        rng=Stratified(draws),
    )
    counts = Counter(router.candidates()[0].label for _ in draws)
    assert counts == {"a": 5 * spread, "b": 3 * spread, "d": 2 * spread}
    decision = WeightedRouter(
        [Candidate(name, weight=w) for name, w in zip("abcd", weights, strict=True)],
        rng=Stratified([0.99]),
    ).candidates()
    assert labels(decision) == ["d", "a", "b", "c"]  # the rest in the given order
    assert decision.ranked[0].note == "drawn by weight 2 of 10"


@settings(max_examples=examples(20))
@given(
    weights=st.lists(st.integers(0, 9), min_size=1, max_size=6).filter(lambda ws: sum(ws) > 0),
    seed=st.integers(0, 2**32 - 1),
)
def test_weighted_draws_follow_the_weights_over_a_seeded_rng(weights: list[int], seed: int) -> None:
    names = [f"m{i}" for i in range(len(weights))]
    router = WeightedRouter(
        [Candidate(n, weight=w) for n, w in zip(names, weights, strict=True)],
        rng=random.Random(seed),
    )
    draws = 3000
    counts = Counter(router.candidates()[0].label for _ in range(draws))
    total = sum(weights)
    for name, weight in zip(names, weights, strict=True):
        if weight == 0:
            assert counts[name] == 0
            continue
        p = weight / total
        sigma = math.sqrt(draws * p * (1 - p))
        assert abs(counts[name] - draws * p) <= 5 * sigma + 1, (name, counts)
    again = WeightedRouter(
        [Candidate(n, weight=w) for n, w in zip(names, weights, strict=True)],
        rng=random.Random(seed),
    )
    assert Counter(again.candidates()[0].label for _ in range(draws)) == counts  # reproducible


def test_weighted_with_exclusions_draws_among_the_rest() -> None:
    cs = [Candidate("a", weight=1), Candidate("b", weight=3), Candidate("c", weight=0)]
    router = WeightedRouter(cs, rng=Stratified([0.5, 0.1]))
    decision = router.candidates(RouteRequest(exclude={"a"}))
    assert labels(decision) == ["b", "c"]
    assert decision.ranked[0].note == "drawn by weight 3 of 3"
    only_zero = router.candidates(RouteRequest(exclude={"a", "b"}))
    assert labels(only_zero) == ["c"]
    assert only_zero.ranked[0].note == "every candidate left has weight 0: the given order"
    two = WeightedRouter(cs, rng=Stratified([0.1, 0.9])).candidates(RouteRequest(exclude={"c"}))
    assert labels(two) == ["a", "b"]  # 0.1 * 4 = 0.4 < 1: a
    with pytest.raises(NoHealthyProviderError):
        router.candidates(RouteRequest(exclude={"a", "b", "c"}))


# ---- health: breakers ------------------------------------------------------------------


def test_an_open_breaker_is_routed_around_and_the_decision_says_until_when() -> None:
    clock = FakeClock()
    primary = Candidate("gpt-4o", "openai", breaker=breaker(clock, "openai"))
    backup = Candidate("claude", "anthropic", breaker=breaker(clock, "anthropic"))
    router = HealthAwareRouter([primary, backup], clock=clock, explore=0)
    assert labels(router.candidates()) == ["openai/gpt-4o", "anthropic/claude"]
    trip(primary.breaker)  # type: ignore[arg-type]
    clock.advance(12.5)
    decision = router.candidates()
    assert labels(decision) == ["anthropic/claude"]
    (skip,) = decision.skipped
    assert skip.reason is SkipReason.BREAKER_OPEN
    assert skip.seconds == 17.5
    assert decision.explain() == (
        "health-aware, by latency: 1. anthropic/claude (closed, unmeasured); "
        "skipped: openai/gpt-4o (breaker 'openai' open, retry in 17.500s)"
    )
    assert decision.to_dict()["skipped"] == [
        {
            "candidate": "openai/gpt-4o",
            "reason": "breaker_open",
            "seconds": 17.5,
            "detail": "breaker 'openai' open, retry in 17.500s",
        }
    ]


def test_a_half_open_breaker_is_kept_but_after_every_closed_one() -> None:
    clock = FakeClock()
    fast = Candidate("fast", breaker=breaker(clock, "fast"))
    slow = Candidate("slow", breaker=breaker(clock, "slow"))
    router = HealthAwareRouter([fast, slow], clock=clock, explore=0)
    router.record(fast, Outcome.success(0.1))
    router.record(slow, Outcome.success(5.0))
    trip(fast.breaker)  # type: ignore[arg-type]
    clock.advance(30.0)  # recovery timeout over: a call to fast would be a probe
    decision = router.candidates()
    assert labels(decision) == ["slow", "fast"]  # the better score waits behind the closed one
    assert [e.state for e in decision.ranked] == [CircuitState.CLOSED, CircuitState.HALF_OPEN]
    assert "2. fast (half-open: a probe, 0.100s per success over 1)" in decision.explain()


def test_reading_a_breaker_takes_no_permit_and_no_probe_slot() -> None:
    clock = FakeClock()
    guard = breaker(clock, "g", half_open_max_calls=1)
    router = HealthAwareRouter([Candidate("g", breaker=guard), Candidate("h")], clock=clock)
    trip(guard)
    for _ in range(5):
        router.candidates()  # open: skipped, no rejection counted
    assert guard.metrics().rejections == 0
    clock.advance(30.0)
    for _ in range(5):
        assert "g" in labels(router.candidates())  # half-open: kept, the probe slot untouched
    assert guard.metrics().half_open_in_flight == 0
    permit = guard.try_acquire()
    assert permit is not None  # the one probe slot is still there for the real call
    decision = router.candidates()
    assert skipped(decision) == {"g": SkipReason.PROBES_TAKEN}
    assert "breaker 'g' half-open with every probe slot taken" in decision.explain()
    permit.record_success()
    assert guard.state is CircuitState.CLOSED
    decision = router.candidates()
    assert labels(decision)[:1] == ["g"]
    assert decision.ranked[0].state is CircuitState.CLOSED  # not the half-open read before


def test_a_forced_open_breaker_is_skipped_with_no_end_in_sight() -> None:
    clock = FakeClock()
    guard = breaker(clock, "held")
    guard.force_open()
    decision = HealthAwareRouter(
        [Candidate("a", breaker=guard), Candidate("b")], clock=clock
    ).candidates()
    (skip,) = decision.skipped
    assert (skip.reason, skip.seconds) == (SkipReason.BREAKER_FORCED_OPEN, math.inf)
    assert decision.to_dict()["skipped"][0]["seconds"] is None  # type: ignore[index]
    assert "breaker 'held' forced open until reset()" in decision.explain()


# ---- health: limiters ------------------------------------------------------------------


def test_a_limiter_that_would_wait_too_long_is_skipped_and_reading_takes_no_capacity() -> None:
    clock = FakeClock()
    busy = limiter(clock, requests_per_minute=1)
    busy.acquire().settle()
    clock.advance(15.0)
    router = HealthAwareRouter(
        [Candidate("a", limiter=busy), Candidate("b")], clock=clock, max_wait=10.0, explore=0
    )
    before = busy.usage()
    decision = router.candidates()
    assert busy.usage() == before
    assert labels(decision) == ["b"]
    (skip,) = decision.skipped
    assert (skip.reason, skip.seconds, skip.limit, skip.allowed) == (
        SkipReason.RATE_LIMITED,
        45.0,
        "requests",
        10.0,
    )
    assert "rate limiter (requests limit) would wait 45.000s, more than the 10.000s allowed" in (
        decision.explain()
    )
    patient = router.candidates(RouteRequest(max_wait=45.0))  # the caller allows it
    assert labels(patient) == ["a", "b"]  # neither measured: the given order
    assert {e.candidate.label: e.wait for e in patient.ranked} == {"a": 45.0, "b": 0.0}
    assert busy.acquire(max_wait=45.0).waited == 45.0  # what the read said


def test_without_a_max_wait_each_limiter_allows_its_own() -> None:
    clock = FakeClock()
    tight = RateLimiter(requests_per_minute=1, max_wait=5.0, clock=clock, sleep=clock.sleep)
    loose = RateLimiter(requests_per_minute=1, max_wait=100.0, clock=clock, sleep=clock.sleep)
    tight.acquire().settle()
    loose.acquire().settle()
    router = HealthAwareRouter(
        [Candidate("tight", limiter=tight), Candidate("loose", limiter=loose)], clock=clock
    )
    decision = router.candidates()
    assert labels(decision) == ["loose"]
    assert decision.skipped[0].allowed == 5.0
    assert decision.ranked[0].max_wait is None  # acquire with the limiter's own max_wait


def test_a_limiter_wait_within_the_allowance_counts_toward_latency() -> None:
    clock = FakeClock()
    busy = limiter(clock, requests_per_minute=1)
    router = HealthAwareRouter(
        [Candidate("quick", limiter=busy), Candidate("steady")],
        clock=clock,
        max_wait=60.0,
        explore=0,
    )
    router.record(router.members[0], Outcome.success(0.5))
    router.record(router.members[1], Outcome.success(2.0))
    assert labels(router.candidates()) == ["quick", "steady"]
    busy.acquire().settle()
    clock.advance(58.0)  # quick would wait 2 s: 2.5 s in all, more than steady's 2.0 s
    assert labels(router.candidates()) == ["steady", "quick"]
    cost_router = HealthAwareRouter(
        list(router.members), prefer="cost", clock=clock, max_wait=60.0, explore=0
    )
    cost_router.record(router.members[0], Outcome.success(0.5, "0.001"))
    cost_router.record(router.members[1], Outcome.success(2.0, "0.002"))
    assert labels(cost_router.candidates()) == ["quick", "steady"]  # a wait costs no money


def test_no_concurrency_slot_and_a_call_too_large_are_named() -> None:
    clock = FakeClock()
    slots = limiter(clock, max_concurrent=1)
    held = slots.acquire()
    small = limiter(clock, tokens_per_minute=100)
    router = HealthAwareRouter(
        [Candidate("slots", limiter=slots), Candidate("small", limiter=small), Candidate("c")],
        clock=clock,
        max_wait=30.0,
    )
    decision = router.candidates(RouteRequest(UsageSnapshot(input_tokens=150)))
    assert skipped(decision) == {
        "slots": SkipReason.NO_CONCURRENT_SLOT,
        "small": SkipReason.TOO_LARGE,
    }
    assert "rate limiter has no free concurrency slot" in decision.explain()
    assert "can never fit" in decision.explain()
    forever = router.candidates(RouteRequest(UsageSnapshot(input_tokens=150), math.inf))
    assert labels(forever) == ["slots", "c"]  # a slot may be waited for; too large never fits
    assert skipped(forever) == {"small": SkipReason.TOO_LARGE}
    held.release()
    assert labels(router.candidates())[0] == "slots"


def test_the_providers_own_headers_make_a_server_wait() -> None:
    clock = FakeClock()
    told = limiter(clock)
    assert told.observe(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"}
    )
    decision = HealthAwareRouter(
        [Candidate("a", limiter=told), Candidate("b")], clock=clock, max_wait=5.0
    ).candidates()
    (skip,) = decision.skipped
    assert (skip.reason, skip.limit, skip.seconds) == (SkipReason.RATE_LIMITED, "server", 20.0)


@settings(max_examples=examples(40))
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("admit"), st.integers(0, 60), st.integers(0, 60)),
            st.tuples(st.just("advance"), st.integers(0, 40), st.just(0)),
            st.tuples(st.just("settle"), st.integers(0, 90), st.integers(0, 90)),
        ),
        max_size=12,
    ),
    wanted=st.tuples(st.integers(0, 60), st.integers(0, 60)),
)
def test_the_wait_read_is_the_wait_acquire_then_sleeps(
    steps: list[tuple[str, int, int]], wanted: tuple[int, int]
) -> None:
    clock = FakeClock()
    limits = limiter(
        clock,
        requests_per_minute=3,
        tokens_per_minute=150,
        input_tokens_per_minute=100,
        output_tokens_per_minute=100,
    )
    leases = []
    for kind, a, b in steps:
        if kind == "admit":
            lease = limits.try_acquire(input_tokens=a, output_tokens=b)
            if lease is not None:
                leases.append(lease)
        elif kind == "advance":
            clock.advance(a)
        elif leases:
            leases.pop().settle(input_tokens=a, output_tokens=b)
    router = HealthAwareRouter([Candidate("m", limiter=limits)], clock=clock, max_wait=math.inf)
    before = limits.usage()
    request = RouteRequest(UsageSnapshot(input_tokens=wanted[0], output_tokens=wanted[1]))
    (entry,) = router.candidates(request).ranked
    assert limits.usage() == before
    assert entry.wait is not None
    clock.slept.clear()
    limits.acquire(input_tokens=wanted[0], output_tokens=wanted[1], max_wait=math.inf)
    assert sum(clock.slept) == entry.wait


# ---- ranking by what was observed --------------------------------------------------------


def test_latency_is_an_ewma_per_successful_turn_including_failed_attempts() -> None:
    clock = FakeClock()
    a, b = Candidate("a"), Candidate("b")
    router = HealthAwareRouter([a, b], clock=clock, smoothing=0.5, explore=0)
    router.record(a, Outcome.success(1.0))
    router.record(a, Outcome.failure("provider_failure", 2.0))
    router.record(a, Outcome.success(1.0))  # this turn took 2.0 + 1.0 on a
    (stats_a, stats_b) = router.stats()
    assert stats_a.latency_seconds == 1.0 + 0.5 * (3.0 - 1.0)
    assert (stats_a.samples, stats_a.successes, stats_a.failures) == (2, 2, 1)
    assert stats_a.last_failure is AgentFailureClass.PROVIDER_FAILURE
    assert stats_b.latency_seconds is None
    assert labels(router.candidates()) == ["a", "b"]  # measured before unmeasured
    router.record(b, Outcome.success(1.5))
    assert labels(router.candidates()) == ["b", "a"]
    assert router.candidates().explain() == (
        "health-aware, by latency: 1. b (1.500s per success over 1); "
        "2. a (2.000s per success over 2)"
    )


def test_cost_per_successful_turn_is_exact_in_any_decimal_context() -> None:
    clock = FakeClock()
    a, b = Candidate("a"), Candidate("b")
    router = HealthAwareRouter([a, b], prefer="cost", clock=clock, smoothing=0.5, explore=0)
    with localcontext() as ctx:
        ctx.prec = 2  # the caller's context plays no part
        router.record(a, Outcome.success(1.0, "0.000000000000001"))
        router.record(a, Outcome.failure("llm_timeout", 1.0, "0.1"))
        router.record(a, Outcome.success(1.0, "0.2"))
        router.record(b, Outcome.success(9.0, "0.15"))
    stats_a, stats_b = router.stats()
    # 1e-15 + 0.5 * ((0.1 + 0.2) - 1e-15): exact to the last digit
    assert stats_a.cost_usd == Decimal("0.1500000000000005")
    assert stats_a.cost_usd_total == Decimal("0.300000000000001")
    assert stats_a.cost_samples == 2
    assert stats_b.cost_usd == Decimal("0.15")
    assert labels(router.candidates()) == ["b", "a"]  # 0.15 < 0.1500000000000005
    assert "1. b ($0.15 per success over 1)" in router.candidates().explain()


def test_a_success_without_a_cost_leaves_the_cost_average_and_carries_failed_costs() -> None:
    clock = FakeClock()
    a = Candidate("a")
    router = HealthAwareRouter([a], prefer="cost", clock=clock, smoothing=0.5)
    router.record(a, Outcome.failure("llm_timeout", 1.0, "0.5"))
    router.record(a, Outcome.success(1.0))  # unpriced: no cost sample
    (stats,) = router.stats()
    assert (stats.cost_usd, stats.cost_samples, stats.samples) == (None, 0, 1)
    router.record(a, Outcome.success(1.0, "0.25"))
    (stats,) = router.stats()
    assert stats.cost_usd == Decimal("0.75")  # the failed attempt's 0.5 still counted


def test_an_average_older_than_stale_after_is_replaced_not_moved() -> None:
    clock = FakeClock()
    a = Candidate("a")
    router = HealthAwareRouter([a], clock=clock, smoothing=0.5, stale_after=60.0)
    router.record(a, Outcome.success(10.0, "1"))
    clock.advance(60.0)
    router.record(a, Outcome.success(2.0, "1"))  # 60 s: still fresh
    assert router.stats()[0].latency_seconds == 6.0
    clock.advance(60.5)
    router.record(a, Outcome.success(1.0, "0.5"))
    stats = router.stats()[0]
    assert (stats.latency_seconds, stats.samples) == (1.0, 1)
    assert (stats.cost_usd, stats.cost_samples) == (Decimal("0.5"), 1)
    assert stats.last_measured == clock.now


def test_order_preference_keeps_the_given_order_among_the_healthy() -> None:
    clock = FakeClock()
    cs = [Candidate("a", breaker=breaker(clock, "a")), Candidate("b"), Candidate("c")]
    router = HealthAwareRouter(cs, prefer="order", clock=clock, explore=0)
    router.record(cs[2], Outcome.success(0.01))
    router.record(cs[0], Outcome.success(9.0))
    assert labels(router.candidates()) == ["a", "b", "c"]
    trip(cs[0].breaker)  # type: ignore[arg-type]
    assert labels(router.candidates()) == ["b", "c"]
    assert router.rule == "health-aware, by given order"


# ---- exploration -----------------------------------------------------------------------


def test_exploration_moves_the_least_recently_measured_first() -> None:
    clock = FakeClock()
    a, b, c = Candidate("a"), Candidate("b"), Candidate("c")
    router = HealthAwareRouter([a, b, c], clock=clock, explore=0.1, rng=Stratified([0.05, 0.5]))
    router.record(a, Outcome.success(1.0))
    clock.advance(5.0)
    router.record(b, Outcome.success(2.0))
    clock.advance(5.0)
    router.record(c, Outcome.success(3.0))
    clock.advance(2.0)
    decision = router.candidates()  # 0.05 < 0.1: explore; a is the oldest but already first
    assert decision.explored is None
    router.record(a, Outcome.success(1.0))
    decision = router.candidates()  # 0.5: no exploration
    assert labels(decision) == ["a", "b", "c"]
    explorer = HealthAwareRouter([a, b, c], clock=clock, explore=0.1, rng=Stratified([0.0]))
    explorer.record(a, Outcome.success(1.0))
    decision = explorer.candidates()
    assert labels(decision) == ["b", "a", "c"]  # b and c never measured; b first of them
    assert decision.explored == b
    assert decision.ranked[0].note == "explored: never measured"
    assert decision.to_dict()["explored"] == "b"


def test_exploration_off_never_draws() -> None:
    router = HealthAwareRouter([Candidate("a"), Candidate("b")], explore=0, rng=NeverDraws())
    for _ in range(3):
        assert labels(router.candidates()) == ["a", "b"]
    lone = HealthAwareRouter([Candidate("a")], rng=NeverDraws())
    assert labels(lone.candidates()) == ["a"]  # nothing to explore among one


def test_a_slow_provider_that_recovered_is_measured_again_and_wins_back_its_place() -> None:
    clock = FakeClock()
    usual, backup = Candidate("usual", "p1"), Candidate("backup", "p2")
    router = HealthAwareRouter(
        [usual, backup], clock=clock, explore=0.2, stale_after=120.0, rng=random.Random(7)
    )
    router.record(usual, Outcome.success(8.0))  # an incident: usual is slow
    router.record(backup, Outcome.success(1.0))
    latency = {usual.label: 0.4, backup.label: 1.0}  # then usual recovers
    firsts: list[tuple[str, bool]] = []
    for _ in range(200):
        clock.advance(1.0)
        decision = router.candidates()
        firsts.append((decision[0].label, decision.explored is not None))
        router.record(decision[0], Outcome.success(latency[decision[0].label]))
    assert firsts[0] == ("p2/backup", False)  # usual ranked last after its incident
    explored_usual = [n for n, (label, explored) in enumerate(firsts) if explored]
    assert firsts[explored_usual[0]][0] == "p1/usual"  # measured again by exploration
    ranked_first = [label for label, explored in firsts[100:] if not explored]
    assert set(ranked_first) == {"p1/usual"}  # and back in first place on its merits
    assert router.stats()[0].latency_seconds < 1.0  # type: ignore[operator]


# ---- nothing healthy -------------------------------------------------------------------


def test_when_nothing_is_healthy_the_error_names_every_candidate_and_why() -> None:
    clock = FakeClock()
    opened = breaker(clock, "down")
    trip(opened)
    busy = limiter(clock, requests_per_minute=1)
    busy.acquire().settle()
    router = HealthAwareRouter(
        [Candidate("a", breaker=opened), Candidate("b", limiter=busy), Candidate("c")],
        clock=clock,
        max_wait=1.0,
    )
    with pytest.raises(NoHealthyProviderError) as caught:
        router.candidates(RouteRequest(exclude={"c"}))
    error = caught.value
    assert isinstance(error, TechrevatiError)
    assert str(error) == (
        "no healthy provider among 3 candidates: a: breaker 'down' open, retry in 30.000s; "
        "b: rate limiter (requests limit) would wait 60.000s, more than the 1.000s allowed; "
        "c: excluded by the request"
    )
    assert [r[:2] for r in error.reasons] == [
        ("a", "breaker_open"),
        ("b", "rate_limited"),
        ("c", "excluded"),
    ]
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.reasons, copy.skipped) == (str(error), error.reasons, ())


def test_least_bad_falls_back_to_the_one_available_soonest() -> None:
    clock = FakeClock()
    busy = limiter(clock, requests_per_minute=1)
    busy.acquire().settle()  # free again at 1060
    clock.advance(40.0)
    opened = breaker(clock, "down")
    trip(opened)  # open until 1070
    router = HealthAwareRouter(
        [Candidate("a", breaker=opened), Candidate("b", limiter=busy)],
        clock=clock,
        max_wait=1.0,
        if_none_healthy="least_bad",
    )
    decision = router.candidates()
    assert decision.least_bad
    assert labels(decision) == ["b"]  # 20 s of limiter wait beats 30 s of open breaker
    (entry,) = decision.ranked
    assert (entry.wait, entry.max_wait) == (20.0, 20.0)  # the wait to allow the limiter
    assert entry.note.startswith("least bad: rate limiter (requests limit) would wait 20.000s")
    assert skipped(decision) == {"a": SkipReason.BREAKER_OPEN}
    clock.advance(20.0)
    assert not router.candidates().least_bad
    with pytest.raises(NoHealthyProviderError, match="excluded"):
        router.candidates(RouteRequest(exclude={"a", "b"}))  # nothing left to fall back to


def test_least_bad_on_an_open_breaker_allows_the_usual_wait() -> None:
    clock = FakeClock()
    opened = breaker(clock, "down")
    trip(opened)
    router = HealthAwareRouter(
        [Candidate("a", breaker=opened)], clock=clock, max_wait=3.0, if_none_healthy="least_bad"
    )
    (entry,) = router.candidates().ranked
    assert (entry.wait, entry.max_wait) == (None, 3.0)
    assert entry.note == "least bad: breaker 'down' open, retry in 30.000s"


# ---- explanations ----------------------------------------------------------------------


def test_a_router_explains_what_it_has_seen_without_routing() -> None:
    clock = FakeClock()
    a, b = Candidate("a"), Candidate("b")
    router = HealthAwareRouter([a, b], clock=clock, rng=NeverDraws())
    router.record(a, Outcome.success(0.25, "0.002"))
    router.record(b, Outcome.failure("rate_limit"))
    assert router.explain() == (
        "health-aware, by latency:\n"
        "  a: 0.250s per success, $0.002 per success, 1 succeeded, 0 failed\n"
        "  b: unmeasured, 0 succeeded, 1 failed"
    )
    assert repr(router) == "HealthAwareRouter([a, b])"
    assert repr(router.candidates(RouteRequest(exclude={"b"}))) == (
        "RouteDecision('health-aware, by latency', [a], skipped=1)"
    )
    assert router.members == (a, b)
    assert (router.prefer, router.explore) == ("latency", 0.05)


# ---- invariants ------------------------------------------------------------------------

_STATES = ("closed", "open", "forced", "half_open", "probes_taken", "none")


def _make_breaker(clock: FakeClock, name: str, state: str) -> CircuitBreaker | None:
    if state == "none":
        return None
    guard = CircuitBreaker(name, 1, 30.0 if state == "open" else 0.0, clock=clock)
    if state == "forced":
        guard.force_open()
    elif state in ("half_open", "probes_taken"):
        trip(guard)  # recovery 0: half-open at once
        if state == "probes_taken":
            guard.try_acquire()
    elif state == "open":
        trip(guard)
    return guard


@settings(max_examples=examples(60))
@given(
    states=st.lists(st.sampled_from(_STATES), min_size=1, max_size=6),
    latencies=st.lists(st.none() | st.floats(0, 10, allow_nan=False), min_size=6, max_size=6),
    excluded=st.sets(st.integers(0, 5), max_size=2),
    seed=st.integers(0, 1000),
    explore=st.sampled_from([0.0, 0.5]),
)
def test_a_route_never_puts_a_rejecting_breaker_in_and_ranks_closed_before_half_open(
    states: list[str],
    latencies: list[float | None],
    excluded: set[int],
    seed: int,
    explore: float,
) -> None:
    clock = FakeClock()
    cs = [
        Candidate(f"m{i}", breaker=_make_breaker(clock, f"m{i}", s)) for i, s in enumerate(states)
    ]
    router = HealthAwareRouter(cs, clock=clock, explore=explore, rng=random.Random(seed))
    for candidate, latency in zip(cs, latencies, strict=False):
        if latency is not None:
            router.record(candidate, Outcome.success(latency))
    rejections = [c.breaker.metrics().rejections for c in cs if c.breaker is not None]
    exclude = {f"m{i}" for i in excluded}
    admitting = [
        c.label
        for c, state in zip(cs, states, strict=True)
        if state in ("closed", "half_open", "none") and c.label not in exclude
    ]
    if not admitting:
        with pytest.raises(NoHealthyProviderError) as caught:
            router.candidates(RouteRequest(exclude=exclude))
        assert sorted(r[0] for r in caught.value.reasons) == sorted(c.label for c in cs)
        assert {r[0] for r in caught.value.reasons if r[1] == "excluded"} == exclude & {
            c.label for c in cs
        }
        return
    decision = router.candidates(RouteRequest(exclude=exclude))
    assert [c.breaker.metrics().rejections for c in cs if c.breaker is not None] == rejections
    kept = set(labels(decision))
    left = {s.candidate.label for s in decision.skipped}
    assert kept.isdisjoint(left)
    assert kept | left == {c.label for c in cs}  # every candidate placed or skipped, once
    state_of = {f"m{i}": s for i, s in enumerate(states)}
    for label in kept:
        assert label not in exclude
        assert state_of[label] in ("closed", "half_open", "none")  # never a rejecting breaker
    assert state_of[decision[0].label] not in ("open", "forced", "probes_taken")
    order = labels(decision)
    rest = order[1:] if decision.explored is not None else order
    kinds = ["half" if state_of[label] == "half_open" else "closed" for label in rest]
    assert kinds == sorted(kinds, key=lambda k: k == "half")  # closed ones before half-open ones
    for kind in ("closed", "half"):
        group = [e for e in decision.ranked if e.candidate.label in rest]
        group = [
            e for e in group if (state_of[e.candidate.label] == "half_open") == (kind == "half")
        ]
        keys = [(e.score is None, e.score or 0.0) for e in group]
        assert keys == sorted(keys)  # measured best first, unmeasured after


# ---- threads ---------------------------------------------------------------------------


def test_records_and_routes_from_many_threads_count_exactly() -> None:
    clock = FakeClock()
    cs = [Candidate(f"m{i}", breaker=CircuitBreaker(f"m{i}", clock=clock)) for i in range(4)]
    router = HealthAwareRouter(cs, prefer="cost", clock=clock, explore=0.1, rng=random.Random(3))
    threads_n, rounds = 8, 400
    start = threading.Barrier(threads_n, timeout=WAIT)
    routed = [0] * threads_n

    def worker(n: int) -> None:
        start.wait()
        candidate = cs[n % len(cs)]
        for i in range(rounds):
            decision = router.candidates()
            routed[n] += len(decision) == len(cs)
            if i % 2:
                router.record(candidate, Outcome.failure("provider_failure", 0.5, "0.001"))
            else:
                router.record(candidate, Outcome.success(0.25, f"0.00{n % len(cs) + 1}"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert routed == [rounds] * threads_n
    per = threads_n // len(cs) * rounds // 2  # successes (and failures) per candidate
    for index, stats in enumerate(router.stats()):
        assert (stats.successes, stats.failures) == (per, per)
        assert stats.cost_usd_total == per * Decimal("0.001") + per * Decimal(f"0.00{index + 1}")
    final = router.candidates()
    order = labels(final)[1:] if final.explored is not None else labels(final)
    averages = {s.candidate.label: s.cost_usd for s in router.stats()}
    assert order == sorted(order, key=lambda label: averages[label])  # type: ignore[arg-type,return-value]


# ---- edges -----------------------------------------------------------------------------


def test_a_call_exactly_the_size_of_a_limit_fits() -> None:
    clock = FakeClock()
    exact = limiter(clock, tokens_per_minute=100, input_tokens_per_minute=60)
    router = HealthAwareRouter([Candidate("a", limiter=exact)], clock=clock)
    decision = router.candidates(RouteRequest(UsageSnapshot(input_tokens=60, output_tokens=40)))
    assert labels(decision) == ["a"]
    assert decision.ranked[0].wait == 0.0


def test_every_failed_attempt_since_the_last_success_is_charged_to_the_next_only() -> None:
    clock = FakeClock()
    a = Candidate("a")
    router = HealthAwareRouter([a], prefer="cost", clock=clock, smoothing=1.0)
    router.record(a, Outcome.failure("llm_timeout", 2.0, "0.25"))
    router.record(a, Outcome.failure("llm_timeout", 3.0, "0.5"))
    router.record(a, Outcome.success(1.0, "0.125"))
    stats = router.stats()[0]
    assert (stats.latency_seconds, stats.cost_usd) == (6.0, Decimal("0.875"))
    router.record(a, Outcome.success(1.0, "0.125"))  # nothing failed since: only its own
    stats = router.stats()[0]
    assert (stats.latency_seconds, stats.cost_usd) == (1.0, Decimal("0.125"))


def test_a_draw_on_a_weight_boundary_belongs_to_the_next_candidate() -> None:
    cs = [Candidate("a", weight=5), Candidate("z", weight=0), Candidate("b", weight=5)]
    router = WeightedRouter(cs, rng=Stratified([0.5, 0.0, 0.5]))
    assert labels(router.candidates())[0] == "b"  # 0.5 * 10 = 5.0: the start of b's share
    assert labels(router.candidates())[0] == "a"
    assert labels(router.candidates(RouteRequest(exclude={"z"})))[0] == "b"  # the same, drawn
    # among the candidates left


def test_the_first_candidate_moves_down_when_it_gets_worse() -> None:
    clock = FakeClock()
    a, b, c = Candidate("a"), Candidate("b"), Candidate("c")
    router = HealthAwareRouter([a, b, c], clock=clock, smoothing=1.0, explore=0)
    for candidate, seconds in ((a, 1.0), (b, 2.0), (c, 3.0)):
        router.record(candidate, Outcome.success(seconds))
    assert labels(router.candidates()) == ["a", "b", "c"]
    router.record(a, Outcome.success(2.5))
    assert labels(router.candidates()) == ["b", "a", "c"]
    router.record(c, Outcome.success(0.5))
    assert labels(router.candidates()) == ["c", "b", "a"]


def test_a_candidate_whose_cost_average_went_stale_ranks_with_the_unmeasured() -> None:
    clock = FakeClock()
    a, b = Candidate("a"), Candidate("b")
    router = HealthAwareRouter([a, b], prefer="cost", clock=clock, stale_after=10.0, explore=0)
    router.record(a, Outcome.success(1.0, "0.001"))
    router.record(b, Outcome.success(1.0, "0.002"))
    assert labels(router.candidates()) == ["a", "b"]
    clock.advance(11.0)
    router.record(a, Outcome.success(1.0))  # stale, and unpriced this time: no cost known
    assert router.stats()[0].cost_usd is None
    assert labels(router.candidates()) == ["b", "a"]


def test_each_token_limit_counts_on_its_own_in_the_wait_read() -> None:
    clock = FakeClock()
    split = limiter(clock, input_tokens_per_minute=100, output_tokens_per_minute=100)
    split.acquire(input_tokens=90, output_tokens=90).settle()
    router = HealthAwareRouter([Candidate("a", limiter=split)], clock=clock, max_wait=math.inf)
    for wanted in (UsageSnapshot(input_tokens=20), UsageSnapshot(output_tokens=20)):
        (entry,) = router.candidates(RouteRequest(wanted)).ranked
        assert entry.wait == 60.0
    (entry,) = router.candidates(RouteRequest(UsageSnapshot(10, 10))).ranked
    assert entry.wait == 0.0


def test_an_average_of_whole_dollars_shows_no_trailing_zeros() -> None:
    a = Candidate("a")
    router = HealthAwareRouter([a], prefer="cost")
    router.record(a, Outcome.success(1.0, "2"))
    assert str(router.stats()[0].cost_usd) == "2"
    assert router.candidates().to_dict()["ranked"][0]["score"] == "2"  # type: ignore[index]


def test_a_cost_finer_than_a_femto_dollar_is_refused_not_rounded() -> None:
    with pytest.raises(InvalidValueError, match="more precision than 1e-15 USD"):
        Outcome.success(1.0, "0.0000000000000001")
    assert Outcome.success(1.0, "0.000000000000001").cost_femto_usd == 1


# ---- the shared tier -------------------------------------------------------------------


def test_a_breaker_opened_by_another_worker_is_routed_around(redis_server: RedisServer) -> None:
    from techrevati.runtime.redis_store import RedisStore

    client = redis_server.client()
    try:
        store = RedisStore(client, prefix="routing-test")
        theirs = CircuitBreaker("openai", 1, 30.0, store=store)  # another worker's object
        mine = CircuitBreaker("openai", 1, 30.0, store=store)
        quota = RateLimiter(requests_per_minute=1, name="openai-rpm", store=store)
        quota.acquire().settle()
        primary = Candidate("gpt-4o", "openai", breaker=mine, limiter=quota)
        router = HealthAwareRouter([primary, Candidate("claude")], max_wait=1.0, explore=0)
        first = router.candidates()
        assert labels(first) == ["openai/gpt-4o", "claude"]
        assert first.ranked[0].wait is None  # a shared limiter's wait cannot be read
        trip(theirs)
        decision = router.candidates()
        assert labels(decision) == ["claude"]
        (skip,) = decision.skipped
        assert skip.reason is SkipReason.BREAKER_OPEN
        assert 29.0 < skip.seconds <= 30.0
    finally:
        client.close()


def test_an_unchanged_route_hands_out_the_same_decision() -> None:
    clock = FakeClock()
    a, b = Candidate("a", breaker=breaker(clock, "a")), Candidate("b")
    router = HealthAwareRouter([a, b], clock=clock, explore=0)
    first = router.candidates()
    assert router.candidates() is first
    router.record(b, Outcome.success(1.0))
    moved = router.candidates()
    assert moved is not first
    assert labels(moved) == ["b", "a"]
    assert router.candidates() is moved
    narrowed = router.candidates(RouteRequest(exclude={"b"}))
    assert labels(narrowed) == ["a"]
    assert router.candidates() is moved  # a route that skipped something is not kept
    trip(a.breaker)  # type: ignore[arg-type]
    assert labels(router.candidates()) == ["b"]
    a.breaker.reset()  # type: ignore[union-attr]
    assert router.candidates() is moved  # the same candidates, states and scores again
    patient = router.candidates(RouteRequest(max_wait=3.0))
    assert [e.max_wait for e in patient.ranked] == [3.0, 3.0]
    again = router.candidates()
    assert again is not moved
    assert [e.max_wait for e in again.ranked] == [None, None]
    explorer = HealthAwareRouter([a, b], clock=clock, explore=1.0, rng=random.Random(0))
    explorer.record(a, Outcome.success(1.0))
    assert explorer.candidates().explored == b
    assert explorer.candidates() is not explorer.candidates()  # an exploring route is never kept


def test_a_cost_may_come_as_femto_dollars_straight_from_a_turn_cost() -> None:
    quick = Outcome.success(0.5, cost_femto_usd=1_234_500_000_000)
    assert quick.cost_usd == Decimal("0.0012345")
    assert quick == Outcome.success(0.5, "0.0012345")
    assert Outcome.failure("rate_limit", cost_femto_usd=7).cost_usd == Decimal("7E-15")
    with pytest.raises(InvalidValueError, match="give cost_usd or cost_femto_usd, not both"):
        Outcome.success(0.5, "0.1", cost_femto_usd=1)
    with pytest.raises(InvalidValueError, match="cost_femto_usd must be an int >= 0, got -1"):
        Outcome(True, 0.5, -1)
    with pytest.raises(InvalidValueError, match=r"cost_femto_usd must be an int >= 0, got 1\.5"):
        Outcome(True, 0.5, 1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="got True"):
        Outcome(True, 0.5, True)


@pytest.mark.parametrize(
    ("limits", "wanted"),
    [
        ({"tokens_per_minute": 100}, UsageSnapshot(input_tokens=60, output_tokens=40)),
        ({"input_tokens_per_minute": 100}, UsageSnapshot(input_tokens=100)),
        ({"output_tokens_per_minute": 100}, UsageSnapshot(output_tokens=100)),
    ],
)
def test_a_call_the_size_of_a_limit_waits_for_the_window_and_one_larger_never_fits(
    limits: dict[str, int], wanted: UsageSnapshot
) -> None:
    clock = FakeClock()
    window = limiter(clock, **limits)
    window.acquire(input_tokens=1, output_tokens=1).settle()
    clock.advance(20.0)
    router = HealthAwareRouter([Candidate("a", limiter=window), Candidate("b")], clock=clock)
    decision = router.candidates(RouteRequest(wanted, max_wait=30.0))
    assert [(s.reason, s.seconds) for s in decision.skipped] == [(SkipReason.RATE_LIMITED, 40.0)]
    larger = UsageSnapshot(
        input_tokens=wanted.input_tokens + (wanted.input_tokens > 0),
        output_tokens=wanted.output_tokens + (wanted.input_tokens == 0),
    )
    decision = router.candidates(RouteRequest(larger, max_wait=math.inf))
    assert [(s.reason, s.seconds) for s in decision.skipped] == [(SkipReason.TOO_LARGE, math.inf)]


@settings(max_examples=examples(30))
@given(count=st.integers(1, 8), rounds=st.integers(1, 6), excluded=st.sets(st.integers(0, 7)))
def test_round_robin_puts_each_candidate_first_exactly_once_per_cycle(
    count: int, rounds: int, excluded: set[int]
) -> None:
    names = [f"m{i}" for i in range(count)]
    router = RoundRobinRouter([Candidate(name) for name in names])
    orders = [labels(router.candidates()) for _ in range(count * rounds)]
    assert Counter(order[0] for order in orders) == dict.fromkeys(names, rounds)
    for start, order in enumerate(orders):
        shift = start % count
        assert order == names[shift:] + names[:shift]  # a rotation of the given order
    exclude = {f"m{i}" for i in excluded}
    if set(names) <= exclude:
        with pytest.raises(NoHealthyProviderError):
            router.candidates(RouteRequest(exclude=exclude))
    else:
        kept = labels(router.candidates(RouteRequest(exclude=exclude)))
        assert kept == [name for name in names if name not in exclude]  # the next is rotation 0
