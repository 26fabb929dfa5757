"""Where events and usage records go: a fault-isolating fan-out, and the sinks' public home.

Reach for :class:`SinkFanout` to send every :class:`~techrevati.runtime.events.AgentEvent`
and :class:`~techrevati.runtime.events.UsageRecord` to several sinks at once,
where one broken sink is logged and counted but never stops the others or the
caller. :class:`JsonlSink` appends one JSON object per line to a file (easy to
ship and grep); :class:`SqliteSink` stores them in a versioned SQLite database
in WAL mode that many threads and processes can share and that survives
``kill -9`` up to the last flushed batch. Both encode each record on the
caller's thread (sanitising or quarantining one they cannot store as given),
buffer it and write batches on a background thread, so ``write_*`` waits on
the disk only when ``max_lag`` records are unwritten: that bounds what
``kill -9`` can lose, whatever the load. Read them back with
:func:`read_jsonl`, :class:`SqliteReader` or the sink's own ``read_*``
methods, which return typed records.

Every sink name is importable from here. Each lives in the module of its
concept: :mod:`techrevati.runtime.jsonl`, :mod:`techrevati.runtime.sqlite`
(imported on first use of one of its names, so importing this module does not
load :mod:`sqlite3`), the buffered base both share, and the session rows
folded from events. All of them log on the logger ``techrevati.runtime.sinks``.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, cast

from techrevati.runtime._sessions import SessionRow, SessionStatus, sessions_from_events
from techrevati.runtime._sink_base import (
    DEFAULT_FLUSH_EVERY,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_WAIT,
    BufferedSink,
    ClosesOnExit,
    log_event,
)
from techrevati.runtime.errors import InvalidValueError, SinkClosedError, SinkWriteError
from techrevati.runtime.events import AgentEvent, EventSink, UsageRecord, UsageSink
from techrevati.runtime.jsonl import CorruptRecordError, FsyncPolicy, JsonlSink, read_jsonl

if TYPE_CHECKING:
    from techrevati.runtime.sqlite import (
        DEFAULT_BUSY_TIMEOUT,
        SCHEMA_VERSION,
        SQLITE_APPLICATION_ID,
        SchemaError,
        SqliteReader,
        SqliteSink,
    )

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_FLUSH_EVERY",
    "DEFAULT_FLUSH_INTERVAL",
    "DEFAULT_MAX_PENDING",
    "DEFAULT_MAX_WAIT",
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

_SQLITE_NAMES: Final = frozenset(
    {
        "DEFAULT_BUSY_TIMEOUT",
        "SCHEMA_VERSION",
        "SQLITE_APPLICATION_ID",
        "SchemaError",
        "SqliteReader",
        "SqliteSink",
    }
)


class SinkFanout(ClosesOnExit):
    """Deliver each record to every sink that takes it; a failing sink never stops the others.

    Which sinks take events (``write_event``) and which take usage
    (``write_usage``) is decided once, here. A sink that raises is logged
    (``sink.failed`` on logger ``techrevati.runtime.sinks``) and counted in
    :attr:`failures`; the other sinks still get the record and the caller goes
    on. Records a durable sink had to sanitise or reject (its ``sanitised``
    and ``rejected`` counters) count as that sink's failures too, and are
    summed in :attr:`sanitised` and :attr:`rejected`. Pass a mapping to name
    the sinks; otherwise they are named after their class (``SqliteSink``,
    ``SqliteSink#2``, ...).

    Safe to share between threads: delivery takes no lock (each sink guards
    itself); only the failure counters do.
    """

    __slots__ = (
        "_closers",
        "_counted",
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
        self._counted = tuple(
            (name, sink) for name, sink in pairs if isinstance(sink, BufferedSink)
        )
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
        """Failures per sink name (a copy): calls that raised, and records sanitised or rejected."""
        with self._lock:
            failures = dict(self._failures)
        for name, sink in self._counted:
            failures[name] += sink.sanitised + sink.rejected
        return failures

    @property
    def failure_count(self) -> int:
        """Failures of all sinks together (as :attr:`failures` counts them)."""
        return self._failure_count + self.sanitised + self.rejected

    @property
    def sanitised(self) -> int:
        """Records the sinks stored sanitised, because they could not be stored as given."""
        return sum(sink.sanitised for _, sink in self._counted)

    @property
    def rejected(self) -> int:
        """Records the sinks quarantined, because they could not be stored even sanitised."""
        return sum(sink.rejected for _, sink in self._counted)

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
        self._call_each(self._flushers, "flush")

    def close(self) -> None:
        """Call ``close()`` on every sink that has one, isolating failures the same way."""
        self._call_each(self._closers, "close")

    def __repr__(self) -> str:
        return f"SinkFanout({list(self._names)!r}, failures={self.failure_count})"

    def _failed(self, name: str, operation: str, record: str | None, exc: Exception) -> None:
        with self._lock:
            self._failures[name] += 1
            self._failure_count += 1
            count = self._failures[name]
        log_event(
            logging.ERROR,
            "sink.failed",
            "%s.%s raised %s: %s",
            name,
            operation,
            type(exc).__name__,
            exc,
            exc=exc,
            sink=name,
            operation=operation,
            record=record,
            error_type=type(exc).__name__,
            sink_failures=count,
        )

    def _call_each(
        self, calls: tuple[tuple[str, Callable[[], object]], ...], operation: str
    ) -> None:
        for name, call in calls:
            try:
                call()
            except Exception as exc:
                self._failed(name, operation, None, exc)


def _default_names(sinks: Sequence[object]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for sink in sinks:
        base = type(sink).__name__
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


def __getattr__(name: str) -> object:
    """Import :mod:`techrevati.runtime.sqlite` on first use of one of its names (PEP 562)."""
    if name in _SQLITE_NAMES:
        value = getattr(importlib.import_module("techrevati.runtime.sqlite"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SQLITE_NAMES})
