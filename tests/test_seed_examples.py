"""Every example of the seed getting-started page runs exactly as written.

The examples are copied verbatim from the page; only the caller's own helpers
(``call_model``, ``fetch``, ``notify_human``, ...) are defined around them.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from techrevati.runtime import AgentStatus, QualityLevel, clear_pricing

ORCHESTRATOR = """
from techrevati.runtime import (
    Orchestrator, UsageSnapshot, CircuitBreaker,
    register_pricing, ModelPricing,
)

# Pricing is empty by default — register what you use.
register_pricing("model-a", ModelPricing(input_per_million=3.0, output_per_million=15.0))

orch = Orchestrator(
    role="writer",
    phase="draft",
    project_id=42,
    circuit_breaker=CircuitBreaker("model-api", failure_threshold=5),
    budget_usd=10.0,
)

with orch.session() as session:
    result, usage = session.run_turn(
        lambda: call_model(prompt),
        model="model-a",
        usage=UsageSnapshot(input_tokens=5000, output_tokens=1200),
    )

print(session.summary())
"""

RECOVERY = """
from techrevati.runtime import classify_exception, attempt_recovery, RecoveryContext

ctx = RecoveryContext()

try:
    response = call_model(prompt)
except Exception as exc:
    scenario = classify_exception(exc)
    result = attempt_recovery(scenario, ctx)
    if result.outcome == "recovered":
        # Apply recipe steps (e.g. RETRY_WITH_BACKOFF, SWITCH_PROVIDER) and retry.
        response = call_model(prompt)
    elif result.outcome == "escalation_required":
        notify_human(result.reason)
"""

LIFECYCLE = """
from techrevati.runtime import AgentRegistry, AgentStatus

registry = AgentRegistry()
worker = registry.create(role="writer", phase="draft", project_id=42)

worker.transition(AgentStatus.INITIALIZING)
worker.transition(AgentStatus.RUNNING, detail="context_budget=8k")
worker.transition(AgentStatus.COMPLETED, detail="observed=STRICT")

for event in worker.events:
    print(f"{event.timestamp}: {event.status} - {event.detail}")
"""

PERMISSIONS = """
from techrevati.runtime import (
    PermissionMode, RolePermissionConfig, PermissionPolicy, PermissionEnforcer,
)

policy = PermissionPolicy(
    role_configs={
        "writer": RolePermissionConfig(
            role="writer",
            mode=PermissionMode.FULL_ACCESS,
            denied_tools=["dangerous_tool"],
        ),
        "reader": RolePermissionConfig(role="reader", mode=PermissionMode.READ_ONLY),
    },
    tool_requirements={"dangerous_tool": PermissionMode.FULL_ACCESS},
)
enforcer = PermissionEnforcer(policy)

outcome = enforcer.check("writer", "any_tool")
if not outcome.allowed:
    raise RuntimeError(outcome.reason)
"""

COST = """
from techrevati.runtime import (
    UsageTracker, UsageSnapshot, ModelPricing, register_pricing,
)

register_pricing("model-a", ModelPricing(input_per_million=3.0, output_per_million=15.0))

tracker = UsageTracker()
tracker.record_turn("model-a", UsageSnapshot(input_tokens=5000, output_tokens=1200))

print(tracker.format_cost())
print(tracker.per_model_summary())

if tracker.is_over_budget(budget_usd=10.0):
    raise RuntimeError("budget exceeded")
"""

BREAKER = """
from techrevati.runtime import CircuitBreaker, CircuitOpenError

cb = CircuitBreaker("downstream", failure_threshold=5, recovery_timeout_seconds=60.0)

try:
    result = cb.call(fetch, url, timeout=10)
except CircuitOpenError:
    result = fallback()
"""

POLICY = """
from techrevati.runtime import (
    PolicyEngine, PolicyRule, PolicyAction, PolicyActionData,
    PhaseContext, QualityLevel,
)
from techrevati.runtime.policy_engine import And, PhaseCompleted, QualityAt

rule = PolicyRule(
    name="advance-on-quality",
    condition=And([PhaseCompleted(), QualityAt(QualityLevel.STANDARD)]),
    actions=[PolicyActionData(PolicyAction.ADVANCE_PHASE)],
    priority=10,
)
engine = PolicyEngine([rule])

ctx = PhaseContext(
    phase="draft",
    quality_level=QualityLevel.STRICT,
    phase_completed=True,
    completed_roles={"writer"},
    all_roles={"writer"},
)
for action in engine.evaluate(ctx):
    print(action.action.value, action.params)
"""

GATE = """
from techrevati.runtime import QualityGate, QualityLevel

gate = QualityGate(QualityLevel.STRICT)
outcome = gate.evaluate(observed_level)
if outcome.satisfied:
    advance()
else:
    request_rework(outcome)
"""


@pytest.fixture(autouse=True)
def _empty_pricing() -> object:
    clear_pricing()
    yield None
    clear_pricing()


def _run(source: str, **helpers: object) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": "seed_example", **helpers}
    exec(compile(source, "seed-example", "exec"), namespace)
    return namespace


def test_orchestrator_example_completes_and_summarises(capsys: pytest.CaptureFixture[str]) -> None:
    ns = _run(ORCHESTRATOR, call_model=lambda prompt: f"echo {prompt}", prompt="hi")
    assert ns["result"] == "echo hi"
    session = ns["session"]
    summary = session.summary()  # type: ignore[attr-defined]
    json.dumps(summary)
    assert summary["outcome"] == "completed"
    assert summary["cost_usd"] == "0.033"
    assert session.status is AgentStatus.COMPLETED  # type: ignore[attr-defined]
    assert "'turns': 1" in capsys.readouterr().out


def test_orchestrator_example_fails_with_a_classified_error() -> None:
    def call_model(prompt: str) -> str:
        raise TimeoutError("model took too long")

    with pytest.raises(TimeoutError, match="model took too long"):
        _run(ORCHESTRATOR, call_model=call_model, prompt="hi")


def test_recovery_example_retries_a_rate_limit() -> None:
    calls: list[str] = []

    class RateLimitError(Exception):
        status_code = 429

    def call_model(prompt: str) -> str:
        calls.append(prompt)
        if len(calls) == 1:
            raise RateLimitError("slow down")
        return "ok"

    ns = _run(RECOVERY, call_model=call_model, prompt="p", notify_human=calls.append)
    assert ns["response"] == "ok"
    assert ns["result"].outcome == "recovered"  # type: ignore[attr-defined]


def test_recovery_example_escalates_an_auth_failure() -> None:
    told: list[str] = []

    class AuthenticationError(Exception):
        status_code = 401

    def call_model(prompt: str) -> str:
        raise AuthenticationError("bad key")

    ns = _run(RECOVERY, call_model=call_model, prompt="p", notify_human=told.append)
    assert ns["result"].outcome == "escalation_required"  # type: ignore[attr-defined]
    assert len(told) == 1
    assert told[0]


def test_lifecycle_example_records_each_transition(capsys: pytest.CaptureFixture[str]) -> None:
    ns = _run(LIFECYCLE)
    worker = ns["worker"]
    assert worker.status is AgentStatus.COMPLETED  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert "context_budget=8k" in out
    assert "observed=STRICT" in out


def test_permissions_example_allows_the_writer() -> None:
    ns = _run(PERMISSIONS)
    assert ns["outcome"].allowed  # type: ignore[attr-defined]
    enforcer = ns["enforcer"]
    assert not enforcer.check("writer", "dangerous_tool").allowed  # type: ignore[attr-defined]
    assert not enforcer.check("reader", "dangerous_tool").allowed  # type: ignore[attr-defined]
    assert not enforcer.check("stranger", "any_tool").allowed  # type: ignore[attr-defined]


def test_cost_example_prints_exact_cost(capsys: pytest.CaptureFixture[str]) -> None:
    ns = _run(COST)
    assert capsys.readouterr().out.splitlines()[0] == "$0.0330"
    assert ns["tracker"].total_cost() == Decimal("0.033")  # type: ignore[attr-defined]


def test_breaker_example_falls_back_when_open() -> None:
    def fetch(url: str, timeout: int) -> str:
        raise ConnectionError(url)

    from techrevati.runtime import CircuitBreaker

    cb_calls: list[int] = []

    def fallback() -> str:
        cb_calls.append(1)
        return "cached"

    ns = _run(BREAKER, fetch=lambda url, timeout: f"{url}:{timeout}", url="u", fallback=fallback)
    assert ns["result"] == "u:10"
    assert isinstance(ns["cb"], CircuitBreaker)
    # Open the breaker, then the same example takes the fallback path.
    ns2 = _run(
        BREAKER.replace(
            "try:",
            "for _ in range(5):\n    try:\n        cb.call(fetch, url, timeout=10)\n"
            "    except ConnectionError:\n        pass\n\ntry:",
            1,
        ),
        fetch=fetch,
        url="u",
        fallback=fallback,
    )
    assert ns2["result"] == "cached"
    assert cb_calls == [1]


def test_policy_example_advances(capsys: pytest.CaptureFixture[str]) -> None:
    _run(POLICY)
    assert capsys.readouterr().out.split()[0] == "advance_phase"


@pytest.mark.parametrize(
    ("observed", "advanced"),
    [(QualityLevel.RELEASE, True), (QualityLevel.STRICT, True), (QualityLevel.STANDARD, False)],
)
def test_quality_gate_example(observed: QualityLevel, advanced: bool) -> None:
    seen: list[object] = []
    _run(
        GATE,
        observed_level=observed,
        advance=lambda: seen.append("advance"),
        request_rework=seen.append,
    )
    assert (seen == ["advance"]) is advanced
