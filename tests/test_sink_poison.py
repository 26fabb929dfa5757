"""Poison records: a record a sink cannot store as given is sanitised or quarantined, never fatal.

Each durable sink is fed every kind of bad record mixed into good ones; every
good record must reach the file, and every bad one be stored sanitised or
quarantined with its reason, counted and logged, on the caller's thread.
"""

from __future__ import annotations

import json
import logging
import random
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest

from techrevati.runtime import Orchestrator
from techrevati.runtime._record_text import CYCLE, DEPTH_LIMIT, MAX_DEPTH, sanitised
from techrevati.runtime.events import AgentEvent, UsageRecord
from techrevati.runtime.jsonl import JsonlSink, read_jsonl
from techrevati.runtime.sinks import SinkFanout
from techrevati.runtime.sqlite import SqliteReader, SqliteSink
from tests.sink_records import T0, event, usage

SURROGATE = json.loads('{"n":"shell\\ud800exec"}')["n"]  # what a JSON body can smuggle in
ESCAPED = "shell\\ud800exec"  # how it is stored: the escape as text


def cyclic() -> list[object]:
    loop: list[object] = [1]
    loop.append(loop)
    return loop


def nested(depth: int) -> dict[str, object]:
    root: dict[str, object] = {}
    node = root
    for _ in range(depth):
        child: dict[str, object] = {}
        node["a"] = child
        node = child
    return root


@dataclass(frozen=True)
class Poison:
    """A bad record, and what each sink does with it: ``sanitised``, ``rejected`` or ``stored``."""

    label: str
    record: AgentEvent | UsageRecord
    jsonl: str
    sqlite: str


def poisons(i: int) -> list[Poison]:
    at = T0 + timedelta(seconds=i)
    return [
        Poison(
            "surrogate tool name",
            AgentEvent(name="tool.completed", data={"tool": SURROGATE, "p": i}, timestamp=at),
            "sanitised",
            "sanitised",
        ),
        Poison(
            "surrogate event name",
            AgentEvent(name=SURROGATE, data={"p": i}, timestamp=at),
            "sanitised",
            "sanitised",
        ),
        Poison(
            "cycle",
            AgentEvent(name="p", data={"c": cyclic(), "p": i}, timestamp=at),
            *["sanitised"] * 2,
        ),
        Poison(
            "tuple key",
            AgentEvent(
                name="p", data=cast("dict[str, object]", {(1, 2): "t", "p": i}), timestamp=at
            ),
            *["sanitised"] * 2,
        ),
        Poison(
            "100k deep",
            AgentEvent(name="p", data={"d": nested(100_000), "p": i}, timestamp=at),
            *["sanitised"] * 2,
        ),
        Poison(
            "project 2**70",
            AgentEvent(name="p", project_id=2**70, data={"p": i}, timestamp=at),
            "stored",  # JSON holds any int exactly
            "sanitised",  # SQLite's integers are 64 bits: stored as its decimal text
        ),
        Poison(
            "tokens 2**63",
            UsageRecord(model="m", input_tokens=2**63, session_id=f"p{i}", timestamp=at),
            "stored",
            "rejected",  # no column can hold it: quarantined whole
        ),
    ]


def mixed(seed: int, good: int = 1000) -> tuple[list[AgentEvent | UsageRecord], list[Poison]]:
    """``good`` good records (events and usage alternating) with every poison inserted at random."""
    rng = random.Random(seed)
    records: list[AgentEvent | UsageRecord] = [
        event(i=n // 2) if n % 2 == 0 else usage(n // 2) for n in range(good)
    ]
    bad = poisons(0) + poisons(1)
    for poison in bad:
        records.insert(rng.randrange(len(records) + 1), poison.record)
    return records, bad


def write(sink: JsonlSink | SqliteSink, records: list[AgentEvent | UsageRecord]) -> None:
    for record in records:
        if isinstance(record, AgentEvent):
            sink.write_event(record)
        else:
            sink.write_usage(record)


def is_good(record: object) -> bool:
    if isinstance(record, AgentEvent):
        return record.name == "turn.completed"
    return isinstance(record, UsageRecord) and record.input_tokens < 2**62


def expected(bad: list[Poison], kind: str, outcome: str) -> int:
    return sum(1 for poison in bad if getattr(poison, kind) == outcome)


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="techrevati.runtime.sinks"):
        yield caplog


def logged(caplog: pytest.LogCaptureFixture, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


@pytest.mark.parametrize("background", [True, False])
def test_jsonl_keeps_every_good_record_around_each_poison_and_counts_each(
    tmp_path: Path, log: pytest.LogCaptureFixture, background: bool
) -> None:
    seed = 1201
    print(f"seed={seed}")
    records, bad = mixed(seed)
    path = tmp_path / "poison.jsonl"
    sink = JsonlSink(path, flush_every=50, background=background)
    write(sink, records)
    sink.close()  # never raises: no batch holds an unwritable record
    assert (sink.sanitised, sink.rejected) == (expected(bad, "jsonl", "sanitised"), 0)
    assert sink.written == len(records)
    back = read_jsonl(path)
    assert [r for r in back if is_good(r)] == [r for r in records if is_good(r)]
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert len(lines) == len(records)  # one line each, every line valid UTF-8 JSON
    names = [r.name for r in back if isinstance(r, AgentEvent)]
    assert names.count(ESCAPED) == 2
    tools = [r.data["tool"] for r in back if isinstance(r, AgentEvent) and "tool" in r.data]
    assert tools == [ESCAPED, ESCAPED]
    cycles = [r.data["c"] for r in back if isinstance(r, AgentEvent) and "c" in r.data]
    assert cycles == [[1, CYCLE], [1, CYCLE]]
    keys = [r.data["(1, 2)"] for r in back if isinstance(r, AgentEvent) and "(1, 2)" in r.data]
    assert keys == ["t", "t"]
    deep = [r.data["d"] for r in back if isinstance(r, AgentEvent) and "d" in r.data]
    # the line's object is level 0, data 1, data["d"] 2: the rest is cut at MAX_DEPTH
    assert [depth_of(d) for d in deep] == [MAX_DEPTH - 2, MAX_DEPTH - 2]
    projects = [r.project_id for r in back if isinstance(r, AgentEvent) and r.name == "p"]
    assert 2**70 in projects  # an exact int: JSON has no 64-bit limit
    assert [r.input_tokens for r in back if isinstance(r, UsageRecord)].count(2**63) == 2
    (first,) = logged(log, "sink.record_sanitised")  # the first; then every thousandth
    assert (first.sink, first.path, first.sanitised, first.rejected) == (  # type: ignore[attr-defined]
        "JsonlSink",
        str(path),
        1,
        0,
    )
    assert first.reason in {  # type: ignore[attr-defined]
        "lone surrogate escaped",
        "cycle replaced",
        "non-str key as text",
        "nesting cut at the depth limit",
    }


def depth_of(value: object) -> int:
    depth = 0
    while isinstance(value, dict) and "a" in value:
        value, depth = value["a"], depth + 1
    assert value == DEPTH_LIMIT
    return depth


@pytest.mark.parametrize("background", [True, False])
def test_sqlite_keeps_every_good_record_around_each_poison_and_counts_each(
    tmp_path: Path, log: pytest.LogCaptureFixture, background: bool
) -> None:
    seed = 1202
    print(f"seed={seed}")
    records, bad = mixed(seed)
    path = tmp_path / "poison.db"
    sink = SqliteSink(path, flush_every=50, background=background)
    write(sink, records)
    sink.close()
    assert (sink.sanitised, sink.rejected) == (
        expected(bad, "sqlite", "sanitised"),
        expected(bad, "sqlite", "rejected"),
    )
    assert sink.written == len(records)
    with SqliteReader(path) as reader:
        back = [*reader.read_events(), *reader.read_usage()]
    good = [r for r in records if is_good(r)]
    assert [r for r in back if is_good(r) and isinstance(r, AgentEvent)] == [
        r for r in good if isinstance(r, AgentEvent)
    ]
    assert [r for r in back if is_good(r) and isinstance(r, UsageRecord)] == [
        r for r in good if isinstance(r, UsageRecord)
    ]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        names = [row[0] for row in conn.execute("SELECT name FROM events WHERE name != 'p'")]
        assert names.count(ESCAPED) == 2
        tools = conn.execute(
            "SELECT data ->> '$.tool' FROM events WHERE name = 'tool.completed'"
        ).fetchall()
        assert tools == [(ESCAPED,), (ESCAPED,)]
        projects = conn.execute(
            "SELECT project_id, typeof(project_id) FROM events WHERE name = 'p' AND "
            "typeof(project_id) = 'text'"
        ).fetchall()
        assert projects == [(str(2**70), "text")] * 2  # the exact value, as text
        rejected = conn.execute("SELECT kind, reason, record FROM rejected ORDER BY id").fetchall()
    assert [(kind, reason) for kind, reason, _ in rejected] == [
        ("usage", "OverflowError: 9223372036854775808 does not fit SQLite's 64-bit integers")
    ] * 2
    kept = [json.loads(text) for _, _, text in rejected]
    assert sorted((r["input_tokens"], r["session_id"]) for r in kept) == [
        (2**63, "p0"),
        (2**63, "p1"),
    ]
    (first,) = logged(log, "sink.record_rejected")
    assert first.levelno == logging.ERROR
    assert first.getMessage() == (
        f"sink.record_rejected: {path} rejected usage (OverflowError: 9223372036854775808 "
        "does not fit SQLite's 64-bit integers); 1 so far"
    )
    assert len(logged(log, "sink.record_sanitised")) == 1


class Exploding(Mapping[str, object]):
    """Data that cannot even be read: every access raises."""

    def __getitem__(self, key: str) -> object:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return "Exploding()"


def test_a_record_that_cannot_be_sanitised_is_quarantined_with_its_reason_in_jsonl(
    tmp_path: Path, log: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "q.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(event(i=1))
        sink.write_event(AgentEvent(name="odd", data=Exploding(), timestamp=T0))
        sink.write_event(event(i=2))
    assert (sink.sanitised, sink.rejected, sink.written) == (0, 1, 3)
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [1, 2]
    quarantined = json.loads(path.read_bytes().splitlines()[1])
    assert quarantined == {
        "kind": "rejected",
        "reason": "RuntimeError: boom",
        "record_type": "AgentEvent",
        "timestamp": "2026-01-01T12:00:00.000000+00:00",
        "record": quarantined["record"],
    }
    assert quarantined["record"].startswith("AgentEvent(name='odd'")
    assert "data=Exploding()" in quarantined["record"]
    (record,) = logged(log, "sink.record_rejected")
    assert (record.record, record.reason) == ("odd", "RuntimeError: boom")  # type: ignore[attr-defined]
    JsonlSink(path).close()  # a file ending in a quarantine line is still ours


def test_a_record_that_cannot_be_sanitised_is_quarantined_in_the_rejected_table(
    tmp_path: Path,
) -> None:
    path = tmp_path / "q.db"
    with SqliteSink(path, background=False, flush_every=1) as sink:
        sink.write_event(AgentEvent(name="odd", data=Exploding(), timestamp=T0))
        sink.write_event(event(i=1))
        assert [e.name for e in sink.read_events()] == ["turn.completed"]
    with sqlite3.connect(path) as conn:
        ((ts, kind, reason),) = conn.execute("SELECT ts, kind, reason FROM rejected").fetchall()
    assert (ts, kind, reason) == ("2026-01-01T12:00:00.000000+00:00", "event", "RuntimeError: boom")


def test_a_session_end_whose_figures_overflow_keeps_its_event_and_row(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    end = AgentEvent(
        name="session.completed",
        session_id="s1",
        data={"turns": 2**70, "duration_seconds": 10**400, "cost_usd": "0.5"},
        timestamp=T0,
    )
    with SqliteSink(path) as sink:
        sink.write_event(end)
        (row,) = sink.read_sessions()
        (stored,) = sink.read_events()
    assert sink.sanitised == 1
    assert (row.turns, row.duration_seconds, str(row.cost_usd)) == (None, None, "0.5")
    assert stored.data["turns"] == str(2**70)


def test_an_int_too_long_for_decimal_text_is_stored_as_hex(tmp_path: Path) -> None:
    path = tmp_path / "long.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(AgentEvent(name="x", data={"n": 10**5000}, timestamp=T0))
    ((record,),) = [read_jsonl(path)]
    assert isinstance(record, AgentEvent)
    assert record.data["n"] == hex(10**5000)
    assert sink.sanitised == 1


def test_sanitising_leaves_shared_values_alone_and_cuts_only_true_cycles() -> None:
    shared = [1, 2]
    notes: set[str] = set()
    assert sanitised({"a": shared, "b": shared}, notes) == {"a": [1, 2], "b": [1, 2]}
    assert notes == set()
    value = sanitised({None: 1, True: 2, 1.5: 3, 7: 4}, notes)
    assert value == {"null": 1, "true": 2, "1.5": 3, "7": 4}  # as JSON writes such keys
    assert notes == set()


class Unprintable:
    def __str__(self) -> str:
        raise ValueError("no")


def test_a_value_whose_str_raises_is_stored_as_a_marker(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(AgentEvent(name="x", data={"u": Unprintable()}, timestamp=T0))
    (record,) = read_jsonl(path)
    assert isinstance(record, AgentEvent)
    assert record.data == {"u": "<unprintable Unprintable>"}


SinkMaker = Callable[[Path], JsonlSink | SqliteSink]


@pytest.mark.parametrize(
    "make",
    [lambda d: JsonlSink(d / "o.jsonl"), lambda d: SqliteSink(d / "o.db")],
    ids=["jsonl", "sqlite"],
)
def test_the_session_summary_counts_the_records_a_sink_sanitised_or_rejected(
    tmp_path: Path, make: SinkMaker
) -> None:
    sink = make(tmp_path)
    orch = Orchestrator("writer", "draft", sinks=[sink])
    with orch.session() as session:
        session.run_turn(lambda: "ok", model="m")
        orch.sinks.write_event(AgentEvent(name="tool.completed", data={"tool": SURROGATE}))
        orch.sinks.write_usage(UsageRecord(model="m", input_tokens=2**63))
    expected_failures = 1 if isinstance(sink, JsonlSink) else 2
    assert session.summary()["sink_failures"] == expected_failures
    fanout: SinkFanout = orch.sinks
    assert (fanout.sanitised, fanout.rejected) == (1, expected_failures - 1)
    assert fanout.failures == {type(sink).__name__: expected_failures}
    sink.close()


def test_sanitised_records_are_logged_at_the_first_and_every_thousandth(
    tmp_path: Path, log: pytest.LogCaptureFixture
) -> None:
    with JsonlSink(tmp_path / "many.jsonl", flush_every=500) as sink:
        for i in range(2001):
            sink.write_event(AgentEvent(name="x", data={"tool": SURROGATE, "i": i}, timestamp=T0))
    counts = [r.sanitised for r in logged(log, "sink.record_sanitised")]  # type: ignore[attr-defined]
    assert counts == [1, 1000, 2000]
    assert sink.sanitised == 2001
