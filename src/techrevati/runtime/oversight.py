"""Human review of ``ask`` decisions: a queue of requests that named reviewers decide.

Reach for :class:`ReviewQueue` when a tool call the permission policy marks
``ask`` must wait for a person. The queue *is* an approver: pass it (or its
:meth:`~ReviewQueue.approve` / :meth:`~ReviewQueue.aapprove`) as
``Orchestrator(approver=...)``. Each ``ask`` becomes a :class:`ReviewRequest`
(what is asked: role, tool, a digest and a short preview of the arguments,
the rule and its reason; who may decide; the deadline); the calling tool
waits until one of the allowed reviewers calls :meth:`~ReviewQueue.decide`,
or until the timeout, which is a deny, never an allow. With ``audit=`` an
:class:`~techrevati.runtime.audit.AuditLog` records every request, decision
(with the reviewer's identity, answer, reason and time), timeout and
withdrawal, each durable before the waiting call goes on; a record that
cannot be written is a deny.

These are technical building blocks for human oversight, not legal advice:
whether a review step like this meets an obligation (the EU AI Act's, or any
other) is for you and your counsel to judge.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Coroutine, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from techrevati.runtime._clock import Clock, WallClock, utc_now
from techrevati.runtime._log import get_logger
from techrevati.runtime._validate import int_at_least, non_empty_str, required_callable
from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.permissions import (
    ApprovalAnswer,
    ApprovalDenial,
    ApprovalRequest,
    PermissionDecision,
)

if TYPE_CHECKING:
    from techrevati.runtime.audit import AuditAppender

__all__ = [
    "DEFAULT_REVIEW_HISTORY",
    "DEFAULT_REVIEW_TIMEOUT",
    "ReviewClosedError",
    "ReviewDecision",
    "ReviewError",
    "ReviewQueue",
    "ReviewRequest",
    "ReviewerNotAllowedError",
    "UnknownReviewError",
]

DEFAULT_REVIEW_TIMEOUT: Final = 300.0
"""Seconds a review waits for a decision before it is denied."""

DEFAULT_REVIEW_HISTORY: Final = 1000
"""Closed reviews a queue keeps for :meth:`ReviewQueue.decision`; older ones are forgotten."""

_PREVIEW_CHARS: Final = 200
_LOG: Final = get_logger("techrevati.runtime.oversight")

Reviewers = Collection[str] | Callable[[ApprovalRequest], Collection[str]]
"""Who may decide: a fixed set of identities, or a function of the request that names them."""

ConditionWait = Callable[[threading.Condition, float], object]
"""Waits on a held condition for at most the seconds given (``Condition.wait``)."""


# -- errors -----------------------------------------------------------------------------------


class ReviewError(TechrevatiError):
    """A review could not be decided as asked (the base of the errors below)."""


class ReviewerNotAllowedError(ReviewError, PermissionError):
    """The reviewer is not one of those who may decide this request."""


class ReviewClosedError(ReviewError, RuntimeError):
    """The request is already closed: decided, timed out (denied) or withdrawn."""


class UnknownReviewError(ReviewError, KeyError):
    """No request of that id is open or remembered by the queue."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReviewRequest:
    """One ``ask`` waiting for a person: what is asked, who may decide, until when.

    ``arguments_digest`` is the SHA-256 of the arguments in canonical JSON
    (as approval tokens bind them; of their ``repr`` when they are not
    JSON), ``arguments_preview`` their ``repr`` cut to 200 characters.
    ``deadline`` is on the queue's ``clock``; ``expires_at`` the same moment
    on its wall clock.
    """

    id: str
    tool: str
    role: str
    session_id: str
    rule: str
    reason: str
    arguments_digest: str
    arguments_preview: str
    reviewers: frozenset[str]
    requested_at: datetime
    expires_at: datetime
    deadline: float
    timeout_seconds: float

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (times as ISO 8601, reviewers sorted)."""
        return {
            "request_id": self.id,
            "tool": self.tool,
            "role": self.role,
            "session_id": self.session_id,
            "rule": self.rule,
            "reason": self.reason,
            "arguments_digest": self.arguments_digest,
            "arguments_preview": self.arguments_preview,
            "reviewers": sorted(self.reviewers),
            "requested_at": self.requested_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "timeout_seconds": self.timeout_seconds,
        }


@dataclass(frozen=True, slots=True)
class ReviewDecision:
    """How a review closed: the answer, who gave it (``None`` for a timeout), why, when.

    ``outcome`` is ``"decided"``, ``"timed_out"`` or ``"withdrawn"`` (the
    waiting call was cancelled); the last two always answer ``deny``.
    """

    request_id: str
    answer: ApprovalAnswer
    reviewer: str | None
    reason: str
    decided_at: datetime
    outcome: str = "decided"

    @property
    def allowed(self) -> bool:
        """Whether the call may run."""
        return self.answer != ApprovalAnswer.DENY

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict."""
        return {
            "request_id": self.request_id,
            "answer": self.answer.value,
            "reviewer": self.reviewer,
            "reason": self.reason,
            "decided_at": self.decided_at.isoformat(),
            "outcome": self.outcome,
        }


@dataclass(slots=True, eq=False)
class _Review:
    """A request and its mutable state (guarded by the queue's lock)."""

    request: ReviewRequest
    decision: ReviewDecision | None = None
    events: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = field(default_factory=list)


# -- the queue --------------------------------------------------------------------------------


class ReviewQueue:
    """Open review requests for ``ask`` decisions; reviewers decide them; timeouts deny.

    ``reviewers`` are the identities that may decide (or a function of the
    :class:`~techrevati.runtime.permissions.ApprovalRequest` naming them).
    ``timeout`` is the seconds a request stays open (> 0). ``clock`` measures
    it (monotonic seconds), ``wall_clock`` stamps requests and decisions.
    ``audit`` is an :class:`~techrevati.runtime.audit.AuditLog` given every
    request and every close. ``notify`` is called with each new
    :class:`ReviewRequest` (to page a reviewer); if it raises, the request
    stays open and the failure is logged. ``wait`` and ``async_sleep`` are
    how a waiting call waits (``Condition.wait`` and ``asyncio.sleep``):
    tests inject ones that move a fake clock, so no test sleeps.

    As an approver: :meth:`approve` blocks its thread until a decision or the
    timeout; :meth:`aapprove` awaits. Calling the queue itself does the one
    that fits: awaitable inside a running event loop (``arun_tool``),
    blocking elsewhere (``run_tool``). Safe to share between threads and
    event loops.
    """

    def __init__(
        self,
        *,
        reviewers: Reviewers,
        timeout: float = DEFAULT_REVIEW_TIMEOUT,
        clock: Clock = time.monotonic,
        wall_clock: WallClock = utc_now,
        audit: AuditAppender | None = None,
        notify: Callable[[ReviewRequest], object] | None = None,
        wait: ConditionWait | None = None,
        async_sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        history: int = DEFAULT_REVIEW_HISTORY,
    ) -> None:
        if callable(reviewers):
            self._reviewers: Reviewers = reviewers
        else:
            self._reviewers = _identities(reviewers)
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not 0 < timeout < float("inf")
        ):
            raise InvalidValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
        self._timeout = float(timeout)
        self._clock = required_callable("clock", clock)
        self._now = required_callable("wall_clock", wall_clock)
        if audit is not None and not callable(getattr(audit, "append", None)):
            raise InvalidValueError(f"audit must be an AuditLog or AuditSink, got {audit!r}")
        self._audit = audit
        self._notify = None if notify is None else required_callable("notify", notify)
        self._wait: ConditionWait = (
            _condition_wait if wait is None else required_callable("wait", wait)
        )
        self._async_sleep = required_callable("async_sleep", async_sleep)
        self._history = int_at_least("history", history, 0)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._open: dict[str, _Review] = {}
        self._closed: OrderedDict[str, ReviewDecision] = OrderedDict()

    @property
    def timeout(self) -> float:
        """Seconds a request stays open."""
        return self._timeout

    @property
    def reviewers(self) -> frozenset[str] | None:
        """Who may decide every request (None: a function chooses per request)."""
        return None if callable(self._reviewers) else frozenset(self._reviewers)

    @property
    def audit(self) -> AuditAppender | None:
        """The audit log requests and decisions go to (None: none)."""
        return self._audit

    def reviewers_for(self, request: ApprovalRequest) -> frozenset[str]:
        """Return who may decide ``request``."""
        if callable(self._reviewers):
            return _identities(self._reviewers(request))
        return frozenset(self._reviewers)

    # -- opening and deciding -----------------------------------------------------------------

    def request(
        self,
        ask: ApprovalRequest | PermissionDecision,
        *,
        arguments: Mapping[str, object] | None = None,
        session_id: str = "",
    ) -> ReviewRequest:
        """Open a review of an ``ask`` (an approval request, or a decision and its arguments).

        The request is written to the audit log (if any) before it is open,
        so a log that refuses it raises here and nothing waits.
        """
        if isinstance(ask, PermissionDecision):
            ask = ApprovalRequest(ask, ask.tool, ask.role, dict(arguments or {}), session_id)
        elif not isinstance(ask, ApprovalRequest):
            raise InvalidValueError(
                f"ask must be an ApprovalRequest or a PermissionDecision, got {ask!r}"
            )
        reviewers = self.reviewers_for(ask)
        if not reviewers:
            raise InvalidValueError(f"nobody may decide the review of tool {ask.tool!r}")
        now, start = self._now(), self._clock()
        review = ReviewRequest(
            id=f"review-{uuid.uuid4().hex}",
            tool=ask.tool,
            role=ask.role,
            session_id=ask.session_id,
            rule=ask.decision.rule,
            reason=ask.decision.reason,
            arguments_digest=_digest(ask.arguments),
            arguments_preview=_preview(ask.arguments),
            reviewers=reviewers,
            requested_at=now,
            expires_at=now + timedelta(seconds=self._timeout),
            deadline=start + self._timeout,
            timeout_seconds=self._timeout,
        )
        with self._lock:
            self._record("review.requested", review.to_dict())
            self._open[review.id] = _Review(review)
        if self._notify is not None:
            try:
                self._notify(review)
            except Exception:
                _LOG.exception("review notify failed for %s (tool %r)", review.id, review.tool)
        return review

    def decide(
        self,
        request_id: str,
        reviewer: str,
        answer: ApprovalAnswer | str,
        reason: str = "",
    ) -> ReviewDecision:
        """Close an open request with a reviewer's answer; return the decision.

        ``answer`` is an :class:`~techrevati.runtime.permissions.ApprovalAnswer`
        or its value (``"allow_once"``, ``"allow_session"``, ``"deny"``).
        Raises :class:`ReviewerNotAllowedError` for a reviewer not among the
        request's, :class:`ReviewClosedError` for a request already closed
        (deciding twice) or past its deadline (then it is already denied),
        :class:`UnknownReviewError` for an id the queue does not know.
        """
        non_empty_str("reviewer", reviewer)
        if not isinstance(reason, str):
            raise InvalidValueError(f"reason must be a str, got {reason!r}")
        try:
            chosen = ApprovalAnswer(answer)
        except ValueError:
            raise InvalidValueError(
                f"answer must be 'allow_once', 'allow_session' or 'deny', got {answer!r}"
            ) from None
        with self._lock:
            review = self._open.get(request_id)
            if review is None:
                closed = self._closed.get(request_id)
                if closed is None:
                    raise UnknownReviewError(f"no review {request_id!r} is open or remembered")
                raise ReviewClosedError(f"review {request_id} is already closed: {_said(closed)}")
            if reviewer not in review.request.reviewers:
                raise ReviewerNotAllowedError(
                    f"{reviewer!r} may not decide review {request_id} (tool "
                    f"{review.request.tool!r}); it may be decided by "
                    f"{', '.join(sorted(review.request.reviewers))}"
                )
            if self._clock() >= review.request.deadline:
                timed_out = self._time_out(review)
                raise ReviewClosedError(
                    f"review {request_id} is already closed: {_said(timed_out)}"
                )
            decision = ReviewDecision(request_id, chosen, reviewer, reason, self._now())
            self._close(review, decision)
        return decision

    def pending(self) -> list[ReviewRequest]:
        """Return the open requests, oldest first (closing those past their deadline first)."""
        self.expire()
        with self._lock:
            return [review.request for review in self._open.values()]

    def expire(self) -> list[ReviewDecision]:
        """Deny every open request past its deadline; return those timeouts."""
        with self._lock:
            now = self._clock()
            late = [r for r in self._open.values() if now >= r.request.deadline]
            return [self._time_out(review) for review in late]

    def decision(self, request_id: str) -> ReviewDecision | None:
        """Return how a request closed (None while it is open); :class:`UnknownReviewError` else."""
        with self._lock:
            if request_id in self._open:
                return None
            found = self._closed.get(request_id)
        if found is None:
            raise UnknownReviewError(f"no review {request_id!r} is open or remembered")
        return found

    # -- the approver entry points ------------------------------------------------------------

    def approve(self, request: ApprovalRequest) -> ApprovalAnswer | ApprovalDenial:
        """Open a review and block until it is decided or times out (a deny); the answer."""
        review = self._open_review(request)
        try:
            with self._changed:
                while review.decision is None:
                    remaining = review.request.deadline - self._clock()
                    if remaining <= 0:
                        self._time_out(review)
                        break
                    self._wait(self._changed, remaining)
                assert review.decision is not None
                return _answer_of(review.decision)
        except BaseException:
            self._withdraw(review, "the waiting call was interrupted")
            raise

    approver = approve
    """The blocking approver, for ``Orchestrator(approver=queue.approver)``."""

    async def aapprove(self, request: ApprovalRequest) -> ApprovalAnswer | ApprovalDenial:
        """Open a review and await its decision or its timeout (a deny); the answer."""
        review = self._open_review(request)
        event = asyncio.Event()
        loop = asyncio.get_running_loop()
        with self._lock:
            review.events.append((loop, event))
        try:
            while True:
                with self._lock:
                    if review.decision is not None:
                        return _answer_of(review.decision)
                    remaining = review.request.deadline - self._clock()
                    if remaining <= 0:
                        return _answer_of(self._time_out(review))
                await _first_of(event.wait(), self._async_sleep(remaining))
        except BaseException:
            self._withdraw(review, "the waiting call was cancelled")
            raise

    def __call__(
        self, request: ApprovalRequest
    ) -> ApprovalAnswer | ApprovalDenial | Coroutine[Any, Any, Any]:
        """Approve ``request``: awaitable inside a running event loop, blocking elsewhere."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self.approve(request)
        return self.aapprove(request)

    def __repr__(self) -> str:
        with self._lock:
            count = len(self._open)
        return f"ReviewQueue(timeout={self._timeout:g}s, open={count})"

    # -- inside -------------------------------------------------------------------------------

    def _open_review(self, request: ApprovalRequest) -> _Review:
        opened = self.request(request)
        with self._lock:
            review = self._open.get(opened.id)
            if review is None:  # closed already (decided in notify, or timed out)
                return _Review(opened, self._closed.get(opened.id) or self._timeout_of(opened))
            return review

    def _time_out(self, review: _Review) -> ReviewDecision:
        """Close ``review`` as timed out (a deny); the caller holds the lock."""
        if review.decision is not None:
            return review.decision
        decision = self._timeout_of(review.request)
        self._close(review, decision)
        return decision

    def _timeout_of(self, request: ReviewRequest) -> ReviewDecision:
        why = f"review timed out after {request.timeout_seconds:g}s"
        return ReviewDecision(
            request.id, ApprovalAnswer.DENY, None, why, self._now(), outcome="timed_out"
        )

    def _withdraw(self, review: _Review, why: str) -> None:
        with self._lock:
            if review.decision is None:
                decision = ReviewDecision(
                    review.request.id, ApprovalAnswer.DENY, None, why, self._now(), "withdrawn"
                )
                with suppress(Exception):  # the interruption is what the caller sees
                    self._close(review, decision)

    def _close(self, review: _Review, decision: ReviewDecision) -> None:
        """Record ``decision``, then close ``review`` and wake its waiters; lock held.

        A decision the audit log refuses is not taken: the error propagates
        (an allow nobody recorded never runs; a deny is still a deny).
        """
        kind = {"decided": "review.decision", "timed_out": "review.timed_out"}.get(
            decision.outcome, "review.withdrawn"
        )
        payload = {**decision.to_dict(), "tool": review.request.tool}
        payload["session_id"] = review.request.session_id
        try:
            self._record(kind, payload)
        except Exception:
            if decision.allowed:
                raise
            _LOG.exception("could not record the deny of %s; denied all the same", decision)
        review.decision = decision
        self._open.pop(review.request.id, None)
        if self._history:
            self._closed[review.request.id] = decision
            while len(self._closed) > self._history:
                self._closed.popitem(last=False)
        self._changed.notify_all()
        for loop, event in review.events:
            with suppress(RuntimeError):  # that loop is closed: nobody waits there any more
                loop.call_soon_threadsafe(event.set)
        review.events.clear()

    def _record(self, kind: str, payload: Mapping[str, object]) -> None:
        if self._audit is not None:
            self._audit.append(kind, payload)


# -- helpers ----------------------------------------------------------------------------------


def _condition_wait(condition: threading.Condition, seconds: float) -> object:
    return condition.wait(seconds)


async def _first_of(*awaitables: Awaitable[object]) -> None:
    """Wait until the first of ``awaitables`` finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(item) for item in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with suppress(asyncio.CancelledError, Exception):
                await task


def _identities(value: object) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Collection):
        raise InvalidValueError(f"reviewers must be a collection of identities, got {value!r}")
    found = frozenset(value)
    for who in found:
        if not isinstance(who, str) or not who.strip():
            raise InvalidValueError(f"each reviewer must be a non-empty str, got {who!r}")
    return found


def _digest(arguments: Mapping[str, object]) -> str:
    from techrevati.runtime.approvals import arguments_digest  # noqa: PLC0415

    try:
        return arguments_digest(arguments)
    except (InvalidValueError, TypeError, ValueError, RecursionError):
        return hashlib.sha256(_preview(arguments, limit=None).encode()).hexdigest()


def _preview(arguments: Mapping[str, object], *, limit: int | None = _PREVIEW_CHARS) -> str:
    try:
        text = repr(dict(arguments))
    except Exception as exc:
        text = f"<arguments whose repr raised {type(exc).__name__}>"
    if limit is not None and len(text) > limit:
        return f"{text[:limit]}... ({len(text)} chars)"
    return text


def _said(decision: ReviewDecision) -> str:
    if decision.outcome == "decided":
        by = f"{decision.answer.value} by {decision.reviewer}"
        return f"{by}: {decision.reason}" if decision.reason else by
    return f"denied ({decision.reason})"


def _answer_of(decision: ReviewDecision) -> ApprovalAnswer | ApprovalDenial:
    """Return what the session is told: the answer, or a deny with its reason."""
    if decision.answer != ApprovalAnswer.DENY:
        return decision.answer
    who = "" if decision.reviewer is None else f" by {decision.reviewer}"
    reason = decision.reason or "denied"
    return ApprovalDenial(f"{reason}{who}" if decision.outcome == "decided" else reason)
