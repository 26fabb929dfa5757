"""Classification offline: statuses in bodies, chains and groups, wait hints, the breaker's test.

Hand-made exceptions shaped like the SDKs' (tests/test_classify_real_http.py
drives the real clients over loopback HTTP). Every check names the scenario,
the status, the code and the hint it expects.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from datetime import timedelta
from types import MappingProxyType
from typing import Any

import pytest

from techrevati.runtime import _classify_reading
from techrevati.runtime._failure_signals import _phrases, _tier
from techrevati.runtime._sdk import is_dependency_failure, safe_getattr
from techrevati.runtime._wait_hints import _header_wait, _hint_headers, _retry_info
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.retry_policy import (
    MAX_CHAIN_DEPTH,
    MAX_CHAIN_NODES,
    FailureInfo,
    FailureScenario,
    classify_exception,
    inspect_exception,
)

S = FailureScenario
NOW = 1_793_491_200.0  # 2026-11-01T00:00:00Z
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


class SdkError(Exception):
    """An exception with whatever attributes an SDK would set (only those given)."""

    def __init__(self, text: str = "failed", /, **attributes: object) -> None:
        super().__init__(text)
        for name, value in attributes.items():
            setattr(self, name, value)


class Response:
    def __init__(self, status_code: object = None, headers: object = None) -> None:
        self.status_code = status_code
        self.headers = headers


def _info(exc: BaseException, **kwargs: Any) -> tuple[object, ...]:
    info = inspect_exception(exc, clock=lambda: NOW, **kwargs)
    return (info.scenario, info.status_code, info.provider_code, info.retry_after, info.retryable)


# -- what one exception says --------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # the status in the body's error, as an int or a str of three digits
        ({"error": {"code": 429, "message": "slow"}}, (S.RATE_LIMIT, 429, None)),
        ({"error": {"code": "503"}}, (S.PROVIDER_FAILURE, 503, None)),
        ({"error": {"status": 401}}, (S.AUTH_FAILURE, 401, None)),
        ({"code": 413}, (S.CONTEXT_OVERFLOW, 413, None)),  # no "error": the body itself
        # codes: the most specific wins, whichever key holds it
        ({"error": {"type": "rate_limit_error"}}, (S.RATE_LIMIT, None, "rate_limit_error")),
        ({"error": {"Code": "ThrottlingException"}}, (S.RATE_LIMIT, None, "ThrottlingException")),
        (
            {"error": {"code": 400, "status": "RESOURCE_EXHAUSTED"}},
            (S.RATE_LIMIT, 400, "RESOURCE_EXHAUSTED"),
        ),
        (
            {"error": {"type": "invalid_request_error", "code": "context_length_exceeded"}},
            (S.CONTEXT_OVERFLOW, None, "context_length_exceeded"),
        ),
        # anthropic's details.error_code; Google's ErrorInfo reasons in error.details
        (
            {"error": {"type": "rate_limit_error", "details": {"error_code": "billing_error"}}},
            (S.QUOTA_EXHAUSTED, None, "billing_error"),
        ),
        (
            {
                "error": {
                    "code": 400,
                    "details": [{"@type": ERROR_INFO, "reason": "API_KEY_INVALID"}],
                }
            },
            (S.AUTH_FAILURE, 400, "API_KEY_INVALID"),
        ),
        # empty or odd values are no signal: the status still decides
        ({"error": {"code": "", "type": 7.5, "status": 503}}, (S.PROVIDER_FAILURE, 503, None)),
        # with an "error" inside, the body's own keys are not read
        ({"error": {"details": {"error_code": ""}}, "code": 409}, (S.LLM_ERROR, None, None)),
    ],
)
def test_the_status_and_codes_are_read_from_the_body(
    body: dict[str, object], expected: tuple[object, ...]
) -> None:
    info = inspect_exception(SdkError("failed", body=body))
    assert (info.scenario, info.status_code, info.provider_code) == expected


def test_a_message_or_details_attribute_alone_is_read() -> None:
    quota = SdkError("failed", message="You exceeded your current quota")
    assert classify_exception(quota) is S.QUOTA_EXHAUSTED
    reasons = [{"@type": ERROR_INFO, "reason": "API_KEY_INVALID"}]
    info = inspect_exception(SdkError("failed", details=reasons))
    assert (info.scenario, info.provider_code) == (S.AUTH_FAILURE, "API_KEY_INVALID")


def test_of_equally_specific_codes_the_first_read_is_named() -> None:
    body = {"error": {"code": "throttling", "type": "rate_limit_exceeded"}}
    info = inspect_exception(SdkError("failed", body=body))
    assert (info.scenario, info.provider_code) == (S.RATE_LIMIT, "throttling")
    body = {"error": {"code": "rate_limit_exceeded", "type": "insufficient_quota"}}
    info = inspect_exception(SdkError("failed", body=body))
    assert (info.scenario, info.provider_code) == (S.QUOTA_EXHAUSTED, "insufficient_quota")


def test_a_strong_class_name_yields_to_a_code_as_specific_and_names_that_code() -> None:
    context_window = type("ContextWindowExceededError", (Exception,), {})
    exc = context_window("too long")
    exc.body = {"error": {"code": "some_other", "type": "context_length_exceeded"}}
    info = inspect_exception(exc)
    assert (info.scenario, info.provider_code) == (S.CONTEXT_OVERFLOW, "context_length_exceeded")
    exc = context_window("too long")
    exc.body = {"error": {"code": "insufficient_quota"}}
    assert classify_exception(exc) is S.QUOTA_EXHAUSTED  # more specific than the name
    exc = context_window("too long")
    exc.body = {"error": {"code": "rate_limit_exceeded"}}
    assert classify_exception(exc) is S.CONTEXT_OVERFLOW  # the name says more


def test_only_the_first_4096_characters_are_searched_for_phrases() -> None:
    phrase = "rate limit exceeded"
    within = " " * (4096 - len(phrase)) + phrase
    assert classify_exception(ValueError(within)) is S.RATE_LIMIT
    beyond = " " * (4097 - len(phrase)) + phrase
    assert classify_exception(ValueError(beyond)) is S.LLM_ERROR


def test_the_messages_of_the_body_are_phrases_too() -> None:
    body: dict[str, object] = {
        "error": {"code": 400, "message": "This model's maximum context length is 8192"}
    }
    assert classify_exception(SdkError("Error code: 400", body=body)) is S.CONTEXT_OVERFLOW
    body = {"error": {"Message": "You exceeded your current quota"}, "code": 429}
    assert classify_exception(SdkError("Error code: 429", body=body)) is S.QUOTA_EXHAUSTED


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"status_code": "429"}, (S.RATE_LIMIT, 429, None)),  # litellm: a str status
        ({"status": 503}, (S.PROVIDER_FAILURE, 503, None)),
        ({"code": 404}, (S.BAD_REQUEST, 404, None)),
        ({"code": "429"}, (S.RATE_LIMIT, 429, None)),  # three digits in a str: a status
        ({"code": "4290"}, (S.LLM_ERROR, None, "4290")),
        ({"status_code": 418}, (S.BAD_REQUEST, 418, None)),  # an unlisted 4xx
        ({"status_code": 599}, (S.PROVIDER_FAILURE, 599, None)),  # an unlisted 5xx
        ({"status_code": 302}, (S.LLM_ERROR, 302, None)),  # below 400: no verdict
        ({"status_code": 600}, (S.LLM_ERROR, None, None)),  # not an HTTP status
        ({"status_code": True}, (S.LLM_ERROR, None, None)),
        ({"status_code": 99}, (S.LLM_ERROR, None, None)),
        ({"status_code": 100, "code": 429}, (S.LLM_ERROR, 100, None)),  # the first status kept
        ({"error_code": "insufficient_quota"}, (S.QUOTA_EXHAUSTED, None, "insufficient_quota")),
        ({"type": "overloaded_error"}, (S.PROVIDER_FAILURE, None, "overloaded_error")),
        ({"code": "deadline_exceeded"}, (S.LLM_TIMEOUT, None, "deadline_exceeded")),
        ({"code": ""}, (S.LLM_ERROR, None, None)),
        ({"code": "some_new_code"}, (S.LLM_ERROR, None, "some_new_code")),
        ({"type": "429"}, (S.LLM_ERROR, None, "429")),  # digits in .type: a code, no status
        ({"type": 429}, (S.LLM_ERROR, None, None)),
        ({"error_code": 503}, (S.LLM_ERROR, None, None)),
        ({"response": Response(503)}, (S.PROVIDER_FAILURE, 503, None)),
        ({"response": Response("503")}, (S.LLM_ERROR, None, None)),
        (
            {"response": {"Error": {"Code": "ThrottlingException"}, "ResponseMetadata": {}}},
            (S.RATE_LIMIT, None, "ThrottlingException"),
        ),
        (
            {"response": {"ResponseMetadata": {"HTTPStatusCode": 500}}},  # no Error in the dict
            (S.PROVIDER_FAILURE, 500, None),
        ),
        ({"status_code": 401, "response": Response(500)}, (S.AUTH_FAILURE, 401, None)),
    ],
)
def test_statuses_and_codes_of_the_exception_itself(
    attributes: dict[str, object], expected: tuple[object, ...]
) -> None:
    info = inspect_exception(SdkError("failed", **attributes))
    assert (info.scenario, info.status_code, info.provider_code) == expected


def test_a_generic_code_yields_to_a_status_that_says_more_but_not_to_none() -> None:
    assert classify_exception(SdkError(code="invalid_request_error", status_code=401)) is (
        S.AUTH_FAILURE
    )
    assert classify_exception(SdkError(code="invalid_request_error", status_code=409)) is (
        S.PROVIDER_FAILURE
    )
    assert classify_exception(SdkError(code="invalid_request_error")) is S.BAD_REQUEST
    assert classify_exception(SdkError(code="invalid_request_error", status_code=302)) is (
        S.BAD_REQUEST
    )


def test_the_exception_type_and_code_name_the_exception_that_decided() -> None:
    inner = SdkError("quota", code="insufficient_quota", status_code=429)
    outer = RuntimeError("wrapped")
    outer.__cause__ = inner
    info = inspect_exception(outer)
    assert info == FailureInfo(
        S.QUOTA_EXHAUSTED, False, None, 429, "insufficient_quota", "SdkError"
    )
    assert info.failure_class.value == "quota_exhausted"


# -- chains, groups and wrappers --------------------------------------------------------------


def _chain(*links: BaseException) -> BaseException:
    """``links[0]`` raised from ``links[1]`` raised from ... (explicit causes)."""
    for outer, inner in itertools.pairwise(links):
        outer.__cause__ = inner
    return links[0]


def test_a_long_chain_is_followed_to_the_first_structured_signal() -> None:
    exc = _chain(
        RuntimeError("agent step failed"),
        ValueError("while parsing"),
        OSError("io"),
        SdkError("limited", status_code=429),
        SdkError("down", status_code=503),
    )
    info = inspect_exception(exc)
    assert (info.scenario, info.status_code, info.exception_type) == (
        S.RATE_LIMIT,
        429,
        "SdkError",
    )


def test_a_base_exception_inside_a_chain_is_stepped_over_to_what_it_wraps() -> None:
    interrupt = KeyboardInterrupt()
    exc = _chain(RuntimeError("outer"), interrupt, SdkError("limited", status_code=429))
    assert classify_exception(exc) is S.RATE_LIMIT
    branched = RuntimeError("outer")
    branched.__cause__ = interrupt
    branched.__context__ = ValueError("meanwhile")
    assert classify_exception(branched) is S.RATE_LIMIT


def test_a_chain_of_the_maximum_depth_is_read_to_its_end_and_no_further() -> None:
    inner_signal = SdkError(status_code=429)
    reachable = _chain(*[RuntimeError(f"w{i}") for i in range(MAX_CHAIN_DEPTH)], inner_signal)
    assert classify_exception(reachable) is S.RATE_LIMIT  # 8 links down
    too_deep = _chain(*[RuntimeError(f"w{i}") for i in range(MAX_CHAIN_DEPTH + 1)], inner_signal)
    assert classify_exception(too_deep) is S.LLM_ERROR  # 9 links down: not looked at
    assert MAX_CHAIN_DEPTH == 8


def test_a_branching_chain_is_read_to_the_maximum_depth_too() -> None:
    signal = SdkError(status_code=503)
    links = [RuntimeError(f"w{i}") for i in range(MAX_CHAIN_DEPTH)]
    for outer, inner in itertools.pairwise(links):
        outer.__cause__ = inner
        outer.__context__ = ValueError("noise")  # two links each: the stack walk
    links[-1].__cause__ = signal
    assert classify_exception(links[0]) is S.PROVIDER_FAILURE
    deeper = RuntimeError("one more")
    deeper.__cause__ = links[0]
    deeper.__context__ = ValueError("noise")
    assert classify_exception(deeper) is S.LLM_ERROR


def test_exception_groups_are_read_member_by_member_nearest_first() -> None:
    group = ExceptionGroup(
        "parallel calls",
        [
            ValueError("tool"),
            SdkError("throttled", status_code=429),
            SdkError(status_code=401),
        ],
    )
    assert classify_exception(group) is S.RATE_LIMIT
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [ValueError("x")]), TimeoutError()])
    assert classify_exception(nested) is S.LLM_TIMEOUT
    with_context = ExceptionGroup("calls", [ValueError("tool")])
    with_context.__context__ = SdkError(status_code=503)
    assert classify_exception(with_context) is S.PROVIDER_FAILURE


def test_a_group_member_seen_twice_is_read_once() -> None:
    shared = ValueError("the same failure")
    group = ExceptionGroup("twice", [shared, shared, SdkError(status_code=503)])
    assert classify_exception(group) is S.PROVIDER_FAILURE


def test_a_wide_group_is_read_up_to_the_node_limit() -> None:
    assert MAX_CHAIN_NODES == 32
    within = [ValueError(f"m{i}") for i in range(MAX_CHAIN_NODES - 2)] + [SdkError(status_code=503)]
    assert classify_exception(ExceptionGroup("within", within)) is S.PROVIDER_FAILURE
    beyond = [ValueError(f"m{i}") for i in range(MAX_CHAIN_NODES)] + [SdkError(status_code=503)]
    assert classify_exception(ExceptionGroup("beyond", beyond)) is S.LLM_ERROR


def test_a_generic_bad_request_yields_only_to_a_specific_cause() -> None:
    def bad_request(cause: BaseException) -> BaseException:
        return _chain(SdkError("invalid", status_code=400), cause)

    assert classify_exception(bad_request(SdkError(code="context_length_exceeded"))) is (
        S.CONTEXT_OVERFLOW
    )
    assert classify_exception(bad_request(SdkError(code="content_filter"))) is S.CONTENT_POLICY
    assert classify_exception(bad_request(SdkError(code="insufficient_quota"))) is (
        S.QUOTA_EXHAUSTED
    )
    assert classify_exception(bad_request(SdkError(status_code=503))) is S.BAD_REQUEST
    assert classify_exception(bad_request(SdkError(status_code=404))) is S.BAD_REQUEST
    info = inspect_exception(bad_request(ValueError("plain")))
    assert (info.scenario, info.status_code) == (S.BAD_REQUEST, 400)
    # Found below a wrapper with no signal of its own: kept, unless a specific cause follows.
    wrapped = _chain(RuntimeError("step"), SdkError("invalid", status_code=400), ValueError("x"))
    info = inspect_exception(wrapped)
    assert (info.scenario, info.status_code, info.exception_type) == (
        S.BAD_REQUEST,
        400,
        "SdkError",
    )
    deeper = _chain(
        RuntimeError("step"),
        SdkError("invalid", status_code=400),
        SdkError("too long", code="context_length_exceeded"),
    )
    assert classify_exception(deeper) is S.CONTEXT_OVERFLOW


def test_wrappers_are_followed_to_the_attempt_they_hold() -> None:
    class RetryError(Exception):  # tenacity: .last_attempt, a finished attempt
        def __init__(self, last_attempt: object) -> None:
            super().__init__("gave up")
            self.last_attempt = last_attempt

    class Attempt:
        def __init__(self, error: BaseException | None, *, done: bool = True) -> None:
            self._error = error
            self._done = done

        def done(self) -> bool:
            return self._done

        def exception(self) -> BaseException | None:
            return self._error

    class Broken:
        def done(self) -> bool:
            raise RuntimeError("no state")

    limited = SdkError(status_code=429)
    assert classify_exception(RetryError(Attempt(limited))) is S.RATE_LIMIT
    assert classify_exception(RetryError(limited)) is S.RATE_LIMIT  # the exception itself
    assert classify_exception(RetryError(Attempt(limited, done=False))) is S.LLM_ERROR
    assert classify_exception(RetryError(Attempt(None))) is S.LLM_ERROR
    assert classify_exception(RetryError(Attempt("not an exception"))) is S.LLM_ERROR  # type: ignore[arg-type]

    class NoDone:  # exception() only: read as finished
        def exception(self) -> BaseException:
            return limited

    assert classify_exception(RetryError(NoDone())) is S.RATE_LIMIT
    assert classify_exception(RetryError(Broken())) is S.LLM_ERROR
    assert classify_exception(RetryError("not an attempt")) is S.LLM_ERROR
    api_core = SdkError("Deadline of 120s exceeded", cause=SdkError(status_code=503))
    assert classify_exception(api_core) is S.PROVIDER_FAILURE


def test_an_exception_whose_dict_cannot_be_read_is_classified_by_its_class() -> None:
    class OpaqueError(TimeoutError):
        @property
        def __dict__(self) -> dict[str, object]:  # type: ignore[override]
            raise RuntimeError("no dict")

    assert classify_exception(OpaqueError()) is S.LLM_TIMEOUT


def test_phrases_decide_only_when_nothing_in_the_chain_is_structured() -> None:
    exc = _chain(RuntimeError("step failed"), ValueError("we were rate limited by the API"))
    info = inspect_exception(exc)
    assert (info.scenario, info.exception_type) == (S.RATE_LIMIT, "ValueError")
    assert classify_exception(_chain(RuntimeError("timed out"), ValueError("overloaded"))) is (
        S.LLM_TIMEOUT
    )
    assert classify_exception(_chain(KeyError("rate limited"), ValueError("x"))) is S.LLM_ERROR
    assert classify_exception(_chain(ValueError("x"), ValueError("y")), origin="tool") is (
        S.TOOL_EXECUTION_ERROR
    )
    timed_out = _chain(RuntimeError("call failed"), OSError("connection timed out"))
    assert classify_exception(timed_out, origin="tool") is S.DEPENDENCY_TIMEOUT


def test_x_should_retry_makes_a_generic_bad_request_retryable() -> None:
    retry = {"x-should-retry": "true"}
    plain = SdkError("bad", status_code=400, headers=retry)
    assert _info(plain) == (S.PROVIDER_FAILURE, 400, None, None, True)
    assert _info(plain, origin="tool") == (S.TOOL_EXECUTION_ERROR, 400, None, None, True)
    by_name = type("BadRequestError", (Exception,), {})("bad")
    by_name.headers = {"X-Should-Retry": " TRUE "}
    assert classify_exception(by_name) is S.PROVIDER_FAILURE
    # A specific diagnosis keeps its scenario; only retryable follows the header.
    auth = SdkError("bad key", status_code=401, headers=retry)
    assert _info(auth) == (S.AUTH_FAILURE, 401, None, None, True)
    no = SdkError("bad", status_code=400, headers={"x-should-retry": "false"})
    assert _info(no) == (S.BAD_REQUEST, 400, None, None, False)
    maybe = SdkError("bad", status_code=400, headers={"x-should-retry": "maybe"})
    assert _info(maybe) == (S.BAD_REQUEST, 400, None, None, False)
    down = SdkError("down", status_code=503, headers={"x-should-retry": "false"})
    assert _info(down) == (S.PROVIDER_FAILURE, 503, None, None, False)


def test_only_exceptions_and_known_origins_are_classified() -> None:
    with pytest.raises(InvalidValueError) as caught:
        classify_exception(KeyboardInterrupt())
    assert str(caught.value) == (
        "exc must be an Exception to classify, got KeyboardInterrupt; KeyboardInterrupt, "
        "SystemExit and CancelledError are not failures: let them propagate"
    )
    with pytest.raises(InvalidValueError) as caught:
        classify_exception(ValueError("x"), origin="human")  # type: ignore[arg-type]
    assert str(caught.value) == "origin must be 'model' or 'tool', got 'human'"


# -- wait hints -----------------------------------------------------------------------------


def _hinted(headers: object) -> FailureInfo:
    return inspect_exception(SdkError("slow", status_code=429, headers=headers), clock=lambda: NOW)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Sun, 01 Nov 2026 00:00:07 GMT", 7.0),
        ("Sun, 01 Nov 2026 00:00:07", 7.0),  # no zone: read as UTC
        ("Sun, 01 Nov 2026 00:00:07 -0000", 7.0),  # "-0000": naive too
        ("Sun, 01 Nov 2026 01:00:07 +0100", 7.0),
        ("Sat, 31 Oct 2026 23:59:30 GMT", 0.0),  # already past: no wait (as documented)
        ("Sun, 01 Nov 2026 99:00:00 GMT", None),  # not a date
        ("Sun, 32 Foo 2026", None),
        ("12", 12.0),
        (" 2.5 ", 2.5),
        ("0", None),  # a zero wait is no hint
        ("-3", None),
        ("nan", None),
        ("inf", None),
        ("", None),
    ],
)
def test_retry_after_as_seconds_or_an_http_date(value: str, expected: float | None) -> None:
    assert _hinted({"retry-after": value}).retry_after == expected
    assert _header_wait(None, value, lambda: NOW) == expected


def test_retry_after_ms_decides_when_it_parses() -> None:
    assert _header_wait("1500", "9", lambda: NOW) == 1.5
    assert _header_wait("0", "9", lambda: NOW) is None  # parsed: zero, no hint, no fallback
    assert _header_wait("soon", "9", lambda: NOW) == 9.0  # unparsable: the next header
    assert _header_wait("-1", None, lambda: NOW) is None
    assert _header_wait(None, None, lambda: NOW) is None


def test_a_date_hint_with_a_broken_clock_is_no_hint() -> None:
    def broken() -> float:
        raise OverflowError("clock")

    assert _header_wait(None, "Sun, 01 Nov 2026 00:00:07 GMT", broken) is None
    assert _header_wait(None, "Sun, 01 Nov 2026 00:00:07 GMT", lambda: math.nan) is None
    assert _header_wait(None, "Sun, 01 Nov 2026 00:00:07 GMT", lambda: "now") is None  # type: ignore[arg-type,return-value]


class CaseSensitive(Mapping[str, str]):
    """A mapping whose own lookup is case-sensitive (not one of the known header types)."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = items

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class CaseInsensitiveDict(CaseSensitive):
    """Named like requests' headers: its lookup is trusted to ignore case, no scan."""


class Raw:
    """httpx's Headers: a ``.raw`` list of byte pairs."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw


class GetOnly:
    """A header object with a ``get`` that finds nothing and no ``items`` to scan."""

    def get(self, name: str) -> None:
        return None


class Exploding(Mapping[str, str]):
    def __getitem__(self, key: str) -> str:
        raise RuntimeError("lookup")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("iteration")

    def __len__(self) -> int:
        return 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (
            {"x-should-retry": "true", "retry-after-ms": "10", "retry-after": "2"},
            ("true", "10", "2"),
        ),
        ({"X-Should-Retry": "false", "Retry-After": "3"}, ("false", None, "3")),  # scanned
        ({"other": "1"}, (None, None, None)),
        ({}, (None, None, None)),
        ({"retry-after": 5}, (None, None, None)),  # not text: no value
        ({1: "x", "Retry-After": "5"}, (None, None, "5")),  # scanned past a key that is no str
        (GetOnly(), (None, None, None)),
        ({"retry-after": b"4"}, (None, None, "4")),
        (CaseSensitive({"Retry-After-Ms": "250"}), (None, "250", None)),  # scanned
        (CaseInsensitiveDict({"Retry-After": "9"}), (None, None, None)),  # trusted, no scan
        (CaseInsensitiveDict({"retry-after": "9"}), (None, None, "9")),
        (Raw([(b"Retry-After", b"6"), (b"X-Should-Retry", b"true")]), ("true", None, "6")),
        (Raw([(b"content-type", b"json")]), (None, None, None)),
        (Exploding(), (None, None, None)),
        ("retry-after: 5", (None, None, None)),  # no mapping at all
        (42, (None, None, None)),
    ],
)
def test_hint_headers_are_found_in_any_header_container(
    headers: object, expected: tuple[str | None, ...]
) -> None:
    assert _hint_headers(headers) == expected


def test_headers_come_from_the_response_or_the_exception_itself() -> None:
    from_response = SdkError("slow", status_code=429, response=Response(429, {"retry-after": "3"}))
    assert inspect_exception(from_response).retry_after == 3.0
    botocore = SdkError(
        "throttled",
        response={
            "Error": {"Code": "ThrottlingException"},
            "ResponseMetadata": {"HTTPStatusCode": 400, "HTTPHeaders": {"retry-after": "4"}},
        },
    )
    assert _info(botocore) == (S.RATE_LIMIT, 400, "ThrottlingException", 4.0, True)
    no_headers = SdkError("slow", response=Response(429, None), headers={"retry-after": "5"})
    assert inspect_exception(no_headers).retry_after == 5.0


def _retry_detail(delay: object) -> dict[str, object]:
    return {"@type": RETRY_INFO, "retryDelay": delay}


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        ("13s", 13.0),
        ("0.5s", 0.5),
        (".25s", 0.25),
        (" 2s ", 2.0),
        ("0s", None),
        ("13", None),  # no unit
        ("-1s", None),
        (13, 13.0),  # a number: seconds
        (2.5, 2.5),
        (0, None),
        (-4, None),
        (math.inf, None),
        (math.nan, None),
        (True, None),
        (None, None),
    ],
)
def test_google_retry_delay_as_a_duration_string_or_a_number(
    delay: object, expected: float | None
) -> None:
    assert _retry_info([_retry_detail(delay)]) == expected
    info = inspect_exception(SdkError("exhausted", code=429, details=[_retry_detail(delay)]))
    assert info.retry_after == expected


def test_the_first_retry_info_decides_and_other_details_are_skipped() -> None:
    others: list[object] = [
        {"@type": ERROR_INFO, "reason": "RATE_LIMIT_EXCEEDED"},
        {"@type": 5, "retryDelay": "9s"},
        {"retryDelay": "9s"},
        "text",
    ]
    assert _retry_info([*others, _retry_detail("3s"), _retry_detail("7s")]) == 3.0
    assert _retry_info([_retry_detail(True), _retry_detail("7s")]) == 7.0  # a bool is no delay


def test_only_the_first_sixteen_details_are_read() -> None:
    padding: list[object] = [{"@type": ERROR_INFO, "reason": "X"}] * 15
    assert _retry_info([*padding, _retry_detail("3s")]) == 3.0
    assert _retry_info([*padding, "one more", _retry_detail("3s")]) is None


def test_genai_response_json_holds_its_details_under_error() -> None:
    assert _retry_info({"error": {"details": [_retry_detail("4s")]}}) == 4.0
    assert _retry_info({"details": [_retry_detail("4s")]}) == 4.0
    assert _retry_info({"error": "text", "details": [_retry_detail("4s")]}) == 4.0
    assert _retry_info({"error": {"details": "none"}}) is None
    assert _retry_info(None) is None
    assert _retry_info(Exploding()) is None
    assert _retry_info("13s") is None


class Duration:
    def __init__(self, seconds: object, nanos: object = 0) -> None:
        self.seconds = seconds
        self.nanos = nanos


class RetryInfo:
    """A protobuf-like google.rpc.RetryInfo."""

    def __init__(self, retry_delay: object) -> None:
        self.retry_delay = retry_delay


class ErrorInfo:
    def __init__(self, reason: object) -> None:
        self.reason = reason


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (timedelta(seconds=3), 3.0),
        (timedelta(0), None),
        (timedelta(seconds=-1), None),
        (Duration(2, 500_000_000), 2.5),
        (Duration(0, 500_000_000), 0.5),
        (timedelta(milliseconds=250), 0.25),
        (Duration(2, "500"), 2.0),  # nanos that are no int are left out
        (Duration(0, 0), None),
        (Duration(-2), None),
        (Duration(2.0), None),  # seconds must be an int
        (Duration(None), None),
        ("3s", None),
    ],
)
def test_protobuf_retry_info_durations(delay: object, expected: float | None) -> None:
    assert _retry_info([RetryInfo(delay)]) == expected


def test_a_protobuf_retry_info_without_a_delay_lets_the_next_detail_decide() -> None:
    assert _retry_info([RetryInfo(None), _retry_detail("6s")]) == 6.0
    assert _retry_info([RetryInfo(Duration(0)), _retry_detail("6s")]) is None  # zero decides


def test_error_info_reasons_are_codes() -> None:
    details = [ErrorInfo("API_KEY_INVALID"), ErrorInfo(""), ErrorInfo(None), {"@type": 3}]
    info = inspect_exception(SdkError("bad key", code=400, details=details))
    assert (info.scenario, info.provider_code) == (S.AUTH_FAILURE, "API_KEY_INVALID")
    mapping = [
        {"@type": ERROR_INFO, "reason": 5},
        {"@type": ERROR_INFO, "reason": "api_key_invalid"},
    ]
    info = inspect_exception(SdkError("bad key", code=400, details=mapping))
    assert (info.scenario, info.provider_code) == (S.AUTH_FAILURE, "api_key_invalid")


def test_a_quota_phrase_on_a_hinted_429_is_a_rate_limit() -> None:
    words = "You exceeded your current quota, please retry in 13s"
    bare = SdkError(words, status_code=429)
    assert classify_exception(bare) is S.QUOTA_EXHAUSTED
    by_header = SdkError(words, status_code=429, headers={"retry-after": "13"})
    assert classify_exception(by_header) is S.RATE_LIMIT
    by_details = SdkError(words, status_code=429, details=[_retry_detail("13s")])
    assert classify_exception(by_details) is S.RATE_LIMIT
    zero_hint = SdkError(words, status_code=429, headers={"retry-after": "0"})
    assert classify_exception(zero_hint) is S.QUOTA_EXHAUSTED
    by_millis = SdkError(words, status_code=429, headers={"retry-after-ms": "13000"})
    assert classify_exception(by_millis) is S.RATE_LIMIT
    dated = SdkError(
        words, status_code=429, headers={"retry-after": "Fri, 01 Jan 2100 00:00:00 GMT"}
    )
    assert classify_exception(dated) is S.RATE_LIMIT  # measured against the real wall clock


def test_phrase_patterns_are_case_insensitive_alternations_compiled_on_first_use() -> None:
    rate = _phrases("rate limit", r"\bthrottled\b")
    assert rate.pattern == r"(?:rate limit)|(?:\bthrottled\b)"
    assert rate.search("we were THROTTLED") is not None
    assert rate.search("Rate Limit reached") is not None
    assert rate.search("unthrottledness") is None
    quota = _phrases("quota")
    combined, groups = _tier((rate, S.RATE_LIMIT), (quota, S.QUOTA_EXHAUSTED))
    assert combined.pattern == r"(?:(?:rate limit)|(?:\bthrottled\b))|(?:(?:quota))"
    assert groups == ((rate, S.RATE_LIMIT), (quota, S.QUOTA_EXHAUSTED))
    assert combined.search("over QUOTA") is not None


# -- bounded caches ----------------------------------------------------------------------------


def test_the_caches_stay_bounded_under_classes_and_codes_made_on_the_fly() -> None:
    for i in range(1100):
        cls = type(f"Generated{i}Error", (Exception,), {"code": f"code_{i}"})
        assert inspect_exception(cls("x")).provider_code == f"code_{i}"
    assert 0 < len(_classify_reading._INFO_CACHE) <= _classify_reading._INFO_CACHE_SIZE == 1024
    assert 0 < len(_classify_reading._NAME_CACHE) <= _classify_reading._NAME_CACHE_SIZE == 1024
    assert 0 < len(_classify_reading._DECLARED_CACHE) <= 1024


def test_repeated_failures_share_one_info_and_hinted_ones_do_not() -> None:
    first = inspect_exception(SdkError(status_code=503))
    assert inspect_exception(SdkError(status_code=503)) is first
    hinted = SdkError(status_code=503, headers={"retry-after": "2"})
    assert inspect_exception(hinted) is not inspect_exception(hinted)
    assert inspect_exception(hinted) == inspect_exception(hinted)


# -- the breaker's default failure test ----------------------------------------------------


class AwsError(Exception):
    def __init__(self, code: object, status: object = 400) -> None:
        super().__init__(str(code))
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


@pytest.mark.parametrize(
    ("exc", "counts"),
    [
        (SdkError(status_code=500), True),
        (SdkError(status_code=599), True),
        (SdkError(status_code=408), True),
        (SdkError(status_code=429), True),
        (SdkError(status_code=400), False),
        (SdkError(status_code=401), False),
        (SdkError(status_code=499), False),
        (SdkError(status=503), True),
        (SdkError(status=404), False),
        (SdkError(code=404), False),
        (SdkError(code="404"), True),  # a str code is no status: unknown counts
        (SdkError(status_code=True), True),
        (SdkError(status_code=399), True),
        (SdkError(status_code=600), True),
        (SdkError(response=Response(502)), True),
        (SdkError(response=Response(403)), False),
        (SdkError(response=type("R", (), {"status": 404})()), False),
        (SdkError(response=Response(None)), True),
        (SdkError(status_code=404, response=Response(503)), False),  # the exception's own first
        (AwsError("ThrottlingException"), True),  # a 400 that is throttling
        (AwsError("ValidationException"), False),
        (AwsError("ModelTimeoutException", 408), True),
        (AwsError(7), False),
        (SdkError(response={"ResponseMetadata": "none"}), True),
        (
            SdkError(response={"Error": "none", "ResponseMetadata": {"HTTPStatusCode": 404}}),
            False,
        ),
        (type("TooManyRequestsHere", (Exception,), {"status_code": 400})(), True),
        (type("ReadTimedOut", (Exception,), {"status_code": 404})(), True),
        (type("KeyNetworkBlocked", (Exception,), {"status_code": 400})(), False),
        (TimeoutError(), True),
        (ConnectionRefusedError(), True),
        (ValueError("anything"), True),
        (KeyboardInterrupt(), False),
        (SystemExit(1), False),
    ],
)
def test_is_dependency_failure(exc: BaseException, counts: bool) -> None:
    assert is_dependency_failure(exc) is counts


def test_is_dependency_failure_survives_hostile_exceptions() -> None:
    class HostileError(Exception):
        def __getattr__(self, name: str) -> object:
            raise RuntimeError(name)

    class BadMapping(Mapping[str, object]):
        def __getitem__(self, key: str) -> object:
            raise RuntimeError("no")

        def __iter__(self) -> Iterator[str]:
            return iter(())

        def __len__(self) -> int:
            return 0

    class HostileInt(int):
        def __int__(self) -> int:
            raise RuntimeError("no int")

    assert is_dependency_failure(HostileError()) is True
    assert is_dependency_failure(SdkError(status_code=HostileInt(404))) is True  # conservative
    assert is_dependency_failure(SdkError(status_code=400, response=BadMapping())) is False
    assert is_dependency_failure(SdkError(response=BadMapping())) is True


def test_safe_getattr_turns_a_raising_property_into_none() -> None:
    class Request:
        @property
        def request(self) -> object:
            raise RuntimeError("unset")

    assert safe_getattr(Request(), "request") is None
    assert safe_getattr(SdkError(code=5), "code") == 5
    assert safe_getattr(SdkError(), "missing") is None


# -- the scenario types ---------------------------------------------------------------------


def test_failure_info_refuses_a_wrong_scenario_or_wait_naming_the_value() -> None:
    with pytest.raises(InvalidValueError) as caught:
        FailureInfo("rate_limit", retryable=True)  # type: ignore[arg-type]
    assert str(caught.value) == "scenario must be a FailureScenario, got 'rate_limit'"
    for bad in (-1.0, math.inf, math.nan, "5"):
        with pytest.raises(InvalidValueError) as caught:
            FailureInfo(S.RATE_LIMIT, retryable=True, retry_after=bad)  # type: ignore[arg-type]
        assert str(caught.value) == f"retry_after must be a finite float >= 0, got {bad!r}"
    assert FailureInfo(S.RATE_LIMIT, True, retry_after=0).retry_after == 0
    assert FailureInfo(S.RATE_LIMIT, True, retry_after=2).retry_after == 2


def test_failure_class_for_refuses_what_is_no_scenario() -> None:
    from techrevati.runtime.retry_policy import failure_class_for

    for bad in ("no_such_scenario", None, ["rate_limit"]):
        with pytest.raises(InvalidValueError) as caught:
            failure_class_for(bad)  # type: ignore[arg-type]
        assert str(caught.value) == f"scenario must be a FailureScenario, got {bad!r}"
        assert caught.value.__cause__ is None
    assert failure_class_for(S.DEPENDENCY_TIMEOUT).value == "dependency_failed"


def test_every_scenario_has_its_value_class_and_retry_rule() -> None:
    from techrevati.runtime.retry_policy import RETRYABLE_SCENARIOS

    table = {
        s.value: (FailureInfo(s, False).failure_class.value, s in RETRYABLE_SCENARIOS) for s in S
    }
    assert table == {
        "llm_timeout": ("llm_timeout", True),
        "rate_limit": ("rate_limit", True),
        "context_overflow": ("context_overflow", False),
        "output_truncated": ("output_truncated", False),
        "provider_failure": ("provider_failure", True),
        "auth_failure": ("auth_failure", False),
        "bad_request": ("bad_request", False),
        "content_policy": ("content_policy", False),
        "quota_exhausted": ("quota_exhausted", False),
        "tool_execution_error": ("tool_error", True),
        "dependency_timeout": ("dependency_failed", True),
        "memory_corruption": ("memory_corruption", False),
        "output_invalid": ("validation_error", False),
        "llm_error": ("unknown", True),
    }
    assert S.__module__ == FailureInfo.__module__ == "techrevati.runtime.retry_policy"


# -- any mapping, not only dicts; odd values in the right places ---------------------------


def test_read_only_mappings_are_read_like_dicts() -> None:
    frozen = MappingProxyType
    body = frozen(
        {"error": frozen({"code": 429, "details": frozen({"error_code": "billing_error"})})}
    )
    info = inspect_exception(SdkError("failed", body=body))
    assert (info.scenario, info.status_code, info.provider_code) == (
        S.QUOTA_EXHAUSTED,
        429,
        "billing_error",
    )
    response = frozen(
        {
            "Error": frozen({"Code": "ThrottlingException"}),
            "ResponseMetadata": frozen({"HTTPStatusCode": 400}),
        }
    )
    info = inspect_exception(SdkError("throttled", response=response))
    assert (info.scenario, info.status_code, info.provider_code) == (
        S.RATE_LIMIT,
        400,
        "ThrottlingException",
    )
    assert _retry_info(frozen({"error": frozen({"details": [_retry_detail("5s")]})})) == 5.0


class WithGet:
    """Not a mapping, but it has a ``get``: never read as one."""

    def __init__(self, value: object) -> None:
        self.value = value

    def get(self, key: str, default: object = None) -> object:
        return self.value


def test_objects_that_only_look_like_mappings_are_not_read() -> None:
    response = {"ResponseMetadata": WithGet(503), "Error": WithGet("ThrottlingException")}
    info = inspect_exception(SdkError("failed", response=response))
    assert (info.scenario, info.status_code, info.provider_code) == (S.LLM_ERROR, None, None)
    throttled = SdkError("throttled", status_code=400, response={"Error": WithGet("Throttling")})
    assert is_dependency_failure(throttled) is False


def test_a_mapping_response_with_its_own_status_keeps_it() -> None:
    class MappingResponse(dict[str, object]):
        status_code = 503

    response = MappingResponse(ResponseMetadata={"HTTPStatusCode": 400})
    info = inspect_exception(SdkError("failed", response=response))
    assert (info.scenario, info.status_code) == (S.PROVIDER_FAILURE, 503)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"code": "4290", "status": 503}, (S.PROVIDER_FAILURE, 503, "4290")),  # 4 digits: a code
        ({"code": "abc", "status": 503}, (S.PROVIDER_FAILURE, 503, "abc")),  # three letters: a code
        ({"code": 429, "message": 5}, (S.RATE_LIMIT, 429, None)),  # a message that is no str
        ({"code": 503, "details": {"error_code": 5}}, (S.PROVIDER_FAILURE, 503, None)),
    ],
)
def test_odd_values_in_a_body_are_skipped(
    error: dict[str, object], expected: tuple[object, ...]
) -> None:
    info = inspect_exception(SdkError("failed", body={"error": error}))
    assert (info.scenario, info.status_code, info.provider_code) == expected


def test_error_info_reasons_are_found_after_other_details() -> None:
    reason = {"@type": ERROR_INFO, "reason": "API_KEY_INVALID"}
    for details in (
        [_retry_detail("1s"), reason],
        ["text", reason],
        [{"@type": 7}, reason],
        [ErrorInfo(5), reason],
    ):
        info = inspect_exception(SdkError("bad key", code=400, details=details))
        assert (info.scenario, info.provider_code) == (S.AUTH_FAILURE, "API_KEY_INVALID")


def test_a_class_that_declares_no_signal_is_decided_without_reading_attributes() -> None:
    reads: list[str] = []

    class SpiedError(Exception):
        def __getattribute__(self, name: str) -> Any:
            if name in _classify_reading._ATTRIBUTES:
                reads.append(name)
            return super().__getattribute__(name)

    class SpiedTimeoutError(SpiedError, TimeoutError):
        pass

    assert classify_exception(SpiedTimeoutError("slow")) is S.LLM_TIMEOUT
    assert classify_exception(SpiedError("plain")) is S.LLM_ERROR
    assert reads == []


def test_attributes_made_by_a_parents_getattr_are_read() -> None:
    class DynamicError(Exception):
        def __getattr__(self, name: str) -> object:
            if name == "status_code":
                return 429
            raise AttributeError(name)

    class ChildError(DynamicError):
        pass

    class GrandChildError(ChildError):
        pass

    assert classify_exception(ChildError()) is S.RATE_LIMIT
    assert classify_exception(GrandChildError()) is S.RATE_LIMIT


def test_the_caches_are_emptied_when_full_and_hold_what_was_decided() -> None:
    names = _classify_reading._NAME_CACHE
    declared = _classify_reading._DECLARED_CACHE
    names.clear()
    declared.clear()
    made = [type(f"Made{i}Error", (Exception,), {}) for i in range(1025)]
    for cls in made[:1024]:
        classify_exception(cls("x"))
    assert (len(names), len(declared)) == (1024, 1024)
    assert names[made[0]] == (None, None)
    assert declared[made[0]] == frozenset()
    classify_exception(made[1024]("x"))
    assert (len(names), len(declared)) == (1, 1)  # emptied, then the newest kept
    timeout = type("Made429Error", (TimeoutError,), {"status_code": 429})
    classify_exception(timeout("x"))
    assert names[timeout] == (None, S.LLM_TIMEOUT)
    assert declared[timeout] == frozenset({"status_code"})


def test_an_unknown_code_beside_a_status_is_named_as_the_provider_code() -> None:
    info = inspect_exception(SdkError("failed", code="some_new_code", status_code=503))
    assert (info.scenario, info.status_code, info.provider_code) == (
        S.PROVIDER_FAILURE,
        503,
        "some_new_code",
    )


def test_a_specific_code_of_the_exception_decides_without_its_body() -> None:
    exc = SdkError(
        "failed", code="rate_limit_exceeded", body={"error": {"code": "insufficient_quota"}}
    )
    info = inspect_exception(exc)
    assert (info.scenario, info.provider_code) == (S.RATE_LIMIT, "rate_limit_exceeded")
    generic = SdkError(
        "failed", code="rate_limit_error", body={"error": {"code": "insufficient_quota"}}
    )
    assert classify_exception(generic) is S.QUOTA_EXHAUSTED  # a broad code: the body is read


def test_a_wrappers_message_never_beats_a_structured_cause() -> None:
    wrapper = SdkError("we were rate limited, it says", headers={})
    wrapper.__cause__ = SdkError("bad key", status_code=401)
    assert classify_exception(wrapper) is S.AUTH_FAILURE
    alone = SdkError("we were rate limited, it says", headers={})
    assert classify_exception(alone) is S.RATE_LIMIT  # the last resort, with nothing structured


def test_an_exact_header_name_wins_over_another_casing() -> None:
    headers = {"retry-after": "3", "Retry-After": "9", "x-should-retry": "false"}
    assert _hint_headers(headers) == ("false", None, "3")
    assert _hint_headers({"Retry-After": "9", "RETRY-AFTER": "4"}) == (None, None, "4")


def test_a_naive_http_date_is_utc_whatever_the_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert _header_wait(None, "Sun, 01 Nov 2026 00:00:07", lambda: NOW) == 7.0
        assert _header_wait(None, "Sun, 01 Nov 2026 00:00:07 GMT", lambda: NOW) == 7.0
    finally:
        monkeypatch.undo()
        time.tzset()
