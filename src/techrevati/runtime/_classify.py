"""Read why an exception happened, without importing any SDK (private to ``retry_policy``).

The classifier looks only at class names along the MRO and at attributes the
provider SDKs are known to set (``status_code``, ``code``, ``type``, ``body``,
``response``, ``details``...), so it works on openai, anthropic, google,
botocore, httpx/httpx2, requests and litellm errors alike, and on look-alike
classes of your own. Every attribute read is guarded: a property that raises
never breaks classification. Use the public names through
:mod:`techrevati.runtime.retry_policy`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Literal

from techrevati.runtime._sdk import safe_getattr as _attr
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import AgentFailureClass

__all__ = [
    "FAILURE_CLASS_BY_SCENARIO",
    "MAX_CHAIN_DEPTH",
    "MAX_CHAIN_NODES",
    "RETRYABLE_SCENARIOS",
    "FailureInfo",
    "FailureScenario",
    "Origin",
    "classify_exception",
    "failure_class_for",
    "inspect_exception",
]

MAX_CHAIN_DEPTH: Final = 8
"""How deep :func:`classify_exception` follows causes, contexts and wrappers."""

MAX_CHAIN_NODES: Final = 32
"""How many exceptions of one chain (groups included) are looked at, at most."""

_MAX_TEXT: Final = 4096
"""Message characters searched for phrases (error payloads can be large)."""

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
_NO_RANK: Final = 99
# One lookup per code: (scenario, rank, specific enough to skip the message).
_CODE_INFO: Final[Mapping[str, tuple[FailureScenario, int, bool]]] = MappingProxyType(
    {
        code: (scenario, _RANK[scenario], code not in _AMBIGUOUS_CODES)
        for code, scenario in _CODES.items()
    }
)

# The attributes the classifier reads; a class that has none of them (and an
# instance that sets none) is classified by its name alone, with no reads.
_ATTRIBUTES: Final = frozenset(
    {
        "status_code",
        "status",
        "code",
        "type",
        "error_code",
        "body",
        "response",
        "headers",
        "message",
        "details",
        "last_attempt",
        "cause",
    }
)
_EVERYTHING: Final[frozenset[str]] = frozenset({"*"})
_WRAPPERS: Final = frozenset({"last_attempt", "cause"})
_NO_LINKS: Final[list[BaseException]] = []  # shared; never mutated
# Read at construction, in this order; the rest (body, message, headers, details) lazily.
_STRUCTURED: Final = ("status_code", "status", "code", "type", "error_code", "response")
_STATUS_ATTRIBUTES: Final = frozenset({"status_code", "status", "code"})
_DECLARED_CACHE: dict[type[BaseException], frozenset[str]] = {}

_RETRY_DELAY: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)s\s*$")
_RETRY_INFO_TYPE: Final = "google.rpc.RetryInfo"
_ERROR_INFO_TYPE: Final = "google.rpc.ErrorInfo"
# Header containers whose .get is already case-insensitive (no key scan needed).
_CI_HEADER_TYPES: Final = frozenset(
    {"Headers", "CaseInsensitiveDict", "HTTPMessage", "Message", "CIMultiDict", "CIMultiDictProxy"}
)
_ORIGINS: Final = frozenset({"model", "tool"})
_HINT_HEADERS: Final = ("x-should-retry", "retry-after-ms", "retry-after")
_HINT_HEADER_INDEX: Final = {name: index for index, name in enumerate(_HINT_HEADERS)}
_HINT_HEADER_BYTES: Final = {name.encode(): index for index, name in enumerate(_HINT_HEADERS)}
_NOTHING: Final[list[object]] = [None, None, None]
_INFO_CACHE_SIZE: Final = 1024
_INFO_CACHE: dict[tuple[object, ...], FailureInfo] = {}
_NAME_CACHE_SIZE: Final = 1024
_NAME_CACHE: dict[type[BaseException], tuple[FailureScenario | None, FailureScenario | None]] = {}
_SPECIFIC_BAD_REQUEST: Final = frozenset(
    {_S.CONTEXT_OVERFLOW, _S.CONTENT_POLICY, _S.QUOTA_EXHAUSTED}
)


class _Reading:
    """The signals of one exception, read lazily (internal; one per exception looked at).

    Construction reads only the cheap structured attributes (status, codes,
    the response); the body, messages, headers and details are read when a
    decision or a hint needs them. Every read is guarded.
    """

    __slots__ = (
        "_body_read",
        "_declared",
        "_own",
        "_response",
        "codes",
        "exc",
        "specific",
        "status",
        "texts",
    )

    def __init__(
        self,
        exc: BaseException,
        declared: frozenset[str] | None = None,
        own: Mapping[str, object] | None = None,
    ) -> None:
        self.exc = exc
        self.status: int | None = None
        self.codes: list[str] = []
        self.texts: list[str] = []
        self.specific = False
        self._body_read = False
        self._response: object = None
        if declared is None or own is None:
            declared, own = _shape(exc)
        self._declared = declared
        self._own = own
        if not declared and (not own or _ATTRIBUTES.isdisjoint(own)):
            self._body_read = True  # nothing to read: decided by class name alone
            return
        everything = declared is _EVERYTHING
        for name in _STRUCTURED:
            if everything or name in declared:  # maybe a property: read it guarded
                try:
                    value = getattr(exc, name, None)
                except Exception:  # e.g. httpx's .request raises RuntimeError when unset
                    continue
            elif name in own:
                value = own[name]  # a plain instance attribute: no descriptor in the way
            else:
                continue
            if value is None:
                continue
            if name == "response":
                self._response = value
                if self.status is not None:
                    continue
                value = _attr(value, "status_code")  # httpx, requests
                if value is None and (
                    type(self._response) is dict or isinstance(self._response, Mapping)
                ):  # botocore's dict
                    self._take_mapping(_get(self._response, "Error"))
                    value = _get(_get(self._response, "ResponseMetadata"), "HTTPStatusCode")
            elif isinstance(value, str):
                if name not in _STATUS_ATTRIBUTES or len(value) != 3 or not value.isdigit():
                    if value:
                        self.codes.append(value)
                    continue
                value = int(value)  # litellm keeps the status as a str
            elif name not in _STATUS_ATTRIBUTES:
                continue
            if (
                self.status is None
                and isinstance(value, int)
                and not isinstance(value, bool)
                and 100 <= value <= 599
            ):
                self.status = int(value)  # api-core's codes are http.HTTPStatus members

    def has(self, name: str) -> bool:
        """Whether ``exc`` may have attribute ``name`` (its class or instance sets it)."""
        declared = self._declared
        return declared is _EVERYTHING or name in self._own or name in declared

    def read(self, name: str) -> object:
        """Return ``exc.<name>`` or None, never raising."""
        return _attr(self.exc, name) if self.has(name) else None

    def read_body(self) -> None:
        """Add the codes and messages of ``body`` and ``message`` (once)."""
        if self._body_read:
            return
        self._body_read = True
        body = self.read("body")
        if body is not None and (type(body) is dict or isinstance(body, Mapping)):
            inner = _get(body, "error")
            error = inner if type(inner) is dict or isinstance(inner, Mapping) else body
            self._take_mapping(error)
            self._take_details(_get(error, "details"))
        message = self.read("message")
        if isinstance(message, str) and message:
            self.texts.append(message)
        self.codes.extend(_error_reasons(self.read("details")))

    def headers(self) -> object:
        """Return the response headers (httpx, requests, botocore's dict) or ``.headers``."""
        response = self._response
        if response is not None:
            headers = _attr(response, "headers")
            if headers is None and (type(response) is dict or isinstance(response, Mapping)):
                headers = _get(_get(response, "ResponseMetadata"), "HTTPHeaders")
            if headers is not None:
                return headers
        return self.read("headers")

    def _take_details(self, details: object) -> None:
        """Add anthropic's ``details.error_code`` or Google's ``ErrorInfo`` reasons to the codes."""
        if type(details) is dict or isinstance(details, Mapping):
            code = _get(details, "error_code")
            if isinstance(code, str) and code:
                self.codes.append(code)
        elif isinstance(details, list | tuple):
            self.codes.extend(_error_reasons(details))

    def _take_status(self, value: object) -> None:
        if (
            self.status is None
            and isinstance(value, int)
            and not isinstance(value, bool)
            and 100 <= value <= 599
        ):
            self.status = int(value)  # api-core's codes are http.HTTPStatus members

    def _take_mapping(self, data: object) -> None:
        if not (type(data) is dict or isinstance(data, Mapping)):
            return
        for key in ("code", "Code", "type", "status"):
            value = _get(data, key)
            if isinstance(value, int):
                self._take_status(value)
            elif isinstance(value, str) and value:
                if len(value) == 3 and value.isdigit():
                    self._take_status(int(value))
                else:
                    self.codes.append(value)
        for key in ("message", "Message"):
            value = _get(data, key)
            if isinstance(value, str) and value:
                self.texts.append(value)

    def decide(self) -> tuple[FailureScenario | None, str | None]:
        """Return the scenario the structured signals support, and the code used.

        Phrases refine only a structured verdict that is too broad (a generic
        400, a 429 that may be quota); with no structured signal at all the
        answer is None and :meth:`phrase` is the last resort.
        """
        scenario, used, rank = self._from_codes() if self.codes else (None, None, _NO_RANK)
        if not self.specific and not self._body_read:
            self.read_body()
            if self.codes:
                scenario, used, rank = self._from_codes()
        cls = type(self.exc)
        names = _NAME_CACHE.get(cls) or _names_of(cls)
        strong = names[0]
        if strong is not None and _RANK[strong] < rank:
            return strong, None  # a specific class name (litellm's, openai's) says it all
        if scenario is None:
            scenario = self._by_status() or names[1]
        if scenario is None or self.specific or scenario not in _REFINE:
            return scenario, used
        refined = self._refine(scenario)
        if refined is not None:
            return refined, used
        if scenario is _S.BAD_REQUEST:
            # A generic code ("invalid_request_error" on a 401, 408, 409, 5xx) says
            # less than the status: the status decides, and the SDKs retry 408 and 409.
            by_status = self._by_status()
            if by_status is not None:
                return by_status, used
        return scenario, used

    def _by_status(self) -> FailureScenario | None:
        """Return the scenario of the HTTP status alone (None below 400)."""
        status = self.status
        if status is None or status < 400:
            return None
        scenario = _STATUS.get(status)
        if scenario is None:
            return _S.PROVIDER_FAILURE if status >= 500 else _S.BAD_REQUEST
        return scenario

    def phrase(self) -> FailureScenario | None:
        """Return what the message alone says: the last resort, never for programming errors."""
        if isinstance(self.exc, _MUTE):
            return None
        self.read_body()
        return self._refine(None)

    def _from_codes(self) -> tuple[FailureScenario | None, str | None, int]:
        scenario: FailureScenario | None = None
        used: str | None = None
        rank = _NO_RANK
        for code in self.codes:
            hit = _CODE_INFO.get(code) or _CODE_INFO.get(code.lower())
            if hit is not None and hit[1] < rank:
                scenario, rank, self.specific = hit
                used = code
        return scenario, used, rank

    def _refine(self, scenario: FailureScenario | None) -> FailureScenario | None:
        refinements = _REFINE.get(scenario)
        if refinements is None:
            return None
        text = self._text()
        if refinements[0].search(text) is None:
            return None
        for pattern, refined in refinements[1]:
            if pattern.search(text) is None:
                continue
            if refined is _S.QUOTA_EXHAUSTED and scenario is _S.RATE_LIMIT and self._hinted():
                return None  # "retry in 13s" means a rate limit, whatever the text says
            return refined
        return None

    def _text(self) -> str:
        try:
            own = str(self.exc)
        except Exception:  # a broken __str__ must not break classification
            own = ""
        return "\n".join([*self.texts, own])[:_MAX_TEXT]

    def _hinted(self) -> bool:
        headers = self.headers()
        if headers is not None:
            _, millis, after = _hint_headers(headers)
            if _header_wait(millis, after, time.time) is not None:
                return True
        return _retry_info(self.read("details")) is not None

    def info(
        self, scenario: FailureScenario, code: str | None, clock: Callable[[], float]
    ) -> FailureInfo:
        """Build the :class:`FailureInfo` of this exception for ``scenario``."""
        retryable = scenario in RETRYABLE_SCENARIOS
        retry_after: float | None = None
        headers = self.headers()
        if headers is not None:
            should, millis, after = _hint_headers(headers)
            if should is not None:
                flag = should.strip().lower()
                if flag == "true":
                    retryable = True
                elif flag == "false":
                    retryable = False
            retry_after = _header_wait(millis, after, clock)
        if retry_after is None:
            retry_after = _retry_info(self.read("details"))
        if code is None and self.codes:
            code = self.codes[0]
        name = type(self.exc).__name__
        if retry_after is not None:
            return FailureInfo(scenario, retryable, retry_after, self.status, code, name)
        # Without a hint the value repeats: reuse the immutable FailureInfo.
        key = (scenario, retryable, self.status, code, name)
        cached = _INFO_CACHE.get(key)
        if cached is None:
            cached = FailureInfo(scenario, retryable, None, self.status, code, name)
            if len(_INFO_CACHE) >= _INFO_CACHE_SIZE:
                _INFO_CACHE.clear()
            _INFO_CACHE[key] = cached
        return cached


_Verdict = tuple[FailureScenario, BaseException, "_Reading | None", str | None]


def failure_class_for(scenario: FailureScenario) -> AgentFailureClass:
    """Return the :class:`AgentFailureClass` a dashboard groups ``scenario`` under."""
    try:
        return FAILURE_CLASS_BY_SCENARIO[scenario]
    except (KeyError, TypeError):
        raise InvalidValueError(f"scenario must be a FailureScenario, got {scenario!r}") from None


def classify_exception(exc: BaseException, *, origin: Origin = "model") -> FailureScenario:
    """Return the :class:`FailureScenario` of ``exc``, following causes and wrappers.

    Structured signals anywhere in the chain (codes, class names, statuses)
    come first, nearest exception first; message phrases are the last
    resort. A generic code (``invalid_request_error``) yields to a status
    that says more (401, 408, 409, 429, 5xx...). A bad request whose response
    says ``x-should-retry: true`` is a ``provider_failure``, so the recipe
    retries it. ``origin="tool"`` turns timeouts into ``dependency_timeout`` and
    the default into ``tool_execution_error``. Never raises for an
    :class:`Exception`; ``KeyboardInterrupt``, ``SystemExit`` and
    ``asyncio.CancelledError`` are not failures and raise
    :class:`~techrevati.runtime.errors.InvalidValueError`.
    """
    return _classify(exc, origin)[0]


def inspect_exception(
    exc: BaseException,
    *,
    clock: Callable[[], float] = time.time,
    origin: Origin = "model",
) -> FailureInfo:
    """Classify ``exc`` and read its wait hints into a :class:`FailureInfo`.

    ``clock`` is the wall clock (``time.time``) that an HTTP-date
    ``retry-after`` is measured against.
    """
    scenario, node, reading, code = _classify(exc, origin)
    return (reading or _Reading(node)).info(scenario, code, clock)


def _classify(exc: BaseException, origin: str) -> _Verdict:
    if not isinstance(exc, Exception):
        raise InvalidValueError(
            f"exc must be an Exception to classify, got {type(exc).__name__}; "
            "KeyboardInterrupt, SystemExit and CancelledError are not failures: let them propagate"
        )
    if origin not in _ORIGINS:
        raise InvalidValueError(f"origin must be 'model' or 'tool', got {origin!r}")
    verdict = _walk(exc, origin)
    return _retry_anyway(verdict, origin) if verdict[0] is _S.BAD_REQUEST else verdict


def _retry_anyway(verdict: _Verdict, origin: str) -> _Verdict:
    """Turn a generic bad request the server says to retry into a retryable scenario.

    ``x-should-retry: true`` on a bad request (400, 404, 422, a generic code)
    makes it a ``provider_failure`` (``tool_execution_error`` for a tool), so
    the usual recipe (backoff, attempt budget) retries it, as the SDKs do.
    A specific diagnosis keeps its scenario even then (auth, quota, content
    policy, context overflow, output truncated, memory): its recipe names what
    the caller must change, which a blind retry would skip; only
    :attr:`FailureInfo.retryable` follows the header there.
    """
    _, node, reading, code = verdict
    if reading is None:
        reading = _Reading(node)
    headers = reading.headers()
    should = None if headers is None else _hint_headers(headers)[0]
    if should is None or should.strip().lower() != "true":
        return verdict[0], node, reading, code
    scenario = _S.TOOL_EXECUTION_ERROR if origin == "tool" else _S.PROVIDER_FAILURE
    return scenario, node, reading, code


def _walk(exc: Exception, origin: str) -> _Verdict:
    """Decide ``exc`` from its own signals, else from what it wraps, nearest first."""
    scenario, reading, code, links = _visit(exc)
    if not links:
        if scenario is None:
            return _last_resort([exc], origin)
        return _for_origin(scenario, origin), exc, reading, code
    # Walk causes, contexts, group members and wrappers, nearest first: the first
    # structured signal wins, except that a generic bad request yields to a more
    # specific cause. Message phrases are tried only when nothing is structured.
    best: _Verdict | None = None if scenario is None else (scenario, exc, reading, code)
    visited: list[BaseException] = [exc]
    depth = 0
    while len(links) == 1 and depth < MAX_CHAIN_DEPTH:
        # A plain ``raise ... from`` chain needs no bookkeeping: the depth bounds cycles.
        node = links[0]
        depth += 1
        if not isinstance(node, Exception):
            links = _links(node, *_shape(node))
            continue
        visited.append(node)
        scenario, reading, code, links = _visit(node)
        if scenario is not None:
            if best is None and scenario is not _S.BAD_REQUEST:
                return _for_origin(scenario, origin), node, reading, code
            if best is None:
                best = (scenario, node, reading, code)
            elif scenario in _SPECIFIC_BAD_REQUEST:
                return scenario, node, reading, code
    seen = {id(node) for node in visited}
    stack: list[tuple[BaseException, int]] = []
    if depth < MAX_CHAIN_DEPTH:
        for link in reversed(links):
            stack.append((link, depth + 1))
    while stack and len(seen) < MAX_CHAIN_NODES:
        node, depth = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Exception):
            visited.append(node)
            scenario, reading, code, links = _visit(node)
            if scenario is not None:
                if best is None and scenario is not _S.BAD_REQUEST:
                    return _for_origin(scenario, origin), node, reading, code
                if best is None:
                    best = (scenario, node, reading, code)
                elif scenario in _SPECIFIC_BAD_REQUEST:
                    return scenario, node, reading, code
        else:
            links = _links(node, *_shape(node))
        if depth < MAX_CHAIN_DEPTH:
            for link in reversed(links):
                stack.append((link, depth + 1))
    if best is not None:
        return best
    return _last_resort(visited, origin)


def _visit(
    exc: BaseException,
) -> tuple[FailureScenario | None, _Reading | None, str | None, list[BaseException]]:
    """Decide one exception; return its links too when the walk must go on."""
    declared, own = _shape(exc)
    reading: _Reading | None = None
    code: str | None = None
    if not declared and (not own or _ATTRIBUTES.isdisjoint(own)):
        cls = type(exc)
        strong, weak = _NAME_CACHE.get(cls) or _names_of(cls)
        scenario = strong or weak
        if scenario is not None and scenario in _REFINE:  # a generic name: read the message
            reading = _Reading(exc, declared, own)
            scenario, code = reading.decide()
    else:
        reading = _Reading(exc, declared, own)
        scenario, code = reading.decide()
    if scenario is not None and scenario is not _S.BAD_REQUEST:
        return scenario, reading, code, _NO_LINKS
    return scenario, reading, code, _links(exc, declared, own)


def _last_resort(visited: list[BaseException], origin: str) -> _Verdict:
    """Match message phrases, nearest exception first; else the default scenario."""
    for node in visited:
        reading = _Reading(node)
        phrased = reading.phrase()
        if phrased is not None:
            return _for_origin(phrased, origin), node, reading, None
    default = _S.TOOL_EXECUTION_ERROR if origin == "tool" else _S.LLM_ERROR
    return default, visited[0], None, None


def _shape(exc: BaseException) -> tuple[frozenset[str], Mapping[str, object]]:
    """Return the attributes ``type(exc)`` declares and the instance's own ``__dict__``."""
    cls = type(exc)
    declared = _DECLARED_CACHE.get(cls)
    if declared is None:
        declared = _declared(cls)
    try:
        own: Mapping[str, object] = exc.__dict__
    except Exception:
        own = {}
    return declared, own


def _for_origin(scenario: FailureScenario, origin: str) -> FailureScenario:
    if origin == "tool" and scenario is _S.LLM_TIMEOUT:
        return _S.DEPENDENCY_TIMEOUT
    return scenario


def _links(
    exc: BaseException, declared: frozenset[str], own: Mapping[str, object]
) -> list[BaseException]:
    """Return the exceptions ``exc`` wraps, nearest first."""
    cause = exc.__cause__
    context = None if exc.__suppress_context__ else exc.__context__
    if context is cause:
        context = None
    grouped = isinstance(exc, BaseExceptionGroup)
    wraps = declared is _EVERYTHING or not (
        declared.isdisjoint(_WRAPPERS) and _WRAPPERS.isdisjoint(own)
    )
    if not (grouped or wraps):
        if cause is None:
            return _NO_LINKS if context is None else [context]
        return [cause] if context is None else [cause, context]
    found: list[BaseException] = []
    if cause is not None:
        found.append(cause)
    if context is not None:
        found.append(context)
    if isinstance(exc, BaseExceptionGroup):
        found.extend(exc.exceptions)
    if not wraps:
        return found
    attempt = _attr(exc, "last_attempt")  # tenacity.RetryError: a finished Future
    if isinstance(attempt, BaseException):
        found.append(attempt)
    elif attempt is not None:
        inner = _future_exception(attempt)
        if inner is not None:
            found.append(inner)
    wrapped = _attr(exc, "cause")  # google.api_core RetryError
    if isinstance(wrapped, BaseException):
        found.append(wrapped)
    return found


def _future_exception(future: object) -> BaseException | None:
    try:
        done = getattr(future, "done", None)
        if callable(done) and not done():
            return None  # never block on a pending future
        get = getattr(future, "exception", None)
        value = get() if callable(get) else None
    except Exception:
        return None
    return value if isinstance(value, BaseException) else None


def _names_of(cls: type[BaseException]) -> tuple[FailureScenario | None, FailureScenario | None]:
    """Return the strong and the ordinary name verdicts along ``cls``'s MRO (cached)."""
    cached = _NAME_CACHE.get(cls)
    if cached is not None:
        return cached
    strong: FailureScenario | None = None
    weak: FailureScenario | None = None
    for klass in cls.__mro__:
        name = klass.__name__
        if strong is None:
            strong = _STRONG_NAMES.get(name)
        if weak is None:
            weak = _NAMES.get(name)
    if len(_NAME_CACHE) >= _NAME_CACHE_SIZE:
        _NAME_CACHE.clear()  # classes made on the fly must not grow memory without limit
    _NAME_CACHE[cls] = (strong, weak)
    return strong, weak


def _declared(cls: type[BaseException]) -> frozenset[str]:
    """Return the attributes read that ``cls`` provides (cached); all if it has ``__getattr__``."""
    cached = _DECLARED_CACHE.get(cls)
    if cached is not None:
        return cached
    if any("__getattr__" in vars(klass) for klass in cls.__mro__[:-1]):
        found = _EVERYTHING
    else:
        found = frozenset(
            name
            for name in _ATTRIBUTES
            if any(name in vars(klass) for klass in cls.__mro__ if klass is not BaseException)
        )
    if len(_DECLARED_CACHE) >= _NAME_CACHE_SIZE:
        _DECLARED_CACHE.clear()
    _DECLARED_CACHE[cls] = found
    return found


def _get(data: object, key: str) -> object:
    """``data.get(key)`` for a mapping, None for anything else or on error."""
    if not (type(data) is dict or isinstance(data, Mapping)):
        return None
    try:
        return data.get(key)
    except Exception:
        return None


def _hint_headers(headers: object) -> tuple[str | None, str | None, str | None]:
    """Return ``x-should-retry``, ``retry-after-ms`` and ``retry-after``, case-insensitively.

    Works on any header mapping: plain dicts (any key case), httpx/httpx2
    ``Headers`` (one pass over the public ``.raw`` list), requests'
    ``CaseInsensitiveDict``, ``http.client.HTTPMessage``. Never raises.
    """
    found: list[object] = [None, None, None]
    try:
        if type(headers) is dict:
            for index, name in enumerate(_HINT_HEADERS):
                found[index] = headers.get(name)
            if found == _NOTHING and headers:
                _scan(headers.items(), found)
        else:
            raw = getattr(headers, "raw", None)
            if type(raw) is list:  # httpx and httpx2 Headers: [(bytes, bytes), ...]
                for key, value in raw:
                    slot = _HINT_HEADER_BYTES.get(key.lower())
                    if slot is not None:
                        found[slot] = value
            else:
                get = getattr(headers, "get", None)
                if not callable(get):
                    return None, None, None
                for index, name in enumerate(_HINT_HEADERS):
                    found[index] = get(name)
                if found == _NOTHING and type(headers).__name__ not in _CI_HEADER_TYPES:
                    items = getattr(headers, "items", None)
                    if callable(items):
                        _scan(items(), found)
    except Exception:  # a header container that misbehaves gives no hints
        return None, None, None
    return _header_text(found[0]), _header_text(found[1]), _header_text(found[2])


def _scan(items: Iterable[tuple[object, object]], found: list[object]) -> None:
    for key, value in items:
        if isinstance(key, str):
            index = _HINT_HEADER_INDEX.get(key.lower())
            if index is not None:
                found[index] = value


def _header_text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


def _header_wait(millis: str | None, after: str | None, clock: Callable[[], float]) -> float | None:
    """Seconds from ``retry-after-ms``, else ``retry-after`` (seconds or an HTTP date).

    As in the openai and anthropic SDKs, the first header that parses decides,
    and a zero wait is no hint at all (None: back off as usual), never a retry
    at once in a tight loop.
    """
    if millis is not None:
        value = _number(millis)
        if value is not None:
            return value / 1000.0 or None
    if after is None:
        return None
    seconds = _number(after)
    if seconds is not None:
        return seconds or None
    from email.utils import parsedate_to_datetime  # noqa: PLC0415 (rare: keep imports light)

    try:
        when = parsedate_to_datetime(after.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        delta = when.timestamp() - float(clock())
    except (OverflowError, ValueError, TypeError):
        return None
    return max(0.0, delta) if math.isfinite(delta) else None


def _number(raw: str) -> float | None:
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _detail_items(details: object) -> list[object] | tuple[object, ...]:
    """Google's detail list: api-core's ``.details``, or ``error.details`` of genai's JSON."""
    if details is None:
        return ()
    if isinstance(details, Mapping):
        error = _get(details, "error")
        details = _get(error if isinstance(error, Mapping) else details, "details")
    return details[:16] if isinstance(details, list | tuple) else ()


def _error_reasons(details: object) -> list[str]:
    """Return the ``reason`` of each ``google.rpc.ErrorInfo`` (dicts or protobuf messages)."""
    reasons: list[str] = []
    for item in _detail_items(details):
        if isinstance(item, Mapping):
            kind = _get(item, "@type")
            if not (isinstance(kind, str) and kind.endswith(_ERROR_INFO_TYPE)):
                continue
            reason = _get(item, "reason")
        elif type(item).__name__ == "ErrorInfo":
            reason = _attr(item, "reason")
        else:
            continue
        if isinstance(reason, str) and reason:
            reasons.append(reason)
    return reasons


def _retry_info(details: object) -> float | None:
    """Google's ``RetryInfo.retryDelay`` in api-core ``.details`` or genai's response JSON.

    A zero delay is no hint (None), as for ``retry-after``.
    """
    for item in _detail_items(details):
        if isinstance(item, Mapping):
            kind = _get(item, "@type")
            if isinstance(kind, str) and kind.endswith(_RETRY_INFO_TYPE):
                delay = _get(item, "retryDelay")
                if isinstance(delay, str):
                    match = _RETRY_DELAY.match(delay)
                    if match is not None:
                        return float(match.group(1)) or None
                elif isinstance(delay, int | float) and not isinstance(delay, bool):
                    ok = math.isfinite(delay) and delay > 0
                    return float(delay) if ok else None
        elif type(item).__name__ == "RetryInfo":
            seconds = _duration(_attr(item, "retry_delay"))
            if seconds is not None:
                return seconds or None
    return None


def _duration(value: object) -> float | None:
    """Seconds of a ``timedelta`` or a protobuf ``Duration`` (``seconds`` + ``nanos``)."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    else:
        whole = _attr(value, "seconds")
        nanos = _attr(value, "nanos")
        if type(whole) is not int:
            return None
        seconds = whole + (nanos / 1e9 if type(nanos) is int else 0.0)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
