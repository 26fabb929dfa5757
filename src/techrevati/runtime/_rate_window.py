"""A rate limiter's state: the sliding-window log of admissions, open calls, the server's caps.

Private to :mod:`~techrevati.runtime.rate_limit`. :class:`_RateStore` is the
small interface the limiter drives (admit, end, tighten, and the two ways to
wait for a call to end); :class:`_LocalWindow` keeps it in this process
behind one lock. A shared store (Redis, later) implements the same five
methods with one atomic server-side step each. Time is given by the caller
(the limiter's clock), so the store itself never reads a clock.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Final, Protocol

__all__ = ["DIMENSIONS", "WINDOW_SECONDS", "Refusal", "Ticket"]

WINDOW_SECONDS: Final = 60.0
"""The window every per-minute limit counts over."""

DIMENSIONS: Final = ("requests", "tokens", "input_tokens", "output_tokens")
"""The limited quantities, in the order of a limits or caps tuple."""

Limits = tuple[int | None, int | None, int | None, int | None]


class Ticket:
    """One admitted call: when, and what it counts in the window (requests, input, output)."""

    __slots__ = ("expiry", "input", "output", "requests")

    def __init__(self, expiry: float, input_tokens: int, output_tokens: int) -> None:
        self.expiry = expiry  # admission time + the window: it stops counting then
        self.requests = 1
        self.input = input_tokens
        self.output = output_tokens


class Refusal:
    """Why a call was not admitted: the limit, and seconds until it has room (None: a slot)."""

    __slots__ = ("ends", "kind", "wait")

    def __init__(self, kind: str, wait: float | None, ends: int) -> None:
        self.kind = kind
        self.wait = wait
        self.ends = ends  # calls ended so far: a waiter for a slot waits for this to change


class _RateStore(Protocol):
    """What a limiter's state must do; each method is one atomic step.

    ``poll`` is None when a refusal for a slot can wait on :meth:`wait_for_end`
    or :meth:`add_waiter`; a shared store sets the seconds between asks instead.
    """

    @property
    def poll(self) -> float | None: ...

    def admit(self, now: float, input_tokens: int, output_tokens: int) -> Ticket | Refusal: ...

    def end(
        self, ticket: Ticket, now: float, actual: tuple[int, int] | None, *, settle: bool
    ) -> bool: ...

    def tighten(self, now: float, dimension: int, remaining: int, until: float) -> None: ...

    def wait_for_end(self, ends: int, timeout: float) -> None: ...

    def add_waiter(self, ends: int, wake: Callable[[], object]) -> bool: ...

    def remove_waiter(self, wake: Callable[[], object]) -> None: ...

    def totals(self, now: float) -> tuple[int, int, int, int, int]: ...


class _LocalWindow:
    """The state of one limiter in this process: a sliding-window log under one lock.

    Each admission is one :class:`Ticket` in a deque ordered by expiry, with
    running totals per dimension; admission drops the expired ones from the
    left (amortised O(1)) and compares totals with the limits. Only a refusal
    walks the log, to find when enough of it expires.
    """

    __slots__ = (
        "_caps",
        "_cond",
        "_ends",
        "_input",
        "_last",
        "_limits",
        "_lock",
        "_log",
        "_max_concurrent",
        "_open",
        "_output",
        "_requests",
        "_waiters",
    )

    poll: Final = None

    def __init__(self, limits: Limits, max_concurrent: int | None) -> None:
        self._limits = limits
        self._max_concurrent = max_concurrent
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._log: deque[Ticket] = deque()
        self._requests = self._input = self._output = 0
        self._open: set[Ticket] = set()
        self._ends = 0
        self._last = float("-inf")  # the latest time seen: a clock that steps back is held
        # Per dimension: (what the server says is left, until when); None: no word.
        self._caps: list[tuple[int, float] | None] = [None, None, None, None]
        self._waiters: list[Callable[[], object]] = []

    def admit(self, now: float, input_tokens: int, output_tokens: int) -> Ticket | Refusal:
        """Admit a call costing ``input_tokens``/``output_tokens`` now, or say why not."""
        with self._lock:
            now = self._advance(now)
            wanted = (1, input_tokens + output_tokens, input_tokens, output_tokens)
            kind, wait = self._window_wait(now, wanted)
            for dimension, cap in enumerate(self._caps):
                if cap is None:
                    continue
                if cap[1] <= now:  # the server's word holds until its reset, no longer
                    self._caps[dimension] = None
                elif wanted[dimension] > cap[0] and cap[1] - now > wait:
                    kind, wait = "server", cap[1] - now
            if kind:
                return Refusal(kind, wait, self._ends)
            limit = self._max_concurrent
            if limit is not None and len(self._open) >= limit:
                return Refusal("concurrent", None, self._ends)
            for dimension, cap in enumerate(self._caps):
                if cap is not None:
                    self._caps[dimension] = (cap[0] - wanted[dimension], cap[1])
            ticket = Ticket(now + WINDOW_SECONDS, input_tokens, output_tokens)
            self._log.append(ticket)
            self._open.add(ticket)
            self._requests += 1
            self._input += input_tokens
            self._output += output_tokens
            return ticket

    def end(
        self, ticket: Ticket, now: float, actual: tuple[int, int] | None, *, settle: bool
    ) -> bool:
        """End an open call: settle it to ``actual`` tokens, or release it (count nothing).

        Returns False, changing nothing, if the call already ended.
        """
        with self._lock:
            if ticket not in self._open:
                return False
            self._open.discard(ticket)
            now = self._advance(now)
            counted = ticket.expiry > now  # still in the window: the totals hold it
            if settle:
                new = (1, *actual) if actual is not None else (1, ticket.input, ticket.output)
            else:
                new = (0, 0, 0)
            if counted:
                self._requests += new[0] - ticket.requests
                self._input += new[1] - ticket.input
                self._output += new[2] - ticket.output
            ticket.requests, ticket.input, ticket.output = new
            self._ends += 1
            self._cond.notify_all()
            waiters, self._waiters = self._waiters, []
        for wake in waiters:
            wake()
        return True

    def tighten(self, now: float, dimension: int, remaining: int, until: float) -> None:
        """Record that the server has ``remaining`` of ``dimension`` left until ``until``."""
        with self._lock:
            self._advance(now)
            self._caps[dimension] = (remaining, until)

    def wait_for_end(self, ends: int, timeout: float) -> None:
        """Block until a call ends after the refusal that saw ``ends`` ended, or ``timeout``."""
        with self._cond:
            self._cond.wait_for(lambda: self._ends != ends, timeout)

    def add_waiter(self, ends: int, wake: Callable[[], object]) -> bool:
        """Call ``wake`` when the next call ends; False if one ended since ``ends`` already."""
        with self._lock:
            if self._ends != ends:
                return False
            self._waiters.append(wake)
            return True

    def remove_waiter(self, wake: Callable[[], object]) -> None:
        with self._lock:
            if wake in self._waiters:
                self._waiters.remove(wake)

    def totals(self, now: float) -> tuple[int, int, int, int, int]:
        """Return the requests, tokens, input and output tokens in the window, and calls open."""
        with self._lock:
            self._advance(now)
            return (
                self._requests,
                self._input + self._output,
                self._input,
                self._output,
                len(self._open),
            )

    def _advance(self, now: float) -> float:
        """Hold the clock from stepping back and drop what expired by ``now`` (lock held)."""
        if now < self._last:
            now = self._last
        else:
            self._last = now
        log = self._log
        while log and log[0].expiry <= now:
            gone = log.popleft()
            self._requests -= gone.requests
            self._input -= gone.input
            self._output -= gone.output
        return now

    def _window_wait(self, now: float, wanted: tuple[int, int, int, int]) -> tuple[str, float]:
        """Return the limit refusing ``wanted`` now and seconds until it fits (``""``: it fits)."""
        totals = (self._requests, self._input + self._output, self._input, self._output)
        kind, wait = "", 0.0
        for dimension, limit in enumerate(self._limits):
            if limit is None or totals[dimension] + wanted[dimension] <= limit:
                continue
            excess = totals[dimension] + wanted[dimension] - limit
            for ticket in self._log:  # oldest first: free enough by letting them expire
                excess -= _amount(ticket, dimension)
                if excess <= 0:
                    if not kind or ticket.expiry - now > wait:
                        kind, wait = DIMENSIONS[dimension], ticket.expiry - now
                    break
        return kind, wait


def _amount(ticket: Ticket, dimension: int) -> int:
    if dimension == 0:
        return ticket.requests
    if dimension == 1:
        return ticket.input + ticket.output
    return ticket.input if dimension == 2 else ticket.output
