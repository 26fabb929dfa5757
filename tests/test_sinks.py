from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    SCHEMA_VERSION,
    SQLITE_APPLICATION_ID,
    CorruptRecordError,
    JsonlSink,
    SchemaError,
    SessionRow,
    SessionStatus,
    SinkClosedError,
    SinkFanout,
    SinkWriteError,
    SqliteReader,
    SqliteSink,
    read_jsonl,
    sessions_from_events,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))
CHILD_TIMEOUT = 20.0


class FakeClock:
    """A monotonic clock that only moves when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
    )


def count_rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


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


# -- fan-out ----------------------------------------------------------------------


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


# -- JSONL ------------------------------------------------------------------------


def test_jsonl_round_trips_events_and_usage_in_order(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    records: list[AgentEvent | UsageRecord] = [
        event(i=1, failure_class=AgentFailureClass.RATE_LIMIT),
        usage(2, cost="0.000000123456789"),
        event(
            i=3, project_id="acme", at=datetime(2026, 1, 1, 14, tzinfo=timezone(timedelta(hours=2)))
        ),
    ]
    with JsonlSink(path) as sink:
        for record in records:
            if isinstance(record, AgentEvent):
                sink.write_event(record)
            else:
                sink.write_usage(record)
    assert read_jsonl(path) == records
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert next(iter(first)) == "kind"
    assert first["kind"] == "event"
    assert json.loads(lines[1])["cost_usd"] == "1.23456789E-7"


def test_jsonl_writes_nothing_until_a_batch_is_due(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    clock = FakeClock()
    sink = JsonlSink(path, flush_every=3, flush_interval=5.0, clock=clock, background=False)
    sink.write_event(event(i=1))
    sink.write_event(event(i=2))
    assert path.read_bytes() == b""
    assert sink.pending == 2
    sink.write_event(event(i=3))
    assert len(read_jsonl(path)) == 3
    sink.write_event(event(i=4))
    clock.advance(5.0)
    sink.write_event(event(i=5))
    assert len(read_jsonl(path)) == 5
    assert (sink.written, sink.batches, sink.pending) == (5, 2, 0)
    sink.close()


@pytest.mark.parametrize(("policy", "expected_syncs"), [("batch", 2), ("never", 0), ("always", 5)])
def test_jsonl_fsync_policy_decides_how_often_the_file_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, expected_syncs: int
) -> None:
    path = tmp_path / f"{policy}.jsonl"
    if policy == "always":
        sink = JsonlSink(path, fsync="always")
    else:
        sink = JsonlSink(path, fsync=policy, flush_every=3, background=False)  # type: ignore[arg-type]
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    for i in range(5):
        sink.write_event(event(i=i))
    if policy == "always":
        assert len(read_jsonl(path)) == 5  # on disk before write_event returned
    sink.close()
    assert len(synced) == expected_syncs
    assert len(read_jsonl(path)) == 5


def test_jsonl_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="fsync must be one of"):
        JsonlSink(tmp_path / "a.jsonl", fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="flush_every must be 1 with fsync='always', got 5"):
        JsonlSink(tmp_path / "b.jsonl", fsync="always", flush_every=5)
    with pytest.raises(InvalidValueError, match="flush_every must be an int >= 1, got 0"):
        JsonlSink(tmp_path / "c.jsonl", flush_every=0)
    with pytest.raises(InvalidValueError, match="flush_interval must be a number > 0, got 0"):
        JsonlSink(tmp_path / "d.jsonl", flush_interval=0)
    with pytest.raises(InvalidValueError, match="max_pending must be >= flush_every"):
        JsonlSink(tmp_path / "e.jsonl", flush_every=10, max_pending=5)


def test_jsonl_lines_never_interleave_when_hammered_from_threads(tmp_path: Path) -> None:
    path = tmp_path / "threads.jsonl"
    threads_n, per_thread = 8, 250
    with JsonlSink(path, flush_every=64) as sink:

        def hammer(worker: int) -> None:
            for i in range(per_thread):
                sink.write_event(event(i=i, session_id=f"s{worker}"))
                sink.write_usage(usage(i, session_id=f"s{worker}"))

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    records = read_jsonl(path)
    assert len(records) == 2 * threads_n * per_thread
    for worker in range(threads_n):
        mine = [r for r in records if r.session_id == f"s{worker}"]
        events = [r for r in mine if isinstance(r, AgentEvent)]
        assert [e.data["i"] for e in events] == list(range(per_thread))
        assert len(mine) == 2 * per_thread


def test_read_jsonl_skips_a_torn_last_line_and_the_sink_repairs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "torn.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(event(i=1))
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"kind":"event","name":"tur')
    assert len(read_jsonl(path)) == 1
    with caplog.at_level(logging.WARNING, logger="techrevati.runtime.sinks"):
        sink = JsonlSink(path)
    repaired = [r for r in caplog.records if getattr(r, "event", None) == "sink.repaired"]
    assert [r.bytes for r in repaired] == [len(b'{"kind":"event","name":"tur')]  # type: ignore[attr-defined]
    with sink:
        sink.write_event(event(i=2))
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [1, 2]


def test_read_jsonl_names_file_and_line_of_a_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(event(i=1))
    path.write_bytes(path.read_bytes() + b'{"kind": "mystery"}\n' + b"\n")
    with pytest.raises(CorruptRecordError, match=r"bad\.jsonl:2: kind must be 'event' or 'usage'"):
        read_jsonl(path)
    path.write_bytes(b"not json\n")
    with pytest.raises(CorruptRecordError, match=r"bad\.jsonl:1:"):
        read_jsonl(path)


def test_jsonl_keeps_a_failed_batch_whole_and_writes_it_on_the_next_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "full.jsonl"
    sink = JsonlSink(path, flush_every=100, background=False)
    for i in range(3):
        sink.write_event(event(i=i))
    real_write = os.write
    calls = []

    def half_then_fail(fd: int, data: bytes | memoryview) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:10])  # a short write...
        raise OSError(28, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(os, "write", half_then_fail)
    with (
        caplog.at_level(logging.ERROR, logger="techrevati.runtime.sinks"),
        pytest.raises(SinkWriteError, match="could not write 3 records") as info,
    ):
        sink.flush()
    assert isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, OSError)
    assert path.read_bytes() == b""  # the partial batch was cut off again
    assert (sink.pending, sink.failed_flushes, sink.written) == (3, 1, 0)
    failed = [r for r in caplog.records if getattr(r, "event", None) == "sink.flush_failed"]
    assert [(r.records, r.pending) for r in failed] == [(3, 3)]  # type: ignore[attr-defined]
    monkeypatch.setattr(os, "write", real_write)
    sink.close()
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [0, 1, 2]


def test_a_failing_disk_keeps_at_most_max_pending_records_dropping_the_oldest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
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


# -- SQLite -----------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "runs.db"


def test_sqlite_round_trips_typed_records(db: Path) -> None:
    events = [
        event(i=1),
        event(name="turn.failed", i=2, failure_class=AgentFailureClass.RATE_LIMIT),
        event(i=3, project_id="acme", data={"model": "model-b", "nested": {"k": [1, 2]}}),
        event(i=4, project_id=None, data={}),
    ]
    records = [usage(1), usage(2, cost="0.000000123456789", project_id="7")]
    with SqliteSink(db) as sink:
        for e in events:
            sink.write_event(e)
        for r in records:
            sink.write_usage(r)
        assert sink.read_events() == events
        assert sink.read_usage() == records
    with SqliteReader(db) as reader:
        assert reader.read_events() == events
        assert reader.read_usage() == records


def test_sqlite_stores_exact_cost_text_iso_utc_times_and_typed_projects(db: Path) -> None:
    local = datetime(2026, 1, 1, 14, 0, tzinfo=PLUS_TWO)
    with SqliteSink(db) as sink:
        sink.write_usage(usage(cost="1E-7"))
        sink.write_event(event(at=local))
    with sqlite3.connect(db) as conn:
        cost, kind, project_kind = conn.execute(
            "SELECT cost_usd, typeof(cost_usd), typeof(project_id) FROM usage"
        ).fetchone()
        ts = conn.execute("SELECT ts FROM events").fetchone()[0]
    assert (cost, kind, project_kind) == ("0.0000001", "text", "integer")
    assert ts == "2026-01-01T12:00:00.000000+00:00"


def test_sqlite_uses_wal_our_schema_version_and_application_id(db: Path) -> None:
    SqliteSink(db).close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA application_id").fetchone()[0] == SQLITE_APPLICATION_ID
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"events", "usage", "sessions"} <= tables


def test_sqlite_writes_a_batch_every_flush_every_records(db: Path) -> None:
    sink = SqliteSink(db, flush_every=3, background=False, clock=FakeClock())
    sink.write_event(event(i=1))
    sink.write_usage(usage(2))
    assert count_rows(db, "events") + count_rows(db, "usage") == 0
    sink.write_event(event(i=3))
    assert (count_rows(db, "events"), count_rows(db, "usage")) == (2, 1)
    sink.write_event(event(i=4))
    sink.flush()
    assert count_rows(db, "events") == 3
    assert (sink.written, sink.batches) == (4, 2)
    sink.close()


def test_sqlite_writes_a_batch_once_flush_interval_has_passed_on_the_injected_clock(
    db: Path,
) -> None:
    clock = FakeClock()
    sink = SqliteSink(db, flush_every=100, flush_interval=2.0, background=False, clock=clock)
    sink.write_event(event(i=1))
    clock.advance(1.999)
    sink.write_event(event(i=2))
    assert count_rows(db, "events") == 0
    clock.advance(0.001)
    sink.write_event(event(i=3))
    assert count_rows(db, "events") == 3
    clock.advance(1.0)
    sink.write_event(event(i=4))
    assert count_rows(db, "events") == 3  # the interval restarts at each batch
    sink.close()
    assert count_rows(db, "events") == 4


def test_sqlite_background_thread_writes_a_full_batch_by_itself(db: Path) -> None:
    written = threading.Event()
    sizes: list[int] = []

    def heard(size: int) -> None:
        sizes.append(size)
        written.set()

    with SqliteSink(db, flush_every=5, flush_interval=3600.0, on_flush=heard) as sink:
        for i in range(5):
            sink.write_event(event(i=i))
        assert written.wait(CHILD_TIMEOUT)
        assert count_rows(db, "events") == 5
        assert sizes == [5]


def test_sqlite_close_flushes_and_later_writes_and_reads_raise(db: Path) -> None:
    sink = SqliteSink(db, flush_every=1000)
    sink.write_event(event())
    sink.close()
    assert count_rows(db, "events") == 1
    with pytest.raises(SinkClosedError, match="is closed"):
        sink.write_usage(usage())
    with pytest.raises(SinkClosedError, match="read with SqliteReader"):
        sink.read_events()


def test_sqlite_readers_filter_by_every_field_with_parameters(db: Path) -> None:
    with SqliteSink(db) as sink:
        sink.write_event(event(i=0, role="writer", project_id=42))
        sink.write_event(event(i=1, role="reviewer", project_id="42", session_id="s2"))
        sink.write_event(
            event(
                name="turn.failed",
                i=2,
                project_id="acme",
                failure_class=AgentFailureClass.LLM_TIMEOUT,
                data={"model": "model-b"},
            )
        )
        sink.write_usage(usage(0, model="model-a", role="writer"))
        sink.write_usage(usage(1, model="model-b", role="reviewer", project_id="acme"))
        sink.write_usage(usage(2, model="model-b", role="writer", session_id="s2"))

        def ids(items: list[AgentEvent]) -> list[object]:
            return [e.data.get("i") for e in items]

        assert ids(sink.read_events(project=42)) == [0, 1]
        assert ids(sink.read_events(project="42")) == [0, 1]
        assert ids(sink.read_events(role="reviewer")) == [1]
        assert ids(sink.read_events(session_id="s2")) == [1]
        assert len(sink.read_events(model="model-b")) == 1
        assert len(sink.read_events(name="turn.failed")) == 1
        assert len(sink.read_events(failure_class=AgentFailureClass.LLM_TIMEOUT)) == 1
        assert ids(sink.read_events(since=T0 + timedelta(seconds=1))) == [1, None]
        assert ids(sink.read_events(until=T0 + timedelta(seconds=1))) == [0]
        assert ids(sink.read_events(limit=2, newest_first=True)) == [None, 1]
        assert ids(sink.read_events(project="'; DROP TABLE events; --")) == []
        assert [r.input_tokens for r in sink.read_usage(model="model-b")] == [1001, 1002]
        assert [r.input_tokens for r in sink.read_usage(role="writer", limit=1)] == [1000]
        assert [r.input_tokens for r in sink.read_usage(project="acme")] == [1001]
        assert [r.input_tokens for r in sink.read_usage(session_id="s2")] == [1002]
        assert count_rows(db, "events") == 3


def test_sqlite_readers_reject_bad_filters(db: Path) -> None:
    with SqliteSink(db) as sink:
        with pytest.raises(InvalidValueError, match="since must be an aware datetime"):
            sink.read_events(since=datetime(2026, 1, 1))
        with pytest.raises(InvalidValueError, match="limit must be an int >= 1, got 0"):
            sink.read_usage(limit=0)
        with pytest.raises(InvalidValueError, match="project filter must be a str or int"):
            sink.read_sessions(project=1.5)  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match="role filter must be a str"):
            sink.read_events(role=3)  # type: ignore[arg-type]


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


def test_sqlite_keeps_one_session_row_per_session_from_its_events(db: Path) -> None:
    with SqliteSink(db, flush_every=1) as sink:
        for e in session_events("a", "completed", start_at=T0, seconds=10.5, cost="0.25"):
            sink.write_event(e)
        for e in session_events("b", "failed", start_at=T0, seconds=2.0, cost="0.01"):
            sink.write_event(e)
        sink.write_event(session_events("c", "completed", start_at=T0, seconds=1, cost="0")[0])
        rows = {row.session_id: row for row in sink.read_sessions()}
    assert rows["a"] == SessionRow(
        session_id="a",
        status=SessionStatus.COMPLETED,
        started_at=T0,
        ended_at=T0 + timedelta(seconds=10.5),
        duration_seconds=10.5,
        cost_usd=Decimal("0.25"),
        turns=3,
        role="writer",
        phase="draft",
        project_id=42,
        worker_id="w-a",
    )
    assert rows["b"].status is SessionStatus.FAILED
    assert rows["b"].failure_class is AgentFailureClass.RATE_LIMIT
    assert rows["b"].error_type == "RateLimitError"
    assert rows["c"].status is SessionStatus.RUNNING
    assert rows["c"].ended_at is None
    assert rows["c"].cost_usd is None
    assert count_rows(db, "sessions") == 3
    with SqliteReader(db) as reader:
        assert [r.session_id for r in reader.read_sessions(status="failed")] == ["b"]
        assert reader.read_sessions(session_id="a") == [rows["a"]]
        assert len(reader.read_sessions(project="42", role="writer", limit=2)) == 2


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


@settings(max_examples=40, deadline=None, derandomize=True)
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


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.decimals(allow_nan=False, allow_infinity=False, places=12), max_size=8))
def test_costs_survive_sqlite_and_jsonl_exactly(costs: list[Decimal]) -> None:
    records = [
        UsageRecord(model="m", cost_usd=cost, timestamp=T0 + timedelta(seconds=i))
        for i, cost in enumerate(costs)
    ]
    with tempfile.TemporaryDirectory() as tmp:
        with SqliteSink(Path(tmp) / "c.db", background=False) as sink:
            for record in records:
                sink.write_usage(record)
            stored = sink.read_usage()
        with JsonlSink(Path(tmp) / "c.jsonl", background=False, fsync="never") as jsonl:
            for record in records:
                jsonl.write_usage(record)
        lines = read_jsonl(Path(tmp) / "c.jsonl")
    assert [r.cost_usd for r in stored] == costs
    assert [r.cost_usd for r in lines if isinstance(r, UsageRecord)] == costs
    assert sum((r.cost_usd for r in stored), Decimal(0)) == sum(costs, Decimal(0))


# -- schema and migration ---------------------------------------------------------

V1_SCHEMA = [
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY, ts TEXT NOT NULL, name TEXT NOT NULL,
        session_id TEXT NOT NULL DEFAULT '', worker_id TEXT NOT NULL DEFAULT '', project_id,
        role TEXT NOT NULL DEFAULT '', phase TEXT NOT NULL DEFAULT '', status TEXT,
        failure_class TEXT, detail TEXT, data TEXT NOT NULL DEFAULT '{}')""",
    """CREATE TABLE usage (
        id INTEGER PRIMARY KEY, ts TEXT NOT NULL, session_id TEXT NOT NULL DEFAULT '',
        worker_id TEXT NOT NULL DEFAULT '', project_id, role TEXT NOT NULL DEFAULT '',
        phase TEXT NOT NULL DEFAULT '', model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd TEXT NOT NULL DEFAULT '0', duration_seconds REAL)""",
    "PRAGMA user_version = 1",
]


def build_v1(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        for statement in V1_SCHEMA:
            conn.execute(statement)
        rows = [
            ("2026-01-01T12:00:00.000000+00:00", "session.started", None, "{}"),
            ("2026-01-01T12:00:01.000000+00:00", "turn.completed", None, '{"model":"m1"}'),
            (
                "2026-01-01T12:00:09.000000+00:00",
                "session.failed",
                "rate_limit",
                '{"duration_seconds":9.0,"cost_usd":"0.50","turns":2,"error_type":"E"}',
            ),
        ]
        conn.executemany(
            "INSERT INTO events (ts, name, session_id, worker_id, project_id, role, phase,"
            " failure_class, data) VALUES (?, ?, 's1', 'w1', 42, 'writer', 'draft', ?, ?)",
            rows,
        )
        conn.execute(
            "INSERT INTO usage (ts, session_id, worker_id, project_id, role, phase, model,"
            " input_tokens, output_tokens, cost_usd, duration_seconds)"
            " VALUES ('2026-01-01T12:00:01.000000+00:00', 's1', 'w1', 42, 'writer', 'draft',"
            " 'm1', 100, 20, '0.50', 1.5)"
        )


def test_a_version_1_database_is_migrated_on_open_with_its_rows_intact(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build_v1(db)
    with pytest.raises(SchemaError, match=r"schema version 1.*open it once with SqliteSink"):
        SqliteReader(db)
    with caplog.at_level(logging.INFO, logger="techrevati.runtime.sinks"):
        sink = SqliteSink(db)
    migrated = [r for r in caplog.records if getattr(r, "event", None) == "sink.migrated"]
    assert [(r.from_version, r.to_version) for r in migrated] == [(1, SCHEMA_VERSION)]  # type: ignore[attr-defined]
    with sink:
        assert [e.name for e in sink.read_events()] == [
            "session.started",
            "turn.completed",
            "session.failed",
        ]
        assert [e.data for e in sink.read_events(model="m1")] == [{"model": "m1"}]
        (old,) = sink.read_usage()
        assert (old.input_tokens, old.output_tokens, old.cost_usd) == (100, 20, Decimal("0.50"))
        assert (old.cache_read_tokens, old.reasoning_tokens, old.priced) == (0, 0, True)
        (session,) = sink.read_sessions()
        assert session.status is SessionStatus.FAILED
        assert session.started_at == T0
        assert session.cost_usd == Decimal("0.50")
        assert session.failure_class is AgentFailureClass.RATE_LIMIT
        sink.write_usage(usage(5))
    with SqliteReader(db) as reader:
        assert len(reader.read_usage()) == 2
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_sqlite_refuses_files_that_are_not_its_own(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(SchemaError, match=r"has tables \['customers'\] but no techrevati"):
        SqliteSink(foreign)
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaError, match="schema version 99; this library knows 1 to 2"):
        SqliteSink(newer)
    other_app = tmp_path / "other.db"
    with sqlite3.connect(other_app) as conn:
        conn.execute("PRAGMA application_id = 7")
    with pytest.raises(SchemaError, match="belongs to another application"):
        SqliteReader(other_app)
    text = tmp_path / "notes.db"
    text.write_text("hello, this is not a database at all" * 40)
    with pytest.raises(SchemaError, match="not a"):
        SqliteSink(text)
    with pytest.raises(FileNotFoundError):
        SqliteReader(tmp_path / "missing.db")


def test_sqlite_rejects_bad_settings(db: Path) -> None:
    with pytest.raises(InvalidValueError, match="synchronous must be 'full' or 'normal'"):
        SqliteSink(db, synchronous="off")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="busy_timeout must be a number >= 0, got -1"):
        SqliteSink(db, busy_timeout=-1)
    with pytest.raises(InvalidValueError, match="flush_every must be an int >= 1, got True"):
        SqliteSink(db, flush_every=True)


# -- concurrency and durability ---------------------------------------------------


def test_sqlite_keeps_exact_counts_when_hammered_from_threads(db: Path) -> None:
    threads_n, per_thread = 8, 300
    with SqliteSink(db, flush_every=50, synchronous="normal") as sink:

        def hammer(worker: int) -> None:
            for i in range(per_thread):
                sink.write_event(event(i=i, session_id=f"s{worker}"))
                sink.write_usage(usage(i, session_id=f"s{worker}"))

        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    with SqliteReader(db) as reader:
        assert len(reader.read_events()) == threads_n * per_thread
        for worker in range(threads_n):
            mine = reader.read_events(session_id=f"s{worker}")
            assert [e.data["i"] for e in mine] == list(range(per_thread))
            assert len(reader.read_usage(session_id=f"s{worker}")) == per_thread


def test_a_locked_database_fails_the_batch_and_the_retry_writes_it_once(db: Path) -> None:
    sink = SqliteSink(db, busy_timeout=0, background=False, flush_every=100)
    for i in range(3):
        sink.write_event(event(i=i))
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(SinkWriteError, match="could not write 3 records: OperationalError"):
        sink.flush()
    assert sink.pending == 3
    blocker.execute("ROLLBACK")
    blocker.close()
    sink.close()
    assert count_rows(db, "events") == 3


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the child prints or dies
    if not line:
        proc.wait(CHILD_TIMEOUT)
        assert proc.stderr is not None
        pytest.fail(f"child exited {proc.returncode}: {proc.stderr.read()}")
    return line.strip()


CHILD_PRELUDE = """
import sys
from datetime import UTC, datetime
from decimal import Decimal
from techrevati.runtime.events import AgentEvent, UsageRecord
from techrevati.runtime.sinks import SqliteSink

def ev(worker, i):
    return AgentEvent(name="turn.completed", session_id=worker, worker_id=worker,
                      data={"model": "m", "i": i})

def us(worker, i):
    return UsageRecord(model="m", input_tokens=i, cost_usd=Decimal("0.001"),
                       worker_id=worker, session_id=worker)
"""

WRITER = (
    CHILD_PRELUDE
    + """
path, worker, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with SqliteSink(path, flush_every=25, busy_timeout=30) as sink:
    for i in range(n):
        sink.write_event(ev(worker, i))
        sink.write_usage(us(worker, i))
print("done", flush=True)
"""
)


def test_several_processes_writing_one_file_lose_and_duplicate_nothing(db: Path) -> None:
    workers, per_worker = 3, 400
    procs = [spawn(WRITER, str(db), f"p{n}", str(per_worker)) for n in range(workers)]
    try:
        for proc in procs:
            assert read_line(proc) == "done"
            assert proc.wait(CHILD_TIMEOUT) == 0
    finally:
        for proc in procs:
            proc.kill()
            proc.communicate()
    with SqliteReader(db) as reader:
        for n in range(workers):
            mine = reader.read_events(session_id=f"p{n}")
            assert [e.data["i"] for e in mine] == list(range(per_worker))
            assert len(reader.read_usage(session_id=f"p{n}")) == per_worker
    assert count_rows(db, "events") == workers * per_worker
    assert count_rows(db, "usage") == workers * per_worker


KILLED_AFTER_FLUSH = (
    CHILD_PRELUDE
    + """
path, flushed, unflushed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sink = SqliteSink(path, flush_every=40, flush_interval=3600)
for i in range(flushed):
    sink.write_event(ev("k", i))
    sink.write_usage(us("k", i))
sink.flush()
for i in range(flushed, flushed + unflushed):
    sink.write_event(ev("k", i))
print("flushed", flush=True)
sys.stdin.read()  # block until killed
"""
)


@pytest.fixture
def killed() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.communicate()


def test_after_kill_9_the_file_holds_exactly_the_flushed_records(
    db: Path, killed: list[subprocess.Popen[str]]
) -> None:
    proc = spawn(KILLED_AFTER_FLUSH, str(db), "250", "7")
    killed.append(proc)
    assert read_line(proc) == "flushed"
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(CHILD_TIMEOUT) == -signal.SIGKILL
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with SqliteReader(db) as reader:
        assert [e.data["i"] for e in reader.read_events()] == list(range(250))
        assert len(reader.read_usage()) == 250


KILLED_MID_STREAM = (
    CHILD_PRELUDE
    + """
path, batch = sys.argv[1], int(sys.argv[2])
sink = SqliteSink(path, flush_every=batch, background=False, synchronous="normal")
for i in range(10_000_000):
    sink.write_event(ev("k", i))
    if i == batch - 1:
        print("first batch", flush=True)
"""
)


def test_kill_9_mid_stream_leaves_only_whole_batches(
    db: Path, killed: list[subprocess.Popen[str]]
) -> None:
    batch = 20
    proc = spawn(KILLED_MID_STREAM, str(db), str(batch))
    killed.append(proc)
    assert read_line(proc) == "first batch"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(CHILD_TIMEOUT)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with SqliteReader(db) as reader:
        seen = [e.data["i"] for e in reader.read_events()]
    assert len(seen) >= batch
    assert len(seen) % batch == 0
    assert seen == list(range(len(seen)))


EXITS_WITHOUT_CLOSE = (
    CHILD_PRELUDE
    + """
sink = SqliteSink(sys.argv[1], flush_every=1000, flush_interval=3600)
for i in range(30):
    sink.write_event(ev("x", i))
print("exiting", flush=True)
"""
)


def test_records_still_buffered_at_interpreter_exit_are_written(db: Path) -> None:
    proc = spawn(EXITS_WITHOUT_CLOSE, str(db))
    out, err = proc.communicate(timeout=CHILD_TIMEOUT)
    assert (proc.returncode, out.strip()) == (0, "exiting"), err
    assert count_rows(db, "events") == 30
