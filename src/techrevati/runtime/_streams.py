"""Recognise a model stream and read its usage as the chunks pass, without importing any SDK.

Private to :mod:`~techrevati.runtime._stream_turns`. :func:`open_sync` and
:func:`open_async` turn what a turn's ``fn`` returned into a :class:`Source`
(the iterator of chunks and how to give its connection back); a stream
manager (``client.messages.stream(...)``) is entered here. :func:`reader_for`
picks, from the first chunk, the :class:`StreamReader` that knows where that
SDK puts its usage:

- OpenAI Chat chunks: ``usage`` on the final chunk (with
  ``stream_options={"include_usage": True}``), ``None`` before;
- type-tagged events: Anthropic ``message_start`` (the input usage) and
  ``message_delta`` (cumulative usage, its ``None`` fields keep the start's),
  OpenAI Responses ``response.completed`` / ``response.incomplete`` /
  ``response.failed`` (the response's usage), the ``chunk`` events of
  openai's ``chat.completions.stream()``; an ``error`` or ``response.failed``
  event marks the stream failed;
- Gemini chunks: each ``usage_metadata`` a running total, fields missing
  from later chunks kept from earlier ones;
- Bedrock ConverseStream events: the ``{"metadata": {"usage": ...}}`` event.

Feeding a chunk is O(1) and never raises: a chunk of an unexpected shape is
passed on and read as nothing. The usage is parsed once, at the end, by
:meth:`UsageSnapshot.from_response <techrevati.runtime.usage.UsageSnapshot.from_response>`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any, Final

from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.usage import UsageSnapshot

__all__ = [
    "Source",
    "StreamReader",
    "aclose_all",
    "close_all",
    "kind_of",
    "open_async",
    "open_sync",
    "reader_for",
]

_NOT_STREAMS: Final = (str, bytes, bytearray, memoryview, int, float, bool, type(None))
_BEDROCK_EVENTS: Final = frozenset(
    {
        "messageStart",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    }
)
_FINAL_RESPONSE: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})
_USAGE_EVENTS: Final = _FINAL_RESPONSE | {"message_start", "message_delta", "chunk", "error"}
_ANTHROPIC_COUNTS: Final = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
)
"""The counts a ``message_delta`` may update; ``output_tokens`` it always carries."""
_ABSENT: Final = object()
_GEMINI_SNAKE: Final = (
    "prompt_token_count",
    "tool_use_prompt_token_count",
    "candidates_token_count",
    "cached_content_token_count",
    "thoughts_token_count",
)
_GEMINI_CAMEL: Final = (
    "promptTokenCount",
    "toolUsePromptTokenCount",
    "candidatesTokenCount",
    "cachedContentTokenCount",
    "thoughtsTokenCount",
)


class Source:
    """An opened stream: its chunks and how to give its connection back."""

    __slots__ = ("closers", "iterator", "kind", "stream")

    def __init__(
        self,
        stream: object,
        iterator: Any,
        closers: tuple[Callable[[], object], ...],
        kind: str,
    ) -> None:
        self.stream = stream  # what fn returned (the after_model hooks see it)
        self.iterator = iterator  # an Iterator, or an AsyncIterator for open_async
        self.closers = closers  # called in order; an async source's return awaitables
        self.kind = kind


def kind_of(stream: object) -> str:
    """Name a stream for messages: ``"openai Stream"``, ``"generator"``, ..."""
    cls = type(stream)
    if inspect.isgenerator(stream) or inspect.isasyncgen(stream):
        return cls.__name__
    return f"{cls.__module__.split('.')[0]} {cls.__name__}"


def open_sync(result: object) -> Source:
    """Open what a sync ``fn`` returned as a stream of chunks, or raise InvalidValueError."""
    stream: Any = _bedrock_stream(result) if isinstance(result, Mapping) else result
    closers: list[Callable[[], object]] = []
    if _is_manager(stream, "__enter__", "__exit__"):
        manager = stream
        stream = manager.__enter__()
        closers.append(lambda: manager.__exit__(None, None, None))
    if isinstance(stream, _NOT_STREAMS) or not hasattr(type(stream), "__iter__"):
        extra = "; an async stream goes to astream_turn" if hasattr(stream, "__aiter__") else ""
        raise InvalidValueError(
            f"stream_turn: fn must return a stream (an iterable of chunks), got "
            f"{type(result).__name__}{extra}"
        )
    iterator = iter(stream)
    close = _get(stream, "close")
    if callable(close):
        closers.append(close)
    if iterator is not stream and inspect.isgenerator(iterator):
        closers.append(iterator.close)
    return Source(result, iterator, tuple(closers), kind_of(stream))


async def open_async(result: object) -> Source:
    """Open what an async ``fn`` gave (awaited) as an async stream, or raise InvalidValueError."""
    stream: Any = result
    closers: list[Callable[[], object]] = []
    if _is_manager(stream, "__aenter__", "__aexit__"):
        manager = stream
        stream = await manager.__aenter__()
        closers.append(lambda: manager.__aexit__(None, None, None))
    if not hasattr(type(stream), "__aiter__"):
        extra = "; a sync stream goes to stream_turn" if hasattr(type(stream), "__iter__") else ""
        raise InvalidValueError(
            f"astream_turn: fn must return an async stream (an async iterable of chunks), got "
            f"{type(result).__name__}{extra}"
        )
    iterator = stream.__aiter__()
    for name in ("aclose", "close"):  # an async generator's aclose, an SDK stream's close
        close = _get(stream, name)
        if callable(close):
            closers.append(close)
            break
    if iterator is not stream and inspect.isasyncgen(iterator):
        closers.append(iterator.aclose)
    return Source(result, iterator, tuple(closers), kind_of(stream))


def _bedrock_stream(result: Mapping[Any, Any]) -> object:
    """Return the events of a ConverseStream answer (a dict; ``stream`` is botocore's)."""
    try:
        stream = result.get("stream")
    except Exception:
        stream = None
    if stream is None or not hasattr(type(stream), "__iter__"):
        raise InvalidValueError(
            "stream_turn: fn returned a dict without a 'stream' of events (a Bedrock "
            f"converse_stream answer has one), got keys {sorted(map(str, result))[:8]!r}"
        )
    return stream


def _is_manager(obj: object, enter: str, leave: str) -> bool:
    """Whether ``obj`` is an SDK's stream manager (entered to get the stream)."""
    cls = type(obj)
    return cls.__name__.endswith("StreamManager") and hasattr(cls, enter) and hasattr(cls, leave)


def _get(obj: object, name: str) -> object:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that raises
        return None


def close_all(source: Source) -> None:
    """Give a sync stream's connection back (best effort: a close that raises is skipped)."""
    for close in source.closers:
        try:
            close()
        except Exception:  # the stream's outcome is what matters, not its close
            continue


async def aclose_all(source: Source) -> None:
    """Give an async stream's connection back (best effort)."""
    for close in source.closers:
        try:
            pending = close()
            if inspect.isawaitable(pending):
                await pending
        except Exception:  # the stream's outcome is what matters, not its close
            continue


# -- reading usage as the chunks pass --------------------------------------------------------


class StreamReader:
    """What a stream said about its usage so far; the base reads nothing."""

    __slots__ = ("failure",)

    def __init__(self) -> None:
        self.failure: str | None = None
        """Why the stream failed in-band (an ``error`` event), or None."""

    def feed(self, chunk: object) -> None:
        """Look at one chunk (O(1), never raises)."""

    def usage(self) -> UsageSnapshot | None:
        """Return the usage reported so far, or None when the stream reported none."""
        return None


class _UsageField(StreamReader):
    """Chunks with a ``usage`` (OpenAI Chat): the last one that is not None counts."""

    __slots__ = ("_last", "_tier")

    def __init__(self) -> None:
        super().__init__()
        self._last: object = None
        self._tier: object = None  # the chunks' service_tier (OpenAI puts it on each)

    def feed(self, chunk: object) -> None:
        try:
            usage = chunk.get("usage") if type(chunk) is dict else getattr(chunk, "usage", None)
        except Exception:
            return
        if usage is not None:
            self._last = usage
            self._tier = _field(chunk, "service_tier")

    def usage(self) -> UsageSnapshot | None:
        return _parsed(self._last, self._tier)


class _Events(StreamReader):
    """Type-tagged events: Anthropic's message_start/message_delta, OpenAI Responses'."""

    __slots__ = ("_delta", "_final", "_start", "_tier")

    def __init__(self) -> None:
        super().__init__()
        self._start: object = None
        self._delta: object = None
        self._final: object = None
        self._tier: object = None  # the final response's (or raw chunk's) service_tier

    def feed(self, chunk: object) -> None:
        try:
            kind = chunk.get("type") if type(chunk) is dict else getattr(chunk, "type", None)
            if kind in _USAGE_EVENTS:
                self._usage_event(kind, chunk)
        except Exception:  # a chunk of an unknown shape tells nothing
            pass

    def _usage_event(self, kind: object, chunk: object) -> None:
        if kind == "message_delta":
            self._delta = _field(chunk, "usage")
        elif kind == "message_start":
            self._start = _field(_field(chunk, "message"), "usage")
        elif kind == "chunk":  # openai chat.completions.stream(): the raw chunk inside
            raw = _field(chunk, "chunk")
            usage = _field(raw, "usage")
            if usage is not None:
                self._final = usage
                self._tier = _field(raw, "service_tier")
        elif kind == "error":
            self.failure = f"error event: {_message(chunk)}"
        else:  # a final response event
            response = _field(chunk, "response")
            usage = _field(response, "usage")
            if usage is not None:
                self._final = usage
                self._tier = _field(response, "service_tier")
            if kind == "response.failed":
                self.failure = f"response.failed: {_message(_field(response, 'error'))}"

    def usage(self) -> UsageSnapshot | None:
        if self._final is not None:
            return _parsed(self._final, self._tier)
        start, delta = self._start, self._delta
        if start is None and delta is None:
            return None
        merged: dict[str, object] = {}
        for name in ("cache_creation", "output_tokens_details", "server_tool_use"):
            merged[name] = _field(start, name)
        for name in _ANTHROPIC_COUNTS:
            value = _field(delta, name)
            merged[name] = _field(start, name) if value is None else value
        output = _field(delta, "output_tokens")
        merged["output_tokens"] = _field(start, "output_tokens") if output is None else output
        details = _field(delta, "output_tokens_details")
        if details is not None:
            merged["output_tokens_details"] = details
        tier = _field(delta, "service_tier")  # Anthropic's usage carries it
        merged["service_tier"] = _field(start, "service_tier") if tier is None else tier
        return _parsed(merged)


class _Gemini(StreamReader):
    """Gemini chunks: each ``usage_metadata`` a running total, with fields that may drop out.

    Each field keeps the largest count seen (a running total never goes
    down), so a field missing from the last chunk keeps its earlier value.
    """

    __slots__ = ("_counts", "_items", "_names", "_seen", "_source")

    def __init__(self, names: tuple[str, ...], source: str) -> None:
        super().__init__()
        self._names = names
        self._items = itemgetter(*names)
        self._source = source  # "usage_metadata" (the SDK's objects) or "usageMetadata" (REST)
        self._counts = [0] * len(names)
        self._seen = False

    def feed(self, chunk: object) -> None:
        try:
            source = self._source
            usage = chunk.get(source) if type(chunk) is dict else getattr(chunk, source, None)
            if usage is None:
                return
            # A pydantic model keeps its fields in __dict__: read all five in C, with no
            # attribute hooks (a dict may leave some out: None, like an unset field).
            names = self._names
            if type(usage) is dict:
                prompt, tool, candidates, cached, thoughts = map(usage.get, names)
            else:
                try:
                    prompt, tool, candidates, cached, thoughts = self._items(usage.__dict__)
                except (AttributeError, KeyError, TypeError):  # no pydantic model
                    prompt, tool, candidates, cached, thoughts = (_field(usage, n) for n in names)
            counts = self._counts  # unrolled: this runs once per chunk
            if prompt is not None and prompt > counts[0]:
                counts[0] = prompt
            if tool is not None and tool > counts[1]:
                counts[1] = tool
            if candidates is not None and candidates > counts[2]:
                counts[2] = candidates
            if cached is not None and cached > counts[3]:
                counts[3] = cached
            if thoughts is not None and thoughts > counts[4]:
                counts[4] = thoughts
            self._seen = True
        except Exception:  # a chunk of an unknown shape (a count that is no number)
            pass

    def usage(self) -> UsageSnapshot | None:
        if not self._seen:
            return None
        return _parsed(dict(zip(self._names, self._counts, strict=True)))


class _Bedrock(StreamReader):
    """Bedrock ConverseStream events: the ``metadata`` event carries ``usage``."""

    __slots__ = ("_tier", "_usage")

    def __init__(self) -> None:
        super().__init__()
        self._usage: object = None
        self._tier: object = None  # metadata's serviceTier.type, when the request named one

    def feed(self, chunk: object) -> None:
        try:
            metadata = chunk.get("metadata")  # type: ignore[attr-defined]
            if metadata is not None:
                self._usage = metadata.get("usage")
                self._tier = _field(metadata.get("serviceTier"), "type")
        except Exception:  # a chunk of an unknown shape tells nothing
            pass

    def usage(self) -> UsageSnapshot | None:
        return _parsed(self._usage, self._tier)


def reader_for(chunk: object) -> StreamReader:
    """Pick the reader for a stream from its first chunk (a base reader if nothing fits)."""
    try:
        if isinstance(chunk, Mapping):
            return _mapping_reader(chunk)
        if isinstance(getattr(chunk, "type", None), str):
            return _Events()
        if hasattr(chunk, "usage_metadata") or hasattr(chunk, "candidates"):
            return _Gemini(_GEMINI_SNAKE, "usage_metadata")
        if hasattr(chunk, "usage"):
            return _UsageField()
    except Exception:  # a hostile chunk: read nothing from it
        pass
    return StreamReader()


def _mapping_reader(chunk: Mapping[Any, Any]) -> StreamReader:
    if any(key in chunk for key in _BEDROCK_EVENTS):
        return _Bedrock()
    if "candidates" in chunk or "usageMetadata" in chunk:
        return _Gemini(_GEMINI_CAMEL, "usageMetadata")
    if "usage_metadata" in chunk:
        return _Gemini(_GEMINI_SNAKE, "usage_metadata")
    if isinstance(chunk.get("type"), str):
        return _Events()
    return _UsageField()


def _field(obj: object, name: str) -> Any:
    """``obj[name]`` of a mapping or ``obj.name``; None when absent (or obj is None).

    The attribute is tried first: ``isinstance(obj, Mapping)`` is slow for
    the SDKs' pydantic models, and no mapping has these names as attributes.
    """
    if type(obj) is dict:
        return obj.get(name)
    value = getattr(obj, name, _ABSENT)
    if value is not _ABSENT:
        return value
    if isinstance(obj, Mapping):
        return obj.get(name)
    return None


def _message(obj: object) -> str:
    """Return the ``message`` of an error event or object, for a failure's reason."""
    try:
        message = _field(obj, "message")
        if message is None:
            message = _field(_field(obj, "error"), "message")
    except Exception:
        message = None
    return message if isinstance(message, str) and message else "no message"


def _parsed(usage: object, tier: object = None) -> UsageSnapshot | None:
    """Parse a usage object or dict (with the stream's service tier); None when unreadable."""
    if usage is None:
        return None
    try:
        if isinstance(tier, str) and tier:
            return UsageSnapshot.from_response(usage, service_tier=tier)
        return UsageSnapshot.from_response(usage)
    except (TechrevatiError, ValueError, TypeError):
        return None
