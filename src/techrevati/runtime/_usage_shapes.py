"""Where each SDK keeps its token counts: reading usage objects, dicts and responses.

Private: :meth:`UsageSnapshot.from_response <techrevati.runtime.usage.UsageSnapshot.from_response>`
is the public face. Duck-typed, no SDK imported. The counts come back in
``UsageSnapshot``'s field order (input, output, cache read, cache write,
reasoning, one-hour cache write), with the name of the shape they were read as
and the service tier the response says served it (see :func:`tier_name`).
docs/usage.md has the table of which field each count and tier comes from.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Final

from techrevati.runtime.errors import InvalidValueError, UsageParseError

__all__ = [
    "DEFAULT_SERVICE_TIER",
    "SERVICE_TIERS",
    "tier_name",
    "usage_fields",
]

DEFAULT_SERVICE_TIER: Final = "default"
"""The tier billed at a model's ordinary rates (OpenAI's ``default``, Anthropic's ``standard``)."""
SERVICE_TIERS: Final = (DEFAULT_SERVICE_TIER, "flex", "priority", "batch", "ultrafast", "balanced")
"""The tiers a pricing may hold rates for (LiteLLM's ``_flex``, ``_priority``, ``_batches``,
``_ultrafast``, ``_balanced`` rates); any other tier a provider names is billed at the default
rates, with a warning."""
_TIER_ALIASES: Final = {
    **{tier: tier for tier in SERVICE_TIERS},
    "standard": DEFAULT_SERVICE_TIER,  # Anthropic, Gemini
    "batches": "batch",  # LiteLLM's suffix
    "fast": "priority",  # OpenAI: a fast-mode request is served, and reported, as priority
}
"""Spellings of the known tiers -> the one name kept (the same str object every time)."""
_MAX_TIER: Final = 64
"""A tier name longer than this is no tier name."""
_GEMINI_TRAFFIC: Final = {
    "ON_DEMAND": DEFAULT_SERVICE_TIER,
    "ON_DEMAND_PRIORITY": "priority",
    "ON_DEMAND_FLEX": "flex",
    "FLEX": "flex",
    "BATCH": "batch",
    "TRAFFIC_TYPE_UNSPECIFIED": None,
}
"""Gemini's (Vertex AI's) ``traffic_type`` -> tier; any other value is kept, lowercased."""


def tier_name(value: object, name: str = "service_tier") -> str | None:
    """Return ``value`` as a service tier's name: stripped, lowercased, aliases resolved.

    ``None`` (and a blank string) is no tier. ``standard`` becomes ``default``,
    ``batches`` ``batch``, ``fast`` ``priority``; a known tier is always the
    same str object, so ``is`` may compare it. A tier we do not know (OpenAI's
    ``scale``, Bedrock's ``reserved``) is kept, lowercased. Raises
    :class:`InvalidValueError` naming ``name`` for a non-str or an absurdly
    long one.
    """
    if value is None:
        return None
    if isinstance(value, Enum):  # google-genai's enums (str-valued)
        value = value.value
    if not isinstance(value, str):
        raise InvalidValueError(f"{name} must be a str or None, got {value!r}")
    known = _TIER_ALIASES.get(value)
    if known is not None:
        return known
    text = value.strip().lower()
    if len(text) > _MAX_TIER:
        raise InvalidValueError(f"{name} must be at most {_MAX_TIER} characters, got {value!r}")
    return _TIER_ALIASES.get(text, text) or None


_Fields = tuple[int, int, int, int, int, int]
_MISSING: Final = object()

_WRAPPERS: Final = ("usage", "usage_metadata", "usageMetadata")
"""Where a response keeps its usage: OpenAI, Anthropic and Bedrock; google-genai; Gemini REST."""
_BEDROCK_STREAM_EVENT: Final = "metadata"
"""Bedrock ConverseStream's last event, ``{"metadata": {"usage": {...}, "metrics": ...}}``."""


def usage_fields(obj: object) -> tuple[_Fields, str, str | None]:
    """Return the counts of a usage (a response, its usage object or dict), shape and tier.

    The shape's name is for error messages; the tier is the service tier the
    response reports (None when it reports none), read from the response
    first (OpenAI's ``service_tier``, Bedrock's ``serviceTier.type``), then
    from its usage (Anthropic's ``service_tier``, Gemini's ``service_tier``
    or ``traffic_type``); a tier value that is not a string is no tier.
    Raises :class:`UsageParseError` naming the type for anything else,
    including a response whose usage is ``None`` and an attribute that raises.
    """
    found = _fields_of(obj)
    if found is not None:
        return found
    for key in _WRAPPERS:
        inner = _read(obj, key)
        if inner is not _MISSING:
            fields, source, tier = _wrapped(inner, f"{type(obj).__name__}.{key}")
            return fields, source, _response_tier(obj) or tier
    event = _read(obj, _BEDROCK_STREAM_EVENT)
    if event is not _MISSING and event is not None and not _is_scalar(event):
        inner = _read(event, "usage")
        if inner is not _MISSING:
            where = f"{type(obj).__name__}.{_BEDROCK_STREAM_EVENT}.usage"
            fields, source, tier = _wrapped(inner, where)
            return fields, source, _response_tier(event) or tier
    raise UsageParseError(
        f"cannot read token usage from {type(obj).__name__}: expected a response with "
        ".usage or .usage_metadata, a Bedrock ConverseStream metadata event, or an "
        "OpenAI, Anthropic, Gemini or Bedrock usage object or dict"
    )


def _wrapped(inner: object, where: str) -> tuple[_Fields, str, str | None]:
    """Return the counts of the usage found at ``where`` (a response's usage attribute or key)."""
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


def _reported_tier(value: object) -> str | None:
    """Return a tier a provider reported, or None when ``value`` is no tier name."""
    if not isinstance(value, (str, Enum)):
        return None
    try:
        return tier_name(value)
    except InvalidValueError:  # not a str-valued enum, or absurdly long
        return None


def _response_tier(response: object) -> str | None:
    """Return the tier a response reports beside its usage, or None.

    OpenAI's and LiteLLM's ``service_tier``, Bedrock's ``serviceTier``
    (``{"type": "priority"}``).
    """
    tier = _reported_tier(_read(response, "service_tier"))
    if tier is not None:
        return tier
    block = _read(response, "serviceTier")
    if isinstance(block, Mapping):
        block = block.get("type")
    return _reported_tier(block)


def _gemini_tier(usage: object, tier_field: str, traffic_field: str) -> str | None:
    """Return Gemini's tier, or None.

    ``service_tier`` (the Gemini API; ``unspecified`` says nothing), else
    ``traffic_type`` (Vertex AI: ``ON_DEMAND``, ``ON_DEMAND_PRIORITY``,
    ``ON_DEMAND_FLEX``...).
    """
    tier = _reported_tier(_read(usage, tier_field))
    if tier is not None and tier != "unspecified":
        return tier
    traffic = _read(usage, traffic_field)
    if isinstance(traffic, Enum):
        traffic = traffic.value
    if not isinstance(traffic, str):
        return None
    key = traffic.strip().upper()
    if key in _GEMINI_TRAFFIC:
        return _GEMINI_TRAFFIC[key]
    return _reported_tier(traffic)


def _is_scalar(obj: object) -> bool:
    return obj is None or isinstance(obj, (str, bytes, bytearray, int, float))


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


def _optional(obj: object, name: str, source: str) -> int | None:
    """Return the token count ``name`` of ``obj``, or None when it is missing or None."""
    value = _read(obj, name)
    if value is _MISSING or value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UsageParseError(f"{source} field {name} must be an int >= 0, got {value!r}")
    return value


def _count(obj: object, name: str, source: str) -> int:
    """Return the token count ``name`` of ``obj`` (0 when missing or None)."""
    value = _optional(obj, name, source)
    return 0 if value is None else value


def _details(obj: object, name: str) -> object:
    """Return the nested object ``obj.name``, or None when it is missing or None."""
    details = _read(obj, name)
    return None if details is _MISSING else details


def _nested(obj: object, name: str, field_name: str, source: str) -> int:
    """Return ``obj.name.field_name`` as a count (0 when either level is missing)."""
    details = _details(obj, name)
    return 0 if details is None else _count(details, field_name, f"{source} {name}")


def _has(obj: object, *names: str) -> bool:
    return any(_read(obj, name) is not _MISSING for name in names)


def _inconsistent(source: str, detail: str) -> UsageParseError:
    return UsageParseError(f"{source} is inconsistent: {detail}")


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
    """Read OpenAI-shaped usage, with DeepSeek's cache counts and xAI's separate reasoning.

    ``output`` includes reasoning, as OpenAI reports it, unless ``total_tokens``
    shows that it does not: xAI's ``total_tokens`` is input + output + reasoning.
    """
    inputs, outputs, input_details, output_details = names
    given = _optional(usage, inputs, source)
    inp = 0 if given is None else given
    out = _count(usage, outputs, source)
    cache_read = _nested(usage, input_details, "cached_tokens", source)
    reasoning = _nested(usage, output_details, "reasoning_tokens", source)
    if inputs == "prompt_tokens":
        inp, cache_read = _deepseek_cache(usage, given, cache_read, source)
    if reasoning and _optional(usage, "total_tokens", source) == inp + out + reasoning:
        out += reasoning  # xAI: reasoning outside completion_tokens, inside total_tokens
    cache_write = _nested(usage, input_details, "cache_write_tokens", source)
    return (inp, out, cache_read, cache_write, reasoning, 0)


def _deepseek_cache(usage: object, prompt: int | None, cached: int, source: str) -> tuple[int, int]:
    """Return input and cache reads, reading DeepSeek's ``prompt_cache_hit/miss_tokens``.

    DeepSeek's ``prompt_tokens`` is hits + misses. When the counts contradict
    each other (or ``prompt_tokens_details.cached_tokens``) none can be
    trusted, and the usage is refused.
    """
    inp = 0 if prompt is None else prompt
    hit = _optional(usage, "prompt_cache_hit_tokens", source)
    miss = _optional(usage, "prompt_cache_miss_tokens", source)
    if prompt is None:
        inp = (hit or 0) + (miss or 0)
    elif hit is not None and miss is not None and hit + miss != prompt:
        raise _inconsistent(
            source,
            f"prompt_cache_hit_tokens + prompt_cache_miss_tokens ({hit} + {miss}) "
            f"!= prompt_tokens ({prompt})",
        )
    if hit is None:
        return inp, cached
    if cached and cached != hit:
        raise _inconsistent(
            source,
            f"prompt_cache_hit_tokens ({hit}) != prompt_tokens_details.cached_tokens ({cached})",
        )
    return inp, hit


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
_GEMINI_RESPONSE: Final = ("response_token_count", "responseTokenCount")
"""The Live API's name for the candidates' tokens (snake, camel)."""


def _gemini_fields(usage: object, names: tuple[str, ...], source: str) -> _Fields:
    """Read Gemini usage: tool-use prompts are input, thoughts are billed as output.

    The Live API's ``UsageMetadata`` names the candidates' tokens
    ``response_token_count``: read when there is no ``candidates_token_count``.
    """
    prompt, tool_prompt, candidates, cached, thoughts = (
        _count(usage, name, source) for name in names
    )
    if not candidates:
        response = _GEMINI_RESPONSE[1] if names is _GEMINI_CAMEL else _GEMINI_RESPONSE[0]
        candidates = _count(usage, response, source)
    return (prompt + tool_prompt, candidates + thoughts, cached, 0, thoughts, 0)


def _cache_writes(total: int | None, split: tuple[int, int] | None, source: str) -> tuple[int, int]:
    """Return all cache writes and the one-hour part, from a total and a (1h, 5m) split.

    Either may be missing. The split may not exceed the total; tokens of the
    total the split does not cover were written with the default five-minute life.
    """
    if split is None:
        return (total or 0), 0
    one_hour, five_minutes = split
    if total is None:
        return one_hour + five_minutes, one_hour
    if one_hour + five_minutes > total:
        raise _inconsistent(
            source,
            f"one-hour + five-minute cache writes ({one_hour} + {five_minutes}) exceed "
            f"all cache writes ({total})",
        )
    return total, one_hour


def _anthropic_fields(usage: object, source: str) -> _Fields:
    """Read Anthropic usage: input excludes the cache; ``cache_creation`` splits the writes."""
    cache_read = _count(usage, "cache_read_input_tokens", source)
    creation = _details(usage, "cache_creation")
    split = None
    if creation is not None:
        where = f"{source} cache_creation"
        split = (
            _count(creation, "ephemeral_1h_input_tokens", where),
            _count(creation, "ephemeral_5m_input_tokens", where),
        )
    total = _optional(usage, "cache_creation_input_tokens", source)
    cache_write, one_hour = _cache_writes(total, split, source)
    out = _count(usage, "output_tokens", source)
    thinking = _nested(usage, "output_tokens_details", "thinking_tokens", source)
    return (
        _count(usage, "input_tokens", source) + cache_read + cache_write,
        out,
        cache_read,
        cache_write,
        min(thinking, out),  # documented as <= output_tokens; an approximation
        one_hour,
    )


def _bedrock_fields(usage: object, source: str) -> _Fields:
    """Read Bedrock Converse usage: input excludes the cache; ``cacheDetails`` splits writes."""
    cache_read = _count(usage, "cacheReadInputTokens", source)
    details = _details(usage, "cacheDetails")
    split = None
    if details is not None:
        split = _bedrock_ttl_split(details, f"{source} cacheDetails")
    total = _optional(usage, "cacheWriteInputTokens", source)
    cache_write, one_hour = _cache_writes(total, split, source)
    return (
        _count(usage, "inputTokens", source) + cache_read + cache_write,
        _count(usage, "outputTokens", source),
        cache_read,
        cache_write,
        0,
        one_hour,
    )


def _bedrock_ttl_split(details: object, source: str) -> tuple[int, int]:
    """Return the (one-hour, five-minute) cache writes of a ``cacheDetails`` list."""
    if not isinstance(details, (list, tuple)):
        raise UsageParseError(f"{source} must be a list, got {type(details).__name__}")
    one_hour = five_minutes = 0
    for detail in details:
        ttl = _read(detail, "ttl")
        if ttl == "1h":
            one_hour += _count(detail, "inputTokens", source)
        elif ttl == "5m":
            five_minutes += _count(detail, "inputTokens", source)
        else:
            shown = "no ttl" if ttl is _MISSING else repr(ttl)
            raise UsageParseError(f"{source} ttl must be '1h' or '5m', got {shown}")
    return one_hour, five_minutes


def _fields_of(usage: object) -> tuple[_Fields, str, str | None] | None:
    """Return the counts, name and tier of a usage object/dict of a known shape, else None."""
    if _is_scalar(usage):
        return None
    kind = type(usage).__name__
    tier = None
    if _has(usage, *_OPENAI_CHAT[:2]):
        source = f"OpenAI chat usage ({kind})"
        fields = _openai_fields(usage, _OPENAI_CHAT, source)
    elif _has(usage, *_GEMINI_SNAKE[::2]):
        source = f"Gemini usage_metadata ({kind})"
        fields = _gemini_fields(usage, _GEMINI_SNAKE, source)
        tier = _gemini_tier(usage, "service_tier", "traffic_type")
    elif _has(usage, *_GEMINI_CAMEL[::2]):
        source = f"Gemini usageMetadata ({kind})"
        fields = _gemini_fields(usage, _GEMINI_CAMEL, source)
        tier = _gemini_tier(usage, "serviceTier", "trafficType")
    elif _has(usage, "inputTokens", "outputTokens"):
        source = f"Bedrock Converse usage ({kind})"
        fields = _bedrock_fields(usage, source)
    elif _has(usage, "input_tokens", "output_tokens"):
        if _has(usage, "cache_creation_input_tokens", "cache_read_input_tokens", "cache_creation"):
            source = f"Anthropic usage ({kind})"
            fields = _anthropic_fields(usage, source)
        else:
            source = f"OpenAI Responses usage ({kind})"
            fields = _openai_fields(usage, _OPENAI_RESPONSES, source)
        tier = _reported_tier(_read(usage, "service_tier"))  # Anthropic's usage carries it
    else:
        return None
    return fields, source, tier
