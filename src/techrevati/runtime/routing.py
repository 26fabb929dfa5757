"""Routing a model turn across providers: which to try first, which to skip, and why.

A *route* is the ordered list of :class:`Candidate` s a turn tries: a model at
a provider, each behind its own circuit breaker and rate limiter. A
:class:`ProviderRouter` makes that list on every turn
(:meth:`~ProviderRouter.candidates`) and hears back how each attempt went
(:meth:`~ProviderRouter.record`). :class:`StaticRouter` always gives the same
order (the bare ``fallback_models`` list is its simple form:
:func:`router_from_fallbacks`); :class:`RoundRobinRouter` rotates it;
:class:`WeightedRouter` draws the first by weight. :class:`HealthAwareRouter`
reads each candidate's breaker and limiter (taking nothing from them): it
skips a candidate whose breaker would reject the call, puts half-open ones
(a call there is a probe) after the closed ones, skips one whose limiter
would make the call wait longer than the caller allows, and ranks the rest
by the latency or the cost per successful turn it has observed, exploring a
stale one now and then so a recovered provider is measured again.

Every route comes back as a :class:`RouteDecision`: the candidates in order,
and for each one tried or skipped the reason, ready for a turn event
(:meth:`RouteDecision.to_dict`) or a log line (:meth:`RouteDecision.explain`).
When every candidate is skipped, :class:`NoHealthyProviderError` names each
and why, unless the router was told to fall back to the least bad one.
"""

from __future__ import annotations

import bisect
import math
import operator
import random
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Literal, NamedTuple, Protocol, TypeVar, overload, runtime_checkable

from techrevati.runtime._breaker_state import _CLOSED, _HALF_OPEN, CircuitState
from techrevati.runtime._clock import Clock
from techrevati.runtime._money import _USD_POWER, MoneyInput, _scaled, _to_decimal, _usd
from techrevati.runtime._routing_reads import (
    FORCED_OPEN,
    OPEN,
    PROBE,
    PROBES_TAKEN,
    breaker_health,
    limiter_wait,
)
from techrevati.runtime._routing_tally import Slot, View, atto_usd, averaging, settle
from techrevati.runtime._validate import (
    callable_or_none,
    enum_member,
    instance_or_none,
    int_at_least,
    non_negative_number,
    strict_bool,
)
from techrevati.runtime.circuit_breaker import CircuitBreaker
from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.events import AgentFailureClass
from techrevati.runtime.rate_limit import RateLimiter, TokenCounts, _token_pair

__all__ = [
    "Candidate",
    "CandidateStats",
    "HealthAwareRouter",
    "NoHealthyProviderError",
    "Outcome",
    "ProviderRouter",
    "Ranked",
    "RoundRobinRouter",
    "RouteDecision",
    "RouteRequest",
    "SkipReason",
    "Skipped",
    "StaticRouter",
    "WeightedRouter",
    "router_from_fallbacks",
]

Prefer = Literal["latency", "cost", "order"]
"""What :class:`HealthAwareRouter` ranks healthy candidates by."""

IfNoneHealthy = Literal["raise", "least_bad"]
"""What :class:`HealthAwareRouter` does when it skipped every candidate."""

DEFAULT_SMOOTHING: Final = 0.3
"""Weight of the newest sample in the moving averages (EWMA alpha)."""
DEFAULT_EXPLORE: Final = 0.05
"""Share of routes on which :class:`HealthAwareRouter` tries its least recently measured first."""
DEFAULT_STALE_AFTER: Final = 300.0
"""Seconds without a success after which a candidate's averages are replaced, not moved."""

_T = TypeVar("_T")
_NO_EXTRA: Final[Mapping[str, object]] = MappingProxyType({})
_CANDIDATE: Final = operator.itemgetter(0)


def _no_extra() -> Mapping[str, object]:
    return _NO_EXTRA


@dataclass(frozen=True, slots=True)
class Candidate:
    """One place a turn can go: ``model`` at ``provider``, behind its own breaker and limiter.

    ``label`` names it in decisions, events and errors (``provider/model``,
    or the model alone without a provider) and must be unique in a router.
    ``breaker`` and ``limiter`` are the ones guarding this provider (a
    :class:`HealthAwareRouter` reads them; the session calls through them);
    ``weight`` (a finite number >= 0) is what :class:`WeightedRouter` draws
    by; ``extra`` is yours (a client, a base URL, request options), kept as a
    read-only mapping and never looked at.
    """

    model: str
    provider: str = ""
    breaker: CircuitBreaker | None = None
    limiter: RateLimiter | None = None
    weight: float = 1.0
    extra: Mapping[str, object] = field(default_factory=_no_extra, compare=False)
    label: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InvalidValueError(f"model must be a non-empty str, got {self.model!r}")
        if not isinstance(self.provider, str):
            raise InvalidValueError(f"provider must be a str, got {self.provider!r}")
        instance_or_none("breaker", self.breaker, CircuitBreaker)
        instance_or_none("limiter", self.limiter, RateLimiter)
        object.__setattr__(self, "weight", non_negative_number("weight", self.weight))
        extra = self.extra
        if extra is not _NO_EXTRA:
            if not isinstance(extra, Mapping):
                raise InvalidValueError(f"extra must be a mapping, got {extra!r}")
            object.__setattr__(self, "extra", MappingProxyType(dict(extra)))
        label = f"{self.provider}/{self.model}" if self.provider else self.model
        object.__setattr__(self, "label", label)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one attempt on a candidate went, as :meth:`ProviderRouter.record` hears it.

    Build it with :meth:`success` or :meth:`failure`. ``latency_seconds`` is
    the attempt's own duration (not the time it waited for the rate
    limiter); ``cost_femto_usd`` is what it was billed, as an exact int of
    1e-15 USD like every amount in the library (``cost_usd`` is the same as a
    ``Decimal``; None when unpriced or unknown); ``failure_class`` says why a
    failed attempt failed.
    """

    ok: bool
    latency_seconds: float = 0.0
    cost_femto_usd: int | None = None
    failure_class: AgentFailureClass | None = None

    def __post_init__(self) -> None:
        strict_bool("ok", self.ok)
        latency = self.latency_seconds
        if type(latency) is not float or not 0.0 <= latency < math.inf:  # NaN fails too
            latency = non_negative_number("latency_seconds", latency)
            object.__setattr__(self, "latency_seconds", latency)
        femto = self.cost_femto_usd
        if femto is not None and (type(femto) is not int or femto < 0):
            int_at_least("cost_femto_usd", femto, 0)
        if self.ok:
            if self.failure_class is not None:
                raise InvalidValueError(
                    f"a successful outcome has no failure_class, got {self.failure_class!r}"
                )
        elif self.failure_class is None:
            raise InvalidValueError("a failed outcome needs its failure_class, got None")
        elif type(self.failure_class) is not AgentFailureClass:
            failure = enum_member(
                AgentFailureClass, self.failure_class, "failure class", field="failure_class"
            )
            object.__setattr__(self, "failure_class", failure)

    @property
    def cost_usd(self) -> Decimal | None:
        """The attempt's cost in USD, exact (None when unpriced or unknown)."""
        femto = self.cost_femto_usd
        return None if femto is None else _usd(femto)

    @classmethod
    def success(
        cls,
        latency_seconds: float,
        cost_usd: MoneyInput | None = None,
        *,
        cost_femto_usd: int | None = None,
    ) -> Outcome:
        """Make the outcome of a successful attempt: how long it took, what it cost.

        Give the cost as ``cost_usd`` (a Decimal, str, int or float, exact to
        1e-15 USD) or as ``cost_femto_usd`` (a ``TurnCost``'s, no conversion).
        """
        return cls(True, latency_seconds, _femto(cost_usd, cost_femto_usd))

    @classmethod
    def failure(
        cls,
        failure_class: AgentFailureClass | str,
        latency_seconds: float = 0.0,
        cost_usd: MoneyInput | None = None,
        *,
        cost_femto_usd: int | None = None,
    ) -> Outcome:
        """Make the outcome of a failed attempt: why (an ``AgentFailureClass``), how long, cost."""
        femto = _femto(cost_usd, cost_femto_usd)
        return cls(False, latency_seconds, femto, failure_class)  # type: ignore[arg-type]  # checked in __post_init__


def _femto(cost_usd: MoneyInput | None, cost_femto_usd: int | None) -> int | None:
    """One cost, given in USD or in femto-USD, as femto-USD (refusing sub-femto amounts)."""
    if cost_usd is None:
        return cost_femto_usd
    if cost_femto_usd is not None:
        raise InvalidValueError(
            f"give cost_usd or cost_femto_usd, not both, got {cost_usd!r} and {cost_femto_usd!r}"
        )
    return _scaled(_to_decimal(cost_usd, "cost_usd"), _USD_POWER, "cost_usd", "1e-15 USD")


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What one route is for: the call's size, the wait it allows, candidates to leave out.

    ``estimate`` (anything with ``input_tokens`` and ``output_tokens``, a
    ``UsageSnapshot``) is what each limiter is asked about; without one a
    call counts as one request and no tokens. ``max_wait`` is how long the
    caller lets a limiter make the call wait (seconds, ``inf`` allowed;
    None: the router's own ``max_wait``, or each limiter's). ``exclude``
    holds labels to skip, such as those already tried in this turn.
    """

    estimate: TokenCounts | None = None
    max_wait: float | None = None
    exclude: Collection[str] = frozenset()
    tokens: tuple[int, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", _token_pair("estimate", self.estimate, None, None))
        if self.max_wait is not None:
            wait = non_negative_number("max_wait", self.max_wait, finite=False)
            object.__setattr__(self, "max_wait", wait)
        exclude = self.exclude
        if isinstance(exclude, str) or not isinstance(exclude, Collection):
            raise InvalidValueError(f"exclude must be a collection of labels, got {exclude!r}")
        if not all(isinstance(label, str) for label in exclude):
            raise InvalidValueError(f"exclude must hold str labels, got {exclude!r}")
        object.__setattr__(self, "exclude", frozenset(exclude))


_ANY: Final = RouteRequest()


class SkipReason(StrEnum):
    """Why a route left a candidate out."""

    EXCLUDED = "excluded"
    """The request excluded it (tried already in this turn)."""
    BREAKER_OPEN = "breaker_open"
    """Its breaker is open: a call would be rejected for ``seconds`` more."""
    BREAKER_FORCED_OPEN = "breaker_forced_open"
    """Its breaker was forced open: rejected until reset."""
    PROBES_TAKEN = "probes_taken"
    """Its breaker is half-open and every probe slot is taken."""
    RATE_LIMITED = "rate_limited"
    """Its limiter would make the call wait ``seconds``, longer than ``allowed``."""
    NO_CONCURRENT_SLOT = "no_concurrent_slot"
    """Its limiter has no free concurrency slot: the wait lasts until a call ends."""
    TOO_LARGE = "too_large"
    """The call's estimate is larger than one of its limiter's limits: it can never fit."""


_SKIP_FOR_HEALTH: Final = {
    OPEN: SkipReason.BREAKER_OPEN,
    FORCED_OPEN: SkipReason.BREAKER_FORCED_OPEN,
    PROBES_TAKEN: SkipReason.PROBES_TAKEN,
}
_SKIP_FOR_LIMIT: Final = {
    "concurrent": SkipReason.NO_CONCURRENT_SLOT,
    "too_large": SkipReason.TOO_LARGE,
}
_RATE_REASONS: Final = frozenset(_SKIP_FOR_LIMIT.values()) | {SkipReason.RATE_LIMITED}
_NEVER_LEAST_BAD: Final = frozenset({SkipReason.EXCLUDED, SkipReason.TOO_LARGE})


class Ranked(NamedTuple):
    """One candidate of a route, in the order to try them, with what it was ranked on."""

    candidate: Candidate
    state: CircuitState | None
    """Its breaker's state as read (None: no breaker, or a router that does not read health)."""
    score: float | Decimal | None
    """Seconds (float) or USD (Decimal) per successful turn; None: not measured yet."""
    samples: int
    """Successes behind ``score``."""
    wait: float | None
    """Seconds its limiter would make the call wait (0.0: none; None: unknown or not read)."""
    max_wait: float | None
    """The wait to allow its limiter's ``acquire`` (None: the limiter's own ``max_wait``)."""
    note: str
    """Anything else that placed it: ``explored: ...``, ``least bad: ...``, a rule's position."""

    def describe(self, unit: str = "") -> str:
        """Say in words how it was placed.

        ``unit`` is the decision's: ``""`` for a router that reads no health
        (only the note is said), ``s`` (seconds) or ``$`` (USD) for the score.
        """
        if not unit:
            return self.note
        parts = [] if self.state is None else [_STATE_WORDS[self.state]]
        score = self.score
        if score is None:
            parts.append("unmeasured")
        else:
            amount = f"${score:.6g}" if unit == "$" else f"{score:.3f}s"
            parts.append(f"{amount} per success over {self.samples}")
        if self.wait:
            parts.append(f"limiter wait {self.wait:.3f}s")
        if self.note:
            parts.append(self.note)
        return ", ".join(parts)


_new_ranked: Final = tuple.__new__  # Ranked without its Python-level __new__: the hot path

_STATE_WORDS: Final = {
    CircuitState.CLOSED: "closed",
    CircuitState.HALF_OPEN: "half-open: a probe",
    CircuitState.OPEN: "open",
    CircuitState.FORCED_OPEN: "forced open",
}


class Skipped(NamedTuple):
    """One candidate a route left out, and why."""

    candidate: Candidate
    reason: SkipReason
    seconds: float
    """Until its breaker admits again, or the wait its limiter would impose (``inf``: no bound)."""
    limit: str = ""
    """The limit that would make it wait (``requests``, ``tokens``, ``server``, ...)."""
    allowed: float | None = None
    """The wait the route allowed (for a rate-limit skip)."""

    def describe(self) -> str:
        """Say in words why it was skipped."""
        reason = self.reason
        breaker = self.candidate.breaker
        name = "" if breaker is None else f" {breaker.name!r}"
        if reason is SkipReason.BREAKER_OPEN:
            return f"breaker{name} open, retry in {self.seconds:.3f}s"
        if reason is SkipReason.BREAKER_FORCED_OPEN:
            return f"breaker{name} forced open until reset()"
        if reason is SkipReason.PROBES_TAKEN:
            return f"breaker{name} half-open with every probe slot taken"
        if reason is SkipReason.RATE_LIMITED:
            return (
                f"rate limiter ({self.limit} limit) would wait {self.seconds:.3f}s, "
                f"more than the {self.allowed:.3f}s allowed"
            )
        if reason is SkipReason.NO_CONCURRENT_SLOT:
            return "rate limiter has no free concurrency slot"
        if reason is SkipReason.TOO_LARGE:
            return "the call's estimate exceeds a rate limit of its own: it can never fit"
        return "excluded by the request"


class RouteDecision(Sequence[Candidate]):
    """The candidates of one route, in the order to try them, and why each is where it is.

    A sequence of :class:`Candidate` (``decision[0]`` first, never empty);
    :attr:`ranked` holds the same candidates with what placed them,
    :attr:`skipped` the ones left out with the reason. ``explored`` is the
    candidate moved first to be measured again, if any; ``least_bad`` is
    True when every candidate was unhealthy and the router fell back to the
    one that becomes available soonest. ``rule`` names the router's rule;
    ``unit`` is what the scores are in (``s``, ``$``; ``""``: no scores).
    """

    __slots__ = ("explored", "least_bad", "ranked", "rule", "skipped", "unit")

    def __init__(
        self,
        rule: str,
        ranked: tuple[Ranked, ...],
        skipped: tuple[Skipped, ...] = (),
        *,
        explored: Candidate | None = None,
        least_bad: bool = False,
        unit: str = "",
    ) -> None:
        self.rule = rule
        self.ranked = ranked
        self.skipped = skipped
        self.explored = explored
        self.least_bad = least_bad
        self.unit = unit

    @property
    def first(self) -> Candidate:
        """The candidate to try first."""
        return self.ranked[0][0]

    @overload
    def __getitem__(self, index: int) -> Candidate: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Candidate, ...]: ...

    def __getitem__(self, index: int | slice) -> Candidate | tuple[Candidate, ...]:
        if isinstance(index, slice):
            return tuple(map(_CANDIDATE, self.ranked[index]))
        candidate: Candidate = self.ranked[index][0]
        return candidate

    def __len__(self) -> int:
        return len(self.ranked)

    def __iter__(self) -> Iterator[Candidate]:
        return map(_CANDIDATE, self.ranked)

    def explain(self) -> str:
        """One line: the rule, each candidate in order with why, then each skipped one with why."""
        placed = "; ".join(_placed(n, entry, self.unit) for n, entry in enumerate(self.ranked, 1))
        text = f"{self.rule}: {placed}"
        if self.skipped:
            left = "; ".join(f"{s.candidate.label} ({s.describe()})" for s in self.skipped)
            text += f"; skipped: {left}"
        return text

    def to_dict(self) -> dict[str, object]:
        """Return the decision as JSON-ready data for a turn event (``inf`` becomes None)."""
        return {
            "router": self.rule,
            "order": [candidate.label for candidate in self],
            "ranked": [
                {
                    "candidate": entry.candidate.label,
                    "model": entry.candidate.model,
                    "state": None if entry.state is None else entry.state.value,
                    "score": _json_number(entry.score),
                    "samples": entry.samples,
                    "wait_seconds": _json_number(entry.wait),
                    "note": entry.note,
                }
                for entry in self.ranked
            ],
            "skipped": [
                {
                    "candidate": entry.candidate.label,
                    "reason": entry.reason.value,
                    "seconds": _json_number(entry.seconds),
                    "detail": entry.describe(),
                }
                for entry in self.skipped
            ],
            "explored": None if self.explored is None else self.explored.label,
            "least_bad": self.least_bad,
        }

    def __repr__(self) -> str:
        labels = ", ".join(candidate.label for candidate in self)
        return f"RouteDecision({self.rule!r}, [{labels}], skipped={len(self.skipped)})"


class NoHealthyProviderError(TechrevatiError):
    """A route skipped every candidate; the message names each one and why.

    ``reasons`` holds ``(label, reason, detail)`` per candidate, in the
    router's current ranking (``reason`` a :class:`SkipReason` value); ``skipped`` the
    :class:`Skipped` entries themselves (empty after unpickling: they hold
    breakers and limiters).
    """

    def __init__(
        self, skipped: Sequence[Skipped], reasons: tuple[tuple[str, str, str], ...] | None = None
    ) -> None:
        self.skipped = tuple(skipped)
        if reasons is None:
            reasons = tuple(
                (entry.candidate.label, entry.reason.value, entry.describe())
                for entry in self.skipped
            )
        self.reasons = reasons
        listed = "; ".join(f"{label}: {detail}" for label, _, detail in reasons)
        count = len(reasons)
        super().__init__(
            f"no healthy provider among {count} candidate{'s' if count != 1 else ''}: {listed}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_no_healthy, (self.reasons,))


def _rebuild_no_healthy(reasons: tuple[tuple[str, str, str], ...]) -> NoHealthyProviderError:
    return NoHealthyProviderError((), reasons)


@dataclass(frozen=True, slots=True)
class CandidateStats:
    """What a router has observed of one candidate (a snapshot from ``stats()``).

    ``latency_seconds`` and ``cost_usd`` are moving averages per successful
    turn (failed attempts' time and cost are added to the next success; the
    cost average is integer arithmetic in 1e-18 USD, rounded down at each
    step); ``cost_usd_total`` is the exact sum of every cost recorded;
    ``last_measured`` is the router's clock at the last success.
    """

    candidate: Candidate
    successes: int
    failures: int
    latency_seconds: float | None
    cost_usd: Decimal | None
    samples: int
    cost_samples: int
    cost_usd_total: Decimal
    last_measured: float | None
    last_failure: AgentFailureClass | None


@runtime_checkable
class ProviderRouter(Protocol):
    """What a session asks on each turn, and tells after each attempt."""

    def candidates(self, request: RouteRequest | None = None, /) -> RouteDecision:
        """Return the candidates to try for one turn, in order (or raise if none is healthy)."""
        ...

    def record(self, candidate: Candidate, outcome: Outcome, /) -> None:
        """Hear how one attempt on ``candidate`` went."""
        ...


class _Router:
    """The candidates, their tallies, the lock, and record/stats/explain shared by every router."""

    __slots__ = ("_averaging", "_by_label", "_clock", "_lock", "_slots", "rule")

    rule: str
    """The router's rule, as decisions name it (``static``, ``health-aware, by latency``, ...)."""

    def __init__(
        self,
        candidates: Sequence[Candidate],
        *,
        clock: Clock | None,
        smoothing: float = DEFAULT_SMOOTHING,
        stale_after: float | None = DEFAULT_STALE_AFTER,
    ) -> None:
        checked = _checked_candidates(candidates)
        self._slots = tuple(Slot(candidate, index) for index, candidate in enumerate(checked))
        self._by_label = {slot.candidate.label: slot for slot in self._slots}
        self._lock = threading.Lock()
        self._clock: Clock = callable_or_none("clock", clock) or time.monotonic
        alpha = non_negative_number("smoothing", smoothing, above_zero=True)
        if alpha > 1:
            raise InvalidValueError(f"smoothing must be a number > 0 and <= 1, got {smoothing!r}")
        if stale_after is not None:
            stale_after = non_negative_number("stale_after", stale_after, finite=False)
        self._averaging = averaging(alpha, stale_after)

    @property
    def members(self) -> tuple[Candidate, ...]:
        """Every candidate, in the order the router was given them."""
        return tuple(slot.candidate for slot in self._slots)

    def record(self, candidate: Candidate, outcome: Outcome, /) -> None:
        """Hear how one attempt on ``candidate`` went (one of this router's candidates)."""
        slot = self._by_label.get(candidate.label) if isinstance(candidate, Candidate) else None
        if slot is None or (slot.candidate is not candidate and slot.candidate != candidate):
            labels = ", ".join(self._by_label)
            raise InvalidValueError(
                f"candidate must be one of this router's ({labels}), got {candidate!r}"
            )
        if type(outcome) is not Outcome:
            raise InvalidValueError(f"outcome must be an Outcome, got {outcome!r}")
        now = self._clock()
        with self._lock:
            if settle(slot, outcome, now, self._averaging):
                self._measured_locked(slot)

    def stats(self) -> tuple[CandidateStats, ...]:
        """Return a consistent snapshot of what was observed of each candidate, in given order."""
        with self._lock:
            return tuple(_stats_of(slot) for slot in self._slots)

    def explain(self) -> str:
        """Say the router's rule and what it has observed of each candidate, without routing."""
        lines = [f"{self.rule}:"]
        for stats in self.stats():
            latency = (
                "unmeasured"
                if stats.latency_seconds is None
                else (f"{stats.latency_seconds:.3f}s per success")
            )
            cost = "" if stats.cost_usd is None else f", ${stats.cost_usd:.6g} per success"
            lines.append(
                f"  {stats.candidate.label}: {latency}{cost}, "
                f"{stats.successes} succeeded, {stats.failures} failed"
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        labels = ", ".join(self._by_label)
        return f"{type(self).__name__}([{labels}])"

    def _measured_locked(self, slot: Slot) -> None:
        """React to new averages of ``slot`` (lock held); the fixed-order routers ignore them."""

    def _given(self, request: RouteRequest | None) -> RouteRequest:
        if request is None:
            return _ANY
        if type(request) is not RouteRequest:
            raise InvalidValueError(f"request must be a RouteRequest or None, got {request!r}")
        return request

    def _filtered(self, decision: RouteDecision, request: RouteRequest) -> RouteDecision:
        """``decision`` without the request's excluded candidates, allowing its ``max_wait``."""
        kept: list[Ranked] = []
        skipped: list[Skipped] = []
        exclude = request.exclude
        for entry in decision.ranked:
            if entry.candidate.label in exclude:
                skipped.append(Skipped(entry.candidate, SkipReason.EXCLUDED, 0.0))
            else:
                kept.append(entry._replace(max_wait=request.max_wait))
        if not kept:
            raise NoHealthyProviderError(skipped)
        return RouteDecision(decision.rule, tuple(kept), tuple(skipped))


class StaticRouter(_Router):
    """The same order on every turn: the first candidate, then the next on each switch.

    Reads no health: a candidate with an open breaker stays in place (its
    breaker rejects the call and the session moves on). The decision for a
    plain request is built once and returned every time.
    """

    __slots__ = ("_decision",)

    def __init__(self, candidates: Sequence[Candidate], *, clock: Clock | None = None) -> None:
        super().__init__(candidates, clock=clock)
        self.rule = "static"
        self._decision = RouteDecision(
            self.rule,
            tuple(_plain(slot.candidate, f"position {slot.index + 1}") for slot in self._slots),
        )

    def candidates(self, request: RouteRequest | None = None, /) -> RouteDecision:
        """Return the given order (without the request's excluded candidates)."""
        if request is None:
            return self._decision
        request = self._given(request)
        if not request.exclude and request.max_wait is None:
            return self._decision
        return self._filtered(self._decision, request)


class RoundRobinRouter(_Router):
    """Each turn starts one candidate further along the given order, wrapping around.

    Exactly fair: over ``k * n`` routes each of the ``n`` candidates is first
    exactly ``k`` times, whatever the threads. The rest follow in the given
    order from the first. Reads no health, like :class:`StaticRouter`.
    """

    __slots__ = ("_next", "_rotations")

    def __init__(self, candidates: Sequence[Candidate], *, clock: Clock | None = None) -> None:
        super().__init__(candidates, clock=clock)
        self.rule = "round-robin"
        count = len(self._slots)
        plain = [_plain(slot.candidate, "") for slot in self._slots]
        self._rotations = tuple(
            RouteDecision(
                self.rule,
                (
                    plain[start]._replace(note=f"rotation {start + 1} of {count}"),
                    *plain[start + 1 :],
                    *plain[:start],
                ),
            )
            for start in range(count)
        )
        self._next = 0

    def candidates(self, request: RouteRequest | None = None, /) -> RouteDecision:
        """Return the next rotation of the given order (less the request's excluded ones)."""
        with self._lock:
            start = self._next
            self._next = start + 1 if start + 1 < len(self._rotations) else 0
        decision = self._rotations[start]
        if request is None:
            return decision
        request = self._given(request)
        if not request.exclude and request.max_wait is None:
            return decision
        return self._filtered(decision, request)


class WeightedRouter(_Router):
    """The first candidate drawn by weight on each turn; the rest follow in the given order.

    A candidate of weight ``w`` is first on a share ``w / total`` of routes
    (one ``rng.random()`` draw each; a weight of 0 is never first, only a
    fallback). ``rng`` is a :class:`random.Random`: seed it for a
    reproducible sequence. Reads no health, like :class:`StaticRouter`.
    """

    __slots__ = ("_cumulative", "_firsts", "_last", "_rng", "_total")

    def __init__(
        self,
        candidates: Sequence[Candidate],
        *,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(candidates, clock=clock)
        self.rule = "weighted"
        if rng is not None and not isinstance(rng, random.Random):
            raise InvalidValueError(f"rng must be a random.Random or None, got {rng!r}")
        self._rng = rng if rng is not None else random.Random()
        weights = [slot.candidate.weight for slot in self._slots]
        total = math.fsum(weights)
        if total <= 0:
            raise InvalidValueError(f"at least one candidate needs a weight > 0, got {weights!r}")
        running = 0.0
        self._cumulative = []
        for weight in weights:
            running += weight
            self._cumulative.append(running)
        self._total = running
        self._last = max(i for i, weight in enumerate(weights) if weight > 0)
        plain = [_plain(slot.candidate, "") for slot in self._slots]
        self._firsts = tuple(
            RouteDecision(
                self.rule,
                (
                    plain[first]._replace(note=f"drawn by weight {weights[first]:g} of {total:g}"),
                    *plain[:first],
                    *plain[first + 1 :],
                ),
            )
            for first in range(len(plain))
        )

    def candidates(self, request: RouteRequest | None = None, /) -> RouteDecision:
        """One candidate drawn by weight first, the others after it in the given order."""
        if request is not None:
            request = self._given(request)
            if request.exclude:
                return self._drawn_among(request)
        draw = self._rng.random() * self._total  # one C call, thread-safe on its own
        first = bisect.bisect_right(self._cumulative, draw)
        decision = self._firsts[first if first <= self._last else self._last]
        if request is None or request.max_wait is None:
            return decision
        return self._filtered(decision, request)

    def _drawn_among(self, request: RouteRequest) -> RouteDecision:
        """Draw by weight among the candidates the request does not exclude."""
        exclude = request.exclude
        kept = [slot for slot in self._slots if slot.candidate.label not in exclude]
        if not kept:
            return self._filtered(self._firsts[0], request)  # raises: every one excluded
        weighted = [slot for slot in kept if slot.candidate.weight > 0]
        first, note = kept[0], "every candidate left has weight 0: the given order"
        if weighted:
            running, cumulative = 0.0, []
            for slot in weighted:
                running += slot.candidate.weight
                cumulative.append(running)
            draw = self._rng.random() * running
            at = bisect.bisect_right(cumulative, draw)
            first = weighted[min(at, len(weighted) - 1)]
            note = f"drawn by weight {first.candidate.weight:g} of {running:g}"
        entries = list(self._firsts[first.index].ranked)
        entries[0] = entries[0]._replace(note=note)
        return self._filtered(RouteDecision(self.rule, tuple(entries)), request)


class HealthAwareRouter(_Router):
    """Skip the candidates that cannot take the call now; rank the rest by what was observed.

    On each route, for each candidate (reading, never taking, from its
    breaker and limiter):

    - a breaker that would reject the call (open, forced open, or half-open
      with every probe slot taken) skips it;
    - a half-open breaker with a free probe slot keeps it, ranked after every
      closed one: a call there is a probe, worth making only once the healthy
      ones are tried (or when :attr:`explore` picks it);
    - a limiter that would make the call wait longer than allowed skips it
      (the request's ``max_wait``, else the router's, else the limiter's own
      ``max_wait``: what its ``acquire`` would wait before refusing);
    - the rest are ranked by ``prefer``: ``"latency"`` (seconds per
      successful turn, plus the wait the limiter would impose), ``"cost"``
      (USD per successful turn, exact) or ``"order"`` (as given). Candidates
      measured so far come first, best first; unmeasured ones follow in the
      given order, so a new router starts with the first one.

    ``explore`` (default 0.05) is the share of routes on which the candidate
    measured longest ago (never measured counts as longest) is moved first,
    so a provider that was slow, or was skipped while its breaker was open,
    is measured again; ``rng`` makes the draws reproducible and
    ``explore=0`` turns it off. A success after ``stale_after`` seconds
    without one replaces a candidate's averages instead of moving them by
    ``smoothing``.

    When every candidate is skipped, ``if_none_healthy="raise"`` (the
    default) raises :class:`NoHealthyProviderError`; ``"least_bad"`` returns
    the one that becomes available soonest (shortest breaker retry or
    limiter wait; never an excluded one, nor one whose limiter can never fit
    the call), marked ``least_bad``, with the wait to allow its limiter.
    """

    __slots__ = (
        "_by_cost",
        "_explore",
        "_last",
        "_least_bad",
        "_max_wait",
        "_order",
        "_prefer",
        "_rng",
    )

    def __init__(
        self,
        candidates: Sequence[Candidate],
        *,
        prefer: Prefer = "latency",
        max_wait: float | None = None,
        explore: float = DEFAULT_EXPLORE,
        smoothing: float = DEFAULT_SMOOTHING,
        stale_after: float | None = DEFAULT_STALE_AFTER,
        if_none_healthy: IfNoneHealthy = "raise",
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(candidates, clock=clock, smoothing=smoothing, stale_after=stale_after)
        if prefer not in ("latency", "cost", "order"):
            raise InvalidValueError(f"prefer must be 'latency', 'cost' or 'order', got {prefer!r}")
        if if_none_healthy not in ("raise", "least_bad"):
            raise InvalidValueError(
                f"if_none_healthy must be 'raise' or 'least_bad', got {if_none_healthy!r}"
            )
        if max_wait is not None:
            max_wait = non_negative_number("max_wait", max_wait, finite=False)
        share = non_negative_number("explore", explore)
        if share > 1:
            raise InvalidValueError(f"explore must be a number >= 0 and <= 1, got {explore!r}")
        if rng is not None and not isinstance(rng, random.Random):
            raise InvalidValueError(f"rng must be a random.Random or None, got {rng!r}")
        self._prefer: Prefer = prefer
        self._by_cost = prefer == "cost"
        self._max_wait = max_wait
        self._explore = share
        self._least_bad = if_none_healthy == "least_bad"
        self._rng = rng if rng is not None else random.Random()
        self._order = self._slots  # ranked by key; replaced whole, so a route reads it unlocked
        # The last decision that skipped nothing and explored nothing, with the order it
        # walked: handed out again while no candidate's entry changed.
        self._last: tuple[tuple[Slot, ...] | None, RouteDecision | None] = (None, None)
        for slot in self._slots:
            slot.entry = (None, _plain(slot.candidate, ""))  # matches no view: built on first use
            breaker = slot.candidate.breaker
            # A breaker whose state property is the base class's keeps its state in this
            # process: CLOSED reads from _state without the lock. (A shared breaker's state
            # property reads its store instead.)
            slot.local_breaker = breaker is not None and type(breaker).state is CircuitBreaker.state
        self.rule = (
            "health-aware, by given order" if prefer == "order" else f"health-aware, by {prefer}"
        )

    @property
    def prefer(self) -> Prefer:
        """What healthy candidates are ranked by."""
        return self._prefer

    @property
    def explore(self) -> float:
        """The share of routes that try the least recently measured candidate first."""
        return self._explore

    def candidates(self, request: RouteRequest | None = None, /) -> RouteDecision:
        """Return the healthy candidates, best first, and every skipped one with why.

        Raises :class:`NoHealthyProviderError` when every candidate is
        skipped (unless ``if_none_healthy="least_bad"``).
        """
        if request is None:
            request = _ANY
        elif type(request) is not RouteRequest:
            self._given(request)  # raises
        tokens_in, tokens_out = request.tokens
        allowed = self._max_wait if request.max_wait is None else request.max_wait
        exclude = request.exclude
        by_cost = self._by_cost
        ranked: list[Ranked] = []
        probing: list[Ranked] | None = None
        skipped: list[Skipped] | None = None
        waits = False
        reused = True  # every entry as the last route built it: maybe the same decision
        order = self._order
        for slot in order:
            candidate = slot.candidate
            if exclude and candidate.label in exclude:
                skipped = _appended(skipped, Skipped(candidate, SkipReason.EXCLUDED, 0.0))
                continue
            state: CircuitState | None = None
            breaker = candidate.breaker
            if breaker is not None:
                if slot.local_breaker and breaker._state is _CLOSED:
                    state = _CLOSED  # a local breaker leaves CLOSED only by a call: no lock
                else:
                    health, seconds = breaker_health(breaker)
                    if health > PROBE:
                        skip = Skipped(candidate, _SKIP_FOR_HEALTH[health], seconds)
                        skipped = _appended(skipped, skip)
                        continue
                    state = _HALF_OPEN if health == PROBE else _CLOSED
            wait: float | None = 0.0
            limiter = candidate.limiter
            if limiter is not None:
                wait, limit = limiter_wait(limiter, tokens_in, tokens_out)
                if wait:  # a wait > 0 (None: unknown, never skipped)
                    most = limiter.max_wait if allowed is None else allowed
                    if wait > most or limit == "too_large":
                        reason = _SKIP_FOR_LIMIT.get(limit, SkipReason.RATE_LIMITED)
                        skipped = _appended(skipped, Skipped(candidate, reason, wait, limit, most))
                        continue
                    waits = True
            view = slot.view
            built_from, entry = slot.entry  # the last one built, reused while nothing changed
            if (
                built_from is not view
                or entry[1] is not state
                or entry[4] != wait
                or entry[5] != allowed
            ):
                entry = _new_ranked(
                    Ranked,
                    (candidate, state, _usd_of(view), view.cost_samples, wait, allowed, "")
                    if by_cost
                    else (candidate, state, view.latency, view.samples, wait, allowed, ""),
                )
                slot.entry = (view, entry)  # one store: a racing route sees a matching pair
                reused = False
            if state is _HALF_OPEN:
                probing = _appended(probing, entry)
            else:
                ranked.append(entry)
        if waits and self._prefer == "latency":  # the wait is part of the latency
            ranked.sort(key=_latency_with_wait)
            if probing:
                probing.sort(key=_latency_with_wait)
        if probing:
            ranked.extend(probing)
        left = () if skipped is None else tuple(skipped)
        if not ranked:
            return self._none_healthy(left, allowed)
        # random() is one C call, thread-safe on its own (the random module says so): no lock
        if self._explore and len(ranked) > 1 and self._rng.random() < self._explore:
            explored = self._explored(ranked)
            return RouteDecision(self.rule, tuple(ranked), left, explored=explored, unit=self._unit)
        last_order, last = self._last
        if reused and skipped is None and order is last_order and last is not None:
            return last  # nothing changed since the last plain route: the same decision
        decision = RouteDecision(self.rule, tuple(ranked), left, unit=self._unit)
        if skipped is None:
            self._last = (order, decision)  # one store: a racing route sees a matching pair
        return decision

    @property
    def _unit(self) -> str:
        return "$" if self._by_cost else "s"

    def _measured_locked(self, slot: Slot) -> None:
        """Keep :attr:`_order` sorted by score after ``slot``'s averages moved (lock held)."""
        if self._prefer == "order":
            return
        view = slot.view
        score = view.cost_atto if self._by_cost else view.latency
        slot.key = (1, 0, slot.index) if score is None else (0, score, slot.index)
        order = self._order
        at = slot.position
        if (at and order[at - 1].key > slot.key) or (
            at + 1 < len(order) and slot.key > order[at + 1].key
        ):
            ordered = sorted(order, key=_key_of)
            for position, moved in enumerate(ordered):
                moved.position = position
            self._order = tuple(ordered)

    def _explored(self, ranked: list[Ranked]) -> Candidate | None:
        """Move the candidate measured longest ago first (never measured: longest ago)."""
        oldest, at = 0, math.inf
        for index, entry in enumerate(ranked):
            measured = self._by_label[entry.candidate.label].view.measured_at
            when = -math.inf if measured is None else measured
            if when < at:
                oldest, at = index, when
        if oldest == 0:
            return None
        entry = ranked.pop(oldest)
        if at == -math.inf:
            note = "explored: never measured"
        else:
            note = f"explored: last measured {self._clock() - at:.3f}s ago"
        ranked.insert(0, entry._replace(note=note))
        return entry.candidate

    def _none_healthy(self, skipped: tuple[Skipped, ...], allowed: float | None) -> RouteDecision:
        """Every candidate was skipped: raise, or fall back to the one available soonest."""
        if self._least_bad:
            pick: Skipped | None = None
            for entry in skipped:
                if entry.reason not in _NEVER_LEAST_BAD and (
                    pick is None or entry.seconds < pick.seconds
                ):
                    pick = entry
            if pick is not None:
                rated = pick.reason in _RATE_REASONS
                view = self._by_label[pick.candidate.label].view
                by_cost = self._by_cost
                score = _usd_of(view) if by_cost else view.latency
                samples = view.cost_samples if by_cost else view.samples
                chosen = Ranked(
                    pick.candidate,
                    None,
                    score,
                    samples,
                    pick.seconds if rated else None,
                    pick.seconds if rated else allowed,
                    f"least bad: {pick.describe()}",
                )
                rest = tuple(entry for entry in skipped if entry is not pick)
                return RouteDecision(self.rule, (chosen,), rest, least_bad=True, unit=self._unit)
        raise NoHealthyProviderError(skipped)


def router_from_fallbacks(primary: str, fallback_models: Sequence[str] = ()) -> StaticRouter:
    """Return the router a bare ``fallback_models`` list stands for: ``primary``, then each.

    Each model becomes a :class:`Candidate` with no provider, breaker or
    limiter, in order. A model named twice is kept once, at its first place:
    switching to the model that just failed is a retry, not a switch.
    """
    if not isinstance(primary, str) or not primary.strip():
        raise InvalidValueError(f"primary must be a non-empty str model name, got {primary!r}")
    if isinstance(fallback_models, str | bytes) or not isinstance(fallback_models, Sequence):
        raise InvalidValueError(
            "fallback_models must be a sequence of model names (a list, not a str), "
            f"got {fallback_models!r}"
        )
    models = [primary]
    for name in fallback_models:
        if not isinstance(name, str) or not name.strip():
            raise InvalidValueError(
                f"fallback_models must hold non-empty str model names, got {name!r} "
                f"in {fallback_models!r}"
            )
        if name not in models:
            models.append(name)
    return StaticRouter([Candidate(model) for model in models])


def _checked_candidates(candidates: object) -> tuple[Candidate, ...]:
    if isinstance(candidates, str | bytes | Candidate) or not isinstance(candidates, Sequence):
        raise InvalidValueError(
            f"candidates must be a sequence of Candidate (a list), got {candidates!r}"
        )
    checked = tuple(candidates)
    if not checked:
        raise InvalidValueError("candidates must not be empty, got []")
    seen: set[str] = set()
    for candidate in checked:
        if not isinstance(candidate, Candidate):
            raise InvalidValueError(f"candidates must hold Candidate values, got {candidate!r}")
        if candidate.label in seen:
            raise InvalidValueError(
                f"candidate labels must be unique, got {candidate.label!r} twice "
                "(give each a provider= to tell them apart)"
            )
        seen.add(candidate.label)
    return checked


def _plain(candidate: Candidate, note: str) -> Ranked:
    return Ranked(candidate, None, None, 0, None, None, note)


def _usd_of(view: View) -> Decimal | None:
    """Return a view's cost average in USD (built only where a cost is shown or ranked)."""
    atto = view.cost_atto
    return None if atto is None else atto_usd(atto)


def _appended(items: list[_T] | None, item: _T) -> list[_T]:
    """Append ``item`` to ``items``, made on first use (most routes skip nothing)."""
    if items is None:
        return [item]
    items.append(item)
    return items


def _placed(number: int, entry: Ranked, unit: str) -> str:
    words = entry.describe(unit)
    label = entry.candidate.label
    return f"{number}. {label} ({words})" if words else f"{number}. {label}"


def _key_of(slot: Slot) -> tuple[int, float, int]:
    return slot.key


def _latency_with_wait(entry: Ranked) -> tuple[bool, float]:
    score = entry.score
    if score is None:
        return (True, 0.0)
    return (False, float(score) + (entry.wait or 0.0))


def _stats_of(slot: Slot) -> CandidateStats:
    view = slot.view
    return CandidateStats(
        candidate=slot.candidate,
        successes=slot.successes,
        failures=slot.failures,
        latency_seconds=view.latency,
        cost_usd=None if view.cost_atto is None else atto_usd(view.cost_atto),
        samples=view.samples,
        cost_samples=view.cost_samples,
        cost_usd_total=_usd(slot.cost_femto),
        last_measured=view.measured_at,
        last_failure=slot.last_failure,
    )


def _json_number(value: float | Decimal | None) -> float | str | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return str(value)
    return None if math.isinf(value) else value
