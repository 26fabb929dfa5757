"""``RecoveryContext``: one task's recovery budget, and the recipe decision it charges.

Private to :mod:`~techrevati.runtime.retry_policy`, which re-exports the
public names.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from techrevati.runtime._classify import RETRYABLE_SCENARIOS, FailureInfo, FailureScenario
from techrevati.runtime._recipes import (
    AUTOMATIC_STEPS,
    WAITING_STEPS,
    RecoveryOutcome,
    RecoveryRecipe,
    RecoveryRecord,
    RecoveryResult,
    _recipe_map,
    _scenario,
)
from techrevati.runtime._retry_settings import SETTINGS
from techrevati.runtime._validate import int_at_least, optional_int_at_least, required_callable

if TYPE_CHECKING:
    from techrevati.runtime.retry_policy import RetryPolicy

__all__ = ["DEFAULT_HISTORY_SIZE", "RecoveryContext"]


DEFAULT_HISTORY_SIZE: Final = 100
"""Recovery records a :class:`RecoveryContext` keeps (oldest dropped first)."""


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
        self._max_total = optional_int_at_least("max_total_attempts", max_total_attempts, 0)
        int_at_least("history_size", history_size, 0)
        self._clock = required_callable("clock", clock)
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
        return recipe if recipe is not None else SETTINGS.recipes[key]

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
        """Decide on one failure by ``recipe``, charge the attempt, and record the decision."""
        refusal = _refusal(recipe, failure, policy)
        exhausted = False
        with self._lock:
            used = self._counts.get(recipe.scenario, 0)
            if refusal is None:
                refusal = self._used_up(recipe, used)
                exhausted = refusal is not None
            if refusal is not None:
                self._escalations += 1
                result = _escalation(recipe, used, refusal, exhausted=exhausted)
            else:
                result = self._grant(recipe, used + 1, failure, policy)
            self._history.append(
                RecoveryRecord(
                    recipe.scenario,
                    result.outcome,
                    result.attempt,
                    result.delay_seconds,
                    result.reason,
                    self._clock(),
                )
            )
        return result

    def _used_up(self, recipe: RecoveryRecipe, used: int) -> str | None:
        """Why no attempt is left (the recipe's or this context's), or None; under the lock."""
        if used >= recipe.max_attempts:
            return f"all {recipe.max_attempts} recovery attempt(s) for {recipe.scenario.value} used"
        if self._max_total is not None and self._total >= self._max_total:
            return f"all {self._max_total} recovery attempt(s) of this context used"
        return None

    def _grant(
        self,
        recipe: RecoveryRecipe,
        attempt: int,
        failure: FailureInfo | None,
        policy: RetryPolicy,
    ) -> RecoveryResult:
        """Charge recovery ``attempt`` of ``recipe`` and say what to do; under the lock."""
        scenario = recipe.scenario
        self._counts[scenario] = attempt
        self._total += 1
        waits = not WAITING_STEPS.isdisjoint(recipe.steps)
        accepted = failure.retry_after if waits and failure is not None else None
        delay = policy._wait(attempt, accepted, self._last_delay.get(scenario)) if waits else 0.0
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
        return RecoveryResult(
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


def _refusal(
    recipe: RecoveryRecipe, failure: FailureInfo | None, policy: RetryPolicy
) -> str | None:
    """Why ``recipe`` must escalate whatever the budget (no attempts, the server), or None."""
    if recipe.max_attempts == 0:
        return f"{recipe.scenario.value} is not retryable"
    if failure is None:
        return None
    if not failure.retryable and failure.scenario in RETRYABLE_SCENARIOS:
        return "the server said not to retry (x-should-retry: false)"
    hint = failure.retry_after
    if (
        hint is not None
        and hint > policy.max_retry_after
        and not WAITING_STEPS.isdisjoint(recipe.steps)
    ):
        return (
            f"the server asks to wait {hint:g}s, more than "
            f"max_retry_after={policy.max_retry_after:g}s"
        )
    return None


def _escalation(
    recipe: RecoveryRecipe, used: int, refusal: str, *, exhausted: bool
) -> RecoveryResult:
    """Return the verdict that ``recipe``'s failure escalates, and why."""
    return RecoveryResult(
        RecoveryOutcome.ESCALATION_REQUIRED,
        (),
        recipe.steps,
        f"{refusal}; escalate ({recipe.escalation_policy.value})",
        scenario=recipe.scenario,
        attempt=used,
        max_attempts=recipe.max_attempts,
        exhausted=exhausted,
        escalation_policy=recipe.escalation_policy,
    )


RecoveryContext.__module__ = "techrevati.runtime.retry_policy"
