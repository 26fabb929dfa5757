"""UsageTracker.record_turn cost with exact (integer femto-dollar) money, next to a bare call.

Run: ``.venv/bin/python -m bench.bench_usage``

The snapshots are built outside the timed loops. Rows: a bare two-argument
call for scale; ``record_turn`` on a plain turn, on a turn with cache reads and
reasoning, on a long-context turn (tier rates), on a tracker that also charges
a shared ``Budget``, and on an unpriced model; ``cost_for_turn`` (prices and
returns a ``Decimal``); and a reservation round trip on a ``Budget``. It then
checks that the totals are still exact after all those calls.
"""

from __future__ import annotations

import logging
from decimal import localcontext

from bench._timing import per_call_ns, report
from techrevati.runtime.usage import (
    Budget,
    LongContextTier,
    ModelPricing,
    UsageSnapshot,
    UsageTracker,
    clear_pricing,
    register_pricing,
)

MODEL = "bench-model"
PLAIN = UsageSnapshot(input_tokens=5000, output_tokens=1200)
CACHED = UsageSnapshot(
    input_tokens=50_000, output_tokens=1200, cache_read_tokens=40_000, reasoning_tokens=400
)
LONG = UsageSnapshot(input_tokens=250_000, output_tokens=1200)
NUMBER = 200_000
REPEAT = 7  # bench._timing.per_call_ns runs each row REPEAT x number times


def _bare(model: str, usage: UsageSnapshot) -> None:
    return None


def main() -> None:
    """Print ns per call for each path, then verify the money is exact."""
    clear_pricing()
    register_pricing(MODEL, tracker_pricing())
    tracker = UsageTracker()
    charged = UsageTracker(budget=Budget(max_usd=10**12))
    budget = Budget(max_usd=10**12)
    for t in (tracker, charged):
        t.record_turn(MODEL, PLAIN)  # first turn of a name takes the slow path once
    record, record_charged = tracker.record_turn, charged.record_turn

    def reserve_settle() -> object:
        return budget.reserve(MODEL, PLAIN).settle(PLAIN)

    logging.getLogger("techrevati.runtime.usage").setLevel(logging.ERROR)  # unpriced row
    bare = per_call_ns(lambda: _bare(MODEL, PLAIN), number=NUMBER)
    rows = [
        ("bare call (two args)", bare),
        ("record_turn, plain turn", per_call_ns(lambda: record(MODEL, PLAIN), number=NUMBER)),
        (
            "record_turn, cache reads + reasoning",
            per_call_ns(lambda: record(MODEL, CACHED), number=NUMBER),
        ),
        (
            "record_turn, long-context tier",
            per_call_ns(lambda: record(MODEL, LONG), number=NUMBER),
        ),
        (
            "record_turn, tracker charging a Budget",
            per_call_ns(lambda: record_charged(MODEL, PLAIN), number=NUMBER),
        ),
        (
            "record_turn, unpriced model",
            per_call_ns(lambda: record("unknown-model", PLAIN), number=NUMBER // 4),
        ),
        (
            "cost_for_turn (returns a Decimal)",
            per_call_ns(lambda: tracker.cost_for_turn(MODEL, PLAIN), number=NUMBER // 4),
        ),
        ("Budget.reserve + settle", per_call_ns(reserve_settle, number=NUMBER // 4)),
    ]
    report(rows, baseline=bare)

    pricing = tracker_pricing()
    runs = REPEAT * NUMBER
    with localcontext() as ctx:
        ctx.prec = 100
        expected = (
            pricing.cost_usd(PLAIN) * (1 + runs)
            + (pricing.cost_usd(CACHED) + pricing.cost_usd(LONG)) * runs
        )
    assert tracker.total_cost() == expected, (tracker.total_cost(), expected)
    assert tracker.unpriced_models == {"unknown-model"}
    print()
    print(f"turns recorded on one tracker: {tracker.turns:,}; exact total ${tracker.total_cost()}")
    clear_pricing()


def tracker_pricing() -> ModelPricing:
    """The pricing registered for MODEL (a long-context tier and a cache read rate)."""
    return ModelPricing(
        "3",
        "15",
        cache_read_per_million="0.3",
        long_context=LongContextTier(200_000, "6", "22.5"),
    )


if __name__ == "__main__":
    main()
