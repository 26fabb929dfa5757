"""RateLimiter: exact waits on a fake clock, the window bound against a brute-force model,
leases, validation, threads and tasks hammering one limiter."""

from __future__ import annotations

import asyncio
import math
import pickle
import threading
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime import (
    Budget,
    EventName,
    InvalidValueError,
    Orchestrator,
    RateLease,
    RateLimitedError,
    RateLimiter,
    ReservationError,
    TechrevatiError,
    UsageSnapshot,
)
from tests.conftest import FakeClock, examples


def limiter(clock: FakeClock, **limits: int) -> RateLimiter:
    return RateLimiter(clock=clock, sleep=clock.sleep, async_sleep=clock.asleep, **limits)  # type: ignore[arg-type]


def test_acquire_waits_exactly_until_the_oldest_request_leaves_the_window() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=2)
    first = rl.acquire()
    clock.advance(10)
    second = rl.acquire()
    assert clock.slept == []
    third = rl.acquire()
    assert clock.slept == [50.0]  # the first admission expires at 1060
    assert third.waited == 50.0
    assert first.waited == second.waited == 0.0
    assert rl.usage()["requests"] == 2


def test_token_wait_frees_just_enough_of_the_oldest_tokens() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=100)
    rl.acquire(input_tokens=40)
    clock.advance(5)
    rl.acquire(input_tokens=40, output_tokens=10)
    clock.advance(5)
    lease = rl.acquire(input_tokens=30)  # needs the first 40 gone (at 1060), not the second
    assert clock.slept == [50.0]
    assert lease.input_tokens == 30
    assert rl.usage() == {
        "requests": 2,
        "tokens": 80,
        "input_tokens": 70,
        "output_tokens": 10,
        "open": 3,
    }


def test_input_and_output_limits_count_separately() -> None:
    clock = FakeClock()
    rl = limiter(clock, input_tokens_per_minute=100, output_tokens_per_minute=10)
    rl.acquire(input_tokens=90, output_tokens=1)
    assert rl.try_acquire(input_tokens=10, output_tokens=9) is not None
    assert rl.try_acquire(input_tokens=0, output_tokens=1) is None  # output full
    assert rl.try_acquire(input_tokens=1) is None  # input full
    with pytest.raises(RateLimitedError) as info:
        rl.acquire(output_tokens=1, max_wait=0)
    assert info.value.limit_kind == "output_tokens"
    assert info.value.retry_after == 60.0


def test_refusal_names_the_limit_with_the_longest_wait() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=1, tokens_per_minute=10)
    rl.acquire(input_tokens=10)
    clock.advance(20)
    rl2 = rl.try_acquire()
    assert rl2 is None
    with pytest.raises(RateLimitedError) as info:
        rl.acquire(input_tokens=1, max_wait=39.5)
    assert info.value.retry_after == 40.0
    assert info.value.max_wait == 39.5
    assert clock.slept == []  # refused at once: no partial wait


def test_acquire_waits_when_the_wait_fits_max_wait_exactly() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=1)
    rl.acquire()
    clock.advance(15)
    lease = rl.acquire(max_wait=45)
    assert clock.slept == [45.0]
    assert lease.waited == 45.0


def test_default_max_wait_comes_from_the_limiter() -> None:
    clock = FakeClock()
    rl = RateLimiter(requests_per_minute=1, max_wait=10, clock=clock, sleep=clock.sleep)
    rl.acquire()
    with pytest.raises(RateLimitedError, match="max_wait=10s"):
        rl.acquire()
    assert rl.max_wait == 10.0


def test_rate_limited_error_is_a_timeout_and_pickles() -> None:
    error = RateLimitedError("tokens", 1.5, 0.0, name="gpt")
    assert isinstance(error, TechrevatiError)
    assert isinstance(error, TimeoutError)
    back = pickle.loads(pickle.dumps(error))
    assert (back.limit_kind, back.retry_after, back.max_wait, back.name) == (
        "tokens",
        1.5,
        0,
        "gpt",
    )
    assert str(back) == str(error)
    assert "rate limiter 'gpt': tokens limit reached; capacity in 1.500s" in str(error)


def test_settle_replaces_the_estimate_with_the_actual_tokens() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=100)
    lease = rl.acquire(UsageSnapshot(input_tokens=80))
    lease.settle(UsageSnapshot(input_tokens=30, output_tokens=5))
    assert lease.state == "settled"
    assert rl.usage()["tokens"] == 35
    assert rl.try_acquire(input_tokens=65) is not None
    with pytest.raises(ReservationError):
        lease.settle(input_tokens=1)
    assert lease.release() is False
    assert rl.usage()["tokens"] == 100


def test_settle_past_the_limit_counts_and_later_calls_wait_for_it() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=100)
    rl.acquire(input_tokens=10).settle(input_tokens=150)
    assert rl.usage()["tokens"] == 150
    clock.advance(1)
    rl.acquire(input_tokens=1)
    assert clock.slept == [59.0]


def test_settle_without_counts_keeps_the_estimate_and_frees_the_slot() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=100, max_concurrent=1)
    lease = rl.acquire(input_tokens=20)
    assert rl.try_acquire() is None
    lease.settle()
    assert rl.usage() == {
        "requests": 1,
        "tokens": 20,
        "input_tokens": 20,
        "output_tokens": 0,
        "open": 0,
    }
    assert rl.try_acquire() is not None


def test_release_gives_back_the_request_and_tokens_once() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=1, tokens_per_minute=50)
    lease = rl.acquire(input_tokens=50)
    assert lease.release() is True
    assert lease.state == "released"
    assert lease.release() is False
    assert rl.usage()["requests"] == rl.usage()["tokens"] == 0
    with pytest.raises(ReservationError, match="released"):
        lease.settle(input_tokens=1)
    with rl.acquire(input_tokens=50) as held:
        assert isinstance(held, RateLease)
    assert held.state == "released"


def test_settle_after_the_window_passed_changes_no_totals() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=100)
    lease = rl.acquire(input_tokens=100)
    clock.advance(60)
    lease.settle(input_tokens=90)
    assert rl.usage()["tokens"] == 0
    assert rl.try_acquire(input_tokens=100) is not None


def test_a_clock_that_steps_back_is_held_at_its_latest_time() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=1)
    clock.advance(59)
    rl.usage()
    clock.now -= 30  # a misbehaving clock: admitted at the held 1059, not at 1029
    rl.acquire()
    clock.now = 1029.0 + 60.0
    assert rl.try_acquire() is None
    clock.now = 1059.0 + 60.0
    assert rl.try_acquire() is not None


def test_concurrency_slot_refused_at_once_with_no_wait_left() -> None:
    clock = FakeClock()
    rl = limiter(clock, max_concurrent=2)
    a = rl.acquire()
    rl.acquire()
    assert rl.try_acquire() is None
    with pytest.raises(RateLimitedError) as info:
        rl.acquire(max_wait=0)
    assert info.value.limit_kind == "concurrent"
    assert info.value.retry_after is None
    assert "no concurrency slot freed" in str(info.value)
    a.release()
    assert rl.try_acquire() is not None


def test_a_thread_waiting_for_a_slot_is_woken_by_the_release() -> None:
    rl = RateLimiter(max_concurrent=1)
    held = rl.acquire()
    got: list[RateLease] = []
    waiter = threading.Thread(target=lambda: got.append(rl.acquire(max_wait=60)))
    waiter.start()
    while not rl._state._cond._waiters:  # type: ignore[attr-defined]
        threading.Event().wait(0.001)
    held.settle()
    waiter.join(10)
    assert not waiter.is_alive()
    assert len(got) == 1
    assert got[0].state == "active"


def test_a_task_waiting_for_a_slot_is_woken_by_the_release() -> None:
    asyncio.run(_a_task_waiting_for_a_slot_is_woken_by_the_release())


async def _a_task_waiting_for_a_slot_is_woken_by_the_release() -> None:
    rl = RateLimiter(max_concurrent=1)
    held = rl.acquire()
    waiting = asyncio.create_task(rl.aacquire(max_wait=60))
    for _ in range(10):
        await asyncio.sleep(0)
    assert not waiting.done()
    held.release()
    lease = await asyncio.wait_for(waiting, 10)
    assert lease.state == "active"
    assert rl._state._waiters == []  # type: ignore[attr-defined]


def test_aacquire_sleeps_exactly_on_the_injected_async_sleep() -> None:
    asyncio.run(_aacquire_sleeps_exactly_on_the_injected_async_sleep())


async def _aacquire_sleeps_exactly_on_the_injected_async_sleep() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=1)
    await rl.aacquire()
    clock.advance(20)
    lease = await rl.aacquire()
    assert clock.slept == [40.0]
    assert lease.waited == 40.0
    with pytest.raises(RateLimitedError):
        await rl.aacquire(max_wait=59)


def test_aacquire_gives_up_on_a_slot_after_max_wait() -> None:
    asyncio.run(_aacquire_gives_up_on_a_slot_after_max_wait())


async def _aacquire_gives_up_on_a_slot_after_max_wait() -> None:
    rl = RateLimiter(max_concurrent=1)
    rl.acquire()
    with pytest.raises(RateLimitedError):
        await rl.aacquire(max_wait=0)
    assert rl._state._waiters == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"requests_per_minute": 0}, "requests_per_minute must be None or an int >= 1, got 0"),
        ({"tokens_per_minute": -5}, "tokens_per_minute must be None or an int >= 1, got -5"),
        ({"input_tokens_per_minute": True}, "input_tokens_per_minute must be None or an int"),
        ({"output_tokens_per_minute": 1.5}, "output_tokens_per_minute must be None or an int"),
        ({"max_concurrent": 0}, "max_concurrent must be None or an int >= 1, got 0"),
        ({"max_wait": math.nan}, "max_wait must be a number >= 0"),
        ({"max_wait": -1}, "max_wait must be a number >= 0"),
        ({"name": 3}, "name must be a str, got 3"),
        ({"clock": 3}, "clock must be callable"),
    ],
)
def test_bad_settings_are_refused_naming_the_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidValueError, match=message.replace("(", r"\(")):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


def test_an_estimate_larger_than_a_limit_is_refused_at_once() -> None:
    clock = FakeClock()
    rl = limiter(clock, tokens_per_minute=100, output_tokens_per_minute=10)
    with pytest.raises(InvalidValueError, match="a call of 101 tokens can never fit tokens_per"):
        rl.acquire(input_tokens=101)
    with pytest.raises(InvalidValueError, match="11 output_tokens can never fit"):
        rl.try_acquire(output_tokens=11)
    assert clock.slept == []
    assert rl.acquire(input_tokens=90, output_tokens=10) is not None


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"input_tokens": -1}, "input_tokens must be an int >= 0, got -1"),
        ({"output_tokens": True}, "output_tokens must be an int >= 0, got True"),
        ({"input_tokens": math.nan}, "input_tokens must be an int >= 0, got nan"),
        ({"estimate": object()}, "input_tokens must be an int >= 0, got <object"),
        ({"estimate": UsageSnapshot(), "input_tokens": 1}, "give either estimate or"),
        ({"max_wait": math.nan}, "max_wait must be a number >= 0"),
    ],
)
def test_bad_calls_are_refused_naming_the_value(call: dict[str, object], message: str) -> None:
    rl = RateLimiter(tokens_per_minute=10)
    with pytest.raises(InvalidValueError, match=message):
        rl.acquire(**call)  # type: ignore[arg-type]


def test_settle_checks_its_counts_and_keeps_the_lease_open_on_a_bad_one() -> None:
    rl = RateLimiter(tokens_per_minute=10)
    lease = rl.acquire()
    with pytest.raises(InvalidValueError, match="give either actual or"):
        lease.settle(UsageSnapshot(), output_tokens=1)
    with pytest.raises(InvalidValueError, match="output_tokens must be an int >= 0, got -2"):
        lease.settle(output_tokens=-2)
    assert lease.state == "active"


def test_repr_shows_the_limits() -> None:
    rl = RateLimiter(requests_per_minute=5, output_tokens_per_minute=7)
    assert repr(rl) == (
        "RateLimiter(requests_per_minute=5, output_tokens_per_minute=7, max_concurrent=None)"
    )
    assert (rl.requests_per_minute, rl.tokens_per_minute) == (5, None)
    assert (rl.input_tokens_per_minute, rl.output_tokens_per_minute, rl.max_concurrent) == (
        None,
        7,
        None,
    )


# --- the window's bound, against a brute-force model -------------------------------------

LIMITS = (3, 100, 70, 40)  # requests, tokens, input, output per minute


class Model:
    """Every admission ever made, and the rule checked by brute force at each decision."""

    def __init__(self, max_concurrent: int) -> None:
        self.admitted: list[list[float | int]] = []  # [expiry, requests, input, output, open]
        self.max_concurrent = max_concurrent

    def amounts(self, now: float) -> tuple[int, int, int, int]:
        live = [a for a in self.admitted if a[0] > now]
        return (
            int(sum(a[1] for a in live)),
            int(sum(a[2] + a[3] for a in live)),
            int(sum(a[2] for a in live)),
            int(sum(a[3] for a in live)),
        )

    def fits(self, now: float, tokens_in: int, tokens_out: int) -> bool:
        have = self.amounts(now)
        wanted = (1, tokens_in + tokens_out, tokens_in, tokens_out)
        return all(h + w <= lim for h, w, lim in zip(have, wanted, LIMITS, strict=True))

    def wait(self, now: float, tokens_in: int, tokens_out: int) -> float:
        """The first time from now at which the call fits: now, or some expiry."""
        for when in sorted({now, *(float(a[0]) for a in self.admitted if a[0] > now)}):
            if self.fits(when, tokens_in, tokens_out):
                return when - now
        raise AssertionError("an estimate within the limits always fits eventually")


operations = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.sampled_from([0.0, 0.5, 1.0, 7.25, 29.75, 60.0])),
        st.tuples(st.just("admit"), st.integers(0, 40), st.integers(0, 40), st.integers(0, 2)),
        st.tuples(st.just("settle"), st.integers(0, 50), st.integers(0, 50), st.integers(0, 9)),
        st.tuples(st.just("release"), st.integers(0, 9)),
    ),
    max_size=60,
)


@settings(max_examples=examples(300), deadline=None)
@given(operations, st.booleans())
def test_decisions_and_waits_match_a_brute_force_window(
    ops: list[tuple[object, ...]], shrink: bool
) -> None:
    clock = FakeClock()
    rl = limiter(
        clock,
        requests_per_minute=LIMITS[0],
        tokens_per_minute=LIMITS[1],
        input_tokens_per_minute=LIMITS[2],
        output_tokens_per_minute=LIMITS[3],
        max_concurrent=2,
    )
    model = Model(max_concurrent=2)
    leases: list[tuple[RateLease, list[float | int]]] = []
    for op in ops:
        if op[0] == "advance":
            clock.advance(float(op[1]))  # type: ignore[arg-type]
        elif op[0] == "admit":
            tokens_in, tokens_out = int(op[1]), int(op[2])  # type: ignore[call-overload]
            now = clock.now
            open_now = sum(1 for _, entry in leases if entry[4])
            lease = rl.try_acquire(input_tokens=tokens_in, output_tokens=tokens_out)
            fits = model.fits(now, tokens_in, tokens_out)
            assert (lease is not None) == (fits and open_now < 2)
            if lease is None and not fits:
                with pytest.raises(RateLimitedError) as info:
                    rl.acquire(input_tokens=tokens_in, output_tokens=tokens_out, max_wait=0)
                assert info.value.retry_after == model.wait(now, tokens_in, tokens_out)
            if lease is not None:
                entry: list[float | int] = [now + 60.0, 1, tokens_in, tokens_out, 1]
                model.admitted.append(entry)
                leases.append((lease, entry))
        elif leases:
            lease, entry = leases[int(op[-1]) % len(leases)]  # type: ignore[call-overload]
            if op[0] == "settle":
                actual_in, actual_out = int(op[1]), int(op[2])  # type: ignore[call-overload]
                if shrink:  # actual never above the estimate: the bound must then hold
                    actual_in = min(actual_in, int(entry[2]))
                    actual_out = min(actual_out, int(entry[3]))
                if entry[4]:
                    lease.settle(input_tokens=actual_in, output_tokens=actual_out)
                    entry[2:5] = [actual_in, actual_out, 0]
                else:
                    with pytest.raises(ReservationError):
                        lease.settle(input_tokens=actual_in, output_tokens=actual_out)
            else:
                assert lease.release() == bool(entry[4])
                if entry[4]:
                    entry[1:5] = [0, 0, 0, 0]
        usage = rl.usage()
        now_amounts = model.amounts(clock.now)
        assert (
            usage["requests"],
            usage["tokens"],
            usage["input_tokens"],
            usage["output_tokens"],
        ) == now_amounts
        assert usage["open"] == sum(1 for _, entry in leases if entry[4])
    if shrink:
        # The bound: whatever was admitted in any 60 s window fits every limit.
        times = sorted({float(e[0]) - 60.0 for e in model.admitted})
        for start in times:
            inside = [e for e in model.admitted if start <= float(e[0]) - 60.0 < start + 60.0]
            sums = (
                sum(int(e[1]) for e in inside),
                sum(int(e[2]) + int(e[3]) for e in inside),
                sum(int(e[2]) for e in inside),
                sum(int(e[3]) for e in inside),
            )
            assert all(s <= lim for s, lim in zip(sums, LIMITS, strict=True)), (start, sums)


# --- many callers at once ---------------------------------------------------------------


def test_threads_hammering_one_limiter_never_pass_a_limit() -> None:
    rl = RateLimiter(requests_per_minute=500, tokens_per_minute=10_000, max_concurrent=4)
    admitted: list[int] = []
    peak = [0]
    guard = threading.Lock()

    def work() -> None:
        for _ in range(200):
            lease = rl.try_acquire(input_tokens=30)
            if lease is None:
                continue
            with guard:
                admitted.append(30)
                peak[0] = max(peak[0], rl.usage()["open"])
            lease.settle(input_tokens=20)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = rl.usage()
    assert usage["requests"] == len(admitted) <= 500
    assert usage["tokens"] == 20 * len(admitted)
    assert usage["open"] == 0
    assert peak[0] <= 4


def test_threads_blocking_on_slots_all_get_through_exactly_once() -> None:
    rl = RateLimiter(max_concurrent=2)
    open_now = [0]
    peak = [0]
    done = [0]
    guard = threading.Lock()

    def work() -> None:
        for _ in range(25):
            with rl.acquire(max_wait=30) as lease:
                with guard:
                    open_now[0] += 1
                    peak[0] = max(peak[0], open_now[0])
                with guard:
                    open_now[0] -= 1
                    done[0] += 1
                lease.settle()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert done[0] == 150
    assert peak[0] <= 2
    assert rl.usage()["requests"] == 150
    assert rl.usage()["open"] == 0


def test_tasks_hammering_one_limiter_wait_their_turn() -> None:
    asyncio.run(_tasks_hammering_one_limiter_wait_their_turn())


async def _tasks_hammering_one_limiter_wait_their_turn() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=10, tokens_per_minute=1000, max_concurrent=3)
    open_now = [0]
    peak = [0]
    times: list[float] = []

    async def work() -> None:
        for _ in range(5):
            lease = await rl.aacquire(input_tokens=50, max_wait=math.inf)
            times.append(clock.now)
            open_now[0] += 1
            peak[0] = max(peak[0], open_now[0])
            await asyncio.sleep(0)
            open_now[0] -= 1
            lease.settle(input_tokens=40)

    await asyncio.gather(*(work() for _ in range(8)))
    assert peak[0] <= 3
    assert rl.usage()["open"] == 0
    assert len(times) == 40
    for start in times:
        assert sum(1 for t in times if start <= t < start + 60.0) <= 10


# --- wired into the orchestrator --------------------------------------------------------


def _orchestrator(clock: FakeClock, rl: RateLimiter) -> Orchestrator:
    return Orchestrator("coder", "build", rate_limiter=rl, clock=clock)


def test_a_throttled_turn_waits_emits_and_settles_actual_usage() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=1, tokens_per_minute=1000)
    orch = _orchestrator(clock, rl)
    with orch.session() as session:
        session.run_turn(
            lambda: "a",
            model="m",
            estimate=UsageSnapshot(input_tokens=500),
            usage=UsageSnapshot(input_tokens=10, output_tokens=5),
        )
        assert rl.usage()["tokens"] == 15  # the actual usage, not the estimate
        assert rl.usage()["open"] == 0
        clock.advance(20)
        session.run_turn(lambda: "b", model="m")
        assert clock.slept == [40.0]
        throttled = [e for e in session.events() if e.name == EventName.TURN_THROTTLED]
    assert len(throttled) == 1
    assert throttled[0].data["wait_seconds"] == 40.0
    assert throttled[0].data["model"] == "m"


def test_no_throttled_event_when_the_turn_did_not_wait() -> None:
    clock = FakeClock()
    orch = _orchestrator(clock, limiter(clock, requests_per_minute=5))
    with orch.session() as session:
        session.run_turn(lambda: "a", model="m")
        assert not [e for e in session.events() if e.name == EventName.TURN_THROTTLED]


def test_a_failed_turn_releases_its_lease_and_observes_the_error_headers() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=5, max_concurrent=1)
    orch = _orchestrator(clock, rl)

    class LimitedError(Exception):
        headers: ClassVar = {
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": "3s",
        }

    def fail() -> str:
        raise LimitedError("429")

    with orch.session() as session:
        with pytest.raises(LimitedError):
            session.run_turn(fail, model="m")
        assert rl.usage()["open"] == 0
        assert rl.usage()["requests"] == 0  # released: the call is not counted
        session.run_turn(lambda: "ok", model="m")
    assert clock.slept == [3.0]  # the server's word from the error's headers


def test_a_refused_turn_raises_and_gives_back_its_budget_hold() -> None:
    clock = FakeClock()
    rl = limiter(clock, requests_per_minute=1, max_wait=30)
    budget = Budget(max_requests=10)
    orch = Orchestrator("coder", "build", rate_limiter=rl, budget=budget, clock=clock)
    rl.acquire()
    with orch.session() as session:
        with pytest.raises(RateLimitedError):
            session.run_turn(lambda: "x", model="m")
        assert budget.reserved_requests == 0
        refused = [e for e in session.events() if e.name == EventName.TURN_THROTTLED]
    assert refused[0].data["refused"] is True
    assert refused[0].data["limit"] == "requests"
    assert refused[0].data["retry_after"] == 60.0


def test_an_async_turn_waits_on_the_limiters_async_sleep() -> None:
    async def go() -> list[float]:
        clock = FakeClock()
        rl = limiter(clock, tokens_per_minute=100)
        orch = _orchestrator(clock, rl)
        async with orch.asession() as session:

            async def call() -> str:
                return "a"

            await session.arun_turn(call, model="m", estimate=UsageSnapshot(input_tokens=80))
            clock.advance(30)
            await session.arun_turn(call, model="m", estimate=UsageSnapshot(input_tokens=80))
            assert rl.usage()["tokens"] == 0  # both settled at zero usage (none was read)
        return clock.slept

    assert asyncio.run(go()) == []


def test_an_async_turn_waits_for_capacity() -> None:
    async def go() -> tuple[list[float], list[object]]:
        clock = FakeClock()
        rl = limiter(clock, requests_per_minute=1)
        orch = _orchestrator(clock, rl)
        async with orch.asession() as session:

            async def call() -> str:
                return "a"

            await session.arun_turn(call, model="m")
            clock.advance(45)
            await session.arun_turn(call, model="m")
            events = [
                e.data["wait_seconds"]
                for e in session.events()
                if e.name == EventName.TURN_THROTTLED
            ]
        return clock.slept, events

    assert asyncio.run(go()) == ([15.0], [15.0])


def test_the_orchestrator_checks_its_rate_limiter() -> None:
    with pytest.raises(InvalidValueError, match="rate_limiter must be a RateLimiter or None"):
        Orchestrator("coder", "build", rate_limiter=object())  # type: ignore[arg-type]
