"""ModelPricing's exact rates, long-context tiers and the pricing registry."""

from __future__ import annotations

import dataclasses
import threading
from decimal import Decimal, localcontext

import pytest

from techrevati.runtime.budget import UsageLimits
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.pricing import (
    LongContextTier,
    ModelPricing,
    get_pricing,
    has_pricing,
    register_pricing,
    unregister_pricing,
)
from techrevati.runtime.usage import UsageSnapshot, UsageTracker
from tests.conftest import price_model

pytestmark = pytest.mark.usefixtures("empty_pricing")


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
        "cache_write_1h_tokens": 0,
        "service_tier": None,
    }
    assert dataclasses.replace(UsageSnapshot(1, 1), service_tier="Flex").service_tier == "flex"


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


def test_registry_starts_empty_and_round_trips() -> None:
    assert not has_pricing("m")
    assert get_pricing("m") is None
    pricing = price_model("m")
    assert has_pricing("m")
    assert get_pricing("m") is pricing
    assert unregister_pricing("m") is True
    assert unregister_pricing("m") is False
    assert get_pricing("m") is None


def test_model_names_match_exactly_after_strip() -> None:
    pricing = price_model("  model-a ")
    assert get_pricing("model-a") is pricing
    assert get_pricing("\tmodel-a\n") is pricing
    assert get_pricing("Model-A") is None


def test_last_registration_wins() -> None:
    price_model("m", "1", "1")
    second = price_model("m", "2", "2")
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


def test_the_turn_engines_cost_lookup_is_zero_for_an_unpriced_model() -> None:
    from techrevati.runtime.pricing import _cost_femto

    price_model("m", "3", "15")
    usage = UsageSnapshot(input_tokens=1_000, output_tokens=100)
    assert _cost_femto(" m ", usage) == 4_500_000_000_000  # $0.0045
    assert _cost_femto("mystery", usage) == 0
    assert _cost_femto("mystery", UsageSnapshot.ZERO) == 0
