"""SqliteSink and SqliteReader: typed round trips, filters, sessions, schema, processes, kill -9."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import (
    AgentEvent,
    AgentFailureClass,
    UsageRecord,
)
from techrevati.runtime.jsonl import JsonlSink, read_jsonl
from techrevati.runtime.sinks import SessionRow, SessionStatus, SinkClosedError, SinkWriteError
from techrevati.runtime.sqlite import (
    SCHEMA_VERSION,
    SQLITE_APPLICATION_ID,
    SchemaError,
    SqliteReader,
    SqliteSink,
)
from tests.conftest import FakeClock, examples
from tests.sink_records import T0, event, session_events, usage, write_from_threads

PLUS_TWO = timezone(timedelta(hours=2))


CHILD_TIMEOUT = 20.0


def count_rows(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


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


def test_sqlite_writes_a_batch_every_flush_every_records(db: Path, fake_clock: FakeClock) -> None:
    sink = SqliteSink(db, flush_every=3, background=False, clock=fake_clock)
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
    db: Path, fake_clock: FakeClock
) -> None:
    clock = fake_clock
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


@settings(max_examples=examples(60))
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
    assert [(r.sink, r.path) for r in migrated] == [("SqliteSink", str(db))]  # type: ignore[attr-defined]
    assert migrated[0].getMessage() == f"sink.migrated: {db} from schema 1 to {SCHEMA_VERSION}"
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
    with pytest.raises(
        SchemaError, match=f"schema version 99; this library knows 1 to {SCHEMA_VERSION}$"
    ):
        SqliteSink(newer)
    other_app = tmp_path / "other.db"
    with sqlite3.connect(other_app) as conn:
        conn.execute("PRAGMA application_id = 7")
    with pytest.raises(
        SchemaError, match=r"other\.db belongs to another application \(application_id 7\)$"
    ):
        SqliteReader(other_app)
    text = tmp_path / "notes.db"
    text.write_text("hello, this is not a database at all" * 40)
    with pytest.raises(SchemaError, match="not a"):
        SqliteSink(text)
    with pytest.raises(FileNotFoundError) as missing:
        SqliteReader(tmp_path / "missing.db")
    assert (missing.value.errno, missing.value.strerror, missing.value.filename) == (
        2,
        "no such database file",
        str(tmp_path / "missing.db"),
    )
    assert not (tmp_path / "missing.db").exists()  # a reader never creates the file


def test_sqlite_rejects_bad_settings(db: Path) -> None:
    with pytest.raises(InvalidValueError, match="synchronous must be 'full' or 'normal'"):
        SqliteSink(db, synchronous="off")  # type: ignore[arg-type]
    for bad in (-1, True, "5", float("inf"), float("nan")):
        with pytest.raises(
            InvalidValueError, match=rf"busy_timeout must be a number >= 0, got {bad!r}$"
        ):
            SqliteSink(db, busy_timeout=bad)  # type: ignore[arg-type]
    assert not db.exists()  # refused before the file is opened
    with pytest.raises(InvalidValueError, match="flush_every must be an int >= 1, got True"):
        SqliteSink(db, flush_every=True)


def test_sqlite_keeps_exact_counts_when_hammered_from_threads(db: Path) -> None:
    threads_n, per_thread = 8, 300
    with SqliteSink(db, flush_every=50, synchronous="normal") as sink:
        write_from_threads(sink, threads_n, per_thread)
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


def refuse_usage(path: Path, *, how: str = "ABORT", when: str = "1") -> None:
    """Make the database refuse usage rows (``when`` is a condition on the ``NEW`` row)."""
    with sqlite3.connect(path) as conn:
        conn.execute(
            f"CREATE TRIGGER refuse_usage BEFORE INSERT ON usage WHEN {when} "
            f"BEGIN SELECT RAISE({how}, 'usage refused'); END"
        )


def test_a_batch_whose_usage_insert_fails_stores_none_of_its_events_usage_or_sessions(
    db: Path,
) -> None:
    sink = SqliteSink(db, background=False, flush_every=100)
    refuse_usage(db, when="NEW.input_tokens = 1001")  # the second usage row of the batch
    for e in session_events("s1", "completed", start_at=T0, seconds=3, cost="0.5"):
        sink.write_event(e)
    sink.write_event(event(i=1))
    sink.write_usage(usage(0))
    sink.write_usage(usage(1))
    with pytest.raises(SinkWriteError, match="could not write 5 records: IntegrityError: usage"):
        sink.flush()
    assert (sink.pending, sink.written, sink.failed_flushes) == (5, 0, 1)
    # a second connection sees nothing of the batch: its events, usage and session row
    # were one transaction, rolled back together
    assert [count_rows(db, table) for table in ("events", "usage", "sessions")] == [0, 0, 0]
    with pytest.raises(SinkWriteError, match="could not write 5 records"):
        sink.close()  # the batch still cannot be written: close says so, and releases the file
    assert sink.closed
    assert [count_rows(db, table) for table in ("events", "usage", "sessions")] == [0, 0, 0]


@pytest.mark.parametrize("how", ["ABORT", "ROLLBACK"])
def test_after_a_failed_batch_the_connection_is_free_and_the_retry_commits_for_all_to_see(
    db: Path, how: str
) -> None:
    # ABORT fails the statement and leaves the transaction open (the sink must roll it
    # back); ROLLBACK ends the transaction itself (the sink must not roll back twice).
    sink = SqliteSink(db, background=False, flush_every=100, busy_timeout=0)
    refuse_usage(db, how=how)
    sink.write_event(event(i=1))
    sink.write_usage(usage(1))
    with pytest.raises(SinkWriteError, match=r"IntegrityError: usage refused$"):
        sink.flush()
    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")  # "database is locked" if the sink still held it
        other.execute("DROP TRIGGER refuse_usage")
        other.execute("COMMIT")
        sink.write_event(event(i=2))
        sink.flush()
        assert (sink.pending, sink.written, sink.batches) == (0, 3, 1)
        events = other.execute("SELECT detail FROM events ORDER BY id").fetchall()
        assert events == [("detail 1",), ("detail 2",)]
        assert other.execute("SELECT input_tokens FROM usage").fetchall() == [(1001,)]
    finally:
        other.close()
        sink.close()


def test_reopening_a_current_database_keeps_its_rows_and_logs_no_migration(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SqliteSink(db) as sink:
        sink.write_event(event(i=1))
    with caplog.at_level(logging.INFO, logger="techrevati.runtime.sinks"):
        again = SqliteSink(db)
    assert [r for r in caplog.records if getattr(r, "event", None) == "sink.migrated"] == []
    with again:
        again.write_event(event(i=2))
        assert [e.data["i"] for e in again.read_events()] == [1, 2]
        assert again.path == db
    with SqliteReader(db) as reader:
        assert reader.path == db
        assert len(reader.read_events()) == 2


def test_a_database_of_ours_missing_a_table_is_refused_by_name(db: Path) -> None:
    SqliteSink(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute("DROP TABLE sessions")
    with pytest.raises(
        SchemaError, match=r"runs\.db has no techrevati sink schema \(missing \['sessions'\]\)"
    ):
        SqliteSink(db)
    with pytest.raises(SchemaError, match=r"missing \['sessions'\]"):
        SqliteReader(db)


def test_sqlite_sessions_filter_by_time_and_sort_newest_first(db: Path) -> None:
    with SqliteSink(db) as sink:
        for n, sid in enumerate(["a", "b", "c"]):
            start = T0 + timedelta(hours=n)
            for e in session_events(sid, "completed", start_at=start, seconds=5, cost="1"):
                sink.write_event(e)
        late = session_events(
            "d", "completed", start_at=T0 + timedelta(hours=5), seconds=1, cost="0"
        )
        sink.write_event(late[1])  # its start never stored: sorted by its end
        ids = [r.session_id for r in sink.read_sessions()]
        assert ids == ["a", "b", "c", "d"]
        assert [r.session_id for r in sink.read_sessions(newest_first=True)] == ["d", "c", "b", "a"]
        hour = timedelta(hours=1)
        assert [r.session_id for r in sink.read_sessions(since=T0 + hour)] == ["b", "c", "d"]
        assert [r.session_id for r in sink.read_sessions(until=T0 + hour)] == ["a"]
        window = sink.read_sessions(since=T0 + hour, until=T0 + 2 * hour, phase="draft")
        assert [r.session_id for r in window] == ["b"]
        assert sink.read_sessions(status=SessionStatus.RUNNING) == []
        assert [r.session_id for r in sink.read_sessions(limit=1, newest_first=True)] == ["d"]
        other = AgentEvent(
            name="session.started",
            session_id="e",
            role="reviewer",
            phase="review",
            timestamp=T0 + timedelta(hours=9),
        )
        sink.write_event(other)
        assert [r.session_id for r in sink.read_sessions(role="reviewer")] == ["e"]
        assert [r.session_id for r in sink.read_sessions(phase="review")] == ["e"]
        assert [r.session_id for r in sink.read_sessions(role="writer")] == ["a", "b", "c", "d"]
        assert [r.session_id for r in sink.read_sessions(status="running")] == ["e"]


def test_sqlite_usage_filters_by_time_and_phase_and_sorts_newest_first(db: Path) -> None:
    with SqliteSink(db) as sink:
        for i in range(4):
            sink.write_usage(usage(i))
        tokens = [r.input_tokens for r in sink.read_usage(newest_first=True)]
        assert tokens == [1003, 1002, 1001, 1000]
        since, until = T0 + timedelta(seconds=1), T0 + timedelta(seconds=3)
        assert [r.input_tokens for r in sink.read_usage(since=since, until=until)] == [1001, 1002]
        assert sink.read_usage(phase="review") == []
        assert len(sink.read_usage(phase="draft")) == 4
        sink.write_event(event(i=9))  # phase "draft"
        assert sink.read_events(phase="review") == []
        assert len(sink.read_events(phase="draft")) == 1


@pytest.mark.parametrize(
    ("stored", "asked", "found"),
    [
        (-7, "-7", True),
        ("-7", -7, True),
        (42, " 42 ", True),
        (42, "42.0", False),
        (42, "4-2", False),
        (42, 43, False),
        ("acme", "acme", True),
    ],
)
def test_sqlite_project_filter_matches_an_int_and_its_decimal_text(
    db: Path, stored: str | int, asked: str | int, found: bool
) -> None:
    with SqliteSink(db) as sink:
        sink.write_event(event(project_id=stored))
        sink.write_usage(usage(project_id=stored))
        assert len(sink.read_events(project=asked)) == int(found)
        assert len(sink.read_usage(project=asked)) == int(found)


@pytest.mark.parametrize(("synchronous", "level"), [("full", 2), ("normal", 1)])
def test_sqlite_sets_its_busy_timeout_and_synchronous_level_on_the_connection(
    db: Path, synchronous: str, level: int
) -> None:
    with SqliteSink(db, busy_timeout=2.5, synchronous=synchronous) as sink:  # type: ignore[arg-type]
        conn = sink._conn
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level


def test_sqlite_reader_opens_any_path_read_only(tmp_path: Path) -> None:
    folder = tmp_path / "runs #1 ?a=b %20"
    folder.mkdir()
    db = folder / "my runs.db"
    with SqliteSink(db) as sink:
        sink.write_event(event(i=1))
    with SqliteReader(db) as reader:
        assert [e.data["i"] for e in reader.read_events()] == [1]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader._conn.execute("DELETE FROM events")
    assert count_rows(db, "events") == 1


def test_a_file_sqlite_cannot_read_is_a_schema_error_naming_the_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.db"
    text.write_bytes(b"hello, this is not a database at all" * 40)
    with pytest.raises(
        SchemaError, match=r"notes\.db is not a usable SQLite database: file is not a database"
    ) as info:
        SqliteSink(text)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    with pytest.raises(
        SchemaError, match=r"notes\.db is not a SQLite database: file is not a database"
    ):
        SqliteReader(text)


def test_sqlite_reader_is_shared_between_threads(db: Path) -> None:
    with SqliteSink(db) as sink:
        sink.write_event(event(i=1))
    found: list[int] = []
    errors: list[BaseException] = []
    with SqliteReader(db) as reader:

        def read() -> None:
            try:
                found.append(len(reader.read_events()))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=read) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == []
    assert found == [1, 1, 1, 1]


@pytest.mark.parametrize("data", ["", "null", "[1, 2]", '"text"'])
def test_an_events_row_whose_data_is_no_object_reads_as_empty_data(db: Path, data: str) -> None:
    SqliteSink(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO events (ts, name, data) VALUES (?, 'x', ?)",
            ("2026-01-01T12:00:00.000000+00:00", data),
        )
    with SqliteReader(db) as reader:
        (stored,) = reader.read_events()
    assert (stored.name, stored.data, stored.timestamp) == ("x", {}, T0)


def test_sqlite_writes_on_a_background_thread_by_default(db: Path) -> None:
    flushed_on: list[str] = []
    written = threading.Event()

    def heard(size: int) -> None:
        flushed_on.append(threading.current_thread().name)
        written.set()

    with SqliteSink(db, flush_every=1, on_flush=heard) as sink:
        sink.write_event(event(i=1))
        assert written.wait(CHILD_TIMEOUT)
    assert flushed_on == ["techrevati-SqliteSink-flusher"]


def test_the_model_column_holds_only_a_textual_model(db: Path) -> None:
    with SqliteSink(db) as sink:
        sink.write_event(event(i=1, data={"model": 5}))
        sink.write_event(event(i=2, data={"model": "5"}))
        assert [e.data["model"] for e in sink.read_events(model="5")] == ["5"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT model FROM events ORDER BY id").fetchall() == [(None,), ("5",)]


def test_stored_times_are_utc_whatever_the_local_time_zone(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    monkeypatch.setenv("TZ", "UTC-05:30")
    time.tzset()
    try:
        with SqliteSink(db) as sink:
            sink.write_event(event(at=T0))
        with sqlite3.connect(db) as conn:
            (ts,) = conn.execute("SELECT ts FROM events").fetchone()
    finally:
        monkeypatch.undo()
        time.tzset()
    assert ts == "2026-01-01T12:00:00.000000+00:00"


def test_a_version_2_database_gains_one_hour_cache_writes_on_open(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SqliteSink(db) as sink:
        sink.write_usage(usage(1))
    with sqlite3.connect(db) as conn:  # what a version 2 file looks like: no views, no column
        conn.executescript("DROP VIEW turns; DROP VIEW session_summary; DROP TABLE rejected")
        conn.execute("ALTER TABLE usage DROP COLUMN cache_write_1h_tokens")
        conn.execute("ALTER TABLE usage DROP COLUMN service_tier")
        conn.execute("PRAGMA user_version = 2")
    with pytest.raises(SchemaError, match=r"schema version 2, this reader needs 4 \(or 3\)"):
        SqliteReader(db)
    with caplog.at_level(logging.INFO, logger="techrevati.runtime.sinks"):
        sink = SqliteSink(db)
    migrated = [r for r in caplog.records if getattr(r, "event", None) == "sink.migrated"]
    assert [(r.from_version, r.to_version) for r in migrated] == [(2, 4)]  # type: ignore[attr-defined]
    with sink:
        sink.write_usage(
            UsageRecord(model="m", input_tokens=10, cache_write_tokens=8, cache_write_1h_tokens=5)
        )
        old, new = sink.read_usage()
    assert old == usage(1)  # an old row reads as no one-hour writes
    assert old.cache_write_1h_tokens == 0
    assert (new.cache_write_tokens, new.cache_write_1h_tokens) == (8, 5)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    with SqliteReader(db) as reader:
        assert len(reader.read_usage()) == 2


# What SqliteSink wrote as schema 3, word for word: the usage table before service_tier.
_USAGE_V3 = """CREATE TABLE usage (
    id INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    session_id TEXT NOT NULL DEFAULT '',
    worker_id TEXT NOT NULL DEFAULT '',
    project_id,
    role TEXT NOT NULL DEFAULT '',
    phase TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    cache_write_1h_tokens INTEGER NOT NULL DEFAULT 0,
    cost_usd TEXT NOT NULL DEFAULT '0',
    priced INTEGER NOT NULL DEFAULT 1,
    duration_seconds REAL
)"""


def _version_3_file(db: Path) -> None:
    """Make ``db`` a schema-3 log with one usage row (and the views a schema-3 sink made)."""
    with SqliteSink(db) as sink:
        sink.write_event(event(i=0))
    with sqlite3.connect(db) as conn:
        conn.executescript(
            f"DROP VIEW turns; DROP VIEW session_summary; DROP TABLE usage; {_USAGE_V3};"
            "CREATE VIEW turns AS SELECT *, substr(ts, 1, 10) AS day, "
            "input_tokens + output_tokens AS total_tokens, "
            "CAST(cost_usd AS REAL) AS cost_usd_float FROM usage"
        )
        conn.execute(
            "INSERT INTO usage (ts, session_id, worker_id, project_id, role, phase, model, "
            "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, "
            "cache_write_1h_tokens, cost_usd, priced, duration_seconds) VALUES "
            "('2026-01-01T12:00:01.000000+00:00', 's1', 'w1', 42, 'writer', 'draft', 'model-a', "
            "1001, 200, 300, 50, 20, 0, '0.0123', 1, 1.25)"
        )
        conn.execute("PRAGMA user_version = 3")


def test_the_service_tier_round_trips(db: Path) -> None:
    with SqliteSink(db) as sink:
        sink.write_usage(usage(1, service_tier="batch"))
        sink.write_usage(usage(2))
        assert sink.read_usage() == [usage(1, service_tier="batch"), usage(2)]
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT service_tier FROM turns ORDER BY id").fetchall()
    assert rows == [("batch",), (None,)]  # the view selects * and so has the column too


def test_a_version_3_log_reads_as_it_is_and_migrates_on_open(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _version_3_file(db)
    with SqliteReader(db) as reader:  # read-only: no migration, no tier
        (old,) = reader.read_usage()
    assert old == usage(1)
    assert old.service_tier is None
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3  # the reader changed nothing
    with caplog.at_level(logging.INFO, logger="techrevati.runtime.sinks"):
        sink = SqliteSink(db)
    migrated = [r for r in caplog.records if getattr(r, "event", None) == "sink.migrated"]
    assert [(r.from_version, r.to_version) for r in migrated] == [(3, 4)]  # type: ignore[attr-defined]
    with sink:
        sink.write_usage(usage(2, service_tier="flex"))
        assert sink.read_usage() == [usage(1), usage(2, service_tier="flex")]
    with SqliteReader(db) as reader:
        assert [r.service_tier for r in reader.read_usage()] == [None, "flex"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        tiers = conn.execute("SELECT service_tier FROM turns ORDER BY id").fetchall()
    assert tiers == [(None,), ("flex",)]  # the old view picks up the added column


def test_a_tier_a_column_cannot_hold_is_stored_sanitised(db: Path) -> None:
    with SqliteSink(db, background=False) as sink:
        sink.write_usage(usage(1, service_tier="fl\udcffex"))
        assert sink.sanitised == 1
        (stored,) = sink.read_usage()
    assert stored.service_tier == "fl\\udcffex"


def test_the_turns_and_session_summary_views_read_straight_from_the_file(db: Path) -> None:
    with SqliteSink(db) as sink:
        for e in session_events("s1", "completed", start_at=T0, seconds=3, cost="0.0246"):
            sink.write_event(e)
        sink.write_usage(usage(0))
        sink.write_usage(usage(1))
        sink.write_usage(usage(2, session_id="s2", model="model-b", cost="0.5"))
    with sqlite3.connect(db) as conn:
        turns = conn.execute(
            "SELECT day, session_id, model, input_tokens, output_tokens, total_tokens, "
            "cost_usd, cost_usd_float FROM turns ORDER BY id"
        ).fetchall()
        by_model = conn.execute(
            "SELECT model, count(*), sum(total_tokens), round(sum(cost_usd_float), 4) "
            "FROM turns GROUP BY model ORDER BY model"
        ).fetchall()
        sessions = conn.execute(
            "SELECT session_id, status, duration_seconds, cost_usd, model_turns, input_tokens, "
            "output_tokens, total_tokens, round(usage_cost_usd_float, 4) FROM session_summary"
        ).fetchall()
    assert turns == [
        ("2026-01-01", "s1", "model-a", 1000, 200, 1200, "0.0123", 0.0123),
        ("2026-01-01", "s1", "model-a", 1001, 200, 1201, "0.0123", 0.0123),
        ("2026-01-01", "s2", "model-b", 1002, 200, 1202, "0.5", 0.5),
    ]
    assert by_model == [("model-a", 2, 2401, 0.0246), ("model-b", 1, 1202, 0.5)]
    assert sessions == [("s1", "completed", 3.0, "0.0246", 2, 2001, 400, 2401, 0.0246)]


def test_a_file_from_before_the_views_reads_as_is_and_gains_them_when_a_sink_opens_it(
    db: Path,
) -> None:
    with SqliteSink(db) as sink:
        sink.write_usage(usage(1))
    with sqlite3.connect(db) as conn:  # what schema 3 looked like before the views
        conn.executescript("DROP VIEW turns; DROP VIEW session_summary; DROP TABLE rejected")
    with SqliteReader(db) as reader:  # same schema version: any reader of 3 reads it
        assert reader.read_usage() == [usage(1)]
    for _ in range(2):  # created once, then left as they are
        SqliteSink(db).close()
    with sqlite3.connect(db) as conn:
        objects = conn.execute(
            "SELECT type, name FROM sqlite_master WHERE name IN "
            "('turns', 'session_summary', 'rejected') ORDER BY name"
        ).fetchall()
        assert conn.execute("SELECT count(*) FROM turns").fetchone() == (1,)
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert objects == [("table", "rejected"), ("view", "session_summary"), ("view", "turns")]
