from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import (
    DEFAULT_RING_CAPACITY,
    AgentEvent,
    AgentFailureClass,
    EventName,
    EventSink,
    RingBufferSink,
    UsageRecord,
    UsageSink,
)
from tests.conftest import examples

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
HYPOTHESIS = settings(max_examples=examples(100))


def event(n: int = 0) -> AgentEvent:
    return AgentEvent(name=f"e{n}", timestamp=T0)


# -- AgentEvent --------------------------------------------------------------------


def test_event_defaults_and_clock_time() -> None:
    before = datetime.now(UTC)
    made = AgentEvent(name=EventName.TURN_COMPLETED)
    assert (made.role, made.phase, made.status, made.detail) == ("", "", None, None)
    assert made.data == {}
    assert made.failure_class is None
    assert before <= made.timestamp <= datetime.now(UTC)
    assert made.timestamp.utcoffset() == timedelta(0)


@pytest.mark.parametrize("name", ["", None, 3])
def test_event_requires_a_non_empty_name(name: object) -> None:
    with pytest.raises(InvalidValueError, match="name must be a non-empty str") as caught:
        AgentEvent(name=name)  # type: ignore[arg-type]
    assert repr(name) in str(caught.value)


def test_event_rejects_a_naive_timestamp() -> None:
    with pytest.raises(InvalidValueError, match="timezone-aware"):
        AgentEvent(name="x", timestamp=datetime(2025, 1, 1))


def test_event_accepts_any_aware_timezone() -> None:
    tz = timezone(timedelta(hours=2))
    made = AgentEvent(name="x", timestamp=datetime(2025, 1, 1, 14, tzinfo=tz))
    assert made.to_dict()["timestamp"] == "2025-01-01T14:00:00+02:00"


def test_event_is_frozen() -> None:
    with pytest.raises(AttributeError):
        event().name = "other"  # type: ignore[misc]


def test_event_to_dict_round_trips_through_json() -> None:
    made = AgentEvent(
        name=EventName.TOOL_DENIED,
        role="writer",
        phase="draft",
        status="running",
        failure_class=AgentFailureClass.PERMISSION_DENIED,
        detail="tool 'shell' is denied",
        data={"tool": "shell", "attempt": 2, "cost_usd": "0.0045"},
        timestamp=T0,
        session_id="s1",
        worker_id="w1",
        project_id=42,
    )
    data = made.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "name": "tool.denied",
        "role": "writer",
        "phase": "draft",
        "status": "running",
        "failure_class": "permission_denied",
        "detail": "tool 'shell' is denied",
        "data": {"tool": "shell", "attempt": 2, "cost_usd": "0.0045"},
        "timestamp": "2025-01-01T12:00:00+00:00",
        "session_id": "s1",
        "worker_id": "w1",
        "project_id": 42,
    }
    assert datetime.fromisoformat(str(data["timestamp"])) == T0


def test_to_dict_copies_data() -> None:
    made = AgentEvent(name="x", data={"k": 1}, timestamp=T0)
    copied = made.to_dict()["data"]
    assert isinstance(copied, dict)
    copied["k"] = 2
    assert made.data == {"k": 1}


def test_event_names_are_stable_dotted_strings() -> None:
    assert str(EventName.SESSION_STARTED) == "session.started"
    assert EventName.STATUS_CHANGED.value == "worker.status_changed"
    assert len({name.value for name in EventName}) == len(EventName)
    assert all(name.value == name.value.lower() for name in EventName)


def test_failure_classes_are_lowercase_and_unique() -> None:
    values = [member.value for member in AgentFailureClass]
    assert len(set(values)) == len(values)
    assert all(
        value == member.name.lower()
        for value, member in zip(values, AgentFailureClass, strict=True)
    )


def test_event_rejects_a_failure_class_that_is_not_the_enum() -> None:
    with pytest.raises(InvalidValueError, match="failure_class"):
        AgentEvent(name="x", failure_class="no_such_class")  # type: ignore[arg-type]


def test_event_accepts_a_failure_class_value_and_stores_the_enum() -> None:
    event = AgentEvent(name="x", failure_class="rate_limit")  # type: ignore[arg-type]
    assert event.failure_class is AgentFailureClass.RATE_LIMIT
    assert event.to_dict()["failure_class"] == "rate_limit"


def test_event_rejects_a_timestamp_that_is_not_a_datetime() -> None:
    with pytest.raises(InvalidValueError, match="timestamp"):
        AgentEvent(name="x", timestamp="2025-01-01T00:00:00+00:00")  # type: ignore[arg-type]


# -- UsageRecord -------------------------------------------------------------------


def test_usage_record_totals_and_json() -> None:
    record = UsageRecord(
        model="m",
        input_tokens=5000,
        output_tokens=1200,
        cost_usd=Decimal("0.033"),
        timestamp=T0,
        project_id="p",
    )
    assert record.total_tokens == 6200
    data = record.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["cost_usd"] == "0.033"
    assert Decimal(str(data["cost_usd"])) == record.cost_usd
    assert data["timestamp"] == "2025-01-01T12:00:00+00:00"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input_tokens": -1}, "input_tokens"),
        ({"output_tokens": 1.5}, "output_tokens"),
        ({"reasoning_tokens": True}, "reasoning_tokens"),
        ({"cost_usd": 0.5}, "cost_usd"),
        ({"cost_usd": Decimal("NaN")}, "cost_usd"),
        ({"timestamp": datetime(2025, 1, 1)}, "timestamp"),
    ],
)
def test_usage_record_rejects_bad_values(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidValueError, match=field):
        UsageRecord(model="m", **kwargs)  # type: ignore[arg-type]


# -- sinks -------------------------------------------------------------------------


def test_ring_buffer_and_custom_sinks_satisfy_the_protocols() -> None:
    class Printer:
        def write_event(self, event: AgentEvent) -> None:
            pass

    class Meter:
        def write_usage(self, record: UsageRecord) -> None:
            pass

    assert isinstance(RingBufferSink(), EventSink)
    assert isinstance(Printer(), EventSink)
    assert isinstance(Meter(), UsageSink)
    assert not isinstance(Meter(), EventSink)


def test_ring_buffer_defaults_to_the_documented_capacity() -> None:
    assert RingBufferSink().capacity == DEFAULT_RING_CAPACITY == 1000


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, None])
def test_ring_buffer_rejects_bad_capacity(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="capacity"):
        RingBufferSink(bad)  # type: ignore[arg-type]


def test_ring_buffer_keeps_the_newest_and_counts_the_dropped() -> None:
    sink = RingBufferSink(3)
    for n in range(5):
        sink.write_event(event(n))
    assert [e.name for e in sink.events()] == ["e2", "e3", "e4"]
    assert (len(sink), sink.total, sink.dropped) == (3, 5, 2)


def test_ring_buffer_last_returns_the_newest_n() -> None:
    sink = RingBufferSink(10)
    for n in range(6):
        sink.write_event(event(n))
    assert [e.name for e in sink.events(2)] == ["e4", "e5"]
    assert [e.name for e in sink.events(6)] == ["e0", "e1", "e2", "e3", "e4", "e5"]
    assert sink.events(0) == []
    with pytest.raises(InvalidValueError, match="last"):
        sink.events(-1)


def test_ring_buffer_last_larger_than_the_buffer_returns_everything() -> None:
    sink = RingBufferSink(10)
    for n in range(3):
        sink.write_event(event(n))
    assert [e.name for e in sink.events(5)] == ["e0", "e1", "e2"]


def test_clear_forgets_events_but_keeps_counters() -> None:
    sink = RingBufferSink(2)
    for n in range(3):
        sink.write_event(event(n))
    sink.clear()
    assert (len(sink), sink.events(), sink.total, sink.dropped) == (0, [], 3, 1)
    sink.write_event(event(9))
    assert (len(sink), sink.total, sink.dropped) == (1, 4, 1)


def test_events_returns_a_copy() -> None:
    sink = RingBufferSink(5)
    sink.write_event(event())
    snapshot = sink.events()
    snapshot.clear()
    assert len(sink.events()) == 1


@HYPOTHESIS
@given(capacity=st.integers(1, 20), writes=st.integers(0, 60), last=st.integers(0, 80))
def test_ring_buffer_counters_add_up(capacity: int, writes: int, last: int) -> None:
    sink = RingBufferSink(capacity)
    for n in range(writes):
        sink.write_event(event(n))
    kept = min(capacity, writes)
    assert len(sink) == kept
    assert sink.total == writes
    assert sink.dropped == writes - kept
    assert [e.name for e in sink.events()] == [f"e{n}" for n in range(writes - kept, writes)]
    if last <= kept:
        assert [e.name for e in sink.events(last)] == [
            f"e{n}" for n in range(writes - last, writes)
        ]


@pytest.fixture
def fast_switching() -> Iterator[None]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


@pytest.mark.usefixtures("fast_switching")
def test_threads_writing_at_once_keep_exact_totals() -> None:
    sink = RingBufferSink(100)
    threads_n, per_thread = 8, 2000
    barrier = threading.Barrier(threads_n)
    made = [AgentEvent(name=f"t{i}", timestamp=T0) for i in range(threads_n)]

    def write(index: int) -> None:
        barrier.wait()
        for _ in range(per_thread):
            sink.write_event(made[index])

    threads = [threading.Thread(target=write, args=(i,)) for i in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sink.total == threads_n * per_thread
    assert sink.dropped == threads_n * per_thread - 100
    assert len(sink) == len(sink.events()) == 100


@pytest.mark.usefixtures("fast_switching")
def test_reading_while_writing_always_sees_at_most_capacity() -> None:
    sink = RingBufferSink(50)
    stop = threading.Event()
    sizes: list[int] = []

    def read() -> None:
        while not stop.is_set():
            sizes.append(len(sink.events(10)) + len(sink.events()))

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(5000):
        sink.write_event(event(n))
    stop.set()
    reader.join()
    assert sink.total == 5000
    assert sizes
    assert max(sizes) <= 60
