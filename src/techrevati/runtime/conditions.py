"""The conditions a policy rule checks a phase against: the built-in facts and their combinators.

Reach for these to say *when* a :class:`~techrevati.runtime.policy_engine.PolicyRule`
fires. :class:`PhaseCompleted`, :class:`QualityAt`, :class:`GateBelow`,
:class:`AgentFailed`, :class:`RetryExhausted`, :class:`TimedOut`,
:class:`AllAgentsComplete`, :class:`CostExceeded`, :class:`Always` and
:class:`Never` each read a fact of a
:class:`~techrevati.runtime.policy_engine.PhaseContext`; :class:`And`,
:class:`Or` and :class:`Not` (also ``&``, ``|``, ``~``) combine them; anything
with ``check(ctx) -> Verdict`` is a condition too. Each built-in writes its
test once, in ``_matches`` (the engine's fast path, which builds no reason),
and its ``check`` explains that answer. Every name here is re-exported from
:mod:`~techrevati.runtime.policy_engine` and ``techrevati.runtime``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import ClassVar, Protocol, TypeAlias, runtime_checkable

from techrevati.runtime._money import MoneyInput, _to_decimal
from techrevati.runtime._phase_context import (
    PhaseContext,
    parse_failure_class,
    parse_level,
)
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import AgentFailureClass
from techrevati.runtime.quality_gate import QualityLevel

__all__ = [
    "AgentFailed",
    "AllAgentsComplete",
    "Always",
    "And",
    "BaseCondition",
    "Condition",
    "CostExceeded",
    "GateBelow",
    "Never",
    "Not",
    "Or",
    "PhaseCompleted",
    "QualityAt",
    "RetryExhausted",
    "TimedOut",
    "Verdict",
]

_Test: TypeAlias = Callable[[PhaseContext], bool]
"""A condition's fast test: the answer alone, no reason."""


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
        # The engine's fast path: just the answer, no reason. The built-ins
        # write their test here and build check() on it; the default asks check().
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


class _Fact(BaseCondition):
    """A built-in that reads the context: the test in ``_matches``, the words in ``_why``."""

    __slots__ = ()

    def check(self, ctx: PhaseContext) -> Verdict:
        """Say whether ``ctx`` matches (the fast path's answer), and why."""
        matched = self._matches(ctx)
        return Verdict(matched, self._why(ctx, matched))

    @abstractmethod
    def _matches(self, ctx: PhaseContext) -> bool: ...

    @abstractmethod
    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        """Explain ``matched``, the answer ``_matches`` gave for ``ctx``."""

    def __repr__(self) -> str:
        # Facts with arguments override this.
        return f"{type(self).__name__}()"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class _Junction(BaseCondition):
    """:class:`And` and :class:`Or`: the conditions in order, up to the first decisive answer.

    A subclass says which answer is decisive (``_stop``, also the result) and
    the words of its reasons; the result without one is ``not _stop``. It also
    writes the fast scan (``_matches``) with that answer as a literal: on the
    engine's hot path, comparing each answer with ``_stop`` costs ~10 ns a call.
    """

    conditions: tuple[Condition, ...]
    _labels: tuple[str, ...] = field(init=False, compare=False)
    _tests: tuple[_Test, ...] = field(init=False, compare=False)

    _stop: ClassVar[bool]
    """The answer that ends the scan and is the result (``False`` for And, ``True`` for Or)."""
    _summary: ClassVar[str]
    """What comes before the listed reasons when no condition answered ``_stop``."""

    def __init__(self, conditions: Iterable[Condition]) -> None:
        flat = _flatten(conditions, type(self))
        object.__setattr__(self, "conditions", flat)
        object.__setattr__(self, "_labels", tuple(_label(c) for c in flat))
        object.__setattr__(self, "_tests", tuple(_fast_test(c) for c in flat))

    def check(self, ctx: PhaseContext) -> Verdict:
        """Ask each condition in turn; the first decisive one decides, and says why."""
        stop = self._stop
        parts = []
        for cond, label in zip(self.conditions, self._labels, strict=True):
            verdict = _verdict_of(cond, ctx)
            if verdict.matched is stop:
                return Verdict(stop, self._decisive(label, verdict.reason))
            parts.append(self._part(label, verdict.reason))
        return Verdict(not stop, self._summary + "; ".join(parts))

    @staticmethod
    @abstractmethod
    def _decisive(label: str, reason: str) -> str:
        """Say why the scan stopped at the condition named ``label``."""

    @staticmethod
    @abstractmethod
    def _part(label: str, reason: str) -> str:
        """List the reason of a condition that did not decide."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._labels)})"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class And(_Junction):
    """Matches when every condition matches; stops at the first that does not.

    Nested ``And``s are flattened. The reason of a miss names the condition
    that failed and says why; at least one condition is required.
    """

    _stop = False
    _summary = "all matched: "

    def _matches(self, ctx: PhaseContext) -> bool:
        # A plain loop: all() over a generator costs an allocation per call.
        for test in self._tests:  # noqa: SIM110
            if not test(ctx):
                return False
        return True

    @staticmethod
    def _decisive(label: str, reason: str) -> str:
        return f"{label} did not match: {reason}"

    @staticmethod
    def _part(label: str, reason: str) -> str:
        return reason


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Or(_Junction):
    """Matches when any condition matches; stops at the first that does.

    Nested ``Or``s are flattened. The reason of a miss gives every
    condition's reason; at least one condition is required.
    """

    _stop = True
    _summary = "none matched: "

    def _matches(self, ctx: PhaseContext) -> bool:
        for test in self._tests:  # noqa: SIM110 (see And._matches)
            if test(ctx):
                return True
        return False

    @staticmethod
    def _decisive(label: str, reason: str) -> str:
        return f"{label} matched: {reason}"

    @staticmethod
    def _part(label: str, reason: str) -> str:
        return f"{label}: {reason}"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Not(BaseCondition):
    """Matches when ``condition`` does not; the reason is the inner one (it says why).

    ``~Not(c)`` gives back ``c`` itself when ``c`` inherits :class:`BaseCondition`.
    """

    condition: Condition
    _name: str = field(init=False, compare=False)
    _test: _Test = field(init=False, compare=False)

    def __init__(self, condition: Condition) -> None:
        if not isinstance(condition, Condition):
            raise InvalidValueError(
                f"Not needs a condition (an object with check(ctx)), got {condition!r}"
            )
        object.__setattr__(self, "condition", condition)
        object.__setattr__(self, "_name", _label(condition))
        object.__setattr__(self, "_test", _fast_test(condition))

    def check(self, ctx: PhaseContext) -> Verdict:
        """Invert the inner verdict, keeping its reason."""
        verdict = _verdict_of(self.condition, ctx)
        return Verdict(not verdict.matched, verdict.reason)

    def _matches(self, ctx: PhaseContext) -> bool:
        return not self._test(ctx)

    def __invert__(self) -> BaseCondition:
        inner = self.condition
        return inner if isinstance(inner, BaseCondition) else Not(Not(inner))

    def __repr__(self) -> str:
        return f"Not({self._name})"


@dataclass(frozen=True, slots=True, repr=False)
class PhaseCompleted(_Fact):
    """Matches when ``ctx.phase_completed`` is true."""

    def _matches(self, ctx: PhaseContext) -> bool:
        return ctx.phase_completed

    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        return f"phase {ctx.phase!r} is {'' if matched else 'not '}completed"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class QualityAt(_Fact):
    """Matches when the observed ``ctx.quality_level`` is at or above ``level``."""

    level: QualityLevel

    def __init__(self, level: QualityLevel | str | int) -> None:
        object.__setattr__(self, "level", parse_level(level, "level"))

    def _matches(self, ctx: PhaseContext) -> bool:
        return ctx.quality_level >= self.level

    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        where = "at or above" if matched else "below"
        return f"quality {ctx.quality_level.name} is {where} {self.level.name}"

    def __repr__(self) -> str:
        return f"QualityAt({self.level.name})"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class GateBelow(_Fact):
    """Matches when the observed quality is below ``level`` (default: ``ctx.gate_required``).

    With no ``level`` and no ``ctx.gate_required`` there is no gate to fall
    short of, so it does not match (and says so).
    """

    level: QualityLevel | None

    def __init__(self, level: QualityLevel | str | int | None = None) -> None:
        object.__setattr__(self, "level", None if level is None else parse_level(level, "level"))

    def _matches(self, ctx: PhaseContext) -> bool:
        required = self.level if self.level is not None else ctx.gate_required
        return required is not None and ctx.quality_level < required

    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        required = self.level if self.level is not None else ctx.gate_required
        if required is None:
            return "no gate to compare with: no level given and no gate_required"
        verb = "is below" if matched else "meets"
        return f"quality {ctx.quality_level.name} {verb} the gate {required.name}"

    def __repr__(self) -> str:
        return "GateBelow()" if self.level is None else f"GateBelow({self.level.name})"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class AgentFailed(_Fact):
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
        cls = None if failure_class is None else parse_failure_class(failure_class, "failure_class")
        object.__setattr__(self, "failure_class", cls)
        object.__setattr__(self, "role", role)

    def _matches(self, ctx: PhaseContext) -> bool:
        cls, role = self.failure_class, self.role
        failed = ctx.failed_roles
        if role is not None:
            return role in failed and (cls is None or failed[role] is cls)
        if cls is not None:
            return ctx.failures.get(cls, 0) > 0 or cls in failed.values()
        return bool(failed) or any(count > 0 for count in ctx.failures.values())

    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        cls, role = self.failure_class, self.role
        if role is not None:
            return self._why_role(ctx, role, matched)
        if cls is None:
            return self._why_any(ctx, matched)
        if not matched:
            return f"no failure of class {cls.value}"
        count = ctx.failures.get(cls, 0)
        if count > 0:
            return f"{count} failure(s) of class {cls.value}"
        roles = sorted(r for r, c in ctx.failed_roles.items() if c is cls)
        return f"role(s) {', '.join(roles)} failed with {cls.value}"

    @staticmethod
    def _why_any(ctx: PhaseContext, matched: bool) -> str:
        if not matched:
            return "no agent failed"
        total = sum(ctx.failures.values())
        if total > 0:
            return f"{total} failure(s) recorded"
        return f"role(s) {', '.join(sorted(ctx.failed_roles))} failed"

    def _why_role(self, ctx: PhaseContext, role: str, matched: bool) -> str:
        cls = self.failure_class
        if role not in ctx.failed_roles:
            return f"role {role!r} has not failed"
        if cls is None:
            return f"role {role!r} failed"
        if matched:
            return f"role {role!r} failed with {cls.value}"
        recorded = ctx.failed_roles[role]
        got = "no recorded class" if recorded is None else recorded.value
        return f"role {role!r} failed with {got}, not {cls.value}"

    def __repr__(self) -> str:
        parts = []
        if self.failure_class is not None:
            parts.append(f"failure_class={self.failure_class.value!r}")
        if self.role is not None:
            parts.append(f"role={self.role!r}")
        return f"AgentFailed({', '.join(parts)})"


@dataclass(frozen=True, slots=True, repr=False)
class RetryExhausted(_Fact):
    """Matches when ``ctx.retries_exhausted`` is true."""

    def _matches(self, ctx: PhaseContext) -> bool:
        return ctx.retries_exhausted

    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        return f"retries are {'' if matched else 'not '}exhausted"


@dataclass(frozen=True, slots=True, repr=False)
class TimedOut(_Fact):
    """Matches when ``ctx.timed_out`` is true."""

    def _matches(self, ctx: PhaseContext) -> bool:
        return ctx.timed_out

    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        return f"phase {ctx.phase!r} {'timed out' if matched else 'did not time out'}"


@dataclass(frozen=True, slots=True, repr=False)
class AllAgentsComplete(_Fact):
    """Matches when ``ctx.all_roles`` is non-empty and every one is in ``completed_roles``.

    An empty ``all_roles`` means nobody was expected, which is not "all done":
    it does not match.
    """

    def _matches(self, ctx: PhaseContext) -> bool:
        return bool(ctx.all_roles) and ctx.all_roles <= ctx.completed_roles

    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        expected = ctx.all_roles
        if matched:
            return f"all {len(expected)} role(s) completed"
        if not expected:
            return "no roles are expected (all_roles is empty)"
        pending = expected - ctx.completed_roles
        return f"waiting on role(s): {', '.join(sorted(pending))}"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class CostExceeded(_Fact):
    """Matches when ``ctx.cost_usd`` is strictly greater than ``usd`` (exact decimals).

    ``usd`` accepts what :class:`~techrevati.runtime.policy_engine.PhaseContext`'s
    ``cost_usd`` does.
    """

    usd: Decimal

    def __init__(self, usd: MoneyInput) -> None:
        object.__setattr__(self, "usd", _to_decimal(usd, "usd"))

    def _matches(self, ctx: PhaseContext) -> bool:
        return ctx.cost_usd > self.usd

    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        return f"cost {ctx.cost_usd} USD {'exceeds' if matched else 'is within'} {self.usd} USD"

    def __repr__(self) -> str:
        return f"CostExceeded({self.usd})"


class _Constant(BaseCondition):
    """:class:`Always` and :class:`Never`: one verdict, whatever the context."""

    __slots__ = ()

    _verdict: ClassVar[Verdict]

    def check(self, ctx: PhaseContext) -> Verdict:
        """Give the one verdict."""
        return self._verdict

    def _matches(self, ctx: PhaseContext) -> bool:
        return self._verdict.matched

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass(frozen=True, slots=True, repr=False)
class Always(_Constant):
    """Matches every context (a catch-all or default rule)."""

    _verdict = Verdict(True, "always matches")


@dataclass(frozen=True, slots=True, repr=False)
class Never(_Constant):
    """Matches no context (switch a rule off without deleting it)."""

    _verdict = Verdict(False, "never matches")


class _ViaCheck(BaseCondition):
    """Adapts a condition that does not inherit :class:`BaseCondition` to the fast path."""

    __slots__ = ("condition",)

    def __init__(self, condition: Condition) -> None:
        self.condition = condition

    def check(self, ctx: PhaseContext) -> Verdict:
        return _verdict_of(self.condition, ctx)


def _verdict_of(cond: Condition, ctx: PhaseContext) -> Verdict:
    """Ask ``cond``, insisting on a :class:`Verdict` (a bare bool is a ``TypeError``)."""
    verdict = cond.check(ctx)
    if not isinstance(verdict, Verdict):
        raise TypeError(f"{_label(cond)}.check returned {verdict!r}, expected a Verdict")
    return verdict


def _fast_test(cond: Condition) -> _Test:
    """Return the bound ``_matches`` that answers for ``cond`` on the engine's fast path."""
    return (cond if isinstance(cond, BaseCondition) else _ViaCheck(cond))._matches


def _flatten(conditions: object, kind: type[_Junction]) -> tuple[Condition, ...]:
    """Check the conditions of an ``And`` or ``Or``, splicing in nested ones of the same kind."""
    name = kind.__name__
    if isinstance(conditions, (str, bytes)) or not isinstance(conditions, Iterable):
        raise InvalidValueError(f"{name} needs an iterable of conditions, got {conditions!r}")
    flat: list[Condition] = []
    for cond in conditions:
        if not isinstance(cond, Condition):
            raise InvalidValueError(
                f"{name} needs conditions (objects with check(ctx)), got {cond!r}"
            )
        if isinstance(cond, kind) and type(cond) is kind:
            flat.extend(cond.conditions)
        else:
            flat.append(cond)
    if not flat:
        raise InvalidValueError(f"{name} needs at least one condition, got none")
    return tuple(flat)


def _is_condition(value: object) -> bool:
    """Whether ``value`` has a ``check`` method (no narrowing: for typed operands)."""
    return isinstance(value, Condition)


def _label(cond: object) -> str:
    """How a condition is named in reasons: its repr, or its class name for the default repr."""
    if type(cond).__repr__ is object.__repr__:
        return type(cond).__name__
    return repr(cond)
