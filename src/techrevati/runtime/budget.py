"""Budgets: a thread-safe cap on dollars, tokens and requests that many callers share.

A :class:`Budget` (capped by :class:`UsageLimits`) refuses a call that would
go past a limit and holds each admitted call's expected cost atomically
(:meth:`Budget.reserve`), so concurrent callers never overshoot together;
settle the hold with the actual usage, or release it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final, Literal

from techrevati.runtime._money import _USD_POWER, MoneyInput, _money, _scaled, _to_decimal, _usd
from techrevati.runtime.errors import (
    BudgetExceededError,
    InvalidValueError,
    LimitKind,
    ReservationError,
)
from techrevati.runtime.pricing import _femto, _lookup, _model_name
from techrevati.runtime.usage import TurnCost, UsageSnapshot, _require_snapshot

if TYPE_CHECKING:
    from techrevati.runtime.redis_store import RedisStore

__all__ = [
    "Budget",
    "BudgetExceededError",
    "BudgetReservation",
    "LimitKind",
    "ReservationError",
    "UsageLimits",
]


@dataclass(frozen=True, slots=True, init=False)
class UsageLimits:
    """The caps of a :class:`Budget`; ``None`` means no cap of that kind.

    ``max_usd`` accepts what :class:`ModelPricing` rates accept and must be
    exact to 1e-15 USD; the token and request caps are ints >= 0.
    """

    max_usd: Decimal | None
    max_total_tokens: int | None
    max_requests: int | None
    _max_femto: int | None = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        max_usd: MoneyInput | None = None,
        max_total_tokens: int | None = None,
        max_requests: int | None = None,
    ) -> None:
        if max_usd is None:
            usd, femto = None, None
        else:
            usd = _to_decimal(max_usd, "max_usd")
            femto = _scaled(usd, _USD_POWER, "max_usd", "1e-15 USD")
        for name, value in (("max_total_tokens", max_total_tokens), ("max_requests", max_requests)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise InvalidValueError(f"{name} must be an int >= 0 or None, got {value!r}")
        object.__setattr__(self, "max_usd", usd)
        object.__setattr__(self, "max_total_tokens", max_total_tokens)
        object.__setattr__(self, "max_requests", max_requests)
        object.__setattr__(self, "_max_femto", femto)


class Budget:
    """A thread-safe cap on dollars, tokens and requests, shareable by many trackers.

    Give it :class:`UsageLimits` or the same three keywords. Before a call,
    :meth:`check_before` refuses when a limit is already reached or the
    call's estimate would go past it; :meth:`reserve` does the same check
    and holds the estimate atomically, so concurrent callers can never
    overshoot together. After the call, settle the reservation with the
    actual usage (or :meth:`charge` without one). A limit is *reached* when
    spent plus reserved is at least the limit; spending is *over* it only
    when strictly greater (:meth:`check_after`, :meth:`is_exceeded`).

    A model without pricing costs $0 here too, but its tokens and requests
    still count. With ``fail_closed_on_unpriced=True`` and a dollar cap,
    :meth:`check_before` and :meth:`reserve` refuse unpriced models instead.
    Exact under concurrency: one lock guards integer femto-dollar sums.

    A call given no estimate holds what this budget expects that model to
    cost: the actual cost and tokens of its last settled or charged call
    (a conversation's next turn is usually at least as long as its last),
    or ``default_estimate`` for a model not seen yet (nothing without one). So concurrent callers
    overshoot a cap by at most the sum, over the calls in flight, of how much
    each one's actual cost exceeded what it held.

    With ``store=`` (a :class:`~techrevati.runtime.redis_store.RedisStore`)
    the spending and the holds live on Redis under ``name`` (required),
    shared by every worker naming it: each reserve, settle and release is
    one atomic script, holds end by themselves after the store's
    ``lease_ttl``, and the budget is an instance of a subclass that does
    this. See docs/fleet.md.
    """

    __slots__ = (
        "_expect",
        "_fail_closed",
        "_limits",
        "_lock",
        "_max_femto",
        "_max_requests",
        "_max_tokens",
        "_names",
        "_requests",
        "_reserved_femto",
        "_reserved_requests",
        "_reserved_tokens",
        "_resumed",
        "_spent_femto",
        "_spent_tokens",
        "default_estimate",
        "name",
    )

    def __new__(cls, *args: Any, store: object = None, **kwargs: Any) -> Budget:
        """Make a :class:`Budget`; with ``store=``, the subclass keeping its state there."""
        if store is not None and cls is Budget:
            from techrevati.runtime._budget_redis import _SharedBudget  # noqa: PLC0415

            return object.__new__(_SharedBudget)
        return object.__new__(cls)

    def __init__(
        self,
        limits: UsageLimits | None = None,
        *,
        max_usd: MoneyInput | None = None,
        max_total_tokens: int | None = None,
        max_requests: int | None = None,
        fail_closed_on_unpriced: bool = False,
        default_estimate: UsageSnapshot | None = None,
        store: RedisStore | None = None,
        name: str = "",
    ) -> None:
        if store is not None and not getattr(self, "_shared", False):
            raise InvalidValueError("a Budget subclass cannot take store=; use Budget itself")
        if not isinstance(name, str):
            raise InvalidValueError(f"name must be a str, got {name!r}")
        self.name = name
        """A label for the budget (the key of a shared one)."""
        keywords = (max_usd, max_total_tokens, max_requests)
        if limits is None:
            limits = UsageLimits(max_usd, max_total_tokens, max_requests)
        elif not isinstance(limits, UsageLimits):
            raise InvalidValueError(f"limits must be a UsageLimits or None, got {limits!r}")
        elif any(value is not None for value in keywords):
            raise InvalidValueError(
                "give either limits or max_usd/max_total_tokens/max_requests, not both"
            )
        if not isinstance(fail_closed_on_unpriced, bool):
            raise InvalidValueError(
                f"fail_closed_on_unpriced must be a bool, got {fail_closed_on_unpriced!r}"
            )
        if default_estimate is not None and type(default_estimate) is not UsageSnapshot:
            raise InvalidValueError(
                f"default_estimate must be a UsageSnapshot or None, got {default_estimate!r}"
            )
        self.default_estimate = default_estimate
        """What a call of a model this budget has not seen yet holds (``None``: nothing)."""
        # Per model: what a call with no estimate holds (the last actual call's figures).
        self._expect: dict[str, tuple[int, int]] = {}
        self._names: dict[str, str] = {}  # each spelling seen -> the stripped name
        self._limits = limits
        self._max_femto = limits._max_femto
        self._max_tokens = limits.max_total_tokens
        self._max_requests = limits.max_requests
        self._fail_closed = fail_closed_on_unpriced
        self._lock = threading.Lock()
        self._spent_femto = 0
        self._spent_tokens = 0
        self._requests = 0
        self._reserved_femto = 0
        self._reserved_tokens = 0
        self._reserved_requests = 0
        # Per resumed session id: what this budget has counted for it (see _count_resumed).
        self._resumed: dict[str, Callable[[], tuple[int, int, int]]] = {}

    @property
    def store(self) -> RedisStore | None:
        """The shared store this budget keeps its state in (None: this process)."""
        return None

    @property
    def limits(self) -> UsageLimits:
        """The caps this budget enforces."""
        return self._limits

    @property
    def fail_closed_on_unpriced(self) -> bool:
        """Whether calls to unpriced models are refused when a dollar cap is set."""
        return self._fail_closed

    @property
    def spent_usd(self) -> Decimal:
        """Dollars spent by settled reservations and charges."""
        return _usd(self._spent_femto)

    @property
    def reserved_usd(self) -> Decimal:
        """Dollars held by open reservations."""
        return _usd(self._reserved_femto)

    @property
    def spent_tokens(self) -> int:
        """Tokens (input + output) spent by settled reservations and charges."""
        return self._spent_tokens

    @property
    def reserved_tokens(self) -> int:
        """Tokens held by open reservations."""
        return self._reserved_tokens

    @property
    def requests(self) -> int:
        """Requests settled or charged."""
        return self._requests

    @property
    def reserved_requests(self) -> int:
        """Open reservations (each holds one request)."""
        return self._reserved_requests

    @property
    def remaining_usd(self) -> Decimal | None:
        """Dollars left after spending and reservations (never below 0); None if uncapped."""
        if self._max_femto is None:
            return None
        with self._lock:
            left = self._max_femto - self._spent_femto - self._reserved_femto
        return _usd(max(left, 0))

    def check_before(self, estimate: UsageSnapshot | None = None, *, model: str = "") -> None:
        """Raise :class:`BudgetExceededError` unless a call with ``estimate`` fits.

        Refuses when any limit is already reached (spent + reserved >= limit)
        or when spent + reserved + the estimate's cost, tokens, or one more
        request would go past it. The estimate is priced for ``model``; with
        ``model=""`` (no model) it costs nothing; with no estimate the call
        is expected to cost what the class docstring says. Reserves nothing: use
        :meth:`reserve` when calls may run concurrently.
        """
        name = "" if model == "" else _model_name(model)
        femto, tokens = self._price_estimate(name, estimate)
        with self._lock:
            if estimate is None and name:
                femto, tokens = self._expect.get(name, (femto, tokens))
            self._refuse_if_over(femto, tokens, name)

    def check_after(self) -> None:
        """Raise :class:`BudgetExceededError` if spending is strictly over a limit."""
        with self._lock:
            checks: tuple[tuple[LimitKind, int | None, int], ...] = (
                ("usd", self._max_femto, self._spent_femto),
                ("tokens", self._max_tokens, self._spent_tokens),
                ("requests", self._max_requests, self._requests),
            )
            for kind, limit, spent in checks:
                if limit is not None and spent > limit:
                    raise self._error(kind, limit, spent, after=True)

    def reserve(self, model: str, estimate: UsageSnapshot | None = None) -> BudgetReservation:
        """Atomically check that a call fits and hold its estimate until settled.

        Refuses exactly as :meth:`check_before` (raising
        :class:`BudgetExceededError`); otherwise holds the estimate's cost,
        tokens and one request. Settle the returned reservation with the actual
        usage, or release it; as a context manager it is released on exit
        unless settled.
        """
        name, femto, tokens, key = self._hold(model, estimate)
        return BudgetReservation(self, name, femto, tokens, key)

    async def areserve(
        self, model: str, estimate: UsageSnapshot | None = None
    ) -> BudgetReservation:
        """Async twin of :meth:`reserve` (a shared budget's event loop runs while Redis decides)."""
        name, femto, tokens, key = await self._ahold(model, estimate)
        return BudgetReservation(self, name, femto, tokens, key)

    async def _ahold(
        self, model: str, estimate: UsageSnapshot | None
    ) -> tuple[str, int, int, str | None]:
        """Async twin of :meth:`_hold`; a budget in this process decides at once."""
        return self._hold(model, estimate)

    def _hold(self, model: str, estimate: UsageSnapshot | None) -> tuple[str, int, int, str | None]:
        """Check and hold one call as :meth:`reserve` does; return (name, femto, tokens, key).

        ``key`` names the hold where a shared budget keeps it (None here).

        The bare engine of :meth:`reserve`, for callers that track the hold
        themselves (a session's turn) and give it back with
        :meth:`_settle_hold` or :meth:`_release_hold`, exactly once.
        """
        name = self._names.get(model) if type(model) is str else None
        if name is None:
            name = _model_name(model)
            if len(self._names) < _MAX_SPELLINGS:
                self._names[model] = name
        if estimate is None and self.default_estimate is None and not self._fail_closed:
            femto = tokens = 0  # the common case: nothing to price outside the lock
        else:
            femto, tokens = self._price_estimate(name, estimate)
        with self._lock:
            if estimate is None:
                femto, tokens = self._expect.get(name, (femto, tokens))
            limit = self._max_femto
            if limit is not None and (
                self._spent_femto + self._reserved_femto + (femto or 1) > limit
            ):
                self._refuse_if_over(femto, tokens, name)
            limit = self._max_tokens
            if limit is not None and (
                self._spent_tokens + self._reserved_tokens + (tokens or 1) > limit
            ):
                self._refuse_if_over(femto, tokens, name)
            limit = self._max_requests
            if limit is not None and self._requests + self._reserved_requests + 1 > limit:
                self._refuse_if_over(femto, tokens, name)
            self._reserved_femto += femto
            self._reserved_tokens += tokens
            self._reserved_requests += 1
        return name, femto, tokens, None

    def charge(self, model: str, usage: UsageSnapshot) -> TurnCost:
        """Add a call's actual cost, tokens and one request; never refuses.

        Use when no reservation was made; follow with :meth:`check_after` to
        learn whether the spend went over.
        """
        _require_snapshot(usage)
        name = _model_name(model)
        pricing = _lookup(name)
        femto = 0 if pricing is None else _femto(pricing, usage, name)
        self._add_spend(name, femto, usage.input_tokens + usage.output_tokens)
        return TurnCost(name, usage, femto, pricing is not None)

    def is_exceeded(self) -> bool:
        """Return True when spending is strictly over any limit."""
        with self._lock:
            return (
                (self._max_femto is not None and self._spent_femto > self._max_femto)
                or (self._max_tokens is not None and self._spent_tokens > self._max_tokens)
                or (self._max_requests is not None and self._requests > self._max_requests)
            )

    def summary(self) -> dict[str, object]:
        """Return limits, spending and reservations as a JSON-serialisable dict."""
        with self._lock:
            spent, reserved = self._spent_femto, self._reserved_femto
            tokens, reserved_tokens = self._spent_tokens, self._reserved_tokens
            requests, reserved_requests = self._requests, self._reserved_requests
        max_usd = self._limits.max_usd
        return {
            "max_usd": None if max_usd is None else str(max_usd),
            "max_total_tokens": self._max_tokens,
            "max_requests": self._max_requests,
            "spent_usd": str(_usd(spent)),
            "reserved_usd": str(_usd(reserved)),
            "spent_tokens": tokens,
            "reserved_tokens": reserved_tokens,
            "requests": requests,
            "reserved_requests": reserved_requests,
        }

    def __repr__(self) -> str:
        return f"Budget({self._limits!r}, spent_usd={self.spent_usd})"

    def _price_estimate(self, name: str, estimate: UsageSnapshot | None) -> tuple[int, int]:
        """Return the estimate's (femto-dollars, tokens); refuse unpriced models if fail-closed."""
        if estimate is not None:
            _require_snapshot(estimate)
        if not name:
            return 0, 0 if estimate is None else estimate.total_tokens
        pricing = _lookup(name)
        if pricing is None and self._fail_closed and self._max_femto is not None:
            raise BudgetExceededError(
                f"budget refused model {name!r}: it has no pricing and the budget fails "
                "closed on unpriced models",
                limit_kind="usd",
                limit=_usd(self._max_femto),
                spent=self.spent_usd,
                reserved=self.reserved_usd,
                limit_usd=_usd(self._max_femto),
                spent_usd=self.spent_usd,
                model=name,
            )
        if estimate is None:
            estimate = self.default_estimate
            if estimate is None:
                return 0, 0
        femto = 0 if pricing is None else _femto(pricing, estimate, name)
        return femto, estimate.total_tokens

    def _refuse_if_over(self, femto: int, tokens: int, model: str) -> None:
        """Raise if a call costing ``femto``/``tokens`` does not fit (lock held)."""
        checks: tuple[tuple[LimitKind, int | None, int, int, int], ...] = (
            ("usd", self._max_femto, self._spent_femto, self._reserved_femto, femto),
            ("tokens", self._max_tokens, self._spent_tokens, self._reserved_tokens, tokens),
            ("requests", self._max_requests, self._requests, self._reserved_requests, 1),
        )
        for kind, limit, spent, reserved, wanted in checks:
            if limit is None:
                continue
            committed = spent + reserved
            if committed >= limit or committed + wanted > limit:
                raise self._error(kind, limit, spent, reserved=reserved, wanted=wanted, model=model)

    def _error(
        self,
        kind: LimitKind,
        limit: int,
        spent: int,
        *,
        reserved: int = 0,
        wanted: int = 0,
        model: str = "",
        after: bool = False,
    ) -> BudgetExceededError:
        """Build the error for ``kind`` from raw integer figures (lock held)."""
        return _limit_error(
            kind,
            limit,
            spent,
            reserved=reserved,
            wanted=wanted,
            model=model,
            after=after,
            limit_femto=self._max_femto,
            spent_femto=self._spent_femto,
        )

    def _add_spend(self, name: str, femto: int, tokens: int) -> None:
        with self._lock:
            self._spent_femto += femto
            self._spent_tokens += tokens
            self._requests += 1
            self._expect[name] = (femto, tokens)

    def _count_resumed(
        self,
        session_id: str,
        spent: tuple[int, int, int],
        expect: dict[str, tuple[int, int]],
        counted: Callable[[], tuple[int, int, int]],
    ) -> None:
        """Count a resumed session's logged ``spent`` (femto, tokens, requests) exactly once.

        Adds only what the log holds beyond what this budget already counted
        for ``session_id``: ``counted`` reports that from now on (the resumed
        session's tracker: the log's figures plus its new turns), so resuming
        the same session again adds each record once. ``expect`` gives what a
        model's next call should hold, for models this budget has not seen.
        """
        with self._lock:  # counted() takes its tracker's lock, which never waits on ours
            earlier = self._resumed.get(session_id)
            done = (0, 0, 0) if earlier is None else earlier()
            femto, tokens, requests = (
                max(0, now - before) for now, before in zip(spent, done, strict=True)
            )
            self._spent_femto += femto
            self._spent_tokens += tokens
            self._requests += requests
            for name, figures in expect.items():
                self._expect.setdefault(name, figures)
            self._resumed[session_id] = counted

    def _settle(self, reservation: BudgetReservation, femto: int, tokens: int) -> None:
        with self._lock:
            state = reservation._state
            if state != "active":
                raise ReservationError(
                    f"cannot settle a {state} reservation for model {reservation.model!r}; "
                    "use Budget.charge to add spend without one"
                )
            reservation._state = "settled"
            self._settle_locked(
                reservation.model, reservation._femto, reservation._tokens, femto, tokens
            )

    def _settle_hold(
        self,
        name: str,
        held_femto: int,
        held_tokens: int,
        femto: int,
        tokens: int,
        *,
        key: str | None = None,
    ) -> None:
        """Replace a hold taken by :meth:`_hold` with the call's actual cost."""
        with self._lock:
            self._settle_locked(name, held_femto, held_tokens, femto, tokens)

    def _settle_locked(
        self, name: str, held_femto: int, held_tokens: int, femto: int, tokens: int
    ) -> None:
        self._reserved_femto -= held_femto
        self._reserved_tokens -= held_tokens
        self._reserved_requests -= 1
        self._spent_femto += femto
        self._spent_tokens += tokens
        self._requests += 1
        self._expect[name] = (femto, tokens)  # what the model's next call should hold

    def _release(self, reservation: BudgetReservation) -> bool:
        with self._lock:
            if reservation._state != "active":
                return False
            reservation._state = "released"
            self._release_locked(reservation._femto, reservation._tokens)
            return True

    def _release_hold(self, held_femto: int, held_tokens: int, key: str | None = None) -> None:
        """Give back a hold taken by :meth:`_hold` (the call was not billed)."""
        with self._lock:
            self._release_locked(held_femto, held_tokens)

    def _release_locked(self, held_femto: int, held_tokens: int) -> None:
        self._reserved_femto -= held_femto
        self._reserved_tokens -= held_tokens
        self._reserved_requests -= 1


class BudgetReservation:
    """An estimate held by a :class:`Budget` until the call it guards finishes.

    Made by :meth:`Budget.reserve`. :meth:`settle` replaces the hold with the
    actual spend (once: a second settle, or a settle after release, raises
    :class:`ReservationError` so nothing is charged twice); :meth:`release`
    drops the hold and is a no-op when already settled or released. As a
    context manager it releases on exit unless settled. Safe to share
    between threads (its state is guarded by the budget's lock).
    """

    __slots__ = ("_budget", "_femto", "_key", "_state", "_tokens", "model")

    def __init__(
        self, budget: Budget, model: str, femto: int, tokens: int, key: str | None = None
    ) -> None:
        self._budget = budget
        self._key = key  # where a shared budget keeps the hold
        self.model = model
        self._femto = femto
        self._tokens = tokens
        self._state: Literal["active", "settled", "released"] = "active"

    @property
    def budget(self) -> Budget:
        """The budget holding this reservation."""
        return self._budget

    @property
    def state(self) -> Literal["active", "settled", "released"]:
        """``"active"`` until settled or released."""
        return self._state

    @property
    def reserved_usd(self) -> Decimal:
        """The estimated cost held."""
        return _usd(self._femto)

    @property
    def reserved_tokens(self) -> int:
        """The estimated tokens held."""
        return self._tokens

    def settle(self, actual: UsageSnapshot) -> TurnCost:
        """Replace the hold with the actual usage's cost and return that cost.

        The actual cost is charged even when it exceeds the estimate (the
        money is spent); follow with :meth:`Budget.check_after` to learn
        whether that went over a limit.
        """
        _require_snapshot(actual)
        name = _model_name(self.model)
        pricing = _lookup(name)
        femto = 0 if pricing is None else _femto(pricing, actual, name)
        self._budget._settle(self, femto, actual.input_tokens + actual.output_tokens)
        return TurnCost(name, actual, femto, pricing is not None)

    def release(self) -> bool:
        """Drop the hold; return False (and do nothing) if already settled or released."""
        return self._budget._release(self)

    def __enter__(self) -> BudgetReservation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._budget._release(self)

    def __repr__(self) -> str:
        return (
            f"BudgetReservation(model={self.model!r}, state={self._state!r}, "
            f"reserved_usd={self.reserved_usd}, reserved_tokens={self._tokens})"
        )


_MAX_SPELLINGS: Final = 4096
"""Model-name spellings a budget remembers (stripped once each), at most."""


def _limit_error(
    kind: LimitKind,
    limit: int,
    spent: int,
    *,
    reserved: int,
    wanted: int,
    model: str,
    after: bool,
    limit_femto: int | None,
    spent_femto: int,
) -> BudgetExceededError:
    """Build the :class:`BudgetExceededError` of one limit from raw integer figures."""
    show: Callable[[int], str] = _money if kind == "usd" else str
    raw = (limit, spent, reserved, wanted)
    figures: tuple[Decimal | int, ...] = tuple(_usd(v) for v in raw) if kind == "usd" else raw
    unit = {"usd": "", "tokens": " tokens", "requests": " requests"}[kind]
    if after:
        message = f"budget exceeded ({kind}): spent {show(spent)}{unit} > limit {show(limit)}"
    elif spent + reserved >= limit:
        message = (
            f"budget exhausted ({kind}): spent {show(spent)} + reserved {show(reserved)}"
            f"{unit} has reached the limit {show(limit)}"
        )
    else:
        message = (
            f"budget would be exceeded ({kind}): spent {show(spent)} + reserved "
            f"{show(reserved)} + this call {show(wanted)}{unit} > limit {show(limit)}"
        )
    if model:
        message += f" (model {model!r})"
    return BudgetExceededError(
        message,
        limit_kind=kind,
        limit=figures[0],
        spent=figures[1],
        reserved=figures[2],
        requested=figures[3],
        limit_usd=None if limit_femto is None else _usd(limit_femto),
        spent_usd=_usd(spent_femto),
        model=model,
    )
