"""ConversationMemory.compact on a long history, next to a naive recount of the same work.

Run: ``.venv/bin/python -m bench.bench_memory`` (``--messages N`` for the history's
length, 10,000 by default; ``--repeat R`` for how many timings to take the minimum
of, 30 by default; ``--cpu`` to time by the CPU time of the thread, ``time.thread_time``,
instead of the wall clock: on a shared machine that leaves out the waits for a core)

The history is a system message and then exchanges of a user question
(~200 characters), an assistant answer (~400), and every fourth exchange a
tool call with two results (~600 each). Each timing builds a fresh memory
outside the clock and times one call, with the garbage collector off, then
keeps the minimum (and prints the median) of the repeats. Rows:

1. ``compact(target_tokens=half)``: drop the oldest half of the tokens;
2. freeing as many copies of the messages as row 1 drops, with no memory
   around them: most of row 1 is this, the rest is bookkeeping;
3. ``compact()``: the overflow default, a quarter of them;
4. 1,000 ``append`` calls to a ``TokenBudget`` memory that is full, so each
   one's strategy drops the oldest group (the figure is per append);
5. the naive way to do row 1: recount every message with the same counter,
   then drop whole groups from the front until under the target;
6. the naive way with ``tiktoken`` as the counter (when its encoding loads).

It checks that the memory and the naive way keep the same messages.
"""

from __future__ import annotations

import argparse
import copy
import gc
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

from techrevati.runtime.memory import (
    ConversationMemory,
    TokenBudget,
    TokenCounter,
    estimate_tokens,
    tiktoken_counter,
)

Message = dict[str, Any]
APPENDS = 1_000


def history(length: int) -> list[Message]:
    """A system message, then exchanges (some with a tool call) up to ``length`` messages."""
    messages: list[Message] = [{"role": "system", "content": "You are a careful assistant."}]
    exchange = 0
    while len(messages) < length:
        exchange += 1
        messages.append({"role": "user", "content": f"question {exchange} " + "q" * 190})
        if exchange % 4 == 0:
            ids = [f"call_{exchange}_{i}" for i in range(2)]
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": i,
                            "type": "function",
                            "function": {"name": "search", "arguments": '{"q": "weather"}'},
                        }
                        for i in ids
                    ],
                }
            )
            messages += [{"role": "tool", "tool_call_id": i, "content": "r" * 600} for i in ids]
        messages.append({"role": "assistant", "content": f"answer {exchange} " + "a" * 390})
    return messages[:length]


def time_once(prepare: Callable[[], Callable[[], object]], clock: Callable[[], float]) -> float:
    """Seconds for one call of what ``prepare()`` returns (prepared outside the clock)."""
    run = prepare()
    gc.disable()  # as timeit does
    try:
        start = clock()
        run()
        return clock() - start
    finally:
        gc.enable()


def naive_compact(messages: list[Message], counter: TokenCounter, target: int) -> list[Message]:
    """Recount everything, then drop whole groups from the front (system messages stay)."""
    counts = [counter(m) for m in messages]
    total = sum(counts)
    cut = next(i for i, m in enumerate(messages) if m["role"] != "system")
    while total > target:
        end = cut + 1  # the group: this message and the tool results right after it
        while end < len(messages) and messages[end]["role"] == "tool":
            end += 1
        if end >= len(messages):
            break  # the newest group stays
        total -= sum(counts[cut:end])
        cut = end
    return [m for m in messages[:cut] if m["role"] == "system"] + messages[cut:]


def main() -> None:
    """Print the minimum and median of each row, the ratio to the naive recount, and check."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--cpu", action="store_true", help="time by time.thread_time")
    args = parser.parse_args()
    clock = time.thread_time if args.cpu else time.perf_counter
    messages = history(args.messages)
    full = ConversationMemory(messages=messages)
    tokens = full.token_estimate
    half = tokens // 2

    def fresh() -> ConversationMemory:
        return ConversationMemory(messages=messages)

    def to_half() -> Callable[[], object]:
        memory = fresh()
        return lambda: memory.compact(target_tokens=half)

    def overflow() -> Callable[[], object]:
        memory = fresh()
        return memory.compact

    def steady_append() -> Callable[[], object]:
        memory = ConversationMemory(TokenBudget(tokens), messages=messages)
        extra = [{"role": "user", "content": f"one more {i} " + "q" * 400} for i in range(APPENDS)]

        def run() -> None:
            for message in extra:
                memory.append(message)

        return run

    dropped = len(messages) - len(naive_compact(messages, estimate_tokens, half))

    def free_alone() -> Callable[[], object]:
        copies = [copy.deepcopy(m) for m in messages[1 : dropped + 1]]
        return copies.clear

    def naive(counter: TokenCounter) -> Callable[[], Callable[[], object]]:
        return lambda: lambda: naive_compact(messages, counter, half)

    rows: dict[str, Callable[[], Callable[[], object]]] = {
        "compact(target_tokens=half)": to_half,
        "of which: freeing the dropped messages alone": free_alone,
        "compact() (reduce_by=0.25)": overflow,
        f"append to a full TokenBudget, x{APPENDS} (per append)": steady_append,
        "naive: recount (estimate) + drop to half": naive(estimate_tokens),
    }
    exact = _tiktoken()
    if exact is not None:
        rows["naive: recount (tiktoken o200k) + drop to half"] = naive(exact)
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.repeat):  # interleaved: one timing of each row per round
        for name, prepare in rows.items():
            times[name].append(time_once(prepare, clock))

    print(f"history: {len(messages):,} messages, {tokens:,} tokens (estimate); target {half:,}")
    print(f"clock: {'thread CPU time' if args.cpu else 'wall'}; {args.repeat} rounds")
    print(f"{'row':<50} {'min':>12} {'median':>12}")
    for name, seconds in times.items():
        per = APPENDS if name.startswith("append") else 1
        low, mid = min(seconds) / per, statistics.median(seconds) / per
        print(f"{name:<50} {_us(low):>12} {_us(mid):>12}")
    ours = min(times["compact(target_tokens=half)"])
    for name in [n for n in rows if n.startswith("naive")]:
        print(f"{name}: {min(times[name]) / ours:,.0f}x compact(target_tokens=half)")
    if exact is None:
        print("(tiktoken's encoding did not load: set TIKTOKEN_CACHE_DIR to a cache that has it)")

    memory = fresh()
    done = memory.compact(target_tokens=half)
    assert list(memory.messages) == naive_compact(messages, estimate_tokens, half)
    assert done.tokens_kept <= half < done.tokens_kept + done.tokens_dropped
    print(
        f"dropped {done.messages_dropped:,} messages ({done.tokens_dropped:,} tokens), "
        f"kept {done.messages_kept:,} ({done.tokens_kept:,}); the naive way keeps the same"
    )


def _tiktoken() -> Callable[[Mapping[str, Any]], int] | None:
    try:
        return tiktoken_counter("gpt-4o")
    except Exception:  # no tiktoken, or its encoding file cannot be fetched
        return None


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f} us"


if __name__ == "__main__":
    main()
