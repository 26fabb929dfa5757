"""The text forms the durable sinks store: UTC ISO 8601 times, exact decimals, compact JSON.

Written once so that a SQLite row, a session row's ``to_dict`` and a JSONL
line agree on how a time, a cost or a ``data`` mapping reads; and how a value
that cannot be stored as given (a lone surrogate, a cycle, nesting without
end, a key JSON refuses, an int too big) is made storable: :func:`sanitised`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final


def iso(value: datetime) -> str:
    """Fixed-width ISO 8601 in UTC, so text order is time order."""
    if value.tzinfo is UTC:  # the common case: skip the conversion
        return value.isoformat(timespec="microseconds")
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def iso_or_none(value: datetime | None) -> str | None:
    """:func:`iso`, passing ``None`` through."""
    return None if value is None else iso(value)


def decimal_text(value: Decimal) -> str:
    """Return an exact decimal string without exponent (``0.0000001``, not ``1E-7``)."""
    return format(value, "f")


def decimal_text_or_none(value: Decimal | None) -> str | None:
    """:func:`decimal_text`, passing ``None`` through."""
    return None if value is None else decimal_text(value)


_ENCODER: Final = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def dumps(value: object) -> str:
    """Compact JSON that keeps non-ASCII text as is and writes unknown values with ``str``."""
    return _ENCODER.encode(value)


INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
CYCLE: Final = "<cycle>"
"""What a container that contains itself is stored as, where it recurs."""
DEPTH_LIMIT: Final = "<depth limit>"
"""What nesting deeper than :data:`MAX_DEPTH` is cut to."""
MAX_DEPTH: Final = 64
"""Containers a sanitised value keeps nested; deeper ones become :data:`DEPTH_LIMIT`."""
_MAX_DECIMAL_BITS: Final = 14_000  # ~4,200 digits: below int's default str-digits limit


def escaped(text: str) -> str:
    r"""Return ``text`` with each lone surrogate written as ``\udXXX`` text; valid UTF-8 as is."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_utf8(text: str) -> None:
    """Raise ``UnicodeEncodeError`` if ``text`` cannot be stored as UTF-8 (a lone surrogate)."""
    if not text.isascii():
        text.encode("utf-8")


def sanitised(value: object, notes: set[str], *, int64: bool = False) -> object:
    """Return a JSON-safe copy of ``value``, adding to ``notes`` a phrase per kind of change.

    Lone surrogates are escaped (:func:`escaped`); keys JSON cannot take are
    written with ``str``; a container inside itself becomes :data:`CYCLE`;
    nesting past :data:`MAX_DEPTH` becomes :data:`DEPTH_LIMIT`; an int too
    long for decimal text becomes hex text, and with ``int64`` one outside
    SQLite's 64-bit range becomes decimal text; other values become their
    ``str`` (as ``dumps`` writes them), or ``<unprintable T>`` if that raises.
    """
    return _Sanitiser(notes, int64=int64).clean(value, 0)


class _Sanitiser:
    __slots__ = ("int64", "notes", "open")

    def __init__(self, notes: set[str], *, int64: bool) -> None:
        self.notes = notes
        self.int64 = int64
        self.open: set[int] = set()  # ids of the containers on the path from the root

    def clean(self, value: object, depth: int) -> object:
        if value is None or isinstance(value, (bool, float)):
            return value
        if isinstance(value, int):
            return self.integer(value)
        if isinstance(value, str):
            return self.text(value)
        if not isinstance(value, (dict, list, tuple)):
            return self.text(self.printed(value))
        if depth >= MAX_DEPTH:
            self.notes.add("nesting cut at the depth limit")
            return DEPTH_LIMIT
        if id(value) in self.open:
            self.notes.add("cycle replaced")
            return CYCLE
        self.open.add(id(value))
        try:
            if isinstance(value, dict):
                return {self.key(k): self.clean(v, depth + 1) for k, v in value.items()}
            return [self.clean(item, depth + 1) for item in value]
        finally:
            self.open.discard(id(value))

    def integer(self, value: int) -> object:
        if self.int64 and not INT64_MIN <= value <= INT64_MAX:
            self.notes.add("int beyond 64 bits as text")
            return str(value) if value.bit_length() < _MAX_DECIMAL_BITS else hex(value)
        if value.bit_length() >= _MAX_DECIMAL_BITS:
            self.notes.add("int too long for decimal text as hex")
            return hex(value)
        return int(value)

    def text(self, value: str) -> str:
        clean = escaped(value)
        if clean != value:
            self.notes.add("lone surrogate escaped")
        return clean

    def key(self, key: object) -> str:
        if isinstance(key, str):
            return self.text(key)
        if key is None or isinstance(key, (bool, float)):
            return dumps(key)  # as JSON writes such a key: null, true, 1.5
        if isinstance(key, int):
            return str(self.integer(key))
        self.notes.add("non-str key as text")
        return self.text(self.printed(key))

    def printed(self, value: object) -> str:
        try:
            return str(value)
        except Exception:
            self.notes.add("unprintable value")
            return f"<unprintable {type(value).__name__}>"
