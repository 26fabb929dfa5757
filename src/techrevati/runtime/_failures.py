"""What a failure is: its scenario, the dashboard class it maps to, and what was learned.

Private: the classifier (:mod:`~techrevati.runtime._classify`) fills these in,
and :mod:`~techrevati.runtime.retry_policy` re-exports the public names.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Literal

from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import AgentFailureClass

__all__ = [
    "FAILURE_CLASS_BY_SCENARIO",
    "RETRYABLE_SCENARIOS",
    "FailureInfo",
    "FailureScenario",
    "Origin",
    "failure_class_for",
]

Origin = Literal["model", "tool"]
"""Where the failure happened: a model call (default) or a tool call."""


class FailureScenario(StrEnum):
    """Why a call failed, in terms of what to do about it."""

    LLM_TIMEOUT = "llm_timeout"
    """The model did not answer in time (timeouts, 408, 504)."""
    RATE_LIMIT = "rate_limit"
    """The provider asks to slow down (429, throttling); wait and retry."""
    CONTEXT_OVERFLOW = "context_overflow"
    """The prompt does not fit the model's context window (or 413)."""
    OUTPUT_TRUNCATED = "output_truncated"
    """The answer hit the output limit (``max_tokens``): raise it, or ask to continue."""
    PROVIDER_FAILURE = "provider_failure"
    """The provider or the network failed (5xx, overloaded, connection errors)."""
    AUTH_FAILURE = "auth_failure"
    """Credentials are missing, wrong or lack permission (401, 403)."""
    BAD_REQUEST = "bad_request"
    """The request is wrong (400, 404, 422) and not a context or policy problem."""
    CONTENT_POLICY = "content_policy"
    """The provider refused the content (content filter, policy violation)."""
    QUOTA_EXHAUSTED = "quota_exhausted"
    """Credit or quota is used up (insufficient_quota, ServiceQuotaExceeded, 402)."""
    TOOL_EXECUTION_ERROR = "tool_execution_error"
    """A tool call failed (``origin="tool"`` with no more specific signal)."""
    DEPENDENCY_TIMEOUT = "dependency_timeout"
    """A tool's dependency timed out (a timeout with ``origin="tool"``)."""
    MEMORY_CORRUPTION = "memory_corruption"
    """The agent's state can no longer be trusted (MemoryError, unreadable checkpoint)."""
    OUTPUT_INVALID = "output_invalid"
    """The answer did not fit the turn's ``OutputSpec`` (``OutputValidationError``)."""
    LLM_ERROR = "llm_error"
    """A model-call failure nothing more specific fits (the default)."""


FailureScenario.__module__ = "techrevati.runtime.retry_policy"

FAILURE_CLASS_BY_SCENARIO: Final[Mapping[FailureScenario, AgentFailureClass]] = MappingProxyType(
    {
        FailureScenario.LLM_TIMEOUT: AgentFailureClass.LLM_TIMEOUT,
        FailureScenario.RATE_LIMIT: AgentFailureClass.RATE_LIMIT,
        FailureScenario.CONTEXT_OVERFLOW: AgentFailureClass.CONTEXT_OVERFLOW,
        FailureScenario.OUTPUT_TRUNCATED: AgentFailureClass.OUTPUT_TRUNCATED,
        FailureScenario.PROVIDER_FAILURE: AgentFailureClass.PROVIDER_FAILURE,
        FailureScenario.AUTH_FAILURE: AgentFailureClass.AUTH_FAILURE,
        FailureScenario.BAD_REQUEST: AgentFailureClass.BAD_REQUEST,
        FailureScenario.CONTENT_POLICY: AgentFailureClass.CONTENT_POLICY,
        FailureScenario.QUOTA_EXHAUSTED: AgentFailureClass.QUOTA_EXHAUSTED,
        FailureScenario.TOOL_EXECUTION_ERROR: AgentFailureClass.TOOL_ERROR,
        FailureScenario.DEPENDENCY_TIMEOUT: AgentFailureClass.DEPENDENCY_FAILED,
        FailureScenario.MEMORY_CORRUPTION: AgentFailureClass.MEMORY_CORRUPTION,
        FailureScenario.OUTPUT_INVALID: AgentFailureClass.VALIDATION_ERROR,
        FailureScenario.LLM_ERROR: AgentFailureClass.UNKNOWN,
    }
)
"""The one table from scenario to the dashboard-level :class:`AgentFailureClass`."""

RETRYABLE_SCENARIOS: Final[frozenset[FailureScenario]] = frozenset(
    {
        FailureScenario.LLM_TIMEOUT,
        FailureScenario.RATE_LIMIT,
        FailureScenario.PROVIDER_FAILURE,
        FailureScenario.TOOL_EXECUTION_ERROR,
        FailureScenario.DEPENDENCY_TIMEOUT,
        FailureScenario.LLM_ERROR,
    }
)
"""Scenarios where sending the same request again may succeed (before ``x-should-retry``)."""


@dataclass(frozen=True, slots=True)
class FailureInfo:
    """What :func:`inspect_exception` learned about one failure.

    ``retryable`` says whether the *same* request may succeed later (the
    scenario's rule, overridden by an ``x-should-retry`` header).
    ``retry_after`` is the server's wait hint in seconds, if it sent one
    (a zero hint is None: back off as usual, as the SDKs do).
    ``status_code`` and ``provider_code`` (e.g. ``"insufficient_quota"``,
    ``"ThrottlingException"``) come from the exception that decided the
    scenario, and ``exception_type`` is that exception's class name.
    """

    scenario: FailureScenario
    retryable: bool
    retry_after: float | None = None
    status_code: int | None = None
    provider_code: str | None = None
    exception_type: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.scenario, FailureScenario):
            raise InvalidValueError(f"scenario must be a FailureScenario, got {self.scenario!r}")
        ra = self.retry_after
        if ra is not None and (not isinstance(ra, int | float) or not math.isfinite(ra) or ra < 0):
            raise InvalidValueError(f"retry_after must be a finite float >= 0, got {ra!r}")

    @property
    def failure_class(self) -> AgentFailureClass:
        """The :class:`AgentFailureClass` of :attr:`scenario`."""
        return FAILURE_CLASS_BY_SCENARIO[self.scenario]


FailureInfo.__module__ = "techrevati.runtime.retry_policy"


def failure_class_for(scenario: FailureScenario) -> AgentFailureClass:
    """Return the :class:`AgentFailureClass` a dashboard groups ``scenario`` under."""
    try:
        return FAILURE_CLASS_BY_SCENARIO[scenario]
    except (KeyError, TypeError):
        raise InvalidValueError(f"scenario must be a FailureScenario, got {scenario!r}") from None
