"""UsageLimits and Budget: caps, reservations, settlement, concurrency."""

from __future__ import annotations

import json
import pickle
import threading
from decimal import Decimal

import pytest

from techrevati.runtime.budget import Budget, BudgetExceededError, ReservationError, UsageLimits
from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.usage import UsageSnapshot
from tests.conftest import price_model

pytestmark = pytest.mark.usefixtures("empty_pricing")


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
    price_model()
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
    price_model()
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
    price_model("m", "1", "0")
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
    price_model()
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
    price_model("m", "1", "0")
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
    price_model()
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
    price_model()
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
    price_model("m", "1", "0")
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
    price_model()
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
    price_model()
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
    price_model("m", "1", "0")
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


def test_charge_returns_the_turn_cost_and_adds_exact_figures() -> None:
    price_model("m", "3", "15")
    budget = Budget()
    usage = UsageSnapshot(1000, 100)
    cost = budget.charge("  m ", usage)
    assert cost == ("m", usage, 4_500_000_000_000, True)
    assert cost.usage is usage
    assert cost.cost_usd == Decimal("0.0045")
    unpriced = budget.charge("mystery", UsageSnapshot(7, 3))
    assert unpriced == ("mystery", UsageSnapshot(7, 3), 0, False)
    assert budget.spent_usd == Decimal("0.0045")
    assert budget.spent_tokens == 1100 + 10
    assert budget.requests == 2


def test_a_charged_call_is_what_the_models_next_call_holds() -> None:
    price_model("m", "1", "0")
    budget = Budget(max_usd="1")
    budget.charge(" m", UsageSnapshot(input_tokens=200_000, output_tokens=50))
    with budget.reserve("m") as reservation:  # no estimate: the last charge's figures
        assert reservation.reserved_usd == Decimal("0.2")
        assert reservation.reserved_tokens == 200_050
        assert budget.reserved_usd == Decimal("0.2")
    unseen = budget.reserve("other")
    assert (unseen.reserved_usd, unseen.reserved_tokens) == (Decimal(0), 0)


def test_check_after_names_the_token_limit_it_went_over() -> None:
    budget = Budget(max_total_tokens=100)
    budget.charge("m", UsageSnapshot(60, 40))
    budget.check_after()  # exactly the limit: reached, not over
    budget.charge("m", UsageSnapshot(1, 0))
    with pytest.raises(BudgetExceededError) as info:
        budget.check_after()
    assert (info.value.limit_kind, info.value.limit, info.value.spent) == ("tokens", 100, 101)
    assert str(info.value) == "budget exceeded (tokens): spent 101 tokens > limit 100"


def test_budget_summary_reports_every_figure() -> None:
    price_model()
    budget = Budget(max_usd="2", max_total_tokens=50_000, max_requests=10)
    budget.charge("m", UsageSnapshot(1000, 100))
    budget.reserve("m", UsageSnapshot(1000, 10))
    assert budget.summary() == {
        "max_usd": "2",
        "max_total_tokens": 50_000,
        "max_requests": 10,
        "spent_usd": "0.0045",
        "reserved_usd": "0.00315",
        "spent_tokens": 1100,
        "reserved_tokens": 1010,
        "requests": 1,
        "reserved_requests": 1,
    }
    assert Budget().summary() == {
        "max_usd": None,
        "max_total_tokens": None,
        "max_requests": None,
        "spent_usd": "0",
        "reserved_usd": "0",
        "spent_tokens": 0,
        "reserved_tokens": 0,
        "requests": 0,
        "reserved_requests": 0,
    }
