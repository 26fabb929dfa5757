"""Injectable time sources shared by the time-dependent primitives."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

__all__ = ["Clock", "WallClock", "monotonic", "utc_now"]

Clock = Callable[[], float]
"""A zero-argument callable returning seconds as a float (``time.monotonic``)."""

WallClock = Callable[[], datetime]
"""A zero-argument callable returning an aware UTC ``datetime``."""

monotonic: Final[Clock] = time.monotonic


def utc_now() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)
