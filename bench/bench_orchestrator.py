"""run_turn overhead with a breaker, exact usage and events wired, and its flatness.

Run: ``.venv/bin/python -m bench.bench_orchestrator``
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench._timing import per_call_ns, report
from techrevati.runtime import (
    CircuitBreaker,
    ModelPricing,
    Orchestrator,
    SqliteSink,
    UsageSnapshot,
    register_pricing,
)

MODEL = "bench-model"
USAGE = UsageSnapshot(input_tokens=1200, output_tokens=300)


def _answer() -> str:
    return "ok"


def _orchestrator(sinks: Sequence[object] = ()) -> Orchestrator:
    return Orchestrator(
        role="writer",
        phase="draft",
        circuit_breaker=CircuitBreaker("bench", failure_threshold=5),
        budget_usd=1_000_000,
        event_capacity=1000,
        sinks=sinks,  # type: ignore[arg-type]
    )


def _ns_at(run: Callable[[], object], done: int, target: int, batch: int = 2_000) -> float:
    """Advance a session to ``target`` turns, then time the next ``batch`` turns."""
    for _ in range(target - done):
        run()
    start = time.perf_counter()
    for _ in range(batch):
        run()
    return (time.perf_counter() - start) / batch * 1e9


def main() -> None:
    """Print per-turn overhead next to a bare call, then per-turn cost along one session."""
    register_pricing(MODEL, ModelPricing(input_per_million="3", output_per_million="15"))
    bare = per_call_ns(_answer)
    with _orchestrator().session() as session:

        def turn() -> object:
            return session.run_turn(_answer, model=MODEL, usage=USAGE)

        wired = per_call_ns(turn, number=20_000)
    with (
        tempfile.TemporaryDirectory() as tmp,
        SqliteSink(Path(tmp) / "bench.db", flush_every=100) as sink,
        _orchestrator([sink]).session() as session,
    ):

        def sqlite_turn() -> object:
            return session.run_turn(_answer, model=MODEL, usage=USAGE)

        with_sqlite = per_call_ns(sqlite_turn, number=5_000, repeat=3)
    rows = [
        ("bare call", bare),
        ("run_turn (breaker+usage+events)", wired),
        ("run_turn + SqliteSink(flush_every=100)", with_sqlite),
    ]
    report(rows, baseline=bare)
    print(f"SqliteSink adds {(with_sqlite - wired) / 1000:.2f} us per turn")
    print()
    print("per-turn cost along one session (2,000 turns timed at each mark):")
    with _orchestrator().session() as session:

        def step() -> object:
            return session.run_turn(_answer, model=MODEL, usage=USAGE)

        done = 0
        for mark in (100, 10_000, 100_000):
            ns = _ns_at(step, done, mark)
            done = mark + 2_000
            print(f"  turn {mark:>7,}: {ns / 1000:6.2f} us/turn")


if __name__ == "__main__":
    main()
