"""The classifier on errors raised by the real SDK clients over loopback HTTP.

Each client (openai, anthropic, google-genai, botocore's bedrock-runtime) talks
to the scripted server in tests/scripted_server.py with its own retries off,
so the exception under test is exactly what the SDK raises in production:
its class, status, headers and parsed body. Hang tests use a short client
timeout (a bounded real wait); nothing sleeps.
"""

from __future__ import annotations

import asyncio
import importlib
import socket
import threading
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from techrevati.runtime.retry_policy import (
    FailureInfo,
    FailureScenario,
    RetriesExhaustedError,
    RetryPolicy,
    aretry_call,
    classify_exception,
    inspect_exception,
    retry_call,
)
from tests import scripted_server as scripted
from tests.conftest import FakeClock
from tests.scripted_server import (
    Reply,
    ScriptedServer,
    anthropic_error,
    anthropic_message,
    bedrock_error,
    converse_response,
    gemini_response,
    google_error,
    google_error_info,
    google_retry_info,
    openai_chat_completion,
    openai_chat_stream,
    openai_error,
    openai_response,
    reply,
)

if TYPE_CHECKING:
    import anthropic
    import openai

S = FailureScenario
MESSAGES: Any = [{"role": "user", "content": "hi"}]
CONVERSE_MESSAGES: Any = [{"role": "user", "content": [{"text": "hi"}]}]
HANG_TIMEOUT = 0.25  # seconds a client waits for a hanging reply


def caught(call: Callable[[], object]) -> Exception:
    """Run ``call`` and return what it raised (the test fails if it returns)."""
    try:
        call()
    except Exception as exc:
        return exc
    pytest.fail("the call returned instead of raising")


def chat(client: openai.OpenAI) -> Callable[[], object]:
    return lambda: client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def message(client: anthropic.Anthropic) -> Callable[[], object]:
    return lambda: client.messages.create(model="claude", max_tokens=16, messages=MESSAGES)


def generate(client: Any) -> Callable[[], object]:
    return lambda: client.models.generate_content(model="gemini-2.5-flash", contents="hi")


def converse(client: Any) -> Callable[[], object]:
    return lambda: client.converse(modelId="anthropic.claude", messages=CONVERSE_MESSAGES)


# -- the harness itself --------------------------------------------------------------------


def test_server_records_requests_and_repeats_the_last_reply(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.reply(200, openai_chat_completion("one"))
    scripted_server.reply(200, openai_chat_completion("two"))
    answers = [chat(openai_client)() for _ in range(3)]
    texts = [answer.choices[0].message.content for answer in answers]  # type: ignore[attr-defined]
    assert texts == ["one", "two", "two"]
    first = scripted_server.requests[0]
    assert (first.method, first.path) == ("POST", "/v1/chat/completions")
    assert first.headers["authorization"] == "Bearer test"
    assert first.json == {"model": "gpt-4o-mini", "messages": MESSAGES}


def test_responses_api_body_round_trips(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.reply(200, openai_response("cut", incomplete_reason="max_output_tokens"))
    answer = openai_client.responses.create(model="gpt-4o-mini", input="hi")
    assert (answer.status, answer.output_text) == ("incomplete", "cut")
    assert answer.usage is not None
    assert answer.usage.output_tokens == 12
    assert scripted_server.requests[0].path == "/v1/responses"


def test_a_released_hang_sends_its_reply_and_the_threads_end() -> None:
    before = set(threading.enumerate())
    with ScriptedServer() as server:
        server.reply(200, {"ok": True}, hang=True)
        server.release()  # released up front: the reply goes out at once
        with urllib.request.urlopen(server.url + "/ping", timeout=2) as response:
            assert response.read() == b'{"ok": true}'
    assert set(threading.enumerate()) <= before  # every server thread has ended


def test_close_drops_a_hanging_reply_and_joins_its_handler() -> None:
    before = set(threading.enumerate())
    with ScriptedServer(hang_limit=60.0) as server:
        server.reply(200, b"late", hang=True)
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=HANG_TIMEOUT) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            with pytest.raises(TimeoutError):
                sock.recv(1)  # nothing comes: the handler hangs
    # close() released the handler (it did not wait the 60 s) and joined its thread
    assert set(threading.enumerate()) <= before  # every server thread has ended
    assert [r.path for r in server.requests] == ["/"]


# -- openai ------------------------------------------------------------------------------


def test_openai_rate_limit_carries_the_servers_hint(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    body = openai_error(
        "Rate limit reached for requests", type="requests", code="rate_limit_exceeded"
    )
    scripted_server.reply(429, body, {"retry-after": "2", "x-request-id": "req_1"})
    info = inspect_exception(caught(chat(openai_client)))
    assert info == FailureInfo(
        S.RATE_LIMIT, True, 2.0, 429, "rate_limit_exceeded", "RateLimitError"
    )


def test_openai_insufficient_quota_429_is_quota(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    body = openai_error(
        "You exceeded your current quota, please check your plan and billing details.",
        type="insufficient_quota",
        code="insufficient_quota",
    )
    scripted_server.reply(429, body)
    info = inspect_exception(caught(chat(openai_client)))
    assert (info.scenario, info.retryable) == (S.QUOTA_EXHAUSTED, False)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (500, openai_error("The server had an error", type="server_error"), S.PROVIDER_FAILURE),
        (
            503,
            openai_error("The engine is currently overloaded", type="server_error"),
            S.PROVIDER_FAILURE,
        ),
        (401, openai_error("Incorrect API key provided", code="invalid_api_key"), S.AUTH_FAILURE),
        (
            400,
            openai_error(
                "This model's maximum context length is 128000 tokens.",
                code="context_length_exceeded",
                param="messages",
            ),
            S.CONTEXT_OVERFLOW,
        ),
        (400, openai_error("Invalid 'messages[0].role'."), S.BAD_REQUEST),
        (
            404,
            openai_error("The model `gpt-9` does not exist", code="model_not_found"),
            S.BAD_REQUEST,
        ),
    ],
)
def test_openai_status_errors(
    scripted_server: ScriptedServer,
    openai_client: openai.OpenAI,
    status: int,
    body: dict[str, Any],
    expected: FailureScenario,
) -> None:
    scripted_server.reply(status, body)
    exc = caught(chat(openai_client))
    info = inspect_exception(exc)
    assert (info.scenario, info.status_code) == (expected, status)


@pytest.mark.parametrize(
    ("status", "expected", "cls_name"),
    [(408, S.LLM_TIMEOUT, "APIStatusError"), (409, S.PROVIDER_FAILURE, "ConflictError")],
)
def test_openai_retryable_status_beats_invalid_request_error(
    scripted_server: ScriptedServer,
    openai_client: openai.OpenAI,
    status: int,
    expected: FailureScenario,
    cls_name: str,
) -> None:
    scripted_server.reply(status, openai_error("Request could not be completed."))
    info = inspect_exception(caught(chat(openai_client)))
    assert info.exception_type == cls_name
    assert info.provider_code == "invalid_request_error"
    assert (info.scenario, info.retryable) == (expected, True)


def test_openai_x_should_retry_true_on_a_400_is_retried(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI, fake_clock: FakeClock
) -> None:
    scripted_server.reply(400, openai_error("Try again."), {"x-should-retry": "true"})
    failure = caught(chat(openai_client))
    info = inspect_exception(failure)
    assert (info.scenario, info.retryable) == (S.PROVIDER_FAILURE, True)
    assert classify_exception(failure) is S.PROVIDER_FAILURE
    assert classify_exception(failure, origin="tool") is S.TOOL_EXECUTION_ERROR
    scripted_server.reply(400, openai_error("Try again."), {"x-should-retry": "true"})
    scripted_server.reply(200, openai_chat_completion("done"))
    policy = RetryPolicy(sleep=fake_clock.sleep, base_delay=1.0, jitter="none")
    answer: Any = retry_call(chat(openai_client), policy=policy)
    assert answer.choices[0].message.content == "done"
    assert len(scripted_server.requests) == 3
    assert fake_clock.slept == [1.0]  # the provider_failure recipe's backoff


def test_openai_x_should_retry_true_keeps_a_specific_diagnosis(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    body = openai_error("Incorrect API key provided", code="invalid_api_key")
    scripted_server.reply(401, body, {"x-should-retry": "true"})
    info = inspect_exception(caught(chat(openai_client)))
    assert (info.scenario, info.retryable) == (S.AUTH_FAILURE, True)


def test_openai_x_should_retry_false_is_not_retried(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI, fake_clock: FakeClock
) -> None:
    body = openai_error("The server had an error", type="server_error")
    scripted_server.reply(500, body, {"x-should-retry": "false"})
    exc = caught(chat(openai_client))
    assert inspect_exception(exc).retryable is False
    with pytest.raises(type(exc)):
        retry_call(chat(openai_client), policy=RetryPolicy(sleep=fake_clock.sleep))
    assert len(scripted_server.requests) == 2
    assert fake_clock.slept == []


@pytest.mark.parametrize(
    "headers", [{"retry-after": "0"}, {"retry-after-ms": "0", "retry-after": "5"}]
)
def test_openai_zero_retry_after_means_backoff(
    scripted_server: ScriptedServer,
    openai_client: openai.OpenAI,
    fake_clock: FakeClock,
    headers: dict[str, str],
) -> None:
    body = openai_error("Rate limit reached", type="requests", code="rate_limit_exceeded")
    scripted_server.reply(429, body, headers)
    assert inspect_exception(caught(chat(openai_client))).retry_after is None
    policy = RetryPolicy(sleep=fake_clock.sleep, base_delay=1.0, jitter="none")
    scripted_server.script(reply(429, body, headers), reply(200, openai_chat_completion()))
    retry_call(chat(openai_client), policy=policy)
    assert fake_clock.slept == [1.0]  # the backoff, as the SDKs do


def test_openai_parse_hitting_max_tokens_is_output_truncated(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    pydantic = importlib.import_module("pydantic")
    answer = pydantic.create_model("Answer", text=(str, ...))
    cut = openai_chat_completion('{"text": "the answer is', finish_reason="length")
    scripted_server.reply(200, cut)
    exc = caught(
        lambda: openai_client.chat.completions.parse(
            model="gpt-4o-mini", messages=MESSAGES, response_format=answer
        )
    )
    assert type(exc).__name__ == "LengthFinishReasonError"
    assert exc.completion.usage.completion_tokens == 12  # type: ignore[attr-defined]
    info = inspect_exception(exc)
    assert (info.scenario, info.retryable) == (S.OUTPUT_TRUNCATED, False)


def test_openai_stream_hitting_max_tokens_is_output_truncated(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    pydantic = importlib.import_module("pydantic")
    answer = pydantic.create_model("Answer", text=(str, ...))
    scripted_server.script(openai_chat_stream('{"text": "the answer', finish_reason="length"))

    def consume() -> None:
        with openai_client.chat.completions.stream(
            model="gpt-4o-mini", messages=MESSAGES, response_format=answer
        ) as stream:
            for _ in stream:
                pass

    assert classify_exception(caught(consume)) is S.OUTPUT_TRUNCATED


def test_async_openai_rate_limit_is_retried_with_the_hint(
    scripted_server: ScriptedServer,
    async_openai_client: openai.AsyncOpenAI,
    fake_clock: FakeClock,
) -> None:
    body = openai_error("Rate limit reached", type="tokens", code="rate_limit_exceeded")
    scripted_server.reply(429, body, {"retry-after-ms": "1500"})
    scripted_server.reply(200, openai_chat_completion("async"))

    async def call() -> Any:
        return await async_openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )

    policy = RetryPolicy(async_sleep=fake_clock.asleep)
    answer = asyncio.run(aretry_call(call, policy=policy))
    assert answer.choices[0].message.content == "async"
    assert fake_clock.slept == [1.5]


# -- anthropic ---------------------------------------------------------------------------


@pytest.fixture
def anthropic_sdk() -> Any:
    return importlib.import_module("anthropic")


def test_anthropic_rate_limit_carries_the_servers_hint(
    scripted_server: ScriptedServer, anthropic_client: anthropic.Anthropic
) -> None:
    body = anthropic_error(
        "rate_limit_error", "Number of request tokens has exceeded your rate limit"
    )
    scripted_server.reply(429, body, {"retry-after": "7", "request-id": "req_1"})
    info = inspect_exception(caught(message(anthropic_client)))
    assert info == FailureInfo(S.RATE_LIMIT, True, 7.0, 429, "rate_limit_error", "RateLimitError")


@pytest.mark.parametrize(
    ("error_code", "cls_name"),
    [
        ("enforced_spend_limit_reached", "EnforcedSpendLimitReachedError"),
        ("contract_spend_limit_reached", "ContractSpendLimitReachedError"),
    ],
)
def test_anthropic_spend_limit_429_is_quota(
    scripted_server: ScriptedServer,
    anthropic_client: anthropic.Anthropic,
    error_code: str,
    cls_name: str,
) -> None:
    body = anthropic_error("rate_limit_error", "Spend limit reached.", error_code=error_code)
    scripted_server.reply(429, body)
    info = inspect_exception(caught(message(anthropic_client)))
    assert info.exception_type == cls_name
    assert (info.scenario, info.retryable, info.provider_code) == (
        S.QUOTA_EXHAUSTED,
        False,
        error_code,
    )


def test_anthropic_spend_limit_is_read_from_the_body_too(anthropic_sdk: Any) -> None:
    # An SDK without the error_code attribute: the envelope alone must say it.
    httpx2 = importlib.import_module("httpx2")
    body = anthropic_error(
        "rate_limit_error", "Spend limit reached.", error_code="enforced_spend_limit_reached"
    )
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    response = httpx2.Response(429, json=body, request=request)
    exc = anthropic_sdk.RateLimitError("Spend limit reached.", response=response, body=body)
    del exc.error_code
    assert classify_exception(exc) is S.QUOTA_EXHAUSTED


INVALID = "invalid_request_error"  # anthropic's type for any 4xx without its own


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (529, anthropic_error("overloaded_error", "Overloaded"), S.PROVIDER_FAILURE),
        (500, anthropic_error("api_error", "Internal server error"), S.PROVIDER_FAILURE),
        (503, anthropic_error("api_error", "Service unavailable"), S.PROVIDER_FAILURE),
        (401, anthropic_error("authentication_error", "invalid x-api-key"), S.AUTH_FAILURE),
        (
            400,
            anthropic_error(INVALID, "prompt is too long: 210000 tokens > 200000 maximum"),
            S.CONTEXT_OVERFLOW,
        ),
        (400, anthropic_error(INVALID, "messages: field required"), S.BAD_REQUEST),
        (408, anthropic_error(INVALID, "Request timed out"), S.LLM_TIMEOUT),
        (409, anthropic_error(INVALID, "Conflict"), S.PROVIDER_FAILURE),
    ],
)
def test_anthropic_status_errors(
    scripted_server: ScriptedServer,
    anthropic_client: anthropic.Anthropic,
    status: int,
    body: dict[str, Any],
    expected: FailureScenario,
) -> None:
    scripted_server.reply(status, body)
    info = inspect_exception(caught(message(anthropic_client)))
    assert (info.scenario, info.status_code) == (expected, status)
    assert info.retryable is (expected in {S.PROVIDER_FAILURE, S.LLM_TIMEOUT})


def test_anthropic_zero_retry_after_ms_is_no_hint(
    scripted_server: ScriptedServer, anthropic_client: anthropic.Anthropic
) -> None:
    scripted_server.reply(
        529, anthropic_error("overloaded_error", "Overloaded"), {"retry-after-ms": "0"}
    )
    assert inspect_exception(caught(message(anthropic_client))).retry_after is None


def test_anthropic_message_round_trip(
    scripted_server: ScriptedServer, anthropic_client: anthropic.Anthropic
) -> None:
    scripted_server.reply(200, anthropic_message("hi there", output_tokens=3))
    answer: Any = message(anthropic_client)()
    assert answer.usage.output_tokens == 3
    request = scripted_server.requests[0]
    assert request.path == "/v1/messages"
    assert "anthropic-version" in request.headers
    assert request.json["max_tokens"] == 16


def test_async_anthropic_overload_exhausts_the_recipe(
    scripted_server: ScriptedServer,
    async_anthropic_client: anthropic.AsyncAnthropic,
    fake_clock: FakeClock,
) -> None:
    scripted_server.reply(529, anthropic_error("overloaded_error", "Overloaded"))

    async def call() -> object:
        return await async_anthropic_client.messages.create(
            model="claude", max_tokens=16, messages=MESSAGES
        )

    policy = RetryPolicy(async_sleep=fake_clock.asleep, max_attempts=3)
    with pytest.raises(RetriesExhaustedError):
        asyncio.run(aretry_call(call, policy=policy))
    assert len(scripted_server.requests) == 3
    assert len(fake_clock.slept) == 2


# -- google-genai --------------------------------------------------------------------------


def test_gemini_api_key_invalid_400_is_auth(
    scripted_server: ScriptedServer, genai_client: Any
) -> None:
    body = google_error(
        400,
        "INVALID_ARGUMENT",
        "API key not valid. Please pass a valid API key.",
        google_error_info("API_KEY_INVALID"),
    )
    scripted_server.reply(400, body)
    info = inspect_exception(caught(generate(genai_client)))
    assert info.exception_type == "ClientError"
    assert (info.scenario, info.retryable, info.provider_code) == (
        S.AUTH_FAILURE,
        False,
        "API_KEY_INVALID",
    )


def test_gemini_resource_exhausted_reads_retry_info(
    scripted_server: ScriptedServer, genai_client: Any
) -> None:
    body = google_error(
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota. Please retry in 13s.",
        google_retry_info("13s"),
    )
    scripted_server.reply(429, body)
    info = inspect_exception(caught(generate(genai_client)))
    assert (info.scenario, info.retry_after, info.status_code) == (S.RATE_LIMIT, 13.0, 429)


def test_gemini_zero_retry_info_is_no_hint(
    scripted_server: ScriptedServer, genai_client: Any
) -> None:
    body = google_error(429, "RESOURCE_EXHAUSTED", "Slow down.", google_retry_info("0s"))
    scripted_server.reply(429, body)
    assert inspect_exception(caught(generate(genai_client))).retry_after is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (google_error(500, "INTERNAL", "An internal error has occurred."), S.PROVIDER_FAILURE),
        (
            google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
            S.PROVIDER_FAILURE,
        ),
        (
            google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
            S.AUTH_FAILURE,
        ),
        (google_error(403, "PERMISSION_DENIED", "Permission denied."), S.AUTH_FAILURE),
        (
            google_error(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed "
                "(1048576).",
            ),
            S.CONTEXT_OVERFLOW,
        ),
        (google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload."), S.BAD_REQUEST),
    ],
)
def test_gemini_status_errors(
    scripted_server: ScriptedServer,
    genai_client: Any,
    body: dict[str, Any],
    expected: FailureScenario,
) -> None:
    status = body["error"]["code"]
    scripted_server.reply(status, body)
    info = inspect_exception(caught(generate(genai_client)))
    assert (info.scenario, info.status_code) == (expected, status)


def test_gemini_round_trip(scripted_server: ScriptedServer, genai_client: Any) -> None:
    scripted_server.reply(200, gemini_response("hi there", candidates_tokens=3))
    answer: Any = generate(genai_client)()
    assert answer.usage_metadata.candidates_token_count == 3
    request = scripted_server.requests[0]
    assert request.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert request.headers["x-goog-api-key"] == "test"


# -- botocore bedrock-runtime ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            bedrock_error(400, "ThrottlingException", "Too many requests, please wait."),
            S.RATE_LIMIT,
        ),
        (bedrock_error(429, "ThrottlingException", "Too many tokens, please wait."), S.RATE_LIMIT),
        (
            reply(400, {"__type": "ThrottlingException", "message": "Too many requests."}),
            S.RATE_LIMIT,
        ),
        (
            bedrock_error(400, "ValidationException", "Input is too long for requested model."),
            S.CONTEXT_OVERFLOW,
        ),
        (bedrock_error(400, "ValidationException", "Malformed input request."), S.BAD_REQUEST),
        (bedrock_error(408, "ModelTimeoutException", "Model has timed out."), S.LLM_TIMEOUT),
        (
            bedrock_error(503, "ServiceUnavailableException", "Service unavailable."),
            S.PROVIDER_FAILURE,
        ),
        (bedrock_error(500, "InternalServerException", "Internal error."), S.PROVIDER_FAILURE),
        (bedrock_error(403, "AccessDeniedException", "You don't have access."), S.AUTH_FAILURE),
        (
            bedrock_error(400, "ServiceQuotaExceededException", "Quota exceeded."),
            S.QUOTA_EXHAUSTED,
        ),
    ],
)
def test_bedrock_errors(
    scripted_server: ScriptedServer, bedrock_client: Any, answer: Reply, expected: FailureScenario
) -> None:
    scripted_server.script(answer)
    info = inspect_exception(caught(converse(bedrock_client)))
    assert (info.scenario, info.status_code) == (expected, answer.status)


def test_bedrock_throttling_retry_after_is_read(
    scripted_server: ScriptedServer, bedrock_client: Any
) -> None:
    answer = bedrock_error(429, "ThrottlingException", "Slow down.", {"retry-after": "3"})
    scripted_server.script(answer)
    info = inspect_exception(caught(converse(bedrock_client)))
    assert (info.retry_after, info.provider_code) == (3.0, "ThrottlingException")


def test_bedrock_converse_round_trip(scripted_server: ScriptedServer, bedrock_client: Any) -> None:
    scripted_server.reply(200, converse_response("hi there", output_tokens=3))
    answer: Any = converse(bedrock_client)()
    assert answer["usage"]["outputTokens"] == 3
    assert scripted_server.requests[0].path == "/model/anthropic.claude/converse"


# -- timeouts and refused connections, every SDK ---------------------------------------------


def _clients(
    url: str, timeout: float
) -> dict[str, tuple[Any, Callable[[Any], Callable[[], object]]]]:
    return {
        "openai": (lambda: scripted.openai_client(url, timeout=timeout), chat),
        "anthropic": (lambda: scripted.anthropic_client(url, timeout=timeout), message),
        "google.genai": (lambda: scripted.genai_client(url, timeout=timeout), generate),
        "botocore": (lambda: scripted.bedrock_client(url, timeout=timeout), converse),
    }


SDKS = ["openai", "anthropic", "google.genai", "botocore"]


@pytest.mark.parametrize("sdk", SDKS)
def test_client_read_timeout_is_llm_timeout(scripted_server: ScriptedServer, sdk: str) -> None:
    importlib.import_module(sdk)
    scripted_server.reply(200, {}, hang=True)
    make, call = _clients(scripted_server.url, HANG_TIMEOUT)[sdk]
    client = make()
    try:
        info = inspect_exception(caught(call(client)))
    finally:
        client.close()
    assert (info.scenario, info.retryable) == (S.LLM_TIMEOUT, True)


@pytest.mark.parametrize("sdk", SDKS)
def test_connection_refused_is_provider_failure(refused_url: str, sdk: str) -> None:
    importlib.import_module(sdk)
    make, call = _clients(refused_url, 2.0)[sdk]
    client = make()
    try:
        info = inspect_exception(caught(call(client)))
    finally:
        client.close()
    assert (info.scenario, info.retryable) == (S.PROVIDER_FAILURE, True)
