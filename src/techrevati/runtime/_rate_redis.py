"""A rate limiter's state on Redis: the sliding-window log as one sorted set per limiter.

Private to :mod:`~techrevati.runtime.rate_limit`. :class:`_RedisWindow`
implements the :class:`~techrevati.runtime._rate_window._RateStore` steps
with one Lua script call each (:data:`~techrevati.runtime._redis_scripts.LIMITER`),
timed by the server's clock. Open calls are leases that end by themselves
``lease_ttl`` after admission, so a worker killed mid-call frees its
concurrency slot. When the store cannot decide and its limiter policy is
fail-open, a local window holding this worker's share of each limit decides
instead; calls it admitted end there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NoReturn

from techrevati.runtime._rate_window import WINDOW_SECONDS, Limits, Refusal, Ticket, _LocalWindow
from techrevati.runtime._redis_scripts import LIMITER
from techrevati.runtime.errors import StoreUnavailableError
from techrevati.runtime.redis_store import FallbackError

if TYPE_CHECKING:
    from techrevati.runtime.redis_store import RedisStore

POLL_SECONDS: Final = 0.05
"""How often a caller waiting for a shared concurrency slot asks again."""

_WINDOW_MS: Final = int(WINDOW_SECONDS * 1000)


class _SharedTicket(Ticket):
    """An admission recorded on Redis: its id, and whether this worker ended it."""

    __slots__ = ("admitted_input", "admitted_output", "ended", "id")

    def __init__(self, ticket_id: str, input_tokens: int, output_tokens: int) -> None:
        super().__init__(0.0, input_tokens, output_tokens)
        self.id = ticket_id
        self.admitted_input = input_tokens
        self.admitted_output = output_tokens
        self.ended = False


class _RedisWindow:
    """One limiter's window, shared by every worker naming it on the same store."""

    __slots__ = ("_keys", "_lease_ms", "_limits", "_local", "_max_concurrent", "_store", "_what")

    poll: Final = POLL_SECONDS

    def __init__(
        self, store: RedisStore, name: str, limits: Limits, max_concurrent: int | None
    ) -> None:
        self._store = store
        self._keys = store.keys("limiter", name, "log", "totals", "open", "caps")
        self._limits = limits
        self._max_concurrent = max_concurrent
        self._lease_ms = int(store.lease_ttl * 1000)
        self._what = f"limiter {name!r}"
        share = store.share
        self._local = _LocalWindow(
            (
                None if limits[0] is None else share(limits[0]),
                None if limits[1] is None else share(limits[1]),
                None if limits[2] is None else share(limits[2]),
                None if limits[3] is None else share(limits[3]),
            ),
            None if max_concurrent is None else share(max_concurrent),
        )

    def admit(self, now: float, input_tokens: int, output_tokens: int) -> Ticket | Refusal:
        """Admit a call on the server (or, fail-open and unreachable, locally)."""
        ticket_id, args = self._admission(input_tokens, output_tokens)
        try:
            reply = self._run("admit", *args, local=True)
        except FallbackError:
            return self._local.admit(now, input_tokens, output_tokens)
        return _admitted(reply, ticket_id, input_tokens, output_tokens)

    async def aadmit(self, now: float, input_tokens: int, output_tokens: int) -> Ticket | Refusal:
        """Async twin of :meth:`admit`: the caller's event loop runs while Redis decides."""
        ticket_id, args = self._admission(input_tokens, output_tokens)
        try:
            reply = await self._arun("admit", *args)
        except FallbackError:
            return self._local.admit(now, input_tokens, output_tokens)
        return _admitted(reply, ticket_id, input_tokens, output_tokens)

    def _admission(self, input_tokens: int, output_tokens: int) -> tuple[str, tuple[object, ...]]:
        """Return a fresh ticket id and the admit step's arguments."""
        ticket_id = self._store.new_id()
        limits = [-1 if limit is None else limit for limit in self._limits]
        most = -1 if self._max_concurrent is None else self._max_concurrent
        return ticket_id, (input_tokens, output_tokens, *limits, most, ticket_id)

    def end(
        self, ticket: Ticket, now: float, actual: tuple[int, int] | None, *, settle: bool
    ) -> bool:
        """End a call: settle it to ``actual`` tokens, or release it; False if ended already."""
        if not isinstance(ticket, _SharedTicket):
            return self._local.end(ticket, now, actual, settle=settle)
        if ticket.ended:
            return False
        ticket.ended = True
        counts = (ticket.admitted_input, ticket.admitted_output) if actual is None else actual
        # unreachable: the lease ends by itself; the estimate stays in the window
        with contextlib.suppress(FallbackError):
            self._run(
                "end",
                ticket.id,
                ticket.admitted_input,
                ticket.admitted_output,
                1 if settle else 0,
                *counts,
                local=False,
            )
        ticket.input, ticket.output = counts if settle else (0, 0)
        return True

    def tighten(self, now: float, dimension: int, remaining: int, until: float) -> None:
        """Record for the whole fleet what the provider says is left, until its reset."""
        self._local.tighten(now, dimension, remaining, until)
        with contextlib.suppress(FallbackError):
            self._run(
                "tighten", dimension + 1, remaining, max(0, int((until - now) * 1000)), local=False
            )

    def wait_for_end(self, ends: int, timeout: float) -> None:  # pragma: no cover (see poll)
        """Not used: a limiter on a store polls every :data:`POLL_SECONDS` instead."""

    def add_waiter(self, ends: int, wake: Callable[[], object]) -> bool:  # pragma: no cover
        """Not used: a limiter on a store polls every :data:`POLL_SECONDS` instead."""
        return False

    def remove_waiter(self, wake: Callable[[], object]) -> None:  # pragma: no cover
        """Not used (see :meth:`add_waiter`)."""

    def totals(self, now: float) -> tuple[int, int, int, int, int]:
        """Return the fleet's requests, tokens, input and output tokens and open calls."""
        try:
            reply = self._run("usage", local=True)
        except FallbackError:
            return self._local.totals(now)
        requests, inp, out, open_calls = (int(value) for value in reply[:4])
        return requests, inp + out, inp, out, open_calls

    def _run(self, op: str, *args: object, local: bool) -> list[Any]:
        """Run one step; on failure raise :class:`FallbackError` (fail-open) or the typed error."""
        try:
            reply: Any = self._store.run(LIMITER, self._keys, self._argv(op, args), self._what)
        except StoreUnavailableError:
            self._fall_back(local=local)
        return reply if isinstance(reply, list) else [reply]

    async def _arun(self, op: str, *args: object) -> list[Any]:
        """Async twin of :meth:`_run` for a decision (``local=True``)."""
        try:
            reply: Any = await self._store.arun(
                LIMITER, self._keys, self._argv(op, args), self._what
            )
        except StoreUnavailableError:
            self._fall_back(local=True)
        return reply if isinstance(reply, list) else [reply]

    def _argv(self, op: str, args: tuple[object, ...]) -> tuple[object, ...]:
        return (op, _WINDOW_MS, self._lease_ms, *args)

    def _fall_back(self, *, local: bool) -> NoReturn:
        """Re-raise the store's error (a fail-closed decision) or raise :class:`FallbackError`."""
        if local and self._store.limiter_policy == "fail_closed":
            raise  # noqa: PLE0704 (called only inside an except block)
        raise FallbackError from None


def _admitted(
    reply: list[Any], ticket_id: str, input_tokens: int, output_tokens: int
) -> Ticket | Refusal:
    """Read the admit step's reply: the ticket, or why not."""
    if int(reply[0]) == 1:
        return _SharedTicket(ticket_id, input_tokens, output_tokens)
    wait = int(reply[2])
    return Refusal(_text(reply[1]), None if wait < 0 else wait / 1000, int(reply[3]))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
