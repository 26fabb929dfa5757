"""Actions, the phase context, rules and the engine (the conditions: tests/test_conditions.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.events import AgentFailureClass
from techrevati.runtime.policy_engine import (
    DEFAULT_RULE_PRIORITY,
    AllAgentsComplete,
    Always,
    And,
    Condition,
    CostExceeded,
    DuplicateRuleError,
    GateBelow,
    Never,
    PhaseCompleted,
    PhaseContext,
    PolicyAction,
    PolicyActionData,
    PolicyEngine,
    PolicyEvaluationError,
    PolicyRule,
    QualityAt,
    RetryExhausted,
    RuleExplanation,
    TimedOut,
    Verdict,
)
from techrevati.runtime.quality_gate import QualityLevel
from tests.conftest import examples

HYPOTHESIS = settings(max_examples=examples(150))


def ctx_of(**facts: object) -> PhaseContext:
    return PhaseContext("draft", **facts)  # type: ignore[arg-type]


def rule(name: str, condition: Condition, priority: int = DEFAULT_RULE_PRIORITY) -> PolicyRule:
    return PolicyRule(
        name=name,
        condition=condition,
        actions=[PolicyActionData(PolicyAction.NOTIFY, {"rule": name})],
        priority=priority,
    )


class Broken:
    def check(self, ctx: PhaseContext) -> Verdict:
        raise KeyError("missing fact")


class AnswersBool:
    def check(self, ctx: PhaseContext) -> bool:
        return True


def test_seed_example_prints_advance_phase_and_empty_params(
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed_rule = PolicyRule(
        name="advance-on-quality",
        condition=And([PhaseCompleted(), QualityAt(QualityLevel.STANDARD)]),
        actions=[PolicyActionData(PolicyAction.ADVANCE_PHASE)],
        priority=10,
    )
    engine = PolicyEngine([seed_rule])
    ctx = PhaseContext(
        phase="draft",
        quality_level=QualityLevel.STRICT,
        phase_completed=True,
        completed_roles={"writer"},
        all_roles={"writer"},
    )
    for action in engine.evaluate(ctx):
        print(action.action.value, action.params)
    assert capsys.readouterr().out == "advance_phase {}\n"


def test_policy_action_values_are_lowercase_names() -> None:
    assert len(PolicyAction) >= 10
    for action in PolicyAction:
        assert action.value == action.name.lower()
        assert str(action) == action.value


def test_action_data_copies_params_into_a_read_only_mapping() -> None:
    params: dict[str, object] = {"to": "human"}
    data = PolicyActionData(PolicyAction.ESCALATE, params)
    params["to"] = "robot"
    assert data.params == {"to": "human"}
    with pytest.raises(TypeError):
        data.params["to"] = "x"  # type: ignore[index]
    assert repr(data.params) == "{'to': 'human'}"
    assert data.to_dict() == {"action": "escalate", "params": {"to": "human"}}
    assert json.loads(json.dumps(data.to_dict())) == data.to_dict()


def test_action_data_accepts_the_action_value_and_compares_by_value() -> None:
    data = PolicyActionData("switch_model", {"model": "backup"})
    assert data.action is PolicyAction.SWITCH_MODEL
    assert data == PolicyActionData(PolicyAction.SWITCH_MODEL, {"model": "backup"})
    assert hash(data) == hash(PolicyActionData(PolicyAction.SWITCH_MODEL, {"model": "backup"}))
    assert PolicyActionData(PolicyAction.ABORT).params == {}


def test_action_data_rejects_unknown_actions_and_non_str_keys() -> None:
    with pytest.raises(InvalidValueError, match="'teleport'"):
        PolicyActionData("teleport")
    with pytest.raises(InvalidValueError, match="params keys must be str, got 1"):
        PolicyActionData(PolicyAction.NOTIFY, {1: "x"})  # type: ignore[dict-item]
    with pytest.raises(InvalidValueError, match="params must be a mapping"):
        PolicyActionData(PolicyAction.NOTIFY, ["x"])  # type: ignore[arg-type]


def test_action_data_is_frozen() -> None:
    data = PolicyActionData(PolicyAction.PAUSE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.action = PolicyAction.ABORT  # type: ignore[misc]


def test_context_defaults() -> None:
    ctx = PhaseContext("draft")
    assert ctx.quality_level is QualityLevel.MINIMAL
    assert not ctx.phase_completed
    assert ctx.completed_roles == frozenset()
    assert ctx.all_roles == frozenset()
    assert ctx.failed_roles == {}
    assert not ctx.retries_exhausted
    assert not ctx.timed_out
    assert ctx.cost_usd == Decimal(0)
    assert ctx.gate_required is None
    assert ctx.failures == {}
    assert ctx.extra == {}


@pytest.mark.parametrize("roles", [{"a", "b"}, ["a", "b", "a"], ("b", "a"), frozenset({"a", "b"})])
def test_context_stores_role_collections_as_frozensets(roles: set[str]) -> None:
    ctx = ctx_of(completed_roles=roles, all_roles=roles, failed_roles=roles)
    assert ctx.completed_roles == frozenset({"a", "b"})
    assert type(ctx.completed_roles) is frozenset
    assert ctx.all_roles == frozenset({"a", "b"})
    assert set(ctx.failed_roles) == {"a", "b"}
    assert all(cls is None for cls in ctx.failed_roles.values())


def test_context_rejects_a_bare_string_as_roles() -> None:
    with pytest.raises(InvalidValueError, match="completed_roles must be a collection"):
        ctx_of(completed_roles="writer")
    with pytest.raises(InvalidValueError, match="all_roles must hold non-empty str"):
        ctx_of(all_roles=["writer", 3])
    with pytest.raises(InvalidValueError, match="failed_roles"):
        ctx_of(failed_roles="writer")


def test_context_failed_roles_mapping_keeps_failure_classes() -> None:
    ctx = ctx_of(failed_roles={"writer": "rate_limit", "reviewer": None})
    assert ctx.failed_roles == {"writer": AgentFailureClass.RATE_LIMIT, "reviewer": None}
    with pytest.raises(TypeError):
        ctx.failed_roles["x"] = None  # type: ignore[index]
    with pytest.raises(InvalidValueError, match="failed_roles"):
        ctx_of(failed_roles={"writer": "gremlins"})


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (0, Decimal(0)),
        (3, Decimal(3)),
        (0.1, Decimal("0.1")),
        ("0.0045", Decimal("0.0045")),
        (Decimal("1.50"), Decimal("1.50")),
    ],
)
def test_context_cost_is_an_exact_decimal(given: object, expected: Decimal) -> None:
    assert ctx_of(cost_usd=given).cost_usd == expected
    assert isinstance(ctx_of(cost_usd=given).cost_usd, Decimal)


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -0.01, "-1", "NaN", "lots", True, None, [1]]
)
def test_context_rejects_bad_cost_naming_field_and_value(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="cost_usd") as info:
        ctx_of(cost_usd=bad)
    assert repr(bad) in str(info.value)


def test_context_quality_levels_accept_names_and_reject_unknowns() -> None:
    ctx = ctx_of(quality_level="strict", gate_required="Release")
    assert ctx.quality_level is QualityLevel.STRICT
    assert ctx.gate_required is QualityLevel.RELEASE
    with pytest.raises(InvalidValueError, match=r"quality_level.*'superb'"):
        ctx_of(quality_level="superb")
    with pytest.raises(InvalidValueError, match="gate_required"):
        ctx_of(gate_required=2.5)


def test_context_failures_by_class_accept_values_and_reject_bad_counts() -> None:
    ctx = ctx_of(failures={"rate_limit": 2, AgentFailureClass.LLM_TIMEOUT: 1})
    assert ctx.failures == {AgentFailureClass.RATE_LIMIT: 2, AgentFailureClass.LLM_TIMEOUT: 1}
    with pytest.raises(InvalidValueError, match=r"failures\[rate_limit\] must be an int >= 0"):
        ctx_of(failures={"rate_limit": -1})
    with pytest.raises(InvalidValueError, match="failures key"):
        ctx_of(failures={"gremlins": 1})
    with pytest.raises(InvalidValueError, match="rate_limit twice"):
        ctx_of(failures={"RATE_LIMIT": 1, "rate_limit": 1})
    with pytest.raises(InvalidValueError, match="failures must be a mapping"):
        ctx_of(failures=[AgentFailureClass.RATE_LIMIT])


@pytest.mark.parametrize("field", ["phase_completed", "retries_exhausted", "timed_out"])
def test_context_flags_must_be_bools(field: str) -> None:
    with pytest.raises(InvalidValueError, match=f"{field} must be a bool, got 1"):
        ctx_of(**{field: 1})


def test_context_rejects_empty_phase() -> None:
    with pytest.raises(InvalidValueError, match="phase must be a non-empty str, got ''"):
        PhaseContext("")


def test_context_is_frozen_replaceable_and_serialisable() -> None:
    ctx = ctx_of(
        quality_level=QualityLevel.STANDARD,
        completed_roles=["b", "a"],
        failed_roles={"c": AgentFailureClass.TOOL_ERROR},
        cost_usd="1.25",
        gate_required=QualityLevel.STRICT,
        failures={AgentFailureClass.TOOL_ERROR: 1},
        extra={"ticket": 7},
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.phase = "other"  # type: ignore[misc]
    later = dataclasses.replace(ctx, phase_completed=True)
    assert later.phase_completed
    assert later.failed_roles == ctx.failed_roles
    assert later == dataclasses.replace(ctx, phase_completed=True)
    assert hash(later) == hash(dataclasses.replace(ctx, phase_completed=True))
    data = ctx.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["completed_roles"] == ["a", "b"]
    assert data["failed_roles"] == {"c": "tool_error"}
    assert data["cost_usd"] == "1.25"
    assert data["gate_required"] == "STRICT"
    assert data["failures"] == {"tool_error": 1}


def test_rule_stores_actions_as_a_tuple_and_wraps_bare_actions() -> None:
    made = PolicyRule("r", Always(), [PolicyAction.PAUSE, PolicyActionData("notify")])
    assert made.actions == (PolicyActionData(PolicyAction.PAUSE), PolicyActionData("notify"))
    assert made.priority == DEFAULT_RULE_PRIORITY == 100
    assert json.loads(json.dumps(made.to_dict())) == {
        "name": "r",
        "priority": 100,
        "condition": "Always()",
        "actions": [{"action": "pause", "params": {}}, {"action": "notify", "params": {}}],
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": ""}, "name must be a non-empty str, got ''"),
        ({"name": 5}, "name must be a non-empty str, got 5"),
        ({"condition": True}, "condition of rule 'r' must have a check"),
        ({"actions": []}, "actions of rule 'r' must not be empty"),
        ({"actions": ["advance_phase"]}, "must hold PolicyActionData, got 'advance_phase'"),
        ({"actions": PolicyActionData("abort")}, "must be a list of PolicyActionData"),
        ({"priority": 1.5}, "priority of rule 'r' must be an int, got 1.5"),
        ({"priority": True}, "priority of rule 'r' must be an int, got True"),
    ],
)
def test_rule_rejects_bad_fields(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "name": "r",
        "condition": Always(),
        "actions": [PolicyActionData("abort")],
    }
    fields.update(kwargs)
    with pytest.raises(InvalidValueError, match=message.replace("(", r"\(")):
        PolicyRule(**fields)  # type: ignore[arg-type]


def test_engine_fires_lower_priority_first_and_keeps_given_order_on_ties() -> None:
    engine = PolicyEngine(
        [
            rule("late-1", Always(), priority=20),
            rule("early-1", Always(), priority=10),
            rule("late-2", Always(), priority=20),
            rule("first", Always(), priority=-5),
            rule("early-2", Always(), priority=10),
        ]
    )
    order = ["first", "early-1", "early-2", "late-1", "late-2"]
    assert [r.name for r in engine.rules] == order
    assert [a.params["rule"] for a in engine.evaluate(ctx_of())] == order
    assert isinstance(engine.rules, tuple)


def test_engine_returns_the_flat_actions_of_matching_rules_only() -> None:
    engine = PolicyEngine(
        [
            PolicyRule(
                "rework",
                GateBelow(),
                [PolicyActionData("rework", {"role": "writer"}), PolicyActionData("notify")],
                priority=1,
            ),
            PolicyRule("advance", ~GateBelow() & PhaseCompleted(), [PolicyAction.ADVANCE_PHASE]),
            PolicyRule("stop", CostExceeded(2), [PolicyAction.ABORT], priority=0),
        ]
    )
    low = ctx_of(phase_completed=True, gate_required="strict", quality_level="standard")
    assert [a.action for a in engine.evaluate(low)] == [PolicyAction.REWORK, PolicyAction.NOTIFY]
    high = dataclasses.replace(low, quality_level=QualityLevel.STRICT, cost_usd=Decimal(3))
    assert [a.action for a in engine.evaluate(high)] == [
        PolicyAction.ABORT,
        PolicyAction.ADVANCE_PHASE,
    ]
    assert [r.name for r in engine.matching_rules(high)] == ["stop", "advance"]


def test_engine_with_no_rules_returns_nothing() -> None:
    engine = PolicyEngine([])
    assert engine.evaluate(ctx_of()) == []
    assert engine.explain(ctx_of()) == []


def test_engine_rejects_duplicate_rule_names_naming_the_duplicate() -> None:
    with pytest.raises(DuplicateRuleError, match="'twice'") as info:
        PolicyEngine([rule("once", Always()), rule("twice", Always()), rule("twice", Never())])
    assert info.value.name == "twice"
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TechrevatiError)


def test_engine_rejects_non_rules() -> None:
    with pytest.raises(InvalidValueError, match="rules must be an iterable of PolicyRule"):
        PolicyEngine(rule("alone", Always()))  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="rules must hold PolicyRule objects, got 'x'"):
        PolicyEngine(["x"])  # type: ignore[list-item]
    with pytest.raises(InvalidValueError, match="ctx must be a PhaseContext"):
        PolicyEngine([]).evaluate({"phase": "draft"})  # type: ignore[arg-type]


def test_explain_covers_every_rule_in_firing_order() -> None:
    engine = PolicyEngine(
        [
            rule("advance", PhaseCompleted() & QualityAt("standard"), priority=10),
            rule("give-up", RetryExhausted(), priority=5),
        ]
    )
    explained = engine.explain(ctx_of(phase_completed=True, retries_exhausted=True))
    assert [(e.rule.name, e.matched) for e in explained] == [("give-up", True), ("advance", False)]
    assert explained[1].reason == (
        "QualityAt(STANDARD) did not match: quality MINIMAL is below STANDARD"
    )
    assert str(explained[0]) == "matched give-up (priority 5): retries are exhausted"
    assert str(explained[1]).startswith("skipped advance (priority 10): QualityAt(STANDARD)")
    record = explained[1].to_dict()
    assert json.loads(json.dumps(record)) == {
        "rule": "advance",
        "priority": 10,
        "matched": False,
        "reason": explained[1].reason,
        "actions": ["notify"],
    }
    assert isinstance(explained[0], RuleExplanation)


def test_a_raising_condition_surfaces_as_an_error_naming_the_rule() -> None:
    engine = PolicyEngine([rule("fine", Always(), priority=1), rule("broken", Broken())])
    for call in (engine.evaluate, engine.explain, engine.matching_rules):
        with pytest.raises(PolicyEvaluationError, match="'broken'") as info:
            call(ctx_of())
        assert info.value.rule_name == "broken"
        assert isinstance(info.value.__cause__, KeyError)
        assert info.value.__cause__.args == ("missing fact",)


def test_a_condition_answering_a_bool_surfaces_as_an_error() -> None:
    engine = PolicyEngine([rule("sloppy", AnswersBool())])  # type: ignore[arg-type]
    with pytest.raises(PolicyEvaluationError, match="expected a Verdict"):
        engine.evaluate(ctx_of())
    nested = PolicyEngine([rule("nested", And([Always(), AnswersBool()]))])  # type: ignore[list-item]
    with pytest.raises(PolicyEvaluationError, match="'nested'") as info:
        nested.evaluate(ctx_of())
    assert isinstance(info.value.__cause__, TypeError)
    assert "AnswersBool.check returned True" in str(info.value.__cause__)


def test_engine_logs_each_matching_rule_by_name_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = PolicyEngine([rule("advance-now", PhaseCompleted()), rule("never", Never())])
    with caplog.at_level(logging.DEBUG, logger="techrevati.runtime.policy_engine"):
        engine.evaluate(ctx_of(phase_completed=True))
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "policy rule advance-now matched in phase draft: phase 'draft' is completed"
    ]
    assert caplog.records[0].name == "techrevati.runtime.policy_engine"
    assert caplog.records[0].levelno == logging.DEBUG


def test_engine_logs_nothing_above_debug(caplog: pytest.LogCaptureFixture) -> None:
    engine = PolicyEngine([rule("advance-now", Always())])
    with caplog.at_level(logging.INFO, logger="techrevati.runtime.policy_engine"):
        assert len(engine.evaluate(ctx_of())) == 1
    assert caplog.records == []


def test_engine_is_safe_to_share_between_threads() -> None:
    engine = PolicyEngine(
        [
            rule("done", PhaseCompleted(), priority=1),
            rule("spent", CostExceeded("1.00"), priority=2),
            rule("all", AllAgentsComplete(), priority=3),
        ]
    )
    contexts = [
        ctx_of(phase_completed=True, cost_usd="2", all_roles={"a"}, completed_roles={"a"}),
        ctx_of(phase_completed=True),
        ctx_of(cost_usd="0.5"),
    ]
    expected = [engine.evaluate(c) for c in contexts]
    per_thread, threads_n = 300, 8
    totals = [0] * threads_n
    mismatches: list[int] = []
    start = threading.Barrier(threads_n)

    def hammer(index: int) -> None:
        start.wait()
        for i in range(per_thread):
            which = (i + index) % len(contexts)
            actions = engine.evaluate(contexts[which])
            if actions != expected[which]:
                mismatches.append(index)
            totals[index] += len(actions)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []
    # Each thread cycles through the three contexts 100 times: 3 + 1 + 0 actions.
    assert sum(totals) == threads_n * (per_thread // 3) * 4


@HYPOTHESIS
@given(st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False))
def test_float_cost_is_read_through_its_repr(cost: float) -> None:
    assert ctx_of(cost_usd=cost).cost_usd == Decimal(repr(cost))


def test_rules_and_contexts_survive_pickle_and_deepcopy() -> None:
    import copy
    import pickle

    made = rule("r", PhaseCompleted() & ~TimedOut() | CostExceeded("1.5"))
    ctx = ctx_of(failed_roles={"w": "rate_limit"}, failures={"llm_timeout": 2}, cost_usd=0.1)
    for clone in (pickle.loads(pickle.dumps(made)), copy.deepcopy(made)):
        assert clone == made
        assert repr(clone.condition) == repr(made.condition)
    assert pickle.loads(pickle.dumps(ctx)) == ctx
    assert copy.deepcopy(ctx).failed_roles == {"w": AgentFailureClass.RATE_LIMIT}
