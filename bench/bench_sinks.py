"""Sink throughput to disk, and what ``write_event`` costs the caller.

Run: ``.venv/bin/python -m bench.bench_sinks``

Part 1 writes a few thousand events into each durable sink and times until
``close()`` returns (everything committed), in events per second. Part 2 times
one ``write_event`` call as the session sees it (buffered sinks only append to
memory) against a bare in-memory ring buffer.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench._timing import per_call_ns, report
from techrevati.runtime.events import AgentEvent, RingBufferSink
from techrevati.runtime.sinks import JsonlSink, SinkFanout, SqliteSink

EVENT = AgentEvent(
    name="turn.completed",
    role="writer",
    phase="draft",
    data={"model": "model-a", "duration_seconds": 1.25, "input_tokens": 5000, "cost_usd": "0.033"},
    session_id="s1",
    worker_id="w1",
    project_id=42,
)


def _throughput(make: Callable[[Path], SqliteSink | JsonlSink], count: int) -> float:
    """Return events per second from the first write until close() has committed them all."""
    with tempfile.TemporaryDirectory() as tmp:
        sink = make(Path(tmp))
        start = time.perf_counter()
        for _ in range(count):
            sink.write_event(EVENT)
        sink.close()
        return count / (time.perf_counter() - start)


def main() -> None:
    """Print sink throughput, then the caller's cost per write_event."""
    cases: list[tuple[str, Callable[[Path], SqliteSink | JsonlSink], int]] = [
        ("SqliteSink flush_every=100 (full)", lambda d: SqliteSink(d / "a.db"), 20_000),
        (
            "SqliteSink flush_every=100 (normal)",
            lambda d: SqliteSink(d / "b.db", synchronous="normal"),
            20_000,
        ),
        (
            "SqliteSink flush_every=1 inline (full)",
            lambda d: SqliteSink(d / "c.db", flush_every=1, background=False),
            1_000,
        ),
        (
            "SqliteSink flush_every=1 inline (normal)",
            lambda d: SqliteSink(d / "d.db", flush_every=1, background=False, synchronous="normal"),
            2_000,
        ),
        ("JsonlSink flush_every=100 fsync=batch", lambda d: JsonlSink(d / "a.jsonl"), 20_000),
        (
            "JsonlSink flush_every=100 fsync=never",
            lambda d: JsonlSink(d / "b.jsonl", fsync="never"),
            20_000,
        ),
        ("JsonlSink fsync=always", lambda d: JsonlSink(d / "c.jsonl", fsync="always"), 1_000),
    ]
    print("throughput until close() returns (all committed):")
    for name, make, count in cases:
        rate = _throughput(make, count)
        print(f"  {name:<44} {rate:>10,.0f} events/s  {1e9 / rate:>10,.0f} ns/event  (n={count:,})")
    print()
    print("caller's cost of one write_event:")
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
        with SqliteSink(Path(tmp) / "w.db", synchronous="normal") as sqlite:
            rows.append(
                (
                    "SqliteSink.write_event (buffered)",
                    per_call_ns(lambda: sqlite.write_event(EVENT), number=2_000, repeat=5),
                )
            )
        with JsonlSink(Path(tmp) / "w.jsonl", fsync="never") as jsonl:
            rows.append(
                (
                    "JsonlSink.write_event (buffered)",
                    per_call_ns(lambda: jsonl.write_event(EVENT), number=2_000, repeat=5),
                )
            )
    report(rows, baseline=bare)


if __name__ == "__main__":
    main()
