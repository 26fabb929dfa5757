"""Run a blocking call on a reusable worker thread, and stop waiting at a deadline.

A sync turn with a timeout cannot kill the thread running the user's callable
(Python has no way to), so the caller returns at the deadline and the callable
finishes on its own thread in the background. The threads are daemons kept in
a small idle pool: a timed-out call does not block interpreter exit, the next
turn does not pay for a new thread, and nothing waits on a pool shutdown.

The pool is bounded (``max_threads``, 32 by default): when that many calls are
still running, hung past their deadlines, a new call waits for a thread only
as long as its own deadline, then fails like any call that ran out of time.
A hung provider therefore costs at most ``max_threads`` threads, never one
per turn.
"""

from __future__ import annotations

import contextvars
import math
import threading
import time
from collections.abc import Callable
from typing import Final, Generic, TypeVar

__all__ = ["DEFAULT_MAX_THREADS", "DeadlineExceededError", "DeadlineRunner", "default_runner"]

_T = TypeVar("_T")

_MAX_IDLE: Final = 8

DEFAULT_MAX_THREADS: Final = 32
"""Calls a :class:`DeadlineRunner` runs at once (the hung ones included)."""


class DeadlineExceededError(TimeoutError):
    """The call was still running when its deadline passed, or never got a thread.

    ``started`` is False when every thread was busy until the deadline, so
    the call was never made.
    """

    def __init__(self, message: str, *, started: bool = True) -> None:
        super().__init__(message)
        self.started = started


class _Outcome(Generic[_T]):
    """One call's result or exception, and an event set when it is known."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: _T | None = None
        self.error: BaseException | None = None


class _Worker:
    """A daemon thread that runs one job at a time, then offers itself again."""

    __slots__ = ("_job", "_pool", "_ready", "_thread")

    def __init__(self, pool: DeadlineRunner) -> None:
        self._pool = pool
        self._ready = threading.Event()
        self._job: Callable[[], None] | None = None
        self._thread = threading.Thread(
            target=self._loop, name="techrevati-turn-worker", daemon=True
        )
        self._thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self._job = job
        self._ready.set()

    def _loop(self) -> None:
        while True:
            self._ready.wait()
            self._ready.clear()
            job, self._job = self._job, None
            if job is None:  # pragma: no cover - defensive
                continue
            job()
            if not self._pool._give_back(self):
                return


class DeadlineRunner:
    """Run callables on reusable daemon threads; wait for each at most ``timeout`` seconds.

    Safe to share between threads. A call that outlives its deadline keeps its
    thread until it returns; that thread then rejoins the idle pool (up to 8).
    At most ``max_threads`` calls run at once; a call that finds them all
    busy waits for one within its own deadline (see the module docstring).
    """

    def __init__(self, max_threads: int = DEFAULT_MAX_THREADS) -> None:
        if not isinstance(max_threads, int) or isinstance(max_threads, bool) or max_threads < 1:
            raise ValueError(f"max_threads must be an int >= 1, got {max_threads!r}")
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._started = 0
        self._max_threads = max_threads
        self._slots = threading.BoundedSemaphore(max_threads)
        self._busy = 0

    @property
    def max_threads(self) -> int:
        """How many calls may run at once."""
        return self._max_threads

    @property
    def busy(self) -> int:
        """Calls running now (those hung past their deadlines included)."""
        return self._busy

    @property
    def threads_started(self) -> int:
        """How many worker threads were ever started (for tests and metrics)."""
        return self._started

    def run(self, fn: Callable[[], _T], timeout: float) -> _T:
        """Return ``fn()``, or raise :class:`DeadlineExceededError` once ``timeout`` seconds pass.

        ``fn`` runs in a copy of the caller's context (``contextvars``). Its
        exception is re-raised here unchanged.
        """
        started = time.monotonic()
        if not self._slots.acquire(timeout=timeout):
            raise DeadlineExceededError(
                f"no free thread within {timeout} seconds: all {self._max_threads} are "
                "running calls that outlived their deadlines",
                started=False,
            )
        outcome: _Outcome[_T] = _Outcome()
        context = contextvars.copy_context()

        def job() -> None:
            try:
                outcome.value = context.run(fn)
            except BaseException as exc:  # handed to the waiting caller
                outcome.error = exc
            finally:
                outcome.done.set()
                with self._lock:
                    self._busy -= 1
                self._slots.release()

        with self._lock:
            self._busy += 1
        try:
            self._take().submit(job)
        except BaseException:
            with self._lock:
                self._busy -= 1
            self._slots.release()
            raise
        left = max(0.0, timeout - (time.monotonic() - started))
        if not outcome.done.wait(left if math.isfinite(left) else None):
            raise DeadlineExceededError(f"call did not finish within {timeout} seconds")
        if outcome.error is not None:
            raise outcome.error
        return outcome.value  # type: ignore[return-value]

    def _take(self) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self._started += 1
        return _Worker(self)

    def _give_back(self, worker: _Worker) -> bool:
        with self._lock:
            if len(self._idle) >= _MAX_IDLE:
                return False
            self._idle.append(worker)
            return True


_DEFAULT: DeadlineRunner | None = None
_DEFAULT_LOCK = threading.Lock()


def default_runner() -> DeadlineRunner:
    """Return the process-wide runner, created on first use."""
    global _DEFAULT
    if _DEFAULT is None:
        with _DEFAULT_LOCK:
            if _DEFAULT is None:
                _DEFAULT = DeadlineRunner()
    return _DEFAULT
