"""The session's turn engine driving the real SDK clients over loopback HTTP.

tests/test_turn_engine.py checks these paths with plain fakes; here ``fn``
makes a real openai, anthropic, google-genai or botocore bedrock-runtime call
against the scripted server in tests/scripted_server.py. The SDKs' own
retries are off, so every retry, wait, fallback, charge and breaker decision
below is the session's, taken on exactly what the SDK returned or raised.
Waits are injected and recorded (nothing sleeps); the only real waits are the
bounded deadlines of the hang tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, get_args

import anthropic
import openai
import pydantic
import pytest
from google.genai import errors as genai_errors

from techrevati.runtime import (
    Budget,
    BudgetExceededError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    EventName,
    Orchestrator,
    RetriesExhaustedError,
    RetryPolicy,
    TurnTimeoutError,
    UsageSnapshot,
    inspect_exception,
)
from techrevati.runtime._runner import DeadlineRunner
from techrevati.runtime.orchestrator import EmptyResponseError, Session, StreamResultError
from tests import scripted_server as scripted
from tests.conftest import FakeClock
from tests.scripted_server import (
    Recorded,
    Reply,
    ScriptedServer,
    anthropic_error,
    anthropic_message,
    bedrock_error,
    converse_response,
    gemini_response,
    google_error,
    google_retry_info,
    openai_chat_completion,
    openai_chat_stream,
    openai_error,
    reply,
)

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

MESSAGES: Any = [{"role": "user", "content": "hi"}]
CONVERSE_MESSAGES: Any = [{"role": "user", "content": [{"text": "hi"}]}]
HANG_TIMEOUT = 0.2  # the turn's deadline against a hanging server (a bounded real wait)
PATIENT_CLIENT = 10.0  # the client's own timeout in hang tests: far past the turn's
OK_USAGE = UsageSnapshot(input_tokens=9, output_tokens=12)  # what the body builders report
M_PRICE = (Decimal(3), Decimal(15))  # $ per million input, output tokens of model "m"
ZERO = Decimal(0)


pytestmark = pytest.mark.usefixtures("priced_models")


def _orch(**kwargs: Any) -> Orchestrator:
    return Orchestrator(role="writer", phase="draft", **kwargs)


def _cost(input_tokens: int, output_tokens: int, prices: tuple[Decimal, Decimal]) -> Decimal:
    return (input_tokens * prices[0] + output_tokens * prices[1]) / 1_000_000


def _events(session: Session, name: EventName) -> list[Any]:
    return [event for event in session.events() if event.name == name]


# -- the four providers, as the session sees them -------------------------------------------


@dataclass(frozen=True)
class Provider:
    """One SDK: how to make its client and call, its replies, and the errors it raises."""

    name: str
    connect: Callable[[str], Any]
    call: Callable[[Any, str], Any]  # (client, model) -> the SDK's response
    ok: Callable[[str], Reply]
    text: Callable[[Any], str]
    unavailable: Reply  # a 503
    bad_request: Reply  # a plain 400
    retry_anyway: Reply  # a 400 the server marks x-should-retry: true
    rate_limited: Callable[[int], Reply]  # a 429 asking to wait that many seconds
    bad_request_type: Callable[[Any], type[Exception]]
    rate_limit_type: Callable[[Any], type[Exception]]
    model_of: Callable[[Recorded], str]


def _body_model(request: Recorded) -> str:
    return str(request.json["model"])


def _gemini_model(request: Recorded) -> str:
    return request.path.rsplit("/models/", 1)[1].split(":", 1)[0]  # .../models/<m>:generate...


def _bedrock_model(request: Recorded) -> str:
    return request.path.split("/")[2]  # /model/<m>/converse


def _retry_anyway(answer: Reply) -> Reply:
    return Reply(answer.status, {**answer.headers, "x-should-retry": "true"}, answer.body)


_OPENAI_400 = reply(400, openai_error("Invalid 'messages[0].role'."))
_ANTHROPIC_400 = reply(400, anthropic_error("invalid_request_error", "messages: field required"))
_GEMINI_400 = reply(400, google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload."))
_BEDROCK_400 = bedrock_error(400, "ValidationException", "Malformed input request.")

OPENAI = Provider(
    name="openai",
    connect=scripted.openai_client,
    call=lambda client, model: client.chat.completions.create(model=model, messages=MESSAGES),
    ok=lambda text: reply(200, openai_chat_completion(text)),
    text=lambda answer: str(answer.choices[0].message.content),
    unavailable=reply(503, openai_error("The engine is overloaded", type="server_error")),
    bad_request=_OPENAI_400,
    retry_anyway=_retry_anyway(_OPENAI_400),
    rate_limited=lambda seconds: reply(
        429,
        openai_error("Rate limit reached", type="requests", code="rate_limit_exceeded"),
        {"retry-after": str(seconds)},
    ),
    bad_request_type=lambda client: openai.BadRequestError,
    rate_limit_type=lambda client: openai.RateLimitError,
    model_of=_body_model,
)
ANTHROPIC = Provider(
    name="anthropic",
    connect=scripted.anthropic_client,
    call=lambda client, model: client.messages.create(
        model=model, max_tokens=64, messages=MESSAGES
    ),
    ok=lambda text: reply(200, anthropic_message(text)),
    text=lambda answer: str(answer.content[0].text),
    unavailable=reply(503, anthropic_error("api_error", "Service unavailable")),
    bad_request=_ANTHROPIC_400,
    retry_anyway=_retry_anyway(_ANTHROPIC_400),
    rate_limited=lambda seconds: reply(
        429,
        anthropic_error("rate_limit_error", "Number of requests has exceeded your rate limit"),
        {"retry-after": str(seconds)},
    ),
    bad_request_type=lambda client: anthropic.BadRequestError,
    rate_limit_type=lambda client: anthropic.RateLimitError,
    model_of=_body_model,
)
GEMINI = Provider(
    name="google-genai",
    connect=scripted.genai_client,
    call=lambda client, model: client.models.generate_content(model=model, contents="hi"),
    ok=lambda text: reply(200, gemini_response(text)),
    text=lambda answer: str(answer.text),
    unavailable=reply(503, google_error(503, "UNAVAILABLE", "The model is overloaded.")),
    bad_request=_GEMINI_400,
    retry_anyway=_retry_anyway(_GEMINI_400),
    rate_limited=lambda seconds: reply(
        429,
        google_error(
            429,
            "RESOURCE_EXHAUSTED",
            f"Too many requests. Please retry in {seconds}s.",
            google_retry_info(f"{seconds}s"),
        ),
    ),
    bad_request_type=lambda client: genai_errors.ClientError,
    rate_limit_type=lambda client: genai_errors.ClientError,
    model_of=_gemini_model,
)
BEDROCK = Provider(
    name="bedrock",
    connect=scripted.bedrock_client,
    call=lambda client, model: client.converse(modelId=model, messages=CONVERSE_MESSAGES),
    ok=lambda text: reply(200, converse_response(text)),
    text=lambda answer: str(answer["output"]["message"]["content"][0]["text"]),
    unavailable=bedrock_error(503, "ServiceUnavailableException", "Service unavailable."),
    bad_request=_BEDROCK_400,
    retry_anyway=_retry_anyway(_BEDROCK_400),
    rate_limited=lambda seconds: bedrock_error(
        429, "ThrottlingException", "Too many requests.", {"retry-after": str(seconds)}
    ),
    bad_request_type=lambda client: client.exceptions.ValidationException,
    rate_limit_type=lambda client: client.exceptions.ThrottlingException,
    model_of=_bedrock_model,
)
PROVIDERS = [OPENAI, ANTHROPIC, GEMINI, BEDROCK]


@pytest.fixture(params=PROVIDERS, ids=lambda provider: provider.name)
def connected(
    request: pytest.FixtureRequest, scripted_server: ScriptedServer
) -> Iterator[tuple[Provider, Any]]:
    """Each provider in turn, with a real client of its SDK on the scripted server."""
    provider: Provider = request.param
    client = provider.connect(scripted_server.url)
    try:
        yield provider, client
    finally:
        client.close()


class Recorder:
    """Wraps one provider call so the test sees every exception the SDK raised."""

    def __init__(self, provider: Provider, client: Any) -> None:
        self.provider = provider
        self.client = client
        self.raised: list[Exception] = []

    def __call__(self, model: str) -> Any:
        try:
            return self.provider.call(self.client, model)
        except Exception as exc:
            self.raised.append(exc)
            raise


def _policy(clock: FakeClock, **kwargs: Any) -> RetryPolicy:
    """Backoff of exactly 1 s (no jitter), recorded instead of slept."""
    return RetryPolicy(
        base_delay=1.0, jitter="none", sleep=clock.sleep, async_sleep=clock.asleep, **kwargs
    )


# -- 1. attempt budgets are per turn ---------------------------------------------------------

TURNS = 1000


def test_a_thousand_turns_each_retry_their_own_429_and_are_charged_exactly(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI, fake_clock: FakeClock
) -> None:
    # A 429 with retry-after: 1 before every 10th turn's answer; each answer's usage differs.
    limited = reply(
        429,
        openai_error("Rate limit reached", type="requests", code="rate_limit_exceeded"),
        {"retry-after": "1"},
    )
    total_in = total_out = 0
    for turn in range(TURNS):
        if turn % 10 == 9:
            scripted_server.script(limited)
        prompt, completion = 100 + turn, 1 + turn % 37
        total_in, total_out = total_in + prompt, total_out + completion
        scripted_server.reply(
            200,
            openai_chat_completion(
                f"answer {turn}", prompt_tokens=prompt, completion_tokens=completion
            ),
        )
    budget = Budget(max_usd="1000")
    # 3 calls per turn and 5 rate-limit retries per recipe: spent across the session
    # instead of per turn, either would run out long before the 100th 429.
    orch = _orch(retry=RetryPolicy(max_attempts=3, sleep=fake_clock.sleep), budget=budget)

    def chat() -> ChatCompletion:
        return openai_client.chat.completions.create(model="m", messages=MESSAGES)

    with orch.session() as session:
        for turn in range(TURNS):
            answer, _ = session.run_turn(chat, model="m")
            assert answer.choices[0].message.content == f"answer {turn}"
    summary = session.summary()
    assert summary["turns"] == TURNS
    assert summary["turns_without_usage"] == 0
    assert summary["recovery"] == {
        "retries": 100,
        "retries_exhausted": False,
        "max_total_retries": None,
    }
    assert summary["failures"] == {"rate_limit": 100}
    assert fake_clock.slept == [1.0] * 100
    assert len(scripted_server.requests) == TURNS + 100
    expected = _cost(total_in, total_out, M_PRICE)
    assert session.tracker.total_cost() == expected
    assert session.tracker.total_usage() == UsageSnapshot(
        input_tokens=total_in, output_tokens=total_out
    )
    # The 429s were released, never charged: one request per answer.
    assert (budget.spent_usd, budget.requests, budget.reserved_usd) == (expected, TURNS, ZERO)


# -- 2. a hanging server opens the breaker; recovery closes it ---------------------------------


def test_sync_timeouts_on_a_hanging_server_open_the_breaker_and_recovery_closes_it(
    scripted_server: ScriptedServer,
) -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        "api", failure_threshold=3, recovery_timeout_seconds=30, clock=lambda: now[0]
    )
    late = reply(200, anthropic_message("late"), hang=True)
    scripted_server.script(late, late, late, reply(200, anthropic_message("back")))
    answered = threading.Semaphore(0)
    client = scripted.anthropic_client(scripted_server.url, timeout=PATIENT_CLIENT)

    def message() -> anthropic.types.Message:
        answer = client.messages.create(model="m", max_tokens=64, messages=MESSAGES)
        answered.release()
        return answer

    orch = _orch(circuit_breaker=breaker, runner=DeadlineRunner())
    try:
        with orch.session() as session:
            for _ in range(3):
                with pytest.raises(TurnTimeoutError):
                    session.run_turn(message, model="m", timeout=HANG_TIMEOUT)
            assert breaker.metrics().state is CircuitState.OPEN
            with pytest.raises(CircuitOpenError):
                session.run_turn(message, model="m", timeout=HANG_TIMEOUT)
            scripted_server.release()
            for _ in range(3):  # the hung calls get their answers, after their deadlines
                assert answered.acquire(timeout=5)
            # Counted once all three answered (a timed-out request may still be on its
            # way to the server when its turn gives up): the open breaker sent nothing.
            assert len(scripted_server.requests) == 3
            late_metrics = breaker.metrics()
            assert (late_metrics.successes, late_metrics.state) == (0, CircuitState.OPEN)
            now[0] = 31.0
            answer, usage = session.run_turn(message, model="m", timeout=5)
            assert answer.content[0].type == "text"
            assert answer.content[0].text == "back"
    finally:
        scripted_server.release()
        client.close()
    metrics = breaker.metrics()
    assert (metrics.failures, metrics.successes) == (3, 1)  # the late answers are not successes
    assert breaker.state is CircuitState.CLOSED
    assert session.summary()["failures"] == {"llm_timeout": 3, "dependency_failed": 1}
    assert session.tracker.turns == 1  # and they are not charged either
    assert usage == OK_USAGE


def _async_call(sdk: str, client: Any) -> Callable[[], Awaitable[Any]]:
    if sdk == "openai":
        return lambda: client.chat.completions.create(model="m", messages=MESSAGES)
    return lambda: client.messages.create(model="m", max_tokens=64, messages=MESSAGES)


def _async_client(sdk: str, url: str) -> Any:
    if sdk == "openai":
        return scripted.async_openai_client(url, timeout=PATIENT_CLIENT)
    return scripted.async_anthropic_client(url, timeout=PATIENT_CLIENT)


def _async_body(sdk: str, text: str) -> dict[str, Any]:
    return openai_chat_completion(text) if sdk == "openai" else anthropic_message(text)


def test_async_timeouts_on_a_hanging_server_open_the_breaker_and_recovery_closes_it(
    scripted_server: ScriptedServer,
) -> None:
    now = [0.0]
    breaker = CircuitBreaker(
        "api", failure_threshold=3, recovery_timeout_seconds=30, clock=lambda: now[0]
    )
    late = reply(200, openai_chat_completion("late"), hang=True)
    scripted_server.script(late, late, late, reply(200, openai_chat_completion("back")))

    async def main() -> tuple[Session, UsageSnapshot]:  # AsyncOpenAI; the sync twin: anthropic
        async with _async_client("openai", scripted_server.url) as client:
            call = _async_call("openai", client)
            async with _orch(circuit_breaker=breaker).asession() as session:
                for _ in range(3):
                    with pytest.raises(TurnTimeoutError):
                        await session.arun_turn(call, model="m", timeout=HANG_TIMEOUT)
                assert breaker.state is CircuitState.OPEN
                with pytest.raises(CircuitOpenError):
                    await session.arun_turn(call, model="m", timeout=HANG_TIMEOUT)
                # The open breaker sent nothing (a cancelled call may not have reached
                # the server before its turn gave up, so at most the three).
                assert len(scripted_server.requests) <= 3
                scripted_server.release()  # nobody listens any more: the calls were cancelled
                assert breaker.metrics().successes == 0
                now[0] = 31.0
                _, usage = await session.arun_turn(call, model="m", timeout=5)
        return session, usage

    try:
        session, usage = asyncio.run(main())
    finally:
        scripted_server.release()
    metrics = breaker.metrics()
    assert (metrics.failures, metrics.successes, metrics.ignored) == (3, 1, 0)
    assert breaker.state is CircuitState.CLOSED
    assert session.summary()["failures"] == {"llm_timeout": 3, "dependency_failed": 1}
    assert session.tracker.turns == 1
    assert usage == OK_USAGE


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_an_async_sdk_call_that_honours_cancellation_is_not_reported_as_running_on(
    scripted_server: ScriptedServer, sdk: str, caplog: pytest.LogCaptureFixture
) -> None:
    scripted_server.reply(200, _async_body(sdk, "late"), hang=True)

    async def main() -> None:
        stopped = asyncio.Event()
        async with _async_client(sdk, scripted_server.url) as client:
            call = _async_call(sdk, client)

            async def watched() -> Any:
                try:
                    return await call()
                except asyncio.CancelledError:
                    stopped.set()  # the SDK call unwound: the coroutine honoured the cancel
                    raise

            async with _orch().asession() as session:
                with pytest.raises(TurnTimeoutError):
                    await session.arun_turn(watched, model="m", timeout=HANG_TIMEOUT)
                await asyncio.wait_for(stopped.wait(), 1.0)

    with caplog.at_level(logging.WARNING, logger="techrevati.runtime.orchestrator"):
        try:
            asyncio.run(main())
        finally:
            scripted_server.release()
    assert "did not stop when cancelled" not in caplog.text


# -- 3. classification decides what the session retries, with each real SDK --------------------


def test_a_503_then_200_is_retried_and_succeeds(
    scripted_server: ScriptedServer, connected: tuple[Provider, Any], fake_clock: FakeClock
) -> None:
    provider, client = connected
    scripted_server.script(provider.unavailable, provider.ok("second try"))
    with _orch(retry=_policy(fake_clock)).session() as session:
        answer, usage = session.run_turn(Recorder(provider, client), model="m")
    assert provider.text(answer) == "second try"
    assert usage == OK_USAGE  # read from the SDK's own response object
    assert session.tracker.total_cost() == _cost(9, 12, M_PRICE)
    assert len(scripted_server.requests) == 2
    assert fake_clock.slept == [1.0]  # the provider_failure recipe's backoff
    assert session.summary()["failures"] == {"provider_failure": 1}


def test_a_400_is_raised_at_once_unchanged(
    scripted_server: ScriptedServer, connected: tuple[Provider, Any], fake_clock: FakeClock
) -> None:
    provider, client = connected
    scripted_server.script(provider.bad_request, provider.ok("never reached"))
    fn = Recorder(provider, client)
    with (
        pytest.raises(provider.bad_request_type(client)) as caught,
        _orch(retry=_policy(fake_clock)).session() as session,
    ):
        session.run_turn(fn, model="m")
    assert fn.raised == [caught.value]
    assert caught.value is fn.raised[0]  # the SDK's own error object, not a wrapper
    assert len(scripted_server.requests) == 1
    assert fake_clock.slept == []
    assert session.summary()["failure_class"] == "bad_request"
    assert session.summary()["recovery"]["retries"] == 0  # type: ignore[index]


def test_a_429_waits_the_servers_hint(
    scripted_server: ScriptedServer, connected: tuple[Provider, Any], fake_clock: FakeClock
) -> None:
    provider, client = connected
    scripted_server.script(provider.rate_limited(3), provider.ok("after the wait"))
    with _orch(retry=_policy(fake_clock)).session() as session:
        answer, _ = session.run_turn(Recorder(provider, client), model="m")
    assert provider.text(answer) == "after the wait"
    assert fake_clock.slept == [3.0]  # the hint, not the 1 s backoff
    assert len(scripted_server.requests) == 2
    retried = _events(session, EventName.TURN_RETRIED)
    assert [event.data["delay_seconds"] for event in retried] == [3.0]


def test_x_should_retry_true_on_a_400_is_retried(
    scripted_server: ScriptedServer, connected: tuple[Provider, Any], fake_clock: FakeClock
) -> None:
    provider, client = connected
    scripted_server.script(provider.retry_anyway)
    fn = Recorder(provider, client)
    with pytest.raises(provider.bad_request_type(client)):
        fn("m")
    assert inspect_exception(fn.raised[0]).retryable  # the classifier reads the header
    scripted_server.script(provider.retry_anyway, provider.ok("retried"))
    with _orch(retry=_policy(fake_clock)).session() as session:
        answer, _ = session.run_turn(fn, model="m")
    assert provider.text(answer) == "retried"
    assert len(scripted_server.requests) == 3
    assert fake_clock.slept == [1.0]


def test_429s_exhaust_the_policy_and_chain_the_sdks_error(
    scripted_server: ScriptedServer, connected: tuple[Provider, Any], fake_clock: FakeClock
) -> None:
    provider, client = connected
    scripted_server.script(provider.rate_limited(1))  # repeated for every request
    fn = Recorder(provider, client)
    with (
        pytest.raises(RetriesExhaustedError) as caught,
        _orch(retry=_policy(fake_clock, max_attempts=3)).session() as session,
    ):
        session.run_turn(fn, model="m")
    cause = caught.value.__cause__
    assert isinstance(cause, provider.rate_limit_type(client))
    assert inspect_exception(cause).status_code == 429
    assert cause is fn.raised[-1]  # the last SDK error, unchanged
    assert caught.value.attempts == 3
    assert len(scripted_server.requests) == 3
    assert fake_clock.slept == [1.0, 1.0]
    summary = session.summary()
    assert summary["failure_class"] == "rate_limit"
    assert summary["recovery"]["retries_exhausted"] is True  # type: ignore[index]


# -- 4. fallback models --------------------------------------------------------------------------


def test_a_503_on_the_model_moves_the_turn_to_the_fallback(
    scripted_server: ScriptedServer, connected: tuple[Provider, Any], fake_clock: FakeClock
) -> None:
    provider, client = connected
    scripted_server.script(provider.unavailable, provider.ok("from backup"))
    fn = Recorder(provider, client)  # takes model=: the session passes the model to use
    with _orch(retry=_policy(fake_clock)).session() as session:
        answer, usage = session.run_turn(fn, model="m", fallback_models=["backup"])
    assert provider.text(answer) == "from backup"
    assert [provider.model_of(r) for r in scripted_server.requests] == ["m", "backup"]
    switched = _events(session, EventName.MODEL_SWITCHED)
    assert [event.data["model"] for event in switched] == ["backup"]
    assert list(session.tracker.per_model_summary()) == ["backup"]  # charged to the fallback
    assert session.tracker.total_cost() == _cost(9, 12, (Decimal(1), Decimal(5)))
    assert usage == OK_USAGE


# -- 5. a billed call that raises is charged -----------------------------------------------------


class Answer(pydantic.BaseModel):
    text: str


@pytest.mark.parametrize("retrying", [False, True], ids=["no-policy", "policy"])
def test_a_billed_parse_that_hits_the_length_limit_is_charged(
    scripted_server: ScriptedServer,
    openai_client: openai.OpenAI,
    fake_clock: FakeClock,
    retrying: bool,
) -> None:
    cut = openai_chat_completion(
        '{"text": "the answer is', finish_reason="length", prompt_tokens=1000
    )
    cut["usage"]["completion_tokens"] = 13_500
    cut["usage"]["total_tokens"] = 14_500
    scripted_server.reply(200, cut)
    budget = Budget(max_usd="10")
    orch = _orch(budget=budget, budget_usd="5", retry=_policy(fake_clock) if retrying else None)
    raised: list[Exception] = []

    def parse() -> object:
        try:
            return openai_client.chat.completions.parse(
                model="m", messages=MESSAGES, response_format=Answer
            )
        except Exception as exc:
            raised.append(exc)
            raise

    with pytest.raises(openai.LengthFinishReasonError) as caught, orch.session() as session:
        session.run_turn(parse, model="m")
    assert caught.value is raised[0]
    expected = Decimal("0.2055")  # 1000 * $3/M + 13,500 * $15/M
    assert session.tracker.total_cost() == expected
    assert session.tracker.total_usage() == UsageSnapshot(input_tokens=1000, output_tokens=13_500)
    assert (budget.spent_usd, budget.requests, budget.reserved_usd) == (expected, 1, ZERO)
    failed = _events(session, EventName.TURN_FAILED)
    assert [event.data["cost_usd"] for event in failed] == ["0.2055"]
    assert failed[0].data["output_tokens"] == 13_500
    assert len(scripted_server.requests) == 1  # output_truncated is the caller's to fix
    assert fake_clock.slept == []
    assert session.summary()["failure_class"] == "output_truncated"


# -- 6. a silent provider failure ------------------------------------------------------------------


def _anthropic_aborted() -> Reply:
    body = anthropic_message("", output_tokens=0)
    body["content"] = []
    body["stop_reason"] = None
    return reply(200, body)


SILENT = [
    pytest.param(ANTHROPIC, _anthropic_aborted(), 9, id="anthropic-stop_reason-null"),
    pytest.param(BEDROCK, reply(200, {}), 0, id="bedrock-empty-body"),
]


@pytest.mark.parametrize(("provider", "silent", "billed_input"), SILENT)
def test_a_silent_answer_is_retried_and_the_next_good_one_returned(
    scripted_server: ScriptedServer,
    fake_clock: FakeClock,
    provider: Provider,
    silent: Reply,
    billed_input: int,
) -> None:
    scripted_server.script(silent, provider.ok("a real answer"))
    client = provider.connect(scripted_server.url)
    try:
        with _orch(retry=_policy(fake_clock)).session() as session:
            answer, usage = session.run_turn(Recorder(provider, client), model="m")
    finally:
        client.close()
    assert provider.text(answer) == "a real answer"
    assert usage == OK_USAGE
    assert len(scripted_server.requests) == 2
    assert fake_clock.slept == [1.0]
    assert session.summary()["failures"] == {"provider_failure": 1}
    # What the silent answer did bill (anthropic's input tokens) is charged too.
    assert session.tracker.total_usage() == UsageSnapshot(
        input_tokens=9 + billed_input, output_tokens=12
    )


@pytest.mark.parametrize(("provider", "silent", "billed_input"), SILENT)
def test_a_silent_answer_without_a_policy_fails_the_turn(
    scripted_server: ScriptedServer, provider: Provider, silent: Reply, billed_input: int
) -> None:
    scripted_server.script(silent)
    client = provider.connect(scripted_server.url)
    try:
        with pytest.raises(EmptyResponseError) as caught, _orch().session() as session:
            session.run_turn(Recorder(provider, client), model="m")
    finally:
        client.close()
    response: Any = caught.value.response  # what the SDK returned, kept for the caller
    if provider is BEDROCK:
        assert set(response) == {"ResponseMetadata"}
        assert "without output" in str(caught.value)
    else:
        assert (response.stop_reason, response.usage.output_tokens) == (None, 0)
        assert "stop_reason None" in str(caught.value)
    summary = session.summary()
    assert summary["failure_class"] == "provider_failure"
    assert summary["outcome"] == "failed"
    assert len(scripted_server.requests) == 1
    assert session.tracker.total_usage().input_tokens == billed_input


def _stated_stop(provider: Provider, stop_reason: str) -> Reply:
    if provider is ANTHROPIC:
        body = anthropic_message("", stop_reason=stop_reason, output_tokens=0)
        body["content"] = []
        return reply(200, body)
    return reply(200, converse_response("", stop_reason=stop_reason, output_tokens=0))


def _stop_reason_of(answer: Any) -> object:
    return answer["stopReason"] if isinstance(answer, dict) else answer.stop_reason


def _documented_stops(provider: Provider, client: Any) -> tuple[str, ...]:
    """The stop reasons the SDK itself defines (its type, or botocore's service model)."""
    if provider is ANTHROPIC:
        return get_args(anthropic.types.StopReason)
    return tuple(client.meta.service_model.shape_for("StopReason").enum)


@pytest.mark.parametrize(
    ("provider", "stop_reason"),
    [
        pytest.param(ANTHROPIC, "model_context_window_exceeded", id="anthropic"),
        pytest.param(BEDROCK, "malformed_model_output", id="bedrock"),
    ],
)
def test_a_stop_reason_the_sdk_defines_is_not_a_silent_failure(
    scripted_server: ScriptedServer, provider: Provider, stop_reason: str
) -> None:
    scripted_server.script(_stated_stop(provider, stop_reason))
    client = provider.connect(scripted_server.url)
    try:
        assert stop_reason in _documented_stops(provider, client)
        with _orch().session() as session:
            answer, usage = session.run_turn(Recorder(provider, client), model="m")
    finally:
        client.close()
    assert _stop_reason_of(answer) == stop_reason
    assert usage == UsageSnapshot(input_tokens=9, output_tokens=0)
    assert session.summary()["failures"] == {}


# -- 7. returning a stream object ----------------------------------------------------------------


def _anthropic_stream() -> Reply:
    """A streamed message (server-sent events) as ``POST /v1/messages`` sends it."""
    message = anthropic_message("")
    message.update(content=[], stop_reason=None, usage={"input_tokens": 9, "output_tokens": 1})
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Hello!"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": 12},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    text = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
    return reply(200, text, {"content-type": "text/event-stream"})


def _stream_call(sdk: str, client: Any) -> Any:
    if sdk == "openai":
        return client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    return client.messages.create(model="m", max_tokens=64, messages=MESSAGES, stream=True)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_returned_stream_is_refused_and_its_connection_given_back(
    scripted_server: ScriptedServer, sdk: str
) -> None:
    scripted_server.script(openai_chat_stream() if sdk == "openai" else _anthropic_stream())
    client = (scripted.openai_client if sdk == "openai" else scripted.anthropic_client)(
        scripted_server.url
    )
    streams: list[Any] = []

    def stream() -> Any:
        streams.append(_stream_call(sdk, client))
        return streams[-1]

    budget = Budget(max_usd="1")
    try:
        with (
            pytest.raises(StreamResultError, match="Consume it inside fn") as caught,
            _orch(budget=budget).session() as session,
        ):
            session.run_turn(stream, model="m")
    finally:
        client.close()
    assert type(streams[0]).__name__ == "Stream"
    assert f"{sdk} Stream" in str(caught.value)
    assert streams[0].response.is_closed  # the refused stream's connection was given back
    assert session.tracker.turns == 0
    assert (budget.spent_usd, budget.reserved_usd) == (ZERO, ZERO)
    assert session.summary()["failure_class"] == "validation_error"


def test_a_returned_async_stream_is_refused_and_its_connection_given_back(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.script(openai_chat_stream())
    streams: list[Any] = []

    async def main() -> None:
        async with scripted.async_openai_client(scripted_server.url) as client:

            async def stream() -> Any:
                streams.append(
                    await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
                )
                return streams[-1]

            try:
                async with _orch().asession() as session:
                    with pytest.raises(StreamResultError, match="openai AsyncStream"):
                        await session.arun_turn(stream, model="m")
                    assert streams[0].response.is_closed
            finally:
                for refused in streams:
                    await refused.close()  # the test's own cleanup: nothing leaks past it

    asyncio.run(main())


def test_a_returned_bedrock_event_stream_is_refused_and_its_connection_given_back(
    scripted_server: ScriptedServer, bedrock_client: Any
) -> None:
    # The stream is refused before it is read, so an empty event-stream body will do.
    scripted_server.reply(200, b"", {"content-type": "application/vnd.amazon.eventstream"})
    answers: list[Any] = []

    def converse_stream() -> Any:
        answers.append(bedrock_client.converse_stream(modelId="m", messages=CONVERSE_MESSAGES))
        return answers[-1]

    try:
        with (
            pytest.raises(StreamResultError, match="botocore EventStream"),
            _orch().session() as session,
        ):
            session.run_turn(converse_stream, model="m")
        assert session.tracker.turns == 0
        raw = answers[0]["stream"]._raw_stream  # botocore keeps the urllib3 response here
        assert raw.closed
    finally:
        for answer in answers:
            answer["stream"].close()


# -- 8. a shared budget under concurrent real async calls -------------------------------------

ESTIMATE = UsageSnapshot(input_tokens=1000, output_tokens=100)  # $0.0045 on model "m"
CAP = Decimal("0.05")  # admits 11 turns at the estimate


@pytest.mark.parametrize(
    "actual_input", [1000, 2000], ids=["actual-equals-estimate", "actual-exceeds-estimate"]
)
def test_concurrent_async_turns_on_a_shared_budget_stay_within_the_documented_bound(
    scripted_server: ScriptedServer, actual_input: int
) -> None:
    scripted_server.reply(
        200, openai_chat_completion(prompt_tokens=actual_input, completion_tokens=100)
    )
    budget = Budget(max_usd=CAP, default_estimate=ESTIMATE)
    orch = _orch(budget=budget)
    concurrent, sessions = 120, 4
    in_flight: list[int] = []  # open reservations, seen as each call goes out

    async def main() -> tuple[list[bool], list[Decimal]]:
        async with scripted.async_openai_client(scripted_server.url) as client:
            lanes = asyncio.Semaphore(4)  # bounds open connections; the turns all run at once

            async def chat() -> ChatCompletion:
                in_flight.append(budget.reserved_requests)
                async with lanes:
                    return await client.chat.completions.create(model="m", messages=MESSAGES)

            async def one(session: Session) -> bool:
                try:
                    await session.arun_turn(chat, model="m")  # no per-turn estimate
                except BudgetExceededError:
                    return False
                return True

            async with contextlib.AsyncExitStack() as stack:
                entered = [
                    await stack.enter_async_context(orch.asession()) for _ in range(sessions)
                ]
                done = await asyncio.gather(
                    *(one(entered[i % sessions]) for i in range(concurrent))
                )
            return done, [session.tracker.total_cost() for session in entered]

    done, trackers = asyncio.run(main())
    admitted = sum(done)
    actual = _cost(actual_input, 100, M_PRICE)
    held = _cost(ESTIMATE.input_tokens, ESTIMATE.output_tokens, M_PRICE)
    assert 0 < admitted < concurrent  # the cap admits only some
    assert max(in_flight) > 1  # the admitted turns really overlapped
    assert len(scripted_server.requests) == admitted  # a refused turn never called
    assert budget.spent_usd == actual * admitted
    assert sum(trackers) == budget.spent_usd
    # The documented bound: over the turns in flight, what each cost past what it held.
    assert budget.spent_usd <= CAP + admitted * (actual - held)
    if actual == held:
        assert budget.spent_usd <= CAP
        assert admitted == int(CAP // held)
    assert (budget.reserved_usd, budget.reserved_requests) == (ZERO, 0)
    assert budget.requests == admitted
