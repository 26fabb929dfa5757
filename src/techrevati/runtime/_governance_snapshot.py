"""Read a governance meter's snapshot back, refusing anything it would not have written.

Private to :mod:`~techrevati.runtime.governance`: :meth:`GovernanceMeter.restore`
and the policy-engine conditions (which accept a snapshot in
``ctx.extra["governance"]``) both read through :func:`read_snapshot`. A
checkpoint may come from disk, so every field is checked and named when bad.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Final, NamedTuple

from techrevati.runtime._money import _USD_POWER, _scaled, _to_decimal
from techrevati.runtime._permission_names import normalize_permission_name
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.governance import (
    SNAPSHOT_VERSION,
    Figure,
    GovernanceBreachedError,
    GovernanceLimit,
)

__all__ = ["Snapshot", "read_snapshot"]

_KEYS: Final = frozenset(
    {
        "version",
        "limits",
        "turns",
        "cost_usd",
        "consecutive_failures",
        "tool_calls",
        "tool_calls_by_name",
        "started",
        "elapsed_seconds",
        "breaches",
    }
)
_BREACH_KEYS: Final = frozenset({"limit", "maximum", "value", "refused", "tool"})
_MAX_BREACHES: Final = 4096


class Snapshot(NamedTuple):
    """A snapshot's figures, checked; ``femto`` is the cost in 1e-15 USD."""

    limits: Mapping[str, object]
    turns: int
    femto: int
    failures: int
    tools: int
    names: dict[str, int]
    started: float
    elapsed: float
    breaches: tuple[GovernanceBreachedError, ...]


def read_snapshot(data: object, where: str = "snapshot") -> Snapshot:
    """Check what :meth:`GovernanceMeter.snapshot` wrote and return its figures."""
    if not isinstance(data, Mapping):
        raise InvalidValueError(f"{where} must be a mapping, got {data!r}")
    keys = set(data)
    if keys != _KEYS:
        missing, unknown = sorted(_KEYS - keys), sorted(map(str, keys - _KEYS))
        raise InvalidValueError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    if data["version"] != SNAPSHOT_VERSION or isinstance(data["version"], bool):
        raise InvalidValueError(
            f"{where}: version must be {SNAPSHOT_VERSION}, got {data['version']!r}"
        )
    limits = data["limits"]
    if not isinstance(limits, Mapping):
        raise InvalidValueError(f"{where}: limits must be a mapping, got {limits!r}")
    turns = _count(data, "turns", where)
    failures = _count(data, "consecutive_failures", where)
    tools = _count(data, "tool_calls", where)
    names = _names(data["tool_calls_by_name"], tools, where)
    cost = _to_decimal(data["cost_usd"], f"{where}: cost_usd")
    femto = _scaled(cost, _USD_POWER, f"{where}: cost_usd", "1e-15 USD")
    started = _seconds(data, "started", where, signed=True)
    elapsed = _seconds(data, "elapsed_seconds", where, signed=False)
    breaches = _breaches(data["breaches"], where)
    return Snapshot(limits, turns, femto, failures, tools, names, started, elapsed, breaches)


def _count(data: Mapping[str, object], key: str, where: str) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidValueError(f"{where}: {key} must be an int >= 0, got {value!r}")
    return value


def _seconds(data: Mapping[str, object], key: str, where: str, *, signed: bool) -> float:
    value = data[key]
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or (not signed and value < 0)
    ):
        bound = "a finite number" if signed else "a finite number >= 0"
        raise InvalidValueError(f"{where}: {key} must be {bound}, got {value!r}")
    return float(value)


def _names(value: object, tools: int, where: str) -> dict[str, int]:
    if not isinstance(value, Mapping):
        raise InvalidValueError(f"{where}: tool_calls_by_name must be a mapping, got {value!r}")
    names: dict[str, int] = {}
    total = 0
    for name, count in value.items():
        if not isinstance(name, str) or not name or normalize_permission_name(name) != name:
            raise InvalidValueError(
                f"{where}: tool_calls_by_name keys must be normalised tool names, got {name!r}"
            )
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidValueError(
                f"{where}: tool_calls_by_name[{name!r}] must be an int >= 1, got {count!r}"
            )
        names[name] = count
        total += count
    if total > tools:
        raise InvalidValueError(
            f"{where}: tool_calls_by_name adds up to {total}, more than tool_calls ({tools})"
        )
    return names


def _breaches(value: object, where: str) -> tuple[GovernanceBreachedError, ...]:
    if not isinstance(value, list) or len(value) > _MAX_BREACHES:
        raise InvalidValueError(
            f"{where}: breaches must be a list of at most {_MAX_BREACHES}, got {value!r}"
        )
    return tuple(_breach(row, f"{where}: breaches[{index}]") for index, row in enumerate(value))


def _breach(row: object, where: str) -> GovernanceBreachedError:
    if not isinstance(row, Mapping) or set(row) != _BREACH_KEYS:
        raise InvalidValueError(f"{where} must have the keys {sorted(_BREACH_KEYS)}, got {row!r}")
    try:
        limit = GovernanceLimit(row["limit"])
    except ValueError:
        raise InvalidValueError(f"{where}: unknown limit {row['limit']!r}") from None
    refused, tool = row["refused"], row["tool"]
    if refused not in ("turn", "tool"):
        raise InvalidValueError(f"{where}: refused must be 'turn' or 'tool', got {refused!r}")
    if not isinstance(tool, str):
        raise InvalidValueError(f"{where}: tool must be a str, got {tool!r}")
    maximum = _figure(limit, row["maximum"], f"{where}: maximum")
    figure = _figure(limit, row["value"], f"{where}: value")
    return GovernanceBreachedError(limit, maximum, figure, refused=str(refused), tool=tool)


def _figure(limit: GovernanceLimit, value: object, where: str) -> Figure:
    if limit is GovernanceLimit.COST:
        return Decimal(_to_decimal(value, where))
    if limit is GovernanceLimit.WALL_TIME:
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value < 0
        ):
            raise InvalidValueError(f"{where} must be a finite number >= 0, got {value!r}")
        return float(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidValueError(f"{where} must be an int >= 0, got {value!r}")
    return value
