"""Where each SDK keeps its token counts: reading usage objects, dicts and responses.

Private: :meth:`UsageSnapshot.from_response <techrevati.runtime.usage.UsageSnapshot.from_response>`
is the public face. Duck-typed, no SDK imported. The counts come back in
``UsageSnapshot``'s field order (input, output, cache read, cache write,
reasoning), with the name of the shape they were read as.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from techrevati.runtime.errors import UsageParseError

__all__ = ["usage_fields"]

_Fields = tuple[int, int, int, int, int]
_MISSING: Final = object()


def usage_fields(obj: object) -> tuple[_Fields, str]:
    """Return the counts of a response, its usage object or a usage dict, and the shape's name.

    Raises :class:`UsageParseError` naming the type for anything else, including a
    response whose usage is ``None`` and an attribute that raises.
    """
    found = _fields_of(obj)
    if found is not None:
        return found
    for key in ("usage", "usage_metadata", "usageMetadata"):
        inner = _read(obj, key)
        if inner is _MISSING:
            continue
        where = f"{type(obj).__name__}.{key}"
        if inner is None:
            raise UsageParseError(
                f"{where} is None: the response carries no usage "
                "(a stream without usage, or an aborted call?)"
            )
        found = _fields_of(inner)
        if found is None:
            raise UsageParseError(
                f"unrecognised usage shape {type(inner).__name__} in {where}: expected "
                "OpenAI, Anthropic, Gemini or Bedrock Converse token fields"
            )
        return found
    raise UsageParseError(
        f"cannot read token usage from {type(obj).__name__}: expected a response with "
        ".usage or .usage_metadata, or an OpenAI, Anthropic, Gemini or Bedrock usage "
        "object or dict"
    )


def _read(obj: object, name: str) -> object:
    """Return ``obj[name]`` or ``obj.name``, ``_MISSING`` if absent; wrap other failures."""
    try:
        if isinstance(obj, Mapping):
            return obj.get(name, _MISSING)
        return getattr(obj, name, _MISSING)
    except Exception as exc:
        raise UsageParseError(
            f"reading {name!r} of {type(obj).__name__} raised {type(exc).__name__}: {exc}"
        ) from exc


def _count(obj: object, name: str, source: str) -> int:
    """Return the token count ``name`` of ``obj`` (0 when missing or None)."""
    value = _read(obj, name)
    if value is _MISSING or value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UsageParseError(f"{source} field {name} must be an int >= 0, got {value!r}")
    return value


def _nested(obj: object, name: str, field_name: str, source: str) -> int:
    """Return ``obj.name.field_name`` as a count (0 when either level is missing)."""
    details = _read(obj, name)
    if details is _MISSING or details is None:
        return 0
    return _count(details, field_name, f"{source} {name}")


def _has(obj: object, *names: str) -> bool:
    return any(_read(obj, name) is not _MISSING for name in names)


_OPENAI_CHAT: Final = (
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
)
"""OpenAI Chat Completions' usage: input, output, and where cache and reasoning counts sit."""
_OPENAI_RESPONSES: Final = (
    "input_tokens",
    "output_tokens",
    "input_tokens_details",
    "output_tokens_details",
)
"""The same four in the OpenAI Responses API."""


def _openai_fields(usage: object, names: tuple[str, ...], source: str) -> _Fields:
    """Read OpenAI usage: cached and cache-write counts inside the input details."""
    inputs, outputs, input_details, output_details = names
    return (
        _count(usage, inputs, source),
        _count(usage, outputs, source),
        _nested(usage, input_details, "cached_tokens", source),
        _nested(usage, input_details, "cache_write_tokens", source),
        _nested(usage, output_details, "reasoning_tokens", source),
    )


_GEMINI_SNAKE: Final = (
    "prompt_token_count",
    "tool_use_prompt_token_count",
    "candidates_token_count",
    "cached_content_token_count",
    "thoughts_token_count",
)
"""Gemini's usage fields as the google-genai SDK names them (every other one identifies it)."""
_GEMINI_CAMEL: Final = (
    "promptTokenCount",
    "toolUsePromptTokenCount",
    "candidatesTokenCount",
    "cachedContentTokenCount",
    "thoughtsTokenCount",
)
"""The same fields as Gemini's REST API spells them (``promptTokenCount``, ...)."""


def _gemini_fields(usage: object, names: tuple[str, ...], source: str) -> _Fields:
    """Read Gemini usage: tool-use prompts are input, thoughts are billed as output."""
    prompt, tool_prompt, candidates, cached, thoughts = (
        _count(usage, name, source) for name in names
    )
    return (prompt + tool_prompt, candidates + thoughts, cached, 0, thoughts)


def _fields_of(usage: object) -> tuple[_Fields, str] | None:
    """Return the counts of a usage object/dict of a known shape and its name, else None."""
    if isinstance(usage, (str, bytes, bytearray, int, float)) or usage is None:
        return None
    kind = type(usage).__name__
    if _has(usage, *_OPENAI_CHAT[:2]):
        source = f"OpenAI chat usage ({kind})"
        fields = _openai_fields(usage, _OPENAI_CHAT, source)
    elif _has(usage, *_GEMINI_SNAKE[::2]):
        source = f"Gemini usage_metadata ({kind})"
        fields = _gemini_fields(usage, _GEMINI_SNAKE, source)
    elif _has(usage, *_GEMINI_CAMEL[::2]):
        source = f"Gemini usageMetadata ({kind})"
        fields = _gemini_fields(usage, _GEMINI_CAMEL, source)
    elif _has(usage, "inputTokens", "outputTokens"):
        source = f"Bedrock Converse usage ({kind})"
        cache_read = _count(usage, "cacheReadInputTokens", source)
        cache_write = _count(usage, "cacheWriteInputTokens", source)
        fields = (
            _count(usage, "inputTokens", source) + cache_read + cache_write,
            _count(usage, "outputTokens", source),
            cache_read,
            cache_write,
            0,
        )
    elif _has(usage, "input_tokens", "output_tokens"):
        if _has(usage, "cache_creation_input_tokens", "cache_read_input_tokens"):
            source = f"Anthropic usage ({kind})"
            cache_read = _count(usage, "cache_read_input_tokens", source)
            cache_write = _count(usage, "cache_creation_input_tokens", source)
            out = _count(usage, "output_tokens", source)
            thinking = _nested(usage, "output_tokens_details", "thinking_tokens", source)
            fields = (
                _count(usage, "input_tokens", source) + cache_read + cache_write,
                out,
                cache_read,
                cache_write,
                min(thinking, out),  # documented as <= output_tokens; an approximation
            )
        else:
            source = f"OpenAI Responses usage ({kind})"
            fields = _openai_fields(usage, _OPENAI_RESPONSES, source)
    else:
        return None
    return fields, source
