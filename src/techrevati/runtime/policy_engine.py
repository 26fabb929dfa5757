"""Declarative rules that turn the facts of a phase into the actions to take next.

Reach for :class:`PolicyEngine` when "what now?" after a phase depends on
several facts at once (is the phase done, is the quality good enough, did an
agent fail, is the budget spent) and you want that decision written down as
small, named, testable rules instead of nested ``if`` statements. Each
:class:`PolicyRule` pairs a :class:`Condition` (built-ins combine with ``&``,
``|`` and ``~``) with the :class:`PolicyActionData` to return when it
matches; the engine checks every rule against an immutable
:class:`PhaseContext` and returns the flat list of actions, lower priority
first, for the caller to dispatch. :meth:`PolicyEngine.explain` says for
every rule whether it matched and why.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Final, Protocol, TypeVar, runtime_checkable

from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.events import AgentFailureClass
from techrevati.runtime.quality_gate import QualityLevel

__all__ = [
    "DEFAULT_RULE_PRIORITY",
    "AgentFailed",
    "AllAgentsComplete",
    "Always",
    "And",
    "BaseCondition",
    "Condition",
    "CostExceeded",
    "DuplicateRuleError",
    "GateBelow",
    "Never",
    "Not",
    "Or",
    "PhaseCompleted",
    "PhaseContext",
    "PolicyAction",
    "PolicyActionData",
    "PolicyEngine",
    "PolicyEvaluationError",
    "PolicyRule",
    "QualityAt",
    "RetryExhausted",
    "RuleExplanation",
    "TimedOut",
    "Verdict",
]

DEFAULT_RULE_PRIORITY: Final = 100
"""Priority of a :class:`PolicyRule` that names none (lower fires first)."""

_ZERO: Final = Decimal(0)
_LOG: Final = logging.getLogger(__name__)

_K = TypeVar("_K")
_V = TypeVar("_V")


# -- errors ---------------------------------------------------------------------


class DuplicateRuleError(TechrevatiError, ValueError):
    """Two rules given to one :class:`PolicyEngine` share a name; ``name`` is that name."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"rule names must be unique, got {name!r} twice")


class PolicyEvaluationError(TechrevatiError):
    """A rule's condition raised (or returned something other than a :class:`Verdict`).

    ``rule_name`` names the rule; the original exception is ``__cause__``,
    unchanged.
    """

    def __init__(self, rule_name: str, message: str) -> None:
        self.rule_name = rule_name
        super().__init__(f"policy rule {rule_name!r} could not be evaluated: {message}")


# -- values ---------------------------------------------------------------------


class PolicyAction(StrEnum):
    """What a matching rule asks the caller to do; the engine only returns it.

    Conventional ``params`` are in brackets; none is required.
    """

    ADVANCE_PHASE = "advance_phase"
    """Move on to the next phase (``to``: the phase)."""
    REWORK = "rework"
    """Send the work back to be redone in this phase (``role``, ``feedback``)."""
    RETRY_PHASE = "retry_phase"
    """Run this phase again from its start."""
    ESCALATE = "escalate"
    """Hand the decision to a human or a supervisor (``to``)."""
    ABORT = "abort"
    """Stop the run (``reason``)."""
    PAUSE = "pause"
    """Wait for input before going on (``prompt``)."""
    NOTIFY = "notify"
    """Tell someone without changing the flow (``channel``, ``message``)."""
    SKIP_ROLE = "skip_role"
    """Go on without a role's contribution (``role``)."""
    SWITCH_MODEL = "switch_model"
    """Use another model for the next turns (``model``)."""
    REDUCE_SCOPE = "reduce_scope"
    """Shrink the task: a smaller context, fewer items (``factor``)."""


class _FrozenMap(Mapping[_K, _V]):
    """A read-only copy of a mapping that prints like a dict and hashes when its values do."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[_K, _V]) -> None:
        self._data = data

    def __getitem__(self, key: _K) -> _V:
        return self._data[key]

    def __iter__(self) -> Iterator[_K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _FrozenMap):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)


@dataclass(frozen=True, slots=True, init=False)
class PolicyActionData:
    """One action to dispatch, with free-form ``params`` for the handler.

    ``action`` accepts a :class:`PolicyAction` or its value (``"escalate"``);
    ``params`` is copied into a read-only mapping with ``str`` keys (a
    shallow copy: mutable values stay mutable).
    """

    action: PolicyAction
    params: Mapping[str, object]

    def __init__(
        self, action: PolicyAction | str, params: Mapping[str, object] | None = None
    ) -> None:
        object.__setattr__(self, "action", _parse_action(action))
        object.__setattr__(self, "params", _frozen_str_map(params, "params"))

    def to_dict(self) -> dict[str, object]:
        """Return ``{"action": value, "params": {...}}`` (JSON-ready when the params are)."""
        return {"action": self.action.value, "params": dict(self.params)}


@dataclass(frozen=True, slots=True, init=False)
class PhaseContext:
    """The facts about one phase that rules are checked against; immutable.

    Role collections accept any iterable of names (a set, list, tuple) and are
    stored as ``frozenset``. ``failed_roles`` also accepts a mapping of role to
    :class:`~techrevati.runtime.events.AgentFailureClass` and is always stored
    as a read-only mapping (role to class, or ``None`` when no class was
    given). ``cost_usd`` accepts ``Decimal``, ``int``, ``str`` or ``float``
    (read through its ``repr``, so ``0.1`` is exactly ``Decimal("0.1")``) and
    must be finite and >= 0. Levels accept a
    :class:`~techrevati.runtime.quality_gate.QualityLevel`, its name or its
    number. ``failures`` counts failures by class; ``extra`` carries any other
    facts a custom condition needs.
    """

    phase: str
    quality_level: QualityLevel
    phase_completed: bool
    completed_roles: frozenset[str]
    all_roles: frozenset[str]
    failed_roles: Mapping[str, AgentFailureClass | None]
    retries_exhausted: bool
    timed_out: bool
    cost_usd: Decimal
    gate_required: QualityLevel | None
    failures: Mapping[AgentFailureClass, int]
    extra: Mapping[str, object]

    def __init__(
        self,
        phase: str,
        *,
        quality_level: QualityLevel | str | int = QualityLevel.MINIMAL,
        phase_completed: bool = False,
        completed_roles: Iterable[str] = frozenset(),
        all_roles: Iterable[str] = frozenset(),
        failed_roles: Iterable[str] | Mapping[str, AgentFailureClass | str | None] = frozenset(),
        retries_exhausted: bool = False,
        timed_out: bool = False,
        cost_usd: Decimal | int | float | str = _ZERO,
        gate_required: QualityLevel | str | int | None = None,
        failures: Mapping[AgentFailureClass, int] | Mapping[str, int] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        if not isinstance(phase, str) or not phase:
            raise InvalidValueError(f"phase must be a non-empty str, got {phase!r}")
        setattr_ = object.__setattr__
        setattr_(self, "phase", phase)
        setattr_(self, "quality_level", _parse_level(quality_level, "quality_level"))
        setattr_(self, "phase_completed", _require_bool(phase_completed, "phase_completed"))
        setattr_(
            self, "completed_roles", frozenset(_role_names(completed_roles, "completed_roles"))
        )
        setattr_(self, "all_roles", frozenset(_role_names(all_roles, "all_roles")))
        setattr_(self, "failed_roles", _failed_roles(failed_roles))
        setattr_(self, "retries_exhausted", _require_bool(retries_exhausted, "retries_exhausted"))
        setattr_(self, "timed_out", _require_bool(timed_out, "timed_out"))
        setattr_(self, "cost_usd", _to_usd(cost_usd, "cost_usd"))
        setattr_(
            self,
            "gate_required",
            None if gate_required is None else _parse_level(gate_required, "gate_required"),
        )
        setattr_(self, "failures", _failure_counts(failures))
        setattr_(self, "extra", _frozen_str_map(extra, "extra"))

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (levels by name, cost as a decimal string)."""
        return {
            "phase": self.phase,
            "quality_level": self.quality_level.name,
            "phase_completed": self.phase_completed,
            "completed_roles": sorted(self.completed_roles),
            "all_roles": sorted(self.all_roles),
            "failed_roles": {
                role: None if cls is None else cls.value
                for role, cls in sorted(self.failed_roles.items())
            },
            "retries_exhausted": self.retries_exhausted,
            "timed_out": self.timed_out,
            "cost_usd": str(self.cost_usd),
            "gate_required": None if self.gate_required is None else self.gate_required.name,
            "failures": {cls.value: count for cls, count in self.failures.items()},
            "extra": dict(self.extra),
        }


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a condition says about a context: ``matched``, and ``reason`` in words.

    Truthy when it matched, so ``if cond.check(ctx):`` reads naturally.
    """

    matched: bool
    reason: str

    def __post_init__(self) -> None:
        if self.matched is not True and self.matched is not False:
            raise InvalidValueError(f"matched must be a bool, got {self.matched!r}")
        if not isinstance(self.reason, str):
            raise InvalidValueError(f"reason must be a str, got {self.reason!r}")

    def __bool__(self) -> bool:
        return self.matched


# -- conditions -------------------------------------------------------------------


@runtime_checkable
class Condition(Protocol):
    """Anything with ``check(ctx) -> Verdict`` can be a rule's condition.

    Inherit :class:`BaseCondition` as well to get ``&``, ``|`` and ``~``.
    A condition must not change state it shares: the engine may call it from
    many threads at once.
    """

    def check(self, ctx: PhaseContext) -> Verdict:
        """Say whether ``ctx`` matches, and why."""
        ...


class BaseCondition(ABC):
    """Base of the built-in conditions, giving them the ``&``, ``|`` and ``~`` operators.

    ``a & b``, ``a | b`` and ``~a`` build :class:`And`, :class:`Or` and
    :class:`Not`. Subclass it for a custom condition and implement :meth:`check`; a
    condition that does not subclass it still works in ``And([...])``,
    ``Or([...])``, ``Not(...)`` and on either side of ``&``/``|`` with a built-in.
    """

    __slots__ = ()

    @abstractmethod
    def check(self, ctx: PhaseContext) -> Verdict:
        """Say whether ``ctx`` matches, and why."""

    def _matches(self, ctx: PhaseContext) -> bool:
        # The engine's fast path: just the answer, no reason. Built-ins override
        # it with the same test their check() makes; the default asks check().
        return _verdict_of(self, ctx).matched

    def __and__(self, other: Condition) -> And:
        if not _is_condition(other):
            return NotImplemented
        return And((self, other))

    def __rand__(self, other: Condition) -> And:
        if not _is_condition(other):
            return NotImplemented
        return And((other, self))

    def __or__(self, other: Condition) -> Or:
        if not _is_condition(other):
            return NotImplemented
        return Or((self, other))

    def __ror__(self, other: Condition) -> Or:
        if not _is_condition(other):
            return NotImplemented
        return Or((other, self))

    def __invert__(self) -> BaseCondition:
        return Not(self)


@dataclass(frozen=True, slots=True, init=False, repr=False)
class And(BaseCondition):
    """Matches when every condition matches; stops at the first that does not.

    Nested ``And``s are flattened. The reason of a miss names the condition
    that failed and says why; at least one condition is required.
    """

    conditions: tuple[Condition, ...]
    _labels: tuple[str, ...] = field(init=False, compare=False)
    _fast: tuple[BaseCondition, ...] = field(init=False, compare=False)

    def __init__(self, conditions: Iterable[Condition]) -> None:
        flat = _flatten(conditions, And, "And")
        object.__setattr__(self, "conditions", flat)
        object.__setattr__(self, "_labels", tuple(_label(c) for c in flat))
        object.__setattr__(self, "_fast", tuple(_fast(c) for c in flat))

    def check(self, ctx: PhaseContext) -> Verdict:
        """Match when all sub-conditions match (like :func:`all`, short-circuiting)."""
        reasons = []
        for cond, label in zip(self.conditions, self._labels, strict=True):
            verdict = _verdict_of(cond, ctx)
            if not verdict.matched:
                return Verdict(False, f"{label} did not match: {verdict.reason}")
            reasons.append(verdict.reason)
        return Verdict(True, "all matched: " + "; ".join(reasons))

    def _matches(self, ctx: PhaseContext) -> bool:
        # A plain loop: all() over a generator costs an allocation per call.
        for cond in self._fast:  # noqa: SIM110
            if not cond._matches(ctx):
                return False
        return True

    def __repr__(self) -> str:
        return f"And({', '.join(self._labels)})"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Or(BaseCondition):
    """Matches when any condition matches; stops at the first that does.

    Nested ``Or``s are flattened. The reason of a miss gives every
    condition's reason; at least one condition is required.
    """

    conditions: tuple[Condition, ...]
    _labels: tuple[str, ...] = field(init=False, compare=False)
    _fast: tuple[BaseCondition, ...] = field(init=False, compare=False)

    def __init__(self, conditions: Iterable[Condition]) -> None:
        flat = _flatten(conditions, Or, "Or")
        object.__setattr__(self, "conditions", flat)
        object.__setattr__(self, "_labels", tuple(_label(c) for c in flat))
        object.__setattr__(self, "_fast", tuple(_fast(c) for c in flat))

    def check(self, ctx: PhaseContext) -> Verdict:
        """Match when any sub-condition matches (like :func:`any`, short-circuiting)."""
        misses = []
        for cond, label in zip(self.conditions, self._labels, strict=True):
            verdict = _verdict_of(cond, ctx)
            if verdict.matched:
                return Verdict(True, f"{label} matched: {verdict.reason}")
            misses.append(f"{label}: {verdict.reason}")
        return Verdict(False, "none matched: " + "; ".join(misses))

    def _matches(self, ctx: PhaseContext) -> bool:
        for cond in self._fast:  # noqa: SIM110 (see And._matches)
            if cond._matches(ctx):
                return True
        return False

    def __repr__(self) -> str:
        return f"Or({', '.join(self._labels)})"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Not(BaseCondition):
    """Matches when ``condition`` does not; the reason is the inner one (it says why).

    ``~Not(c)`` gives back ``c`` itself when ``c`` inherits :class:`BaseCondition`.
    """

    condition: Condition
    _name: str = field(init=False, compare=False)
    _fast: BaseCondition = field(init=False, compare=False)

    def __init__(self, condition: Condition) -> None:
        if not isinstance(condition, Condition):
            raise InvalidValueError(
                f"Not needs a condition (an object with check(ctx)), got {condition!r}"
            )
        object.__setattr__(self, "condition", condition)
        object.__setattr__(self, "_name", _label(condition))
        object.__setattr__(self, "_fast", _fast(condition))

    def check(self, ctx: PhaseContext) -> Verdict:
        """Invert the inner verdict, keeping its reason."""
        verdict = _verdict_of(self.condition, ctx)
        return Verdict(not verdict.matched, verdict.reason)

    def _matches(self, ctx: PhaseContext) -> bool:
        return not self._fast._matches(ctx)

    def __invert__(self) -> BaseCondition:
        inner = self.condition
        return inner if isinstance(inner, BaseCondition) else Not(Not(inner))

    def __repr__(self) -> str:
        return f"Not({self._name})"


@dataclass(frozen=True, slots=True, repr=False)
class PhaseCompleted(BaseCondition):
    """Matches when ``ctx.phase_completed`` is true."""

    def check(self, ctx: PhaseContext) -> Verdict:
        """Match a completed phase."""
        if ctx.phase_completed:
            return Verdict(True, f"phase {ctx.phase!r} is completed")
        return Verdict(False, f"phase {ctx.phase!r} is not completed")

    def _matches(self, ctx: PhaseContext) -> bool:
        return ctx.phase_completed

    def __repr__(self) -> str:
        return "PhaseCompleted()"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class QualityAt(BaseCondition):
    """Matches when the observed ``ctx.quality_level`` is at or above ``level``."""

    level: QualityLevel

    def __init__(self, level: QualityLevel | str | int) -> None:
        object.__setattr__(self, "level", _parse_level(level, "level"))

    def check(self, ctx: PhaseContext) -> Verdict:
        """Match ``ctx.quality_level >= level``."""
        observed = ctx.quality_level
        if observed >= self.level:
            return Verdict(True, f"quality {observed.name} is at or above {self.level.name}")
        return Verdict(False, f"quality {observed.name} is below {self.level.name}")

    def _matches(self, ctx: PhaseContext) -> bool:
        return ctx.quality_level >= self.level

    def __repr__(self) -> str:
        return f"QualityAt({self.level.name})"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class GateBelow(BaseCondition):
    """Matches when the observed quality is below ``level`` (default: ``ctx.gate_required``).

    With no ``level`` and no ``ctx.gate_required`` there is no gate to fall
    short of, so it does not match (and says so).
    """

    level: QualityLevel | None

    def __init__(self, level: QualityLevel | str | int | None = None) -> None:
        object.__setattr__(self, "level", None if level is None else _parse_level(level, "level"))

    def check(self, ctx: PhaseContext) -> Verdict:
        """Match ``ctx.quality_level < (level or ctx.gate_required)``."""
        required = self.level if self.level is not None else ctx.gate_required
        observed = ctx.quality_level
        if required is None:
            return Verdict(False, "no gate to compare with: no level given and no gate_required")
        if observed < required:
            return Verdict(True, f"quality {observed.name} is below the gate {required.name}")
        return Verdict(False, f"quality {observed.name} meets the gate {required.name}")

    def _matches(self, ctx: PhaseContext) -> bool:
        required = self.level if self.level is not None else ctx.gate_required
        return required is not None and ctx.quality_level < required

    def __repr__(self) -> str:
        return "GateBelow()" if self.level is None else f"GateBelow({self.level.name})"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class AgentFailed(BaseCondition):
    """Matches when an agent failed, optionally of one ``failure_class`` and/or ``role``.

    - neither: any role in ``ctx.failed_roles`` or any count in ``ctx.failures``;
    - ``failure_class`` only: a count of that class, or a failed role recorded
      with that class;
    - ``role`` only: that role is in ``ctx.failed_roles``;
    - both: that role failed and was recorded with that class.
    """

    failure_class: AgentFailureClass | None
    role: str | None

    def __init__(
        self,
        failure_class: AgentFailureClass | str | None = None,
        role: str | None = None,
    ) -> None:
        if role is not None and (not isinstance(role, str) or not role):
            raise InvalidValueError(f"role must be a non-empty str or None, got {role!r}")
        cls = (
            None if failure_class is None else _parse_failure_class(failure_class, "failure_class")
        )
        object.__setattr__(self, "failure_class", cls)
        object.__setattr__(self, "role", role)

    def check(self, ctx: PhaseContext) -> Verdict:
        """Match the failures the context records."""
        cls, role = self.failure_class, self.role
        if role is not None:
            return _role_failed(ctx, role, cls)
        if cls is not None:
            count = ctx.failures.get(cls, 0)
            if count > 0:
                return Verdict(True, f"{count} failure(s) of class {cls.value}")
            roles = sorted(r for r, c in ctx.failed_roles.items() if c is cls)
            if roles:
                return Verdict(True, f"role(s) {', '.join(roles)} failed with {cls.value}")
            return Verdict(False, f"no failure of class {cls.value}")
        total = sum(ctx.failures.values())
        if total > 0:
            return Verdict(True, f"{total} failure(s) recorded")
        if ctx.failed_roles:
            return Verdict(True, f"role(s) {', '.join(sorted(ctx.failed_roles))} failed")
        return Verdict(False, "no agent failed")

    def _matches(self, ctx: PhaseContext) -> bool:
        cls, role = self.failure_class, self.role
        failed = ctx.failed_roles
        if role is not None:
            return role in failed and (cls is None or failed[role] is cls)
        if cls is not None:
            return ctx.failures.get(cls, 0) > 0 or cls in failed.values()
        return bool(failed) or any(count > 0 for count in ctx.failures.values())

    def __repr__(self) -> str:
        parts = []
        if self.failure_class is not None:
            parts.append(f"failure_class={self.failure_class.value!r}")
        if self.role is not None:
            parts.append(f"role={self.role!r}")
        return f"AgentFailed({', '.join(parts)})"


@dataclass(frozen=True, slots=True, repr=False)
class RetryExhausted(BaseCondition):
    """Matches when ``ctx.retries_exhausted`` is true."""

    def check(self, ctx: PhaseContext) -> Verdict:
        """Match exhausted retries."""
        if ctx.retries_exhausted:
            return Verdict(True, "retries are exhausted")
        return Verdict(False, "retries are not exhausted")

    def _matches(self, ctx: PhaseContext) -> bool:
        return ctx.retries_exhausted

    def __repr__(self) -> str:
        return "RetryExhausted()"


@dataclass(frozen=True, slots=True, repr=False)
class TimedOut(BaseCondition):
    """Matches when ``ctx.timed_out`` is true."""

    def check(self, ctx: PhaseContext) -> Verdict:
        """Match a phase that timed out."""
        if ctx.timed_out:
            return Verdict(True, f"phase {ctx.phase!r} timed out")
        return Verdict(False, f"phase {ctx.phase!r} did not time out")

    def _matches(self, ctx: PhaseContext) -> bool:
        return ctx.timed_out

    def __repr__(self) -> str:
        return "TimedOut()"


@dataclass(frozen=True, slots=True, repr=False)
class AllAgentsComplete(BaseCondition):
    """Matches when ``ctx.all_roles`` is non-empty and every one is in ``completed_roles``.

    An empty ``all_roles`` means nobody was expected, which is not "all done":
    it does not match.
    """

    def check(self, ctx: PhaseContext) -> Verdict:
        """Match when no expected role is still pending."""
        expected = ctx.all_roles
        if not expected:
            return Verdict(False, "no roles are expected (all_roles is empty)")
        pending = expected - ctx.completed_roles
        if pending:
            return Verdict(False, f"waiting on role(s): {', '.join(sorted(pending))}")
        return Verdict(True, f"all {len(expected)} role(s) completed")

    def _matches(self, ctx: PhaseContext) -> bool:
        return bool(ctx.all_roles) and ctx.all_roles <= ctx.completed_roles

    def __repr__(self) -> str:
        return "AllAgentsComplete()"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class CostExceeded(BaseCondition):
    """Matches when ``ctx.cost_usd`` is strictly greater than ``usd`` (exact decimals).

    ``usd`` accepts what :class:`PhaseContext`'s ``cost_usd`` does.
    """

    usd: Decimal

    def __init__(self, usd: Decimal | int | float | str) -> None:
        object.__setattr__(self, "usd", _to_usd(usd, "usd"))

    def check(self, ctx: PhaseContext) -> Verdict:
        """Match ``ctx.cost_usd > usd``."""
        if ctx.cost_usd > self.usd:
            return Verdict(True, f"cost {ctx.cost_usd} USD exceeds {self.usd} USD")
        return Verdict(False, f"cost {ctx.cost_usd} USD is within {self.usd} USD")

    def _matches(self, ctx: PhaseContext) -> bool:
        return ctx.cost_usd > self.usd

    def __repr__(self) -> str:
        return f"CostExceeded({self.usd})"


_ALWAYS: Final = Verdict(True, "always matches")
_NEVER: Final = Verdict(False, "never matches")


@dataclass(frozen=True, slots=True, repr=False)
class Always(BaseCondition):
    """Matches every context (a catch-all or default rule)."""

    def check(self, ctx: PhaseContext) -> Verdict:
        """Match."""
        return _ALWAYS

    def _matches(self, ctx: PhaseContext) -> bool:
        return True

    def __repr__(self) -> str:
        return "Always()"


@dataclass(frozen=True, slots=True, repr=False)
class Never(BaseCondition):
    """Matches no context (switch a rule off without deleting it)."""

    def check(self, ctx: PhaseContext) -> Verdict:
        """Do not match."""
        return _NEVER

    def _matches(self, ctx: PhaseContext) -> bool:
        return False

    def __repr__(self) -> str:
        return "Never()"


class _ViaCheck(BaseCondition):
    """Adapts a condition that does not inherit :class:`BaseCondition` to the fast path."""

    __slots__ = ("condition",)

    def __init__(self, condition: Condition) -> None:
        self.condition = condition

    def check(self, ctx: PhaseContext) -> Verdict:
        return _verdict_of(self.condition, ctx)


# -- rules and the engine ----------------------------------------------------------


@dataclass(frozen=True, slots=True, init=False)
class PolicyRule:
    """A named condition and the actions to return when it matches.

    ``name`` must be a non-empty str, unique within an engine (it is what the
    logs show). ``actions`` is any non-empty iterable of
    :class:`PolicyActionData` (a bare :class:`PolicyAction` is wrapped), stored
    as a tuple. Lower ``priority`` fires first; equal priorities keep the
    order the rules were given in.
    """

    name: str
    condition: Condition
    actions: tuple[PolicyActionData, ...]
    priority: int

    def __init__(
        self,
        name: str,
        condition: Condition,
        actions: Iterable[PolicyActionData | PolicyAction],
        priority: int = DEFAULT_RULE_PRIORITY,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise InvalidValueError(f"name must be a non-empty str, got {name!r}")
        if not isinstance(condition, Condition):
            raise InvalidValueError(
                f"condition of rule {name!r} must have a check(ctx) method, got {condition!r}"
            )
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InvalidValueError(f"priority of rule {name!r} must be an int, got {priority!r}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "condition", condition)
        object.__setattr__(self, "actions", _actions(actions, name))
        object.__setattr__(self, "priority", priority)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (the condition as its description)."""
        return {
            "name": self.name,
            "priority": self.priority,
            "condition": _label(self.condition),
            "actions": [action.to_dict() for action in self.actions],
        }


@dataclass(frozen=True, slots=True)
class RuleExplanation:
    """Whether one rule matched a context, and why (from :meth:`PolicyEngine.explain`)."""

    rule: PolicyRule
    matched: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict for a structured log line."""
        return {
            "rule": self.rule.name,
            "priority": self.rule.priority,
            "matched": self.matched,
            "reason": self.reason,
            "actions": [action.action.value for action in self.rule.actions],
        }

    def __str__(self) -> str:
        mark = "matched" if self.matched else "skipped"
        return f"{mark} {self.rule.name} (priority {self.rule.priority}): {self.reason}"


class PolicyEngine:
    """Checks every rule against a :class:`PhaseContext` and returns what to do.

    Rules are sorted once, at construction, by priority (lower first; ties
    keep the given order). The engine never changes after that, so one
    instance is safe to share between threads as long as the conditions keep
    no mutable state (the built-ins keep none). Evaluation is plain CPU work
    with no I/O, so there is no async twin: call it from async code directly.
    """

    __slots__ = ("_plan", "_rules")

    def __init__(self, rules: Iterable[PolicyRule]) -> None:
        if isinstance(rules, PolicyRule) or not isinstance(rules, Iterable):
            raise InvalidValueError(f"rules must be an iterable of PolicyRule, got {rules!r}")
        given = list(rules)
        seen: set[str] = set()
        for rule in given:
            if not isinstance(rule, PolicyRule):
                raise InvalidValueError(f"rules must hold PolicyRule objects, got {rule!r}")
            if rule.name in seen:
                raise DuplicateRuleError(rule.name)
            seen.add(rule.name)
        given.sort(key=_priority)
        self._rules: tuple[PolicyRule, ...] = tuple(given)
        # Each rule with the bound fast test of its condition: evaluate() needs
        # only the answers; reasons are built by explain() (and for DEBUG logs).
        self._plan: tuple[tuple[PolicyRule, Callable[[PhaseContext], bool]], ...] = tuple(
            (rule, _fast(rule.condition)._matches) for rule in given
        )

    @property
    def rules(self) -> tuple[PolicyRule, ...]:
        """The rules in firing order."""
        return self._rules

    def evaluate(self, ctx: PhaseContext) -> list[PolicyActionData]:
        """Return the actions of every matching rule, in firing order.

        Built-in conditions answer without building reasons; with DEBUG
        logging on, each matching rule is logged by name with its reason. A
        condition that raises surfaces as :class:`PolicyEvaluationError`
        naming the rule.
        """
        _require_context(ctx)
        debug = _LOG.isEnabledFor(logging.DEBUG)
        actions: list[PolicyActionData] = []
        for rule, matches in self._plan:
            try:
                matched = matches(ctx)
            except Exception as exc:
                raise _evaluation_error(rule, exc) from exc
            if matched:
                if debug:
                    _LOG.debug(
                        "policy rule %s matched in phase %s: %s",
                        rule.name,
                        ctx.phase,
                        _check_rule(rule, ctx).reason,
                    )
                actions.extend(rule.actions)
        return actions

    def explain(self, ctx: PhaseContext) -> list[RuleExplanation]:
        """Say for every rule, in firing order, whether it matched ``ctx`` and why."""
        _require_context(ctx)
        explanations = []
        for rule in self._rules:
            verdict = _check_rule(rule, ctx)
            explanations.append(RuleExplanation(rule, verdict.matched, verdict.reason))
        return explanations

    def matching_rules(self, ctx: PhaseContext) -> list[PolicyRule]:
        """Return the rules that match ``ctx``, in firing order."""
        _require_context(ctx)
        matching = []
        for rule, matches in self._plan:
            try:
                matched = matches(ctx)
            except Exception as exc:
                raise _evaluation_error(rule, exc) from exc
            if matched:
                matching.append(rule)
        return matching

    def __repr__(self) -> str:
        names = ", ".join(rule.name for rule in self._rules)
        return f"PolicyEngine([{names}])"


# -- helpers -----------------------------------------------------------------------


def _priority(rule: PolicyRule) -> int:
    return rule.priority


def _require_context(ctx: object) -> None:
    if not isinstance(ctx, PhaseContext):
        raise InvalidValueError(f"ctx must be a PhaseContext, got {ctx!r}")


def _check_rule(rule: PolicyRule, ctx: PhaseContext) -> Verdict:
    """Run one rule's condition, naming the rule if it raises or answers wrongly."""
    try:
        return _verdict_of(rule.condition, ctx)
    except Exception as exc:
        raise _evaluation_error(rule, exc) from exc


def _evaluation_error(rule: PolicyRule, exc: Exception) -> PolicyEvaluationError:
    return PolicyEvaluationError(rule.name, f"{type(exc).__name__}: {exc}")


def _verdict_of(cond: Condition, ctx: PhaseContext) -> Verdict:
    verdict = cond.check(ctx)
    if not isinstance(verdict, Verdict):
        raise TypeError(f"{_label(cond)}.check returned {verdict!r}, expected a Verdict")
    return verdict


def _fast(cond: Condition) -> BaseCondition:
    """Return the object whose ``_matches`` answers for ``cond`` on the engine's fast path."""
    return cond if isinstance(cond, BaseCondition) else _ViaCheck(cond)


def _role_failed(ctx: PhaseContext, role: str, cls: AgentFailureClass | None) -> Verdict:
    if role not in ctx.failed_roles:
        return Verdict(False, f"role {role!r} has not failed")
    if cls is None:
        return Verdict(True, f"role {role!r} failed")
    recorded = ctx.failed_roles[role]
    if recorded is cls:
        return Verdict(True, f"role {role!r} failed with {cls.value}")
    got = "no recorded class" if recorded is None else recorded.value
    return Verdict(False, f"role {role!r} failed with {got}, not {cls.value}")


def _is_condition(value: object) -> bool:
    """Whether ``value`` has a ``check`` method (no narrowing: for typed operands)."""
    return isinstance(value, Condition)


def _label(cond: object) -> str:
    """How a condition is named in reasons: its repr, or its class name for the default repr."""
    if type(cond).__repr__ is object.__repr__:
        return type(cond).__name__
    return repr(cond)


def _flatten(conditions: object, kind: type[And] | type[Or], name: str) -> tuple[Condition, ...]:
    if isinstance(conditions, (str, bytes)) or not isinstance(conditions, Iterable):
        raise InvalidValueError(f"{name} needs an iterable of conditions, got {conditions!r}")
    flat: list[Condition] = []
    for cond in conditions:
        if not isinstance(cond, Condition):
            raise InvalidValueError(
                f"{name} needs conditions (objects with check(ctx)), got {cond!r}"
            )
        if type(cond) is kind and isinstance(cond, (And, Or)):
            flat.extend(cond.conditions)
        else:
            flat.append(cond)
    if not flat:
        raise InvalidValueError(f"{name} needs at least one condition, got none")
    return tuple(flat)


def _actions(
    actions: Iterable[PolicyActionData | PolicyAction], rule: str
) -> tuple[PolicyActionData, ...]:
    if isinstance(actions, (str, PolicyActionData)) or not isinstance(actions, Iterable):
        raise InvalidValueError(
            f"actions of rule {rule!r} must be a list of PolicyActionData, got {actions!r}"
        )
    result: list[PolicyActionData] = []
    for action in actions:
        if isinstance(action, PolicyAction):
            result.append(PolicyActionData(action))
        elif isinstance(action, PolicyActionData):
            result.append(action)
        else:
            raise InvalidValueError(
                f"actions of rule {rule!r} must hold PolicyActionData, got {action!r}"
            )
    if not result:
        raise InvalidValueError(f"actions of rule {rule!r} must not be empty")
    return tuple(result)


def _parse_action(value: object) -> PolicyAction:
    if isinstance(value, PolicyAction):
        return value
    if isinstance(value, str):
        try:
            return PolicyAction(value.strip().lower())
        except ValueError:
            pass
    known = ", ".join(a.value for a in PolicyAction)
    raise InvalidValueError(f"unknown policy action {value!r}; expected one of {known}")


def _parse_level(value: object, name: str) -> QualityLevel:
    if isinstance(value, QualityLevel):
        return value
    if isinstance(value, (str, int)):
        try:
            return QualityLevel.parse(value)
        except InvalidValueError as exc:
            raise InvalidValueError(f"{name}: {exc}") from None
    raise InvalidValueError(f"{name} must be a QualityLevel or its name, got {value!r}")


def _parse_failure_class(value: object, name: str) -> AgentFailureClass:
    if isinstance(value, AgentFailureClass):
        return value
    if isinstance(value, str):
        key = value.strip()
        try:
            return AgentFailureClass(key.lower())
        except ValueError:
            pass
    known = ", ".join(c.value for c in AgentFailureClass)
    raise InvalidValueError(f"{name} must be an AgentFailureClass ({known}), got {value!r}")


def _require_bool(value: object, name: str) -> bool:
    if value is not True and value is not False:
        raise InvalidValueError(f"{name} must be a bool, got {value!r}")
    return value


def _to_usd(value: object, name: str) -> Decimal:
    """Convert an amount of dollars exactly; reject bool, NaN, infinities and negatives."""
    amount: Decimal
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, bool):
        raise InvalidValueError(f"{name} must be a number of USD, got {value!r}")
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise InvalidValueError(f"{name} must be a decimal number, got {value!r}") from None
    else:
        raise InvalidValueError(f"{name} must be a Decimal, int, float or str, got {value!r}")
    if not amount.is_finite() or amount < 0:
        raise InvalidValueError(f"{name} must be finite and >= 0, got {value!r}")
    return amount


def _role_names(value: object, name: str) -> Iterator[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidValueError(
            f"{name} must be a collection of role names (a set or list), got {value!r}"
        )
    for role in value:
        if not isinstance(role, str) or not role:
            raise InvalidValueError(f"{name} must hold non-empty str role names, got {role!r}")
        yield role


def _failed_roles(value: object) -> Mapping[str, AgentFailureClass | None]:
    if isinstance(value, Mapping):
        result: dict[str, AgentFailureClass | None] = {}
        for role, cls in value.items():
            if not isinstance(role, str) or not role:
                raise InvalidValueError(
                    f"failed_roles must have non-empty str role names, got {role!r}"
                )
            result[role] = None if cls is None else _parse_failure_class(cls, "failed_roles")
        return _FrozenMap(result)
    return _FrozenMap(dict.fromkeys(_role_names(value, "failed_roles")))


def _failure_counts(value: object) -> Mapping[AgentFailureClass, int]:
    if value is None:
        return _FrozenMap({})
    if not isinstance(value, Mapping):
        raise InvalidValueError(
            f"failures must be a mapping of AgentFailureClass to count, got {value!r}"
        )
    counts: dict[AgentFailureClass, int] = {}
    for key, count in value.items():
        cls = _parse_failure_class(key, "failures key")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidValueError(f"failures[{cls.value}] must be an int >= 0, got {count!r}")
        if cls in counts:
            raise InvalidValueError(f"failures names {cls.value} twice")
        counts[cls] = count
    return _FrozenMap(counts)


def _frozen_str_map(value: object, name: str) -> Mapping[str, object]:
    if value is None:
        return _FrozenMap({})
    if not isinstance(value, Mapping):
        raise InvalidValueError(f"{name} must be a mapping with str keys, got {value!r}")
    data: dict[str, object] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidValueError(f"{name} keys must be str, got {key!r}")
        data[key] = item
    return _FrozenMap(data)
