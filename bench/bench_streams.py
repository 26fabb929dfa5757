"""Per-chunk cost of a streamed turn: ``stream_turn`` over a long in-memory stream vs bare.

Run: ``.venv/bin/python -m bench.bench_streams``

Each shape is a list of ``CHUNKS`` chunks, iterated bare (``for chunk in
iter(chunks)``; for async, ``async for`` over an async generator of them)
and through ``session.stream_turn`` / ``astream_turn`` in a session wired
as in bench_orchestrator (a breaker, ``budget_usd``, a shared ``Budget``, a
priced model). The chunks are the real SDK types where they are cheap to
build (openai ``ChatCompletionChunk`` and google-genai
``GenerateContentResponse``, pydantic models), objects with the SDK's
attribute names for Anthropic's events, and dicts for Bedrock's.

The per-chunk overhead is the slope: (one turn over ``CHUNKS`` chunks - one
turn over the last chunk alone) / (``CHUNKS`` - 1), minus the bare cost of a
chunk, so the turn's fixed cost (open, hold, charge, event) is not spread
over the chunks; that fixed cost is printed apart. Interleaved rounds, each
variant's minimum kept (the machine is shared), the garbage collector off in
every timed loop.
"""

from __future__ import annotations

import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from bench._timing import Measure, interleaved, run_async
from techrevati.runtime import (
    Budget,
    CircuitBreaker,
    ModelPricing,
    Orchestrator,
    Session,
    register_pricing,
)

MODEL = "bench-model"
CHUNKS = 2_000
ROUNDS = 41
FIXED_TURNS = 20  # one-chunk turns per measurement of the fixed cost
GOAL_NS = 1000.0


def _openai_chunks() -> list[object]:
    from openai.types.chat import ChatCompletionChunk

    def chunk(text: str, usage: dict[str, int] | None = None) -> object:
        return ChatCompletionChunk.model_validate(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 0,
                "model": MODEL,
                "choices": [] if usage else [{"index": 0, "delta": {"content": text}}],
                "usage": usage,
            }
        )

    body = [chunk("token") for _ in range(CHUNKS - 1)]
    usage = {"prompt_tokens": 1200, "completion_tokens": CHUNKS, "total_tokens": 1200 + CHUNKS}
    return [*body, chunk("", usage)]


class _Obj:
    """An SDK model's attributes (Anthropic's events are pydantic models like these)."""

    def __init__(self, **fields: object) -> None:
        self.__dict__.update(fields)


def _anthropic_chunks() -> list[object]:
    usage = _Obj(
        input_tokens=1200,
        output_tokens=1,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=0,
        cache_creation=None,
        output_tokens_details=None,
        server_tool_use=None,
    )
    start = _Obj(type="message_start", message=_Obj(usage=usage))
    delta = _Obj(type="content_block_delta", index=0, delta=_Obj(type="text_delta", text="t"))
    end = _Obj(
        type="message_delta",
        usage=_Obj(
            output_tokens=CHUNKS,
            input_tokens=None,
            cache_creation_input_tokens=None,
            cache_read_input_tokens=None,
            output_tokens_details=None,
        ),
    )
    return [start, *[delta] * (CHUNKS - 3), end, _Obj(type="message_stop")]


def _gemini_chunks() -> list[object]:
    from google.genai import types

    def chunk(output: int) -> object:
        return types.GenerateContentResponse(
            candidates=[types.Candidate(content=types.Content(parts=[types.Part(text="t")]))],
            usage_metadata=types.GenerateContentResponseUsageMetadata(
                prompt_token_count=1200, candidates_token_count=output
            ),
        )

    return [chunk(n) for n in range(1, CHUNKS + 1)]  # every chunk a running total


def _bedrock_chunks() -> list[object]:
    delta: object = {"contentBlockDelta": {"delta": {"text": "t"}, "contentBlockIndex": 0}}
    usage = {"metadata": {"usage": {"inputTokens": 1200, "outputTokens": CHUNKS}}}
    return [{"messageStart": {"role": "assistant"}}, *[delta] * (CHUNKS - 2), usage]


def _orchestrator() -> Orchestrator:
    return Orchestrator(
        role="writer",
        phase="draft",
        circuit_breaker=CircuitBreaker("bench", failure_threshold=5),
        budget_usd=1_000_000_000,
        budget=Budget(max_usd=1_000_000_000),
    )


def _timed(loop: Callable[[], object]) -> float:
    """Run ``loop`` once with the collector off; return the nanoseconds it took."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        loop()
        return float(time.perf_counter_ns() - start)
    finally:
        if enabled:
            gc.enable()


def _bare(chunks: list[object]) -> Measure:
    def loop() -> None:
        for _ in iter(chunks):
            pass

    return lambda: _timed(loop)


def _streamed(session: Session, chunks: list[object], turns: int = 1) -> Measure:
    def loop() -> None:
        for _ in range(turns):
            for _ in session.stream_turn(lambda: iter(chunks), model=MODEL):
                pass

    return lambda: _timed(loop) / turns


async def _agen(chunks: list[object]) -> AsyncIterator[object]:
    for chunk in chunks:
        yield chunk


def _async_timed(loop: Callable[[Session], Awaitable[None]], orch: Orchestrator) -> Measure:
    async def measure() -> float:
        async with orch.asession() as session:
            enabled = gc.isenabled()
            gc.disable()
            try:
                start = time.perf_counter_ns()
                await loop(session)
                return float(time.perf_counter_ns() - start)
            finally:
                if enabled:
                    gc.enable()

    return run_async(measure)


def _abare(orch: Orchestrator, chunks: list[object]) -> Measure:
    async def loop(session: Session) -> None:
        async for _ in _agen(chunks):
            pass

    return _async_timed(loop, orch)


def _astreamed(orch: Orchestrator, chunks: list[object], turns: int = 1) -> Measure:
    async def loop(session: Session) -> None:
        for _ in range(turns):
            async for _ in session.astream_turn(lambda: _agen(chunks), model=MODEL):
                pass

    measure = _async_timed(loop, orch)
    return lambda: measure() / turns


def main() -> None:
    register_pricing(MODEL, ModelPricing(input_per_million="3", output_per_million="15"))
    orch = _orchestrator()
    shapes: dict[str, list[object]] = {
        "openai ChatCompletionChunk": _openai_chunks(),
        "anthropic events": _anthropic_chunks(),
        "gemini GenerateContentResponse": _gemini_chunks(),
        "bedrock ConverseStream events": _bedrock_chunks(),
    }
    with orch.session() as session:
        variants: dict[str, Measure] = {}
        for name, chunks in shapes.items():
            variants[f"bare {name}"] = _bare(chunks)
            variants[f"turn {name}"] = _streamed(session, chunks)
            variants[f"one-chunk turn {name}"] = _streamed(session, chunks[-1:], FIXED_TURNS)
        chat = shapes["openai ChatCompletionChunk"]
        variants["bare async"] = _abare(orch, chat)
        variants["turn async"] = _astreamed(orch, chat)
        variants["one-chunk turn async"] = _astreamed(orch, chat[-1:], FIXED_TURNS)
        best = interleaved(variants, rounds=ROUNDS)
    print(
        f"{CHUNKS:,} chunks per stream; per-chunk overhead = slope over the turn's fixed cost; "
        f"best of {ROUNDS} interleaved rounds"
    )
    worst = 0.0
    rows = [(name, name) for name in shapes]
    rows.append(("async openai ChatCompletionChunk", "async"))
    for label, key in rows:
        bare = best[f"bare {key}"] / CHUNKS
        turn, fixed = best[f"turn {key}"], best[f"one-chunk turn {key}"]
        overhead = (turn - fixed) / (CHUNKS - 1) - bare
        worst = max(worst, overhead)
        print(
            f"{label:<34} bare {bare:6.1f} ns/chunk  turn {turn / CHUNKS:7.1f} ns/chunk"
            f"  overhead {overhead:6.1f} ns/chunk  fixed {fixed / 1000:6.1f} us/turn"
        )
    verdict = "met" if worst <= GOAL_NS else "MISSED"
    print(f"worst per-chunk overhead {worst:.1f} ns; goal <= {GOAL_NS:.0f} ns: {verdict}")


if __name__ == "__main__":
    main()
