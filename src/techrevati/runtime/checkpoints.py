"""Checkpoints: the caller's loop state and the runtime's, saved per thread after each turn.

Reach for a :class:`CheckpointSaver` when an agent loop must go on after a
crash from where it was, not just with the right totals: after each committed
turn it stores, per ``thread_id``, the caller's state (any JSON value: the
message list, a step counter) and the runtime's own (a JSON object the session
fills: usage, budget spent, retry context, worker status), under a ``step``
that only grows and the turn's idempotency key ``turn_key``. :meth:`~CheckpointSaver.begin_turn`
marks a turn as started before it runs, so that after a crash the turn in
flight can be told apart (``STARTED``) from the ones a checkpoint committed
(``COMMITTED``): it re-runs once, they never do.

A state that only grew (a list with items appended, or a dict whose list
values did) is stored as the appended items, with a full snapshot now and
then, so a put costs about the same for a 10-message history as for a
10,000-message one. :class:`InMemorySaver` keeps checkpoints in this process;
:class:`SqliteSaver` (imported on first use, so this module does not load
:mod:`sqlite3`) in a WAL database that survives ``kill -9``. See
docs/checkpoints.md for the rule of what re-runs on resume.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Protocol, TypeVar, runtime_checkable

from techrevati.runtime._checkpoint_delta import (
    SNAPSHOT,
    GrowthCheck,
    Tips,
    Write,
    decode,
    rebuild,
)
from techrevati.runtime._clock import WallClock, utc_now
from techrevati.runtime._sink_base import ClosesOnExit
from techrevati.runtime._validate import (
    int_at_least,
    non_empty_str,
    optional_int_at_least,
    required_callable,
)
from techrevati.runtime.errors import InvalidValueError, TechrevatiError

if TYPE_CHECKING:
    from techrevati.runtime._checkpoint_sqlite import SqliteSaver

__all__ = [
    "DEFAULT_HISTORY",
    "Checkpoint",
    "CheckpointConflictError",
    "CheckpointSaver",
    "CheckpointWrite",
    "InMemorySaver",
    "PendingTurn",
    "SaverClosedError",
    "SqliteSaver",
    "TurnStatus",
]

DEFAULT_HISTORY: Final = 10
"""How many checkpoints :meth:`CheckpointSaver.history` returns unless told."""

_P = ParamSpec("_P")
_T = TypeVar("_T")


class CheckpointConflictError(TechrevatiError, ValueError):
    """A checkpoint its thread cannot take: a step not past the last, or a turn already committed.

    Raised by ``put`` inside the write, before anything is stored: two
    writers raced for one step, or a turn that a checkpoint already committed
    was run again. ``thread_id``, ``step`` and ``turn_key`` are the refused
    checkpoint's; ``latest_step`` is the thread's last stored step (``None``
    if it has none).
    """

    def __init__(
        self, message: str, *, thread_id: str, step: int, turn_key: str, latest_step: int | None
    ) -> None:
        super().__init__(message)
        self.thread_id = thread_id
        self.step = step
        self.turn_key = turn_key
        self.latest_step = latest_step


class SaverClosedError(TechrevatiError, RuntimeError):
    """A checkpoint saver was used after :meth:`~CheckpointSaver.close`."""


class TurnStatus(StrEnum):
    """Where a turn of a thread is, as its markers and checkpoints say."""

    UNKNOWN = "unknown"
    """Never begun, and no checkpoint committed it (or it was pruned, or the thread deleted)."""
    STARTED = "started"
    """Begun and not committed: in flight, or in flight when the process died."""
    COMMITTED = "committed"
    """A checkpoint with this ``turn_key`` is stored: the turn is done."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One stored checkpoint, rebuilt: the caller's state and the runtime's after a turn.

    ``caller_state`` and ``runtime_state`` are fresh objects decoded from
    JSON, the caller's to change: the saver keeps its own copy.
    """

    thread_id: str
    step: int
    caller_state: Any
    runtime_state: Mapping[str, Any]
    turn_key: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class CheckpointWrite:
    """What one ``put`` stored: a snapshot or a delta, and its size in bytes of JSON."""

    thread_id: str
    step: int
    snapshot: bool
    state_bytes: int
    runtime_bytes: int


@dataclass(frozen=True, slots=True)
class PendingTurn:
    """A turn begun and not committed: ``attempts`` counts its ``begin_turn`` calls."""

    thread_id: str
    turn_key: str
    attempts: int
    started_at: datetime  # the first begin


@runtime_checkable
class CheckpointSaver(Protocol):
    """Where checkpoints go: per thread, a step-ordered history and the turns' markers."""

    def put(
        self,
        thread_id: str,
        step: int,
        caller_state: object,
        runtime_state: Mapping[str, object],
        turn_key: str,
    ) -> CheckpointWrite:
        """Store the checkpoint of the turn ``turn_key``, all or nothing, and mark it committed."""
        ...

    def latest(self, thread_id: str) -> Checkpoint | None:
        """Return the thread's last checkpoint, or ``None`` if it has none."""
        ...

    def history(self, thread_id: str, *, limit: int | None = DEFAULT_HISTORY) -> list[Checkpoint]:
        """Return the thread's checkpoints, newest first, at most ``limit`` (``None``: all)."""
        ...

    def begin_turn(self, thread_id: str, turn_key: str) -> TurnStatus:
        """Mark the turn as started; return its status before the call."""
        ...

    def turn_status(self, thread_id: str, turn_key: str) -> TurnStatus:
        """Return the turn's status."""
        ...

    def pending_turn(self, thread_id: str) -> PendingTurn | None:
        """Return the turn most recently begun and not committed, if any."""
        ...

    def delete_thread(self, thread_id: str) -> None:
        """Remove the thread's checkpoints and markers."""
        ...

    async def aput(
        self,
        thread_id: str,
        step: int,
        caller_state: object,
        runtime_state: Mapping[str, object],
        turn_key: str,
    ) -> CheckpointWrite:
        """Async twin of :meth:`put`."""
        ...

    async def alatest(self, thread_id: str) -> Checkpoint | None:
        """Async twin of :meth:`latest`."""
        ...

    async def ahistory(
        self, thread_id: str, *, limit: int | None = DEFAULT_HISTORY
    ) -> list[Checkpoint]:
        """Async twin of :meth:`history`."""
        ...

    async def abegin_turn(self, thread_id: str, turn_key: str) -> TurnStatus:
        """Async twin of :meth:`begin_turn`."""
        ...

    async def aturn_status(self, thread_id: str, turn_key: str) -> TurnStatus:
        """Async twin of :meth:`turn_status`."""
        ...

    async def apending_turn(self, thread_id: str) -> PendingTurn | None:
        """Async twin of :meth:`pending_turn`."""
        ...

    async def adelete_thread(self, thread_id: str) -> None:
        """Async twin of :meth:`delete_thread`."""
        ...

    def close(self) -> None:
        """Release what the saver holds; idempotent."""
        ...


class _TipMovedError(Exception):
    """Private: the thread's last stored checkpoint is not the one a delta was planned on."""


class _BaseSaver(ClosesOnExit):
    """Private: what both savers share, the planning of a put and the async twins.

    A subclass implements ``_commit`` (store a planned :class:`Write` in one
    all-or-nothing step, raising :class:`_TipMovedError` if its base is not the
    thread's last checkpoint; then call ``self._tips.advance``), the readers,
    the markers, ``close``, and ``_in_thread`` (how an async twin runs a
    blocking call).
    """

    def __init__(self, *, growth_check: GrowthCheck, keep: int | None, clock: WallClock) -> None:
        self._tips = Tips(growth_check)
        self._keep = optional_int_at_least("keep", keep, 1)
        self._clock = required_callable("clock", clock)

    def put(
        self,
        thread_id: str,
        step: int,
        caller_state: object,
        runtime_state: Mapping[str, object],
        turn_key: str,
    ) -> CheckpointWrite:
        """Store the checkpoint of the turn ``turn_key``, all or nothing, and mark it committed.

        ``step`` must be greater than the thread's last; ``caller_state`` must
        be a JSON value and ``runtime_state`` a JSON object (checked before
        anything is written: ``InvalidValueError`` names the first part that
        is not). Raises :class:`CheckpointConflictError` for a step not past
        the last or a turn already committed.
        """
        write = self._plan(thread_id, step, caller_state, runtime_state, turn_key, snapshot=False)
        try:
            return self._commit(write)
        except _TipMovedError:  # another writer got there first: store the whole state
            write = self._plan(
                thread_id, step, caller_state, runtime_state, turn_key, snapshot=True
            )
            return self._commit(write)

    async def aput(
        self,
        thread_id: str,
        step: int,
        caller_state: object,
        runtime_state: Mapping[str, object],
        turn_key: str,
    ) -> CheckpointWrite:
        """Async twin of :meth:`put`: the state is encoded here, the write runs off the loop."""
        write = self._plan(thread_id, step, caller_state, runtime_state, turn_key, snapshot=False)
        try:
            return await self._in_thread(self._commit, write)
        except _TipMovedError:
            write = self._plan(
                thread_id, step, caller_state, runtime_state, turn_key, snapshot=True
            )
            return await self._in_thread(self._commit, write)

    async def alatest(self, thread_id: str) -> Checkpoint | None:
        """Async twin of :meth:`latest`."""
        return await self._in_thread(self.latest, thread_id)

    async def ahistory(
        self, thread_id: str, *, limit: int | None = DEFAULT_HISTORY
    ) -> list[Checkpoint]:
        """Async twin of :meth:`history`."""
        return await self._in_thread(self.history, thread_id, limit=limit)

    async def abegin_turn(self, thread_id: str, turn_key: str) -> TurnStatus:
        """Async twin of :meth:`begin_turn`."""
        return await self._in_thread(self.begin_turn, thread_id, turn_key)

    async def aturn_status(self, thread_id: str, turn_key: str) -> TurnStatus:
        """Async twin of :meth:`turn_status`."""
        return await self._in_thread(self.turn_status, thread_id, turn_key)

    async def apending_turn(self, thread_id: str) -> PendingTurn | None:
        """Async twin of :meth:`pending_turn`."""
        return await self._in_thread(self.pending_turn, thread_id)

    async def adelete_thread(self, thread_id: str) -> None:
        """Async twin of :meth:`delete_thread`."""
        await self._in_thread(self.delete_thread, thread_id)

    def latest(self, thread_id: str) -> Checkpoint | None:
        raise NotImplementedError

    def history(self, thread_id: str, *, limit: int | None = DEFAULT_HISTORY) -> list[Checkpoint]:
        raise NotImplementedError

    def begin_turn(self, thread_id: str, turn_key: str) -> TurnStatus:
        raise NotImplementedError

    def turn_status(self, thread_id: str, turn_key: str) -> TurnStatus:
        raise NotImplementedError

    def pending_turn(self, thread_id: str) -> PendingTurn | None:
        raise NotImplementedError

    def delete_thread(self, thread_id: str) -> None:
        raise NotImplementedError

    def _commit(self, write: Write) -> CheckpointWrite:
        raise NotImplementedError

    async def _in_thread(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        raise NotImplementedError

    def _plan(
        self,
        thread_id: str,
        step: int,
        caller_state: object,
        runtime_state: Mapping[str, object],
        turn_key: str,
        *,
        snapshot: bool,
    ) -> Write:
        non_empty_str("thread_id", thread_id)
        int_at_least("step", step, 0)
        non_empty_str("turn_key", turn_key)
        if not isinstance(runtime_state, Mapping):
            raise InvalidValueError(
                f"runtime_state must be a mapping (a JSON object), got {runtime_state!r}"
            )
        return self._tips.plan(
            thread_id, step, caller_state, runtime_state, turn_key, snapshot=snapshot
        )


def _conflict_of(write: Write, latest: tuple[int, str] | None) -> None:
    """Private: raise if ``write`` cannot follow the thread's ``latest`` (step, turn_key)."""
    if latest is not None and write.step <= latest[0]:
        raise CheckpointConflictError(
            f"thread {write.thread_id!r} is at step {latest[0]}: a checkpoint needs a greater "
            f"step, got {write.step} (turn_key {write.turn_key!r})",
            thread_id=write.thread_id,
            step=write.step,
            turn_key=write.turn_key,
            latest_step=latest[0],
        )
    if write.base is not None and write.base != latest:
        raise _TipMovedError


def _committed_twice(write: Write, step: int, latest: int | None) -> CheckpointConflictError:
    """Private: the error for a turn that a checkpoint at ``step`` already committed."""
    return CheckpointConflictError(
        f"turn {write.turn_key!r} of thread {write.thread_id!r} was already committed by the "
        f"checkpoint at step {step}: a turn commits once",
        thread_id=write.thread_id,
        step=write.step,
        turn_key=write.turn_key,
        latest_step=latest,
    )


def _stored(write: Write) -> CheckpointWrite:
    """Private: what the caller learns of a stored ``write``."""
    return CheckpointWrite(
        write.thread_id, write.step, write.kind == SNAPSHOT, len(write.state), len(write.runtime)
    )


@dataclass(slots=True)
class _Row:
    step: int
    snapshot_step: int
    kind: int
    state: bytes
    runtime: bytes
    turn_key: str
    created_at: datetime


@dataclass(slots=True)
class _Marker:
    attempts: int
    started_at: datetime


@dataclass(slots=True)
class _Thread:
    rows: list[_Row] = field(default_factory=list)
    started: dict[str, _Marker] = field(default_factory=dict)  # in order of first begin
    committed: dict[str, int] = field(default_factory=dict)  # turn_key -> step, in step order


class InMemorySaver(_BaseSaver):
    """Keep checkpoints in this process: for tests, and for loops that need no crash safety.

    Stores exactly what :class:`SqliteSaver` stores (the same JSON, the same
    deltas and snapshots), so a test against it holds for the file too. Safe
    to share between threads (one lock). ``growth_check`` (``"prefix"`` or
    ``"tail"``), ``keep`` (the newest checkpoints kept per thread; ``None``:
    all) and ``clock`` (the wall clock stamping ``created_at``) are as for
    :class:`SqliteSaver`. The async twins run inline: nothing here blocks.
    """

    def __init__(
        self,
        *,
        growth_check: GrowthCheck = "prefix",
        keep: int | None = None,
        clock: WallClock = utc_now,
    ) -> None:
        super().__init__(growth_check=growth_check, keep=keep, clock=clock)
        self._threads: dict[str, _Thread] = {}
        self._lock = threading.Lock()
        self._closed = False

    def latest(self, thread_id: str) -> Checkpoint | None:
        """Return the thread's last checkpoint, or ``None`` if it has none."""
        non_empty_str("thread_id", thread_id)
        with self._lock:
            rows = self._rows(thread_id)
            if not rows:
                return None
            return _checkpoint(thread_id, rows, len(rows) - 1)

    def history(self, thread_id: str, *, limit: int | None = DEFAULT_HISTORY) -> list[Checkpoint]:
        """Return the thread's checkpoints, newest first, at most ``limit`` (``None``: all)."""
        non_empty_str("thread_id", thread_id)
        optional_int_at_least("limit", limit, 1)
        with self._lock:
            rows = list(self._rows(thread_id))
        count = len(rows) if limit is None else min(limit, len(rows))
        return [_checkpoint(thread_id, rows, len(rows) - 1 - n) for n in range(count)]

    def begin_turn(self, thread_id: str, turn_key: str) -> TurnStatus:
        """Mark the turn as started; return its status before the call.

        ``UNKNOWN``: its first start. ``STARTED``: it was begun before and not
        committed (the process died in it, or it failed): this is a re-run,
        counted in :attr:`PendingTurn.attempts`. ``COMMITTED``: nothing changes.
        """
        non_empty_str("thread_id", thread_id)
        non_empty_str("turn_key", turn_key)
        with self._lock:
            self._check_open()
            thread = self._threads.setdefault(thread_id, _Thread())
            if turn_key in thread.committed:
                return TurnStatus.COMMITTED
            marker = thread.started.get(turn_key)
            if marker is not None:
                marker.attempts += 1
                return TurnStatus.STARTED
            thread.started[turn_key] = _Marker(1, self._clock())
            return TurnStatus.UNKNOWN

    def turn_status(self, thread_id: str, turn_key: str) -> TurnStatus:
        """Return the turn's status."""
        non_empty_str("thread_id", thread_id)
        non_empty_str("turn_key", turn_key)
        with self._lock:
            self._check_open()
            thread = self._threads.get(thread_id)
            if thread is None:
                return TurnStatus.UNKNOWN
            if turn_key in thread.committed:
                return TurnStatus.COMMITTED
            return TurnStatus.STARTED if turn_key in thread.started else TurnStatus.UNKNOWN

    def pending_turn(self, thread_id: str) -> PendingTurn | None:
        """Return the turn most recently begun and not committed, if any."""
        non_empty_str("thread_id", thread_id)
        with self._lock:
            self._check_open()
            thread = self._threads.get(thread_id)
            if thread is None or not thread.started:
                return None
            key, marker = next(reversed(thread.started.items()))
            return PendingTurn(thread_id, key, marker.attempts, marker.started_at)

    def delete_thread(self, thread_id: str) -> None:
        """Remove the thread's checkpoints and markers."""
        non_empty_str("thread_id", thread_id)
        with self._lock:
            self._check_open()
            self._threads.pop(thread_id, None)
            self._tips.forget(thread_id)

    def close(self) -> None:
        """Refuse further use (:class:`SaverClosedError`) and drop what is stored; idempotent."""
        with self._lock:
            self._closed = True
            self._threads.clear()

    def _commit(self, write: Write) -> CheckpointWrite:
        with self._lock:
            self._check_open()
            thread = self._threads.setdefault(write.thread_id, _Thread())
            rows = thread.rows
            last = rows[-1] if rows else None
            _conflict_of(write, None if last is None else (last.step, last.turn_key))
            done = thread.committed.get(write.turn_key)
            if done is not None:
                raise _committed_twice(write, done, None if last is None else last.step)
            snapshot_step = (
                write.step if last is None or write.kind == SNAPSHOT else last.snapshot_step
            )
            rows.append(
                _Row(
                    write.step,
                    snapshot_step,
                    write.kind,
                    write.state,
                    write.runtime,
                    write.turn_key,
                    self._clock(),
                )
            )
            thread.started.pop(write.turn_key, None)
            thread.committed[write.turn_key] = write.step
            if self._keep is not None:
                _prune(thread, self._keep)
            self._tips.advance(write)
        return _stored(write)

    async def _in_thread(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return fn(*args, **kwargs)

    def _rows(self, thread_id: str) -> list[_Row]:
        self._check_open()
        thread = self._threads.get(thread_id)
        return [] if thread is None else thread.rows

    def _check_open(self) -> None:
        if self._closed:
            raise SaverClosedError("this InMemorySaver is closed")


def _checkpoint(thread_id: str, rows: list[_Row], index: int) -> Checkpoint:
    """Rebuild the checkpoint of ``rows[index]`` from its snapshot and the deltas after it."""
    row = rows[index]
    start = index
    while rows[start].step != row.snapshot_step:
        start -= 1
    state = rebuild((r.kind, r.state) for r in rows[start : index + 1])
    return Checkpoint(thread_id, row.step, state, decode(row.runtime), row.turn_key, row.created_at)


def _prune(thread: _Thread, keep: int) -> None:
    """Drop the rows (and committed markers) older than the snapshot the newest ``keep`` need."""
    rows = thread.rows
    if len(rows) <= keep:
        return
    boundary = rows[-keep].snapshot_step
    cut = 0
    while rows[cut].step < boundary:
        cut += 1
    if cut:
        del rows[:cut]
        committed = thread.committed
        for key, step in list(committed.items()):
            if step >= boundary:
                break
            del committed[key]


def __getattr__(name: str) -> object:
    if name == "SqliteSaver":
        module = importlib.import_module("techrevati.runtime._checkpoint_sqlite")
        return module.SqliteSaver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
