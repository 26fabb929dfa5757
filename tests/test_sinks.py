"""The fan-out, the buffered base both durable sinks share, and the session rows they fold."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime import jsonl, sinks, sqlite
from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.events import (
    AgentEvent,
    AgentFailureClass,
    EventSink,
    RingBufferSink,
    UsageRecord,
    UsageSink,
)
from techrevati.runtime.sinks import (
    JsonlSink,
    SessionRow,
    SessionStatus,
    SinkClosedError,
    SinkFanout,
    SinkWriteError,
    SqliteSink,
    read_jsonl,
    sessions_from_events,
)
from tests.conftest import FakeClock, examples
from tests.sink_records import T0, event, session_events, usage


class EventsOnly:
    def __init__(self) -> None:
        self.events: list[AgentEvent] = []

    def write_event(self, event: AgentEvent) -> None:
        self.events.append(event)


class UsageOnly:
    def __init__(self) -> None:
        self.records: list[UsageRecord] = []

    def write_usage(self, record: UsageRecord) -> None:
        self.records.append(record)


class Both(EventsOnly, UsageOnly):
    def __init__(self) -> None:
        EventsOnly.__init__(self)
        UsageOnly.__init__(self)
        self.flushed = 0
        self.closed = 0

    def flush(self) -> None:
        self.flushed += 1

    def close(self) -> None:
        self.closed += 1


class Broken:
    def write_event(self, event: AgentEvent) -> None:
        raise OSError("disk on fire")

    def write_usage(self, record: UsageRecord) -> None:
        raise ValueError("bad record")

    def flush(self) -> None:
        raise RuntimeError("cannot flush")


def test_fanout_delivers_each_record_only_to_sinks_of_that_kind() -> None:
    events_only, usage_only, both = EventsOnly(), UsageOnly(), Both()
    fanout = SinkFanout([events_only, usage_only, both])
    fanout.write_event(event(i=1))
    fanout.write_usage(usage(2))
    assert [e.data["i"] for e in events_only.events] == [1]
    assert [r.input_tokens for r in usage_only.records] == [1002]
    assert len(both.events) == 1
    assert len(both.records) == 1
    assert fanout.has_event_sinks
    assert fanout.has_usage_sinks
    assert isinstance(both, EventSink)
    assert isinstance(both, UsageSink)


def test_fanout_without_sinks_says_so_and_accepts_records() -> None:
    fanout = SinkFanout()
    fanout.write_event(event())
    fanout.write_usage(usage())
    assert not fanout.has_event_sinks
    assert not fanout.has_usage_sinks
    assert fanout.failure_count == 0


def test_fanout_refuses_an_object_that_is_no_sink() -> None:
    with pytest.raises(InvalidValueError, match="sink 'object' must have write_event"):
        SinkFanout([object()])


def test_failing_sink_is_logged_counted_and_never_stops_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before, after = EventsOnly(), Both()
    fanout = SinkFanout([before, Broken(), after])
    with caplog.at_level(logging.ERROR, logger="techrevati.runtime.sinks"):
        fanout.write_event(event(name="tool.completed"))
        fanout.write_usage(usage())
    assert len(before.events) == 1
    assert len(after.events) == 1
    assert len(after.records) == 1
    assert fanout.failures == {"EventsOnly": 0, "Broken": 2, "Both": 0}
    assert fanout.failure_count == 2
    records = [r for r in caplog.records if getattr(r, "event", None) == "sink.failed"]
    assert [(r.sink, r.operation, r.record, r.error_type) for r in records] == [  # type: ignore[attr-defined]
        ("Broken", "write_event", "tool.completed", "OSError"),
        ("Broken", "write_usage", "usage", "ValueError"),
    ]
    assert records[1].sink_failures == 2  # type: ignore[attr-defined]
    assert records[0].name == "techrevati.runtime.sinks"


def test_fanout_lets_base_exceptions_such_as_keyboard_interrupt_through() -> None:
    class Interrupting:
        def write_event(self, event: AgentEvent) -> None:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        SinkFanout([Interrupting()]).write_event(event())


def test_fanout_names_repeated_classes_and_accepts_a_mapping_of_names() -> None:
    assert SinkFanout([EventsOnly(), EventsOnly(), UsageOnly()]).names == (
        "EventsOnly",
        "EventsOnly#2",
        "UsageOnly",
    )
    named = SinkFanout({"audit": Broken(), "memory": RingBufferSink()})
    named.write_event(event())
    assert named.failures == {"audit": 1, "memory": 0}
    assert len(named.sinks) == 2


def test_fanout_flush_and_close_reach_the_sinks_that_have_them_isolating_failures() -> None:
    both = Both()
    with SinkFanout([Broken(), RingBufferSink(), both]) as fanout:
        fanout.flush()
        assert both.flushed == 1
        assert fanout.failures["Broken"] == 1
    assert both.closed == 1


def test_fanout_counts_exact_failures_when_hammered_from_threads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL, logger="techrevati.runtime.sinks")

    class Flaky:
        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.seen = 0

        def write_event(self, event: AgentEvent) -> None:
            with self.lock:
                self.seen += 1
            if int(str(event.data["i"])) % 2:
                raise RuntimeError("odd")

    flaky, ring = Flaky(), RingBufferSink(capacity=10_000)
    fanout = SinkFanout([flaky, ring])
    threads_n, per_thread = 8, 500

    def hammer() -> None:
        for i in range(per_thread):
            fanout.write_event(event(i=i))

    threads = [threading.Thread(target=hammer) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert flaky.seen == threads_n * per_thread
    assert ring.total == threads_n * per_thread
    assert fanout.failure_count == threads_n * per_thread // 2
    assert fanout.failures == {"Flaky": threads_n * per_thread // 2, "RingBufferSink": 0}


def test_a_failing_disk_keeps_at_most_max_pending_records_dropping_the_oldest(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fake_clock: FakeClock,
) -> None:
    clock = fake_clock
    sink = JsonlSink(
        tmp_path / "x.jsonl", flush_every=2, max_pending=4, background=False, clock=clock
    )
    real_write = os.write

    def refuse(fd: int, data: bytes | memoryview) -> int:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "write", refuse)
    sink.write_event(event(i=0))
    with caplog.at_level(logging.WARNING, logger="techrevati.runtime.sinks"):
        for i in range(1, 7):
            with pytest.raises(SinkWriteError):
                sink.write_event(event(i=i))  # due, written inline: every attempt fails
    assert (sink.pending, sink.dropped) == (4, 3)
    assert any(getattr(r, "event", None) == "sink.dropped" for r in caplog.records)
    monkeypatch.setattr(os, "write", real_write)
    sink.close()
    kept = [r.data["i"] for r in read_jsonl(tmp_path / "x.jsonl") if isinstance(r, AgentEvent)]
    assert kept == [3, 4, 5, 6]


def test_writes_after_close_raise_and_close_is_idempotent(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "c.jsonl")
    sink.close()
    sink.close()
    assert sink.closed
    with pytest.raises(SinkClosedError, match="is closed") as info:
        sink.write_event(event())
    assert isinstance(info.value, TechrevatiError)
    assert isinstance(info.value, RuntimeError)
    sink.flush()  # nothing buffered: a no-op


def test_sinks_refuse_records_of_the_wrong_type(tmp_path: Path) -> None:
    with JsonlSink(tmp_path / "t.jsonl") as sink:
        with pytest.raises(InvalidValueError, match="event must be an AgentEvent, got dict"):
            sink.write_event({"name": "x"})  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match="record must be a UsageRecord"):
            sink.write_usage(event())  # type: ignore[arg-type]


def test_on_flush_hears_each_batch_and_its_errors_are_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sizes: list[int] = []

    def hear(size: int) -> None:
        sizes.append(size)
        raise RuntimeError("metrics down")

    path = tmp_path / "f.jsonl"
    with (
        caplog.at_level(logging.ERROR, logger="techrevati.runtime.sinks"),
        JsonlSink(path, flush_every=2, background=False, on_flush=hear) as sink,
    ):
        for i in range(5):
            sink.write_event(event(i=i))
    assert sizes == [2, 2, 1]
    assert sum(getattr(r, "event", None) == "sink.callback_failed" for r in caplog.records) == 3


def test_a_session_end_without_its_start_still_makes_a_row() -> None:
    rows = sessions_from_events(
        session_events("x", "cancelled", start_at=T0, seconds=4, cost="0.5")[1:]
    )
    assert len(rows) == 1
    assert rows[0].status is SessionStatus.CANCELLED
    assert rows[0].started_at is None
    assert rows[0].failure_class is AgentFailureClass.CANCELLED


def test_session_row_validates_its_fields() -> None:
    with pytest.raises(InvalidValueError, match="session_id must be a non-empty str"):
        SessionRow(session_id="", status=SessionStatus.RUNNING)
    with pytest.raises(InvalidValueError, match="status must be a SessionStatus"):
        SessionRow(session_id="s", status="running")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="cost_usd must be a finite Decimal"):
        SessionRow(session_id="s", status=SessionStatus.RUNNING, cost_usd=Decimal("nan"))
    with pytest.raises(InvalidValueError, match="started_at must be timezone-aware"):
        SessionRow(
            session_id="s",
            status=SessionStatus.RUNNING,
            started_at=datetime(2026, 1, 1),
        )


_SESSION_NAMES = ["session.started", "session.completed", "session.failed", "session.cancelled"]


@settings(max_examples=examples(40))
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c"]),
            st.sampled_from(_SESSION_NAMES),
            st.decimals(min_value=0, max_value=100, places=9, allow_nan=False),
        ),
        max_size=12,
    )
)
def test_sessions_fold_like_a_reference_model_in_sqlite_and_jsonl(
    steps: list[tuple[str, str, Decimal]],
) -> None:
    events = [
        AgentEvent(
            name=name,
            session_id=sid,
            data={} if name == "session.started" else {"cost_usd": str(cost), "turns": n},
            timestamp=T0 + timedelta(seconds=n),
        )
        for n, (sid, name, cost) in enumerate(steps)
    ]
    expected: dict[str, tuple[str, datetime | None, datetime | None, Decimal | None]] = {}
    for e in events:
        status, started, ended, cost = expected.get(e.session_id, ("running", None, None, None))
        if e.name == "session.started":
            started = started or e.timestamp
        else:
            status, ended = e.name.removeprefix("session."), e.timestamp
            cost = Decimal(str(e.data["cost_usd"]))
        expected[e.session_id] = (status, started, ended, cost)
    folded = {
        r.session_id: (r.status.value, r.started_at, r.ended_at, r.cost_usd)
        for r in sessions_from_events(events)
    }
    assert folded == expected
    with tempfile.TemporaryDirectory() as tmp:
        with SqliteSink(Path(tmp) / "p.db", background=False) as sink:
            for e in events:
                sink.write_event(e)
            stored = sink.read_sessions()
        assert sorted(stored, key=lambda r: r.session_id) == sorted(
            sessions_from_events(events), key=lambda r: r.session_id
        )


_IMPORT_CHECK = """
import sys
import techrevati.runtime.sinks as sinks
import techrevati.runtime.jsonl
listed = set(sinks.__all__) <= set(dir(sinks))
print(listed, "sqlite3" in sys.modules, end=" ")
sinks.SqliteSink
print("sqlite3" in sys.modules)
"""


def test_the_fanout_and_the_jsonl_sink_import_without_loading_sqlite3() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "True False True"  # dir() lists the lazy names; the first use loads sqlite3


def test_sinks_re_exports_every_public_name_of_the_jsonl_and_sqlite_modules() -> None:
    for module in (jsonl, sqlite):
        for name in module.__all__:
            assert name in sinks.__all__, name
            assert getattr(sinks, name) is getattr(module, name), name
    assert set(sinks.__all__) <= set(dir(sinks))
    with pytest.raises(AttributeError, match="has no attribute 'SqliteWriter'"):
        sinks.SqliteWriter  # noqa: B018
