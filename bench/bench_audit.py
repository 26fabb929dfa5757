"""AuditSink throughput against the plain SqliteSink, same run, and where a record's time goes.

Run: ``.venv/bin/python -m bench.bench_audit``

Part 1 writes turns (a ``turn.completed`` event and a usage record each)
into each sink with ``flush_every=100`` as fast as one thread can and times
until ``close()`` returns (everything committed), like ``bench.bench_sinks``.
The variants run interleaved, one run of each per round, each round starting
one variant further along; it prints each variant's best and median rate
and the audit sink's rates as a share of the plain sink's (best over best,
median over median). The goal is >= 80 %. Beside each wall-clock rate it
prints the CPU the process spent per record (both threads, ``process_time``),
which a shared machine's load moves much less than the wall clock (the
sinks also wait for ``fsync``). Part 2 times the pieces of one record on its
own: the plain sink's row, the audit sink's canonical JSON, and the SHA-256
link hash and HMAC the writer adds.
"""

from __future__ import annotations

import hashlib
import hmac
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from bench._timing import per_call_ns, report
from techrevati.runtime._audit_chain import Signer, generic_record_text, link, record_text
from techrevati.runtime._sqlite_rows import record_item
from techrevati.runtime.audit import AuditSink, verify
from techrevati.runtime.events import AgentEvent, UsageRecord
from techrevati.runtime.sqlite import SqliteSink

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
KEY = bytes(range(32))
TURNS = 10_000  # per run: 20,000 records
ROUNDS = 9

Sink = SqliteSink | AuditSink
VARIANTS: dict[str, Callable[[Path], Sink]] = {
    "SqliteSink": lambda d: SqliteSink(d / "plain.db"),
    "AuditSink": lambda d: AuditSink(d / "audit.db"),
    "AuditSink(key=...)": lambda d: AuditSink(d / "keyed.db", key=KEY),
    "SqliteSink, normal": lambda d: SqliteSink(d / "plain-n.db", synchronous="normal"),
    "AuditSink, normal": lambda d: AuditSink(d / "audit-n.db", synchronous="normal"),
    "AuditSink(key=...), normal": lambda d: AuditSink(
        d / "keyed-n.db", key=KEY, synchronous="normal"
    ),
}
BASELINE: dict[str, str] = {
    "AuditSink": "SqliteSink",
    "AuditSink(key=...)": "SqliteSink",
    "AuditSink, normal": "SqliteSink, normal",
    "AuditSink(key=...), normal": "SqliteSink, normal",
}
"""Each audit variant and the plain sink it is compared with (same ``synchronous``)."""


def _run(make: Callable[[Path], Sink]) -> tuple[float, float]:
    """Write TURNS turns into a fresh sink and close it; return records/s and CPU us/record."""
    with tempfile.TemporaryDirectory() as tmp:
        sink = make(Path(tmp))
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(TURNS):
            sink.write_event(EVENT)
            sink.write_usage(RECORD)
        sink.close()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        if isinstance(sink, AuditSink):
            verdict = verify(sink.path, key=KEY if sink.keyed else None)
            if not verdict.ok or verdict.records != 2 * TURNS:
                raise SystemExit(f"the chain does not verify: {verdict.summary}")
        return 2 * TURNS / elapsed, cpu / (2 * TURNS) * 1e6


def throughput(rounds: int = ROUNDS) -> dict[str, list[tuple[float, float]]]:
    """Records/s and CPU us/record of each variant, one run of each per round, order rotated."""
    names = list(VARIANTS)
    rates: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(_run(VARIANTS[name]))
    return rates


def _ns(fn: Callable[[], object]) -> float:
    return per_call_ns(fn, number=20_000)


def pieces() -> None:
    """Time what one record costs in each sink, piece by piece."""
    event_text = record_text(EVENT).encode("ascii")
    prev = hashlib.sha256(b"prev").digest()
    digest = link(prev, 12345, event_text)
    signer = Signer(KEY)
    rows = [
        ("SqliteSink row of the event (record_item)", _ns(lambda: record_item(EVENT))),
        ("SqliteSink row of the usage record", _ns(lambda: record_item(RECORD))),
        ("AuditSink canonical JSON of the event", _ns(lambda: record_text(EVENT))),
        ("AuditSink canonical JSON of the usage record", _ns(lambda: record_text(RECORD))),
        (
            "  the same via to_dict() + json (generic)",
            _ns(lambda: generic_record_text(EVENT)),
        ),
        (
            "  usage via to_dict() + json (generic)",
            _ns(lambda: generic_record_text(RECORD)),
        ),
        (
            "link hash (SHA-256 of prev + seq + record)",
            _ns(lambda: link(prev, 12345, event_text)),
        ),
        ("  + hex of it", _ns(digest.hex)),
        ("HMAC-SHA256 of it, hmac.digest", _ns(lambda: hmac.digest(KEY, digest, "sha256"))),
        ("HMAC-SHA256 of it, Signer (states prepared once)", _ns(lambda: signer(digest))),
    ]
    bare = _ns(lambda: None)
    report(rows, baseline=bare)


def main() -> None:
    """Print the interleaved throughput table and the per-record pieces."""
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else ROUNDS
    rates = throughput(rounds)
    print(
        f"sustained throughput, {TURNS:,} turns (2 records each) until close() returns, "
        f"flush_every=100, synchronous=full unless 'normal'; {rounds} interleaved rounds:"
    )
    for name, values in rates.items():
        wall = [rate for rate, _ in values]
        cpu = [us for _, us in values]
        best, median = max(wall), statistics.median(wall)
        line = f"  {name:<28} best {best:>7,.0f}  median {median:>7,.0f} records/s"
        cpu_line = (
            f"  {'':<28} CPU  {min(cpu):5.2f} (best)  {statistics.median(cpu):5.2f} (median) "
            "us/record"
        )
        base = BASELINE.get(name)
        if base is not None:
            plain = [rate for rate, _ in rates[base]]
            plain_cpu = [us for _, us in rates[base]]
            line += (
                f"  = {best / max(plain):4.0%} (best) "
                f"{median / statistics.median(plain):4.0%} (median) of {base}"
            )
            cpu_line += (
                f"  = {min(plain_cpu) / min(cpu):4.0%} (best) "
                f"{statistics.median(plain_cpu) / statistics.median(cpu):4.0%} (median) "
                "of its records per CPU second"
            )
        print(line)
        print(cpu_line)
    print()
    print("one record, piece by piece (best of 7 x 20,000 calls):")
    pieces()


if __name__ == "__main__":
    main()
