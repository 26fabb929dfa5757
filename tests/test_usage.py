from __future__ import annotations

import copy
import dataclasses
import json
import logging
import pickle
import threading
from collections.abc import Iterator
from decimal import Decimal, localcontext

import pytest

from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.usage import (
    LOGGER_NAME,
    Budget,
    BudgetExceededError,
    LongContextTier,
    ModelPricing,
    ReservationError,
    TurnCost,
    UsageLimits,
    UsageSnapshot,
    UsageTracker,
    clear_pricing,
    get_pricing,
    has_pricing,
    register_pricing,
    unregister_pricing,
)


@pytest.fixture(autouse=True)
def _empty_registry() -> Iterator[None]:
    clear_pricing()
    yield
    clear_pricing()


def _price(model: str = "m", inp: str = "3", out: str = "15", **extra: object) -> ModelPricing:
    pricing = ModelPricing(inp, out, **extra)  # type: ignore[arg-type]
    register_pricing(model, pricing)
    return pricing


# -- UsageSnapshot ----------------------------------------------------------------


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
        "reasoning_tokens": 1,
        "total_tokens": 5,
    }


# -- ModelPricing -----------------------------------------------------------------


def test_float_rates_convert_through_repr_exactly() -> None:
    pricing = ModelPricing(input_per_million=3.0, output_per_million=0.1)
    assert pricing.input_per_million == Decimal("3.0")
    assert str(pricing.input_per_million) == "3.0"
    assert str(pricing.output_per_million) == "0.1"


@pytest.mark.parametrize("value", [3, "3", Decimal("3"), 3.0, " 3.000 "])
def test_rates_accept_int_str_decimal_and_float(value: object) -> None:
    pricing = ModelPricing(value, 0)  # type: ignore[arg-type]
    assert isinstance(pricing.input_per_million, Decimal)
    assert pricing.input_per_million == 3


@pytest.mark.parametrize(
    "bad", [-1, "-0.5", float("nan"), float("inf"), "NaN", "Infinity", True, None, "abc", [1]]
)
def test_bad_rates_raise_naming_field_and_value(bad: object) -> None:
    with pytest.raises(InvalidValueError) as info:
        ModelPricing(input_per_million=1, output_per_million=bad)  # type: ignore[arg-type]
    assert "output_per_million" in str(info.value)
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_optional_rate_names_its_field() -> None:
    with pytest.raises(InvalidValueError, match="reasoning_per_million"):
        ModelPricing(1, 1, reasoning_per_million=-2)


def test_rate_more_precise_than_femto_dollars_per_token_is_refused_not_rounded() -> None:
    ModelPricing("0.000000001", 1)  # nine decimals per million: exactly 1e-15 USD a token
    with pytest.raises(InvalidValueError, match="input_per_million has more precision"):
        ModelPricing("0.0000000001", 1)


def test_absurdly_large_rate_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="unreasonably large"):
        ModelPricing("1E+999999", 1)


def test_negative_zero_rate_is_zero() -> None:
    assert ModelPricing("-0", 1).input_per_million == 0


def test_unset_rates_default_to_input_and_output_rates() -> None:
    pricing = ModelPricing(2, 10)
    usage = UsageSnapshot(
        input_tokens=1_000_000,
        cache_read_tokens=400_000,
        cache_write_tokens=100_000,
        output_tokens=1_000_000,
        reasoning_tokens=300_000,
    )
    assert pricing.cost_usd(usage) == Decimal("12")


def test_each_token_kind_is_billed_once_at_its_own_rate() -> None:
    pricing = ModelPricing(
        "3",
        "15",
        cache_read_per_million="0.3",
        cache_write_per_million="3.75",
        reasoning_per_million="20",
    )
    usage = UsageSnapshot(
        input_tokens=1_000_000,  # 500k uncached + 400k read + 100k written
        cache_read_tokens=400_000,
        cache_write_tokens=100_000,
        output_tokens=1_000_000,  # 700k plain + 300k reasoning
        reasoning_tokens=300_000,
    )
    expected = Decimal("1.5") + Decimal("0.12") + Decimal("0.375") + Decimal("10.5") + Decimal("6")
    assert pricing.cost_usd(usage) == expected


def test_long_context_tier_bills_the_whole_turn_strictly_above_threshold() -> None:
    tier = LongContextTier(200_000, input_per_million="6", output_per_million="22.5")
    pricing = ModelPricing("3", "15", long_context=tier)
    at = UsageSnapshot(input_tokens=200_000, output_tokens=1_000)
    above = UsageSnapshot(input_tokens=200_001, output_tokens=1_000)
    assert pricing.cost_usd(at) == Decimal("0.6") + Decimal("0.015")
    assert pricing.cost_usd(above) == Decimal("1.200006") + Decimal("0.0225")


def test_tier_cache_and_reasoning_rates_default_to_the_tier_rates() -> None:
    tier = LongContextTier(10, "6", "30")
    pricing = ModelPricing("3", "15", cache_read_per_million="0.3", long_context=tier)
    usage = UsageSnapshot(input_tokens=1_000_000, cache_read_tokens=1_000_000, output_tokens=0)
    assert pricing.cost_usd(usage) == Decimal("6")


@pytest.mark.parametrize("bad", [-1, True, 1.5, "10"])
def test_tier_threshold_must_be_a_non_negative_int(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="threshold_tokens"):
        LongContextTier(bad, 1, 1)  # type: ignore[arg-type]


def test_long_context_must_be_a_tier() -> None:
    with pytest.raises(InvalidValueError, match="long_context"):
        ModelPricing(1, 1, long_context={"threshold_tokens": 5})  # type: ignore[arg-type]


def test_pricing_is_a_frozen_value_with_decimal_equality() -> None:
    a = ModelPricing(3.0, 15)
    b = ModelPricing("3", Decimal("15.00"))
    assert a == b
    assert hash(a) == hash(b)
    with pytest.raises(AttributeError):
        a.input_per_million = Decimal(1)  # type: ignore[misc]


def test_replace_revalidates_and_reprices() -> None:
    pricing = ModelPricing("3", "15", long_context=LongContextTier(10, "6", "30"))
    cheaper = dataclasses.replace(pricing, input_per_million=Decimal(1))
    assert cheaper.cost_usd(UsageSnapshot(input_tokens=1_000_000)) == Decimal("6")
    assert cheaper.cost_usd(UsageSnapshot(input_tokens=10)) == Decimal("0.00001")
    with pytest.raises(InvalidValueError, match="output_per_million"):
        dataclasses.replace(pricing, output_per_million=Decimal(-1))
    limits = dataclasses.replace(UsageLimits(max_usd=1), max_requests=3)
    assert (limits.max_usd, limits.max_requests) == (Decimal(1), 3)
    assert dataclasses.asdict(UsageSnapshot(1, 1)) == {
        "input_tokens": 1,
        "output_tokens": 1,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
    }


def test_cost_does_not_depend_on_the_callers_decimal_context() -> None:
    pricing = ModelPricing("3.123456789", "15")
    usage = UsageSnapshot(input_tokens=123_456_789, output_tokens=987_654_321)
    expected = pricing.cost_usd(usage)
    with localcontext() as ctx:
        ctx.prec = 3
        ctx.traps = dict.fromkeys(ctx.traps, True)
        assert ModelPricing("3.123456789", "15").cost_usd(usage) == expected
        tracker = UsageTracker()
        register_pricing("m", pricing)
        tracker.record_turn("m", usage)
        assert str(tracker.total_cost()) == str(expected)
    with localcontext() as ctx:
        ctx.prec = 60
        exact = (123_456_789 * Decimal("3.123456789") + 987_654_321 * 15) / 10**6
    assert expected == exact
    assert str(expected) == "15200.426760750190521"


# -- registry ---------------------------------------------------------------------


def test_registry_starts_empty_and_round_trips() -> None:
    assert not has_pricing("m")
    assert get_pricing("m") is None
    pricing = _price("m")
    assert has_pricing("m")
    assert get_pricing("m") is pricing
    assert unregister_pricing("m") is True
    assert unregister_pricing("m") is False
    assert get_pricing("m") is None


def test_model_names_match_exactly_after_strip() -> None:
    pricing = _price("  model-a ")
    assert get_pricing("model-a") is pricing
    assert get_pricing("\tmodel-a\n") is pricing
    assert get_pricing("Model-A") is None


def test_last_registration_wins() -> None:
    _price("m", "1", "1")
    second = _price("m", "2", "2")
    assert get_pricing("m") is second


@pytest.mark.parametrize("bad", ["", "   ", None, 5])
def test_register_rejects_bad_model_names(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="model must be a non-empty str"):
        register_pricing(bad, ModelPricing(1, 1))  # type: ignore[arg-type]


def test_register_rejects_a_non_pricing() -> None:
    with pytest.raises(InvalidValueError, match="pricing must be a ModelPricing"):
        register_pricing("m", {"input_per_million": 1})  # type: ignore[arg-type]


def test_concurrent_registration_is_safe() -> None:
    def worker(index: int) -> None:
        for j in range(200):
            register_pricing(f"m{index}-{j}", ModelPricing(index, j))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pricing = get_pricing("m3-199")
    assert all(has_pricing(f"m{i}-{j}") for i in range(4) for j in range(200))
    assert pricing is not None
    assert pricing.output_per_million == 199


# -- UsageTracker -----------------------------------------------------------------


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
    _price()
    usage = UsageSnapshot(input_tokens=1000, output_tokens=100)
    cost = UsageTracker().record_turn("m", usage)
    assert isinstance(cost, TurnCost)
    assert (cost.model, cost.usage, cost.priced) == ("m", usage, True)
    assert cost.cost_usd == Decimal("0.0045")
    assert cost.cost_femto_usd == 4_500_000_000_000
    with pytest.raises(AttributeError):
        cost.priced = False  # type: ignore[misc]


def test_a_million_one_token_turns_sum_to_exactly_one_dollar() -> None:
    _price("m", "1", "0")
    tracker = UsageTracker()
    one = UsageSnapshot(input_tokens=1)
    for _ in range(1_000_000):
        tracker.record_turn("m", one)
    assert tracker.total_cost() == Decimal("1")
    assert str(tracker.total_cost()) == "1"
    assert tracker.turns == 1_000_000


def test_float_sum_would_drift_where_ours_does_not() -> None:
    _price("m", "0.1", "0")
    tracker = UsageTracker()
    for _ in range(10):
        tracker.record_turn("m", UsageSnapshot(input_tokens=1_000_000))
    assert sum([0.1] * 10) != 1.0
    assert tracker.total_cost() == Decimal("1")


def test_cost_for_turn_prices_without_recording() -> None:
    _price()
    tracker = UsageTracker()
    usage = UsageSnapshot(input_tokens=5000, output_tokens=1200)
    assert tracker.cost_for_turn("m", usage) == Decimal("0.033")
    assert tracker.turns == 0
    assert tracker.total_cost() == 0
    assert tracker.cost_for_turn("unknown", usage) == 0


def test_totals_and_per_model_rows_add_up() -> None:
    _price("a", "1", "2", cache_read_per_million="0.5", reasoning_per_million="4")
    _price("b", "10", "20")
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
        "reasoning_tokens": 250_000,
        "total_tokens": 2_000_002,
        "cost_usd": "3.250003",
        "priced": True,
        "unpriced_turns": 0,
    }
    assert tracker.total_cost() == Decimal("4.450003")


def test_summary_is_json_serialisable_and_consistent() -> None:
    _price()
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
    _price("m", "1", "0")
    tracker.record_turn("m", usage)  # $1
    _price("m", "2", "0")
    tracker.record_turn("m", usage)  # $2
    unregister_pricing("m")
    tracker.record_turn("m", usage)  # $0 again
    assert tracker.total_cost() == Decimal("3")
    assert tracker.per_model_summary()["m"]["unpriced_turns"] == 2
    assert tracker.unpriced_models == frozenset({"m"})


def test_spellings_of_a_model_name_share_one_row() -> None:
    _price("m", "1", "0")
    tracker = UsageTracker()
    for name in ("m", " m", "m\n", "m"):
        assert tracker.record_turn(name, UsageSnapshot(1_000_000)).model == "m"
    assert tracker.per_model_summary() == {"m": tracker.per_model_summary()["m"]}
    assert tracker.per_model_summary()["m"]["turns"] == 4
    assert tracker.total_cost() == Decimal("4")


@pytest.mark.parametrize("bad", ["", "  ", None, 3, ["m"]])
def test_record_turn_rejects_bad_model_names(bad: object) -> None:
    _price()
    with pytest.raises(InvalidValueError, match="model must be a non-empty str"):
        UsageTracker().record_turn(bad, UsageSnapshot())  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [None, {"input_tokens": 1}, (1, 2)])
def test_record_turn_rejects_non_snapshots(bad: object) -> None:
    _price()
    tracker = UsageTracker()
    tracker.record_turn("m", UsageSnapshot())
    with pytest.raises(InvalidValueError, match="usage must be a UsageSnapshot"):
        tracker.record_turn("m", bad)  # type: ignore[arg-type]
    assert tracker.turns == 1


def test_record_turn_accepts_a_snapshot_subclass() -> None:
    class Tagged(UsageSnapshot):
        pass

    _price()
    tracker = UsageTracker()
    tracker.record_turn("m", UsageSnapshot())
    assert tracker.record_turn("m", Tagged(input_tokens=1_000_000)).cost_usd == 3


def test_long_context_tier_applies_per_turn_not_to_the_sum() -> None:
    tier = LongContextTier(100, "10", "10")
    _price("m", "1", "1", long_context=tier)
    tracker = UsageTracker()
    for _ in range(3):
        tracker.record_turn("m", UsageSnapshot(input_tokens=100))  # at threshold: base
    tracker.record_turn("m", UsageSnapshot(input_tokens=101))  # above: tier
    assert tracker.total_cost() == Decimal("0.000300") + Decimal("0.00101")


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
    _price("m", "1", "0")
    tracker = UsageTracker()
    if femto_input:
        tracker.record_turn("m", UsageSnapshot(input_tokens=femto_input))
    assert tracker.format_cost() == expected


def test_is_over_budget_means_strictly_greater() -> None:
    _price("m", "1", "0")
    tracker = UsageTracker()
    tracker.record_turn("m", UsageSnapshot(input_tokens=1_000_000))
    assert tracker.is_over_budget(budget_usd=Decimal("1")) is False
    assert tracker.is_over_budget(budget_usd="0.999999") is True
    assert tracker.is_over_budget(1.0) is False
    assert tracker.is_over_budget(0) is True


@pytest.mark.parametrize("bad", [-1, "nan", True, "1e-16"])
def test_is_over_budget_validates_its_argument(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="budget_usd"):
        UsageTracker().is_over_budget(bad)  # type: ignore[arg-type]


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
    _price("a", "3", "15")
    _price("b", "0.3", "1.2", cache_read_per_million="0.03")
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
    _price()
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


# -- UsageLimits and Budget -------------------------------------------------------


def test_limits_are_validated_values() -> None:
    limits = UsageLimits(max_usd=10.0, max_total_tokens=1000, max_requests=5)
    assert limits.max_usd == Decimal("10.0")
    assert limits == UsageLimits("10", 1000, 5)
    with pytest.raises(InvalidValueError, match="max_usd"):
        UsageLimits(max_usd=-1)
    with pytest.raises(InvalidValueError, match="max_usd has more precision"):
        UsageLimits(max_usd="0.0000000000000001")
    with pytest.raises(InvalidValueError, match="max_total_tokens"):
        UsageLimits(max_total_tokens=-1)
    with pytest.raises(InvalidValueError, match="max_requests"):
        UsageLimits(max_requests=True)


def test_budget_takes_limits_or_keywords_but_not_both() -> None:
    assert Budget(UsageLimits(max_requests=2)).limits.max_requests == 2
    assert Budget(max_usd="1").limits.max_usd == 1
    with pytest.raises(InvalidValueError, match="not both"):
        Budget(UsageLimits(max_requests=2), max_usd=1)
    with pytest.raises(InvalidValueError, match="limits must be"):
        Budget(10)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="fail_closed_on_unpriced"):
        Budget(fail_closed_on_unpriced=1)  # type: ignore[arg-type]


def test_uncapped_budget_only_counts() -> None:
    _price()
    budget = Budget()
    for _ in range(3):
        budget.check_before(UsageSnapshot(10**9, 10**9), model="m")
        budget.charge("m", UsageSnapshot(1000, 100))
    budget.check_after()
    assert budget.remaining_usd is None
    assert budget.requests == 3
    assert budget.spent_usd == Decimal("0.0135")
    assert not budget.is_exceeded()


def test_check_before_refuses_an_estimate_that_would_exceed() -> None:
    _price()
    budget = Budget(max_usd="1")
    big = UsageSnapshot(input_tokens=400_000)  # $1.20
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before(big, model="m")
    error = info.value
    assert error.limit_kind == "usd"
    assert error.limit == Decimal("1")
    assert error.spent == 0
    assert error.requested == Decimal("1.2")
    assert error.limit_usd == Decimal("1")
    assert error.spent_usd == 0
    assert error.model == "m"
    assert "$1.2" in str(error)
    assert "limit $1" in str(error)
    assert isinstance(error, TechrevatiError)


def test_an_estimate_that_exactly_reaches_the_cap_is_allowed_then_refused() -> None:
    _price("m", "1", "0")
    budget = Budget(max_usd="1")
    full = UsageSnapshot(input_tokens=1_000_000)
    budget.check_before(full, model="m")
    budget.reserve("m", full).settle(full)
    assert budget.remaining_usd == 0
    assert not budget.is_exceeded()
    budget.check_after()
    with pytest.raises(BudgetExceededError, match="exhausted"):
        budget.check_before()
    with pytest.raises(BudgetExceededError, match="exhausted"):
        budget.reserve("m")


def test_spend_past_the_cap_without_estimate_is_refused_next_time() -> None:
    _price()
    budget = Budget(max_usd="1")
    with budget.reserve("m") as reservation:  # no estimate: only "not exhausted" is checked
        reservation.settle(UsageSnapshot(input_tokens=400_000))  # $1.20
    assert budget.is_exceeded()
    with pytest.raises(BudgetExceededError) as info:
        budget.check_after()
    assert info.value.spent == Decimal("1.2")
    assert "spent $1.2 > limit $1" in str(info.value)
    with pytest.raises(BudgetExceededError):
        budget.check_before()


def test_token_and_request_limits() -> None:
    budget = Budget(max_total_tokens=100, max_requests=2)
    budget.check_before(UsageSnapshot(50, 50))
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before(UsageSnapshot(50, 51))
    assert (info.value.limit_kind, info.value.limit, info.value.requested) == ("tokens", 100, 101)
    assert info.value.limit_usd is None
    budget.charge("m", UsageSnapshot(10, 10))
    budget.charge("m", UsageSnapshot(10, 10))
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before()
    assert (info.value.limit_kind, info.value.spent, info.value.limit) == ("requests", 2, 2)
    budget.check_after()  # two requests of two: reached, not over
    budget.charge("m", UsageSnapshot(10, 10))
    with pytest.raises(BudgetExceededError, match=r"requests\): spent 3 requests > limit 2"):
        budget.check_after()


def test_zero_budget_refuses_everything() -> None:
    budget = Budget(max_usd=0)
    with pytest.raises(BudgetExceededError):
        budget.check_before()


def test_reservations_count_against_later_checks() -> None:
    _price("m", "1", "0")
    budget = Budget(max_usd="1")
    half = UsageSnapshot(input_tokens=500_000)
    first = budget.reserve("m", half)
    second = budget.reserve("m", half)
    assert budget.reserved_usd == Decimal("1")
    assert budget.reserved_requests == 2
    assert budget.reserved_tokens == 1_000_000
    assert budget.remaining_usd == 0
    with pytest.raises(BudgetExceededError) as info:
        budget.reserve("m", half)
    assert info.value.reserved == Decimal("1")
    assert first.release() is True
    third = budget.reserve("m", half)
    assert second.settle(UsageSnapshot(input_tokens=250_000)).cost_usd == Decimal("0.25")
    assert budget.spent_usd == Decimal("0.25")
    assert budget.reserved_usd == Decimal("0.5")
    third.release()
    assert budget.reserved_usd == 0
    assert budget.reserved_requests == 0
    assert budget.requests == 1


def test_settle_twice_raises_and_release_after_settle_is_a_no_op() -> None:
    _price()
    budget = Budget(max_usd="1")
    reservation = budget.reserve("m", UsageSnapshot(1000))
    assert reservation.state == "active"
    cost = reservation.settle(UsageSnapshot(1000, 100))
    assert str(reservation.state) == "settled"
    assert cost.cost_usd == Decimal("0.0045")
    with pytest.raises(ReservationError, match="settled"):
        reservation.settle(UsageSnapshot(1000, 100))
    assert reservation.release() is False
    assert budget.spent_usd == Decimal("0.0045")
    assert budget.requests == 1


def test_settle_after_release_raises() -> None:
    budget = Budget()
    reservation = budget.reserve("m")
    assert reservation.release() is True
    assert reservation.release() is False
    assert reservation.state == "released"
    with pytest.raises(ReservationError, match="released"):
        reservation.settle(UsageSnapshot())
    assert budget.requests == 0


def test_reservation_context_manager_releases_on_error_and_keeps_a_settlement() -> None:
    _price()
    budget = Budget(max_usd="1")
    with pytest.raises(RuntimeError), budget.reserve("m", UsageSnapshot(1000)) as reservation:
        raise RuntimeError("call failed")
    assert reservation.state == "released"
    assert budget.reserved_usd == 0
    with budget.reserve("m", UsageSnapshot(1000)) as reservation:
        reservation.settle(UsageSnapshot(2000))
    assert reservation.state == "settled"
    assert budget.spent_usd == Decimal("0.006")
    assert reservation.budget is budget
    assert "settled" in repr(reservation)


def test_settle_may_exceed_the_estimate_and_is_charged_in_full() -> None:
    _price("m", "1", "0")
    budget = Budget(max_usd="1")
    reservation = budget.reserve("m", UsageSnapshot(input_tokens=100_000))
    reservation.settle(UsageSnapshot(input_tokens=2_000_000))
    assert budget.spent_usd == Decimal("2")
    assert budget.remaining_usd == 0
    assert budget.is_exceeded()


def test_unpriced_models_cost_zero_but_count_tokens_and_requests() -> None:
    budget = Budget(max_usd="1", max_total_tokens=150)
    reservation = budget.reserve("mystery", UsageSnapshot(50, 50))
    assert reservation.reserved_usd == 0
    cost = reservation.settle(UsageSnapshot(60, 60))
    assert (cost.priced, cost.cost_usd) == (False, Decimal(0))
    assert budget.spent_tokens == 120
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before(UsageSnapshot(20, 20), model="mystery")
    assert info.value.limit_kind == "tokens"


def test_fail_closed_budget_refuses_unpriced_models_before_the_call() -> None:
    _price()
    budget = Budget(max_usd="1", fail_closed_on_unpriced=True)
    assert budget.fail_closed_on_unpriced
    budget.check_before(model="m")
    budget.check_before()  # no model named: nothing to price
    with pytest.raises(BudgetExceededError, match="no pricing") as info:
        budget.reserve("mystery", UsageSnapshot(10))
    assert info.value.model == "mystery"
    with pytest.raises(BudgetExceededError, match="fails closed"):
        budget.check_before(model="mystery")
    assert budget.reserved_requests == 0
    budget.charge("mystery", UsageSnapshot(10, 10))  # spend already made is recorded
    assert budget.requests == 1
    # Without a dollar cap there is nothing to fail closed on.
    Budget(max_requests=5, fail_closed_on_unpriced=True).reserve("mystery").release()


def test_check_before_validates_its_arguments() -> None:
    budget = Budget()
    with pytest.raises(InvalidValueError, match="usage must be a UsageSnapshot"):
        budget.check_before({"input_tokens": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="model must be a non-empty str"):
        budget.check_before(model="  ")
    with pytest.raises(InvalidValueError, match="model must be a non-empty str"):
        budget.reserve("")
    with pytest.raises(InvalidValueError, match="usage must be a UsageSnapshot"):
        budget.charge("m", None)  # type: ignore[arg-type]


def test_budget_summary_is_json_serialisable() -> None:
    _price()
    budget = Budget(max_usd="2", max_requests=10)
    budget.charge("m", UsageSnapshot(1000, 100))
    budget.reserve("m", UsageSnapshot(1000))
    summary = budget.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["spent_usd"] == "0.0045"
    assert summary["reserved_usd"] == "0.003"
    assert summary["max_usd"] == "2"
    assert summary["reserved_requests"] == 1
    assert "spent_usd=0.0045" in repr(budget)


def test_budget_errors_pickle_with_their_fields() -> None:
    budget = Budget(max_requests=0)
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before()
    clone = pickle.loads(pickle.dumps(info.value))
    assert (clone.limit_kind, clone.limit, clone.spent) == ("requests", 0, 0)
    assert str(clone) == str(info.value)


def test_concurrent_reservations_never_overshoot_and_totals_are_exact() -> None:
    _price("m", "1", "0")
    budget = Budget(max_usd="1", max_requests=10_000)
    estimate = UsageSnapshot(input_tokens=1000)  # $0.001 each: 1000 fit
    actual = UsageSnapshot(input_tokens=999)
    settled: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker() -> None:
        mine = refusals = 0
        start.wait()
        while True:
            try:
                reservation = budget.reserve("m", estimate)
            except BudgetExceededError:
                refusals += 1
                state = budget.summary()  # read atomically: final when nothing is in flight
                left = Decimal(str(state["reserved_usd"])) + Decimal(str(state["spent_usd"]))
                if state["reserved_requests"] == 0 and 1 - left < Decimal("0.001"):
                    break
                continue
            assert budget.spent_usd + budget.reserved_usd <= 1
            reservation.settle(actual)
            mine += 1
        with lock:
            settled.append(mine)
            refused.append(refusals)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done = sum(settled)
    assert len(refused) == 8
    # Each settle leaves $0.000001 unspent, so slightly more than 1000 fit.
    assert done == 1001
    assert budget.spent_usd == Decimal("0.000999") * done
    assert budget.spent_usd <= 1
    assert budget.requests == done
    assert budget.reserved_usd == 0
    assert budget.reserved_requests == 0
