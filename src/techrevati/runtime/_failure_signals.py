"""What each failure signal means: codes, class names, HTTP statuses and message phrases.

Private to the classifier (:mod:`~techrevati.runtime._classify`): tables only,
and the phrase patterns, which compile on first use so that importing stays
cheap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from techrevati.runtime._failures import FailureScenario

_S = FailureScenario

# Error codes and types the SDKs put in .code, .type, .error_code, the body,
# botocore's Error.Code (case-insensitive) and google's status strings.
_CODES: Final[Mapping[str, FailureScenario]] = MappingProxyType(
    {
        # quota / billing
        "insufficient_quota": _S.QUOTA_EXHAUSTED,
        "billing_error": _S.QUOTA_EXHAUSTED,
        "billing_hard_limit_reached": _S.QUOTA_EXHAUSTED,
        "servicequotaexceededexception": _S.QUOTA_EXHAUSTED,
        # anthropic's error.details.error_code on a 429 (402) that is spend, not rate
        "enforced_spend_limit_reached": _S.QUOTA_EXHAUSTED,
        "contract_spend_limit_reached": _S.QUOTA_EXHAUSTED,
        "linked_organization_spend_limit_reached": _S.QUOTA_EXHAUSTED,
        # context window
        "context_length_exceeded": _S.CONTEXT_OVERFLOW,
        "model_context_window_exceeded": _S.CONTEXT_OVERFLOW,
        "request_too_large": _S.CONTEXT_OVERFLOW,
        # content policy
        "content_policy_violation": _S.CONTENT_POLICY,
        "content_filter": _S.CONTENT_POLICY,
        "responsibleaipolicyviolation": _S.CONTENT_POLICY,
        # agent memory (anthropic's memory tool)
        "memory_precondition_failed_error": _S.MEMORY_CORRUPTION,
        "memory_path_conflict_error": _S.MEMORY_CORRUPTION,
        # auth
        "authentication_error": _S.AUTH_FAILURE,
        "permission_error": _S.AUTH_FAILURE,
        "invalid_api_key": _S.AUTH_FAILURE,
        "unauthenticated": _S.AUTH_FAILURE,
        "permission_denied": _S.AUTH_FAILURE,
        "accessdeniedexception": _S.AUTH_FAILURE,
        "unrecognizedclientexception": _S.AUTH_FAILURE,
        "expiredtokenexception": _S.AUTH_FAILURE,
        "invalidsignatureexception": _S.AUTH_FAILURE,
        "missingauthenticationtokenexception": _S.AUTH_FAILURE,
        "api_key_invalid": _S.AUTH_FAILURE,  # google's ErrorInfo reason on a 400
        # rate limits
        "rate_limit_exceeded": _S.RATE_LIMIT,
        "rate_limit_error": _S.RATE_LIMIT,
        "resource_exhausted": _S.RATE_LIMIT,
        "too_many_requests": _S.RATE_LIMIT,
        "throttlingexception": _S.RATE_LIMIT,
        "throttling": _S.RATE_LIMIT,
        "toomanyrequestsexception": _S.RATE_LIMIT,
        "requestlimitexceeded": _S.RATE_LIMIT,
        "provisionedthroughputexceededexception": _S.RATE_LIMIT,
        "modelnotreadyexception": _S.RATE_LIMIT,
        "slowdown": _S.RATE_LIMIT,
        # timeouts
        "timeout_error": _S.LLM_TIMEOUT,
        "deadline_exceeded": _S.LLM_TIMEOUT,
        "modeltimeoutexception": _S.LLM_TIMEOUT,
        "requesttimeout": _S.LLM_TIMEOUT,
        "requesttimeoutexception": _S.LLM_TIMEOUT,
        # provider side
        "overloaded_error": _S.PROVIDER_FAILURE,
        "api_error": _S.PROVIDER_FAILURE,
        "server_error": _S.PROVIDER_FAILURE,
        "conflict_error": _S.PROVIDER_FAILURE,
        "unavailable": _S.PROVIDER_FAILURE,
        "internal": _S.PROVIDER_FAILURE,
        "aborted": _S.PROVIDER_FAILURE,
        "internalserverexception": _S.PROVIDER_FAILURE,
        "internalfailure": _S.PROVIDER_FAILURE,
        "serviceunavailableexception": _S.PROVIDER_FAILURE,
        "serviceunavailable": _S.PROVIDER_FAILURE,
        "modelerrorexception": _S.PROVIDER_FAILURE,
        "modelstreamerrorexception": _S.PROVIDER_FAILURE,
        "priorrequestnotcomplete": _S.PROVIDER_FAILURE,
        # generic bad request (the message may still say context or policy)
        "invalid_request_error": _S.BAD_REQUEST,
        "not_found_error": _S.BAD_REQUEST,
        "model_not_found": _S.BAD_REQUEST,
        "invalid_argument": _S.BAD_REQUEST,
        "failed_precondition": _S.BAD_REQUEST,
        "not_found": _S.BAD_REQUEST,
        "validationexception": _S.BAD_REQUEST,
        "resourcenotfoundexception": _S.BAD_REQUEST,
    }
)

# When several codes of one error disagree, the most specific wins.
_RANK: Final[Mapping[FailureScenario, int]] = MappingProxyType(
    {
        _S.QUOTA_EXHAUSTED: 0,
        _S.CONTEXT_OVERFLOW: 1,
        _S.OUTPUT_TRUNCATED: 2,
        _S.CONTENT_POLICY: 3,
        _S.MEMORY_CORRUPTION: 4,
        _S.AUTH_FAILURE: 5,
        _S.RATE_LIMIT: 6,
        _S.LLM_TIMEOUT: 7,
        _S.PROVIDER_FAILURE: 8,
        _S.BAD_REQUEST: 9,
    }
)

# Class names that say more than the status an error may carry (checked before it).
_STRONG_NAMES: Final[Mapping[str, FailureScenario]] = MappingProxyType(
    {
        "ContextWindowExceededError": _S.CONTEXT_OVERFLOW,
        "LengthFinishReasonError": _S.OUTPUT_TRUNCATED,  # openai's parse() hit max_tokens
        "ContentPolicyViolationError": _S.CONTENT_POLICY,
        "ContentFilterFinishReasonError": _S.CONTENT_POLICY,
        "BudgetExceededError": _S.QUOTA_EXHAUSTED,
        "ServiceQuotaExceededException": _S.QUOTA_EXHAUSTED,
        # An answer that did not fit its OutputSpec (techrevati.runtime.outputs).
        "OutputValidationError": _S.OUTPUT_INVALID,
        "OutputEscalationError": _S.OUTPUT_INVALID,
    }
)

# Class names used when there is no status (checked after it), first along the MRO.
_NAMES: Final[Mapping[str, FailureScenario]] = MappingProxyType(
    {
        # timeouts (builtin TimeoutError is asyncio.TimeoutError and socket.timeout)
        "TimeoutError": _S.LLM_TIMEOUT,
        "APITimeoutError": _S.LLM_TIMEOUT,
        "TimeoutException": _S.LLM_TIMEOUT,
        "Timeout": _S.LLM_TIMEOUT,
        "ReadTimeout": _S.LLM_TIMEOUT,
        "ConnectTimeout": _S.LLM_TIMEOUT,
        "WriteTimeout": _S.LLM_TIMEOUT,
        "PoolTimeout": _S.LLM_TIMEOUT,
        "ReadTimeoutError": _S.LLM_TIMEOUT,
        "ConnectTimeoutError": _S.LLM_TIMEOUT,
        "DeadlineExceeded": _S.LLM_TIMEOUT,
        "RequestTimeoutError": _S.LLM_TIMEOUT,
        # the network and the provider
        "ConnectionError": _S.PROVIDER_FAILURE,
        "APIConnectionError": _S.PROVIDER_FAILURE,
        "ConnectError": _S.PROVIDER_FAILURE,
        "RemoteProtocolError": _S.PROVIDER_FAILURE,
        "NetworkError": _S.PROVIDER_FAILURE,
        "ChunkedEncodingError": _S.PROVIDER_FAILURE,
        "EndpointConnectionError": _S.PROVIDER_FAILURE,
        "ConnectionClosedError": _S.PROVIDER_FAILURE,
        "InternalServerError": _S.PROVIDER_FAILURE,
        "ServiceUnavailable": _S.PROVIDER_FAILURE,
        "ServiceUnavailableError": _S.PROVIDER_FAILURE,
        "OverloadedError": _S.PROVIDER_FAILURE,
        "RetryableError": _S.PROVIDER_FAILURE,
        # rate limits and quota
        "RateLimitError": _S.RATE_LIMIT,
        "TooManyRequests": _S.RATE_LIMIT,
        "ResourceExhausted": _S.RATE_LIMIT,
        "ThrottlingException": _S.RATE_LIMIT,
        # auth
        "AuthenticationError": _S.AUTH_FAILURE,
        "PermissionDeniedError": _S.AUTH_FAILURE,
        "Unauthenticated": _S.AUTH_FAILURE,
        "Unauthorized": _S.AUTH_FAILURE,
        "Forbidden": _S.AUTH_FAILURE,
        "CredentialsError": _S.AUTH_FAILURE,
        "NoCredentialsError": _S.AUTH_FAILURE,
        "DefaultCredentialsError": _S.AUTH_FAILURE,
        # bad requests
        "BadRequestError": _S.BAD_REQUEST,
        "BadRequest": _S.BAD_REQUEST,
        "InvalidArgument": _S.BAD_REQUEST,
        "NotFoundError": _S.BAD_REQUEST,
        "UnprocessableEntityError": _S.BAD_REQUEST,
        # tools and agent state
        "ToolException": _S.TOOL_EXECUTION_ERROR,
        "ToolError": _S.TOOL_EXECUTION_ERROR,
        "ToolExecutionError": _S.TOOL_EXECUTION_ERROR,
        "MemoryError": _S.MEMORY_CORRUPTION,
        "UnpicklingError": _S.MEMORY_CORRUPTION,
    }
)

_STATUS: Final[Mapping[int, FailureScenario]] = MappingProxyType(
    {
        400: _S.BAD_REQUEST,
        401: _S.AUTH_FAILURE,
        402: _S.QUOTA_EXHAUSTED,
        403: _S.AUTH_FAILURE,
        404: _S.BAD_REQUEST,
        408: _S.LLM_TIMEOUT,
        409: _S.PROVIDER_FAILURE,
        413: _S.CONTEXT_OVERFLOW,
        422: _S.BAD_REQUEST,
        429: _S.RATE_LIMIT,
        504: _S.LLM_TIMEOUT,
    }
)


class _Phrases:
    """A case-insensitive alternation of phrases, compiled on first use (import stays cheap)."""

    __slots__ = ("_compiled", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._compiled: re.Pattern[str] | None = None

    def search(self, text: str) -> re.Match[str] | None:
        compiled = self._compiled
        if compiled is None:  # two threads may both compile: harmless
            compiled = self._compiled = re.compile(self.pattern, re.IGNORECASE)
        return compiled.search(text)


def _phrases(*patterns: str) -> _Phrases:
    return _Phrases("|".join(f"(?:{p})" for p in patterns))


# Whole phrases only; a bare number in a message ("processed 4290 rows") is never a status.
_QUOTA_TEXT: Final = _phrases(
    r"\binsufficient_quota\b",
    r"exceeded your current quota",
    r"credit balance is too low",
    r"billing hard limit",
)
_CONTEXT_TEXT: Final = _phrases(
    r"maximum context length",
    r"\bcontext[ _]length[ _]exceeded\b",
    r"\bcontext[ _]window[ _]exceeded\b",
    r"exceeds? (?:the |this |your )?(?:model'?s? )?(?:maximum )?context (?:window|length|limit)",
    r"prompt is too long",
    r"input is too long",
    r"exceeds the maximum number of tokens",
    r"input token count\b[^\n]{0,120}?\bexceeds\b",
    r"reduce the length of the (?:messages|prompt|input)",
)
_CONTENT_TEXT: Final = _phrases(
    r"\bcontent[ _]policy[ _]violation\b",
    r"content management policy",
    r"\bresponsibleaipolicyviolation\b",
    r"violat\w* (?:our|the) (?:usage|content) polic",
)
_RATE_TEXT: Final = _phrases(
    r"\brate limit(?:ed| exceeded| reached)\b", r"\btoo many requests\b", r"\bthrottled\b"
)
_TIMEOUT_TEXT: Final = _phrases(r"\btimed out\b", r"\bdeadline exceeded\b")
_PROVIDER_TEXT: Final = _phrases(
    r"\boverloaded\b", r"\bservice unavailable\b", r"\bbad gateway\b", r"\binternal server error\b"
)
# Programming errors: their message is a key or a name, not a provider's words.
_MUTE: Final = (LookupError, TypeError, AttributeError, NameError, AssertionError)

_Refinements = tuple[_Phrases, tuple[tuple[_Phrases, FailureScenario], ...]]


def _tier(*groups: tuple[_Phrases, FailureScenario]) -> _Refinements:
    """One combined pattern to reject most texts in one search, then the groups in order."""
    return _phrases(*(pattern.pattern for pattern, _ in groups)), groups


# Which phrase groups may refine which structured verdict (None: no structured signal).
_REFINE: Final[Mapping[FailureScenario | None, _Refinements]] = MappingProxyType(
    {
        _S.BAD_REQUEST: _tier(
            (_QUOTA_TEXT, _S.QUOTA_EXHAUSTED),
            (_CONTEXT_TEXT, _S.CONTEXT_OVERFLOW),
            (_CONTENT_TEXT, _S.CONTENT_POLICY),
        ),
        _S.RATE_LIMIT: _tier((_QUOTA_TEXT, _S.QUOTA_EXHAUSTED)),
        None: _tier(
            (_QUOTA_TEXT, _S.QUOTA_EXHAUSTED),
            (_CONTEXT_TEXT, _S.CONTEXT_OVERFLOW),
            (_CONTENT_TEXT, _S.CONTENT_POLICY),
            (_RATE_TEXT, _S.RATE_LIMIT),
            (_TIMEOUT_TEXT, _S.LLM_TIMEOUT),
            (_PROVIDER_TEXT, _S.PROVIDER_FAILURE),
        ),
    }
)

# Codes too broad to trust alone: the message may still say context, policy or quota,
# anthropic's error.details.error_code may name a spend limit, and any status but
# 400, 404 and 422 says more than a generic bad-request code.
_AMBIGUOUS_CODES: Final = frozenset(
    [code for code, scenario in _CODES.items() if scenario is _S.BAD_REQUEST]
    + ["resource_exhausted", "too_many_requests", "rate_limit_error"]
)
_SPECIFIC_BAD_REQUEST: Final = frozenset(
    {_S.CONTEXT_OVERFLOW, _S.CONTENT_POLICY, _S.QUOTA_EXHAUSTED}
)
"""The verdicts a generic bad request found first yields to, further down its chain."""
