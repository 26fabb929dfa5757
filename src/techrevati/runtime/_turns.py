"""One model turn: its state across attempts, and the engine that runs it.

Private: the base of :class:`~techrevati.runtime.orchestrator.Session` that
provides ``run_turn`` and ``arun_turn``. The steps of an attempt (hooks,
budget holds, the timed call under the breaker, reading the result,
charging, events) are written once here; the sync and async loops are thin
shells around them, and retries come from the one
:class:`~techrevati.runtime.retry_policy.RetryRun` engine.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, Final, TypeVar, overload

from techrevati.runtime._async_deadline import within_deadline
from techrevati.runtime._money import usd_text
from techrevati.runtime._responses import (
    StreamResultError,
    aclose_refused,
    check_response,
    usage_from_exception,
    usage_from_result,
)
from techrevati.runtime._runner import DeadlineExceededError
from techrevati.runtime._session_core import _log, _SessionCore, _short, failure_class_of
from techrevati.runtime._validate import (
    required_callable,
    seconds_or_none,
)
from techrevati.runtime.budget import Budget, BudgetExceededError, _limit_error
from techrevati.runtime.circuit_breaker import CircuitBreaker, CircuitOpenError
from techrevati.runtime.errors import (
    InvalidValueError,
    MaxIterationsExceededError,
    TurnTimeoutError,
)
from techrevati.runtime.events import (
    AgentFailureClass,
    EventName,
    UsageRecord,
)
from techrevati.runtime.governance import GovernanceBreachedError
from techrevati.runtime.hooks import (
    ModelCall,
)
from techrevati.runtime.lifecycle import AgentStatus
from techrevati.runtime.outputs import (
    OutputEscalationError,
    OutputRun,
    OutputSpec,
    OutputValidationError,
    bind_feedback,
)
from techrevati.runtime.pricing import _cost_femto
from techrevati.runtime.rate_limit import RateLease, RateLimitedError, RateLimiter
from techrevati.runtime.retry_policy import (
    FailureScenario,
    RecoveryStep,
    RetriesExhaustedError,
    RetryAttempt,
    RetryRun,
    inspect_exception,
)
from techrevati.runtime.routing import (
    Candidate,
    NoHealthyProviderError,
    Outcome,
    ProviderRouter,
    RouteRequest,
)
from techrevati.runtime.usage import TurnCost, UsageSnapshot

__all__ = ["UNNAMED_MODEL"]

UNNAMED_MODEL: Final = "unnamed-model"
"""The model name a turn is recorded under when ``run_turn`` is given none."""

_T = TypeVar("_T")
_O = TypeVar("_O")
_PLAIN_RESULTS: Final = frozenset({str, bytes, int, float, bool, type(None)})


class _TurnEngine(_SessionCore):
    """``run_turn``, ``arun_turn`` and every step of a turn."""

    @overload
    def run_turn(
        self,
        fn: Callable[..., _T],
        *,
        model: str = "",
        usage: UsageSnapshot | None = None,
        estimate: UsageSnapshot | None = None,
        timeout: float | None = None,
        fallback_models: Sequence[str] = (),
        output: None = None,
        output_attempts: int | None = None,
    ) -> tuple[_T, UsageSnapshot]: ...

    @overload
    def run_turn(
        self,
        fn: Callable[..., object],
        *,
        model: str = "",
        usage: UsageSnapshot | None = None,
        estimate: UsageSnapshot | None = None,
        timeout: float | None = None,
        fallback_models: Sequence[str] = (),
        output: OutputSpec[_O],
        output_attempts: int | None = None,
    ) -> tuple[_O, UsageSnapshot]: ...

    def run_turn(
        self,
        fn: Callable[..., Any],
        *,
        model: str = "",
        usage: UsageSnapshot | None = None,
        estimate: UsageSnapshot | None = None,
        timeout: float | None = None,
        fallback_models: Sequence[str] = (),
        output: OutputSpec[Any] | None = None,
        output_attempts: int | None = None,
    ) -> tuple[Any, UsageSnapshot]:
        """Call ``fn`` as one model turn and return ``(result, usage)``.

        ``usage`` is charged when given; otherwise it is read from the result
        (``UsageSnapshot.from_response``) or counted as zero and flagged. If
        ``fn`` accepts a ``model`` keyword it receives the model to use, which
        changes to the next of ``fallback_models`` when a retry recipe says
        SWITCH_PROVIDER. With a retry policy, failures are retried by the
        same engine as :func:`~techrevati.runtime.retry_policy.retry_call`,
        with a fresh attempt budget each turn.

        ``output``: an :class:`~techrevati.runtime.outputs.OutputSpec`; the
        result is its typed value. An answer that does not fit it is the
        ``output_invalid`` scenario: ``fn`` is called again (a turn of its
        own, charged) with the error's ``feedback`` keyword if it takes one,
        up to ``output_attempts`` calls in all (by default the recipe's
        attempts + 1: 3), then ``OutputEscalationError``.
        """
        if output is not None:
            return self._validated_turn(
                fn, output, output_attempts, model, usage, estimate, timeout, fallback_models
            )
        turn = self._begin_turn(
            fn, model, usage, estimate, timeout, fallback_models=fallback_models
        )
        target = fn if turn.timeout is None and not _accepts_model(fn) else self._timed(fn, turn)
        clock = self._orch.clock
        while True:
            self._before_attempt(turn)
            breaker, limiter = turn.breaker, turn.limiter  # a route's switch changes them
            if limiter is not None:
                self._throttle(limiter, turn)
            started = clock()
            try:
                if breaker is None:
                    result = _inspected(target, turn)
                else:  # around the deadline too: a timeout is the dependency's failure
                    result = breaker.call(_inspected, target, turn)
            except BaseException as exc:
                retry = self._attempt_failed(turn, exc, clock() - started)
                if retry is None:
                    raise
                if retry.delay_seconds > 0:
                    self._orch._sleep(retry.delay_seconds)
                continue
            return self._attempt_succeeded(turn, result, clock() - started)

    @overload
    async def arun_turn(
        self,
        fn: Callable[..., Awaitable[_T]],
        *,
        model: str = "",
        usage: UsageSnapshot | None = None,
        estimate: UsageSnapshot | None = None,
        timeout: float | None = None,
        fallback_models: Sequence[str] = (),
        output: None = None,
        output_attempts: int | None = None,
    ) -> tuple[_T, UsageSnapshot]: ...

    @overload
    async def arun_turn(
        self,
        fn: Callable[..., Awaitable[object]],
        *,
        model: str = "",
        usage: UsageSnapshot | None = None,
        estimate: UsageSnapshot | None = None,
        timeout: float | None = None,
        fallback_models: Sequence[str] = (),
        output: OutputSpec[_O],
        output_attempts: int | None = None,
    ) -> tuple[_O, UsageSnapshot]: ...

    async def arun_turn(
        self,
        fn: Callable[..., Awaitable[Any]],
        *,
        model: str = "",
        usage: UsageSnapshot | None = None,
        estimate: UsageSnapshot | None = None,
        timeout: float | None = None,
        fallback_models: Sequence[str] = (),
        output: OutputSpec[Any] | None = None,
        output_attempts: int | None = None,
    ) -> tuple[Any, UsageSnapshot]:
        """Async twin of :meth:`run_turn`: ``fn`` returns an awaitable."""
        if output is not None:
            return await self._avalidated_turn(
                fn, output, output_attempts, model, usage, estimate, timeout, fallback_models
            )
        if self.thread_id is not None and not self._step_begun:
            await self._abegin_step()
        turn = self._begin_turn(
            fn, model, usage, estimate, timeout, fallback_models=fallback_models
        )
        attempt = self._async_attempt(fn, turn)
        clock = self._orch.clock
        while True:
            self._before_attempt(turn, reserve=False)
            if self._budgets:
                await self._areserve(turn)
            limiter = turn.limiter
            if limiter is not None:
                await self._athrottle(limiter, turn)
            started = clock()
            try:
                result = await attempt()
            except BaseException as exc:
                retry = self._attempt_failed(turn, exc, clock() - started)
                if retry is None:
                    raise
                if retry.delay_seconds > 0:
                    await self._orch._async_sleep(retry.delay_seconds)
                continue
            return self._attempt_succeeded(turn, result, clock() - started)

    def _validated_turn(  # noqa: PLR0917 (run_turn's own arguments, passed on)
        self,
        fn: Callable[..., Any],
        output: OutputSpec[Any],
        attempts: int | None,
        model: str,
        usage: UsageSnapshot | None,
        estimate: UsageSnapshot | None,
        timeout: float | None,
        fallback_models: Sequence[str],
    ) -> tuple[Any, UsageSnapshot]:
        """``run_turn(output=...)``: turns until the answer fits ``output``, feedback fed back."""
        run = self._output_run(output, attempts)
        while True:
            answer, used = self.run_turn(
                bind_feedback(fn, run.feedback),
                model=model,
                usage=usage,
                estimate=estimate,
                timeout=timeout,
                fallback_models=fallback_models,
            )
            try:
                return run.feed(answer), used
            except OutputValidationError as error:
                self._output_invalid(error, model, escalated=False)
            except OutputEscalationError as error:
                self._output_invalid(error.errors[-1], model, escalated=True)
                raise

    async def _avalidated_turn(  # noqa: PLR0917 (arun_turn's own arguments, passed on)
        self,
        fn: Callable[..., Awaitable[Any]],
        output: OutputSpec[Any],
        attempts: int | None,
        model: str,
        usage: UsageSnapshot | None,
        estimate: UsageSnapshot | None,
        timeout: float | None,
        fallback_models: Sequence[str],
    ) -> tuple[Any, UsageSnapshot]:
        """Async twin of :meth:`_validated_turn`."""
        run = self._output_run(output, attempts)
        while True:
            answer, used = await self.arun_turn(
                bind_feedback(fn, run.feedback),
                model=model,
                usage=usage,
                estimate=estimate,
                timeout=timeout,
                fallback_models=fallback_models,
            )
            try:
                return run.feed(answer), used
            except OutputValidationError as error:
                self._output_invalid(error, model, escalated=False)
            except OutputEscalationError as error:
                self._output_invalid(error.errors[-1], model, escalated=True)
                raise

    def _output_run(self, output: object, attempts: int | None) -> OutputRun[Any]:
        """Check ``output`` and make its run: ``attempts`` calls, or the recipe's retries + 1."""
        if not isinstance(output, OutputSpec):
            raise InvalidValueError(f"output must be an OutputSpec or None, got {output!r}")
        if attempts is None:  # the session's recipes: the policy's own, or the defaults
            attempts = self.recovery.recipe_for(FailureScenario.OUTPUT_INVALID).max_attempts + 1
        return OutputRun(output, attempts)

    def _output_invalid(self, error: OutputValidationError, model: str, *, escalated: bool) -> None:
        """Record an answer that did not fit the turn's output spec."""
        self._record_failure(AgentFailureClass.VALIDATION_ERROR)
        self._emit(
            EventName.OUTPUT_INVALID,
            failure_class=AgentFailureClass.VALIDATION_ERROR,
            detail=str(error),
            data={
                "model": model or UNNAMED_MODEL,
                "attempt": error.attempt,
                "spec": error.spec,
                "feedback": error.feedback,
                "escalated": escalated,
            },
        )

    def _begin_turn(
        self,
        fn: object,
        model: str,
        usage: UsageSnapshot | None,
        estimate: UsageSnapshot | None,
        timeout: float | None,
        *,
        fallback_models: Sequence[str],
    ) -> _Turn:
        """Check the arguments and the session, count the turn, and make its state."""
        required_callable("fn", fn)
        if type(model) is not str:
            raise InvalidValueError(f"model must be a str, got {model!r}")
        if usage is not None and type(usage) is not UsageSnapshot:
            raise InvalidValueError(f"usage must be a UsageSnapshot or None, got {usage!r}")
        if estimate is not None and type(estimate) is not UsageSnapshot:
            raise InvalidValueError(f"estimate must be a UsageSnapshot or None, got {estimate!r}")
        if timeout is not None:
            timeout = seconds_or_none("timeout", timeout)
        models = _fallbacks(fallback_models) if fallback_models else ()
        worker = self.worker
        if worker is None or worker.status is not AgentStatus.RUNNING:
            self._require_running()  # raises, saying why
        model = model or UNNAMED_MODEL
        if self.thread_id is not None and not self._step_begun:
            self._begin_step()
        meter = self.governance
        if meter is not None:
            try:
                meter.before_turn()
            except GovernanceBreachedError as breach:
                raise self._governance_breached(breach) from None
        limit = self._orch.max_iterations
        with self._lock:
            refused = limit is not None and self._turns >= limit
            if not refused:
                self._turns += 1
            turn_number = self._turns
        if refused:
            assert limit is not None
            self._record_failure(AgentFailureClass.BUDGET_EXCEEDED)
            raise MaxIterationsExceededError(limit)
        if self._stats is not None:
            self._stats._started()
        turn = _Turn(model, models, usage, estimate, timeout)
        turn.breaker = self._orch.circuit_breaker
        turn.limiter = self._orch.rate_limiter
        router = self._orch.router
        if router is not None:
            if not _accepts_model(fn):  # type: ignore[arg-type]
                raise InvalidValueError(
                    "with a router, fn must take a model keyword: it is called with the "
                    "routed candidate's model"
                )
            self._route(turn, router)
        if self._orch._model_hooks:
            # Only hooks look at the ModelCall; without them it is not built.
            turn.call = ModelCall(
                model=model,
                turn=turn_number,
                attempt=1,
                role=self._orch.role,
                phase=self._orch.phase,
                session_id=self.id,
                emit=self._hook_emit,
            )
        return turn

    def _throttle(self, limiter: RateLimiter, turn: _Turn) -> None:
        """Wait for the rate limiter to admit the attempt (its lease goes on the turn)."""
        try:
            turn.lease = limiter.acquire(turn.estimate or self._orch.default_estimate)
        except BaseException as exc:
            self._throttle_refused(turn, exc)
            raise
        if turn.lease.waited:
            self._throttled(turn, turn.lease.waited)

    async def _athrottle(self, limiter: RateLimiter, turn: _Turn) -> None:
        """Async twin of :meth:`_throttle`."""
        try:
            turn.lease = await limiter.aacquire(turn.estimate or self._orch.default_estimate)
        except BaseException as exc:
            self._throttle_refused(turn, exc)
            raise
        if turn.lease.waited:
            self._throttled(turn, turn.lease.waited)

    def _throttled(self, turn: _Turn, waited: float) -> None:
        """Record that the attempt waited ``waited`` seconds for the rate limiter."""
        turn.throttled += waited
        self._emit(
            EventName.TURN_THROTTLED,
            detail=f"waited {waited:g}s for rate-limit capacity",
            data={"model": turn.model, "attempt": turn.attempt, "wait_seconds": waited},
        )

    def _throttle_refused(self, turn: _Turn, exc: BaseException) -> None:
        """Give back the attempt's holds after the rate limiter refused it (or was interrupted)."""
        self._release(turn)
        if isinstance(exc, RateLimitedError):
            self._emit(
                EventName.TURN_THROTTLED,
                detail=str(exc),
                data={
                    "model": turn.model,
                    "attempt": turn.attempt,
                    "wait_seconds": 0.0,
                    "limit": exc.limit_kind,
                    "retry_after": exc.retry_after,
                    "refused": True,
                },
            )

    def _before_attempt(self, turn: _Turn, *, reserve: bool = True) -> None:
        """Run before_model hooks for the next attempt, then reserve its budget.

        ``reserve=False``: the async engine reserves itself (:meth:`_areserve`).
        A retry is refused here once the governance's wall time has passed.
        """
        if turn.attempt and self.governance is not None:
            self._check_wall(turn)
        turn.attempt += 1
        call = turn.call
        if call is not None:  # only built when hooks look at it
            if call.attempt != turn.attempt or call.model != turn.model:
                call = replace(call, model=turn.model, attempt=turn.attempt)
            call = self._replaced_by_hooks("before_model", call, ModelCall)
            turn.call = call
            turn.model = call.model
        if self._cap is not None:
            self._hold_cap(turn)
        if reserve and self._budgets:
            self._reserve(turn)

    def _check_wall(self, turn: _Turn) -> None:
        """Refuse the next attempt of ``turn`` when the governance's wall time has passed."""
        meter = self.governance
        assert meter is not None
        try:
            meter.check_wall()
        except GovernanceBreachedError as breach:
            meter._record_turn(turn.billed_femto, True)
            raise self._governance_breached(breach) from None

    def _hold_cap(self, turn: _Turn) -> None:
        """Hold the attempt's expected cost on the session's cap (``budget_usd``)."""
        cap = self._cap
        assert cap is not None
        model = turn.model
        estimate = turn.estimate
        if estimate is not None:
            femto = _cost_femto(model, estimate)
        else:
            expected = self._cap_expect.get(model)
            if expected is not None:
                femto = expected
            elif self._orch.default_estimate is not None:
                femto = _cost_femto(model, self._orch.default_estimate)
            else:
                femto = 0
        with self._lock:
            spent, held = self._cap_spent, self._cap_held
            if spent + held + (femto or 1) <= cap:
                self._cap_held = held + femto
                turn.cap_held = femto
                return
        error = _limit_error(
            "usd",
            cap,
            spent,
            reserved=held,
            wanted=femto,
            model=model,
            after=False,
            limit_femto=cap,
            spent_femto=spent,
        )
        self._budget_refused(turn, error)
        turn.cap_held = 0  # not enforced: charged after the call all the same

    def _budget_refused(self, turn: _Turn, exc: BudgetExceededError) -> None:
        """Raise ``exc`` when budgets are enforced, else record the overrun and go on."""
        if self._orch.enforce_budget:
            self._release(turn)
            self._record_failure(AgentFailureClass.BUDGET_EXCEEDED)
            self._emit(
                EventName.BUDGET_EXCEEDED,
                failure_class=AgentFailureClass.BUDGET_EXCEEDED,
                detail=str(exc),
                data={"model": turn.model, "enforced": True},
            )
            raise exc
        with self._lock:
            self._budget_warnings += 1
        self._emit(
            EventName.BUDGET_EXCEEDED,
            detail=str(exc),
            data={"model": turn.model, "enforced": False},
        )
        _log.warning(
            "budget exceeded (not enforced): %s", exc, extra=self._log_extra(model=turn.model)
        )

    def _reserve(self, turn: _Turn) -> None:
        """Hold the attempt's estimate on every budget; release them all if one refuses."""
        for budget in self._budgets:
            try:
                turn.holds.append((budget, *budget._hold(turn.model, turn.estimate)))
            except BudgetExceededError as exc:
                self._budget_refused(turn, exc)
                turn.unreserved.append(budget)
            except BaseException:
                self._release(turn)
                raise

    async def _areserve(self, turn: _Turn) -> None:
        """Async twin of :meth:`_reserve`: a shared budget decides while the loop runs."""
        for budget in self._budgets:
            try:
                if budget.store is None:
                    held = budget._hold(turn.model, turn.estimate)
                else:
                    held = await budget._ahold(turn.model, turn.estimate)
                turn.holds.append((budget, *held))
            except BudgetExceededError as exc:
                self._budget_refused(turn, exc)
                turn.unreserved.append(budget)
            except BaseException:
                self._release(turn)
                raise

    def _release(self, turn: _Turn) -> None:
        """Drop the attempt's holds: nothing was billed (or nothing is known of it)."""
        held, turn.cap_held = turn.cap_held, None
        if held:
            with self._lock:
                self._cap_held -= held
        holds, turn.holds = turn.holds, []
        turn.unreserved.clear()
        for budget, _, femto, tokens, key in holds:
            budget._release_hold(femto, tokens, key)
        lease, turn.lease = turn.lease, None
        if lease is not None:
            lease.release()

    def _charge(self, turn: _Turn, usage: UsageSnapshot, *, settle_cap: bool = True) -> TurnCost:
        """Record a billed attempt: the tracker, then every budget, exactly once.

        ``settle_cap=False`` leaves the session cap to the caller, who settles
        it in a locked section it takes anyway (:meth:`_turn_done`).
        """
        cost = self.tracker.record_turn(turn.model, usage)
        lease = turn.lease
        if lease is not None:
            turn.lease = None
            lease.settle(usage)
        if settle_cap and turn.cap_held is not None:
            with self._lock:
                self._settle_cap_locked(turn, cost.cost_femto_usd)
        holds, turn.holds = turn.holds, []
        if holds:
            femto = cost.cost_femto_usd  # priced once, by the tracker: the same registry
            tokens = usage.input_tokens + usage.output_tokens
            try:
                while holds:
                    budget, name, held_femto, held_tokens, key = holds[-1]
                    budget._settle_hold(name, held_femto, held_tokens, femto, tokens, key=key)
                    holds.pop()
            except BaseException:
                for budget, _, held_femto, held_tokens, key in holds:
                    budget._release_hold(held_femto, held_tokens, key)
                raise
        unreserved, turn.unreserved = turn.unreserved, []
        for budget in unreserved:
            budget.charge(turn.model, usage)
        return cost

    def _timed(self, fn: Callable[..., _T], turn: _Turn) -> Callable[[], _T]:
        """``fn`` as a zero-argument call: given the turn's model, within its deadline."""
        target: Callable[[], _T] = (lambda: fn(model=turn.model)) if _accepts_model(fn) else fn
        timeout = turn.timeout
        if timeout is None:
            return target
        runner = self._orch._runner_for_timeouts()
        untimed = target

        def timed() -> _T:
            try:
                return runner.run(untimed, timeout)
            except DeadlineExceededError as exc:
                raise TurnTimeoutError(timeout, turn.model, started=exc.started) from None

        return timed

    def _async_attempt(
        self, fn: Callable[..., Awaitable[_T]], turn: _Turn
    ) -> Callable[[], Awaitable[_T]]:
        """Async twin of :meth:`_sync_attempt`; the deadline holds even if ``fn`` ignores it."""
        wants_model = _accepts_model(fn)
        timeout = turn.timeout

        async def attempt() -> _T:
            awaitable = fn(model=turn.model) if wants_model else fn()
            if timeout is None:
                result = await awaitable
            else:
                result = await within_deadline(awaitable, timeout, turn.model)
            try:
                _inspect(turn, result)
            except StreamResultError as exc:
                await aclose_refused(exc)
                raise
            return result

        def guarded() -> Awaitable[_T]:
            breaker = turn.breaker  # read per attempt: a route's switch changes it
            return attempt() if breaker is None else breaker.acall(attempt)

        return guarded

    def _attempt_succeeded(
        self, turn: _Turn, result: _T, duration: float
    ) -> tuple[_T, UsageSnapshot]:
        limiter = turn.limiter
        if limiter is not None:
            limiter.observe(result)
        usage = turn.usage or turn.read_usage
        flagged = usage is None
        if usage is None:
            usage = UsageSnapshot.ZERO
        try:
            cost = self._charge(turn, usage, settle_cap=False)
        except BaseException:
            self._release(turn)
            raise
        self._turn_done(turn, usage, cost.cost_femto_usd, flagged, duration)
        if turn.candidate is not None:
            self._routed(turn, Outcome(True, duration, cost.cost_femto_usd))
        meter = self.governance
        if meter is not None:
            meter._record_turn(turn.billed_femto + cost.cost_femto_usd, False)
        if self._usage_sinks:
            self._write_usage(turn, usage, cost, duration)
        if self._stats is not None:
            self._stats._succeeded()
        for hook in self._after_model:
            assert turn.call is not None
            replaced = self._run_hook(hook, "after_model", hook.after_model, turn.call, result)
            if replaced is not None:
                result = replaced
        return result, usage

    def _write_usage(
        self, turn: _Turn, usage: UsageSnapshot, cost: TurnCost, duration: float
    ) -> None:
        self._orch.sinks.write_usage(
            UsageRecord(
                model=turn.model,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                cache_write_1h_tokens=usage.cache_write_1h_tokens,
                cost_usd=cost.cost_usd,
                priced=cost.priced,
                duration_seconds=duration,
                role=self._orch.role,
                phase=self._orch.phase,
                session_id=self.id,
                worker_id=self._require_worker().id,
                project_id=self._orch.project_id,
                timestamp=self._orch.wall_clock(),
                service_tier=usage.service_tier,
            )
        )

    def _attempt_failed(
        self, turn: _Turn, exc: BaseException, duration: float
    ) -> RetryAttempt | None:
        """Settle and record a failed attempt; return the retry to make, or None to re-raise.

        Raises :class:`RetriesExhaustedError` from ``exc`` when attempts run out.
        """
        billed = usage_from_exception(exc) if isinstance(exc, Exception) else None
        limiter = turn.limiter
        if limiter is not None:
            limiter.observe(exc)
        if billed is None:
            self._release(turn)
            cost = None
        else:
            cost = self._charge(turn, billed)
            turn.billed_femto += cost.cost_femto_usd
            if self._usage_sinks:
                self._write_usage(turn, billed, cost, duration)
        failure = failure_class_of(exc)
        self._record_failure(failure)
        if isinstance(exc, TurnTimeoutError):
            with self._lock:
                self._timed_out = True
        self._emit_failure(
            turn=turn, exc=exc, failure=failure, duration=duration, billed=billed, cost=cost
        )
        if turn.candidate is not None and isinstance(exc, Exception):
            femto = None if cost is None else cost.cost_femto_usd
            self._routed(turn, Outcome(False, max(duration, 0.0), femto, failure))
        retry = self._retry_for(turn, exc, failure)
        if retry is None:
            meter = self.governance
            if meter is not None:
                meter._record_turn(turn.billed_femto, True)
            return None
        if RecoveryStep.SWITCH_PROVIDER in retry.steps and turn.models:
            self._switch(turn)
        with self._lock:
            self._retries += 1
        self._emit(
            EventName.TURN_RETRIED,
            failure_class=failure,
            detail=retry.reason,
            data={
                "model": turn.model,
                "attempt": turn.attempt,
                "delay_seconds": retry.delay_seconds,
                "scenario": retry.failure.scenario.value,
            },
        )
        return retry

    def _retry_for(
        self, turn: _Turn, exc: BaseException, failure: AgentFailureClass
    ) -> RetryAttempt | None:
        """Return the retry the memory or the policy grants after ``exc``, or None.

        Raises :class:`RetriesExhaustedError` from ``exc`` when attempts run out
        (the turn is then counted as failed on the governance meter).
        """
        if not isinstance(exc, Exception) or isinstance(exc, GovernanceBreachedError):
            return None
        if failure is AgentFailureClass.CONTEXT_OVERFLOW and self.memory is not None:
            return self._compacted(turn, exc)
        if isinstance(exc, CircuitOpenError) and turn.route:  # opened since the route was made
            return RetryAttempt(
                attempt=turn.attempt,
                delay_seconds=0.0,
                failure=inspect_exception(exc),
                steps=(RecoveryStep.SWITCH_PROVIDER,),
                exception=exc,
                reason=f"{exc}: routed to the next candidate",
            )
        policy = self._orch.retry
        if policy is None:
            return None
        run = turn.run
        if run is None:
            run = turn.run = RetryRun(policy, cap=self.recovery)
        try:
            return run.failed(exc)
        except RetriesExhaustedError:
            with self._lock:
                self._retries_exhausted = True
            meter = self.governance
            if meter is not None:
                meter._record_turn(turn.billed_femto, True)
            raise

    def _compacted(self, turn: _Turn, exc: Exception) -> RetryAttempt | None:
        """Compact the session's memory after a context overflow: one retry, if it shed any."""
        memory = self.memory
        assert memory is not None
        if turn.compacted:  # healed once already: the second overflow is the caller's
            return None
        turn.compacted = True
        result = memory.compact()
        self._emit(
            EventName.MEMORY_COMPACTED,
            detail=(
                f"dropped {result.messages_dropped} messages "
                f"({result.tokens_dropped} tokens) after a context overflow"
            ),
            data={
                "model": turn.model,
                "messages_dropped": result.messages_dropped,
                "tokens_dropped": result.tokens_dropped,
                "messages_kept": result.messages_kept,
                "tokens_kept": result.tokens_kept,
            },
        )
        if not result.messages_dropped:
            return None
        return RetryAttempt(
            attempt=turn.attempt,
            delay_seconds=0.0,
            failure=inspect_exception(exc),
            steps=(RecoveryStep.REDUCE_CONTEXT,),
            exception=exc,
            reason="context overflow: the memory was compacted, the turn is retried once",
        )

    def _switch(self, turn: _Turn) -> None:
        """Move ``turn`` to its next model: the route's next candidate, or the next fallback."""
        previous = turn.model
        turn.model, turn.models = turn.models[0], turn.models[1:]
        if turn.route:
            candidate, turn.route = turn.route[0], turn.route[1:]
            turn.candidate = candidate
            turn.breaker = candidate.breaker or self._orch.circuit_breaker
            turn.limiter = candidate.limiter or self._orch.rate_limiter
        self._emit(
            EventName.MODEL_SWITCHED,
            detail=f"{previous} -> {turn.model}",
            data={"from_model": previous, "model": turn.model},
        )

    def _route(self, turn: _Turn, router: ProviderRouter) -> None:
        """Ask ``router`` where the turn goes: its first candidate, then the rest in order."""
        estimate = turn.estimate or self._orch.default_estimate
        try:
            decision = router.candidates(RouteRequest(estimate=estimate))
        except NoHealthyProviderError as exc:
            self._record_failure(AgentFailureClass.DEPENDENCY_FAILED)
            self._emit(
                EventName.TURN_ROUTED,
                failure_class=AgentFailureClass.DEPENDENCY_FAILED,
                detail=str(exc),
                data={"model": turn.model, "route": None},
            )
            raise
        first, rest = decision[0], tuple(decision)[1:]
        turn.candidate, turn.route = first, rest
        turn.model = first.model
        turn.models = tuple(candidate.model for candidate in rest)
        turn.breaker = first.breaker or self._orch.circuit_breaker
        turn.limiter = first.limiter or self._orch.rate_limiter
        self._emit(
            EventName.TURN_ROUTED,
            detail=decision.explain(),
            data={"model": first.model, "route": decision.to_dict()},
        )

    def _routed(self, turn: _Turn, outcome: Outcome) -> None:
        """Tell the router how the attempt on the turn's candidate went (never raises)."""
        router = self._orch.router
        candidate = turn.candidate
        assert router is not None
        assert candidate is not None
        try:
            router.record(candidate, outcome)
        except Exception:
            _log.warning("router.record failed; the turn goes on", exc_info=True)

    def _emit_failure(
        self,
        *,
        turn: _Turn,
        exc: BaseException,
        failure: AgentFailureClass,
        duration: float,
        billed: UsageSnapshot | None,
        cost: TurnCost | None,
        extra: Mapping[str, object] | None = None,
    ) -> None:
        name = EventName.TURN_FAILED
        data: dict[str, object] = {
            "model": turn.model,
            "attempt": turn.attempt,
            "duration_seconds": duration,
            "error_type": type(exc).__name__,
        }
        if billed is not None and cost is not None:
            data["input_tokens"] = billed.input_tokens
            data["output_tokens"] = billed.output_tokens
            data["cost_usd"] = usd_text(cost.cost_femto_usd)
            if billed.service_tier is not None:
                data["service_tier"] = billed.service_tier
        if isinstance(exc, CircuitOpenError):
            name = EventName.BREAKER_REJECTED
            data["retry_after"] = exc.retry_after
        if extra:  # a streamed turn's chunks and time to first token
            data.update(extra)
        self._emit(name, failure_class=failure, detail=_short(exc), data=data)


class _Turn:
    """The mutable state of one run_turn across its attempts."""

    __slots__ = (
        "attempt",
        "billed_femto",
        "breaker",
        "call",
        "candidate",
        "cap_held",
        "compacted",
        "estimate",
        "holds",
        "lease",
        "limiter",
        "model",
        "models",
        "read_usage",
        "route",
        "run",
        "throttled",
        "timeout",
        "unreserved",
        "usage",
    )

    def __init__(
        self,
        model: str,
        models: tuple[str, ...],
        usage: UsageSnapshot | None,
        estimate: UsageSnapshot | None,
        timeout: float | None,
    ) -> None:
        self.model = model
        self.models = models
        self.usage = usage
        self.estimate = estimate
        self.timeout = timeout
        self.attempt = 0
        self.cap_held: int | None = None  # held on the session cap; None: nothing held
        # Held on shared budgets: (budget, model name, femto, tokens), each given back once.
        self.holds: list[tuple[Budget, str, int, int, str | None]] = []
        self.unreserved: list[Budget] = []  # budgets that refused, not enforced: charge after
        self.read_usage: UsageSnapshot | None = None
        self.call: ModelCall | None = None
        self.run: RetryRun | None = None
        self.lease: RateLease | None = None  # the attempt's rate-limit admission, ended once
        self.throttled = 0.0  # seconds the turn's attempts waited for the rate limiter
        self.billed_femto = 0  # what failed attempts were billed (the governance counts it)
        self.compacted = False  # the memory was compacted once for this turn
        # Where the attempts go: the orchestrator's breaker and limiter, or the routed
        # candidate's, with the rest of the route to switch to.
        self.breaker: CircuitBreaker | None = None
        self.limiter: RateLimiter | None = None
        self.candidate: Candidate | None = None
        self.route: tuple[Candidate, ...] = ()


def _inspected(target: Callable[[], _T], turn: _Turn) -> _T:
    """Call ``target``; read the usage of its result and refuse a stream or a silent failure."""
    result = target()
    if type(result) not in _PLAIN_RESULTS:  # a str or a number is no response to read
        _inspect(turn, result)
    return result


def _inspect(turn: _Turn, result: object) -> None:
    usage = turn.usage
    if usage is None:
        usage = turn.read_usage = usage_from_result(result)
    check_response(result, usage)


def _fallbacks(models: object) -> tuple[str, ...]:
    if isinstance(models, str | bytes) or not isinstance(models, Sequence):
        raise InvalidValueError(
            f"fallback_models must be a sequence of model names (a list, not a str), got {models!r}"
        )
    for name in models:
        if not isinstance(name, str) or not name.strip():
            raise InvalidValueError(
                f"fallback_models must hold non-empty str model names, got {name!r} in {models!r}"
            )
    return tuple(models)


_MODEL_PARAM_CACHE: dict[object, bool] = {}


def _accepts_model(fn: Callable[..., object]) -> bool:
    """Whether ``fn`` takes a ``model`` keyword argument (cached per code object)."""
    code = getattr(fn, "__code__", None)
    if code is None:
        code = getattr(getattr(fn, "__func__", None), "__code__", None)
    if code is not None:
        cached = _MODEL_PARAM_CACHE.get(code)
        if cached is not None:
            return cached
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        result = "model" in names
        if len(_MODEL_PARAM_CACHE) < 4096:
            _MODEL_PARAM_CACHE[code] = result
        return result
    try:
        return "model" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
