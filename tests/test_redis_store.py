"""The shared tier against a real redis-server the tests start: store, budget, breaker, limiter.

Time on the server moves with ``store._time_offset_ms`` (added to ``TIME``
inside every script), so windows, leases and recovery timeouts pass without
sleeping. The fleet (processes, kill -9, cluster) is in test_redis_fleet.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
import redis

from techrevati.runtime import Budget, CircuitBreaker, CircuitState, UsageSnapshot
from techrevati.runtime.circuit_breaker import SlidingWindow
from techrevati.runtime.errors import (
    BudgetExceededError,
    InvalidValueError,
    RateLimitedError,
    ReservationError,
    StoreUnavailableError,
)
from techrevati.runtime.orchestrator import Orchestrator
from techrevati.runtime.rate_limit import RateLimiter
from techrevati.runtime.redis_store import RedisStore
from tests.conftest import CollectingSink, FakeClock, price_model

if TYPE_CHECKING:
    from tests.redis_servers import RedisServer

MINUTE_MS = 60_000


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis_server.client()
    yield connection
    connection.close()


@pytest.fixture
def store(client: redis.Redis) -> Iterator[RedisStore]:
    shared = RedisStore(client, prefix="t")
    yield shared
    # a script error would fall back to local decisions silently: none may have happened
    assert shared.available


def other_worker(store: RedisStore) -> RedisStore:
    """A second worker's store: the same server and prefix, its own connection and clock."""
    twin = RedisStore(store._client, prefix=store.prefix, fleet_size=store.fleet_size)
    twin._time_offset_ms = store._time_offset_ms
    return twin


# -- the store -------------------------------------------------------------------------------


def test_a_client_without_socket_timeout_is_refused_naming_the_fix(
    redis_server: RedisServer,
) -> None:
    bare = redis.Redis(unix_socket_path=redis_server.socket_path, socket_timeout=None)
    with pytest.raises(InvalidValueError, match="socket_timeout"):
        RedisStore(bare)


def test_a_non_client_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="evalsha"):
        RedisStore(object())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prefix", ""),
        ("prefix", "a{b"),
        ("prefix", "a b"),
        ("prefix", 5),
        ("budget_policy", "open"),
        ("fleet_size", 0),
        ("fleet_size", True),
        ("lease_ttl", 0),
        ("lease_ttl", 0.0001),
        ("retry_interval", -1),
    ],
)
def test_bad_store_settings_are_refused_naming_the_value(
    client: redis.Redis, field: str, value: object
) -> None:
    kwargs: dict[str, Any] = {field: value}
    with pytest.raises(InvalidValueError, match=field):
        RedisStore(client, **kwargs)


def test_primitive_names_that_would_break_the_hash_tag_are_refused(store: RedisStore) -> None:
    with pytest.raises(InvalidValueError, match="braces"):
        Budget(max_requests=1, store=store, name="a}b")
    with pytest.raises(InvalidValueError, match="name"):
        Budget(max_requests=1, store=store)  # a shared budget needs its key
    with pytest.raises(InvalidValueError, match="braces"):
        RateLimiter(requests_per_minute=1, store=store, name="x{")
    window = SlidingWindow(size=10)
    with pytest.raises(InvalidValueError, match="window"):
        CircuitBreaker("dep", window=window, store=store)
    with pytest.raises(InvalidValueError, match="store"):
        RateLimiter(requests_per_minute=1, store="redis://", name="x")  # type: ignore[arg-type]


def test_every_key_of_a_primitive_shares_one_hash_tag(store: RedisStore) -> None:
    keys = store.keys("budget", "p42", "totals", "holds")
    assert keys == ["{t:budget:p42}:totals", "{t:budget:p42}:holds"]


def test_a_flushed_script_cache_is_reloaded_on_noscript(
    store: RedisStore, client: redis.Redis
) -> None:
    limiter = RateLimiter(requests_per_minute=5, store=store, name="lim")
    assert limiter.try_acquire() is not None
    client.script_flush()
    assert limiter.try_acquire() is not None  # EVALSHA said NOSCRIPT: run whole, cached again
    assert limiter.usage()["requests"] == 2


# -- the rate limiter ------------------------------------------------------------------------


def test_two_workers_share_one_request_window(store: RedisStore) -> None:
    mine = RateLimiter(requests_per_minute=3, store=store, name="openai")
    theirs = RateLimiter(requests_per_minute=3, store=other_worker(store), name="openai")
    assert mine.try_acquire() is not None
    assert theirs.try_acquire() is not None
    assert mine.try_acquire() is not None
    assert theirs.try_acquire() is None  # the fleet's third admission used the last request
    assert theirs.usage()["requests"] == 3


def test_the_window_slides_on_the_server_clock(store: RedisStore) -> None:
    limiter = RateLimiter(requests_per_minute=2, store=store, name="lim")
    assert limiter.try_acquire() is not None
    store._time_offset_ms = 30_000
    assert limiter.try_acquire() is not None
    assert limiter.try_acquire() is None
    store._time_offset_ms = MINUTE_MS - 1_000  # the first admission still counts
    assert limiter.try_acquire() is None
    store._time_offset_ms = MINUTE_MS + 1  # ... and now it has left the window
    assert limiter.try_acquire() is not None
    assert limiter.try_acquire() is None


def test_a_refusal_says_which_limit_and_how_long(store: RedisStore) -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        tokens_per_minute=100, store=store, name="lim", clock=clock, sleep=clock.advance
    )
    assert limiter.try_acquire(input_tokens=60, output_tokens=20) is not None
    store._time_offset_ms = 20_000
    with pytest.raises(RateLimitedError) as caught:
        limiter.acquire(input_tokens=30, max_wait=5)
    assert caught.value.limit_kind == "tokens"
    assert caught.value.retry_after == pytest.approx(40.0, abs=0.01)
    assert clock.slept == []  # refused at once: the wait is longer than max_wait


def test_settle_replaces_the_estimate_and_release_gives_it_back(store: RedisStore) -> None:
    limiter = RateLimiter(tokens_per_minute=100, store=store, name="lim")
    first = limiter.try_acquire(input_tokens=50)
    second = limiter.try_acquire(input_tokens=40)
    assert first is not None
    assert second is not None
    first.settle(input_tokens=10, output_tokens=5)
    assert limiter.usage()["tokens"] == 55
    assert second.release() is True
    assert second.release() is False
    assert limiter.usage() == {
        "requests": 1,
        "tokens": 15,
        "input_tokens": 10,
        "output_tokens": 5,
        "open": 0,
    }
    with pytest.raises(ReservationError):
        first.settle()


def test_concurrency_slots_are_fleet_wide_and_a_dead_holders_lease_ends(
    store: RedisStore,
) -> None:
    mine = RateLimiter(max_concurrent=1, store=store, name="lim")
    theirs = RateLimiter(max_concurrent=1, store=other_worker(store), name="lim")
    held = mine.try_acquire()
    assert held is not None
    assert theirs.try_acquire() is None
    # the holder dies without ending its call: after the lease its slot is free again
    later = other_worker(store)
    later._time_offset_ms = int(store.lease_ttl * 1000) + 1
    assert RateLimiter(max_concurrent=1, store=later, name="lim").try_acquire() is not None


def test_a_waiter_for_a_shared_slot_polls_with_the_injected_sleep(store: RedisStore) -> None:
    clock = FakeClock()
    naps: list[float] = []
    theirs = RateLimiter(max_concurrent=1, store=other_worker(store), name="lim")
    held = theirs.try_acquire()
    assert held is not None

    def nap(seconds: float) -> None:
        naps.append(seconds)
        clock.advance(seconds)
        if len(naps) == 3:
            held.release()

    limiter = RateLimiter(max_concurrent=1, store=store, name="lim", clock=clock, sleep=nap)
    lease = limiter.acquire(max_wait=10)
    assert naps == [0.05, 0.05, 0.05]
    assert lease.waited == pytest.approx(0.15)


def test_async_acquire_polls_for_a_shared_slot(store: RedisStore) -> None:
    clock = FakeClock()
    theirs = RateLimiter(max_concurrent=1, store=other_worker(store), name="lim")
    held = theirs.try_acquire()
    assert held is not None
    naps: list[float] = []

    async def nap(seconds: float) -> None:
        naps.append(seconds)
        clock.advance(seconds)
        if len(naps) == 2:
            held.release()

    limiter = RateLimiter(max_concurrent=1, store=store, name="lim", clock=clock, async_sleep=nap)
    lease = asyncio.run(limiter.aacquire(max_wait=1))
    assert naps == [0.05, 0.05]
    assert lease.state == "active"
    with pytest.raises(RateLimitedError, match="concurrent"):
        asyncio.run(limiter.aacquire(max_wait=0))


def test_provider_headers_tighten_the_whole_fleet(store: RedisStore) -> None:
    mine = RateLimiter(requests_per_minute=100, store=store, name="lim")
    theirs = RateLimiter(requests_per_minute=100, store=other_worker(store), name="lim")
    assert (
        mine.observe({"x-ratelimit-remaining-requests": "1", "x-ratelimit-reset-requests": "6m0s"})
        == 1
    )
    assert theirs.try_acquire() is not None
    assert theirs.try_acquire() is None  # the server's word holds fleet-wide ...
    later = other_worker(store)
    later._time_offset_ms = 6 * MINUTE_MS + 1
    assert RateLimiter(requests_per_minute=100, store=later, name="lim").try_acquire()  # ... until


def test_a_shared_limiter_throttles_an_orchestrator_turn(store: RedisStore) -> None:
    limiter = RateLimiter(requests_per_minute=1, store=store, name="lim", max_wait=0)
    orch = Orchestrator("writer", "draft", rate_limiter=limiter)
    with orch.session() as session:
        assert session.run_turn(lambda: "ok", model="m")[0] == "ok"
        with pytest.raises(RateLimitedError):
            session.run_turn(lambda: "never", model="m")
    assert limiter.usage()["requests"] == 1


# -- the budget ------------------------------------------------------------------------------


@pytest.fixture
def priced() -> Iterator[None]:
    from techrevati.runtime.pricing import unregister_pricing

    price_model("big", inp="1234567.891234567", out="0.000000001")
    yield
    unregister_pricing("big")


def test_two_workers_never_overshoot_one_budget(store: RedisStore) -> None:
    mine = Budget(max_requests=3, store=store, name="p42")
    theirs = Budget(max_requests=3, store=other_worker(store), name="p42")
    held = [mine.reserve("m"), theirs.reserve("m"), mine.reserve("m")]
    with pytest.raises(BudgetExceededError, match="requests") as caught:
        theirs.reserve("m")
    assert caught.value.limit_kind == "requests"
    assert caught.value.reserved == 3
    held[0].release()
    assert theirs.reserve("m").state == "active"
    assert mine.reserved_requests == 3


@pytest.mark.usefixtures("priced")
def test_money_is_exact_past_what_a_double_holds(store: RedisStore) -> None:
    # $1,234,567.891234567 per million input tokens: 10**6 tokens cost 1234567891234567000
    # femto-dollars, far past 2**53; Lua doubles would round it.
    budget = Budget(max_usd="100000000", store=store, name="big")
    usage = UsageSnapshot(input_tokens=1_000_003, output_tokens=7)
    for _ in range(3):
        budget.reserve("big", usage).settle(usage)
    expected = 3 * (Decimal("1234567.891234567") * 1_000_003 / 10**6 + Decimal("7e-15"))
    assert budget.spent_usd == expected
    assert other_worker_budget(store, "big").spent_usd == expected


def other_worker_budget(store: RedisStore, name: str) -> Budget:
    return Budget(max_usd="100000000", store=other_worker(store), name=name)


@pytest.mark.usefixtures("priced")
def test_the_dollar_cap_refuses_exactly_at_the_limit(store: RedisStore) -> None:
    usage = UsageSnapshot(input_tokens=10**6)  # $1,234,567.891234567 each
    short = Budget(max_usd="2469135.782469133", store=store, name="cap")
    short.reserve("big", usage).settle(usage)
    assert short.remaining_usd == Decimal("1234567.891234566")
    with pytest.raises(BudgetExceededError, match="usd"):
        short.reserve("big", usage)  # one femto-dollar short of the second call
    exact = Budget(max_usd="2469135.782469134", store=store, name="cap2")
    exact.charge("big", usage)
    assert exact.reserve("big", usage).state == "active"  # spent + this call == the cap


def test_a_dead_workers_hold_ends_with_its_lease(store: RedisStore) -> None:
    dead = Budget(max_requests=1, store=store, name="p")
    dead.reserve("m")  # never settled: the worker is gone
    twin = other_worker(store)
    alive = Budget(max_requests=1, store=twin, name="p")
    with pytest.raises(BudgetExceededError):
        alive.reserve("m")
    twin._time_offset_ms = int(store.lease_ttl * 1000) + 1
    assert alive.reserved_requests == 0
    assert alive.reserve("m").state == "active"


def test_settle_after_the_lease_ended_still_counts_the_spend(store: RedisStore) -> None:
    budget = Budget(max_requests=5, store=store, name="p")
    slow = budget.reserve("m")
    store._time_offset_ms = int(store.lease_ttl * 1000) + 1
    slow.settle(UsageSnapshot(input_tokens=3, output_tokens=4))
    assert budget.requests == 1
    assert budget.spent_tokens == 7
    assert budget.reserved_requests == 0
    with pytest.raises(ReservationError):
        slow.settle(UsageSnapshot())


def test_a_shared_budget_guards_orchestrator_turns(store: RedisStore) -> None:
    budget = Budget(max_requests=2, store=store, name="orch")
    orch = Orchestrator("writer", "draft", budget=budget)
    usage = UsageSnapshot(input_tokens=1, output_tokens=1)
    with orch.session() as session:
        for _ in range(2):
            session.run_turn(lambda: "ok", model="m", usage=usage)
        with pytest.raises(BudgetExceededError):
            session.run_turn(lambda: "never", model="m", usage=usage)
    twin = Budget(max_requests=2, store=other_worker(store), name="orch")
    assert (twin.requests, twin.spent_tokens, twin.reserved_requests) == (2, 4, 0)


# -- the breaker -----------------------------------------------------------------------------


def boom() -> None:
    raise ConnectionError("provider down")


def trip(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(ConnectionError):
            breaker.call(boom)


def test_failures_from_two_workers_open_one_breaker(store: RedisStore) -> None:
    mine = CircuitBreaker("openai", failure_threshold=3, store=store)
    theirs = CircuitBreaker("openai", failure_threshold=3, store=other_worker(store))
    trip(mine, 2)
    assert theirs.state is CircuitState.CLOSED
    trip(theirs, 1)
    assert mine.state is CircuitState.OPEN
    called: list[int] = []
    with pytest.raises(Exception, match="openai") as caught:
        mine.call(lambda: called.append(1))
    assert type(caught.value).__name__ == "CircuitOpenError"
    assert called == []
    metrics = theirs.metrics()
    assert (metrics.failures, metrics.rejections, metrics.consecutive_failures) == (3, 1, 3)


def test_a_success_resets_the_fleets_streak(store: RedisStore) -> None:
    breaker = CircuitBreaker("dep", failure_threshold=2, store=store)
    trip(breaker, 1)
    assert breaker.call(lambda: 5) == 5
    trip(breaker, 1)
    assert breaker.state is CircuitState.CLOSED


def test_half_open_admits_exactly_the_probes_fleet_wide(store: RedisStore) -> None:
    settings: dict[str, Any] = {
        "failure_threshold": 1,
        "recovery_timeout_seconds": 10,
        "half_open_max_calls": 2,
        "success_threshold": 2,
    }
    mine = CircuitBreaker("dep", store=store, **settings)
    trip(mine, 1)
    store._time_offset_ms = 10_000
    twin = other_worker(store)
    theirs = CircuitBreaker("dep", store=twin, **settings)
    first, second = mine.try_acquire(), theirs.try_acquire()
    assert first is not None
    assert second is not None
    assert mine.try_acquire() is None
    assert theirs.try_acquire() is None
    assert theirs.metrics().half_open_in_flight == 2
    first.record_success()
    assert mine.state.value == "half_open"  # one success of the two needed
    second.record_success()
    assert mine.state.value == "closed"


def test_a_probe_failure_reopens_and_a_dead_probes_lease_ends(store: RedisStore) -> None:
    breaker = CircuitBreaker("dep", failure_threshold=1, recovery_timeout_seconds=1, store=store)
    trip(breaker, 1)
    store._time_offset_ms = 1_000
    probe = breaker.try_acquire()
    assert probe is not None  # ... and its worker dies holding it
    assert breaker.try_acquire() is None
    store._time_offset_ms = 1_000 + int(store.lease_ttl * 1000) + 1
    second = breaker.try_acquire()
    assert second is not None
    second.record_failure(ConnectionError("still down"))
    assert breaker.state is CircuitState.OPEN


def test_listeners_hear_the_changes_this_worker_sees(store: RedisStore) -> None:
    seen: list[tuple[str, str]] = []
    breaker = CircuitBreaker(
        "dep",
        failure_threshold=1,
        recovery_timeout_seconds=1,
        store=store,
        listeners=[lambda _b, old, new: seen.append((old.value, new.value))],
    )
    trip(breaker, 1)
    store._time_offset_ms = 1_000
    assert breaker.call(lambda: 1) == 1
    assert seen == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_reset_and_force_open_apply_to_the_fleet(store: RedisStore) -> None:
    mine = CircuitBreaker("dep", store=store)
    theirs = CircuitBreaker("dep", store=other_worker(store))
    mine.force_open()
    assert theirs.state is CircuitState.FORCED_OPEN
    assert theirs.try_acquire() is None
    theirs.reset()
    assert mine.state is CircuitState.CLOSED


# -- Redis unavailable -----------------------------------------------------------------------


@pytest.fixture
def dead_store(fresh_redis_server: RedisServer) -> tuple[RedisStore, list[str]]:
    events: list[str] = []
    clock = FakeClock()
    store = RedisStore(
        fresh_redis_server.client(),
        prefix="t",
        fleet_size=4,
        clock=clock,
        retry_interval=5,
        listeners=[lambda event, _data: events.append(event)],
    )
    return store, events


def test_fail_closed_budget_refuses_with_a_typed_error_and_recovers(
    dead_store: tuple[RedisStore, list[str]], fresh_redis_server: RedisServer
) -> None:
    store, events = dead_store
    budget = Budget(max_requests=10, store=store, name="p")
    budget.reserve("m").settle(UsageSnapshot())
    fresh_redis_server.kill()
    with pytest.raises(StoreUnavailableError, match="budget 'p'") as caught:
        budget.reserve("m")
    assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    with pytest.raises(StoreUnavailableError, match="backing off"):
        budget.check_before()
    assert events == ["store.unavailable"]
    fresh_redis_server.restart()
    store._clock.advance(5)  # type: ignore[attr-defined]
    assert budget.reserve("m").state == "active"
    assert events == ["store.unavailable", "store.recovered"]
    assert store.available


def test_fail_open_limiter_and_breaker_decide_locally_with_their_share(
    dead_store: tuple[RedisStore, list[str]], fresh_redis_server: RedisServer
) -> None:
    store, events = dead_store
    limiter = RateLimiter(requests_per_minute=8, store=store, name="lim")
    breaker = CircuitBreaker("dep", failure_threshold=4, store=store)
    fresh_redis_server.shutdown_nosave()
    admitted = [limiter.try_acquire() for _ in range(3)]
    assert [lease is not None for lease in admitted] == [True, True, False]  # 8 / 4 workers
    assert breaker.call(lambda: "local") == "local"
    trip(breaker, 4)  # the local stand-in keeps the same threshold
    assert breaker.state is CircuitState.OPEN
    assert events == ["store.unavailable"]
    for lease in admitted:
        if lease is not None:
            lease.settle()  # ends on the local window that admitted it
    assert limiter.usage()["open"] == 0


def test_spend_recorded_while_unavailable_reaches_the_server_later(
    fresh_redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    store = RedisStore(fresh_redis_server.client(), prefix="t", clock=clock, retry_interval=1)
    budget = Budget(max_requests=10, store=store, name="p")
    held = budget.reserve("m")
    fresh_redis_server.kill()
    held.settle(UsageSnapshot(input_tokens=5))  # the server is gone: kept in order
    budget.charge("m", UsageSnapshot(output_tokens=2))
    fresh_redis_server.restart()  # an empty server (no persistence in the tests)
    clock.advance(1)
    assert budget.requests == 2
    assert budget.spent_tokens == 7


def test_a_raising_store_listener_is_logged_not_raised(
    fresh_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(_event: str, _data: dict[str, object]) -> None:
        raise RuntimeError("listener broke")

    store = RedisStore(fresh_redis_server.client(), prefix="t", listeners=[bad])
    limiter = RateLimiter(requests_per_minute=4, store=store, name="lim")
    fresh_redis_server.kill()
    assert limiter.try_acquire() is not None
    assert "listener" in caplog.text
    assert not store.available


def test_a_session_emits_store_events_for_its_primitives_stores(
    fresh_redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    store = RedisStore(fresh_redis_server.client(), prefix="t", clock=clock, retry_interval=1)
    limiter = RateLimiter(requests_per_minute=100, store=store, name="lim")
    budget = Budget(max_requests=100, store=store, name="b")
    sink = CollectingSink()
    orch = Orchestrator("writer", "draft", rate_limiter=limiter, budget=budget, sinks=[sink])
    with orch.session() as session:
        session.run_turn(lambda: "ok", model="m", usage=UsageSnapshot())
        fresh_redis_server.kill()
        with pytest.raises(StoreUnavailableError):  # the budget fails closed
            session.run_turn(lambda: "never", model="m", usage=UsageSnapshot())
        fresh_redis_server.restart()
        clock.advance(1)
        session.run_turn(lambda: "ok", model="m", usage=UsageSnapshot())
    names = [event.name for event in sink.events]
    assert names.count("store.unavailable") == 1  # one store, heard once, not per primitive
    assert names.count("store.recovered") == 1
    unavailable = next(e for e in sink.events if e.name == "store.unavailable")
    assert unavailable.data["store"] == "t"
    assert "ConnectionError" in str(unavailable.data["reason"])
    assert store._listeners == []  # the session's listener left with it


def test_fail_closed_still_refuses_while_spend_is_kept_for_the_server(
    fresh_redis_server: RedisServer,
) -> None:
    clock = FakeClock()
    store = RedisStore(fresh_redis_server.client(), prefix="t", clock=clock, retry_interval=1)
    budget = Budget(max_requests=10, store=store, name="p")
    held = budget.reserve("m")
    fresh_redis_server.kill()
    held.settle(UsageSnapshot(input_tokens=1))  # kept
    clock.advance(1)  # past the back-off: the next step tries Redis (and the backlog) again
    with pytest.raises(StoreUnavailableError):
        budget.reserve("m")  # never decided by a local stand-in: the policy is fail-closed


def test_kept_spend_past_the_cap_is_folded_not_dropped(
    fresh_redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from techrevati.runtime import _budget_redis

    monkeypatch.setattr(_budget_redis, "_MAX_BACKLOG", 3)
    clock = FakeClock()
    store = RedisStore(fresh_redis_server.client(), prefix="t", clock=clock, retry_interval=1)
    budget = Budget(max_requests=100, store=store, name="p")
    fresh_redis_server.kill()
    for tokens in range(1, 8):
        budget.charge("m", UsageSnapshot(input_tokens=tokens))
    assert len(budget._backlog) <= 3  # type: ignore[attr-defined]
    fresh_redis_server.restart()
    clock.advance(1)
    assert (budget.requests, budget.spent_tokens) == (7, 28)


def test_threads_recording_while_the_backlog_drains_count_each_spend_once(
    fresh_redis_server: RedisServer,
) -> None:
    import threading

    clock = FakeClock()
    store = RedisStore(fresh_redis_server.client(), prefix="t", clock=clock, retry_interval=1)
    budget = Budget(store=store, name="p")
    fresh_redis_server.kill()
    for _ in range(50):
        budget.charge("m", UsageSnapshot(output_tokens=1))
    fresh_redis_server.restart()
    clock.advance(1)
    start = threading.Barrier(8)

    def charge() -> None:
        start.wait()
        for _ in range(100):
            budget.charge("m", UsageSnapshot(output_tokens=1))

    threads = [threading.Thread(target=charge) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (budget.requests, budget.spent_tokens) == (850, 850)


# -- an async client ---------------------------------------------------------------------------


@pytest.fixture
def async_store(redis_server: RedisServer) -> Iterator[RedisStore]:
    shared = RedisStore(redis_server.async_client(), prefix="t")
    yield shared
    assert shared.available
    shared.close()


def test_an_async_clients_store_serves_sync_and_async_callers(async_store: RedisStore) -> None:
    budget = Budget(max_requests=2, store=async_store, name="p")
    budget.reserve("m").settle(UsageSnapshot(input_tokens=2))  # sync: on the store's own loop

    async def main() -> None:
        held = await budget.areserve("m")  # async: awaited on the caller's loop
        with pytest.raises(BudgetExceededError):
            await budget.areserve("m")
        held.release()

    asyncio.run(main())
    assert (budget.requests, budget.spent_tokens, budget.reserved_requests) == (1, 2, 0)
    assert async_store.ping()


def test_arun_turn_awaits_every_shared_decision(async_store: RedisStore) -> None:
    budget = Budget(max_requests=3, store=async_store, name="p")
    limiter = RateLimiter(requests_per_minute=2, store=async_store, name="lim", max_wait=0)
    breaker = CircuitBreaker("dep", failure_threshold=1, store=async_store)
    orch = Orchestrator(
        "writer", "draft", budget=budget, rate_limiter=limiter, circuit_breaker=breaker
    )

    async def answer() -> str:
        return "ok"

    async def main() -> None:
        with orch.session() as session:
            result, _ = await session.arun_turn(answer, model="m", usage=UsageSnapshot())
            assert result == "ok"
            await session.arun_turn(answer, model="m", usage=UsageSnapshot())
            with pytest.raises(RateLimitedError):
                await session.arun_turn(answer, model="m", usage=UsageSnapshot())

    asyncio.run(main())
    assert (budget.requests, budget.reserved_requests) == (2, 0)  # the refused turn gave back
    assert breaker.metrics().successes == 2


def test_async_breaker_paths_admit_through_the_store(async_store: RedisStore) -> None:
    breaker = CircuitBreaker("dep", failure_threshold=1, store=async_store)

    async def fail() -> None:
        raise ConnectionError("down")

    async def main() -> None:
        with pytest.raises(ConnectionError):
            await breaker.acall(fail)
        with pytest.raises(Exception, match="dep") as caught:
            async with breaker:
                pass
        assert type(caught.value).__name__ == "CircuitOpenError"

    asyncio.run(main())
    assert breaker.state is CircuitState.OPEN


def test_an_async_store_falls_back_and_recovers(fresh_redis_server: RedisServer) -> None:
    clock = FakeClock()
    events: list[str] = []
    store = RedisStore(
        fresh_redis_server.async_client(),
        prefix="t",
        clock=clock,
        retry_interval=1,
        listeners=[lambda event, _data: events.append(event)],
    )
    limiter = RateLimiter(requests_per_minute=10, store=store, name="lim")
    fresh_redis_server.kill()

    async def admit() -> bool:
        return (await limiter.aacquire(max_wait=0)) is not None

    assert asyncio.run(admit())  # decided locally: fail-open
    fresh_redis_server.restart()
    clock.advance(1)
    assert asyncio.run(admit())
    assert events == ["store.unavailable", "store.recovered"]
    store.close()


class GatedClient:
    """A sync client whose script calls wait for ``gate`` (set by another task), at most 5 s."""

    def __init__(self, inner: redis.Redis) -> None:
        import threading

        self.inner = inner
        self.connection_pool = inner.connection_pool
        self.gate = threading.Event()
        self.waited_open = True

    def evalsha(self, *args: Any) -> Any:
        self.waited_open = self.waited_open and self.gate.wait(5)
        return self.inner.evalsha(*args)

    def eval(self, *args: Any) -> Any:
        return self.inner.eval(*args)


def test_async_decisions_leave_the_event_loop_running(client: redis.Redis) -> None:
    gated = GatedClient(client)
    store = RedisStore(gated, prefix="t")
    limiter = RateLimiter(requests_per_minute=10, store=store, name="lim")
    budget = Budget(max_requests=10, store=store, name="p")
    breaker = CircuitBreaker("dep", failure_threshold=3, store=store)

    async def open_the_gate() -> None:
        gated.gate.set()

    orch = Orchestrator("writer", "draft", budget=Budget(max_requests=5, store=store, name="o"))

    async def answer() -> str:
        return "ok"

    async def decide() -> None:
        # Each decision waits on the gate; only another task on this loop opens it, so a
        # decision that blocked the loop would wait the full 5 s and record that.
        session = orch.session().__enter__()
        for step in (
            limiter.aacquire,
            lambda: budget.areserve("m"),
            lambda: breaker.acall(open_the_gate),
            lambda: session.arun_turn(answer, model="m", usage=UsageSnapshot()),
        ):
            gated.gate.clear()
            opener = asyncio.ensure_future(open_the_gate())
            await step()
            await opener
        session.__exit__(None, None, None)

    asyncio.run(decide())
    assert gated.waited_open
