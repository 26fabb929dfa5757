"""Classification, recipes, recovery budgets, backoff and the retry loop, without any SDK.

The stand-in classes below copy the shapes the SDKs use (``status_code``,
``code``, ``body``, ``response.headers``, botocore's response dict, google's
``details``); tests/test_retry_policy_sdks.py repeats the important cases
with the real SDK objects.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import pickle
import random
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from techrevati.runtime import retry_policy as rp
from techrevati.runtime.errors import InvalidValueError, TechrevatiError, TransientRuntimeError
from techrevati.runtime.events import AgentFailureClass
from techrevati.runtime.retry_policy import (
    AUTOMATIC_STEPS,
    DEFAULT_RECIPES,
    FAILURE_CLASS_BY_SCENARIO,
    MAX_CHAIN_DEPTH,
    RETRYABLE_SCENARIOS,
    EscalationPolicy,
    FailureInfo,
    FailureScenario,
    RecoveryContext,
    RecoveryOutcome,
    RecoveryRecipe,
    RecoveryResult,
    RecoveryStep,
    RetriesExhaustedError,
    RetryAfterTooLongError,
    RetryAttempt,
    RetryPolicy,
    RetryStats,
    aattempt_recovery,
    accepts_retry_after,
    aretry_call,
    attempt_recovery,
    backoff_delay,
    classify_exception,
    failure_class_for,
    inspect_exception,
    is_testing,
    recipe_for,
    reset_recipes,
    retry_call,
    retrying,
    set_recipe,
    set_testing,
    testing,
)
from tests.conftest import examples

S = FailureScenario
HYPOTHESIS = settings(max_examples=examples(200))
NOW = 1_700_000_000.0


# -- stand-ins shaped like the SDKs' errors ------------------------------------------


class FakeResponse:
    def __init__(self, status_code: int, headers: Mapping[str, str] | None = None) -> None:
        self.status_code = status_code
        self.headers = dict(headers or {})


class APIStatusError(Exception):
    """openai/anthropic-like: status_code, response.headers, body, code, type."""

    def __init__(
        self,
        message: str,
        status_code: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: object = None,
        code: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.response = FakeResponse(status_code, headers)
        self.body = body
        self.code = code
        self.type = type


class RateLimitError(APIStatusError):
    pass


class BadRequestError(APIStatusError):
    pass


class ClientError(Exception):
    """botocore-like: .response is a dict."""

    def __init__(self, response: dict[str, object], operation: str = "Converse") -> None:
        error = response.get("Error", {})
        assert isinstance(error, dict)
        super().__init__(f"An error occurred ({error.get('Code')}) when calling {operation}")
        self.response = response


class GoogleError(Exception):
    """google.api_core-like: an int .code and a .details list."""

    code = 429

    def __init__(self, message: str, details: list[object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []


class RetryError(Exception):
    """tenacity-like: .last_attempt is a finished Future holding the last exception."""

    def __init__(self, last: BaseException) -> None:
        super().__init__("retry failed")
        future: Future[object] = Future()
        future.set_exception(last)
        self.last_attempt = future


class RaisingPropertiesError(Exception):
    """Every attribute the classifier reads raises, like httpx's .request when unset."""

    @property
    def status_code(self) -> int:
        raise RuntimeError("no status")

    @property
    def response(self) -> object:
        raise RuntimeError("The .response property has not been set.")

    @property
    def body(self) -> object:
        raise ValueError("no body")

    def __str__(self) -> str:
        raise RuntimeError("no str either")


def boto(code: str, status: int | None = None, message: str = "", **headers: str) -> ClientError:
    response: dict[str, object] = {"Error": {"Code": code, "Message": message}}
    if status is not None:
        response["ResponseMetadata"] = {"HTTPStatusCode": status, "HTTPHeaders": dict(headers)}
    return ClientError(response)


def status(code: int, message: str = "", **headers: str) -> APIStatusError:
    return APIStatusError(message or f"status {code}", code, headers=headers)


@pytest.fixture(autouse=True)
def _clean_globals() -> Iterator[None]:
    reset_recipes()
    set_testing(False)
    yield
    reset_recipes()
    set_testing(False)


class Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)

    async def asleep(self, seconds: float) -> None:
        self.slept.append(seconds)


# -- the scenario table ----------------------------------------------------------------


def test_every_scenario_maps_to_a_failure_class() -> None:
    assert set(FAILURE_CLASS_BY_SCENARIO) == set(FailureScenario)
    for scenario in FailureScenario:
        assert isinstance(failure_class_for(scenario), AgentFailureClass)
    assert failure_class_for(S.TOOL_EXECUTION_ERROR) is AgentFailureClass.TOOL_ERROR
    assert failure_class_for(S.DEPENDENCY_TIMEOUT) is AgentFailureClass.DEPENDENCY_FAILED
    assert failure_class_for(S.LLM_ERROR) is AgentFailureClass.UNKNOWN


def test_failure_class_for_rejects_a_non_scenario() -> None:
    with pytest.raises(InvalidValueError, match="scenario must be a FailureScenario"):
        failure_class_for("nope")  # type: ignore[arg-type]


def test_every_scenario_has_a_default_recipe_of_its_own() -> None:
    assert set(DEFAULT_RECIPES) == set(FailureScenario)
    for scenario, recipe in DEFAULT_RECIPES.items():
        assert recipe.scenario is scenario


def _recipe_table() -> dict[str, list[str]]:
    """The rows of docs/retry_policy.md's table of scenarios, by scenario."""
    text = (Path(__file__).parent.parent / "docs" / "retry_policy.md").read_text("utf-8")
    section = text.split("## Scenarios and their default recipes", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| `")]
    return {cells[0].strip(" `"): [cell.strip(" `") for cell in cells[1:]] for cells in rows}


def test_default_recipes_are_the_documented_table() -> None:
    table = _recipe_table()
    # The paragraph after the table gives output_truncated's recipe: one caller's step.
    table.setdefault(
        "output_truncated", ["no", "raise_output_limit", "1", "abort", "OUTPUT_TRUNCATED"]
    )
    assert set(table) == {scenario.value for scenario in FailureScenario}
    for name, (retryable, steps, attempts, escalation, failure_class) in table.items():
        scenario = FailureScenario(name)
        assert DEFAULT_RECIPES[scenario].to_dict() == {
            "scenario": name,
            "steps": steps.split(", "),
            "max_attempts": int(attempts),
            "escalation_policy": escalation,
        }, name
        assert (scenario in RETRYABLE_SCENARIOS) is (retryable == "yes"), name
        assert failure_class_for(scenario) is AgentFailureClass[failure_class], name


@pytest.mark.parametrize(
    "scenario", [S.AUTH_FAILURE, S.BAD_REQUEST, S.CONTENT_POLICY, S.QUOTA_EXHAUSTED]
)
def test_non_retryable_scenarios_escalate_at_once(scenario: FailureScenario) -> None:
    assert scenario not in RETRYABLE_SCENARIOS
    assert DEFAULT_RECIPES[scenario].max_attempts == 0
    result = attempt_recovery(scenario, RecoveryContext())
    assert result.outcome == "escalation_required"
    assert result.exhausted is False


def test_scenarios_compare_equal_to_their_strings() -> None:
    rate_limit: str = "rate_limit"
    recovered: str = "recovered"
    assert rate_limit == S.RATE_LIMIT
    assert recovered == RecoveryOutcome.RECOVERED
    assert asyncio.TimeoutError is TimeoutError  # so asyncio timeouts are llm_timeout too
    assert pickle.loads(pickle.dumps(S.CONTEXT_OVERFLOW)) is S.CONTEXT_OVERFLOW


# -- classification: structured signals ------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (400, S.BAD_REQUEST),
        (401, S.AUTH_FAILURE),
        (402, S.QUOTA_EXHAUSTED),
        (403, S.AUTH_FAILURE),
        (404, S.BAD_REQUEST),
        (408, S.LLM_TIMEOUT),
        (409, S.PROVIDER_FAILURE),
        (413, S.CONTEXT_OVERFLOW),
        (418, S.BAD_REQUEST),
        (422, S.BAD_REQUEST),
        (429, S.RATE_LIMIT),
        (500, S.PROVIDER_FAILURE),
        (502, S.PROVIDER_FAILURE),
        (503, S.PROVIDER_FAILURE),
        (504, S.LLM_TIMEOUT),
        (529, S.PROVIDER_FAILURE),
    ],
)
def test_status_codes_map_to_scenarios(code: int, expected: FailureScenario) -> None:
    assert classify_exception(status(code)) is expected


def test_status_is_read_from_status_code_response_code_and_status() -> None:
    class FromResponseError(Exception):
        def __init__(self) -> None:
            super().__init__("x")
            self.response = FakeResponse(429)

    class IntCodeError(Exception):
        code = 503

    class StrCodeError(Exception):
        code = "429"  # litellm keeps the status as a string

    class IntStatusError(Exception):
        status = 401  # aiohttp's ClientResponseError

    assert classify_exception(FromResponseError()) is S.RATE_LIMIT
    assert classify_exception(IntCodeError()) is S.PROVIDER_FAILURE
    assert classify_exception(StrCodeError()) is S.RATE_LIMIT
    assert classify_exception(IntStatusError()) is S.AUTH_FAILURE


def test_a_success_status_is_no_signal_but_the_type_is() -> None:
    # anthropic mid-stream: APIStatusError with status 200 and type overloaded_error
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    exc = APIStatusError("Overloaded", 200, body=body, type="overloaded_error")
    info = inspect_exception(exc)
    assert info.scenario is S.PROVIDER_FAILURE
    assert info.status_code == 200
    assert info.provider_code == "overloaded_error"
    assert info.retryable


def test_the_envelope_body_alone_is_enough() -> None:
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert classify_exception(APIStatusError("Overloaded", 200, body=body)) is S.PROVIDER_FAILURE


def test_insufficient_quota_429_is_quota_not_rate_limit() -> None:
    body = {"message": "You exceeded your current quota", "code": "insufficient_quota"}
    exc = RateLimitError("quota", 429, body=body, code="insufficient_quota")
    info = inspect_exception(exc)
    assert info.scenario is S.QUOTA_EXHAUSTED
    assert not info.retryable
    assert info.provider_code == "insufficient_quota"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("context_length_exceeded", S.CONTEXT_OVERFLOW),
        ("content_policy_violation", S.CONTENT_POLICY),
        ("content_filter", S.CONTENT_POLICY),
        ("invalid_api_key", S.AUTH_FAILURE),
        ("model_not_found", S.BAD_REQUEST),
    ],
)
def test_openai_codes_beat_the_generic_400(code: str, expected: FailureScenario) -> None:
    exc = BadRequestError(
        "bad", 400, body={"code": code, "type": "invalid_request_error"}, code=code
    )
    assert classify_exception(exc) is expected


@pytest.mark.parametrize(
    ("code", "http", "expected"),
    [
        ("ThrottlingException", 429, S.RATE_LIMIT),
        ("ModelNotReadyException", 429, S.RATE_LIMIT),
        ("ServiceQuotaExceededException", 400, S.QUOTA_EXHAUSTED),
        ("ModelTimeoutException", 408, S.LLM_TIMEOUT),
        ("ServiceUnavailableException", 503, S.PROVIDER_FAILURE),
        ("InternalServerException", 500, S.PROVIDER_FAILURE),
        ("ModelErrorException", 424, S.PROVIDER_FAILURE),
        ("ModelStreamErrorException", 424, S.PROVIDER_FAILURE),
        ("AccessDeniedException", 403, S.AUTH_FAILURE),
        ("ResourceNotFoundException", 404, S.BAD_REQUEST),
        ("ValidationException", 400, S.BAD_REQUEST),
    ],
)
def test_botocore_error_codes(code: str, http: int, expected: FailureScenario) -> None:
    info = inspect_exception(boto(code, http))
    assert info.scenario is expected
    assert info.status_code == http
    assert info.provider_code == code


def test_botocore_stream_codes_are_lower_camel_and_have_no_metadata() -> None:
    assert classify_exception(boto("throttlingException")) is S.RATE_LIMIT
    assert classify_exception(boto("modelStreamErrorException")) is S.PROVIDER_FAILURE
    too_long = boto("validationException", message="Input is too long for requested model.")
    assert classify_exception(too_long) is S.CONTEXT_OVERFLOW


def test_google_status_strings_and_int_codes() -> None:
    class GenaiClientError(Exception):
        def __init__(self, code: int, status: str, message: str) -> None:
            super().__init__(f"{code} {status}. {message}")
            self.code = code
            self.status = status
            self.message = message

    assert (
        classify_exception(GenaiClientError(503, "UNAVAILABLE", "try later")) is S.PROVIDER_FAILURE
    )
    assert classify_exception(GenaiClientError(403, "PERMISSION_DENIED", "no")) is S.AUTH_FAILURE
    long_input = GenaiClientError(
        400,
        "INVALID_ARGUMENT",
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
    )
    assert classify_exception(long_input) is S.CONTEXT_OVERFLOW


# -- classification: class names --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("RateLimitError", S.RATE_LIMIT),
        ("APITimeoutError", S.LLM_TIMEOUT),
        ("APIConnectionError", S.PROVIDER_FAILURE),
        ("ReadTimeout", S.LLM_TIMEOUT),
        ("RemoteProtocolError", S.PROVIDER_FAILURE),
        ("EndpointConnectionError", S.PROVIDER_FAILURE),
        ("DeadlineExceeded", S.LLM_TIMEOUT),
        ("AuthenticationError", S.AUTH_FAILURE),
        ("NoCredentialsError", S.AUTH_FAILURE),
        ("ContextWindowExceededError", S.CONTEXT_OVERFLOW),
        ("ContentPolicyViolationError", S.CONTENT_POLICY),
        ("ContentFilterFinishReasonError", S.CONTENT_POLICY),
        ("LengthFinishReasonError", S.OUTPUT_TRUNCATED),
        ("BudgetExceededError", S.QUOTA_EXHAUSTED),
        ("ToolException", S.TOOL_EXECUTION_ERROR),
        ("UnpicklingError", S.MEMORY_CORRUPTION),
        ("SomethingElseEntirely", S.LLM_ERROR),
    ],
)
def test_class_names_classify_without_status(name: str, expected: FailureScenario) -> None:
    cls = type(name, (Exception,), {})
    assert classify_exception(cls("x")) is expected


def test_names_are_read_along_the_mro_most_derived_first() -> None:
    base = type("APIConnectionError", (Exception,), {})
    timeout = type("APITimeoutError", (base,), {})
    custom = type("MyProviderTimeout", (timeout,), {})
    assert classify_exception(custom("x")) is S.LLM_TIMEOUT
    assert classify_exception(base("x")) is S.PROVIDER_FAILURE


def test_specific_names_beat_the_generic_400_status() -> None:
    # litellm: ContextWindowExceededError subclasses openai's BadRequestError (400)
    bad_request = type("BadRequestError", (APIStatusError,), {})
    overflow = type("ContextWindowExceededError", (bad_request,), {})
    policy = type("ContentPolicyViolationError", (bad_request,), {})
    assert classify_exception(overflow("litellm error", 400)) is S.CONTEXT_OVERFLOW
    assert classify_exception(policy("litellm error", 400)) is S.CONTENT_POLICY
    assert classify_exception(bad_request("bad", 400)) is S.BAD_REQUEST


def test_a_status_beats_an_ordinary_name() -> None:
    # litellm's APIConnectionError carries status 500; a "RateLimitError" with 503 is a 503
    assert classify_exception(RateLimitError("weird", 503)) is S.PROVIDER_FAILURE


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TimeoutError("slow"), S.LLM_TIMEOUT),
        (ConnectionError("down"), S.PROVIDER_FAILURE),
        (ConnectionResetError("reset"), S.PROVIDER_FAILURE),
        (BrokenPipeError(), S.PROVIDER_FAILURE),
        (MemoryError(), S.MEMORY_CORRUPTION),
        (pickle.UnpicklingError("truncated"), S.MEMORY_CORRUPTION),
        (ValueError("bad"), S.LLM_ERROR),
        (KeyError("timed out"), S.LLM_ERROR),
        (RuntimeError("boom"), S.LLM_ERROR),
        (Exception(), S.LLM_ERROR),
    ],
)
def test_builtins(exc: Exception, expected: FailureScenario) -> None:
    assert classify_exception(exc) is expected


def test_tool_origin_turns_timeouts_and_the_default_into_tool_scenarios() -> None:
    assert classify_exception(TimeoutError(), origin="tool") is S.DEPENDENCY_TIMEOUT
    assert classify_exception(ValueError("x"), origin="tool") is S.TOOL_EXECUTION_ERROR
    assert classify_exception(status(429), origin="tool") is S.RATE_LIMIT
    wrapped = RuntimeError("tool failed")
    wrapped.__cause__ = TimeoutError()
    assert classify_exception(wrapped, origin="tool") is S.DEPENDENCY_TIMEOUT


def test_bad_origin_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="origin must be 'model' or 'tool'"):
        classify_exception(ValueError(), origin="human")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "exc", [KeyboardInterrupt(), SystemExit(1), asyncio.CancelledError(), GeneratorExit()]
)
def test_base_exceptions_are_not_for_classification(exc: BaseException) -> None:
    with pytest.raises(InvalidValueError, match="not failures"):
        classify_exception(exc)
    with pytest.raises(InvalidValueError, match="not failures"):
        inspect_exception(exc)


# -- classification: message phrases, the last resort ----------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 8192 tokens",
        "prompt is too long: 210000 tokens > 200000 maximum",
        "Input is too long for requested model.",
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
        "error code: context_length_exceeded",
        "Please reduce the length of the messages.",
        "This request exceeds the model's context window.",
    ],
)
def test_context_phrases_refine_a_400(message: str) -> None:
    assert classify_exception(BadRequestError(message, 400)) is S.CONTEXT_OVERFLOW
    # OpenAI-compatible providers put it under a generic code
    generic = BadRequestError(message, 400, code="invalid_request_error")
    assert classify_exception(generic) is S.CONTEXT_OVERFLOW


def test_content_and_quota_phrases_refine_a_400() -> None:
    azure = (
        "The response was filtered due to the prompt triggering "
        "Azure OpenAI's content management policy."
    )
    assert classify_exception(BadRequestError(azure, 400)) is S.CONTENT_POLICY
    billing = "Your credit balance is too low to access the Anthropic API."
    assert classify_exception(BadRequestError(billing, 400)) is S.QUOTA_EXHAUSTED


def test_phrases_are_read_from_the_body_too() -> None:
    body = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "prompt is too long"},
    }
    exc = BadRequestError("Error code: 400", 400, body=body)
    assert classify_exception(exc) is S.CONTEXT_OVERFLOW


def test_phrases_never_override_a_decisive_status() -> None:
    assert classify_exception(status(503, "maximum context length")) is S.PROVIDER_FAILURE
    assert classify_exception(status(401, "prompt is too long")) is S.AUTH_FAILURE


@pytest.mark.parametrize(
    "message",
    [
        "processed 4290 rows",
        "HTTP 429",
        "got 503 items",
        "error 401 in row 12",
        "413 bytes written",
        "the context is long",
    ],
)
def test_bare_numbers_in_messages_are_never_statuses(message: str) -> None:
    assert classify_exception(RuntimeError(message)) is S.LLM_ERROR


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("Rate limit exceeded for this key", S.RATE_LIMIT),
        ("too many requests, slow down", S.RATE_LIMIT),
        ("the request timed out", S.LLM_TIMEOUT),
        ("upstream model is overloaded", S.PROVIDER_FAILURE),
        ("503 Service Unavailable", S.PROVIDER_FAILURE),
        ("You exceeded your current quota", S.QUOTA_EXHAUSTED),
    ],
)
def test_phrases_classify_unknown_exceptions_last(message: str, expected: FailureScenario) -> None:
    assert classify_exception(RuntimeError(message)) is expected


def test_quota_words_on_a_429_with_a_wait_hint_are_a_rate_limit() -> None:
    # Gemini's per-minute limit says "exceeded your current quota" and "retry in 13s"
    text = "You exceeded your current quota, please check your plan and billing details."
    hinted = RateLimitError(text, 429, headers={"retry-after": "13"})
    assert classify_exception(hinted) is S.RATE_LIMIT
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}
    assert classify_exception(GoogleError(text, [retry_info])) is S.RATE_LIMIT
    assert classify_exception(RateLimitError(text, 429)) is S.QUOTA_EXHAUSTED


# -- classification: robustness --------------------------------------------------------


def test_attribute_reads_that_raise_never_break_classification() -> None:
    assert classify_exception(RaisingPropertiesError()) is S.LLM_ERROR
    info = inspect_exception(RaisingPropertiesError())
    assert info.exception_type == "RaisingPropertiesError"
    assert info.status_code is None


def test_headers_whose_lookup_raises_are_ignored() -> None:
    class BadHeaders:
        def get(self, key: str) -> str:
            raise RuntimeError(key)

    exc = status(429)
    exc.response.headers = BadHeaders()  # type: ignore[assignment]
    info = inspect_exception(exc)
    assert info.scenario is S.RATE_LIMIT
    assert info.retry_after is None


def test_odd_attribute_types_are_ignored() -> None:
    class OddError(Exception):
        status_code = True  # a bool is not a status
        code = 1006  # a websocket close code is not an HTTP status
        type = 42
        body = ("not", "a", "mapping")
        response = 7
        details = "nope"

    info = inspect_exception(OddError())
    assert info.scenario is S.LLM_ERROR
    assert info.status_code is None


# -- classification: chains and wrappers -----------------------------------------------


def test_an_explicit_cause_is_followed() -> None:
    def call() -> None:
        try:
            raise status(429)
        except APIStatusError as inner:
            raise RuntimeError("turn failed") from inner

    with pytest.raises(RuntimeError) as caught:
        call()
    assert classify_exception(caught.value) is S.RATE_LIMIT
    assert inspect_exception(caught.value).exception_type == "APIStatusError"


def test_an_implicit_context_is_followed_unless_suppressed() -> None:
    def call(suppress: bool) -> None:
        try:
            raise TimeoutError
        except TimeoutError:
            if suppress:
                raise RuntimeError("while handling") from None
            raise RuntimeError("while handling")  # noqa: B904

    with pytest.raises(RuntimeError) as suppressed:
        call(suppress=True)
    assert classify_exception(suppressed.value) is S.LLM_ERROR
    with pytest.raises(RuntimeError) as implicit:
        call(suppress=False)
    assert classify_exception(implicit.value) is S.LLM_TIMEOUT


def test_the_outer_signal_wins_over_its_cause() -> None:
    outer = TimeoutError("gave up")
    outer.__cause__ = status(429)
    assert classify_exception(outer) is S.LLM_TIMEOUT


def test_a_generic_bad_request_yields_to_a_specific_cause() -> None:
    outer = BadRequestError("bad request", 400)
    outer.__cause__ = BadRequestError("x", 400, code="context_length_exceeded")
    assert classify_exception(outer) is S.CONTEXT_OVERFLOW
    plain = BadRequestError("bad request", 400)
    plain.__cause__ = status(503)
    assert classify_exception(plain) is S.BAD_REQUEST


def test_a_structured_cause_beats_the_wrappers_message() -> None:
    outer = RuntimeError("the request timed out")
    outer.__cause__ = status(429)
    assert classify_exception(outer) is S.RATE_LIMIT
    alone = RuntimeError("the request timed out")
    assert classify_exception(alone) is S.LLM_TIMEOUT


def test_phrases_are_tried_nearest_first_when_nothing_is_structured() -> None:
    outer = RuntimeError("agent step failed")
    outer.__cause__ = RuntimeError("prompt is too long")
    info = inspect_exception(outer)
    assert info.scenario is S.CONTEXT_OVERFLOW
    assert info.exception_type == "RuntimeError"


def test_dynamic_attributes_via_getattr_are_read() -> None:
    class DynamicError(Exception):
        def __getattr__(self, name: str) -> object:
            if name == "status_code":
                return 503
            raise AttributeError(name)

    assert classify_exception(DynamicError()) is S.PROVIDER_FAILURE


def test_urllib_http_error_headers_are_read() -> None:
    import urllib.error
    from email.message import Message

    headers = Message()
    headers["Retry-After"] = "8"
    exc = urllib.error.HTTPError("https://example.com", 429, "Too Many Requests", headers, None)
    info = inspect_exception(exc)
    assert info.scenario is S.RATE_LIMIT
    assert info.retry_after == 8.0
    assert info.status_code == 429


def test_repeated_failures_without_hints_give_equal_infos() -> None:
    first, second = inspect_exception(status(503)), inspect_exception(status(503))
    assert first == second
    assert first.retry_after is None


def test_exception_group_members_are_followed_in_order() -> None:
    group = ExceptionGroup("calls", [ValueError("x"), status(429), status(401)])
    assert classify_exception(group) is S.RATE_LIMIT
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [TimeoutError()])])
    assert classify_exception(nested) is S.LLM_TIMEOUT


def test_a_base_exception_group_of_only_cancellations_is_refused() -> None:
    group = BaseExceptionGroup("cancelled", [asyncio.CancelledError()])
    with pytest.raises(InvalidValueError):
        classify_exception(group)


def test_tenacity_like_last_attempt_is_followed() -> None:
    info = inspect_exception(RetryError(status(503, **{"retry-after": "2"})))
    assert info.scenario is S.PROVIDER_FAILURE
    assert info.retry_after == 2.0
    assert info.status_code == 503


def test_a_pending_future_is_never_waited_on() -> None:
    exc = RetryError(ValueError())
    exc.last_attempt = Future()
    assert classify_exception(exc) is S.LLM_ERROR


def test_api_core_like_cause_attribute_is_followed() -> None:
    class ApiCoreRetryError(Exception):
        def __init__(self, message: str, cause: Exception) -> None:
            super().__init__(message)
            self.message = message
            self.cause = cause

    assert classify_exception(ApiCoreRetryError("deadline", status(503))) is S.PROVIDER_FAILURE


def test_cycles_terminate() -> None:
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert classify_exception(a) is S.LLM_ERROR
    group = ExceptionGroup("g", [a])
    a.__context__ = group
    assert classify_exception(group) is S.LLM_ERROR


def test_depth_is_limited() -> None:
    deepest: Exception = status(429)
    chain = deepest
    for _ in range(MAX_CHAIN_DEPTH + 2):
        outer = RuntimeError("wrapper")
        outer.__cause__ = chain
        chain = outer
    assert classify_exception(chain) is S.LLM_ERROR
    shallow = RuntimeError("wrapper")
    shallow.__cause__ = deepest
    assert classify_exception(shallow) is S.RATE_LIMIT


def test_wide_groups_are_limited() -> None:
    members: list[Exception] = [RuntimeError(str(i)) for i in range(200)]
    members.append(status(429))
    assert classify_exception(ExceptionGroup("wide", members)) is S.LLM_ERROR


# -- wait hints -------------------------------------------------------------------------


def test_retry_after_ms_takes_precedence() -> None:
    info = inspect_exception(status(429, **{"retry-after-ms": "1500", "retry-after": "9"}))
    assert info.retry_after == 1.5


def test_retry_after_seconds_and_http_date() -> None:
    assert inspect_exception(status(429, **{"retry-after": "7"})).retry_after == 7.0
    assert inspect_exception(status(429, **{"retry-after": " 2.5 "})).retry_after == 2.5
    when = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)
    info = inspect_exception(status(503, **{"retry-after": when}), clock=lambda: NOW)
    assert info.retry_after == 30.0
    past = format_datetime(datetime.fromtimestamp(NOW - 30, UTC), usegmt=True)
    assert (
        inspect_exception(status(503, **{"retry-after": past}), clock=lambda: NOW).retry_after
        == 0.0
    )


@pytest.mark.parametrize("value", ["soon", "-5", "nan", "inf", ""])
def test_unusable_retry_after_is_ignored(value: str) -> None:
    assert inspect_exception(status(429, **{"retry-after": value})).retry_after is None


def test_header_lookup_is_case_insensitive_on_plain_dicts() -> None:
    exc = status(429)
    exc.response.headers = {"Retry-After": "4", "X-Should-Retry": "false"}
    info = inspect_exception(exc)
    assert info.retry_after == 4.0
    assert info.retryable is False


def test_headers_as_bytes_are_decoded() -> None:
    exc = status(429)
    exc.response.headers = {"retry-after": b"3"}  # type: ignore[dict-item]
    assert inspect_exception(exc).retry_after == 3.0


def test_botocore_http_headers_are_read() -> None:
    info = inspect_exception(boto("ThrottlingException", 429, **{"retry-after": "5"}))
    assert info.retry_after == 5.0


def test_x_should_retry_overrides_the_status_rule() -> None:
    assert inspect_exception(status(500, **{"x-should-retry": "false"})).retryable is False
    assert inspect_exception(status(400, **{"x-should-retry": "true"})).retryable is True
    assert inspect_exception(status(500, **{"x-should-retry": "maybe"})).retryable is True


def test_google_retry_info_in_details() -> None:
    info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "13s"}
    other = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []}
    assert inspect_exception(GoogleError("slow down", [other, info])).retry_after == 13.0
    half = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.5s"}
    assert inspect_exception(GoogleError("slow down", [half])).retry_after == 0.5
    bad = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "soon"}
    assert inspect_exception(GoogleError("slow down", [bad])).retry_after is None


def test_genai_response_json_details() -> None:
    class GenaiError(Exception):
        code = 429
        status = "RESOURCE_EXHAUSTED"

        def __init__(self, response_json: dict[str, object]) -> None:
            super().__init__("429 RESOURCE_EXHAUSTED")
            self.details = response_json

    detail = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "21s"}
    exc = GenaiError({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "details": [detail]}})
    info = inspect_exception(exc)
    assert info.scenario is S.RATE_LIMIT
    assert info.retry_after == 21.0
    assert info.provider_code == "RESOURCE_EXHAUSTED"


def test_proto_like_retry_info_objects() -> None:
    class Duration:
        def __init__(self, seconds: int, nanos: int) -> None:
            self.seconds = seconds
            self.nanos = nanos

    class RetryInfo:
        def __init__(self, delay: object) -> None:
            self.retry_delay = delay

    proto = GoogleError("x", [RetryInfo(Duration(13, 500_000_000))])
    assert inspect_exception(proto).retry_after == 13.5
    plus = GoogleError("x", [RetryInfo(timedelta(seconds=4))])
    assert inspect_exception(plus).retry_after == 4.0


def test_failure_info_validates_and_names_its_class() -> None:
    info = FailureInfo(S.RATE_LIMIT, retryable=True, retry_after=1.0)
    assert info.failure_class is AgentFailureClass.RATE_LIMIT
    with pytest.raises(InvalidValueError, match="retry_after"):
        FailureInfo(S.RATE_LIMIT, retryable=True, retry_after=-1.0)
    with pytest.raises(InvalidValueError, match="retry_after"):
        FailureInfo(S.RATE_LIMIT, retryable=True, retry_after=math.nan)
    with pytest.raises(InvalidValueError, match="scenario"):
        FailureInfo("rate_limit", retryable=True)  # type: ignore[arg-type]


# -- recipes ----------------------------------------------------------------------------


def test_recipes_validate_their_fields() -> None:
    ok = RecoveryRecipe("rate_limit", ["wait_for_retry_after"], 2, "alert_human")  # type: ignore[arg-type]
    assert ok.scenario is S.RATE_LIMIT
    assert ok.steps == (RecoveryStep.WAIT_FOR_RETRY_AFTER,)
    assert ok.escalation_policy is EscalationPolicy.ALERT_HUMAN
    bad: list[tuple[dict[str, object], str]] = [
        ({"steps": ()}, "must not be empty"),
        ({"steps": "retry_tool"}, "sequence of RecoveryStep"),
        ({"steps": ("jump",)}, "RecoveryStep values"),
        ({"steps": (RecoveryStep.RETRY_TOOL, RecoveryStep.RETRY_TOOL)}, "must not repeat"),
        ({"steps": (RecoveryStep.ESCALATE, RecoveryStep.RETRY_TOOL)}, "ESCALATE must be the last"),
        ({"max_attempts": -1}, "max_attempts must be an int >= 0"),
        ({"max_attempts": True}, "max_attempts"),
        ({"escalation_policy": "panic"}, "escalation_policy"),
        ({"scenario": "nope"}, "scenario must be a FailureScenario"),
    ]
    for change, message in bad:
        fields: dict[str, object] = {
            "scenario": S.RATE_LIMIT,
            "steps": (RecoveryStep.RETRY_TOOL,),
            "max_attempts": 1,
            **change,
        }
        with pytest.raises(InvalidValueError, match=message):
            RecoveryRecipe(**fields)  # type: ignore[arg-type]


def test_escalate_may_only_come_last_and_alone_is_fine() -> None:
    alone = RecoveryRecipe(S.BAD_REQUEST, (RecoveryStep.ESCALATE,), 0)
    assert alone.steps == (RecoveryStep.ESCALATE,)
    last = RecoveryRecipe(S.BAD_REQUEST, (RecoveryStep.RETRY_TOOL, RecoveryStep.ESCALATE), 1)
    assert last.steps[-1] is RecoveryStep.ESCALATE
    middle = (RecoveryStep.RETRY_TOOL, RecoveryStep.ESCALATE, RecoveryStep.REDUCE_CONTEXT)
    with pytest.raises(InvalidValueError) as info:
        RecoveryRecipe(S.BAD_REQUEST, middle, 1)
    assert str(info.value) == f"ESCALATE must be the last step, got {middle!r}"
    with pytest.raises(InvalidValueError) as info:
        RecoveryRecipe(S.BAD_REQUEST, (), 1)
    assert str(info.value) == "steps must not be empty, got ()"


def test_recipe_to_dict_is_plain() -> None:
    assert DEFAULT_RECIPES[S.RATE_LIMIT].to_dict() == {
        "scenario": "rate_limit",
        "steps": ["wait_for_retry_after"],
        "max_attempts": 5,
        "escalation_policy": "abort",
    }


def test_set_recipe_overrides_globally_until_reset() -> None:
    mine = RecoveryRecipe(S.BAD_REQUEST, (RecoveryStep.SWITCH_PROVIDER,), 1)
    set_recipe(mine)
    assert recipe_for(S.BAD_REQUEST) is mine
    assert RecoveryContext().recipe_for("bad_request") is mine
    reset_recipes()
    assert recipe_for(S.BAD_REQUEST) is DEFAULT_RECIPES[S.BAD_REQUEST]
    with pytest.raises(InvalidValueError, match="RecoveryRecipe"):
        set_recipe("nope")  # type: ignore[arg-type]


def test_context_recipes_beat_the_global_ones() -> None:
    mine = RecoveryRecipe(S.RATE_LIMIT, (RecoveryStep.SWITCH_PROVIDER,), 1)
    glob = RecoveryRecipe(S.RATE_LIMIT, (RecoveryStep.RETRY_WITH_BACKOFF,), 9)
    set_recipe(glob)
    ctx = RecoveryContext(recipes={S.RATE_LIMIT: mine})
    assert recipe_for(S.RATE_LIMIT, ctx) is mine
    assert recipe_for(S.RATE_LIMIT) is glob
    assert RecoveryContext().recipe_for(S.RATE_LIMIT) is glob


def test_context_recipes_are_checked() -> None:
    wrong = RecoveryRecipe(S.RATE_LIMIT, (RecoveryStep.RETRY_TOOL,), 1)
    with pytest.raises(InvalidValueError, match="is the recipe of 'rate_limit'"):
        RecoveryContext(recipes={S.BAD_REQUEST: wrong})
    with pytest.raises(InvalidValueError, match="must be a RecoveryRecipe"):
        RecoveryContext(recipes={S.BAD_REQUEST: "x"})  # type: ignore[dict-item]
    with pytest.raises(InvalidValueError, match="max_total_attempts"):
        RecoveryContext(max_total_attempts=-1)
    with pytest.raises(InvalidValueError, match="history_size"):
        RecoveryContext(history_size=-1)


def test_set_recipe_from_many_threads_keeps_every_scenario() -> None:
    recipes = [
        RecoveryRecipe(scenario, (RecoveryStep.RETRY_TOOL,), 7) for scenario in FailureScenario
    ]

    def work(recipe: RecoveryRecipe) -> None:
        for _ in range(200):
            set_recipe(recipe)

    threads = [threading.Thread(target=work, args=(r,)) for r in recipes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(recipe_for(s).max_attempts == 7 for s in FailureScenario)


# -- attempt_recovery -------------------------------------------------------------------


def test_the_seed_flow_recovers_a_rate_limit_and_escalates_an_auth_failure() -> None:
    told: list[str] = []
    calls: list[int] = []

    def call_model(prompt: str) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RateLimitError("slow down", 429)
        return "ok"

    def notify_human(reason: str) -> None:
        told.append(reason)

    ctx = RecoveryContext()
    prompt = "hi"
    response = None
    try:
        response = call_model(prompt)
    except Exception as exc:
        scenario = classify_exception(exc)
        result = attempt_recovery(scenario, ctx)
        if result.outcome == "recovered":
            response = call_model(prompt)
        elif result.outcome == "escalation_required":
            notify_human(result.reason)
    assert response == "ok"
    assert result.recovered_steps == (RecoveryStep.WAIT_FOR_RETRY_AFTER,)
    assert ctx.attempts(S.RATE_LIMIT) == 1
    escalated = attempt_recovery(classify_exception(status(401)), ctx)
    assert escalated.outcome == "escalation_required"
    assert "auth_failure is not retryable" in escalated.reason
    assert escalated.remaining_steps == (RecoveryStep.REFRESH_CREDENTIALS,)
    assert escalated.escalation_policy is EscalationPolicy.ALERT_HUMAN


def test_provider_failure_asks_to_switch_provider() -> None:
    result = attempt_recovery(S.PROVIDER_FAILURE, RecoveryContext())
    assert result.outcome == "recovered"
    assert RecoveryStep.SWITCH_PROVIDER in result.recovered_steps
    assert result.remaining_steps == ()
    assert 0.0 <= result.delay_seconds <= 0.5


def test_budget_is_per_scenario_and_per_context() -> None:
    ctx = RecoveryContext()
    results = [attempt_recovery(S.PROVIDER_FAILURE, ctx) for _ in range(4)]
    assert [r.outcome for r in results] == ["recovered"] * 3 + ["escalation_required"]
    assert [r.attempt for r in results] == [1, 2, 3, 3]
    assert results[-1].exhausted
    assert "all 3 recovery attempt(s) for provider_failure used" in results[-1].reason
    assert ctx.attempts(S.PROVIDER_FAILURE) == 3
    assert ctx.total_attempts == 3
    assert ctx.escalations == 1
    assert attempt_recovery(S.RATE_LIMIT, ctx).outcome == "recovered"
    assert attempt_recovery(S.PROVIDER_FAILURE, RecoveryContext()).outcome == "recovered"


def test_caller_steps_make_a_partial_recovery() -> None:
    ctx = RecoveryContext()
    result = attempt_recovery(S.CONTEXT_OVERFLOW, ctx)
    assert result.outcome == "partial_recovery"
    assert result.recovered_steps == ()
    assert result.remaining_steps == (RecoveryStep.REDUCE_CONTEXT,)
    assert result.delay_seconds == 0.0
    assert "the caller must reduce_context" in result.reason
    assert attempt_recovery(S.CONTEXT_OVERFLOW, ctx).outcome == "escalation_required"


def test_mixed_recipe_splits_automatic_and_caller_steps() -> None:
    recipe = RecoveryRecipe(
        S.MEMORY_CORRUPTION,
        (RecoveryStep.RESTORE_CHECKPOINT, RecoveryStep.RETRY_WITH_BACKOFF, RecoveryStep.ESCALATE),
        2,
    )
    ctx = RecoveryContext(recipes={S.MEMORY_CORRUPTION: recipe})
    result = attempt_recovery(S.MEMORY_CORRUPTION, ctx, policy=RetryPolicy(jitter="none"))
    assert result.outcome == "partial_recovery"
    assert result.recovered_steps == (RecoveryStep.RETRY_WITH_BACKOFF,)
    assert result.remaining_steps == (RecoveryStep.RESTORE_CHECKPOINT, RecoveryStep.ESCALATE)
    assert result.delay_seconds == 0.5
    assert set(result.recovered_steps) <= AUTOMATIC_STEPS


def test_the_server_hint_sets_the_delay() -> None:
    info = inspect_exception(status(429, **{"retry-after": "7"}))
    result = attempt_recovery(info.scenario, RecoveryContext(), failure=info)
    assert result.outcome == "recovered"
    assert result.delay_seconds == 7.0
    assert result.retry_after == 7.0
    assert "(server hint)" in result.reason


def test_a_hint_longer_than_the_limit_escalates_without_charging() -> None:
    ctx = RecoveryContext()
    info = inspect_exception(status(429, **{"retry-after": "3600"}))
    result = attempt_recovery(info.scenario, ctx, failure=info)
    assert result.outcome == "escalation_required"
    assert not result.exhausted
    assert "wait 3600s, more than max_retry_after=60s" in result.reason
    assert ctx.attempts(S.RATE_LIMIT) == 0
    lenient = RetryPolicy(max_retry_after=math.inf)
    assert (
        attempt_recovery(info.scenario, ctx, failure=info, policy=lenient).delay_seconds == 3600.0
    )


def test_x_should_retry_false_escalates() -> None:
    info = inspect_exception(status(503, **{"x-should-retry": "false"}))
    result = attempt_recovery(info.scenario, RecoveryContext(), failure=info)
    assert result.outcome == "escalation_required"
    assert result.reason == (
        "the server said not to retry (x-should-retry: false); escalate (alert_human)"
    )
    assert result.exhausted is False


def test_a_recipe_without_waiting_steps_retries_at_once() -> None:
    result = attempt_recovery(S.TOOL_EXECUTION_ERROR, RecoveryContext())
    assert result.outcome == "recovered"
    assert result.recovered_steps == (RecoveryStep.RETRY_TOOL,)
    assert result.delay_seconds == 0.0


def test_backoff_grows_with_attempts_under_the_policy() -> None:
    policy = RetryPolicy(jitter="none", base_delay=1.0, max_delay=3.0)
    ctx = RecoveryContext()
    delays = [attempt_recovery(S.RATE_LIMIT, ctx, policy=policy).delay_seconds for _ in range(4)]
    assert delays == [1.0, 2.0, 3.0, 3.0]


def test_decorrelated_jitter_remembers_the_previous_delay_per_scenario() -> None:
    policy = RetryPolicy(jitter="decorrelated", base_delay=1.0, max_delay=100.0, seed=3)
    ctx = RecoveryContext()
    delays = [attempt_recovery(S.RATE_LIMIT, ctx, policy=policy).delay_seconds for _ in range(5)]
    previous = 1.0
    for delay in delays:
        assert 1.0 <= delay <= 3 * previous
        previous = delay


def test_max_total_attempts_caps_all_scenarios() -> None:
    ctx = RecoveryContext(max_total_attempts=2)
    assert attempt_recovery(S.RATE_LIMIT, ctx).outcome == "recovered"
    assert attempt_recovery(S.PROVIDER_FAILURE, ctx).outcome == "recovered"
    last = attempt_recovery(S.LLM_TIMEOUT, ctx)
    assert last.outcome == "escalation_required"
    assert last.exhausted
    assert "of this context used" in last.reason
    assert ctx.max_total_attempts == 2


def test_history_is_bounded_and_reset_forgets() -> None:
    ticks = iter(range(100))
    ctx = RecoveryContext(history_size=3, clock=lambda: float(next(ticks)))
    for _ in range(5):
        attempt_recovery(S.RATE_LIMIT, ctx)
    history = ctx.history
    assert len(history) == 3
    assert [r.attempt for r in history] == [3, 4, 5]
    assert [r.at for r in history] == [2.0, 3.0, 4.0]
    assert ctx.to_dict() == {"attempts": {"rate_limit": 5}, "total_attempts": 5, "escalations": 0}
    ctx.reset()
    assert ctx.history == ()
    assert ctx.attempts(S.RATE_LIMIT) == 0
    assert ctx.total_attempts == 0
    assert attempt_recovery(S.RATE_LIMIT, ctx).attempt == 1


def test_history_records_each_decision_whole() -> None:
    ticks = iter([10.0, 11.0, 12.0])
    ctx = RecoveryContext(clock=lambda: next(ticks))
    policy = RetryPolicy(jitter="none", base_delay=2.0)
    attempt_recovery(S.PROVIDER_FAILURE, ctx, policy=policy)
    attempt_recovery(S.CONTEXT_OVERFLOW, ctx, policy=policy)
    attempt_recovery(S.BAD_REQUEST, ctx, policy=policy)
    assert ctx.history == (
        rp.RecoveryRecord(
            S.PROVIDER_FAILURE,
            RecoveryOutcome.RECOVERED,
            1,
            2.0,
            "provider_failure: recovery attempt 1 of 3; retry_with_backoff, switch_provider; "
            "wait 2.000s",
            10.0,
        ),
        rp.RecoveryRecord(
            S.CONTEXT_OVERFLOW,
            RecoveryOutcome.PARTIAL_RECOVERY,
            1,
            0.0,
            "context_overflow: recovery attempt 1 of 1; the caller must reduce_context "
            "before retrying",
            11.0,
        ),
        rp.RecoveryRecord(
            S.BAD_REQUEST,
            RecoveryOutcome.ESCALATION_REQUIRED,
            0,
            0.0,
            "bad_request is not retryable; escalate (abort)",
            12.0,
        ),
    )


def test_a_partial_recovery_names_every_step_left_to_the_caller() -> None:
    steps = (RecoveryStep.REDUCE_CONTEXT, RecoveryStep.REFRESH_CREDENTIALS)
    recipe = RecoveryRecipe(S.CONTEXT_OVERFLOW, steps, 2, EscalationPolicy.LOG_AND_CONTINUE)
    ctx = RecoveryContext(recipes={S.CONTEXT_OVERFLOW: recipe})
    result = attempt_recovery(S.CONTEXT_OVERFLOW, ctx)
    assert result.outcome is RecoveryOutcome.PARTIAL_RECOVERY
    assert result.reason == (
        "context_overflow: recovery attempt 1 of 2; the caller must reduce_context, "
        "refresh_credentials before retrying"
    )
    assert (result.max_attempts, result.escalation_policy) == (
        2,
        EscalationPolicy.LOG_AND_CONTINUE,
    )


def test_a_hint_of_exactly_max_retry_after_is_honoured_by_the_recipe() -> None:
    hinted = inspect_exception(status(429, **{"retry-after": "5"}))
    policy = RetryPolicy(max_retry_after=5.0)
    result = attempt_recovery(S.RATE_LIMIT, RecoveryContext(), failure=hinted, policy=policy)
    assert result.outcome is RecoveryOutcome.RECOVERED
    assert (result.delay_seconds, result.retry_after) == (5.0, 5.0)


def test_a_shared_cap_counts_each_claim_and_each_refusal() -> None:
    cap = RecoveryContext(max_total_attempts=2)
    policy = RetryPolicy(max_attempts=9, jitter="none")
    for _ in range(2):
        assert rp.RetryRun(policy, cap=cap).failed(status(503)) is not None
    for _ in range(2):
        with pytest.raises(RetriesExhaustedError):
            rp.RetryRun(policy, cap=cap).failed(status(503))
    assert cap.to_dict() == {
        "attempts": {"provider_failure": 2},
        "total_attempts": 2,
        "escalations": 2,
    }


def test_scenario_errors_list_every_scenario() -> None:
    with pytest.raises(InvalidValueError) as info:
        attempt_recovery("nope", RecoveryContext())
    names = ", ".join(member.value for member in FailureScenario)
    assert str(info.value) == f"scenario must be a FailureScenario ({names}), got 'nope'"
    assert names.startswith("llm_timeout, rate_limit, ")


def test_attempt_recovery_validates_its_inputs() -> None:
    with pytest.raises(InvalidValueError, match="scenario must be a FailureScenario"):
        attempt_recovery("nonsense", RecoveryContext())
    with pytest.raises(InvalidValueError, match="ctx must be a RecoveryContext"):
        attempt_recovery(S.RATE_LIMIT, object())  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="failure must be a FailureInfo"):
        attempt_recovery(S.RATE_LIMIT, RecoveryContext(), failure="x")  # type: ignore[arg-type]


def test_recovery_result_to_dict_is_json_ready() -> None:
    data = attempt_recovery(S.PROVIDER_FAILURE, RecoveryContext()).to_dict()
    assert data["outcome"] == "recovered"
    assert data["recovered_steps"] == ["retry_with_backoff", "switch_provider"]
    assert data["scenario"] == "provider_failure"


def test_recovery_results_to_dict_hold_every_field() -> None:
    policy = RetryPolicy(jitter="none", base_delay=2.0)
    ctx = RecoveryContext()
    hinted = inspect_exception(status(429, **{"retry-after": "7"}))
    assert attempt_recovery(S.RATE_LIMIT, ctx, failure=hinted, policy=policy).to_dict() == {
        "outcome": "recovered",
        "scenario": "rate_limit",
        "recovered_steps": ["wait_for_retry_after"],
        "remaining_steps": [],
        "reason": "rate_limit: recovery attempt 1 of 5; wait_for_retry_after; wait 7.000s "
        "(server hint)",
        "delay_seconds": 7.0,
        "attempt": 1,
        "max_attempts": 5,
        "retry_after": 7.0,
        "exhausted": False,
        "escalation_policy": "abort",
    }
    assert attempt_recovery(S.AUTH_FAILURE, ctx, policy=policy).to_dict() == {
        "outcome": "escalation_required",
        "scenario": "auth_failure",
        "recovered_steps": [],
        "remaining_steps": ["refresh_credentials"],
        "reason": "auth_failure is not retryable; escalate (alert_human)",
        "delay_seconds": 0.0,
        "attempt": 0,
        "max_attempts": 0,
        "retry_after": None,
        "exhausted": False,
        "escalation_policy": "alert_human",
    }
    attempt_recovery(S.LLM_ERROR, ctx, policy=policy)
    used_up = attempt_recovery(S.LLM_ERROR, ctx, policy=policy)
    assert used_up.recovered_steps == ()
    assert used_up.to_dict() == {
        "outcome": "escalation_required",
        "scenario": "llm_error",
        "recovered_steps": [],
        "remaining_steps": ["retry_with_backoff"],
        "reason": "all 1 recovery attempt(s) for llm_error used; escalate (abort)",
        "delay_seconds": 0.0,
        "attempt": 1,
        "max_attempts": 1,
        "retry_after": None,
        "exhausted": True,
        "escalation_policy": "abort",
    }


def test_the_async_twin_passes_the_failure_and_the_policy_on() -> None:
    ctx = RecoveryContext()
    policy = RetryPolicy(jitter="none", base_delay=3.0, max_retry_after=5.0)
    hinted = inspect_exception(status(429, **{"retry-after": "4"}))
    too_long = inspect_exception(status(429, **{"retry-after": "6"}))

    async def main() -> list[RecoveryResult]:
        return [
            await aattempt_recovery(S.RATE_LIMIT, ctx, failure=hinted, policy=policy),
            await aattempt_recovery(S.PROVIDER_FAILURE, ctx, policy=policy),
            await aattempt_recovery(S.RATE_LIMIT, ctx, failure=too_long, policy=policy),
        ]

    hint, backoff, refused = asyncio.run(main())
    assert (hint.delay_seconds, hint.retry_after) == (4.0, 4.0)
    assert backoff.delay_seconds == 3.0
    assert refused.outcome is RecoveryOutcome.ESCALATION_REQUIRED
    assert refused.reason == (
        "the server asks to wait 6s, more than max_retry_after=5s; escalate (abort)"
    )


def test_async_twin_shares_the_budget() -> None:
    ctx = RecoveryContext()

    async def main() -> list[str]:
        results = [await aattempt_recovery(S.CONTEXT_OVERFLOW, ctx) for _ in range(2)]
        return [str(r.outcome) for r in results]

    assert asyncio.run(main()) == ["partial_recovery", "escalation_required"]


def test_threads_never_get_more_than_the_budget() -> None:
    recipe = RecoveryRecipe(S.RATE_LIMIT, (RecoveryStep.RETRY_WITH_BACKOFF,), 250)
    ctx = RecoveryContext(recipes={S.RATE_LIMIT: recipe}, history_size=10)
    outcomes: list[str] = []
    lock = threading.Lock()
    policy = RetryPolicy(seed=1)

    def work() -> None:
        mine = [attempt_recovery(S.RATE_LIMIT, ctx, policy=policy).outcome for _ in range(100)]
        with lock:
            outcomes.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("recovered") == 250
    assert outcomes.count("escalation_required") == 550
    assert ctx.attempts(S.RATE_LIMIT) == 250
    assert ctx.total_attempts == 250
    assert ctx.escalations == 550
    assert len(ctx.history) == 10


class RecoveryContextMachine(RuleBasedStateMachine):
    """RecoveryContext against a dict of counts."""

    def __init__(self) -> None:
        super().__init__()
        self.ctx = RecoveryContext(max_total_attempts=6)
        self.counts: dict[FailureScenario, int] = {}
        self.escalations = 0

    @rule(scenario=st.sampled_from(list(FailureScenario)))
    def attempt(self, scenario: FailureScenario) -> None:
        result = attempt_recovery(scenario, self.ctx)
        limit = DEFAULT_RECIPES[scenario].max_attempts
        used = self.counts.get(scenario, 0)
        if limit > used and sum(self.counts.values()) < 6:
            assert result.outcome != "escalation_required"
            self.counts[scenario] = used + 1
            assert result.attempt == used + 1
        else:
            assert result.outcome == "escalation_required"
            self.escalations += 1

    @precondition(lambda self: sum(self.counts.values()) > 0)
    @rule()
    def reset(self) -> None:
        self.ctx.reset()
        self.counts.clear()
        self.escalations = 0

    @invariant()
    def counts_match(self) -> None:
        for scenario in FailureScenario:
            assert self.ctx.attempts(scenario) == self.counts.get(scenario, 0)
        assert self.ctx.total_attempts == sum(self.counts.values())
        assert self.ctx.escalations == self.escalations


RecoveryContextMachine.TestCase.settings = settings(
    max_examples=examples(60), stateful_step_count=25
)
test_recovery_context_machine = RecoveryContextMachine.TestCase


# -- backoff ----------------------------------------------------------------------------

attempts_st = st.integers(min_value=1, max_value=2000)
base_st = st.floats(min_value=0.001, max_value=10.0)
cap_st = st.floats(min_value=0.0, max_value=120.0)


@HYPOTHESIS
@given(attempt=attempts_st, base=base_st, cap=cap_st, seed=st.integers(0, 2**32))
def test_full_jitter_stays_within_zero_and_the_exponential(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, rng=random.Random(seed))
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 64))
    assert 0.0 <= delay <= ceiling


@HYPOTHESIS
@given(attempt=attempts_st, base=base_st, cap=cap_st, seed=st.integers(0, 2**32))
def test_equal_jitter_stays_in_the_upper_half(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, jitter="equal", rng=random.Random(seed))
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 64))
    assert ceiling / 2 <= delay <= ceiling


@HYPOTHESIS
@given(attempt=attempts_st, base=base_st, cap=cap_st)
def test_no_jitter_is_the_capped_exponential_and_monotonic(
    attempt: int, base: float, cap: float
) -> None:
    delay = backoff_delay(attempt, base=base, cap=cap, jitter="none")
    assert delay == min(cap, base * 2.0 ** min(attempt - 1, 64))
    assert backoff_delay(attempt + 1, base=base, cap=cap, jitter="none") >= delay


@HYPOTHESIS
@given(
    base=base_st,
    cap=cap_st,
    previous=st.none() | st.floats(min_value=0.0, max_value=500.0),
    seed=st.integers(0, 2**32),
)
def test_decorrelated_jitter_stays_within_base_three_times_previous_and_cap(
    base: float, cap: float, previous: float | None, seed: int
) -> None:
    delay = backoff_delay(
        3, base=base, cap=cap, jitter="decorrelated", previous=previous, rng=random.Random(seed)
    )
    last = base if previous is None else max(previous, base)
    assert delay <= cap
    assert delay <= 3 * last + 1e-9
    assert delay >= min(cap, base)


@HYPOTHESIS
@given(
    hint=st.floats(min_value=0.0, max_value=1e6),
    limit=st.floats(min_value=0.0, max_value=1e6) | st.just(math.inf),
)
def test_a_server_hint_is_returned_exactly_up_to_the_limit(hint: float, limit: float) -> None:
    assert accepts_retry_after(hint, max_retry_after=limit) is (hint <= limit)
    if hint <= limit:
        assert backoff_delay(5, retry_after=hint, max_retry_after=limit) == hint
    else:
        with pytest.raises(RetryAfterTooLongError) as caught:
            backoff_delay(5, retry_after=hint, max_retry_after=limit)
        assert caught.value.retry_after == hint
        assert caught.value.max_retry_after == limit


class FixedRandom(random.Random):
    """A ``random.Random`` whose every draw is ``value``, counting the draws."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return self.value


ALMOST_ONE = 1.0 - 2.0**-53
"""The largest float ``random.random()`` can return."""


@pytest.mark.parametrize(
    ("jitter", "draw", "attempt", "expected"),
    [
        # full: draw * d, d = min(cap, base * 2**(attempt - 1)); base 1, cap 30
        ("full", 0.0, 1, 0.0),
        ("full", 0.0, 4, 0.0),
        ("full", 0.25, 1, 0.25),
        ("full", 0.25, 3, 1.0),
        ("full", 0.5, 4, 4.0),
        ("full", ALMOST_ONE, 4, ALMOST_ONE * 8.0),
        ("full", 0.5, 10, 15.0),  # d capped at 30
        # equal: d/2 + draw * d/2
        ("equal", 0.0, 1, 0.5),
        ("equal", 0.0, 4, 4.0),
        ("equal", 0.5, 3, 3.0),
        ("equal", 0.25, 4, 5.0),
        ("equal", ALMOST_ONE, 4, 4.0 + ALMOST_ONE * 4.0),
        ("equal", 0.0, 10, 15.0),
        # none: d, whatever the draw
        ("none", 0.0, 1, 1.0),
        ("none", 0.5, 4, 8.0),
        ("none", ALMOST_ONE, 10, 30.0),
        # decorrelated without previous: base + draw * (3 * base - base)
        ("decorrelated", 0.0, 5, 1.0),
        ("decorrelated", 0.5, 5, 2.0),
        ("decorrelated", 0.25, 1, 1.5),
        ("decorrelated", ALMOST_ONE, 5, 1.0 + ALMOST_ONE * 2.0),
    ],
)
def test_each_jitter_scales_the_injected_draw_exactly(
    jitter: rp.Jitter, draw: float, attempt: int, expected: float
) -> None:
    rng = FixedRandom(draw)
    delay = backoff_delay(attempt, base=1.0, cap=30.0, jitter=jitter, rng=rng)
    assert delay == expected
    assert rng.draws == (0 if jitter == "none" else 1)


@pytest.mark.parametrize("attempt", [1, 2, 5, 9])
def test_full_jitter_never_returns_the_full_delay(attempt: int) -> None:
    full = min(30.0, 0.5 * 2.0 ** (attempt - 1))
    assert backoff_delay(attempt, rng=FixedRandom(0.0)) == 0.0
    assert backoff_delay(attempt, rng=FixedRandom(ALMOST_ONE)) < full
    assert backoff_delay(attempt, rng=FixedRandom(0.5)) == full / 2


@pytest.mark.parametrize(
    ("draw", "previous", "cap", "expected"),
    [
        (0.0, 4.0, 100.0, 1.0),  # the floor is base
        (0.5, 4.0, 100.0, 6.5),  # 1 + 0.5 * (12 - 1)
        (1.0, 4.0, 100.0, 12.0),  # 3 * previous
        (0.5, 0.2, 100.0, 2.0),  # previous below base counts as base
        (0.5, 40.0, 30.0, 30.0),  # capped
        (0.1, 40.0, 30.0, 12.9),  # 1 + 0.1 * 119, under the cap
    ],
)
def test_decorrelated_jitter_draws_between_base_and_three_previous(
    draw: float, previous: float, cap: float, expected: float
) -> None:
    delay = backoff_delay(
        2, base=1.0, cap=cap, jitter="decorrelated", previous=previous, rng=FixedRandom(draw)
    )
    assert delay == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("attempt", "expected"), [(64, 2.0**63), (65, 2.0**64), (2000, 2.0**64)])
def test_the_exponent_stops_growing_at_64(attempt: int, expected: float) -> None:
    assert backoff_delay(attempt, base=1.0, cap=1e300, jitter="none") == expected


def test_the_policy_passes_its_rng_base_cap_and_jitter_to_backoff() -> None:
    rng = FixedRandom(0.5)
    policy = RetryPolicy(base_delay=2.0, max_delay=5.0, jitter="equal", rng=rng)
    assert [policy.backoff(n) for n in (1, 2, 3)] == [1.5, 3.0, 3.75]
    assert rng.draws == 3
    decorrelated = RetryPolicy(base_delay=1.0, max_delay=50.0, jitter="decorrelated", rng=rng)
    assert decorrelated.backoff(1, previous=10.0) == 15.5


def test_retry_call_sleeps_exactly_the_jittered_delays() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=4, base_delay=1.0, rng=FixedRandom(0.25), sleep=sleeps)
    calls, fn = flaky([status(503), status(503), status(503)])
    assert retry_call(fn, policy=policy) == "ok()[]"
    assert len(calls) == 4
    assert sleeps.slept == [0.25, 0.5, 1.0]


def test_retry_call_skips_the_sleep_when_the_delay_is_zero() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(rng=FixedRandom(0.0), sleep=sleeps)
    calls, fn = flaky([status(503), status(503)])
    assert retry_call(fn, policy=policy) == "ok()[]"
    assert len(calls) == 3
    assert sleeps.slept == []


def test_seeded_rngs_give_the_same_delays() -> None:
    one = [backoff_delay(n, rng=random.Random(9)) for n in range(1, 6)]
    two = [backoff_delay(n, rng=random.Random(9)) for n in range(1, 6)]
    assert one == two


def test_backoff_without_rng_uses_the_random_module() -> None:
    random.seed(5)
    first = backoff_delay(4)
    random.seed(5)
    assert backoff_delay(4) == first


def test_a_hint_of_exactly_the_limit_is_accepted_and_returned_as_a_float() -> None:
    assert accepts_retry_after(60.0)
    assert accepts_retry_after(5, max_retry_after=5)
    assert not accepts_retry_after(5.000001, max_retry_after=5)
    delay = backoff_delay(1, retry_after=5, max_retry_after=5)
    assert (delay, type(delay)) == (5.0, float)
    with pytest.raises(RetryAfterTooLongError) as info:
        backoff_delay(1, retry_after=6, max_retry_after=5)
    assert (info.value.retry_after, info.value.max_retry_after) == (6.0, 5.0)
    assert type(info.value.retry_after) is float
    assert type(info.value.max_retry_after) is float


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry_after": -1.0}, "retry_after must be a finite number >= 0, got -1.0"),
        ({"retry_after": math.inf}, "retry_after must be a finite number >= 0, got inf"),
        (
            {"retry_after": 1.0, "max_retry_after": -2.0},
            "max_retry_after must be a number >= 0 (inf allowed), got -2.0",
        ),
    ],
)
def test_accepts_retry_after_names_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        accepts_retry_after(**kwargs)
    assert str(info.value) == message
    assert accepts_retry_after(1.0, max_retry_after=math.inf)


def test_accepts_retry_after_without_a_hint() -> None:
    assert accepts_retry_after(None)
    assert not accepts_retry_after(61.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attempt": 0}, "attempt must be an int >= 1"),
        ({"attempt": 1.5}, "attempt must be an int >= 1"),
        ({"base": 0.0}, "base must be a finite number > 0"),
        ({"base": math.inf}, "base must be a finite number > 0"),
        ({"cap": -1.0}, "cap must be a finite number >= 0"),
        ({"cap": math.nan}, "cap must be a finite number >= 0"),
        ({"jitter": "wild"}, "jitter must be one of"),
        ({"retry_after": -1.0}, "retry_after must be a finite number >= 0"),
        ({"retry_after": math.nan}, "retry_after must be a finite number >= 0"),
        ({"max_retry_after": -1.0}, "max_retry_after must be a number >= 0"),
        ({"previous": -2.0}, "previous must be a finite number >= 0"),
        ({"rng": 42}, "rng must be a random.Random"),
    ],
)
def test_backoff_delay_names_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"attempt": 1, **kwargs}
    with pytest.raises(InvalidValueError, match=message):
        backoff_delay(**args)  # type: ignore[arg-type]


# -- RetryPolicy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be an int >= 1, got 0"),
        ({"base_delay": -1}, "base_delay must be a finite number > 0, got -1"),
        ({"max_delay": math.inf}, "max_delay must be a finite number >= 0, got inf"),
        (
            {"jitter": "lots"},
            "jitter must be one of 'full', 'equal', 'decorrelated', 'none', got 'lots'",
        ),
        (
            {"max_retry_after": math.nan},
            "max_retry_after must be a number >= 0 (inf allowed), got nan",
        ),
        ({"seed": "7"}, "seed must be None or an int, got '7'"),
        ({"seed": True}, "seed must be None or an int, got True"),
        ({"seed": 1, "rng": random.Random(1)}, "give seed or rng, not both"),
        ({"rng": 3}, "rng must be a random.Random, got 3"),
        ({"retry_on": 3}, "retry_on must be callable or None, got 3"),
        ({"on_retry": "x"}, "on_retry must be callable or None, got 'x'"),
        ({"sleep": None}, "sleep must be callable, got None"),
        ({"async_sleep": None}, "async_sleep must be callable, got None"),
        ({"clock": 5}, "clock must be callable, got 5"),
        ({"stats": {}}, "stats must be a RetryStats or None, got {}"),
        (
            {"recipes": {S.RATE_LIMIT: "x"}},
            "recipes[<FailureScenario.RATE_LIMIT: 'rate_limit'>] must be a RecoveryRecipe, got 'x'",
        ),
        ({"recipes": "x"}, "recipes must be a mapping of scenario to recipe, got 'x'"),
    ],
)
def test_policy_names_bad_fields(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidValueError) as info:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_policy_accepts_an_unbounded_hint_limit_and_its_own_callables() -> None:
    def hook(attempt: RetryAttempt) -> None:
        pass

    policy = RetryPolicy(max_retry_after=math.inf, on_retry=hook, clock=lambda: NOW)
    assert policy.max_retry_after == math.inf
    assert policy.on_retry is hook
    assert policy.clock() == NOW


def test_policy_defaults_are_the_documented_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    for policy in (RetryPolicy(), rp.DEFAULT_POLICY):
        assert policy.max_attempts == 3
        assert (policy.base_delay, policy.max_delay) == (0.5, 30.0)
        assert policy.jitter == "full"
        assert policy.max_retry_after == 60.0 == rp.DEFAULT_MAX_RETRY_AFTER
        assert (policy.seed, policy.rng) == (None, None)
        assert dict(policy.recipes) == {}
        assert (policy.retry_on, policy.on_retry, policy.stats) == (None, None, None)
        assert policy.sleep is time.sleep
        assert policy.clock is time.time
    waited: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    asyncio.run(rp._asyncio_sleep(2.5))
    assert RetryPolicy().async_sleep is rp._asyncio_sleep
    assert waited == [2.5]


def test_policy_seed_makes_the_jitter_reproducible() -> None:
    one, two = RetryPolicy(seed=4), RetryPolicy(seed=4)
    assert [one.backoff(n) for n in range(1, 6)] == [two.backoff(n) for n in range(1, 6)]
    assert isinstance(one.rng, random.Random)


def test_delay_for_follows_the_recovery() -> None:
    policy = RetryPolicy(jitter="none", base_delay=2.0)
    ctx = RecoveryContext()
    hinted = inspect_exception(status(429, **{"retry-after": "7"}))
    assert policy.delay_for(1, attempt_recovery(S.RATE_LIMIT, ctx, failure=hinted)) == 7.0
    assert policy.delay_for(2, attempt_recovery(S.PROVIDER_FAILURE, ctx)) == 4.0
    assert policy.delay_for(1, attempt_recovery(S.TOOL_EXECUTION_ERROR, ctx)) == 0.0
    assert policy.delay_for(1, attempt_recovery(S.BAD_REQUEST, ctx)) == 0.0
    assert policy.delay_for(3) == 8.0
    strict = RetryPolicy(max_retry_after=5.0)
    with pytest.raises(RetryAfterTooLongError):
        strict.delay_for(1, attempt_recovery(S.RATE_LIMIT, ctx, failure=hinted))


def test_delay_for_takes_a_hint_of_exactly_the_limit_and_the_previous_delay() -> None:
    policy = RetryPolicy(max_retry_after=7.0)
    hinted = inspect_exception(status(429, **{"retry-after": "7"}))
    recovery = attempt_recovery(S.RATE_LIMIT, RecoveryContext(), failure=hinted)
    assert policy.delay_for(1, recovery) == 7.0
    decorrelated = RetryPolicy(
        jitter="decorrelated", base_delay=1.0, max_delay=100.0, rng=FixedRandom(1.0)
    )
    assert decorrelated.delay_for(2, previous=10.0) == 30.0
    assert decorrelated.delay_for(2) == 3.0


def test_new_context_carries_the_policy_recipes() -> None:
    mine = RecoveryRecipe(S.RATE_LIMIT, (RecoveryStep.SWITCH_PROVIDER,), 1)
    ctx = RetryPolicy(recipes={S.RATE_LIMIT: mine}).new_context()
    assert ctx.recipe_for(S.RATE_LIMIT) is mine


# -- retry_call ------------------------------------------------------------------------


def flaky(errors: list[Exception], value: str = "ok") -> tuple[list[int], Callable[..., str]]:
    calls: list[int] = []

    def fn(*args: object, **kwargs: object) -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return f"{value}{args}{sorted(kwargs.items())}"

    return calls, fn


def test_success_on_the_first_call_never_sleeps() -> None:
    sleeps = Sleeps()
    calls, fn = flaky([])
    assert retry_call(fn, 1, x=2, policy=RetryPolicy(sleep=sleeps)) == "ok(1,)[('x', 2)]"
    assert calls == [1]
    assert sleeps.slept == []


def test_retries_wait_the_hint_then_back_off_then_succeed() -> None:
    sleeps = Sleeps()
    seen: list[RetryAttempt] = []
    policy = RetryPolicy(max_attempts=4, jitter="none", sleep=sleeps, on_retry=seen.append)
    calls, fn = flaky([status(429, **{"retry-after": "7"}), status(503)])
    assert retry_call(fn, policy=policy) == "ok()[]"
    assert len(calls) == 3
    assert sleeps.slept == [7.0, 0.5]
    assert [a.attempt for a in seen] == [1, 2]
    assert seen[0].failure.scenario is S.RATE_LIMIT
    assert seen[0].steps == (RecoveryStep.WAIT_FOR_RETRY_AFTER,)
    assert RecoveryStep.SWITCH_PROVIDER in seen[1].steps
    assert isinstance(seen[1].exception, APIStatusError)


def test_non_retryable_errors_pass_through_unchanged_at_once() -> None:
    sleeps = Sleeps()
    error = status(401, "bad key")

    def fn() -> None:
        raise error

    with pytest.raises(APIStatusError) as caught:
        retry_call(fn, policy=RetryPolicy(sleep=sleeps))
    assert caught.value is error
    assert sleeps.slept == []
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[-1] == "fn"


def test_running_out_of_attempts_raises_retries_exhausted_from_the_last() -> None:
    errors: list[Exception] = [status(503, f"down {i}") for i in range(3)]
    last = errors[-1]
    calls, fn = flaky(list(errors))
    sleeps = Sleeps()
    with pytest.raises(RetriesExhaustedError) as caught:
        retry_call(fn, policy=RetryPolicy(max_attempts=3, sleep=sleeps, seed=1))
    exc = caught.value
    assert isinstance(exc, TechrevatiError)
    assert exc.__cause__ is last
    assert exc.attempts == 3
    assert exc.scenario is S.PROVIDER_FAILURE
    assert exc.failure.status_code == 503
    assert "gave up after 3 attempt(s): provider_failure (APIStatusError, status 503)" in str(exc)
    assert len(calls) == 3
    assert len(sleeps.slept) == 2


def test_the_recipe_budget_can_stop_before_max_attempts() -> None:
    errors: list[Exception] = [ValueError(str(i)) for i in range(10)]
    calls, fn = flaky(list(errors))
    with pytest.raises(RetriesExhaustedError, match="all 1 recovery attempt") as info:
        retry_call(fn, policy=RetryPolicy(max_attempts=10, sleep=Sleeps()))
    assert len(calls) == 2  # llm_error: one retry
    assert info.value.__cause__ is errors[1]


def test_a_recipe_override_makes_a_non_retryable_scenario_retried() -> None:
    sleeps = Sleeps()
    retry_400 = RecoveryRecipe(S.BAD_REQUEST, (RecoveryStep.RETRY_WITH_BACKOFF,), 2)
    policy = RetryPolicy(recipes={S.BAD_REQUEST: retry_400}, sleep=sleeps, jitter="none")
    calls, fn = flaky([BadRequestError("flaky proxy", 400)])
    assert retry_call(fn, policy=policy) == "ok()[]"
    assert len(calls) == 2
    assert sleeps.slept == [0.5]
    calls, fn = flaky([BadRequestError(str(i), 400) for i in range(5)])
    with pytest.raises(RetriesExhaustedError, match="all 2 recovery attempt"):
        retry_call(fn, policy=RetryPolicy(recipes={S.BAD_REQUEST: retry_400}, sleep=sleeps))
    assert len(calls) == 3


def test_a_non_retryable_error_on_the_last_attempt_still_passes_through() -> None:
    denied = status(401)
    calls, fn = flaky([status(503), status(503), denied])
    with pytest.raises(APIStatusError) as caught:
        retry_call(fn, policy=RetryPolicy(max_attempts=3, sleep=Sleeps()))
    assert caught.value is denied
    assert len(calls) == 3


def test_policies_hash_and_compare_by_identity() -> None:
    one, two = RetryPolicy(), RetryPolicy()
    assert len({one, two}) == 2
    assert one == one  # noqa: PLR0124
    assert one != two


def test_partial_recovery_is_left_to_the_caller() -> None:
    overflow = BadRequestError("maximum context length is 8192 tokens", 400)
    calls, fn = flaky([overflow])
    with pytest.raises(BadRequestError) as caught:
        retry_call(fn, policy=RetryPolicy(sleep=Sleeps()))
    assert caught.value is overflow
    assert calls == [1]


def test_a_hint_beyond_max_retry_after_is_raised_unchanged() -> None:
    error = status(429, **{"retry-after": "600"})
    calls, fn = flaky([error])
    with pytest.raises(APIStatusError) as caught:
        retry_call(fn, policy=RetryPolicy(sleep=Sleeps()))
    assert caught.value is error
    assert calls == [1]


def test_retry_on_alone_decides_what_is_retried() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(
        max_attempts=4,
        jitter="none",
        sleep=sleeps,
        retry_on=lambda exc: isinstance(exc, BadRequestError),
    )
    calls, fn = flaky([BadRequestError("flaky 400", 400), BadRequestError("again", 400)])
    assert retry_call(fn, policy=policy) == "ok()[]"
    assert sleeps.slept == [0.5, 1.0]
    timeout = TimeoutError()
    calls, fn = flaky([timeout])
    with pytest.raises(TimeoutError) as caught:
        retry_call(fn, policy=policy)
    assert caught.value is timeout
    calls, fn = flaky([BadRequestError(str(i), 400) for i in range(5)])
    with pytest.raises(RetriesExhaustedError):
        retry_call(fn, policy=policy)
    assert len(calls) == 4


def test_retry_on_honours_hints_and_their_limit() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(sleep=sleeps, retry_on=lambda exc: True, max_retry_after=10.0)
    _, fn = flaky([status(400, **{"retry-after": "3"})])
    retry_call(fn, policy=policy)
    assert sleeps.slept == [3.0]
    too_long = status(400, **{"retry-after": "30"})
    _, fn = flaky([too_long])
    with pytest.raises(APIStatusError) as caught:
        retry_call(fn, policy=policy)
    assert caught.value is too_long


def test_retry_on_accepts_a_hint_of_exactly_max_retry_after_and_says_why() -> None:
    sleeps = Sleeps()
    seen: list[RetryAttempt] = []
    policy = RetryPolicy(
        sleep=sleeps, on_retry=seen.append, retry_on=lambda exc: True, max_retry_after=10.0
    )
    _, fn = flaky([status(400, **{"retry-after": "10"}), ValueError("odd")])
    assert retry_call(fn, policy=policy) == "ok()[]"
    assert sleeps.slept[0] == 10.0
    assert [a.steps for a in seen] == [
        (RecoveryStep.WAIT_FOR_RETRY_AFTER,),
        (RecoveryStep.RETRY_WITH_BACKOFF,),
    ]
    assert seen[0].reason == "retry_on accepted APIStatusError; wait 10.000s"
    assert seen[1].reason == f"retry_on accepted ValueError; wait {sleeps.slept[1]:.3f}s"
    assert [a.attempt for a in seen] == [1, 2]
    assert [a.delay_seconds for a in seen] == sleeps.slept


def test_retry_on_hands_the_error_to_the_hook_and_chains_exhaustion_from_the_last() -> None:
    seen: list[RetryAttempt] = []
    errors: list[Exception] = [ValueError("one"), ValueError("two")]
    first, last = errors
    policy = RetryPolicy(
        max_attempts=2, sleep=Sleeps(), on_retry=seen.append, retry_on=lambda exc: True
    )
    _, fn = flaky(list(errors))
    with pytest.raises(RetriesExhaustedError, match="max_attempts=2 reached") as info:
        retry_call(fn, policy=policy)
    assert info.value.__cause__ is last
    assert info.value.attempts == 2
    assert [a.exception for a in seen] == [first]


def test_retry_on_feeds_the_previous_delay_to_decorrelated_jitter() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(
        max_attempts=4,
        base_delay=1.0,
        max_delay=100.0,
        jitter="decorrelated",
        rng=FixedRandom(1.0),
        sleep=sleeps,
        retry_on=lambda exc: True,
    )
    _, fn = flaky([ValueError(), ValueError(), ValueError()])
    assert retry_call(fn, policy=policy) == "ok()[]"
    assert sleeps.slept == [3.0, 9.0, 27.0]  # 3 * previous each time


def test_the_recipe_path_feeds_the_previous_delay_per_scenario_too() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(
        max_attempts=4,
        base_delay=1.0,
        max_delay=100.0,
        jitter="decorrelated",
        rng=FixedRandom(1.0),
        sleep=sleeps,
    )
    _, fn = flaky([status(503), status(503), status(503)])
    assert retry_call(fn, policy=policy) == "ok()[]"
    assert sleeps.slept == [3.0, 9.0, 27.0]


def test_a_runtime_detected_failure_is_read_as_its_own_scenario() -> None:
    seen: list[RetryAttempt] = []

    class SilentAnswerError(TransientRuntimeError):
        scenario = "dependency_timeout"

    _, fn = flaky([SilentAnswerError("no answer")])
    policy = RetryPolicy(sleep=Sleeps(), on_retry=seen.append, jitter="none")
    assert retry_call(fn, policy=policy) == "ok()[]"
    [attempt] = seen
    assert attempt.failure == FailureInfo(
        S.DEPENDENCY_TIMEOUT, retryable=True, exception_type="SilentAnswerError"
    )
    assert attempt.delay_seconds == 0.5


def test_the_runtimes_own_refusals_are_never_retried() -> None:
    stats = RetryStats()
    refusal = TechrevatiError("refused")
    _, fn = flaky([refusal])
    policy = RetryPolicy(sleep=Sleeps(), stats=stats, retry_on=lambda exc: True)
    with pytest.raises(TechrevatiError) as caught:
        retry_call(fn, policy=policy)
    assert caught.value is refusal
    assert (stats.failures, stats.gave_up, stats.retries, stats.exhausted) == (1, 1, 0, 0)


def test_a_shared_cap_ends_runs_once_its_retries_are_used() -> None:
    stats = RetryStats()
    cap = RecoveryContext(max_total_attempts=1)
    policy = RetryPolicy(max_attempts=5, stats=stats, jitter="none")
    first = rp.RetryRun(policy, cap=cap)
    assert first.failed(status(503)) is not None
    second = rp.RetryRun(policy, cap=cap)
    last = status(503)
    with pytest.raises(
        RetriesExhaustedError, match="all 1 retries shared across runs used"
    ) as info:
        second.failed(last)
    assert info.value.__cause__ is last
    assert second.exhausted is True
    assert first.exhausted is False
    assert (cap.total_attempts, cap.escalations) == (1, 1)
    assert cap.attempts(S.PROVIDER_FAILURE) == 1
    assert (stats.retries, stats.exhausted) == (1, 1)


def test_public_names_say_they_live_in_retry_policy() -> None:
    for name in rp.__all__:
        value = getattr(rp, name)
        if isinstance(value, type):
            assert value.__module__ in (
                "techrevati.runtime.retry_policy",
                "techrevati.runtime.errors",
            ), name
    for cls in (
        RetryAttempt,
        rp.RetryRun,
        RetryStats,
        RecoveryContext,
        RecoveryRecipe,
        rp.RecoveryResult,
        rp.RecoveryRecord,
        RecoveryStep,
        EscalationPolicy,
        RecoveryOutcome,
    ):
        assert cls.__module__ == "techrevati.runtime.retry_policy", cls


def test_a_failing_hook_is_logged_and_the_retry_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def hook(attempt: RetryAttempt) -> None:
        raise RuntimeError("hook broke")

    calls, fn = flaky([status(503)])
    with caplog.at_level(logging.WARNING, logger="techrevati.runtime.retry_policy"):
        assert retry_call(fn, policy=RetryPolicy(on_retry=hook, sleep=Sleeps())) == "ok()[]"
    assert len(calls) == 2
    [record] = caplog.records
    assert record.name == "techrevati.runtime.retry_policy"
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "on_retry hook failed; retrying anyway"
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "hook broke"


@pytest.mark.parametrize("error", [KeyboardInterrupt(), asyncio.CancelledError(), SystemExit(2)])
def test_interrupts_and_cancellation_are_never_retried(error: BaseException) -> None:
    calls: list[int] = []

    def fn() -> None:
        calls.append(1)
        raise error

    with pytest.raises(type(error)) as caught:
        retry_call(fn, policy=RetryPolicy(sleep=Sleeps()))
    assert caught.value is error
    assert calls == [1]


def test_a_bad_policy_argument_is_refused() -> None:
    with pytest.raises(InvalidValueError, match="policy must be a RetryPolicy"):
        retry_call(lambda: 1, policy="fast")  # type: ignore[call-overload]


def test_default_policy_is_used_without_one() -> None:
    with testing(attempts=3):
        calls, fn = flaky([status(503), status(503)])
        assert retry_call(fn) == "ok()[]"
    assert len(calls) == 3


# -- testing switch ---------------------------------------------------------------------


def test_testing_makes_waits_zero_and_caps_attempts() -> None:
    sleeps = Sleeps()
    policy = RetryPolicy(max_attempts=5, sleep=sleeps)
    with testing(attempts=2):
        assert is_testing()
        assert policy.attempt_limit() == 2
        _, fn = flaky([status(429, **{"retry-after": "30"}), status(503), status(503)])
        with pytest.raises(RetriesExhaustedError) as caught:
            retry_call(fn, policy=policy)
        assert caught.value.attempts == 2
        assert attempt_recovery(S.RATE_LIMIT, RecoveryContext()).delay_seconds == 0.0
        assert policy.delay_for(3) == 0.0
    assert not is_testing()
    assert policy.attempt_limit() == 5
    assert sleeps.slept == []


def test_testing_never_raises_the_policy_limit() -> None:
    with testing(attempts=10):
        assert RetryPolicy(max_attempts=3).attempt_limit() == 3


def test_testing_blocks_nest_and_restore() -> None:
    with testing(attempts=2):
        with testing(attempts=4):
            assert RetryPolicy(max_attempts=9).attempt_limit() == 4
        assert RetryPolicy(max_attempts=9).attempt_limit() == 2
    assert not is_testing()


def test_the_process_settings_start_at_the_defaults() -> None:
    from techrevati.runtime._retry_settings import _Settings, _Testing

    fresh = _Settings()
    assert fresh.recipes is DEFAULT_RECIPES
    assert fresh.testing == _Testing(enabled=False, attempts=1)
    with fresh.lock:
        assert fresh.lock.locked()
    assert not fresh.lock.locked()


def test_set_testing_switches_and_validates() -> None:
    set_testing(True)
    assert RetryPolicy(max_attempts=9).attempt_limit() == 1
    set_testing(True, attempts=3)
    assert RetryPolicy(max_attempts=9).attempt_limit() == 3
    set_testing(False)
    assert RetryPolicy(max_attempts=9).attempt_limit() == 9
    with pytest.raises(InvalidValueError, match="attempts must be an int >= 1"):
        set_testing(True, attempts=0)
    with pytest.raises(InvalidValueError, match="enabled must be a bool"):
        set_testing("yes")  # type: ignore[arg-type]


# -- stats ------------------------------------------------------------------------------


def test_stats_count_runs_exactly_across_threads() -> None:
    stats = RetryStats()
    policy = RetryPolicy(max_attempts=3, stats=stats, sleep=Sleeps(), seed=2)

    def work() -> None:
        for i in range(50):
            _, fn = flaky([status(503)])
            retry_call(fn, policy=policy)
            _, fn = flaky([status(401)])
            with pytest.raises(APIStatusError):
                retry_call(fn, policy=policy)
            if i % 10 == 0:
                _, fn = flaky([status(503)] * 3)
                with pytest.raises(RetriesExhaustedError):
                    retry_call(fn, policy=policy)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snapshot = stats.snapshot()
    assert snapshot == {
        "calls": 6 * 105,
        "successes": 6 * 50,
        "failures": 6 * (50 + 50 + 5 * 3),
        "retries": 6 * (50 + 5 * 2),
        "exhausted": 6 * 5,
        "gave_up": 6 * 50,
        "by_scenario": {"provider_failure": 6 * 65, "auth_failure": 6 * 50},
    }
    assert stats.calls == 630
    assert stats.successes == 300
    assert stats.failures == 6 * 115
    assert stats.retries == 360
    assert stats.exhausted == 30
    assert stats.gave_up == 300
    assert stats.by_scenario()[S.AUTH_FAILURE] == 300


# -- async and the decorator ------------------------------------------------------------


def test_aretry_call_awaits_and_sleeps_asynchronously() -> None:
    sleeps = Sleeps()
    errors: list[Exception] = [status(429, **{"retry-after-ms": "250"})]

    async def fn(x: int) -> int:
        if errors:
            raise errors.pop(0)
        return x * 2

    policy = RetryPolicy(async_sleep=sleeps.asleep, sleep=lambda s: pytest.fail("sync sleep"))
    assert asyncio.run(aretry_call(fn, 21, policy=policy)) == 42
    assert sleeps.slept == [0.25]


def test_aretry_call_awaits_the_policy_sleep_with_each_computed_delay() -> None:
    sleeps = Sleeps()
    awaited: list[str] = []

    async def asleep(seconds: float) -> None:
        await sleeps.asleep(seconds)
        awaited.append(f"slept {seconds}")

    errors: list[Exception] = [
        status(503),
        status(429, **{"retry-after": "4"}),
        TimeoutError(),
    ]

    async def fn() -> str:
        awaited.append("call")
        if errors:
            raise errors.pop(0)
        return "done"

    policy = RetryPolicy(
        max_attempts=4,
        base_delay=2.0,
        rng=FixedRandom(0.5),
        async_sleep=asleep,
        sleep=lambda s: pytest.fail("sync sleep"),
    )
    assert asyncio.run(aretry_call(fn, policy=policy)) == "done"
    # provider failure: attempt 1 -> 0.5 * 2; the hint; llm timeout: attempt 1 of its recipe -> 1.0
    assert sleeps.slept == [1.0, 4.0, 1.0]
    assert awaited == ["call", "slept 1.0", "call", "slept 4.0", "call", "slept 1.0", "call"]


@pytest.mark.parametrize("entry", ["acall", "retrying"])
def test_policy_acall_and_async_retrying_await_the_same_sleeps(entry: str) -> None:
    sleeps = Sleeps()
    errors: list[Exception] = [status(503), status(503)]
    policy = RetryPolicy(
        max_attempts=3, base_delay=1.0, rng=FixedRandom(0.75), async_sleep=sleeps.asleep
    )

    async def fn(x: int) -> int:
        if errors:
            raise errors.pop(0)
        return x + 1

    if entry == "acall":
        result = asyncio.run(policy.acall(fn, 1))
    else:
        result = asyncio.run(retrying(policy=policy)(fn)(1))
    assert result == 2
    assert sleeps.slept == [0.75, 1.5]


def test_aretry_call_skips_the_sleep_when_the_delay_is_zero() -> None:
    sleeps = Sleeps()
    errors: list[Exception] = [status(503)]

    async def fn() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    policy = RetryPolicy(rng=FixedRandom(0.0), async_sleep=sleeps.asleep)
    assert asyncio.run(aretry_call(fn, policy=policy)) == "ok"
    assert errors == []
    assert sleeps.slept == []


def test_aretry_call_counts_stats_like_the_sync_loop() -> None:
    stats = RetryStats()
    errors: list[Exception] = [status(503)]

    async def fn() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    policy = RetryPolicy(stats=stats, async_sleep=Sleeps().asleep)
    assert asyncio.run(aretry_call(fn, policy=policy)) == "ok"
    assert stats.snapshot() == {
        "calls": 1,
        "successes": 1,
        "failures": 1,
        "retries": 1,
        "exhausted": 0,
        "gave_up": 0,
        "by_scenario": {"provider_failure": 1},
    }


def test_aretry_call_passes_keywords_on_and_uses_the_default_policy_without_one() -> None:
    errors: list[Exception] = [status(503)]

    async def fn(x: int, *, times: int) -> int:
        if errors:
            raise errors.pop(0)
        return x * times

    with testing(attempts=2):
        assert asyncio.run(aretry_call(fn, 4, times=5)) == 20
    assert errors == []


def test_aretry_call_never_retries_cancellation() -> None:
    calls: list[int] = []

    async def fn() -> None:
        calls.append(1)
        raise asyncio.CancelledError

    async def main() -> None:
        await aretry_call(fn, policy=RetryPolicy(async_sleep=Sleeps().asleep))

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert calls == [1]


def test_aretry_call_raises_exhaustion_and_passes_non_retryable_through() -> None:
    error = status(403)

    async def forbidden() -> None:
        raise error

    async def down() -> None:
        raise status(503)

    policy = RetryPolicy(max_attempts=2, async_sleep=Sleeps().asleep)
    with pytest.raises(APIStatusError) as caught:
        asyncio.run(aretry_call(forbidden, policy=policy))
    assert caught.value is error
    with pytest.raises(RetriesExhaustedError):
        asyncio.run(aretry_call(down, policy=policy))


def test_retrying_keeps_a_sync_signature_and_retries() -> None:
    sleeps = Sleeps()
    errors: list[Exception] = [TimeoutError()]

    @retrying(policy=RetryPolicy(sleep=sleeps, jitter="none"))
    def answer(prompt: str, *, model: str = "m") -> str:
        """Answer a prompt."""
        if errors:
            raise errors.pop(0)
        return f"{model}:{prompt}"

    assert answer("hi", model="x") == "x:hi"
    assert sleeps.slept == [0.5]
    assert answer.__name__ == "answer"
    assert answer.__doc__ == "Answer a prompt."
    assert str(inspect.signature(answer)) == "(prompt: 'str', *, model: 'str' = 'm') -> 'str'"


def test_retrying_keeps_an_async_function_async() -> None:
    sleeps = Sleeps()
    errors: list[Exception] = [ConnectionError()]

    @retrying(policy=RetryPolicy(async_sleep=sleeps.asleep, jitter="none"))
    async def answer(prompt: str) -> str:
        if errors:
            raise errors.pop(0)
        return prompt.upper()

    assert inspect.iscoroutinefunction(answer)
    assert asyncio.run(answer("hi")) == "HI"
    assert sleeps.slept == [0.5]


def test_retrying_passes_a_policy_keyword_to_the_function() -> None:
    @retrying()
    def fn(policy: str) -> str:
        return policy

    assert fn(policy="mine") == "mine"


def test_module_exports_are_complete() -> None:
    for name in rp.__all__:
        assert hasattr(rp, name), name
    assert FailureScenario.__module__ == "techrevati.runtime.retry_policy"
