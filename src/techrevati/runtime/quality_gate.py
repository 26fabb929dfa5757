"""Quality levels and a gate that says whether work is good enough to advance.

Reach for :class:`QualityGate` when a phase may only advance once a reviewer
(human or model) has judged the work at or above a required level.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from techrevati.runtime._validate import enum_member

__all__ = ["QualityGate", "QualityGateOutcome", "QualityLevel"]


class QualityLevel(IntEnum):
    """Ordered quality bar: ``MINIMAL < STANDARD < STRICT < RELEASE``."""

    MINIMAL = 1
    STANDARD = 2
    STRICT = 3
    RELEASE = 4

    @classmethod
    def parse(cls, value: QualityLevel | str | int) -> QualityLevel:
        """Return the level for a member, its name (any case, trimmed) or its number.

        Raises :class:`~techrevati.runtime.errors.InvalidValueError` naming the value
        for anything else.
        """
        return enum_member(cls, value, "quality level")


@dataclass(frozen=True, slots=True)
class QualityGateOutcome:
    """The verdict of one :meth:`QualityGate.evaluate`.

    ``gap`` is how many levels ``observed`` falls short of ``required`` (0 when
    satisfied).
    """

    satisfied: bool
    required: QualityLevel
    observed: QualityLevel
    gap: int

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict with level names."""
        return {
            "satisfied": self.satisfied,
            "required": self.required.name,
            "observed": self.observed.name,
            "gap": self.gap,
        }


@dataclass(frozen=True, slots=True)
class QualityGate:
    """Require at least ``required``; :meth:`evaluate` compares an observed level."""

    required: QualityLevel

    def __post_init__(self) -> None:
        object.__setattr__(self, "required", QualityLevel.parse(self.required))

    def evaluate(self, observed: QualityLevel | str | int) -> QualityGateOutcome:
        """Judge ``observed`` (a level, its name or number) against the requirement."""
        level = QualityLevel.parse(observed)
        gap = max(0, int(self.required) - int(level))
        return QualityGateOutcome(
            satisfied=gap == 0, required=self.required, observed=level, gap=gap
        )
