"""What a checkpoint costs per turn as the history grows: bytes written and microseconds per put.

Run: ``.venv/bin/python -m bench.bench_checkpoints``

For histories of 10, 100, 1,000 and 10,000 messages (about 250 bytes of JSON
each), a fresh saver stores the history once (a snapshot), then runs
``TURNS`` turns that each append a user and an assistant message and put the
state (a dict: the message list and a step counter) with a small runtime
state. Per history length and saver it prints:

- ``delta``: bytes a turn's put writes (caller state + runtime state) and
  its time, the minimum over all turns of all repeats (a put that wrote a
  delta);
- ``amortised``: bytes and time per put averaged over the turns of a run,
  the snapshots the chain rule adds included (the best run of the repeats);
- ``whole``: what a put that copies the whole state costs (the first put of
  the history: the LangGraph-style copy per step that deltas avoid);
- ``latest``: milliseconds to rebuild the last checkpoint (what a resume reads).

Part 2 counts bytes only, over ``LONG_TURNS`` turns (long enough for the
snapshots of the chain rule to recur at every history length): bytes per
turn averaged over the whole run, how many snapshots it took, and the most
rows a rebuild read. Part 3 times ``begin_turn`` (the pending-turn marker, a
commit of its own before the turn runs).

Timed loops run with the garbage collector off. SQLite files go to a
temporary directory (the machine's disk: with ``synchronous="full"`` each put
waits for an fsync, which is most of its time).
"""

from __future__ import annotations

import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from techrevati.runtime.checkpoints import InMemorySaver, SqliteSaver

HISTORIES = (10, 100, 1_000, 10_000)
TURNS = 200
REPEATS = 5
LONG_TURNS = 10_000
MARKERS = 300
TEXT = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 4  # ~230 characters

Saver = InMemorySaver | SqliteSaver
VARIANTS: list[tuple[str, Callable[[Path], Saver]]] = [
    ("InMemorySaver", lambda d: InMemorySaver()),
    ("InMemorySaver tail", lambda d: InMemorySaver(growth_check="tail")),
    ("SqliteSaver normal", lambda d: SqliteSaver(d / "n.db", synchronous="normal")),
    ("SqliteSaver full", lambda d: SqliteSaver(d / "f.db")),
    ("SqliteSaver full tail", lambda d: SqliteSaver(d / "t.db", growth_check="tail")),
]


def message(i: int) -> dict[str, str]:
    return {"role": "user" if i % 2 else "assistant", "content": f"{i}: {TEXT}"}


def runtime(turn: int) -> dict[str, object]:
    return {
        "usage": {"model-a": [5000 + turn, 1200, 0, 0, 0, 0]},
        "spent_usd": f"0.{turn:06d}",
        "retries": {"rate_limit": 1},
        "status": "running",
        "turns": turn,
    }


def one_run(make: Callable[[Path], Saver], n: int) -> tuple[list[tuple[int, float]], ...]:
    """Return (bytes, us) of the whole-state put, of each delta put, of every put; and latest ms."""
    with tempfile.TemporaryDirectory() as tmp:
        saver = make(Path(tmp))
        try:
            state: dict[str, object] = {"messages": [message(i) for i in range(n)], "step": 0}
            messages = state["messages"]
            assert isinstance(messages, list)
            gc.disable()
            try:
                start = time.perf_counter_ns()
                write = saver.put("t", 0, state, runtime(0), "t/0")
                whole = [(write.state_bytes + write.runtime_bytes, _us(start))]
                deltas, every = [], []
                for turn in range(1, TURNS + 1):
                    messages += [message(n + 2 * turn), message(n + 2 * turn + 1)]
                    state["step"] = turn
                    start = time.perf_counter_ns()
                    write = saver.put("t", turn, state, runtime(turn), f"t/{turn}")
                    took = _us(start)
                    size = write.state_bytes + write.runtime_bytes
                    every.append((size, took))
                    if not write.snapshot:
                        deltas.append((size, took))
                start = time.perf_counter_ns()
                saver.latest("t")
                latest = [(0, _us(start) / 1000)]
            finally:
                gc.enable()
        finally:
            saver.close()
    return whole, deltas, every, latest


def _us(start: int) -> float:
    return (time.perf_counter_ns() - start) / 1000


def main() -> None:
    print(
        f"{TURNS} turns of 2 appended messages (~250 B each) after a history of n messages; "
        f"best of {REPEATS} runs"
    )
    header = (
        f"{'saver':<22} {'n':>6} | {'delta B':>8} {'delta us':>9} | {'amort. B':>8} "
        f"{'amort. us':>9} | {'whole B':>9} {'whole us':>9} | {'latest ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, make in VARIANTS:
        for n in HISTORIES:
            runs = [one_run(make, n) for _ in range(REPEATS)]
            delta_b = min(b for run in runs for b, _ in run[1])
            delta_us = min(us for run in runs for _, us in run[1])
            amort_b = min(sum(b for b, _ in run[2]) / len(run[2]) for run in runs)
            amort_us = min(sum(us for _, us in run[2]) / len(run[2]) for run in runs)
            whole_b = runs[0][0][0][0]
            whole_us = min(run[0][0][1] for run in runs)
            latest_ms = min(run[3][0][1] for run in runs)
            print(
                f"{name:<22} {n:>6} | {delta_b:>8} {delta_us:>9.1f} | {amort_b:>8.0f} "
                f"{amort_us:>9.1f} | {whole_b:>9} {whole_us:>9.1f} | {latest_ms:>9.2f}"
            )


def long_run(n: int) -> tuple[float, int, int]:
    """Return bytes per turn over LONG_TURNS turns, the snapshots taken, the longest chain."""
    saver = InMemorySaver(growth_check="tail")
    messages = [message(i) for i in range(n)]
    state: dict[str, object] = {"messages": messages, "step": 0}
    total = snapshots = chain = longest = 0
    for turn in range(1, LONG_TURNS + 1):
        messages += [message(n + 2 * turn), message(n + 2 * turn + 1)]
        state["step"] = turn
        write = saver.put("t", turn, state, runtime(turn), f"t/{turn}")
        total += write.state_bytes + write.runtime_bytes
        if write.snapshot:
            snapshots += 1
            chain = 0
        else:
            chain += 1
            longest = max(longest, chain)
    return total / LONG_TURNS, snapshots, longest + 1


def begin_turn_us(make: Callable[[Path], Saver]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        saver = make(Path(tmp))
        try:
            best = float("inf")
            for turn in range(MARKERS):
                start = time.perf_counter_ns()
                saver.begin_turn("t", f"t/{turn}")
                best = min(best, _us(start))
        finally:
            saver.close()
    return best


def main_long() -> None:
    print()
    print(f"bytes only, {LONG_TURNS:,} turns of 2 appended messages after n messages:")
    print(f"{'n':>6} | {'B/turn':>8} {'snapshots':>9} {'most rows per rebuild':>22}")
    for n in HISTORIES:
        per_turn, snapshots, rows = long_run(n)
        print(f"{n:>6} | {per_turn:>8.0f} {snapshots:>9} {rows:>22}")
    print()
    print(f"begin_turn (the pending-turn marker), best of {MARKERS}:")
    for name, make in VARIANTS:
        if "tail" not in name:
            print(f"{name:<22} {begin_turn_us(make):>9.1f} us")


if __name__ == "__main__":
    main()
    main_long()
