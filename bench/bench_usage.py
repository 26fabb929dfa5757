"""UsageTracker.record_turn with exact (femto-dollar) money, next to a bare call and LiteLLM.

Run: ``.venv/bin/python -m bench.bench_usage`` (add ``--cpu`` to time each row by
the CPU time of its thread, ``time.thread_time``, instead of the wall clock: on
a shared machine that leaves out the time the process waits for a core)

One interleaved run (``bench._timing.interleaved``: every row once per round,
the minimum kept), so the ratios compare rows measured under the same load.
The pricing is LiteLLM's own entry for ``claude-sonnet-4-5``, loaded from the
price file inside the installed ``litellm`` package, and the snapshots (and
LiteLLM's ``Usage`` objects) are built outside the timed loops. Rows: a bare
two-argument call for scale; ``record_turn`` on a plain turn, on a turn with
cache reads, five-minute and one-hour cache writes and reasoning, on a turn
past a long-context tier, on a tracker that also charges a shared ``Budget``,
and on an unpriced model; ``cost_for_turn`` (prices and returns a
``Decimal``); a reservation round trip on a ``Budget``; and LiteLLM's
``cost_per_token`` on the plain and the cached turn. It then checks that the
totals are still exact after all those calls and that both libraries agree on
the cost of each turn.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
import timeit
import warnings
from collections.abc import Callable
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

from bench._timing import interleaved, report, sync_loop_ns
from techrevati.runtime.usage import (
    Budget,
    ModelPricing,
    UsageSnapshot,
    UsageTracker,
    clear_pricing,
    get_pricing,
    load_pricing_from_file,
)

MODEL = "claude-sonnet-4-5"
LONG_MODEL = "anthropic.claude-sonnet-4-5-20250929-v1:0"  # a 200k-token tier (Bedrock)
PLAIN = UsageSnapshot(input_tokens=5000, output_tokens=1200)
CACHED = UsageSnapshot(
    input_tokens=50_000,
    output_tokens=1200,
    cache_read_tokens=30_000,
    cache_write_tokens=10_000,
    cache_write_1h_tokens=4_000,
    reasoning_tokens=400,
)
LONG = UsageSnapshot(input_tokens=250_000, output_tokens=1200)
NUMBER = 100_000
ROUNDS = 7


def _bare(model: str, usage: UsageSnapshot) -> None:
    return None


def _litellm() -> Any:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # read the packaged map, no network
    return importlib.import_module("litellm")


def _litellm_usage(usage: UsageSnapshot) -> Any:
    from litellm.types.utils import Usage

    details: dict[str, object] = {
        "cached_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    if usage.cache_write_1h_tokens:
        details["cache_creation_token_details"] = {
            "ephemeral_5m_input_tokens": usage.cache_write_tokens - usage.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        }
    return Usage(
        prompt_tokens=usage.input_tokens,
        completion_tokens=usage.output_tokens,
        total_tokens=usage.input_tokens + usage.output_tokens,
        prompt_tokens_details=details,
        completion_tokens_details={"reasoning_tokens": usage.reasoning_tokens},
    )


def main() -> None:
    """Print ns per call for each row, then verify the money is exact and agrees with LiteLLM."""
    litellm = _litellm()
    clear_pricing()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the file's rounded rates (other providers')
        load_pricing_from_file(Path(litellm.__file__).parent / _PRICE_FILE)
    pricing, long_pricing = _pricing(MODEL), _pricing(LONG_MODEL)
    tracker = UsageTracker()
    charged = UsageTracker(budget=Budget(max_usd=10**12))
    budget = Budget(max_usd=10**12)
    for t in (tracker, charged):
        t.record_turn(MODEL, PLAIN)  # first turn of a name takes the slow path once
    tracker.record_turn(LONG_MODEL, LONG)
    record, record_charged = tracker.record_turn, charged.record_turn
    cost_per_token = litellm.cost_per_token
    plain_usage, cached_usage = _litellm_usage(PLAIN), _litellm_usage(CACHED)

    def reserve_settle() -> object:
        return budget.reserve(MODEL, PLAIN).settle(PLAIN)

    def litellm_plain() -> tuple[float, float]:
        return cost_per_token(  # type: ignore[no-any-return]
            model=MODEL, custom_llm_provider="anthropic", usage_object=plain_usage
        )

    def litellm_cached() -> tuple[float, float]:
        return cost_per_token(  # type: ignore[no-any-return]
            model=MODEL, custom_llm_provider="anthropic", usage_object=cached_usage
        )

    logging.getLogger("techrevati.runtime.usage").setLevel(logging.ERROR)  # unpriced row
    rows: dict[str, tuple[Callable[[], object], int]] = {
        "bare call (two args)": (lambda: _bare(MODEL, PLAIN), NUMBER),
        "record_turn, plain turn": (lambda: record(MODEL, PLAIN), NUMBER),
        "record_turn, cache reads, 5m + 1h writes, reasoning": (
            lambda: record(MODEL, CACHED),
            NUMBER,
        ),
        "record_turn, long-context tier": (lambda: record(LONG_MODEL, LONG), NUMBER),
        "record_turn, tracker charging a Budget": (lambda: record_charged(MODEL, PLAIN), NUMBER),
        "record_turn, unpriced model": (lambda: record("unknown-model", PLAIN), NUMBER // 4),
        "cost_for_turn (returns a Decimal)": (
            lambda: tracker.cost_for_turn(MODEL, PLAIN),
            NUMBER // 4,
        ),
        "Budget.reserve + settle": (reserve_settle, NUMBER // 4),
        "litellm.cost_per_token, plain turn": (litellm_plain, NUMBER // 100),
        "litellm.cost_per_token, cached turn": (litellm_cached, NUMBER // 100),
    }
    best = interleaved(
        {name: _measure(fn, number) for name, (fn, number) in rows.items()}, rounds=ROUNDS
    )
    bare = best["bare call (two args)"]
    report(list(best.items()), baseline=bare)
    plain = best["record_turn, plain turn"]
    print()
    for name in ("litellm.cost_per_token, plain turn", "litellm.cost_per_token, cached turn"):
        print(f"{name:<48} {best[name] / plain:>10.1f}x record_turn, plain turn")

    runs = ROUNDS * NUMBER
    with localcontext() as ctx:
        ctx.prec = 100
        expected = (
            pricing.cost_usd(PLAIN) * (1 + runs)
            + pricing.cost_usd(CACHED) * runs
            + long_pricing.cost_usd(LONG) * (1 + runs)
        )
    assert tracker.total_cost() == expected, (tracker.total_cost(), expected)
    assert tracker.unpriced_models == {"unknown-model"}
    for usage, theirs in ((PLAIN, litellm_plain()), (CACHED, litellm_cached())):
        prompt, completion = theirs
        assert abs(pricing.cost_usd(usage) - Decimal(repr(prompt + completion))) < Decimal("1e-12")
    print()
    print(f"turns recorded on one tracker: {tracker.turns:,}; exact total ${tracker.total_cost()}")
    clear_pricing()


_PRICE_FILE = "model_prices_and_context_window_backup.json"


def _pricing(model: str) -> ModelPricing:
    found = get_pricing(model)
    assert found is not None, model
    return found


def _measure(fn: Callable[[], object], number: int) -> Callable[[], float]:
    if "--cpu" in sys.argv[1:]:
        timer = timeit.Timer(fn, timer=time.thread_time)  # timeit turns the GC off too
        return lambda: timer.timeit(number) / number * 1e9
    return lambda: sync_loop_ns(fn, number)


if __name__ == "__main__":
    main()
