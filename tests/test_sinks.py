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
from tests.sink_records import T0, event, logged_by, session_events, usage


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
    assert [r.getMessage() for r in records] == [
        "sink.failed: Broken.write_event raised OSError: disk on fire",
        "sink.failed: Broken.write_usage raised ValueError: bad record",
    ]
    assert [type(r.exc_info[1]) for r in records if r.exc_info] == [OSError, ValueError]
    assert {logged_by(r) for r in records} <= {"_failed", "mutmut"}  # not log_event


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


def test_fanout_flush_and_close_reach_the_sinks_that_have_them_isolating_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class BrokenClose(Broken):
        def close(self) -> None:
            raise OSError("cannot close")

    both = Both()
    with (
        caplog.at_level(logging.ERROR, logger="techrevati.runtime.sinks"),
        SinkFanout([BrokenClose(), RingBufferSink(), both]) as fanout,
    ):
        fanout.flush()
        assert both.flushed == 1
        assert fanout.failures["BrokenClose"] == 1
    assert both.closed == 1
    assert fanout.failures == {"BrokenClose": 2, "RingBufferSink": 0, "Both": 0}
    records = [r for r in caplog.records if getattr(r, "event", None) == "sink.failed"]
    assert [(r.operation, r.record, r.error_type) for r in records] == [  # type: ignore[attr-defined]
        ("flush", None, "RuntimeError"),
        ("close", None, "OSError"),
    ]
    assert [r.getMessage() for r in records] == [
        "sink.failed: BrokenClose.flush raised RuntimeError: cannot flush",
        "sink.failed: BrokenClose.close raised OSError: cannot close",
    ]
    assert [type(r.exc_info[1]) for r in records if r.exc_info] == [RuntimeError, OSError]


@pytest.mark.parametrize("name", sorted(sinks._SQLITE_NAMES))
def test_a_sqlite_name_is_imported_from_its_module_on_first_use_and_then_kept(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.delitem(vars(sinks), name, raising=False)  # as if never used (restored after)
    assert getattr(sinks, name) is getattr(sqlite, name)
    assert vars(sinks)[name] is getattr(sqlite, name)  # later lookups find it directly


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
    with pytest.raises(SinkClosedError, match=r"^JsonlSink\('.*c\.jsonl'\) is closed$") as info:
        sink.write_event(event())
    assert isinstance(info.value, TechrevatiError)
    assert isinstance(info.value, RuntimeError)
    sink.flush()  # nothing buffered: a no-op


def test_sinks_refuse_records_of_the_wrong_type(tmp_path: Path) -> None:
    with JsonlSink(tmp_path / "t.jsonl") as sink:
        with pytest.raises(InvalidValueError, match="event must be an AgentEvent, got dict"):
            sink.write_event({"name": "x"})  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match="record must be a UsageRecord, got AgentEvent"):
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
    assert rows == [
        SessionRow(
            session_id="x",
            status=SessionStatus.CANCELLED,
            started_at=None,
            ended_at=T0 + timedelta(seconds=4),
            duration_seconds=4.0,
            cost_usd=Decimal("0.5"),
            turns=3,
            role="writer",
            phase="draft",
            project_id=42,
            worker_id="w-x",
            failure_class=AgentFailureClass.CANCELLED,
            error_type=None,
        )
    ]


def test_a_session_end_names_its_error_type_only_as_text_and_fills_a_missing_project() -> None:
    start = AgentEvent(name="session.started", session_id="s", timestamp=T0)
    end = AgentEvent(
        name="session.failed",
        session_id="s",
        project_id=7,
        data={"error_type": 500},
        timestamp=T0 + timedelta(seconds=1),
    )
    (row,) = sessions_from_events([start, end])
    assert (row.project_id, row.error_type) == (7, None)


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


def test_fanout_refuses_two_sinks_whose_names_read_the_same() -> None:
    with pytest.raises(InvalidValueError, match=r"sink names must be unique, got \['1', '1'\]"):
        SinkFanout({1: EventsOnly(), "1": EventsOnly()})


def test_fanout_repr_names_its_sinks_and_counts_failures() -> None:
    fanout = SinkFanout({"audit": Broken(), "memory": RingBufferSink()})
    fanout.write_event(event())
    assert repr(fanout) == "SinkFanout(['audit', 'memory'], failures=1)"


def test_a_keyboard_interrupt_mid_batch_keeps_the_batch_and_is_not_logged_as_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ki.jsonl"
    sink = JsonlSink(path, flush_every=100, background=False)
    for i in range(3):
        sink.write_event(event(i=i))
    real_write = os.write

    def half_then_interrupt(fd: int, data: bytes | memoryview) -> int:
        if not path.read_bytes():
            return real_write(fd, bytes(data)[:7])  # part of the batch reaches the file...
        raise KeyboardInterrupt  # ...then Ctrl-C

    monkeypatch.setattr(os, "write", half_then_interrupt)
    with (
        caplog.at_level(logging.DEBUG, logger="techrevati.runtime.sinks"),
        pytest.raises(KeyboardInterrupt),
    ):
        sink.flush()
    assert path.read_bytes() == b""  # the partial batch was cut off again
    assert (sink.pending, sink.failed_flushes, sink.written, sink.batches) == (3, 1, 0, 0)
    assert [getattr(r, "event", None) for r in caplog.records] == []
    monkeypatch.setattr(os, "write", real_write)
    sink.close()
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [0, 1, 2]


def test_records_written_while_a_batch_fails_are_capped_at_max_pending_oldest_first(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fake_clock: FakeClock,
) -> None:
    path = tmp_path / "cap.jsonl"
    sink = JsonlSink(path, flush_every=3, max_pending=3, background=False, clock=fake_clock)
    real_write = os.write
    arrived: list[bool] = []

    def more_arrive_then_fail(fd: int, data: bytes | memoryview) -> int:
        if not arrived:  # while the batch is being written, two more records come in
            arrived.append(True)
            sink.write_event(event(i=100))
            sink.write_event(event(i=101))
        raise OSError(28, "No space left on device")

    sink.write_event(event(i=0))
    sink.write_event(event(i=1))
    monkeypatch.setattr(os, "write", more_arrive_then_fail)
    with (
        caplog.at_level(logging.ERROR, logger="techrevati.runtime.sinks"),
        pytest.raises(SinkWriteError, match=r"could not write 3 records: OSError: .*No space"),
    ):
        sink.write_event(event(i=2))  # the batch is due: written inline, and it fails
    assert (sink.pending, sink.dropped, sink.failed_flushes) == (3, 2, 1)
    failed = [r for r in caplog.records if getattr(r, "event", None) == "sink.flush_failed"]
    assert [(r.records, r.pending, r.error_type) for r in failed] == [(3, 3, "OSError")]  # type: ignore[attr-defined]
    monkeypatch.setattr(os, "write", real_write)
    sink.close()
    kept = [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)]
    assert kept == [2, 100, 101]  # the two oldest of the failed batch made room


def test_a_batch_is_due_after_flush_every_records_or_flush_interval_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock
) -> None:
    clock = fake_clock
    sink = JsonlSink(
        tmp_path / "due.jsonl", flush_every=3, flush_interval=2.0, background=False, clock=clock
    )
    assert sink._due_in() is None  # nothing buffered: nothing is ever due
    sink.write_event(event(i=0))
    assert sink._due_in() == 2.0
    clock.advance(0.5)
    assert sink._due_in() == 1.5
    sink._flush_pending(only_if_due=True)  # the thread's flush, after a flush() came first
    assert (sink.pending, sink.written) == (1, 0)  # not due: nothing written early
    clock.advance(5.0)
    assert sink._due_in() == 0.0  # overdue is due now, never negative
    sink._flush_pending(only_if_due=True)
    assert (sink.pending, sink.written) == (0, 1)
    real_write = os.write

    def refuse(fd: int, data: bytes | memoryview) -> int:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "write", refuse)
    for i in range(1, 3):
        sink.write_event(event(i=i))
    with pytest.raises(SinkWriteError, match="could not write 3 records"):
        sink.write_event(event(i=3))  # a full batch, and the disk refuses it
    assert sink._due_in() == 2.0  # a failed batch waits flush_interval before its retry
    clock.advance(0.75)
    assert sink._due_in() == 1.25
    clock.advance(1.25)
    assert sink._due_in() == 0.0  # the pause is over and the batch is full
    monkeypatch.setattr(os, "write", real_write)
    sink.close()


WAIT = 20.0  # seconds a test waits at most for the flusher thread (only a bug makes it wait)


class FlusherWatchedClock(FakeClock):
    """A fake clock that counts the calls the flusher thread makes, to wait on them."""

    def __init__(self) -> None:
        super().__init__()
        self.flusher_calls = 0
        self._seen = threading.Condition()

    def __call__(self) -> float:
        if threading.current_thread().name.endswith("-flusher"):
            with self._seen:
                self.flusher_calls += 1
                self._seen.notify_all()
        return self.now

    def wait_for_flusher(self, calls: int) -> None:
        with self._seen:
            assert self._seen.wait_for(lambda: self.flusher_calls >= calls, WAIT)


def test_the_flusher_thread_writes_a_batch_once_flush_interval_has_passed(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    path = tmp_path / "interval.jsonl"
    sizes: list[int] = []
    written = threading.Event()

    def heard(size: int) -> None:
        sizes.append(size)
        written.set()

    with JsonlSink(
        path, flush_every=100, flush_interval=3600.0, clock=fake_clock, on_flush=heard
    ) as sink:
        sink.write_event(event(i=0))  # not due: the thread keeps waiting
        fake_clock.advance(3600.0)
        sink.write_event(event(i=1))  # due by the interval: the thread is woken
        assert written.wait(WAIT)
        assert sizes == [2]
        assert len(read_jsonl(path)) == 2


def test_after_a_failed_batch_the_flusher_thread_waits_flush_interval_before_retrying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="techrevati.runtime.sinks")
    clock = FlusherWatchedClock()
    path = tmp_path / "pause.jsonl"
    real_write = os.write
    attempts: list[int] = []
    disk_full = True

    def maybe_refuse(fd: int, data: bytes | memoryview) -> int:
        if disk_full:
            attempts.append(fd)
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    sizes: list[int] = []
    written = threading.Event()

    def heard(size: int) -> None:
        sizes.append(size)
        written.set()

    monkeypatch.setattr(os, "write", maybe_refuse)
    sink = JsonlSink(path, flush_every=1, flush_interval=3600.0, clock=clock, on_flush=heard)
    try:
        sink.write_event(event(i=0))
        # the thread: is it due (1 call), still due once it holds the lock (2), the failed
        # batch's retry time (3), how long to pause (4)
        clock.wait_for_flusher(4)
        assert len(attempts) == 1
        sink.write_event(event(i=1))  # due by size, but the pause after the failure holds
        clock.wait_for_flusher(5)  # the thread woke, looked at the clock, and waits on
        assert len(attempts) == 1
        assert sink.failed_flushes == 1
        disk_full = False
        clock.advance(3600.0)
        sink.write_event(event(i=2))
        assert written.wait(WAIT)
        assert sizes == [3]  # the retry wrote the kept batch and the newer records together
        assert (sink.written, sink.failed_flushes, sink.pending) == (3, 1, 0)
    finally:
        disk_full = False
        sink.close()
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [0, 1, 2]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_sink_that_refuses_a_setting_leaves_no_file_open_and_is_not_registered(
    tmp_path: Path,
) -> None:
    from techrevati.runtime import _sink_base

    before, registered = open_fds(), set(_sink_base._OPEN_SINKS)
    for bad in ({"flush_interval": 0}, {"max_pending": 0}, {"clock": None}, {"on_flush": 3}):
        with pytest.raises(InvalidValueError):
            JsonlSink(tmp_path / "j.jsonl", **bad)
        with pytest.raises(InvalidValueError):
            SqliteSink(tmp_path / "s.db", **bad)
    assert open_fds() == before
    assert set(_sink_base._OPEN_SINKS) == registered


def test_a_sink_knows_its_path_and_says_in_its_repr_what_it_holds(
    tmp_path: Path, fake_clock: FakeClock
) -> None:
    path = tmp_path / "r.jsonl"
    sink = JsonlSink(path, flush_every=10, background=False, clock=fake_clock)
    sink.write_event(event())
    sink.write_usage(usage())
    assert sink.path == path
    assert repr(sink) == f"JsonlSink({str(path)!r}, pending=2)"
    sink.close()
    assert repr(sink) == f"JsonlSink({str(path)!r}, closed)"


def test_at_exit_every_open_sink_is_closed_and_one_that_cannot_flush_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from techrevati.runtime import _sink_base

    monkeypatch.setattr(_sink_base, "_OPEN_SINKS", set())  # only this test's sinks
    good = JsonlSink(tmp_path / "good.jsonl", flush_every=100, background=False)
    bad = SqliteSink(tmp_path / "bad.db", flush_every=100, background=False)
    closed_early = JsonlSink(tmp_path / "early.jsonl")
    closed_early.close()
    assert {good, bad} == _sink_base._OPEN_SINKS
    good.write_event(event(i=1))
    bad.write_event(event(i=2))

    def refuse(batch: object) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(bad, "_write_batch", refuse)
    with caplog.at_level(logging.ERROR, logger="techrevati.runtime.sinks"):
        _sink_base._close_open_sinks()
    assert good.closed
    assert bad.closed
    assert set() == _sink_base._OPEN_SINKS
    assert [r.data["i"] for r in read_jsonl(tmp_path / "good.jsonl")] == [1]  # type: ignore[union-attr]
    (at_exit,) = [r for r in caplog.records if r.getMessage().startswith("sink.failed: closing")]
    assert at_exit.getMessage() == f"sink.failed: closing {bad!r} at exit"
    assert at_exit.exc_info is not None
    assert at_exit.exc_info[0] is SinkWriteError


@pytest.mark.parametrize(
    ("data", "duration", "cost", "turns"),
    [
        ({"duration_seconds": 2, "cost_usd": 3, "turns": 4}, 2.0, Decimal(3), 4),
        (
            {"duration_seconds": 2.5, "cost_usd": Decimal("0.25"), "turns": 1},
            2.5,
            Decimal("0.25"),
            1,
        ),
        ({"duration_seconds": True, "cost_usd": True, "turns": True}, None, None, None),
        ({"duration_seconds": "2", "cost_usd": "lots", "turns": 2.0}, None, None, None),
        ({"cost_usd": Decimal("Infinity")}, None, None, None),
        ({"cost_usd": "NaN"}, None, None, None),
        ({"cost_usd": 0.5}, None, None, None),  # a float is no exact amount
        ({}, None, None, None),
    ],
)
def test_a_session_end_keeps_only_the_values_of_the_right_type(
    data: dict[str, object],
    duration: float | None,
    cost: Decimal | None,
    turns: int | None,
) -> None:
    (row,) = sessions_from_events(
        [AgentEvent(name="session.completed", session_id="s", data=data, timestamp=T0)]
    )
    assert (row.duration_seconds, row.cost_usd, row.turns) == (duration, cost, turns)
    assert type(row.duration_seconds) is (float if duration is not None else type(None))


def test_session_events_without_a_session_id_and_other_events_make_no_row() -> None:
    assert (
        sessions_from_events(
            [
                AgentEvent(name="session.started", timestamp=T0),
                AgentEvent(name="turn.completed", session_id="s", timestamp=T0),
            ]
        )
        == []
    )


def test_session_row_to_dict_is_exact_text_and_iso_times() -> None:
    (row,) = sessions_from_events(
        session_events("x", "failed", start_at=T0, seconds=2.5, cost="1E-7")
    )
    assert row.to_dict() == {
        "session_id": "x",
        "status": "failed",
        "started_at": "2026-01-01T12:00:00.000000+00:00",
        "ended_at": "2026-01-01T12:00:02.500000+00:00",
        "duration_seconds": 2.5,
        "cost_usd": "0.0000001",
        "turns": 3,
        "role": "writer",
        "phase": "draft",
        "project_id": 42,
        "worker_id": "w-x",
        "failure_class": "rate_limit",
        "error_type": "RateLimitError",
    }


def test_folding_a_session_first_start_and_last_end_win_and_blanks_never_erase() -> None:
    start = AgentEvent(
        name="session.started",
        session_id="s",
        role="writer",
        phase="draft",
        project_id=7,
        worker_id="w1",
        timestamp=T0,
    )
    failed = AgentEvent(
        name="session.failed",
        session_id="s",
        failure_class=AgentFailureClass.RATE_LIMIT,
        data={"duration_seconds": 4, "cost_usd": "0.5", "turns": 2, "error_type": "E1"},
        timestamp=T0 + timedelta(seconds=4),
    )
    restarted = AgentEvent(
        name="session.started",
        session_id="s",
        role="reviewer",
        timestamp=T0 + timedelta(seconds=5),
    )
    completed = AgentEvent(
        name="session.completed",
        session_id="s",
        data={"duration_seconds": 9.5, "cost_usd": "1.25", "turns": 5},
        timestamp=T0 + timedelta(seconds=9),
    )
    (after_failure,) = sessions_from_events([start, failed, restarted])
    assert after_failure == SessionRow(
        session_id="s",
        status=SessionStatus.FAILED,  # a later start does not reopen an ended session
        started_at=T0,  # the first start wins
        ended_at=T0 + timedelta(seconds=4),
        duration_seconds=4.0,
        cost_usd=Decimal("0.5"),
        turns=2,
        role="reviewer",  # a later non-blank value replaces an earlier one
        phase="draft",  # a blank never erases
        project_id=7,
        worker_id="w1",
        failure_class=AgentFailureClass.RATE_LIMIT,
        error_type="E1",
    )
    (final,) = sessions_from_events([start, failed, restarted, completed])
    assert final == SessionRow(
        session_id="s",
        status=SessionStatus.COMPLETED,  # the last end wins, whole
        started_at=T0,
        ended_at=T0 + timedelta(seconds=9),
        duration_seconds=9.5,
        cost_usd=Decimal("1.25"),
        turns=5,
        role="reviewer",
        phase="draft",
        project_id=7,
        worker_id="w1",
        failure_class=None,
        error_type=None,
    )
    (running,) = sessions_from_events([start, restarted])
    assert (running.status, running.started_at, running.role) == (
        SessionStatus.RUNNING,
        T0,
        "reviewer",
    )
    assert running.ended_at is None


def test_the_flusher_thread_wakes_by_itself_when_flush_interval_has_passed(
    tmp_path: Path,
) -> None:
    clock = FlusherWatchedClock()
    written = threading.Event()
    path = tmp_path / "timed.jsonl"
    with JsonlSink(
        path, flush_every=100, flush_interval=0.01, clock=clock, on_flush=lambda n: written.set()
    ) as sink:
        sink.write_event(event(i=0))
        clock.wait_for_flusher(1)  # it has seen the record and waits the rest of the interval
        clock.advance(0.01)  # no write wakes it: only its own timed wait can
        assert written.wait(WAIT)
        assert sink.written == 1
    assert len(read_jsonl(path)) == 1


def test_an_infinite_flush_interval_writes_by_size_only(tmp_path: Path) -> None:
    clock = FlusherWatchedClock()
    written = threading.Event()
    path = tmp_path / "by-size.jsonl"
    with JsonlSink(
        path,
        flush_every=2,
        flush_interval=float("inf"),
        clock=clock,
        on_flush=lambda n: written.set(),
    ) as sink:
        sink.write_event(event(i=0))
        clock.wait_for_flusher(1)  # it has seen one record: never due by time, it waits on
        clock.advance(1e9)
        assert sink.pending == 1
        sink.write_event(event(i=1))  # the second record makes the batch due
        assert written.wait(WAIT)
        assert (sink.written, sink.batches) == (2, 1)


def test_a_failed_flush_of_the_callers_is_retried_by_the_flusher_thread_after_the_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="techrevati.runtime.sinks")
    clock = FlusherWatchedClock()
    path = tmp_path / "retry.jsonl"
    real_write = os.write
    disk_full = True

    def maybe_refuse(fd: int, data: bytes | memoryview) -> int:
        if disk_full:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    written = threading.Event()
    monkeypatch.setattr(os, "write", maybe_refuse)
    sink = JsonlSink(
        path, flush_every=100, flush_interval=0.01, clock=clock, on_flush=lambda n: written.set()
    )
    try:
        sink.write_event(event(i=0))
        with pytest.raises(SinkWriteError):
            sink.flush()  # the caller's flush fails; the record is kept
        calls = clock.flusher_calls
        clock.wait_for_flusher(calls + 1)  # the thread times the retry, no write needed
        disk_full = False
        clock.advance(0.01)
        assert written.wait(WAIT)
        assert (sink.written, sink.pending, sink.failed_flushes) == (1, 0, 1)
    finally:
        disk_full = False
        sink.close()
    assert len(read_jsonl(path)) == 1


def test_a_drop_is_logged_once_when_it_happens_not_again_when_the_buffer_is_merely_full(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    fake_clock: FakeClock,
) -> None:
    path = tmp_path / "drops.jsonl"
    sink = JsonlSink(path, flush_every=3, max_pending=3, background=False, clock=fake_clock)
    real_write = os.write

    def refuse(fd: int, data: bytes | memoryview) -> int:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "write", refuse)
    with caplog.at_level(logging.WARNING, logger="techrevati.runtime.sinks"):
        sink.write_event(event(i=0))
        sink.write_event(event(i=1))
        for i in (2, 3):
            with pytest.raises(SinkWriteError):
                sink.write_event(event(i=i))  # the fourth record drops the oldest
        monkeypatch.setattr(os, "write", real_write)
        sink.flush()
        for i in (4, 5, 6):
            sink.write_event(event(i=i))  # exactly max_pending buffered: nothing dropped
    drops = [r for r in caplog.records if getattr(r, "event", None) == "sink.dropped"]
    assert [(r.dropped, r.getMessage()) for r in drops] == [  # type: ignore[attr-defined]
        (1, f"sink.dropped: {path} dropped 1 records")
    ]
    assert sink.dropped == 1
    sink.close()
    assert [r.data["i"] for r in read_jsonl(path)] == [1, 2, 3, 4, 5, 6]  # type: ignore[union-attr]


def test_drops_are_logged_at_the_first_and_every_thousandth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_clock: FakeClock
) -> None:
    path = tmp_path / "many-drops.jsonl"
    sink = JsonlSink(path, flush_every=1, max_pending=1, background=False, clock=fake_clock)

    class Drops(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "event", None) == "sink.dropped":
                self.records.append(record)

    def refuse(fd: int, data: bytes | memoryview) -> int:
        raise OSError(5, "I/O error")

    drops = Drops()
    logger = logging.getLogger("techrevati.runtime.sinks")
    logger.addHandler(drops)
    monkeypatch.setattr(logger, "propagate", False)  # 2000 failed flushes: keep only the drops
    monkeypatch.setattr(os, "write", refuse)
    try:
        with pytest.raises(SinkWriteError):
            sink.write_event(event(i=0))
        for i in range(1, 2002):
            with pytest.raises(SinkWriteError):
                sink.write_event(event(i=i))  # each write drops the oldest
    finally:
        logger.removeHandler(drops)
        monkeypatch.undo()
    assert sink.dropped == 2001
    assert [(r.dropped, r.sink, r.path) for r in drops.records] == [  # type: ignore[attr-defined]
        (n, "JsonlSink", str(path)) for n in (1, 1000, 2000)
    ]
    assert [r.levelno for r in drops.records] == [logging.WARNING] * 3
    sink.close()
    assert [r.data["i"] for r in read_jsonl(path)] == [2001]  # type: ignore[union-attr]
