"""ConversationMemory: strategies, whole tool-call groups, compaction, counters, checkpoints."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from techrevati.runtime.errors import InvalidValueError, MissingDependencyError, TechrevatiError
from techrevati.runtime.memory import (
    DEFAULT_REDUCE_BY,
    IMAGE_TOKENS,
    MESSAGE_OVERHEAD,
    CompactionResult,
    ConversationMemory,
    KeepAll,
    LastN,
    MemoryStrategy,
    TokenBudget,
    estimate_tokens,
    tiktoken_counter,
)
from tests.conftest import examples

Message = dict[str, Any]


def tiktoken_cache() -> Path:
    """The encodings litellm ships (o200k_base, cl100k_base, p50k_base): tiktoken offline."""
    spec = importlib.util.find_spec("litellm")
    assert spec is not None, "litellm (a dev dependency) is not installed"
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "litellm_core_utils" / "tokenizers"


def offline_tiktoken(monkeypatch: pytest.MonkeyPatch) -> None:
    """Point tiktoken at :func:`tiktoken_cache` (tests/test_docs.py uses it for memory.md)."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tiktoken_cache()))


def user(text: str, **extra: Any) -> Message:
    return {"role": "user", "content": text, **extra}


def assistant(text: str) -> Message:
    return {"role": "assistant", "content": text}


def system(text: str) -> Message:
    return {"role": "system", "content": text}


def call(*ids: str) -> Message:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in ids
        ],
    }


def result(call_id: str, text: str = "ok") -> Message:
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def fixed(message: Mapping[str, Any]) -> int:
    """A counter: the message's ``"t"`` (10 when absent)."""
    tokens = message.get("t", 10)
    assert isinstance(tokens, int)
    return tokens


def contents(memory: ConversationMemory) -> list[object]:
    return [m.get("content") for m in memory.messages]


# -- the default estimate ----------------------------------------------------------------


def test_estimate_is_overhead_plus_a_token_per_four_characters_rounded_up() -> None:
    assert estimate_tokens(user("")) == MESSAGE_OVERHEAD == 4
    assert estimate_tokens(user("abcd")) == 5
    assert estimate_tokens(user("hello world")) == 4 + 3  # 11 characters
    assert estimate_tokens({"role": "assistant", "content": "x" * 400}) == 104


def test_estimate_counts_parts_tool_calls_and_numbers_but_not_the_role_or_keys() -> None:
    parts = {"role": "user", "content": [{"type": "text", "text": "abcd"}]}
    assert estimate_tokens(parts) == 4 + 2  # "text" + "abcd": 8 characters
    tool = call("c1")  # "c1" + "function" + "f" + "{}": 13 characters
    assert estimate_tokens(tool) == 4 + 4
    assert estimate_tokens({"role": "tool", "content": [12345, True, None]}) == 4 + 3  # 9 chars
    assert estimate_tokens({"role": "assistant" * 10, "content": ""}) == 4


def test_an_image_part_counts_a_flat_cost_not_its_bytes() -> None:
    huge = "data:image/png;base64," + "A" * 1_000_000
    for part in (
        {"type": "image_url", "image_url": {"url": huge}},
        {"type": "image", "source": {"type": "base64", "data": huge}},
        {"type": "input_image", "image_url": huge},
    ):
        assert estimate_tokens({"role": "user", "content": [part]}) == 4 + IMAGE_TOKENS


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
        max_leaves=30,
    )
)
@settings(max_examples=examples(100))
def test_estimate_never_raises_on_any_json_content(content: object) -> None:
    tokens = estimate_tokens({"role": "user", "content": content})
    assert isinstance(tokens, int)
    assert tokens >= MESSAGE_OVERHEAD


def test_estimate_of_something_that_is_no_message_still_answers() -> None:
    assert estimate_tokens("abcdefgh") == 4 + 2  # type: ignore[arg-type]
    assert estimate_tokens({"role": "user", "content": {1, 2}}) == 4 + 2  # "{1, 2}"


# -- tiktoken ------------------------------------------------------------------------------


def test_tiktoken_counter_counts_every_string_with_openai_framing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tiktoken

    offline_tiktoken(monkeypatch)
    counter = tiktoken_counter("gpt-4o")
    encode = tiktoken.get_encoding("o200k_base").encode_ordinary
    message = user("hello world, how are you?", name="bob")
    expected = 3 + 1 + sum(len(encode(s)) for s in ("user", "hello world, how are you?", "bob"))
    assert counter(message) == expected
    assert counter(user("hi")) == 3 + len(encode("user")) + len(encode("hi"))
    assert repr(counter) == "tiktoken_counter(encoding='o200k_base')"


def test_tiktoken_counter_reads_special_tokens_as_text_and_images_flat(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offline_tiktoken(monkeypatch)
    counter = tiktoken_counter(encoding="cl100k_base")
    assert counter(user("<|endoftext|>")) > 3 + 2  # plain text, several tokens; no error
    image = {"type": "image_url", "image_url": {"url": "data:" + "A" * 100_000}}
    plain = counter({"role": "user", "content": []})
    assert counter({"role": "user", "content": [image]}) == plain + IMAGE_TOKENS


def test_tiktoken_counter_in_a_memory_counts_each_message_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offline_tiktoken(monkeypatch)
    counter = tiktoken_counter("gpt-4o-mini")
    memory = ConversationMemory(counter=counter, messages=[system("be brief"), user("hello")])
    assert memory.token_estimate == counter(system("be brief")) + counter(user("hello"))


def test_tiktoken_counter_refuses_an_unknown_model_or_encoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    offline_tiktoken(monkeypatch)
    with pytest.raises(InvalidValueError, match=r"'claude-nonesuch'.*encoding="):
        tiktoken_counter("claude-nonesuch")
    with pytest.raises(InvalidValueError, match=r"'o300k'.*o200k_base"):
        tiktoken_counter(encoding="o300k")


def test_tiktoken_counter_without_tiktoken_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # import tiktoken -> ImportError
    with pytest.raises(MissingDependencyError) as caught:
        tiktoken_counter()
    assert isinstance(caught.value, ImportError)
    assert caught.value.name == "tiktoken"
    assert "pip install 'techrevati-runtime[tiktoken]'" in str(caught.value)


def test_importing_memory_loads_neither_tiktoken_nor_json() -> None:
    code = (
        "import sys, techrevati.runtime.memory;"
        "print(sorted(m for m in ('tiktoken', 'json', 'litellm') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


# -- strategies ----------------------------------------------------------------------------


def test_keep_all_never_drops_on_append() -> None:
    memory = ConversationMemory(counter=fixed)
    for i in range(50):
        assert memory.append(user(str(i))).messages_dropped == 0
    assert len(memory) == 50
    assert memory.token_estimate == 500
    assert memory.strategy == KeepAll()


def test_last_n_keeps_the_last_n_and_every_system_message_in_order() -> None:
    memory = ConversationMemory(LastN(3), counter=fixed)
    memory.append(system("s0"))
    for i in range(4):
        memory.append(user(f"u{i}"))
    memory.append(system("s1"))
    done = memory.append(user("u4"))
    assert contents(memory) == ["s0", "u2", "u3", "s1", "u4"]
    assert done == CompactionResult(
        messages_dropped=1, tokens_dropped=10, messages_kept=5, tokens_kept=50
    )


def test_last_n_keeps_the_newest_group_whole_even_when_longer_than_n() -> None:
    memory = ConversationMemory(LastN(2), counter=fixed)
    memory.extend([user("go"), call("a", "b", "c"), result("a"), result("b"), result("c")])
    assert [m["role"] for m in memory.messages] == ["assistant", "tool", "tool", "tool"]


def test_token_budget_drops_oldest_groups_until_within_it() -> None:
    memory = ConversationMemory(TokenBudget(35), counter=fixed)
    memory.append(system("s"))  # 10, pinned
    for i in range(5):
        memory.append(user(f"u{i}"))
    assert contents(memory) == ["s", "u3", "u4"]
    assert memory.token_estimate == 30


def test_token_budget_drops_a_tool_call_with_all_its_results() -> None:
    memory = ConversationMemory(TokenBudget(45), counter=fixed)
    memory.extend([user("q"), call("a", "b"), result("a"), result("b")])
    done = memory.append(user("next"))  # 50 tokens: the oldest group (the question) goes
    assert done.messages_dropped == 1
    assert memory.messages[0]["role"] == "assistant"
    done = memory.append(user("again"))  # now the call and both results go together
    assert done.messages_dropped == 3
    assert done.tokens_dropped == 30
    assert contents(memory) == ["next", "again"]


def test_a_system_message_inside_a_tool_exchange_does_not_split_it() -> None:
    memory = ConversationMemory(counter=fixed)
    memory.extend([user("q"), call("a"), system("note"), result("a"), user("later")])
    memory.compact(target_tokens=30)  # the call group (call + result) is the one to go
    assert [m.get("tool_call_id") for m in memory.messages] == [None, None]
    assert contents(memory) == ["note", "later"]


def test_anthropic_tool_use_and_tool_result_parts_go_together() -> None:
    use = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "checking"},
            {"type": "tool_use", "id": "tu1", "name": "weather", "input": {"city": "Oslo"}},
        ],
    }
    answer = {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "tu1", "content": "4 C"}],
    }
    memory = ConversationMemory(counter=fixed)
    memory.extend([user("weather?"), use, answer, assistant("4 C in Oslo"), user("thanks")])
    memory.compact(target_tokens=30)  # question, then tool_use + tool_result as one group
    assert contents(memory) == ["4 C in Oslo", "thanks"]


def test_a_pinned_message_stays_and_so_do_its_tool_results() -> None:
    memory = ConversationMemory(LastN(1), counter=fixed)
    memory.append(user("the task"), pinned=True)
    memory.append(call("a"), pinned=True)
    memory.append(result("a", "found it"))
    for i in range(5):
        memory.append(user(f"u{i}"))
    assert contents(memory) == ["the task", None, "found it", "u4"]


def test_a_tool_result_cannot_be_pinned_apart_from_its_call() -> None:
    memory = ConversationMemory(counter=fixed)
    memory.extend([user("q"), call("a")])
    with pytest.raises(InvalidValueError, match="pin that message instead"):
        memory.append(result("a"), pinned=True)
    assert len(memory) == 2


def test_a_tool_result_with_no_call_before_it_is_a_group_of_its_own() -> None:
    memory = ConversationMemory(LastN(1), counter=fixed)
    memory.extend([result("x", "orphan"), user("q")])
    assert contents(memory) == ["q"]


# -- compaction for an overflow ------------------------------------------------------------


def test_compact_without_arguments_drops_a_quarter_of_the_tokens() -> None:
    memory = ConversationMemory(counter=fixed, messages=[user(str(i)) for i in range(100)])
    done = memory.compact()
    assert DEFAULT_REDUCE_BY == 0.25
    assert done == CompactionResult(
        messages_dropped=25, tokens_dropped=250, messages_kept=75, tokens_kept=750
    )


def test_a_message_may_count_up_to_a_trillion_tokens() -> None:
    memory = ConversationMemory(counter=lambda m: 10**12)
    memory.extend([user("a"), user("b")])
    assert memory.token_estimate == 2 * 10**12
    assert memory.compact(target_tokens=10**12).tokens_dropped == 10**12


def test_compact_to_a_target_drops_the_fewest_groups_that_reach_it() -> None:
    memory = ConversationMemory(counter=fixed, messages=[user(str(i)) for i in range(10)])
    assert memory.compact(target_tokens=100).messages_dropped == 0
    assert memory.compact(target_tokens=95).messages_dropped == 1
    assert memory.compact(target_tokens=0).messages_dropped == 8  # the newest stays
    assert contents(memory) == ["9"]


def test_repeated_compaction_makes_progress_until_nothing_can_go() -> None:
    memory = ConversationMemory(counter=fixed)
    memory.extend([system("s"), *(user(str(i)) for i in range(20)), call("a"), result("a")])
    dropped = [memory.compact().messages_dropped for _ in range(30)]
    assert all(d > 0 for d in dropped[: dropped.index(0)])
    assert set(dropped[dropped.index(0) :]) == {0}
    assert sum(dropped) == 20
    assert [m["role"] for m in memory.messages] == ["system", "assistant", "tool"]


def test_reduce_by_drops_at_least_one_group_even_of_zero_tokens() -> None:
    memory = ConversationMemory(counter=lambda m: 0, messages=[user("a"), user("b")])
    assert memory.compact(reduce_by=0.01).messages_dropped == 1
    assert memory.compact(reduce_by=1).messages_dropped == 0


def test_compact_checks_its_arguments() -> None:
    memory = ConversationMemory()
    with pytest.raises(InvalidValueError, match="not both"):
        memory.compact(target_tokens=10, reduce_by=0.5)
    for bad in (0, 0.0, 1.5, -0.1, True, math.nan, "0.5"):
        with pytest.raises(InvalidValueError, match=f"reduce_by must be .* got {bad!r}"):
            memory.compact(reduce_by=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="target_tokens must be an int >= 0, got -1"):
        memory.compact(target_tokens=-1)


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "named"),
    [
        ("hello", "a message must be a mapping.*'hello'"),
        ({"content": "x"}, "role must be one of .*got None"),
        ({"role": "robot", "content": "x"}, "role must be one of assistant, .*got 'robot'"),
        ({"role": "user", "content": 5}, "content must be a str, a list .*got 5"),
        (
            {"role": "user", "content": [{"type": "text", "text": object()}]},
            r"message\['content'\]\[0\]\['text'\] must be JSON data",
        ),
        ({"role": "user", "content": "x", 1: "y"}, "message has a key that is not a str: 1"),
        ({"role": "user", "content": "x", "score": math.inf}, r"\['score'\] must be a finite"),
    ],
)
def test_append_refuses_a_bad_message_naming_what_is_wrong(message: object, named: str) -> None:
    memory = ConversationMemory()
    with pytest.raises(InvalidValueError, match=named):
        memory.append(message)  # type: ignore[arg-type]
    assert len(memory) == 0


def test_a_message_nested_too_deep_is_refused() -> None:
    content: list[object] = []
    for _ in range(101):
        content = [content]
    with pytest.raises(InvalidValueError, match="more than 100 levels deep"):
        ConversationMemory().append({"role": "user", "content": content})


def test_extend_adds_all_or_none_and_names_the_bad_index() -> None:
    memory = ConversationMemory(messages=[user("kept")])
    with pytest.raises(InvalidValueError, match=r"messages\[1\]: .*got 'robot'"):
        memory.extend([user("a"), {"role": "robot"}, user("b")])
    assert contents(memory) == ["kept"]
    for bad in ("abc", user("not a list"), 5):
        with pytest.raises(InvalidValueError, match="an iterable of messages"):
            memory.extend(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("answer", [-1, True, 1.5, None, 10**12 + 1])
def test_a_counter_must_answer_an_int_from_zero_to_a_trillion(answer: object) -> None:
    memory = ConversationMemory(counter=lambda m: answer)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match=f"<= 1e\\+12, got {answer}"):
        memory.append(user("x"))
    assert len(memory) == 0


def test_the_constructor_and_strategies_check_their_arguments() -> None:
    with pytest.raises(InvalidValueError, match="strategy must be a KeepAll, LastN or"):
        ConversationMemory("all")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="counter must be callable"):
        ConversationMemory(counter=5)  # type: ignore[arg-type]
    for bad in (0, -3, True, 2.0):
        with pytest.raises(InvalidValueError, match=f"n must be an int >= 1, got {bad!r}"):
            LastN(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidValueError, match=f"max_tokens must be an int >= 1, got {bad}"):
            TokenBudget(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="pinned must be a bool"):
        ConversationMemory().append(user("x"), pinned="yes")  # type: ignore[arg-type]


def test_errors_are_techrevati_errors_and_value_errors() -> None:
    with pytest.raises(TechrevatiError) as caught:
        LastN(0)
    assert isinstance(caught.value, ValueError)


# -- copies, counts cached, reading --------------------------------------------------------


def test_the_memory_keeps_its_own_copy_and_hands_out_copies() -> None:
    parts = [{"type": "text", "text": "original"}]
    given_message = {"role": "user", "content": parts}
    memory = ConversationMemory(messages=[given_message])
    parts[0]["text"] = "changed by the caller"
    given_message["role"] = "assistant"
    out = memory.messages[0]
    out["role"] = "system"
    assert memory.messages == ({"role": "user", "content": [{"type": "text", "text": "original"}]},)


def test_each_message_is_counted_once_however_often_the_memory_compacts() -> None:
    seen: list[Mapping[str, Any]] = []

    def counting(message: Mapping[str, Any]) -> int:
        seen.append(message)
        return 10

    memory = ConversationMemory(TokenBudget(500), counter=counting)
    for i in range(200):
        memory.append(user(str(i)))
        if i % 10 == 0:
            memory.compact(reduce_by=0.1)
    _ = memory.messages, memory.token_estimate, memory.to_dict(), repr(memory)
    assert len(seen) == 200


def test_repr_and_len_say_what_is_kept() -> None:
    memory = ConversationMemory(LastN(5), counter=fixed, messages=[system("s"), user("u")])
    assert len(memory) == 2
    assert repr(memory) == "ConversationMemory(2 messages, 20 tokens, LastN(n=5))"
    assert memory.counter is fixed


# -- checkpoints ---------------------------------------------------------------------------


def test_to_dict_is_json_and_from_dict_restores_the_same_memory() -> None:
    memory = ConversationMemory(TokenBudget(1000))
    memory.append(system("be brief"))
    memory.append(user("the task"), pinned=True)
    memory.extend([call("a"), result("a", "42"), assistant("the answer is 42")])
    data = json.loads(json.dumps(memory.to_dict()))
    assert data["version"] == 1
    assert data["strategy"] == {"kind": "token_budget", "max_tokens": 1000}
    assert data["pinned"] == [0, 1]
    restored = ConversationMemory.from_dict(data)
    assert restored.messages == memory.messages
    assert restored.token_estimate == memory.token_estimate
    assert restored.strategy == memory.strategy
    restored.compact(target_tokens=0)
    assert contents(restored) == ["be brief", "the task", "the answer is 42"]


def test_from_dict_counts_again_with_the_counter_given() -> None:
    data = ConversationMemory(LastN(4), messages=[user("abc")]).to_dict()
    assert ConversationMemory.from_dict(data, counter=fixed).token_estimate == 10


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"version": 2}, "memory version must be 1, got 2"),
        ({"extra": 1}, "a memory must be a mapping of version"),
        ({"messages": "x"}, "memory messages must be a list"),
        ({"pinned": [1, 0]}, "pinned must be ascending indices"),
        ({"pinned": [5]}, "pinned must be ascending indices"),
        ({"pinned": [True]}, "pinned must be ascending indices"),
        ({"strategy": {"kind": "last_n"}}, "memory strategy must be"),
        ({"strategy": {"kind": "last_n", "n": 0}}, "n must be an int >= 1, got 0"),
        ({"messages": [{"role": "robot"}]}, r"messages\[0\]: message role"),
    ],
)
def test_from_dict_refuses_a_damaged_checkpoint(change: dict[str, object], named: str) -> None:
    data = ConversationMemory(messages=[user("a")]).to_dict() | change
    with pytest.raises(InvalidValueError, match=named):
        ConversationMemory.from_dict(data)


def test_from_dict_refuses_a_pinned_tool_result_whose_call_is_not() -> None:
    data = ConversationMemory(messages=[user("q"), call("a"), result("a")]).to_dict()
    data["pinned"] = [2]
    with pytest.raises(InvalidValueError, match=r"messages\[2\]: a tool result cannot be pinned"):
        ConversationMemory.from_dict(data)


# -- threads -------------------------------------------------------------------------------


def test_appends_and_compactions_from_threads_account_for_every_message() -> None:
    writers, per_writer = 4, 400
    memory = ConversationMemory(TokenBudget(2_000), counter=lambda m: len(m["content"]))
    start = threading.Barrier(writers + 2)
    done = threading.Event()
    dropped: list[tuple[int, int]] = []  # (messages, tokens), appended under the GIL

    def write(writer: int) -> None:
        start.wait()
        for i in range(per_writer):
            result = memory.append(user(f"{writer}:{i:04d}" + "x" * (i % 9)))
            dropped.append((result.messages_dropped, result.tokens_dropped))

    def compact() -> None:
        start.wait()
        while not done.is_set():
            result = memory.compact(reduce_by=0.5)
            dropped.append((result.messages_dropped, result.tokens_dropped))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    compactors = [threading.Thread(target=compact) for _ in range(2)]
    for thread in threads + compactors:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    for thread in compactors:
        thread.join()

    sent = writers * per_writer
    sent_tokens = sum(
        len(f"{w}:{i:04d}") + i % 9 for w in range(writers) for i in range(per_writer)
    )
    assert len(memory) + sum(m for m, _ in dropped) == sent
    assert memory.token_estimate + sum(t for _, t in dropped) == sent_tokens
    assert memory.token_estimate <= 2_000
    kept = [str(m["content"]).rstrip("x") for m in memory.messages]
    for writer in range(writers):
        own = [k for k in kept if k.startswith(f"{writer}:")]
        assert own == sorted(own)  # each writer's messages in the order it sent them


# -- the invariants, against a reference model ---------------------------------------------


def _is_result(message: Message) -> bool:
    if message["role"] in ("tool", "function"):
        return True
    content = message.get("content")
    return (
        message["role"] == "user"
        and isinstance(content, list)
        and any(isinstance(p, dict) and p.get("type") == "tool_result" for p in content)
    )


class Reference:
    """The memory done naively: every message ever added, a kept flag, a group id or pinned."""

    def __init__(self, strategy: MemoryStrategy) -> None:
        self.strategy = strategy
        self.entries: list[dict[str, Any]] = []  # message, tokens, pinned, group, kept
        self.anchor: dict[str, Any] | None = None
        self.groups = 0

    def add(self, message: Message, pinned: bool = False) -> None:
        entry = {"message": message, "tokens": estimate_tokens(message), "kept": True}
        if message["role"] in ("system", "developer"):
            entry |= {"pinned": True, "group": None}
        elif _is_result(message) and self.anchor is not None:
            entry |= {"pinned": self.anchor["pinned"], "group": self.anchor["group"]}
        else:
            self.groups += 1
            entry |= {"pinned": pinned, "group": None if pinned else self.groups}
            self.anchor = entry
        self.entries.append(entry)

    def kept(self) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["kept"]]

    def tokens(self) -> int:
        return sum(e["tokens"] for e in self.kept())

    def live_groups(self) -> list[int]:
        return sorted({e["group"] for e in self.kept() if not e["pinned"]})

    def drop_oldest(self) -> None:
        oldest = self.live_groups()[0]
        for e in self.entries:
            if e["group"] == oldest:
                e["kept"] = False

    def over(self) -> bool:
        if isinstance(self.strategy, TokenBudget):
            return self.tokens() > self.strategy.max_tokens
        if isinstance(self.strategy, LastN):
            return sum(not e["pinned"] for e in self.kept()) > self.strategy.n
        return False

    def apply(self) -> None:
        while self.over() and len(self.live_groups()) > 1:
            self.drop_oldest()

    def compact(self, target: int | None, reduce_by: float | None) -> None:
        if target is None:
            target = int(self.tokens() * (1.0 - (reduce_by or DEFAULT_REDUCE_BY)))
            if len(self.live_groups()) > 1:
                self.drop_oldest()
        while self.tokens() > target and len(self.live_groups()) > 1:
            self.drop_oldest()


texts = st.text(alphabet="abc xyz", max_size=120)


@st.composite
def exchanges(draw: st.DrawFn) -> list[tuple[Message, bool]]:
    """One step of a conversation: a message, or a call and its results; with pin flags."""
    n = draw(st.integers(0, 10**9))  # ids unique per draw
    kind = draw(
        st.sampled_from(
            ["user", "assistant", "system", "developer", "tools", "anthropic", "orphan", "pin"]
        )
    )
    text = draw(texts)
    if kind == "user":
        return [(user(text), False)]
    if kind == "assistant":
        return [(assistant(text), False)]
    if kind in ("system", "developer"):
        return [({"role": kind, "content": text}, False)]
    if kind == "orphan":
        return [(result(f"orphan{n}", text), False)]
    if kind == "pin":
        return [(user(text), True)]
    if kind == "anthropic":
        use = {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": f"tu{n}", "name": "f", "input": {"q": text}}],
        }
        answer = {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": f"tu{n}", "content": text}],
        }
        return [(use, False), (answer, False)]
    ids = [f"c{n}-{i}" for i in range(draw(st.integers(1, 3)))]
    pinned = draw(st.booleans()) and draw(st.booleans())
    steps: list[tuple[Message, bool]] = [(call(*ids), pinned)]
    if draw(st.booleans()) and draw(st.booleans()):
        steps.append((system("between"), False))
    steps += [(result(i, draw(texts)), False) for i in ids]
    return steps


memory_strategies = st.one_of(
    st.just(KeepAll()),
    st.builds(LastN, st.integers(1, 12)),
    st.builds(TokenBudget, st.integers(1, 400)),
)


class MemoryMachine(RuleBasedStateMachine):
    """Appends, batches, compactions and checkpoint round trips against :class:`Reference`."""

    def __init__(self) -> None:
        super().__init__()
        self.memory = ConversationMemory()
        self.model = Reference(KeepAll())
        self.serial = 0
        self.exchanges: list[tuple[int, list[int]]] = []  # a call's serial, its results'

    @initialize(strategy=memory_strategies)
    def start(self, strategy: MemoryStrategy) -> None:
        self.memory = ConversationMemory(strategy)
        self.model = Reference(strategy)

    def _tagged(self, step: list[tuple[Message, bool]]) -> list[tuple[Message, bool]]:
        tagged = []
        for message, pinned in step:
            self.serial += 1
            tagged.append((message | {"serial": self.serial}, pinned))
        calls = [m for m, _ in tagged if m.get("tool_calls") or m["role"] == "assistant"]
        results = [m["serial"] for m, _ in tagged if _is_result(m)]
        if calls and results:
            self.exchanges.append((calls[0]["serial"], results))
        return tagged

    @rule(step=exchanges())
    def append(self, step: list[tuple[Message, bool]]) -> None:
        for tagged, pinned in self._tagged(step):
            before = len(self.memory)
            done = self.memory.append(tagged, pinned=pinned)
            self.model.add(tagged, pinned)
            self.model.apply()
            assert done.messages_kept == len(self.memory) == before + 1 - done.messages_dropped
            assert done.tokens_kept == self.memory.token_estimate

    @rule(steps=st.lists(exchanges(), max_size=5))
    def extend(self, steps: list[list[tuple[Message, bool]]]) -> None:
        batch = [m for step in steps for m, _ in self._tagged(step)]
        self.memory.extend(batch)
        for message in batch:
            self.model.add(message)
        self.model.apply()

    @rule(goal=st.integers(0, 500) | st.none(), reduce_by=st.floats(0.01, 1.0) | st.none())
    def compact(self, goal: int | None, reduce_by: float | None) -> None:
        if goal is not None:
            reduce_by = None
        before = (len(self.memory), self.memory.token_estimate)
        done = self.memory.compact(target_tokens=goal, reduce_by=reduce_by)
        self.model.compact(goal, reduce_by)
        assert done.messages_kept == before[0] - done.messages_dropped == len(self.memory)
        assert done.tokens_kept == before[1] - done.tokens_dropped == self.memory.token_estimate
        if done.messages_dropped == 0 and goal is None:  # nothing more can go
            assert len(self.model.live_groups()) <= 1

    @precondition(lambda self: len(self.memory) > 0)
    @rule()
    def checkpoint(self) -> None:
        data = json.loads(json.dumps(self.memory.to_dict()))
        restored = ConversationMemory.from_dict(data)
        assert restored.messages == self.memory.messages
        self.memory = restored

    @invariant()
    def same_as_the_reference(self) -> None:
        assert [m["serial"] for m in self.memory.messages] == [
            e["message"]["serial"] for e in self.model.kept()
        ]
        assert self.memory.token_estimate == self.model.tokens()

    @invariant()
    def system_messages_are_all_kept_in_order(self) -> None:
        added = [e["message"] for e in self.model.entries]
        kept = [m["serial"] for m in self.memory.messages]
        assert kept == sorted(kept)
        wanted = [m["serial"] for m in added if m["role"] in ("system", "developer")]
        assert [s for s in kept if s in set(wanted)] == wanted

    @invariant()
    def a_tool_call_and_its_results_stay_or_go_together(self) -> None:
        kept = {m["serial"] for m in self.memory.messages}
        for call_serial, result_serials in self.exchanges:
            assert {s in kept for s in (call_serial, *result_serials)} != {True, False}

    @invariant()
    def the_strategy_holds_unless_only_the_newest_group_is_left(self) -> None:
        strategy = self.memory.strategy
        groups = len(self.model.live_groups())
        if isinstance(strategy, TokenBudget) and groups > 1:
            assert self.memory.token_estimate <= strategy.max_tokens
        if isinstance(strategy, LastN) and groups > 1:
            assert sum(not e["pinned"] for e in self.model.kept()) <= strategy.n


MemoryMachine.TestCase.settings = settings(max_examples=examples(60), stateful_step_count=30)
TestMemoryMachine = MemoryMachine.TestCase
