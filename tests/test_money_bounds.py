"""A dollar amount with an absurd exponent or length is refused at once, never computed.

``Decimal("1e-999999999").as_integer_ratio()`` builds a billion-digit integer
(more than 20 s); every entry point that scales an amount to femto-dollars
must refuse such a value from its digits and exponent instead. Each test has a
short timeout, so a regression fails fast rather than hanging the suite.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal, localcontext
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime import Orchestrator
from techrevati.runtime._money import _rounded, _scaled, _to_decimal
from techrevati.runtime.budget import UsageLimits
from techrevati.runtime.errors import InvalidValueError, PricingFileError
from techrevati.runtime.pricing import LongContextTier, ModelPricing, load_pricing_from_file
from techrevati.runtime.usage import UsageTracker
from tests.conftest import examples

pytestmark = pytest.mark.usefixtures("empty_pricing")
AT_ONCE = pytest.mark.timeout(5)
"""A refusal that must not hang: each of these does one conversion (the property tests do not)."""

TINY = "1e-999999999"
HUGE = "1e999999999"

SCALED_ENTRY_POINTS: dict[str, Callable[[str], object]] = {
    "ModelPricing(input)": lambda usd: ModelPricing(usd, 1),
    "ModelPricing(cache_write_1h)": lambda usd: ModelPricing(1, 1, cache_write_1h_per_million=usd),
    "LongContextTier(output)": lambda usd: LongContextTier(0, 1, usd),
    "UsageLimits(max_usd=)": lambda usd: UsageLimits(max_usd=usd),
    "Orchestrator(budget_usd=)": lambda usd: Orchestrator("r", "p", budget_usd=usd),
    "UsageTracker.is_over_budget()": lambda usd: UsageTracker().is_over_budget(usd),
}


@AT_ONCE
@pytest.mark.parametrize("entry", sorted(SCALED_ENTRY_POINTS))
@pytest.mark.parametrize("text", [TINY, "1E-999999999", "0." + "0" * 100_000 + "1"])
def test_a_vanishingly_small_amount_is_refused_at_once_as_too_precise(
    entry: str, text: str
) -> None:
    with pytest.raises(InvalidValueError, match="more precision than") as info:
        SCALED_ENTRY_POINTS[entry](text)
    assert len(str(info.value)) < 400  # named in scientific notation, not a billion zeros


@AT_ONCE
@pytest.mark.parametrize("entry", sorted(SCALED_ENTRY_POINTS))
@pytest.mark.parametrize("text", [HUGE, "9" * 100_000])
def test_a_vast_amount_is_refused_at_once_as_unreasonably_large(entry: str, text: str) -> None:
    with pytest.raises(InvalidValueError, match="unreasonably large"):
        SCALED_ENTRY_POINTS[entry](text)


@AT_ONCE
@pytest.mark.parametrize("entry", sorted(SCALED_ENTRY_POINTS))
def test_long_spellings_of_exact_amounts_are_accepted(entry: str) -> None:
    SCALED_ENTRY_POINTS[entry]("0E-999999999")
    SCALED_ENTRY_POINTS[entry]("3." + "0" * 100_000)  # trailing zeros: exactly 3


@AT_ONCE
def test_the_long_spellings_scale_to_the_exact_integer() -> None:
    assert _scaled(_to_decimal("3." + "0" * 100_000, "x"), 15, "x", "1e-15 USD") == 3 * 10**15
    assert _scaled(_to_decimal("0E-999999999", "x"), 15, "x", "1e-15 USD") == 0
    assert _scaled(Decimal("12.5E+3"), 9, "x", "u") == 12_500 * 10**9
    with pytest.raises(InvalidValueError, match="more precision"):
        _scaled(_to_decimal("0.25" + "0" * 5_000 + "E-999", "x"), 15, "x", "1e-15 USD")


@given(
    st.decimals(min_value=0, max_value=Decimal("1e14"), allow_nan=False, places=None),
    st.integers(0, 15),
)
@settings(max_examples=examples(300))
def test_scaled_agrees_with_exact_rational_arithmetic(number: Decimal, power: int) -> None:
    numerator, denominator = number.as_integer_ratio()
    whole, rest = divmod(numerator * 10**power, denominator)
    if rest:
        with pytest.raises(InvalidValueError, match="more precision"):
            _scaled(number, power, "x", "u")
    else:
        assert _scaled(number, power, "x", "u") == whole


@given(st.decimals(min_value=0, max_value=Decimal("1e14"), allow_nan=False, places=None))
@settings(max_examples=examples(300))
def test_rounded_is_half_even_to_the_grid_whatever_the_callers_context(number: Decimal) -> None:
    with localcontext() as wide:
        wide.prec = 100
        expected = number.quantize(Decimal("1e-9"), rounding="ROUND_HALF_EVEN")
    with localcontext() as narrow:
        narrow.prec = 2
        narrow.traps = dict.fromkeys(narrow.traps, True)
        rounded = _rounded(number, 9)
    assert rounded == expected
    _scaled(rounded, 9, "x", "u")  # on the grid


@AT_ONCE
def test_rounding_a_vanishing_rate_gives_zero_at_once() -> None:
    assert _rounded(Decimal(TINY), 9) == 0
    assert _rounded(Decimal("2.5E-9"), 9) == Decimal("2E-9")  # half to even
    assert _rounded(Decimal("3.5E-9"), 9) == Decimal("4E-9")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.json"
    path.write_text(text, encoding="utf-8")
    return path


@AT_ONCE
@pytest.mark.parametrize("strict", [False, True])
def test_a_litellm_file_with_a_vanishing_rate_is_refused_at_once(
    tmp_path: Path, strict: bool
) -> None:
    path = _write(
        tmp_path, '{"m": {"input_cost_per_token": ' + TINY + ', "output_cost_per_token": 1e-06}}'
    )
    with pytest.raises(PricingFileError) as info:
        load_pricing_from_file(path, strict=strict)
    assert info.value.entry == "m"
    assert info.value.reason.startswith(f"input_cost_per_token: {TINY} ")
    expected = "holds; strict=True refuses" if strict else "below the money grid"
    assert expected in info.value.reason


@AT_ONCE
def test_a_file_in_our_schema_with_a_vanishing_rate_is_refused_at_once(tmp_path: Path) -> None:
    models = {"m": {"input_per_million": TINY, "output_per_million": HUGE}}
    path = _write(tmp_path, json.dumps({"models": models}))
    with pytest.raises(PricingFileError) as info:
        load_pricing_from_file(path)
    assert [entry for entry, _ in info.value.problems] == ["m"]
    assert "input_per_million has more precision" in info.value.reason
