"""Where events and usage records go: a fault-isolating fan-out and two durable sinks.

Reach for :class:`SinkFanout` to send every :class:`~techrevati.runtime.events.AgentEvent`
and :class:`~techrevati.runtime.events.UsageRecord` to several sinks at once,
where one broken sink is logged and counted but never stops the others or the
caller. :class:`JsonlSink` appends one JSON object per line to a file (easy to
ship and grep); :class:`SqliteSink` stores them in a versioned SQLite database
in WAL mode that many threads and processes can share and that survives
``kill -9`` up to the last flushed batch. Both buffer records in memory and
write them in batches on a background thread, so ``write_*`` never waits on
the disk and an asyncio session can call them directly. Read them back with
:func:`read_jsonl`, :class:`SqliteReader` or the sink's own ``read_*``
methods, which return typed records.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Final, Literal, Self, cast

from techrevati.runtime._clock import Clock
from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.events import (
    AgentEvent,
    AgentFailureClass,
    EventName,
    EventSink,
    UsageRecord,
    UsageSink,
)

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_FLUSH_EVERY",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_PENDING",
    "SCHEMA_VERSION",
    "SQLITE_APPLICATION_ID",
    "CorruptRecordError",
    "FsyncPolicy",
    "JsonlSink",
    "SchemaError",
    "SessionRow",
    "SessionStatus",
    "SinkClosedError",
    "SinkFanout",
    "SinkWriteError",
    "SqliteReader",
    "SqliteSink",
    "read_jsonl",
    "sessions_from_events",
]

DEFAULT_FLUSH_EVERY: Final = 100
"""Records a durable sink buffers before it writes a batch."""

DEFAULT_FLUSH_INTERVAL: Final = 1.0
"""Seconds a buffered record waits at most before its batch is written."""

DEFAULT_MAX_PENDING: Final = 100_000
"""Buffered records kept while the disk refuses writes; beyond it the oldest are dropped."""

DEFAULT_BUSY_TIMEOUT: Final = 10.0
"""Seconds a :class:`SqliteSink` waits for another process's write lock."""

SCHEMA_VERSION: Final = 2
"""The SQLite schema version this module writes (``PRAGMA user_version``)."""

SQLITE_APPLICATION_ID: Final = 0x54524556
"""``PRAGMA application_id`` of our databases (ASCII ``TREV``)."""

FsyncPolicy = Literal["always", "batch", "never"]
"""When :class:`JsonlSink` calls ``fsync``: per record, per batch, or never."""

_Record = AgentEvent | UsageRecord

_LOG: Final = logging.getLogger("techrevati.runtime.sinks")
_FSYNC_POLICIES: Final = frozenset({"always", "batch", "never"})
_SYNCHRONOUS: Final = frozenset({"full", "normal"})
_SESSION_END: Final[Mapping[str, str]] = {
    EventName.SESSION_COMPLETED.value: "completed",
    EventName.SESSION_FAILED.value: "failed",
    EventName.SESSION_CANCELLED.value: "cancelled",
}
_SESSION_STARTED: Final = EventName.SESSION_STARTED.value
_DROP_LOG_EVERY: Final = 1000


# -- errors ---------------------------------------------------------------------


class SinkClosedError(TechrevatiError, RuntimeError):
    """A record was written to a sink after :meth:`close`."""


class SinkWriteError(TechrevatiError, OSError):
    """A durable sink could not write a batch; the records stay buffered for a retry.

    The original error (``OSError``, ``sqlite3.Error``) is the ``__cause__``.
    """


class SchemaError(TechrevatiError, ValueError):
    """A SQLite file is not one of ours, or its schema version is unknown."""


class CorruptRecordError(TechrevatiError, ValueError):
    """A JSONL line is not a record :class:`JsonlSink` wrote; the message names file and line."""


# -- values ---------------------------------------------------------------------


class SessionStatus(StrEnum):
    """Where a session stands in the ``sessions`` table."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One session, folded from its ``session.*`` events.

    ``cost_usd``, ``duration_seconds``, ``turns`` and ``ended_at`` are ``None``
    until the session's end event is stored; ``started_at`` is ``None`` if its
    ``session.started`` event never was.
    """

    session_id: str
    status: SessionStatus
    started_at: datetime | None = None
    ended_at: datetime | None = None
    duration_seconds: float | None = None
    cost_usd: Decimal | None = None
    turns: int | None = None
    role: str = ""
    phase: str = ""
    project_id: str | int | None = None
    worker_id: str = ""
    failure_class: AgentFailureClass | None = None
    error_type: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.session_id, str) or not self.session_id:
            raise InvalidValueError(f"session_id must be a non-empty str, got {self.session_id!r}")
        if not isinstance(self.status, SessionStatus):
            raise InvalidValueError(f"status must be a SessionStatus, got {self.status!r}")
        for name in ("started_at", "ended_at"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise InvalidValueError(f"{name} must be timezone-aware, got naive {value!r}")
        if self.cost_usd is not None and (
            not isinstance(self.cost_usd, Decimal) or not self.cost_usd.is_finite()
        ):
            raise InvalidValueError(f"cost_usd must be a finite Decimal, got {self.cost_usd!r}")

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (cost as an exact decimal string, times as ISO)."""
        return {
            "session_id": self.session_id,
            "status": self.status.value,
            "started_at": None if self.started_at is None else _iso(self.started_at),
            "ended_at": None if self.ended_at is None else _iso(self.ended_at),
            "duration_seconds": self.duration_seconds,
            "cost_usd": None if self.cost_usd is None else _decimal_text(self.cost_usd),
            "turns": self.turns,
            "role": self.role,
            "phase": self.phase,
            "project_id": self.project_id,
            "worker_id": self.worker_id,
            "failure_class": None if self.failure_class is None else self.failure_class.value,
            "error_type": self.error_type,
        }


# -- fan-out --------------------------------------------------------------------


class SinkFanout:
    """Deliver each record to every sink that takes it; a failing sink never stops the others.

    Which sinks take events (``write_event``) and which take usage
    (``write_usage``) is decided once, here. A sink that raises is logged
    (``sink.failed`` on logger ``techrevati.runtime.sinks``) and counted in
    :attr:`failures`; the other sinks still get the record and the caller goes
    on. Pass a mapping to name the sinks; otherwise they are named after their
    class (``SqliteSink``, ``SqliteSink#2``, ...).

    Safe to share between threads: delivery takes no lock (each sink guards
    itself); only the failure counters do.
    """

    __slots__ = (
        "_closers",
        "_event_targets",
        "_failure_count",
        "_failures",
        "_flushers",
        "_lock",
        "_names",
        "_sinks",
        "_usage_targets",
    )

    def __init__(self, sinks: Iterable[object] | Mapping[str, object] = ()) -> None:
        if isinstance(sinks, Mapping):
            pairs = [(str(name), sink) for name, sink in sinks.items()]
        else:
            items = list(sinks)
            pairs = list(zip(_default_names(items), items, strict=True))
        events: list[tuple[str, Callable[[AgentEvent], None]]] = []
        usage: list[tuple[str, Callable[[UsageRecord], None]]] = []
        flushers: list[tuple[str, Callable[[], object]]] = []
        closers: list[tuple[str, Callable[[], object]]] = []
        for name, sink in pairs:
            takes_events = isinstance(sink, EventSink)
            takes_usage = isinstance(sink, UsageSink)
            if not (takes_events or takes_usage):
                raise InvalidValueError(
                    f"sink {name!r} must have write_event or write_usage, got {type(sink).__name__}"
                )
            if takes_events:
                events.append((name, cast(EventSink, sink).write_event))
            if takes_usage:
                usage.append((name, cast(UsageSink, sink).write_usage))
            flush = getattr(sink, "flush", None)
            if callable(flush):
                flushers.append((name, flush))
            close = getattr(sink, "close", None)
            if callable(close):
                closers.append((name, close))
        self._names = tuple(name for name, _ in pairs)
        if len(set(self._names)) != len(self._names):
            raise InvalidValueError(f"sink names must be unique, got {list(self._names)!r}")
        self._sinks = tuple(sink for _, sink in pairs)
        self._event_targets = tuple(events)
        self._usage_targets = tuple(usage)
        self._flushers = tuple(flushers)
        self._closers = tuple(closers)
        self._lock = threading.Lock()
        self._failures: dict[str, int] = dict.fromkeys(self._names, 0)
        self._failure_count = 0

    @property
    def sinks(self) -> tuple[object, ...]:
        """The sinks, in the order given."""
        return self._sinks

    @property
    def names(self) -> tuple[str, ...]:
        """The sinks' names, in the order given."""
        return self._names

    @property
    def has_event_sinks(self) -> bool:
        """Whether any sink takes events (skip building events when not)."""
        return bool(self._event_targets)

    @property
    def has_usage_sinks(self) -> bool:
        """Whether any sink takes usage records (skip building them when not)."""
        return bool(self._usage_targets)

    @property
    def failures(self) -> dict[str, int]:
        """Failures per sink name (a copy), including flush and close failures."""
        with self._lock:
            return dict(self._failures)

    @property
    def failure_count(self) -> int:
        """Failures of all sinks together."""
        return self._failure_count

    def write_event(self, event: AgentEvent) -> None:
        """Give ``event`` to every event sink; failures are logged and counted, never raised."""
        for name, write in self._event_targets:
            try:
                write(event)
            except Exception as exc:
                self._failed(name, "write_event", str(event.name), exc)

    def write_usage(self, record: UsageRecord) -> None:
        """Give ``record`` to every usage sink; failures are logged and counted, never raised."""
        for name, write in self._usage_targets:
            try:
                write(record)
            except Exception as exc:
                self._failed(name, "write_usage", "usage", exc)

    def flush(self) -> None:
        """Call ``flush()`` on every sink that has one, isolating failures the same way."""
        for name, flush in self._flushers:
            try:
                flush()
            except Exception as exc:
                self._failed(name, "flush", None, exc)

    def close(self) -> None:
        """Call ``close()`` on every sink that has one, isolating failures the same way."""
        for name, close in self._closers:
            try:
                close()
            except Exception as exc:
                self._failed(name, "close", None, exc)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SinkFanout({list(self._names)!r}, failures={self._failure_count})"

    def _failed(self, name: str, operation: str, record: str | None, exc: Exception) -> None:
        with self._lock:
            self._failures[name] += 1
            self._failure_count += 1
            count = self._failures[name]
        _LOG.error(
            "sink.failed: %s.%s raised %s: %s",
            name,
            operation,
            type(exc).__name__,
            exc,
            exc_info=exc,
            extra={
                "event": "sink.failed",
                "sink": name,
                "operation": operation,
                "record": record,
                "error_type": type(exc).__name__,
                "sink_failures": count,
            },
        )


# -- buffered base --------------------------------------------------------------


class _BufferedSink:
    """Buffer records under a lock; write them in batches on a flusher thread or inline.

    Subclasses implement ``_write_batch`` (all-or-nothing, raise on failure)
    and ``_release``.
    """

    def __init__(
        self,
        target: str,
        *,
        flush_every: int,
        flush_interval: float,
        clock: Clock,
        background: bool,
        max_pending: int,
        on_flush: Callable[[int], object] | None,
    ) -> None:
        if not isinstance(flush_every, int) or isinstance(flush_every, bool) or flush_every < 1:
            raise InvalidValueError(f"flush_every must be an int >= 1, got {flush_every!r}")
        if (
            not isinstance(flush_interval, (int, float))
            or isinstance(flush_interval, bool)
            or not flush_interval > 0
        ):
            raise InvalidValueError(f"flush_interval must be a number > 0, got {flush_interval!r}")
        if not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1:
            raise InvalidValueError(f"max_pending must be an int >= 1, got {max_pending!r}")
        if max_pending < flush_every:
            raise InvalidValueError(
                f"max_pending must be >= flush_every ({flush_every}), got {max_pending!r}"
            )
        if not callable(clock):
            raise InvalidValueError(f"clock must be callable, got {clock!r}")
        if on_flush is not None and not callable(on_flush):
            raise InvalidValueError(f"on_flush must be callable or None, got {on_flush!r}")
        self._target = target
        self._flush_every = flush_every
        self._flush_interval = float(flush_interval)
        self._clock = clock
        self._max_pending = max_pending
        self._on_flush = on_flush
        self._cond = threading.Condition(threading.Lock())
        self._io_lock = threading.Lock()
        self._buffer: deque[_Record] = deque()
        self._last_flush = clock()
        self._retry_at = float("-inf")
        self._closed = False
        self._written = 0
        self._batches = 0
        self._dropped = 0
        self._failed_flushes = 0
        self._inline = not background
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._run, name=f"techrevati-{type(self).__name__}-flusher", daemon=True
            )
            self._thread.start()
        with _OPEN_LOCK:
            _OPEN_SINKS.add(self)

    @property
    def pending(self) -> int:
        """Records buffered and not yet written."""
        with self._cond:
            return len(self._buffer)

    @property
    def written(self) -> int:
        """Records written by this sink so far (committed batches)."""
        with self._cond:
            return self._written

    @property
    def batches(self) -> int:
        """Batches written by this sink so far."""
        with self._cond:
            return self._batches

    @property
    def dropped(self) -> int:
        """Records dropped because ``max_pending`` were already waiting for a failing disk."""
        with self._cond:
            return self._dropped

    @property
    def failed_flushes(self) -> int:
        """Batch writes that failed (their records were kept for a retry)."""
        with self._cond:
            return self._failed_flushes

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def write_event(self, event: AgentEvent) -> None:
        """Buffer ``event``; it is written with the next batch. O(1), no disk I/O.

        With ``background=False`` (or ``fsync="always"``) a due batch is
        written here, on the caller's thread, and a failure to write it raises
        :class:`SinkWriteError` here (the records stay buffered and the next
        write tries again). Raises :class:`SinkClosedError` after :meth:`close`.
        """
        if not isinstance(event, AgentEvent):
            raise InvalidValueError(f"event must be an AgentEvent, got {type(event).__name__}")
        self._put(event)

    def write_usage(self, record: UsageRecord) -> None:
        """Buffer ``record``; same rules as :meth:`write_event`."""
        if not isinstance(record, UsageRecord):
            raise InvalidValueError(f"record must be a UsageRecord, got {type(record).__name__}")
        self._put(record)

    def flush(self) -> None:
        """Write every buffered record now and return once they are durable.

        Raises :class:`SinkWriteError` if the batch cannot be written (the
        records stay buffered). A no-op after :meth:`close`.
        """
        if not self._closed:
            self._flush_pending()

    def close(self) -> None:
        """Flush, stop the flusher thread and release the file; idempotent.

        Later writes raise :class:`SinkClosedError`.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        with _OPEN_LOCK:
            _OPEN_SINKS.discard(self)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        try:
            self._flush_pending()
        finally:
            with self._io_lock:
                self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pending={len(self._buffer)}"
        return f"{type(self).__name__}({self._target!r}, {state})"

    # -- internals ----------------------------------------------------------------

    def _write_batch(self, batch: Sequence[_Record]) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _put(self, record: _Record) -> None:
        with self._cond:
            if self._closed:
                raise SinkClosedError(f"{type(self).__name__}({self._target!r}) is closed")
            buffer = self._buffer
            buffer.append(record)
            size = len(buffer)
            dropped = 0
            if size > self._max_pending:
                buffer.popleft()
                self._dropped += 1
                dropped = self._dropped
            due = size >= self._flush_every or (
                self._clock() - self._last_flush >= self._flush_interval
            )
            if due and not self._inline:
                self._cond.notify()  # the thread honours the pause after a failure
        if dropped and (dropped == 1 or dropped % _DROP_LOG_EVERY == 0):
            _LOG.warning(
                "sink.dropped: %s dropped %d records",
                self._target,
                dropped,
                extra={
                    "event": "sink.dropped",
                    "sink": type(self).__name__,
                    "path": self._target,
                    "dropped": dropped,
                },
            )
        if due and self._inline:
            self._flush_pending()

    def _due_in(self) -> float | None:
        """Seconds until a batch is due (0 = now), or None when nothing is buffered."""
        if not self._buffer:
            return None
        now = self._clock()
        if now < self._retry_at:
            return self._retry_at - now
        if len(self._buffer) >= self._flush_every:
            return 0.0
        return max(0.0, self._last_flush + self._flush_interval - now)

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._closed:
                    wait = self._due_in()
                    if wait == 0.0:
                        break
                    cond.wait(None if wait is None or wait == float("inf") else wait)
                if self._closed:
                    return  # close() writes what is left on its own thread
            with suppress(SinkWriteError):  # logged and counted; retried after flush_interval
                self._flush_pending()

    def _flush_pending(self) -> None:
        with self._io_lock:
            with self._cond:
                if not self._buffer:
                    return
                batch = list(self._buffer)
                self._buffer.clear()
            try:
                self._write_batch(batch)
            except BaseException as exc:
                with self._cond:
                    self._buffer.extendleft(reversed(batch))
                    excess = len(self._buffer) - self._max_pending
                    for _ in range(max(0, excess)):
                        self._buffer.popleft()
                    self._dropped += max(0, excess)
                    self._failed_flushes += 1
                    self._retry_at = self._clock() + self._flush_interval
                    pending = len(self._buffer)
                if not isinstance(exc, Exception):
                    raise  # KeyboardInterrupt and the like: the batch is kept, not logged
                _LOG.error(
                    "sink.flush_failed: %s could not write %d records: %s",
                    self._target,
                    len(batch),
                    exc,
                    exc_info=exc,
                    extra={
                        "event": "sink.flush_failed",
                        "sink": type(self).__name__,
                        "path": self._target,
                        "records": len(batch),
                        "pending": pending,
                        "error_type": type(exc).__name__,
                    },
                )
                raise SinkWriteError(
                    f"{type(self).__name__}({self._target!r}) could not write "
                    f"{len(batch)} records: {type(exc).__name__}: {exc}"
                ) from exc
            with self._cond:
                self._written += len(batch)
                self._batches += 1
                self._last_flush = self._clock()
                self._retry_at = float("-inf")
        if self._on_flush is not None:
            try:
                self._on_flush(len(batch))
            except Exception as exc:
                _LOG.error(
                    "sink.callback_failed: on_flush of %s raised %s",
                    self._target,
                    type(exc).__name__,
                    exc_info=exc,
                    extra={
                        "event": "sink.callback_failed",
                        "sink": type(self).__name__,
                        "path": self._target,
                        "error_type": type(exc).__name__,
                    },
                )


_OPEN_LOCK: Final = threading.Lock()
_OPEN_SINKS: Final[set[_BufferedSink]] = set()


# -- JSONL ----------------------------------------------------------------------


class JsonlSink(_BufferedSink):
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
    process, or :class:`SqliteSink`, when several processes write. Opening a
    file whose last line was cut by a crash drops that partial line
    (``sink.repaired`` is logged). Read it back with :func:`read_jsonl`.
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
        self._path = Path(path)
        self._fsync: FsyncPolicy = fsync
        self._fd = _open_jsonl(self._path, sync_dir=fsync != "never")
        try:
            super().__init__(
                str(self._path),
                flush_every=flush_every,
                flush_interval=flush_interval,
                clock=clock,
                background=background,
                max_pending=max_pending,
                on_flush=on_flush,
            )
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def path(self) -> Path:
        """The file written to."""
        return self._path

    @property
    def fsync(self) -> FsyncPolicy:
        """The fsync policy."""
        return self._fsync

    def _write_batch(self, batch: Sequence[_Record]) -> None:
        data = b"".join(_jsonl_line(record) for record in batch)
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


# -- SQLite ---------------------------------------------------------------------


class _SqliteQueries:
    """The typed, filtered readers shared by :class:`SqliteSink` and :class:`SqliteReader`."""

    def read_events(
        self,
        *,
        name: str | None = None,
        project: str | int | None = None,
        role: str | None = None,
        phase: str | None = None,
        model: str | None = None,
        session_id: str | None = None,
        failure_class: AgentFailureClass | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[AgentEvent]:
        """Return stored events matching every given filter, oldest first.

        ``since`` is inclusive and ``until`` exclusive (aware datetimes);
        ``project`` matches ``42`` and ``"42"`` alike; ``model`` matches the
        event's ``data["model"]``.
        """
        clauses = _Where()
        clauses.equal("name", name)
        clauses.project(project)
        clauses.equal("role", role)
        clauses.equal("phase", phase)
        clauses.equal("model", model)
        clauses.equal("session_id", session_id)
        clauses.equal("failure_class", None if failure_class is None else str(failure_class))
        clauses.time_range("ts", since, until)
        sql = f"SELECT {_EVENT_COLUMNS} FROM events{clauses.sql(limit, newest_first)}"
        with self._reading() as conn:
            rows = conn.execute(sql, clauses.params).fetchall()
        return [_event_from_row(row) for row in rows]

    def read_usage(
        self,
        *,
        project: str | int | None = None,
        role: str | None = None,
        phase: str | None = None,
        model: str | None = None,
        session_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[UsageRecord]:
        """Return stored usage records matching every given filter, oldest first."""
        clauses = _Where()
        clauses.project(project)
        clauses.equal("role", role)
        clauses.equal("phase", phase)
        clauses.equal("model", model)
        clauses.equal("session_id", session_id)
        clauses.time_range("ts", since, until)
        sql = f"SELECT {_USAGE_COLUMNS} FROM usage{clauses.sql(limit, newest_first)}"
        with self._reading() as conn:
            rows = conn.execute(sql, clauses.params).fetchall()
        return [_usage_from_row(row) for row in rows]

    def read_sessions(
        self,
        *,
        project: str | int | None = None,
        role: str | None = None,
        phase: str | None = None,
        session_id: str | None = None,
        status: SessionStatus | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[SessionRow]:
        """Return sessions matching every given filter, by start time (end time if unknown)."""
        clauses = _Where()
        clauses.project(project)
        clauses.equal("role", role)
        clauses.equal("phase", phase)
        clauses.equal("session_id", session_id)
        clauses.equal("status", None if status is None else str(status))
        clauses.time_range("COALESCE(started_at, ended_at)", since, until)
        order = ("COALESCE(started_at, ended_at)", "session_id")
        sql = f"SELECT {_SESSION_COLUMNS} FROM sessions{clauses.sql(limit, newest_first, order)}"
        with self._reading() as conn:
            rows = conn.execute(sql, clauses.params).fetchall()
        return [_session_from_row(row) for row in rows]

    def _reading(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError


class SqliteSink(_SqliteQueries, _BufferedSink):
    """Store events, usage and one row per session in a SQLite database (WAL mode).

    Records are buffered and written in one ``BEGIN IMMEDIATE`` transaction
    per batch: every ``flush_every`` records or ``flush_interval`` seconds
    (measured with ``clock``), on a background thread, or inline on the
    writing thread with ``background=False``. Each batch commits whole or not
    at all, so after ``kill -9`` the file opens cleanly with every record up
    to the last flushed batch.

    ``synchronous="full"`` (default) syncs the write-ahead log at each commit,
    so a power loss keeps every committed batch too; ``"normal"`` skips that
    sync (faster; a power loss may lose the last batches, ``kill -9`` still
    loses none). Opening an older schema migrates it in place.

    Safe to share between threads (one connection guarded by a lock) and
    between processes writing the same file (``busy_timeout``). Writes after
    :meth:`close` raise :class:`SinkClosedError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        clock: Clock = time.monotonic,
        background: bool = True,
        synchronous: Literal["full", "normal"] = "full",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
        on_flush: Callable[[int], object] | None = None,
    ) -> None:
        if synchronous not in _SYNCHRONOUS:
            raise InvalidValueError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        if (
            not isinstance(busy_timeout, (int, float))
            or isinstance(busy_timeout, bool)
            or not 0 <= busy_timeout < float("inf")
        ):
            raise InvalidValueError(f"busy_timeout must be a number >= 0, got {busy_timeout!r}")
        self._path = Path(path)
        self._conn = sqlite3.connect(
            self._path,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
            _ensure_schema(self._conn, str(self._path))
            super().__init__(
                str(self._path),
                flush_every=flush_every,
                flush_interval=flush_interval,
                clock=clock,
                background=background,
                max_pending=max_pending,
                on_flush=on_flush,
            )
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise SchemaError(f"{self._path} is not a usable SQLite database: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def _write_batch(self, batch: Sequence[_Record]) -> None:
        conn = self._conn
        events: list[tuple[object, ...]] = []
        usage: list[tuple[object, ...]] = []
        session_events: list[AgentEvent] = []
        for record in batch:
            if isinstance(record, AgentEvent):
                events.append(_event_row(record))
                if record.session_id and (
                    record.name == _SESSION_STARTED or record.name in _SESSION_END
                ):
                    session_events.append(record)
            else:
                usage.append(_usage_row(record))
        conn.execute("BEGIN IMMEDIATE")
        try:
            if events:
                conn.executemany(_INSERT_EVENT, events)
            if usage:
                conn.executemany(_INSERT_USAGE, usage)
            for event in session_events:
                _store_session_event(conn, event)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _release(self) -> None:
        self._conn.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise SinkClosedError(
                f"SqliteSink({self._target!r}) is closed; read with SqliteReader(path)"
            )
        self.flush()
        with self._io_lock:
            yield self._conn


class SqliteReader(_SqliteQueries):
    """Read a database written by :class:`SqliteSink`, read-only.

    Raises ``FileNotFoundError`` for a missing file and :class:`SchemaError`
    for a file that is not a database, not ours, or of another schema version
    (open an older one once with :class:`SqliteSink` to migrate it). Safe to
    share between threads.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT
    ) -> None:
        self._path = Path(path)
        if not self._path.is_file():
            raise FileNotFoundError(2, "no such database file", str(self._path))
        uri = "file:" + urllib.parse.quote(str(self._path.resolve())) + "?mode=ro"
        self._conn = sqlite3.connect(
            uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        try:
            version = _check_schema(self._conn, str(self._path))
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise SchemaError(f"{self._path} is not a SQLite database: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise
        if version != SCHEMA_VERSION:
            self._conn.close()
            raise SchemaError(
                f"{self._path} has schema version {version}, this reader needs "
                f"{SCHEMA_VERSION}; open it once with SqliteSink to migrate it"
            )

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn


class _Where:
    """Build a parameterised WHERE clause from optional filters."""

    __slots__ = ("clauses", "params")

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.params: list[object] = []

    def equal(self, column: str, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise InvalidValueError(f"{column} filter must be a str, got {value!r}")
        self.clauses.append(f"{column} = ?")
        self.params.append(value)

    def project(self, project: str | int | None) -> None:
        if project is None:
            return
        if isinstance(project, bool) or not isinstance(project, (str, int)):
            raise InvalidValueError(f"project filter must be a str or int, got {project!r}")
        text = str(project)
        other: object = text
        if isinstance(project, str) and text.strip().lstrip("-").isdigit():
            other = int(text)
        self.clauses.append("project_id IN (?, ?)")
        self.params.extend((project, other))

    def time_range(self, column: str, since: datetime | None, until: datetime | None) -> None:
        for label, value, op in (("since", since, ">="), ("until", until, "<")):
            if value is None:
                continue
            if not isinstance(value, datetime) or value.tzinfo is None:
                raise InvalidValueError(f"{label} must be an aware datetime, got {value!r}")
            self.clauses.append(f"{column} {op} ?")
            self.params.append(_iso(value))

    def sql(
        self, limit: int | None, newest_first: bool, order: tuple[str, str] = ("ts", "id")
    ) -> str:
        where = f" WHERE {' AND '.join(self.clauses)}" if self.clauses else ""
        direction = " DESC" if newest_first else ""
        text = f"{where} ORDER BY {order[0]}{direction}, {order[1]}{direction}"
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                raise InvalidValueError(f"limit must be an int >= 1, got {limit!r}")
            text += " LIMIT ?"
            self.params.append(limit)
        return text


# -- SQLite schema ----------------------------------------------------------------

_EVENT_COLUMNS: Final = (
    "ts, name, session_id, worker_id, project_id, role, phase, status, failure_class, detail, data"
)
_USAGE_COLUMNS: Final = (
    "ts, session_id, worker_id, project_id, role, phase, model, input_tokens, output_tokens, "
    "cache_read_tokens, cache_write_tokens, reasoning_tokens, cost_usd, priced, duration_seconds"
)
_SESSION_COLUMNS: Final = (
    "session_id, status, started_at, ended_at, duration_seconds, cost_usd, turns, role, phase, "
    "project_id, worker_id, failure_class, error_type"
)
_INSERT_EVENT: Final = (
    "INSERT INTO events (ts, name, session_id, worker_id, project_id, role, phase, status, "
    "failure_class, detail, model, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_USAGE: Final = f"INSERT INTO usage ({_USAGE_COLUMNS}) VALUES ({', '.join('?' * 15)})"
_UPSERT_SESSION: Final = (
    f"INSERT OR REPLACE INTO sessions ({_SESSION_COLUMNS}) VALUES ({', '.join('?' * 13)})"
)

# Version 2 (current). ``project_id`` has no declared type on purpose: SQLite
# keeps 42 an integer and "42" a string, so records read back unchanged.
_SCHEMA_V2: Final = (
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        name TEXT NOT NULL,
        session_id TEXT NOT NULL DEFAULT '',
        worker_id TEXT NOT NULL DEFAULT '',
        project_id,
        role TEXT NOT NULL DEFAULT '',
        phase TEXT NOT NULL DEFAULT '',
        status TEXT,
        failure_class TEXT,
        detail TEXT,
        model TEXT,
        data TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        ts TEXT NOT NULL,
        session_id TEXT NOT NULL DEFAULT '',
        worker_id TEXT NOT NULL DEFAULT '',
        project_id,
        role TEXT NOT NULL DEFAULT '',
        phase TEXT NOT NULL DEFAULT '',
        model TEXT NOT NULL,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cache_read_tokens INTEGER NOT NULL DEFAULT 0,
        cache_write_tokens INTEGER NOT NULL DEFAULT 0,
        reasoning_tokens INTEGER NOT NULL DEFAULT 0,
        cost_usd TEXT NOT NULL DEFAULT '0',
        priced INTEGER NOT NULL DEFAULT 1,
        duration_seconds REAL
    )""",
)
_SESSIONS_TABLE: Final = """CREATE TABLE sessions (
        session_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        started_at TEXT,
        ended_at TEXT,
        duration_seconds REAL,
        cost_usd TEXT,
        turns INTEGER,
        role TEXT NOT NULL DEFAULT '',
        phase TEXT NOT NULL DEFAULT '',
        project_id,
        worker_id TEXT NOT NULL DEFAULT '',
        failure_class TEXT,
        error_type TEXT
    )"""
_INDEXES: Final = (
    "CREATE INDEX IF NOT EXISTS events_ts ON events (ts)",
    "CREATE INDEX IF NOT EXISTS events_session ON events (session_id)",
    "CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts)",
    "CREATE INDEX IF NOT EXISTS usage_session ON usage (session_id)",
    "CREATE INDEX IF NOT EXISTS sessions_started ON sessions (started_at)",
)
# Version 1 had no sessions table, no events.model and no cache/reasoning
# token or priced columns in usage; _migrate_1_to_2 adds them and backfills.
_MIGRATE_1_TO_2: Final = (
    "ALTER TABLE events ADD COLUMN model TEXT",
    "ALTER TABLE usage ADD COLUMN cache_read_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE usage ADD COLUMN cache_write_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE usage ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE usage ADD COLUMN priced INTEGER NOT NULL DEFAULT 1",
    _SESSIONS_TABLE,
)
_REQUIRED_TABLES: Final[Mapping[int, frozenset[str]]] = {
    1: frozenset({"events", "usage"}),
    2: frozenset({"events", "usage", "sessions"}),
}


def _ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the current schema, migrate an older one, or refuse a foreign file."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _check_schema(conn, path)
        if version == 0:
            for statement in (*_SCHEMA_V2, _SESSIONS_TABLE, *_INDEXES):
                conn.execute(statement)
        elif version == 1:
            _migrate_1_to_2(conn)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(f"PRAGMA application_id = {SQLITE_APPLICATION_ID}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if version not in (0, SCHEMA_VERSION):
        _LOG.info(
            "sink.migrated: %s from schema %d to %d",
            path,
            version,
            SCHEMA_VERSION,
            extra={
                "event": "sink.migrated",
                "sink": "SqliteSink",
                "path": path,
                "from_version": version,
                "to_version": SCHEMA_VERSION,
            },
        )


def _check_schema(conn: sqlite3.Connection, path: str) -> int:
    """Return the schema version (0 for an empty database), or raise :class:`SchemaError`."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    tables = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    if app_id not in (0, SQLITE_APPLICATION_ID):
        raise SchemaError(f"{path} belongs to another application (application_id {app_id})")
    if version == 0:
        if tables:
            raise SchemaError(f"{path} has tables {sorted(tables)!r} but no techrevati sink schema")
        return 0
    required = _REQUIRED_TABLES.get(version)
    if required is None:
        raise SchemaError(
            f"{path} has schema version {version}; this library knows 1 to {SCHEMA_VERSION}"
        )
    missing = required - tables
    if missing:
        raise SchemaError(f"{path} has no techrevati sink schema (missing {sorted(missing)!r})")
    return version


def _migrate_1_to_2(conn: sqlite3.Connection) -> None:
    for statement in _MIGRATE_1_TO_2:
        conn.execute(statement)
    for statement in _INDEXES:
        conn.execute(statement)
    updates = []
    for row_id, data in conn.execute("SELECT id, data FROM events"):
        model = _model_of(_json_object(data))
        if model is not None:
            updates.append((model, row_id))
    conn.executemany("UPDATE events SET model = ? WHERE id = ?", updates)
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE session_id != '' AND name IN (?, ?, ?, ?) "
        "ORDER BY id",
        (_SESSION_STARTED, *_SESSION_END),
    ).fetchall()
    for row in rows:
        _store_session_event(conn, _event_from_row(row))


def _store_session_event(conn: sqlite3.Connection, event: AgentEvent) -> None:
    """Fold one ``session.*`` event into its row (inside the caller's transaction)."""
    row = conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (event.session_id,)
    ).fetchone()
    old = None if row is None else _session_from_row(row)
    merged = _merge_session(old, _session_from_event(event))
    conn.execute(_UPSERT_SESSION, _session_row(merged))


# -- row conversion -------------------------------------------------------------


def _event_row(event: AgentEvent) -> tuple[object, ...]:
    return (
        _iso(event.timestamp),
        str(event.name),
        event.session_id,
        event.worker_id,
        event.project_id,
        event.role,
        event.phase,
        event.status,
        None if event.failure_class is None else event.failure_class.value,
        event.detail,
        _model_of(event.data),
        _dumps(dict(event.data)),
    )


def _event_from_row(row: Sequence[object]) -> AgentEvent:
    ts, name, session_id, worker_id, project_id, role, phase, status, failure, detail, data = row
    return AgentEvent(
        name=cast(str, name),
        role=cast(str, role),
        phase=cast(str, phase),
        status=cast("str | None", status),
        failure_class=None if failure is None else AgentFailureClass(cast(str, failure)),
        detail=cast("str | None", detail),
        data=_json_object(data),
        timestamp=datetime.fromisoformat(cast(str, ts)),
        session_id=cast(str, session_id),
        worker_id=cast(str, worker_id),
        project_id=cast("str | int | None", project_id),
    )


def _usage_row(record: UsageRecord) -> tuple[object, ...]:
    return (
        _iso(record.timestamp),
        record.session_id,
        record.worker_id,
        record.project_id,
        record.role,
        record.phase,
        record.model,
        record.input_tokens,
        record.output_tokens,
        record.cache_read_tokens,
        record.cache_write_tokens,
        record.reasoning_tokens,
        _decimal_text(record.cost_usd),
        int(record.priced),
        record.duration_seconds,
    )


def _usage_from_row(row: Sequence[object]) -> UsageRecord:
    (ts, session_id, worker_id, project_id, role, phase, model) = row[:7]
    (inp, out, cache_read, cache_write, reasoning, cost, priced, duration) = row[7:]
    return UsageRecord(
        model=cast(str, model),
        input_tokens=cast(int, inp),
        output_tokens=cast(int, out),
        cache_read_tokens=cast(int, cache_read),
        cache_write_tokens=cast(int, cache_write),
        reasoning_tokens=cast(int, reasoning),
        cost_usd=Decimal(cast(str, cost)),
        priced=bool(priced),
        duration_seconds=cast("float | None", duration),
        role=cast(str, role),
        phase=cast(str, phase),
        session_id=cast(str, session_id),
        worker_id=cast(str, worker_id),
        project_id=cast("str | int | None", project_id),
        timestamp=datetime.fromisoformat(cast(str, ts)),
    )


def _session_row(row: SessionRow) -> tuple[object, ...]:
    return (
        row.session_id,
        row.status.value,
        None if row.started_at is None else _iso(row.started_at),
        None if row.ended_at is None else _iso(row.ended_at),
        row.duration_seconds,
        None if row.cost_usd is None else _decimal_text(row.cost_usd),
        row.turns,
        row.role,
        row.phase,
        row.project_id,
        row.worker_id,
        None if row.failure_class is None else row.failure_class.value,
        row.error_type,
    )


def _session_from_row(row: Sequence[object]) -> SessionRow:
    (session_id, status, started, ended, duration, cost, turns) = row[:7]
    (role, phase, project_id, worker_id, failure, error_type) = row[7:]
    return SessionRow(
        session_id=cast(str, session_id),
        status=SessionStatus(cast(str, status)),
        started_at=None if started is None else datetime.fromisoformat(cast(str, started)),
        ended_at=None if ended is None else datetime.fromisoformat(cast(str, ended)),
        duration_seconds=cast("float | None", duration),
        cost_usd=None if cost is None else Decimal(cast(str, cost)),
        turns=cast("int | None", turns),
        role=cast(str, role),
        phase=cast(str, phase),
        project_id=cast("str | int | None", project_id),
        worker_id=cast(str, worker_id),
        failure_class=None if failure is None else AgentFailureClass(cast(str, failure)),
        error_type=cast("str | None", error_type),
    )


# -- sessions -------------------------------------------------------------------


def _session_from_event(event: AgentEvent) -> SessionRow:
    """Return the partial row one ``session.*`` event gives about its session."""
    if event.name == _SESSION_STARTED:
        return SessionRow(
            session_id=event.session_id,
            status=SessionStatus.RUNNING,
            started_at=event.timestamp,
            role=event.role,
            phase=event.phase,
            project_id=event.project_id,
            worker_id=event.worker_id,
        )
    data = event.data
    error_type = data.get("error_type")
    return SessionRow(
        session_id=event.session_id,
        status=SessionStatus(_SESSION_END[event.name]),
        ended_at=event.timestamp,
        duration_seconds=_number_or_none(data.get("duration_seconds")),
        cost_usd=_decimal_or_none(data.get("cost_usd")),
        turns=_int_or_none(data.get("turns")),
        role=event.role,
        phase=event.phase,
        project_id=event.project_id,
        worker_id=event.worker_id,
        failure_class=event.failure_class,
        error_type=error_type if isinstance(error_type, str) else None,
    )


def _merge_session(old: SessionRow | None, new: SessionRow) -> SessionRow:
    """Fold ``new`` into ``old``: the first start and the last end win; blanks never erase."""
    if old is None:
        return new
    ended = new.ended_at is not None
    return SessionRow(
        session_id=old.session_id,
        status=new.status if ended or old.ended_at is None else old.status,
        started_at=old.started_at if old.started_at is not None else new.started_at,
        ended_at=new.ended_at if ended else old.ended_at,
        duration_seconds=new.duration_seconds if ended else old.duration_seconds,
        cost_usd=new.cost_usd if ended else old.cost_usd,
        turns=new.turns if ended else old.turns,
        role=new.role or old.role,
        phase=new.phase or old.phase,
        project_id=new.project_id if new.project_id is not None else old.project_id,
        worker_id=new.worker_id or old.worker_id,
        failure_class=new.failure_class if ended else old.failure_class,
        error_type=new.error_type if ended else old.error_type,
    )


# -- helpers --------------------------------------------------------------------


def _default_names(sinks: Sequence[object]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for sink in sinks:
        base = type(sink).__name__
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


def _iso(value: datetime) -> str:
    """Fixed-width ISO 8601 in UTC, so text order is time order."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _decimal_text(value: Decimal) -> str:
    """Return an exact decimal string without exponent (``0.0000001``, not ``1E-7``)."""
    return format(value, "f")


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _json_object(text: object) -> dict[str, object]:
    value = json.loads(cast(str, text)) if text else {}
    return value if isinstance(value, dict) else {}


def _model_of(data: Mapping[str, object]) -> str | None:
    model = data.get("model")
    return model if isinstance(model, str) else None


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def _decimal_or_none(value: object) -> Decimal | None:
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            parsed = Decimal(value)
        except InvalidOperation:
            return None
        return parsed if parsed.is_finite() else None
    return None


def _jsonl_line(record: _Record) -> bytes:
    kind = "event" if isinstance(record, AgentEvent) else "usage"
    return (_dumps({"kind": kind, **record.to_dict()}) + "\n").encode("utf-8")


def _open_jsonl(path: Path, *, sync_dir: bool) -> int:
    """Open ``path`` for appending; cut a partial last line left by a crash."""
    existed = path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        if size and os.pread(fd, 1, size - 1) != b"\n":
            keep = _last_newline_end(fd, size)
            os.ftruncate(fd, keep)
            _LOG.warning(
                "sink.repaired: %s ended in a partial line; dropped %d bytes",
                path,
                size - keep,
                extra={
                    "event": "sink.repaired",
                    "sink": "JsonlSink",
                    "path": str(path),
                    "bytes": size - keep,
                },
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


def sessions_from_events(events: Iterable[AgentEvent]) -> list[SessionRow]:
    """Fold ``session.*`` events into one :class:`SessionRow` per session, as SqliteSink does.

    Rows come in the order their sessions first appear; events without a
    ``session_id`` are skipped.
    """
    rows: dict[str, SessionRow] = {}
    for event in events:
        if not event.session_id or not (
            event.name == _SESSION_STARTED or event.name in _SESSION_END
        ):
            continue
        rows[event.session_id] = _merge_session(
            rows.get(event.session_id), _session_from_event(event)
        )
    return list(rows.values())


def _close_open_sinks() -> None:
    """At interpreter exit, write what unclosed sinks still buffer."""
    with _OPEN_LOCK:
        sinks = list(_OPEN_SINKS)
    for sink in sinks:
        try:
            sink.close()
        except Exception:
            _LOG.exception("sink.failed: closing %r at exit", sink)


atexit.register(_close_open_sinks)
