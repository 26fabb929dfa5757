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
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Final, Literal

from techrevati.runtime._clock import Clock
from techrevati.runtime._record_text import dumps
from techrevati.runtime._sink_base import (
    DEFAULT_FLUSH_EVERY,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_PENDING,
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


class JsonlSink(BufferedSink):
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
    processes write. Opening a file whose last line was cut by a crash drops
    that partial line (``sink.repaired`` is logged). Read it back with
    :func:`read_jsonl`.
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
        )

    @property
    def fsync(self) -> FsyncPolicy:
        """The fsync policy."""
        return self._fsync

    def _write_batch(self, batch: Sequence[Record]) -> None:
        data = b"".join(_line(record) for record in batch)
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
    blank lines are ignored; any other line that is not a record raises
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
                records.append(_record_from_json(line))
            except (ValueError, TypeError, KeyError) as exc:
                raise CorruptRecordError(f"{os.fspath(path)}:{number}: {exc}") from exc
    return records


def _line(record: Record) -> bytes:
    kind = "event" if isinstance(record, AgentEvent) else "usage"
    return (dumps({"kind": kind, **record.to_dict()}) + "\n").encode("utf-8")


def _open_for_append(path: Path, *, sync_dir: bool) -> int:
    """Open ``path`` for appending; cut a partial last line left by a crash."""
    existed = path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size and os.pread(fd, 1, size - 1) != b"\n":
            keep = _last_newline_end(fd, size)
            os.ftruncate(fd, keep)
            log_event(
                logging.WARNING,
                "sink.repaired",
                "%s ended in a partial line; dropped %d bytes",
                path,
                size - keep,
                sink="JsonlSink",
                path=str(path),
                bytes=size - keep,
            )
        if sync_dir and not existed and hasattr(os, "O_DIRECTORY"):
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


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


def _record_from_json(line: bytes) -> AgentEvent | UsageRecord:
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
    kind = obj.get("kind")
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
        )
    raise ValueError(f"kind must be 'event' or 'usage', got {kind!r}")
