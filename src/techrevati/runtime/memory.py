"""Conversation memory: a chat history that keeps itself inside a window or a token budget.

A :class:`ConversationMemory` holds messages in the OpenAI/Anthropic chat
shape (``{"role": ..., "content": ...}``) and a per-message token count made
once, when a message is added. Its strategy (:class:`KeepAll`,
:class:`LastN`, :class:`TokenBudget`) drops the oldest messages as new ones
arrive; :meth:`ConversationMemory.compact` drops more on demand, for a
request the model refused as too long. System messages stay, order is kept,
and a tool call never loses its results (or they it): the memory drops whole
*groups*, a message and the tool results that answer it.
"""

from __future__ import annotations

import threading
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from techrevati.runtime._memory_messages import (
    CHARS_PER_TOKEN,
    IMAGE_PART_TYPES,
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    PINNED_ROLES,
    TokenCounter,
    checked_message,
    estimate_tokens,
    is_tool_result,
    json_copy,
    short,
    tiktoken_counter,
)
from techrevati.runtime._validate import int_at_least, required_callable, strict_bool
from techrevati.runtime.errors import InvalidValueError, MissingDependencyError

__all__ = [
    "CHARS_PER_TOKEN",
    "DEFAULT_REDUCE_BY",
    "IMAGE_PART_TYPES",
    "IMAGE_TOKENS",
    "MESSAGE_OVERHEAD",
    "CompactionResult",
    "ConversationMemory",
    "KeepAll",
    "LastN",
    "MemoryStrategy",
    "MissingDependencyError",
    "TokenBudget",
    "TokenCounter",
    "estimate_tokens",
    "tiktoken_counter",
]

DEFAULT_REDUCE_BY: Final = 0.25
"""The share of the tokens :meth:`ConversationMemory.compact` drops when given no target."""

_FORMAT: Final = 1
_MOST: Final = 10**12  # tokens one message may count: the sums stay machine ints
_KEYS: Final = frozenset({"version", "strategy", "messages", "pinned"})


@dataclass(frozen=True, slots=True)
class KeepAll:
    """Keep every message; only :meth:`ConversationMemory.compact` drops any."""


@dataclass(frozen=True, slots=True)
class LastN:
    """Keep at most the last ``n`` messages (an int >= 1), not counting pinned ones.

    Whole groups go, oldest first, so fewer than ``n`` may stay; the newest
    group always stays, even when it alone is longer than ``n``.
    """

    n: int

    def __post_init__(self) -> None:
        int_at_least("n", self.n, 1)


@dataclass(frozen=True, slots=True)
class TokenBudget:
    """Keep the history within ``max_tokens`` (an int >= 1), as the memory's counter counts.

    Whole groups go, oldest first, until the estimate is at most
    ``max_tokens``; only what can never go may exceed it: the pinned
    messages and the newest group.
    """

    max_tokens: int

    def __post_init__(self) -> None:
        int_at_least("max_tokens", self.max_tokens, 1)


MemoryStrategy: TypeAlias = KeepAll | LastN | TokenBudget
"""What a :class:`ConversationMemory` keeps as messages arrive."""


@dataclass(frozen=True, slots=True)
class CompactionResult:
    """What a compaction dropped and what it left; ``messages_dropped == 0`` when nothing went."""

    messages_dropped: int
    tokens_dropped: int
    messages_kept: int
    tokens_kept: int


class ConversationMemory:
    """A thread-safe chat history that drops its oldest messages to stay within its strategy.

    Messages are mappings in the chat shape: a ``role`` (``system``,
    ``developer``, ``user``, ``assistant``, ``tool``, ``function``) and a
    ``content`` that is a str, a list of content parts, or ``None``, with any
    other JSON keys (``tool_calls``, ``tool_call_id``, ``name``, ...).
    Each is checked when added (:class:`~techrevati.runtime.errors.InvalidValueError`
    names the bad part), copied, and counted once with ``counter``
    (:func:`estimate_tokens` by default, or :func:`tiktoken_counter`).

    The invariants, after every call:

    * *pinned* messages are never dropped: every ``system`` and ``developer``
      message, any appended with ``pinned=True``, and the tool results
      answering a pinned message;
    * the messages kept are in the order they were added;
    * the rest form *groups*: a message that is not a tool result, with the
      tool results that follow it (role ``tool``/``function``, or a user
      message with Anthropic ``tool_result`` parts; system messages in
      between do not end a group). A group goes or stays whole, so an
      assistant message with ``tool_calls`` (or ``tool_use`` parts) never
      loses its results, nor a result its call;
    * groups go oldest first, and the newest group always stays.
    """

    __slots__ = (
        "_anchor_pinned",
        "_base",
        "_counter",
        "_cum",
        "_dropped_cum",
        "_firsts",
        "_lock",
        "_msgs",
        "_pinned",
        "_pinned_tokens",
        "_strategy",
    )

    def __init__(
        self,
        strategy: MemoryStrategy | None = None,
        *,
        counter: TokenCounter = estimate_tokens,
        messages: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        if strategy is None:
            strategy = KeepAll()
        if not isinstance(strategy, KeepAll | LastN | TokenBudget):
            raise InvalidValueError(
                f"strategy must be a KeepAll, LastN or TokenBudget, got {short(strategy)}"
            )
        self._strategy: MemoryStrategy = strategy
        self._counter = required_callable("counter", counter)
        self._lock = threading.Lock()
        # Groups not pinned, oldest first: their messages in one list (``_base`` is the
        # absolute index of ``_msgs[0]``), each group's first absolute index, and the
        # running token sum to each group's end (``_dropped_cum``: to the last dropped).
        self._msgs: list[dict[str, Any]] = []
        self._base = 0
        self._firsts = array("q")  # machine ints: dropping a run of them frees nothing
        self._cum = array("q")
        self._dropped_cum = 0
        # Pinned messages, each with the absolute index of the group message it precedes.
        self._pinned: list[tuple[int, dict[str, Any]]] = []
        self._pinned_tokens = 0
        self._anchor_pinned: bool | None = None  # the last message not a system one: pinned?
        self.extend(messages)

    @property
    def strategy(self) -> MemoryStrategy:
        """What this memory keeps as messages arrive."""
        return self._strategy

    @property
    def counter(self) -> TokenCounter:
        """How this memory counts a message's tokens."""
        return self._counter

    @property
    def messages(self) -> tuple[dict[str, Any], ...]:
        """The messages kept, in order, each a shallow copy (treat nested parts as read-only)."""
        with self._lock:
            kept = self._ordered()
        return tuple([dict(message) for message in kept])

    @property
    def token_estimate(self) -> int:
        """The tokens of the messages kept, as the counter counted them."""
        with self._lock:
            return self._tokens()

    def append(self, message: Mapping[str, Any], *, pinned: bool = False) -> CompactionResult:
        """Add ``message``, then drop what the strategy no longer keeps; return what went.

        With ``pinned=True`` the message is never dropped (system and
        developer messages always are pinned), nor are the tool results that
        answer it. A tool
        result cannot be pinned apart from the message it answers.
        """
        strict_bool("pinned", pinned)
        item = checked_message(message)
        tokens = self._count(item)
        with self._lock:
            self._add(item, tokens, pinned=pinned)
            return self._apply_strategy()

    def extend(self, messages: Iterable[Mapping[str, Any]]) -> CompactionResult:
        """Add each of ``messages`` in order (all or none), then apply the strategy once."""
        if isinstance(messages, Mapping | str | bytes) or not isinstance(messages, Iterable):
            raise InvalidValueError(
                f"messages must be an iterable of messages, got {short(messages)}"
            )
        items = [_at(index, checked_message, message) for index, message in enumerate(messages)]
        counted = [(item, self._count(item)) for item in items]
        with self._lock:
            for item, tokens in counted:
                self._add(item, tokens, pinned=False)
            return self._apply_strategy()

    def compact(
        self, *, target_tokens: int | None = None, reduce_by: float | None = None
    ) -> CompactionResult:
        """Drop the oldest groups beyond the strategy, for a request the model found too long.

        With ``target_tokens`` (an int >= 0), drop until the estimate is at
        most that; with ``reduce_by`` (a number > 0 and <= 1), until it is at
        most ``(1 - reduce_by)`` of what it is now, and at least one group;
        with neither, ``reduce_by=DEFAULT_REDUCE_BY`` (a quarter). Pinned
        messages and the newest group never go, so each call with
        ``reduce_by`` drops something until only those are left; then it
        returns ``messages_dropped == 0``: there is nothing more to shed.
        """
        if target_tokens is not None and reduce_by is not None:
            raise InvalidValueError(
                "pass target_tokens or reduce_by, not both; "
                f"got {target_tokens!r} and {reduce_by!r}"
            )
        if target_tokens is not None:
            int_at_least("target_tokens", target_tokens, 0)
            with self._lock:
                return self._drop(self._cut_to_tokens(target_tokens))
        share = DEFAULT_REDUCE_BY if reduce_by is None else _share(reduce_by)
        with self._lock:
            target = int(self._tokens() * (1.0 - share))
            cut = max(self._cut_to_tokens(target), 1 if len(self._firsts) > 1 else 0)
            return self._drop(cut)

    def to_dict(self) -> dict[str, Any]:
        """Return the memory as JSON data, for a checkpoint: :meth:`from_dict` reads it.

        ``{"version": 1, "strategy": {...}, "messages": [...], "pinned": [...]}``,
        where ``pinned`` lists the indices of the pinned messages. The counter
        is not saved (it is code): give :meth:`from_dict` the same one.
        """
        with self._lock:
            kept = self._ordered()
            pinned_ids = {id(message) for _, message in self._pinned}
            strategy = self._strategy
        return {
            "version": _FORMAT,
            "strategy": _strategy_dict(strategy),
            "messages": [json_copy(message, "message") for message in kept],
            "pinned": [i for i, message in enumerate(kept) if id(message) in pinned_ids],
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, counter: TokenCounter = estimate_tokens
    ) -> ConversationMemory:
        """Read what :meth:`to_dict` wrote, counting each message again with ``counter``."""
        if not isinstance(data, Mapping) or set(data) != {
            "version",
            "strategy",
            "messages",
            "pinned",
        }:
            raise InvalidValueError(
                "a memory must be a mapping of version, strategy, messages and pinned, "
                f"got {short(data)}"
            )
        if data["version"] != _FORMAT:
            raise InvalidValueError(f"memory version must be {_FORMAT}, got {data['version']!r}")
        messages, pinned = data["messages"], data["pinned"]
        if not isinstance(messages, list):
            raise InvalidValueError(f"memory messages must be a list, got {short(messages)}")
        if (
            not isinstance(pinned, list)
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in pinned)
            or sorted(set(pinned)) != pinned
            or (pinned and not 0 <= pinned[0] <= pinned[-1] < len(messages))
        ):
            raise InvalidValueError(
                f"memory pinned must be ascending indices of its messages, got {short(pinned)}"
            )
        memory = cls(_strategy_from(data["strategy"]), counter=counter)
        items = [_at(index, checked_message, message) for index, message in enumerate(messages)]
        counted = [(item, memory._count(item)) for item in items]
        marked = set(pinned)
        with memory._lock:
            for index, (item, tokens) in enumerate(counted):
                _at(index, memory._add, item, tokens, pinned=index in marked)
            memory._apply_strategy()
        return memory

    def __len__(self) -> int:
        with self._lock:
            return len(self._msgs) + len(self._pinned)

    def __repr__(self) -> str:
        with self._lock:
            count, tokens = len(self._msgs) + len(self._pinned), self._tokens()
        return f"ConversationMemory({count} messages, {tokens} tokens, {self._strategy!r})"

    # -- private, the lock held unless said otherwise -------------------------------

    def _count(self, message: dict[str, Any]) -> int:
        """Count ``message`` and check the answer (called without the lock)."""
        tokens = self._counter(message)
        if not isinstance(tokens, int) or isinstance(tokens, bool) or not 0 <= tokens <= _MOST:
            raise InvalidValueError(
                f"counter must return an int >= 0 and <= {_MOST:.0e}, "
                f"got {tokens!r} for {short(message)}"
            )
        return tokens

    def _add(self, item: dict[str, Any], tokens: int, *, pinned: bool) -> None:
        if item["role"] in PINNED_ROLES:
            self._pin(item, tokens)
            return
        anchor = self._anchor_pinned
        if is_tool_result(item) and anchor is not None:
            if anchor:
                self._pin(item, tokens)
            elif pinned:
                raise InvalidValueError(
                    "a tool result cannot be pinned apart from the message it answers; "
                    f"pin that message instead: {short(item)}"
                )
            else:  # joins the newest group, the one of the message it answers
                self._msgs.append(item)
                self._cum[-1] += tokens
            return
        self._anchor_pinned = pinned
        if pinned:
            self._pin(item, tokens)
            return
        self._firsts.append(self._base + len(self._msgs))
        self._cum.append((self._cum[-1] if self._cum else self._dropped_cum) + tokens)
        self._msgs.append(item)

    def _pin(self, item: dict[str, Any], tokens: int) -> None:
        self._pinned.append((self._base + len(self._msgs), item))
        self._pinned_tokens += tokens

    def _tokens(self) -> int:
        groups = self._cum[-1] - self._dropped_cum if self._cum else 0
        return self._pinned_tokens + groups

    def _ordered(self) -> list[dict[str, Any]]:
        """Pinned and group messages merged in the order they were added."""
        out: list[dict[str, Any]] = []
        msgs, base, done = self._msgs, self._base, 0
        for position, item in self._pinned:
            upto = position - base
            if upto > done:
                out.extend(msgs[done:upto])
                done = upto
            out.append(item)
        out.extend(msgs[done:])
        return out

    def _apply_strategy(self) -> CompactionResult:
        strategy = self._strategy
        if isinstance(strategy, TokenBudget):
            return self._drop(self._cut_to_tokens(strategy.max_tokens))
        if isinstance(strategy, LastN):
            end = self._base + len(self._msgs)
            cut = min(bisect_left(self._firsts, end - strategy.n), len(self._firsts) - 1)
            return self._drop(max(cut, 0))
        return self._drop(0)

    def _cut_to_tokens(self, target: int) -> int:
        """How many of the oldest groups must go for the estimate to be at most ``target``."""
        groups = len(self._firsts)
        if groups <= 1:
            return 0
        allowed = target - self._pinned_tokens
        end = self._cum[-1]
        if end - self._dropped_cum <= allowed:
            return 0
        # The fewest groups k with end - cum[k - 1] <= allowed, the newest group kept.
        return min(bisect_left(self._cum, end - allowed) + 1, groups - 1)

    def _drop(self, groups: int) -> CompactionResult:
        """Drop the ``groups`` oldest groups (fewer than there are) and say what went."""
        if groups == 0:
            dropped = tokens = 0
        else:
            dropped = self._firsts[groups] - self._base
            tokens = self._cum[groups - 1] - self._dropped_cum
            del self._msgs[:dropped]  # O(dropped): the freeing of the messages themselves
            self._base += dropped
            self._dropped_cum = self._cum[groups - 1]
            del self._firsts[:groups]
            del self._cum[:groups]
        return CompactionResult(
            messages_dropped=dropped,
            tokens_dropped=tokens,
            messages_kept=len(self._msgs) + len(self._pinned),
            tokens_kept=self._tokens(),
        )


def _at(index: int, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; an InvalidValueError it raises is prefixed with ``messages[index]``."""
    try:
        return fn(*args, **kwargs)
    except InvalidValueError as exc:
        raise InvalidValueError(f"messages[{index}]: {exc}") from None


def _share(reduce_by: object) -> float:
    if (
        not isinstance(reduce_by, int | float)
        or isinstance(reduce_by, bool)
        or not 0 < reduce_by <= 1
    ):
        raise InvalidValueError(f"reduce_by must be a number > 0 and <= 1, got {reduce_by!r}")
    return float(reduce_by)


def _strategy_dict(strategy: MemoryStrategy) -> dict[str, Any]:
    if isinstance(strategy, TokenBudget):
        return {"kind": "token_budget", "max_tokens": strategy.max_tokens}
    if isinstance(strategy, LastN):
        return {"kind": "last_n", "n": strategy.n}
    return {"kind": "keep_all"}


def _strategy_from(data: object) -> MemoryStrategy:
    if isinstance(data, Mapping):
        kind = data.get("kind")
        if kind == "keep_all" and set(data) == {"kind"}:
            return KeepAll()
        if kind == "last_n" and set(data) == {"kind", "n"}:
            return LastN(data["n"])
        if kind == "token_budget" and set(data) == {"kind", "max_tokens"}:
            return TokenBudget(data["max_tokens"])
    raise InvalidValueError(
        "memory strategy must be {'kind': 'keep_all'}, {'kind': 'last_n', 'n': ...} "
        f"or {{'kind': 'token_budget', 'max_tokens': ...}}, got {short(data)}"
    )
