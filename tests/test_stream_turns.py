"""Streamed turns: ``stream_turn`` and ``astream_turn`` over small fake streams.

The fakes here are plain objects shaped like each SDK's chunks (Chat chunks
with a final ``usage``, Anthropic's ``message_start``/``message_delta``
events, Responses events, Gemini's running totals, Bedrock's ``metadata``
event); tests/test_stream_turns_real_http.py drives the same paths with the
real SDK clients over loopback HTTP. Time is a FakeClock that the fake
streams move, so the time to first token and the duration are exact.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator, Sequence
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime import (
    AgentFailureClass,
    AsyncTurnStream,
    BaseHook,
    Budget,
    BudgetExceededError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    EventName,
    InvalidValueError,
    MaxIterationsExceededError,
    ModelCall,
    Orchestrator,
    RetryPolicy,
    RetryStats,
    RingBufferSink,
    SessionStateError,
    StreamFailedError,
    TurnStream,
    UsageRecord,
    UsageSnapshot,
)
from techrevati.runtime._streams import reader_for
from techrevati.runtime.orchestrator import EmptyResponseError, Session
from tests.conftest import FakeClock, examples

pytestmark = pytest.mark.usefixtures("priced_models")

M_IN, M_OUT = Decimal(3), Decimal(15)  # model "m": $ per million input, output tokens


def _cost(input_tokens: int, output_tokens: int) -> Decimal:
    return (input_tokens * M_IN + output_tokens * M_OUT) / 1_000_000


# -- fake chunks, one shape per SDK -----------------------------------------------------------


class Usage:
    """An OpenAI Chat usage object."""

    def __init__(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class ChatChunk:
    """An OpenAI ``ChatCompletionChunk``: usage is None but on the final chunk."""

    object = "chat.completion.chunk"

    def __init__(self, text: str, usage: Usage | None = None) -> None:
        self.text = text
        self.usage = usage


class Event:
    """A type-tagged event (Anthropic, OpenAI Responses) with any fields."""

    def __init__(self, type: str, **fields: object) -> None:
        self.type = type
        self.__dict__.update(fields)


class AnthropicUsage:
    def __init__(self, output_tokens: int, input_tokens: int | None = None, **more: int) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cache_creation_input_tokens = more.get("cache_creation_input_tokens")
        self.cache_read_input_tokens = more.get("cache_read_input_tokens")


def message_start(input_tokens: int, output_tokens: int = 1, **cache: int) -> Event:
    usage = AnthropicUsage(output_tokens, input_tokens, **cache)
    return Event("message_start", message=Event("message", usage=usage))


def message_delta(output_tokens: int, **more: int) -> Event:
    return Event("message_delta", usage=AnthropicUsage(output_tokens, **more))


def text_delta(text: str) -> Event:
    return Event("content_block_delta", delta=Event("text_delta", text=text))


def chat_chunks(*texts: str, usage: Usage | None = None) -> list[object]:
    chunks: list[object] = [ChatChunk(text) for text in texts]
    if usage is not None:
        chunks.append(ChatChunk("", usage))
    return chunks


class FakeStream:
    """An SDK stream over ``chunks``: ``close()`` is recorded; ``fail`` raises at that index.

    Every ``next`` moves ``clock`` by ``step`` seconds, so times are exact.
    """

    def __init__(
        self,
        chunks: Sequence[object],
        *,
        clock: FakeClock | None = None,
        step: float = 0.0,
        fail: tuple[int, BaseException] | None = None,
    ) -> None:
        self.chunks = list(chunks)
        self.clock = clock
        self.step = step
        self.fail = fail
        self.closed = 0
        self.read = 0

    def __iter__(self) -> Iterator[object]:
        return self

    def __next__(self) -> object:
        if self.clock is not None:
            self.clock.advance(self.step)
        if self.fail is not None and self.read == self.fail[0]:
            raise self.fail[1]
        if self.read >= len(self.chunks):
            raise StopIteration
        self.read += 1
        return self.chunks[self.read - 1]

    def close(self) -> None:
        self.closed += 1


class FakeAsyncStream:
    """The async twin of :class:`FakeStream` (``aclose()`` is recorded)."""

    def __init__(self, chunks: Sequence[object], *, fail: tuple[int, BaseException] | None = None):
        self.inner = FakeStream(chunks, fail=fail)
        self.started = asyncio.Event()
        self.block_at: int | None = None  # wait forever before this index (for a cancel)

    def __aiter__(self) -> AsyncIterator[object]:
        return self

    async def __anext__(self) -> object:
        await asyncio.sleep(0)
        if self.block_at is not None and self.inner.read == self.block_at:
            self.started.set()
            await asyncio.Event().wait()  # until cancelled
        try:
            return next(self.inner)
        except StopIteration:
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        self.inner.closed += 1

    @property
    def closed(self) -> int:
        return self.inner.closed


class StatusError(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"status {status_code}")
        self.status_code = status_code


def _called(calls: list[int]) -> FakeStream:
    calls.append(1)
    return FakeStream([])


def _orch(**kwargs: Any) -> Orchestrator:
    return Orchestrator(role="writer", phase="draft", **kwargs)


def _events(session: Session, name: EventName) -> list[Any]:
    return [event for event in session.events() if event.name == name]


def _last_data(session: Session, name: EventName) -> dict[str, Any]:
    return dict(_events(session, name)[-1].data)


# -- the chunks pass unchanged; the usage is charged at the end -------------------------------


def test_chunks_pass_unchanged_and_the_usage_is_charged_when_the_stream_ends() -> None:
    chunks = chat_chunks("Hel", "lo", usage=Usage(1200, 300))
    stream = FakeStream(chunks)
    budget = Budget(max_usd="1", default_estimate=UsageSnapshot(1000, 1000))
    with _orch(budget=budget, budget_usd="1").session() as session:
        turn = session.stream_turn(lambda: stream, model="m")
        assert isinstance(turn, TurnStream)
        assert stream.read == 0  # fn is called at the first iteration
        seen = []
        for chunk in turn:
            seen.append(chunk)
            if len(seen) == 1:  # mid-stream: held, not charged
                assert session.tracker.turns == 0
                assert budget.reserved_usd == _cost(1000, 1000)
                assert budget.spent_usd == 0
                assert turn.outcome == "pending"
    assert all(a is b for a, b in zip(seen, chunks, strict=True))
    assert len(seen) == 3
    assert session.tracker.total_cost() == _cost(1200, 300)
    assert (budget.spent_usd, budget.reserved_usd) == (_cost(1200, 300), Decimal(0))
    assert (turn.outcome, turn.usage, turn.usage_unknown) == (
        "completed",
        UsageSnapshot(1200, 300),
        False,
    )
    assert turn.cost_usd == _cost(1200, 300)
    assert turn.chunks == 3
    assert stream.closed == 1  # the connection given back even after a full read
    data = _last_data(session, EventName.TURN_COMPLETED)
    assert (data["input_tokens"], data["output_tokens"]) == (1200, 300)
    assert data["cost_usd"] == str(_cost(1200, 300))
    assert (data["chunks"], data["abandoned"], data["usage_unknown"]) == (3, False, False)
    assert session.summary()["cost_usd"] == str(_cost(1200, 300))


def test_time_to_first_token_and_duration_are_on_the_turn_event() -> None:
    clock = FakeClock()
    stream = FakeStream(chat_chunks("a", "b", "c", usage=Usage(10, 3)), clock=clock, step=0.25)

    def open_stream() -> FakeStream:
        clock.advance(0.5)  # the request, until the response's headers
        return stream

    with _orch(clock=clock).session() as session:
        turn = session.stream_turn(open_stream, model="m")
        assert list(turn)
    data = _last_data(session, EventName.TURN_COMPLETED)
    assert data["time_to_first_token_seconds"] == 0.75  # open + one next
    assert data["duration_seconds"] == 0.5 + 5 * 0.25  # four chunks and the end
    assert (turn.time_to_first_token, turn.duration) == (0.75, 1.75)


def test_a_stream_that_ends_without_usage_is_flagged_never_silently_free() -> None:
    with _orch().session() as session:
        turn = session.stream_turn(lambda: FakeStream(chat_chunks("a", "b")), model="m")
        assert len(list(turn)) == 2
    assert (turn.usage, turn.usage_unknown, turn.outcome) == (UsageSnapshot.ZERO, True, "completed")
    data = _last_data(session, EventName.TURN_COMPLETED)
    assert data["usage_unknown"] is True
    assert session.summary()["turns_without_usage"] == 1


@pytest.mark.parametrize(
    ("chunks", "usage"),
    [
        pytest.param(
            [message_start(100), text_delta("Hi"), message_delta(7), Event("message_stop")],
            UsageSnapshot(100, 7),
            id="anthropic",
        ),
        pytest.param(
            [
                message_start(50, cache_read_input_tokens=900, cache_creation_input_tokens=50),
                message_delta(3),
                message_delta(9, input_tokens=60),  # cumulative: the last one counts
            ],
            UsageSnapshot(1010, 9, cache_read_tokens=900, cache_write_tokens=50),
            id="anthropic-cache-and-late-input",
        ),
        pytest.param(
            [
                Event("response.created", response=Event("response", usage=None)),
                Event("response.output_text.delta", delta="Hi"),
                Event(
                    "response.completed",
                    response=Event(
                        "response", usage={"input_tokens": 40, "output_tokens": 8}, error=None
                    ),
                ),
            ],
            UsageSnapshot(40, 8),
            id="openai-responses",
        ),
        pytest.param(
            [
                {"candidates": [], "usageMetadata": {"promptTokenCount": 30}},
                {"candidates": [], "usageMetadata": {"candidatesTokenCount": 4}},
                {
                    "candidates": [],
                    "usageMetadata": {"candidatesTokenCount": 9, "thoughtsTokenCount": 5},
                },
            ],
            UsageSnapshot(30, 14, reasoning_tokens=5),  # the prompt count kept from chunk 1
            id="gemini-rest-fields-missing-later",
        ),
        pytest.param(
            [
                {"messageStart": {"role": "assistant"}},
                {"contentBlockDelta": {"delta": {"text": "Hi"}}},
                {"messageStop": {"stopReason": "end_turn"}},
                {"metadata": {"usage": {"inputTokens": 25, "outputTokens": 6}}},
            ],
            UsageSnapshot(25, 6),
            id="bedrock",
        ),
        pytest.param(
            [
                {"choices": []},
                {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}},
            ],
            UsageSnapshot(5, 2),
            id="openai-chat-dicts",
        ),
        pytest.param(
            [ChatChunk("a"), ChatChunk("", Usage(6, 3)), ChatChunk("")],
            UsageSnapshot(6, 3),
            id="openai-chat-usage-before-a-last-chunk",
        ),
    ],
)
def test_each_sdk_shape_is_charged_what_it_reported(
    chunks: list[object], usage: UsageSnapshot
) -> None:
    with _orch().session() as session:
        turn = session.stream_turn(lambda: FakeStream(chunks), model="m")
        assert list(turn) == chunks
    assert turn.usage == usage
    assert session.tracker.total_cost() == _cost(usage.input_tokens, usage.output_tokens)


def test_a_bedrock_answer_is_read_through_its_stream_and_the_stream_closed() -> None:
    events = FakeStream([{"metadata": {"usage": {"inputTokens": 3, "outputTokens": 1}}}])
    answer = {"ResponseMetadata": {"HTTPStatusCode": 200}, "stream": events}
    with _orch().session() as session:
        assert list(session.stream_turn(lambda: answer, model="m")) == events.chunks
    assert events.closed == 1
    assert session.tracker.total_cost() == _cost(3, 1)


# -- abandoned streams --------------------------------------------------------------------


def test_breaking_out_of_the_loop_closes_the_stream_and_charges_what_was_reported() -> None:
    stream = FakeStream([message_start(100), text_delta("a"), message_delta(4), text_delta("b")])
    with _orch().session() as session:
        for chunk in session.stream_turn(lambda: stream, model="m"):
            if chunk.type == "message_delta":  # type: ignore[attr-defined]
                break
        # the loop's iterator is gone: CPython closed it at once
        assert stream.closed == 1
    assert stream.read == 3
    data = _last_data(session, EventName.TURN_COMPLETED)
    assert (data["abandoned"], data["usage_unknown"], data["chunks"]) == (True, False, 3)
    assert session.tracker.total_cost() == _cost(100, 4)


def test_an_abandoned_stream_that_reported_nothing_is_flagged() -> None:
    stream = FakeStream(chat_chunks("a", "b", usage=Usage(10, 2)))
    with _orch().session() as session, session.stream_turn(lambda: stream, model="m") as turn:
        next(turn)
    assert stream.closed == 1
    assert (turn.outcome, turn.usage_unknown, turn.chunks) == ("abandoned", True, 1)
    assert session.summary()["turns_without_usage"] == 1
    assert session.tracker.total_cost() == 0


def test_a_stream_never_iterated_calls_nothing_and_holds_nothing() -> None:
    calls: list[int] = []
    budget = Budget(max_usd="1", default_estimate=UsageSnapshot(1000, 1000))
    with _orch(budget=budget).session() as session:
        turn = session.stream_turn(lambda: _called(calls), model="m")
        turn.close()
    assert calls == []
    assert budget.reserved_usd == 0
    assert turn.outcome == "pending"


def test_an_abandoned_stream_counts_as_a_success_on_the_breaker() -> None:
    breaker = CircuitBreaker("llm", failure_threshold=2)
    with _orch(circuit_breaker=breaker).session() as session:
        for _ in session.stream_turn(lambda: FakeStream(chat_chunks("a", "b")), model="m"):
            break
    assert (breaker.metrics().successes, breaker.metrics().failures) == (1, 0)


# -- failures mid-way and before the first chunk ---------------------------------------------


def test_a_mid_stream_failure_is_raised_unchanged_with_the_partial_usage_charged() -> None:
    error = StatusError(529)
    stream = FakeStream([message_start(100), text_delta("a"), message_delta(5)], fail=(3, error))
    budget = Budget(max_usd="1", default_estimate=UsageSnapshot(1000, 1000))
    seen: list[object] = []
    with _orch(budget=budget).session() as session:
        with pytest.raises(StatusError) as caught:
            seen.extend(session.stream_turn(lambda: stream, model="m"))
        assert caught.value is error
    assert len(seen) == 3
    assert stream.closed == 1
    assert session.tracker.total_cost() == _cost(100, 5)
    assert (budget.spent_usd, budget.reserved_usd) == (_cost(100, 5), Decimal(0))
    failed = _last_data(session, EventName.TURN_FAILED)
    assert (failed["chunks"], failed["usage_unknown"]) == (3, False)
    assert (failed["input_tokens"], failed["output_tokens"]) == (100, 5)
    assert failed["cost_usd"] == str(_cost(100, 5))
    assert not _events(session, EventName.TURN_COMPLETED)


def test_a_mid_stream_failure_without_usage_is_flagged_and_releases_the_holds() -> None:
    stream = FakeStream(chat_chunks("a", "b"), fail=(2, ConnectionResetError("peer closed")))
    budget = Budget(max_usd="1", default_estimate=UsageSnapshot(1000, 1000))
    with _orch(budget=budget).session() as session:
        turn = session.stream_turn(lambda: stream, model="m")
        with pytest.raises(ConnectionResetError):
            list(turn)
    assert (turn.outcome, turn.usage_unknown) == ("failed", True)
    assert (budget.spent_usd, budget.reserved_usd) == (Decimal(0), Decimal(0))
    assert _last_data(session, EventName.TURN_FAILED)["usage_unknown"] is True
    assert session.summary()["turns_without_usage"] == 1


def test_mid_stream_failures_open_the_breaker_after_its_threshold() -> None:
    breaker = CircuitBreaker("llm", failure_threshold=2, recovery_timeout_seconds=60)
    opened: list[int] = []

    def broken() -> FakeStream:
        opened.append(1)
        return FakeStream(chat_chunks("a", "b"), fail=(1, ConnectionResetError("dropped")))

    with _orch(circuit_breaker=breaker).session() as session:
        for _ in range(2):
            with pytest.raises(ConnectionResetError):
                list(session.stream_turn(broken, model="m"))
        assert breaker.state is CircuitState.OPEN
        with pytest.raises(CircuitOpenError):
            list(session.stream_turn(broken, model="m"))
    assert len(opened) == 2  # the open breaker refused the third before fn
    assert _events(session, EventName.BREAKER_REJECTED)


def test_a_failure_after_the_first_chunk_is_never_retried() -> None:
    calls: list[int] = []

    def flaky() -> FakeStream:
        calls.append(1)
        return FakeStream(chat_chunks("a", "b"), fail=(1, StatusError(503)))

    stats = RetryStats()
    orch = _orch(retry=RetryPolicy(max_attempts=3, stats=stats), sleep=lambda s: None)
    with orch.session() as session, pytest.raises(StatusError):
        list(session.stream_turn(flaky, model="m"))
    assert calls == [1]
    assert not _events(session, EventName.TURN_RETRIED)
    assert (stats.calls, stats.failures, stats.gave_up, stats.retries) == (1, 1, 1, 0)


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param("fn", id="fn-raises"),
        pytest.param("first", id="first-chunk-raises"),
        pytest.param("empty", id="empty-stream"),
    ],
)
def test_a_failure_before_the_first_chunk_is_retried_on_the_fallback(failure: str) -> None:
    clock = FakeClock()
    models: list[str] = []
    streams: list[FakeStream] = []
    final = chat_chunks("ok", usage=Usage(10, 2))

    def open_stream(model: str) -> FakeStream:
        models.append(model)
        if model == "backup":
            streams.append(FakeStream(final))
        elif failure == "fn":
            raise StatusError(503)
        elif failure == "first":
            streams.append(FakeStream(final, fail=(0, StatusError(503))))
        else:
            streams.append(FakeStream([]))
        return streams[-1]

    policy = RetryPolicy(max_attempts=3, base_delay=0.5, jitter="none")
    orch = _orch(retry=policy, clock=clock, sleep=clock.sleep)
    with orch.session() as session:
        turn = session.stream_turn(open_stream, model="m", fallback_models=["backup"])
        assert list(turn) == final
    assert models == ["m", "backup"]
    assert clock.slept == [0.5]
    assert turn.model == "backup"
    assert all(stream.closed == 1 for stream in streams)  # the failed one given back too
    names = [e.name for e in session.events() if e.name.startswith("turn.")]
    assert names == ["turn.failed", "turn.model_switched", "turn.retried", "turn.completed"]
    if failure == "empty":
        assert _events(session, EventName.TURN_FAILED)[0].data["error_type"] == (
            EmptyResponseError.__name__
        )
    assert session.tracker.total_cost() == Decimal("0.00001") + Decimal("0.00001")  # $1/$5 backup


def test_an_error_event_fails_the_turn_where_the_stream_ends() -> None:
    breaker = CircuitBreaker("llm", failure_threshold=1)
    failed = Event(
        "response.failed",
        response=Event(
            "response",
            usage={"input_tokens": 40, "output_tokens": 2},
            error=Event("error", message="the server had an error"),
        ),
    )
    chunks = [
        Event("response.created", response=None),
        Event("error", message="overloaded"),
        failed,
    ]
    seen: list[object] = []
    with _orch(circuit_breaker=breaker).session() as session:
        with pytest.raises(StreamFailedError, match="server had an error") as caught:
            seen.extend(session.stream_turn(lambda: FakeStream(chunks), model="m"))
        assert seen == chunks  # the caller saw the events themselves first
    assert caught.value.scenario == "provider_failure"
    assert breaker.state is CircuitState.OPEN
    assert session.tracker.total_cost() == _cost(40, 2)
    assert _last_data(session, EventName.TURN_FAILED)["error_type"] == "StreamFailedError"


# -- what fn may return -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("text", "got str"),
        (None, "got NoneType"),
        (42, "got int"),
        ({"output": {}}, "without a 'stream'"),
        (FakeAsyncStream([]), "an async stream goes to astream_turn"),
    ],
)
def test_fn_returning_no_stream_is_refused_and_not_held_against_the_provider(
    returned: object, message: str
) -> None:
    breaker = CircuitBreaker("llm", failure_threshold=1)
    with (
        _orch(circuit_breaker=breaker).session() as session,
        pytest.raises(InvalidValueError, match=message),
    ):
        list(session.stream_turn(lambda: returned, model="m"))
    assert breaker.state is CircuitState.CLOSED
    assert breaker.metrics().failures == 0
    assert session.summary()["failures"] == {"validation_error": 1}


def test_a_stream_manager_is_entered_and_exited() -> None:
    stream = FakeStream([message_start(10), message_delta(2)])
    entered: list[str] = []

    class MessageStreamManager:
        def __enter__(self) -> FakeStream:
            entered.append("enter")
            return stream

        def __exit__(self, *exc: object) -> None:
            entered.append("exit")

    with _orch().session() as session:
        assert len(list(session.stream_turn(MessageStreamManager, model="m"))) == 2
    assert entered == ["enter", "exit"]
    assert session.tracker.total_cost() == _cost(10, 2)


def test_a_generator_is_a_stream_and_is_closed_when_abandoned() -> None:
    closed: list[bool] = []

    def generate() -> Iterator[object]:
        try:
            yield from chat_chunks("a", "b", "c")
        finally:
            closed.append(True)

    with _orch().session() as session:
        for _ in session.stream_turn(generate, model="m"):
            break
    assert closed == [True]


def test_a_chunk_that_raises_when_read_passes_and_is_read_as_nothing() -> None:
    class Hostile:
        @property
        def usage(self) -> object:
            raise RuntimeError("no")

    chunks = [Hostile(), Hostile()]
    with _orch().session() as session:
        assert list(session.stream_turn(lambda: FakeStream(chunks), model="m")) == chunks
    assert _last_data(session, EventName.TURN_COMPLETED)["usage_unknown"] is True


def test_inconsistent_reported_usage_is_flagged_not_guessed() -> None:
    bad = {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "prompt_tokens_details": {"cached_tokens": 9},
    }
    with _orch().session() as session:
        list(session.stream_turn(lambda: FakeStream([{"choices": []}, {"usage": bad}]), model="m"))
    assert _last_data(session, EventName.TURN_COMPLETED)["usage_unknown"] is True


# -- checks at once, budgets, hooks, sinks ------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fn": "not callable"}, "fn must be callable"),
        ({"model": 3}, "model must be a str"),
        ({"estimate": (1, 2)}, "estimate must be a UsageSnapshot"),
        ({"fallback_models": "backup"}, "fallback_models must be a sequence"),
    ],
)
def test_bad_arguments_are_refused_at_once(kwargs: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"fn": lambda: FakeStream([]), **kwargs}
    fn = arguments.pop("fn")
    with _orch().session() as session:
        with pytest.raises(InvalidValueError, match=message):
            session.stream_turn(fn, **arguments)
        with pytest.raises(InvalidValueError, match=message):
            session.astream_turn(fn, **arguments)


def test_the_turn_limit_and_the_session_state_are_checked_at_once() -> None:
    with _orch(max_iterations=1).session() as session:
        list(session.stream_turn(lambda: FakeStream(chat_chunks("a")), model="m"))
        with pytest.raises(MaxIterationsExceededError):
            session.stream_turn(lambda: FakeStream([]), model="m")
    with pytest.raises(SessionStateError):
        session.stream_turn(lambda: FakeStream([]), model="m")


def test_a_spent_budget_refuses_the_stream_before_fn_is_called() -> None:
    calls: list[int] = []
    budget = Budget(max_usd="0.001")
    budget.charge("m", UsageSnapshot(1000, 0))  # $0.003: over the cap
    with _orch(budget=budget).session() as session:
        turn = session.stream_turn(lambda: _called(calls), model="m")
        with pytest.raises(BudgetExceededError):
            next(turn)
    assert calls == []


def test_hooks_see_the_model_call_and_the_stream_at_its_end() -> None:
    seen: list[tuple[str, object]] = []
    stream = FakeStream(chat_chunks("a", usage=Usage(1, 1)))

    class Watch(BaseHook):
        def before_model(self, call: ModelCall) -> ModelCall | None:
            seen.append(("before", call.model))
            return None

        def after_model(self, call: ModelCall, result: object) -> object | None:
            seen.append(("after", result))
            return "ignored: the chunks are already out"

    with _orch(hooks=[Watch()]).session() as session:
        assert len(list(session.stream_turn(lambda: stream, model="m"))) == 2
    assert seen == [("before", "m"), ("after", stream)]


def test_sinks_get_the_usage_record_and_the_event_with_the_stream_figures() -> None:
    events = RingBufferSink()
    records: list[UsageRecord] = []

    class Usages:
        def write_usage(self, record: UsageRecord) -> None:
            records.append(record)

    with _orch(sinks=[events, Usages()]).session() as session:
        list(
            session.stream_turn(lambda: FakeStream(chat_chunks("a", usage=Usage(8, 4))), model="m")
        )
    (record,) = records
    assert (record.input_tokens, record.output_tokens, record.cost_usd) == (8, 4, _cost(8, 4))
    completed = [e for e in events.events() if e.name == EventName.TURN_COMPLETED]
    assert completed[0].data["chunks"] == 2
    assert "time_to_first_token_seconds" in completed[0].data


# -- async ----------------------------------------------------------------------------------


def test_async_stream_is_charged_at_its_end() -> None:
    async def main() -> tuple[Session, list[object], AsyncTurnStream[Any]]:
        stream = FakeAsyncStream([message_start(100), text_delta("x"), message_delta(20)])
        seen: list[object] = []
        async with _orch().asession() as session:
            turn = session.astream_turn(lambda: stream, model="m")
            async for chunk in turn:
                seen.append(chunk)
        assert stream.closed == 1
        return session, seen, turn

    session, seen, turn = asyncio.run(main())
    assert len(seen) == 3
    assert turn.usage == UsageSnapshot(100, 20)
    assert session.tracker.total_cost() == _cost(100, 20)


def test_async_fn_may_be_a_coroutine_or_an_async_generator() -> None:
    async def opened() -> FakeAsyncStream:
        return FakeAsyncStream(chat_chunks("a", usage=Usage(4, 2)))

    async def generated() -> AsyncIterator[object]:
        for chunk in chat_chunks("a", usage=Usage(4, 2)):
            yield chunk

    async def main() -> Session:
        async with _orch().asession() as session:
            async for _ in session.astream_turn(opened, model="m"):
                pass
            async for _ in session.astream_turn(generated, model="m"):
                pass
        return session

    assert asyncio.run(main()).tracker.total_cost() == 2 * _cost(4, 2)


def test_async_abandoned_stream_is_closed_by_async_with() -> None:
    async def main() -> tuple[FakeAsyncStream, AsyncTurnStream[Any], Session]:
        stream = FakeAsyncStream([message_start(70), message_delta(3), text_delta("more")])
        async with (
            _orch().asession() as session,
            session.astream_turn(lambda: stream, model="m") as turn,
        ):
            async for chunk in turn:
                if chunk.type == "message_delta":  # type: ignore[attr-defined]
                    break
        return stream, turn, session

    stream, turn, session = asyncio.run(main())
    assert stream.closed == 1
    assert (turn.outcome, turn.usage) == ("abandoned", UsageSnapshot(70, 3))
    assert session.tracker.total_cost() == _cost(70, 3)


def test_async_stream_dropped_in_a_loop_is_closed_by_the_event_loop() -> None:
    async def main() -> FakeAsyncStream:
        stream = FakeAsyncStream(chat_chunks("a", "b"))
        async with _orch().asession() as session:
            async for _ in session.astream_turn(lambda: stream, model="m"):
                break
            gc.collect()
            for _ in range(3):  # the loop runs the finalizer's aclose
                await asyncio.sleep(0)
            assert stream.closed == 1
        return stream

    asyncio.run(main())


def test_a_cancelled_task_closes_its_stream_and_charges_what_was_reported() -> None:
    breaker = CircuitBreaker("llm", failure_threshold=1)

    async def main() -> tuple[FakeAsyncStream, Session]:
        stream = FakeAsyncStream([message_start(100), message_delta(9), text_delta("a")])
        stream.block_at = 2
        async with _orch(circuit_breaker=breaker).asession() as session:

            async def consume() -> None:
                async for _ in session.astream_turn(lambda: stream, model="m"):
                    pass

            task = asyncio.ensure_future(consume())
            await stream.started.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return stream, session

    stream, session = asyncio.run(main())
    assert stream.closed == 1
    failed = _events(session, EventName.TURN_FAILED)[-1]
    assert failed.failure_class == AgentFailureClass.CANCELLED
    assert session.tracker.total_cost() == _cost(100, 9)
    assert breaker.state is CircuitState.CLOSED  # a cancellation is not the provider's failure
    assert breaker.metrics().failures == 0


def test_async_mid_stream_failure_opens_the_breaker() -> None:
    breaker = CircuitBreaker("llm", failure_threshold=2)

    async def main() -> None:
        async with _orch(circuit_breaker=breaker).asession() as session:
            for _ in range(2):
                stream = FakeAsyncStream(chat_chunks("a", "b"), fail=(1, StatusError(500)))
                with pytest.raises(StatusError):
                    async for _ in session.astream_turn(lambda s=stream: s, model="m"):
                        pass
                assert stream.closed == 1
            with pytest.raises(CircuitOpenError):
                async for _ in session.astream_turn(lambda: FakeAsyncStream([]), model="m"):
                    pass

    asyncio.run(main())
    assert breaker.state is CircuitState.OPEN


def test_async_retry_before_the_first_chunk() -> None:
    clock = FakeClock()
    attempts: list[int] = []

    async def open_stream() -> FakeAsyncStream:
        attempts.append(1)
        if len(attempts) == 1:
            raise StatusError(503)
        return FakeAsyncStream(chat_chunks("ok", usage=Usage(10, 2)))

    async def main() -> Session:
        orch = _orch(retry=RetryPolicy(max_attempts=2, base_delay=1, jitter="none"), clock=clock)
        orch._async_sleep = clock.asleep
        async with orch.asession() as session:
            async for _ in session.astream_turn(open_stream, model="m"):
                pass
        return session

    session = asyncio.run(main())
    assert attempts == [1, 1]
    assert clock.slept == [1]
    assert session.tracker.total_cost() == _cost(10, 2)


def test_sync_streams_are_refused_by_astream_turn() -> None:
    async def main() -> None:
        async with _orch().asession() as session:
            with pytest.raises(InvalidValueError, match="a sync stream goes to stream_turn"):
                async for _ in session.astream_turn(lambda: FakeStream([]), model="m"):
                    pass

    asyncio.run(main())


# -- properties: what is charged is exactly what was reported before the stream ended ---------


@settings(max_examples=examples(60))
@given(
    input_tokens=st.integers(0, 10**7),
    outputs=st.lists(st.integers(0, 10**6), min_size=1, max_size=12),
    stop=st.integers(0, 14),
    cut=st.sampled_from(["abandon", "fail", "end"]),
)
def test_the_charge_is_the_last_cumulative_usage_seen(
    input_tokens: int, outputs: list[int], stop: int, cut: str
) -> None:
    totals = sorted(outputs)  # message_delta counts are cumulative
    chunks: list[object] = [message_start(input_tokens)]
    for total in totals:
        chunks += [text_delta("x"), message_delta(total)]
    stop = min(stop, len(chunks) - 1)  # the index of the last chunk the caller takes
    fail = (stop + 1, StatusError(500)) if cut == "fail" else None
    stream = FakeStream(chunks, fail=fail)
    budget = Budget(max_usd="1000000", default_estimate=UsageSnapshot(10, 10))
    with _orch(budget=budget).session() as session:
        turn = session.stream_turn(lambda: stream, model="m")
        try:
            for index, _ in enumerate(turn):
                if cut == "abandon" and index == stop:
                    turn.close()
                    break
        except StatusError:
            pass
    seen = chunks if cut == "end" else chunks[: stop + 1]
    deltas = [c for c in seen if c.type == "message_delta"]  # type: ignore[attr-defined]
    output = deltas[-1].usage.output_tokens if deltas else 1  # type: ignore[attr-defined]
    assert stream.closed >= 1
    assert turn.usage == UsageSnapshot(input_tokens, output)
    assert session.tracker.total_cost() == _cost(input_tokens, output)
    assert budget.spent_usd == _cost(input_tokens, output)
    assert budget.reserved_usd == 0
    assert turn.outcome == {"abandon": "abandoned", "fail": "failed", "end": "completed"}[cut]


@settings(max_examples=examples(60))
@given(
    counts=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                "promptTokenCount": st.integers(0, 10**6),
                "candidatesTokenCount": st.integers(0, 10**6),
                "thoughtsTokenCount": st.integers(0, 10**6),
                "cachedContentTokenCount": st.integers(0, 10**6),
            },
        ),
        min_size=1,
        max_size=8,
    )
)
def test_gemini_running_totals_keep_each_fields_largest_value(
    counts: list[dict[str, int]],
) -> None:
    reader = reader_for({"candidates": []})
    for usage in counts:
        reader.feed({"candidates": [], "usageMetadata": usage})

    def top(name: str) -> int:
        return max((usage.get(name, 0) for usage in counts), default=0)

    prompt, cached = top("promptTokenCount"), top("cachedContentTokenCount")
    thoughts = top("thoughtsTokenCount")
    expected = (
        None
        if cached > prompt
        else UsageSnapshot(prompt, top("candidatesTokenCount") + thoughts, cached, 0, thoughts)
    )
    assert reader.usage() == expected  # an inconsistent report is no usage, never a guess


# -- a rate limiter throttles streamed turns too -------------------------------------------


def test_a_streamed_turn_waits_for_the_rate_limiter_and_settles_its_usage() -> None:
    from techrevati.runtime.rate_limit import RateLimiter
    from tests.conftest import FakeClock

    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=1, clock=clock, sleep=clock.sleep)
    orch = Orchestrator("coder", "build", rate_limiter=limiter, clock=clock)
    with orch.session() as session:
        chunks = chat_chunks("a", usage=Usage(7, 3))
        assert len(list(session.stream_turn(lambda: FakeStream(chunks), model="m"))) == 2
        assert limiter.usage() == {
            "requests": 1,
            "tokens": 10,
            "input_tokens": 7,
            "output_tokens": 3,
            "open": 0,
        }
        clock.advance(15)
        list(session.stream_turn(lambda: FakeStream(chat_chunks("b")), model="m"))
        assert clock.slept == [45.0]  # the window's one request frees 60 s after the first
        throttled = [e for e in session.events() if e.name == EventName.TURN_THROTTLED]
    assert [e.data["wait_seconds"] for e in throttled] == [45.0]


def test_an_async_streamed_turn_waits_for_the_rate_limiter() -> None:
    from techrevati.runtime.rate_limit import RateLimiter
    from tests.conftest import FakeClock

    clock = FakeClock()
    limiter = RateLimiter(requests_per_minute=1, clock=clock, async_sleep=clock.asleep)
    orch = Orchestrator("coder", "build", rate_limiter=limiter, clock=clock)

    async def main() -> None:
        with orch.session() as session:
            for text in ("a", "b"):
                stream = FakeAsyncStream(chat_chunks(text))
                async for _chunk in session.astream_turn(lambda s=stream: s, model="m"):
                    pass

    asyncio.run(main())
    assert clock.slept == [60.0]
    assert limiter.usage()["requests"] == 1  # the first left the window as the second came
