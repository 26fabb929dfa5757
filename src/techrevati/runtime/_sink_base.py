"""The buffered base of the durable sinks: encode on the caller's thread, write in batches.

:class:`BufferedSink` is what :class:`~techrevati.runtime.jsonl.JsonlSink`
and :class:`~techrevati.runtime.sqlite.SqliteSink` share. ``write_*`` encodes
the record on the caller's thread (a record that cannot be stored as given is
sanitised, or quarantined with the reason, and counted: the writer never
meets an unwritable record), appends it to an in-memory buffer and returns;
a flusher thread (or the writing thread, with ``background=False``) writes
each due batch all or nothing; a batch that fails stays buffered and is
retried after ``flush_interval``. When ``max_lag`` records are unwritten the
caller waits for the writer (at most ``max_wait`` seconds), so a healthy disk
loses at most ``max_lag`` records to ``kill -9`` whatever the load; only a
disk that refuses writes makes the buffer grow, up to ``max_pending``, and
then drop the oldest. Sinks still open at interpreter exit are closed then.
A subclass opens its file before calling ``__init__`` and supplies
``_encode``, ``_encode_sanitised``, ``_encode_rejected``, ``_write_batch``
and ``_release``. The public names are re-exported from
:mod:`techrevati.runtime.sinks`, whose logger every sink logs on.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, Final, Generic, Self, TypeVar

from techrevati.runtime._clock import Clock
from techrevati.runtime._log import get_logger
from techrevati.runtime._record_text import escaped
from techrevati.runtime._validate import callable_or_none, int_at_least, required_callable
from techrevati.runtime.errors import (
    InvalidValueError,
    SinkClosedError,
    SinkWriteError,
)
from techrevati.runtime.events import AgentEvent, UsageRecord

DEFAULT_FLUSH_EVERY: Final = 100
"""Records a durable sink buffers before it writes a batch."""

DEFAULT_FLUSH_INTERVAL: Final = 1.0
"""Seconds a buffered record waits at most before its batch is written."""

DEFAULT_MAX_PENDING: Final = 100_000
"""Buffered records kept while the disk refuses writes; beyond it the oldest are dropped."""

DEFAULT_LAG_BATCHES: Final = 4
"""``max_lag`` defaults to this many batches (``flush_every`` records each)."""

DEFAULT_MAX_WAIT: Final = 30.0
"""Seconds a write waits at most for a writer that is ``max_lag`` records behind."""

Record = AgentEvent | UsageRecord
"""What a sink stores."""

Item = TypeVar("Item")
"""What a sink buffers for one record: its encoded form (a JSON line, a SQLite row)."""

_LOG: Final = get_logger("techrevati.runtime.sinks")
_DROP_LOG_EVERY: Final = 1000


def log_event(
    level: int,
    event: str,
    message: str,
    *args: object,
    exc: BaseException | None = None,
    **fields: object,
) -> None:
    """Log ``"<event>: <message>"`` with ``event`` and ``fields`` as attributes of the record.

    The logger is ``techrevati.runtime.sinks``; the record names the caller's
    function and line, not this one's.
    """
    _LOG.log(
        level,
        f"{event}: {message}",
        *args,
        exc_info=exc,
        extra={"event": event, **fields},
        stacklevel=2,
    )


class ClosesOnExit:
    """``with thing:`` gives ``thing`` and calls ``thing.close()`` on the way out."""

    __slots__ = ()

    def close(self) -> None:
        """Release what the object holds; idempotent."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BufferedSink(ClosesOnExit, Generic[Item]):
    """Encode records on the caller's thread; write them in batches on a flusher thread or inline.

    Subclasses open their file, then call ``__init__`` with its path (which
    calls ``_release`` if it refuses a setting), and implement ``_encode``
    (raise if the record cannot be stored as given), ``_encode_sanitised``
    (a storable form, or raise), ``_encode_rejected`` (never raises),
    ``_write_batch`` (all or nothing, raise on failure) and ``_release``.
    """

    def __init__(
        self,
        path: Path,
        *,
        flush_every: int,
        flush_interval: float,
        clock: Clock,
        background: bool,
        max_pending: int,
        on_flush: Callable[[int], object] | None,
        max_lag: int | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        try:
            _check_batching(flush_every, flush_interval, clock, max_pending, on_flush)
            if max_lag is None:
                max_lag = min(DEFAULT_LAG_BATCHES * flush_every, max_pending)
            _check_lag(max_lag, max_wait, flush_every, max_pending)
            self._path = path
            self._target = str(path)
            self._flush_every = flush_every
            self._flush_interval = float(flush_interval)
            self._clock = clock
            self._max_pending = max_pending
            self._max_lag = max_lag
            self._max_wait = float(max_wait)
            self._on_flush = on_flush
            lock = threading.Lock()
            self._cond = threading.Condition(lock)  # the flusher thread waits on it
            self._room = threading.Condition(lock)  # writers waiting for the writer wait on it
            self._io_lock = threading.Lock()
            self._buffer: deque[Item] = deque()
            self._in_flight = 0  # records of the batch being written
            self._writer: int | None = None  # the thread writing that batch
            self._waiting = 0  # writes waiting for room
            self._stalled = False  # a write gave up waiting; no one waits until a batch ends
            self._last_flush = clock()
            self._retry_at = float("-inf")
            self._closed = False
            self._written = 0
            self._batches = 0
            self._dropped = 0
            self._failed_flushes = 0
            self._sanitised = 0
            self._rejected = 0
            self._stalls = 0
            self._inline = not background
            self._thread: threading.Thread | None = None
            if background:
                self._thread = threading.Thread(
                    target=self._run, name=f"techrevati-{type(self).__name__}-flusher", daemon=True
                )
                self._thread.start()
        except BaseException:
            self._release()  # the subclass's file, opened before this
            raise
        with _OPEN_LOCK:
            _OPEN_SINKS.add(self)

    @property
    def path(self) -> Path:
        """The file written to."""
        return self._path

    @property
    def pending(self) -> int:
        """Records handed to the sink and not yet written: buffered, or in the batch in flight."""
        with self._cond:
            return len(self._buffer) + self._in_flight

    @property
    def max_lag(self) -> int:
        """Unwritten records at which a write waits for the writer (the ``kill -9`` loss bound)."""
        return self._max_lag

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
    def sanitised(self) -> int:
        """Records that could not be stored as given and were stored sanitised."""
        with self._cond:
            return self._sanitised

    @property
    def rejected(self) -> int:
        """Records that could not be stored even sanitised and were quarantined with the reason."""
        with self._cond:
            return self._rejected

    @property
    def stalls(self) -> int:
        """Times a write gave up waiting ``max_wait`` seconds for a writer that made no progress."""
        with self._cond:
            return self._stalls

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def write_event(self, event: AgentEvent) -> None:
        """Encode ``event`` and buffer it; it is written with the next batch. No disk I/O.

        A record that cannot be stored as given is stored sanitised, or
        quarantined with the reason, and counted (:attr:`sanitised`,
        :attr:`rejected`); it never fails the batch. When :attr:`max_lag`
        records are unwritten this waits for the writer (at most
        ``max_wait`` seconds; not while the disk refuses writes, nor on the
        flusher thread). With ``background=False`` (or ``fsync="always"``) a
        due batch is written here, on the caller's thread, and a failure to
        write it raises :class:`SinkWriteError` here (the records stay
        buffered and the next write tries again). Raises
        :class:`SinkClosedError` after :meth:`close`.
        """
        if not isinstance(event, AgentEvent):
            raise InvalidValueError(f"event must be an AgentEvent, got {type(event).__name__}")
        try:
            item = self._encode(event)
        except Exception as exc:
            self._salvaged(event, exc)
        else:
            self._put(item)

    def write_usage(self, record: UsageRecord) -> None:
        """Encode ``record`` and buffer it; same rules as :meth:`write_event`."""
        if not isinstance(record, UsageRecord):
            raise InvalidValueError(f"record must be a UsageRecord, got {type(record).__name__}")
        try:
            item = self._encode(record)
        except Exception as exc:
            self._salvaged(record, exc)
        else:
            self._put(item)

    def flush(self) -> None:
        """Write every buffered record now and return once they are durable.

        Raises :class:`SinkWriteError` if the batch cannot be written (the
        records stay buffered). A no-op after :meth:`close`.
        """
        if not self._closed:
            self._flush_pending()

    def close(self) -> None:
        """Flush, stop the flusher thread and release the file; idempotent.

        Later writes, and writes still waiting for room, raise :class:`SinkClosedError`.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            self._room.notify_all()
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

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pending={len(self._buffer) + self._in_flight}"
        return f"{type(self).__name__}({self._target!r}, {state})"

    def _encode(self, record: Record) -> Item:
        raise NotImplementedError

    def _encode_sanitised(self, record: Record, notes: set[str]) -> Item:
        raise NotImplementedError

    def _encode_rejected(self, record: Record, reason: str) -> Item:
        raise NotImplementedError

    def _write_batch(self, batch: Sequence[Item]) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _salvaged(self, record: Record, exc: Exception) -> None:
        """Buffer the sanitised form of a record ``_encode`` refused, or its quarantine; count."""
        notes: set[str] = set()
        try:
            item = self._encode_sanitised(record, notes)
        except Exception as again:
            outcome, reason = "rejected", _reason(again)
            item = self._encode_rejected(record, reason)
        else:
            outcome, reason = "sanitised", "; ".join(sorted(notes)) or _reason(exc)
        self._put(item)
        with self._cond:
            if outcome == "sanitised":
                self._sanitised += 1
            else:
                self._rejected += 1
            counts = (self._sanitised, self._rejected)
        count = counts[0] if outcome == "sanitised" else counts[1]
        if count == 1 or count % _DROP_LOG_EVERY == 0:
            log_event(
                logging.WARNING if outcome == "sanitised" else logging.ERROR,
                f"sink.record_{outcome}",
                "%s %s %s (%s); %d so far",
                self._target,
                outcome,
                _record_label(record),
                reason,
                count,
                sink=type(self).__name__,
                path=self._target,
                record=_record_label(record),
                reason=reason,
                sanitised=counts[0],
                rejected=counts[1],
            )

    def _put(self, item: Item) -> None:
        with self._cond:
            if self._closed:
                raise SinkClosedError(f"{type(self).__name__}({self._target!r}) is closed")
            stalled = False
            if len(self._buffer) + self._in_flight >= self._max_lag and self._may_wait():
                stalled = self._wait_for_room()
            buffer = self._buffer
            buffer.append(item)
            size = len(buffer)
            dropped = 0
            if size > self._max_pending:
                self._drop_oldest()
                dropped = self._dropped
            due = size >= self._flush_every or (
                self._clock() - self._last_flush >= self._flush_interval
            )
            if (due or size == 1) and not self._inline:
                # A first record starts the interval the thread must time: it waits
                # unbounded while the buffer is empty. It honours a failure's pause.
                self._cond.notify()
        if stalled:
            log_event(
                logging.ERROR,
                "sink.stalled",
                "%s: no batch finished within max_wait=%ss; writes no longer wait",
                self._target,
                self._max_wait,
                sink=type(self).__name__,
                path=self._target,
                max_wait=self._max_wait,
                pending=size,
            )
        if dropped and (dropped == 1 or dropped % _DROP_LOG_EVERY == 0):
            log_event(
                logging.WARNING,
                "sink.dropped",
                "%s dropped %d records",
                self._target,
                dropped,
                sink=type(self).__name__,
                path=self._target,
                dropped=dropped,
            )
        if due and self._inline:
            self._flush_pending()

    def _may_wait(self) -> bool:
        """Whether a write may wait for the writer now (hold ``_cond``).

        Not inline (no thread to wait for), not on the flusher thread or the
        thread writing a batch (they would wait on themselves), not once a
        write gave up waiting, and not while the disk refuses writes (a
        failed batch's pause): then records buffer up to ``max_pending``.
        """
        return not (
            self._inline
            or self._stalled
            or threading.current_thread() is self._thread
            or self._writer == threading.get_ident()
            or self._clock() < self._retry_at
        )

    def _wait_for_room(self) -> bool:
        """Wait until fewer than ``max_lag`` records are unwritten (hold ``_cond``).

        Returns True if it gave up after ``max_wait`` seconds (the sink is
        then stalled). Raises :class:`SinkClosedError` if the sink is closed
        meanwhile; a Ctrl-C interrupts the wait.
        """
        deadline = self._clock() + self._max_wait
        self._waiting += 1
        try:
            self._cond.notify()  # a waiting write makes a batch due at once
            while len(self._buffer) + self._in_flight >= self._max_lag:
                if self._closed:
                    raise SinkClosedError(f"{type(self).__name__}({self._target!r}) is closed")
                if not self._may_wait():
                    return False
                remaining = deadline - self._clock()
                if remaining <= 0:
                    self._stalled = True
                    self._stalls += 1
                    return True
                self._room.wait(remaining)
            if self._closed:
                raise SinkClosedError(f"{type(self).__name__}({self._target!r}) is closed")
            return False
        finally:
            self._waiting -= 1

    def _drop_oldest(self) -> None:
        """Drop the oldest records beyond ``max_pending``, counting them (hold ``_cond``)."""
        excess = len(self._buffer) - self._max_pending
        for _ in range(excess):
            self._buffer.popleft()
        self._dropped += max(0, excess)

    def _due_in(self) -> float | None:
        """Seconds until a batch is due (0 = now), or None when nothing is buffered."""
        if not self._buffer:
            return None
        now = self._clock()
        if now < self._retry_at:
            return self._retry_at - now
        if len(self._buffer) >= self._flush_every or self._waiting:
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
                self._flush_pending(only_if_due=True)

    def _flush_pending(self, *, only_if_due: bool = False) -> None:
        with self._io_lock:
            with self._cond:
                # The thread decided before it held the lock: a flush() may have come first.
                if not self._buffer or (only_if_due and self._due_in() != 0.0):
                    return
                batch = list(self._buffer)
                self._buffer.clear()
                self._in_flight = len(batch)
                self._writer = threading.get_ident()
            try:
                self._write_batch(batch)
            except BaseException as exc:
                pending = self._requeue(batch)
                if not isinstance(exc, Exception):
                    raise  # KeyboardInterrupt and the like: the batch is kept, not logged
                raise self._write_error(batch, pending, exc) from exc
            with self._cond:
                self._written += len(batch)
                self._batches += 1
                self._last_flush = self._clock()
                self._retry_at = float("-inf")
                self._batch_ended()
        if self._on_flush is not None:
            try:
                self._on_flush(len(batch))
            except Exception as exc:
                log_event(
                    logging.ERROR,
                    "sink.callback_failed",
                    "on_flush of %s raised %s",
                    self._target,
                    type(exc).__name__,
                    exc=exc,
                    sink=type(self).__name__,
                    path=self._target,
                    error_type=type(exc).__name__,
                )

    def _batch_ended(self) -> None:
        """End the batch in flight (written, or back in the buffer); wake waiting writes."""
        self._in_flight = 0
        self._writer = None
        self._stalled = False
        self._room.notify_all()

    def _requeue(self, batch: list[Item]) -> int:
        """Put a batch that failed back in front for a retry; return how many are pending."""
        with self._cond:
            self._buffer.extendleft(reversed(batch))
            self._batch_ended()
            self._drop_oldest()
            self._failed_flushes += 1
            self._retry_at = self._clock() + self._flush_interval
            self._cond.notify()  # a failed flush() of the caller's: the thread times the retry
            return len(self._buffer)

    def _write_error(self, batch: list[Item], pending: int, exc: Exception) -> SinkWriteError:
        """Log a failed batch write and return the error that reports it."""
        log_event(
            logging.ERROR,
            "sink.flush_failed",
            "%s could not write %d records: %s",
            self._target,
            len(batch),
            exc,
            exc=exc,
            sink=type(self).__name__,
            path=self._target,
            records=len(batch),
            pending=pending,
            error_type=type(exc).__name__,
        )
        return SinkWriteError(
            f"{type(self).__name__}({self._target!r}) could not write "
            f"{len(batch)} records: {type(exc).__name__}: {exc}"
        )


def _record_label(record: Record) -> str:
    """How a log line names a record: its event name (escaped), or ``usage``."""
    return escaped(str(record.name)) if isinstance(record, AgentEvent) else "usage"


def _reason(exc: BaseException) -> str:
    """``Type: message`` of an exception, as text that can be stored."""
    try:
        message = str(exc)
    except Exception:
        message = "<unprintable message>"
    return escaped(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def _check_lag(max_lag: object, max_wait: object, flush_every: int, max_pending: int) -> None:
    """Refuse a ``max_lag`` or ``max_wait`` no sink can honour, naming the setting and the value."""
    int_at_least("max_lag", max_lag, flush_every)
    if isinstance(max_lag, int) and max_lag > max_pending:
        raise InvalidValueError(f"max_lag must be <= max_pending ({max_pending}), got {max_lag!r}")
    if (
        not isinstance(max_wait, (int, float))
        or isinstance(max_wait, bool)
        or not 0 < max_wait < float("inf")
    ):
        raise InvalidValueError(f"max_wait must be a number > 0 and finite, got {max_wait!r}")


def _check_batching(
    flush_every: int,
    flush_interval: float,
    clock: Clock,
    max_pending: int,
    on_flush: Callable[[int], object] | None,
) -> None:
    """Refuse a batching setting no sink can honour, naming the setting and the value."""
    int_at_least("flush_every", flush_every, 1)
    if (
        not isinstance(flush_interval, (int, float))
        or isinstance(flush_interval, bool)
        or not flush_interval > 0
    ):
        raise InvalidValueError(f"flush_interval must be a number > 0, got {flush_interval!r}")
    int_at_least("max_pending", max_pending, 1)
    if max_pending < flush_every:
        raise InvalidValueError(
            f"max_pending must be >= flush_every ({flush_every}), got {max_pending!r}"
        )
    required_callable("clock", clock)
    callable_or_none("on_flush", on_flush)


_OPEN_LOCK: Final = threading.Lock()
_OPEN_SINKS: Final[set[BufferedSink[Any]]] = set()


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
