"""The classifier on real SDK exception objects, built offline.

Each SDK is a dev dependency and must be installed (a missing one fails the
run; nothing skips); the dependency-free stand-ins in tests/test_retry_policy.py
cover the same logic without them. openai 3.x,
anthropic 2.x and google-genai 3.x sit on httpx2, a fork of httpx with its own
import name, so both flavours are exercised where they apply.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from types import ModuleType
from typing import Any

import pytest

from techrevati.runtime.retry_policy import (
    FailureScenario,
    RecoveryContext,
    RecoveryStep,
    RetriesExhaustedError,
    RetryPolicy,
    aretry_call,
    attempt_recovery,
    classify_exception,
    inspect_exception,
    retry_call,
)

S = FailureScenario
NOW = 1_700_000_000.0
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"


def _module(name: str) -> Any:
    """Import an SDK the dev set-up installs; a missing one fails the run, never skips it."""
    module: ModuleType = importlib.import_module(name)
    return module


@pytest.fixture
def httpx2() -> Any:
    return _module("httpx2")


@pytest.fixture
def openai() -> Any:
    return _module("openai")


@pytest.fixture
def anthropic() -> Any:
    return _module("anthropic")


def openai_error(
    openai: Any,
    cls_name: str,
    status: int,
    error: Mapping[str, object],
    *,
    headers: dict[str, str] | None = None,
) -> Exception:
    """Build an openai status error the way the SDK does: ``body`` is the inner error."""
    httpx2 = _module("httpx2")
    request = httpx2.Request("POST", OPENAI_URL)
    response = httpx2.Response(
        status, headers=headers or {}, json={"error": error}, request=request
    )
    exc: Exception = getattr(openai, cls_name)(error["message"], response=response, body=error)
    return exc


def anthropic_error(
    cls_name: str,
    status: int,
    error_type: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
) -> Exception:
    """Build an anthropic status error: ``body`` is the whole envelope."""
    anthropic, httpx2 = _module("anthropic"), _module("httpx2")
    request = httpx2.Request("POST", ANTHROPIC_URL)
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    response = httpx2.Response(status, headers=headers or {}, json=body, request=request)
    exc: Exception = getattr(anthropic, cls_name)(message, response=response, body=body)
    return exc


# -- openai ----------------------------------------------------------------------------


def test_openai_rate_limit_reads_retry_after_ms_first(openai: Any, httpx2: Any) -> None:
    error = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
    headers = {"retry-after-ms": "1500", "Retry-After": "9"}
    exc = openai_error(openai, "RateLimitError", 429, error, headers=headers)
    info = inspect_exception(exc)
    assert info.scenario is S.RATE_LIMIT
    assert info.retryable
    assert info.retry_after == 1.5
    assert info.status_code == 429
    assert info.provider_code == "rate_limit_exceeded"
    assert info.exception_type == "RateLimitError"


def test_openai_retry_after_http_date_is_relative_to_the_clock(openai: Any, httpx2: Any) -> None:
    when = format_datetime(datetime.fromtimestamp(NOW + 12, UTC), usegmt=True)
    error = {"message": "Rate limit reached", "type": "requests", "code": None}
    exc = openai_error(openai, "RateLimitError", 429, error, headers={"retry-after": when})
    assert inspect_exception(exc, clock=lambda: NOW).retry_after == 12.0


def test_openai_insufficient_quota_is_not_a_rate_limit(openai: Any, httpx2: Any) -> None:
    error = {
        "message": "You exceeded your current quota, please check your plan.",
        "type": "insufficient_quota",
        "code": "insufficient_quota",
    }
    info = inspect_exception(openai_error(openai, "RateLimitError", 429, error))
    assert info.scenario is S.QUOTA_EXHAUSTED
    assert not info.retryable
    result = attempt_recovery(info.scenario, RecoveryContext(), failure=info)
    assert result.outcome == "escalation_required"


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (
            "context_length_exceeded",
            "This model's maximum context length is 8192 tokens.",
            S.CONTEXT_OVERFLOW,
        ),
        (
            "content_policy_violation",
            "Your request was rejected by our safety system.",
            S.CONTENT_POLICY,
        ),
        ("content_filter", "The response was filtered.", S.CONTENT_POLICY),
        (None, "This model's maximum context length is 8192 tokens.", S.CONTEXT_OVERFLOW),
        ("invalid_request_error", "maximum context length is 65536 tokens", S.CONTEXT_OVERFLOW),
        (None, "Invalid 'messages[0].role'.", S.BAD_REQUEST),
    ],
)
def test_openai_bad_requests(
    openai: Any, httpx2: Any, code: str | None, message: str, expected: FailureScenario
) -> None:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    assert classify_exception(openai_error(openai, "BadRequestError", 400, error)) is expected


@pytest.mark.parametrize(
    ("cls_name", "status", "expected"),
    [
        ("AuthenticationError", 401, S.AUTH_FAILURE),
        ("PermissionDeniedError", 403, S.AUTH_FAILURE),
        ("NotFoundError", 404, S.BAD_REQUEST),
        ("ConflictError", 409, S.PROVIDER_FAILURE),
        ("UnprocessableEntityError", 422, S.BAD_REQUEST),
        ("InternalServerError", 500, S.PROVIDER_FAILURE),
        ("InternalServerError", 503, S.PROVIDER_FAILURE),
        ("APIStatusError", 408, S.LLM_TIMEOUT),
    ],
)
def test_openai_status_classes(
    openai: Any, httpx2: Any, cls_name: str, status: int, expected: FailureScenario
) -> None:
    error = {"message": "nope", "type": "error", "code": None}
    assert classify_exception(openai_error(openai, cls_name, status, error)) is expected


def test_openai_x_should_retry_false_wins(openai: Any, httpx2: Any) -> None:
    error = {"message": "boom", "type": "server_error", "code": None}
    headers = {"x-should-retry": "false"}
    exc = openai_error(openai, "InternalServerError", 500, error, headers=headers)
    info = inspect_exception(exc)
    assert info.scenario is S.PROVIDER_FAILURE
    assert not info.retryable


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "0"}, None),
        ({"retry-after-ms": "0"}, None),
        ({"retry-after-ms": "0", "retry-after": "5"}, None),  # the first readable header decides
        ({"retry-after-ms": "soon", "retry-after": "5"}, 5.0),
        ({"retry-after": "0.0"}, None),
    ],
)
def test_openai_zero_retry_after_is_no_hint(
    openai: Any, httpx2: Any, headers: dict[str, str], expected: float | None
) -> None:
    error = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
    exc = openai_error(openai, "RateLimitError", 429, error, headers=headers)
    assert inspect_exception(exc).retry_after == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (("BadRequestError", 400, {"x-should-retry": "true"}), (S.PROVIDER_FAILURE, True)),
        (("NotFoundError", 404, {"X-Should-Retry": "TRUE"}), (S.PROVIDER_FAILURE, True)),
        (("BadRequestError", 400, {"x-should-retry": "false"}), (S.BAD_REQUEST, False)),
        (("BadRequestError", 400, {"x-should-retry": "maybe"}), (S.BAD_REQUEST, False)),
        # a specific diagnosis keeps its scenario; only the flag follows the header
        (("AuthenticationError", 401, {"x-should-retry": "true"}), (S.AUTH_FAILURE, True)),
    ],
)
def test_openai_x_should_retry_true_makes_a_bad_request_retryable(
    openai: Any,
    httpx2: Any,
    error: tuple[str, int, dict[str, str]],
    expected: tuple[FailureScenario, bool],
) -> None:
    cls_name, status, headers = error
    body = {"message": "nope", "type": "invalid_request_error", "code": None}
    exc = openai_error(openai, cls_name, status, body, headers=headers)
    info = inspect_exception(exc)
    assert (info.scenario, info.retryable) == expected
    assert classify_exception(exc) is expected[0]


def test_openai_timeouts_and_connection_errors(openai: Any, httpx2: Any) -> None:
    request = httpx2.Request("POST", OPENAI_URL)
    assert classify_exception(openai.APITimeoutError(request=request)) is S.LLM_TIMEOUT
    assert classify_exception(openai.APIConnectionError(request=request)) is S.PROVIDER_FAILURE


def test_openai_mid_stream_api_error_is_decided_by_its_body(openai: Any, httpx2: Any) -> None:
    request = httpx2.Request("POST", OPENAI_URL)
    body = {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
    }
    exc = openai.APIError("The server had an error", request, body=body)
    info = inspect_exception(exc)
    assert info.scenario is S.PROVIDER_FAILURE
    assert info.status_code is None


def test_openai_finish_reason_errors(openai: Any) -> None:
    assert classify_exception(openai.ContentFilterFinishReasonError()) is S.CONTENT_POLICY
    completion = openai.types.chat.ChatCompletion.model_construct(usage=None)
    assert (
        classify_exception(openai.LengthFinishReasonError(completion=completion))
        is S.OUTPUT_TRUNCATED
    )


def test_openai_client_on_a_mock_transport_raises_classifiable_errors(
    openai: Any, httpx2: Any
) -> None:
    def handler(request: Any) -> Any:
        return httpx2.Response(
            429,
            headers={"retry-after-ms": "250", "x-request-id": "req_1"},
            json={
                "error": {
                    "message": (
                        "Rate limit reached for gpt in organization org-1 on requests per min "
                        "(RPM): Limit 3, Used 3, Requested 1."
                    ),
                    "type": "requests",
                    "param": None,
                    "code": "rate_limit_exceeded",
                }
            },
        )

    client = openai.OpenAI(
        api_key="sk-test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}])
    info = inspect_exception(caught.value)
    assert info.scenario is S.RATE_LIMIT
    assert info.retry_after == 0.25


def test_retry_call_honours_a_real_openai_hint(openai: Any, httpx2: Any) -> None:
    error = {"message": "Rate limit reached", "type": "tokens", "code": "rate_limit_exceeded"}
    errors = [openai_error(openai, "RateLimitError", 429, error, headers={"retry-after-ms": "800"})]
    slept: list[float] = []

    def call() -> str:
        if errors:
            raise errors.pop()
        return "done"

    assert retry_call(call, policy=RetryPolicy(sleep=slept.append)) == "done"
    assert slept == [0.8]


# -- anthropic --------------------------------------------------------------------------


def test_anthropic_overloaded_529() -> None:
    headers = {"retry-after": "3"}
    exc = anthropic_error("OverloadedError", 529, "overloaded_error", "Overloaded", headers=headers)
    info = inspect_exception(exc)
    assert info.scenario is S.PROVIDER_FAILURE
    assert info.retry_after == 3.0
    assert info.provider_code == "overloaded_error"


def test_anthropic_mid_stream_error_has_status_200() -> None:
    exc = anthropic_error("APIStatusError", 200, "overloaded_error", "Overloaded")
    assert exc.status_code == 200  # type: ignore[attr-defined]
    info = inspect_exception(exc)
    assert info.scenario is S.PROVIDER_FAILURE
    assert info.retryable


def test_anthropic_stream_on_a_mock_transport_raises_a_classifiable_error(
    anthropic: Any, httpx2: Any
) -> None:
    request = {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    events = (
        'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message",'
        '"role":"assistant","content":[],"model":"claude","stop_reason":null,"stop_sequence":null,'
        '"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
        'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        '"message":"Overloaded"}}\n\n'
    )

    def handler(request: Any) -> Any:
        return httpx2.Response(
            200, headers={"content-type": "text/event-stream"}, content=events.encode()
        )

    client = anthropic.Anthropic(
        api_key="sk-test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )

    def consume() -> None:
        with client.messages.stream(**request) as stream:
            for _ in stream:
                pass

    with pytest.raises(anthropic.APIStatusError) as caught:
        consume()
    assert caught.value.status_code == 200
    assert classify_exception(caught.value) is S.PROVIDER_FAILURE


@pytest.mark.parametrize(
    ("cls_name", "status", "error_type", "message", "expected"),
    [
        (
            "BadRequestError",
            400,
            "invalid_request_error",
            "prompt is too long: 210000 tokens > 200000 maximum",
            S.CONTEXT_OVERFLOW,
        ),
        (
            "BadRequestError",
            400,
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API.",
            S.QUOTA_EXHAUSTED,
        ),
        (
            "BadRequestError",
            400,
            "invalid_request_error",
            "messages: field required",
            S.BAD_REQUEST,
        ),
        ("AuthenticationError", 401, "authentication_error", "invalid x-api-key", S.AUTH_FAILURE),
        ("PaymentRequiredError", 402, "billing_error", "payment required", S.QUOTA_EXHAUSTED),
        ("PermissionDeniedError", 403, "permission_error", "no access", S.AUTH_FAILURE),
        ("RequestTimeoutError", 408, "timeout_error", "timed out", S.LLM_TIMEOUT),
        (
            "ContentTooLargeError",
            413,
            "request_too_large",
            "Request exceeds the maximum size",
            S.CONTEXT_OVERFLOW,
        ),
        (
            "RateLimitError",
            429,
            "rate_limit_error",
            "Number of request tokens has exceeded your per-minute rate limit",
            S.RATE_LIMIT,
        ),
        ("InternalServerError", 500, "api_error", "Internal server error", S.PROVIDER_FAILURE),
        ("GatewayTimeoutError", 504, "timeout_error", "gateway timeout", S.LLM_TIMEOUT),
    ],
)
def test_anthropic_status_errors(
    cls_name: str,
    status: int,
    error_type: str,
    message: str,
    expected: FailureScenario,
) -> None:
    exc = anthropic_error(cls_name, status, error_type, message)
    assert classify_exception(exc) is expected


def test_anthropic_timeout_and_connection(anthropic: Any, httpx2: Any) -> None:
    request = httpx2.Request("POST", ANTHROPIC_URL)
    assert classify_exception(anthropic.APITimeoutError(request=request)) is S.LLM_TIMEOUT
    assert classify_exception(anthropic.APIConnectionError(request=request)) is S.PROVIDER_FAILURE


# -- httpx and httpx2 -------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["httpx", "httpx2"])
def test_http_status_error_in_both_flavours(flavour: str) -> None:
    h = _module(flavour)
    request = h.Request("GET", "https://example.com")
    response = h.Response(429, headers={"Retry-After": "4"}, request=request)
    exc = h.HTTPStatusError("too many", request=request, response=response)
    info = inspect_exception(exc)
    assert info.scenario is S.RATE_LIMIT
    assert info.retry_after == 4.0
    assert info.status_code == 429
    down = h.HTTPStatusError("down", request=request, response=h.Response(503, request=request))
    assert classify_exception(down) is S.PROVIDER_FAILURE


@pytest.mark.parametrize("flavour", ["httpx", "httpx2"])
def test_transport_errors_in_both_flavours(flavour: str) -> None:
    h = _module(flavour)
    bare = h.ConnectError("refused")  # no request: its .request property raises RuntimeError
    with pytest.raises(RuntimeError):
        _ = bare.request
    assert classify_exception(bare) is S.PROVIDER_FAILURE
    assert classify_exception(h.ReadTimeout("slow")) is S.LLM_TIMEOUT
    assert classify_exception(h.ConnectTimeout("slow")) is S.LLM_TIMEOUT
    assert classify_exception(h.PoolTimeout("busy")) is S.LLM_TIMEOUT
    assert classify_exception(h.RemoteProtocolError("peer closed")) is S.PROVIDER_FAILURE


# -- requests ---------------------------------------------------------------------------


def test_requests_errors() -> None:
    requests = _module("requests")
    response = requests.Response()
    response.status_code = 429
    response.headers["Retry-After"] = "6"
    info = inspect_exception(requests.HTTPError("429 Client Error", response=response))
    assert info.scenario is S.RATE_LIMIT
    assert info.retry_after == 6.0
    assert classify_exception(requests.HTTPError("no response")) is S.LLM_ERROR
    assert classify_exception(requests.ConnectTimeout("slow")) is S.LLM_TIMEOUT
    assert classify_exception(requests.ReadTimeout("slow")) is S.LLM_TIMEOUT
    assert classify_exception(requests.ConnectionError("down")) is S.PROVIDER_FAILURE
    assert classify_exception(requests.exceptions.ChunkedEncodingError("cut")) is S.PROVIDER_FAILURE


# -- botocore (Bedrock) -----------------------------------------------------------------


def _boto_error(code: str, status: int, message: str = "m", **headers: str) -> Exception:
    exceptions = _module("botocore.exceptions")
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": dict(headers)},
    }
    exc: Exception = exceptions.ClientError(response, "Converse")
    return exc


@pytest.mark.parametrize(
    ("code", "status", "message", "expected"),
    [
        ("ThrottlingException", 429, "Too many requests", S.RATE_LIMIT),
        ("ModelNotReadyException", 429, "Model is not ready", S.RATE_LIMIT),
        ("ServiceQuotaExceededException", 400, "quota", S.QUOTA_EXHAUSTED),
        ("ModelTimeoutException", 408, "timeout", S.LLM_TIMEOUT),
        ("ServiceUnavailableException", 503, "unavailable", S.PROVIDER_FAILURE),
        ("InternalServerException", 500, "internal", S.PROVIDER_FAILURE),
        ("ModelErrorException", 424, "model error", S.PROVIDER_FAILURE),
        ("ValidationException", 400, "Input is too long for requested model.", S.CONTEXT_OVERFLOW),
        ("ValidationException", 400, "prompt is too long", S.CONTEXT_OVERFLOW),
        ("ValidationException", 400, "Malformed input request", S.BAD_REQUEST),
        ("AccessDeniedException", 403, "denied", S.AUTH_FAILURE),
        ("ResourceNotFoundException", 404, "no model", S.BAD_REQUEST),
    ],
)
def test_bedrock_client_errors(
    code: str, status: int, message: str, expected: FailureScenario
) -> None:
    info = inspect_exception(_boto_error(code, status, message))
    assert info.scenario is expected
    assert info.status_code == status
    assert info.provider_code == code


def test_bedrock_modeled_subclass_and_retry_after() -> None:
    exceptions = _module("botocore.exceptions")
    modeled = type("ThrottlingException", (exceptions.ClientError,), {})
    response = {
        "Error": {"Code": "ThrottlingException", "Message": "slow down"},
        "ResponseMetadata": {"HTTPStatusCode": 429, "HTTPHeaders": {"retry-after": "2"}},
    }
    info = inspect_exception(modeled(response, "Converse"))
    assert info.scenario is S.RATE_LIMIT
    assert info.retry_after == 2.0
    assert info.exception_type == "ThrottlingException"


def test_bedrock_event_stream_errors_use_lower_camel_codes() -> None:
    exceptions = _module("botocore.exceptions")
    stream = exceptions.EventStreamError(
        {"Error": {"Code": "throttlingException", "Message": "slow"}}, "ConverseStream"
    )
    assert classify_exception(stream) is S.RATE_LIMIT
    too_long = exceptions.EventStreamError(
        {
            "Error": {
                "Code": "validationException",
                "Message": "Input is too long for requested model.",
            }
        },
        "ConverseStream",
    )
    assert classify_exception(too_long) is S.CONTEXT_OVERFLOW


def test_botocore_transport_errors() -> None:
    exceptions = _module("botocore.exceptions")
    assert (
        classify_exception(exceptions.ReadTimeoutError(endpoint_url="https://x")) is S.LLM_TIMEOUT
    )
    assert (
        classify_exception(exceptions.ConnectTimeoutError(endpoint_url="https://x"))
        is S.LLM_TIMEOUT
    )
    assert (
        classify_exception(exceptions.EndpointConnectionError(endpoint_url="https://x"))
        is S.PROVIDER_FAILURE
    )
    assert classify_exception(exceptions.NoCredentialsError()) is S.AUTH_FAILURE


# -- google-api-core and google-genai ---------------------------------------------------

RETRY_INFO = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}


def test_api_core_resource_exhausted_with_retry_info() -> None:
    g = _module("google.api_core.exceptions")
    info = inspect_exception(g.ResourceExhausted("Quota exceeded", details=[RETRY_INFO]))
    assert info.scenario is S.RATE_LIMIT
    assert info.retry_after == 13.0
    assert info.status_code == 429


def test_api_core_proto_retry_info() -> None:
    g = _module("google.api_core.exceptions")
    error_details = _module("google.rpc.error_details_pb2")
    duration = _module("google.protobuf.duration_pb2")
    proto = error_details.RetryInfo(retry_delay=duration.Duration(seconds=7, nanos=250_000_000))
    info = inspect_exception(g.TooManyRequests("slow down", details=[proto]))
    assert info.scenario is S.RATE_LIMIT
    assert info.retry_after == 7.25


def test_api_core_api_key_invalid_reason_is_auth() -> None:
    g = _module("google.api_core.exceptions")
    error_details = _module("google.rpc.error_details_pb2")
    message = "API key not valid. Please pass a valid API key."
    proto = error_details.ErrorInfo(reason="API_KEY_INVALID", domain="googleapis.com")
    info = inspect_exception(g.InvalidArgument(message, details=[proto]))
    assert (info.scenario, info.provider_code) == (S.AUTH_FAILURE, "API_KEY_INVALID")
    as_dict = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}
    assert classify_exception(g.InvalidArgument(message, details=[as_dict])) is S.AUTH_FAILURE
    other = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SOMETHING_ELSE"}
    assert classify_exception(g.InvalidArgument(message, details=[other])) is S.BAD_REQUEST


def test_api_core_zero_retry_delay_is_no_hint() -> None:
    g = _module("google.api_core.exceptions")
    error_details = _module("google.rpc.error_details_pb2")
    duration = _module("google.protobuf.duration_pb2")
    proto = error_details.RetryInfo(retry_delay=duration.Duration(seconds=0))
    zero = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0s"}
    for details in ([proto], [zero]):
        info = inspect_exception(g.TooManyRequests("slow down", details=details))
        assert (info.scenario, info.retry_after) == (S.RATE_LIMIT, None)


@pytest.mark.parametrize(
    ("cls_name", "message", "expected"),
    [
        ("ServiceUnavailable", "try again", S.PROVIDER_FAILURE),
        ("InternalServerError", "oops", S.PROVIDER_FAILURE),
        ("DeadlineExceeded", "deadline", S.LLM_TIMEOUT),
        (
            "InvalidArgument",
            "The input token count (1200000) exceeds the maximum number of tokens allowed.",
            S.CONTEXT_OVERFLOW,
        ),
        ("InvalidArgument", "Invalid JSON payload", S.BAD_REQUEST),
        ("PermissionDenied", "denied", S.AUTH_FAILURE),
        ("Unauthenticated", "who are you", S.AUTH_FAILURE),
        ("NotFound", "no such model", S.BAD_REQUEST),
    ],
)
def test_api_core_errors(cls_name: str, message: str, expected: FailureScenario) -> None:
    g = _module("google.api_core.exceptions")
    assert classify_exception(getattr(g, cls_name)(message)) is expected


def test_api_core_retry_error_follows_its_cause() -> None:
    g = _module("google.api_core.exceptions")
    wrapped = g.RetryError("Timeout of 120.0s exceeded", cause=g.ServiceUnavailable("down"))
    assert classify_exception(wrapped) is S.PROVIDER_FAILURE


def test_genai_client_and_server_errors() -> None:
    errors = _module("google.genai.errors")
    limited = errors.ClientError(
        429,
        {
            "error": {
                "code": 429,
                "message": "You exceeded your current quota, please check your plan.",
                "status": "RESOURCE_EXHAUSTED",
                "details": [RETRY_INFO],
            }
        },
    )
    info = inspect_exception(limited)
    assert info.scenario is S.RATE_LIMIT
    assert info.retry_after == 13.0
    assert info.provider_code == "RESOURCE_EXHAUSTED"
    daily = errors.ClientError(
        429,
        {
            "error": {
                "code": 429,
                "message": "You exceeded your current quota.",
                "status": "RESOURCE_EXHAUSTED",
            }
        },
    )
    assert classify_exception(daily) is S.QUOTA_EXHAUSTED
    overflow = errors.ClientError(
        400,
        {
            "error": {
                "code": 400,
                "message": "The input token count (2000000) exceeds the maximum number of tokens.",
                "status": "INVALID_ARGUMENT",
            }
        },
    )
    assert classify_exception(overflow) is S.CONTEXT_OVERFLOW
    unavailable = errors.ServerError(
        503,
        {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}},
    )
    assert classify_exception(unavailable) is S.PROVIDER_FAILURE
    denied = errors.ClientError(
        403, {"error": {"code": 403, "message": "denied", "status": "PERMISSION_DENIED"}}
    )
    assert classify_exception(denied) is S.AUTH_FAILURE


def test_genai_message_numbers_are_not_statuses() -> None:
    errors = _module("google.genai.errors")
    odd = errors.ClientError(
        400,
        {"error": {"code": 400, "message": "processed 4290 rows", "status": "FAILED_PRECONDITION"}},
    )
    assert classify_exception(odd) is S.BAD_REQUEST


# -- wrappers around real errors --------------------------------------------------------


def test_tenacity_retry_error_around_an_openai_error(openai: Any, httpx2: Any) -> None:
    tenacity = _module("tenacity")
    error = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
    last = openai_error(openai, "RateLimitError", 429, error, headers={"retry-after": "5"})

    def fail() -> None:
        raise last

    retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(2), wait=tenacity.wait_none())
    with pytest.raises(tenacity.RetryError) as caught:
        retrying(fail)
    info = inspect_exception(caught.value)
    assert info.scenario is S.RATE_LIMIT
    assert info.retry_after == 5.0
    assert info.exception_type == "RateLimitError"


def test_raise_from_and_exception_groups_of_real_errors() -> None:
    overloaded = anthropic_error("OverloadedError", 529, "overloaded_error", "Overloaded")
    wrapper = RuntimeError("agent step failed")
    wrapper.__cause__ = overloaded
    assert classify_exception(wrapper) is S.PROVIDER_FAILURE
    group = ExceptionGroup("parallel calls", [ValueError("tool"), overloaded])
    assert classify_exception(group) is S.PROVIDER_FAILURE


def test_aretry_call_exhausts_on_repeated_overload(anthropic: Any) -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def call() -> None:
        raise anthropic_error(
            "OverloadedError",
            529,
            "overloaded_error",
            "Overloaded",
            headers={"retry-after": "1"},
        )

    policy = RetryPolicy(max_attempts=3, async_sleep=sleep)
    with pytest.raises(RetriesExhaustedError) as caught:
        asyncio.run(aretry_call(call, policy=policy))
    assert caught.value.attempts == 3
    assert isinstance(caught.value.__cause__, anthropic.OverloadedError)
    assert slept == [1.0, 1.0]


def test_switch_provider_is_offered_for_real_provider_failures(openai: Any, httpx2: Any) -> None:
    error = {"message": "The server is overloaded", "type": "server_error", "code": None}
    info = inspect_exception(openai_error(openai, "InternalServerError", 503, error))
    result = attempt_recovery(info.scenario, RecoveryContext(), failure=info)
    assert RecoveryStep.SWITCH_PROVIDER in result.recovered_steps


def test_json_body_round_trip_is_classified_the_same(openai: Any, httpx2: Any) -> None:
    error = {"message": "x", "type": "invalid_request_error", "code": "context_length_exceeded"}
    body: Callable[[], object] = lambda: json.loads(json.dumps(error))  # noqa: E731
    request = httpx2.Request("POST", OPENAI_URL)
    response = httpx2.Response(400, json={"error": error}, request=request)
    exc = openai.BadRequestError("x", response=response, body=body())
    assert classify_exception(exc) is S.CONTEXT_OVERFLOW
