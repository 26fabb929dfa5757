"""How a checkpoint's caller state is stored: a snapshot, or only what was appended since.

Private: both savers of :mod:`techrevati.runtime.checkpoints` plan their
writes here and rebuild states here. A state is stored as one of three row
kinds: :data:`SNAPSHOT` (the whole state as JSON), :data:`LIST_DELTA` (a list
state that only grew: the appended items) and :data:`DICT_DELTA` (a dict with
the same keys in the same order: the items appended to each list value, and
every other value whole).

Whether a list grew is decided against the saver's *tip* of the thread, what
it remembers of the last state it wrote: the list's length and, with
``growth_check="prefix"``, its own decoded copy of the items (the new list's
first items must compare ``==`` to it), with ``"tail"`` only the last item
(the new list's item at that position must compare ``==``; items before it are
not looked at). A thread without a tip (the first write since the saver
opened, or one pushed out of the :data:`TIPS_KEPT` most recent) gets a
snapshot. So does a delta once the deltas since the last snapshot add up to
that snapshot's size (each counted as at least :data:`ROW_WEIGHT` bytes, the
chain at least :data:`MIN_CHAIN_BYTES`): a read then decodes at most about
twice the state's size, and the snapshots cost a put, amortised, about as
much as its delta.
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from techrevati.runtime.errors import InvalidValueError

__all__ = [
    "DICT_DELTA",
    "LIST_DELTA",
    "MIN_CHAIN_BYTES",
    "ROW_WEIGHT",
    "SNAPSHOT",
    "TIPS_KEPT",
    "GrowthCheck",
    "Tips",
    "Write",
    "decode",
    "encode_json",
    "rebuild",
]

GrowthCheck = Literal["prefix", "tail"]

SNAPSHOT: Final = 0
LIST_DELTA: Final = 1
DICT_DELTA: Final = 2

ROW_WEIGHT: Final = 256
"""Bytes a delta counts as at least, towards the next snapshot (a row costs a read too)."""
MIN_CHAIN_BYTES: Final = 4096
"""Deltas a small state may chain, in bytes, before its next snapshot."""
TIPS_KEPT: Final = 128
"""Threads whose tip a saver remembers; the least recently written one is forgotten first."""

_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_SHORT: Final = 120


def encode_json(what: str, value: object, whole: object) -> tuple[bytes, Any]:
    """Return ``value`` as UTF-8 JSON and JSON's decoded copy of it.

    Raise :class:`InvalidValueError` if JSON cannot hold ``value`` exactly (a
    tuple, a non-str key, NaN, a set, ...), naming the first such part of
    ``whole`` (the value the caller passed, of which ``value`` is a part).
    """
    try:
        text = _ENCODER.encode(value)
        copy = json.loads(text)
        same = copy == value  # not so for a tuple or a non-str key: JSON gives back another value
    except (TypeError, ValueError, RecursionError) as exc:
        raise _not_json(what, whole, exc) from exc
    if not same:
        raise _not_json(what, whole, None)
    return text.encode("utf-8", "surrogatepass"), copy


def decode(blob: bytes) -> Any:
    """Return the JSON value ``blob`` holds."""
    return json.loads(blob.decode("utf-8", "surrogatepass"))


def rebuild(rows: Iterable[tuple[int, bytes]]) -> Any:
    """Return the state that a snapshot row and the delta rows after it add up to."""
    state: Any = None
    for kind, blob in rows:
        value = decode(blob)
        if kind == SNAPSHOT:
            state = value
        elif kind == LIST_DELTA:
            state.extend(value)
        else:
            appends, sets = value
            for key, items in appends.items():
                state[key].extend(items)
            state.update(sets)
    return state


@dataclass(slots=True)
class _Track:
    """What a tip remembers of one list: its length, and all its items or only the last."""

    length: int
    items: list[Any]

    def grown(self, new: list[Any], tail_only: bool) -> bool:
        n = self.length
        if len(new) < n:
            return False
        if n == 0:
            return True
        if new[n - 1] != self.items[-1]:
            return False
        return tail_only or new[:n] == self.items

    def extend(self, items: list[Any], tail_only: bool) -> None:
        if not items:
            return
        self.length += len(items)
        if tail_only:
            self.items = items[-1:]
        else:
            self.items.extend(items)


def _track(value: object, tail_only: bool) -> _Track | None:
    if not isinstance(value, list):
        return None
    return _Track(len(value), value[-1:] if tail_only else value)


@dataclass(slots=True)
class _Tip:
    """What a saver remembers of a thread's last written state."""

    step: int
    turn_key: str
    whole: _Track | None  # a list state
    keys: list[str] | None  # a dict state: its keys in order ...
    values: dict[str, _Track | None]  # ... and a track for each list value
    snapshot_bytes: int
    chain_bytes: int


@dataclass(frozen=True, slots=True)
class Write:
    """One planned checkpoint row: what to store, and how the tip moves once it is stored."""

    thread_id: str
    step: int
    turn_key: str
    kind: int
    state: bytes
    runtime: bytes
    base: tuple[int, str] | None  # the (step, turn_key) a delta applies to; None for a snapshot
    decoded: Any  # JSON's copy of the snapshot or of the delta: the saver's own, to keep


class Tips:
    """The saver's tips, most recently written last; plans each write against its thread's tip."""

    __slots__ = ("_lock", "_tail_only", "_tips")

    def __init__(self, growth_check: GrowthCheck) -> None:
        if growth_check not in ("prefix", "tail"):
            raise InvalidValueError(
                f"growth_check must be 'prefix' or 'tail', got {growth_check!r}"
            )
        self._tail_only = growth_check == "tail"
        self._tips: OrderedDict[str, _Tip] = OrderedDict()
        self._lock = threading.Lock()

    def plan(
        self,
        thread_id: str,
        step: int,
        caller_state: object,
        runtime_state: Mapping[str, object],
        turn_key: str,
        *,
        snapshot: bool,
    ) -> Write:
        """Encode the checkpoint: a delta on the thread's tip if it only grew, else a snapshot."""
        what = f"caller_state of thread {thread_id!r}"
        runtime, _ = encode_json(
            f"runtime_state of thread {thread_id!r}", dict(runtime_state), runtime_state
        )
        with self._lock:
            tip = None if snapshot else self._tips.get(thread_id)
            if tip is not None:
                kind, delta = self._delta(tip, caller_state)
                if kind != SNAPSHOT:
                    blob, decoded = encode_json(what, delta, caller_state)
                    budget = max(tip.snapshot_bytes, MIN_CHAIN_BYTES)
                    if tip.chain_bytes + max(len(blob), ROW_WEIGHT) <= budget:
                        base = (tip.step, tip.turn_key)
                        return Write(thread_id, step, turn_key, kind, blob, runtime, base, decoded)
        blob, decoded = encode_json(what, caller_state, caller_state)
        return Write(thread_id, step, turn_key, SNAPSHOT, blob, runtime, None, decoded)

    def advance(self, write: Write) -> None:
        """Move the thread's tip past ``write``, which the saver has just stored."""
        with self._lock:
            tips = self._tips
            if write.kind == SNAPSHOT:
                tips[write.thread_id] = self._snapshot_tip(write)
                tips.move_to_end(write.thread_id)
                if len(tips) > TIPS_KEPT:
                    tips.popitem(last=False)
                return
            tip = tips.get(write.thread_id)
            if tip is None or (tip.step, tip.turn_key) != write.base:
                tips.pop(write.thread_id, None)  # out of step: the next write is a snapshot
                return
            self._apply(tip, write)
            tips.move_to_end(write.thread_id)

    def forget(self, thread_id: str) -> None:
        """Drop the thread's tip: its next write is a snapshot."""
        with self._lock:
            self._tips.pop(thread_id, None)

    def _delta(self, tip: _Tip, state: object) -> tuple[int, object]:
        tail_only = self._tail_only
        if tip.whole is not None:
            if isinstance(state, list) and tip.whole.grown(state, tail_only):
                return LIST_DELTA, state[tip.whole.length :]
            return SNAPSHOT, None
        if tip.keys is None or not isinstance(state, dict) or list(state) != tip.keys:
            return SNAPSHOT, None
        appends: dict[str, object] = {}
        sets: dict[str, object] = {}
        for key, value in state.items():
            track = tip.values[key]
            if track is not None and isinstance(value, list) and track.grown(value, tail_only):
                if len(value) > track.length:
                    appends[key] = value[track.length :]
            else:
                sets[key] = value
        return DICT_DELTA, [appends, sets]

    def _snapshot_tip(self, write: Write) -> _Tip:
        state, tail_only = write.decoded, self._tail_only
        whole = keys = None
        values: dict[str, _Track | None] = {}
        if isinstance(state, list):
            whole = _track(state, tail_only)
        elif isinstance(state, dict):
            keys = list(state)
            values = {key: _track(value, tail_only) for key, value in state.items()}
        return _Tip(write.step, write.turn_key, whole, keys, values, len(write.state), 0)

    def _apply(self, tip: _Tip, write: Write) -> None:
        tail_only = self._tail_only
        if write.kind == LIST_DELTA:
            assert tip.whole is not None
            tip.whole.extend(write.decoded, tail_only)
        else:
            appends, sets = write.decoded
            for key, items in appends.items():
                track = tip.values[key]
                assert track is not None
                track.extend(items, tail_only)
            for key, value in sets.items():
                tip.values[key] = _track(value, tail_only)
        tip.step, tip.turn_key = write.step, write.turn_key
        tip.chain_bytes += max(len(write.state), ROW_WEIGHT)


def _not_json(what: str, whole: object, exc: BaseException | None) -> InvalidValueError:
    """Name the first part of ``whole`` that JSON cannot hold exactly."""
    if isinstance(exc, RecursionError):
        return InvalidValueError(f"{what} nests too deep to store as JSON")
    found = _first_problem(whole, what.split(" ", 1)[0])
    if found is None:  # a cycle, or an object whose == disagrees with its JSON
        detail = f" ({exc})" if exc is not None else ""
        return InvalidValueError(f"{what} cannot be stored as JSON{detail}: {_short(whole)}")
    path, problem = found
    return InvalidValueError(f"{what} is not a JSON value: {path} is {problem}")


def _first_problem(value: object, root: str) -> tuple[str, str] | None:
    """Return the path and a description of the first non-JSON part of ``value``, depth first."""
    stack: list[tuple[str, object]] = [(root, value)]
    seen: set[int] = set()
    while stack:
        path, item = stack.pop()
        problem = _problem(item)
        if problem is not None:
            return path, problem
        if isinstance(item, dict | list) and id(item) not in seen:
            seen.add(id(item))
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend(reversed([(f"{path}[{key!r}]", sub) for key, sub in pairs]))
    return None


def _problem(item: object) -> str | None:
    if item is None or isinstance(item, str | int):  # bool is an int
        return None
    if isinstance(item, float):
        return None if math.isfinite(item) else f"{item!r} (JSON has no NaN or infinity)"
    if isinstance(item, list):
        return None
    if isinstance(item, dict):
        for key in item:
            if not isinstance(key, str):
                return (
                    f"a dict with the {type(key).__name__} key {key!r} "
                    "(JSON keys are str; it would come back as a str)"
                )
        return None
    if isinstance(item, tuple):
        return f"a tuple {_short(item)} (JSON would give it back as a list: pass a list)"
    return f"{type(item).__name__} {_short(item)}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHORT else text[: _SHORT - 3] + "..."
