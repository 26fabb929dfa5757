"""A session's gate before each tool call: decide with the arguments, ask when told to.

Private to :mod:`~techrevati.runtime.orchestrator`; the session's
``run_tool``/``arun_tool`` call :meth:`_ToolGate._gate` (or its async twin)
before the tool runs. The enforcer decides with the call's arguments (bound
to the tool function's parameter names) when the policy has rules on
arguments or a workspace. An ``ask`` is settled, in order, by an approval
this session remembers (``allow_session``), by an approval token the agent
presented (checked and consumed in the orchestrator's ledger), or by the
approver (sync or async); with none of them, or an approver that fails, it
is a deny, never an allow. Every step is an event: ``tool.approval_requested``,
``tool.approved``, ``tool.denied``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final

from techrevati.runtime._log import get_logger
from techrevati.runtime._session_core import _SessionCore
from techrevati.runtime.errors import InvalidValueError, PermissionDeniedError
from techrevati.runtime.events import AgentFailureClass, EventName
from techrevati.runtime.permissions import (
    ApprovalAnswer,
    ApprovalDenial,
    ApprovalRequest,
    PermissionDecision,
    normalize_permission_name,
)

if TYPE_CHECKING:
    from techrevati.runtime.approvals import ApprovalToken
    from techrevati.runtime.permissions import PermissionEnforcer

__all__ = ["call_arguments"]

_LOG: Final = get_logger("techrevati.runtime.orchestrator")


class _ToolGate(_SessionCore):
    """The permission step of a tool call, sync and async; see the module docstring."""

    def present_token(self, token: ApprovalToken) -> None:
        """Offer an approval token for later ``ask`` decisions (checked in the ledger)."""
        from techrevati.runtime.approvals import ApprovalToken  # noqa: PLC0415

        if not isinstance(token, ApprovalToken):
            raise InvalidValueError(f"token must be an ApprovalToken, got {token!r}")
        with self._lock:
            self._presented.append(token)

    def _gate(self, name: str, fn: object, args: tuple[object, ...], kwargs: Any) -> None:
        """Decide the call; ask if told to; raise PermissionDeniedError unless allowed."""
        enforcer = self._orch.permissions
        if enforcer is None:
            return
        decision, arguments = self._decide(enforcer, name, fn, args, kwargs)
        if decision.effect == "ask":
            if arguments is None:  # the approver and the tokens see the call's arguments
                arguments = call_arguments(fn, args, kwargs)
            decision = self._settled(decision, name, arguments)
            if decision.effect == "ask":
                answer = self._call_approver(decision, name, arguments)
                if inspect.isawaitable(answer):
                    _close(answer)
                    answer = _ApproverFailed("an async approver needs arun_tool")
                decision = self._answered(decision, name, arguments, answer)
        self._enforce(decision, name)

    async def _agate(self, name: str, fn: object, args: tuple[object, ...], kwargs: Any) -> None:
        """Async twin of :meth:`_gate`: an async approver is awaited."""
        enforcer = self._orch.permissions
        if enforcer is None:
            return
        decision, arguments = self._decide(enforcer, name, fn, args, kwargs)
        if decision.effect == "ask":
            if arguments is None:  # the approver and the tokens see the call's arguments
                arguments = call_arguments(fn, args, kwargs)
            decision = self._settled(decision, name, arguments)
            if decision.effect == "ask":
                answer = self._call_approver(decision, name, arguments)
                if inspect.isawaitable(answer):
                    try:
                        answer = await answer
                    except Exception as exc:
                        answer = _ApproverFailed(f"the approver raised {type(exc).__name__}: {exc}")
                decision = self._answered(decision, name, arguments, answer)
        self._enforce(decision, name)

    # -- the steps ---------------------------------------------------------------------------

    def _decide(
        self,
        enforcer: PermissionEnforcer,
        name: str,
        fn: object,
        args: tuple[object, ...],
        kwargs: Mapping[str, object],
    ) -> tuple[PermissionDecision, Mapping[str, object] | None]:
        """Decide, with the call's arguments only where a rule could look at them."""
        role = self._orch.role
        if not enforcer.policy.uses_arguments(role):
            return enforcer.decide(role, name), None
        arguments = call_arguments(fn, args, kwargs)
        return enforcer.decide(role, name, arguments), arguments

    def _settled(
        self,
        decision: PermissionDecision,
        name: str,
        arguments: Mapping[str, object],
    ) -> PermissionDecision:
        """Settle an ``ask`` without asking: a session approval or a presented token."""
        key = (normalize_permission_name(name), decision.rule)
        with self._lock:
            remembered = key in self._approved
            presented = list(self._presented)
        if remembered:
            return self._approve(decision, name, "allow_session", "remembered for this session")
        ledger = self._orch.approvals
        if ledger is None:
            return decision
        for token in presented:
            verdict = ledger.consume(
                token, self._orch.role, name, dict(arguments), matcher=self._matcher()
            )
            if verdict.accepted:
                who = token.granted_by
                return self._approve(decision, name, "token", f"token of {who}: {verdict.reason}")
        return decision

    def _call_approver(
        self, decision: PermissionDecision, name: str, arguments: Mapping[str, object]
    ) -> object:
        approver = self._orch.approver
        self._emit(
            EventName.TOOL_APPROVAL_REQUESTED,
            detail=decision.reason,
            data={"tool": name, "rule": decision.rule, "approver": approver is not None},
        )
        if approver is None:
            return _ApproverFailed("nobody to ask: the orchestrator has no approver")
        request = ApprovalRequest(decision, name, self._orch.role, dict(arguments), self.id)
        try:
            return approver(request)
        except Exception as exc:
            _LOG.exception("approver failed on tool %r", name)
            return _ApproverFailed(f"the approver raised {type(exc).__name__}: {exc}")

    def _answered(
        self,
        decision: PermissionDecision,
        name: str,
        arguments: Mapping[str, object],
        answer: object,
    ) -> PermissionDecision:
        """Turn the approver's answer into the final decision (anything unclear denies)."""
        if isinstance(answer, _ApproverFailed):
            return _denied(decision, f"needs approval and {answer.reason}; denied")
        if isinstance(answer, ApprovalDenial):
            return _denied(decision, f"needs approval and the approver denied it: {answer.reason}")
        if answer == ApprovalAnswer.ALLOW_ONCE:
            return self._approve(decision, name, "allow_once", "the approver allowed it once")
        if answer == ApprovalAnswer.ALLOW_SESSION:
            with self._lock:
                self._approved.add((normalize_permission_name(name), decision.rule))
            return self._approve(decision, name, "allow_session", "allowed for this session")
        if answer == ApprovalAnswer.DENY:
            return _denied(decision, "needs approval and the approver denied it")
        from techrevati.runtime.approvals import ApprovalToken  # noqa: PLC0415

        if isinstance(answer, ApprovalToken):
            ledger = self._orch.approvals
            if ledger is None:
                return _denied(decision, "the approver gave a token but there is no ledger")
            ledger.grant(answer)
            with self._lock:
                self._presented.append(answer)
            verdict = ledger.consume(
                answer, self._orch.role, name, dict(arguments), matcher=self._matcher()
            )
            if verdict.accepted:
                return self._approve(decision, name, "token", f"a new token: {verdict.reason}")
            return _denied(decision, f"the approver's token was refused: {verdict.reason}")
        return _denied(decision, f"needs approval and the approver answered {answer!r}")

    def _matcher(self) -> Callable[[str, Mapping[str, object]], bool]:
        """Match a token's argument pattern as a rule's (``"path:src/**"``, ``"npm run *"``)."""
        enforcer = self._orch.permissions
        assert enforcer is not None
        return enforcer.policy.matches_arguments

    def _approve(
        self, decision: PermissionDecision, name: str, how: str, detail: str
    ) -> PermissionDecision:
        self._emit(
            EventName.TOOL_APPROVED,
            detail=detail,
            data={"tool": name, "rule": decision.rule, "answer": how},
        )
        return decision._replace(effect="allow", reason=f"{decision.reason}; approved ({detail})")

    def _enforce(self, decision: PermissionDecision, name: str) -> None:
        if decision.effect == "allow":
            return
        self._record_failure(AgentFailureClass.PERMISSION_DENIED)
        self._emit(
            EventName.TOOL_DENIED,
            failure_class=AgentFailureClass.PERMISSION_DENIED,
            detail=decision.reason,
            data={"tool": name, "rule": decision.rule},
        )
        raise PermissionDeniedError(decision.outcome)


class _ApproverFailed:
    """No usable answer: nobody to ask, the approver raised, or answered asynchronously."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


def call_arguments(
    fn: object, args: tuple[object, ...], kwargs: Mapping[str, object]
) -> dict[str, object]:
    """Return the call's arguments by parameter name (unbound positional ones as ``"0"``, ...)."""
    try:
        bound = inspect.signature(fn).bind_partial(*args, **kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return {**{str(index): value for index, value in enumerate(args)}, **kwargs}
    found: dict[str, object] = {}
    for key, value in bound.arguments.items():
        kind = bound.signature.parameters[key].kind
        if kind is inspect.Parameter.VAR_KEYWORD and isinstance(value, dict):
            found.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            found.update({f"{key}{index}": item for index, item in enumerate(value)})
        else:
            found[key] = value
    return found


def _denied(decision: PermissionDecision, why: str) -> PermissionDecision:
    return decision._replace(effect="deny", reason=f"{decision.reason}; {why}")


def _close(awaitable: object) -> None:
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()
