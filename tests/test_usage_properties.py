"""Property tests: exact money, tier selection, snapshot algebra, validation, budget model."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.usage import (
    Budget,
    BudgetExceededError,
    BudgetReservation,
    LongContextTier,
    ModelPricing,
    UsageSnapshot,
    UsageTracker,
    clear_pricing,
    register_pricing,
)
from tests.conftest import examples

FAST = settings(max_examples=examples(60))

counts = st.integers(min_value=0, max_value=10**12)


@st.composite
def snapshots(draw: st.DrawFn, limit: int = 10**12) -> UsageSnapshot:
    cache_read = draw(st.integers(0, limit))
    cache_write = draw(st.integers(0, limit))
    extra_input = draw(st.integers(0, limit))
    reasoning = draw(st.integers(0, limit))
    extra_output = draw(st.integers(0, limit))
    return UsageSnapshot(
        input_tokens=cache_read + cache_write + extra_input,
        output_tokens=reasoning + extra_output,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


# Rates with at most 9 decimal places per million (exact in femto-dollars per token).
rates = st.decimals(min_value=0, max_value=1000, places=9, allow_nan=False, allow_infinity=False)
optional_rates = st.none() | rates


@st.composite
def pricings(draw: st.DrawFn) -> ModelPricing:
    tier = None
    if draw(st.booleans()):
        tier = LongContextTier(
            draw(st.integers(0, 10**6)),
            draw(rates),
            draw(rates),
            cache_read_per_million=draw(optional_rates),
            cache_write_per_million=draw(optional_rates),
            reasoning_per_million=draw(optional_rates),
        )
    return ModelPricing(
        draw(rates),
        draw(rates),
        cache_read_per_million=draw(optional_rates),
        cache_write_per_million=draw(optional_rates),
        reasoning_per_million=draw(optional_rates),
        long_context=tier,
    )


def _reference_cost(pricing: ModelPricing, usage: UsageSnapshot) -> Decimal:
    """The cost computed independently with Decimal arithmetic in a wide context."""
    source: ModelPricing | LongContextTier = pricing
    tier = pricing.long_context
    if tier is not None and usage.input_tokens > tier.threshold_tokens:
        source = tier
    inp, out = source.input_per_million, source.output_per_million
    read = source.cache_read_per_million
    write = source.cache_write_per_million
    reasoning = source.reasoning_per_million
    with localcontext() as ctx:
        ctx.prec = 200
        total = (
            (usage.input_tokens - usage.cache_read_tokens - usage.cache_write_tokens) * inp
            + usage.cache_read_tokens * (inp if read is None else read)
            + usage.cache_write_tokens * (inp if write is None else write)
            + (usage.output_tokens - usage.reasoning_tokens) * out
            + usage.reasoning_tokens * (out if reasoning is None else reasoning)
        )
        return total / 10**6


pytestmark = pytest.mark.usefixtures("empty_pricing")


@FAST
@given(pricings(), snapshots())
def test_cost_equals_independent_decimal_computation(
    pricing: ModelPricing, usage: UsageSnapshot
) -> None:
    assert pricing.cost_usd(usage) == _reference_cost(pricing, usage)


@FAST
@given(pricings(), st.lists(snapshots(limit=10**9), min_size=1, max_size=30))
def test_tracker_sum_is_exact_and_equals_the_sum_of_turns(
    pricing: ModelPricing, turns: list[UsageSnapshot]
) -> None:
    clear_pricing()
    register_pricing("m", pricing)
    tracker = UsageTracker()
    costs = [tracker.record_turn("m", usage).cost_usd for usage in turns]
    with localcontext() as ctx:
        ctx.prec = 200
        expected = sum((_reference_cost(pricing, u) for u in turns), Decimal(0))
        assert sum(costs, Decimal(0)) == expected
    assert tracker.total_cost() == expected
    assert tracker.total_usage() == sum(turns, UsageSnapshot.ZERO)
    assert tracker.turns == len(turns)


@FAST
@given(st.tuples(rates, rates, rates, rates), st.integers(0, 10**7), st.integers(0, 10**7))
def test_tier_applies_to_the_whole_turn_exactly_when_input_exceeds_threshold(
    four_rates: tuple[Decimal, Decimal, Decimal, Decimal], threshold: int, tokens: int
) -> None:
    base_in, base_out, tier_in, tier_out = four_rates
    pricing = ModelPricing(
        base_in, base_out, long_context=LongContextTier(threshold, tier_in, tier_out)
    )
    usage = UsageSnapshot(input_tokens=tokens, output_tokens=tokens)
    chosen = (tier_in, tier_out) if tokens > threshold else (base_in, base_out)
    with localcontext() as ctx:
        ctx.prec = 100
        expected = (tokens * chosen[0] + tokens * chosen[1]) / 10**6
    assert pricing.cost_usd(usage) == expected


@FAST
@given(snapshots(), snapshots(), snapshots())
def test_snapshot_addition_is_associative_and_commutative(
    a: UsageSnapshot, b: UsageSnapshot, c: UsageSnapshot
) -> None:
    assert (a + b) + c == a + (b + c)
    assert a + b == b + a
    assert a + UsageSnapshot.ZERO == a
    assert (a + b).total_tokens == a.total_tokens + b.total_tokens


@FAST
@given(
    st.integers(-5, 50),
    st.integers(-5, 50),
    st.integers(-5, 50),
    st.integers(-5, 50),
    st.integers(-5, 50),
)
def test_snapshot_is_valid_exactly_when_counts_are_consistent(
    inp: int, out: int, read: int, write: int, reasoning: int
) -> None:
    valid = min(inp, out, read, write, reasoning) >= 0 and read + write <= inp and reasoning <= out
    if valid:
        assert UsageSnapshot(inp, out, read, write, reasoning).total_tokens == inp + out
    else:
        with pytest.raises(InvalidValueError):
            UsageSnapshot(inp, out, read, write, reasoning)


@FAST
@given(st.decimals(min_value=0, max_value=10**6, allow_nan=False, allow_infinity=False))
def test_rate_is_accepted_exactly_when_it_fits_femto_dollars_per_token(rate: Decimal) -> None:
    _, digits, exponent = rate.as_tuple()
    assert isinstance(exponent, int)
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    fits = rate.is_zero() or exponent + trailing_zeros >= -9
    if fits:
        assert ModelPricing(rate, 0).input_per_million == rate
    else:
        with pytest.raises(InvalidValueError, match="more precision"):
            ModelPricing(rate, 0)


@FAST
@given(st.integers(0, 10**13))
def test_format_cost_matches_decimal_half_up_rounding(tokens: int) -> None:
    clear_pricing()
    register_pricing("m", ModelPricing("0.000000001", 0))  # one femto-dollar per token
    tracker = UsageTracker()
    if tokens:
        tracker.record_turn("m", UsageSnapshot(input_tokens=tokens))
    exact = tracker.total_cost()
    assert exact == Decimal(tokens).scaleb(-15)
    rounded = exact.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    if tokens and rounded == 0:
        assert tracker.format_cost() == "<$0.0001"
    else:
        assert tracker.format_cost() == f"${rounded}"


# -- Budget against a reference model ------------------------------------------------


class BudgetMachine(RuleBasedStateMachine):
    """Reservations, settlements, releases and charges against a plain-int model."""

    reservations = Bundle("reservations")

    @initialize(
        cap=st.integers(0, 50),
        max_tokens=st.none() | st.integers(0, 400),
        max_requests=st.none() | st.integers(0, 8),
    )
    def setup(self, cap: int, max_tokens: int | None, max_requests: int | None) -> None:
        clear_pricing()
        register_pricing("m", ModelPricing("1", "1"))  # $1 per million tokens
        # Work in micro-dollars: one token costs exactly one.
        self.cap = cap
        self.max_tokens = max_tokens
        self.max_requests = max_requests
        self.budget = Budget(
            max_usd=Decimal(cap).scaleb(-6), max_total_tokens=max_tokens, max_requests=max_requests
        )
        self.spent = self.reserved = 0
        self.requests = self.reserved_requests = 0
        self.states: dict[int, tuple[str, int]] = {}

    def _fits(self, wanted: int) -> bool:
        checks = [(self.cap, self.spent, self.reserved, wanted)]
        if self.max_tokens is not None:
            checks.append((self.max_tokens, self.spent, self.reserved, wanted))
        if self.max_requests is not None:
            checks.append((self.max_requests, self.requests, self.reserved_requests, 1))
        return all(s + r < limit and s + r + w <= limit for limit, s, r, w in checks)

    @rule(target=reservations, tokens=st.integers(0, 30))
    def reserve(self, tokens: int) -> BudgetReservation | None:
        fits = self._fits(tokens)
        try:
            reservation = self.budget.reserve("m", UsageSnapshot(input_tokens=tokens))
        except BudgetExceededError:
            assert not fits
            return None
        assert fits
        self.reserved += tokens
        self.reserved_requests += 1
        self.states[id(reservation)] = ("active", tokens)
        return reservation

    @rule(reservation=consumes(reservations), tokens=st.integers(0, 40))
    def settle(self, reservation: BudgetReservation | None, tokens: int) -> None:
        if reservation is None:
            return
        state, held = self.states[id(reservation)]
        assert state == "active"
        cost = reservation.settle(UsageSnapshot(input_tokens=tokens))
        assert cost.cost_usd == Decimal(tokens).scaleb(-6)
        self.states[id(reservation)] = ("settled", held)
        self.reserved -= held
        self.reserved_requests -= 1
        self.spent += tokens
        self.requests += 1

    @rule(reservation=consumes(reservations))
    def release(self, reservation: BudgetReservation | None) -> None:
        if reservation is None:
            return
        state, held = self.states[id(reservation)]
        assert reservation.release() is (state == "active")
        self.states[id(reservation)] = ("released", held)
        self.reserved -= held
        self.reserved_requests -= 1

    @rule(tokens=st.integers(0, 40))
    def charge(self, tokens: int) -> None:
        self.budget.charge("m", UsageSnapshot(input_tokens=tokens))
        self.spent += tokens
        self.requests += 1

    @rule(tokens=st.integers(0, 30))
    def check_before(self, tokens: int) -> None:
        fits = self._fits(tokens)
        try:
            self.budget.check_before(UsageSnapshot(input_tokens=tokens), model="m")
        except BudgetExceededError:
            assert not fits
        else:
            assert fits

    @invariant()
    def figures_match_the_model(self) -> None:
        assert self.budget.spent_usd == Decimal(self.spent).scaleb(-6)
        assert self.budget.reserved_usd == Decimal(self.reserved).scaleb(-6)
        assert self.budget.spent_tokens == self.spent
        assert self.budget.reserved_tokens == self.reserved
        assert self.budget.requests == self.requests
        assert self.budget.reserved_requests == self.reserved_requests
        over = self.spent > self.cap or (
            self.max_tokens is not None and self.spent > self.max_tokens
        )
        over = over or (self.max_requests is not None and self.requests > self.max_requests)
        assert self.budget.is_exceeded() is over


BudgetMachine.TestCase.settings = settings(max_examples=examples(40), stateful_step_count=25)
TestBudgetMachine = BudgetMachine.TestCase
