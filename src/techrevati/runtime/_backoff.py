"""Backoff: how long to wait before a retry, and whether a server's wait hint is acceptable.

Private to :mod:`~techrevati.runtime.retry_policy`, which re-exports the
public names.
"""

from __future__ import annotations

import random
from typing import Final, Literal

from techrevati.runtime._validate import int_at_least, non_negative_number
from techrevati.runtime.errors import InvalidValueError, RetryAfterTooLongError

__all__ = ["DEFAULT_MAX_RETRY_AFTER", "Jitter", "accepts_retry_after", "backoff_delay"]


Jitter = Literal["full", "equal", "decorrelated", "none"]
"""How :func:`backoff_delay` randomises the exponential delay."""


DEFAULT_MAX_RETRY_AFTER: Final = 60.0
"""Longest server wait hint (seconds) accepted before escalating instead of sleeping."""


_JITTERS: Final = frozenset({"full", "equal", "decorrelated", "none"})


_MAX_EXPONENT: Final = 64


def accepts_retry_after(
    retry_after: float | None, *, max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
) -> bool:
    """Whether a server hint can be honoured: none at all, or at most ``max_retry_after``."""
    non_negative_number("max_retry_after", max_retry_after, finite=False)
    if retry_after is None:
        return True
    non_negative_number("retry_after", retry_after)
    return retry_after <= max_retry_after


def backoff_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 30.0,
    jitter: Jitter = "full",
    rng: random.Random | None = None,
    retry_after: float | None = None,
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
    previous: float | None = None,
) -> float:
    """Seconds to wait before retry ``attempt`` (1-based).

    The exponential delay is ``min(cap, base * 2**(attempt - 1))``, jittered:
    ``"full"`` draws from ``[0, d]``, ``"equal"`` from ``[d/2, d]``,
    ``"none"`` returns ``d``, and ``"decorrelated"`` draws from
    ``[base, 3 * previous]`` capped at ``cap`` (``previous`` defaults to
    ``base``). A server hint ``retry_after`` takes precedence and is returned
    as is, up to ``max_retry_after``; a longer one raises
    :class:`RetryAfterTooLongError` (check first with
    :func:`accepts_retry_after`) rather than sleeping for an hour.
    """
    int_at_least("attempt", attempt, 1)
    _check_backoff(base, cap, jitter, "base", "cap")
    non_negative_number("max_retry_after", max_retry_after, finite=False)
    if rng is not None and not isinstance(rng, random.Random):
        raise InvalidValueError(f"rng must be a random.Random or None, got {rng!r}")
    if retry_after is not None:
        non_negative_number("retry_after", retry_after)
        if retry_after > max_retry_after:
            raise RetryAfterTooLongError(float(retry_after), float(max_retry_after))
        return float(retry_after)
    if previous is not None:
        non_negative_number("previous", previous)
    draw = rng.random if rng is not None else random.random
    if jitter == "decorrelated":
        last = base if previous is None else max(float(previous), base)
        return min(cap, base + draw() * (3.0 * last - base))
    delay = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    if jitter == "full":
        return draw() * delay
    if jitter == "equal":
        return delay / 2.0 + draw() * delay / 2.0
    return delay


def _check_backoff(
    base: object, cap: object, jitter: object, base_name: str, cap_name: str
) -> None:
    non_negative_number(base_name, base, above_zero=True)
    non_negative_number(cap_name, cap)
    if jitter not in _JITTERS:
        raise InvalidValueError(
            f"jitter must be one of 'full', 'equal', 'decorrelated', 'none', got {jitter!r}"
        )
