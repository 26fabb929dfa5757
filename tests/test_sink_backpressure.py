"""Backpressure: a write waits while ``max_lag`` records are unwritten, and never forever.

The writer is slowed by a gate the test holds (the sink's own ``_write_batch``
behind it); waits are observed through a fake clock that the waiting write
reads, so nothing here sleeps.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import AgentEvent
from techrevati.runtime.jsonl import JsonlSink, read_jsonl
from techrevati.runtime.sinks import SinkClosedError, SinkWriteError
from techrevati.runtime.sqlite import SqliteReader, SqliteSink
from tests.conftest import FakeClock
from tests.sink_records import event

WAIT = 20.0  # seconds a test waits at most for another thread (only a bug makes it wait)


class WaitWatchedClock(FakeClock):
    """A fake clock that notes each read made by a write waiting for room.

    ``step`` moves the clock on at each such read: with ``step > max_wait``
    every wait gives up at its first look, without waiting at all.
    """

    def __init__(self, step: float = 0.0) -> None:
        super().__init__()
        self.step = step
        self.waits = 0
        self._seen = threading.Condition()

    def __call__(self) -> float:
        if sys._getframe(1).f_code.co_name == "_wait_for_room":
            with self._seen:
                self.waits += 1
                self.now += self.step
                self._seen.notify_all()
        return self.now

    def wait_for_waits(self, count: int) -> None:
        with self._seen:
            assert self._seen.wait_for(lambda: self.waits >= count, WAIT)


def gate(sink: JsonlSink | SqliteSink, before: Callable[[Sequence[Any]], None]) -> None:
    """Run ``before(batch)`` ahead of each batch the sink writes."""
    real = sink._write_batch

    def gated(batch: Sequence[Any]) -> None:
        before(batch)
        real(batch)

    sink._write_batch = gated  # type: ignore[method-assign]


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
def test_a_slow_writer_keeps_pending_at_most_max_lag_while_the_producer_writes_ten_times_that(
    tmp_path: Path, kind: str
) -> None:
    max_lag = 40
    sink: JsonlSink | SqliteSink = (
        JsonlSink(tmp_path / "bp.jsonl", flush_every=10, max_lag=max_lag)
        if kind == "jsonl"
        else SqliteSink(tmp_path / "bp.db", flush_every=10, max_lag=max_lag)
    )
    progress = threading.Condition()
    done = False

    def only_when_full(batch: Sequence[Any]) -> None:
        # the slowest writer there is: it writes only once the producer filled max_lag
        with progress:
            assert progress.wait_for(lambda: done or sink.pending >= max_lag, WAIT)

    gate(sink, only_when_full)
    seen: list[int] = []
    total = 10 * max_lag
    for i in range(total):
        sink.write_event(event(i=i))
        seen.append(sink.pending)
        with progress:
            progress.notify_all()
    with progress:
        done = True
        progress.notify_all()
    sink.close()
    assert max(seen) == max_lag  # reached, never passed
    assert (sink.written, sink.dropped, sink.stalls, sink.pending) == (total, 0, 0, 0)
    if isinstance(sink, JsonlSink):
        back = [r.data["i"] for r in read_jsonl(sink.path) if isinstance(r, AgentEvent)]
    else:
        with SqliteReader(sink.path) as reader:
            back = [e.data["i"] for e in reader.read_events()]
    assert back == list(range(total))


def blocked_writer(tmp_path: Path, clock: FakeClock, **settings: Any) -> tuple[JsonlSink, Any]:
    """A sink whose writer blocks, inside its first batch, until the returned event is set."""
    sink = JsonlSink(tmp_path / "stuck.jsonl", flush_every=2, max_lag=4, clock=clock, **settings)
    release = threading.Event()
    entered = threading.Event()

    def hold(batch: Sequence[Any]) -> None:
        entered.set()
        assert release.wait(WAIT)

    gate(sink, hold)
    sink.write_event(event(i=0))
    sink.write_event(event(i=1))  # a batch is due: the writer takes it and blocks
    assert entered.wait(WAIT)
    return sink, release


def test_close_wakes_a_write_waiting_for_room_and_it_raises_closed(tmp_path: Path) -> None:
    clock = WaitWatchedClock()
    sink, release = blocked_writer(tmp_path, clock, max_wait=3600.0)
    sink.write_event(event(i=2))
    sink.write_event(event(i=3))  # 2 in flight + 2 buffered: max_lag reached
    outcome: list[BaseException] = []

    def produce() -> None:
        try:
            sink.write_event(event(i=4))
        except BaseException as exc:
            outcome.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    clock.wait_for_waits(2)  # it looked at the clock right before waiting: it waits now
    closer = threading.Thread(target=sink.close)
    closer.start()
    producer.join(WAIT)  # long before max_wait (an hour): close woke it
    assert not producer.is_alive()
    assert [type(exc) for exc in outcome] == [SinkClosedError]
    release.set()
    closer.join(WAIT)
    assert sink.closed
    assert [r.data["i"] for r in read_jsonl(sink.path) if isinstance(r, AgentEvent)] == [
        0,
        1,
        2,
        3,
    ]


def test_ctrl_c_interrupts_a_write_waiting_for_room_and_leaves_the_sink_usable(
    tmp_path: Path,
) -> None:
    clock = WaitWatchedClock()
    sink, release = blocked_writer(tmp_path, clock, max_wait=3600.0)
    sink.write_event(event(i=2))
    sink.write_event(event(i=3))
    main = threading.main_thread().ident
    assert main == threading.get_ident()  # signals reach the main thread only

    def interrupt() -> None:
        clock.wait_for_waits(2)
        signal.pthread_kill(main, signal.SIGINT)

    helper = threading.Thread(target=interrupt)
    helper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            sink.write_event(event(i=4))  # waits for room until Ctrl-C
    finally:
        helper.join(WAIT)
    assert sink._waiting == 0
    release.set()
    sink.write_event(event(i=5))  # the lock was not left held
    sink.close()
    kept = [r.data["i"] for r in read_jsonl(sink.path) if isinstance(r, AgentEvent)]
    assert kept == [0, 1, 2, 3, 5]  # the interrupted record was never handed over


def test_a_writer_stuck_past_max_wait_stalls_the_sink_once_then_writes_buffer_and_drop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = WaitWatchedClock(step=10.0)  # each look moves the clock past max_wait
    sink, release = blocked_writer(tmp_path, clock, max_wait=5.0, max_pending=8)
    with caplog.at_level(logging.ERROR, logger="techrevati.runtime.sinks"):
        for i in range(2, 30):
            sink.write_event(event(i=i))  # the first write past max_lag gives up waiting
    assert clock.waits == 2  # one wait: its deadline and one look; then nobody waits again
    assert (sink.stalls, sink.pending, sink.dropped) == (1, 2 + 8, 28 - 8)
    (stalled,) = [r for r in caplog.records if getattr(r, "event", None) == "sink.stalled"]
    assert stalled.getMessage() == (
        f"sink.stalled: {sink.path}: no batch finished within max_wait=5.0s; writes no longer wait"
    )
    release.set()
    sink.close()
    kept = [r.data["i"] for r in read_jsonl(sink.path) if isinstance(r, AgentEvent)]
    assert kept == [0, 1, *range(22, 30)]  # the oldest buffered were dropped, and counted


def test_a_finished_batch_ends_the_stall_and_writes_wait_again(tmp_path: Path) -> None:
    clock = WaitWatchedClock(step=10.0)
    sink, release = blocked_writer(tmp_path, clock, max_wait=5.0)
    for i in range(2, 5):
        sink.write_event(event(i=i))
    assert sink.stalls == 1
    release.set()
    sink.flush()  # a batch finishes: the writer is alive again
    assert sink._stalled is False
    sink.close()


def test_a_disk_that_refuses_writes_drops_and_counts_instead_of_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="techrevati.runtime.sinks")
    clock = WaitWatchedClock(step=10.0)  # a wait would give up at once and count a stall
    path = tmp_path / "full.jsonl"
    sink = JsonlSink(
        path, flush_every=2, max_lag=4, max_pending=8, flush_interval=3600.0, clock=clock
    )

    def refuse(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", refuse)
    sink.write_event(event(i=0))
    with pytest.raises(SinkWriteError):
        sink.flush()  # the disk refuses: the retry waits flush_interval
    for i in range(1, 50):
        sink.write_event(event(i=i))
    assert (clock.waits, sink.stalls) == (0, 0)  # nobody waited on a disk that refuses
    assert (sink.pending, sink.dropped) == (8, 42)
    monkeypatch.undo()
    sink.close()
    kept = [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)]
    assert kept == list(range(42, 50))


def test_the_flusher_thread_never_waits_on_itself(tmp_path: Path) -> None:
    clock = WaitWatchedClock(step=10.0)  # a wait would count a stall
    path = tmp_path / "self.jsonl"
    echoes: list[int] = []
    sink: JsonlSink

    def echo(size: int) -> None:  # on the flusher thread: write more than max_lag records
        if not echoes:
            echoes.append(size)
            for i in range(100, 120):
                sink.write_event(event(i=i))

    sink = JsonlSink(path, flush_every=2, max_lag=4, clock=clock, on_flush=echo)
    done = threading.Event()
    gate(sink, lambda batch: done.set() if len(batch) > 2 else None)
    sink.write_event(event(i=0))
    sink.write_event(event(i=1))
    assert done.wait(WAIT)  # the flusher wrote the echoed records (a batch of more than 2)
    assert (clock.waits, sink.stalls) == (0, 0)
    sink.close()
    assert len(read_jsonl(path)) == 22


def test_a_write_from_inside_the_batch_being_written_does_not_wait_for_itself(
    tmp_path: Path,
) -> None:
    clock = WaitWatchedClock(step=10.0)
    path = tmp_path / "nested.jsonl"
    sink = JsonlSink(path, flush_every=100, max_lag=200, clock=clock)
    nested: list[bool] = []

    def write_more(batch: Sequence[Any]) -> None:
        if not nested:  # inside the caller's flush(), the caller writes 250 more
            nested.append(True)
            for i in range(1000, 1250):
                sink.write_event(event(i=i))

    gate(sink, write_more)
    for i in range(3):
        sink.write_event(event(i=i))
    sink.flush()
    assert (clock.waits, sink.stalls) == (0, 0)
    sink.close()
    assert len(read_jsonl(path)) == 253


def test_a_sink_waits_only_while_more_than_max_lag_is_unwritten(tmp_path: Path) -> None:
    with JsonlSink(tmp_path / "d.jsonl", flush_every=25) as sink:
        assert sink.max_lag == 100  # four batches
    with SqliteSink(tmp_path / "d.db", flush_every=30, max_pending=50) as small:
        assert small.max_lag == 50  # never more than max_pending
    with JsonlSink(tmp_path / "a.jsonl", fsync="always") as always:
        assert always.max_lag == 4


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_lag": 9}, "max_lag must be an int >= 10, got 9"),
        ({"max_lag": 11.0}, "max_lag must be an int >= 10, got 11.0"),
        ({"max_lag": 101}, "max_lag must be <= max_pending (100), got 101"),
        ({"max_wait": 0}, "max_wait must be a number > 0 and finite, got 0"),
        ({"max_wait": float("inf")}, "max_wait must be a number > 0 and finite, got inf"),
        ({"max_wait": True}, "max_wait must be a number > 0 and finite, got True"),
    ],
)
def test_sinks_refuse_a_max_lag_or_max_wait_they_cannot_honour(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    for make in (JsonlSink, SqliteSink):
        with pytest.raises(InvalidValueError) as info:
            make(tmp_path / f"x.{make.__name__}", flush_every=10, max_pending=100, **settings)
        assert str(info.value) == message
