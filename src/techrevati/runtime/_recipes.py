"""Recovery recipes: the steps, escalations and outcomes, and the built-in recipe of each scenario.

Private to :mod:`~techrevati.runtime.retry_policy`, which re-exports the
public names (the seed page says the recipe registry is there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from techrevati.runtime._classify import FailureScenario
from techrevati.runtime._validate import int_at_least
from techrevati.runtime.errors import InvalidValueError

__all__ = [
    "AUTOMATIC_STEPS",
    "DEFAULT_RECIPES",
    "WAITING_STEPS",
    "EscalationPolicy",
    "RecoveryOutcome",
    "RecoveryRecipe",
    "RecoveryRecord",
    "RecoveryResult",
    "RecoveryStep",
]


class RecoveryStep(StrEnum):
    """One thing to do before the next attempt."""

    RETRY_WITH_BACKOFF = "retry_with_backoff"
    """Wait an exponential, jittered delay (a server hint takes precedence), then retry."""
    WAIT_FOR_RETRY_AFTER = "wait_for_retry_after"
    """Wait the server's ``retry-after`` hint (backoff if it sent none), then retry."""
    SWITCH_PROVIDER = "switch_provider"
    """Retry on the next fallback model or provider, if the caller has one."""
    RETRY_TOOL = "retry_tool"
    """Run the tool call again at once."""
    REDUCE_CONTEXT = "reduce_context"
    """Shrink the prompt (summarise, drop old turns) before retrying; the caller's job."""
    RAISE_OUTPUT_LIMIT = "raise_output_limit"
    """Raise ``max_tokens`` (or ask the model to continue) before retrying; the caller's job."""
    REFRESH_CREDENTIALS = "refresh_credentials"
    """Reload or rotate the API key or token before retrying; the caller's job."""
    RESTORE_CHECKPOINT = "restore_checkpoint"
    """Reload the agent's last good state before retrying; the caller's job."""
    RETRY_WITH_FEEDBACK = "retry_with_feedback"
    """Call the model again with what was wrong with its answer (``run_turn(output=...)``)."""
    ESCALATE = "escalate"
    """Hand the failure to a human or the calling system."""


AUTOMATIC_STEPS: Final[frozenset[RecoveryStep]] = frozenset(
    {
        RecoveryStep.RETRY_WITH_BACKOFF,
        RecoveryStep.WAIT_FOR_RETRY_AFTER,
        RecoveryStep.SWITCH_PROVIDER,
        RecoveryStep.RETRY_TOOL,
    }
)
"""Steps a retry loop carries out itself; the others need the caller (partial recovery)."""


WAITING_STEPS: Final[frozenset[RecoveryStep]] = frozenset(
    {RecoveryStep.RETRY_WITH_BACKOFF, RecoveryStep.WAIT_FOR_RETRY_AFTER}
)
"""Steps that wait before the retry; without one, the retry happens at once."""


class EscalationPolicy(StrEnum):
    """What the caller should do once a recipe escalates."""

    ALERT_HUMAN = "alert_human"
    """A person must act (keys, billing, an outage)."""
    ABORT = "abort"
    """Stop the task: retrying cannot help."""
    LOG_AND_CONTINUE = "log_and_continue"
    """Record the failure and go on with the next item."""


class RecoveryOutcome(StrEnum):
    """The verdict of :func:`attempt_recovery`; members compare equal to their strings."""

    RECOVERED = "recovered"
    """Apply ``recovered_steps`` (all automatic), wait ``delay_seconds``, retry."""
    PARTIAL_RECOVERY = "partial_recovery"
    """Attempts remain, but ``remaining_steps`` need the caller before a retry can work."""
    ESCALATION_REQUIRED = "escalation_required"
    """Do not retry: follow the recipe's escalation policy; ``reason`` says why."""


@dataclass(frozen=True, slots=True)
class RecoveryRecipe:
    """How to recover from one scenario: the steps, and how many recovery attempts.

    ``max_attempts`` counts *retries* (recovery attempts) per
    :class:`RecoveryContext`, not calls: ``0`` escalates at once. ``steps``
    may be any sequence of :class:`RecoveryStep` (or their values);
    ``ESCALATE``, if present, must be last.
    """

    scenario: FailureScenario
    steps: tuple[RecoveryStep, ...]
    max_attempts: int
    escalation_policy: EscalationPolicy = EscalationPolicy.ABORT

    def __post_init__(self) -> None:
        object.__setattr__(self, "scenario", _scenario(self.scenario))
        raw: object = self.steps
        if not isinstance(raw, tuple | list):
            raise InvalidValueError(f"steps must be a sequence of RecoveryStep, got {raw!r}")
        try:
            steps = tuple(RecoveryStep(step) for step in raw)
        except ValueError:
            raise InvalidValueError(f"steps must hold RecoveryStep values, got {raw!r}") from None
        if not steps:
            raise InvalidValueError("steps must not be empty, got ()")
        if len(set(steps)) != len(steps):
            raise InvalidValueError(f"steps must not repeat, got {raw!r}")
        if RecoveryStep.ESCALATE in steps[:-1]:
            raise InvalidValueError(f"ESCALATE must be the last step, got {raw!r}")
        object.__setattr__(self, "steps", steps)
        attempts = self.max_attempts
        int_at_least("max_attempts", attempts, 0)
        try:
            policy = EscalationPolicy(self.escalation_policy)
        except ValueError:
            raise InvalidValueError(
                f"escalation_policy must be an EscalationPolicy, got {self.escalation_policy!r}"
            ) from None
        object.__setattr__(self, "escalation_policy", policy)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict."""
        return {
            "scenario": self.scenario.value,
            "steps": [step.value for step in self.steps],
            "max_attempts": self.max_attempts,
            "escalation_policy": self.escalation_policy.value,
        }


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    """What :func:`attempt_recovery` decided for one failure.

    ``outcome`` compares equal to ``"recovered"``, ``"partial_recovery"`` or
    ``"escalation_required"``. ``recovered_steps`` are the recipe's steps to
    apply before retrying (the automatic ones); ``remaining_steps`` are the
    ones left to the caller (partial recovery) or, on escalation, the recipe
    steps not taken. ``delay_seconds`` is the wait before the retry (0 when
    none applies), ``retry_after`` the server hint it honours, if any.
    ``exhausted`` is true when escalation came from a used-up budget.
    """

    outcome: RecoveryOutcome
    recovered_steps: tuple[RecoveryStep, ...]
    remaining_steps: tuple[RecoveryStep, ...]
    reason: str
    delay_seconds: float = 0.0
    _: KW_ONLY
    scenario: FailureScenario
    attempt: int = 0
    max_attempts: int = 0
    retry_after: float | None = None
    exhausted: bool = False
    escalation_policy: EscalationPolicy = EscalationPolicy.ABORT

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict."""
        return {
            "outcome": self.outcome.value,
            "scenario": self.scenario.value,
            "recovered_steps": [step.value for step in self.recovered_steps],
            "remaining_steps": [step.value for step in self.remaining_steps],
            "reason": self.reason,
            "delay_seconds": self.delay_seconds,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "retry_after": self.retry_after,
            "exhausted": self.exhausted,
            "escalation_policy": self.escalation_policy.value,
        }


@dataclass(frozen=True, slots=True)
class RecoveryRecord:
    """One entry of :attr:`RecoveryContext.history`; ``at`` is the context's clock."""

    scenario: FailureScenario
    outcome: RecoveryOutcome
    attempt: int
    delay_seconds: float
    reason: str
    at: float


def _recipe_map(
    recipes: Mapping[FailureScenario, RecoveryRecipe] | None, name: str
) -> Mapping[FailureScenario, RecoveryRecipe]:
    if recipes is None:
        return MappingProxyType({})
    if not isinstance(recipes, Mapping):
        raise InvalidValueError(f"{name} must be a mapping of scenario to recipe, got {recipes!r}")
    checked: dict[FailureScenario, RecoveryRecipe] = {}
    for key, recipe in recipes.items():
        scenario = _scenario(key)
        if not isinstance(recipe, RecoveryRecipe):
            raise InvalidValueError(f"{name}[{key!r}] must be a RecoveryRecipe, got {recipe!r}")
        if recipe.scenario is not scenario:
            raise InvalidValueError(
                f"{name}[{key!r}] is the recipe of {recipe.scenario.value!r}, "
                f"not {scenario.value!r}"
            )
        checked[scenario] = recipe
    return MappingProxyType(checked)


def _scenario(value: object) -> FailureScenario:
    if isinstance(value, FailureScenario):
        return value
    try:
        return FailureScenario(value)  # type: ignore[arg-type]  # checked right here
    except ValueError:
        names = ", ".join(member.value for member in FailureScenario)
        raise InvalidValueError(
            f"scenario must be a FailureScenario ({names}), got {value!r}"
        ) from None


def _recipe(
    scenario: FailureScenario,
    steps: tuple[RecoveryStep, ...],
    max_attempts: int,
    escalation_policy: EscalationPolicy,
) -> tuple[FailureScenario, RecoveryRecipe]:
    return scenario, RecoveryRecipe(scenario, steps, max_attempts, escalation_policy)


# Built last: they validate through the helpers above.
_Step = RecoveryStep


_Esc = EscalationPolicy


_Sc = FailureScenario


DEFAULT_RECIPES: Final[Mapping[FailureScenario, RecoveryRecipe]] = MappingProxyType(
    dict(
        [
            _recipe(
                _Sc.LLM_TIMEOUT, (_Step.RETRY_WITH_BACKOFF, _Step.SWITCH_PROVIDER), 3, _Esc.ABORT
            ),
            _recipe(_Sc.RATE_LIMIT, (_Step.WAIT_FOR_RETRY_AFTER,), 5, _Esc.ABORT),
            _recipe(
                _Sc.PROVIDER_FAILURE,
                (_Step.RETRY_WITH_BACKOFF, _Step.SWITCH_PROVIDER),
                3,
                _Esc.ALERT_HUMAN,
            ),
            _recipe(_Sc.CONTEXT_OVERFLOW, (_Step.REDUCE_CONTEXT,), 1, _Esc.ABORT),
            _recipe(_Sc.OUTPUT_TRUNCATED, (_Step.RAISE_OUTPUT_LIMIT,), 1, _Esc.ABORT),
            _recipe(_Sc.AUTH_FAILURE, (_Step.REFRESH_CREDENTIALS,), 0, _Esc.ALERT_HUMAN),
            _recipe(_Sc.BAD_REQUEST, (_Step.ESCALATE,), 0, _Esc.ABORT),
            _recipe(_Sc.CONTENT_POLICY, (_Step.ESCALATE,), 0, _Esc.LOG_AND_CONTINUE),
            _recipe(_Sc.QUOTA_EXHAUSTED, (_Step.ESCALATE,), 0, _Esc.ALERT_HUMAN),
            _recipe(_Sc.TOOL_EXECUTION_ERROR, (_Step.RETRY_TOOL,), 2, _Esc.LOG_AND_CONTINUE),
            _recipe(_Sc.DEPENDENCY_TIMEOUT, (_Step.RETRY_WITH_BACKOFF,), 3, _Esc.ABORT),
            _recipe(_Sc.MEMORY_CORRUPTION, (_Step.RESTORE_CHECKPOINT,), 1, _Esc.ALERT_HUMAN),
            _recipe(_Sc.OUTPUT_INVALID, (_Step.RETRY_WITH_FEEDBACK,), 2, _Esc.ALERT_HUMAN),
            _recipe(_Sc.LLM_ERROR, (_Step.RETRY_WITH_BACKOFF,), 1, _Esc.ABORT),
        ]
    )
)
"""The built-in recipe of every scenario (see docs/retry_policy.md for the table)."""


for _public in (RecoveryStep, EscalationPolicy, RecoveryOutcome, RecoveryRecipe, RecoveryResult):
    _public.__module__ = "techrevati.runtime.retry_policy"
RecoveryRecord.__module__ = "techrevati.runtime.retry_policy"
