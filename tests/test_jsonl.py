"""JsonlSink and read_jsonl: lines, fsync policies, torn and corrupt lines, failed batches."""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import (
    AgentEvent,
    AgentFailureClass,
    UsageRecord,
)
from techrevati.runtime.jsonl import CorruptRecordError, JsonlSink, read_jsonl
from techrevati.runtime.sinks import SinkWriteError
from tests.conftest import FakeClock
from tests.sink_records import T0, event, logged_by, usage, write_from_threads


def test_jsonl_round_trips_events_and_usage_in_order(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    records: list[AgentEvent | UsageRecord] = [
        event(i=1, failure_class=AgentFailureClass.RATE_LIMIT),
        usage(2, cost="0.000000123456789"),
        event(
            i=3, project_id="acme", at=datetime(2026, 1, 1, 14, tzinfo=timezone(timedelta(hours=2)))
        ),
    ]
    with JsonlSink(path) as sink:
        for record in records:
            if isinstance(record, AgentEvent):
                sink.write_event(record)
            else:
                sink.write_usage(record)
    assert read_jsonl(path) == records
    lines = path.read_bytes().splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert next(iter(first)) == "kind"
    assert first["kind"] == "event"
    assert json.loads(lines[1])["cost_usd"] == "1.23456789E-7"


def test_jsonl_keeps_the_service_tier_and_reads_lines_written_before_it(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    with JsonlSink(path) as sink:
        sink.write_usage(usage(1, service_tier="flex"))
        sink.write_usage(usage(2))
    assert read_jsonl(path) == [usage(1, service_tier="flex"), usage(2)]
    first, second = (json.loads(line) for line in path.read_bytes().splitlines())
    assert (first["service_tier"], second["service_tier"]) == ("flex", None)
    # A line from before tiers has no such key: it reads as no tier reported.
    del second["service_tier"]
    old = tmp_path / "old.jsonl"
    old.write_text(json.dumps(second) + "\n")
    (record,) = read_jsonl(old)
    assert isinstance(record, UsageRecord)
    assert record == usage(2)
    assert record.service_tier is None


def test_jsonl_writes_nothing_until_a_batch_is_due(tmp_path: Path, fake_clock: FakeClock) -> None:
    path = tmp_path / "log.jsonl"
    clock = fake_clock
    sink = JsonlSink(path, flush_every=3, flush_interval=5.0, clock=clock, background=False)
    sink.write_event(event(i=1))
    sink.write_event(event(i=2))
    assert path.read_bytes() == b""
    assert sink.pending == 2
    sink.write_event(event(i=3))
    assert len(read_jsonl(path)) == 3
    sink.write_event(event(i=4))
    clock.advance(5.0)
    sink.write_event(event(i=5))
    assert len(read_jsonl(path)) == 5
    assert (sink.written, sink.batches, sink.pending) == (5, 2, 0)
    sink.close()


@pytest.mark.parametrize(("policy", "expected_syncs"), [("batch", 2), ("never", 0), ("always", 5)])
def test_jsonl_fsync_policy_decides_how_often_the_file_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: str, expected_syncs: int
) -> None:
    path = tmp_path / f"{policy}.jsonl"
    if policy == "always":
        sink = JsonlSink(path, fsync="always")
    else:
        sink = JsonlSink(path, fsync=policy, flush_every=3, background=False)  # type: ignore[arg-type]
    synced: list[int] = []
    real_fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    for i in range(5):
        sink.write_event(event(i=i))
    if policy == "always":
        assert len(read_jsonl(path)) == 5  # on disk before write_event returned
    sink.close()
    assert len(synced) == expected_syncs
    assert len(read_jsonl(path)) == 5


def test_jsonl_rejects_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="fsync must be one of"):
        JsonlSink(tmp_path / "a.jsonl", fsync="sometimes")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="flush_every must be 1 with fsync='always', got 5"):
        JsonlSink(tmp_path / "b.jsonl", fsync="always", flush_every=5)
    with pytest.raises(InvalidValueError, match="flush_every must be an int >= 1, got 0"):
        JsonlSink(tmp_path / "c.jsonl", flush_every=0)
    with pytest.raises(InvalidValueError, match="flush_interval must be a number > 0, got 0"):
        JsonlSink(tmp_path / "d.jsonl", flush_interval=0)
    with pytest.raises(InvalidValueError, match="max_pending must be >= flush_every"):
        JsonlSink(tmp_path / "e.jsonl", flush_every=10, max_pending=5)


def test_jsonl_lines_never_interleave_when_hammered_from_threads(tmp_path: Path) -> None:
    path = tmp_path / "threads.jsonl"
    threads_n, per_thread = 8, 250
    with JsonlSink(path, flush_every=64) as sink:
        write_from_threads(sink, threads_n, per_thread)
    records = read_jsonl(path)
    assert len(records) == 2 * threads_n * per_thread
    for worker in range(threads_n):
        mine = [r for r in records if r.session_id == f"s{worker}"]
        events = [r for r in mine if isinstance(r, AgentEvent)]
        assert [e.data["i"] for e in events] == list(range(per_thread))
        assert len(mine) == 2 * per_thread


def test_read_jsonl_skips_a_torn_last_line_and_the_sink_repairs_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "torn.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(event(i=1))
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"kind":"event","name":"tur')
    assert len(read_jsonl(path)) == 1
    with caplog.at_level(logging.WARNING, logger="techrevati.runtime.sinks"):
        sink = JsonlSink(path)
    repaired = [r for r in caplog.records if getattr(r, "event", None) == "sink.repaired"]
    assert [r.bytes for r in repaired] == [len(b'{"kind":"event","name":"tur')]  # type: ignore[attr-defined]
    assert [(r.sink, r.path) for r in repaired] == [("JsonlSink", str(path))]  # type: ignore[attr-defined]
    (side,) = tmp_path.glob("torn.jsonl.torn-*")  # the cut bytes, kept beside the file
    assert side.read_bytes() == b'{"kind":"event","name":"tur'
    assert re.fullmatch(r"torn\.jsonl\.torn-\d{8}T\d{6}\.\d{6}Z", side.name)
    assert repaired[0].side_file == str(side)  # type: ignore[attr-defined]
    assert repaired[0].getMessage() == (
        f"sink.repaired: {path} ended in a partial line; moved 27 bytes to {side}"
    )
    assert path.read_bytes() == whole
    with sink:
        sink.write_event(event(i=2))
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [1, 2]


def test_read_jsonl_names_file_and_line_of_a_corrupt_record(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(event(i=1))
    path.write_bytes(path.read_bytes() + b'{"kind": "mystery"}\n' + b"\n")
    with pytest.raises(CorruptRecordError, match=r"bad\.jsonl:2: kind must be 'event' or 'usage'"):
        read_jsonl(path)
    path.write_bytes(b"not json\n")
    with pytest.raises(CorruptRecordError, match=r"bad\.jsonl:1:"):
        read_jsonl(path)


def test_jsonl_keeps_a_failed_batch_whole_and_writes_it_on_the_next_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "full.jsonl"
    sink = JsonlSink(path, flush_every=100, background=False)
    for i in range(3):
        sink.write_event(event(i=i))
    real_write = os.write
    calls = []

    def half_then_fail(fd: int, data: bytes | memoryview) -> int:
        calls.append(fd)
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:10])  # a short write...
        raise OSError(28, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(os, "write", half_then_fail)
    with (
        caplog.at_level(logging.ERROR, logger="techrevati.runtime.sinks"),
        pytest.raises(SinkWriteError, match="could not write 3 records") as info,
    ):
        sink.flush()
    assert isinstance(info.value, OSError)
    assert isinstance(info.value.__cause__, OSError)
    assert path.read_bytes() == b""  # the partial batch was cut off again
    assert (sink.pending, sink.failed_flushes, sink.written) == (3, 1, 0)
    failed = [r for r in caplog.records if getattr(r, "event", None) == "sink.flush_failed"]
    assert [(r.records, r.pending) for r in failed] == [(3, 3)]  # type: ignore[attr-defined]
    (record,) = failed
    assert record.getMessage() == (
        f"sink.flush_failed: {path} could not write 3 records: [Errno 28] No space left on device"
    )
    assert (record.sink, record.path, record.error_type) == ("JsonlSink", str(path), "OSError")  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert record.exc_info[1] is info.value.__cause__
    assert logged_by(record) in {"_write_error", "mutmut"}  # its caller's, not log_event's
    assert str(info.value) == (
        f"JsonlSink({str(path)!r}) could not write 3 records: "
        "OSError: [Errno 28] No space left on device"
    )
    with pytest.raises(SinkWriteError):
        sink.flush()  # still full: a second failure, counted
    assert (sink.pending, sink.failed_flushes) == (3, 2)
    monkeypatch.setattr(os, "write", real_write)
    sink.close()
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [0, 1, 2]


@pytest.mark.parametrize("size", [40, 200_000])
def test_a_file_that_is_all_one_torn_line_is_emptied_on_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, size: int
) -> None:
    path = tmp_path / "torn.jsonl"
    path.write_bytes(b'{"kind":"event","name":"' + b"x" * size)  # no newline anywhere
    assert read_jsonl(path) == []
    with caplog.at_level(logging.WARNING, logger="techrevati.runtime.sinks"):
        sink = JsonlSink(path)
    (repaired,) = [r for r in caplog.records if getattr(r, "event", None) == "sink.repaired"]
    assert repaired.bytes == size + 24  # type: ignore[attr-defined]
    (side,) = tmp_path.glob("torn.jsonl.torn-*")
    assert side.read_bytes() == b'{"kind":"event","name":"' + b"x" * size
    assert (
        repaired.getMessage()
        == f"sink.repaired: {path} ended in a partial line; moved {size + 24} bytes to {side}"
    )
    assert path.read_bytes() == b""
    with sink:
        sink.write_event(event(i=1))
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [1]


def test_a_torn_tail_longer_than_one_read_is_cut_back_to_the_last_whole_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "long-tail.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(event(i=1))
        sink.write_event(event(i=2))
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"kind":"usage","model":"' + b"m" * 150_000)  # spans 3 reads
    with JsonlSink(path) as sink:
        assert path.read_bytes() == whole
        sink.write_event(event(i=3))
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [1, 2, 3]


def test_a_file_that_ends_in_a_newline_is_opened_untouched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "whole.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(event(i=1))
    whole = path.read_bytes()
    with caplog.at_level(logging.WARNING, logger="techrevati.runtime.sinks"):
        JsonlSink(path).close()
    assert path.read_bytes() == whole
    assert caplog.records == []


def test_read_jsonl_ignores_blank_lines_and_fills_in_omitted_fields(tmp_path: Path) -> None:
    path = tmp_path / "sparse.jsonl"
    path.write_bytes(
        b"\n"
        b'{"kind":"event","name":"turn.completed","timestamp":"2026-01-01T12:00:00+00:00"}\n'
        b"   \n"
        b'{"kind":"usage","model":"m","timestamp":"2026-01-01T12:00:01+00:00"}\n'
    )
    first, second = read_jsonl(path)
    assert first == AgentEvent(
        name="turn.completed", timestamp=datetime(2026, 1, 1, 12, tzinfo=UTC)
    )
    assert second == UsageRecord(model="m", timestamp=datetime(2026, 1, 1, 12, 0, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"[1, 2]", "expected a JSON object, got list"),
        (
            b'{"kind":"event","name":"x","timestamp":"2026-01-01T12:00:00+00:00","data":[1]}',
            "data must be an object, got list",
        ),
        (b'{"kind":"event","timestamp":"2026-01-01T12:00:00+00:00"}', "'name'"),
        (b'{"kind":"usage","model":"m"}', "'timestamp'"),
        (b'{"kind":"event","name":"x","timestamp":"yesterday"}', "Invalid isoformat"),
    ],
)
def test_read_jsonl_names_what_is_wrong_with_a_record(
    tmp_path: Path, line: bytes, message: str
) -> None:
    path = tmp_path / "wrong.jsonl"
    path.write_bytes(b"\n" + line + b"\n")
    with pytest.raises(CorruptRecordError, match=rf"wrong\.jsonl:2: .*{message}"):
        read_jsonl(path)


@pytest.mark.parametrize(
    ("policy", "existed", "directory_syncs"),
    [("batch", False, 1), ("batch", True, 0), ("always", False, 1), ("never", False, 0)],
)
def test_creating_the_file_syncs_its_directory_unless_fsync_is_never(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: str,
    existed: bool,
    directory_syncs: int,
) -> None:
    path = tmp_path / "new.jsonl"
    if existed:
        path.write_bytes(b"")
    synced: list[bool] = []
    real_fsync = os.fsync

    def watching_fsync(fd: int) -> None:
        synced.append(os.path.isdir(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", watching_fsync)
    sink = JsonlSink(path, fsync=policy)  # type: ignore[arg-type]
    assert sink.fsync == policy
    assert synced == [True] * directory_syncs
    sink.close()


def test_a_sink_that_cannot_sync_its_new_file_raises_and_leaves_no_descriptor_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = len(os.listdir("/proc/self/fd"))

    def refuse(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", refuse)
    with pytest.raises(OSError, match="I/O error"):
        JsonlSink(tmp_path / "unsynced.jsonl")
    assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("torn", [10, 65536, 65537])
def test_a_torn_line_right_after_a_newline_at_the_start_of_the_file_keeps_that_newline(
    tmp_path: Path, torn: int
) -> None:
    path = tmp_path / "blank-then-torn.jsonl"
    # the newline is the first byte of the file
    path.write_bytes(b"\n" + b'{"kind":"usage","model":"' + b"x" * torn)
    JsonlSink(path).close()
    assert path.read_bytes() == b"\n"


def test_when_the_partial_batch_cannot_be_cut_off_the_write_error_is_still_the_one_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="techrevati.runtime.sinks")
    path = tmp_path / "stuck.jsonl"
    sink = JsonlSink(path, flush_every=100, background=False)
    sink.write_event(event(i=1))

    def refuse_write(fd: int, data: bytes | memoryview) -> int:
        raise OSError(28, "No space left on device")

    def refuse_truncate(fd: int, length: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "write", refuse_write)
    monkeypatch.setattr(os, "ftruncate", refuse_truncate)
    with pytest.raises(SinkWriteError, match="No space left on device") as info:
        sink.flush()
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == 28
    assert sink.pending == 1
    monkeypatch.undo()
    sink.close()
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [1]


def test_jsonl_lines_are_compact_utf8_with_unknown_values_as_text(tmp_path: Path) -> None:
    path = tmp_path / "text.jsonl"
    record = AgentEvent(
        name="turn.completed",
        data={"note": "café ✓", "cost": Decimal("0.10"), "at": T0},
        timestamp=T0,
    )
    with JsonlSink(path) as sink:
        sink.write_event(record)
    assert (
        path.read_bytes()
        == (
            '{"kind":"event","name":"turn.completed","role":"","phase":"","status":null,'
            '"failure_class":null,"detail":null,'
            '"data":{"note":"café ✓","cost":"0.10","at":"2026-01-01 12:00:00+00:00"},'
            '"timestamp":"2026-01-01T12:00:00+00:00","session_id":"","worker_id":"",'
            '"project_id":null}\n'
        ).encode()
    )


def test_fsync_always_takes_flush_every_1_and_refuses_any_other(tmp_path: Path) -> None:
    with JsonlSink(tmp_path / "one.jsonl", fsync="always", flush_every=1) as sink:
        sink.write_event(event(i=1))
        assert len(read_jsonl(tmp_path / "one.jsonl")) == 1  # written before write returned
    with pytest.raises(InvalidValueError, match="flush_every must be 1 with fsync='always', got 2"):
        JsonlSink(tmp_path / "two.jsonl", fsync="always", flush_every=2)


def test_a_new_jsonl_file_is_readable_by_all_and_writable_by_its_owner(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)
    try:
        JsonlSink(tmp_path / "mode.jsonl").close()
    finally:
        os.umask(old_umask)
    assert (tmp_path / "mode.jsonl").stat().st_mode & 0o777 == 0o644


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (  # a secret, not ours and without a newline: it used to be cut to 0 bytes
            b'{"api_key":"sk-12345"}',
            "its last 22 bytes, after the last newline, are no record",
        ),
        (  # a torn line that starts like ours after a line that is not ours
            b'a,b,c\n{"kind":"event","na',
            "line 1 is no record (Expecting value: line 1 column 1 (char 0))",
        ),
        (  # whole lines, the last one not ours: appending would corrupt it
            b'{"kind":"event","name":"x","timestamp":"2026-01-01T12:00:00+00:00"}\nname,cost\n',
            "its last line is no record (Expecting value: line 1 column 1 (char 0))",
        ),
        (
            b'{"kind":"event"}\n',
            "its last line is no record ('name')",
        ),
    ],
)
def test_a_file_that_is_not_ours_is_refused_by_name_and_left_untouched(
    tmp_path: Path, content: bytes, why: str
) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(content)
    before = open_fds()
    with pytest.raises(CorruptRecordError) as info:
        JsonlSink(path)
    assert str(info.value) == (
        f"{path} is not a JsonlSink file: {why}; it was left untouched "
        "(give the sink a new path, or move the file away)"
    )
    assert path.read_bytes() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no side file
    assert open_fds() == before


def test_trailing_blank_lines_after_a_record_are_still_ours(tmp_path: Path) -> None:
    path = tmp_path / "blank.jsonl"
    with JsonlSink(path) as sink:
        sink.write_event(event(i=1))
    path.write_bytes(path.read_bytes() + b"\n  \n")
    with JsonlSink(path) as sink:
        sink.write_event(event(i=2))
    assert [r.data["i"] for r in read_jsonl(path) if isinstance(r, AgentEvent)] == [1, 2]


def test_a_torn_line_is_repaired_only_after_every_whole_line_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "many.jsonl"
    with JsonlSink(path, flush_every=500) as sink:
        for i in range(1000):
            sink.write_event(event(i=i))
    whole = path.read_bytes()
    lines = whole.splitlines(keepends=True)
    lines[500] = b'{"kind":"event","oops"\n'  # one bad line in the middle
    path.write_bytes(b"".join(lines) + b'{"kind":"usage","mo')
    with pytest.raises(CorruptRecordError, match=r"line 501 is no record"):
        JsonlSink(path)
    assert path.read_bytes() == b"".join(lines) + b'{"kind":"usage","mo'
    path.write_bytes(whole + b'{"kind":"usage","mo')
    JsonlSink(path).close()
    assert path.read_bytes() == whole


def test_a_second_repair_in_the_same_instant_gets_its_own_side_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from techrevati.runtime import jsonl

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: object = None) -> Frozen:
            return cls(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)

    monkeypatch.setattr(jsonl, "datetime", Frozen)
    path = tmp_path / "twice.jsonl"
    for tail in (b'{"kind":"ev', b'{"kind":"us'):
        path.write_bytes(tail)
        JsonlSink(path).close()
    sides = sorted(p.name for p in tmp_path.glob("twice.jsonl.torn-*"))
    assert sides == [
        "twice.jsonl.torn-20260102T030405.000006Z",
        "twice.jsonl.torn-20260102T030405.000006Z-2",
    ]
    assert (tmp_path / sides[1]).read_bytes() == b'{"kind":"us'
