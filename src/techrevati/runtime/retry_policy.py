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
"""

from __future__ import annotations

import functools
import inspect
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, NoReturn, ParamSpec, TypeVar, cast, overload

from techrevati.runtime._backoff import (
    DEFAULT_MAX_RETRY_AFTER,
    Jitter,
    _check_backoff,
    _check_limit,
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
from techrevati.runtime._validate import int_at_least
from techrevati.runtime.errors import (
    InvalidValueError,
    RetriesExhaustedError,
    RetryAfterTooLongError,
    TechrevatiError,
    TransientRuntimeError,
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


DEFAULT_HISTORY_SIZE: Final = 100
"""Recovery records a :class:`RecoveryContext` keeps (oldest dropped first)."""

_LOG: Final = logging.getLogger(__name__)


async def _asyncio_sleep(seconds: float) -> None:
    """``asyncio.sleep``, imported on first use: the module itself does not need asyncio."""
    import asyncio  # noqa: PLC0415

    await asyncio.sleep(seconds)


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


class RecoveryContext:
    """Recovery attempts of one logical task: counts per scenario, a total, a history.

    Reuse one per task; budgets are per context, not global. ``recipes``
    overrides recipes for this context only (else :func:`set_recipe`'s
    global ones, else :data:`DEFAULT_RECIPES`); ``max_total_attempts`` caps
    recoveries across all scenarios. Safe to share between threads: claiming
    an attempt is atomic, so N threads never get more than the budget.
    """

    __slots__ = (
        "_clock",
        "_counts",
        "_escalations",
        "_history",
        "_last_delay",
        "_lock",
        "_max_total",
        "_recipes",
        "_total",
    )

    def __init__(
        self,
        *,
        recipes: Mapping[FailureScenario, RecoveryRecipe] | None = None,
        max_total_attempts: int | None = None,
        history_size: int = DEFAULT_HISTORY_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._recipes = _recipe_map(recipes, "recipes")
        if max_total_attempts is not None and (
            not isinstance(max_total_attempts, int)
            or isinstance(max_total_attempts, bool)
            or max_total_attempts < 0
        ):
            raise InvalidValueError(
                f"max_total_attempts must be None or an int >= 0, got {max_total_attempts!r}"
            )
        int_at_least("history_size", history_size, 0)
        if not callable(clock):
            raise InvalidValueError(f"clock must be callable, got {clock!r}")
        self._max_total = max_total_attempts
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[FailureScenario, int] = {}
        self._last_delay: dict[FailureScenario, float] = {}
        self._history: deque[RecoveryRecord] = deque(maxlen=history_size)
        self._total = 0
        self._escalations = 0

    @property
    def total_attempts(self) -> int:
        """Recovery attempts granted across all scenarios."""
        return self._total

    @property
    def escalations(self) -> int:
        """How many times :func:`attempt_recovery` answered ``escalation_required``."""
        return self._escalations

    @property
    def max_total_attempts(self) -> int | None:
        """The cap on recoveries across scenarios (``None``: only the recipes' caps)."""
        return self._max_total

    @property
    def history(self) -> tuple[RecoveryRecord, ...]:
        """The most recent recovery decisions, oldest first (bounded)."""
        with self._lock:
            return tuple(self._history)

    def attempts(self, scenario: FailureScenario | str) -> int:
        """Recovery attempts granted so far for ``scenario``."""
        return self._counts.get(_scenario(scenario), 0)

    def recipe_for(self, scenario: FailureScenario | str) -> RecoveryRecipe:
        """Return the recipe this context uses for ``scenario``."""
        key = _scenario(scenario)
        recipe = self._recipes.get(key)
        return recipe if recipe is not None else _registry[key]

    def reset(self) -> None:
        """Forget all attempts, escalations and history (recipes stay)."""
        with self._lock:
            self._counts.clear()
            self._last_delay.clear()
            self._history.clear()
            self._total = 0
            self._escalations = 0

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable summary of the counts."""
        with self._lock:
            return {
                "attempts": {scenario.value: n for scenario, n in self._counts.items()},
                "total_attempts": self._total,
                "escalations": self._escalations,
            }

    def _claim_total(self, scenario: FailureScenario) -> bool:
        """Count one retry granted elsewhere (a :class:`RetryRun` using this as its cap).

        Returns False, counting an escalation, when ``max_total_attempts`` is used up.
        """
        with self._lock:
            if self._max_total is not None and self._total >= self._max_total:
                self._escalations += 1
                return False
            self._total += 1
            self._counts[scenario] = self._counts.get(scenario, 0) + 1
            return True

    def _recover(
        self, recipe: RecoveryRecipe, failure: FailureInfo | None, policy: RetryPolicy
    ) -> RecoveryResult:
        scenario = recipe.scenario
        hint = failure.retry_after if failure is not None else None
        waits = not WAITING_STEPS.isdisjoint(recipe.steps)
        refusal: str | None = None
        if recipe.max_attempts == 0:
            refusal = f"{scenario.value} is not retryable"
        elif (
            failure is not None
            and not failure.retryable
            and failure.scenario in RETRYABLE_SCENARIOS
        ):
            refusal = "the server said not to retry (x-should-retry: false)"
        elif waits and hint is not None and hint > policy.max_retry_after:
            refusal = (
                f"the server asks to wait {hint:g}s, more than "
                f"max_retry_after={policy.max_retry_after:g}s"
            )
        with self._lock:
            used = self._counts.get(scenario, 0)
            exhausted = False
            if refusal is None and used >= recipe.max_attempts:
                exhausted = True
                refusal = f"all {recipe.max_attempts} recovery attempt(s) for {scenario.value} used"
            elif refusal is None and self._max_total is not None and self._total >= self._max_total:
                exhausted = True
                refusal = f"all {self._max_total} recovery attempt(s) of this context used"
            if refusal is not None:
                self._escalations += 1
                reason = f"{refusal}; escalate ({recipe.escalation_policy.value})"
                result = RecoveryResult(
                    RecoveryOutcome.ESCALATION_REQUIRED,
                    (),
                    recipe.steps,
                    reason,
                    scenario=scenario,
                    attempt=used,
                    max_attempts=recipe.max_attempts,
                    exhausted=exhausted,
                    escalation_policy=recipe.escalation_policy,
                )
            else:
                attempt = used + 1
                self._counts[scenario] = attempt
                self._total += 1
                accepted = hint if waits else None
                if not waits or _testing.enabled:
                    delay = 0.0
                elif hint is not None:
                    delay = hint
                else:
                    delay = policy.backoff(attempt, previous=self._last_delay.get(scenario))
                self._last_delay[scenario] = delay
                recovered = tuple(s for s in recipe.steps if s in AUTOMATIC_STEPS)
                remaining = tuple(s for s in recipe.steps if s not in AUTOMATIC_STEPS)
                head = f"{scenario.value}: recovery attempt {attempt} of {recipe.max_attempts}"
                if remaining:
                    outcome = RecoveryOutcome.PARTIAL_RECOVERY
                    todo = ", ".join(step.value for step in remaining)
                    reason = f"{head}; the caller must {todo} before retrying"
                else:
                    outcome = RecoveryOutcome.RECOVERED
                    todo = ", ".join(step.value for step in recovered)
                    source = " (server hint)" if accepted is not None else ""
                    reason = f"{head}; {todo}; wait {delay:.3f}s{source}"
                result = RecoveryResult(
                    outcome,
                    recovered,
                    remaining,
                    reason,
                    delay,
                    scenario=scenario,
                    attempt=attempt,
                    max_attempts=recipe.max_attempts,
                    retry_after=accepted,
                    escalation_policy=recipe.escalation_policy,
                )
            self._history.append(
                RecoveryRecord(
                    scenario,
                    result.outcome,
                    result.attempt,
                    result.delay_seconds,
                    reason,
                    self._clock(),
                )
            )
        return result


class RetryStats:
    """Counters of :func:`retry_call` runs under one policy; safe to share between threads.

    ``calls`` runs started, ``successes``, ``failures`` (failed attempts),
    ``retries`` (waits scheduled), ``exhausted`` (:class:`RetriesExhaustedError`
    raised) and ``gave_up`` (an error re-raised unchanged), plus failures per
    scenario.
    """

    __slots__ = (
        "_by_scenario",
        "_calls",
        "_exhausted",
        "_failures",
        "_gave_up",
        "_lock",
        "_retries",
        "_successes",
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls = 0
        self._successes = 0
        self._failures = 0
        self._retries = 0
        self._exhausted = 0
        self._gave_up = 0
        self._by_scenario: dict[FailureScenario, int] = {}

    @property
    def calls(self) -> int:
        """Runs started."""
        return self._calls

    @property
    def successes(self) -> int:
        """Runs that returned a value."""
        return self._successes

    @property
    def failures(self) -> int:
        """Attempts that raised."""
        return self._failures

    @property
    def retries(self) -> int:
        """Retries scheduled (one per wait)."""
        return self._retries

    @property
    def exhausted(self) -> int:
        """Runs that ended in :class:`RetriesExhaustedError`."""
        return self._exhausted

    @property
    def gave_up(self) -> int:
        """Runs that re-raised an error unchanged (not retryable, or refused)."""
        return self._gave_up

    def by_scenario(self) -> dict[FailureScenario, int]:
        """Failed attempts per scenario."""
        with self._lock:
            return dict(self._by_scenario)

    def snapshot(self) -> dict[str, object]:
        """Return a JSON-serialisable copy of every counter."""
        with self._lock:
            return {
                "calls": self._calls,
                "successes": self._successes,
                "failures": self._failures,
                "retries": self._retries,
                "exhausted": self._exhausted,
                "gave_up": self._gave_up,
                "by_scenario": {s.value: n for s, n in self._by_scenario.items()},
            }

    def _started(self) -> None:
        with self._lock:
            self._calls += 1

    def _succeeded(self) -> None:
        with self._lock:
            self._successes += 1

    def _failed(self, scenario: FailureScenario) -> None:
        with self._lock:
            self._failures += 1
            self._by_scenario[scenario] = self._by_scenario.get(scenario, 0) + 1

    def _retried(self) -> None:
        with self._lock:
            self._retries += 1

    def _ended(self, *, exhausted: bool) -> None:
        with self._lock:
            if exhausted:
                self._exhausted += 1
            else:
                self._gave_up += 1


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
        n = self.max_attempts
        int_at_least("max_attempts", n, 1)
        _check_backoff(self.base_delay, self.max_delay, self.jitter, "base_delay", "max_delay")
        _check_limit(self.max_retry_after, "max_retry_after")
        if self.seed is not None:
            if not isinstance(self.seed, int) or isinstance(self.seed, bool):
                raise InvalidValueError(f"seed must be None or an int, got {self.seed!r}")
            if self.rng is not None:
                raise InvalidValueError("give seed or rng, not both")
            object.__setattr__(self, "rng", random.Random(self.seed))
        if self.rng is not None and not isinstance(self.rng, random.Random):
            raise InvalidValueError(f"rng must be a random.Random, got {self.rng!r}")
        object.__setattr__(self, "recipes", _recipe_map(self.recipes, "recipes"))
        for name in ("retry_on", "on_retry"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise InvalidValueError(f"{name} must be callable or None, got {value!r}")
        for name in ("sleep", "async_sleep", "clock"):
            value = getattr(self, name)
            if not callable(value):
                raise InvalidValueError(f"{name} must be callable, got {value!r}")
        if self.stats is not None and not isinstance(self.stats, RetryStats):
            raise InvalidValueError(f"stats must be a RetryStats or None, got {self.stats!r}")

    def attempt_limit(self) -> int:
        """Return the calls allowed per run: ``max_attempts``, capped by :func:`testing`."""
        state = _testing
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
        if _testing.enabled:
            return 0.0
        if recovery is not None:
            if recovery.outcome is RecoveryOutcome.ESCALATION_REQUIRED or WAITING_STEPS.isdisjoint(
                recovery.recovered_steps
            ):
                return 0.0
            if recovery.retry_after is not None:
                if recovery.retry_after > self.max_retry_after:
                    raise RetryAfterTooLongError(recovery.retry_after, self.max_retry_after)
                return recovery.retry_after
        return self.backoff(attempt, previous=previous)

    def new_context(self) -> RecoveryContext:
        """Return a fresh :class:`RecoveryContext` using this policy's recipe overrides."""
        return RecoveryContext(recipes=self.recipes)

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` retrying under this policy (:func:`retry_call`).

        Typed end to end: a type checker checks ``args`` and ``kwargs``
        against ``fn``'s signature.
        """
        return _retry_sync(fn, args, kwargs, self)

    async def acall(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Async twin of :meth:`call` (:func:`aretry_call` under this policy)."""
        return await _retry_async(fn, args, kwargs, self)


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
        if _testing.enabled:
            delay = 0.0
        elif hint is not None:
            delay = hint
        else:
            delay = policy.backoff(self.attempt, previous=self._previous)
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


def recipe_for(
    scenario: FailureScenario | str, ctx: RecoveryContext | None = None
) -> RecoveryRecipe:
    """Return the recipe for ``scenario``: ``ctx``'s override, else the global one."""
    if ctx is not None:
        return ctx.recipe_for(scenario)
    return _registry[_scenario(scenario)]


def set_recipe(recipe: RecoveryRecipe) -> None:
    """Replace the global recipe of ``recipe.scenario`` (thread-safe; all contexts see it)."""
    global _registry
    if not isinstance(recipe, RecoveryRecipe):
        raise InvalidValueError(f"recipe must be a RecoveryRecipe, got {recipe!r}")
    with _registry_lock:
        updated = dict(_registry)
        updated[recipe.scenario] = recipe
        _registry = MappingProxyType(updated)


def reset_recipes() -> None:
    """Restore :data:`DEFAULT_RECIPES` as the global recipes (thread-safe)."""
    global _registry
    with _registry_lock:
        _registry = DEFAULT_RECIPES


def set_testing(enabled: bool, *, attempts: int = 1) -> None:
    """Turn testing mode on or off for the whole process (thread-safe).

    While on, waits are zero (nothing sleeps) and every run makes at most
    ``attempts`` calls. Prefer the :func:`testing` context manager.
    """
    global _testing
    if not isinstance(enabled, bool):
        raise InvalidValueError(f"enabled must be a bool, got {enabled!r}")
    int_at_least("attempts", attempts, 1)
    with _testing_lock:
        _testing = _TestingState(enabled, attempts)


@contextmanager
def testing(*, attempts: int = 1) -> Iterator[None]:  # noqa: PT028 (not a test)
    """Testing mode inside a ``with`` block, restoring the previous state after it."""
    global _testing
    previous = _testing
    set_testing(True, attempts=attempts)
    try:
        yield
    finally:
        with _testing_lock:
            _testing = previous


testing.__test__ = False  # type: ignore[attr-defined]  # pytest must not collect it


def is_testing() -> bool:
    """Whether testing mode is on."""
    return _testing.enabled


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
    policy = cast("RetryPolicy | None", kwargs.pop("policy", None))  # checked by _policy
    return _retry_sync(fn, args, kwargs, _policy(policy))


@overload
async def aretry_call(
    fn: Callable[..., Awaitable[T]], /, *args: object, policy: RetryPolicy | None, **kwargs: object
) -> T: ...


@overload
async def aretry_call(fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T: ...


async def aretry_call(fn: Callable[..., Awaitable[T]], /, *args: object, **kwargs: object) -> T:
    """Async twin of :func:`retry_call`: awaits ``fn`` and waits with ``policy.async_sleep``."""
    policy = cast("RetryPolicy | None", kwargs.pop("policy", None))  # checked by _policy
    return await _retry_async(fn, args, kwargs, _policy(policy))


def retrying(*, policy: RetryPolicy | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a sync or async function so each call runs under :func:`retry_call`.

    The wrapped function keeps its signature and its ``async``-ness.
    """
    chosen = _policy(policy)

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> object:
                return await _retry_async(
                    cast(Callable[..., Awaitable[object]], fn), args, kwargs, chosen
                )

            return cast(Callable[P, R], async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            return _retry_sync(fn, args, kwargs, chosen)

        return wrapper

    return decorate


def _policy(policy: RetryPolicy | None) -> RetryPolicy:
    if policy is None:
        return DEFAULT_POLICY
    if not isinstance(policy, RetryPolicy):
        raise InvalidValueError(f"policy must be a RetryPolicy or None, got {policy!r}")
    return policy


def _retry_sync(
    fn: Callable[..., T],
    args: tuple[object, ...],
    kwargs: Mapping[str, object],
    policy: RetryPolicy,
) -> T:
    stats = policy.stats
    if stats is not None:
        stats._started()
    run: RetryRun | None = None  # built on the first failure: success costs nothing
    while True:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            if run is None:
                run = RetryRun(policy)
            retry = run.failed(exc)
            if retry is None:
                raise
            if retry.delay_seconds > 0:
                policy.sleep(retry.delay_seconds)
            continue
        if stats is not None:
            stats._succeeded()
        return result


async def _retry_async(
    fn: Callable[..., Awaitable[T]],
    args: tuple[object, ...],
    kwargs: Mapping[str, object],
    policy: RetryPolicy,
) -> T:
    stats = policy.stats
    if stats is not None:
        stats._started()
    run: RetryRun | None = None
    while True:
        try:
            result = await fn(*args, **kwargs)
        except Exception as exc:
            if run is None:
                run = RetryRun(policy)
            retry = run.failed(exc)
            if retry is None:
                raise
            if retry.delay_seconds > 0:
                await policy.async_sleep(retry.delay_seconds)
            continue
        if stats is not None:
            stats._succeeded()
        return result


DEFAULT_POLICY: Final = RetryPolicy()
"""The policy :func:`retry_call` and :func:`attempt_recovery` use when given none."""


@dataclass(frozen=True, slots=True)
class _TestingState:
    enabled: bool = False
    attempts: int = 1


_registry: Mapping[FailureScenario, RecoveryRecipe] = DEFAULT_RECIPES
_registry_lock: Final = threading.Lock()
_testing: _TestingState = _TestingState()
_testing_lock: Final = threading.Lock()
