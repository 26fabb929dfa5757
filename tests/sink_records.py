"""Records the sink tests write: events, usage records, a session's start and end events.

Imported by ``test_sinks``, ``test_jsonl`` and ``test_sqlite``; every value
is fixed, so two calls with the same arguments give equal records.
:func:`write_from_threads` writes them from many threads at once.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from techrevati.runtime.events import AgentEvent, AgentFailureClass, UsageRecord
from techrevati.runtime.jsonl import JsonlSink
from techrevati.runtime.sqlite import SqliteSink

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def event(
    name: str = "turn.completed",
    *,
    i: int = 0,
    session_id: str = "s1",
    role: str = "writer",
    project_id: str | int | None = 42,
    failure_class: AgentFailureClass | None = None,
    data: dict[str, object] | None = None,
    at: datetime | None = None,
) -> AgentEvent:
    return AgentEvent(
        name=name,
        role=role,
        phase="draft",
        status="running",
        failure_class=failure_class,
        detail=f"detail {i}",
        data={"model": "model-a", "i": i} if data is None else data,
        timestamp=(T0 + timedelta(seconds=i)) if at is None else at,
        session_id=session_id,
        worker_id="w1",
        project_id=project_id,
    )


def usage(
    i: int = 0,
    *,
    model: str = "model-a",
    cost: str = "0.0123",
    session_id: str = "s1",
    role: str = "writer",
    project_id: str | int | None = 42,
    service_tier: str | None = None,
) -> UsageRecord:
    return UsageRecord(
        model=model,
        input_tokens=1000 + i,
        output_tokens=200,
        cache_read_tokens=300,
        cache_write_tokens=50,
        reasoning_tokens=20,
        cost_usd=Decimal(cost),
        priced=True,
        duration_seconds=1.25,
        role=role,
        phase="draft",
        session_id=session_id,
        worker_id="w1",
        project_id=project_id,
        timestamp=T0 + timedelta(seconds=i),
        service_tier=service_tier,
    )


def session_events(
    session_id: str, end: str, *, start_at: datetime, seconds: float, cost: str
) -> list[AgentEvent]:
    started = AgentEvent(
        name="session.started",
        role="writer",
        phase="draft",
        session_id=session_id,
        worker_id=f"w-{session_id}",
        project_id=42,
        timestamp=start_at,
    )
    data: dict[str, object] = {"duration_seconds": seconds, "cost_usd": cost, "turns": 3}
    failure = None
    if end == "failed":
        data["error_type"] = "RateLimitError"
        failure = AgentFailureClass.RATE_LIMIT
    elif end == "cancelled":
        failure = AgentFailureClass.CANCELLED
    ended = AgentEvent(
        name=f"session.{end}",
        role="writer",
        phase="draft",
        failure_class=failure,
        data=data,
        session_id=session_id,
        worker_id=f"w-{session_id}",
        project_id=42,
        timestamp=start_at + timedelta(seconds=seconds),
    )
    return [started, ended]


def write_from_threads(sink: JsonlSink | SqliteSink, workers: int, per_worker: int) -> None:
    """Write ``per_worker`` events and usage records from each of ``workers`` threads at once.

    Worker ``n`` writes session ``s<n>``, its records numbered 0 up in order.
    """

    def hammer(worker: int) -> None:
        for i in range(per_worker):
            sink.write_event(event(i=i, session_id=f"s{worker}"))
            sink.write_usage(usage(i, session_id=f"s{worker}"))

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def logged_by(record: logging.LogRecord) -> str:
    """The function that logged ``record``, or ``"mutmut"`` when a trampoline logged it.

    Under mutation testing (tools/mutation.py) mutmut's trampoline frames stand
    between a function and its caller, so a record's ``stacklevel`` lands on
    one of them; a test accepts that instead of failing every clean run.
    """
    return "mutmut" if "mutmut" in Path(record.pathname).parts else record.funcName
