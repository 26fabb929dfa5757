"""Human review of ``ask`` decisions: approved, denied and timed out (a deny), sync and async."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from techrevati.runtime import Orchestrator
from techrevati.runtime.audit import AuditLog, read_records, verify
from techrevati.runtime.errors import InvalidValueError, PermissionDeniedError, TechrevatiError
from techrevati.runtime.oversight import (
    ReviewClosedError,
    ReviewerNotAllowedError,
    ReviewQueue,
    ReviewRequest,
    UnknownReviewError,
    _answer_of,
)
from techrevati.runtime.permissions import (
    ApprovalAnswer,
    ApprovalDenial,
    ApprovalRequest,
    PermissionMode,
    PermissionPolicy,
    RolePermissionConfig,
)

JOIN_SECONDS = 30.0  # a bound on a test thread that should end at once; never slept


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def wall(clock: FakeClock) -> Callable[[], datetime]:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    return lambda: start + timedelta(seconds=clock.now)


def moving_wait(clock: FakeClock) -> Callable[[threading.Condition, float], object]:
    """A condition wait that lets the whole time pass at once (nobody decides)."""

    def wait(_condition: threading.Condition, seconds: float) -> object:
        clock.now += seconds
        return False

    return wait


def moving_sleep(clock: FakeClock) -> Callable[[float], Any]:
    async def sleep(seconds: float) -> None:
        clock.now += seconds
        await asyncio.sleep(0)

    return sleep


def ask_orch(approver: Any) -> Orchestrator:
    role = RolePermissionConfig(role="agent", mode=PermissionMode.FULL_ACCESS, ask_tools=["deploy"])
    return Orchestrator(
        "agent", "ship", permissions=PermissionPolicy({"agent": role}), approver=approver
    )


def an_ask(tool: str = "deploy", **arguments: object) -> ApprovalRequest:
    decision = ask_orch(None).permissions.decide("agent", tool)  # type: ignore[union-attr]
    assert decision.effect == "ask"
    return ApprovalRequest(decision, tool, "agent", arguments or {"target": "prod"}, "s-1")


class Opened:
    """A notify hook: remembers each request and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.requests: list[ReviewRequest] = []
        self._event = threading.Event()

    def __call__(self, request: ReviewRequest) -> None:
        self.requests.append(request)
        self._event.set()

    def next(self) -> ReviewRequest:
        assert self._event.wait(JOIN_SECONDS), "no review was requested"
        self._event.clear()
        return self.requests[-1]


def run_in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    result: list[object] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # the test looks at it
            result.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, result


# -- sync: a tool call from a worker thread, decided from another thread -----------------------


@pytest.mark.parametrize(
    ("answer", "runs"),
    [(ApprovalAnswer.ALLOW_ONCE, True), ("allow_session", True), (ApprovalAnswer.DENY, False)],
)
def test_a_tool_call_waits_for_a_reviewer_in_another_thread(answer: Any, runs: bool) -> None:
    clock, opened, ran = FakeClock(), Opened(), list[str]()
    queue = ReviewQueue(reviewers={"alice"}, timeout=60, clock=clock, notify=opened)
    orch = ask_orch(queue.approver)

    def deploy(target: str) -> str:
        ran.append(target)
        return "done"

    def call() -> object:
        with orch.session() as session:
            return session.run_tool("deploy", deploy, "prod")

    thread, result = run_in_thread(call)
    request = opened.next()
    assert [r.id for r in queue.pending()] == [request.id]
    assert (request.tool, request.role) == ("deploy", "agent")
    assert request.reviewers == frozenset({"alice"})
    assert "prod" in request.arguments_preview
    decision = queue.decide(request.id, "alice", answer, reason="looked at the diff")
    thread.join(JOIN_SECONDS)
    assert not thread.is_alive()
    assert decision.reviewer == "alice"
    assert queue.decision(request.id) == decision
    assert queue.pending() == []
    if runs:
        assert result == ["done"]
        assert ran == ["prod"]
    else:
        assert isinstance(result[0], PermissionDeniedError)
        assert "the approver denied it" in result[0].outcome.reason
        assert ran == []


def test_a_timed_out_review_is_a_deny_and_the_tool_never_runs() -> None:
    clock, ran = FakeClock(), list[str]()
    queue = ReviewQueue(reviewers={"alice"}, timeout=30, clock=clock, wait=moving_wait(clock))
    with ask_orch(queue).session() as session, pytest.raises(PermissionDeniedError):
        session.run_tool("deploy", ran.append, "prod")
    assert ran == []
    assert clock.now == pytest.approx(130.0)  # waited exactly the timeout, on the fake clock
    (closed,) = queue._closed.values()
    assert (closed.answer, closed.outcome, closed.reviewer) == ("deny", "timed_out", None)
    assert closed.reason == "review timed out after 30s"
    assert not closed.allowed
    with pytest.raises(ReviewClosedError, match=r"denied \(review timed out after 30s\)"):
        queue.decide(closed.request_id, "alice", "allow_once")


def test_a_wait_that_wakes_early_waits_again_for_the_rest() -> None:
    clock, waits = FakeClock(), []

    def spurious(_condition: threading.Condition, seconds: float) -> object:
        waits.append(seconds)
        clock.now += 10  # woke with nobody deciding, 10s later
        return True

    queue = ReviewQueue(reviewers={"alice"}, timeout=25, clock=clock, wait=spurious)
    assert queue.approve(an_ask()) == ApprovalDenial("review timed out after 25s")
    assert waits == [25, 15, 5]


# -- the rules of deciding ------------------------------------------------------------------


def test_only_a_named_reviewer_may_decide_and_only_once() -> None:
    clock = FakeClock()
    queue = ReviewQueue(reviewers={"alice", "bob"}, timeout=60, clock=clock)
    request = queue.request(an_ask())
    with pytest.raises(ReviewerNotAllowedError, match="'mallory' may not decide") as caught:
        queue.decide(request.id, "mallory", "allow_once")
    assert "alice, bob" in str(caught.value)
    assert isinstance(caught.value, PermissionError)
    assert isinstance(caught.value, TechrevatiError)
    assert [r.id for r in queue.pending()] == [request.id]  # still open
    queue.decide(request.id, "bob", "deny", reason="not on a Friday")
    with pytest.raises(ReviewClosedError, match="deny by bob: not on a Friday"):
        queue.decide(request.id, "alice", "allow_once")
    with pytest.raises(UnknownReviewError, match="no review 'review-nope'"):
        queue.decide("review-nope", "alice", "deny")
    with pytest.raises(UnknownReviewError):
        queue.decision("review-nope")


def test_deciding_after_the_deadline_is_refused_and_the_request_is_denied() -> None:
    clock = FakeClock()
    queue = ReviewQueue(reviewers={"alice"}, timeout=60, clock=clock)
    request = queue.request(an_ask())
    clock.now += 59.999
    assert queue.expire() == []
    clock.now += 0.001
    with pytest.raises(ReviewClosedError, match="timed out after 60s"):
        queue.decide(request.id, "alice", "allow_once")
    decision = queue.decision(request.id)
    assert decision is not None
    assert (decision.answer, decision.outcome) == (ApprovalAnswer.DENY, "timed_out")


def test_pending_denies_what_is_past_its_deadline() -> None:
    clock = FakeClock()
    queue = ReviewQueue(reviewers={"alice"}, timeout=10, clock=clock)
    old = queue.request(an_ask())
    clock.now += 5
    new = queue.request(an_ask())
    clock.now += 5
    assert [r.id for r in queue.pending()] == [new.id]
    assert queue.decision(old.id) is not None
    assert queue.decision(new.id) is None


def test_reviewers_may_depend_on_the_request() -> None:
    def who(request: ApprovalRequest) -> set[str]:
        return {"oncall"} if request.arguments.get("target") == "prod" else {"dev"}

    queue = ReviewQueue(reviewers=who, timeout=60, clock=FakeClock())
    prod = queue.request(an_ask(target="prod"))
    staging = queue.request(an_ask(target="staging"))
    assert (prod.reviewers, staging.reviewers) == (frozenset({"oncall"}), frozenset({"dev"}))
    with pytest.raises(ReviewerNotAllowedError):
        queue.decide(prod.id, "dev", "allow_once")
    queue.decide(staging.id, "dev", "allow_once")


def test_a_request_from_a_decision_and_its_arguments() -> None:
    queue = ReviewQueue(reviewers={"alice"}, timeout=60, clock=FakeClock())
    ask = an_ask()
    request = queue.request(ask.decision, arguments={"target": "x" * 500}, session_id="s-9")
    assert request.session_id == "s-9"
    assert request.arguments_preview.endswith("chars)")
    assert len(request.arguments_preview) < 240
    assert len(request.arguments_digest) == 64


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"reviewers": "alice"}, "reviewers must be a collection"),
        ({"reviewers": {""}}, "non-empty str"),
        ({"reviewers": {"a"}, "timeout": 0}, "timeout must be"),
        ({"reviewers": {"a"}, "timeout": float("inf")}, "timeout must be"),
        ({"reviewers": {"a"}, "timeout": True}, "timeout must be"),
        ({"reviewers": {"a"}, "audit": object()}, "audit must be an AuditLog"),
    ],
)
def test_bad_settings_are_refused_at_once(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        ReviewQueue(**kwargs)


def test_a_bad_answer_and_nobody_to_decide_are_refused() -> None:
    queue = ReviewQueue(reviewers={"alice"}, timeout=60, clock=FakeClock())
    request = queue.request(an_ask())
    with pytest.raises(InvalidValueError, match="answer must be"):
        queue.decide(request.id, "alice", "yes")
    nobody = ReviewQueue(reviewers=lambda _r: set(), timeout=60)
    with pytest.raises(InvalidValueError, match="nobody may decide"):
        nobody.request(an_ask())


def test_a_failing_notify_leaves_the_request_open() -> None:
    def broken(_request: ReviewRequest) -> None:
        raise RuntimeError("pager down")

    queue = ReviewQueue(reviewers={"alice"}, timeout=60, clock=FakeClock(), notify=broken)
    request = queue.request(an_ask())
    assert [r.id for r in queue.pending()] == [request.id]


# -- async -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "runs"), [(ApprovalAnswer.ALLOW_ONCE, True), (ApprovalAnswer.DENY, False)]
)
def test_arun_tool_awaits_a_decision_made_in_another_thread(
    answer: ApprovalAnswer, runs: bool
) -> None:
    clock, opened, ran = FakeClock(), Opened(), list[str]()

    async def bounded(seconds: float) -> None:  # a wake-up that never comes fails, not hangs
        await asyncio.sleep(JOIN_SECONDS)
        clock.now += seconds

    queue = ReviewQueue(
        reviewers={"alice"}, timeout=60, clock=clock, notify=opened, async_sleep=bounded
    )

    async def adeploy(target: str) -> str:
        ran.append(target)
        return "done"

    async def main() -> object:
        with ask_orch(queue).session() as session:  # the queue itself: awaitable in a loop
            return await session.arun_tool("deploy", adeploy, "prod")

    def reviewer() -> object:
        return queue.decide(opened.next().id, "alice", answer)

    thread, _decided = run_in_thread(reviewer)
    if runs:
        assert asyncio.run(main()) == "done"
        assert ran == ["prod"]
    else:
        with pytest.raises(PermissionDeniedError):
            asyncio.run(main())
        assert ran == []
    thread.join(JOIN_SECONDS)
    assert not thread.is_alive()


def test_aapprove_times_out_as_a_deny_on_the_injected_clock() -> None:
    clock = FakeClock()
    queue = ReviewQueue(
        reviewers={"alice"}, timeout=45, clock=clock, async_sleep=moving_sleep(clock)
    )
    ran: list[str] = []

    async def adeploy(target: str) -> None:
        ran.append(target)

    async def main() -> None:
        with ask_orch(queue.aapprove).session() as session:
            await session.arun_tool("deploy", adeploy, "prod")

    with pytest.raises(PermissionDeniedError):
        asyncio.run(main())
    assert ran == []
    assert clock.now == pytest.approx(145.0)
    (closed,) = queue._closed.values()
    assert (closed.outcome, closed.reason) == ("timed_out", "review timed out after 45s")


def test_aapprove_decided_on_the_same_loop() -> None:
    queue = ReviewQueue(reviewers={"alice"}, timeout=60, clock=FakeClock())

    async def main() -> ApprovalAnswer | ApprovalDenial:
        waiting = asyncio.ensure_future(queue.aapprove(an_ask()))
        while not queue.pending():
            await asyncio.sleep(0)
        queue.decide(queue.pending()[0].id, "alice", "allow_session")
        return await waiting

    assert asyncio.run(main()) == ApprovalAnswer.ALLOW_SESSION


def test_a_cancelled_wait_withdraws_the_review_as_a_deny() -> None:
    queue = ReviewQueue(reviewers={"alice"}, timeout=60, clock=FakeClock())

    async def main() -> str:
        waiting = asyncio.ensure_future(queue.aapprove(an_ask()))
        while not queue.pending():
            await asyncio.sleep(0)
        request_id = queue.pending()[0].id
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return request_id

    request_id = asyncio.run(main())
    decision = queue.decision(request_id)
    assert decision is not None
    assert (decision.answer, decision.outcome) == (ApprovalAnswer.DENY, "withdrawn")
    with pytest.raises(ReviewClosedError):
        queue.decide(request_id, "alice", "allow_once")


def test_calling_the_queue_blocks_outside_a_loop() -> None:
    clock = FakeClock()
    queue = ReviewQueue(reviewers={"alice"}, timeout=5, clock=clock, wait=moving_wait(clock))
    assert queue(an_ask()) == ApprovalDenial("review timed out after 5s")  # not an awaitable


# -- the audit trail -------------------------------------------------------------------------


def test_every_request_decision_and_timeout_is_in_a_verifying_audit_chain(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "audit.db"
    with AuditLog(path, wall_clock=wall(clock)) as log:
        queue = ReviewQueue(
            reviewers={"alice"},
            timeout=30,
            clock=clock,
            wall_clock=wall(clock),
            audit=log,
            wait=moving_wait(clock),
        )
        allowed = queue.request(an_ask(target="prod"))
        queue.decide(allowed.id, "alice", "allow_once", reason="change ticket 42")
        denial = queue.approve(an_ask(target="staging"))
        assert denial == ApprovalDenial("review timed out after 30s")
    assert verify(path).ok
    kinds = [record.kind for record in read_records(path)]
    assert kinds == ["review.requested", "review.decision", "review.requested", "review.timed_out"]
    decided = read_records(path, kind="review.decision")[0].record["data"]
    assert isinstance(decided, dict)
    assert decided["request_id"] == allowed.id
    assert (decided["reviewer"], decided["answer"], decided["reason"]) == (
        "alice",
        "allow_once",
        "change ticket 42",
    )
    assert decided["decided_at"] == "2025-01-01T00:01:40+00:00"
    timed_out = read_records(path, kind="review.timed_out")[0].record["data"]
    assert isinstance(timed_out, dict)
    assert (timed_out["reviewer"], timed_out["answer"]) == (None, "deny")
    asked = read_records(path, kind="review.requested")[0].record["data"]
    assert isinstance(asked, dict)
    assert (asked["tool"], asked["reviewers"], asked["rule"]) == (
        "deploy",
        ["alice"],
        "ask_tools:deploy",
    )


class RefusingAudit:
    """An audit log that refuses the kinds it is told to."""

    def __init__(self, *refused: str) -> None:
        self.refused = set(refused)
        self.kinds: list[str] = []

    def append(self, kind: str, payload: object) -> None:
        if kind in self.refused:
            raise OSError("disk full")
        self.kinds.append(kind)


def test_an_allow_the_audit_log_refuses_is_not_taken() -> None:
    clock = FakeClock()
    audit = RefusingAudit("review.decision")
    queue = ReviewQueue(reviewers={"alice"}, timeout=30, clock=clock, audit=audit)  # type: ignore[arg-type]
    request = queue.request(an_ask())
    with pytest.raises(OSError, match="disk full"):
        queue.decide(request.id, "alice", "allow_once")
    assert [r.id for r in queue.pending()] == [request.id]  # still open, so it times out
    clock.now += 30
    assert queue.expire()[0].answer == ApprovalAnswer.DENY
    assert audit.kinds == ["review.requested", "review.timed_out"]


def test_a_deny_the_audit_log_refuses_still_denies() -> None:
    audit = RefusingAudit("review.decision")
    queue = ReviewQueue(reviewers={"alice"}, timeout=30, clock=FakeClock(), audit=audit)  # type: ignore[arg-type]
    request = queue.request(an_ask())
    assert queue.decide(request.id, "alice", "deny").answer == ApprovalAnswer.DENY
    assert queue.pending() == []


def test_a_request_the_audit_log_refuses_is_a_deny_in_a_session() -> None:
    queue = ReviewQueue(
        reviewers={"alice"},
        timeout=30,
        clock=FakeClock(),
        audit=RefusingAudit("review.requested"),  # type: ignore[arg-type]
    )
    ran: list[str] = []
    with (
        ask_orch(queue).session() as session,
        pytest.raises(PermissionDeniedError, match="disk full"),
    ):
        session.run_tool("deploy", ran.append, "prod")
    assert ran == []
    assert queue.pending() == []


def test_history_is_bounded() -> None:
    queue = ReviewQueue(reviewers={"alice"}, timeout=30, clock=FakeClock(), history=2)
    ids = [queue.request(an_ask()).id for _ in range(3)]
    for request_id in ids:
        queue.decide(request_id, "alice", "deny")
    with pytest.raises(UnknownReviewError):
        queue.decision(ids[0])
    assert queue.decision(ids[2]) is not None
    assert "open=0" in repr(queue)


def test_the_reviewers_reason_and_a_timeout_reach_the_sessions_denial() -> None:
    clock, ran = FakeClock(), list[str]()
    queue = ReviewQueue(reviewers={"alice"}, timeout=5, clock=clock, wait=moving_wait(clock))
    with (
        ask_orch(queue.approver).session() as session,
        pytest.raises(PermissionDeniedError, match="review timed out after 5s"),
    ):
        session.run_tool("deploy", ran.append, "prod")
    assert ran == []

    decided = ReviewQueue(reviewers={"alice"}, timeout=60, clock=FakeClock())
    request = decided.request(an_ask())
    closed = decided.decide(request.id, "alice", "deny", reason="no change ticket")
    assert _answer_of(closed) == ApprovalDenial("no change ticket by alice")
