"""The CPython floor for one turn's bookkeeping: what ``run_turn`` must do, done plainly.

No library code: the bench scripts time :func:`floor_turn` (and its async
twin :func:`afloor_turn`) in the same process as ``Session.run_turn`` and
print the ratio, so the figure is "how far above the cheapest honest Python
for the same bookkeeping", not an absolute number that moves with the machine.

What one successful floor turn counts, in order:

1. session admission, ``with session.lock``: the session is running, under
   its iteration limit and under its own cap (``budget_usd``, checked against
   the session's running spend); count the turn. The per-session cap needs no
   lock of its own: it is the session's state, kept under the session's lock.
2. shared budget reserve, ``with budget.lock``: refuse when spent + reserved
   has reached the cap; hold one request (no estimate given, so no money).
3. breaker admission (a lock-free read of the closed flag, as the breaker's
   consecutive-failure mode does), two reads of the injected monotonic clock
   around the call, then the breaker settle, ``with breaker.lock``: reset the
   consecutive failures, count the success. The call sits in ``try:``; the
   failure branch (release, count the failure, re-raise) is written out but
   costs nothing on success in CPython 3.11.
4. usage: given, or read from ``result.usage`` (``prompt_tokens`` and
   ``completion_tokens``, one known shape, no duck typing) into a slots record
   of five token counts.
5. integer money: one dict lookup of the model's rates (five integer
   femto-dollar rates per token) and five token x rate products.
6. shared budget settle, ``with budget.lock``: drop the held request, add the
   cost and count the request.
7. tracker totals, ``with session.lock``: five token totals, the session's
   spend, the turn count and the event count.
8. one event: a slots record of 8 fields (name, role, phase, session id,
   worker id, status, a float timestamp from the injected wall clock, data),
   its data a 6-key dict (model, attempt, duration, input and output tokens,
   integer femto-dollar cost), appended to a ``deque(maxlen=1000)`` (atomic
   under the GIL, so no lock).
9. return ``(result, usage)``.

Five ``with lock:`` sections in all. Not counted, because a turn can do
without them: hooks, a log-level check, a sink fan-out, a per-model breakdown,
a timezone-aware ``datetime`` timestamp (``time.time`` is the wall clock
here), a cost formatted as text, a reservation object per budget, and a
second budget object for the per-session cap.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

__all__ = [
    "FEMTO_RATES",
    "FloorBreaker",
    "FloorBudget",
    "FloorEvent",
    "FloorRefusedError",
    "FloorSession",
    "FloorUsage",
    "afloor_turn",
    "floor_turn",
]

# USD per token x 10**15: $3 / $15 per million in and out, cache read $0.30,
# cache write $3.75, reasoning billed as output.
FEMTO_RATES: Final[dict[str, tuple[int, int, int, int, int]]] = {
    "bench-model": (3_000_000_000, 15_000_000_000, 300_000_000, 3_750_000_000, 15_000_000_000),
}

TURN_COMPLETED: Final = "turn.completed"


class FloorRefusedError(Exception):
    """A floor turn was refused (session, budget or breaker)."""


class FloorUsage:
    """Token counts of one turn."""

    __slots__ = ("cache_read", "cache_write", "input_tokens", "output_tokens", "reasoning")

    def __init__(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read: int = 0,
        cache_write: int = 0,
        reasoning: int = 0,
    ) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cache_read = cache_read
        self.cache_write = cache_write
        self.reasoning = reasoning


class FloorEvent:
    """One event record: 8 fields."""

    __slots__ = ("data", "name", "phase", "role", "session_id", "status", "timestamp", "worker_id")

    def __init__(  # noqa: PLR0917 (positional: the cheapest way to fill a record)
        self,
        name: str,
        role: str,
        phase: str,
        session_id: str,
        worker_id: str,
        status: str,
        timestamp: float,
        data: dict[str, object],
    ) -> None:
        self.name = name
        self.role = role
        self.phase = phase
        self.session_id = session_id
        self.worker_id = worker_id
        self.status = status
        self.timestamp = timestamp
        self.data = data


class FloorBreaker:
    """A consecutive-failure breaker's counters."""

    __slots__ = ("closed", "failures", "lock", "successes", "threshold")

    def __init__(self, threshold: int = 5) -> None:
        self.lock = threading.Lock()
        self.closed = True
        self.failures = 0
        self.successes = 0
        self.threshold = threshold


class FloorBudget:
    """A shared dollar cap in integer femto-dollars."""

    __slots__ = (
        "limit_femto",
        "lock",
        "requests",
        "reserved_femto",
        "reserved_requests",
        "spent_femto",
    )

    def __init__(self, limit_femto: int) -> None:
        self.lock = threading.Lock()
        self.limit_femto = limit_femto
        self.spent_femto = 0
        self.reserved_femto = 0
        self.reserved_requests = 0
        self.requests = 0


class FloorSession:
    """One session's counters, its ring of events and the shared parts it uses."""

    __slots__ = (
        "breaker",
        "budget",
        "cache_read",
        "cache_write",
        "cap_femto",
        "clock",
        "events",
        "id",
        "input_tokens",
        "lock",
        "max_turns",
        "output_tokens",
        "phase",
        "rates",
        "reasoning",
        "ring",
        "role",
        "running",
        "spent_femto",
        "turns",
        "wall_clock",
        "worker_id",
    )

    def __init__(
        self,
        breaker: FloorBreaker,
        budget: FloorBudget,
        *,
        cap_femto: int,
        max_turns: int = 1 << 62,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        capacity: int = 1000,
    ) -> None:
        self.lock = threading.Lock()
        self.breaker = breaker
        self.budget = budget
        self.cap_femto = cap_femto
        self.max_turns = max_turns
        self.clock = clock
        self.wall_clock = wall_clock
        self.rates = FEMTO_RATES
        self.ring: deque[FloorEvent] = deque(maxlen=capacity)
        self.role = "writer"
        self.phase = "draft"
        self.id = "0" * 32
        self.worker_id = "1" * 32
        self.running = True
        self.turns = 0
        self.events = 0
        self.spent_femto = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cache_read = 0
        self.cache_write = 0
        self.reasoning = 0


def floor_turn(
    s: FloorSession, fn: Callable[[], object], model: str, usage: FloorUsage | None = None
) -> tuple[object, FloorUsage]:
    """One turn's bookkeeping around ``fn()``; see the module docstring for what it counts."""
    with s.lock:
        if not s.running or s.turns >= s.max_turns or s.spent_femto >= s.cap_femto:
            raise FloorRefusedError("session")
        s.turns += 1
    b = s.budget
    with b.lock:
        if b.spent_femto + b.reserved_femto >= b.limit_femto:
            raise FloorRefusedError("budget")
        b.reserved_requests += 1
    br = s.breaker
    if not br.closed:
        with b.lock:
            b.reserved_requests -= 1
        raise FloorRefusedError("breaker")
    started = s.clock()
    try:
        result = fn()
    except BaseException:
        with br.lock:
            br.failures += 1
            br.closed = br.failures < br.threshold
        with b.lock:
            b.reserved_requests -= 1
        raise
    duration = s.clock() - started
    with br.lock:
        br.failures = 0
        br.successes += 1
    if usage is None:
        u = result.usage  # type: ignore[attr-defined]
        usage = FloorUsage(u.prompt_tokens, u.completion_tokens)
    r_in, r_out, r_read, r_write, r_reason = s.rates[model]
    cost = (
        usage.input_tokens * r_in
        + usage.output_tokens * r_out
        + usage.cache_read * r_read
        + usage.cache_write * r_write
        + usage.reasoning * r_reason
    )
    with b.lock:
        b.reserved_requests -= 1
        b.requests += 1
        b.spent_femto += cost
    with s.lock:
        s.input_tokens += usage.input_tokens
        s.output_tokens += usage.output_tokens
        s.cache_read += usage.cache_read
        s.cache_write += usage.cache_write
        s.reasoning += usage.reasoning
        s.spent_femto += cost
        s.events += 1
    s.ring.append(
        FloorEvent(
            TURN_COMPLETED,
            s.role,
            s.phase,
            s.id,
            s.worker_id,
            "running",
            s.wall_clock(),
            {
                "model": model,
                "attempt": 1,
                "duration_seconds": duration,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cost_femto_usd": cost,
            },
        )
    )
    return result, usage


async def afloor_turn(
    s: FloorSession,
    fn: Callable[[], Awaitable[object]],
    model: str,
    usage: FloorUsage | None = None,
) -> tuple[object, FloorUsage]:
    """Async twin of :func:`floor_turn`: the same bookkeeping around ``await fn()``."""
    with s.lock:
        if not s.running or s.turns >= s.max_turns or s.spent_femto >= s.cap_femto:
            raise FloorRefusedError("session")
        s.turns += 1
    b = s.budget
    with b.lock:
        if b.spent_femto + b.reserved_femto >= b.limit_femto:
            raise FloorRefusedError("budget")
        b.reserved_requests += 1
    br = s.breaker
    if not br.closed:
        with b.lock:
            b.reserved_requests -= 1
        raise FloorRefusedError("breaker")
    started = s.clock()
    try:
        result = await fn()
    except BaseException:
        with br.lock:
            br.failures += 1
            br.closed = br.failures < br.threshold
        with b.lock:
            b.reserved_requests -= 1
        raise
    duration = s.clock() - started
    with br.lock:
        br.failures = 0
        br.successes += 1
    if usage is None:
        u = result.usage  # type: ignore[attr-defined]
        usage = FloorUsage(u.prompt_tokens, u.completion_tokens)
    r_in, r_out, r_read, r_write, r_reason = s.rates[model]
    cost = (
        usage.input_tokens * r_in
        + usage.output_tokens * r_out
        + usage.cache_read * r_read
        + usage.cache_write * r_write
        + usage.reasoning * r_reason
    )
    with b.lock:
        b.reserved_requests -= 1
        b.requests += 1
        b.spent_femto += cost
    with s.lock:
        s.input_tokens += usage.input_tokens
        s.output_tokens += usage.output_tokens
        s.cache_read += usage.cache_read
        s.cache_write += usage.cache_write
        s.reasoning += usage.reasoning
        s.spent_femto += cost
        s.events += 1
    s.ring.append(
        FloorEvent(
            TURN_COMPLETED,
            s.role,
            s.phase,
            s.id,
            s.worker_id,
            "running",
            s.wall_clock(),
            {
                "model": model,
                "attempt": 1,
                "duration_seconds": duration,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cost_femto_usd": cost,
            },
        )
    )
    return result, usage
