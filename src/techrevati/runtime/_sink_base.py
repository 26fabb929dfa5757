"""The buffered base of the durable sinks: buffer under a lock, write in batches, close once.

:class:`BufferedSink` is what :class:`~techrevati.runtime.jsonl.JsonlSink`
and :class:`~techrevati.runtime.sqlite.SqliteSink` share. ``write_*`` appends
to a bounded in-memory buffer and returns; a flusher thread (or the writing
thread, with ``background=False``) writes each due batch all or nothing; a
batch that fails stays buffered and is retried after ``flush_interval``; and
sinks still open at interpreter exit are closed then. A subclass opens its
file before calling ``__init__`` and supplies ``_write_batch`` and
``_release``. The public names are re-exported from
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
from typing import Final, Self

from techrevati.runtime._clock import Clock
from techrevati.runtime._log import get_logger
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

Record = AgentEvent | UsageRecord
"""What a sink stores."""

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


class BufferedSink(ClosesOnExit):
    """Buffer records under a lock; write them in batches on a flusher thread or inline.

    Subclasses open their file, then call ``__init__`` with its path (which
    calls ``_release`` if it refuses a setting), and implement
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
    ) -> None:
        try:
            _check_batching(flush_every, flush_interval, clock, max_pending, on_flush)
            self._path = path
            self._target = str(path)
            self._flush_every = flush_every
            self._flush_interval = float(flush_interval)
            self._clock = clock
            self._max_pending = max_pending
            self._on_flush = on_flush
            self._cond = threading.Condition(threading.Lock())
            self._io_lock = threading.Lock()
            self._buffer: deque[Record] = deque()
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

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"pending={len(self._buffer)}"
        return f"{type(self).__name__}({self._target!r}, {state})"

    def _write_batch(self, batch: Sequence[Record]) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _put(self, record: Record) -> None:
        with self._cond:
            if self._closed:
                raise SinkClosedError(f"{type(self).__name__}({self._target!r}) is closed")
            buffer = self._buffer
            buffer.append(record)
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
                self._flush_pending(only_if_due=True)

    def _flush_pending(self, *, only_if_due: bool = False) -> None:
        with self._io_lock:
            with self._cond:
                # The thread decided before it held the lock: a flush() may have come first.
                if not self._buffer or (only_if_due and self._due_in() != 0.0):
                    return
                batch = list(self._buffer)
                self._buffer.clear()
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

    def _requeue(self, batch: list[Record]) -> int:
        """Put a batch that failed back in front for a retry; return how many are pending."""
        with self._cond:
            self._buffer.extendleft(reversed(batch))
            self._drop_oldest()
            self._failed_flushes += 1
            self._retry_at = self._clock() + self._flush_interval
            self._cond.notify()  # a failed flush() of the caller's: the thread times the retry
            return len(self._buffer)

    def _write_error(self, batch: list[Record], pending: int, exc: Exception) -> SinkWriteError:
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
_OPEN_SINKS: Final[set[BufferedSink]] = set()


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
