"""The JSON Lines sink: one JSON object per record appended to a file, and its reader.

Reach for :class:`JsonlSink` when records should land in a plain file that is
easy to ship, grep and tail; read it back with :func:`read_jsonl`, which
returns typed records. One process writes a file; when several processes
write, give each its own file or use :class:`~techrevati.runtime.sqlite.SqliteSink`.
Everything here is also importable from :mod:`techrevati.runtime.sinks`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Final, Literal

from techrevati.runtime._clock import Clock
from techrevati.runtime._record_text import dumps, escaped, iso, sanitised
from techrevati.runtime._sink_base import (
    DEFAULT_FLUSH_EVERY,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_WAIT,
    BufferedSink,
    Record,
    log_event,
)
from techrevati.runtime.errors import CorruptRecordError, InvalidValueError
from techrevati.runtime.events import AgentEvent, AgentFailureClass, UsageRecord

__all__ = ["CorruptRecordError", "FsyncPolicy", "JsonlSink", "read_jsonl"]

FsyncPolicy = Literal["always", "batch", "never"]
"""When :class:`JsonlSink` calls ``fsync``: per record, per batch, or never."""

_FSYNC_POLICIES: Final = frozenset({"always", "batch", "never"})
_REJECTED: Final = "rejected"
# Every line JsonlSink writes starts with one of these (compact JSON, "kind" first).
_LINE_STARTS: Final = tuple(
    f'{{"kind":"{kind}",'.encode() for kind in ("event", "usage", _REJECTED)
)


class JsonlSink(BufferedSink[bytes]):
    """Append one JSON object per line: ``{"kind": "event" | "usage", ...record.to_dict()}``.

    ``fsync`` says how hard each write is pushed to the disk:

    - ``"batch"`` (default): each batch is written and ``fsync``-ed; survives
      ``kill -9`` and power loss up to the last batch.
    - ``"never"``: batches are written to the OS but not synced; survives
      ``kill -9`` of the process up to the last batch, not power loss.
    - ``"always"``: every record is written and synced before ``write_*``
      returns (on the caller's thread, so keep it off an event loop).

    Safe to share between threads: each batch goes down in one ``write`` under
    a lock, so lines never interleave. One process per file: use a file per
    process, or :class:`~techrevati.runtime.sqlite.SqliteSink`, when several
    processes write. Read it back with :func:`read_jsonl`.

    Each record is encoded on the caller's thread. One JSON cannot hold as
    given (a lone surrogate, a cycle, nesting past the depth limit, a key
    JSON refuses) is written sanitised (see ``_record_text.sanitised``) and
    counted in :attr:`sanitised`; one that cannot even be sanitised is
    written as a ``{"kind": "rejected", "reason": ...}`` line, which
    :func:`read_jsonl` skips, and counted in :attr:`rejected`.

    Opening an existing file checks that it is ours: its last line must be a
    record. A file whose last line was cut by a crash is repaired only when
    every whole line is a record and the cut line starts like one: the cut
    bytes move to ``<name>.torn-<UTC time>`` beside it (``sink.repaired`` is
    logged). Any other file raises :class:`CorruptRecordError` naming the
    file and why, and is left untouched.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fsync: FsyncPolicy = "batch",
        flush_every: int | None = None,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        clock: Clock = time.monotonic,
        background: bool = True,
        max_pending: int = DEFAULT_MAX_PENDING,
        on_flush: Callable[[int], object] | None = None,
        max_lag: int | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        if fsync not in _FSYNC_POLICIES:
            raise InvalidValueError(
                f"fsync must be one of 'always', 'batch', 'never', got {fsync!r}"
            )
        if fsync == "always":
            if flush_every not in (None, 1):
                raise InvalidValueError(
                    f"flush_every must be 1 with fsync='always', got {flush_every!r}"
                )
            flush_every, background = 1, False
        elif flush_every is None:
            flush_every = DEFAULT_FLUSH_EVERY
        file = Path(path)
        self._fsync: FsyncPolicy = fsync
        self._fd = _open_for_append(file, sync_dir=fsync != "never")
        super().__init__(
            file,
            flush_every=flush_every,
            flush_interval=flush_interval,
            clock=clock,
            background=background,
            max_pending=max_pending,
            on_flush=on_flush,
            max_lag=max_lag,
            max_wait=max_wait,
        )

    @property
    def fsync(self) -> FsyncPolicy:
        """The fsync policy."""
        return self._fsync

    def _encode(self, record: Record) -> bytes:
        kind = "event" if isinstance(record, AgentEvent) else "usage"
        return (dumps({"kind": kind, **record.to_dict()}) + "\n").encode("utf-8")

    def _encode_sanitised(self, record: Record, notes: set[str]) -> bytes:
        kind = "event" if isinstance(record, AgentEvent) else "usage"
        clean = sanitised({"kind": kind, **record.to_dict()}, notes)
        return (dumps(clean) + "\n").encode("utf-8")

    def _encode_rejected(self, record: Record, reason: str) -> bytes:
        line = {
            "kind": _REJECTED,
            "reason": reason,
            "record_type": type(record).__name__,
            "timestamp": iso(record.timestamp),
            "record": _quarantined_text(record),
        }
        return (dumps(line) + "\n").encode("utf-8")

    def _write_batch(self, batch: Sequence[bytes]) -> None:
        data = b"".join(batch)
        fd = self._fd
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync != "never":
                os.fsync(fd)
        except BaseException:
            with suppress(OSError):  # leave no partial batch behind: the retry writes it whole
                os.ftruncate(fd, start)
            raise

    def _release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_jsonl(path: str | os.PathLike[str]) -> list[AgentEvent | UsageRecord]:
    """Read a file written by :class:`JsonlSink` back into typed records, in order.

    A last line without its newline (cut by a crash mid-write) is skipped;
    blank lines and quarantined records (``"kind": "rejected"``) are
    skipped; any other line that is not a record raises
    :class:`CorruptRecordError` naming the file and line number.
    """
    records: list[AgentEvent | UsageRecord] = []
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                break  # a torn last line: never fully written
            if not line.strip():
                continue
            try:
                record = _record_from_json(line)
            except (ValueError, TypeError, KeyError, RecursionError) as exc:
                raise CorruptRecordError(f"{os.fspath(path)}:{number}: {exc}") from exc
            if record is not None:
                records.append(record)
    return records


def _quarantined_text(record: Record) -> str:
    """Return the best text of a record that cannot be stored: sanitised JSON, else its repr."""
    with suppress(Exception):
        return dumps(sanitised(record.to_dict(), set()))
    with suppress(Exception):
        return escaped(repr(record))
    return f"<unprintable {type(record).__name__}>"


def _open_for_append(path: Path, *, sync_dir: bool) -> int:
    """Open ``path`` for appending, refusing a file that is not ours; repair a torn last line."""
    existed = path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size and os.pread(fd, 1, size - 1) != b"\n":
            _repair(fd, path, size)
        elif size:
            _check_last_line(fd, path, size)
        if sync_dir and not existed:
            _sync_dir(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _repair(fd: int, path: Path, size: int) -> None:
    """Move a torn last line to a side file, if every whole line before it is a record of ours."""
    keep = _last_newline_end(fd, size)
    torn = os.pread(fd, size - keep, keep)
    if not any(torn.startswith(start) or start.startswith(torn) for start in _LINE_STARTS):
        raise _foreign(path, f"its last {size - keep} bytes, after the last newline, are no record")
    _check_lines(path, keep)
    side = _side_file(path, torn)
    os.ftruncate(fd, keep)
    os.fsync(fd)
    log_event(
        logging.WARNING,
        "sink.repaired",
        "%s ended in a partial line; moved %d bytes to %s",
        path,
        size - keep,
        side,
        sink="JsonlSink",
        path=str(path),
        bytes=size - keep,
        side_file=str(side),
    )


def _check_lines(path: Path, end: int) -> None:
    """Raise :class:`CorruptRecordError` unless every line before offset ``end`` is ours."""
    with open(path, "rb") as handle:
        offset = 0
        for number, line in enumerate(handle, start=1):
            offset += len(line)
            if offset > end:
                return
            _check_line(path, number, line)


def _check_last_line(fd: int, path: Path, size: int) -> None:
    """Raise :class:`CorruptRecordError` unless the last line that is not blank is ours."""
    end = size
    while end > 0:
        start = _last_newline_end(fd, end - 1)
        line = os.pread(fd, end - start, start)
        if line.strip():
            _check_line(path, None, line)
            return
        end = start


def _check_line(path: Path, number: int | None, line: bytes) -> None:
    if not line.strip():
        return
    try:
        _record_from_json(line)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        where = "its last line" if number is None else f"line {number}"
        raise _foreign(path, f"{where} is no record ({exc})") from exc


def _foreign(path: Path, why: str) -> CorruptRecordError:
    return CorruptRecordError(
        f"{path} is not a JsonlSink file: {why}; it was left untouched "
        "(give the sink a new path, or move the file away)"
    )


def _side_file(path: Path, torn: bytes) -> Path:
    """Write the cut bytes to ``<name>.torn-<UTC time>`` beside ``path``, synced; return it."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    for attempt in range(1, 1000):
        suffix = "" if attempt == 1 else f"-{attempt}"
        side = path.with_name(f"{path.name}.torn-{stamp}{suffix}")
        try:
            side_fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        try:
            view = memoryview(torn)
            while view:
                view = view[os.write(side_fd, view) :]
            os.fsync(side_fd)
        finally:
            os.close(side_fd)
        _sync_dir(side)
        return side
    raise FileExistsError(17, "no free side file name", str(path))


def _sync_dir(path: Path) -> None:
    """Sync the directory of a new file, so that the file itself survives a power loss."""
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _last_newline_end(fd: int, size: int) -> int:
    """Offset just after the last newline before ``size`` (0 if none)."""
    position = size
    while position > 0:
        start = max(0, position - 65536)
        chunk = os.pread(fd, position - start, start)
        index = chunk.rfind(b"\n")
        if index >= 0:
            return start + index + 1
        position = start
    return 0


def _record_from_json(line: bytes) -> AgentEvent | UsageRecord | None:
    """Return the record a line holds; ``None`` for a quarantined record."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
    if kind == _REJECTED and isinstance(obj.get("reason"), str):
        return None
    if kind == "event":
        failure = obj.get("failure_class")
        data = obj.get("data") or {}
        if not isinstance(data, dict):
            raise TypeError(f"data must be an object, got {type(data).__name__}")
        return AgentEvent(
            name=obj["name"],
            role=obj.get("role", ""),
            phase=obj.get("phase", ""),
            status=obj.get("status"),
            failure_class=None if failure is None else AgentFailureClass(failure),
            detail=obj.get("detail"),
            data=data,
            timestamp=datetime.fromisoformat(obj["timestamp"]),
            session_id=obj.get("session_id", ""),
            worker_id=obj.get("worker_id", ""),
            project_id=obj.get("project_id"),
        )
    if kind == "usage":
        return UsageRecord(
            model=obj["model"],
            input_tokens=obj.get("input_tokens", 0),
            output_tokens=obj.get("output_tokens", 0),
            cache_read_tokens=obj.get("cache_read_tokens", 0),
            cache_write_tokens=obj.get("cache_write_tokens", 0),
            reasoning_tokens=obj.get("reasoning_tokens", 0),
            cache_write_1h_tokens=obj.get("cache_write_1h_tokens", 0),
            cost_usd=Decimal(str(obj.get("cost_usd", "0"))),
            priced=bool(obj.get("priced", True)),
            duration_seconds=obj.get("duration_seconds"),
            role=obj.get("role", ""),
            phase=obj.get("phase", ""),
            session_id=obj.get("session_id", ""),
            worker_id=obj.get("worker_id", ""),
            project_id=obj.get("project_id"),
            timestamp=datetime.fromisoformat(obj["timestamp"]),
            service_tier=obj.get("service_tier"),  # absent from lines written before tiers
        )
    raise ValueError(f"kind must be 'event' or 'usage', got {kind!r}")
