"""Governance: the limits, the meter's counting (threads, a model), the snapshot, the
retry machinery leaving a breach alone, and the policy-engine conditions."""

from __future__ import annotations

import asyncio
import json
import pickle
import re
import threading
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from techrevati.runtime.errors import InvalidValueError, TechrevatiError, TransientRuntimeError
from techrevati.runtime.governance import (
    GOVERNANCE_KEY,
    MAX_TRACKED_TOOLS,
    Governance,
    GovernanceBreached,
    GovernanceBreachedError,
    GovernanceLimit,
    GovernanceMeter,
    WithinGovernance,
)
from techrevati.runtime.orchestrator import Orchestrator
from techrevati.runtime.policy_engine import (
    PhaseContext,
    PolicyAction,
    PolicyEngine,
    PolicyEvaluationError,
    PolicyRule,
)
from techrevati.runtime.retry_policy import (
    RetryPolicy,
    RetryStats,
    aretry_call,
    retry_call,
    retrying,
)
from techrevati.runtime.usage import UsageSnapshot
from tests.conftest import FakeClock, examples

L = GovernanceLimit
FULL_WIDTH = "\uff33\uff45\uff41\uff52\uff43\uff48"
"""'Search' in full-width letters: NFKC makes it plain."""


def breach_of(fn: Any, *args: object) -> GovernanceBreachedError:
    with pytest.raises(GovernanceBreachedError) as caught:
        fn(*args)
    return caught.value


# -- the limits --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_turns": 0}, "max_turns"),
        ({"max_turns": -1}, "max_turns"),
        ({"max_turns": True}, "max_turns"),
        ({"max_turns": 2.0}, "max_turns"),
        ({"max_cost_usd": 0}, "max_cost_usd"),
        ({"max_cost_usd": "-1"}, "max_cost_usd"),
        ({"max_cost_usd": "lots"}, "max_cost_usd"),
        ({"max_cost_usd": float("nan")}, "max_cost_usd"),
        ({"max_cost_usd": "1e-16"}, "max_cost_usd"),
        ({"max_cost_usd": True}, "max_cost_usd"),
        ({"max_consecutive_failures": 0}, "max_consecutive_failures"),
        ({"max_tool_calls": -1}, "max_tool_calls"),
        ({"max_tool_calls_per_name": ["search"]}, "max_tool_calls_per_name"),
        ({"max_tool_calls_per_name": {1: 2}}, "max_tool_calls_per_name"),
        ({"max_tool_calls_per_name": {"shell:*": 2}}, "glob"),
        ({"max_tool_calls_per_name": {"a/b": 2}}, "SOLIDUS"),
        ({"max_tool_calls_per_name": {"  ": 2}}, "empty"),
        ({"max_tool_calls_per_name": {"search": -1}}, "['search']"),
        ({"max_tool_calls_per_name": {"search": True}}, "['search']"),
        ({"max_tool_calls_per_name": {"Search": 1, " search": 2}}, "same tool 'search'"),
        ({"max_wall_seconds": 0}, "max_wall_seconds"),
        ({"max_wall_seconds": float("inf")}, "max_wall_seconds"),
        ({"max_wall_seconds": "10"}, "max_wall_seconds"),
    ],
)
def test_a_bad_limit_is_refused_naming_it(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidValueError, match=re.escape(named)):
        Governance(**kwargs)  # type: ignore[arg-type]


def test_limits_are_keyword_only_frozen_hashable_and_read_back() -> None:
    governance = Governance(
        max_turns=10,
        max_cost_usd=0.1,
        max_consecutive_failures=3,
        max_tool_calls=20,
        max_tool_calls_per_name={f" {FULL_WIDTH} ": 5, "shell": 0},
        max_wall_seconds=60,
    )
    assert governance.max_cost_usd == Decimal("0.1")  # the float's repr, exactly
    assert dict(governance.max_tool_calls_per_name) == {"search": 5, "shell": 0}
    assert governance.max_wall_seconds == 60.0
    with pytest.raises(AttributeError):
        governance.max_turns = 11  # type: ignore[misc]
    with pytest.raises(TypeError):
        Governance(10)  # type: ignore[call-arg]
    again = Governance.from_dict(json.loads(json.dumps(governance.to_dict())))
    assert again == governance
    assert hash(again) == hash(governance)
    assert Governance() != governance
    with pytest.raises(InvalidValueError, match="max_tokens"):
        Governance.from_dict({"max_tokens": 5})


# -- the meter, one limit at a time ------------------------------------------------------


def test_max_turns_admits_that_many_then_refuses_every_later_turn() -> None:
    meter = GovernanceMeter(Governance(max_turns=3))
    assert [meter.before_turn() for _ in range(3)] == [1, 2, 3]
    first = breach_of(meter.before_turn)
    again = breach_of(meter.before_turn)
    assert (first.limit, first.maximum, first.value, first.refused) == (L.TURNS, 3, 3, "turn")
    assert str(first) == "governance limit max_turns=3 reached (3 turn(s) ran); turn refused"
    assert str(again) == str(first)
    assert meter.turns == 3
    assert [b.limit for b in meter.breaches] == [L.TURNS]  # the first of each limit only


def test_cost_counts_exactly_and_a_turn_that_uses_it_up_says_so() -> None:
    meter = GovernanceMeter(Governance(max_cost_usd="0.3"))
    for _ in range(2):
        meter.before_turn()
        assert meter.after_turn(0.1) is None
    meter.before_turn()
    used_up = meter.after_turn(Decimal("0.1"))  # 0.1 + 0.1 + 0.1 == 0.3 exactly
    assert isinstance(used_up, GovernanceBreachedError)
    assert (used_up.limit, used_up.maximum, used_up.value) == (
        L.COST,
        Decimal("0.3"),
        Decimal("0.3"),
    )
    assert meter.cost_usd == Decimal("0.3")
    refused = breach_of(meter.before_turn)
    assert refused.limit is L.COST
    assert str(refused) == "governance limit max_cost_usd=0.3 reached ($0.3 spent); turn refused"


def test_cost_just_below_the_limit_admits_the_next_turn() -> None:
    meter = GovernanceMeter(Governance(max_cost_usd="0.3"))
    meter.before_turn()
    assert meter.after_turn("0.299999999999999") is None
    assert meter.before_turn() == 2


@pytest.mark.parametrize("bad", [-1, "x", float("inf"), "1e-16", True])
def test_a_bad_turn_cost_is_refused_and_nothing_is_counted(bad: object) -> None:
    meter = GovernanceMeter(Governance(max_consecutive_failures=1))
    with pytest.raises(InvalidValueError, match="cost_usd"):
        meter.after_turn(bad, failed=True)  # type: ignore[arg-type]
    assert meter.consecutive_failures == 0
    with pytest.raises(InvalidValueError, match="failed"):
        meter.after_turn(failed=1)  # type: ignore[arg-type]


def test_consecutive_failures_reset_on_success_and_stop_the_session_in_a_row() -> None:
    meter = GovernanceMeter(Governance(max_consecutive_failures=2))
    meter.before_turn()
    assert meter.after_turn(failed=True) is None
    meter.before_turn()
    assert meter.after_turn() is None  # success resets
    assert meter.consecutive_failures == 0
    meter.before_turn()
    meter.after_turn(failed=True)
    meter.before_turn()
    used_up = meter.after_turn(failed=True)
    assert used_up is not None
    assert (used_up.limit, used_up.value) == (L.CONSECUTIVE_FAILURES, 2)
    assert breach_of(meter.before_turn).limit is L.CONSECUTIVE_FAILURES


def test_the_first_used_up_limit_in_order_is_the_one_reported() -> None:
    meter = GovernanceMeter(Governance(max_turns=1, max_cost_usd=1, max_consecutive_failures=1))
    meter.before_turn()
    used_up = meter.after_turn(5, failed=True)  # cost and failures at once: cost first
    assert used_up is not None
    assert used_up.limit is L.COST
    assert breach_of(meter.before_turn).limit is L.TURNS  # turns are checked first


def test_tool_calls_in_all_and_per_normalised_name() -> None:
    meter = GovernanceMeter(
        Governance(max_tool_calls=4, max_tool_calls_per_name={"search": 2, "shell": 0})
    )
    meter.before_tool("search")
    meter.before_tool(" SEARCH ")
    refused = breach_of(meter.before_tool, FULL_WIDTH)  # full-width: the same tool
    assert (refused.limit, refused.maximum, refused.value) == (L.TOOL_CALLS_PER_NAME, 2, 2)
    assert (refused.refused, refused.tool) == ("tool", "search")
    assert "max_tool_calls_per_name['search']=2" in str(refused)
    assert breach_of(meter.before_tool, "shell").tool == "shell"  # 0 forbids the tool
    meter.before_tool("fetch")
    meter.before_tool("Fetch")
    total = breach_of(meter.before_tool, "other")
    assert (total.limit, total.value, total.tool) == (L.TOOL_CALLS, 4, "other")
    assert meter.tool_calls == 4
    assert meter.tool_calls_by_name == {"search": 2, "fetch": 2}
    assert {(b.limit, b.tool) for b in meter.breaches} == {
        (L.TOOL_CALLS_PER_NAME, "search"),
        (L.TOOL_CALLS_PER_NAME, "shell"),
        (L.TOOL_CALLS, "other"),
    }


def test_a_zero_tool_limit_refuses_the_first_call() -> None:
    meter = GovernanceMeter(Governance(max_tool_calls=0))
    assert breach_of(meter.before_tool, "x").value == 0
    assert meter.tool_calls == 0


@pytest.mark.parametrize("bad", [None, 3, "", "   "])
def test_a_tool_name_must_be_a_non_empty_str(bad: object) -> None:
    meter = GovernanceMeter(Governance(max_tool_calls=5))
    with pytest.raises(InvalidValueError, match="tool name"):
        meter.before_tool(bad)  # type: ignore[arg-type]
    assert meter.tool_calls == 0


def test_names_beyond_the_cap_count_in_the_total_but_limited_names_always_count() -> None:
    meter = GovernanceMeter(Governance(max_tool_calls_per_name={"late": 1}))
    for index in range(MAX_TRACKED_TOOLS + 10):
        meter.before_tool(f"t{index}")
    meter.before_tool("late")
    assert meter.tool_calls == MAX_TRACKED_TOOLS + 11
    names = meter.tool_calls_by_name
    assert len(names) == MAX_TRACKED_TOOLS + 1
    assert names["late"] == 1
    assert breach_of(meter.before_tool, "late").limit is L.TOOL_CALLS_PER_NAME


def test_wall_time_refuses_turns_and_tools_once_it_has_passed() -> None:
    clock = FakeClock()
    meter = GovernanceMeter(Governance(max_wall_seconds=10), clock=clock)
    clock.advance(9.999)
    meter.before_turn()
    meter.before_tool("x")
    meter.check_wall()
    assert meter.elapsed_seconds == pytest.approx(9.999)
    clock.advance(0.001)
    refused = breach_of(meter.before_turn)
    assert (refused.limit, refused.maximum) == (L.WALL_TIME, 10.0)
    assert refused.value == pytest.approx(10.0)
    assert "max_wall_seconds=10 reached (10s elapsed)" in str(refused)
    assert breach_of(meter.before_tool, "x").refused == "tool"
    clock.advance(5)
    assert breach_of(meter.check_wall).value == pytest.approx(15.0)
    assert [b.value for b in meter.breaches] == [pytest.approx(10.0)]  # the first is kept


def test_check_wall_without_a_wall_limit_never_reads_the_clock() -> None:
    reads: list[int] = []

    def clock() -> float:
        reads.append(1)
        return 0.0

    meter = GovernanceMeter(Governance(max_turns=5), clock=clock)
    meter.check_wall()
    meter.before_turn()
    meter.before_tool("x")
    assert len(reads) == 1  # the start only


def test_the_meter_refuses_a_bad_governance_or_clock() -> None:
    with pytest.raises(InvalidValueError, match="governance"):
        GovernanceMeter({"max_turns": 3})  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="clock"):
        GovernanceMeter(Governance(), clock=5)  # type: ignore[arg-type]


def test_an_empty_governance_counts_but_never_refuses() -> None:
    meter = GovernanceMeter(Governance())
    for _ in range(100):
        meter.before_turn()
        meter.after_turn(1000, failed=True)
        meter.before_tool("x")
    assert (meter.turns, meter.tool_calls, meter.consecutive_failures) == (100, 100, 100)
    assert meter.cost_usd == Decimal(100_000)


# -- the error ---------------------------------------------------------------------------


def test_the_breach_is_a_runtime_refusal_that_pickles_and_serialises() -> None:
    error = GovernanceBreachedError(L.COST, Decimal("1.5"), Decimal("1.75"))
    assert isinstance(error, TechrevatiError)
    assert not isinstance(error, TransientRuntimeError | TimeoutError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.limit, copy.maximum, copy.value, str(copy)) == (
        L.COST,
        Decimal("1.5"),
        Decimal("1.75"),
        str(error),
    )
    assert json.loads(json.dumps(error.to_dict())) == {
        "limit": "max_cost_usd",
        "maximum": "1.5",
        "value": "1.75",
        "refused": "turn",
        "tool": "",
    }


# -- the retry machinery never retries it -----------------------------------------------


def _refusing(calls: list[int]) -> Any:
    meter = GovernanceMeter(Governance(max_tool_calls=0))

    def fn() -> str:
        calls.append(1)
        meter.before_tool("search")
        return "unreachable"

    return fn


def _no_sleep(seconds: float) -> None:
    pytest.fail(f"a breach must not be waited on, slept {seconds}")


@pytest.mark.parametrize(
    "retry_on",
    [None, lambda exc: True],
    ids=["recipes", "retry_on-accepts-everything"],
)
def test_retry_call_reraises_a_breach_at_once_unchanged(retry_on: Any) -> None:
    calls: list[int] = []
    stats = RetryStats()
    policy = RetryPolicy(max_attempts=5, retry_on=retry_on, stats=stats, sleep=_no_sleep)
    with pytest.raises(GovernanceBreachedError) as caught:
        retry_call(_refusing(calls), policy=policy)
    assert calls == [1]
    assert caught.value.__cause__ is None  # not wrapped in RetriesExhaustedError
    assert (stats.retries, stats.gave_up) == (0, 1)


def test_every_retry_entry_point_leaves_a_breach_alone() -> None:
    policy = RetryPolicy(max_attempts=4, sleep=_no_sleep)
    calls: list[int] = []
    with pytest.raises(GovernanceBreachedError):
        policy.call(_refusing(calls))
    with pytest.raises(GovernanceBreachedError):
        retrying(policy=policy)(_refusing(calls))()

    async def refused() -> None:
        calls.append(1)
        raise GovernanceBreachedError(L.TURNS, 1, 1)

    with pytest.raises(GovernanceBreachedError):
        asyncio.run(aretry_call(refused, policy=policy))
    assert calls == [1, 1, 1]


def test_a_session_turn_with_a_retry_policy_runs_a_breaching_fn_once() -> None:
    orchestrator = Orchestrator(
        "writer", "draft", retry=RetryPolicy(max_attempts=5, sleep=_no_sleep)
    )
    calls: list[int] = []
    fn = _refusing(calls)
    with orchestrator.session() as session, pytest.raises(GovernanceBreachedError):
        session.run_turn(fn, usage=UsageSnapshot(input_tokens=1))
    assert calls == [1]


# -- snapshot and restore ----------------------------------------------------------------


def _busy_meter(clock: FakeClock) -> GovernanceMeter:
    meter = GovernanceMeter(
        Governance(max_turns=5, max_cost_usd="2", max_tool_calls_per_name={"search": 1}),
        clock=clock,
    )
    meter.before_turn()
    meter.after_turn("0.25", failed=True)
    meter.before_turn()
    meter.after_turn("0.5", failed=True)
    meter.before_tool("search")
    meter.before_tool("fetch")
    with pytest.raises(GovernanceBreachedError):
        meter.before_tool("search")
    clock.advance(30)
    return meter


def test_a_snapshot_is_json_and_restores_the_same_count() -> None:
    clock = FakeClock(now=500.0)
    snapshot = _busy_meter(clock).snapshot()
    text = json.dumps(snapshot)
    assert json.loads(text) == snapshot
    assert snapshot["cost_usd"] == "0.75"
    assert snapshot["tool_calls_by_name"] == {"fetch": 1, "search": 1}
    assert snapshot["started"] == 500.0
    assert snapshot["elapsed_seconds"] == 30.0
    later = FakeClock(now=9000.0)
    meter = GovernanceMeter.restore(json.loads(text), clock=later)
    assert json.loads(json.dumps(meter.snapshot())) == {**snapshot, "started": 8970.0}
    assert (meter.turns, meter.consecutive_failures, meter.cost_usd) == (2, 2, Decimal("0.75"))
    assert [(b.limit, b.tool) for b in meter.breaches] == [(L.TOOL_CALLS_PER_NAME, "search")]
    assert meter.before_turn() == 3  # the count goes on
    assert breach_of(meter.before_tool, "search").limit is L.TOOL_CALLS_PER_NAME


def test_restore_counts_downtime_only_when_asked() -> None:
    clock = FakeClock(now=100.0)
    meter = GovernanceMeter(Governance(max_wall_seconds=60), clock=clock)
    clock.advance(20)
    snapshot = meter.snapshot()
    clock.advance(100)  # the process was down
    resumed = GovernanceMeter.restore(snapshot, clock=clock)
    assert resumed.elapsed_seconds == 20.0
    resumed.before_turn()
    strict = GovernanceMeter.restore(snapshot, clock=clock, count_downtime=True)
    assert strict.elapsed_seconds == 120.0
    assert breach_of(strict.before_turn).limit is L.WALL_TIME


def test_restore_under_new_limits() -> None:
    meter = GovernanceMeter(Governance(max_turns=1))
    meter.before_turn()
    raised = GovernanceMeter.restore(meter.snapshot(), governance=Governance(max_turns=2))
    assert raised.before_turn() == 2
    assert raised.governance.max_turns == 2


def _corrupt(key: str, value: object) -> dict[str, Any]:
    snapshot: dict[str, Any] = json.loads(json.dumps(_busy_meter(FakeClock()).snapshot()))
    if value is _DROP:
        del snapshot[key]
    else:
        snapshot[key] = value
    return snapshot


_DROP = object()
_NO_TOOL = {"tool": ""}


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("version", 2, "version"),
        ("version", True, "version"),
        ("turns", _DROP, "missing keys \\['turns'\\]"),
        ("extra", 1, "unknown keys \\['extra'\\]"),
        ("limits", [], "limits"),
        ("limits", {"max_tokens": 3}, "max_tokens"),
        ("turns", -1, "turns"),
        ("consecutive_failures", 1.0, "consecutive_failures"),
        ("tool_calls", "3", "tool_calls"),
        ("tool_calls", 1, "adds up to 2"),
        ("cost_usd", "-1", "cost_usd"),
        ("cost_usd", "1e-16", "cost_usd"),
        ("tool_calls_by_name", {"Search": 1}, "normalised"),
        ("tool_calls_by_name", {"search": 0}, "search"),
        ("tool_calls_by_name", [], "tool_calls_by_name"),
        ("started", float("nan"), "started"),
        ("elapsed_seconds", -1, "elapsed_seconds"),
        ("breaches", {}, "breaches"),
        ("breaches", [{"limit": "max_turns"}], "breaches\\[0\\]"),
        (
            "breaches",
            [{"limit": "max_x", "maximum": 1, "value": 1, "refused": "turn", "tool": ""}],
            "unknown limit",
        ),
        (
            "breaches",
            [{"limit": "max_turns", "maximum": 1, "value": 1, "refused": "now", "tool": ""}],
            "refused",
        ),
        (
            "breaches",
            [{"limit": "max_turns", "maximum": -1, "value": 1, "refused": "turn", "tool": ""}],
            "maximum",
        ),
        (
            "breaches",
            [
                {
                    "limit": "max_wall_seconds",
                    "maximum": 1,
                    "value": "x",
                    "refused": "turn",
                    "tool": "",
                }
            ],
            "value",
        ),
        (
            "breaches",
            [{"limit": "max_turns", "maximum": 1, "value": 1, "refused": "turn", "tool": 3}],
            "tool",
        ),
    ],
)
def test_restore_refuses_a_malformed_snapshot_naming_the_field(
    key: str, value: object, named: str
) -> None:
    with pytest.raises(InvalidValueError, match=named):
        GovernanceMeter.restore(_corrupt(key, value))


def test_restore_refuses_what_is_not_a_mapping() -> None:
    with pytest.raises(InvalidValueError, match="snapshot must be a mapping"):
        GovernanceMeter.restore([])  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="count_downtime"):
        GovernanceMeter.restore(_busy_meter(FakeClock()).snapshot(), count_downtime=1)  # type: ignore[arg-type]


# -- threads -----------------------------------------------------------------------------

THREADS = 8
PER_THREAD = 2_000


def _hammer(work: Any) -> None:
    barrier = threading.Barrier(THREADS)

    def run() -> None:
        barrier.wait()
        work()

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_threads_never_admit_more_turns_or_tool_calls_than_the_limits() -> None:
    meter = GovernanceMeter(
        Governance(max_turns=5_000, max_tool_calls_per_name={"a": 3_000, "b": 7_000})
    )
    admitted: list[int] = []
    refused: list[str] = []
    lock = threading.Lock()

    calls: list[tuple[Any, tuple[str, ...]]] = [
        (meter.before_turn, ()),
        (meter.before_tool, ("A",)),
        (meter.before_tool, ("b",)),
    ]

    def work() -> None:
        mine = [0, 0, 0]
        errors: list[str] = []
        for _ in range(PER_THREAD):
            for slot, (call, arg) in enumerate(calls):
                try:
                    call(*arg)
                    mine[slot] += 1
                except GovernanceBreachedError as exc:
                    errors.append(exc.limit.value + exc.tool)
        with lock:
            admitted.extend(mine)
            refused.extend(errors)

    _hammer(work)
    total = THREADS * PER_THREAD
    turns = sum(admitted[0::3])
    tools_a = sum(admitted[1::3])
    tools_b = sum(admitted[2::3])
    assert (turns, tools_a, tools_b) == (5_000, 3_000, 7_000)
    assert meter.turns == 5_000
    assert meter.tool_calls_by_name == {"a": 3_000, "b": 7_000}
    assert meter.tool_calls == 10_000
    assert refused.count("max_turns") == total - 5_000
    assert refused.count("max_tool_calls_per_namea") == total - 3_000
    assert refused.count("max_tool_calls_per_nameb") == total - 7_000


def test_threads_add_costs_and_failures_exactly() -> None:
    meter = GovernanceMeter(Governance())

    def work() -> None:
        for index in range(PER_THREAD):
            meter.before_turn()
            meter.after_turn("0.000001", failed=index % 2 == 0)

    _hammer(work)
    assert meter.turns == THREADS * PER_THREAD
    assert meter.cost_usd == Decimal("0.000001") * THREADS * PER_THREAD


# -- the count against a reference model -------------------------------------------------

NAMES = ("search", "Search ", "fetch", "shell")


class MeterModel(RuleBasedStateMachine):
    """The meter against plain counters and the rules written out once more."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.governance = Governance()
        self.meter = GovernanceMeter(self.governance, clock=self.clock)
        self.turns = self.cents = self.failures = self.tools = 0
        self.names: dict[str, int] = {}
        self.breached: set[tuple[GovernanceLimit, str]] = set()
        self.elapsed = 0.0

    @initialize(
        turns=st.none() | st.integers(1, 6),
        cents=st.none() | st.integers(1, 60),
        failures=st.none() | st.integers(1, 3),
        tools=st.none() | st.integers(0, 8),
        search=st.none() | st.integers(0, 3),
        wall=st.none() | st.integers(1, 20),
    )
    def setup(
        self,
        *,
        turns: int | None,
        cents: int | None,
        failures: int | None,
        tools: int | None,
        search: int | None,
        wall: int | None,
    ) -> None:
        self.governance = Governance(
            max_turns=turns,
            max_cost_usd=None if cents is None else Decimal(cents) / 100,
            max_consecutive_failures=failures,
            max_tool_calls=tools,
            max_tool_calls_per_name=None if search is None else {"SEARCH": search},
            max_wall_seconds=wall,
        )
        self.meter = GovernanceMeter(self.governance, clock=self.clock)

    def _expected_turn_refusal(self) -> GovernanceLimit | None:
        g = self.governance
        if g.max_turns is not None and self.turns >= g.max_turns:
            return L.TURNS
        if g.max_cost_usd is not None and Decimal(self.cents) / 100 >= g.max_cost_usd:
            return L.COST
        if g.max_consecutive_failures is not None and self.failures >= g.max_consecutive_failures:
            return L.CONSECUTIVE_FAILURES
        if g.max_wall_seconds is not None and self.elapsed >= g.max_wall_seconds:
            return L.WALL_TIME
        return None

    @rule()
    def turn(self) -> None:
        expected = self._expected_turn_refusal()
        if expected is None:
            assert self.meter.before_turn() == self.turns + 1
            self.turns += 1
        else:
            assert breach_of(self.meter.before_turn).limit is expected
            self.breached.add((expected, ""))

    @rule(cents=st.integers(0, 30), failed=st.booleans())
    def after(self, cents: int, failed: bool) -> None:
        used_up = self.meter.after_turn(Decimal(cents) / 100, failed=failed)
        self.cents += cents
        self.failures = self.failures + 1 if failed else 0
        g = self.governance
        cost_done = g.max_cost_usd is not None and Decimal(self.cents) / 100 >= g.max_cost_usd
        failures_done = (
            g.max_consecutive_failures is not None and self.failures >= g.max_consecutive_failures
        )
        expected = L.COST if cost_done else L.CONSECUTIVE_FAILURES if failures_done else None
        assert (None if used_up is None else used_up.limit) is expected

    @rule(name=st.sampled_from(NAMES))
    def tool(self, name: str) -> None:
        key = name.strip().lower()
        g = self.governance
        per_name = g.max_tool_calls_per_name.get(key)
        expected: GovernanceLimit | None = None
        if g.max_tool_calls is not None and self.tools >= g.max_tool_calls:
            expected = L.TOOL_CALLS
        elif per_name is not None and self.names.get(key, 0) >= per_name:
            expected = L.TOOL_CALLS_PER_NAME
        elif g.max_wall_seconds is not None and self.elapsed >= g.max_wall_seconds:
            expected = L.WALL_TIME
        if expected is None:
            self.meter.before_tool(name)
            self.tools += 1
            self.names[key] = self.names.get(key, 0) + 1
        else:
            refused = breach_of(self.meter.before_tool, name)
            assert (refused.limit, refused.tool) == (expected, key)
            self.breached.add((expected, key if expected is L.TOOL_CALLS_PER_NAME else ""))

    @rule(seconds=st.sampled_from([0.5, 1, 4]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.elapsed += seconds

    @rule()
    def checkpoint(self) -> None:
        snapshot = json.loads(json.dumps(self.meter.snapshot()))
        self.meter = GovernanceMeter.restore(snapshot, clock=self.clock)

    @invariant()
    def figures_agree(self) -> None:
        meter = self.meter
        assert meter.turns == self.turns
        assert meter.cost_usd == Decimal(self.cents) / 100
        assert meter.consecutive_failures == self.failures
        assert meter.tool_calls == self.tools
        assert meter.tool_calls_by_name == self.names
        assert {
            (b.limit, b.tool if b.limit is L.TOOL_CALLS_PER_NAME else "") for b in meter.breaches
        } == self.breached
        assert meter.elapsed_seconds == pytest.approx(self.elapsed)


TestMeterModel = MeterModel.TestCase
TestMeterModel.settings = settings(
    max_examples=examples(150), stateful_step_count=40, deadline=None
)


# -- the policy-engine conditions --------------------------------------------------------


def ctx_with(value: object = None) -> PhaseContext:
    return PhaseContext("draft", extra=None if value is None else {GOVERNANCE_KEY: value})


def test_governance_breached_fires_once_a_call_was_refused() -> None:
    meter = GovernanceMeter(Governance(max_turns=2, max_tool_calls=1))
    engine = PolicyEngine(
        [
            PolicyRule("stop", GovernanceBreached(), [PolicyAction.ABORT]),
            PolicyRule("tools", GovernanceBreached("max_tool_calls"), [PolicyAction.NOTIFY]),
        ]
    )
    meter.before_turn()
    meter.before_turn()  # the limit is reached, not breached
    assert engine.evaluate(ctx_with(meter)) == []
    with pytest.raises(GovernanceBreachedError):
        meter.before_turn()
    actions = engine.evaluate(ctx_with(meter))
    assert [a.action for a in actions] == [PolicyAction.ABORT]
    reason = GovernanceBreached().check(ctx_with(meter)).reason
    assert reason.startswith("governance limit max_turns=2 reached")
    meter.before_tool("x")
    with pytest.raises(GovernanceBreachedError):
        meter.before_tool("x")
    snapshot = json.loads(json.dumps(meter.snapshot()))
    actions = engine.evaluate(ctx_with(snapshot))  # a snapshot reads the same
    assert [a.action for a in actions] == [PolicyAction.ABORT, PolicyAction.NOTIFY]


def test_governance_breached_without_figures_does_not_match_and_says_why() -> None:
    verdict = GovernanceBreached().check(ctx_with())
    assert not verdict
    assert verdict.reason == "no governance figures: ctx.extra has no 'governance'"
    narrowed = GovernanceBreached(L.COST).check(ctx_with(GovernanceMeter(Governance())))
    assert not narrowed
    assert narrowed.reason == "max_cost_usd refused a call"
    assert repr(GovernanceBreached(L.COST)) == "GovernanceBreached('max_cost_usd')"
    assert repr(GovernanceBreached()) == "GovernanceBreached()"
    with pytest.raises(InvalidValueError, match="governance limit"):
        GovernanceBreached("max_tokens")


def test_within_governance_by_fraction_exactly() -> None:
    meter = GovernanceMeter(Governance(max_turns=10, max_cost_usd="1", max_tool_calls=0))
    for _ in range(6):
        meter.before_turn()
    meter.after_turn("0.69")
    ctx = ctx_with(meter)
    assert WithinGovernance().check(ctx)  # the zero tool limit is left out
    assert WithinGovernance(0.7).check(ctx)
    assert not WithinGovernance("0.6").check(ctx)  # 6 of 10 turns is 0.6 exactly
    assert WithinGovernance("0.6").used_up(ctx) == (L.TURNS, "", 6, 10)
    assert WithinGovernance(0.7, L.TURNS).check(ctx)
    meter.after_turn("0.01")  # $0.70 of $1
    verdict = WithinGovernance(0.7).check(ctx)
    assert not verdict
    assert verdict.reason == "max_cost_usd: 0.7 has reached 70% of the limit 1"
    assert WithinGovernance(0.7, "turns").check(ctx)
    engine = PolicyEngine([PolicyRule("wrap up", ~WithinGovernance(0.7), [PolicyAction.ESCALATE])])
    assert [a.action for a in engine.evaluate(ctx)] == [PolicyAction.ESCALATE]


def test_within_governance_uses_the_given_limits_over_the_meters() -> None:
    meter = GovernanceMeter(Governance(max_turns=10))
    meter.before_turn()
    ctx = ctx_with(meter.snapshot())
    assert WithinGovernance().check(ctx)
    assert not WithinGovernance(governance=Governance(max_turns=1)).check(ctx)


def test_within_governance_is_false_after_a_refusal_and_without_figures() -> None:
    meter = GovernanceMeter(Governance(max_tool_calls_per_name={"x": 0}))
    assert not WithinGovernance().check(ctx_with())
    with pytest.raises(InvalidValueError, match="no governance figures"):
        WithinGovernance().used_up(ctx_with())
    assert WithinGovernance().check(ctx_with(meter))
    with pytest.raises(GovernanceBreachedError):
        meter.before_tool("x")
    verdict = WithinGovernance().check(ctx_with(meter))
    assert not verdict
    assert "max_tool_calls_per_name['x']=0 reached" in verdict.reason


def test_within_governance_per_name_and_wall_time() -> None:
    clock = FakeClock()
    meter = GovernanceMeter(
        Governance(max_tool_calls_per_name={"a": 4, "b": 2}, max_wall_seconds=100), clock=clock
    )
    meter.before_tool("b")
    ctx = ctx_with(meter)
    assert WithinGovernance(0.6, L.TOOL_CALLS_PER_NAME).check(ctx)
    assert not WithinGovernance(0.5, L.TOOL_CALLS_PER_NAME).check(ctx)
    assert WithinGovernance(0.5, L.TOOL_CALLS_PER_NAME).used_up(ctx) == (
        L.TOOL_CALLS_PER_NAME,
        "b",
        1,
        2,
    )
    clock.advance(50)
    assert not WithinGovernance(0.5, L.WALL_TIME).check(ctx)
    assert WithinGovernance(0.51, L.WALL_TIME).check(ctx)


@pytest.mark.parametrize("bad", [0, "1.5", -0.1, "x", True])
def test_within_governance_refuses_a_bad_fraction(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="fraction"):
        WithinGovernance(bad)  # type: ignore[arg-type]


def test_within_governance_refuses_a_bad_governance_and_shows_itself() -> None:
    with pytest.raises(InvalidValueError, match="governance"):
        WithinGovernance(governance={"max_turns": 1})  # type: ignore[arg-type]
    assert repr(WithinGovernance()) == "WithinGovernance()"
    assert repr(WithinGovernance(0.8, "turns")) == "WithinGovernance(0.8, 'max_turns')"


def test_a_bad_value_in_the_context_is_a_policy_evaluation_error() -> None:
    engine = PolicyEngine([PolicyRule("stop", GovernanceBreached(), [PolicyAction.ABORT])])
    with pytest.raises(PolicyEvaluationError, match="'stop'") as caught:
        engine.evaluate(ctx_with(42))
    assert isinstance(caught.value.__cause__, InvalidValueError)
    with pytest.raises(PolicyEvaluationError):
        engine.evaluate(ctx_with({"version": 1}))
