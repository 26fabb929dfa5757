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
every rule whether it matched and why. The conditions live in
:mod:`~techrevati.runtime.conditions` and are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from techrevati.runtime._log import get_logger
from techrevati.runtime._phase_context import PhaseContext, frozen_str_map
from techrevati.runtime._validate import non_empty_str
from techrevati.runtime.conditions import (
    AgentFailed,
    AllAgentsComplete,
    Always,
    And,
    BaseCondition,
    Condition,
    CostExceeded,
    GateBelow,
    Never,
    Not,
    Or,
    PhaseCompleted,
    QualityAt,
    RetryExhausted,
    TimedOut,
    Verdict,
    _fast_test,
    _label,
    _verdict_of,
)
from techrevati.runtime.errors import InvalidValueError, TechrevatiError

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

_LOG: Final = get_logger(__name__)


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
        object.__setattr__(self, "params", frozen_str_map(params, "params"))

    def to_dict(self) -> dict[str, object]:
        """Return ``{"action": value, "params": {...}}`` (JSON-ready when the params are)."""
        return {"action": self.action.value, "params": dict(self.params)}


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
        non_empty_str("name", name)
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
            (rule, _fast_test(rule.condition)) for rule in given
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
        debug = _LOG.isEnabledFor(logging.DEBUG)
        actions: list[PolicyActionData] = []
        for rule in self._matching(ctx):
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
        return list(self._matching(ctx))

    def _matching(self, ctx: PhaseContext) -> Iterator[PolicyRule]:
        """Yield each rule whose condition holds for ``ctx``; a raising one names its rule."""
        _require_context(ctx)
        for rule, matches in self._plan:
            try:
                matched = matches(ctx)
            except Exception as exc:
                raise _evaluation_error(rule, exc) from exc
            if matched:
                yield rule

    def __repr__(self) -> str:
        names = ", ".join(rule.name for rule in self._rules)
        return f"PolicyEngine([{names}])"


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
