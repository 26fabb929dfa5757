"""Cost of a governance meter per turn and per tool call, next to a bare call.

Run: ``.venv/bin/python -m bench.bench_governance``

Rows, timed in interleaved rounds (``bench._timing.interleaved``: every row
once per round, each row's minimum kept): a bare call; a bare ``with lock:``
(the floor of any thread-safe count); ``before_turn`` under a ``Governance``
with no limits and with every limit set (so each check runs, the wall time
on ``time.monotonic``); ``before_turn`` + ``after_turn`` with a ``Decimal``
cost (the public path, which parses the money) and with the cost already in
femto-dollars (``_record_turn``, the path a session that knows its cost in
femto-dollars takes); and ``before_tool`` of a limited name. The limits are
high enough never to be reached during the run.
"""

from __future__ import annotations

import threading
from decimal import Decimal

from bench._timing import Measure, interleaved, report, sync_loop_ns
from techrevati.runtime.governance import Governance, GovernanceMeter

ROUNDS = 15
NUMBER = 50_000
GOAL_NS = 1_000.0
"""A meter should cost well under a microsecond a turn: a model call is ~1e5 times that."""

_HIGH = 10**12
EVERY_LIMIT = Governance(
    max_turns=_HIGH,
    max_cost_usd=10**12,
    max_consecutive_failures=_HIGH,
    max_tool_calls=_HIGH,
    max_tool_calls_per_name={"search": _HIGH},
    max_wall_seconds=10**9,
)
COST = Decimal("0.0001234")
COST_FEMTO = 123_400_000_000


def _bare() -> None:
    return None


def main() -> None:
    """Print ns per call of each row, next to a bare call, and the verdict."""
    lock = threading.Lock()
    unlimited = GovernanceMeter(Governance())
    limited = GovernanceMeter(EVERY_LIMIT)
    public = GovernanceMeter(EVERY_LIMIT)
    femto = GovernanceMeter(EVERY_LIMIT)
    tools = GovernanceMeter(EVERY_LIMIT)

    def locked() -> None:
        with lock:
            pass

    def turn_public() -> None:
        public.before_turn()
        public.after_turn(COST)

    def turn_femto() -> None:
        femto.before_turn()
        femto._record_turn(COST_FEMTO, False)

    def tool() -> None:
        tools.before_tool("search")

    rows: dict[str, Measure] = {
        "bare call": lambda: sync_loop_ns(_bare, NUMBER),
        "with lock: pass": lambda: sync_loop_ns(locked, NUMBER),
        "before_turn (no limits)": lambda: sync_loop_ns(unlimited.before_turn, NUMBER),
        "before_turn (every limit)": lambda: sync_loop_ns(limited.before_turn, NUMBER),
        "before_turn + after_turn(Decimal)": lambda: sync_loop_ns(turn_public, NUMBER),
        "before_turn + _record_turn(femto)": lambda: sync_loop_ns(turn_femto, NUMBER),
        "before_tool('search') (every limit)": lambda: sync_loop_ns(tool, NUMBER),
    }
    best = interleaved(rows, rounds=ROUNDS)
    print(f"GovernanceMeter; best of {ROUNDS} interleaved rounds of {NUMBER:,} calls")
    report(list(best.items()), baseline=best["bare call"])
    session = max(
        best["before_turn + _record_turn(femto)"], best["before_tool('search') (every limit)"]
    )
    verdict = "met" if session <= GOAL_NS else "missed"
    print(
        f"\nsession path (femto cost) and tool call: at most {session:.0f} ns; "
        f"goal <= {GOAL_NS:.0f} ns {verdict}"
    )
    parse = best["before_turn + after_turn(Decimal)"] - best["before_turn + _record_turn(femto)"]
    print(f"after_turn(Decimal) over the femto path: +{parse:.0f} ns, the exact money parse")


if __name__ == "__main__":
    main()
