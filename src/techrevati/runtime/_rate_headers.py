"""What a provider's rate-limit headers say is left: OpenAI's and Anthropic's, and retry-after.

Private to :mod:`~techrevati.runtime.rate_limit`. :func:`read_caps` turns
any header container (or an SDK exception or response carrying one) into
``(dimension, remaining, seconds until reset)`` triples; each header is
parsed once here, and a malformed one is skipped, never raised.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Final

from techrevati.runtime._wait_hints import (
    _header_values,
    _header_wait,
    _headers_of,
    _HeaderTable,
    _number,
)

__all__ = ["Cap", "duration_seconds", "read_caps"]

Cap = tuple[int, int, float]
"""(dimension index into ``DIMENSIONS``, remaining, seconds until it resets)."""

# (dimension, remaining header, reset header, the reset's form)
_PAIRS: Final = (
    (0, "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests", "duration"),
    (1, "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens", "duration"),
    (0, "anthropic-ratelimit-requests-remaining", "anthropic-ratelimit-requests-reset", "time"),
    (1, "anthropic-ratelimit-tokens-remaining", "anthropic-ratelimit-tokens-reset", "time"),
    (
        2,
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-input-tokens-reset",
        "time",
    ),
    (
        3,
        "anthropic-ratelimit-output-tokens-remaining",
        "anthropic-ratelimit-output-tokens-reset",
        "time",
    ),
)
_TABLE: Final = _HeaderTable(
    (
        *(name for pair in _PAIRS for name in pair[1:3]),
        "retry-after-ms",
        "retry-after",
    )
)
_COUNT: Final = re.compile(r"[0-9]{1,18}")
_DURATION: Final = re.compile(r"(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:h|ms|m|s|us|µs|ns))+")
_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(h|ms|m|s|us|µs|ns)")
_UNIT: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def read_caps(source: object, wall_now: Callable[[], datetime]) -> list[Cap]:
    """Return what ``source``'s headers say is left of each limit, and for how long.

    ``source`` is a header container (a dict, ``httpx.Headers``, ...) or an
    object carrying one (``.headers``, ``.response.headers``: an SDK
    exception or raw response). A remaining count counts only with a reset
    that parses and lies ahead. ``retry-after(-ms)`` means no request is
    left for that long. ``wall_now`` is called only for Anthropic's times
    and HTTP dates. Never raises.
    """
    headers = _headers_of(source)
    if headers is None:
        return []
    values = _header_values(headers, _TABLE)
    caps: list[Cap] = []
    for index, (dimension, _, _, form) in enumerate(_PAIRS):
        remaining, reset = values[2 * index], values[2 * index + 1]
        if remaining is None or reset is None:
            continue
        count = remaining.strip()
        if _COUNT.fullmatch(count) is None:
            continue
        seconds = duration_seconds(reset) if form == "duration" else _until(reset, wall_now)
        if seconds is not None and seconds > 0:
            caps.append((dimension, int(count), seconds))
    wait = _header_wait(values[-2], values[-1], lambda: _timestamp(wall_now))
    if wait is not None and wait > 0:
        caps.append((0, 0, wait))
    return caps


def duration_seconds(text: str) -> float | None:
    """Seconds of an OpenAI reset such as ``6m0s``, ``1s``, ``20ms``, ``1m30.5s`` or ``2.5``.

    None for anything else (a sign, a space inside, an unknown unit, inf).
    """
    text = text.strip()
    if _DURATION.fullmatch(text) is None:
        return _number(text) if text else None
    seconds = sum(float(amount) * _UNIT[unit] for amount, unit in _PART.findall(text))
    return seconds if seconds < float("inf") else None


def _until(text: str, wall_now: Callable[[], datetime]) -> float | None:
    """Seconds from now to an RFC 3339 time (``2025-01-01T00:00:30Z``); None if malformed."""
    try:
        when = datetime.fromisoformat(text.strip())
        if when.tzinfo is None:
            return None
        return (when - wall_now()).total_seconds()
    except (ValueError, TypeError, OverflowError):
        return None


def _timestamp(wall_now: Callable[[], datetime]) -> float:
    return wall_now().timestamp()
