"""The conditions one by one, their composition, their reasons, and their algebra."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati import runtime
from techrevati.runtime import conditions as conditions_module
from techrevati.runtime import policy_engine
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
)
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import AgentFailureClass
from techrevati.runtime.policy_engine import (
    PhaseContext,
    PolicyAction,
    PolicyActionData,
    PolicyEngine,
    PolicyRule,
)
from techrevati.runtime.quality_gate import QualityLevel
from tests.conftest import examples

HYPOTHESIS = settings(max_examples=examples(150))


def ctx_of(**facts: object) -> PhaseContext:
    return PhaseContext("draft", **facts)  # type: ignore[arg-type]


def notify(name: str) -> list[PolicyActionData]:
    """The actions of a test rule: one NOTIFY naming the rule."""
    return [PolicyActionData(PolicyAction.NOTIFY, {"rule": name})]


class InReview:
    """A user condition that implements only the one protocol method."""

    def check(self, ctx: PhaseContext) -> Verdict:
        return Verdict(ctx.phase == "review", f"phase is {ctx.phase!r}")


class Flagged(BaseCondition):
    """A user condition that inherits the operators."""

    __slots__ = ()

    def check(self, ctx: PhaseContext) -> Verdict:
        flagged = ctx.extra.get("flagged") is True
        return Verdict(flagged, "flagged" if flagged else "not flagged")


class Counting(BaseCondition):
    """Counts its calls, to prove short-circuiting."""

    def __init__(self, answer: bool) -> None:
        self.answer = answer
        self.calls = 0

    def check(self, ctx: PhaseContext) -> Verdict:
        self.calls += 1
        return Verdict(self.answer, "counted")


def test_conditions_are_re_exported_from_policy_engine_and_the_package() -> None:
    for name in conditions_module.__all__:
        assert getattr(policy_engine, name) is getattr(conditions_module, name), name
        assert getattr(runtime, name) is getattr(conditions_module, name), name
        assert name in policy_engine.__all__, name


CASES: list[tuple[Condition, dict[str, object], bool, str]] = [
    (PhaseCompleted(), {"phase_completed": True}, True, "phase 'draft' is completed"),
    (PhaseCompleted(), {}, False, "phase 'draft' is not completed"),
    (
        QualityAt(QualityLevel.STANDARD),
        {"quality_level": QualityLevel.STANDARD},
        True,
        "quality STANDARD is at or above STANDARD",
    ),
    (
        QualityAt("strict"),
        {"quality_level": QualityLevel.STANDARD},
        False,
        "quality STANDARD is below STRICT",
    ),
    (
        GateBelow(QualityLevel.STRICT),
        {"quality_level": QualityLevel.STANDARD},
        True,
        "quality STANDARD is below the gate STRICT",
    ),
    (
        GateBelow(QualityLevel.STRICT),
        {"quality_level": QualityLevel.STRICT},
        False,
        "quality STRICT meets the gate STRICT",
    ),
    (
        GateBelow(),
        {"quality_level": QualityLevel.MINIMAL, "gate_required": QualityLevel.STANDARD},
        True,
        "quality MINIMAL is below the gate STANDARD",
    ),
    (
        GateBelow(),
        {"quality_level": QualityLevel.RELEASE, "gate_required": QualityLevel.STANDARD},
        False,
        "quality RELEASE meets the gate STANDARD",
    ),
    (
        GateBelow(),
        {},
        False,
        "no gate to compare with: no level given and no gate_required",
    ),
    (AgentFailed(), {}, False, "no agent failed"),
    (AgentFailed(), {"failed_roles": {"writer"}}, True, "role(s) writer failed"),
    (
        AgentFailed(),
        {"failures": {AgentFailureClass.RATE_LIMIT: 2}},
        True,
        "2 failure(s) recorded",
    ),
    (AgentFailed(), {"failures": {AgentFailureClass.RATE_LIMIT: 0}}, False, "no agent failed"),
    (
        AgentFailed("rate_limit"),
        {"failures": {AgentFailureClass.RATE_LIMIT: 3}},
        True,
        "3 failure(s) of class rate_limit",
    ),
    (
        AgentFailed(AgentFailureClass.RATE_LIMIT),
        {"failures": {AgentFailureClass.LLM_TIMEOUT: 1}},
        False,
        "no failure of class rate_limit",
    ),
    (
        AgentFailed(AgentFailureClass.RATE_LIMIT),
        {"failed_roles": {"writer": AgentFailureClass.RATE_LIMIT}},
        True,
        "role(s) writer failed with rate_limit",
    ),
    (AgentFailed(role="writer"), {"failed_roles": ["writer"]}, True, "role 'writer' failed"),
    (
        AgentFailed(role="writer"),
        {"failed_roles": ["reviewer"]},
        False,
        "role 'writer' has not failed",
    ),
    (
        AgentFailed(AgentFailureClass.TOOL_ERROR, role="writer"),
        {"failed_roles": {"writer": "tool_error"}},
        True,
        "role 'writer' failed with tool_error",
    ),
    (
        AgentFailed(AgentFailureClass.TOOL_ERROR, role="writer"),
        {"failed_roles": {"writer": "rate_limit"}},
        False,
        "role 'writer' failed with rate_limit, not tool_error",
    ),
    (
        AgentFailed(AgentFailureClass.TOOL_ERROR, role="writer"),
        {"failed_roles": ["writer"]},
        False,
        "role 'writer' failed with no recorded class, not tool_error",
    ),
    (RetryExhausted(), {"retries_exhausted": True}, True, "retries are exhausted"),
    (RetryExhausted(), {}, False, "retries are not exhausted"),
    (TimedOut(), {"timed_out": True}, True, "phase 'draft' timed out"),
    (TimedOut(), {}, False, "phase 'draft' did not time out"),
    (
        AllAgentsComplete(),
        {"all_roles": {"a", "b"}, "completed_roles": {"a", "b", "c"}},
        True,
        "all 2 role(s) completed",
    ),
    (
        AllAgentsComplete(),
        {"all_roles": {"a", "b", "c"}, "completed_roles": {"b"}},
        False,
        "waiting on role(s): a, c",
    ),
    (
        AllAgentsComplete(),
        {"completed_roles": {"a"}},
        False,
        "no roles are expected (all_roles is empty)",
    ),
    (
        CostExceeded("0.30"),
        {"cost_usd": Decimal("0.30000000000000001")},
        True,
        "cost 0.30000000000000001 USD exceeds 0.30 USD",
    ),
    (CostExceeded(0.3), {"cost_usd": 0.3}, False, "cost 0.3 USD is within 0.3 USD"),
    (CostExceeded(1), {"cost_usd": "0.99"}, False, "cost 0.99 USD is within 1 USD"),
    (Always(), {}, True, "always matches"),
    (Never(), {"phase_completed": True}, False, "never matches"),
]


@pytest.mark.parametrize(
    ("condition", "facts", "matched", "reason"),
    CASES,
    ids=[f"{c!r}-{i}" for i, (c, *_) in enumerate(CASES)],
)
def test_builtin_condition_matches_and_says_why(
    condition: Condition, facts: dict[str, object], matched: bool, reason: str
) -> None:
    ctx = ctx_of(**facts)
    verdict = condition.check(ctx)
    assert verdict == Verdict(matched, reason)
    assert bool(verdict) is matched
    # The engine's fast path (no reasons) gives the same answer.
    engine = PolicyEngine([PolicyRule("r", condition, notify("r"))])
    assert bool(engine.evaluate(ctx)) is matched
    negated = PolicyEngine([PolicyRule("r", Not(condition), notify("r"))])
    assert bool(negated.evaluate(ctx)) is not matched


def test_conditions_validate_their_arguments() -> None:
    with pytest.raises(InvalidValueError, match="level"):
        QualityAt("superb")
    with pytest.raises(InvalidValueError, match="level"):
        GateBelow("superb")
    with pytest.raises(InvalidValueError, match="failure_class"):
        AgentFailed("gremlins")
    with pytest.raises(InvalidValueError, match="role must be a non-empty str or None, got ''"):
        AgentFailed(role="")
    with pytest.raises(InvalidValueError, match="usd must be finite and >= 0, got -1"):
        CostExceeded(-1)
    with pytest.raises(InvalidValueError, match="usd"):
        CostExceeded(float("nan"))


def test_conditions_have_readable_reprs_and_compare_by_value() -> None:
    assert repr(QualityAt(QualityLevel.STANDARD)) == "QualityAt(STANDARD)"
    assert repr(GateBelow()) == "GateBelow()"
    assert (
        repr(AgentFailed("rate_limit", role="w"))
        == "AgentFailed(failure_class='rate_limit', role='w')"
    )
    assert repr(CostExceeded("2.50")) == "CostExceeded(2.50)"
    assert repr(~TimedOut()) == "Not(TimedOut())"
    assert QualityAt("standard") == QualityAt(QualityLevel.STANDARD)
    assert hash(PhaseCompleted() & TimedOut()) == hash(And([PhaseCompleted(), TimedOut()]))


def test_verdict_requires_a_bool_and_a_str() -> None:
    with pytest.raises(InvalidValueError, match="matched must be a bool, got 1"):
        Verdict(1, "x")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="reason must be a str"):
        Verdict(True, None)  # type: ignore[arg-type]


def test_operators_build_and_or_not() -> None:
    a, b, c = PhaseCompleted(), TimedOut(), RetryExhausted()
    assert a & b == And([a, b])
    assert a | b == Or([a, b])
    assert ~a == Not(a)
    assert (a & b) & c == And([a, b, c])
    assert a & (b & c) == And([a, b, c])
    assert (a | b) | c == Or([a, b, c])
    assert (a & b) | c == Or([And([a, b]), c])
    assert And([And([a, b]), Or([b, c])]) == And([a, b, Or([b, c])])


def test_double_negation_gives_the_condition_back() -> None:
    condition = PhaseCompleted()
    assert ~~condition is condition
    assert Not(Not(condition)).check(ctx_of(phase_completed=True)).matched


def test_and_or_accept_any_iterable() -> None:
    conditions = (c for c in [PhaseCompleted(), TimedOut()])
    assert And(conditions).conditions == (PhaseCompleted(), TimedOut())
    assert Or(iter([Always()])).check(ctx_of()).matched


@pytest.mark.parametrize("kind", [And, Or])
def test_and_or_reject_empty_and_non_conditions(kind: type[And] | type[Or]) -> None:
    name = kind.__name__
    with pytest.raises(InvalidValueError, match=f"{name} needs at least one condition"):
        kind([])
    with pytest.raises(InvalidValueError, match=f"{name} needs conditions"):
        kind([PhaseCompleted(), "phase_completed"])  # type: ignore[list-item]
    with pytest.raises(InvalidValueError, match=f"{name} needs an iterable"):
        kind(PhaseCompleted())  # type: ignore[arg-type]


def test_not_rejects_a_non_condition() -> None:
    with pytest.raises(InvalidValueError, match="Not needs a condition"):
        Not(True)  # type: ignore[arg-type]


def test_operators_refuse_non_conditions() -> None:
    with pytest.raises(TypeError):
        PhaseCompleted() & True  # type: ignore[operator]
    with pytest.raises(TypeError):
        3 | TimedOut()  # type: ignore[operator]


def test_user_condition_without_the_base_combines_with_builtins() -> None:
    in_review = InReview()
    left = in_review & PhaseCompleted()
    right = PhaseCompleted() | in_review
    assert left == And([in_review, PhaseCompleted()])
    assert right == Or([PhaseCompleted(), in_review])
    ctx = PhaseContext("review", phase_completed=True)
    assert left.check(ctx).matched
    assert not left.check(dataclasses.replace(ctx, phase="draft")).matched


def test_user_condition_with_the_base_gets_the_operators() -> None:
    condition = Flagged() & ~TimedOut()
    assert isinstance(condition, And)
    assert condition.check(ctx_of(extra={"flagged": True})).matched
    assert not condition.check(ctx_of(extra={"flagged": True}, timed_out=True)).matched
    assert (~Flagged()).check(ctx_of()).matched


def test_base_condition_without_check_cannot_be_made() -> None:
    class Forgetful(BaseCondition):
        pass

    with pytest.raises(TypeError):
        Forgetful()  # type: ignore[abstract]


def test_and_short_circuits_at_the_first_miss() -> None:
    first, second = Counting(False), Counting(True)
    assert not And([first, second]).check(ctx_of()).matched
    assert (first.calls, second.calls) == (1, 0)


def test_or_short_circuits_at_the_first_match() -> None:
    first, second = Counting(True), Counting(False)
    assert Or([first, second]).check(ctx_of()).matched
    assert (first.calls, second.calls) == (1, 0)


def test_failed_and_names_the_failing_sub_condition_and_why() -> None:
    condition = And([PhaseCompleted(), QualityAt(QualityLevel.STANDARD)])
    verdict = condition.check(ctx_of(phase_completed=True))
    assert verdict == Verdict(
        False, "QualityAt(STANDARD) did not match: quality MINIMAL is below STANDARD"
    )


def test_matched_and_gives_every_reason() -> None:
    verdict = (PhaseCompleted() & RetryExhausted()).check(
        ctx_of(phase_completed=True, retries_exhausted=True)
    )
    assert verdict.reason == "all matched: phase 'draft' is completed; retries are exhausted"


def test_failed_or_gives_every_reason() -> None:
    verdict = (TimedOut() | CostExceeded(5)).check(ctx_of(cost_usd="1"))
    assert verdict == Verdict(
        False,
        "none matched: TimedOut(): phase 'draft' did not time out; "
        "CostExceeded(5): cost 1 USD is within 5 USD",
    )


def test_matched_or_names_the_matching_sub_condition() -> None:
    verdict = (TimedOut() | RetryExhausted()).check(ctx_of(retries_exhausted=True))
    assert verdict.reason == "RetryExhausted() matched: retries are exhausted"


def test_not_keeps_the_inner_reason() -> None:
    verdict = (PhaseCompleted() & ~TimedOut()).check(ctx_of(phase_completed=True, timed_out=True))
    assert verdict.reason == "Not(TimedOut()) did not match: phase 'draft' timed out"


def test_nested_reason_leads_to_the_innermost_failure() -> None:
    condition = PhaseCompleted() & (AllAgentsComplete() | Flagged())
    verdict = condition.check(ctx_of(phase_completed=True, all_roles={"a", "b"}))
    assert not verdict.matched
    assert verdict.reason.startswith("Or(AllAgentsComplete(), Flagged) did not match:")
    assert "waiting on role(s): a, b" in verdict.reason
    assert "Flagged: not flagged" in verdict.reason


def test_user_condition_with_default_repr_is_named_by_class() -> None:
    verdict = (PhaseCompleted() & InReview()).check(ctx_of(phase_completed=True))
    assert verdict.reason == "InReview did not match: phase is 'draft'"


def test_engine_takes_a_custom_condition_with_one_method() -> None:
    engine = PolicyEngine([PolicyRule("review", InReview(), notify("review"))])
    assert engine.evaluate(PhaseContext("review")) == [
        PolicyActionData(PolicyAction.NOTIFY, {"rule": "review"})
    ]
    assert engine.evaluate(PhaseContext("draft")) == []
    assert isinstance(InReview(), Condition)


ROLES = ["writer", "reviewer", "editor"]
LEVELS = list(QualityLevel)

contexts = st.builds(
    PhaseContext,
    phase=st.sampled_from(["draft", "review"]),
    quality_level=st.sampled_from(LEVELS),
    phase_completed=st.booleans(),
    completed_roles=st.frozensets(st.sampled_from(ROLES)),
    all_roles=st.frozensets(st.sampled_from(ROLES)),
    failed_roles=st.one_of(
        st.frozensets(st.sampled_from(ROLES)),
        st.dictionaries(
            st.sampled_from(ROLES),
            st.sampled_from([None, AgentFailureClass.RATE_LIMIT, AgentFailureClass.TOOL_ERROR]),
        ),
    ),
    retries_exhausted=st.booleans(),
    timed_out=st.booleans(),
    cost_usd=st.decimals(min_value=0, max_value=5, places=2),
    gate_required=st.one_of(st.none(), st.sampled_from(LEVELS)),
    failures=st.dictionaries(
        st.sampled_from([AgentFailureClass.RATE_LIMIT, AgentFailureClass.LLM_TIMEOUT]),
        st.integers(min_value=0, max_value=3),
    ),
    extra=st.fixed_dictionaries({"flagged": st.booleans()}),
)

leaves: st.SearchStrategy[Condition] = st.one_of(
    st.sampled_from(
        [
            PhaseCompleted(),
            RetryExhausted(),
            TimedOut(),
            AllAgentsComplete(),
            GateBelow(),
            AgentFailed(),
            AgentFailed(AgentFailureClass.RATE_LIMIT),
            AgentFailed(role="writer"),
            AgentFailed(AgentFailureClass.TOOL_ERROR, role="reviewer"),
            Always(),
            Never(),
            Flagged(),
            InReview(),
        ]
    ),
    st.sampled_from(LEVELS).map(QualityAt),
    st.sampled_from(LEVELS).map(GateBelow),
    st.decimals(min_value=0, max_value=5, places=1).map(CostExceeded),
)


def _compose(children: st.SearchStrategy[Condition]) -> st.SearchStrategy[Condition]:
    many = st.lists(children, min_size=1, max_size=3)
    return st.one_of(many.map(And), many.map(Or), children.map(Not))


conditions: st.SearchStrategy[Condition] = st.recursive(leaves, _compose, max_leaves=8)


def matched(condition: Condition, ctx: PhaseContext) -> bool:
    return condition.check(ctx).matched


@HYPOTHESIS
@given(conditions, contexts)
def test_double_negation_is_equivalent(condition: Condition, ctx: PhaseContext) -> None:
    assert matched(Not(Not(condition)), ctx) is matched(condition, ctx)
    assert matched(~~Not(condition), ctx) is not matched(condition, ctx)


@HYPOTHESIS
@given(conditions, conditions, contexts)
def test_de_morgan_holds(a: Condition, b: Condition, ctx: PhaseContext) -> None:
    assert matched(Not(And([a, b])), ctx) is matched(Or([Not(a), Not(b)]), ctx)
    assert matched(Not(Or([a, b])), ctx) is matched(And([Not(a), Not(b)]), ctx)


@HYPOTHESIS
@given(st.lists(conditions, min_size=1, max_size=5), contexts)
def test_and_or_agree_with_all_and_any(parts: list[Condition], ctx: PhaseContext) -> None:
    assert matched(And(parts), ctx) is all(matched(p, ctx) for p in parts)
    assert matched(Or(parts), ctx) is any(matched(p, ctx) for p in parts)


@settings(max_examples=examples(400))
@given(st.lists(conditions, min_size=0, max_size=6), contexts)
def test_evaluate_agrees_with_explain(parts: list[Condition], ctx: PhaseContext) -> None:
    # evaluate() and matching_rules() take the fast path (answers only);
    # explain() builds every reason: they must never disagree.
    engine = PolicyEngine(
        [PolicyRule(f"r{i}", part, notify(f"r{i}"), i % 3) for i, part in enumerate(parts)]
    )
    explained = engine.explain(ctx)
    assert len(explained) == len(parts)
    from_explain = [a for e in explained if e.matched for a in e.rule.actions]
    assert engine.evaluate(ctx) == from_explain
    assert engine.matching_rules(ctx) == [e.rule for e in explained if e.matched]
    assert [e.rule.priority for e in explained] == sorted(e.rule.priority for e in explained)


@HYPOTHESIS
@given(
    st.decimals(min_value=0, max_value=100, places=4),
    st.decimals(min_value=0, max_value=100, places=4),
)
def test_cost_exceeded_is_strict_exact_comparison(limit: Decimal, cost: Decimal) -> None:
    assert matched(CostExceeded(limit), ctx_of(cost_usd=cost)) is (cost > limit)
    assert not matched(CostExceeded(cost), ctx_of(cost_usd=cost))
