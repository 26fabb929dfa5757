from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import AgentEvent, AgentFailureClass, UsageRecord
from techrevati.runtime.report import Report, build_report, main
from techrevati.runtime.sinks import JsonlSink, SqliteSink

DAY1 = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
DAY3 = DAY1 + timedelta(days=2)
F = AgentFailureClass


def ev(
    name: str,
    sid: str,
    at: datetime,
    *,
    role: str,
    project: str | int,
    failure: AgentFailureClass | None = None,
    **data: object,
) -> AgentEvent:
    return AgentEvent(
        name=name,
        role=role,
        phase="draft",
        failure_class=failure,
        data=data,
        timestamp=at,
        session_id=sid,
        worker_id=f"w-{sid}",
        project_id=project,
    )


def use(
    sid: str,
    at: datetime,
    *,
    role: str,
    project: str | int,
    model: str,
    cost: str,
    inp: int,
    out: int,
    priced: bool = True,
    tier: str | None = None,
    **tokens: int,
) -> UsageRecord:
    return UsageRecord(
        model=model,
        input_tokens=inp,
        output_tokens=out,
        cost_usd=Decimal(cost),
        priced=priced,
        duration_seconds=1.0,
        role=role,
        phase="draft",
        session_id=sid,
        worker_id=f"w-{sid}",
        project_id=project,
        timestamp=at,
        service_tier=tier,
        **tokens,
    )


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


# Three sessions over three days: the figures below are worked out by hand.
EVENTS = [
    ev("session.started", "s1", DAY1, role="writer", project=42),
    ev("turn.completed", "s1", DAY1 + s(1), role="writer", project=42, model="model-a"),
    ev("turn.completed", "s1", DAY1 + s(2), role="writer", project=42, model="model-a"),
    ev(
        "session.completed",
        "s1",
        DAY1 + s(12.5),
        role="writer",
        project=42,
        duration_seconds=12.5,
        cost_usd="0.0450",
        turns=2,
    ),
    ev("session.started", "s2", DAY2, role="reviewer", project=42),
    ev("turn.failed", "s2", DAY2 + s(1), role="reviewer", project=42, failure=F.RATE_LIMIT),
    ev("turn.completed", "s2", DAY2 + s(2), role="reviewer", project=42, model="model-b"),
    ev(
        "tool.denied",
        "s2",
        DAY2 + s(2.5),
        role="reviewer",
        project=42,
        failure=F.PERMISSION_DENIED,
        tool="rm",
    ),
    ev(
        "session.failed",
        "s2",
        DAY2 + s(3.25),
        role="reviewer",
        project=42,
        failure=F.RATE_LIMIT,
        duration_seconds=3.25,
        cost_usd="0.0021",
        turns=1,
        error_type="RateLimitError",
    ),
    ev("session.started", "s3", DAY3, role="writer", project="acme"),
    ev("turn.retried", "s3", DAY3 + s(1), role="writer", project="acme", failure=F.RATE_LIMIT),
    ev("turn.completed", "s3", DAY3 + s(5), role="writer", project="acme", model="model-a"),
    ev("turn.completed", "s3", DAY3 + s(6), role="writer", project="acme", model="model-x"),
    ev("tool.failed", "s3", DAY3 + s(7), role="writer", project="acme", failure=F.TOOL_ERROR),
    ev("tool.completed", "s3", DAY3 + s(8), role="writer", project="acme", tool="search"),
    ev(
        "session.completed",
        "s3",
        DAY3 + s(40),
        role="writer",
        project="acme",
        duration_seconds=40.0,
        cost_usd="0.30",
        turns=2,
    ),
]
USAGE = [
    use(
        "s1",
        DAY1 + s(1),
        role="writer",
        project=42,
        model="model-a",
        cost="0.0300",
        inp=1000,
        out=200,
        cache_read_tokens=100,
        reasoning_tokens=50,
        tier="flex",
    ),
    use(
        "s1",
        DAY1 + s(2),
        role="writer",
        project=42,
        model="model-a",
        cost="0.0150",
        inp=500,
        out=100,
    ),
    use(
        "s2",
        DAY2 + s(2),
        role="reviewer",
        project=42,
        model="model-b",
        cost="0.0021",
        inp=2000,
        out=0,
        cache_write_tokens=300,
        cache_write_1h_tokens=120,
    ),
    use(
        "s3",
        DAY3 + s(5),
        role="writer",
        project="acme",
        model="model-a",
        cost="0.30",
        inp=10000,
        out=3000,
        tier="batch",
    ),
    use(
        "s3",
        DAY3 + s(6),
        role="writer",
        project="acme",
        model="model-x",
        cost="0",
        inp=400,
        out=50,
        priced=False,
    ),
]

EXPECTED_TEXT = """\
Report for {path} (sqlite), all time

sessions 3  turns 5 (1 unpriced)  events 16  cost_usd 0.3471

Cost by project
project  turns  cost_usd
-------  -----  --------
acme         2      0.30
42           3    0.0471

Cost by role
role      turns  cost_usd
--------  -----  --------
writer        4    0.3450
reviewer      1    0.0021

Cost by model
model    turns  cost_usd
-------  -----  --------
model-a      3    0.3450
model-b      1    0.0021
model-x      1         0

Cost by service tier
service_tier  turns  cost_usd
------------  -----  --------
batch             1      0.30
flex              1    0.0300
default           3    0.0171

Cost by day (UTC)
day         turns  cost_usd
----------  -----  --------
2026-01-01      2    0.0450
2026-01-02      1    0.0021
2026-01-03      2      0.30

Tokens by kind
kind                   tokens
---------------------  ------
input_tokens            13900
output_tokens            3350
cache_read_tokens         100
cache_write_tokens        300
cache_write_1h_tokens     120
reasoning_tokens           50
total_tokens            17250

Failures by class
failure_class      turns  tools  sessions  other
-----------------  -----  -----  --------  -----
rate_limit             1      0         1      0
permission_denied      0      1         0      0
tool_error             0      1         0      0

Slowest sessions (top 5)
session_id  status     role      project  duration_s  cost_usd  turns
----------  ---------  --------  -------  ----------  --------  -----
s3          completed  writer    acme         40.000      0.30      2
s1          completed  writer    42           12.500    0.0450      2
s2          failed     reviewer  42            3.250    0.0021      1

Most expensive sessions (top 5)
session_id  status     role      project  duration_s  cost_usd  turns
----------  ---------  --------  -------  ----------  --------  -----
s3          completed  writer    acme         40.000      0.30      2
s1          completed  writer    42           12.500    0.0450      2
s2          failed     reviewer  42            3.250    0.0021      1
"""


def fill(sink: SqliteSink | JsonlSink) -> None:
    for event in EVENTS:
        sink.write_event(event)
    for record in USAGE:
        sink.write_usage(record)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "runs.db"
    with SqliteSink(path) as sink:
        fill(sink)
    return path


@pytest.fixture
def jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "runs.jsonl"
    with JsonlSink(path) as sink:
        fill(sink)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_report_prints_aligned_tables_with_exact_figures(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, str(db))
    assert (code, err) == (0, "")
    assert out == EXPECTED_TEXT.format(path=db)


def test_report_json_is_one_object_with_costs_as_decimal_strings(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, str(db), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["format"] == "sqlite"
    assert report["totals"] == {
        "sessions": 3,
        "turns": 5,
        "unpriced_turns": 1,
        "events": 16,
        "cost_usd": "0.3471",
    }
    assert report["cost_by_project"] == [
        {"project_id": "acme", "turns": 2, "cost_usd": "0.30"},
        {"project_id": 42, "turns": 3, "cost_usd": "0.0471"},
    ]
    assert [(r["model"], r["cost_usd"]) for r in report["cost_by_model"]] == [
        ("model-a", "0.3450"),
        ("model-b", "0.0021"),
        ("model-x", "0"),
    ]
    assert [r["day"] for r in report["cost_by_day"]] == ["2026-01-01", "2026-01-02", "2026-01-03"]
    # The tier that served each turn; "default" holds the turns that reported none.
    assert report["cost_by_tier"] == [
        {"service_tier": "batch", "turns": 1, "cost_usd": "0.30"},
        {"service_tier": "flex", "turns": 1, "cost_usd": "0.0300"},
        {"service_tier": "default", "turns": 3, "cost_usd": "0.0171"},
    ]
    assert report["tokens"] == {
        "input_tokens": 13900,
        "output_tokens": 3350,
        "cache_read_tokens": 100,
        "cache_write_tokens": 300,
        "cache_write_1h_tokens": 120,
        "reasoning_tokens": 50,
        "total_tokens": 17250,
    }
    assert report["failures"][0] == {
        "failure_class": "rate_limit",
        "turns": 1,
        "tools": 0,
        "sessions": 1,
        "other": 0,
    }
    assert [r["session_id"] for r in report["slowest_sessions"]] == ["s3", "s1", "s2"]
    top = report["most_expensive_sessions"][0]
    assert (top["session_id"], top["cost_usd"], top["started_at"]) == (
        "s3",
        "0.30",
        "2026-01-03T09:00:00.000000+00:00",
    )
    assert report["slowest_sessions"][2]["error_type"] == "RateLimitError"


def test_report_reads_jsonl_to_the_same_figures(
    db: Path, jsonl: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, from_db, _ = run(capsys, str(db), "--json")
    code, from_jsonl, _ = run(capsys, str(jsonl), "--json")
    assert code == 0
    a, b = json.loads(from_db), json.loads(from_jsonl)
    assert (a.pop("source"), a.pop("format")) == (str(db), "sqlite")
    assert (b.pop("source"), b.pop("format")) == (str(jsonl), "jsonl")
    assert a == b


@pytest.mark.parametrize("source", ["db", "jsonl"])
def test_since_keeps_only_records_from_that_date_on(
    source: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    path: Path = request.getfixturevalue(source)
    code, out, _ = run(capsys, str(path), "--json", "--since", "2026-01-02")
    assert code == 0
    report = json.loads(out)
    assert report["since"] == "2026-01-02T00:00:00+00:00"
    assert report["totals"] == {
        "sessions": 2,
        "turns": 3,
        "unpriced_turns": 1,
        "events": 12,
        "cost_usd": "0.3021",
    }
    assert [r["session_id"] for r in report["slowest_sessions"]] == ["s3", "s2"]


def test_since_and_until_take_datetimes_naive_meaning_utc(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(
        capsys, str(db), "--json", "--since", "2026-01-03T09:00:05", "--until", "2026-01-03T10:00Z"
    )
    assert code == 0
    report = json.loads(out)
    assert report["totals"]["turns"] == 2
    assert report["totals"]["cost_usd"] == "0.30"
    assert report["totals"]["sessions"] == 0  # s3 started before 09:00:05
    assert report["until"] == "2026-01-03T10:00:00+00:00"
    _, text, _ = run(capsys, str(db), "--since", "2026-01-03T09:00:05")
    assert "since 2026-01-03T09:00:05+00:00" in text.splitlines()[0]


def test_top_limits_the_session_tables(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, str(db), "--top", "1")
    assert code == 0
    assert "Slowest sessions (top 1)" in out
    slowest = out.split("Slowest sessions (top 1)\n")[1].split("\n\n")[0].splitlines()
    assert len(slowest) == 3
    assert slowest[2].startswith("s3 ")


def test_an_empty_jsonl_file_reports_zeros_and_empty_tables(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    code, out, _ = run(capsys, str(path))
    assert code == 0
    assert "sessions 0  turns 0  events 0  cost_usd 0" in out
    assert out.count("(none)") == 8  # every table but the tokens one


def one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.startswith("report: ")
    assert err.count("\n") == 1
    return err


def test_a_missing_file_is_one_line_on_stderr_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.db"
    assert one_line_error(capsys, str(missing)) == f"report: no such file: {missing}\n"


def test_a_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "is not a file" in one_line_error(capsys, str(tmp_path))


def test_a_file_that_is_neither_database_nor_jsonl_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    assert "neither a SQLite database nor a JSONL sink file" in one_line_error(capsys, str(png))
    other = tmp_path / "other.jsonl"
    other.write_text('{"hello": 1}\n')
    err = one_line_error(capsys, str(other))
    assert "neither a SQLite database nor a JSONL sink file" in err
    assert "other.jsonl:1:" in err


def test_a_sqlite_file_without_our_schema_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = tmp_path / "shop.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    assert "no techrevati sink schema" in one_line_error(capsys, str(foreign))
    future = tmp_path / "future.db"
    with sqlite3.connect(future) as conn:
        conn.execute("CREATE TABLE t (id INTEGER)")
        conn.execute("PRAGMA user_version = 9")
    assert "schema version 9" in one_line_error(capsys, str(future))


def test_a_corrupt_sqlite_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)
    assert one_line_error(capsys, str(broken)).startswith("report: ")


def test_bad_arguments_exit_2_and_help_exits_0(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, str(db), "--since", "last tuesday")
    assert code == 2
    assert "expected an ISO date or datetime such as 2026-01-01, got 'last tuesday'" in err
    code, _, err = run(capsys)
    assert code == 2
    assert "the following arguments are required: path" in err
    code, out, _ = run(capsys, "--help")
    assert code == 0
    assert "python -m techrevati.runtime report" in out


def test_build_report_returns_the_figures_and_checks_its_arguments(db: Path) -> None:
    report = build_report(db, since=DAY2)
    assert isinstance(report, Report)
    assert report.cost_usd == Decimal("0.3021")
    assert [line.key for line in report.cost_by_project] == ["acme", 42]
    assert report.failures[0].total == 2
    with pytest.raises(InvalidValueError, match="since must be an aware datetime"):
        build_report(db, since=datetime(2026, 1, 1))
    with pytest.raises(InvalidValueError, match="top must be an int >= 1, got 0"):
        build_report(db, top=0)


def test_report_shows_the_audit_chains_status(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from techrevati.runtime.audit import AuditLog

    audit = tmp_path / "audit.db"
    with AuditLog(audit) as log:
        for n in range(5):
            log.append("note", {"n": n})
    code, out, _err = run(capsys, str(db), "--audit", str(audit))
    assert code == 0
    assert f"audit chain ({audit}): ok" in out
    code, out, _err = run(capsys, str(db), "--json", "--audit", str(audit))
    chain = json.loads(out)["audit"]
    assert (code, chain["ok"], chain["records"], chain["tip_seq"]) == (0, True, 5, 5)

    with sqlite3.connect(audit) as conn:  # edit a record after the fact
        conn.execute("UPDATE audit_log SET record = replace(record, '\"n\":2', '\"n\":9')")
    code, out, err = run(capsys, str(db), "--audit", str(audit))
    assert code == 2
    assert "broken at seq 3" in out
    assert "the audit chain is broken" in err
    assert one_line_error(capsys, str(db), "--audit", str(tmp_path / "none.db")).startswith(
        "report: no such file"
    )
