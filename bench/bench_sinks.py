"""Sink throughput to disk, what a sink adds to ``Session.run_turn``, what ``write_event`` costs.

Run: ``.venv/bin/python -m bench.bench_sinks``

Part 1 writes turns (a ``turn.completed`` event and a usage record each) into
each durable sink with ``flush_every=100`` as fast as one thread can, and
times until ``close()`` returns (everything committed): sustained records and
turns per second, with the records dropped (0 on a healthy disk), the writes
that gave up waiting (``stalls``) and the most records ever unwritten, which
backpressure keeps at or under ``max_lag``. Part 2 times ``Session.run_turn``
with each sink against the same session without one, interleaved (one
measurement of each variant per round, the minimum kept), so the difference
is what the sink adds to a turn at full speed, its waits for the writer
included; an in-memory sink beside them shows what building the records
costs the session before any sink sees them. Part 3 times one
``write_event`` as the caller sees it (the record is encoded on the caller's
thread) against a bare in-memory ring buffer.
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from bench._timing import interleaved, per_call_ns, report, sync_loop_ns
from techrevati.runtime import ModelPricing, Orchestrator, UsageSnapshot, register_pricing
from techrevati.runtime.events import AgentEvent, RingBufferSink, UsageRecord
from techrevati.runtime.sinks import JsonlSink, SinkFanout, SqliteSink

MODEL = "bench-model"
USAGE = UsageSnapshot(input_tokens=1200, output_tokens=300)
AT = datetime(2026, 1, 1, tzinfo=UTC)
EVENT = AgentEvent(
    name="turn.completed",
    role="writer",
    phase="draft",
    data={"model": "model-a", "duration_seconds": 1.25, "input_tokens": 5000, "cost_usd": "0.033"},
    session_id="s1",
    worker_id="w1",
    project_id=42,
    timestamp=AT,
)
RECORD = UsageRecord(
    model="model-a",
    input_tokens=5000,
    output_tokens=1200,
    cost_usd=Decimal("0.033"),
    role="writer",
    phase="draft",
    session_id="s1",
    worker_id="w1",
    project_id=42,
    timestamp=AT,
)
TURNS = 20_000  # per sustained-throughput run
RUN_TURNS = 4_000  # per run_turn measurement
ROUNDS = 5

Sink = SqliteSink | JsonlSink
CASES: list[tuple[str, Callable[[Path], Sink]]] = [
    ("SqliteSink (synchronous=full)", lambda d: SqliteSink(d / "full.db")),
    (
        "SqliteSink (synchronous=normal)",
        lambda d: SqliteSink(d / "normal.db", synchronous="normal"),
    ),
    ("JsonlSink (fsync=batch)", lambda d: JsonlSink(d / "batch.jsonl")),
    ("JsonlSink (fsync=never)", lambda d: JsonlSink(d / "never.jsonl", fsync="never")),
]


def _sustained(make: Callable[[Path], Sink]) -> tuple[float, int, int, int, int]:
    """Write TURNS turns and close; return records/s, dropped, stalls, most unwritten, max_lag."""
    with tempfile.TemporaryDirectory() as tmp:
        sink = make(Path(tmp))
        most = 0
        start = time.perf_counter()
        for n in range(TURNS):
            sink.write_event(EVENT)
            sink.write_usage(RECORD)
            if n % 50 == 0:
                most = max(most, sink.pending)
        sink.close()
        elapsed = time.perf_counter() - start
        return 2 * TURNS / elapsed, sink.dropped, sink.stalls, most, sink.max_lag


def _run_turn_table() -> None:
    register_pricing(MODEL, ModelPricing(input_per_million="3", output_per_million="15"))
    with tempfile.TemporaryDirectory() as tmp:
        sinks: dict[str, Sink] = {name: make(Path(tmp)) for name, make in CASES}
        sessions = {
            "run_turn, no sink": Orchestrator("writer", "draft").session(),
            "run_turn + in-memory sink": Orchestrator(
                "writer", "draft", sinks=[_Memory()]
            ).session(),
        }
        for name, sink in sinks.items():
            sessions[f"run_turn + {name}"] = Orchestrator("writer", "draft", sinks=[sink]).session()
        for session in sessions.values():
            session.__enter__()
        try:

            def measure(name: str) -> Callable[[], float]:
                session = sessions[name]
                return lambda: sync_loop_ns(
                    lambda: session.run_turn(_answer, model=MODEL, usage=USAGE), RUN_TURNS
                )

            best = interleaved({name: measure(name) for name in sessions}, rounds=ROUNDS)
        finally:
            for session in sessions.values():
                session.__exit__(None, None, None)
            for sink in sinks.values():
                sink.close()
        lost = {name: (sink.dropped, sink.stalls) for name, sink in sinks.items()}
    bare = best["run_turn, no sink"]
    memory = best["run_turn + in-memory sink"]
    print(
        f"run_turn with each sink (flush_every=100), best of {ROUNDS} interleaved rounds "
        f"of {RUN_TURNS:,} turns:"
    )
    report(list(best.items()), baseline=bare, label="no sink", unit="turn", digits=2)
    print(
        f"  building the records a sink gets (the in-memory sink): {(memory - bare) / 1000:.2f}"
        " us/turn"
    )
    for name, (dropped, stalls) in lost.items():
        ns = best[f"run_turn + {name}"]
        print(
            f"  {name:<34} adds {(ns - memory) / 1000:6.2f} us/turn to that; "
            f"{1e9 / ns:>8,.0f} turns/s sustained; dropped {dropped}, stalls {stalls}"
        )


def _answer() -> str:
    return "ok"


class _Memory:
    """A sink that keeps the last records in memory: what building the records costs alone."""

    def __init__(self) -> None:
        self.kept: deque[object] = deque(maxlen=1000)

    def write_event(self, event: AgentEvent) -> None:
        self.kept.append(event)

    def write_usage(self, record: UsageRecord) -> None:
        self.kept.append(record)


def _write_ns(sink: Sink) -> float:
    write = sink.write_event
    return per_call_ns(lambda: write(EVENT), number=2_000, repeat=5)


def _roomy_sqlite(d: Path) -> SqliteSink:
    """A sink that never waits for its writer in 10,000 writes: the encoding's cost alone."""
    return SqliteSink(d / "w.db", synchronous="normal", flush_every=20_000, max_lag=20_000)


def _roomy_jsonl(d: Path) -> JsonlSink:
    return JsonlSink(d / "w.jsonl", fsync="never", flush_every=20_000, max_lag=20_000)


def main() -> None:
    """Print sustained throughput, run_turn's cost with each sink, and write_event's cost."""
    print(f"sustained throughput, {TURNS:,} turns (2 records each) until close() returns:")
    for name, make in CASES:
        rate, dropped, stalls, most, max_lag = _sustained(make)
        print(
            f"  {name:<34} {rate:>9,.0f} records/s {rate / 2:>9,.0f} turns/s  "
            f"dropped {dropped}, stalls {stalls}, most unwritten {most} (max_lag {max_lag})"
        )
    print()
    _run_turn_table()
    print()
    print("caller's cost of one write_event (encoded on the caller's thread, no wait):")
    ring = RingBufferSink()
    bare = per_call_ns(lambda: ring.write_event(EVENT), number=20_000, repeat=5)
    fanout = SinkFanout([RingBufferSink()])
    rows = [
        ("RingBufferSink.write_event (bare)", bare),
        (
            "SinkFanout -> RingBufferSink",
            per_call_ns(lambda: fanout.write_event(EVENT), number=20_000, repeat=5),
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for make in (_roomy_sqlite, _roomy_jsonl):
            with make(Path(tmp)) as sink:
                rows.append((f"{type(sink).__name__}.write_event", _write_ns(sink)))
    report(rows, baseline=bare)
    print(f"(threads alive: {threading.active_count()})")


if __name__ == "__main__":
    main()
