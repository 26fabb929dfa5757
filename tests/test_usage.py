"""UsageSnapshot's values and UsageTracker's exact running totals."""

from __future__ import annotations

import copy
import json
import logging
import pickle
import threading
from decimal import Decimal

import pytest

from techrevati.runtime.budget import Budget, BudgetExceededError
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.pricing import (
    LOGGER_NAME,
    LongContextTier,
    ModelPricing,
    clear_pricing,
    register_pricing,
    unregister_pricing,
)
from techrevati.runtime.usage import TurnCost, UsageSnapshot, UsageTracker
from tests.conftest import price_model

pytestmark = pytest.mark.usefixtures("empty_pricing")


def test_snapshot_defaults_to_zero_and_zero_constant_matches() -> None:
    assert UsageSnapshot() == UsageSnapshot.ZERO
    assert UsageSnapshot.ZERO.total_tokens == 0


def test_snapshot_total_is_input_plus_output() -> None:
    usage = UsageSnapshot(input_tokens=5000, output_tokens=1200, cache_read_tokens=4000)
    assert usage.total_tokens == 6200


@pytest.mark.parametrize(
    "field", ["input_tokens", "output_tokens", "cache_read_tokens", "reasoning_tokens"]
)
@pytest.mark.parametrize("bad", [-1, True, 1.0, "3", None])
def test_snapshot_rejects_bad_counts_naming_field_and_value(field: str, bad: object) -> None:
    with pytest.raises(InvalidValueError) as info:
        UsageSnapshot(**{field: bad})  # type: ignore[arg-type]
    assert field in str(info.value)
    assert repr(bad) in str(info.value)


def test_snapshot_rejects_cache_parts_larger_than_input() -> None:
    with pytest.raises(InvalidValueError, match=r"cache_read_tokens \+ cache_write_tokens"):
        UsageSnapshot(input_tokens=10, cache_read_tokens=8, cache_write_tokens=3)


def test_snapshot_rejects_reasoning_larger_than_output() -> None:
    with pytest.raises(InvalidValueError, match="reasoning_tokens must not exceed output_tokens"):
        UsageSnapshot(output_tokens=1, reasoning_tokens=2)


def test_snapshot_addition_is_fieldwise() -> None:
    a = UsageSnapshot(10, 5, 2, 3, 1)
    b = UsageSnapshot(1, 2, 0, 1, 2)
    assert a + b == UsageSnapshot(11, 7, 2, 4, 3)
    assert sum([a, b], UsageSnapshot.ZERO) == a + b


def test_snapshot_addition_with_other_types_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        _ = UsageSnapshot() + 1  # type: ignore[operator]


def test_snapshot_is_frozen_hashable_and_picklable() -> None:
    usage = UsageSnapshot(3, 2, 1, 0, 1)
    with pytest.raises(AttributeError):
        usage.input_tokens = 5  # type: ignore[misc]
    assert {usage: 1}[UsageSnapshot(3, 2, 1, 0, 1)] == 1
    assert pickle.loads(pickle.dumps(usage)) == usage
    assert copy.deepcopy(usage) == usage


def test_snapshot_to_dict_is_json_ready() -> None:
    data = UsageSnapshot(3, 2, 1, 0, 1).to_dict()
    assert json.loads(json.dumps(data)) == {
        "input_tokens": 3,
        "output_tokens": 2,
        "cache_read_tokens": 1,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": 0,
        "reasoning_tokens": 1,
        "total_tokens": 5,
    }


def test_seed_example_costs_three_point_three_cents() -> None:
    register_pricing("model-a", ModelPricing(input_per_million=3.0, output_per_million=15.0))
    tracker = UsageTracker()
    tracker.record_turn("model-a", UsageSnapshot(input_tokens=5000, output_tokens=1200))
    assert tracker.format_cost() == "$0.0330"
    assert tracker.total_cost() == Decimal("0.033")
    assert tracker.is_over_budget(budget_usd=10.0) is False
    summary = tracker.per_model_summary()
    assert summary["model-a"]["cost_usd"] == "0.033"
    assert summary["model-a"]["turns"] == 1
    json.dumps(summary)


def test_record_turn_returns_an_immutable_turn_cost() -> None:
    price_model()
    usage = UsageSnapshot(input_tokens=1000, output_tokens=100)
    cost = UsageTracker().record_turn("m", usage)
    assert isinstance(cost, TurnCost)
    assert (cost.model, cost.usage, cost.priced) == ("m", usage, True)
    assert cost.cost_usd == Decimal("0.0045")
    assert cost.cost_femto_usd == 4_500_000_000_000
    with pytest.raises(AttributeError):
        cost.priced = False  # type: ignore[misc]


def test_a_million_one_token_turns_sum_to_exactly_one_dollar() -> None:
    price_model("m", "1", "0")
    tracker = UsageTracker()
    one = UsageSnapshot(input_tokens=1)
    for _ in range(1_000_000):
        tracker.record_turn("m", one)
    assert tracker.total_cost() == Decimal("1")
    assert str(tracker.total_cost()) == "1"
    assert tracker.turns == 1_000_000


def test_float_sum_would_drift_where_ours_does_not() -> None:
    price_model("m", "0.1", "0")
    tracker = UsageTracker()
    for _ in range(10):
        tracker.record_turn("m", UsageSnapshot(input_tokens=1_000_000))
    assert sum([0.1] * 10) != 1.0
    assert tracker.total_cost() == Decimal("1")


def test_cost_for_turn_prices_without_recording() -> None:
    price_model()
    tracker = UsageTracker()
    usage = UsageSnapshot(input_tokens=5000, output_tokens=1200)
    assert tracker.cost_for_turn("m", usage) == Decimal("0.033")
    assert tracker.turns == 0
    assert tracker.total_cost() == 0
    assert tracker.cost_for_turn("unknown", usage) == 0


def test_totals_and_per_model_rows_add_up() -> None:
    price_model("a", "1", "2", cache_read_per_million="0.5", reasoning_per_million="4")
    price_model("b", "10", "20")
    tracker = UsageTracker()
    tracker.record_turn("a", UsageSnapshot(1_000_000, 1_000_000, 500_000, 0, 250_000))
    tracker.record_turn("b", UsageSnapshot(100_000, 10_000))
    tracker.record_turn("a", UsageSnapshot(1, 1))
    assert tracker.turns == 3
    assert tracker.total_usage() == UsageSnapshot(1_100_001, 1_010_001, 500_000, 0, 250_000)
    rows = tracker.per_model_summary()
    assert list(rows) == ["a", "b"]
    # a: 0.5 uncached + 0.25 cached + 1.5 plain output + 1 reasoning, then 3e-6
    assert rows["a"]["cost_usd"] == "3.250003"
    assert rows["b"]["cost_usd"] == "1.2"
    assert rows["a"] == {
        "turns": 2,
        "input_tokens": 1_000_001,
        "output_tokens": 1_000_001,
        "cache_read_tokens": 500_000,
        "cache_write_tokens": 0,
        "cache_write_1h_tokens": 0,
        "reasoning_tokens": 250_000,
        "total_tokens": 2_000_002,
        "cost_usd": "3.250003",
        "priced": True,
        "unpriced_turns": 0,
        "service_tiers": {"default": {**without_tiers(rows["a"]), "tier_unpriced_turns": 0}},
    }
    assert tracker.total_cost() == Decimal("4.450003")


def without_tiers(row: object) -> dict[str, object]:
    """A summary row without its ``service_tiers`` (what each tier's row repeats)."""
    assert isinstance(row, dict)
    return {key: value for key, value in row.items() if key != "service_tiers"}


def test_summary_is_json_serialisable_and_consistent() -> None:
    price_model()
    tracker = UsageTracker()
    tracker.record_turn("m", UsageSnapshot(5000, 1200))
    tracker.record_turn("mystery", UsageSnapshot(10, 10))
    summary = tracker.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["turns"] == 2
    assert summary["total_tokens"] == 6220
    assert summary["cost_usd"] == "0.033"
    assert summary["cost"] == "$0.0330"
    assert summary["unpriced_models"] == ["mystery"]
    models = summary["models"]
    assert isinstance(models, dict)
    assert set(models) == {"m", "mystery"}


def test_unknown_model_costs_zero_is_listed_and_warned_once_per_process(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    first, second = UsageTracker(), UsageTracker()
    for tracker in (first, second):
        cost = tracker.record_turn("mystery", UsageSnapshot(100, 100))
        tracker.record_turn("mystery", UsageSnapshot(100, 100))
        assert cost.priced is False
        assert cost.cost_usd == 0
        assert tracker.unpriced_models == frozenset({"mystery"})
        assert tracker.per_model_summary()["mystery"]["priced"] is False
        assert tracker.total_usage().total_tokens == 400
    warnings = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert len(warnings) == 1
    assert "mystery" in warnings[0].getMessage()


def test_clear_pricing_forgets_which_models_were_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    UsageTracker().record_turn("mystery", UsageSnapshot())
    clear_pricing()
    UsageTracker().record_turn("mystery", UsageSnapshot())
    assert len([r for r in caplog.records if r.name == LOGGER_NAME]) == 2


def test_pricing_is_looked_up_when_each_turn_is_recorded() -> None:
    tracker = UsageTracker()
    usage = UsageSnapshot(input_tokens=1_000_000)
    tracker.record_turn("m", usage)  # unpriced: $0
    price_model("m", "1", "0")
    tracker.record_turn("m", usage)  # $1
    price_model("m", "2", "0")
    tracker.record_turn("m", usage)  # $2
    unregister_pricing("m")
    tracker.record_turn("m", usage)  # $0 again
    assert tracker.total_cost() == Decimal("3")
    assert tracker.per_model_summary()["m"]["unpriced_turns"] == 2
    assert tracker.unpriced_models == frozenset({"m"})


def test_spellings_of_a_model_name_share_one_row() -> None:
    price_model("m", "1", "0")
    tracker = UsageTracker()
    for name in ("m", " m", "m\n", "m"):
        assert tracker.record_turn(name, UsageSnapshot(1_000_000)).model == "m"
    assert tracker.per_model_summary() == {"m": tracker.per_model_summary()["m"]}
    assert tracker.per_model_summary()["m"]["turns"] == 4
    assert tracker.total_cost() == Decimal("4")


@pytest.mark.parametrize("bad", ["", "  ", None, 3, ["m"]])
def test_record_turn_rejects_bad_model_names(bad: object) -> None:
    price_model()
    with pytest.raises(InvalidValueError, match="model must be a non-empty str"):
        UsageTracker().record_turn(bad, UsageSnapshot())  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [None, {"input_tokens": 1}, (1, 2)])
def test_record_turn_rejects_non_snapshots(bad: object) -> None:
    price_model()
    tracker = UsageTracker()
    tracker.record_turn("m", UsageSnapshot())
    with pytest.raises(InvalidValueError, match="usage must be a UsageSnapshot"):
        tracker.record_turn("m", bad)  # type: ignore[arg-type]
    assert tracker.turns == 1


def test_record_turn_accepts_a_snapshot_subclass() -> None:
    class Tagged(UsageSnapshot):
        pass

    price_model()
    tracker = UsageTracker()
    tracker.record_turn("m", UsageSnapshot())
    assert tracker.record_turn("m", Tagged(input_tokens=1_000_000)).cost_usd == 3


def test_long_context_tier_applies_per_turn_not_to_the_sum() -> None:
    tier = LongContextTier(100, "10", "10")
    price_model("m", "1", "1", long_context=tier)
    tracker = UsageTracker()
    for _ in range(3):
        tracker.record_turn("m", UsageSnapshot(input_tokens=100))  # at threshold: base
    tracker.record_turn("m", UsageSnapshot(input_tokens=101))  # above: tier
    assert tracker.total_cost() == Decimal("0.000300") + Decimal("0.00101")


def _distinct_rates() -> ModelPricing:
    """Every token kind at a rate of its own, below and above a 1,000-token tier."""
    tier = LongContextTier(
        1_000,
        "4",
        "8",
        cache_read_per_million="0.75",
        cache_write_per_million="5",
        reasoning_per_million="12",
    )
    return price_model(
        "m",
        "1",
        "2",
        cache_read_per_million="0.5",
        cache_write_per_million="1.25",
        reasoning_per_million="3",
        long_context=tier,
    )


# (input, cache_read, cache_write, output, reasoning) -> exact USD. Base rates per
# million: in 1, read 0.5, write 1.25, out 2, reasoning 3; above 1,000 input tokens
# the whole turn is at in 4, read 0.75, write 5, out 8, reasoning 12.
TIER_TABLE = [
    ((999, 0, 0, 0, 0), "0.000999"),
    ((1_000, 0, 0, 0, 0), "0.001"),
    ((1_001, 0, 0, 0, 0), "0.004004"),
    ((999, 999, 0, 0, 0), "0.0004995"),
    ((1_000, 1_000, 0, 0, 0), "0.0005"),
    ((1_001, 1_001, 0, 0, 0), "0.00075075"),
    ((999, 0, 999, 0, 0), "0.00124875"),
    ((1_000, 0, 1_000, 0, 0), "0.00125"),
    ((1_001, 0, 1_001, 0, 0), "0.005005"),
    ((0, 0, 0, 1_000, 0), "0.002"),
    ((0, 0, 0, 1_000, 1_000), "0.003"),
    ((1_000, 0, 0, 1_000, 1_000), "0.004"),
    ((1_001, 0, 0, 1_000, 0), "0.012004"),
    ((1_001, 0, 0, 1_000, 1_000), "0.016004"),
    ((1_000, 300, 200, 500, 100), "0.002"),  # 500 + 150 + 250 + 800 + 300 (1e-6 USD)
    ((1_001, 300, 200, 500, 100), "0.007629"),  # 2004 + 225 + 1000 + 3200 + 1200
]


@pytest.mark.parametrize(("counts", "expected"), TIER_TABLE)
def test_each_token_kind_at_its_rate_either_side_of_the_tier(
    counts: tuple[int, int, int, int, int], expected: str
) -> None:
    pricing = _distinct_rates()
    usage = UsageSnapshot(*(counts[i] for i in (0, 3, 1, 2, 4)))
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == counts[1:3]
    cost = Decimal(expected)
    assert pricing.cost_usd(usage) == cost
    first = UsageTracker()
    assert first.record_turn("m", usage).cost_usd == cost  # first turn: the slow path
    fast = UsageTracker()
    fast.record_turn("m", UsageSnapshot.ZERO)
    turn = fast.record_turn("m", usage)  # a known spelling: the fast path
    assert turn.cost_usd == cost
    assert turn.cost_femto_usd == int(cost * 10**15)
    assert fast.cost_for_turn("m", usage) == cost
    assert fast.total_cost() == cost
    assert fast.total_usage() == usage
    row = fast.per_model_summary()["m"]
    assert row["cost_usd"] == str(cost)
    assert row["cache_write_tokens"] == usage.cache_write_tokens
    assert row["cache_read_tokens"] == usage.cache_read_tokens
    assert row["reasoning_tokens"] == usage.reasoning_tokens


# (input, cache_read, cache_write, of which one-hour, output, reasoning) -> exact USD,
# under two chained tiers. Per million: base in 1, read 0.5, write 1.25, one-hour
# write 2, out 2, reasoning 3; above 1,000 input tokens in 4, read 0.75, write 5,
# one-hour 6, out 8, reasoning 12; above 2,000 in 6, read 1, write 7, one-hour 9,
# out 10, reasoning 15.
CHAINED_TABLE = [
    ((999, 0, 999, 500, 0, 0), "0.00162375"),  # 499 * 1.25 + 500 * 2
    ((1_000, 0, 1_000, 1_000, 0, 0), "0.002"),
    ((1_001, 0, 1_001, 1_001, 0, 0), "0.006006"),
    ((1_999, 0, 0, 0, 0, 0), "0.007996"),
    ((2_000, 0, 0, 0, 0, 0), "0.008"),
    ((2_001, 0, 0, 0, 0, 0), "0.012006"),
    ((2_001, 2_001, 0, 0, 0, 0), "0.002001"),
    ((2_001, 0, 2_001, 0, 0, 0), "0.014007"),
    ((2_001, 0, 2_001, 2_001, 0, 0), "0.018009"),
    ((2_001, 0, 0, 0, 1_000, 1_000), "0.027006"),
    ((2_000, 500, 500, 200, 100, 50), "0.008075"),  # 4000 + 375 + 1500 + 1200 + 400 + 600
    ((2_001, 500, 500, 200, 100, 50), "0.011656"),  # 6006 + 500 + 2100 + 1800 + 500 + 750
]


@pytest.mark.parametrize(("counts", "expected"), CHAINED_TABLE)
def test_each_token_kind_at_its_rate_in_every_chained_tier(
    counts: tuple[int, int, int, int, int, int], expected: str
) -> None:
    inp, read, write, one_hour, out, reasoning = counts
    top = LongContextTier(
        2_000,
        "6",
        "10",
        cache_read_per_million="1",
        cache_write_per_million="7",
        cache_write_1h_per_million="9",
        reasoning_per_million="15",
    )
    middle = LongContextTier(
        1_000,
        "4",
        "8",
        cache_read_per_million="0.75",
        cache_write_per_million="5",
        cache_write_1h_per_million="6",
        reasoning_per_million="12",
        above=top,
    )
    pricing = price_model(
        "m",
        "1",
        "2",
        cache_read_per_million="0.5",
        cache_write_per_million="1.25",
        cache_write_1h_per_million="2",
        reasoning_per_million="3",
        long_context=middle,
    )
    usage = UsageSnapshot(inp, out, read, write, reasoning, one_hour)
    cost = Decimal(expected)
    assert pricing.cost_usd(usage) == cost
    tracker = UsageTracker()
    assert tracker.record_turn("m", usage).cost_usd == cost  # the slow path
    assert tracker.record_turn("m", usage).cost_usd == cost  # the fast path, if any
    assert tracker.record_turn("m", UsageSnapshot.ZERO).cost_usd == 0
    assert tracker.total_cost() == 2 * cost
    assert tracker.total_usage() == usage + usage


def test_the_fast_path_bills_cache_writes_at_their_own_rate_turn_after_turn() -> None:
    price_model("m", "3", "15", cache_write_per_million="3.75", cache_read_per_million="0.3")
    tracker = UsageTracker()
    writes = [UsageSnapshot(input_tokens=n, cache_write_tokens=n) for n in (1, 1_000, 400_000)]
    costs = [tracker.record_turn("m", usage).cost_usd for usage in writes * 2]
    assert costs == [Decimal("0.00000375"), Decimal("0.00375"), Decimal("1.5")] * 2
    assert tracker.total_cost() == 2 * (Decimal("0.00000375") + Decimal("0.00375") + Decimal("1.5"))
    assert tracker.total_usage().cache_write_tokens == 2 * 401_001
    assert tracker.total_usage().cache_read_tokens == 0


@pytest.mark.parametrize(
    ("femto_input", "expected"),
    [
        (0, "$0.0000"),
        (1, "<$0.0001"),  # one token at $1/M = $0.000001
        (49, "<$0.0001"),
        (50, "$0.0001"),  # $0.00005 rounds half up
        (149, "$0.0001"),
        (150, "$0.0002"),
        (33_000, "$0.0330"),
        (12_345_678_900, "$12345.6789"),
    ],
)
def test_format_cost_rounds_half_up_to_four_decimals(femto_input: int, expected: str) -> None:
    price_model("m", "1", "0")
    tracker = UsageTracker()
    if femto_input:
        tracker.record_turn("m", UsageSnapshot(input_tokens=femto_input))
    assert tracker.format_cost() == expected


def test_is_over_budget_means_strictly_greater() -> None:
    price_model("m", "1", "0")
    tracker = UsageTracker()
    tracker.record_turn("m", UsageSnapshot(input_tokens=1_000_000))
    assert tracker.is_over_budget(budget_usd=Decimal("1")) is False
    assert tracker.is_over_budget(budget_usd="0.999999") is True
    assert tracker.is_over_budget(1.0) is False
    assert tracker.is_over_budget(0) is True


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (-1, "budget_usd must be finite and >= 0, got -1"),
        ("nan", "budget_usd must be finite and >= 0, got 'nan'"),
        (True, "budget_usd must be a number, not a bool, got True"),
        (
            "1e-16",
            "budget_usd has more precision than 1e-15 USD can hold exactly, "
            "got 0.0000000000000001 (refusing to round it)",
        ),
    ],
)
def test_is_over_budget_validates_its_argument(bad: object, message: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        UsageTracker().is_over_budget(bad)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_empty_tracker_reports_zero() -> None:
    tracker = UsageTracker()
    assert tracker.total_cost() == 0
    assert tracker.total_usage() == UsageSnapshot.ZERO
    assert tracker.turns == 0
    assert tracker.per_model_summary() == {}
    assert tracker.unpriced_models == frozenset()
    assert tracker.format_cost() == "$0.0000"
    assert "turns=0" in repr(tracker)


def test_tracker_rejects_a_non_budget() -> None:
    with pytest.raises(InvalidValueError, match="budget must be a Budget"):
        UsageTracker(budget=10)  # type: ignore[arg-type]


def test_eight_threads_record_exact_totals() -> None:
    price_model("a", "3", "15")
    price_model("b", "0.3", "1.2", cache_read_per_million="0.03")
    tracker = UsageTracker()
    usage_a = UsageSnapshot(input_tokens=1234, output_tokens=56)
    usage_b = UsageSnapshot(input_tokens=1000, output_tokens=10, cache_read_tokens=900)
    per_thread = 100_000
    start = threading.Barrier(8)

    def worker(model: str, usage: UsageSnapshot) -> None:
        record = tracker.record_turn
        start.wait()
        for _ in range(per_thread):
            record(model, usage)

    threads = [
        threading.Thread(target=worker, args=("a", usage_a) if i % 2 else ("b", usage_b))
        for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    turns = 4 * per_thread
    cost_a = ModelPricing("3", "15").cost_usd(usage_a)
    cost_b = ModelPricing("0.3", "1.2", cache_read_per_million="0.03").cost_usd(usage_b)
    assert tracker.turns == 8 * per_thread
    assert tracker.total_cost() == (cost_a + cost_b) * turns
    assert tracker.total_usage() == UsageSnapshot(
        input_tokens=(1234 + 1000) * turns,
        output_tokens=(56 + 10) * turns,
        cache_read_tokens=900 * turns,
    )


def test_tracker_with_budget_charges_every_recorded_turn() -> None:
    price_model()
    budget = Budget(max_usd="0.05")
    tracker = UsageTracker(budget=budget)
    assert tracker.budget is budget
    tracker.record_turn("m", UsageSnapshot(5000, 1200))
    tracker.record_turn("mystery", UsageSnapshot(10, 10))
    assert budget.spent_usd == Decimal("0.033")
    assert budget.spent_tokens == 6220
    assert budget.requests == 2
    tracker.record_turn("m", UsageSnapshot(5000, 1200))  # recorded even though over
    assert budget.is_exceeded()
    with pytest.raises(BudgetExceededError):
        budget.check_after()
