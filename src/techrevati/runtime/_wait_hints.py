"""The server's retry hints: ``x-should-retry``, ``retry-after(-ms)`` and Google's ``RetryInfo``.

Private to the classifier (:mod:`~techrevati.runtime._classify`) and the rate
limiter, which reads its ``x-ratelimit-*`` headers with :func:`_header_values`
and :func:`_headers_of`. Every reader here takes whatever an SDK put in its
exception (header mappings of any kind, dicts of JSON, protobuf messages) and
never raises.
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


def _get(data: object, key: str) -> object:
    """``data.get(key)`` for a mapping, None for anything else or on error."""
    if not (type(data) is dict or isinstance(data, Mapping)):
        return None
    try:
        return data.get(key)
    except Exception:
        return None


def _hint_headers(headers: object) -> tuple[str | None, str | None, str | None]:
    """Return ``x-should-retry``, ``retry-after-ms`` and ``retry-after``, case-insensitively."""
    should, millis, after = _header_values(headers, _HINT_TABLE)
    return should, millis, after


class _HeaderTable:
    """Lower-case header names and their slots, built once per set of names."""

    __slots__ = ("by_bytes", "by_name", "names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.by_name = {name: index for index, name in enumerate(names)}
        self.by_bytes = {name.encode(): index for index, name in enumerate(names)}


_HINT_TABLE: Final = _HeaderTable(("x-should-retry", "retry-after-ms", "retry-after"))


def _header_values(headers: object, table: _HeaderTable) -> tuple[str | None, ...]:
    """Return the values of ``table``'s headers (lower-case names), case-insensitively.

    Works on any header mapping: plain dicts (any key case), httpx/httpx2
    ``Headers`` (one pass over the public ``.raw`` list), requests'
    ``CaseInsensitiveDict``, ``http.client.HTTPMessage``. Never raises: a
    container that misbehaves gives ``None`` for every name.
    """
    names = table.names
    found: list[object] = [None] * len(names)
    try:
        if type(headers) is dict:
            for index, name in enumerate(names):
                found[index] = headers.get(name)
            if headers and all(value is None for value in found):
                _scan(headers.items(), found, table)
        else:
            raw = getattr(headers, "raw", None)
            if type(raw) is list:  # httpx and httpx2 Headers: [(bytes, bytes), ...]
                for key, value in raw:
                    slot = table.by_bytes.get(key.lower())
                    if slot is not None:
                        found[slot] = value
            else:
                get = getattr(headers, "get", None)
                if not callable(get):
                    return (None,) * len(names)
                for index, name in enumerate(names):
                    found[index] = get(name)
                if (
                    all(value is None for value in found)
                    and type(headers).__name__ not in _CI_HEADER_TYPES
                ):
                    items = getattr(headers, "items", None)
                    if callable(items):
                        _scan(items(), found, table)
    except Exception:  # a header container that misbehaves gives no hints
        return (None,) * len(names)
    return tuple(_header_text(value) for value in found)


def _headers_of(source: object) -> object:
    """Return the headers ``source`` carries, or None.

    ``source`` itself when it is a header container, else its ``.headers``,
    else its ``.response.headers`` (an SDK exception or response). Never raises.
    """
    if (
        type(source) is dict
        or isinstance(source, Mapping)
        or type(source).__name__ in _CI_HEADER_TYPES
    ):
        return source
    headers = _attr(source, "headers")
    if headers is None:
        headers = _attr(_attr(source, "response"), "headers")
    return headers


def _scan(items: Iterable[tuple[object, object]], found: list[object], table: _HeaderTable) -> None:
    for key, value in items:
        if isinstance(key, str):
            index = table.by_name.get(key.lower())
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
