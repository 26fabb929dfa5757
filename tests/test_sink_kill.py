"""``kill -9`` at a random moment: each durable sink's file opens whole and loses at most max_lag.

A child process writes turns (an event and a usage record each) as fast as it
can into a sink with ``flush_every=100``; after every ``write_*`` returns it
stores how many records it has handed over in a shared counter (a memory-mapped
file). At a random count (seeded; the seed is printed, set
``TECHREVATI_KILL_SEED`` to replay) it tells the test, which kills it with
SIGKILL while it keeps writing. The file must then open (``PRAGMA
integrity_check`` is ``ok`` / every whole line is a record), hold a prefix of
what was handed over, and miss at most ``max_lag`` of it. The bound is exact,
not timed: every record counted was handed over before the kill, so
``counted - stored <= max_lag`` holds whenever the sink keeps its promise.
The report command's totals must then be those of the records present.

The children are forked from one helper process that has already imported
the package, so each run costs a fork, not an interpreter start.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from techrevati.runtime.events import AgentEvent, UsageRecord
from techrevati.runtime.jsonl import JsonlSink, read_jsonl
from techrevati.runtime.report import build_report
from techrevati.runtime.sqlite import SqliteReader

RUNS = 20
MAX_LAG = 400  # the default: four batches of flush_every=100
SEED = int(os.environ.get("TECHREVATI_KILL_SEED", "20261202"))

FORKER = r"""
import mmap, os, struct, sys
from datetime import UTC, datetime
from techrevati.runtime.events import AgentEvent, UsageRecord
from techrevati.runtime.sinks import JsonlSink, SqliteSink
import techrevati.runtime.sqlite, json, sqlite3  # loaded once, here, before any fork

AT = datetime(2026, 1, 1, tzinfo=UTC)


def write_turns(kind, path, counter_path, log_path, target, max_lag):
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(log, 2)
    counter = mmap.mmap(os.open(counter_path, os.O_RDWR), 8)
    if kind == "jsonl":
        sink = JsonlSink(path, flush_every=100, max_lag=max_lag)
    else:
        sink = SqliteSink(path, flush_every=100, max_lag=max_lag)
    handed = 0
    for i in range(100_000_000):
        sink.write_event(
            AgentEvent(name="turn.completed", session_id="k", data={"i": i}, timestamp=AT)
        )
        handed += 1
        struct.pack_into("<q", counter, 0, handed)
        sink.write_usage(UsageRecord(model="m", input_tokens=i, session_id="k", timestamp=AT))
        handed += 1
        struct.pack_into("<q", counter, 0, handed)
        if handed == target:
            os.write(1, f"hit {os.getpid()}\n".encode())


while True:
    line = sys.stdin.readline()
    if not line:
        break
    kind, path, counter_path, log_path, target, max_lag = line.split()
    pid = os.fork()
    if pid == 0:
        try:
            write_turns(kind, path, counter_path, log_path, int(target), int(max_lag))
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    os.write(1, f"exit {pid} {status}\n".encode())
"""


@dataclass
class Forker:
    proc: subprocess.Popen[str]

    def command(self, *words: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(map(str, words)) + "\n")
        self.proc.stdin.flush()

    def line(self) -> list[str]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until the child or the forker speaks
        if not line:
            pytest.fail(f"the forker exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return line.split()


@pytest.fixture(scope="module")
def forker() -> Iterator[Forker]:
    proc = subprocess.Popen(
        [sys.executable, "-c", FORKER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield Forker(proc)
    proc.kill()
    proc.communicate()


@dataclass(frozen=True)
class Run:
    counted: int  # records the child had handed over when it was killed (or one fewer)
    stored: int  # records in the file

    @property
    def lost(self) -> int:
        return self.counted - self.stored


def kill_at(forker: Forker, tmp: Path, kind: str, target: int) -> tuple[Path, int]:
    """Start a child writing to a new file, kill it after ``target`` records; return its count."""
    path = tmp / ("turns.jsonl" if kind == "jsonl" else "turns.db")
    counter = tmp / "counter"
    counter.write_bytes(bytes(8))
    log = tmp / "child.log"
    forker.command(kind, path, counter, log, target, MAX_LAG)
    word, *rest = forker.line()
    if word != "hit":
        pytest.fail(f"the child ended on its own ({rest}): {log.read_text()}")
    pid = int(rest[0])
    os.kill(pid, signal.SIGKILL)
    assert forker.line() == ["exit", str(pid), str(signal.SIGKILL)]  # killed, and reaped
    (counted,) = struct.unpack("<q", counter.read_bytes()[:8])
    return path, counted


def stored_sqlite(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with SqliteReader(path) as reader:
        events = [e.data["i"] for e in reader.read_events()]
        usage = [u.input_tokens for u in reader.read_usage()]
    check_report(path, len(events), len(usage))
    return prefix(events, usage)


def stored_jsonl(path: Path) -> int:
    data = path.read_bytes()
    *whole, torn = data.split(b"\n")  # torn is b"" unless the kill cut the last line
    for line in whole:
        json.loads(line)  # every whole line parses
    records = read_jsonl(path)
    events = [r.data["i"] for r in records if isinstance(r, AgentEvent)]
    usage = [r.input_tokens for r in records if isinstance(r, UsageRecord)]
    assert len(records) == len(whole)
    JsonlSink(path).close()  # reopening accepts the file, repairing a torn last line
    assert read_jsonl(path) == records
    if torn:
        assert path.read_bytes() == data[: len(data) - len(torn)]
    check_report(path, len(events), len(usage))
    return prefix(events, usage)


def prefix(events: list[object], usage: list[int]) -> int:
    """Check the file holds turns 0, 1, 2, ... in order (the last maybe half); return the count."""
    assert events == list(range(len(events)))
    assert usage == list(range(len(usage)))
    assert len(events) - len(usage) in (0, 1)  # each event went in before its usage record
    return len(events) + len(usage)


def check_report(path: Path, events: int, usage: int) -> None:
    """The report command's totals are those of the records the file holds, and it skips none."""
    report = build_report(path)
    assert report.skipped == ()
    assert (report.events, report.turns) == (events, usage)
    assert dict(report.tokens)["input_tokens"] == sum(range(usage))


@pytest.mark.parametrize("kind", ["sqlite", "jsonl"])
def test_kill_9_at_a_random_moment_loses_at_most_max_lag_and_leaves_a_whole_file(
    forker: Forker, tmp_path: Path, kind: str
) -> None:
    rng = random.Random(f"{SEED}-{kind}")
    print(f"TECHREVATI_KILL_SEED={SEED} kind={kind}")
    runs = []
    anomalies = 0
    for n in range(RUNS):
        target = 2 * rng.randrange(1, 3000)  # after a whole turn, 2 to 6,000 records in
        tmp = tmp_path / f"run{n}"
        tmp.mkdir()
        path, counted = kill_at(forker, tmp, kind, target)
        while counted < target:
            # The child writes "hit" only after its counter says target, so a lower count
            # read back is no loss by the sink but a counter that did not reach the file
            # (seen about once in 40 runs on a loaded machine, cause not found). That
            # run measures nothing; it is run again in a new folder, at most 3 times.
            anomalies += 1
            print(f"  run {n}: counter read {counted} after the child reported {target}; again")
            assert anomalies <= 3, "the counter was lost more than 3 times: the protocol is broken"
            tmp = tmp_path / f"run{n}-again{anomalies}"
            tmp.mkdir()
            path, counted = kill_at(forker, tmp, kind, target)
        stored = stored_sqlite(path) if kind == "sqlite" else stored_jsonl(path)
        run = Run(counted, stored)
        runs.append(run)
        print(
            f"  run {n}: killed after {target}, counted {counted}, stored {stored}, lost {run.lost}"
        )
        assert counted >= target
        assert stored <= counted + 1  # at most the record being handed over when killed
        assert run.lost <= MAX_LAG, f"run {n} lost {run.lost} > max_lag {MAX_LAG}"
    print(f"  most lost in one run: {max(run.lost for run in runs)} (max_lag {MAX_LAG})")
