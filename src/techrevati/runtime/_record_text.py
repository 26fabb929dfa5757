"""The text forms the durable sinks store: UTC ISO 8601 times, exact decimals, compact JSON.

Written once so that a SQLite row, a session row's ``to_dict`` and a JSONL
line agree on how a time, a cost or a ``data`` mapping reads.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal


def iso(value: datetime) -> str:
    """Fixed-width ISO 8601 in UTC, so text order is time order."""
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


def dumps(value: object) -> str:
    """Compact JSON that keeps non-ASCII text as is and writes unknown values with ``str``."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
