"""run_turn against the CPython floor for the same bookkeeping, its async twin, and flatness.

Run: ``.venv/bin/python -m bench.bench_orchestrator``

Every turn here is wired the same way: a ``CircuitBreaker`` (consecutive
mode), a per-session cap (``budget_usd``), a shared ``Budget`` and the
default ring of events, with a priced model. The floor is
``bench._floor.floor_turn`` (its docstring lists exactly what it counts); the
async floor is ``afloor_turn``, awaited the same way as ``arun_turn``.

The first table is measured interleaved: each round times every variant
once (sync ones with ``timeit``; async ones as one ``async def`` loop of
awaits inside one ``asyncio.run``), and each variant keeps its minimum over
the rounds, so the ratios compare figures taken under the same load. The
garbage collector is off in every timed loop. Then: ns per turn at turns
100, 10,000 and 100,000 of one long session (best of several short batches
at each mark, alternating with floor batches so the ratio to the floor
discounts load that comes and goes), and the caller's cost of a
``SqliteSink`` (alternating with a session without it).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from bench._floor import (
    FloorBreaker,
    FloorBudget,
    FloorSession,
    FloorUsage,
    afloor_turn,
    floor_turn,
)
from bench._timing import (
    AsyncMeasure,
    Measure,
    async_loop_ns,
    interleaved,
    report,
    run_async,
    sync_loop_ns,
)
from techrevati.runtime import (
    Budget,
    CircuitBreaker,
    EventSink,
    ModelPricing,
    Orchestrator,
    SqliteSink,
    UsageSink,
    UsageSnapshot,
    register_pricing,
)

MODEL = "bench-model"
USAGE = UsageSnapshot(input_tokens=1200, output_tokens=300)
FLOOR_USAGE = FloorUsage(1200, 300)
CAP_USD = 1_000_000
CAP_FEMTO = CAP_USD * 10**15
ROUNDS = 15
TURNS = 8_000  # per measurement of a wired turn
BARE_CALLS = 100_000
MARKS = (100, 10_000, 100_000)
BATCH = 125  # turns per timed batch at each mark
BATCHES = 16  # batches at each mark; the best one counts
SQLITE_TURNS = 4_000
SQLITE_ROUNDS = 3


class _Usage:
    """An OpenAI Chat Completions usage object, as the SDK's attributes."""

    __slots__ = ("completion_tokens", "prompt_tokens", "total_tokens")

    def __init__(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
        self.total_tokens = prompt_tokens + completion_tokens


class _Response:
    """A response carrying ``.usage``."""

    __slots__ = ("text", "usage")

    def __init__(self) -> None:
        self.text = "ok"
        self.usage = _Usage(1200, 300)


RESPONSE = _Response()


def _answer() -> str:
    return "ok"


def _respond() -> _Response:
    return RESPONSE


async def _aanswer() -> str:
    return "ok"


def _orchestrator(sinks: Iterable[EventSink | UsageSink] = ()) -> Orchestrator:
    return Orchestrator(
        role="writer",
        phase="draft",
        circuit_breaker=CircuitBreaker("bench", failure_threshold=5),
        budget_usd=CAP_USD,
        budget=Budget(max_usd=CAP_USD),
        sinks=sinks,
    )


def _floor_session() -> FloorSession:
    return FloorSession(FloorBreaker(5), FloorBudget(CAP_FEMTO), cap_femto=CAP_FEMTO)


def _async_floor(number: int) -> AsyncMeasure:
    async def measure() -> float:
        s = _floor_session()
        return await async_loop_ns(lambda: afloor_turn(s, _aanswer, MODEL, FLOOR_USAGE), number)

    return measure


def _async_turns(orch: Orchestrator, number: int) -> AsyncMeasure:
    async def measure() -> float:
        async with orch.asession() as s:
            return await async_loop_ns(
                lambda: s.arun_turn(_aanswer, model=MODEL, usage=USAGE), number
            )

    return measure


async def _abare(number: int) -> float:
    return await async_loop_ns(_aanswer, number)


def _per_turn_table() -> None:
    """Print the interleaved table of floors, turns and bare calls."""
    orch = _orchestrator()
    floor_s = _floor_session()
    floor_r = _floor_session()
    with orch.session() as given, orch.session() as read:
        variants: dict[str, Measure] = {
            "floor_turn (usage given)": lambda: sync_loop_ns(
                lambda: floor_turn(floor_s, _answer, MODEL, FLOOR_USAGE), TURNS
            ),
            "floor_turn (usage read from .usage)": lambda: sync_loop_ns(
                lambda: floor_turn(floor_r, _respond, MODEL), TURNS
            ),
            "run_turn (usage given)": lambda: sync_loop_ns(
                lambda: given.run_turn(_answer, model=MODEL, usage=USAGE), TURNS
            ),
            "run_turn (usage read from the response)": lambda: sync_loop_ns(
                lambda: read.run_turn(_respond, model=MODEL), TURNS
            ),
            "afloor_turn (usage given)": run_async(_async_floor(TURNS)),
            "arun_turn (usage given)": run_async(_async_turns(orch, TURNS)),
            "bare call": lambda: sync_loop_ns(_answer, BARE_CALLS),
            "await bare coroutine": run_async(lambda: _abare(BARE_CALLS)),
        }
        best = interleaved(variants, rounds=ROUNDS)
    floor = best["floor_turn (usage given)"]
    afloor = best["afloor_turn (usage given)"]
    print(
        f"breaker + budget_usd + shared Budget + ring, priced model; "
        f"best of {ROUNDS} interleaved rounds"
    )
    print("sync, against floor_turn with usage given:")
    report(
        [
            ("floor_turn (usage given)", floor),
            ("run_turn (usage given)", best["run_turn (usage given)"]),
            ("floor_turn (usage read from .usage)", best["floor_turn (usage read from .usage)"]),
            (
                "run_turn (usage read from the response)",
                best["run_turn (usage read from the response)"],
            ),
            ("bare call", best["bare call"]),
        ],
        baseline=floor,
        label="floor",
        unit="turn",
        digits=2,
    )
    read_floor = best["floor_turn (usage read from .usage)"]
    read_turn = best["run_turn (usage read from the response)"]
    print(f"run_turn reading usage / the floor reading usage: {read_turn / read_floor:.2f}x")
    print("async, against afloor_turn (awaited in one event loop):")
    report(
        [
            ("afloor_turn (usage given)", afloor),
            ("arun_turn (usage given)", best["arun_turn (usage given)"]),
            ("await bare coroutine", best["await bare coroutine"]),
        ],
        baseline=afloor,
        label="floor",
        unit="turn",
        digits=2,
    )


def _flatness() -> None:
    """Print ns per turn at each mark of one long session, raw and as a ratio to the floor.

    At each mark, batches of run_turn alternate with batches of floor_turn and
    each keeps its best: a burst of load on the shared machine then moves both,
    and the ratio to the floor stays comparable from mark to mark.
    """
    print()
    print(
        f"per-turn cost along one session (event_capacity default; best of {BATCHES} "
        f"batches of {BATCH} turns at each mark, alternating with the floor):"
    )
    raw: list[float] = []
    relative: list[float] = []
    floor_s = _floor_session()

    def floor_step() -> object:
        return floor_turn(floor_s, _answer, MODEL, FLOOR_USAGE)

    with _orchestrator().session() as session:

        def step() -> object:
            return session.run_turn(_answer, model=MODEL, usage=USAGE)

        done = 0
        for mark in MARKS:
            for _ in range(mark - done):
                step()
            best = interleaved(
                {
                    "turn": lambda: sync_loop_ns(step, BATCH),
                    "floor": lambda: sync_loop_ns(floor_step, BATCH),
                },
                rounds=BATCHES,
            )
            done = mark + BATCH * BATCHES
            raw.append(best["turn"])
            relative.append(best["turn"] / best["floor"])
            print(
                f"  turn {mark:>7,}: {best['turn']:8.1f} ns/turn  "
                f"(floor {best['floor']:6.1f} ns, {relative[-1]:.2f}x floor)"
            )
    print(
        f"turn {MARKS[-1]:,} / turn {MARKS[0]:,}: {raw[-1] / raw[0]:.2f}x raw, "
        f"{relative[-1] / relative[0]:.2f}x in floor units"
    )


def _sqlite() -> None:
    """Print the caller's cost of a SqliteSink: rounds alternating with a sink-less session.

    After each SqliteSink measurement the sink is flushed (untimed), so its
    writer thread's backlog does not spill into the next measurement.
    """
    print()
    with (
        tempfile.TemporaryDirectory() as tmp,
        SqliteSink(Path(tmp) / "bench.db", flush_every=100) as sink,
        _orchestrator().session() as plain,
        _orchestrator([sink]).session() as logged,
    ):

        def measure_logged() -> float:
            ns = sync_loop_ns(
                lambda: logged.run_turn(_answer, model=MODEL, usage=USAGE), SQLITE_TURNS
            )
            sink.flush()
            return ns

        best = interleaved(
            {
                "run_turn (usage given)": lambda: sync_loop_ns(
                    lambda: plain.run_turn(_answer, model=MODEL, usage=USAGE), SQLITE_TURNS
                ),
                "run_turn + SqliteSink(flush_every=100)": measure_logged,
            },
            rounds=SQLITE_ROUNDS,
        )
    wired = best["run_turn (usage given)"]
    print(f"SqliteSink, best of {SQLITE_ROUNDS} interleaved rounds of {SQLITE_TURNS:,} turns:")
    report(list(best.items()), baseline=wired, label="run_turn", unit="turn", digits=2)
    print(
        f"SqliteSink adds {(best['run_turn + SqliteSink(flush_every=100)'] - wired) / 1000:.2f}"
        " us per turn"
    )


def main() -> None:
    """Print the per-turn table, the flatness figures and the SqliteSink line."""
    register_pricing(MODEL, ModelPricing(input_per_million="3", output_per_million="15"))
    started = time.perf_counter()
    _per_turn_table()
    _flatness()
    _sqlite()
    print(f"\n(took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
