"""What a router has seen of each candidate: counts, and the averages it ranks by.

Private to :mod:`~techrevati.runtime.routing`. One :class:`Slot` per
candidate holds its counters and, in :attr:`Slot.view`, an immutable
snapshot of its averages that a route reads without the router's lock
(one attribute read, so never half of an update). :func:`settle` applies one
attempt's outcome; the router calls it with its lock held.

The averages are per *successful turn*: the time and cost of failed attempts
are held on the candidate and added to its next success, so a provider that
fails twice before it answers is charged for all three attempts. Latency is
a float EWMA in seconds; cost is a Decimal EWMA in USD computed in a private
60-digit context (never a float, never the caller's decimal context), and
the lifetime total is an exact Decimal sum.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Context, Decimal
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from techrevati.runtime.events import AgentFailureClass
    from techrevati.runtime.routing import Candidate, Outcome

__all__ = ["UNMEASURED", "Slot", "View", "settle"]

_CTX: Final = Context(prec=60, rounding=ROUND_HALF_EVEN)
_ZERO: Final = Decimal(0)


class View(NamedTuple):
    """A candidate's averages at one moment (replaced whole on every success)."""

    latency: float | None
    """EWMA of seconds per successful turn; None until the first success."""
    cost: Decimal | None
    """EWMA of USD per successful turn; None until a success reports a cost."""
    samples: int
    """Successes in the latency average (since it was last reset as stale)."""
    cost_samples: int
    """Successes in the cost average."""
    measured_at: float | None
    """The router's clock at the last success; None: never measured."""


UNMEASURED: Final = View(None, None, 0, 0, None)


class Slot:
    """One candidate's counters; mutated only by :func:`settle` under the router's lock."""

    __slots__ = (
        "candidate",
        "cost_total",
        "failures",
        "index",
        "key",
        "last_failure",
        "pending_cost",
        "pending_latency",
        "position",
        "successes",
        "view",
    )

    def __init__(self, candidate: Candidate, index: int) -> None:
        self.candidate = candidate
        self.index = index  # its place in the order the router was given
        self.position = index  # its place in the router's current ranking
        self.key: tuple[int, float | Decimal, int] = (1, 0, index)  # unmeasured, in given order
        self.successes = 0
        self.failures = 0
        self.last_failure: AgentFailureClass | None = None
        self.pending_latency = 0.0  # seconds of failed attempts since the last success
        self.pending_cost = _ZERO  # USD of failed attempts since the last success
        self.cost_total = _ZERO
        self.view = UNMEASURED


def settle(
    slot: Slot,
    outcome: Outcome,
    *,
    now: float,
    alpha: float,
    alpha_usd: Decimal,
    stale_after: float | None,
) -> bool:
    """Apply one attempt's ``outcome`` to ``slot``; return True if its averages changed.

    A success after more than ``stale_after`` seconds without one replaces
    the averages instead of moving them: the old ones describe a provider
    that may since have recovered (or degraded).
    """
    cost = outcome.cost_usd
    if cost is not None:
        slot.cost_total = _CTX.add(slot.cost_total, cost)
    if not outcome.ok:
        slot.failures += 1
        slot.last_failure = outcome.failure_class
        slot.pending_latency += outcome.latency_seconds
        if cost is not None:
            slot.pending_cost = _CTX.add(slot.pending_cost, cost)
        return False
    slot.successes += 1
    old = slot.view
    fresh = old.measured_at is not None and (
        stale_after is None or now - old.measured_at <= stale_after
    )
    sample = slot.pending_latency + outcome.latency_seconds
    slot.pending_latency = 0.0
    if fresh and old.latency is not None:
        latency = old.latency + alpha * (sample - old.latency)
        samples = old.samples + 1
    else:
        latency, samples = sample, 1
    average, cost_samples = (old.cost, old.cost_samples) if fresh else (None, 0)
    if cost is not None:
        spent = _CTX.add(slot.pending_cost, cost)
        slot.pending_cost = _ZERO
        if average is None:
            average, cost_samples = spent, 1
        else:
            step = _CTX.multiply(alpha_usd, _CTX.subtract(spent, average))
            average, cost_samples = _CTX.add(average, step), cost_samples + 1
    slot.view = View(latency, average, samples, cost_samples, now)
    return True
