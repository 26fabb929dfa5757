"""Classify a failed model or tool call, pick its recovery recipe, and retry it well.

Reach for it around every provider call: :func:`classify_exception` (or
:func:`inspect_exception`, which also reads wait hints) turns any SDK's
exception into a :class:`FailureScenario` without importing the SDK;
:func:`attempt_recovery` looks up the scenario's :class:`RecoveryRecipe` and
charges the attempt to a per-task :class:`RecoveryContext`; and
:func:`retry_call`, :func:`aretry_call` and :func:`retrying` run the whole
loop (classify, recipe, wait with jittered backoff or the server's
``retry-after``, give up) under a frozen :class:`RetryPolicy`. A non-retryable
error is re-raised unchanged at once; running out of attempts raises
:class:`RetriesExhaustedError` chained from the last error.

This module holds the policy and the entry points; the pieces they use live
in private modules and are re-exported here: the recipes (``_recipes``),
backoff (``_backoff``), the context (``_recovery_context``), the engine
:class:`RetryRun` and its loops (``_retry_run``), the counters
(``_retry_stats``), and the global recipes and testing switch
(``_retry_settings``).
"""

from __future__ import annotations

import functools
import inspect
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, ParamSpec, TypeVar, cast, overload

from techrevati.runtime._backoff import (
    DEFAULT_MAX_RETRY_AFTER,
    Jitter,
    _check_backoff,
    accepts_retry_after,
    backoff_delay,
)
from techrevati.runtime._classify import (
    FAILURE_CLASS_BY_SCENARIO,
    MAX_CHAIN_DEPTH,
    MAX_CHAIN_NODES,
    RETRYABLE_SCENARIOS,
    FailureInfo,
    FailureScenario,
    Origin,
    classify_exception,
    failure_class_for,
    inspect_exception,
)
from techrevati.runtime._recipes import (
    AUTOMATIC_STEPS,
    DEFAULT_RECIPES,
    WAITING_STEPS,
    EscalationPolicy,
    RecoveryOutcome,
    RecoveryRecipe,
    RecoveryRecord,
    RecoveryResult,
    RecoveryStep,
    _recipe_map,
    _scenario,
)
from techrevati.runtime._recovery_context import DEFAULT_HISTORY_SIZE, RecoveryContext
from techrevati.runtime._retry_run import RetryAttempt, RetryRun, call_async, call_sync
from techrevati.runtime._retry_settings import (
    SETTINGS,
    is_testing,
    recipe_for,
    reset_recipes,
    set_recipe,
    set_testing,
    testing,
)
from techrevati.runtime._retry_stats import RetryStats
from techrevati.runtime._validate import (
    callable_or_none,
    instance_or_none,
    int_at_least,
    non_negative_number,
    required_callable,
)
from techrevati.runtime.errors import (
    InvalidValueError,
    RetriesExhaustedError,
    RetryAfterTooLongError,
)

__all__ = [
    "AUTOMATIC_STEPS",
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_MAX_RETRY_AFTER",
    "DEFAULT_POLICY",
    "DEFAULT_RECIPES",
    "FAILURE_CLASS_BY_SCENARIO",
    "MAX_CHAIN_DEPTH",
    "MAX_CHAIN_NODES",
    "RETRYABLE_SCENARIOS",
    "WAITING_STEPS",
    "EscalationPolicy",
    "FailureInfo",
    "FailureScenario",
    "Jitter",
    "Origin",
    "RecoveryContext",
    "RecoveryOutcome",
    "RecoveryRecipe",
    "RecoveryRecord",
    "RecoveryResult",
    "RecoveryStep",
    "RetriesExhaustedError",
    "RetryAfterTooLongError",
    "RetryAttempt",
    "RetryPolicy",
    "RetryRun",
    "RetryStats",
    "aattempt_recovery",
    "accepts_retry_after",
    "aretry_call",
    "attempt_recovery",
    "backoff_delay",
    "classify_exception",
    "failure_class_for",
    "inspect_exception",
    "is_testing",
    "recipe_for",
    "reset_recipes",
    "retry_call",
    "retrying",
    "set_recipe",
    "set_testing",
    "testing",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


async def _asyncio_sleep(seconds: float) -> None:
    """``asyncio.sleep``, imported on first use: the module itself does not need asyncio."""
    import asyncio  # noqa: PLC0415

    await asyncio.sleep(seconds)


@dataclass(frozen=True, slots=True, eq=False)
class RetryPolicy:
    """How :func:`retry_call` retries: attempts, backoff, hint limit, recipes, hooks.

    ``max_attempts`` counts *calls*, the first one included (3 = up to 2
    retries); each scenario's recipe may stop earlier. Delays are
    ``backoff_delay(n, base=base_delay, cap=max_delay, jitter=jitter)``
    unless the server sent a hint, honoured up to ``max_retry_after``
    seconds. ``seed`` (or ``rng``) makes the jitter reproducible.
    ``retry_on(exc)``, if given, alone decides which exceptions are retried
    (bounded by ``max_attempts`` only); otherwise classification and the
    recipes decide. ``on_retry`` is called before each wait (its errors are
    logged, never raised); ``stats`` counts runs. ``sleep``/``async_sleep``
    and the wall ``clock`` (for HTTP-date hints) are injectable. Policies
    compare and hash by identity (they hold callables and an RNG).
    """

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 30.0
    jitter: Jitter = "full"
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    seed: int | None = None
    rng: random.Random | None = None
    recipes: Mapping[FailureScenario, RecoveryRecipe] = field(default_factory=dict)
    retry_on: Callable[[Exception], bool] | None = None
    on_retry: Callable[[RetryAttempt], object] | None = None
    stats: RetryStats | None = None
    sleep: Callable[[float], object] = time.sleep
    async_sleep: Callable[[float], Awaitable[object]] = _asyncio_sleep
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        int_at_least("max_attempts", self.max_attempts, 1)
        _check_backoff(self.base_delay, self.max_delay, self.jitter, "base_delay", "max_delay")
        non_negative_number("max_retry_after", self.max_retry_after, finite=False)
        if self.seed is not None:
            if not isinstance(self.seed, int) or isinstance(self.seed, bool):
                raise InvalidValueError(f"seed must be None or an int, got {self.seed!r}")
            if self.rng is not None:
                raise InvalidValueError("give seed or rng, not both")
            object.__setattr__(self, "rng", random.Random(self.seed))
        if self.rng is not None and not isinstance(self.rng, random.Random):
            raise InvalidValueError(f"rng must be a random.Random, got {self.rng!r}")
        object.__setattr__(self, "recipes", _recipe_map(self.recipes, "recipes"))
        callable_or_none("retry_on", self.retry_on)
        callable_or_none("on_retry", self.on_retry)
        required_callable("sleep", self.sleep)
        required_callable("async_sleep", self.async_sleep)
        required_callable("clock", self.clock)
        instance_or_none("stats", self.stats, RetryStats)

    def attempt_limit(self) -> int:
        """Return the calls allowed per run: ``max_attempts``, capped by :func:`testing`."""
        state = SETTINGS.testing
        return min(self.max_attempts, state.attempts) if state.enabled else self.max_attempts

    def backoff(self, attempt: int, *, previous: float | None = None) -> float:
        """Return the backoff delay before retry ``attempt`` (1-based) under this policy."""
        return backoff_delay(
            attempt,
            base=self.base_delay,
            cap=self.max_delay,
            jitter=self.jitter,
            rng=self.rng,
            previous=previous,
        )

    def delay_for(
        self,
        attempt: int,
        recovery: RecoveryResult | None = None,
        *,
        previous: float | None = None,
    ) -> float:
        """Return the wait before retrying after failed call ``attempt``, given ``recovery``.

        0 while :func:`testing` is on, on escalation, or when the recipe has
        no waiting step; the server's hint when the recovery carries one
        (:class:`RetryAfterTooLongError` if it exceeds ``max_retry_after``);
        otherwise this policy's backoff.
        """
        if SETTINGS.testing.enabled:
            return 0.0
        hint = None
        if recovery is not None:
            if recovery.outcome is RecoveryOutcome.ESCALATION_REQUIRED or WAITING_STEPS.isdisjoint(
                recovery.recovered_steps
            ):
                return 0.0
            hint = recovery.retry_after
            if hint is not None and hint > self.max_retry_after:
                raise RetryAfterTooLongError(hint, self.max_retry_after)
        return self._wait(attempt, hint, previous)

    def _wait(self, attempt: int, hint: float | None, previous: float | None) -> float:
        """Return the wait before retry ``attempt``: 0 when testing, else ``hint``, else backoff."""
        if SETTINGS.testing.enabled:
            return 0.0
        if hint is not None:
            return hint
        return self.backoff(attempt, previous=previous)

    def new_context(self) -> RecoveryContext:
        """Return a fresh :class:`RecoveryContext` using this policy's recipe overrides."""
        return RecoveryContext(recipes=self.recipes)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` retrying under this policy (:func:`retry_call`).

        Typed end to end: a type checker checks ``args`` and ``kwargs``
        against ``fn``'s signature.
        """
        return call_sync(fn, args, kwargs, self)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Async twin of :meth:`call` (:func:`aretry_call` under this policy)."""
        return await call_async(fn, args, kwargs, self)


def attempt_recovery(
    scenario: FailureScenario | str,
    ctx: RecoveryContext,
    *,
    failure: FailureInfo | None = None,
    policy: RetryPolicy | None = None,
) -> RecoveryResult:
    """Charge one recovery attempt for ``scenario`` to ``ctx`` and say what to do.

    ``failure`` (from :func:`inspect_exception`) supplies the server's wait
    hint and ``x-should-retry``; ``policy`` the backoff and
    ``max_retry_after`` (default :data:`DEFAULT_POLICY`). Escalates without
    charging the budget when the recipe allows no attempts, the server said
    not to retry, or its hint is longer than ``max_retry_after``; escalates
    with ``exhausted=True`` once the budget is used up. Thread-safe.
    """
    key = _scenario(scenario)
    if not isinstance(ctx, RecoveryContext):
        raise InvalidValueError(f"ctx must be a RecoveryContext, got {ctx!r}")
    if failure is not None and not isinstance(failure, FailureInfo):
        raise InvalidValueError(f"failure must be a FailureInfo or None, got {failure!r}")
    return ctx._recover(ctx.recipe_for(key), failure, policy or DEFAULT_POLICY)


async def aattempt_recovery(
    scenario: FailureScenario | str,
    ctx: RecoveryContext,
    *,
    failure: FailureInfo | None = None,
    policy: RetryPolicy | None = None,
) -> RecoveryResult:
    """Async twin of :func:`attempt_recovery` (it never blocks; same bookkeeping)."""
    return attempt_recovery(scenario, ctx, failure=failure, policy=policy)


@overload
def retry_call(
    fn: Callable[..., T], /, *args: object, policy: RetryPolicy | None, **kwargs: object
) -> T: ...


@overload
def retry_call(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...


def retry_call(fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
    """Call ``fn(*args, **kwargs)``, retrying failures as ``policy`` says.

    Returns ``fn``'s value. A non-retryable error (or one the recipe or the
    server refuses to retry) is re-raised unchanged at once; running out of
    attempts raises :class:`RetriesExhaustedError` from the last error.
    ``KeyboardInterrupt``, ``SystemExit`` and ``CancelledError`` are never
    retried. Without ``policy=`` a type checker checks ``fn``'s arguments;
    ``policy.call(fn, *args, **kwargs)`` does the same under a policy. (If
    ``fn`` itself takes ``policy=``, use ``policy.call`` or a lambda.)
    """
    return call_sync(fn, args, kwargs, _policy(kwargs.pop("policy", None)))


@overload
async def aretry_call(
    fn: Callable[..., Awaitable[T]], /, *args: object, policy: RetryPolicy | None, **kwargs: object
) -> T: ...


@overload
async def aretry_call(fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T: ...


async def aretry_call(fn: Callable[..., Awaitable[T]], /, *args: object, **kwargs: object) -> T:
    """Async twin of :func:`retry_call`: awaits ``fn`` and waits with ``policy.async_sleep``."""
    return await call_async(fn, args, kwargs, _policy(kwargs.pop("policy", None)))


def retrying(*, policy: RetryPolicy | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a sync or async function so each call runs under :func:`retry_call`.

    The wrapped function keeps its signature and its ``async``-ness.
    """
    chosen = _policy(policy)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> object:
                return await call_async(
                    cast(Callable[..., Awaitable[object]], fn), args, kwargs, chosen
                )

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return call_sync(fn, args, kwargs, chosen)

        return wrapper

    return decorate


def _policy(policy: object) -> RetryPolicy:
    """``policy`` checked, or :data:`DEFAULT_POLICY` for None."""
    if policy is None:
        return DEFAULT_POLICY
    if not isinstance(policy, RetryPolicy):
        raise InvalidValueError(f"policy must be a RetryPolicy or None, got {policy!r}")
    return policy


DEFAULT_POLICY: Final = RetryPolicy()
"""The policy :func:`retry_call` and :func:`attempt_recovery` use when given none."""
