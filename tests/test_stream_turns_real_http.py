"""Streamed turns driving the real SDK clients over loopback HTTP, and the real SDK types.

``fn`` opens a real openai, anthropic, google-genai or botocore stream
against the scripted server in tests/scripted_server.py, which sends
server-sent events (or AWS event-stream frames) and, for the failure tests,
cuts the body short: dropping the connection mid-stream, or holding it open
until the client hangs up (the server counts that, so "the abandoned stream
closed its connection" is asserted on the server's side). The SDKs' own
retries are off. tests/test_stream_turns.py covers the same paths with fakes.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import struct
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from botocore.exceptions import EventStreamError
from google.genai import types as genai_types

from techrevati.runtime import (
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    EventName,
    Orchestrator,
    StreamFailedError,
    UsageSnapshot,
)
from techrevati.runtime.orchestrator import Session
from tests import scripted_server as scripted
from tests.scripted_server import Reply, ScriptedServer, reply

MESSAGES: Any = [{"role": "user", "content": "hi"}]
CONVERSE_MESSAGES: Any = [{"role": "user", "content": [{"text": "hi"}]}]
M_IN, M_OUT = Decimal(3), Decimal(15)  # model "m": $ per million input, output tokens
SSE: Mapping[str, str] = {"content-type": "text/event-stream"}

pytestmark = pytest.mark.usefixtures("priced_models")


def _cost(input_tokens: int, output_tokens: int) -> Decimal:
    return (input_tokens * M_IN + output_tokens * M_OUT) / 1_000_000


def _orch(**kwargs: Any) -> Orchestrator:
    return Orchestrator(role="writer", phase="draft", **kwargs)


def _data(session: Session, name: EventName) -> dict[str, Any]:
    return dict([e for e in session.events() if e.name == name][-1].data)


def _sse(events: list[tuple[str | None, object]]) -> bytes:
    """Server-sent events: ``event:`` when named, one ``data:`` line of JSON (or text) each."""
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        out.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    return "".join(out).encode()


# -- the providers' streams, as their APIs send them -----------------------------------------


def _chat_chunk(delta: Mapping[str, str], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}],
    }


def openai_chat_events(*texts: str, usage: tuple[int, int] | None = (1200, 300)) -> list[Any]:
    """A chat stream's events: content chunks, the finish, the usage chunk when asked for."""
    events: list[tuple[str | None, object]] = [
        (None, _chat_chunk({"role": "assistant", "content": texts[0]})),
        *[(None, _chat_chunk({"content": text})) for text in texts[1:]],
        (None, _chat_chunk({}, "stop")),
    ]
    if usage is not None:
        final = {**_chat_chunk({}), "choices": []}
        final["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }
        events.append((None, final))
    return events


def openai_chat(*texts: str, usage: tuple[int, int] | None = (1200, 300)) -> Reply:
    body = _sse([*openai_chat_events(*texts, usage=usage), (None, "[DONE]")])
    return reply(200, body, SSE)


OPENAI_STREAM_ERROR: Any = (
    None,
    {"error": {"message": "The server had an error", "type": "server_error", "code": None}},
)


def anthropic_events(
    input_tokens: int = 1200, outputs: tuple[int, ...] = (300,), **cache: object
) -> list[Any]:
    """A Messages stream: message_start with the input usage, deltas, cumulative message_delta."""
    usage: dict[str, object] = {"input_tokens": input_tokens, "output_tokens": 1, **cache}
    message: dict[str, object] = {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    events: list[tuple[str | None, object]] = [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    for output in outputs:
        events.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": "Hi"},
                },
            )
        )
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": None, "stop_sequence": None},
                    "usage": {"output_tokens": output},
                },
            )
        )
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    events.append(("message_stop", {"type": "message_stop"}))
    return events


def anthropic_stream(**kwargs: Any) -> Reply:
    return reply(200, _sse(anthropic_events(**kwargs)), SSE)


ANTHROPIC_STREAM_ERROR: Any = (
    "error",
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
)


def _openai_stream(client: Any, *, usage: bool = True) -> Any:
    options: Any = {"include_usage": True} if usage else openai.omit
    return client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options=options
    )


def _anthropic_stream(client: Any) -> Any:
    return client.messages.create(model="m", max_tokens=64, messages=MESSAGES, stream=True)


# -- exact cost at the stream's end --------------------------------------------------------


def test_openai_chat_stream_is_charged_exactly_at_its_end(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(openai_chat("Hel", "lo", usage=(1200, 300)))
    texts = []
    with _orch(budget_usd="1").session() as session:
        turn = session.stream_turn(lambda: _openai_stream(openai_client), model="m")
        for chunk in turn:
            if chunk.choices:
                texts.append(chunk.choices[0].delta.content or "")
            if len(texts) == 1:
                assert session.tracker.turns == 0  # nothing charged before the end
    assert "".join(texts) == "Hello"
    assert scripted_server.requests[0].json["stream_options"] == {"include_usage": True}
    assert turn.usage == UsageSnapshot(1200, 300)
    assert session.tracker.total_cost() == _cost(1200, 300) == Decimal("0.0081")
    data = _data(session, EventName.TURN_COMPLETED)
    assert (data["chunks"], data["usage_unknown"], data["cost_usd"]) == (4, False, "0.0081")


def test_async_openai_chat_stream_is_charged_exactly_at_its_end(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.script(openai_chat("Hi", usage=(900, 100)))

    async def main() -> Session:
        async with (
            scripted.async_openai_client(scripted_server.url) as client,
            _orch().asession() as session,
        ):
            chunks = [
                c async for c in session.astream_turn(lambda: _openai_stream(client), model="m")
            ]
            assert type(chunks[-1]).__name__ == "ChatCompletionChunk"
        return session

    session = asyncio.run(main())
    assert session.tracker.total_cost() == _cost(900, 100)


def test_openai_chat_stream_manager_is_entered_and_its_chunk_events_read(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(openai_chat("Hel", "lo", usage=(700, 70)))

    def open_stream() -> Any:
        return openai_client.chat.completions.stream(
            model="m", messages=MESSAGES, stream_options={"include_usage": True}
        )

    with _orch().session() as session:
        turn = session.stream_turn(open_stream, model="m")
        kinds = {event.type for event in turn}
    assert {"chunk", "content.delta", "content.done"} <= kinds  # the helper's own events
    assert turn.usage == UsageSnapshot(700, 70)
    assert session.tracker.total_cost() == _cost(700, 70)


@pytest.mark.parametrize("style", ["raw", "manager"])
def test_anthropic_stream_is_charged_exactly_at_its_end(
    scripted_server: ScriptedServer, anthropic_client: anthropic.Anthropic, style: str
) -> None:
    scripted_server.script(anthropic_stream(input_tokens=1200, outputs=(100, 300)))

    def open_stream() -> Any:
        if style == "raw":
            return _anthropic_stream(anthropic_client)
        return anthropic_client.messages.stream(model="m", max_tokens=64, messages=MESSAGES)

    with _orch().session() as session:
        turn = session.stream_turn(open_stream, model="m")
        kinds = [event.type for event in turn]
    assert kinds[0] == "message_start"
    assert "message_delta" in kinds
    assert turn.usage == UsageSnapshot(1200, 300)  # the last cumulative delta, not a sum
    assert session.tracker.total_cost() == _cost(1200, 300)


@pytest.mark.parametrize("style", ["raw", "manager"])
def test_async_anthropic_stream_is_charged_exactly_at_its_end(
    scripted_server: ScriptedServer, style: str
) -> None:
    scripted_server.script(anthropic_stream(input_tokens=500, outputs=(20, 40)))

    async def main() -> Session:
        async with (
            scripted.async_anthropic_client(scripted_server.url) as client,
            _orch().asession() as session,
        ):

            def open_stream() -> Any:
                if style == "raw":
                    return _anthropic_stream(client)
                return client.messages.stream(model="m", max_tokens=64, messages=MESSAGES)

            async for _ in session.astream_turn(open_stream, model="m"):
                pass
        return session

    assert asyncio.run(main()).tracker.total_cost() == _cost(500, 40)


def test_anthropic_stream_keeps_the_cache_split_of_message_start(
    scripted_server: ScriptedServer, anthropic_client: anthropic.Anthropic
) -> None:
    cache = {
        "cache_read_input_tokens": 4000,
        "cache_creation_input_tokens": 1000,
        "cache_creation": {"ephemeral_5m_input_tokens": 400, "ephemeral_1h_input_tokens": 600},
    }
    scripted_server.script(anthropic_stream(input_tokens=50, outputs=(7,), **cache))
    with _orch().session() as session:
        turn = session.stream_turn(lambda: _anthropic_stream(anthropic_client), model="m")
        list(turn)
    direct = UsageSnapshot.from_response(
        anthropic.types.Usage(input_tokens=50, output_tokens=7, **cache)  # type: ignore[arg-type]
    )
    assert turn.usage == direct  # read as from_response reads the final message's usage
    assert (turn.usage.input_tokens, turn.usage.cache_read_tokens) == (5050, 4000)


def test_openai_responses_stream_is_charged_from_response_completed(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(reply(200, _sse(responses_events("completed")), SSE))
    with _orch().session() as session:
        turn = session.stream_turn(
            lambda: openai_client.responses.create(model="m", input="hi", stream=True), model="m"
        )
        kinds = [event.type for event in turn]
    assert kinds == ["response.created", "response.output_text.delta", "response.completed"]
    assert turn.usage == UsageSnapshot(1200, 300)
    assert session.tracker.total_cost() == _cost(1200, 300)


def test_openai_responses_failed_event_fails_the_turn_and_counts_on_the_breaker(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(reply(200, _sse(responses_events("failed")), SSE))
    breaker = CircuitBreaker("llm", failure_threshold=1)
    kinds: list[str] = []
    with _orch(circuit_breaker=breaker).session() as session:
        turn = session.stream_turn(
            lambda: openai_client.responses.create(model="m", input="hi", stream=True), model="m"
        )
        with pytest.raises(StreamFailedError, match="The model failed"):
            kinds.extend(event.type for event in turn)
    assert kinds[-1] == "response.failed"  # the caller got the event itself first
    assert breaker.state is CircuitState.OPEN
    assert session.tracker.total_cost() == _cost(1200, 300)  # the partial usage, charged


def responses_events(end: str) -> list[Any]:
    def response(status: str, usage: object, error: object = None) -> dict[str, Any]:
        return {
            "id": "resp_test",
            "object": "response",
            "created_at": 1_700_000_000,
            "status": status,
            "error": error,
            "incomplete_details": None,
            "model": "m",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": usage,
        }

    usage = {
        "input_tokens": 1200,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 300,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 1500,
    }
    error = {"code": "server_error", "message": "The model failed to answer"}
    final = response("completed", usage) if end == "completed" else response("failed", usage, error)
    return [
        (
            "response.created",
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": response("in_progress", None),
            },
        ),
        (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "sequence_number": 1,
                "item_id": "msg_test",
                "output_index": 0,
                "content_index": 0,
                "delta": "Hi",
                "logprobs": [],
            },
        ),
        (f"response.{end}", {"type": f"response.{end}", "sequence_number": 2, "response": final}),
    ]


# -- a stream without usage is flagged --------------------------------------------------


def test_a_stream_without_usage_is_flagged(
    scripted_server: ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.script(openai_chat("Hi", usage=None))  # no stream_options: no usage chunk
    with _orch().session() as session:
        turn = session.stream_turn(lambda: _openai_stream(openai_client, usage=False), model="m")
        assert len(list(turn)) == 2
    assert "stream_options" not in scripted_server.requests[0].json
    assert (turn.usage_unknown, turn.outcome) == (True, "completed")
    assert _data(session, EventName.TURN_COMPLETED)["usage_unknown"] is True
    assert session.summary()["turns_without_usage"] == 1


def test_an_async_stream_without_usage_is_flagged(scripted_server: ScriptedServer) -> None:
    scripted_server.script(openai_chat("Hi", usage=None))

    async def main() -> Session:
        async with (
            scripted.async_openai_client(scripted_server.url) as client,
            _orch().asession() as session,
        ):
            async for _ in session.astream_turn(
                lambda: _openai_stream(client, usage=False), model="m"
            ):
                pass
        return session

    assert asyncio.run(main()).summary()["turns_without_usage"] == 1


# -- mid-stream failures open the breaker after its threshold -------------------------------

_BROKEN: dict[str, Callable[[], Reply]] = {
    "openai-error-event": lambda: reply(
        200, _sse([openai_chat_events("Hi")[0], OPENAI_STREAM_ERROR]), SSE
    ),
    "openai-dropped": lambda: reply(200, _sse(openai_chat_events("Hi")[:1]), SSE, cut="drop"),
    "anthropic-error-event": lambda: reply(
        200, _sse([*anthropic_events()[:2], ANTHROPIC_STREAM_ERROR]), SSE
    ),
    "anthropic-dropped": lambda: reply(200, _sse(anthropic_events()[:2]), SSE, cut="drop"),
}
_RAISED: dict[str, tuple[type[BaseException], ...]] = {
    "openai-error-event": (openai.APIError,),
    "openai-dropped": (openai.APIConnectionError,),
    "anthropic-error-event": (anthropic.APIStatusError,),
    "anthropic-dropped": (httpx2.RemoteProtocolError, anthropic.APIConnectionError),
}


@pytest.mark.parametrize("case", sorted(_BROKEN))
def test_mid_stream_failures_open_the_breaker_after_its_threshold(
    scripted_server: ScriptedServer, case: str
) -> None:
    scripted_server.script(_BROKEN[case](), _BROKEN[case]())
    breaker = CircuitBreaker("llm", failure_threshold=2, recovery_timeout_seconds=60)
    sdk = case.split("-", maxsplit=1)[0]
    connect = scripted.openai_client if sdk == "openai" else scripted.anthropic_client
    with connect(scripted_server.url) as client:
        open_stream = _openai_stream if sdk == "openai" else _anthropic_stream
        with _orch(circuit_breaker=breaker).session() as session:
            for _ in range(2):
                seen: list[object] = []
                with pytest.raises(_RAISED[case]):
                    seen.extend(session.stream_turn(lambda: open_stream(client), model="m"))
                assert seen  # it failed mid-way: after a chunk reached the caller
            assert breaker.state is CircuitState.OPEN
            with pytest.raises(CircuitOpenError):
                list(session.stream_turn(lambda: open_stream(client), model="m"))
    assert len(scripted_server.requests) == 2  # the open breaker never let the third out
    failed = _data(session, EventName.TURN_FAILED)
    assert failed["chunks"] >= 1
    if sdk == "anthropic":  # message_start had reported the input: it is charged
        assert session.tracker.total_cost() == 2 * _cost(1200, 1)
    else:  # OpenAI reports usage only in the last chunk: none, flagged
        assert session.tracker.total_cost() == 0
        assert session.summary()["turns_without_usage"] == 2


@pytest.mark.parametrize("case", ["openai-error-event", "anthropic-dropped"])
def test_async_mid_stream_failures_open_the_breaker(
    scripted_server: ScriptedServer, case: str
) -> None:
    scripted_server.script(_BROKEN[case](), _BROKEN[case]())
    breaker = CircuitBreaker("llm", failure_threshold=2, recovery_timeout_seconds=60)
    sdk = case.split("-", maxsplit=1)[0]

    async def main() -> None:
        connect: Any = (
            scripted.async_openai_client if sdk == "openai" else scripted.async_anthropic_client
        )
        open_stream = _openai_stream if sdk == "openai" else _anthropic_stream
        async with (
            connect(scripted_server.url) as client,
            _orch(circuit_breaker=breaker).asession() as session,
        ):
            for _ in range(2):
                with pytest.raises(_RAISED[case]):
                    async for _ in session.astream_turn(lambda: open_stream(client), model="m"):
                        pass
            with pytest.raises(CircuitOpenError):
                async for _ in session.astream_turn(lambda: open_stream(client), model="m"):
                    pass

    asyncio.run(main())
    assert breaker.state is CircuitState.OPEN
    assert len(scripted_server.requests) == 2


# -- an abandoned stream closes its connection (seen from the server) --------------------


def _held(sdk: str) -> Reply:
    """A stream whose first events arrive, then nothing: the connection stays open."""
    if sdk == "openai":
        return reply(200, _sse(openai_chat_events("Hi", "there")[:2]), SSE, cut="hold")
    return reply(200, _sse(anthropic_events()[:3]), SSE, cut="hold")


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_breaking_out_of_a_stream_closes_its_connection(
    scripted_server: ScriptedServer, sdk: str
) -> None:
    scripted_server.script(_held(sdk))
    connect = scripted.openai_client if sdk == "openai" else scripted.anthropic_client
    open_stream = _openai_stream if sdk == "openai" else _anthropic_stream
    with connect(scripted_server.url) as client, _orch().session() as session:
        for _ in session.stream_turn(lambda: open_stream(client), model="m"):
            break  # the loop's iterator is dropped: the stream is closed here
        assert scripted_server.wait_for_hangup()
    data = _data(session, EventName.TURN_COMPLETED)
    assert (data["abandoned"], data["chunks"]) == (True, 1)
    if sdk == "anthropic":  # message_start's usage is what the provider reported
        assert (data["usage_unknown"], session.tracker.total_cost()) == (False, _cost(1200, 1))
    else:
        assert (data["usage_unknown"], session.tracker.total_cost()) == (True, Decimal(0))


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("how", ["async-with", "task-cancelled", "dropped-loop"])
def test_an_abandoned_async_stream_closes_its_connection(
    scripted_server: ScriptedServer, sdk: str, how: str
) -> None:
    scripted_server.script(_held(sdk))
    connect: Any = (
        scripted.async_openai_client if sdk == "openai" else scripted.async_anthropic_client
    )
    open_stream = _openai_stream if sdk == "openai" else _anthropic_stream

    async def main() -> tuple[Session, bool]:
        async with connect(scripted_server.url) as client, _orch().asession() as session:
            if how == "async-with":
                async with session.astream_turn(lambda: open_stream(client), model="m") as turn:
                    async for _ in turn:
                        break
            elif how == "dropped-loop":
                async for _ in session.astream_turn(lambda: open_stream(client), model="m"):
                    break  # the event loop finalizes the dropped iterator
            else:
                first = asyncio.Event()

                async def consume() -> None:
                    async for _ in session.astream_turn(lambda: open_stream(client), model="m"):
                        first.set()  # then it waits on a read that never comes

                task = asyncio.ensure_future(consume())
                await first.wait()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            hung_up = await asyncio.to_thread(scripted_server.wait_for_hangup)
        return session, hung_up

    session, hung_up = asyncio.run(main())
    assert hung_up
    name = EventName.TURN_FAILED if how == "task-cancelled" else EventName.TURN_COMPLETED
    data = _data(session, name)
    assert data["usage_unknown"] is (sdk == "openai")
    expected = 0 if sdk == "openai" else _cost(1200, 1)
    assert session.tracker.total_cost() == expected


# -- Gemini and Bedrock --------------------------------------------------------------------


def test_gemini_stream_over_http_keeps_fields_missing_from_later_chunks(
    scripted_server: ScriptedServer, genai_client: Any
) -> None:
    def chunk(text: str, usage: dict[str, int], finish: str | None = None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}}
        if finish:
            candidate["finishReason"] = finish
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "m"}

    events: list[tuple[str | None, object]] = [
        (None, chunk("Hel", {"promptTokenCount": 1200, "candidatesTokenCount": 2})),
        (None, chunk("lo", {"candidatesTokenCount": 250, "thoughtsTokenCount": 50}, "STOP")),
    ]
    scripted_server.script(reply(200, _sse(events), SSE))
    with _orch().session() as session:
        turn = session.stream_turn(
            lambda: genai_client.models.generate_content_stream(model="m", contents="hi"),
            model="m",
        )
        assert "".join(c.text for c in turn) == "Hello"
    assert "streamGenerateContent" in scripted_server.requests[0].path
    assert turn.usage == UsageSnapshot(1200, 300, reasoning_tokens=50)  # the prompt kept
    assert session.tracker.total_cost() == _cost(1200, 300)


def test_gemini_stream_of_the_real_sdk_types_offline() -> None:
    usage = genai_types.GenerateContentResponseUsageMetadata

    def chunk(text: str, meta: Any) -> Any:
        return genai_types.GenerateContentResponse(
            candidates=[
                genai_types.Candidate(
                    content=genai_types.Content(role="model", parts=[genai_types.Part(text=text)])
                )
            ],
            usage_metadata=meta,
        )

    chunks = [
        chunk("a", usage(prompt_token_count=800, cached_content_token_count=600)),
        chunk("b", None),
        chunk("c", usage(candidates_token_count=90, thoughts_token_count=10)),
    ]

    def generate() -> Iterator[Any]:
        yield from chunks

    async def agenerate() -> AsyncIterator[Any]:
        for item in chunks:
            yield item

    expected = UsageSnapshot(800, 100, cache_read_tokens=600, reasoning_tokens=10)
    with _orch().session() as session:
        turn = session.stream_turn(generate, model="m")
        assert list(turn) == chunks
    assert turn.usage == expected

    async def main() -> Any:
        async with _orch().asession() as asession:
            aturn = asession.astream_turn(agenerate, model="m")
            assert [c async for c in aturn] == chunks
        return aturn.usage

    assert asyncio.run(main()) == expected


def _frame(headers: Mapping[str, str], payload: object) -> bytes:
    """One AWS event-stream message: prelude, string headers, JSON payload, CRCs."""
    head = b"".join(
        struct.pack("B", len(name))
        + name.encode()
        + struct.pack(">BH", 7, len(value))
        + value.encode()
        for name, value in headers.items()
    )
    body = json.dumps(payload).encode()
    total = 12 + len(head) + len(body) + 4
    prelude = struct.pack(">II", total, len(head))
    prelude += struct.pack(">I", binascii.crc32(prelude))
    message = prelude + head + body
    return message + struct.pack(">I", binascii.crc32(message))


def _event(kind: str, payload: object) -> bytes:
    return _frame(
        {":event-type": kind, ":content-type": "application/json", ":message-type": "event"},
        payload,
    )


def _converse_stream(*frames: bytes, cut: Any = None) -> Reply:
    return reply(
        200, b"".join(frames), {"content-type": "application/vnd.amazon.eventstream"}, cut=cut
    )


_CONVERSE = (
    _event("messageStart", {"role": "assistant"}),
    _event("contentBlockDelta", {"delta": {"text": "Hi"}, "contentBlockIndex": 0}),
    _event("contentBlockStop", {"contentBlockIndex": 0}),
    _event("messageStop", {"stopReason": "end_turn"}),
)


def test_bedrock_converse_stream_is_charged_from_its_metadata_event(
    scripted_server: ScriptedServer, bedrock_client: Any
) -> None:
    metadata = {
        "usage": {"inputTokens": 1200, "outputTokens": 300, "totalTokens": 1500},
        "metrics": {"latencyMs": 120},
    }
    scripted_server.script(_converse_stream(*_CONVERSE, _event("metadata", metadata)))
    with _orch().session() as session:
        turn = session.stream_turn(
            lambda: bedrock_client.converse_stream(modelId="m", messages=CONVERSE_MESSAGES),
            model="m",
        )
        events = list(turn)
    assert [next(iter(event)) for event in events] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert turn.usage == UsageSnapshot(1200, 300)
    assert session.tracker.total_cost() == _cost(1200, 300)


def test_bedrock_mid_stream_exception_counts_on_the_breaker(
    scripted_server: ScriptedServer, bedrock_client: Any
) -> None:
    failure = _frame(
        {
            ":exception-type": "modelStreamErrorException",
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        {"message": "The model stream failed", "originalStatusCode": 500},
    )
    scripted_server.script(_converse_stream(*_CONVERSE[:2], failure))
    breaker = CircuitBreaker("llm", failure_threshold=1)
    answers: list[Any] = []

    def converse() -> Any:
        answers.append(bedrock_client.converse_stream(modelId="m", messages=CONVERSE_MESSAGES))
        return answers[-1]

    with (
        _orch(circuit_breaker=breaker).session() as session,
        pytest.raises(EventStreamError, match="modelStreamErrorException"),
    ):
        list(session.stream_turn(converse, model="m"))
    assert breaker.state is CircuitState.OPEN
    assert answers[0]["stream"]._raw_stream.closed  # the connection was given back
    assert _data(session, EventName.TURN_FAILED)["chunks"] == 2


def test_an_abandoned_bedrock_stream_closes_its_connection(
    scripted_server: ScriptedServer, bedrock_client: Any
) -> None:
    # urllib3 hands botocore the body 64 KiB at a time: send more before holding it open
    delta = _event("contentBlockDelta", {"delta": {"text": "x" * 1024}, "contentBlockIndex": 0})
    scripted_server.script(_converse_stream(_CONVERSE[0], *[delta] * 80, cut="hold"))
    with _orch().session() as session:
        for _ in session.stream_turn(
            lambda: bedrock_client.converse_stream(modelId="m", messages=CONVERSE_MESSAGES),
            model="m",
        ):
            break
        assert scripted_server.wait_for_hangup()
    assert _data(session, EventName.TURN_COMPLETED)["usage_unknown"] is True
