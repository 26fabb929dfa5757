"""A budget whose spending and holds live on Redis, shared by every worker that names it.

Private to :mod:`~techrevati.runtime.budget`: ``Budget(..., store=store,
name=...)`` makes a :class:`_SharedBudget`. Each reserve, settle, release
and charge is one run of the budget script
(:data:`~techrevati.runtime._redis_scripts.BUDGET`), which checks and
updates the fleet's figures atomically with exact integer money (two limbs:
dollars and femto-dollars below a dollar). Every reply carries the fleet's
figures, which the budget mirrors into the fields the local :class:`Budget`
reads, so its checks and its error messages are written once, there.

When the store cannot decide: fail-closed (the default) refuses with
:class:`~techrevati.runtime.errors.StoreUnavailableError`; fail-open
decides with a local budget holding this worker's share of each limit.
Spending that could not be recorded on the server is kept in order and
sent before the next step that reaches it, so no spend is lost to an
outage.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from typing import Any, Final, NoReturn

from techrevati.runtime._log import get_logger
from techrevati.runtime._money import _usd
from techrevati.runtime._redis_scripts import BUDGET
from techrevati.runtime.budget import Budget, BudgetReservation, UsageLimits
from techrevati.runtime.errors import InvalidValueError, ReservationError, StoreUnavailableError
from techrevati.runtime.redis_store import FallbackError, RedisStore, checked_primitive_name
from techrevati.runtime.usage import UsageSnapshot

_LOG: Final = get_logger("techrevati.runtime.budget")

_DOLLAR: Final = 10**15
"""Femto-dollars in one dollar: the budget script's lower limb."""

_LOCAL: Final = "local"
"""The key of a hold the local stand-in took while the store was unavailable."""

_MAX_BACKLOG: Final = 10_000
"""Unsent settlements kept one by one; past this they are folded into one charge."""


class _SharedBudget(Budget):
    """A :class:`Budget` on a :class:`RedisStore`; see the module docstring."""

    __slots__ = ("_backlog", "_draining", "_keys", "_lease_ms", "_local", "_store", "_what")

    _shared = True

    def __init__(
        self,
        limits: UsageLimits | None = None,
        *,
        store: RedisStore,
        name: str = "",
        **kwargs: Any,
    ) -> None:
        if not isinstance(store, RedisStore):
            raise InvalidValueError(f"store must be a RedisStore or None, got {store!r}")
        checked_primitive_name(name)
        super().__init__(limits, store=store, name=name, **kwargs)
        self._store = store
        self._keys = store.keys("budget", name, "totals", "holds", "amounts")
        self._lease_ms = int(store.lease_ttl * 1000)
        self._what = f"budget {name!r}"
        self._backlog: deque[tuple[str, int, int, int]] = deque()
        self._draining = threading.Lock()  # held by the one thread sending the backlog
        own = self._limits
        share = store.share
        self._local = Budget(
            UsageLimits(
                None if own._max_femto is None else _usd(share(own._max_femto)),
                None if own.max_total_tokens is None else share(own.max_total_tokens),
                None if own.max_requests is None else share(own.max_requests),
            ),
            fail_closed_on_unpriced=self._fail_closed,
            default_estimate=self.default_estimate,
        )

    @property
    def store(self) -> RedisStore:
        """The shared store this budget keeps its state in."""
        return self._store

    # -- the engine: each step one script run -----------------------------------------------

    def _hold(self, model: str, estimate: UsageSnapshot | None) -> tuple[str, int, int, str | None]:
        name, femto, tokens = self._estimate(model, estimate)
        key = self._store.new_id()
        try:
            reply = self._run("reserve", *self._reservation(key, femto, tokens))
        except FallbackError:
            return self._hold_locally(model, estimate)
        return self._held(reply, name, femto, tokens, key)

    async def _ahold(
        self, model: str, estimate: UsageSnapshot | None
    ) -> tuple[str, int, int, str | None]:
        name, femto, tokens = self._estimate(model, estimate)
        key = self._store.new_id()
        try:
            reply = await self._arun("reserve", *self._reservation(key, femto, tokens))
        except FallbackError:
            return self._hold_locally(model, estimate)
        return self._held(reply, name, femto, tokens, key)

    def _reservation(self, key: str, femto: int, tokens: int) -> tuple[object, ...]:
        """Return the reserve step's arguments: the hold, its lease and the caps."""
        limit = self._max_femto
        return (
            key,
            *_limbs(femto),
            tokens,
            self._lease_ms,
            *((-1, 0) if limit is None else _limbs(limit)),
            -1 if self._max_tokens is None else self._max_tokens,
            -1 if self._max_requests is None else self._max_requests,
        )

    def _held(
        self, reply: Any, name: str, femto: int, tokens: int, key: str
    ) -> tuple[str, int, int, str | None]:
        """Read the reserve step's reply (figures already mirrored): the hold, or the refusal."""
        if int(reply[0]) != 1:
            with self._lock:
                self._refuse_if_over(femto, tokens, name)
            raise AssertionError("unreachable: the server refused what its figures admit")
        return name, femto, tokens, key

    def _hold_locally(
        self, model: str, estimate: UsageSnapshot | None
    ) -> tuple[str, int, int, str | None]:
        local = self._local._hold(model, estimate)
        return local[0], local[1], local[2], _LOCAL

    def reserve(self, model: str, estimate: UsageSnapshot | None = None) -> BudgetReservation:
        name, femto, tokens, key = self._hold(model, estimate)
        return BudgetReservation(self, name, femto, tokens, key)

    def _settle(self, reservation: BudgetReservation, femto: int, tokens: int) -> None:
        with self._lock:
            state = reservation._state
            if state != "active":
                raise ReservationError(
                    f"cannot settle a {state} reservation for model {reservation.model!r}; "
                    "use Budget.charge to add spend without one"
                )
            reservation._state = "settled"
        self._settle_hold(
            reservation.model,
            reservation._femto,
            reservation._tokens,
            femto,
            tokens,
            key=reservation._key,
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
        with self._lock:
            self._expect[name] = (femto, tokens)
        if key == _LOCAL:
            self._local._settle_hold(name, held_femto, held_tokens, femto, tokens)
            self._record(("", femto, tokens, 1))  # spent: the fleet must hear of it
            return
        self._record((key or "", femto, tokens, 1))

    def _release(self, reservation: BudgetReservation) -> bool:
        with self._lock:
            if reservation._state != "active":
                return False
            reservation._state = "released"
        self._release_hold(reservation._femto, reservation._tokens, reservation._key)
        return True

    def _release_hold(self, held_femto: int, held_tokens: int, key: str | None = None) -> None:
        if key == _LOCAL:
            self._local._release_hold(held_femto, held_tokens)
            return
        # unreachable: the hold's lease ends it on the server by itself
        with contextlib.suppress(FallbackError):
            self._run("release", key or "", local=False)

    def _add_spend(self, name: str, femto: int, tokens: int) -> None:
        with self._lock:
            self._expect[name] = (femto, tokens)
        self._record(("", femto, tokens, 1))

    def _count_resumed(self, session_id: str, spent: Any, expect: Any, counted: Any) -> None:
        with self._lock:
            earlier = self._resumed.get(session_id)
            done = (0, 0, 0) if earlier is None else earlier()
            femto, tokens, requests = (
                max(0, now - before) for now, before in zip(spent, done, strict=True)
            )
            for name, figures in expect.items():
                self._expect.setdefault(name, figures)
            self._resumed[session_id] = counted
        if femto or tokens or requests:
            self._record(("", femto, tokens, requests))

    # -- reads: refresh the mirror, then the local checks ------------------------------------

    def check_before(self, estimate: UsageSnapshot | None = None, *, model: str = "") -> None:
        self._refresh(strict=True)
        super().check_before(estimate, model=model)

    def check_after(self) -> None:
        self._refresh(strict=True)
        super().check_after()

    def is_exceeded(self) -> bool:
        self._refresh(strict=True)
        return super().is_exceeded()

    def summary(self) -> dict[str, object]:
        self._refresh(strict=False)
        return {**super().summary(), "store": self._store.prefix, "name": self.name}

    @property
    def remaining_usd(self) -> Any:
        """Dollars left in the fleet (the last figures read when the store is unavailable)."""
        self._refresh(strict=False)
        return Budget.remaining_usd.fget(self)  # type: ignore[attr-defined]

    @property
    def spent_usd(self) -> Any:
        """Dollars the fleet spent (the last figures read when the store is unavailable)."""
        self._refresh(strict=False)
        return Budget.spent_usd.fget(self)  # type: ignore[attr-defined]

    @property
    def reserved_usd(self) -> Any:
        """Dollars held by the fleet's open reservations."""
        self._refresh(strict=False)
        return Budget.reserved_usd.fget(self)  # type: ignore[attr-defined]

    @property
    def spent_tokens(self) -> int:
        """Tokens the fleet spent."""
        self._refresh(strict=False)
        return self._spent_tokens

    @property
    def reserved_tokens(self) -> int:
        """Tokens held by the fleet's open reservations."""
        self._refresh(strict=False)
        return self._reserved_tokens

    @property
    def requests(self) -> int:
        """Requests the fleet settled or charged."""
        self._refresh(strict=False)
        return self._requests

    @property
    def reserved_requests(self) -> int:
        """The fleet's open reservations."""
        self._refresh(strict=False)
        return self._reserved_requests

    def __repr__(self) -> str:
        return f"Budget({self._limits!r}, name={self.name!r}, store={self._store.prefix!r})"

    # -- plumbing ----------------------------------------------------------------------------

    def _estimate(self, model: str, estimate: UsageSnapshot | None) -> tuple[str, int, int]:
        """Price the call as the local budget does: (name, femto, tokens) to hold."""
        from techrevati.runtime.pricing import _model_name  # noqa: PLC0415

        name = _model_name(model)
        femto, tokens = self._price_estimate(name, estimate)
        if estimate is None:
            with self._lock:
                femto, tokens = self._expect.get(name, (femto, tokens))
        return name, femto, tokens

    def _record(self, spend: tuple[str, int, int, int]) -> None:
        """Send one settlement (hold key, femto, tokens, requests); keep it if the store is out.

        With nothing kept from an outage it goes straight to the server;
        otherwise after what is kept, in order.
        """
        with self._lock:
            direct = not self._backlog
            if not direct:
                self._keep(spend)
        if direct:
            try:
                self._settle_on_server(spend)
            except FallbackError:
                with self._lock:
                    self._keep(spend)
                return
        self._drain()

    def _keep(self, spend: tuple[str, int, int, int]) -> None:
        """Keep a settlement for later (lock held); past the cap, fold them into one."""
        backlog = self._backlog
        backlog.append(spend)
        if len(backlog) > _MAX_BACKLOG:
            # Fold all but the first (which a drain may be sending) into one charge: nothing
            # is lost; their holds end on the server by their leases instead.
            first = backlog.popleft()
            femto = sum(kept[1] for kept in backlog)
            tokens = sum(kept[2] for kept in backlog)
            requests = sum(kept[3] for kept in backlog)
            _LOG.warning(
                "budget %r: %d unsent settlements folded into one", self.name, len(backlog)
            )
            self._backlog = deque([first, ("", femto, tokens, requests)])

    def _drain(self) -> None:
        """Send the kept settlements, oldest first, until none is left or the store is out.

        One thread drains at a time (the others leave theirs for it), so
        none is sent twice.
        """
        if not self._draining.acquire(blocking=False):
            return
        try:
            while True:
                with self._lock:
                    if not self._backlog:
                        return
                    spend = self._backlog[0]
                try:
                    self._settle_on_server(spend)
                except FallbackError:
                    return  # still out: kept for the next step
                with self._lock:
                    if self._backlog and self._backlog[0] is spend:
                        self._backlog.popleft()
        finally:
            self._draining.release()

    def _settle_on_server(self, spend: tuple[str, int, int, int]) -> None:
        key, femto, tokens, requests = spend
        self._run("settle", key, *_limbs(femto), tokens, requests, local=False, drain=False)

    def _refresh(self, *, strict: bool) -> None:
        """Read the fleet's figures into the mirror; strict: follow the store's policy."""
        try:
            self._run("read", local=strict)
        except FallbackError:
            if strict:
                local = self._local
                with self._lock, local._lock:
                    self._spent_femto, self._reserved_femto = local._spent_femto, 0
                    self._spent_tokens, self._reserved_tokens = local._spent_tokens, 0
                    self._requests, self._reserved_requests = local._requests, 0

    def _run(self, op: str, *args: object, local: bool = True, drain: bool = True) -> Any:
        """Run one step and mirror the figures it returns.

        On failure: raise the typed error when ``local`` and the policy is
        fail-closed, else :class:`FallbackError` (decide locally, or not at all).
        """
        if drain and self._backlog:
            self._drain()
        try:
            reply = self._store.run(BUDGET, self._keys, (op, *args), self._what)
        except StoreUnavailableError:
            self._fall_back(local=local)
        self._mirror(reply)
        return reply

    async def _arun(self, op: str, *args: object) -> Any:
        """Async twin of :meth:`_run` for a decision (kept spend is sent by the next sync step)."""
        try:
            reply = await self._store.arun(BUDGET, self._keys, (op, *args), self._what)
        except StoreUnavailableError:
            self._fall_back(local=True)
        self._mirror(reply)
        return reply

    def _fall_back(self, *, local: bool) -> NoReturn:
        """Re-raise the store's error or raise :class:`FallbackError` (inside an except block)."""
        if local and self._store.budget_policy == "fail_closed":
            raise  # noqa: PLE0704
        raise FallbackError from None

    def _mirror(self, reply: Any) -> None:
        """Copy the fleet's figures from a reply into the fields the local checks read."""
        figures = [int(value) for value in reply[2:10]]
        with self._lock:
            self._spent_femto = figures[0] * _DOLLAR + figures[1]
            self._spent_tokens = figures[2]
            self._requests = figures[3]
            self._reserved_femto = figures[4] * _DOLLAR + figures[5]
            self._reserved_tokens = figures[6]
            self._reserved_requests = figures[7]


def _limbs(femto: int) -> tuple[int, int]:
    """Split femto-dollars into the script's two limbs (whole dollars, femto below one)."""
    return divmod(femto, _DOLLAR)
