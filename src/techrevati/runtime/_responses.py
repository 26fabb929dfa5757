"""Read what a model call returned or raised: its usage, a stream, a silent failure.

Private to the orchestrator. Duck-typed like the classifier: no SDK is
imported, every attribute read is guarded, and nothing here raises except
the two errors that say a turn cannot be accounted for as it stands.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import Final

from techrevati.runtime.errors import (
    EmptyResponseError,
    StreamResultError,
    TechrevatiError,
)
from techrevati.runtime.usage import UsageSnapshot

__all__ = [
    "EmptyResponseError",
    "StreamResultError",
    "aclose_refused",
    "check_response",
    "usage_from_exception",
    "usage_from_result",
]

_PLAIN: Final = frozenset({str, bytes, int, float, bool, type(None), list, tuple})
"""Result types that are never a model response: no usage, nothing to check."""

_STREAM_CLASSES: Final = frozenset(
    {
        "Stream",
        "AsyncStream",
        "MessageStream",
        "AsyncMessageStream",
        "MessageStreamManager",
        "AsyncMessageStreamManager",
        "ChatCompletionStream",
        "AsyncChatCompletionStream",
        "ChatCompletionStreamManager",
        "AsyncChatCompletionStreamManager",
        "ResponseStream",
        "AsyncResponseStream",
        "ResponseStreamManager",
        "AsyncResponseStreamManager",
        "EventStream",
    }
)
"""Class names (along the MRO) of the SDKs' stream objects: openai, anthropic, botocore."""

_OPENAI_FINISH: Final = frozenset(
    {"stop", "length", "tool_calls", "content_filter", "function_call"}
)
_ANTHROPIC_STOP: Final = frozenset(
    {
        "end_turn",
        "max_tokens",
        "stop_sequence",
        "tool_use",
        "pause_turn",
        "refusal",
        "model_context_window_exceeded",
    }
)
_BEDROCK_STOP: Final = frozenset(
    {
        "end_turn",
        "tool_use",
        "max_tokens",
        "stop_sequence",
        "guardrail_intervened",
        "content_filtered",
        "model_context_window_exceeded",
        "malformed_model_output",
        "malformed_tool_use",
    }
)
_MISSING: Final = object()


def usage_from_result(result: object) -> UsageSnapshot | None:
    """Read usage from a model response when it carries one; ``None`` otherwise."""
    if type(result) in _PLAIN:
        return None
    try:
        return UsageSnapshot.from_response(result)
    except (TechrevatiError, ValueError, TypeError):
        return None


def usage_from_exception(exc: BaseException) -> UsageSnapshot | None:
    """Read the usage a billed call's exception carries, if any.

    openai's ``LengthFinishReasonError`` carries ``.completion``; some errors
    carry the parsed ``.response`` or a ``.body`` with ``usage``. Only a
    usage with tokens counts: an HTTP error response has none.
    """
    for name in ("completion", "response", "body"):
        carrier = _get(exc, name)
        if carrier is None or carrier is _MISSING or type(carrier) in _PLAIN:
            continue
        usage = usage_from_result(carrier)
        if usage is not None and usage.total_tokens:
            return usage
    return None


def check_response(result: object, usage: UsageSnapshot | None) -> None:
    """Raise if ``result`` cannot be a finished turn: a stream, or an empty answer.

    ``usage`` is the turn's usage (given or read); a stream is refused only
    when no usage was given, since then the turn would count as free.
    """
    kind = type(result)
    if kind in _PLAIN:
        return
    if usage is None:
        stream = _stream_kind(result)
        if stream is not None:
            _close(result)
            raise StreamResultError(stream, result)
    reason = _silence(result, usage)
    if reason is not None:
        raise EmptyResponseError(reason, result)


def _stream_kind(result: object) -> str | None:
    if inspect.isgenerator(result) or inspect.isasyncgen(result):
        return type(result).__name__
    for cls in type(result).__mro__:
        if cls.__name__ in _STREAM_CLASSES:
            return f"{cls.__module__.split('.')[0]} {cls.__name__}"
    if isinstance(result, Mapping):
        stream = _key(result, "stream")
        if stream is not _MISSING and _stream_kind(stream) is not None:
            return "botocore EventStream"
    return None


def _closer(stream: object) -> object:
    """Return what to close to give a stream's connection back (a Bedrock dict's stream)."""
    if isinstance(stream, Mapping):
        return _key(stream, "stream")
    return stream


def _close(stream: object) -> None:
    """Give a refused sync stream's connection back (best effort)."""
    close = _get(_closer(stream), "close")
    if callable(close) and not inspect.iscoroutinefunction(close):
        with contextlib.suppress(Exception):  # the error that matters is raised next
            close()


async def aclose_refused(error: StreamResultError) -> None:
    """Give a refused async stream's connection back (its ``close``/``aclose`` is awaited)."""
    stream = _closer(error.stream)
    for name in ("aclose", "close"):
        close = _get(stream, name)
        if callable(close) and inspect.iscoroutinefunction(close):
            with contextlib.suppress(Exception):  # the error that matters is raised next
                await close()
            return


def _silence(result: object, usage: UsageSnapshot | None) -> str | None:
    """Why ``result`` is a silent failure (no stop reason, no output), or None."""
    if usage is not None and usage.output_tokens:
        return None
    if isinstance(result, Mapping):
        return _bedrock_silence(result)
    choices = _get(result, "choices")
    if choices is not _MISSING:  # OpenAI Chat Completions
        first = _first(choices)
        if first is None:
            return "no choices and no output tokens"
        finish = _get(first, "finish_reason")
        return None if finish in _OPENAI_FINISH else f"finish_reason {finish!r}, no output tokens"
    stop = _get(result, "stop_reason")
    if stop is not _MISSING and _get(result, "content") is not _MISSING:  # Anthropic
        return None if stop in _ANTHROPIC_STOP else f"stop_reason {stop!r}, no output tokens"
    candidates = _get(result, "candidates")
    if candidates is not _MISSING:  # Gemini
        return _gemini_silence(result, candidates)
    return None


def _gemini_silence(result: object, candidates: object) -> str | None:
    feedback = _get(result, "prompt_feedback")
    if feedback not in (None, _MISSING) and _get(feedback, "block_reason") not in (None, _MISSING):
        return None  # a blocked prompt: the provider said why
    first = _first(candidates)
    if first is None:
        return "no candidates and no output tokens"
    finish = _get(first, "finish_reason")
    name = _get(finish, "name") if finish not in (None, _MISSING) else None
    text = name if isinstance(name, str) else finish
    if text in (None, _MISSING, "FINISH_REASON_UNSPECIFIED"):
        return f"finish_reason {text if text is not _MISSING else None!r}, no output tokens"
    return None


def _bedrock_silence(result: Mapping[object, object]) -> str | None:
    if _key(result, "ResponseMetadata") is _MISSING:
        return None  # a plain dict of the caller's: not a Bedrock response
    stop = _key(result, "stopReason")
    if _key(result, "output") is _MISSING:
        return "Bedrock response without output"
    return None if stop in _BEDROCK_STOP else f"stopReason {stop!r}, no output tokens"


def _first(items: object) -> object | None:
    try:
        return next(iter(items), None)  # type: ignore[call-overload]
    except Exception:
        return None


def _get(obj: object, name: str) -> object:
    try:
        return getattr(obj, name, _MISSING)
    except Exception:  # a property that raises
        return _MISSING


def _key(mapping: Mapping[object, object], name: str) -> object:
    try:
        return mapping.get(name, _MISSING)
    except Exception:
        return _MISSING
