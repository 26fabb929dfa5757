"""What a circuit breaker is built from: the sliding-window settings and the checks of each value.

Private to :mod:`~techrevati.runtime.circuit_breaker`, which exports
:class:`SlidingWindow`. The checks here are the breaker's own (finite
seconds, a share of calls, exception types); the general ones are in
:mod:`~techrevati.runtime._validate`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from techrevati.runtime._validate import int_at_least, non_negative_number
from techrevati.runtime.errors import InvalidValueError

__all__ = ["SlidingWindow", "_exception_types", "_rate"]


@dataclass(frozen=True, slots=True)
class SlidingWindow:
    """Trip on a failure (or slow-call) rate over recent calls instead of a streak.

    ``kind="count"`` looks at the last ``size`` calls; ``kind="time"`` at the
    calls that finished in the last ``size`` seconds (one-second buckets). The
    breaker opens once the window holds at least ``minimum_calls`` calls and
    the failure rate reaches ``failure_rate_threshold`` or the share of calls
    that took at least ``slow_call_duration_seconds`` reaches
    ``slow_call_rate_threshold``. Ignored calls are not in the window.
    """

    kind: Literal["count", "time"] = "count"
    size: int = 100
    failure_rate_threshold: float = 0.5
    minimum_calls: int = 10
    slow_call_duration_seconds: float | None = None
    slow_call_rate_threshold: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("count", "time"):
            raise InvalidValueError(f"kind must be 'count' or 'time', got {self.kind!r}")
        int_at_least("size", self.size, 1)
        _rate("failure_rate_threshold", self.failure_rate_threshold)
        int_at_least("minimum_calls", self.minimum_calls, 1)
        if self.kind == "count" and self.minimum_calls > self.size:
            raise InvalidValueError(
                f"minimum_calls must be <= size for a count window (it could never trip), "
                f"got minimum_calls={self.minimum_calls!r} with size={self.size!r}"
            )
        if self.slow_call_duration_seconds is not None:
            non_negative_number(
                "slow_call_duration_seconds", self.slow_call_duration_seconds, above_zero=True
            )
        _rate("slow_call_rate_threshold", self.slow_call_rate_threshold)


SlidingWindow.__module__ = "techrevati.runtime.circuit_breaker"


def _rate(name: str, value: object) -> float:
    """Return ``value`` if it is a share of calls: a number in (0, 1]."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 < value <= 1
    ):
        raise InvalidValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _exception_types(
    exclude: Iterable[type[BaseException]] | type[BaseException],
) -> tuple[type[BaseException], ...]:
    """Return ``exclude`` (one exception type, or an iterable of them) as a tuple of types."""
    items = (exclude,) if isinstance(exclude, type) else exclude
    try:
        types = tuple(items)
    except TypeError:
        raise InvalidValueError(f"exclude must be exception types, got {exclude!r}") from None
    for item in types:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise InvalidValueError(f"exclude must hold exception types, got {item!r}")
    return types
