"""A session on a checkpointed thread: what the runtime saves after each step, and restores.

Private to :mod:`~techrevati.runtime.orchestrator`: ``orch.session(thread_id=...)``
with ``Orchestrator(checkpoints=saver)``. A *step* is what the caller commits
with ``session.checkpoint(state)``: the turns and tool calls since the last
checkpoint, and the caller's state after them. Its idempotency key is
``"{thread_id}/{step}"``: the same for the run that crashed and for its re-run,
so a tool can use it to make a side effect happen once.

The runtime's part of a checkpoint (:func:`runtime_state`) is a JSON object of
fixed size whatever the thread's length: the usage and cost per model and
service tier (the tracker's rows), the session cap's spend, the counts of
turns, tool calls, retries and failures, the governance meter's snapshot and
the memory. :func:`restore` puts them back into a fresh session, so the
restored figures are exactly those of the committed steps: a step that
crashed before its checkpoint is not counted, and is counted once when it
runs again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import AgentFailureClass
from techrevati.runtime.usage import UsageSnapshot

if TYPE_CHECKING:
    from techrevati.runtime._session_core import _SessionCore

__all__ = ["STATE_VERSION", "restore", "runtime_state", "turn_key"]

STATE_VERSION: Final = 1
"""The ``version`` of the runtime's part of a checkpoint."""

_COUNTS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
)


def turn_key(thread_id: str, step: int) -> str:
    """Return the idempotency key of step ``step`` of thread ``thread_id``."""
    return f"{thread_id}/{step}"


def runtime_state(session: _SessionCore) -> dict[str, object]:
    """Return what the session itself must keep across a crash, as a JSON object."""
    rows, _total = session.tracker._rows()
    usage = [
        {
            "model": name,
            "service_tier": tier,
            "counts": list(row[:6]),
            "femto": row[6],
            "turns": row[7],
            "unpriced_turns": row[8],
            "tier_unpriced_turns": row[9],
        }
        for name, _row, parts in rows
        for tier, row in parts
    ]
    with session._lock:
        counts: dict[str, object] = {
            "turns": session._turns,
            "turns_completed": session._turns_completed,
            "turns_without_usage": session._turns_without_usage,
            "tool_calls": session._tool_calls,
            "retries": session._retries,
            "budget_warnings": session._budget_warnings,
            "cap_spent_femto": session._cap_spent,
            "failures": dict(session._failures),
        }
    meter = session.governance
    memory = session.memory
    return {
        "version": STATE_VERSION,
        "usage": usage,
        **counts,
        "governance": None if meter is None else meter.snapshot(),
        "memory": None if memory is None else memory.to_dict(),
    }


def restore(session: _SessionCore, state: Mapping[str, Any]) -> None:
    """Put a checkpoint's runtime state back into ``session`` (a new one, not yet entered)."""
    if state.get("version") != STATE_VERSION:
        raise InvalidValueError(
            f"checkpoint runtime state of version {state.get('version')!r}; "
            f"this runtime reads version {STATE_VERSION}"
        )
    try:
        for row in state["usage"]:
            _restore_row(session, row)
        with session._lock:
            session._turns = int(state["turns"])
            session._turns_completed = int(state["turns_completed"])
            session._turns_without_usage = int(state["turns_without_usage"])
            session._tool_calls = int(state["tool_calls"])
            session._retries = int(state["retries"])
            session._budget_warnings = int(state["budget_warnings"])
            session._cap_spent = int(state["cap_spent_femto"])
            session._failures.update(
                {AgentFailureClass(k).value: int(v) for k, v in state["failures"].items()}
            )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidValueError(f"checkpoint runtime state is malformed: {exc!r}") from None
    _restore_governance(session, state.get("governance"))
    _restore_memory(session, state.get("memory"))


def _restore_row(session: _SessionCore, row: Mapping[str, Any]) -> None:
    """Add one model-and-tier row of the tracker back, at the cost it was charged then."""
    counts = dict(zip(_COUNTS, (int(n) for n in row["counts"]), strict=True))
    tier = row["service_tier"]
    session.tracker._restore_totals(
        str(row["model"]),
        UsageSnapshot(**counts, service_tier=None if tier is None else str(tier)),
        int(row["femto"]),
        turns=int(row["turns"]),
        unpriced_turns=int(row["unpriced_turns"]),
        tier_unpriced_turns=int(row["tier_unpriced_turns"]),
    )


def _restore_governance(session: _SessionCore, snapshot: object) -> None:
    meter = session.governance
    if meter is None or snapshot is None:
        return
    from techrevati.runtime.governance import GovernanceMeter  # noqa: PLC0415

    if not isinstance(snapshot, Mapping):
        raise InvalidValueError(f"checkpoint governance state must be an object, got {snapshot!r}")
    session.governance = GovernanceMeter.restore(
        snapshot, governance=meter.governance, clock=session._orch.clock
    )


def _restore_memory(session: _SessionCore, data: object) -> None:
    memory = session.memory
    if memory is None or data is None:
        return
    from techrevati.runtime.memory import ConversationMemory  # noqa: PLC0415

    if not isinstance(data, Mapping):
        raise InvalidValueError(f"checkpoint memory state must be an object, got {data!r}")
    restored = ConversationMemory.from_dict(data, counter=memory.counter)
    with memory._lock:  # the caller's own object takes the checkpoint's messages
        for name in ConversationMemory.__slots__:
            if name != "_lock":
                setattr(memory, name, getattr(restored, name))
