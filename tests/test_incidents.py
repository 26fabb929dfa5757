"""Incidents from a real session's events: severities, deadlines and overdue() on a fake clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime import Orchestrator, UsageSnapshot
from techrevati.runtime.audit import AuditLog, read_records, verify
from techrevati.runtime.errors import (
    BudgetExceededError,
    InvalidValueError,
    PermissionDeniedError,
    TechrevatiError,
)
from techrevati.runtime.events import AgentEvent, AgentFailureClass, EventName
from techrevati.runtime.governance import Governance, GovernanceBreachedError
from techrevati.runtime.incidents import (
    AuditIncidentSink,
    AuthFailureRule,
    DangerousToolDeniedRule,
    Finding,
    IncidentDetector,
    IncidentReport,
    JsonlIncidentSink,
    Severity,
    UnknownIncidentError,
    default_rules,
)
from techrevati.runtime.permissions import PermissionMode, PermissionPolicy, RolePermissionConfig

pytestmark = pytest.mark.usefixtures("priced_models")

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
USAGE = UsageSnapshot(1000, 100)


class WallClock:
    """Aware UTC datetimes that move only when told to."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def governance_breach(detector: IncidentDetector) -> None:
    with Orchestrator(
        "writer", "draft", governance=Governance(max_turns=1), sinks=[detector]
    ).session() as s:
        s.run_turn(lambda: "ok", model="m", usage=USAGE)
        with pytest.raises(GovernanceBreachedError):
            s.run_turn(lambda: "again", model="m", usage=USAGE)


def denied_tool(detector: IncidentDetector, tool: str) -> None:
    role = RolePermissionConfig(role="agent", mode=PermissionMode.FULL_ACCESS, denied_tools=[tool])
    orch = Orchestrator(
        "agent", "work", permissions=PermissionPolicy({"agent": role}), sinks=[detector]
    )
    with orch.session() as session, pytest.raises(PermissionDeniedError):
        session.run_tool(tool, lambda: "ran")


def auth_event(at: datetime, session: str = "s") -> AgentEvent:
    return AgentEvent(
        EventName.TURN_FAILED,
        failure_class=AgentFailureClass.AUTH_FAILURE,
        detail="401 invalid api key",
        timestamp=at,
        session_id=session,
    )


# -- from a real session ---------------------------------------------------------------------


def test_a_governance_breach_is_a_serious_incident_due_in_15_days() -> None:
    clock = WallClock()
    detector = IncidentDetector(clock=clock)
    governance_breach(detector)
    (incident,) = detector.incidents()
    assert (incident.kind, incident.severity) == ("governance_breach", Severity.SERIOUS)
    assert incident.detected_at == T0
    assert incident.deadline == T0 + timedelta(days=15)
    assert incident.facts["limit"] == "max_turns"
    assert [ref.name for ref in incident.events] == ["governance.breached"]
    assert incident.session_ids
    assert incident.worker_ids
    assert "max_turns" in incident.summary
    clock.now = T0 + timedelta(days=15)
    assert detector.overdue() == []  # due at the deadline, overdue only after it
    clock.now += timedelta(seconds=1)
    assert [r.id for r in detector.overdue()] == [incident.id]
    reported = detector.mark_reported(incident.id, at=T0 + timedelta(days=3))
    assert reported.reported_at == T0 + timedelta(days=3)
    assert detector.overdue() == []
    assert detector.incidents(reported=False) == []
    assert detector.incidents(reported=True) == [reported]


def test_an_enforced_budget_breach_is_a_minor_incident_without_a_deadline() -> None:
    clock = WallClock()
    detector = IncidentDetector(clock=clock)
    big = UsageSnapshot(input_tokens=1_000_000)  # $3 on m
    orch = Orchestrator("writer", "draft", budget_usd=1, sinks=[detector])
    with pytest.raises(BudgetExceededError), orch.session() as session:
        session.run_turn(lambda: "never", model="m", estimate=big)
    (incident,) = detector.incidents()
    assert (incident.kind, incident.severity, incident.deadline) == ("budget_breach", "minor", None)
    clock.now += timedelta(days=365)
    assert detector.overdue() == []


def test_an_unenforced_budget_overrun_is_no_incident() -> None:
    detector = IncidentDetector()
    big = UsageSnapshot(input_tokens=1_000_000)
    orch = Orchestrator("writer", "draft", budget_usd=1, enforce_budget=False, sinks=[detector])
    with orch.session() as session:
        session.run_turn(lambda: "ok", model="m", estimate=big, usage=big)
    assert any(e.name == EventName.BUDGET_EXCEEDED for e in session.events())
    assert detector.incidents() == []


@pytest.mark.parametrize("tool", ["shell", "Sandbox.Exec", "files.delete"])
def test_a_denied_dangerous_tool_is_an_incident(tool: str) -> None:
    detector = IncidentDetector(clock=WallClock())
    denied_tool(detector, tool)
    (incident,) = detector.incidents()
    assert incident.kind == "dangerous_tool_denied"
    assert incident.facts["tool"] == tool.casefold()


def test_a_denied_harmless_tool_is_no_incident() -> None:
    detector = IncidentDetector()
    denied_tool(detector, "fs.read")
    assert detector.incidents() == []


def test_the_dangerous_set_is_configurable() -> None:
    rule = DangerousToolDeniedRule(["payments.*"], severity="critical")
    detector = IncidentDetector([rule], clock=WallClock())
    denied_tool(detector, "shell")
    denied_tool(detector, "payments.refund")
    (incident,) = detector.incidents()
    assert (incident.severity, incident.deadline) == (Severity.CRITICAL, T0 + timedelta(days=2))


# -- repeated auth failures --------------------------------------------------------------------


def test_three_auth_failures_within_the_window_are_one_incident() -> None:
    detector = IncidentDetector([AuthFailureRule(3, timedelta(minutes=10))], clock=WallClock())
    detector.observe([auth_event(T0), auth_event(T0 + timedelta(minutes=5), "t")])
    assert detector.incidents() == []
    opened = detector.observe([auth_event(T0 + timedelta(minutes=10))])
    (incident,) = opened
    assert incident.kind == "auth_failures"
    assert len(incident.events) == 3
    assert incident.session_ids == ("s", "t")
    assert (incident.first_seen, incident.last_seen) == (T0, T0 + timedelta(minutes=10))


def test_auth_failures_spread_wider_than_the_window_are_no_incident() -> None:
    detector = IncidentDetector([AuthFailureRule(3, timedelta(minutes=10))])
    step = timedelta(minutes=5, seconds=1)
    detector.observe(auth_event(T0 + step * i) for i in range(6))
    assert detector.incidents() == []


def test_auth_failures_from_a_real_session() -> None:
    class UnauthorizedError(Exception):
        status_code = 401

    def refused() -> str:
        raise UnauthorizedError("invalid api key")

    detector = IncidentDetector([AuthFailureRule(2, timedelta(hours=1))], clock=WallClock())
    for _ in range(2):
        with (
            pytest.raises(UnauthorizedError),
            Orchestrator("a", "p", sinks=[detector]).session() as s,
        ):
            s.run_turn(refused, model="m")
    (incident,) = detector.incidents()
    assert len(incident.session_ids) == 2


@settings(max_examples=60, deadline=None)
@given(
    threshold=st.integers(1, 5),
    gaps=st.lists(st.integers(0, 900), min_size=0, max_size=20),
)
def test_auth_incidents_match_a_reference_count(threshold: int, gaps: list[int]) -> None:
    window = timedelta(minutes=10)
    detector = IncidentDetector([AuthFailureRule(threshold, window)], clock=WallClock())
    times, at = [], T0
    for gap in gaps:
        at += timedelta(seconds=gap)
        times.append(at)
    detector.observe(auth_event(t) for t in times)
    expected, kept = 0, list[datetime]()
    for t in times:  # reference: a sliding window that starts afresh after each incident
        kept = [k for k in [*kept, t] if t - k <= window]
        if len(kept) >= threshold:
            expected += 1
            kept = []
    found = detector.incidents()
    assert len(found) == (1 if expected else 0)  # grouped under one open key
    if found:
        assert found[0].occurrences == expected


# -- grouping, reporting, deadlines ------------------------------------------------------------


def test_one_session_breaching_again_adds_to_its_open_incident() -> None:
    detector = IncidentDetector(clock=WallClock())
    event = AgentEvent(EventName.GOVERNANCE_BREACHED, data={"limit": "max_turns"}, session_id="s")
    detector.observe([event, event])
    (incident,) = detector.incidents()
    assert incident.occurrences == 2
    detector.mark_reported(incident.id)
    detector.observe([event])  # reported: a new finding opens a new incident
    assert len(detector.incidents()) == 2


def test_periods_are_configurable_per_severity() -> None:
    detector = IncidentDetector(
        clock=WallClock(),
        periods={"serious": timedelta(hours=72), Severity.MINOR: timedelta(days=30)},
    )
    assert detector.periods[Severity.CRITICAL] == timedelta(days=2)  # the default stays
    governance_breach(detector)
    assert detector.incidents()[0].deadline == T0 + timedelta(hours=72)


@pytest.mark.parametrize(
    ("periods", "match"),
    [
        ({"serious": 15}, "timedelta"),
        ({"grave": timedelta(1)}, "severity"),
        ({"minor": timedelta(-1)}, ">= 0"),
    ],
)
def test_bad_periods_are_refused(periods: Any, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        IncidentDetector(periods=periods)


def test_mark_reported_needs_a_known_id_and_an_aware_time() -> None:
    detector = IncidentDetector(clock=WallClock())
    with pytest.raises(UnknownIncidentError, match="no incident 'x'"):
        detector.mark_reported("x")
    with pytest.raises(UnknownIncidentError):
        detector.get("x")
    governance_breach(detector)
    incident = detector.incidents()[0]
    with pytest.raises(InvalidValueError, match="timezone-aware"):
        detector.mark_reported(incident.id, at=datetime(2025, 1, 1))
    assert detector.get(incident.id).reported_at is None
    assert isinstance(UnknownIncidentError("x"), TechrevatiError)


# -- sinks and failing parts -------------------------------------------------------------------


class FlakySink:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.got: list[IncidentReport] = []

    def write_incident(self, report: IncidentReport) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("webhook down")
        self.got.append(report)


def test_a_failing_sink_loses_nothing_and_gets_them_in_order_later() -> None:
    flaky, steady = FlakySink(failures=2), list[IncidentReport]()
    detector = IncidentDetector(clock=WallClock(), sinks=[flaky, steady.append])
    governance_breach(detector)  # delivery 1 fails
    denied_tool(detector, "shell")  # each later event retries: fails once more, then delivers
    assert [r.kind for r in steady] == ["governance_breach", "dangerous_tool_denied"]
    assert [r.kind for r in flaky.got] == ["governance_breach", "dangerous_tool_denied"]
    assert detector.sink_failures == 2
    assert detector.undelivered == 0


def test_flush_retries_what_is_waiting() -> None:
    flaky = FlakySink(failures=10**6)
    detector = IncidentDetector(clock=WallClock(), sinks=[flaky])
    detector.observe([AgentEvent(EventName.GOVERNANCE_BREACHED, session_id="s")])
    assert detector.undelivered == 1
    assert detector.flush() == 1
    flaky.failures = 0
    assert detector.flush() == 0
    assert len(flaky.got) == 1
    assert len(detector.incidents()) == 1  # kept all along


def test_a_raising_rule_never_stops_the_others() -> None:
    class Broken:
        def observe(self, event: AgentEvent) -> Finding | None:
            raise RuntimeError("bug in a rule")

    detector = IncidentDetector([Broken(), *default_rules()], clock=WallClock())
    governance_breach(detector)
    assert [r.kind for r in detector.incidents()] == ["governance_breach"]
    assert detector.rule_failures > 0


def test_a_rule_without_observe_and_a_bad_sink_are_refused() -> None:
    with pytest.raises(InvalidValueError, match="observe"):
        IncidentDetector([object()])  # type: ignore[list-item]
    with pytest.raises(InvalidValueError, match="IncidentSinks or callables"):
        IncidentDetector(sinks=[object()])  # type: ignore[list-item]


def test_jsonl_and_audit_sinks(tmp_path: Path) -> None:
    lines = tmp_path / "incidents.jsonl"
    with AuditLog(tmp_path / "audit.db") as log:
        detector = IncidentDetector(
            clock=WallClock(), sinks=[JsonlIncidentSink(lines), AuditIncidentSink(log)]
        )
        governance_breach(detector)
    (written,) = [json.loads(line) for line in lines.read_text().splitlines()]
    assert written["kind"] == "governance_breach"
    assert written["deadline"] == "2025-03-16T12:00:00+00:00"
    assert verify(tmp_path / "audit.db").ok
    (record,) = read_records(tmp_path / "audit.db", kind="incident")
    assert isinstance(record.record["data"], dict)
    assert record.record["data"]["id"] == written["id"]


def test_markdown_and_dict_say_the_same() -> None:
    detector = IncidentDetector(clock=WallClock())
    event = AgentEvent(
        EventName.TOOL_DENIED,
        data={"tool": "shell"},
        detail="a | b\nc",
        session_id="s-1",
        timestamp=T0,
    )
    (incident,) = detector.observe([event])
    text = incident.to_markdown()
    assert text.startswith(f"## Incident {incident.id}: dangerous_tool_denied (serious)")
    assert "Reporting deadline: 2025-03-16T12:00:00+00:00" in text
    assert "a \\| b c" in text  # a cell cannot break the table
    assert json.loads(json.dumps(incident.to_dict()))["severity"] == "serious"
