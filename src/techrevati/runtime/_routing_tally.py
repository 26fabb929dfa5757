"""What a router has seen of each candidate: counts, and the averages it ranks by.

Private to :mod:`~techrevati.runtime.routing`. One :class:`Slot` per
candidate holds its counters and, in :attr:`Slot.view`, an immutable
snapshot of its averages that a route reads without the router's lock
(one attribute read, so never half of an update). :func:`settle` applies one
attempt's outcome; the router calls it with its lock held.

The averages are per *successful turn*: the time and cost of failed attempts
are held on the candidate and added to its next success, so a provider that
fails twice before it answers is charged for all three attempts. Latency is
a float EWMA in seconds. Money is integers, as everywhere in the library:
each cost arrives as exact femto-dollars (1e-15 USD), sums are exact, and
the cost EWMA is kept in atto-dollars (1e-18 USD), rounded down at each step,
and shown as a Decimal.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Final, NamedTuple

if TYPE_CHECKING:
    from techrevati.runtime.events import AgentFailureClass
    from techrevati.runtime.routing import Candidate, Outcome, Ranked

__all__ = ["UNMEASURED", "Averaging", "Slot", "View", "atto_usd", "averaging", "settle"]

ATTO_PER_FEMTO: Final = 1000


class View(NamedTuple):
    """A candidate's averages at one moment (replaced whole on every success)."""

    latency: float | None
    """EWMA of seconds per successful turn; None until the first success."""
    cost_atto: int | None
    """EWMA of atto-USD per successful turn; None until a success reports a cost."""
    samples: int
    """Successes in the latency average (since it was last reset as stale)."""
    cost_samples: int
    """Successes in the cost average."""
    measured_at: float | None
    """The router's clock at the last success; None: never measured."""


UNMEASURED: Final = View(None, None, 0, 0, None)
_new_view: Final = tuple.__new__  # View without its Python-level __new__: the hot path


class Averaging(NamedTuple):
    """How a router averages: the newest sample's weight, and when old averages are dropped."""

    alpha: float
    numerator: int  # alpha as an exact fraction, for the integer cost average
    denominator: int
    stale_after: float | None


def averaging(alpha: float, stale_after: float | None) -> Averaging:
    """Return the settings for ``alpha`` (0 < alpha <= 1, already checked)."""
    numerator, denominator = Decimal(repr(alpha)).as_integer_ratio()
    return Averaging(alpha, numerator, denominator, stale_after)


class Slot:
    """One candidate's counters; mutated only by :func:`settle` under the router's lock."""

    __slots__ = (
        "candidate",
        "cost_femto",
        "entry",
        "failures",
        "index",
        "key",
        "last_failure",
        "local_breaker",
        "pending_femto",
        "pending_latency",
        "position",
        "successes",
        "view",
    )

    def __init__(self, candidate: Candidate, index: int) -> None:
        self.candidate = candidate
        self.index = index  # its place in the order the router was given
        self.position = index  # its place in the router's current ranking
        self.key: tuple[int, float, int] = (1, 0, index)  # unmeasured, in the given order
        self.successes = 0
        self.failures = 0
        self.last_failure: AgentFailureClass | None = None
        self.pending_latency = 0.0  # seconds of failed attempts since the last success
        self.pending_femto = 0  # femto-USD of failed attempts since the last success
        self.cost_femto = 0  # every cost recorded, exact
        self.view = UNMEASURED
        # A health-aware router's: whether the breaker's CLOSED state reads without a lock,
        # and the last Ranked built for this candidate with the view it was built from.
        self.local_breaker = False
        self.entry: tuple[View | None, Ranked]  # set by the health-aware router only


def settle(slot: Slot, outcome: Outcome, now: float, settings: Averaging) -> bool:
    """Apply one attempt's ``outcome`` to ``slot``; return True if its averages changed.

    A success after more than ``settings.stale_after`` seconds without one
    replaces the averages instead of moving them: the old ones describe a
    provider that may since have recovered (or degraded).
    """
    femto = outcome.cost_femto_usd
    if femto is not None:
        slot.cost_femto += femto
    if not outcome.ok:
        slot.failures += 1
        slot.last_failure = outcome.failure_class
        slot.pending_latency += outcome.latency_seconds
        if femto is not None:
            slot.pending_femto += femto
        return False
    slot.successes += 1
    alpha, numerator, denominator, stale_after = settings
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
    average, cost_samples = (old.cost_atto, old.cost_samples) if fresh else (None, 0)
    if femto is not None:
        spent = (slot.pending_femto + femto) * ATTO_PER_FEMTO
        slot.pending_femto = 0
        if average is None:
            average, cost_samples = spent, 1
        else:
            average += (spent - average) * numerator // denominator
            cost_samples += 1
    slot.view = _new_view(View, (latency, average, samples, cost_samples, now))
    return True


def atto_usd(atto: int) -> Decimal:
    """Return ``atto`` atto-dollars as an exact Decimal, trailing zeros dropped."""
    if not atto:
        return Decimal(0)
    exponent = -18
    while exponent < 0 and not atto % 10:
        atto //= 10
        exponent += 1
    return Decimal(f"{atto}E{exponent}")
