"""Hooks: code that runs before and after every model and tool call of a session.

A hook may inspect a call, change it (return a replacement), or veto it by
raising :class:`GuardrailViolatedError` with a reason. Guardrails are hooks
that veto. Any other exception from a hook is also treated as a veto, never as
a crash of the runtime: the guarded call is not made, and the session reports
a :class:`GuardrailViolatedError` naming the hook and chaining the original.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, runtime_checkable

from techrevati.runtime.errors import GuardrailViolatedError, InvalidValueError

__all__ = [
    "HOOK_POINTS",
    "BaseHook",
    "GuardrailViolatedError",
    "Hook",
    "HookPoint",
    "ModelCall",
    "ToolCall",
]

HookPoint = Literal["before_model", "after_model", "before_tool", "after_tool"]

HOOK_POINTS: Final[tuple[HookPoint, ...]] = (
    "before_model",
    "after_model",
    "before_tool",
    "after_tool",
)


EventEmitter = Callable[[str, "str | None", Mapping[str, object]], None]
"""How a hook adds an event to its session: ``emit(name, detail, data)``; ``name`` is an
:class:`~techrevati.runtime.events.EventName` value (``"guardrail.fired"``)."""


@dataclass(frozen=True, slots=True)
class ModelCall:
    """What a model hook sees: the model about to be called and where in the session."""

    model: str
    turn: int
    attempt: int
    role: str
    phase: str
    session_id: str
    metadata: Mapping[str, object] = field(default_factory=dict)
    emit: EventEmitter | None = field(default=None, compare=False, repr=False)
    """Adds an event to the session's log and sinks: ``emit(name, detail, data)``."""


@dataclass(frozen=True, slots=True)
class ToolCall:
    """What a tool hook sees: the tool name and the arguments it will get."""

    name: str
    args: tuple[object, ...]
    kwargs: Mapping[str, object]
    role: str
    phase: str
    session_id: str
    emit: EventEmitter | None = field(default=None, compare=False, repr=False)
    """Adds an event to the session's log and sinks: ``emit(name, detail, data)``."""


@runtime_checkable
class Hook(Protocol):
    """The four points a hook can act at; subclass :class:`BaseHook` to override a few.

    ``before_*`` return a replacement call (or ``None`` to keep it); ``after_*``
    return a replacement result (or ``None`` to keep it). Raise
    :class:`GuardrailViolatedError` to veto.
    """

    def before_model(self, call: ModelCall) -> ModelCall | None:
        """Inspect, replace (e.g. pick another model) or veto a model call."""

    def after_model(self, call: ModelCall, result: object) -> object | None:
        """Inspect, replace or veto a model result (its usage is already recorded)."""

    def before_tool(self, call: ToolCall) -> ToolCall | None:
        """Inspect, replace (e.g. sanitise arguments) or veto a tool call."""

    def after_tool(self, call: ToolCall, result: object) -> object | None:
        """Inspect, replace or veto a tool result."""


class BaseHook:
    """A hook that does nothing; override only the points you need.

    The session skips points a hook does not override, so unused points cost
    nothing per call.
    """

    def before_model(self, call: ModelCall) -> ModelCall | None:
        """Keep the call."""
        return None

    def after_model(self, call: ModelCall, result: object) -> object | None:
        """Keep the result."""
        return None

    def before_tool(self, call: ToolCall) -> ToolCall | None:
        """Keep the call."""
        return None

    def after_tool(self, call: ToolCall, result: object) -> object | None:
        """Keep the result."""
        return None


def _checked_hooks(hooks: Iterable[object]) -> tuple[Any, ...]:
    """Return the hooks as a tuple; each must implement at least one hook point."""
    if isinstance(hooks, str | bytes) or not isinstance(hooks, Iterable):
        raise InvalidValueError(f"hooks must be an iterable of hook objects, got {hooks!r}")
    checked = tuple(hooks)
    for hook in checked:
        if not any(callable(getattr(hook, point, None)) for point in HOOK_POINTS):
            raise InvalidValueError(
                f"each hook must implement one of {', '.join(HOOK_POINTS)} "
                f"(subclass BaseHook), got {hook!r}"
            )
    return checked


def _hook_table(hooks: Sequence[object]) -> dict[str, tuple[Any, ...]]:
    """For each hook point, the hooks that really implement it (no-ops skipped)."""
    table: dict[str, tuple[Any, ...]] = {}
    for point in ("before_model", "after_model", "before_tool", "after_tool"):
        active = []
        for hook in hooks:
            method = getattr(type(hook), point, None)
            if method is None or method is getattr(BaseHook, point):
                continue
            active.append(hook)
        table[point] = tuple(active)
    return table
