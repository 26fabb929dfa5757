"""Sessions on a checkpointed thread: after a crash no step is lost and none is paid twice.

The savers themselves are tested in tests/test_checkpoints.py; here a session
commits steps with ``session.checkpoint(state)``, and a new session on the
same thread goes on from the last one: the caller's state, the usage and
exact cost, the counts, the governance meter and the memory. A real child
process is killed with SIGKILL in the middle of a step; the resumed loop runs
that step once more and ends with exactly the cost of its steps.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from techrevati.runtime import Orchestrator, UsageSnapshot
from techrevati.runtime.checkpoints import InMemorySaver, SqliteSaver
from techrevati.runtime.errors import InvalidValueError, SessionStateError
from techrevati.runtime.events import EventName
from techrevati.runtime.governance import Governance, GovernanceBreachedError
from techrevati.runtime.memory import ConversationMemory

pytestmark = pytest.mark.usefixtures("priced_models")

USAGE = UsageSnapshot(1000, 100)  # on m: $0.0045
STEP_COST = Decimal("0.0045")
ROOT = Path(__file__).resolve().parents[1]


def orch(saver: Any, **kwargs: Any) -> Orchestrator:
    return Orchestrator("writer", "draft", checkpoints=saver, **kwargs)


def answer() -> str:
    return "ok"


def run_steps(session: Any, steps: int) -> None:
    """The caller's loop: one turn per step, the reply appended, then the step committed."""
    state = session.state or {"messages": [], "step": 0}
    for _ in range(steps):
        reply, _usage = session.run_turn(answer, model="m", usage=USAGE)
        state = {"messages": [*state["messages"], reply], "step": state["step"] + 1}
        session.checkpoint(state)


def test_a_new_session_on_the_thread_goes_on_from_its_last_checkpoint() -> None:
    saver = InMemorySaver()
    with orch(saver).session(thread_id="t") as first:
        assert first.state is None
        assert first.step == 0
        run_steps(first, 3)
        first.run_tool("search", answer)
    with orch(saver).session(thread_id="t") as second:
        assert second.state == {"messages": ["ok"] * 3, "step": 3}
        assert second.step == 3
        assert second.tracker.total_cost() == STEP_COST * 3
        assert second.tracker.turns == 3
        assert second.summary()["turns"] == 3
        assert second.summary()["tool_calls"] == 0  # the tool ran after the last checkpoint
        resumed = [e.data for e in second.events() if e.name == EventName.SESSION_RESUMED]
        assert resumed == [{"thread_id": "t", "step": 3, "rerun": "t/4"}]
        run_steps(second, 1)
    assert saver.latest("t").step == 4  # type: ignore[union-attr]
    saved = [e.data for e in second.events() if e.name == EventName.CHECKPOINT_SAVED]
    assert saved == [{"thread_id": "t", "step": 4, "turn_key": "t/4"}]


def test_a_step_that_crashed_runs_again_and_is_charged_once() -> None:
    saver = InMemorySaver()
    first = orch(saver).session(thread_id="t")
    first.__enter__()
    run_steps(first, 1)
    assert first.turn_key == "t/2"
    first.run_turn(answer, model="m", usage=USAGE)  # step 2 started... and the process died
    with orch(saver).session(thread_id="t") as second:
        assert second.step == 1
        assert second.turn_key == "t/2"  # the re-run has the key of the run that crashed
        assert second.tracker.total_cost() == STEP_COST  # the crashed step is not counted
        resumed = [e.data for e in second.events() if e.name == EventName.SESSION_RESUMED]
        assert resumed == [{"thread_id": "t", "step": 1, "rerun": "t/2"}]
        run_steps(second, 1)
        assert second.tracker.total_cost() == STEP_COST * 2


def test_a_thread_that_committed_everything_has_nothing_to_rerun() -> None:
    saver = InMemorySaver()
    with orch(saver).session(thread_id="t") as first:
        run_steps(first, 2)
    with orch(saver).session(thread_id="t") as second:
        resumed = [e.data for e in second.events() if e.name == EventName.SESSION_RESUMED]
    assert resumed == [{"thread_id": "t", "step": 2, "rerun": None}]
    with orch(saver).session(thread_id="other") as fresh:
        assert [e for e in fresh.events() if e.name == EventName.SESSION_RESUMED] == []


def test_the_governance_meter_and_the_session_cap_go_on_across_the_crash() -> None:
    saver = InMemorySaver()
    governance = Governance(max_turns=3)
    with orch(saver, governance=governance, budget_usd="1").session(thread_id="t") as first:
        run_steps(first, 2)
    with orch(saver, governance=governance, budget_usd="1").session(thread_id="t") as second:
        assert second.governance is not None
        assert second.governance.turns == 2
        assert second._cap_spent == 2 * 4_500_000_000_000  # femto-dollars of two steps
        run_steps(second, 1)
        with pytest.raises(GovernanceBreachedError):
            second.run_turn(answer, model="m", usage=USAGE)


def test_the_memory_is_restored_into_the_sessions_memory() -> None:
    saver = InMemorySaver()
    memory = ConversationMemory()
    with orch(saver).session(thread_id="t", memory=memory) as first:
        memory.append({"role": "system", "content": "Be terse."})
        memory.append({"role": "user", "content": "hi"})
        first.run_turn(answer, model="m", usage=USAGE)
        memory.append({"role": "assistant", "content": "ok"})
        first.checkpoint({"step": 1})
        memory.append({"role": "user", "content": "lost in the crash"})
    fresh = ConversationMemory()
    with orch(saver).session(thread_id="t", memory=fresh):
        assert [m["content"] for m in fresh.messages] == ["Be terse.", "hi", "ok"]
        assert fresh.token_estimate == ConversationMemory(messages=fresh.messages).token_estimate
        fresh.append({"role": "user", "content": "again"})  # still a working memory
    assert len(fresh) == 4


def test_bad_threads_and_states_are_refused_clearly() -> None:
    with pytest.raises(InvalidValueError, match="checkpoints="):
        Orchestrator("writer", "draft").session(thread_id="t")
    with pytest.raises(InvalidValueError, match="checkpoints must be a CheckpointSaver"):
        Orchestrator("writer", "draft", checkpoints={})  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="thread_id"):
        orch(InMemorySaver()).session(thread_id="")
    with Orchestrator("writer", "draft").session() as plain:
        with pytest.raises(SessionStateError, match="thread_id"):
            plain.checkpoint({})
        with pytest.raises(SessionStateError, match="thread_id"):
            _ = plain.turn_key
    saver = InMemorySaver()
    with orch(saver).session(thread_id="t") as session:
        with pytest.raises(InvalidValueError, match="set"):
            session.checkpoint({"seen": {1, 2}})
        assert session.step == 0
    assert saver.latest("t") is None  # nothing written


def test_async_sessions_checkpoint_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "threads.db"

    async def answer_async() -> str:
        return "ok"

    async def loop(steps: int) -> Any:
        with SqliteSaver(path) as saver:
            async with orch(saver).asession(thread_id="t") as session:
                for _ in range(steps):
                    await session.arun_turn(answer_async, model="m", usage=USAGE)
                    await session.acheckpoint({"step": session.step + 1})
            return session

    asyncio.run(loop(2))
    second = asyncio.run(loop(1))
    assert second.state == {"step": 3}
    assert second.tracker.total_cost() == STEP_COST * 3


_CHILD = textwrap.dedent(
    """
    import sys
    from techrevati.runtime import ModelPricing, Orchestrator, UsageSnapshot, register_pricing
    from techrevati.runtime.checkpoints import SqliteSaver

    register_pricing("m", ModelPricing(input_per_million="3", output_per_million="15"))
    path, stop_at = sys.argv[1], int(sys.argv[2])
    with SqliteSaver(path) as saver:
        orch = Orchestrator("writer", "draft", checkpoints=saver)
        with orch.session(thread_id="t") as session:
            state = session.state or {"messages": [], "step": 0}
            while state["step"] < 5:
                reply, _ = session.run_turn(
                    lambda: "ok", model="m", usage=UsageSnapshot(1000, 100)
                )
                state = {"messages": [*state["messages"], reply], "step": state["step"] + 1}
                if state["step"] == stop_at:
                    print("in step", stop_at, flush=True)
                    sys.stdin.readline()  # held here, mid-step, until killed
                session.checkpoint(state)
    print("done", flush=True)
    """
)


def test_kill_9_mid_step_then_resume_loses_no_step_and_charges_none_twice(
    tmp_path: Path,
) -> None:
    path = tmp_path / "threads.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), "4"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "in step 4"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    with SqliteSaver(path) as saver:
        with orch(saver).session(thread_id="t") as session:
            assert session.step == 3
            assert session.state == {"messages": ["ok"] * 3, "step": 3}
            assert session.tracker.total_cost() == STEP_COST * 3
            resumed = [e.data for e in session.events() if e.name == EventName.SESSION_RESUMED]
            assert resumed == [{"thread_id": "t", "step": 3, "rerun": "t/4"}]
            state = session.state
            while state["step"] < 5:
                reply, _ = session.run_turn(answer, model="m", usage=USAGE)
                state = {"messages": [*state["messages"], reply], "step": state["step"] + 1}
                session.checkpoint(state)
        assert session.tracker.total_cost() == STEP_COST * 5  # five steps, each charged once
        assert [c.step for c in saver.history("t", limit=None)] == [5, 4, 3, 2, 1]
        assert saver.latest("t").caller_state == {"messages": ["ok"] * 5, "step": 5}  # type: ignore[union-attr]
