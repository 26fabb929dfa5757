"""The server's retry hints: ``x-should-retry``, ``retry-after(-ms)`` and Google's ``RetryInfo``.

Private to the classifier (:mod:`~techrevati.runtime._classify`). Every
reader here takes whatever an SDK put in its exception (header mappings of
any kind, dicts of JSON, protobuf messages) and never raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, timedelta
from typing import Final

from techrevati.runtime._sdk import safe_getattr as _attr

_RETRY_DELAY: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)s\s*$")
_RETRY_INFO_TYPE: Final = "google.rpc.RetryInfo"
# Header containers whose .get is already case-insensitive (no key scan needed).
_CI_HEADER_TYPES: Final = frozenset(
    {"Headers", "CaseInsensitiveDict", "HTTPMessage", "Message", "CIMultiDict", "CIMultiDictProxy"}
)
_HINT_HEADERS: Final = ("x-should-retry", "retry-after-ms", "retry-after")
_HINT_HEADER_INDEX: Final = {name: index for index, name in enumerate(_HINT_HEADERS)}
_HINT_HEADER_BYTES: Final = {name.encode(): index for index, name in enumerate(_HINT_HEADERS)}
_NOTHING: Final[list[object]] = [None, None, None]


def _get(data: object, key: str) -> object:
    """``data.get(key)`` for a mapping, None for anything else or on error."""
    if not (type(data) is dict or isinstance(data, Mapping)):
        return None
    try:
        return data.get(key)
    except Exception:
        return None


def _hint_headers(headers: object) -> tuple[str | None, str | None, str | None]:
    """Return ``x-should-retry``, ``retry-after-ms`` and ``retry-after``, case-insensitively.

    Works on any header mapping: plain dicts (any key case), httpx/httpx2
    ``Headers`` (one pass over the public ``.raw`` list), requests'
    ``CaseInsensitiveDict``, ``http.client.HTTPMessage``. Never raises.
    """
    found: list[object] = [None, None, None]
    try:
        if type(headers) is dict:
            for index, name in enumerate(_HINT_HEADERS):
                found[index] = headers.get(name)
            if found == _NOTHING and headers:
                _scan(headers.items(), found)
        else:
            raw = getattr(headers, "raw", None)
            if type(raw) is list:  # httpx and httpx2 Headers: [(bytes, bytes), ...]
                for key, value in raw:
                    slot = _HINT_HEADER_BYTES.get(key.lower())
                    if slot is not None:
                        found[slot] = value
            else:
                get = getattr(headers, "get", None)
                if not callable(get):
                    return None, None, None
                for index, name in enumerate(_HINT_HEADERS):
                    found[index] = get(name)
                if found == _NOTHING and type(headers).__name__ not in _CI_HEADER_TYPES:
                    items = getattr(headers, "items", None)
                    if callable(items):
                        _scan(items(), found)
    except Exception:  # a header container that misbehaves gives no hints
        return None, None, None
    return _header_text(found[0]), _header_text(found[1]), _header_text(found[2])


def _scan(items: Iterable[tuple[object, object]], found: list[object]) -> None:
    for key, value in items:
        if isinstance(key, str):
            index = _HINT_HEADER_INDEX.get(key.lower())
            if index is not None:
                found[index] = value


def _header_text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


def _header_wait(millis: str | None, after: str | None, clock: Callable[[], float]) -> float | None:
    """Seconds from ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP date).

    As in the openai and anthropic SDKs, the first header that parses decides,
    and a zero wait is no hint at all (None: back off as usual), never a retry
    at once in a tight loop.
    """
    if millis is not None:
        value = _number(millis)
        if value is not None:
            return value / 1000.0 or None
    if after is None:
        return None
    seconds = _number(after)
    if seconds is not None:
        return seconds or None
    from email.utils import parsedate_to_datetime  # noqa: PLC0415 (rare: keep imports light)

    try:
        when = parsedate_to_datetime(after.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        delta = when.timestamp() - float(clock())
    except (OverflowError, ValueError, TypeError):
        return None
    return max(0.0, delta) if math.isfinite(delta) else None


def _number(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _detail_items(details: object) -> list[object] | tuple[object, ...]:
    """Google's detail list: api-core's ``.details``, or ``error.details`` of genai's JSON."""
    if details is None:
        return ()
    if isinstance(details, Mapping):
        error = _get(details, "error")
        details = _get(error if isinstance(error, Mapping) else details, "details")
    return details[:16] if isinstance(details, list | tuple) else ()


def _retry_info(details: object) -> float | None:
    """Google's ``RetryInfo.retryDelay`` in api-core ``.details`` or genai's response JSON.

    A zero delay is no hint (None), as for ``retry-after``.
    """
    for item in _detail_items(details):
        if isinstance(item, Mapping):
            kind = _get(item, "@type")
            if isinstance(kind, str) and kind.endswith(_RETRY_INFO_TYPE):
                delay = _get(item, "retryDelay")
                if isinstance(delay, str):
                    match = _RETRY_DELAY.match(delay)
                    if match is not None:
                        return float(match.group(1)) or None
                elif isinstance(delay, int | float) and not isinstance(delay, bool):
                    ok = math.isfinite(delay) and delay > 0
                    return float(delay) if ok else None
        elif type(item).__name__ == "RetryInfo":
            seconds = _duration(_attr(item, "retry_delay"))
            if seconds is not None:
                return seconds or None
    return None


def _duration(value: object) -> float | None:
    """Seconds of a ``timedelta`` or a protobuf ``Duration`` (``seconds`` + ``nanos``)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        whole = _attr(value, "seconds")
        nanos = _attr(value, "nanos")
        if type(whole) is not int:
            return None
        seconds = whole + (nanos / 1e9 if type(nanos) is int else 0.0)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
