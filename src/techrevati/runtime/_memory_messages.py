"""Chat messages as :class:`~techrevati.runtime.memory.ConversationMemory` sees them.

Their shape (checked once, copied into plain JSON data), which of them are
tool results, and what they cost in tokens: the cheap default estimate and
the exact ``tiktoken`` count. Public names are re-exported by
:mod:`techrevati.runtime.memory`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from techrevati.runtime.errors import InvalidValueError, MissingDependencyError

__all__ = [
    "CHARS_PER_TOKEN",
    "IMAGE_PART_TYPES",
    "IMAGE_TOKENS",
    "MAX_DEPTH",
    "MESSAGE_OVERHEAD",
    "PINNED_ROLES",
    "RESULT_ROLES",
    "ROLES",
    "TokenCounter",
    "checked_message",
    "estimate_tokens",
    "is_tool_result",
    "json_copy",
    "short",
    "tiktoken_counter",
]

ROLES: Final = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
"""The roles a message may have (OpenAI's chat roles; Anthropic uses user and assistant)."""

PINNED_ROLES: Final = frozenset({"system", "developer"})
"""Roles whose messages no strategy and no compaction ever drops."""

RESULT_ROLES: Final = frozenset({"tool", "function"})
"""Roles of a message answering a tool call (``function`` is OpenAI's older name)."""

MESSAGE_OVERHEAD: Final = 4
"""Tokens :func:`estimate_tokens` adds per message for its framing (role, separators)."""

CHARS_PER_TOKEN: Final = 4
"""Characters per token in :func:`estimate_tokens`: English text averages about four."""

IMAGE_TOKENS: Final = 1_000
"""Tokens counted for one image part, whatever its size (images cost ~85 to ~1,600)."""

IMAGE_PART_TYPES: Final = frozenset({"image", "image_url", "input_image"})
"""Content-part types counted as one image (Anthropic, OpenAI chat, OpenAI Responses)."""

MAX_DEPTH: Final = 100
"""How deeply lists and mappings may nest inside one message."""

_ROLE_LIST: Final = ", ".join(sorted(ROLES))


class TokenCounter(Protocol):
    """Anything that says how many tokens one message costs: ``counter(message) -> int``.

    A plain function ``def count(message: Mapping[str, Any]) -> int`` is one.
    It must return an int >= 0 and be deterministic: the memory calls it once
    per message, when the message is added, and keeps the answer.
    """

    def __call__(self, message: Mapping[str, Any], /) -> int: ...


def estimate_tokens(message: Mapping[str, Any], /) -> int:
    """Return a cheap estimate of the tokens in ``message``, with no tokenizer.

    The rule: :data:`MESSAGE_OVERHEAD` (4) per message, plus one token per
    :data:`CHARS_PER_TOKEN` (4) characters, rounded up, of every string in
    the message except its role (the text, the text of each content part,
    tool names, tool-call arguments, ids; numbers count their digits), plus
    :data:`IMAGE_TOKENS` (1,000) per image part instead of its bytes. Keys
    are not counted. It never raises, whatever the message holds.
    """
    texts, images = _texts(message, with_role=False)
    chars = sum(map(len, texts))
    return MESSAGE_OVERHEAD + -(-chars // CHARS_PER_TOKEN) + images * IMAGE_TOKENS


def tiktoken_counter(model: str = "gpt-4o", *, encoding: str | None = None) -> TokenCounter:
    """Return a :data:`TokenCounter` that counts with ``tiktoken``, exactly for the text.

    The encoding is the one ``tiktoken`` uses for ``model``, or the one named
    by ``encoding`` (``"o200k_base"``, ``"cl100k_base"``, ...). A message
    costs 3 tokens of framing plus 1 for a ``name``, as OpenAI publishes for
    chat messages, plus the encoded length of every string in it (role
    included; special tokens are encoded as plain text), plus
    :data:`IMAGE_TOKENS` per image part. ``tiktoken`` is imported here, not
    before; without it, :class:`~techrevati.runtime.errors.MissingDependencyError`.
    ``tiktoken`` downloads an encoding's file on first use and caches it
    (``TIKTOKEN_CACHE_DIR``); offline, point that at a cache that has it.
    """
    try:
        import tiktoken  # noqa: PLC0415 (optional, and heavy)
    except ImportError as exc:
        raise MissingDependencyError("tiktoken", "tiktoken") from exc
    if encoding is None:
        if not isinstance(model, str):
            raise InvalidValueError(f"model must be a str, got {model!r}")
        try:
            found = tiktoken.encoding_for_model(model)
        except KeyError:
            raise InvalidValueError(
                f"tiktoken knows no encoding for model {model!r}; "
                "pass encoding= (e.g. 'o200k_base')"
            ) from None
    else:
        try:
            found = tiktoken.get_encoding(encoding)
        except ValueError:
            raise InvalidValueError(
                f"unknown tiktoken encoding {encoding!r}; "
                f"known: {', '.join(sorted(tiktoken.list_encoding_names()))}"
            ) from None
    return _TiktokenCounter(found.name, found.encode_ordinary)


class _TiktokenCounter:
    """A :data:`TokenCounter` over one ``tiktoken`` encoding."""

    __slots__ = ("_encode", "encoding")

    def __init__(self, encoding: str, encode: Callable[[str], list[int]]) -> None:
        self.encoding = encoding
        self._encode = encode

    def __call__(self, message: Mapping[str, Any], /) -> int:
        texts, images = _texts(message, with_role=True)
        encode = self._encode
        named = 1 if "name" in message else 0
        return 3 + named + sum(len(encode(text)) for text in texts) + images * IMAGE_TOKENS

    def __repr__(self) -> str:
        return f"tiktoken_counter(encoding={self.encoding!r})"


def checked_message(message: object) -> dict[str, Any]:
    """Return ``message`` as a fresh dict of JSON data, or raise naming what is wrong."""
    if not isinstance(message, Mapping):
        raise InvalidValueError(
            f"a message must be a mapping with a 'role' (a dict), got {short(message)}"
        )
    role = message.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidValueError(f"message role must be one of {_ROLE_LIST}, got {short(role)}")
    content = message.get("content")
    if content is not None and not isinstance(content, str | list | tuple):
        raise InvalidValueError(
            f"message content must be a str, a list of content parts or None, got {short(content)}"
        )
    copied: dict[str, Any] = json_copy(message, "message")
    return copied


def json_copy(value: object, name: str) -> Any:
    """Return a deep copy of ``value`` as dicts, lists and scalars; raise naming a bad part."""
    try:
        return _copy(value, 0)
    except _BadPartError as bad:
        where = name + "".join(reversed(bad.path))
        raise InvalidValueError(f"{where} {bad.reason}") from None


def is_tool_result(message: Mapping[str, Any]) -> bool:
    """Whether ``message`` answers a tool call (role tool or function, or tool_result parts)."""
    role = message["role"]
    if role in RESULT_ROLES:
        return True
    content = message.get("content")
    return (
        role == "user"
        and isinstance(content, list)
        and any(isinstance(part, dict) and part.get("type") == "tool_result" for part in content)
    )


def short(value: object, limit: int = 120) -> str:
    """``repr(value)``, cut to ``limit`` characters for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _BadPartError(Exception):
    """A part of a message that is not JSON data; ``path`` grows on the way out."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path: list[str] = []


def _copy(value: object, depth: int) -> Any:
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _BadPartError(f"must be a finite number, got {value!r}")
        return value
    if depth >= MAX_DEPTH:
        raise _BadPartError(f"nests lists and mappings more than {MAX_DEPTH} levels deep")
    if isinstance(value, Mapping):
        copied: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _BadPartError(f"has a key that is not a str: {short(key)}")
            try:
                copied[key] = _copy(item, depth + 1)
            except _BadPartError as bad:
                bad.path.append(f"[{key!r}]")
                raise
        return copied
    if isinstance(value, list | tuple):
        items: list[Any] = []
        for index, item in enumerate(value):
            try:
                items.append(_copy(item, depth + 1))
            except _BadPartError as bad:
                bad.path.append(f"[{index}]")
                raise
        return items
    raise _BadPartError(
        "must be JSON data (a str, number, bool, None, list, or mapping with str keys), "
        f"got {short(value)}"
    )


def _texts(message: Mapping[str, Any], *, with_role: bool) -> tuple[list[str], int]:
    """Every string in ``message`` (numbers as text) and how many image parts it has."""
    texts: list[str] = []
    images = 0
    try:
        stack: list[object] = [v for k, v in message.items() if with_role or k != "role"]
    except (AttributeError, TypeError):  # not a mapping at all: its text is its repr
        return [str(message)], 0
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, Mapping):
            kind = value.get("type")
            if isinstance(kind, str) and kind in IMAGE_PART_TYPES:
                images += 1
            else:
                stack.extend(value.values())
        elif isinstance(value, list | tuple):
            stack.extend(value)
        elif value is not None:
            texts.append(str(value))
    return texts, images
