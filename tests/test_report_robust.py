"""The report command on files that are not clean: malformed rows skipped and counted,
``--strict``, bounded and escaped output, ``--format csv``, and fuzzing of both formats."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime.events import AgentEvent, UsageRecord
from techrevati.runtime.report import build_report, main
from techrevati.runtime.sinks import JsonlSink, SqliteSink
from tests.conftest import examples
from tests.test_report import fill

AT = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
TS = "2026-01-05T09:00:00.000000+00:00"
# What no output may carry raw: C0 and C1 controls, DEL, separators, bidi overrides.
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
GOOD_TOTALS = {"sessions": 1, "turns": 1, "unpriced_turns": 0, "events": 2, "cost_usd": "0.25"}


def write_good(sink: SqliteSink | JsonlSink) -> None:
    """One session of one priced turn: the figures every case below must keep."""
    sink.write_event(
        AgentEvent(
            name="session.started", session_id="s1", role="writer", project_id="acme", timestamp=AT
        )
    )
    sink.write_usage(
        UsageRecord(
            model="model-a",
            input_tokens=100,
            output_tokens=10,
            cost_usd=Decimal("0.25"),
            session_id="s1",
            role="writer",
            project_id="acme",
            timestamp=AT,
        )
    )
    sink.write_event(
        AgentEvent(
            name="session.completed",
            session_id="s1",
            data={"duration_seconds": 10.0, "cost_usd": "0.25", "turns": 1},
            timestamp=AT + timedelta(seconds=10),
        )
    )


def good_db(path: Path) -> Path:
    with SqliteSink(path, background=False) as sink:
        write_good(sink)
    return path


def good_jsonl(path: Path) -> Path:
    with JsonlSink(path, background=False, fsync="never") as sink:
        write_good(sink)
    return path


def insert(path: Path, table: str, row: Mapping[str, object]) -> int:
    """Insert a raw row, past every check the sink makes; return its rowid."""
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        cursor = conn.execute(
            f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
            tuple(row.values()),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def usage_line(**fields: object) -> bytes:
    return json.dumps({"kind": "usage", "model": "m", "timestamp": TS, **fields}).encode()


def event_line(**fields: object) -> bytes:
    return json.dumps(
        {"kind": "event", "name": "turn.completed", "timestamp": TS, **fields}
    ).encode()


DEEP = b"[" * 100_000 + b"]" * 100_000

# (table, the raw row, the whole reason the report gives)
SQLITE_CASES = [
    pytest.param(
        "events",
        {"ts": TS, "name": "turn.completed", "data": "{not json"},
        "data is not JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
        id="events-data-not-json",
    ),
    pytest.param(
        "events",
        {"ts": TS, "name": "turn.completed", "data": "[" * 100_000 + "]" * 100_000},
        "data is not JSON: maximum recursion depth exceeded while decoding a JSON array "
        "from a unicode string",
        id="events-data-nested-100k-deep",
    ),
    pytest.param(
        "events",
        {"ts": TS, "name": "turn.failed", "failure_class": "gremlins"},
        "failure_class must be a known class, got 'gremlins'",
        id="events-unknown-failure-class",
    ),
    pytest.param(
        "events",
        {"ts": "last tuesday", "name": "turn.completed"},
        "timestamp must be an ISO 8601 time, got 'last tuesday'",
        id="events-malformed-ts",
    ),
    pytest.param(
        "events",
        {"ts": "2026-01-05T09:00:00", "name": "turn.completed"},
        "timestamp must have a UTC offset, got '2026-01-05T09:00:00'",
        id="events-naive-ts",
    ),
    pytest.param(
        "events",
        {"ts": TS, "name": "turn.completed", "project_id": 4.5},
        "project_id must be a string, an integer or null, got 4.5",
        id="events-real-project",
    ),
    pytest.param(
        "events",
        {"ts": TS, "name": "turn.completed", "role": b"\xff\x00"},
        "role must be a string, got a BLOB of 2 bytes",
        id="events-blob-role",
    ),
    pytest.param(
        "events",
        {"ts": TS, "name": "  "},
        "name must not be blank, got '  '",
        id="events-blank-name",
    ),
    pytest.param(
        "usage",
        {"ts": TS, "model": "m", "cost_usd": "abc"},
        "cost_usd must be a decimal number, got 'abc'",
        id="usage-cost-abc",
    ),
    pytest.param(
        "usage",
        {"ts": TS, "model": "m", "cost_usd": "1e999999"},
        "cost_usd must be below 1e15 USD with an exponent from -15 to 15, got '1e999999'",
        id="usage-cost-1e999999",
    ),
    pytest.param(
        "usage",
        {"ts": TS, "model": "m", "cost_usd": "-0.01"},
        "cost_usd must be a finite amount >= 0, got '-0.01'",
        id="usage-negative-cost",
    ),
    pytest.param(
        "usage",
        {"ts": TS, "model": "m", "input_tokens": "ten"},
        "input_tokens must be an integer, got 'ten'",
        id="usage-text-tokens",
    ),
    pytest.param(
        "usage",
        {"ts": TS, "model": "m", "duration_seconds": "slow"},
        "duration_seconds must be a number of seconds, got 'slow'",
        id="usage-text-duration",
    ),
    pytest.param(
        "usage",
        {"ts": TS, "model": "m", "priced": 2},
        "priced must be true or false, got 2",
        id="usage-priced-2",
    ),
    pytest.param(
        "usage",
        {"ts": TS, "model": "m", "service_tier": b"\x00"},
        "service_tier must be a string, got a BLOB of 1 bytes",
        id="usage-blob-tier",
    ),
    pytest.param(
        "usage",
        {"ts": TS, "model": "m", "service_tier": "x" * 65},
        f"service_tier must be a name of 1 to 64 characters, got {'x' * 40!r}...",
        id="usage-tier-too-long",
    ),
    pytest.param(
        "usage",
        {"ts": "0001-01-01T00:00:00+05:00", "model": "m"},
        "timestamp is out of range in UTC, got '0001-01-01T00:00:00+05:00'",
        id="usage-ts-before-year-1-in-utc",
    ),
    pytest.param(
        "sessions",
        {"session_id": "s9", "status": "exploded"},
        "status must be a session status, got 'exploded'",
        id="sessions-unknown-status",
    ),
    pytest.param(
        "sessions",
        {"session_id": "s9", "status": "completed", "duration_seconds": "slow"},
        "duration_seconds must be a number of seconds, got 'slow'",
        id="sessions-text-duration",
    ),
    pytest.param(
        "sessions",
        {"session_id": "s9", "status": "completed", "duration_seconds": 1e300},
        "duration_seconds must be from 0 to below 1e10 seconds, got 1e+300",
        id="sessions-huge-duration",
    ),
    pytest.param(
        "sessions",
        {"session_id": "s9", "status": "completed", "cost_usd": "1e999999"},
        "cost_usd must be below 1e15 USD with an exponent from -15 to 15, got '1e999999'",
        id="sessions-cost-1e999999",
    ),
    pytest.param(
        "sessions",
        {"session_id": "s9", "status": "completed", "turns": -1},
        "turns must be from 0 to 2**63 - 1, got -1",
        id="sessions-negative-turns",
    ),
    pytest.param(
        "sessions",
        {"session_id": "s9", "status": "failed", "failure_class": "gremlins"},
        "failure_class must be a known class, got 'gremlins'",
        id="sessions-unknown-failure-class",
    ),
    pytest.param(
        "sessions",
        {"session_id": "s9", "status": "completed", "started_at": "soon"},
        "started_at must be an ISO 8601 time, got 'soon'",
        id="sessions-malformed-started-at",
    ),
]


@pytest.mark.parametrize(("table", "row", "reason"), SQLITE_CASES)
def test_a_malformed_sqlite_row_is_skipped_and_counted(
    tmp_path: Path, table: str, row: dict[str, object], reason: str
) -> None:
    db = good_db(tmp_path / "runs.db")
    rowid = insert(db, table, row)
    code, out, err = run(str(db), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["totals"] == GOOD_TOTALS
    assert report["skipped"] == [
        {"source": table, "rows": 1, "first_row": rowid, "first_reason": reason}
    ]
    assert err == f"report: skipped 1 malformed rows ({table} 1); --strict refuses them\n"
    code, text, _ = run(str(db))
    assert code == 0
    skipped = text.split("\n\n")[2].splitlines()
    assert skipped[0] == "Skipped rows (malformed: 1)"
    assert skipped[3].split(None, 3) == [table, "1", str(rowid), reason]


@pytest.mark.parametrize(("table", "row", "reason"), SQLITE_CASES)
def test_strict_refuses_a_malformed_sqlite_row_naming_it(
    tmp_path: Path, table: str, row: dict[str, object], reason: str
) -> None:
    db = good_db(tmp_path / "runs.db")
    rowid = insert(db, table, row)
    assert run(str(db), "--strict") == (2, "", f"report: {db}: {table} row {rowid}: {reason}\n")


def test_sqlite_event_data_that_is_empty_or_not_an_object_is_read_as_the_reader_reads_it(
    tmp_path: Path,
) -> None:
    db = good_db(tmp_path / "runs.db")
    for data in ("", "[1]", "null", '"text"'):
        insert(db, "events", {"ts": TS, "name": "turn.completed", "data": data})
    report = build_report(db)
    assert (report.events, report.skipped) == (6, ())


def test_sqlite_text_that_is_not_utf8_is_one_skipped_row_not_the_end_of_the_query(
    tmp_path: Path,
) -> None:
    db = good_db(tmp_path / "runs.db")
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(
            "INSERT INTO usage (ts, model, role) VALUES (?, 'm', CAST(? AS TEXT))",
            (TS, b"caf\xe9"),
        )
        conn.execute("INSERT INTO usage (ts, model, cost_usd) VALUES (?, 'm', '1')", (TS,))
    report = build_report(db)
    assert report.turns == 2  # the row after the bad one is read
    assert report.cost_usd == Decimal("1.25")
    assert [(s.source, s.rows, s.first_reason) for s in report.skipped] == [
        ("usage", 1, "role is not UTF-8 text, got 'caf\\udce9'")
    ]


# (the bad line, its kind, the whole reason); the good file has 3 lines, so it is line 4.
JSONL_CASES = [
    pytest.param(
        usage_line(project_id=[1, 2]),
        "usage",
        "project_id must be a string, an integer or null, got an array",
        id="list-project",
    ),
    pytest.param(
        event_line(project_id={"a": 1}),
        "event",
        "project_id must be a string, an integer or null, got an object",
        id="dict-project",
    ),
    pytest.param(
        usage_line(role={"a": 1}), "usage", "role must be a string, got an object", id="dict-role"
    ),
    pytest.param(
        event_line(role=[1]), "event", "role must be a string, got an array", id="list-role"
    ),
    pytest.param(
        b'{"kind":"event","name":"x","timestamp":"' + TS.encode() + b'","data":' + DEEP + b"}",
        "other",
        "not JSON: maximum recursion depth exceeded while decoding a JSON array from a unicode "
        "string",
        id="data-nested-100k-deep",
    ),
    pytest.param(
        usage_line(cost_usd="1e999999"),
        "usage",
        "cost_usd must be below 1e15 USD with an exponent from -15 to 15, got '1e999999'",
        id="cost-1e999999",
    ),
    pytest.param(
        usage_line()[:-1] + b', "cost_usd": 1e999999}',
        "usage",
        "cost_usd must be a finite amount >= 0, got inf",
        id="cost-number-1e999999",
    ),
    pytest.param(
        b"not json", "other", "not JSON: Expecting value: line 1 column 1 (char 0)", id="garbage"
    ),
    pytest.param(b"[1, 2]", "other", "not a JSON object but an array", id="array"),
    pytest.param(
        b'{"kind": "span"}', "other", "kind must be 'event' or 'usage', got 'span'", id="kind"
    ),
    pytest.param(
        json.dumps({"kind": "usage", "timestamp": TS}).encode(),
        "usage",
        "model must be a string, got None",
        id="no-model",
    ),
    pytest.param(
        usage_line(input_tokens=1.5),
        "usage",
        "input_tokens must be an integer, got 1.5",
        id="float-tokens",
    ),
    pytest.param(
        usage_line(output_tokens=True),
        "usage",
        "output_tokens must be an integer, got True",
        id="bool-tokens",
    ),
    pytest.param(
        usage_line(reasoning_tokens=2**63),
        "usage",
        "reasoning_tokens must be from 0 to 2**63 - 1, got 9223372036854775808",
        id="tokens-past-64-bits",
    ),
    pytest.param(
        usage_line(priced="no"), "usage", "priced must be true or false, got 'no'", id="priced"
    ),
    pytest.param(
        event_line(timestamp="9999-12-31T23:00:00-05:00"),
        "event",
        "timestamp is out of range in UTC, got '9999-12-31T23:00:00-05:00'",
        id="ts-past-9999-in-utc",
    ),
    pytest.param(
        event_line(failure_class="gremlins"),
        "event",
        "failure_class must be a known class, got 'gremlins'",
        id="failure-class",
    ),
    pytest.param(
        event_line(data=[1]), "event", "data must be an object, got an array", id="data-array"
    ),
    pytest.param(
        event_line(name="session.completed", session_id="s9", data={"duration_seconds": "slow"}),
        "event",
        "data.duration_seconds must be a number of seconds, got 'slow'",
        id="session-text-duration",
    ),
    pytest.param(
        event_line(name="session.failed", session_id="s9", data={"cost_usd": "1e999999"}),
        "event",
        "data.cost_usd must be below 1e15 USD with an exponent from -15 to 15, got '1e999999'",
        id="session-cost-1e999999",
    ),
    pytest.param(
        event_line(name="session.cancelled", session_id="s9", data={"turns": -1}),
        "event",
        "data.turns must be from 0 to 2**63 - 1, got -1",
        id="session-negative-turns",
    ),
    pytest.param(
        event_line(name="session.started", session_id="  "),
        "event",
        "session_id must not be blank, got '  '",
        id="session-blank-id",
    ),
    pytest.param(
        usage_line(role="\ud800"),
        "usage",
        "role is not UTF-8 text, got '\\ud800'",
        id="lone-surrogate",
    ),
    pytest.param(
        b'{"kind":"usage","model":"\xff"}',
        "other",
        "not JSON: 'utf-8' codec can't decode byte 0xff in position 25: invalid start byte",
        id="not-utf8",
    ),
    pytest.param(
        usage_line(service_tier=7),
        "usage",
        "service_tier must be a string, got 7",
        id="number-tier",
    ),
    pytest.param(
        usage_line(service_tier="  "),
        "usage",
        "service_tier must be a name of 1 to 64 characters, got '  '",
        id="blank-tier",
    ),
]


@pytest.mark.parametrize(("line", "source", "reason"), JSONL_CASES)
def test_a_malformed_jsonl_line_is_skipped_and_counted(
    tmp_path: Path, line: bytes, source: str, reason: str
) -> None:
    path = good_jsonl(tmp_path / "runs.jsonl")
    with open(path, "ab") as handle:
        handle.write(line + b"\n")
    code, out, err = run(str(path), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["totals"] == GOOD_TOTALS
    assert report["skipped"] == [
        {"source": source, "rows": 1, "first_row": 4, "first_reason": reason}
    ]
    assert err == f"report: skipped 1 malformed rows ({source} 1); --strict refuses them\n"


@pytest.mark.parametrize(("line", "source", "reason"), JSONL_CASES)
def test_strict_refuses_a_malformed_jsonl_line_naming_it(
    tmp_path: Path, line: bytes, source: str, reason: str
) -> None:
    del source
    path = good_jsonl(tmp_path / "runs.jsonl")
    with open(path, "ab") as handle:
        handle.write(line + b"\n")
    assert run(str(path), "--strict") == (2, "", f"report: {path}:4: {reason}\n")


def test_skipped_rows_are_counted_per_source_with_the_first_reason(tmp_path: Path) -> None:
    path = good_jsonl(tmp_path / "runs.jsonl")
    with open(path, "ab") as handle:
        handle.write(b"\n".join([b"x", usage_line(cost_usd="abc"), b"y", usage_line(role=1)]))
        handle.write(b"\n" + usage_line(role=2))  # a torn last line: not read, not counted
    report = build_report(path)
    assert [(s.source, s.rows, s.first_row, s.first_reason) for s in report.skipped] == [
        ("other", 2, 4, "not JSON: Expecting value: line 1 column 1 (char 0)"),
        ("usage", 2, 5, "cost_usd must be a decimal number, got 'abc'"),
    ]
    assert report.skipped_rows == 4
    code, text, err = run(str(path))
    assert code == 0
    assert text.split("\n\n")[2] == (
        "Skipped rows (malformed: 4)\n"
        "source  rows  first_row  first_reason\n"
        "------  ----  ---------  ---------------------------------------------------\n"
        "other      2          4  not JSON: Expecting value: line 1 column 1 (char 0)\n"
        "usage      2          5  cost_usd must be a decimal number, got 'abc'"
    )
    assert err == "report: skipped 4 malformed rows (other 2, usage 2); --strict refuses them\n"


def test_malformed_rows_are_counted_whatever_the_window(tmp_path: Path) -> None:
    db = good_db(tmp_path / "runs.db")
    insert(db, "usage", {"ts": "2020-01-01T00:00:00.000000+00:00", "model": "m", "cost_usd": "x"})
    report = build_report(db, since=AT)
    assert (report.turns, report.skipped_rows) == (1, 1)


def test_a_clean_file_has_no_skipped_section_and_strict_changes_nothing(tmp_path: Path) -> None:
    db = good_db(tmp_path / "runs.db")
    code, text, err = run(str(db))
    assert (code, err) == (0, "")
    assert "Skipped" not in text
    assert run(str(db), "--strict") == (0, text, "")
    assert json.loads(run(str(db), "--json")[1])["skipped"] == []


def test_a_file_whose_lines_are_all_unknown_is_still_refused_as_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_bytes(b'{"hello": 1}\n[2]\n')
    code, out, err = run(str(path))
    assert (code, out) == (2, "")
    assert err == (
        f"report: {path} is neither a SQLite database nor a JSONL sink file "
        f"({path}:1: kind must be 'event' or 'usage', got None)\n"
    )


def test_a_file_of_our_records_all_malformed_is_reported_not_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_bytes(b'{"hello": 1}\n' + usage_line(cost_usd="abc") + b"\n")
    report = build_report(path)
    assert (report.turns, report.skipped_rows) == (0, 2)


# A cost is a figure when it is below 1e15 USD and its exponent lies in [-15, 15].
@pytest.mark.parametrize(
    ("cost", "shown"),
    [
        ("999999999999999.999999999999999", "999999999999999.999999999999999"),
        ("1e-15", "0.000000000000001"),
        ("0.000000000000001", "0.000000000000001"),
        ("1E+14", "100000000000000"),
        ("0E+15", "0"),
        ("0.250", "0.250"),
        ("0" * 63 + "1", "1"),
    ],
)
def test_costs_on_the_money_grid_below_1e15_are_figures(
    tmp_path: Path, cost: str, shown: str
) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_bytes(usage_line(cost_usd=cost) + b"\n")
    report = json.loads(run(str(path), "--json")[1])
    assert (report["totals"]["cost_usd"], report["skipped"]) == (shown, [])


@pytest.mark.parametrize(
    "cost",
    [
        "1e15",
        "1000000000000000",
        "1e-16",
        "0.0000000000000001",
        "0E+16",
        "0E-16",
        "Infinity",
        "NaN",
        "sNaN",
        "0" * 64 + "1",  # 65 characters: refused before it is parsed
    ],
)
def test_costs_off_the_grid_or_from_1e15_are_malformed(tmp_path: Path, cost: str) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_bytes(usage_line(cost_usd=cost) + b"\n")
    report = build_report(path)
    assert (report.turns, report.skipped_rows) == (0, 1)


def test_the_111_byte_line_with_cost_1e999999_prints_a_few_hundred_bytes(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    line = (
        b'{"kind":"usage","model":"m","cost_usd":"1e999999",'
        b'"timestamp":"2026-01-01T00:00:00+00:00"}'
    )
    path.write_bytes(line + b"\n")
    for shape in ("text", "json", "csv"):
        code, out, err = run(str(path), "--format", shape)
        assert code == 0
        assert len(out) + len(err) < 3000, shape


def test_duration_and_turns_bounds(tmp_path: Path) -> None:
    db = good_db(tmp_path / "runs.db")
    insert(db, "sessions", {"session_id": "a", "status": "completed", "duration_seconds": 9.99e9})
    insert(db, "sessions", {"session_id": "b", "status": "completed", "duration_seconds": 1e10})
    insert(db, "sessions", {"session_id": "c", "status": "completed", "turns": 2**63 - 1})
    insert(db, "sessions", {"session_id": "d", "status": "completed", "duration_seconds": -1})
    report = build_report(db)
    assert sorted(row.session_id for row in report.slowest_sessions) == ["a", "s1"]
    assert report.sessions == 3
    assert [(s.source, s.rows) for s in report.skipped] == [("sessions", 2)]


EVIL = "\x1b[31mred\x1b]0;owned\x07\x9b2J\x7f\u202egnp.exe\u2028\x00"
EVIL_SHOWN = "\\x1b[31mred\\x1b]0;owned\\x07\\x9b2J\\x7f\\u202egnp.exe\\u2028\\x00"


def evil_file(tmp_path: Path) -> Path:
    path = tmp_path / "evil\x1b[2J.jsonl"
    with JsonlSink(path, background=False, fsync="never") as sink:
        sink.write_event(
            AgentEvent(
                name="session.started", session_id=EVIL, role=EVIL, project_id=EVIL, timestamp=AT
            )
        )
        sink.write_usage(
            UsageRecord(model=EVIL, role=EVIL, project_id=EVIL, cost_usd=Decimal(1), timestamp=AT)
        )
        sink.write_event(
            AgentEvent(
                name="session.completed",
                session_id=EVIL,
                data={"duration_seconds": 1.0, "cost_usd": "1", "turns": 1},
                timestamp=AT,
            )
        )
    return path


def test_control_characters_are_escaped_in_text_and_csv(tmp_path: Path) -> None:
    path = evil_file(tmp_path)
    for shape in ("text", "csv"):
        code, out, _ = run(str(path), "--format", shape)
        assert code == 0
        assert UNSAFE.search(out.replace("\n", "")) is None, shape
        assert EVIL_SHOWN in out, shape
    _, text, _ = run(str(path))
    assert text.splitlines()[0].startswith(f"Report for {tmp_path}/evil\\x1b[2J.jsonl ")
    assert f"\n{EVIL_SHOWN}      1         1\n" in text.split("Cost by model")[1]


def test_json_keeps_the_text_exact_but_prints_no_control_character(tmp_path: Path) -> None:
    path = evil_file(tmp_path)
    code, out, _ = run(str(path), "--json")
    assert code == 0
    assert UNSAFE.search(out.replace("\n", "")) is None
    report = json.loads(out)
    assert report["cost_by_role"][0]["role"] == EVIL
    assert report["slowest_sessions"][0]["session_id"] == EVIL


def test_errors_on_stderr_are_escaped(tmp_path: Path) -> None:
    missing = tmp_path / "no\x1b[2Jpe.db"
    assert run(str(missing)) == (2, "", f"report: no such file: {tmp_path}/no\\x1b[2Jpe.db\n")


def test_long_text_cells_are_cut_at_80_characters_in_text_only(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    lines = [usage_line(model="m" * 500, cost_usd="1"), usage_line(model="short", cost_usd="2")]
    path.write_bytes(b"\n".join(lines) + b"\n")
    _, text, _ = run(str(path))
    models = text.split("Cost by model\n")[1].split("\n\n")[0].splitlines()
    assert models[3] == "m" * 77 + "...      1         1"
    assert models[2] == "short" + " " * 75 + "      1         2"
    assert json.loads(run(str(path), "--json")[1])["cost_by_model"][1]["model"] == "m" * 500
    assert "m" * 500 in run(str(path), "--format", "csv")[1]
    path.write_bytes(usage_line(model="m" * 80) + b"\n")
    assert "m" * 80 + "      1" in run(str(path))[1]


def csv_sections(text: str) -> dict[str, list[dict[str, str]]]:
    """Parse the CSV form back: each block's header row names its cells."""
    sections: dict[str, list[dict[str, str]]] = {}
    header: list[str] = []
    for row in csv.reader(io.StringIO(text)):
        if not row:
            header = []
        elif not header:
            assert row[0] == "section"
            header = row
        else:
            cells = dict(zip(header[1:], row[1:], strict=True))
            sections.setdefault(row[0], []).append(cells)
    return sections


def csv_headers(text: str) -> list[list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    return [rows[0]] + [rows[i + 1] for i, row in enumerate(rows[:-1]) if not row]


def cell(value: object) -> str:
    return "" if value is None else str(value)


def test_csv_is_the_json_figures_section_by_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "runs.db"
    with SqliteSink(db, background=False) as sink:
        fill(sink)
    insert(db, "usage", {"ts": TS, "model": "m", "cost_usd": "abc"})
    code, out, _ = run(str(db), "--format", "csv")
    assert code == 0
    data = json.loads(run(str(db), "--json")[1])
    sections = csv_sections(out)
    assert sections["report"] == [{"source": str(db), "format": "sqlite", "since": "", "until": ""}]
    assert sections["totals"] == [{k: cell(v) for k, v in data["totals"].items()}]
    assert sections["tokens"] == [
        {"kind": kind, "tokens": str(count)} for kind, count in data["tokens"].items()
    ]
    for name in (
        "cost_by_project",
        "cost_by_role",
        "cost_by_model",
        "cost_by_tier",
        "cost_by_day",
        "failures",
        "slowest_sessions",
        "most_expensive_sessions",
        "skipped",
    ):
        rows = sections.get(name, [])
        fields = list(rows[0]) if rows else []
        assert rows == [{f: cell(line[f]) for f in fields} for line in data[name]], name
        assert len(rows) == len(data[name]) > 0, name
    assert [h[:2] for h in csv_headers(out)] == [
        ["section", "source"],
        ["section", "sessions"],
        ["section", "project_id"],
        ["section", "role"],
        ["section", "model"],
        ["section", "service_tier"],
        ["section", "day"],
        ["section", "kind"],
        ["section", "failure_class"],
        ["section", "session_id"],
        ["section", "session_id"],
        ["section", "source"],
    ]
    assert csv_headers(out)[9] == [
        "section",
        "session_id",
        "status",
        "role",
        "project_id",
        "duration_seconds",
        "cost_usd",
        "turns",
    ]
    assert sections["slowest_sessions"][0]["duration_seconds"] == "40.0"
    assert out.endswith("\n")
    assert "\r" not in out


def test_csv_cells_that_a_spreadsheet_would_run_are_quoted(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    roles = ['=HYPERLINK("http://x")', "+1", "-1", "@SUM(A1)", " =1", "writer", "a=b"]
    lines = [usage_line(role=role, cost_usd=str(i + 1)) for i, role in enumerate(roles)]
    lines.append(usage_line(project_id=-7, cost_usd="10"))
    path.write_bytes(b"\n".join(lines) + b"\n")
    sections = csv_sections(run(str(path), "--format", "csv")[1])
    shown = {row["role"] for row in sections["cost_by_role"]}
    assert shown == {
        '\'=HYPERLINK("http://x")',
        "'+1",
        "'-1",
        "'@SUM(A1)",
        "' =1",
        "writer",
        "a=b",
        "",
    }
    assert {"project_id": "'-7", "turns": "1", "cost_usd": "10"} in sections["cost_by_project"]


def test_format_chooses_the_output_and_json_is_its_shorthand(tmp_path: Path) -> None:
    db = good_db(tmp_path / "runs.db")
    assert run(str(db), "--json") == run(str(db), "--format", "json")
    assert run(str(db), "--format", "text") == run(str(db))
    code, _, err = run(str(db), "--format", "xml")
    assert code == 2
    assert "invalid choice: 'xml'" in err
    code, _, err = run(str(db), "--json", "--format", "csv")
    assert code == 2
    assert "not allowed with argument" in err


def test_an_output_stream_that_cannot_encode_gets_escapes_not_a_traceback(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_bytes(usage_line(role="café ☕") + b"\n")
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="ascii")
    with contextlib.redirect_stdout(stream):
        assert main([str(path)]) == 0
    stream.flush()
    assert "caf\\xe9 \\u2615" in raw.getvalue().decode("ascii")


def test_no_traceback_at_the_process_level(tmp_path: Path) -> None:
    path = good_jsonl(tmp_path / "runs.jsonl")
    with open(path, "ab") as handle:
        for param in JSONL_CASES:
            line = param.values[0]
            assert isinstance(line, bytes)
            handle.write(line + b"\n")
        handle.write(usage_line(role="café") + b"\n")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    command = [sys.executable, "-m", "techrevati.runtime", "report", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "caf\\xe9" in done.stdout
    assert f"Skipped rows (malformed: {len(JSONL_CASES)})" in done.stdout
    done = subprocess.run([*command, "--strict"], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"report: {path}:4: project_id must be a string, an integer or null, got an array\n"
    )


# Fuzzing: whatever the lines or rows, the command exits 0 or 2, never raises, and
# prints at most a bounded multiple of the file's size.
def bounded(path: Path) -> None:
    size = path.stat().st_size
    for argv in ([], ["--json"], ["--format", "csv"], ["--strict"]):
        code, out, err = run(str(path), *argv)
        assert code in (0, 2)
        assert len(out) + len(err) <= 40 * size + 10_000
        if code == 2:
            assert out == ""
            assert err.count("\n") == 1


NASTY_TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "\x1b[2J", "\x9b", "\x7f", "=1", "-1", "\u202e", "\ud800", "é" * 3]),
)
SQL_TEXT = NASTY_TEXT.filter(lambda text: not re.search("[\ud800-\udfff]", text))
NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.sampled_from([0, 1, -1, 2**63, 2**63 - 1, 1e308, 1e10]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | NASTY_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(NASTY_TEXT, inner, max_size=3),
    max_leaves=8,
)
SQL_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False),
    SQL_TEXT,
    st.binary(max_size=10),
)
# Plausible values: mostly what a sink writes, sometimes just wrong.
TIMES = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(lambda when: when.isoformat()),
    st.sampled_from(
        [TS, "2026-01-05", "0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00", "x"]
    ),
)
COSTS = st.one_of(
    st.decimals(min_value=0, max_value=10**6, places=6).map(str),
    st.sampled_from(["0", "0.25", "1e999999", "1e-999999", "abc", "NaN", "-0", "1e15", "0E+99"]),
)
COUNTS = st.one_of(st.integers(min_value=0, max_value=10**9), st.sampled_from([-1, 2**63]))
SQL_COUNTS = st.one_of(st.integers(min_value=0, max_value=10**9), st.just(-1))
SECONDS = st.one_of(st.floats(min_value=0, max_value=1e6), st.sampled_from([1e300, -1.0]))
PROJECTS = st.one_of(SQL_TEXT, st.integers(min_value=-5, max_value=5), st.none())
NAMES = st.sampled_from(
    ["turn.completed", "turn.failed", "session.started", "session.completed", "session.failed"]
)
FAILURES = st.sampled_from([None, "rate_limit", "tool_error", "gremlins"])
STATUSES = st.sampled_from(["running", "completed", "failed", "cancelled", "exploded"])
SESSION_IDS = st.one_of(st.sampled_from(["s1", "s2", "s3"]), SQL_TEXT)
TOKEN_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens")


def maybe_broken(
    required: dict[str, st.SearchStrategy[object]],
    optional: dict[str, st.SearchStrategy[object]],
    wrong: st.SearchStrategy[object],
) -> st.SearchStrategy[dict[str, object]]:
    """A plausible row, and half the time one of its fields replaced by a ``wrong`` value."""
    fields = sorted({*required, *optional})

    @st.composite
    def rows(draw: st.DrawFn) -> dict[str, object]:
        row: dict[str, object] = draw(st.fixed_dictionaries(required, optional=optional))
        if draw(st.booleans()):
            row[draw(st.sampled_from(fields))] = draw(wrong)
        return row

    return rows()


SESSION_DATA = st.fixed_dictionaries(
    {}, optional={"duration_seconds": SECONDS, "cost_usd": COSTS, "turns": COUNTS}
)
COMMON = {
    "role": NASTY_TEXT,
    "phase": NASTY_TEXT,
    "project_id": PROJECTS,
    "session_id": SESSION_IDS,
    "worker_id": NASTY_TEXT,
}
RECORDS = st.one_of(
    maybe_broken(
        {"kind": st.just("event"), "name": NAMES, "timestamp": TIMES},
        {**COMMON, "failure_class": FAILURES, "detail": NASTY_TEXT, "data": SESSION_DATA},
        JSON_VALUES,
    ),
    maybe_broken(
        {"kind": st.just("usage"), "model": NASTY_TEXT, "timestamp": TIMES},
        {
            **COMMON,
            **dict.fromkeys(TOKEN_FIELDS, COUNTS),
            "cost_usd": COSTS,
            "priced": st.booleans(),
            "duration_seconds": SECONDS,
        },
        JSON_VALUES,
    ),
)
LINES = st.one_of(
    RECORDS.map(lambda obj: json.dumps(obj).encode()),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=40).map(lambda data: data.replace(b"\n", b" ")),
    st.sampled_from([DEEP, b"{" * 5000, b'{"kind":"usage","cost_usd":1e999999}', b"", b"  "]),
)


@settings(max_examples=examples(40))
@given(st.booleans(), st.lists(LINES, max_size=8), st.booleans())
def test_fuzz_jsonl_lines_exit_0_or_2_with_bounded_output(
    start_good: bool, lines: list[bytes], torn: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.jsonl"
        head = [usage_line(cost_usd="0.5")] if start_good else []
        body = b"\n".join([*head, *lines])
        path.write_bytes(body if torn else body + b"\n")
        bounded(path)


SQL_COMMON = {
    "role": SQL_TEXT,
    "phase": SQL_TEXT,
    "project_id": PROJECTS,
    "worker_id": SQL_TEXT,
}
ROWS = {
    "events": maybe_broken(
        {"ts": TIMES, "name": NAMES, "session_id": SESSION_IDS},
        {
            **SQL_COMMON,
            "failure_class": FAILURES,
            "status": SQL_TEXT,
            "detail": SQL_TEXT,
            "data": st.one_of(
                SESSION_DATA.map(json.dumps),
                st.sampled_from(["[1]", "", "{", "[" * 5000]),
                JSON_VALUES.map(json.dumps),
            ),
        },
        SQL_VALUES,
    ),
    "usage": maybe_broken(
        {"ts": TIMES, "model": SQL_TEXT, "session_id": SESSION_IDS},
        {
            **SQL_COMMON,
            **dict.fromkeys(TOKEN_FIELDS, SQL_COUNTS),
            "cost_usd": COSTS,
            "priced": st.sampled_from([0, 1]),
            "duration_seconds": SECONDS,
        },
        SQL_VALUES,
    ),
    "sessions": maybe_broken(
        {"session_id": SESSION_IDS, "status": STATUSES},
        {
            **SQL_COMMON,
            "started_at": TIMES,
            "ended_at": TIMES,
            "duration_seconds": SECONDS,
            "cost_usd": COSTS,
            "turns": SQL_COUNTS,
            "failure_class": FAILURES,
            "error_type": SQL_TEXT,
        },
        SQL_VALUES,
    ),
}
SQL_ROWS = st.sampled_from(sorted(ROWS)).flatmap(
    lambda table: ROWS[table].map(lambda row: (table, row))
)


@settings(max_examples=examples(30))
@given(st.lists(SQL_ROWS, max_size=8))
def test_fuzz_sqlite_rows_exit_0_or_2_with_bounded_output(
    rows: list[tuple[str, dict[str, object]]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = good_db(Path(tmp) / "fuzz.db")
        for table, row in rows:
            with contextlib.suppress(sqlite3.IntegrityError):  # NOT NULL, a duplicate session
                insert(db, table, row)
        bounded(db)


def test_a_schema_3_database_reports_its_turns_under_the_default_tier(tmp_path: Path) -> None:
    db = tmp_path / "v3.db"
    with SqliteSink(db) as sink:
        fill(sink)
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:  # a schema-3 log: no tier column
        conn.executescript("DROP VIEW turns; DROP VIEW session_summary")
        conn.execute("ALTER TABLE usage DROP COLUMN service_tier")
        conn.execute("PRAGMA user_version = 3")
    report = build_report(db)
    assert report.turns == 5
    assert [(line.key, line.turns) for line in report.cost_by_tier] == [("default", 5)]
    assert report.cost_usd == Decimal("0.3471")
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (3,)  # read, not migrated
