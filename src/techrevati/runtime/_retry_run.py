"""``RetryRun``, the one retry engine, and the sync and async loops that drive it.

The engine is sans-I/O: it is fed each failure and answers with the retry to
make (a :class:`RetryAttempt`) or with None, and never calls, sleeps or reads
a clock of its own. :func:`call_sync` and :func:`call_async` are its only
loops, behind :func:`retry_call`, :func:`aretry_call`, :func:`retrying` and
:meth:`RetryPolicy.call`/:meth:`RetryPolicy.acall`; a session's turn engine
drives it too. Private to :mod:`~techrevati.runtime.retry_policy`, which
re-exports the public names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NoReturn, TypeAlias, TypeVar

from techrevati.runtime._classify import FailureInfo, FailureScenario, inspect_exception
from techrevati.runtime._log import get_logger
from techrevati.runtime._recipes import RecoveryOutcome, RecoveryStep
from techrevati.runtime.errors import (
    RetriesExhaustedError,
    TechrevatiError,
    TransientRuntimeError,
    refusal_in_chain,
)

if TYPE_CHECKING:
    from techrevati.runtime._recovery_context import RecoveryContext
    from techrevati.runtime.retry_policy import RetryPolicy

__all__ = ["RetryAttempt", "RetryRun", "call_async", "call_sync"]

T = TypeVar("T")
_Args: TypeAlias = tuple[object, ...]
_Kwargs: TypeAlias = Mapping[str, object]

_LOG: Final = get_logger("techrevati.runtime.retry_policy")


@dataclass(frozen=True, slots=True)
class RetryAttempt:
    """What an ``on_retry`` hook receives before each wait.

    ``attempt`` is the number of the call that just failed (1-based);
    ``steps`` are the automatic recipe steps to apply (wait, switch model).
    """

    attempt: int
    delay_seconds: float
    failure: FailureInfo
    steps: tuple[RecoveryStep, ...]
    exception: Exception
    reason: str = ""
    """Why the retry was granted, in words (the recipe's reason)."""


class RetryRun:
    """The one retry state machine: feed it each failure, it says what to do next.

    Sans-I/O: it never calls, sleeps or reads a clock of its own, so the same
    object drives :func:`retry_call`, :func:`aretry_call`, :func:`retrying`
    and a session's ``run_turn``/``arun_turn``; only their shells differ
    (call, sleep or ``await``). Make one per run (one call, or one turn):
    attempt budgets are per run. ``cap``, a :class:`RecoveryContext` shared
    by many runs, adds a cap across them (its ``max_total_attempts``) and
    keeps their combined counts.
    """

    __slots__ = ("_cap", "_context", "_limit", "_policy", "_previous", "attempt", "exhausted")

    def __init__(self, policy: RetryPolicy, *, cap: RecoveryContext | None = None) -> None:
        self._policy = policy
        self._cap = cap
        self._context = policy.new_context()
        self._limit = policy.attempt_limit()
        self._previous: float | None = None
        self.attempt = 0
        """Failed calls seen so far."""
        self.exhausted = False
        """Whether the run ended in :class:`RetriesExhaustedError`."""

    def failed(self, exc: Exception) -> RetryAttempt | None:
        """Decide on one failed call: the retry to make, or None to re-raise ``exc`` unchanged.

        Raises :class:`RetriesExhaustedError` (from ``exc``) when the
        attempts run out. The runtime's own refusals (a
        :class:`~techrevati.runtime.errors.TechrevatiError` that is not a
        :class:`~techrevati.runtime.errors.TransientRuntimeError`) are never
        retried. ``on_retry`` and ``stats`` are called from here.
        """
        policy = self._policy
        self.attempt += 1
        info = _failure_info(exc, policy)
        stats = policy.stats
        if stats is not None:
            stats._failed(info.scenario)
        if isinstance(exc, TechrevatiError) and not isinstance(exc, TransientRuntimeError):
            self._give_up()
            return None
        if refusal_in_chain(exc) is not None:  # a refusal wrapped in another error
            self._give_up()
            return None
        if policy.retry_on is not None:
            retry = self._decide_by_predicate(policy.retry_on, exc, info)
        else:
            retry = self._decide_by_recipe(exc, info)
        if retry is None:
            self._give_up()
            return None
        if self._cap is not None and not self._cap._claim_total(info.scenario):
            limit = self._cap.max_total_attempts
            self._exhausted(exc, info, f"all {limit} retries shared across runs used")
        if policy.on_retry is not None:
            try:
                policy.on_retry(retry)
            except Exception:
                _LOG.warning("on_retry hook failed; retrying anyway", exc_info=True)
        if stats is not None:
            stats._retried()
        self._previous = retry.delay_seconds
        return retry

    def _decide_by_predicate(
        self, retry_on: Callable[[Exception], bool], exc: Exception, info: FailureInfo
    ) -> RetryAttempt | None:
        """Let ``retry_on`` alone decide what is retried, bounded by ``max_attempts``."""
        policy = self._policy
        if not retry_on(exc):
            return None
        hint = info.retry_after
        if hint is not None and hint > policy.max_retry_after:
            return None
        self._check_left(exc, info)
        delay = policy._wait(self.attempt, hint, self._previous)
        step = (
            RecoveryStep.WAIT_FOR_RETRY_AFTER
            if hint is not None
            else RecoveryStep.RETRY_WITH_BACKOFF
        )
        reason = f"retry_on accepted {info.exception_type or 'the error'}; wait {delay:.3f}s"
        return RetryAttempt(self.attempt, delay, info, (step,), exc, reason)

    def _decide_by_recipe(self, exc: Exception, info: FailureInfo) -> RetryAttempt | None:
        """Let the scenario's recipe decide (with ``x-should-retry`` and the hint limit)."""
        context = self._context
        recovery = context._recover(context.recipe_for(info.scenario), info, self._policy)
        if recovery.outcome is not RecoveryOutcome.RECOVERED:
            if recovery.exhausted:
                self._exhausted(exc, info, recovery.reason)
            return None
        self._check_left(exc, info)
        return RetryAttempt(
            self.attempt,
            recovery.delay_seconds,
            info,
            recovery.recovered_steps,
            exc,
            recovery.reason,
        )

    def _check_left(self, exc: Exception, info: FailureInfo) -> None:
        if self.attempt >= self._limit:
            self._exhausted(exc, info, f"max_attempts={self._limit} reached")

    def _exhausted(self, exc: Exception, info: FailureInfo, reason: str) -> NoReturn:
        self.exhausted = True
        if self._policy.stats is not None:
            self._policy.stats._ended(exhausted=True)
        raise RetriesExhaustedError(self.attempt, info, reason) from exc

    def _give_up(self) -> None:
        if self._policy.stats is not None:
            self._policy.stats._ended(exhausted=False)


def _failure_info(exc: Exception, policy: RetryPolicy) -> FailureInfo:
    """Read ``exc``; a failure the runtime detected itself says what it is."""
    if isinstance(exc, TransientRuntimeError):
        return FailureInfo(
            FailureScenario(exc.scenario), retryable=True, exception_type=type(exc).__name__
        )
    return inspect_exception(exc, clock=policy.clock)


def call_sync(fn: Callable[..., T], args: _Args, kwargs: _Kwargs, policy: RetryPolicy) -> T:
    """Call ``fn`` until it returns or the run gives up, sleeping with ``policy.sleep``.

    The :class:`RetryRun` is made on the first failure, so a success costs
    no more than the stats count.
    """
    if policy.stats is not None:
        policy.stats._started()
    run: RetryRun | None = None
    while True:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            run = run or RetryRun(policy)
            if (retry := run.failed(exc)) is None:
                raise
            if retry.delay_seconds > 0:
                policy.sleep(retry.delay_seconds)
        else:
            if policy.stats is not None:
                policy.stats._succeeded()
            return result


async def call_async(
    fn: Callable[..., Awaitable[T]], args: _Args, kwargs: _Kwargs, policy: RetryPolicy
) -> T:
    """Await ``fn`` until it returns or the run gives up, waiting with ``policy.async_sleep``."""
    if policy.stats is not None:
        policy.stats._started()
    run: RetryRun | None = None
    while True:
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            run = run or RetryRun(policy)
            if (retry := run.failed(exc)) is None:
                raise
            if retry.delay_seconds > 0:
                await policy.async_sleep(retry.delay_seconds)
        else:
            if policy.stats is not None:
                policy.stats._succeeded()
            return result


for _public in (RetryAttempt, RetryRun):
    _public.__module__ = "techrevati.runtime.retry_policy"
