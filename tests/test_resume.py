"""Orchestrator.resume: a session's accounting rebuilt from its SQLite or JSONL log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from techrevati.runtime import (
    AgentStatus,
    BaseHook,
    Budget,
    BudgetExceededError,
    GuardrailViolatedError,
    InvalidValueError,
    MaxIterationsExceededError,
    ModelCall,
    Orchestrator,
    RetriesExhaustedError,
    RetryPolicy,
    SessionStateError,
    TurnTimeoutError,
    UsageSnapshot,
)
from techrevati.runtime.errors import CorruptRecordError, SchemaError
from techrevati.runtime.events import AgentEvent, UsageRecord
from techrevati.runtime.orchestrator import Session
from techrevati.runtime.sinks import JsonlSink, SqliteReader, SqliteSink, read_jsonl
from tests.conftest import FakeClock, price_model

CHILD_TIMEOUT = 20.0
Sink = SqliteSink | JsonlSink
BIG = UsageSnapshot(10_000, 2_000, 4_000, 1_000)  # with cache reads and writes
BIG_COST = Decimal("0.04995")  # (5000*3 + 2000*15 + 4000*0.3 + 1000*3.75) / 1e6


class RateLimited(Exception):  # noqa: N818 (named as the SDKs name theirs)
    status_code = 429


class BadRequest(Exception):  # noqa: N818
    status_code = 400


class NoForbiddenModel(BaseHook):
    def before_model(self, call: ModelCall) -> ModelCall | None:
        if call.model == "forbidden":
            raise GuardrailViolatedError("that model is not allowed")
        return None


@pytest.fixture
def priced(empty_pricing: None) -> None:
    price_model("m", "3", "15", cache_read_per_million="0.3", cache_write_per_million="3.75")
    price_model("backup", "1", "5")


@pytest.fixture(params=["sqlite", "jsonl"])
def log_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return tmp_path / ("runs.db" if request.param == "sqlite" else "runs.jsonl")


def open_sink(path: Path) -> Sink:
    """A sink that writes only when flushed (so a crash loses the unflushed part)."""
    if path.suffix == ".db":
        return SqliteSink(path, flush_interval=3600, flush_every=10_000)
    return JsonlSink(path, flush_interval=3600, flush_every=10_000)


def orchestrator(sink: Sink, **options: Any) -> Orchestrator:
    options.setdefault("clock", FakeClock())
    options.setdefault("sleep", lambda seconds: None)
    return Orchestrator(role="writer", phase="draft", project_id=42, sinks=[sink], **options)


def started(path: Path, **options: Any) -> tuple[Session, Sink]:
    sink = open_sink(path)
    session = orchestrator(sink, **options).session(metadata={"task": "otters"})
    session.__enter__()
    return session, sink


def crash(session: Session, sink: Sink) -> dict[str, object]:
    """Flush the log and leave the session open, as a kill -9 right after a flush would."""
    sink.flush()
    summary = session.summary()
    sink.close()  # the process is gone: nothing more reaches the file
    return summary


def big_turns(session: Session, n: int) -> None:
    for _ in range(n):
        session.run_turn(lambda: "a", model="m", usage=BIG)


def run_first_part(session: Session) -> None:
    """Priced turns with cache tokens, a retried 429, a failed turn, a veto, two tool calls."""
    big_turns(session, 3)
    session.run_turn(lambda: "b", model="backup", usage=UsageSnapshot(700, 300, 0, 0, 100))
    pending: list[Exception] = [RateLimited("slow down")]

    def fails_once() -> str:
        if pending:
            raise pending.pop()
        return "ok"

    session.run_turn(fails_once, model="m", usage=UsageSnapshot(500, 50))  # a 429, retried
    pending.append(TurnTimeoutError(5.0, "m"))
    session.run_turn(fails_once)  # timed out, retried: no model, no usage reported
    with pytest.raises(BadRequest):
        session.run_turn(lambda: (_ for _ in ()).throw(BadRequest("no")), model="m")
    with pytest.raises(GuardrailViolatedError):
        session.run_turn(lambda: "never", model="forbidden")
    assert session.run_tool("fs.read", lambda path: f"read {path}", "a.md") == "read a.md"
    with pytest.raises(ZeroDivisionError):
        session.run_tool("calc", lambda: 1 / 0)


FIRST_PART: dict[str, Any] = {"retry": RetryPolicy(max_attempts=2), "hooks": [NoForbiddenModel()]}
ACCOUNTING = (
    "turns",
    "turns_without_usage",
    "tool_calls",
    "cost_usd",
    "cost",
    "usage",
    "failures",
    "recovery",
    "event_counts",
    "events_dropped",
    "budget_warnings",
)


def accounting(summary: dict[str, object]) -> dict[str, object]:
    return {key: summary[key] for key in ACCOUNTING}


def logged(path: Path, session_id: str) -> tuple[list[AgentEvent], list[UsageRecord]]:
    if path.suffix == ".db":
        with SqliteReader(path) as reader:
            events = reader.read_events(session_id=session_id)
            return events, reader.read_usage(session_id=session_id)
    records = [r for r in read_jsonl(path) if r.session_id == session_id]
    events = [r for r in records if isinstance(r, AgentEvent)]
    return events, [r for r in records if isinstance(r, UsageRecord)]


def logged_cost(path: Path, session_id: str) -> Decimal:
    return sum((r.cost_usd for r in logged(path, session_id)[1]), Decimal(0))


def resumed_from(path: Path, session_id: str, **options: Any) -> tuple[Session, Sink]:
    sink = open_sink(path)
    return orchestrator(sink, **options).resume(session_id, from_=path), sink


# -- the totals ---------------------------------------------------------------------


def test_resume_rebuilds_the_accounting_the_log_holds(priced: None, log_path: Path) -> None:
    session, sink = started(log_path, **FIRST_PART)
    run_first_part(session)
    before = crash(session, sink)

    resumed, sink = resumed_from(log_path, session.id)

    assert resumed.id == session.id
    assert accounting(resumed.summary()) == accounting(before)
    assert (before["turns"], before["turns_without_usage"], before["tool_calls"]) == (8, 1, 2)
    assert before["failures"] == {
        "llm_timeout": 1,
        "rate_limit": 1,
        "bad_request": 1,
        "validation_error": 1,
        "tool_error": 1,
    }
    assert before["recovery"] == {
        "retries": 2,
        "retries_exhausted": False,
        "max_total_retries": None,
    }
    assert resumed.tracker.per_model_summary() == session.tracker.per_model_summary()
    assert resumed.tracker.total_cost() == logged_cost(log_path, session.id)
    assert resumed.tracker.total_cost() == 3 * BIG_COST + Decimal("0.0022") + Decimal("0.00225")
    assert (resumed.recovery.attempts("rate_limit"), resumed.recovery.attempts("llm_timeout")) == (
        1,
        1,
    )
    assert resumed.policy_context().timed_out
    assert not orchestrator(sink).session().policy_context().timed_out
    sink.close()


def test_the_resumed_session_keeps_its_id_and_appends_to_the_same_log(
    priced: None, log_path: Path
) -> None:
    session, sink = started(log_path)
    big_turns(session, 2)
    crash(session, sink)

    resumed, sink = resumed_from(log_path, session.id)
    with resumed:
        big_turns(resumed, 1)
        assert resumed.status is AgentStatus.RUNNING
    sink.close()

    events, usage = logged(log_path, session.id)
    assert len(usage) == 3
    assert [e.name for e in events].count("session.started") == 2
    assert events[-1].name == "session.completed"
    assert events[-1].data["cost_usd"] == str(3 * BIG_COST)
    assert events[-1].data["turns"] == 3
    assert resumed.summary()["outcome"] == "completed"


def test_more_turns_then_a_second_crash_resume_counts_old_and_new_exactly_once(
    priced: None, log_path: Path
) -> None:
    session, sink = started(log_path)
    big_turns(session, 3)
    crash(session, sink)

    resumed, sink = resumed_from(log_path, session.id)
    resumed.__enter__()
    big_turns(resumed, 2)
    resumed.run_turn(lambda: "b", model="backup", usage=UsageSnapshot(1000, 100))
    before = crash(resumed, sink)

    again, sink = resumed_from(log_path, session.id)
    summary = again.summary()
    assert accounting(summary) == accounting(before)
    assert summary["turns"] == 6
    assert summary["usage"]["models"]["m"]["turns"] == 5  # type: ignore[index]
    assert again.tracker.total_cost() == 5 * BIG_COST + Decimal("0.0015")
    assert again.tracker.total_cost() == logged_cost(log_path, session.id)
    sink.close()


def test_resuming_twice_from_one_log_gives_the_same_totals(priced: None, log_path: Path) -> None:
    session, sink = started(log_path, **FIRST_PART)
    run_first_part(session)
    crash(session, sink)

    budget = Budget(max_usd="10")
    sink = open_sink(log_path)
    orch = orchestrator(sink, budget=budget)
    first = orch.resume(session.id, from_=log_path)
    second = orch.resume(session.id, from_=sink)
    assert accounting(first.summary()) == accounting(second.summary())
    assert budget.spent_usd == logged_cost(log_path, session.id)  # counted once, not twice
    assert budget.requests == 6  # the turn with no usage reported was a request too
    assert budget.spent_tokens == 3 * 12_000 + 1000 + 550
    sink.close()


def test_costs_are_what_the_log_charged_even_when_pricing_changed(
    priced: None, log_path: Path
) -> None:
    session, sink = started(log_path)
    big_turns(session, 2)
    crash(session, sink)

    price_model("m", "300", "1500")  # a hundred times dearer since
    resumed, sink = resumed_from(log_path, session.id)
    assert resumed.tracker.total_cost() == 2 * BIG_COST
    with resumed:
        resumed.run_turn(lambda: "a", model="m", usage=UsageSnapshot(1000, 0))
    assert resumed.tracker.total_cost() == 2 * BIG_COST + Decimal("0.3")
    sink.close()


def test_an_unpriced_model_stays_unpriced_after_resume(empty_pricing: None, log_path: Path) -> None:
    session, sink = started(log_path)
    session.run_turn(lambda: "a", model="mystery", usage=UsageSnapshot(100, 10))
    crash(session, sink)

    price_model("mystery", "3", "15")
    resumed, sink = resumed_from(log_path, session.id)
    row = resumed.tracker.per_model_summary()["mystery"]
    assert (row["priced"], row["unpriced_turns"], row["cost_usd"]) == (False, 1, "0")
    assert resumed.tracker.unpriced_models == frozenset({"mystery"})
    sink.close()


def test_the_event_log_and_its_counts_come_back(priced: None, log_path: Path) -> None:
    session, sink = started(log_path, event_capacity=5)
    big_turns(session, 4)
    before = crash(session, sink)

    resumed, sink = resumed_from(log_path, session.id, event_capacity=5)
    assert [e.to_dict() for e in resumed.events()] == [e.to_dict() for e in session.events()]
    assert resumed.summary()["events_dropped"] == before["events_dropped"] == 2
    assert resumed.summary()["last_events"] == before["last_events"]
    sink.close()


def test_the_metadata_defaults_to_what_the_session_last_started_with(
    priced: None, log_path: Path
) -> None:
    session, sink = started(log_path)
    crash(session, sink)

    resumed, sink = resumed_from(log_path, session.id)
    assert resumed.metadata == {"task": "otters"}
    other = orchestrator(sink).resume(session.id, from_=log_path, metadata={"task": "seals"})
    assert other.metadata == {"task": "seals"}
    other.__enter__()
    crash(other, sink)

    again, sink = resumed_from(log_path, session.id)
    assert again.metadata == {"task": "seals"}
    sink.close()


# -- budgets and limits -------------------------------------------------------------


def test_a_spent_session_budget_refuses_a_turn_a_fresh_session_would_allow(
    priced: None, log_path: Path
) -> None:
    cap = 3 * BIG_COST + BIG_COST / 2  # room for one more turn of half the size only
    session, sink = started(log_path, budget_usd=cap)
    big_turns(session, 3)
    crash(session, sink)

    fresh_sink = open_sink(log_path)
    fresh = orchestrator(fresh_sink, budget_usd=cap).session()
    with fresh:
        big_turns(fresh, 1)  # a new session has the whole cap
    resumed = orchestrator(fresh_sink, budget_usd=cap).resume(session.id, from_=fresh_sink)
    called = []
    with resumed, pytest.raises(BudgetExceededError) as refused:
        resumed.run_turn(lambda: called.append(1), model="m", usage=BIG)
    assert called == []  # refused before the call
    assert refused.value.spent_usd == 3 * BIG_COST
    assert resumed.tracker.total_cost() == 3 * BIG_COST
    fresh_sink.close()


def test_a_spent_session_budget_holds_the_last_cost_of_each_model(
    priced: None, log_path: Path
) -> None:
    cap = 3 * BIG_COST + BIG_COST / 2
    session, sink = started(log_path, budget_usd=cap)
    big_turns(session, 3)
    crash(session, sink)

    resumed, sink = resumed_from(log_path, session.id, budget_usd=cap)
    with resumed, pytest.raises(BudgetExceededError):  # no estimate: it holds the last turn's cost
        resumed.run_turn(lambda: "a", model="m")
    sink.close()


def test_a_shared_budget_counts_what_the_session_spent_before_the_crash(
    priced: None, log_path: Path
) -> None:
    session, sink = started(log_path, budget=Budget(max_usd="1"))
    big_turns(session, 3)
    crash(session, sink)

    roomy = Budget(max_usd=3 * BIG_COST + BIG_COST / 2)  # a new process: a new Budget
    resumed, sink = resumed_from(log_path, session.id, budget=roomy)
    with resumed, pytest.raises(BudgetExceededError):  # no estimate: holds the last cost
        resumed.run_turn(lambda: "a", model="m")
    assert roomy.spent_usd == 3 * BIG_COST
    sink.close()

    session, sink = started(log_path)
    big_turns(session, 3)
    crash(session, sink)
    project = Budget(max_usd=3 * BIG_COST)
    resumed, sink = resumed_from(log_path, session.id, budget=project)
    assert project.spent_usd == 3 * BIG_COST
    assert (project.requests, project.spent_tokens) == (3, 36_000)
    with resumed, pytest.raises(BudgetExceededError):
        resumed.run_turn(lambda: "a", model="m", estimate=UsageSnapshot(1))
    sink.close()


def test_a_shared_budget_resumed_again_after_new_turns_counts_each_record_once(
    priced: None, log_path: Path
) -> None:
    session, sink = started(log_path)
    big_turns(session, 2)
    crash(session, sink)

    project = Budget(max_usd="10")
    resumed, sink = resumed_from(log_path, session.id, budget=project)
    resumed.__enter__()
    big_turns(resumed, 3)
    crash(resumed, sink)
    assert project.spent_usd == 5 * BIG_COST

    again, sink = resumed_from(log_path, session.id, budget=project)
    assert project.spent_usd == 5 * BIG_COST
    assert project.requests == 5
    assert again.tracker.total_cost() == 5 * BIG_COST
    sink.close()


def test_max_iterations_counts_the_turns_before_the_crash(priced: None, log_path: Path) -> None:
    session, sink = started(log_path, max_iterations=4, **FIRST_PART)
    big_turns(session, 2)
    with pytest.raises(GuardrailViolatedError):  # a vetoed turn is a turn
        session.run_turn(lambda: "never", model="forbidden")
    crash(session, sink)

    resumed, sink = resumed_from(log_path, session.id, max_iterations=4)
    with resumed:
        big_turns(resumed, 1)
        with pytest.raises(MaxIterationsExceededError):
            big_turns(resumed, 1)
    sink.close()


def test_a_refused_turn_counts_once_and_a_warned_one_is_a_warning(
    priced: None, log_path: Path
) -> None:
    session, sink = started(log_path, budget_usd=BIG_COST, retry=RetryPolicy(max_attempts=3))
    big_turns(session, 1)
    with pytest.raises(BudgetExceededError):
        big_turns(session, 1)
    before = crash(session, sink)
    assert (before["turns"], before["failures"]) == (2, {"budget_exceeded": 1})

    resumed, sink = resumed_from(log_path, session.id)
    assert accounting(resumed.summary()) == accounting(before)
    sink.close()

    warned, sink = started(log_path, budget_usd=BIG_COST, enforce_budget=False)
    big_turns(warned, 2)
    before = crash(warned, sink)
    assert (before["turns"], before["budget_warnings"]) == (2, 1)
    resumed, sink = resumed_from(log_path, warned.id)
    assert accounting(resumed.summary()) == accounting(before)
    sink.close()


def test_the_session_retry_cap_counts_the_retries_before_the_crash(
    priced: None, log_path: Path
) -> None:
    options: dict[str, Any] = {"retry": RetryPolicy(max_attempts=3), "max_total_retries": 1}
    session, sink = started(log_path, **options)
    pending = [RateLimited("slow down")]

    def limited() -> str:
        if pending:
            raise pending.pop()
        return "ok"

    session.run_turn(limited, model="m", usage=UsageSnapshot(10, 1))
    crash(session, sink)

    resumed, sink = resumed_from(log_path, session.id, **options)
    pending.append(RateLimited("slow down"))
    with resumed, pytest.raises(RetriesExhaustedError):
        resumed.run_turn(limited, model="m", usage=UsageSnapshot(10, 1))
    sink.close()


# -- the worker ---------------------------------------------------------------------


def test_a_session_that_crashed_waiting_for_input_resumes_waiting(
    priced: None, log_path: Path
) -> None:
    session, sink = started(log_path)
    big_turns(session, 1)
    session.pause_for_input("which otter?")
    crash(session, sink)

    resumed, sink = resumed_from(log_path, session.id)
    with resumed:
        assert resumed.status is AgentStatus.WAITING_FOR_INPUT
        with pytest.raises(SessionStateError, match="waiting_for_input; turns need it RUNNING"):
            big_turns(resumed, 1)
        resumed.provide_input("the small one")
        big_turns(resumed, 1)
    assert resumed.tracker.turns == 2
    sink.close()


def test_a_running_session_resumes_running_and_async(priced: None, log_path: Path) -> None:
    session, sink = started(log_path)
    big_turns(session, 1)
    crash(session, sink)

    resumed, sink = resumed_from(log_path, session.id)
    assert resumed.status is None  # not entered yet

    async def go() -> AgentStatus | None:
        async def complete() -> str:
            return "async"

        async with resumed:
            await resumed.arun_turn(complete, model="m", usage=BIG)
            return resumed.status

    assert asyncio.run(go()) is AgentStatus.RUNNING
    assert resumed.tracker.total_cost() == 2 * BIG_COST
    sink.close()


# -- what is refused ----------------------------------------------------------------


def test_an_unknown_session_id_is_refused_naming_it_and_the_log(
    priced: None, log_path: Path
) -> None:
    session, sink = started(log_path)
    crash(session, sink)

    sink = open_sink(log_path)
    with pytest.raises(InvalidValueError) as refused:
        orchestrator(sink).resume("no-such-session", from_=log_path)
    assert str(refused.value) == (
        f"session_id 'no-such-session' is not in {log_path}: it holds no event or usage "
        "record of that session"
    )
    with pytest.raises(InvalidValueError, match="session_id must be a non-empty str"):
        orchestrator(sink).resume("", from_=log_path)
    sink.close()


@pytest.mark.parametrize("source", [42, b"runs.db", None, ["runs.db"]])
def test_a_source_that_is_no_log_is_refused_naming_it(source: object) -> None:
    orch = Orchestrator(role="writer", phase="draft")
    with pytest.raises(InvalidValueError) as refused:
        orch.resume("s1", from_=source)  # type: ignore[arg-type]
    assert str(refused.value) == (
        "from_ must be a path, a SqliteSink, a SqliteReader or a JsonlSink, got "
        f"{type(source).__name__} {source!r}"
    )


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(InvalidValueError) as refused:
        Orchestrator(role="writer", phase="draft").resume("s1", from_=missing)
    assert str(refused.value).startswith(
        f"from_ {str(missing)!r} cannot be read: FileNotFoundError"
    )
    assert isinstance(refused.value.__cause__, FileNotFoundError)
    with pytest.raises(InvalidValueError, match="cannot be read: IsADirectoryError"):
        Orchestrator(role="writer", phase="draft").resume("s1", from_=tmp_path)


def test_a_file_that_is_no_log_raises_the_readers_typed_error(tmp_path: Path) -> None:
    orch = Orchestrator(role="writer", phase="draft")
    text = tmp_path / "notes.txt"
    text.write_text("dear diary\n")
    with pytest.raises(CorruptRecordError, match=f"{text}:1"):
        orch.resume("s1", from_=text)
    fake = tmp_path / "fake.db"
    fake.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    with pytest.raises(SchemaError, match=r"fake\.db"):
        orch.resume("s1", from_=fake)


def test_a_torn_last_jsonl_line_is_skipped(priced: None, tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    session, sink = started(path)
    big_turns(session, 2)
    before = crash(session, sink)
    with path.open("ab") as log:  # the third turn's record, cut by the kill mid-write
        log.write(b'{"kind":"usage","model":"m","input_tokens":10000,"output_to')

    resumed = orchestrator(open_sink(tmp_path / "other.jsonl")).resume(session.id, from_=path)
    assert accounting(resumed.summary()) == accounting(before)
    assert resumed.tracker.total_cost() == 2 * BIG_COST


def test_a_corrupt_line_inside_a_jsonl_log_is_refused_not_skipped(
    priced: None, tmp_path: Path
) -> None:
    path = tmp_path / "runs.jsonl"
    session, sink = started(path)
    big_turns(session, 1)
    crash(session, sink)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:2], b"{not json\n", *lines[2:]]))
    with pytest.raises(CorruptRecordError, match=f"{path}:3"):
        orchestrator(open_sink(tmp_path / "o.jsonl")).resume(session.id, from_=path)


def test_a_usage_record_that_contradicts_itself_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(
            AgentEvent(name="session.started", role="writer", phase="draft", session_id="s1")
        )
        sink.write_usage(
            UsageRecord(model="m", input_tokens=1, cache_read_tokens=5, session_id="s1")
        )
    with pytest.raises(InvalidValueError) as refused:
        Orchestrator(role="writer", phase="draft").resume("s1", from_=path)
    assert str(refused.value).startswith(
        f"usage record 1 of session 's1' in {path} cannot be resumed: cache_read_tokens"
    )


@pytest.mark.parametrize(
    ("ending", "outcome"),
    [(None, "completed"), (BadRequest("no"), "failed"), (KeyboardInterrupt(), "cancelled")],
)
def test_a_session_that_ended_is_refused(
    priced: None, log_path: Path, ending: BaseException | None, outcome: str
) -> None:
    sink = open_sink(log_path)
    session = orchestrator(sink).session()
    session.__enter__()
    big_turns(session, 1)
    session.__exit__(None if ending is None else type(ending), ending, None)
    sink.close()

    sink = open_sink(log_path)
    with pytest.raises(SessionStateError) as refused:
        orchestrator(sink).resume(session.id, from_=log_path)
    assert str(refused.value) == (
        f"session {session.id!r} already ended ({outcome}) in {log_path}: only a session "
        "that never ended can be resumed; start a new one with orch.session()"
    )
    sink.close()


def test_a_session_that_handed_off_is_refused(priced: None, log_path: Path) -> None:
    session, sink = started(log_path)
    session.handoff_to("reviewer", "draft done")
    crash(session, sink)
    sink = open_sink(log_path)
    with pytest.raises(SessionStateError, match=r"already ended \(its worker is completed\)"):
        orchestrator(sink).resume(session.id, from_=log_path)
    sink.close()


def test_a_session_still_open_in_this_process_is_refused(priced: None, log_path: Path) -> None:
    sink = open_sink(log_path)
    orch = orchestrator(sink, budget=Budget(max_usd="1"))
    with orch.session() as session:
        big_turns(session, 1)
        assert session.worker is not None
        with pytest.raises(SessionStateError) as refused:
            orch.resume(session.id, from_=sink)
        assert str(refused.value) == (
            f"session {session.id!r} is still open in this process (its worker "
            f"{session.worker.id!r} is running): end it before resuming it"
        )
        assert orch.budget is not None
        assert orch.budget.spent_usd == BIG_COST  # nothing counted twice
    sink.close()


def test_a_session_of_another_role_or_project_is_refused(priced: None, log_path: Path) -> None:
    session, sink = started(log_path)
    crash(session, sink)
    sink = open_sink(log_path)
    other = Orchestrator(role="reviewer", phase="draft", project_id=42, sinks=[sink])
    with pytest.raises(InvalidValueError) as refused:
        other.resume(session.id, from_=log_path)
    assert str(refused.value) == (
        f"session_id {session.id!r} in {log_path} belongs to role 'writer', phase 'draft', "
        "project_id 42; this orchestrator is role 'reviewer', phase 'draft', project_id 42"
    )
    with pytest.raises(
        InvalidValueError,
        match=r"this orchestrator is role 'writer', phase 'draft', project_id '42'$",
    ):
        Orchestrator(role="writer", phase="draft", project_id="42").resume(
            session.id, from_=log_path
        )
    sink.close()


# -- live sinks ---------------------------------------------------------------------


def test_a_live_sink_is_flushed_before_it_is_read(priced: None, log_path: Path) -> None:
    sink = open_sink(log_path)
    orch = orchestrator(sink)
    session = orch.session()
    session.__enter__()
    big_turns(session, 2)
    assert sink.pending > 0  # nothing flushed yet
    before = session.summary()

    resumed = orchestrator(sink).resume(session.id, from_=sink)
    assert accounting(resumed.summary()) == accounting(before)
    sink.close()


def test_a_closed_sqlite_sink_is_read_through_a_reader(priced: None, tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    session, sink = started(path)
    big_turns(session, 2)
    before = crash(session, sink)
    assert isinstance(sink, SqliteSink)
    assert sink.closed
    resumed = orchestrator(open_sink(tmp_path / "o.db")).resume(session.id, from_=sink)
    assert accounting(resumed.summary()) == accounting(before)
    with SqliteReader(path) as reader:
        assert accounting(orchestrator(sink).resume(session.id, from_=reader).summary()) == (
            accounting(before)
        )


# -- a real kill -9 -----------------------------------------------------------------

CHILD = """
import json, sys
from techrevati.runtime import ModelPricing, Orchestrator, UsageSnapshot, register_pricing
from techrevati.runtime.sinks import JsonlSink, SqliteSink

path = sys.argv[1]
register_pricing("m", ModelPricing("3", "15", cache_read_per_million="0.3",
                                   cache_write_per_million="3.75"))
Sink = SqliteSink if path.endswith(".db") else JsonlSink
sink = Sink(path, flush_interval=3600, flush_every=10_000)
orch = Orchestrator(role="writer", phase="draft", project_id=42, sinks=[sink], budget_usd="0.19")
session = orch.session()
session.__enter__()
for _ in range(3):
    session.run_turn(lambda: "a", model="m", usage=UsageSnapshot(10_000, 2_000, 4_000, 1_000))
try:
    session.run_tool("calc", lambda: 1 / 0)
except ZeroDivisionError:
    pass
sink.flush()
summary = session.summary()
session.run_turn(lambda: "lost", model="other", usage=UsageSnapshot(1, 1))  # never flushed
print(json.dumps({"id": session.id, "summary": summary}), flush=True)
sys.stdin.read()  # blocks until killed
"""


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        proc.kill()
        proc.communicate()


def test_after_kill_9_the_restarted_agent_goes_on_with_its_totals_and_budget(
    empty_pricing: None, log_path: Path, children: list[subprocess.Popen[str]]
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(log_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    children.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the child has flushed when it prints
    assert line, proc.communicate(timeout=CHILD_TIMEOUT)[1]
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(CHILD_TIMEOUT) == -signal.SIGKILL
    child = json.loads(line)

    # This process has no pricing at all: the costs come from the log.
    resumed, sink = resumed_from(log_path, child["id"], budget_usd="0.19")
    summary = resumed.summary()
    assert accounting(summary) == accounting(child["summary"])
    assert resumed.tracker.total_cost() == 3 * BIG_COST
    assert summary["failures"] == {"tool_error": 1}
    with resumed, pytest.raises(BudgetExceededError):  # 0.14985 spent + 0.04995 > 0.19
        resumed.run_turn(lambda: "a", model="m", usage=BIG)
    sink.close()
