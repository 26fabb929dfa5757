"""Read the text of what a model answered: a str, bytes, or an SDK's response object.

Private to :mod:`~techrevati.runtime.outputs`. Duck-typed like the readers in
``_responses`` (whose guarded attribute reads it uses): no SDK is imported,
and a property that raises reads as absent. It knows OpenAI Chat Completions
(and LiteLLM's look-alike), OpenAI Responses, Anthropic Messages, Gemini
(the SDK's objects and the REST dicts), Bedrock Converse, each as the SDK
object or its ``model_dump()`` dict, and, last, anything with a ``text`` or
``content`` string (LangChain messages). A response of a known shape with no
text (a refusal, only tool calls, a blocked candidate) raises
:class:`NoText` saying why, which the spec turns into feedback for the model;
a value of no known shape is the caller's mistake and raises
:class:`~techrevati.runtime.errors.InvalidValueError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from techrevati.runtime._responses import _MISSING, _first, _get, _key
from techrevati.runtime.errors import InvalidValueError

__all__ = ["NoText", "read_text"]

_MAX_PARTS: Final = 10_000
"""Content parts read from one response, at most (a guard, far above any real answer)."""


class NoText(Exception):  # noqa: N818 (a private signal, not an error a user sees)
    """A response of a known shape that carries no text; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def read_text(value: object) -> str:
    """Return the text of ``value``: itself if a str, else what the response says."""
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoText(
                f"the answer is not UTF-8 text ({exc.reason} at byte {exc.start})"
            ) from None
    text = _known_shape(value)
    if text is _MISSING:
        raise InvalidValueError(
            f"cannot read an answer's text from a {type(value).__name__}: give the text, or an "
            "OpenAI, Anthropic, Gemini or Bedrock response"
        )
    assert isinstance(text, str)
    return text


def _part(obj: object, name: str) -> object:
    """``obj[name]`` of a mapping or ``obj.name``; ``_MISSING`` when absent or unreadable.

    The attribute is tried before ``isinstance(obj, Mapping)``, which is slow
    for the SDKs' pydantic models (no mapping has these names as attributes).
    """
    if type(obj) is dict:
        return obj.get(name, _MISSING)
    value = _get(obj, name)
    if value is _MISSING and isinstance(obj, Mapping):
        return _key(obj, name)
    return value


def _known_shape(value: object) -> object:
    """Return the text of a response of a known shape, or ``_MISSING`` for an unknown one."""
    choices = _part(value, "choices")
    if choices is not _MISSING:
        return _chat_text(choices)
    candidates = _part(value, "candidates")
    if candidates is not _MISSING:
        return _gemini_text(value, candidates)
    content = _part(value, "content")
    stop = _part(value, "stop_reason")
    if stop is not _MISSING and content is not _MISSING:
        return _anthropic_text(content, stop)
    output = _part(value, "output")
    if output is not _MISSING and output is not None:
        if isinstance(output, Mapping):
            return _bedrock_text(output)
        return _responses_text(output)
    for name in ("text", "content"):
        field = _part(value, name)
        if isinstance(field, str):
            return field
    if isinstance(content, list):  # LangChain content blocks
        return _joined(content, "the message", kinds=("text",))
    return _MISSING


def _chat_text(choices: object) -> str:
    first = _first(choices)
    if first is None:
        raise NoText("the response has no choices")
    message = _part(first, "message")
    content = _part(message, "content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # providers that send content parts
        return _joined(content, "the message", kinds=("text", "output_text"))
    refusal = _part(message, "refusal")
    if isinstance(refusal, str) and refusal:
        raise NoText(f"the model refused: {refusal}")
    finish = _part(first, "finish_reason")
    calls = _part(message, "tool_calls")
    if calls not in (None, _MISSING):
        raise NoText(f"the message has tool calls and no text (finish_reason {finish!r})")
    raise NoText(f"the message has no text (finish_reason {finish!r})")


def _gemini_text(response: object, candidates: object) -> str:
    first = _first(candidates)
    if first is None:
        feedback = _part(response, "prompt_feedback")
        if feedback is _MISSING:
            feedback = _part(response, "promptFeedback")
        reason = _part(feedback, "block_reason")
        if reason is _MISSING:
            reason = _part(feedback, "blockReason")
        why = "" if reason in (None, _MISSING) else f" (the prompt was blocked: {reason})"
        raise NoText(f"the response has no candidates{why}")
    parts = _part(_part(first, "content"), "parts")
    texts = []
    if isinstance(parts, list):
        for part in parts[:_MAX_PARTS]:
            text = _part(part, "text")
            if isinstance(text, str) and _part(part, "thought") is not True:
                texts.append(text)
    if texts:
        return "".join(texts)
    finish = _part(first, "finish_reason")
    if finish is _MISSING:
        finish = _part(first, "finishReason")
    name = _part(finish, "name") if finish not in (None, _MISSING) else None
    shown = name if isinstance(name, str) else finish
    raise NoText(
        f"the candidate has no text (finish_reason {shown if shown is not _MISSING else None!r})"
    )


def _anthropic_text(content: object, stop: object) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise NoText(f"the message has no content (stop_reason {stop!r})")
    texts = [
        text
        for block in content[:_MAX_PARTS]
        if _part(block, "type") == "text" and isinstance(text := _part(block, "text"), str)
    ]
    if not texts:
        raise NoText(f"the message has no text block (stop_reason {stop!r})")
    return "".join(texts)


def _responses_text(output: object) -> str:
    if not isinstance(output, Iterable) or isinstance(output, str | bytes):
        raise NoText("the response's output is not a list of items")
    texts: list[str] = []
    refusals: list[str] = []
    for count, item in enumerate(output):
        if count >= _MAX_PARTS:
            break
        if _part(item, "type") != "message":
            continue
        parts = _part(item, "content")
        if not isinstance(parts, list):
            continue
        for part in parts[:_MAX_PARTS]:
            kind = _part(part, "type")
            if kind == "output_text" and isinstance(text := _part(part, "text"), str):
                texts.append(text)
            elif kind == "refusal" and isinstance(text := _part(part, "refusal"), str):
                refusals.append(text)
    if texts:
        return "".join(texts)
    if refusals:
        raise NoText(f"the model refused: {' '.join(refusals)}")
    raise NoText("the response has no output text (only tool calls or reasoning?)")


def _bedrock_text(output: Mapping[object, object]) -> str:
    message = _key(output, "message")
    content = _part(message, "content")
    if not isinstance(content, list):
        raise NoText("the Bedrock response has no message content")
    texts = [
        text
        for block in content[:_MAX_PARTS]
        if isinstance(block, Mapping) and isinstance(text := block.get("text"), str)
    ]
    if not texts:
        raise NoText("the Bedrock message has no text block (only tool use?)")
    return "".join(texts)


def _joined(parts: list[object], where: str, *, kinds: tuple[str, ...]) -> str:
    texts = []
    for part in parts[:_MAX_PARTS]:
        if isinstance(part, str):
            texts.append(part)
            continue
        kind = _part(part, "type")
        text = _part(part, "text")
        if isinstance(text, str) and (kind in kinds or kind is _MISSING):
            texts.append(text)
    if not texts:
        raise NoText(f"{where} has no text part")
    return "".join(texts)
