"""The durable sinks: behaviours a mutation run of the sinks group showed no test pinned.

How a record that cannot be stored as given is sanitised field by field or
quarantined (what text the quarantine keeps), how a torn JSONL file is
repaired (the side file's name, mode and the error when no name is free), and
what the SQLite reader's filters refuse.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from techrevati.runtime._record_text import DEPTH_LIMIT
from techrevati.runtime.errors import CorruptRecordError, InvalidValueError, SinkClosedError
from techrevati.runtime.events import AgentEvent, AgentFailureClass, UsageRecord
from techrevati.runtime.jsonl import JsonlSink, read_jsonl
from techrevati.runtime.sqlite import SqliteSink
from tests.conftest import FakeClock
from tests.sink_records import T0, event

SURROGATE = json.loads('"shell\\ud800exec"')  # a lone surrogate, as a JSON body can carry
ESCAPED = "shell\\ud800exec"


class Exploding(Mapping[str, object]):
    """Data that cannot be read, nor shown: every access raises, and so does its repr."""

    def __getitem__(self, key: str) -> object:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class Unreadable(Exploding):
    """Data that cannot be read, but can be shown."""

    def __repr__(self) -> str:
        return "Unreadable()"


# --- JSONL: the quarantine line -------------------------------------------------------------


def test_a_jsonl_record_that_cannot_even_be_shown_is_quarantined_as_unprintable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(AgentEvent(name="odd", data=Exploding(), timestamp=T0))
    assert sink.rejected == 1
    (line,) = path.read_bytes().splitlines()
    assert json.loads(line)["record"] == "<unprintable AgentEvent>"


# --- JSONL: repairing a torn file -------------------------------------------------------------


def _torn_side_files(directory: Path, name: str) -> list[Path]:
    return sorted(directory.glob(f"{name}.torn-*"))


def test_a_torn_line_is_moved_to_a_side_file_only_its_owner_can_read(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"kind":"ev')
    JsonlSink(path).close()
    (side,) = _torn_side_files(tmp_path, "t.jsonl")
    assert stat.S_IMODE(side.stat().st_mode) == 0o600
    assert side.read_bytes() == b'{"kind":"ev'


def test_the_side_file_is_stamped_in_utc_whatever_the_local_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # nine hours from UTC, no daylight saving
    time.tzset()
    try:
        path = tmp_path / "t.jsonl"
        path.write_bytes(b'{"kind":"us')
        before = datetime.now(UTC)
        JsonlSink(path).close()
        after = datetime.now(UTC)
    finally:
        monkeypatch.undo()
        time.tzset()
    (side,) = _torn_side_files(tmp_path, "t.jsonl")
    stamp = datetime.strptime(side.name.rsplit("torn-", 1)[1], "%Y%m%dT%H%M%S.%fZ")
    assert before <= stamp.replace(tzinfo=UTC) <= after


def test_no_free_side_file_name_is_a_file_exists_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from techrevati.runtime import jsonl

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: object = None) -> Frozen:
            return cls(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)

    monkeypatch.setattr(jsonl, "datetime", Frozen)
    path = tmp_path / "torn.jsonl"
    path.write_bytes(b'{"kind":"ev')
    for attempt in range(1, 1000):
        suffix = "" if attempt == 1 else f"-{attempt}"
        (tmp_path / f"torn.jsonl.torn-20260102T030405.000006Z{suffix}").write_bytes(b"")
    with pytest.raises(FileExistsError) as caught:
        JsonlSink(path)
    error = caught.value
    assert (error.errno, error.strerror, error.filename) == (
        17,
        "no free side file name",
        str(path),
    )


def test_a_foreign_tail_is_refused_naming_how_many_bytes_follow_the_last_newline(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(event(i=1))
    path.write_bytes(path.read_bytes() + b"not json")
    with pytest.raises(CorruptRecordError, match="its last 8 bytes, after the last newline, are"):
        JsonlSink(path)


def test_whole_lines_are_measured_in_bytes_when_a_torn_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(AgentEvent(name="x", detail="é" * 40, timestamp=T0))
    path.write_bytes(path.read_bytes() + b'{"kind":"ev')  # 11 bytes: fewer than the 40 extra
    with JsonlSink(path) as sink:  # repaired: the torn line is cut, the whole one kept
        sink.write_event(event(i=2))
    names = [r.name for r in read_jsonl(path) if isinstance(r, AgentEvent)]
    assert names == ["x", "turn.completed"]
    assert len(_torn_side_files(tmp_path, "u.jsonl")) == 1


# --- SQLite: the quarantine row ---------------------------------------------------------------


def _rejected_texts(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [text for (text,) in conn.execute("SELECT record FROM rejected ORDER BY id")]


def test_a_rejected_sqlite_record_is_kept_as_its_sanitised_json(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with SqliteSink(path, background=False, flush_every=1) as sink:
        # no column holds 2**63 tokens: rejected; its JSON needs the surrogate escaped
        sink.write_usage(UsageRecord(model=SURROGATE, input_tokens=2**63, timestamp=T0))
    (text,) = _rejected_texts(path)
    kept = json.loads(text)
    assert (kept["model"], kept["input_tokens"]) == (ESCAPED, 2**63)


def test_a_rejected_sqlite_record_without_json_is_kept_as_its_repr(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with SqliteSink(path, background=False, flush_every=1) as sink:
        sink.write_event(AgentEvent(name="odd", data=Unreadable(), timestamp=T0))
    (text,) = _rejected_texts(path)
    assert text.startswith("AgentEvent(name='odd'")
    assert "data=Unreadable()" in text


def test_a_rejected_sqlite_record_that_cannot_be_shown_is_kept_as_unprintable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    with SqliteSink(path, background=False, flush_every=1) as sink:
        sink.write_event(AgentEvent(name="odd", data=Exploding(), timestamp=T0))
    assert _rejected_texts(path) == ["<unprintable AgentEvent>"]


# --- SQLite: a sanitised row, field by field --------------------------------------------------


def _sanitised_event_row(
    path: Path, caplog: pytest.LogCaptureFixture, record: AgentEvent
) -> tuple[dict[str, object], object]:
    """Write ``record``, which must come out sanitised; return its raw row and the logged reason."""
    caplog.set_level(logging.WARNING, logger="techrevati.runtime.sinks")
    with SqliteSink(path, background=False, flush_every=1) as sink:
        sink.write_event(record)
    assert (sink.sanitised, sink.rejected) == (1, 0)
    (logged,) = [r for r in caplog.records if getattr(r, "event", None) == "sink.record_sanitised"]
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        row = conn.execute("SELECT *, typeof(project_id) AS project_type FROM events").fetchone()
    return dict(row), getattr(logged, "reason", None)


def test_every_field_of_a_sanitised_event_is_kept_non_text_ones_as_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = AgentEvent(
        name="odd",
        role=7,  # type: ignore[arg-type]  # what a caller's untyped code can pass
        phase=None,  # type: ignore[arg-type]
        status=8,  # type: ignore[arg-type]
        failure_class=AgentFailureClass.TOOL_ERROR,
        detail=9,  # type: ignore[arg-type]
        data={"k": "v"},
        timestamp=T0,
        session_id=None,  # type: ignore[arg-type]
        worker_id=10.5,  # type: ignore[arg-type]
        project_id=11,
    )
    row, reason = _sanitised_event_row(tmp_path / "e.db", caplog, record)
    assert {k: row[k] for k in row if k not in ("id", "data", "model")} == {
        "ts": "2026-01-01T12:00:00.000000+00:00",
        "name": "odd",
        "session_id": "",
        "worker_id": "10.5",
        "project_id": 11,
        "project_type": "integer",  # a number stays a number where the column takes one
        "role": "7",
        "phase": "",
        "status": "8",
        "failure_class": "tool_error",
        "detail": "9",
    }
    assert reason == "non-text value as text"


def test_a_sanitised_events_empty_fields_stay_null_where_the_column_takes_null(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = AgentEvent(name="odd", role=7, timestamp=T0)  # type: ignore[arg-type]
    row, _ = _sanitised_event_row(tmp_path / "e.db", caplog, record)
    assert (row["status"], row["detail"], row["failure_class"], row["project_id"]) == (
        None,
        None,
        None,
        None,
    )
    assert (row["phase"], row["role"]) == ("", "7")


def test_a_sanitised_events_surrogates_are_escaped_and_a_project_of_no_number_kept_as_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    record = AgentEvent(
        name="odd",
        role=SURROGATE,
        detail="plain",
        project_id=["a"],  # type: ignore[arg-type]
        timestamp=T0,
    )
    row, reason = _sanitised_event_row(tmp_path / "e.db", caplog, record)
    assert (row["role"], row["detail"]) == (ESCAPED, "plain")
    assert (row["project_id"], row["project_type"]) == ("['a']", "text")
    assert reason == "lone surrogate escaped; non-text value as text"


BEYOND = "int beyond 64 bits as text"


@pytest.mark.parametrize(
    ("project_id", "stored"),
    [
        (True, (1, "integer", "non-text value as text")),
        (-(2**63), (-(2**63), "integer", "non-text value as text")),
        (2**63 - 1, (2**63 - 1, "integer", "non-text value as text")),
        (2**70, (str(2**70), "text", f"{BEYOND}; non-text value as text")),
        (2**13998, (str(2**13998), "text", f"{BEYOND}; non-text value as text")),
        (2**13999, (hex(2**13999), "text", f"{BEYOND}; non-text value as text")),
        (2**14000, (hex(2**14000), "text", f"{BEYOND}; non-text value as text")),
    ],
    ids=["true", "int64-min", "int64-max", "2**70", "13999-bits", "14000-bits", "14001-bits"],
)
def test_a_sanitised_events_project_id_is_an_int_while_sqlite_holds_it_then_text(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    project_id: int,
    stored: tuple[object, str, str],
) -> None:
    record = AgentEvent(name="odd", role=7, project_id=project_id, timestamp=T0)  # type: ignore[arg-type]
    row, logged = _sanitised_event_row(tmp_path / "e.db", caplog, record)
    assert (row["project_id"], row["project_type"], logged) == stored


def test_a_usage_record_whose_duration_no_float_holds_is_rejected_saying_so(
    tmp_path: Path,
) -> None:
    path = tmp_path / "u.db"
    record = UsageRecord(model="m", duration_seconds=10**400, timestamp=T0)
    with SqliteSink(path, background=False, flush_every=1) as sink:
        sink.write_usage(record)
    assert (sink.sanitised, sink.rejected) == (0, 1)
    with sqlite3.connect(path) as conn:
        (reason,) = conn.execute("SELECT reason FROM rejected").fetchone()
    assert reason == "OverflowError: int too large to convert to float"


# --- what a sanitised record's log says -----------------------------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text")


class SilentError(Exception):
    """An exception whose text is empty."""


class MuteError(Exception):
    """An exception whose text cannot be had."""

    def __str__(self) -> str:
        raise RuntimeError("no text")


class Failing(Mapping[str, object]):
    """Data that raises ``error`` when read."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getitem__(self, key: str) -> object:
        raise self.error

    def __iter__(self) -> Iterator[str]:
        raise self.error

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "Failing()"


def _nested_list(depth: int) -> object:
    value: object = "x"
    for _ in range(depth):
        value = [value]
    return value


def _salvaged_jsonl(
    path: Path, caplog: pytest.LogCaptureFixture, record: AgentEvent | UsageRecord
) -> tuple[dict[str, object], logging.LogRecord]:
    """Write ``record``, which must come out sanitised or rejected; return its line and log."""
    caplog.set_level(logging.WARNING, logger="techrevati.runtime.sinks")
    with JsonlSink(path) as sink:
        if isinstance(record, AgentEvent):
            sink.write_event(record)
        else:
            sink.write_usage(record)
    assert sink.sanitised + sink.rejected == 1
    (logged,) = [
        r for r in caplog.records if str(getattr(r, "event", "")).startswith("sink.record_")
    ]
    (line,) = path.read_bytes().splitlines()
    return json.loads(line), logged


@pytest.mark.parametrize(
    ("data", "stored", "reason"),
    [
        ({"s": SURROGATE}, {"s": ESCAPED}, "lone surrogate escaped"),
        ({(1, 2): "t"}, {"(1, 2)": "t"}, "non-str key as text"),
        ({"u": Unprintable()}, {"u": "<unprintable Unprintable>"}, "unprintable value"),
        ({"n": 2**20000}, {"n": hex(2**20000)}, "int too long for decimal text as hex"),
        (
            {"s": SURROGATE, "n": 2**13999},  # 14,000 bits: already too long for decimal text
            {"s": ESCAPED, "n": hex(2**13999)},
            "int too long for decimal text as hex; lone surrogate escaped",
        ),
        (
            {"s": SURROGATE, "n": 2**13998},
            {"s": ESCAPED, "n": 2**13998},
            "lone surrogate escaped",
        ),
    ],
    ids=["surrogate", "key", "unprintable", "hex", "14000-bits", "13999-bits"],
)
def test_each_change_a_jsonl_sink_makes_is_named_in_the_sanitised_log(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    data: dict[object, object],
    stored: dict[str, object],
    reason: str,
) -> None:
    record = AgentEvent(name="odd", data=cast("dict[str, object]", data), timestamp=T0)
    line, logged = _salvaged_jsonl(tmp_path / "s.jsonl", caplog, record)
    assert line["data"] == stored
    assert (logged.levelno, getattr(logged, "reason", None)) == (logging.WARNING, reason)


def test_nested_lists_are_kept_to_the_depth_limit_and_cut_below_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the line is depth 0, its data 1, data["d"] 2: 62 lists reach depth 63, the last one kept
    kept, logged = _salvaged_jsonl(
        tmp_path / "kept.jsonl",
        caplog,
        AgentEvent(name="odd", data={"s": SURROGATE, "d": _nested_list(62)}, timestamp=T0),
    )
    assert kept["data"] == {"s": ESCAPED, "d": _nested_list(62)}
    assert getattr(logged, "reason", None) == "lone surrogate escaped"
    caplog.clear()
    cut, logged = _salvaged_jsonl(
        tmp_path / "cut.jsonl",
        caplog,
        AgentEvent(name="odd", data={"s": SURROGATE, "d": _nested_list(63)}, timestamp=T0),
    )
    inner = cast("dict[str, object]", cut["data"])["d"]
    for _ in range(62):
        assert isinstance(inner, list)
        (inner,) = inner
    assert inner == DEPTH_LIMIT
    assert getattr(logged, "reason", None) == (
        "lone surrogate escaped; nesting cut at the depth limit"
    )


def test_a_sanitised_jsonl_usage_record_is_still_a_usage_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "u.jsonl"
    line, _ = _salvaged_jsonl(path, caplog, UsageRecord(model=SURROGATE, timestamp=T0))
    assert (line["kind"], line["model"]) == ("usage", ESCAPED)
    (back,) = read_jsonl(path)
    assert isinstance(back, UsageRecord)


@pytest.mark.parametrize(
    ("error", "reason"),
    [(SilentError(), "SilentError"), (MuteError(), "MuteError: <unprintable message>")],
    ids=["empty", "unprintable"],
)
def test_a_rejection_names_the_error_even_when_its_text_is_empty_or_cannot_be_had(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: Exception, reason: str
) -> None:
    record = AgentEvent(name="odd", data=Failing(error), timestamp=T0)
    line, logged = _salvaged_jsonl(tmp_path / "r.jsonl", caplog, record)
    assert (line["kind"], line["reason"]) == ("rejected", reason)
    assert (logged.levelno, getattr(logged, "reason", None)) == (logging.ERROR, reason)


def test_a_sanitised_sqlite_row_without_notes_is_logged_with_the_first_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "b.db"
    record = AgentEvent(name="odd", project_id=True, timestamp=T0)
    row, reason = _sanitised_event_row(path, caplog, record)
    assert (row["project_id"], row["project_type"]) == (1, "integer")
    assert reason == "TypeError: bool True is no value for a column of kind V"
    (logged,) = [r for r in caplog.records if getattr(r, "event", None) == "sink.record_sanitised"]
    assert logged.levelno == logging.WARNING
    assert logged.getMessage() == (
        f"sink.record_sanitised: {path} sanitised odd "
        "(TypeError: bool True is no value for a column of kind V); 1 so far"
    )


@pytest.mark.parametrize(
    ("value", "stored", "reason"),
    [
        (-(2**63), -(2**63), "non-text value as text"),
        (2**63 - 1, 2**63 - 1, "non-text value as text"),
        (2**70, str(2**70), f"{BEYOND}; non-text value as text"),
        (2**13998, str(2**13998), f"{BEYOND}; non-text value as text"),
        (2**13999, hex(2**13999), f"{BEYOND}; non-text value as text"),
        (2**14000, hex(2**14000), f"{BEYOND}; non-text value as text"),
    ],
    ids=["int64-min", "int64-max", "2**70", "13999-bits", "14000-bits", "14001-bits"],
)
def test_a_sanitised_sqlite_rows_data_keeps_ints_sqlite_holds_and_writes_the_rest_as_text(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    value: int,
    stored: object,
    reason: str,
) -> None:
    record = AgentEvent(name="odd", role=7, data={"n": value}, timestamp=T0)  # type: ignore[arg-type]
    row, logged = _sanitised_event_row(tmp_path / "d.db", caplog, record)
    assert json.loads(cast(str, row["data"])) == {"n": stored}
    assert logged == reason


def test_valid_non_ascii_text_is_stored_as_it_is_without_sanitising(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with SqliteSink(path, background=False, flush_every=1) as sink:
        sink.write_event(AgentEvent(name="x", detail="déjà vu", role="rédacteur", timestamp=T0))
        sink.write_usage(UsageRecord(model="modèle", timestamp=T0))
        (stored,) = sink.read_events()
        (used,) = sink.read_usage()
    assert (sink.sanitised, sink.rejected) == (0, 0)
    assert (stored.detail, stored.role, used.model) == ("déjà vu", "rédacteur", "modèle")


def test_a_sinks_repr_counts_the_batch_in_flight_as_pending(tmp_path: Path) -> None:
    sink = JsonlSink(tmp_path / "r.jsonl", flush_every=2, max_lag=8)
    entered, release = threading.Event(), threading.Event()
    real = sink._write_batch

    def held(batch: Sequence[bytes]) -> None:
        entered.set()
        assert release.wait(20)
        real(batch)

    sink._write_batch = held  # type: ignore[method-assign]
    try:
        sink.write_event(event(i=0))
        sink.write_event(event(i=1))  # a batch is due: the writer takes it and waits
        assert entered.wait(20)
        sink.write_event(event(i=2))  # buffered behind it
        assert repr(sink) == f"JsonlSink({str(tmp_path / 'r.jsonl')!r}, pending=3)"
    finally:
        release.set()
        sink.close()
    assert repr(sink) == f"JsonlSink({str(tmp_path / 'r.jsonl')!r}, closed)"


# --- the SQLite reader's session filters ------------------------------------------------------


@pytest.mark.parametrize("name", ["role", "phase", "session_id"])
def test_a_session_filter_that_is_no_str_is_refused_by_its_name(tmp_path: Path, name: str) -> None:
    refused = pytest.raises(InvalidValueError, match=f"^{name} filter must be a str, got 5$")
    with SqliteSink(tmp_path / "f.db") as sink, refused:
        sink.read_sessions(**{name: 5})  # type: ignore[arg-type]


# --- a write waiting for room -----------------------------------------------------------------

WAIT = 20.0  # seconds a test waits at most for another thread (only a bug makes it wait)


class WaitClock(FakeClock):
    """A fake clock that counts (and moves ``step`` on at) each read of a write waiting for room.

    The waiting write is told by its function's name, which mutmut's copies of
    it keep inside theirs (``..._wait_for_room__mutmut_...``).
    """

    def __init__(self, step: float = 0.0) -> None:
        super().__init__()
        self.step = step
        self.waits = 0
        self._seen = threading.Condition()

    def __call__(self) -> float:
        if "_wait_for_room" in sys._getframe(1).f_code.co_name:
            with self._seen:
                self.waits += 1
                self.now += self.step
                self._seen.notify_all()
        return self.now

    def wait_for_waits(self, count: int) -> None:
        with self._seen:
            assert self._seen.wait_for(lambda: self.waits >= count, WAIT)


def _blocked(
    tmp_path: Path, clock: FakeClock, **settings: Any
) -> tuple[JsonlSink, threading.Event, list[Callable[[], None]]]:
    """A sink (flush_every=2, max_lag=4) whose writer blocks inside its first batch until released.

    ``steps`` may hold what the writer does instead of blocking, one per batch, in order.
    """
    sink = JsonlSink(tmp_path / "b.jsonl", flush_every=2, max_lag=4, clock=clock, **settings)
    release, entered = threading.Event(), threading.Event()
    steps: list[Callable[[], None]] = []
    real = sink._write_batch

    def gated(batch: Sequence[bytes]) -> None:
        if steps:
            steps.pop(0)()
        else:
            entered.set()
            assert release.wait(WAIT)
            failures = getattr(sink, "_test_fail_after_release", [])
            if failures:
                raise failures.pop(0)
        real(batch)

    sink._write_batch = gated  # type: ignore[method-assign]
    sink._test_entered = entered  # type: ignore[attr-defined]
    return sink, release, steps


def _fill_to_max_lag(sink: JsonlSink) -> None:
    sink.write_event(event(i=0))
    sink.write_event(event(i=1))  # a batch is due: the writer takes it and blocks
    assert sink._test_entered.wait(WAIT)  # type: ignore[attr-defined]
    sink.write_event(event(i=2))
    sink.write_event(event(i=3))  # 2 in flight + 2 buffered: max_lag reached


def _kept(sink: JsonlSink) -> list[object]:
    return [r.data["i"] for r in read_jsonl(sink.path) if isinstance(r, AgentEvent)]


def test_a_write_waiting_for_room_when_the_sink_closes_is_told_which_sink_closed(
    tmp_path: Path,
) -> None:
    clock = WaitClock()
    sink, release, _ = _blocked(tmp_path, clock, max_wait=3600.0)
    _fill_to_max_lag(sink)
    outcome: list[BaseException] = []

    def produce() -> None:
        try:
            sink.write_event(event(i=4))
        except BaseException as exc:
            outcome.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    clock.wait_for_waits(2)
    closer = threading.Thread(target=sink.close)
    closer.start()
    producer.join(WAIT)
    release.set()
    closer.join(WAIT)
    (error,) = outcome
    assert isinstance(error, SinkClosedError)
    assert str(error) == f"JsonlSink({str(sink.path)!r}) is closed"


@pytest.mark.parametrize(("step", "looks"), [(5.0, 2), (4.5, 3)], ids=["at-deadline", "before"])
def test_a_write_gives_up_waiting_exactly_at_max_wait(
    tmp_path: Path, step: float, looks: int
) -> None:
    clock = WaitClock(step=step)  # the deadline is read, then the time left: max_wait - step
    sink, release, _ = _blocked(tmp_path, clock, max_wait=5.0)
    _fill_to_max_lag(sink)
    sink.write_event(event(i=4))  # waits while time is left, then stalls the sink
    assert (clock.waits, sink.stalls) == (looks, 1)
    release.set()
    sink.close()
    assert _kept(sink) == [0, 1, 2, 3, 4]


def test_two_writes_waiting_for_room_are_each_counted_and_each_let_go(tmp_path: Path) -> None:
    clock = WaitClock()
    sink, release, _ = _blocked(tmp_path, clock, max_wait=3600.0)
    _fill_to_max_lag(sink)
    producers = [threading.Thread(target=sink.write_event, args=(event(i=i),)) for i in (4, 5)]
    for producer in producers:
        producer.start()
    clock.wait_for_waits(4)  # two looks each: both wait now
    assert sink._waiting == 2
    release.set()
    for producer in producers:
        producer.join(WAIT)
    assert sink._waiting == 0
    sink.close()
    assert sorted(cast("list[int]", _kept(sink))) == [0, 1, 2, 3, 4, 5]


def test_a_write_waits_again_from_the_instant_a_failed_batchs_pause_ends(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="techrevati.runtime.sinks")
    clock = WaitClock()
    failed = threading.Event()

    def refuse() -> None:
        failed.set()
        raise OSError(28, "No space left on device")

    sink, release, steps = _blocked(tmp_path, clock, max_wait=3600.0, flush_interval=10.0)
    steps.append(refuse)  # the first batch fails: the retry is due 10 s later
    sink.write_event(event(i=0))
    sink.write_event(event(i=1))
    assert failed.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while sink.failed_flushes == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    clock.now += 10.0  # exactly when the pause ends
    sink.write_event(event(i=2))  # due: the writer takes the three and blocks
    assert sink._test_entered.wait(WAIT)  # type: ignore[attr-defined]
    sink.write_event(event(i=3))  # 3 in flight + 1 buffered: max_lag reached
    producer = threading.Thread(target=sink.write_event, args=(event(i=4),))
    producer.start()
    clock.wait_for_waits(2)  # it waits for the writer, as writes did before the failure
    release.set()
    producer.join(WAIT)
    sink.close()
    assert _kept(sink) == [0, 1, 2, 3, 4]


def test_a_write_woken_while_the_disk_refuses_stops_waiting_without_stalling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="techrevati.runtime.sinks")
    clock = WaitClock()
    sink, release, _ = _blocked(tmp_path, clock, max_wait=3600.0, flush_interval=3600.0)
    _fill_to_max_lag(sink)
    producer = threading.Thread(target=sink.write_event, args=(event(i=4),))
    producer.start()
    clock.wait_for_waits(2)
    sink._test_fail_after_release = [OSError(28, "No space left on device")]  # type: ignore[attr-defined]
    release.set()  # the batch in flight fails: the write stops waiting, as on a full disk
    producer.join(WAIT)
    assert not producer.is_alive()
    assert (sink.failed_flushes, sink.stalls, clock.waits) == (1, 0, 2)
    assert [r for r in caplog.records if getattr(r, "event", None) == "sink.stalled"] == []
    sink.close()
    assert _kept(sink) == [0, 1, 2, 3, 4]


# --- SQLite: the plain-row shortcut never lets an odd value through ---------------------------


def _one_sqlite_record(path: Path, record: AgentEvent | UsageRecord) -> SqliteSink:
    with SqliteSink(path, background=False, flush_every=1) as sink:
        if isinstance(record, AgentEvent):
            sink.write_event(record)
        else:
            sink.write_usage(record)
    return sink


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("session_id", None, ""),
        ("worker_id", 10.5, "10.5"),
        ("role", 7, "7"),
        ("role", SURROGATE, ESCAPED),
        ("phase", None, ""),
        ("status", 8, "8"),
        ("detail", 9, "9"),
        ("detail", SURROGATE, ESCAPED),
        ("project_id", ["a"], "['a']"),
        ("project_id", SURROGATE, ESCAPED),
        ("project_id", 2**63, str(2**63)),
        ("project_id", -(2**63) - 1, str(-(2**63) - 1)),
    ],
)
def test_an_event_with_one_odd_field_is_sanitised_not_stored_as_given(
    tmp_path: Path, field: str, value: object, stored: object
) -> None:
    path = tmp_path / "e.db"
    values: dict[str, Any] = {field: value}
    sink = _one_sqlite_record(path, AgentEvent(name="odd", timestamp=T0, **values))
    assert (sink.sanitised, sink.rejected, sink.written) == (1, 0, 1)
    with sqlite3.connect(path) as conn:
        (kept,) = conn.execute(f"SELECT {field} FROM events").fetchone()
    assert kept == stored


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("session_id", None, ""),
        ("worker_id", 1, "1"),
        ("role", 7, "7"),
        ("phase", None, ""),
        ("model", SURROGATE, ESCAPED),
        ("project_id", ["a"], "['a']"),
        ("project_id", SURROGATE, ESCAPED),
        ("project_id", 2**63, str(2**63)),
        ("duration_seconds", 2**63, float(2**63)),
        ("duration_seconds", True, 1.0),
        ("service_tier", SURROGATE, ESCAPED),
    ],
)
def test_a_usage_record_with_one_odd_field_is_sanitised_not_stored_as_given(
    tmp_path: Path, field: str, value: object, stored: object
) -> None:
    path = tmp_path / "u.db"
    values: dict[str, Any] = {"model": "m", field: value}
    sink = _one_sqlite_record(path, UsageRecord(timestamp=T0, **values))
    assert (sink.sanitised, sink.rejected, sink.written) == (1, 0, 1)
    with sqlite3.connect(path) as conn:
        (kept,) = conn.execute(f"SELECT {field} FROM usage").fetchone()
    assert kept == stored


def test_a_usage_record_whose_duration_is_a_bool_is_logged_with_the_first_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="techrevati.runtime.sinks")
    _one_sqlite_record(
        tmp_path / "u.db", UsageRecord(model="m", duration_seconds=True, timestamp=T0)
    )
    (logged,) = [r for r in caplog.records if getattr(r, "event", None) == "sink.record_sanitised"]
    assert (
        getattr(logged, "reason", None) == "TypeError: bool True is no value for a column of kind R"
    )


@pytest.mark.parametrize(
    "field",
    [
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "cache_write_1h_tokens",
    ],
)
def test_a_token_count_no_sqlite_integer_holds_rejects_the_usage_record(
    tmp_path: Path, field: str
) -> None:
    values: dict[str, Any] = {field: 2**63}
    sink = _one_sqlite_record(tmp_path / "t.db", UsageRecord(model="m", timestamp=T0, **values))
    assert (sink.sanitised, sink.rejected) == (0, 1)


# --- SQLite: the reader's filters and the sink's settings -------------------------------------


@pytest.mark.parametrize("name", ["name", "phase", "model", "session_id"])
def test_an_event_filter_that_is_no_str_is_refused_by_its_name(tmp_path: Path, name: str) -> None:
    refused = pytest.raises(InvalidValueError, match=f"^{name} filter must be a str, got 5$")
    with SqliteSink(tmp_path / "f.db") as sink, refused:
        sink.read_events(**{name: 5})  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["role", "phase", "model", "session_id"])
def test_a_usage_filter_that_is_no_str_is_refused_by_its_name(tmp_path: Path, name: str) -> None:
    refused = pytest.raises(InvalidValueError, match=f"^{name} filter must be a str, got 5$")
    with SqliteSink(tmp_path / "f.db") as sink, refused:
        sink.read_usage(**{name: 5})  # type: ignore[arg-type]


def test_a_sqlite_sink_keeps_the_max_lag_and_max_wait_it_is_given(tmp_path: Path) -> None:
    with SqliteSink(tmp_path / "s.db", flush_every=10, max_lag=25, max_wait=7.5) as sink:
        assert sink.max_lag == 25
        assert sink._max_wait == 7.5  # no public reader: the wait's own setting


# --- writes below max_lag, and the stall's log record -----------------------------------------


def test_writes_below_max_lag_never_wait(tmp_path: Path) -> None:
    clock = WaitClock(step=10.0)  # a wait would count, and give up at once
    with JsonlSink(tmp_path / "w.jsonl", flush_every=100, max_lag=100, clock=clock) as sink:
        for i in range(99):
            sink.write_event(event(i=i))
    assert (clock.waits, sink.stalls) == (0, 0)


def test_a_stall_is_logged_with_the_sink_its_path_the_wait_and_what_is_pending(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = WaitClock(step=10.0)
    sink, release, _ = _blocked(tmp_path, clock, max_wait=5.0)
    _fill_to_max_lag(sink)
    with caplog.at_level(logging.ERROR, logger="techrevati.runtime.sinks"):
        sink.write_event(event(i=4))
    release.set()
    sink.close()
    (stalled,) = [r for r in caplog.records if getattr(r, "event", None) == "sink.stalled"]
    assert stalled.levelno == logging.ERROR
    fields = {k: getattr(stalled, k, None) for k in ("sink", "path", "max_wait", "pending")}
    assert fields == {"sink": "JsonlSink", "path": str(sink.path), "max_wait": 5.0, "pending": 3}


# --- JSONL: reading lines -----------------------------------------------------------------------


def test_a_torn_line_longer_than_one_read_after_a_first_newline_keeps_that_newline(
    tmp_path: Path,
) -> None:
    path = tmp_path / "long.jsonl"
    torn = b'{"kind":"event",' + b"x" * (65536 - 16)  # one read of 64 KiB holds no newline
    path.write_bytes(b"\n" + torn)
    JsonlSink(path).close()
    assert path.read_bytes() == b"\n"
    (side,) = _torn_side_files(tmp_path, "long.jsonl")
    assert side.read_bytes() == torn


def test_a_record_line_with_a_reason_field_is_still_a_record(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    line = {"kind": "event", "reason": "not a quarantine", **event(i=1).to_dict()}
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    (back,) = read_jsonl(path)
    assert isinstance(back, AgentEvent)
    assert back.data["i"] == 1
