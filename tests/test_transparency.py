"""The risk registry's JSON round trip and a transparency report read from a real orchestrator."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime import CircuitBreaker, Orchestrator, RetryPolicy
from techrevati.runtime.audit import AuditSink
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.governance import Governance
from techrevati.runtime.incidents import IncidentDetector, Severity
from techrevati.runtime.oversight import ReviewQueue
from techrevati.runtime.permissions import (
    ApprovalRequest,
    PermissionMode,
    PermissionPolicy,
    RolePermissionConfig,
)
from techrevati.runtime.transparency import (
    DuplicateRiskError,
    Level,
    Risk,
    RiskRegistry,
    transparency_report,
)

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def policy() -> PermissionPolicy:
    role = RolePermissionConfig(
        role="agent",
        mode=PermissionMode.WORKSPACE_WRITE,
        allowed_tools=["fs.read", "deploy"],
        ask_tools=["deploy"],
        denied_tools=["shell"],
    )
    return PermissionPolicy({"agent": role})


def test_a_registry_round_trips_through_json() -> None:
    registry = RiskRegistry()
    registry.add(
        "R1", "the agent deploys a broken build", "medium", "high", mitigation="human review"
    )
    registry.add(Risk("R2", "runaway spend", Level.LOW, Level.MEDIUM, "budget cap", "finance"))
    again = RiskRegistry.from_json(registry.to_json())
    assert again.risks() == registry.risks()
    assert again.get("R1") is not None
    assert again.get("R1").impact is Level.HIGH  # type: ignore[union-attr]
    assert len(again) == 2
    with pytest.raises(DuplicateRiskError, match="'R1' is already"):
        again.add("R1", "again")


text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(text, text, st.sampled_from(list(Level)), st.sampled_from(list(Level)), text),
        max_size=6,
        unique_by=lambda item: item[0],
    )
)
def test_any_registry_round_trips(rows: list[tuple[str, str, Level, Level, str]]) -> None:
    rows = [row for row in rows if row[0].strip() and row[1].strip()]
    registry = RiskRegistry(Risk(*row) for row in rows)
    assert RiskRegistry.from_json(registry.to_json()).risks() == registry.risks()
    assert registry.to_markdown().count("\n") == len(rows) + 2  # no cell breaks a row


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ("[]", "not a version 1"),
        ('{"version": 2, "risks": []}', "not a version 1"),
        ('{"version": 1, "risks": {}}', "risks must be a list"),
        ('{"version": 1, "risks": [{"id": "R", "colour": "red"}]}', "a risk must be"),
        (
            '{"version": 1, "risks": [{"id": "R", "description": "d", "likelihood": "huge", '
            '"impact": "low"}]}',
            "likelihood",
        ),
        ("not json", "not JSON"),
    ],
)
def test_a_bad_registry_is_refused(data: str, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        RiskRegistry.from_json(data)


def test_the_report_reads_every_safeguard_from_the_orchestrator(tmp_path: Path) -> None:
    queue = ReviewQueue(reviewers={"alice", "bob"}, timeout=600)
    detector = IncidentDetector(periods={Severity.SERIOUS: timedelta(days=10)})
    with AuditSink(tmp_path / "audit.db") as audit:
        orch = Orchestrator(
            "agent",
            "ship",
            permissions=policy(),
            approver=queue.approver,
            circuit_breaker=CircuitBreaker("llm", failure_threshold=4),
            retry=RetryPolicy(max_attempts=5),
            governance=Governance(max_turns=20, max_cost_usd="2.50"),
            budget_usd="5",
            sinks=[detector, audit],
        )
        registry = RiskRegistry([Risk("R1", "broken deploy", Level.MEDIUM, Level.HIGH)])
        report = transparency_report(
            orch,
            purpose="Drafts and ships release notes.",
            limitations=["It can be wrong about what changed."],
            risks=registry,
            oversight=["a weekly review of the audit log"],
            wall_clock=lambda: T0,
        )
    data = json.loads(json.dumps(report.to_dict()))
    safeguards = data["safeguards"]
    assert safeguards["session_budget_usd"] == "5"
    assert safeguards["circuit_breaker"]["failure_threshold"] == 4
    assert safeguards["retry"] == {"max_attempts": 5}
    assert safeguards["governance"]["max_turns"] == 20
    assert safeguards["governance"]["max_cost_usd"] == "2.50"
    assert safeguards["rate_limiter"] is None
    permissions = safeguards["permissions"]
    assert permissions["default"].startswith("deny")
    assert permissions["roles"]["agent"]["ask_tools"] == ["deploy"]
    assert permissions["roles"]["agent"]["denied_tools"] == ["shell"]
    assert permissions["approver"] == "ReviewQueue"
    assert safeguards["sinks"] == ["IncidentDetector", "AuditSink"]
    oversight = data["oversight"]
    assert oversight[0].startswith("human review of 'ask' tool calls by reviewers alice, bob")
    assert "600s is a deny" in oversight[0]
    assert any("serious 10 days" in line for line in oversight)
    assert any("audit trail" in line for line in oversight)
    assert oversight[-1] == "a weekly review of the audit log"
    assert data["risks"][0]["id"] == "R1"
    assert data["generated_at"] == "2025-03-01T00:00:00+00:00"
    assert "not legal advice" in data["notes"][0]

    text = report.to_markdown()
    assert text.startswith("# Transparency report: agent / ship\n")
    for heading in ("## What the system does", "## Safeguards", "## Human oversight", "## Risks"):
        assert heading in text
    assert "Drafts and ships release notes." in text
    assert "It can be wrong about what changed." in text
    assert "not legal advice" in text


def test_a_bare_orchestrator_claims_no_safeguard() -> None:
    report = transparency_report(Orchestrator("a", "p"), purpose="Summarises tickets.")
    safeguards = report.safeguards
    for key in ("circuit_breaker", "rate_limiter", "retry", "governance", "permissions"):
        assert safeguards[key] is None, key
    assert report.oversight == ()
    assert "- none configured" in report.to_markdown()


def test_permissions_without_an_approver_say_ask_is_a_deny() -> None:
    report = transparency_report(Orchestrator("agent", "p", permissions=policy()), purpose="x")
    assert report.oversight == ("no approver: every 'ask' tool call is denied",)


def test_a_plain_function_approver_is_named() -> None:
    def on_call(_request: ApprovalRequest) -> str:
        return "deny"

    orch = Orchestrator("agent", "p", permissions=policy(), approver=on_call)
    report = transparency_report(orch, purpose="x")
    assert report.safeguards["permissions"]["approver"].endswith("on_call")  # type: ignore[index]
    queue = ReviewQueue(reviewers=lambda _r: {"x"}, timeout=5)
    chosen = transparency_report(Orchestrator("agent", "p", approver=queue), purpose="x")
    assert "reviewers chosen per request" in chosen.oversight[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"purpose": ""}, "purpose"),
        ({"purpose": "x", "limitations": "one string"}, "not a str"),
        ({"purpose": "x", "risks": []}, "RiskRegistry"),
    ],
)
def test_bad_report_inputs_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        transparency_report(Orchestrator("a", "p"), **kwargs)  # type: ignore[arg-type]
