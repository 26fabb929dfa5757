"""Money: behaviours a mutation run of the money group showed no other test pinned down.

The figures a budget's refusal carries, what a settled reservation records
and returns, the estimate a model's last call leaves, the fields each usage
shape's errors name, Bedrock's per-TTL cache writes summed, and the few edges
of the private helpers a resumed session and a price file rely on.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

import techrevati.runtime.usage as usage_module
from techrevati.runtime._money import _format_usd, _rounded, _scaled, usd_text
from techrevati.runtime.budget import (
    _MAX_SPELLINGS,
    Budget,
    BudgetExceededError,
    ReservationError,
    UsageLimits,
)
from techrevati.runtime.errors import InvalidValueError, UsageParseError
from techrevati.runtime.pricing import LongContextTier, ModelPricing, _femto
from techrevati.runtime.usage import UsageSnapshot, UsageTracker, _plan_for, _planned
from tests.conftest import price_model

pytestmark = pytest.mark.usefixtures("empty_pricing")

M = 10**6
"""A million tokens: at $3/$15 per million, M input tokens cost $3."""


# -- Budget: the figures of a refusal ---------------------------------------------------------


def test_a_spend_over_the_cap_names_what_was_spent_and_nothing_held_or_asked() -> None:
    price_model()
    budget = Budget(max_usd="2")
    budget.charge("m", UsageSnapshot(M))  # $3: over the $2 cap
    with pytest.raises(BudgetExceededError) as info:
        budget.check_after()
    error = info.value
    assert error.limit_kind == "usd"
    assert error.spent == Decimal(3)
    assert error.spent_usd == Decimal(3)
    assert error.reserved == 0
    assert error.requested == 0


def test_too_many_tokens_after_the_fact_names_none_held_or_asked() -> None:
    budget = Budget(max_total_tokens=10)
    budget.charge("m", UsageSnapshot(8, 4))
    with pytest.raises(BudgetExceededError) as info:
        budget.check_after()
    assert (info.value.limit_kind, info.value.spent) == ("tokens", 12)
    assert (info.value.reserved, info.value.requested) == (0, 0)


def test_a_refused_request_asks_for_one_request() -> None:
    budget = Budget(max_requests=1)
    budget.charge("m", UsageSnapshot(1, 1))
    for refuse in (lambda: budget.check_before(model="m"), lambda: budget.reserve("m")):
        with pytest.raises(BudgetExceededError) as info:
            refuse()
        assert info.value.limit_kind == "requests"
        assert (info.value.limit, info.value.spent, info.value.requested) == (1, 1, 1)


def test_a_refusal_of_tokens_carries_the_dollars_spent_so_far() -> None:
    price_model()
    budget = Budget(max_usd="100", max_total_tokens=M)
    budget.charge("m", UsageSnapshot(M))  # $3 and every token
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before(UsageSnapshot(1), model="m")
    assert info.value.limit_kind == "tokens"
    assert info.value.spent_usd == Decimal(3)
    assert info.value.limit_usd == Decimal(100)


def test_a_budget_full_of_reservations_is_exhausted_and_says_so_in_figures() -> None:
    price_model()
    budget = Budget(max_usd="3", max_total_tokens=10**7)
    held = budget.reserve("m", UsageSnapshot(M))  # holds all $3, spends nothing
    with pytest.raises(BudgetExceededError) as info:
        budget.reserve("m", UsageSnapshot(1))
    assert str(info.value) == (
        "budget exhausted (usd): spent $0 + reserved $3 has reached the limit $3 (model 'm')"
    )
    held.settle(UsageSnapshot(M // 3))  # $0.999999 spent, nothing held
    budget.reserve("m", UsageSnapshot(M // 3))  # $0.999999 held
    with pytest.raises(BudgetExceededError) as info:
        budget.reserve("m", UsageSnapshot(M))
    assert str(info.value) == (
        "budget would be exceeded (usd): spent $0.999999 + reserved $0.999999 + this call $3 "
        "> limit $3 (model 'm')"
    )


def test_token_refusals_show_every_figure_in_tokens() -> None:
    budget = Budget(max_total_tokens=100)
    budget.charge("m", UsageSnapshot(30, 10))
    budget.reserve("m", UsageSnapshot(50, 10))
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before(UsageSnapshot(1))
    assert str(info.value) == (
        "budget exhausted (tokens): spent 40 + reserved 60 tokens has reached the limit 100"
    )
    budget = Budget(max_total_tokens=100)
    budget.charge("m", UsageSnapshot(30, 10))
    budget.reserve("m", UsageSnapshot(20, 10))
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before(UsageSnapshot(40, 1))
    assert str(info.value) == (
        "budget would be exceeded (tokens): spent 40 + reserved 30 + this call 41 tokens "
        "> limit 100"
    )


def test_a_refusal_without_a_model_or_an_estimate_asks_for_nothing() -> None:
    price_model()
    budget = Budget(max_usd="3", max_total_tokens=M)
    budget.charge("m", UsageSnapshot(M))  # every dollar and every token
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before()
    assert (info.value.limit_kind, info.value.requested) == ("usd", 0)
    budget = Budget(max_total_tokens=M)
    budget.charge("m", UsageSnapshot(M))
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before()
    assert (info.value.limit_kind, info.value.requested) == ("tokens", 0)
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before(model="unseen")
    assert (info.value.limit_kind, info.value.requested) == ("tokens", 0)


def test_a_fail_closed_budget_holds_nothing_for_a_priced_model_it_has_not_seen() -> None:
    price_model()
    budget = Budget(max_usd="1", fail_closed_on_unpriced=True)
    reservation = budget.reserve("m")
    assert (reservation.reserved_usd, reservation.reserved_tokens) == (Decimal(0), 0)
    assert (budget.reserved_usd, budget.reserved_tokens, budget.reserved_requests) == (
        Decimal(0),
        0,
        1,
    )


def test_a_fail_closed_refusal_carries_the_budgets_figures() -> None:
    price_model()
    budget = Budget(max_usd="10", fail_closed_on_unpriced=True)
    budget.charge("m", UsageSnapshot(M))  # $3 spent
    budget.reserve("m", UsageSnapshot(M // 3))  # $0.999999 held
    with pytest.raises(BudgetExceededError, match="no pricing") as info:
        budget.reserve("unpriced")
    error = info.value
    assert error.limit_kind == "usd"
    assert (error.limit, error.limit_usd) == (Decimal(10), Decimal(10))
    assert (error.spent, error.spent_usd) == (Decimal(3), Decimal(3))
    assert error.reserved == Decimal("0.999999")
    assert error.model == "unpriced"


@pytest.mark.parametrize("model", [["m"], {"m": 1}, None, 3])
def test_reserving_for_a_model_that_is_not_a_str_is_a_typed_error(model: object) -> None:
    budget = Budget()
    with pytest.raises(InvalidValueError, match="model"):
        budget.reserve(model)  # type: ignore[arg-type]
    assert budget.reserved_requests == 0


def test_reserve_refuses_a_call_that_would_go_past_the_token_cap() -> None:
    price_model()
    budget = Budget(max_usd="100", max_total_tokens=100, max_requests=10)
    budget.charge("m", UsageSnapshot(30, 10))
    budget.reserve("m", UsageSnapshot(20, 10))  # 40 spent + 30 held
    with pytest.raises(BudgetExceededError) as info:
        budget.reserve(" m ", UsageSnapshot(40, 1))
    error = info.value
    assert (error.limit_kind, error.limit, error.spent) == ("tokens", 100, 40)
    assert (error.reserved, error.requested, error.model) == (30, 41, "m")
    budget.reserve("m", UsageSnapshot(30))  # exactly up to the cap fits
    assert budget.reserved_tokens == 60


def test_reserve_refuses_a_request_past_the_cap_counting_open_reservations() -> None:
    price_model()
    budget = Budget(max_usd="100", max_total_tokens=10**6, max_requests=3)
    budget.charge("m", UsageSnapshot(1))
    budget.reserve("m", UsageSnapshot(1))
    budget.reserve("m", UsageSnapshot(1))  # 1 spent + 2 held: the cap
    with pytest.raises(BudgetExceededError) as info:
        budget.reserve(" m ", UsageSnapshot(1))
    error = info.value
    assert (error.limit_kind, error.limit, error.spent, error.reserved) == ("requests", 3, 1, 2)
    assert (error.requested, error.model) == (1, "m")


def test_a_budget_remembers_at_most_its_limit_of_spellings() -> None:
    budget = Budget()
    for number in range(_MAX_SPELLINGS + 2):
        budget.reserve(f" m{number}")
    assert len(budget._names) == _MAX_SPELLINGS
    assert budget._names[" m0"] == "m0"


def test_each_limit_error_names_its_argument_and_unit() -> None:
    with pytest.raises(InvalidValueError, match=r"^max_usd must be finite"):
        UsageLimits(max_usd="-1")
    with pytest.raises(
        InvalidValueError, match=r"^max_usd has more precision than 1e-15 USD can hold exactly"
    ):
        UsageLimits(max_usd="1e-16")
    with pytest.raises(InvalidValueError, match=r"^max_total_tokens must be an int >= 0"):
        UsageLimits(max_total_tokens=-1)
    with pytest.raises(InvalidValueError, match=r"^max_requests must be an int >= 0"):
        UsageLimits(max_requests=-1)
    with pytest.raises(InvalidValueError, match=r"^give either limits or max_usd"):
        Budget(UsageLimits(), max_requests=1)
    with pytest.raises(InvalidValueError, match=r"^default_estimate must be a UsageSnapshot"):
        Budget(default_estimate=5)  # type: ignore[arg-type]


# -- Budget: what a model's last call leaves for the next one ---------------------------------


def test_check_before_without_an_estimate_expects_the_models_last_charge() -> None:
    price_model()
    budget = Budget(max_usd="5")
    budget.charge("m", UsageSnapshot(M))  # $3 spent; the next call of m expects $3 more
    with pytest.raises(BudgetExceededError) as info:
        budget.check_before(model="m")
    assert info.value.requested == Decimal(3)
    budget.check_before(model="other")  # a model not seen yet expects nothing


def test_a_settled_reservation_sets_what_the_models_next_call_holds() -> None:
    price_model()
    budget = Budget(max_usd="100")
    with budget.reserve("m", UsageSnapshot(1)) as first:
        first.settle(UsageSnapshot(2 * M, 10))
    nxt = budget.reserve(" m ")
    assert nxt.reserved_usd == Decimal("6.00015")
    assert nxt.reserved_tokens == 2 * M + 10
    assert budget.reserved_usd == Decimal("6.00015")


def test_settle_returns_the_stripped_model_and_the_actual_usage() -> None:
    price_model()
    budget = Budget()
    actual = UsageSnapshot(M, 2)
    cost = budget.reserve(" m ").settle(actual)
    assert cost.model == "m"
    assert cost.usage is actual
    assert cost.cost_usd == Decimal("3.00003")
    assert cost.priced is True


def test_settling_twice_says_to_charge_instead() -> None:
    budget = Budget()
    reservation = budget.reserve("m")
    reservation.settle(UsageSnapshot(1))
    with pytest.raises(ReservationError, match=r"use Budget\.charge to add spend without one$"):
        reservation.settle(UsageSnapshot(1))


# -- UsageSnapshot and UsageTracker -----------------------------------------------------------


@pytest.mark.parametrize("state", [(1, 2, 0, 0), (1, 2, 0, 0, 0, 0, 0)])
def test_a_pickled_state_of_the_wrong_length_is_refused(state: tuple[int, ...]) -> None:
    snapshot = UsageSnapshot.__new__(UsageSnapshot)
    with pytest.raises(ValueError, match="zip"):
        snapshot.__setstate__(state)


def test_restored_unpriced_turns_are_each_counted() -> None:
    tracker = UsageTracker()
    for _ in range(3):
        tracker._restore("free", UsageSnapshot(1, 1), 0, priced=False)
    row = tracker.per_model_summary()["free"]
    assert row["turns"] == 3
    assert row["unpriced_turns"] == 3
    assert row["priced"] is False


def test_the_budget_names_are_listed_by_dir_of_the_usage_module() -> None:
    listed = dir(usage_module)
    assert {"Budget", "UsageLimits", "ReservationError", "UsageSnapshot"} <= set(listed)
    assert listed == sorted(listed)


# -- _usage_shapes: each field's error names the shape, Bedrock's TTLs add up -----------------

BEDROCK = {"inputTokens": 10, "outputTokens": 5}


@pytest.mark.parametrize(
    "field",
    ["inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens"],
)
def test_a_bad_bedrock_count_names_the_shape_and_the_field(field: str) -> None:
    with pytest.raises(
        UsageParseError, match=rf"^Bedrock Converse usage \(dict\) field {field} must be"
    ):
        UsageSnapshot.from_response({**BEDROCK, field: -1})


@pytest.mark.parametrize("ttl", ["1h", "5m"])
def test_a_bad_bedrock_ttl_count_names_the_shape(ttl: str) -> None:
    details = [{"ttl": ttl, "inputTokens": "7"}]
    with pytest.raises(
        UsageParseError,
        match=r"^Bedrock Converse usage \(dict\) cacheDetails field inputTokens must be",
    ):
        UsageSnapshot.from_response({**BEDROCK, "cacheDetails": details})


def test_a_bedrock_ttl_split_over_the_write_total_names_the_shape() -> None:
    details = [{"ttl": "1h", "inputTokens": 3}, {"ttl": "5m", "inputTokens": 3}]
    with pytest.raises(
        UsageParseError, match=r"^Bedrock Converse usage \(dict\) is inconsistent: one-hour"
    ):
        UsageSnapshot.from_response(
            {**BEDROCK, "cacheWriteInputTokens": 5, "cacheDetails": details}
        )


def test_bedrock_cache_writes_of_one_ttl_in_several_entries_add_up() -> None:
    details = [
        {"ttl": "1h", "inputTokens": 4},
        {"ttl": "5m", "inputTokens": 2},
        {"ttl": "1h", "inputTokens": 6},
        {"ttl": "5m", "inputTokens": 3},
    ]
    snapshot = UsageSnapshot.from_response({**BEDROCK, "cacheDetails": details})
    assert snapshot.cache_write_tokens == 15
    assert snapshot.cache_write_1h_tokens == 10
    assert snapshot.input_tokens == 25


@pytest.mark.parametrize(
    "field",
    [
        "prompt_token_count",
        "tool_use_prompt_token_count",
        "candidates_token_count",
        "cached_content_token_count",
        "thoughts_token_count",
    ],
)
def test_a_bad_gemini_count_names_the_shape_and_the_field(field: str) -> None:
    usage = {"prompt_token_count": 10, "candidates_token_count": 5, field: True}
    with pytest.raises(
        UsageParseError, match=rf"^Gemini usage_metadata \(dict\) field {field} must be"
    ):
        UsageSnapshot.from_response(usage)


# -- _money._rounded: rounding up to the cap is refused, naming the rate ----------------------


def test_a_rate_that_rounds_up_to_1e15_is_refused_as_a_rate() -> None:
    with pytest.raises(InvalidValueError, match=r"^rate is unreasonably large \(>= 1e15\)"):
        _rounded(Decimal("999999999999999.9999999999"), 9)


def test_an_over_precise_amount_is_shown_plain_down_to_60_places_then_in_scientific() -> None:
    with pytest.raises(InvalidValueError, match=r"got 0\.0{59}1 \(refusing"):
        _scaled(Decimal("1E-60"), 15, "x", "u")
    with pytest.raises(InvalidValueError, match=r"got 1E-61 \(refusing"):
        _scaled(Decimal("1E-61"), 15, "x", "u")


# -- LongContextTier: a chained tier must start higher ----------------------------------------


@pytest.mark.parametrize("higher", [100, 50])
def test_a_chained_tier_at_or_below_its_base_threshold_is_refused(higher: int) -> None:
    above = LongContextTier(higher, 2, 2)
    with pytest.raises(
        InvalidValueError,
        match=r"^above must be None or a LongContextTier with a higher threshold_tokens "
        r"than 100, got LongContextTier\(",
    ):
        LongContextTier(100, 1, 1, above=above)
    assert LongContextTier(100, 1, 1, above=LongContextTier(101, 2, 2)).above is not None


def test_a_chained_tier_that_is_not_a_tier_is_a_typed_error() -> None:
    with pytest.raises(InvalidValueError, match="above must be None or a LongContextTier"):
        LongContextTier(100, 1, 1, above=5)  # type: ignore[arg-type]


ANTHROPIC = {"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 0}


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ({"input_tokens": -1}, "field input_tokens"),
        ({"output_tokens": -1}, "field output_tokens"),
        ({"cache_read_input_tokens": -1}, "field cache_read_input_tokens"),
        ({"cache_creation_input_tokens": -1}, "field cache_creation_input_tokens"),
        (
            {"cache_creation": {"ephemeral_1h_input_tokens": -1}},
            "cache_creation field ephemeral_1h_input_tokens",
        ),
        (
            {"cache_creation": {"ephemeral_5m_input_tokens": -1}},
            "cache_creation field ephemeral_5m_input_tokens",
        ),
        (
            {"output_tokens_details": {"thinking_tokens": -1}},
            "output_tokens_details field thinking_tokens",
        ),
    ],
)
def test_a_bad_anthropic_count_names_the_shape_and_the_field(
    extra: dict[str, object], where: str
) -> None:
    with pytest.raises(UsageParseError, match=rf"^Anthropic usage \(dict\) {where} must be"):
        UsageSnapshot.from_response({**ANTHROPIC, **extra})


# -- OpenAI and DeepSeek: missing counts are 0, errors name the shape -------------------------


def test_openai_responses_usage_without_input_tokens_reads_zero_input() -> None:
    assert UsageSnapshot.from_response({"output_tokens": 5}) == UsageSnapshot(0, 5)


@pytest.mark.parametrize(
    ("usage", "field"),
    [
        ({"prompt_tokens": -1, "completion_tokens": 1}, "prompt_tokens"),
        ({"prompt_tokens": 1, "completion_tokens": -1}, "completion_tokens"),
        (
            {"prompt_tokens": 1, "completion_tokens": 1, "prompt_cache_hit_tokens": -1},
            "prompt_cache_hit_tokens",
        ),
        (
            {"prompt_tokens": 1, "completion_tokens": 1, "prompt_cache_miss_tokens": -1},
            "prompt_cache_miss_tokens",
        ),
    ],
)
def test_a_bad_openai_chat_count_names_the_shape_and_the_field(
    usage: dict[str, object], field: str
) -> None:
    with pytest.raises(
        UsageParseError, match=rf"^OpenAI chat usage \(dict\) field {field} must be"
    ):
        UsageSnapshot.from_response(usage)


@pytest.mark.parametrize("field", ["input_tokens", "output_tokens"])
def test_a_bad_openai_responses_count_names_the_shape_and_the_field(field: str) -> None:
    usage: dict[str, object] = {"input_tokens": 1, "output_tokens": 1, field: -1}
    with pytest.raises(
        UsageParseError, match=rf"^OpenAI Responses usage \(dict\) field {field} must be"
    ):
        UsageSnapshot.from_response(usage)


@pytest.mark.parametrize(
    ("counts", "inp", "cache_read"),
    [
        ({"prompt_cache_miss_tokens": 7}, 7, 0),
        ({"prompt_cache_hit_tokens": 3}, 3, 3),
        ({"prompt_cache_hit_tokens": 0, "prompt_cache_miss_tokens": 0}, 0, 0),
    ],
)
def test_deepseek_without_prompt_tokens_adds_only_the_counts_given(
    counts: dict[str, int], inp: int, cache_read: int
) -> None:
    snapshot = UsageSnapshot.from_response({"completion_tokens": 5, **counts})
    assert (snapshot.input_tokens, snapshot.cache_read_tokens) == (inp, cache_read)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 10, "prompt_cache_hit_tokens": 3, "prompt_cache_miss_tokens": 3},
        {
            "prompt_tokens": 10,
            "prompt_cache_hit_tokens": 3,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    ],
)
def test_deepseek_counts_that_disagree_name_the_shape(usage: dict[str, object]) -> None:
    with pytest.raises(UsageParseError, match=r"^OpenAI chat usage \(dict\) is inconsistent: "):
        UsageSnapshot.from_response({"completion_tokens": 1, **usage})


# -- Telling the shapes apart: any one of the identifying fields is enough --------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"candidates_token_count": 5}, UsageSnapshot(0, 5)),
        ({"thoughts_token_count": 2}, UsageSnapshot(0, 2, 0, 0, 2)),
        ({"candidatesTokenCount": 5}, UsageSnapshot(0, 5)),
        ({"thoughtsTokenCount": 2}, UsageSnapshot(0, 2, 0, 0, 2)),
        ({"inputTokens": 5}, UsageSnapshot(5, 0)),
        ({"outputTokens": 5}, UsageSnapshot(0, 5)),
        ({"input_tokens": 5}, UsageSnapshot(5, 0)),
        ({"output_tokens": 5}, UsageSnapshot(0, 5)),
        ({"input_tokens": 1, "cache_creation_input_tokens": 4}, UsageSnapshot(5, 0, 0, 4)),
        ({"input_tokens": 1, "cache_read_input_tokens": 4}, UsageSnapshot(5, 0, 4)),
        (
            {"input_tokens": 1, "cache_creation": {"ephemeral_1h_input_tokens": 4}},
            UsageSnapshot(5, 0, 0, 4, 0, 4),
        ),
    ],
)
def test_one_identifying_field_is_enough_to_tell_the_shape(
    usage: dict[str, object], expected: UsageSnapshot
) -> None:
    assert UsageSnapshot.from_response(usage) == expected


def test_a_bad_gemini_rest_count_names_the_shape_and_the_field() -> None:
    usage = {"promptTokenCount": 10, "candidatesTokenCount": -5}
    with pytest.raises(
        UsageParseError,
        match=r"^Gemini usageMetadata \(dict\) field candidatesTokenCount must be",
    ):
        UsageSnapshot.from_response(usage)


@pytest.mark.parametrize(
    ("details", "where"),
    [
        (
            {"prompt_tokens_details": {"cached_tokens": -1}},
            "prompt_tokens_details field cached_tokens",
        ),
        (
            {"prompt_tokens_details": {"cache_write_tokens": -1}},
            "prompt_tokens_details field cache_write_tokens",
        ),
        (
            {"completion_tokens_details": {"reasoning_tokens": -1}},
            "completion_tokens_details field reasoning_tokens",
        ),
        (
            {"completion_tokens_details": {"reasoning_tokens": 1}, "total_tokens": -1},
            "field total_tokens",
        ),
    ],
)
def test_a_bad_openai_chat_detail_names_the_shape_and_the_field(
    details: dict[str, object], where: str
) -> None:
    usage = {"prompt_tokens": 10, "completion_tokens": 5, **details}
    with pytest.raises(UsageParseError, match=rf"^OpenAI chat usage \(dict\) {where} must be"):
        UsageSnapshot.from_response(usage)


def test_no_usage_at_all_says_what_was_expected() -> None:
    with pytest.raises(UsageParseError) as info:
        UsageSnapshot.from_response({"choices": []})
    assert str(info.value) == (
        "cannot read token usage from dict: expected a response with .usage or "
        ".usage_metadata, a Bedrock ConverseStream metadata event, or an OpenAI, Anthropic, "
        "Gemini or Bedrock usage object or dict"
    )


def test_a_usage_of_none_or_of_no_known_shape_says_so() -> None:
    with pytest.raises(UsageParseError) as info:
        UsageSnapshot.from_response({"usage": None})
    assert str(info.value) == (
        "dict.usage is None: the response carries no usage "
        "(a stream without usage, or an aborted call?)"
    )
    with pytest.raises(UsageParseError) as info:
        UsageSnapshot.from_response({"usage": {"tokens": 3}})
    assert str(info.value) == (
        "unrecognised usage shape dict in dict.usage: expected "
        "OpenAI, Anthropic, Gemini or Bedrock Converse token fields"
    )


# -- The tracker's rows, the hot path's plan, and how amounts are shown -----------------------


def test_each_models_row_totals_its_input_and_its_output() -> None:
    tracker = UsageTracker()
    tracker.record_turn("m", UsageSnapshot(7, 2))
    assert tracker.per_model_summary()["m"]["total_tokens"] == 9
    assert tracker.summary()["total_tokens"] == 9


def test_a_pricing_with_one_tier_gets_a_plan_that_prices_above_the_tier() -> None:
    tiered = ModelPricing(3, 15, long_context=LongContextTier(100, 6, 22))
    plan = _plan_for(tiered)
    assert plan is not None
    assert plan.threshold == 100
    for inp in (1, 100, 101, 5000):
        usage = UsageSnapshot(inp, 3)
        assert _planned(plan, usage) == _femto(tiered, usage)


def test_an_unknown_name_of_the_usage_module_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(
        AttributeError,
        match=r"^module 'techrevati\.runtime\.usage' has no attribute 'NoSuchName'$",
    ):
        _ = usage_module.NoSuchName


def test_one_femto_dollar_is_shown_as_below_a_ten_thousandth() -> None:
    assert _format_usd(0) == "$0.0000"
    assert _format_usd(1) == "<$0.0001"
    price_model("tiny", "0.000000001", "0")  # 1e-15 USD per input token
    tracker = UsageTracker()
    tracker.record_turn("tiny", UsageSnapshot(1))
    assert tracker.total_cost() == Decimal("1E-15")
    assert tracker.format_cost() == "<$0.0001"


@pytest.mark.parametrize(
    ("femto", "text"),
    [(0, "0"), (3 * 10**15, "3"), (25 * 10**14, "2.5"), (1, "0.000000000000001")],
)
def test_usd_text_shows_whole_and_fractional_amounts(femto: int, text: str) -> None:
    assert usd_text(femto) == text


def _two_tiers() -> ModelPricing:
    second = LongContextTier(1000, 9, 30, cache_read_per_million=1)
    return ModelPricing(3, 15, long_context=LongContextTier(100, 6, 22, above=second))


@pytest.mark.parametrize("inp", [1, 100, 101, 999, 1000, 1001, 5000])
def test_the_fast_path_prices_every_tier_of_a_chained_pricing_as_the_pricing_does(
    inp: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage_module, "_PLANS", {})  # read this pricing's plan afresh
    pricing = _two_tiers()
    price_model("tiers", "3", "15", long_context=pricing.long_context)
    tracker = UsageTracker()
    usage = UsageSnapshot(inp, 7, inp // 4, 0, 2)
    for _ in range(3):  # the first turn takes the slow path, the later ones the fast path
        cost = tracker.record_turn("tiers", usage)
        assert type(cost.cost_femto_usd) is int
        assert cost.cost_femto_usd == _femto(pricing, usage)
    assert tracker.total_cost() == 3 * pricing.cost_usd(usage)


@pytest.mark.parametrize(
    "pricing",
    [
        ModelPricing(3, 15, long_context=LongContextTier(1, 6, 22)),
        ModelPricing(
            3, 15, long_context=LongContextTier(100, 6, 22, above=LongContextTier(101, 9, 30))
        ),
        _two_tiers(),
    ],
    ids=["threshold-1", "tiers-100-101", "tiers-100-1000"],
)
def test_a_pricing_with_a_positive_threshold_gets_a_plan(pricing: ModelPricing) -> None:
    plan = _plan_for(pricing)
    assert plan is not None
    assert plan.threshold == pricing.tiers[0].threshold_tokens


def test_a_plan_multiplies_small_ints_by_their_common_scale() -> None:
    plan = _plan_for(ModelPricing(3, 15))
    assert plan is not None
    assert plan.scale == 3 * 10**9  # $3 per million: 3e9 femto-dollars per token
    assert plan.base == (1, 5, 0, 0, 0, 0)


def test_a_plan_reads_each_rate_of_a_pricing_that_sets_all_six() -> None:
    g = 10**9  # femto-dollars per token in $1 per million
    tier = LongContextTier(
        100,
        6,
        22,
        cache_read_per_million="0.6",
        cache_write_per_million="7.5",
        cache_write_1h_per_million=12,
        reasoning_per_million=40,
    )
    pricing = ModelPricing(
        3,
        15,
        cache_read_per_million="0.3",
        cache_write_per_million="3.75",
        cache_write_1h_per_million=6,
        reasoning_per_million=20,
        long_context=tier,
    )
    plan = _plan_for(pricing)
    assert plan is not None
    # input, output, then each part as the difference from its whole's rate
    assert tuple(c * plan.scale for c in plan.base) == (
        3 * g,
        15 * g,
        -27 * g // 10,
        75 * g // 100,
        5 * g,
        225 * g // 100,
    )
    assert tuple(c * plan.scale for c in plan.tier) == (
        6 * g,
        22 * g,
        -54 * g // 10,
        15 * g // 10,
        18 * g,
        45 * g // 10,
    )


# -- UsageSnapshot: the quick check lets through only what the full check would --------------

_FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cache_write_1h_tokens",
)


@pytest.mark.parametrize("field", _FIELDS)
@pytest.mark.parametrize("bad", [1.0, True, "1", None])
def test_a_count_that_is_not_an_int_is_refused_in_every_field(field: str, bad: object) -> None:
    counts: dict[str, object] = dict.fromkeys(_FIELDS, 1)
    counts["input_tokens"] = counts["output_tokens"] = counts["cache_write_tokens"] = 5
    counts[field] = bad
    with pytest.raises(InvalidValueError, match=rf"^{field} must be an int >= 0, got "):
        UsageSnapshot(**counts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ((5, 0, 3, 3), "cache_read_tokens \\+ cache_write_tokens must not exceed input_tokens"),
        ((5, 2, 0, 0, 3), "reasoning_tokens must not exceed output_tokens"),
        ((5, 0, 0, 2, 0, 3), "cache_write_1h_tokens must not exceed cache_write_tokens"),
    ],
)
def test_parts_larger_than_their_whole_are_refused(counts: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidValueError, match=f"^{message}"):
        UsageSnapshot(*counts)


@pytest.mark.parametrize(
    "counts", [(5, 0, 2, 3), (5, 2, 0, 0, 2), (5, 0, 0, 3, 0, 3), (0, 0), (5, 5, 5, 0, 5)]
)
def test_parts_up_to_their_whole_are_kept(counts: tuple[int, ...]) -> None:
    assert UsageSnapshot(*counts)._counts == (*counts, *(0,) * (6 - len(counts)))


class _Count(int):
    """An int subclass (as some SDKs return): it takes the full check, not the quick one."""


def test_int_subclass_counts_with_parts_equal_to_their_wholes_are_kept_and_add_up() -> None:
    snapshot = UsageSnapshot(_Count(5), _Count(2), _Count(2), _Count(3), _Count(2), _Count(3))
    assert snapshot._counts == (5, 2, 2, 3, 2, 3)
    assert snapshot + UsageSnapshot(1, 1) == UsageSnapshot(6, 3, 2, 3, 2, 3)
    tracker = UsageTracker()
    tracker.record_turn("m", snapshot)
    assert tracker.total_usage() == UsageSnapshot(5, 2, 2, 3, 2, 3)
