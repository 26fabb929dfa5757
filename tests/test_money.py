"""One rule for what a dollar amount is, at every entry point that takes one."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from techrevati.runtime.budget import UsageLimits
from techrevati.runtime.conditions import CostExceeded
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.policy_engine import PhaseContext
from techrevati.runtime.pricing import ModelPricing

ENTRY_POINTS: dict[str, Callable[[object], object]] = {
    "UsageLimits(max_usd=)": lambda usd: UsageLimits(max_usd=usd),  # type: ignore[arg-type]
    "CostExceeded()": CostExceeded,  # type: ignore[dict-item]
    "PhaseContext(cost_usd=)": lambda usd: PhaseContext("p", cost_usd=usd),  # type: ignore[arg-type]
    "ModelPricing()": lambda usd: ModelPricing(usd, 1),  # type: ignore[arg-type]
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("amount", ["1e14", 5, 0.25, Decimal("0"), " 3.5 "])
def test_every_entry_point_accepts_the_same_amounts(entry: str, amount: object) -> None:
    ENTRY_POINTS[entry](amount)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize(
    "amount", ["1e16", "1e15", -1, "-0.5", "nan", float("inf"), True, "abc", [1]]
)
def test_every_entry_point_refuses_the_same_amounts(entry: str, amount: object) -> None:
    with pytest.raises(InvalidValueError, match=repr(amount).replace("[", r"\[")):
        ENTRY_POINTS[entry](amount)
