"""Reading a route candidate's breaker and rate limiter without taking anything from them.

Private to :mod:`~techrevati.runtime.routing`. A router asks, for every
candidate on every route, whether its breaker would admit a call now and how
long its limiter would make a call of the request's size wait, and must
change neither: no permit taken, no half-open probe slot used, no rate-limit
capacity held, no server cap spent.

The breaker is read through its public :attr:`CircuitBreaker.state` (a plain
attribute read while closed) and, only when it is not closed,
:meth:`CircuitBreaker.metrics`. Neither takes a permit or a probe slot; both
apply a time-driven change that is due (open -> half-open once the recovery
timeout has passed, as any admission would) and then run the breaker's state
listeners in the reading thread. The probe-slot limit is read from the
breaker's settings (``_max_probes``): the breaker has no public property for it.

The limiter has no public read of its wait, so :func:`limiter_wait` decides
the common case (the call fits) on the window's running totals, and
otherwise repeats the checks of ``_LocalWindow.admit`` under the window's own
lock and stops before the admission (dropping expired entries from the log
on the way, as every read of the window does). A limiter on a shared store (Redis) has no
such read: its wait is unknown (None) and the router does not skip it. Both
private reads are stand-ins for public ones the breaker and the limiter do
not have yet (see docs/routing.md, "Limits").
"""

from __future__ import annotations

import math
from typing import Final

from techrevati.runtime._breaker_state import _CLOSED, _FORCED_OPEN, _HALF_OPEN
from techrevati.runtime._rate_window import _LocalWindow
from techrevati.runtime.circuit_breaker import CircuitBreaker
from techrevati.runtime.rate_limit import RateLimiter

__all__ = [
    "ADMITS",
    "FORCED_OPEN",
    "OPEN",
    "PROBE",
    "PROBES_TAKEN",
    "breaker_health",
    "limiter_wait",
]

ADMITS: Final = 0
"""The breaker is closed: a call passes."""
PROBE: Final = 1
"""The breaker is half-open with a free probe slot: a call would be a probe."""
OPEN: Final = 2
"""The breaker is open: calls are rejected for ``retry_after`` more seconds."""
FORCED_OPEN: Final = 3
"""The breaker was forced open: rejected until ``reset()``."""
PROBES_TAKEN: Final = 4
"""The breaker is half-open and every probe slot is taken: rejected for now."""

_CLOSED_READ: Final = (ADMITS, 0.0)
_FITS: Final = (0.0, "")
_UNKNOWN: Final = (None, "")


def breaker_health(breaker: CircuitBreaker) -> tuple[int, float]:
    """Return what a call made now would meet, and seconds until that changes.

    ``(ADMITS, 0.0)`` while closed (no lock, nothing allocated);
    ``(PROBE, 0.0)``; ``(OPEN, retry_after)``; ``(FORCED_OPEN, inf)``;
    ``(PROBES_TAKEN, 0.0)``.
    """
    if breaker.state is _CLOSED:
        return _CLOSED_READ
    metrics = breaker.metrics()  # one consistent snapshot of the state and the probes
    state = metrics.state
    if state is _CLOSED:  # closed between the two reads
        return _CLOSED_READ
    if state is _HALF_OPEN:
        if metrics.half_open_in_flight < breaker._max_probes:
            return PROBE, 0.0
        return PROBES_TAKEN, 0.0
    if state is _FORCED_OPEN:
        return FORCED_OPEN, math.inf
    return OPEN, metrics.retry_after


def limiter_wait(
    limiter: RateLimiter, input_tokens: int, output_tokens: int
) -> tuple[float | None, str]:
    """Return seconds a call of these tokens would wait at ``limiter`` now, and the limit why.

    ``(0.0, "")`` when it would be admitted at once. The limit is one of
    ``requests``, ``tokens``, ``input_tokens``, ``output_tokens``, ``server``
    (the provider's own headers, read by ``observe``), ``concurrent`` (no
    free slot: the wait is ``inf``, it lasts until a call ends) or
    ``too_large`` (the estimate exceeds a limit itself: ``inf``).
    ``(None, "")``: unknown (a limiter on a shared store). Takes nothing.
    """
    window = limiter._state
    if type(window) is not _LocalWindow:
        return _UNKNOWN
    requests, tokens, inputs, outputs = limiter._limits
    most = window._max_concurrent
    # The common case, on the running totals without the lock: expired entries still in
    # them only make the totals larger, so a call that fits them fits. (A read, not a
    # reservation: another caller may take the room before this call's acquire.)
    if (
        (requests is None or window._requests < requests)
        and (
            tokens is None
            or window._input + window._output + input_tokens + output_tokens <= tokens
        )
        and (inputs is None or window._input + input_tokens <= inputs)
        and (outputs is None or window._output + output_tokens <= outputs)
        and (most is None or len(window._open) < most)
        and not any(window._caps)
    ):
        return _FITS
    if (
        (tokens is not None and input_tokens + output_tokens > tokens)
        or (inputs is not None and input_tokens > inputs)
        or (outputs is not None and output_tokens > outputs)
    ):
        return math.inf, "too_large"
    wanted = (1, input_tokens + output_tokens, input_tokens, output_tokens)
    now = limiter._clock()
    with window._lock:  # the checks of _LocalWindow.admit, without the admission
        now = window._advance(now)
        kind, wait = window._window_wait(now, wanted)
        for dimension, cap in enumerate(window._caps):
            if cap is None or cap[1] <= now:
                continue
            if wanted[dimension] > cap[0] and cap[1] - now > wait:
                kind, wait = "server", cap[1] - now
        if kind:
            return wait, kind
        if most is not None and len(window._open) >= most:
            return math.inf, "concurrent"
    return _FITS
