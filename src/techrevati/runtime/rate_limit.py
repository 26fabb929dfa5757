"""Rate limits for one provider or model: requests, tokens and concurrent calls per minute.

A :class:`RateLimiter` admits a call only while it fits every limit you
give it (requests per minute; tokens per minute in total, and input and
output tokens separately where the provider limits them separately, as
Anthropic does; concurrent calls). Admission holds the call's estimated
tokens; settle the returned :class:`RateLease` with the actual usage
afterwards, or release it, as with a budget's reservations.
:meth:`RateLimiter.acquire` waits (on the injected clock and sleep) up to
``max_wait`` and then raises :class:`RateLimitedError`;
:meth:`RateLimiter.try_acquire` never waits. :meth:`RateLimiter.observe`
tightens the limiter to what the provider's own headers say is left.

The algorithm is a sliding-window log, not GCRA: each admission counts
for exactly 60 seconds after it was admitted, so the amounts admitted in
any window of 60 seconds never exceed the limit (requests, and each token
limit, counted by the estimates, or by the actual usage once settled). A
fixed window lets 2x the limit through across its edge, and GCRA (a token
bucket) either admits ``limit + burst`` per 60 s (2x with a burst big
enough for one large request) or, with a small burst, can never admit a
request larger than that burst. The cost is memory: one small record per
admission in the last minute.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from techrevati.runtime._clock import Clock, WallClock, utc_now
from techrevati.runtime._rate_headers import read_caps
from techrevati.runtime._rate_window import (
    DIMENSIONS,
    WINDOW_SECONDS,
    Refusal,
    Ticket,
    _LocalWindow,
    _RateStore,
)
from techrevati.runtime._validate import (
    callable_or_none,
    int_at_least,
    non_negative_number,
    optional_int_at_least,
)
from techrevati.runtime.errors import InvalidValueError, RateLimitedError, ReservationError

if TYPE_CHECKING:
    from techrevati.runtime.redis_store import RedisStore

__all__ = [
    "WINDOW_SECONDS",
    "RateLease",
    "RateLimitedError",
    "RateLimiter",
    "TokenCounts",
]

DEFAULT_MAX_WAIT = 60.0
"""Seconds :meth:`RateLimiter.acquire` waits by default before it raises."""


class TokenCounts(Protocol):
    """Anything with ``input_tokens`` and ``output_tokens`` ints (a ``UsageSnapshot``)."""

    @property
    def input_tokens(self) -> int:  # noqa: D102
        ...

    @property
    def output_tokens(self) -> int:  # noqa: D102
        ...


class RateLimiter:
    """Requests, tokens and concurrent calls per minute for one provider or model.

    Every limit is an int >= 1, or ``None`` for no limit of that kind:
    ``requests_per_minute``, ``tokens_per_minute`` (input + output),
    ``input_tokens_per_minute``, ``output_tokens_per_minute`` and
    ``max_concurrent`` (calls admitted and not yet settled or released).
    ``max_wait`` (seconds, >= 0, ``inf`` allowed) is how long
    :meth:`acquire` waits when not told otherwise. ``clock`` is a monotonic
    clock in seconds; ``sleep`` and ``async_sleep`` wait for the time a
    limit needs; ``wall_clock`` (aware UTC) reads Anthropic's reset times.
    Thread-safe; exact: token counts are ints under one lock.
    """

    __slots__ = (
        "_async_sleep",
        "_clock",
        "_limits",
        "_max_concurrent",
        "_sleep",
        "_state",
        "_store",
        "_wall_clock",
        "max_wait",
        "name",
    )

    def __init__(
        self,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        input_tokens_per_minute: int | None = None,
        output_tokens_per_minute: int | None = None,
        max_concurrent: int | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
        name: str = "",
        clock: Clock | None = None,
        sleep: Callable[[float], object] | None = None,
        async_sleep: Callable[[float], Awaitable[object]] | None = None,
        wall_clock: WallClock | None = None,
        store: RedisStore | None = None,
    ) -> None:
        self._limits = (
            optional_int_at_least("requests_per_minute", requests_per_minute, 1),
            optional_int_at_least("tokens_per_minute", tokens_per_minute, 1),
            optional_int_at_least("input_tokens_per_minute", input_tokens_per_minute, 1),
            optional_int_at_least("output_tokens_per_minute", output_tokens_per_minute, 1),
        )
        self._max_concurrent = optional_int_at_least("max_concurrent", max_concurrent, 1)
        self.max_wait = non_negative_number("max_wait", max_wait, finite=False)
        """Seconds :meth:`acquire` waits when given no ``max_wait``."""
        if not isinstance(name, str):
            raise InvalidValueError(f"name must be a str, got {name!r}")
        self.name = name
        """A label for errors and events (the provider or model)."""
        self._clock: Clock = callable_or_none("clock", clock) or time.monotonic
        self._sleep: Callable[[float], object] = callable_or_none("sleep", sleep) or time.sleep
        self._async_sleep = callable_or_none("async_sleep", async_sleep)
        self._wall_clock: WallClock = callable_or_none("wall_clock", wall_clock) or utc_now
        self._state: _RateStore
        self._store = None if store is None else _store(store)
        if self._store is None:
            self._state = _LocalWindow(self._limits, self._max_concurrent)
        else:
            from techrevati.runtime._rate_redis import _RedisWindow  # noqa: PLC0415
            from techrevati.runtime.redis_store import checked_primitive_name  # noqa: PLC0415

            self._state = _RedisWindow(
                self._store, checked_primitive_name(name), self._limits, self._max_concurrent
            )

    @property
    def store(self) -> RedisStore | None:
        """The shared store this limiter keeps its window in (None: this process)."""
        return self._store

    @property
    def requests_per_minute(self) -> int | None:
        """The request limit per 60 s window (None: unlimited)."""
        return self._limits[0]

    @property
    def tokens_per_minute(self) -> int | None:
        """The input + output token limit per 60 s window (None: unlimited)."""
        return self._limits[1]

    @property
    def input_tokens_per_minute(self) -> int | None:
        """The input token limit per 60 s window (None: unlimited)."""
        return self._limits[2]

    @property
    def output_tokens_per_minute(self) -> int | None:
        """The output token limit per 60 s window (None: unlimited)."""
        return self._limits[3]

    @property
    def max_concurrent(self) -> int | None:
        """The most calls open at once (None: unlimited)."""
        return self._max_concurrent

    def try_acquire(
        self,
        estimate: TokenCounts | None = None,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> RateLease | None:
        """Admit one call now if it fits every limit, else return None; never waits.

        The call's tokens are ``estimate``'s (a ``UsageSnapshot``) or the two
        counts (default 0). An estimate larger than a limit itself can never
        fit: it raises :class:`InvalidValueError` at once.
        """
        counts = self._counts(estimate, input_tokens, output_tokens)
        admitted = self._state.admit(self._clock(), *counts)
        return RateLease(self, admitted, 0.0) if isinstance(admitted, Ticket) else None

    def acquire(
        self,
        estimate: TokenCounts | None = None,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        max_wait: float | None = None,
    ) -> RateLease:
        """Admit one call, waiting up to ``max_wait`` seconds for room (default :attr:`max_wait`).

        Sleeps exactly until the refusing limit has room; when that is
        further away than the wait left, raises :class:`RateLimitedError` at
        once, naming the limit and how long until it has room. A wait for a
        concurrency slot ends when a call ends (a real wait on a condition).
        """
        counts = self._counts(estimate, input_tokens, output_tokens)
        limit = self._max_wait(max_wait)
        clock, state = self._clock, self._state
        start = clock()
        while True:
            now = clock()
            admitted = state.admit(now, *counts)
            if isinstance(admitted, Ticket):
                return RateLease(self, admitted, max(0.0, now - start))
            left = limit - (now - start)
            if admitted.wait is None:
                if left <= 0:
                    raise self._refused(admitted, limit)
                if state.poll is not None:  # a shared window: ask again shortly
                    self._sleep(min(left, state.poll))
                else:
                    state.wait_for_end(admitted.ends, min(left, _MAX_BLOCK))
            elif admitted.wait > left:
                raise self._refused(admitted, limit)
            else:
                self._sleep(admitted.wait)

    async def aacquire(
        self,
        estimate: TokenCounts | None = None,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        max_wait: float | None = None,
    ) -> RateLease:
        """Async twin of :meth:`acquire`: waits with ``async_sleep`` and a woken future."""
        import asyncio  # noqa: PLC0415 (the module itself does not need asyncio)

        counts = self._counts(estimate, input_tokens, output_tokens)
        limit = self._max_wait(max_wait)
        clock, state = self._clock, self._state
        shared = self._store is not None
        start = clock()
        while True:
            now = clock()
            if shared:  # the event loop runs while Redis decides
                admitted = await state.aadmit(now, *counts)  # type: ignore[attr-defined]
            else:
                admitted = state.admit(now, *counts)
            if isinstance(admitted, Ticket):
                return RateLease(self, admitted, max(0.0, now - start))
            left = limit - (now - start)
            if admitted.wait is None:
                if left <= 0:
                    raise self._refused(admitted, limit)
                if state.poll is not None:  # a shared window: ask again shortly
                    await self._pause(min(left, state.poll))
                    continue
                loop = asyncio.get_running_loop()
                ended = loop.create_future()

                def wake(
                    ended: asyncio.Future[None] = ended, loop: asyncio.AbstractEventLoop = loop
                ) -> None:
                    loop.call_soon_threadsafe(_resolve, ended)

                if state.add_waiter(admitted.ends, wake):
                    try:
                        await asyncio.wait_for(ended, min(left, _MAX_BLOCK))
                    except TimeoutError:
                        pass
                    finally:
                        state.remove_waiter(wake)
            elif admitted.wait > left:
                raise self._refused(admitted, limit)
            else:
                await self._pause(admitted.wait)

    async def _pause(self, seconds: float) -> None:
        if self._async_sleep is not None:
            await self._async_sleep(seconds)
        else:
            import asyncio  # noqa: PLC0415

            await asyncio.sleep(seconds)

    def observe(self, source: object) -> int:
        """Tighten the limiter to what the provider's rate-limit headers say is left.

        ``source`` is a response's or an error's headers (a dict,
        ``httpx.Headers``, ...) or an object carrying them (an openai or
        anthropic exception, a raw response: ``.headers`` or
        ``.response.headers``). Reads OpenAI's ``x-ratelimit-remaining-*``
        with ``x-ratelimit-reset-*`` (durations such as ``6m0s``, ``20ms``),
        Anthropic's ``anthropic-ratelimit-*-remaining`` with ``-reset`` (RFC
        3339 times), and ``retry-after(-ms)`` (no request until then). Until
        each reset, admissions of that kind stop once what the server said
        is left is used up; the limits you set still hold. Malformed or
        absent headers are ignored; never raises. Returns how many caps it set.
        """
        try:
            caps = read_caps(source, self._wall_now)
        except Exception:  # a hostile header container tells us nothing
            return 0
        if caps:
            now = self._clock()
            for dimension, remaining, seconds in caps:
                self._state.tighten(now, dimension, remaining, now + seconds)
        return len(caps)

    def usage(self) -> dict[str, int]:
        """Return what the window holds now: requests and tokens per kind, and calls open."""
        totals = self._state.totals(self._clock())
        return {**dict(zip(DIMENSIONS, totals, strict=False)), "open": totals[4]}

    def __repr__(self) -> str:
        limits = ", ".join(
            f"{kind}_per_minute={limit}"
            for kind, limit in zip(DIMENSIONS, self._limits, strict=True)
            if limit is not None
        )
        return f"RateLimiter({limits}, max_concurrent={self._max_concurrent})"

    def _counts(
        self, estimate: TokenCounts | None, input_tokens: int | None, output_tokens: int | None
    ) -> tuple[int, int]:
        """Check a call's token estimate once; refuse one no window could ever hold."""
        tokens_in, tokens_out = _token_pair("estimate", estimate, input_tokens, output_tokens)
        wanted = (tokens_in + tokens_out, tokens_in, tokens_out)
        for kind, amount, limit in zip(DIMENSIONS[1:], wanted, self._limits[1:], strict=True):
            if limit is not None and amount > limit:
                raise InvalidValueError(
                    f"a call of {amount} {kind} can never fit {kind}_per_minute={limit}"
                )
        return tokens_in, tokens_out

    def _max_wait(self, max_wait: float | None) -> float:
        if max_wait is None:
            return self.max_wait
        return non_negative_number("max_wait", max_wait, finite=False)

    def _refused(self, refusal: Refusal, max_wait: float) -> RateLimitedError:
        return RateLimitedError(refusal.kind, refusal.wait, max_wait, name=self.name)

    def _wall_now(self) -> datetime:
        return self._wall_clock()

    def _end(self, lease: RateLease, actual: tuple[int, int] | None, *, settle: bool) -> bool:
        return self._state.end(lease._ticket, self._clock(), actual, settle=settle)


class RateLease:
    """One call admitted by a :class:`RateLimiter`, holding its estimate until it ends.

    :meth:`settle` replaces the estimate with the call's actual tokens (once:
    a second settle, or a settle after release, raises
    :class:`ReservationError`); :meth:`release` gives everything back (the
    call was not made) and is a no-op once ended. As a context manager it is
    released on exit unless settled. ``waited`` is how many seconds the
    admission waited.
    """

    __slots__ = ("_limiter", "_state", "_ticket", "input_tokens", "output_tokens", "waited")

    def __init__(self, limiter: RateLimiter, ticket: Ticket, waited: float) -> None:
        self._limiter = limiter
        self._ticket = ticket
        self._state: Literal["active", "settled", "released"] = "active"
        self.input_tokens = ticket.input
        self.output_tokens = ticket.output
        self.waited = waited

    @property
    def limiter(self) -> RateLimiter:
        """The limiter that admitted this call."""
        return self._limiter

    @property
    def state(self) -> Literal["active", "settled", "released"]:
        """``"active"`` until settled or released."""
        return self._state

    def settle(
        self,
        actual: TokenCounts | None = None,
        *,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
    ) -> None:
        """Count the call's actual tokens (``actual``, or the two counts) instead of its estimate.

        With neither, the estimate stands. The actual tokens count even past
        a limit (they are spent); later admissions wait for them to expire.
        """
        if actual is None and input_tokens is None and output_tokens is None:
            counts = None
        else:
            counts = _token_pair("actual", actual, input_tokens, output_tokens)
        if not self._limiter._end(self, counts, settle=True):
            raise ReservationError(
                f"cannot settle a {self._state} rate lease; each lease settles at most once"
            )
        self._state = "settled"

    def release(self) -> bool:
        """Give the call's request and tokens back; False (and nothing) if already ended."""
        if self._limiter._end(self, None, settle=False):
            self._state = "released"
            return True
        return False

    def __enter__(self) -> RateLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return (
            f"RateLease(state={self._state!r}, input_tokens={self.input_tokens}, "
            f"output_tokens={self.output_tokens}, waited={self.waited:g})"
        )


_MAX_BLOCK = 3600.0
"""The longest single wait for a concurrency slot (the loop then looks again)."""


def _token_pair(
    what: str, counts: TokenCounts | None, input_tokens: int | None, output_tokens: int | None
) -> tuple[int, int]:
    """Return a call's (input, output) tokens from ``counts`` or the two ints (default 0)."""
    found: tuple[object, object] = (input_tokens, output_tokens)
    if counts is not None:
        if input_tokens is not None or output_tokens is not None:
            raise InvalidValueError(f"give either {what} or input_tokens/output_tokens, not both")
        found = (getattr(counts, "input_tokens", counts), getattr(counts, "output_tokens", counts))
    return (
        int_at_least("input_tokens", 0 if found[0] is None else found[0], 0),
        int_at_least("output_tokens", 0 if found[1] is None else found[1], 0),
    )


def _store(store: object) -> RedisStore:
    from techrevati.runtime.redis_store import RedisStore  # noqa: PLC0415

    if not isinstance(store, RedisStore):
        raise InvalidValueError(f"store must be a RedisStore or None, got {store!r}")
    return store


def _resolve(future: object) -> None:
    done = getattr(future, "done", None)
    if callable(done) and not done():
        future.set_result(None)  # type: ignore[attr-defined]
