"""The shared tier across a fleet: processes, kill -9, a server that stops, Redis Cluster.

Each worker of a fleet here is a child process (``spawn``) that builds its own
client from the server's unix socket, its own :class:`RedisStore` with the
same prefix, and its own primitives with the same names; the children are
the ``*_child`` functions at the top of this module. Every child says it is
ready, and the test then sets one event that lets all of them (and each
child's threads) start together, so their calls run at the same time.
Server time moves with ``store._time_offset_ms``; every child gets the
offset it must use. Nothing here sleeps: the test waits on the children's
queue (with a deadline, and failing at once on a child that crashed) and
on the server's own events.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import redis
import redis.cluster

from techrevati.runtime import (
    Budget,
    CircuitBreaker,
    CircuitState,
    ModelPricing,
    UsageSnapshot,
    register_pricing,
)
from techrevati.runtime.circuit_breaker import Permit
from techrevati.runtime.errors import (
    BudgetExceededError,
    RateLimitedError,
    StoreUnavailableError,
    TechrevatiError,
)
from techrevati.runtime.rate_limit import RateLease, RateLimiter
from techrevati.runtime.redis_store import RedisStore

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.context import SpawnProcess
    from multiprocessing.queues import Queue
    from multiprocessing.synchronize import Event

    from tests.redis_servers import RedisCluster3, RedisServer

PREFIX = "fleet"
PROCESSES = 4
THREADS = 8
WAIT = 30.0
"""Seconds the test waits for a child (its start, its answer, its exit) before failing."""

ESTIMATE = UsageSnapshot(input_tokens=1000, output_tokens=1000)
"""$0.018 on model ``m`` ($3/$15 per million): 100 of them make $1.80 exactly."""

Spec = dict[str, Any]
T = TypeVar("T")


# -- the children (top level: spawn imports them by name) -------------------------------------


def _client(spec: Spec) -> redis.Redis:
    return redis.Redis(
        unix_socket_path=spec["socket"], socket_timeout=WAIT, socket_connect_timeout=WAIT
    )


def _store(spec: Spec, client: redis.Redis) -> RedisStore:
    store = RedisStore(client, prefix=PREFIX, lease_ttl=spec.get("lease_ttl", 120.0))
    store._time_offset_ms = spec.get("offset_ms", 0)
    return store


def _price() -> None:
    register_pricing("m", ModelPricing(input_per_million="3", output_per_million="15"))


def _serve(
    spec: Spec,
    start: Event,
    results: Queue[tuple[str, int, Any]],
    setup: Callable[[Spec], Callable[[int], dict[str, Any]]],
) -> None:
    """Run ``setup(spec)``'s worker on ``spec["threads"]`` threads at once; put what each did."""
    try:
        work = setup(spec)
        go = threading.Event()
        done: list[dict[str, Any]] = []
        errors: list[str] = []

        def thread(index: int) -> None:
            go.wait()
            try:
                done.append(work(index))
            except BaseException:
                errors.append(traceback.format_exc())

        threads = [
            threading.Thread(target=thread, args=(index,), daemon=True)
            for index in range(spec["threads"])
        ]
        for each in threads:
            each.start()
        _ready(start, results)
        go.set()
        for each in threads:
            each.join(WAIT)
        if errors or len(done) != len(threads):
            raise AssertionError("a thread failed:\n" + "\n".join(errors))
        results.put(("ok", os.getpid(), done))
    except BaseException:
        results.put(("error", os.getpid(), traceback.format_exc()))


def _ready(start: Event, results: Queue[tuple[str, int, Any]]) -> None:
    """Say this child is ready, and wait until the test lets every child start at once."""
    results.put(("ready", os.getpid(), None))
    if not start.wait(WAIT):
        raise AssertionError(f"not told to start within {WAIT} s")


def _budget_work(spec: Spec) -> Callable[[int], dict[str, Any]]:
    _price()
    store = _store(spec, _client(spec))
    by_requests = Budget(max_requests=100, max_usd="50", store=store, name="by-requests")
    by_usd = Budget(max_usd="1.8", store=store, name="by-usd")
    child = spec["index"]

    def work(index: int) -> dict[str, Any]:
        admitted = femto = tokens = 0
        kind_a = kind_b = ""
        while True:  # reserve -> settle until refused
            try:
                held = by_requests.reserve("m")
            except BudgetExceededError as refused:
                kind_a = refused.limit_kind
                break
            usage = UsageSnapshot(input_tokens=100 + index, output_tokens=10 + child)
            cost = held.settle(usage)
            admitted += 1
            femto += cost.cost_femto_usd
            tokens += usage.input_tokens + usage.output_tokens
        usd_admitted = usd_femto = 0
        while True:
            try:
                held = by_usd.reserve("m", ESTIMATE)
            except BudgetExceededError as refused:
                kind_b = refused.limit_kind
                break
            usd_femto += held.settle(ESTIMATE).cost_femto_usd
            usd_admitted += 1
        return {
            "admitted": admitted,
            "femto": femto,
            "tokens": tokens,
            "refused": kind_a,
            "usd_admitted": usd_admitted,
            "usd_femto": usd_femto,
            "usd_refused": kind_b,
            "available": store.available,
        }

    return work


def budget_child(spec: Spec, start: Event, results: Queue[tuple[str, int, Any]]) -> None:
    """Every thread: reserve -> settle on two shared budgets until each refuses."""
    _serve(spec, start, results, _budget_work)


def _inside(client: redis.Redis, limiter: RateLimiter, seen: dict[str, int]) -> None:
    """What an admitted call does while its lease is open: count itself on a separate key."""
    now = int(client.incr(inside_key(limiter)))
    seen["max"] = max(seen["max"], now)
    seen["max_open"] = max(seen["max_open"], limiter.usage()["open"])


def inside_key(limiter: RateLimiter) -> str:
    """The key, outside the limiter's own, that counts the calls open right now."""
    return f"count:{limiter.name}:inside"


def _limiter(spec: Spec, store: RedisStore) -> RateLimiter:
    return RateLimiter(
        requests_per_minute=spec["rpm"],
        max_concurrent=spec["concurrent"],
        store=store,
        name="openai",
    )


def _limiter_work(spec: Spec) -> Callable[[int], dict[str, Any]]:
    client = _client(spec)
    store = _store(spec, client)
    limiter = _limiter(spec, store)
    counter = inside_key(limiter)

    def work(index: int) -> dict[str, Any]:
        seen = {"admitted": 0, "tokens": 0, "max": 0, "max_open": 0, "attempts": 0}
        for attempt in range(spec["attempts"]):
            seen["attempts"] = attempt + 1
            lease = limiter.try_acquire()
            if lease is None:
                if limiter.usage()["requests"] >= spec["rpm"]:
                    break  # the window is full and the server clock stands still
                continue
            _inside(client, limiter, seen)
            client.decr(counter)  # before the lease ends: the counter never runs ahead
            lease.settle(input_tokens=index + 1, output_tokens=spec["index"] + 1)
            seen["admitted"] += 1
            seen["tokens"] += index + 1 + spec["index"] + 1
        seen["available"] = store.available  # no step fell back to a local decision
        return seen

    return work


def limiter_child(spec: Spec, start: Event, results: Queue[tuple[str, int, Any]]) -> None:
    """Every thread: try_acquire up to ``attempts`` times, counting itself inside each lease."""
    _serve(spec, start, results, _limiter_work)


def limiter_async_child(spec: Spec, start: Event, results: Queue[tuple[str, int, Any]]) -> None:
    """The asyncio worker: ``spec["threads"]`` tasks on one loop share the same limiter."""
    try:
        client = _client(spec)
        store = _store(spec, client)
        limiter = _limiter(spec, store)
        counter = inside_key(limiter)

        async def task(index: int) -> dict[str, Any]:
            seen = {"admitted": 0, "tokens": 0, "max": 0, "max_open": 0, "attempts": 0}
            for attempt in range(spec["attempts"]):
                seen["attempts"] = attempt + 1
                try:
                    lease = await limiter.aacquire(max_wait=0)
                except RateLimitedError as refused:
                    if refused.limit_kind == "requests":
                        break  # the window is full
                    await asyncio.sleep(0)  # a concurrency refusal: let the others run
                    continue
                _inside(client, limiter, seen)
                await asyncio.sleep(0)  # hold the lease while the other tasks run
                client.decr(counter)
                lease.settle(input_tokens=index + 1, output_tokens=spec["index"] + 1)
                seen["admitted"] += 1
                seen["tokens"] += index + 1 + spec["index"] + 1
            seen["available"] = store.available
            return seen

        async def main() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(task(i) for i in range(spec["threads"]))))

        _ready(start, results)
        results.put(("ok", os.getpid(), asyncio.run(main())))
    except BaseException:
        results.put(("error", os.getpid(), traceback.format_exc()))


def _breaker(spec: Spec, store: RedisStore) -> CircuitBreaker:
    return CircuitBreaker(
        "openai",
        failure_threshold=1,
        recovery_timeout_seconds=spec["recovery"],
        half_open_max_calls=spec["probes"],
        store=store,
    )


def _breaker_work(spec: Spec) -> Callable[[int], dict[str, Any]]:
    store = _store(spec, _client(spec))
    breaker = _breaker(spec, store)

    def work(index: int) -> dict[str, Any]:
        permits = [breaker.try_acquire() for _ in range(spec["attempts"])]
        granted = sum(permit is not None for permit in permits)  # kept unsettled
        return {"granted": granted, "available": store.available}

    return work


def breaker_child(spec: Spec, start: Event, results: Queue[tuple[str, int, Any]]) -> None:
    """Every thread: try_acquire on the shared half-open breaker, never settling a permit."""
    _serve(spec, start, results, _breaker_work)


def holding_child(spec: Spec, results: Queue[tuple[str, int, Any]], hang: Connection) -> None:
    """Take a budget hold, a limiter lease and a half-open probe, say so, then wait to be killed."""
    try:
        store = _store(spec, _client(spec))
        hold = Budget(max_requests=1, store=store, name="held").reserve("m")
        lease = RateLimiter(max_concurrent=1, store=store, name="held").try_acquire()
        probe = _breaker(spec, store).try_acquire()
        taken = (hold.state, lease is not None, probe is not None)
        results.put(("holding", os.getpid(), taken))
    except BaseException:
        results.put(("error", os.getpid(), traceback.format_exc()))
        return
    # The test SIGKILLs this process here. A pipe, not an Event: setting an Event whose
    # waiter was killed blocks for good. The test closing its end ends the wait, too.
    hang.poll(WAIT)


# -- the test's side of a fleet ----------------------------------------------------------------


def _get(
    results: Queue[tuple[str, int, Any]], processes: list[SpawnProcess]
) -> tuple[str, int, Any]:
    """The next answer of a child; fail at once if a child died without one (a crash)."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return results.get(timeout=0.1)  # a wait on the queue, checking for dead children
        except queue.Empty:
            crashed = [p for p in processes if p.exitcode not in (None, 0)]
            if crashed:
                raise AssertionError(f"a child crashed: {crashed}") from None
            if time.monotonic() > deadline:
                raise AssertionError(f"no child answered within {WAIT} s") from None


def _answers(
    results: Queue[tuple[str, int, Any]], processes: list[SpawnProcess], status: str
) -> dict[int | None, Any]:
    """One answer of ``status`` from every child, by pid; a child's error fails the test."""
    answers: dict[int | None, Any] = {}
    while len(answers) < len(processes):
        got, pid, data = _get(results, processes)
        assert got == status, data
        answers[pid] = data
    return answers


def run_fleet(children: list[tuple[Callable[..., None], Spec]]) -> list[list[dict[str, Any]]]:
    """Start every child, let them all go at once; return what each thread of each child did."""
    ctx = multiprocessing.get_context("spawn")
    results: Queue[tuple[str, int, Any]] = ctx.Queue()
    start = ctx.Event()
    processes: list[SpawnProcess] = [
        ctx.Process(target=target, args=(spec, start, results), daemon=True)
        for target, spec in children
    ]
    for process in processes:
        process.start()
    try:
        _answers(results, processes, "ready")
        start.set()
        answers = _answers(results, processes, "ok")
        for process in processes:
            process.join(WAIT)
            assert process.exitcode == 0, f"{process.name} exited with {process.exitcode}"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(WAIT)
    return [answers[process.pid] for process in processes]  # in the children's order


def every_thread(children: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [thread for child in children for thread in child]


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    connection = redis_server.client(socket_timeout=WAIT)
    yield connection
    connection.close()


def parent_store(client: redis.Redis, **settings: Any) -> RedisStore:
    return RedisStore(client, prefix=PREFIX, **settings)


# -- 1. many processes, exact totals -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_fleet_of_processes_spends_a_shared_budget_exactly_to_its_limits(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    spec = {"socket": redis_server.socket_path, "threads": THREADS}
    threads = every_thread(
        run_fleet([(budget_child, {**spec, "index": i}) for i in range(PROCESSES)])
    )
    assert len(threads) == PROCESSES * THREADS
    assert all(thread["available"] for thread in threads)  # every step was the server's

    store = parent_store(client)
    by_requests = Budget(max_requests=100, max_usd="50", store=store, name="by-requests")
    admitted = sum(thread["admitted"] for thread in threads)
    assert admitted == 100  # no overshoot, no undershoot
    assert {thread["refused"] for thread in threads} == {"requests"}
    summary = by_requests.summary()
    assert summary["requests"] == 100
    assert summary["reserved_requests"] == 0
    assert summary["reserved_tokens"] == 0
    assert summary["spent_tokens"] == sum(thread["tokens"] for thread in threads)
    femto = sum(thread["femto"] for thread in threads)
    assert by_requests.spent_usd == Decimal(femto).scaleb(-15)
    assert Decimal(str(summary["spent_usd"])) == Decimal(femto).scaleb(-15)

    by_usd = Budget(max_usd="1.8", store=store, name="by-usd")
    assert sum(thread["usd_admitted"] for thread in threads) == 100  # $0.018 each
    assert {thread["usd_refused"] for thread in threads} == {"usd"}
    assert sum(thread["usd_femto"] for thread in threads) == 18 * 10**14
    assert by_usd.spent_usd == Decimal("1.8")
    assert by_usd.reserved_usd == 0
    assert by_usd.requests == 100
    assert store.available


@pytest.mark.timeout(60)
def test_a_fleet_of_processes_and_an_event_loop_share_one_rate_window(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    rpm, concurrent = 120, 3
    spec = {
        "socket": redis_server.socket_path,
        "threads": THREADS,
        "rpm": rpm,
        "concurrent": concurrent,
        "attempts": 2000,
    }
    children: list[tuple[Callable[..., None], Spec]] = [
        (limiter_child, {**spec, "index": i}) for i in range(PROCESSES)
    ]
    children.append((limiter_async_child, {**spec, "index": PROCESSES}))
    per_child = run_fleet(children)
    calls = every_thread(per_child)
    assert len(calls) == (PROCESSES + 1) * THREADS
    assert all(call["available"] for call in calls)  # none fell back to a local window

    assert sum(call["admitted"] for call in calls) == rpm  # exactly one window's worth
    assert all(call["attempts"] < spec["attempts"] for call in calls)  # each saw the end
    # no more than `concurrent` open at any moment, and the fleet did reach it
    assert max(call["max"] for call in calls) == concurrent
    assert max(call["max_open"] for call in calls) == concurrent
    # the event loop's tasks got their turns too
    assert sum(call["admitted"] for call in per_child[-1]) > 0

    store = parent_store(client)
    limiter = _limiter(spec, store)
    usage = limiter.usage()
    assert usage["requests"] == rpm
    assert usage["open"] == 0
    assert usage["tokens"] == sum(call["tokens"] for call in calls)
    assert client.get(inside_key(limiter)) == b"0"
    assert limiter.try_acquire() is None  # the window is full until the server clock moves
    assert store.available


# -- 2. half-open probes, fleet-wide -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_half_open_breaker_grants_exactly_its_probes_across_the_fleet(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    recovery, probes, attempts = 30.0, 3, 4
    store = parent_store(client)
    spec: Spec = {"recovery": recovery, "probes": probes, "attempts": attempts}
    breaker = _breaker(spec, store)
    permit = breaker.try_acquire()
    assert permit is not None
    permit.record_failure()
    assert breaker.state is CircuitState.OPEN

    offset = int(recovery * 1000) + 1_000  # past the recovery timeout, for every worker
    spec = {
        **spec,
        "socket": redis_server.socket_path,
        "threads": THREADS,
        "offset_ms": offset,
    }
    threads = every_thread(
        run_fleet([(breaker_child, {**spec, "index": i}) for i in range(PROCESSES)])
    )
    assert all(thread["available"] for thread in threads)  # no local breaker decided
    assert sum(thread["granted"] for thread in threads) == probes

    store._time_offset_ms = offset
    metrics = breaker.metrics()
    assert metrics.state is CircuitState.HALF_OPEN
    assert metrics.half_open_in_flight == probes
    assert metrics.rejections == PROCESSES * THREADS * attempts - probes
    assert breaker.try_acquire() is None
    assert store.available


# -- 3. kill -9 while holding ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_worker_killed_while_holding_frees_its_hold_lease_and_probe_when_they_end(
    redis_server: RedisServer, client: redis.Redis
) -> None:
    lease_ttl, recovery = 30.0, 10.0
    store = parent_store(client, lease_ttl=lease_ttl)
    spec: Spec = {"recovery": recovery, "probes": 1, "lease_ttl": lease_ttl}
    breaker = _breaker(spec, store)
    permit = breaker.try_acquire()
    assert permit is not None
    permit.record_failure()
    offset = int(recovery * 1000) + 1_000
    spec = {**spec, "socket": redis_server.socket_path, "offset_ms": offset}

    ctx = multiprocessing.get_context("spawn")
    results: Queue[tuple[str, int, Any]] = ctx.Queue()
    hang, keep = ctx.Pipe(duplex=False)
    child = ctx.Process(target=holding_child, args=(spec, results, hang), daemon=True)
    child.start()
    hang.close()
    try:
        status, pid, taken = _get(results, [child])
        assert status == "holding", taken
        assert taken == ("active", True, True)
        assert pid == child.pid
        os.kill(pid, signal.SIGKILL)
        child.join(WAIT)
        assert child.exitcode == -signal.SIGKILL
    finally:
        keep.close()
        if child.is_alive():
            child.kill()
            child.join(WAIT)

    store._time_offset_ms = offset
    budget = Budget(max_requests=1, store=store, name="held")
    limiter = RateLimiter(max_concurrent=1, store=store, name="held")
    assert budget.reserved_requests == 1  # the dead worker's hold still counts
    with pytest.raises(BudgetExceededError):
        budget.reserve("m")
    assert limiter.usage()["open"] == 1
    assert limiter.try_acquire() is None
    assert breaker.metrics().half_open_in_flight == 1
    assert breaker.try_acquire() is None

    store._time_offset_ms = offset + int(lease_ttl * 1000) + 1_000  # past every lease
    assert budget.reserved_requests == 0
    assert limiter.usage()["open"] == 0
    assert breaker.metrics().half_open_in_flight == 0
    assert budget.reserve("m").state == "active"
    assert limiter.try_acquire() is not None
    probe = breaker.try_acquire()
    assert probe is not None
    probe.record_success()
    assert breaker.state is CircuitState.CLOSED
    assert store.available


# -- 4. the server stops mid-run ---------------------------------------------------------------


class Outcomes:
    """Run calls, keeping the type of every exception they raise (re-raising none)."""

    def __init__(self) -> None:
        self.raised: list[type[BaseException]] = []

    def call(self, fn: Callable[[], T]) -> T | Exception:
        try:
            return fn()
        except Exception as exc:
            self.raised.append(type(exc))
            return exc


@pytest.mark.parametrize("stop", ["kill", "shutdown_nosave"])
def test_a_stopped_server_refuses_the_budget_and_leaves_the_rest_deciding_locally(
    fresh_redis_server: RedisServer, stop: str
) -> None:
    from tests.conftest import FakeClock

    clock = FakeClock()
    events: list[tuple[str, dict[str, object]]] = []
    store = RedisStore(
        fresh_redis_server.client(),
        prefix=PREFIX,
        fleet_size=4,
        retry_interval=1.0,
        clock=clock,
        listeners=[lambda event, data: events.append((event, data))],
    )
    budget = Budget(max_requests=10, store=store, name="p42")
    limiter = RateLimiter(requests_per_minute=8, store=store, name="openai", clock=clock)
    breaker = CircuitBreaker(
        "openai", failure_threshold=3, recovery_timeout_seconds=30, store=store, clock=clock
    )
    budget.reserve("m").settle(UsageSnapshot(input_tokens=1))
    first = limiter.try_acquire()
    assert first is not None
    first.settle()
    assert breaker.call(lambda: "shared") == "shared"
    pending = budget.reserve("m")  # settled while the server is down
    assert budget.requests == 1
    assert limiter.usage()["requests"] == 1
    assert events == []

    getattr(fresh_redis_server, stop)()
    outcomes = Outcomes()

    refused = outcomes.call(lambda: budget.reserve("m"))
    assert isinstance(refused, StoreUnavailableError)
    assert isinstance(refused.__cause__, redis.exceptions.RedisError)
    assert [event for event, _data in events] == ["store.unavailable"]
    assert events[0][1]["primitive"] == "budget 'p42'"
    assert isinstance(outcomes.call(budget.check_before), StoreUnavailableError)  # backing off
    outcomes.call(lambda: pending.settle(UsageSnapshot(input_tokens=7)))  # kept for the server
    assert pending.state == "settled"
    # still refused: a settlement waiting to be sent must not make it decide locally
    assert isinstance(outcomes.call(lambda: budget.reserve("m")), StoreUnavailableError)

    # fail-open: the limiter keeps its share, 8 // 4 = 2, in this process
    local = [outcomes.call(limiter.try_acquire) for _ in range(3)]
    assert [lease is not None for lease in local] == [True, True, False]
    assert limiter.usage()["requests"] == 2  # the local window's figures
    # fail-open: the breaker decides with a local breaker of the same settings
    assert outcomes.call(lambda: breaker.call(lambda: "local")) == "local"
    for _ in range(3):
        permit = outcomes.call(breaker.try_acquire)
        assert isinstance(permit, Permit)
        permit.record_failure()
    assert breaker.state is CircuitState.OPEN
    assert outcomes.call(breaker.try_acquire) is None
    assert [event for event, _data in events] == ["store.unavailable"]  # heard once

    clock.advance(1.0)  # past retry_interval: the store tries the (still dead) server again
    assert isinstance(outcomes.call(lambda: budget.reserve("m")), StoreUnavailableError)
    assert [event for event, _data in events] == ["store.unavailable"]

    fresh_redis_server.restart()  # empty: no persistence, so the fleet's figures start over
    assert isinstance(outcomes.call(lambda: budget.reserve("m")), StoreUnavailableError)
    clock.advance(1.0)
    held = outcomes.call(lambda: budget.reserve("m"))
    assert not isinstance(held, BaseException)
    assert [event for event, _data in events] == ["store.unavailable", "store.recovered"]
    assert store.available
    summary = budget.summary()
    assert summary["reserved_requests"] == 1
    # what was spent before the restart went with the server; what was settled while it
    # was down was kept and sent once it answered
    assert summary["requests"] == 1
    assert summary["spent_tokens"] == 7

    for lease in local:  # admitted by the local window: they end there
        if isinstance(lease, RateLease):
            lease.settle()
    assert limiter.usage()["requests"] == 0  # the (empty) server decides again
    admitted = [limiter.try_acquire() for _ in range(9)]
    assert [lease is not None for lease in admitted] == [True] * 8 + [False]  # the full limit
    assert breaker.metrics().state is CircuitState.CLOSED  # the server's, not the local one

    # nothing redis-py raised reached the caller; only the library's own errors did
    assert outcomes.raised
    assert all(issubclass(kind, TechrevatiError) for kind in outcomes.raised)
    assert not any(issubclass(kind, redis.exceptions.RedisError) for kind in outcomes.raised)


def test_a_dead_workers_hold_ends_even_after_the_budget_sat_idle(
    fresh_redis_server: RedisServer,
) -> None:
    # Found here: the holds' keys used to PEXPIRE (2 x lease_ttl) while the totals kept
    # counting the hold, so a budget left idle that long stranded it for good.
    client = fresh_redis_server.client(socket_timeout=WAIT)
    store = parent_store(client, lease_ttl=0.05)
    budget = Budget(max_requests=1, store=store, name="idle")
    budget.reserve("m")  # and the worker dies holding it: it never settles nor releases
    tag = f"{{{PREFIX}:budget:idle}}"
    assert client.pttl(f"{tag}:holds") == -1  # lives as long as the totals that count it
    assert client.pttl(f"{tag}:amounts") == -1
    store._time_offset_ms = 10 * 60_000  # idle far longer than any lease
    assert budget.reserved_requests == 0
    assert budget.reserve("m").state == "active"
    assert client.exists(f"{tag}:holds") == 1  # the new hold; the dead one was swept


# -- 5. Redis Cluster --------------------------------------------------------------------------


def _keys_by_node(client: redis.cluster.RedisCluster) -> dict[bytes, str]:
    """Every key in the cluster, with the primary that holds it."""
    where: dict[bytes, str] = {}
    for node in client.get_primaries():  # type: ignore[no-untyped-call]
        for key in client.keys(target_nodes=node):
            where[key if isinstance(key, bytes) else key.encode()] = node.name
    return where


def test_on_redis_cluster_each_primitive_keeps_its_keys_in_one_slot(
    redis_cluster: RedisCluster3,
) -> None:
    client = redis_cluster.client()
    store = RedisStore(client, prefix=PREFIX)

    budget = Budget(max_requests=2, store=store, name="p42")
    budget.reserve("m").settle(UsageSnapshot(input_tokens=3))
    open_hold = budget.reserve("m")  # holds and amounts exist while it is open
    with pytest.raises(BudgetExceededError):
        budget.reserve("m")
    assert budget.summary()["requests"] == 1
    assert budget.reserved_requests == 1

    breaker = CircuitBreaker(
        "openai", failure_threshold=1, recovery_timeout_seconds=10, store=store
    )
    permit = breaker.try_acquire()
    assert permit is not None
    permit.record_failure()
    assert breaker.state is CircuitState.OPEN
    assert breaker.try_acquire() is None
    store._time_offset_ms = 11_000
    probe = breaker.try_acquire()  # a lease in the leases key while it is open
    assert probe is not None
    assert breaker.try_acquire() is None

    limiter = RateLimiter(requests_per_minute=2, store=store, name="openai")
    first = limiter.try_acquire()
    assert first is not None
    first.settle(input_tokens=4, output_tokens=5)
    open_call = limiter.try_acquire()
    assert open_call is not None
    assert limiter.try_acquire() is None
    assert limiter.usage() == {
        "requests": 2,
        "tokens": 9,
        "input_tokens": 4,
        "output_tokens": 5,
        "open": 1,
    }

    others = [Budget(max_requests=5, store=store, name=f"team-{n}") for n in range(6)]
    for other in others:
        other.charge("m", UsageSnapshot(output_tokens=1))
        assert other.requests == 1

    where = _keys_by_node(client)
    primitives: dict[str, list[bytes]] = {}
    for key in where:
        tag = key[key.index(b"{") + 1 : key.index(b"}")].decode()
        primitives.setdefault(tag, []).append(key)
    expected = {
        f"{PREFIX}:budget:p42": {"totals", "holds", "amounts"},
        f"{PREFIX}:breaker:openai": {"state", "leases"},
        f"{PREFIX}:limiter:openai": {"log", "totals", "open"},
    }
    teams = {f"{PREFIX}:budget:{other.name}" for other in others}
    assert set(primitives) == set(expected) | teams  # one hash tag per primitive
    for tag, parts in expected.items():
        assert {key.decode().rsplit(":", 1)[1] for key in primitives[tag]} == parts
    for tag, keys in primitives.items():
        assert len({client.keyslot(key) for key in keys}) == 1, tag  # type: ignore[no-untyped-call]
        assert len({where[key] for key in keys}) == 1, tag
    nodes = {where[keys[0]] for keys in primitives.values()}
    assert len(nodes) >= 2  # different names spread over the cluster

    probe.record_success()
    assert breaker.metrics().state is CircuitState.CLOSED
    open_hold.release()
    open_call.release()
    assert budget.reserved_requests == 0
    assert limiter.usage()["open"] == 0
    assert store.available
    client.close()
