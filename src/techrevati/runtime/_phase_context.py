"""The facts about one phase that policy rules are checked against, and how they are read.

:class:`PhaseContext` is public as ``techrevati.runtime.policy_engine.PhaseContext``
(and from ``techrevati.runtime``). It lives here, with the parsers of its
facts (quality levels, failure classes, dollar amounts, role names), so that
:mod:`~techrevati.runtime.conditions` and
:mod:`~techrevati.runtime.policy_engine` can both read it without importing
each other.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, TypeVar

from techrevati.runtime._money import MoneyInput, _to_decimal
from techrevati.runtime._validate import enum_member, non_empty_str, strict_bool
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import AgentFailureClass
from techrevati.runtime.quality_gate import QualityLevel

_ZERO: Final = Decimal(0)

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True, init=False)
class PhaseContext:
    """The facts about one phase that rules are checked against; immutable.

    Role collections accept any iterable of names (a set, list, tuple) and are
    stored as ``frozenset``. ``failed_roles`` also accepts a mapping of role to
    :class:`~techrevati.runtime.events.AgentFailureClass` and is always stored
    as a read-only mapping (role to class, or ``None`` when no class was
    given). ``cost_usd`` accepts ``Decimal``, ``int``, ``str`` or ``float``
    (read through its ``repr``, so ``0.1`` is exactly ``Decimal("0.1")``) and
    must be finite and >= 0. Levels accept a
    :class:`~techrevati.runtime.quality_gate.QualityLevel`, its name or its
    number. ``failures`` counts failures by class; ``extra`` carries any other
    facts a custom condition needs.
    """

    phase: str
    quality_level: QualityLevel
    phase_completed: bool
    completed_roles: frozenset[str]
    all_roles: frozenset[str]
    failed_roles: Mapping[str, AgentFailureClass | None]
    retries_exhausted: bool
    timed_out: bool
    cost_usd: Decimal
    gate_required: QualityLevel | None
    failures: Mapping[AgentFailureClass, int]
    extra: Mapping[str, object]

    def __init__(
        self,
        phase: str,
        *,
        quality_level: QualityLevel | str | int = QualityLevel.MINIMAL,
        phase_completed: bool = False,
        completed_roles: Iterable[str] = frozenset(),
        all_roles: Iterable[str] = frozenset(),
        failed_roles: Iterable[str] | Mapping[str, AgentFailureClass | str | None] = frozenset(),
        retries_exhausted: bool = False,
        timed_out: bool = False,
        cost_usd: MoneyInput = _ZERO,
        gate_required: QualityLevel | str | int | None = None,
        failures: Mapping[AgentFailureClass, int] | Mapping[str, int] | None = None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        non_empty_str("phase", phase)
        setattr_ = object.__setattr__
        setattr_(self, "phase", phase)
        setattr_(self, "quality_level", parse_level(quality_level, "quality_level"))
        setattr_(self, "phase_completed", strict_bool("phase_completed", phase_completed))
        setattr_(
            self, "completed_roles", frozenset(_role_names(completed_roles, "completed_roles"))
        )
        setattr_(self, "all_roles", frozenset(_role_names(all_roles, "all_roles")))
        setattr_(self, "failed_roles", _failed_roles(failed_roles))
        setattr_(self, "retries_exhausted", strict_bool("retries_exhausted", retries_exhausted))
        setattr_(self, "timed_out", strict_bool("timed_out", timed_out))
        setattr_(self, "cost_usd", _to_decimal(cost_usd, "cost_usd"))
        setattr_(
            self,
            "gate_required",
            None if gate_required is None else parse_level(gate_required, "gate_required"),
        )
        setattr_(self, "failures", _failure_counts(failures))
        setattr_(self, "extra", frozen_str_map(extra, "extra"))

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (levels by name, cost as a decimal string)."""
        return {
            "phase": self.phase,
            "quality_level": self.quality_level.name,
            "phase_completed": self.phase_completed,
            "completed_roles": sorted(self.completed_roles),
            "all_roles": sorted(self.all_roles),
            "failed_roles": {
                role: None if cls is None else cls.value
                for role, cls in sorted(self.failed_roles.items())
            },
            "retries_exhausted": self.retries_exhausted,
            "timed_out": self.timed_out,
            "cost_usd": str(self.cost_usd),
            "gate_required": None if self.gate_required is None else self.gate_required.name,
            "failures": {cls.value: count for cls, count in self.failures.items()},
            "extra": dict(self.extra),
        }


class FrozenMap(Mapping[_K, _V]):
    """A read-only copy of a mapping that prints like a dict and hashes when its values do."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[_K, _V]) -> None:
        self._data = data

    def __getitem__(self, key: _K) -> _V:
        return self._data[key]

    def __iter__(self) -> Iterator[_K]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._data == other._data
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __repr__(self) -> str:
        return repr(self._data)


def frozen_str_map(value: object, name: str) -> Mapping[str, object]:
    """Copy a mapping with ``str`` keys into a :class:`FrozenMap` (``None`` is empty)."""
    if value is None:
        return FrozenMap({})
    if not isinstance(value, Mapping):
        raise InvalidValueError(f"{name} must be a mapping with str keys, got {value!r}")
    data: dict[str, object] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise InvalidValueError(f"{name} keys must be str, got {key!r}")
        data[key] = item
    return FrozenMap(data)


def parse_level(value: object, name: str) -> QualityLevel:
    """Read a :class:`QualityLevel`, its name or its number."""
    return enum_member(QualityLevel, value, "quality level", field=name)


def parse_failure_class(value: object, name: str) -> AgentFailureClass:
    """Read an :class:`AgentFailureClass` or its value (``"rate_limit"``, any case)."""
    return enum_member(AgentFailureClass, value, "failure class", field=name)


def _role_names(value: object, name: str) -> Iterator[str]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise InvalidValueError(
            f"{name} must be a collection of role names (a set or list), got {value!r}"
        )
    for role in value:
        if not isinstance(role, str) or not role:
            raise InvalidValueError(f"{name} must hold non-empty str role names, got {role!r}")
        yield role


def _failed_roles(value: object) -> Mapping[str, AgentFailureClass | None]:
    if isinstance(value, Mapping):
        result: dict[str, AgentFailureClass | None] = {}
        for role, cls in value.items():
            if not isinstance(role, str) or not role:
                raise InvalidValueError(
                    f"failed_roles must have non-empty str role names, got {role!r}"
                )
            result[role] = None if cls is None else parse_failure_class(cls, "failed_roles")
        return FrozenMap(result)
    return FrozenMap(dict.fromkeys(_role_names(value, "failed_roles")))


def _failure_counts(value: object) -> Mapping[AgentFailureClass, int]:
    if value is None:
        return FrozenMap({})
    if not isinstance(value, Mapping):
        raise InvalidValueError(
            f"failures must be a mapping of AgentFailureClass to count, got {value!r}"
        )
    counts: dict[AgentFailureClass, int] = {}
    for key, count in value.items():
        cls = parse_failure_class(key, "failures key")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidValueError(f"failures[{cls.value}] must be an int >= 0, got {count!r}")
        if cls in counts:
            raise InvalidValueError(f"failures names {cls.value} twice")
        counts[cls] = count
    return FrozenMap(counts)
