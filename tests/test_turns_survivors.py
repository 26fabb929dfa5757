"""The turn engine and sessions: behaviours a mutation run of the turns group showed no test pinned.

What a resumed conversation's input and a handoff record on the workers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from techrevati.runtime import Orchestrator
from techrevati.runtime.lifecycle import AgentRegistry, AgentStatus

WHEN = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_the_input_given_is_the_detail_of_the_workers_return_to_running() -> None:
    with Orchestrator("writer", "draft").session() as session:
        session.pause_for_input("which tone?")
        session.provide_input("formal")
        assert session.worker is not None
        last = session.worker.events[-1]
    assert (last.status, last.detail) == (AgentStatus.RUNNING, "formal")


def test_no_input_text_leaves_the_return_to_running_without_detail() -> None:
    with Orchestrator("writer", "draft").session() as session:
        session.pause_for_input("anything else?")
        session.provide_input()
        assert session.worker is not None
        assert session.worker.events[-1].detail is None


def test_a_handoff_registers_the_next_worker_in_the_same_project_at_the_wall_clock() -> None:
    registry = AgentRegistry()
    orch = Orchestrator(
        "writer", "draft", project_id=42, registry=registry, wall_clock=lambda: WHEN
    )
    with orch.session() as session:
        handoff = session.handoff_to("reviewer", "draft ready")
    target = registry.get(handoff.to_worker_id)
    assert (target.project_id, target.phase) == (42, "draft")
    assert handoff.timestamp == WHEN
