"""Argument checks written once, with one message format naming the argument and the value.

Each raises :class:`~techrevati.runtime.errors.InvalidValueError` at once
(never a raw ``TypeError`` later) and returns the value, so a constructor
can check and store in one line.
"""

from __future__ import annotations

import _thread
import math
from enum import Enum
from typing import Final, TypeVar

from techrevati.runtime.errors import InvalidValueError

__all__ = [
    "MAX_SECONDS",
    "callable_or_none",
    "enum_member",
    "instance_or_none",
    "int_at_least",
    "non_empty_str",
    "non_negative_number",
    "optional_int_at_least",
    "required_callable",
    "seconds_or_none",
    "strict_bool",
]

_T = TypeVar("_T")
_E = TypeVar("_E", bound=Enum)

MAX_SECONDS: Final = float(_thread.TIMEOUT_MAX)
"""The longest wait the platform's locks and events accept."""


def non_empty_str(name: str, value: object) -> str:
    """Return ``value`` if it is a str with a non-blank character."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidValueError(f"{name} must be a non-empty str, got {value!r}")
    return value


def strict_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is exactly ``True`` or ``False`` (not ``"no"``, not ``0``)."""
    if not isinstance(value, bool):
        raise InvalidValueError(f"{name} must be a bool, got {value!r}")
    return value


def int_at_least(name: str, value: object, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) >= ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def optional_int_at_least(name: str, value: object, minimum: int) -> int | None:
    """Return ``value`` if it is ``None`` or an int (not a bool) >= ``minimum``."""
    if value is not None and (
        not isinstance(value, int) or isinstance(value, bool) or value < minimum
    ):
        raise InvalidValueError(f"{name} must be None or an int >= {minimum}, got {value!r}")
    return value


def non_negative_number(
    name: str, value: object, *, above_zero: bool = False, finite: bool = True
) -> float:
    """Return ``value`` as a float if it is a number >= 0 (> 0 if ``above_zero``).

    NaN and bools are refused; infinity only when ``finite`` is False.
    """
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or math.isnan(value)
        or (finite and math.isinf(value))
        or value < 0
        or (above_zero and value == 0)
    ):
        kind = "a finite number" if finite else "a number"
        bound = "> 0" if above_zero else ">= 0"
        allowed = "" if finite else " (inf allowed)"
        raise InvalidValueError(f"{name} must be {kind} {bound}{allowed}, got {value!r}")
    return float(value)


def seconds_or_none(name: str, value: object) -> float | None:
    """Return ``value`` as float seconds: ``None``, or a finite number > 0 a lock can wait."""
    if value is None:
        return None
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 < value <= MAX_SECONDS
    ):
        raise InvalidValueError(
            f"{name} must be None or a number of seconds > 0 and <= {MAX_SECONDS:g}, got {value!r}"
        )
    return float(value)


def required_callable(name: str, value: _T) -> _T:
    """Return ``value`` if it is callable."""
    if not callable(value):
        raise InvalidValueError(f"{name} must be callable, got {value!r}")
    return value


def callable_or_none(name: str, value: _T) -> _T:
    """Return ``value`` if it is ``None`` or callable."""
    if value is not None and not callable(value):
        raise InvalidValueError(f"{name} must be callable or None, got {value!r}")
    return value


def instance_or_none(name: str, value: _T, kind: type | tuple[type, ...]) -> _T:
    """Return ``value`` if it is ``None`` or an instance of ``kind``."""
    if value is not None and not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise InvalidValueError(f"{name} must be a {names} or None, got {value!r}")
    return value


def enum_member(kind: type[_E], value: object, what: str, *, field: str | None = None) -> _E:
    """Return the member of ``kind`` that ``value`` is, names or numbers.

    Accepted: a member; a member's name in any case, trimmed, with ``-`` for
    ``_``; a str member's value in any case; an int member's number (not a
    bool). Anything else raises, listing every valid name:
    ``unknown {what} 'x'; expected one of ...`` (prefixed by ``field:`` if given).
    """
    if isinstance(value, kind):
        return value
    member: _E | None = None
    if isinstance(value, str):
        key = value.strip()
        member = kind.__members__.get(key.upper().replace("-", "_"))
        if member is None:
            member = _by_value(kind, key.lower())
    elif isinstance(value, int) and not isinstance(value, bool):
        member = _by_value(kind, value)
    if member is not None:
        return member
    names = ", ".join(str(m.value) if isinstance(m, str) else m.name for m in kind)
    prefix = f"{field}: " if field else ""
    raise InvalidValueError(f"{prefix}unknown {what} {value!r}; expected one of {names}")


def _by_value(kind: type[_E], value: object) -> _E | None:
    try:
        return kind(value)
    except ValueError:
        return None
