"""Checkpoint savers: one protocol suite for both, deltas and snapshots, markers, threads, kill -9.

Every protocol test runs against :class:`InMemorySaver` and :class:`SqliteSaver`
alike. The property tests put sequences of states that a caller mutates in
place (as an agent loop does with its message list) and check that the
latest checkpoint and every one in the history come back exactly (compared as
JSON text, so ``1`` and ``1.0`` or ``0`` and ``False`` count as different).
The kill tests run a real child process that writes checkpoints, stop it at a
named point (it blocks on its stdin there; no sleeps) and SIGKILL it, then
resume the loop from the file.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from techrevati.runtime._checkpoint_delta import MIN_CHAIN_BYTES, ROW_WEIGHT, TIPS_KEPT, Tips
from techrevati.runtime._checkpoint_sqlite import (
    CHECKPOINT_APPLICATION_ID,
    CHECKPOINT_SCHEMA_VERSION,
)
from techrevati.runtime.checkpoints import (
    Checkpoint,
    CheckpointConflictError,
    CheckpointSaver,
    InMemorySaver,
    PendingTurn,
    SaverClosedError,
    SqliteSaver,
    TurnStatus,
)
from techrevati.runtime.errors import InvalidValueError, SchemaError, TechrevatiError
from techrevati.runtime.events import AgentEvent
from techrevati.runtime.sqlite import SqliteSink
from tests.conftest import examples

T0 = datetime(2026, 1, 1, tzinfo=UTC)
KINDS = ["memory", "sqlite"]
CHILD_TIMEOUT = 30.0

Saver = InMemorySaver | SqliteSaver
Make = Callable[..., Saver]


class Wall:
    """A wall clock a second further on at each call."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def exact(value: object) -> str:
    """JSON text: what 'the same state' means here (1 != 1.0 != True, key order counts)."""
    return json.dumps(value, sort_keys=False, allow_nan=False)


def message(i: int, size: int = 40) -> dict[str, object]:
    return {"role": "user" if i % 2 else "assistant", "content": f"m{i} " + "x" * size}


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(kind: str, tmp_path: Path) -> Iterator[Make]:
    """Open a saver of the test's kind (SQLite: a file in tmp_path, synchronous=normal)."""
    opened: list[Saver] = []

    def open_saver(name: str = "checkpoints.db", **options: Any) -> Saver:
        saver: Saver
        if kind == "memory":
            saver = InMemorySaver(**options)
        else:
            options.setdefault("synchronous", "normal")
            saver = SqliteSaver(tmp_path / name, **options)
        opened.append(saver)
        return saver

    yield open_saver
    for saver in opened:
        saver.close()


@pytest.fixture
def saver(make: Make) -> Saver:
    return make(clock=Wall())


# --- the protocol, both savers ------------------------------------------------------------


def test_both_savers_satisfy_the_protocol(saver: Saver) -> None:
    assert isinstance(saver, CheckpointSaver)


def test_a_thread_without_checkpoints_has_none(saver: Saver) -> None:
    assert saver.latest("nobody") is None
    assert saver.history("nobody") == []
    assert saver.pending_turn("nobody") is None
    assert saver.turn_status("nobody", "k") is TurnStatus.UNKNOWN


def test_put_then_latest_returns_every_field(saver: Saver) -> None:
    state = {"messages": [message(1)], "step": 1}
    runtime = {"usage": {"model-a": [5000, 1200]}, "spent_usd": "0.033", "status": "running"}
    write = saver.put("chat", 1, state, runtime, "chat/1")
    assert (write.thread_id, write.step, write.snapshot) == ("chat", 1, True)
    assert write.state_bytes == len(json.dumps(state, separators=(",", ":")).encode())
    assert write.runtime_bytes == len(json.dumps(runtime, separators=(",", ":")).encode())
    checkpoint = saver.latest("chat")
    assert checkpoint == Checkpoint("chat", 1, state, runtime, "chat/1", T0 + timedelta(seconds=1))


def test_threads_are_kept_apart(saver: Saver) -> None:
    saver.put("a", 1, ["a1"], {}, "a/1")
    saver.put("b", 7, ["b7"], {}, "b/7")
    saver.put("a", 2, ["a1", "a2"], {}, "a/2")
    a, b = saver.latest("a"), saver.latest("b")
    assert a is not None
    assert b is not None
    assert (a.step, a.caller_state, b.step, b.caller_state) == (2, ["a1", "a2"], 7, ["b7"])


def test_the_saver_keeps_its_own_copy_both_ways(saver: Saver) -> None:
    messages: list[object] = [message(1)]
    saver.put("t", 1, messages, {}, "t/1")
    messages.append(message(2))  # the caller mutates after the put ...
    messages[0] = "edited"
    first = saver.latest("t")
    assert first is not None
    assert first.caller_state == [message(1)]
    first.caller_state.append("mine")  # ... and the reader mutates what it got
    again = saver.latest("t")
    assert again is not None
    assert again.caller_state == [message(1)]


def test_a_list_that_only_grew_is_stored_as_the_appended_items(saver: Saver) -> None:
    messages = [message(i) for i in range(50)]
    assert saver.put("t", 1, messages, {}, "t/1").snapshot
    messages += [message(50), message(51)]
    write = saver.put("t", 2, messages, {}, "t/2")
    appended = json.dumps([message(50), message(51)], separators=(",", ":")).encode()
    assert (write.snapshot, write.state_bytes) == (False, len(appended))
    checkpoint = saver.latest("t")
    assert checkpoint is not None
    assert exact(checkpoint.caller_state) == exact(messages)


def test_a_dict_stores_appended_list_items_and_other_values_whole(saver: Saver) -> None:
    state: dict[str, Any] = {"messages": [message(i) for i in range(30)], "step": 1, "tools": []}
    saver.put("t", 1, state, {}, "t/1")
    state["messages"].append(message(30))
    state["step"] = 2
    write = saver.put("t", 2, state, {}, "t/2")
    delta = [{"messages": [message(30)]}, {"step": 2}]
    assert not write.snapshot
    assert write.state_bytes == len(json.dumps(delta, separators=(",", ":")).encode())
    state["tools"] = ["search"]  # an empty list that grew, and a list replaced
    state["messages"] = state["messages"][:3]
    assert not saver.put("t", 3, state, {}, "t/3").snapshot
    checkpoint = saver.latest("t")
    assert checkpoint is not None
    assert exact(checkpoint.caller_state) == exact(state)


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (["a", "b"], ["a"]),  # shorter
        (["a", "b"], ["a", "c", "d"]),  # the last item changed
        (["a", "b", "c"], ["z", "b", "c", "d"]),  # an older item changed
        (["a"], {"a": 1}),  # another shape
        ({"a": [1], "b": 2}, {"b": 2, "a": [1, 2]}),  # the keys in another order
        ({"a": [1]}, {"a": [1], "b": 2}),  # a key added
        ("some text", "some text, longer"),  # neither a list nor a dict
    ],
)
def test_a_state_that_did_not_only_grow_is_stored_whole(
    saver: Saver, before: object, after: object
) -> None:
    saver.put("t", 1, before, {}, "t/1")
    assert saver.put("t", 2, after, {}, "t/2").snapshot
    checkpoint = saver.latest("t")
    assert checkpoint is not None
    assert exact(checkpoint.caller_state) == exact(after)


def test_the_delta_of_a_turn_costs_the_same_bytes_at_any_history_length(saver: Saver) -> None:
    for n in (10, 1000, 10_000):
        messages = [message(i) for i in range(n)]
        saver.put(f"t{n}", 1, messages, {}, "k1")
        new = [message(n), message(n + 1)]  # the same size at every n but for the digits
        messages += new
        write = saver.put(f"t{n}", 2, messages, {"n": 1}, "k2")
        assert not write.snapshot
        assert write.state_bytes == len(json.dumps(new, separators=(",", ":")).encode())
        assert write.state_bytes < 160


def test_deltas_chain_until_they_add_up_to_the_snapshot_then_a_snapshot(saver: Saver) -> None:
    messages: list[object] = [message(i, size=400) for i in range(40)]  # a snapshot, ~18 KB
    first = saver.put("t", 1, messages, {}, "t/1")
    chain = 0
    step = 1
    while True:
        step += 1
        messages.append(f"{step}")  # tiny deltas: each counts as ROW_WEIGHT bytes
        write = saver.put("t", step, messages, {}, f"t/{step}")
        if write.snapshot:
            break
        chain += max(write.state_bytes, ROW_WEIGHT)
        assert chain <= max(first.state_bytes, MIN_CHAIN_BYTES)
    assert chain + ROW_WEIGHT > first.state_bytes  # not earlier than the budget says
    assert step - 2 == first.state_bytes // ROW_WEIGHT
    checkpoint = saver.latest("t")
    assert checkpoint is not None
    assert exact(checkpoint.caller_state) == exact(messages)


def test_a_state_that_did_not_change_is_an_empty_delta(saver: Saver) -> None:
    messages = [message(i) for i in range(20)]
    saver.put("t", 1, messages, {}, "t/1")
    write = saver.put("t", 2, messages, {"n": 2}, "t/2")
    assert (write.snapshot, write.state_bytes) == (False, len(b"[]"))
    state = {"messages": messages, "step": 3}
    saver.put("u", 1, state, {}, "u/1")
    write = saver.put("u", 2, state, {}, "u/2")
    assert (write.snapshot, write.state_bytes) == (False, len(b'[{},{"step":3}]'))


def test_tips_drop_a_thread_whose_stored_delta_was_not_planned_on_its_tip() -> None:
    tips = Tips("prefix")
    first = tips.plan("t", 1, ["a"], {}, "k1", snapshot=False)
    tips.advance(first)
    one = tips.plan("t", 2, ["a", "b"], {}, "k2", snapshot=False)
    other = tips.plan("t", 2, ["a", "c"], {}, "k2", snapshot=False)  # planned on the same tip
    tips.advance(one)
    tips.advance(other)  # its base is gone: the tip is dropped, not extended wrongly
    assert tips.plan("t", 3, ["a", "b", "c"], {}, "k3", snapshot=False).base is None


def test_a_thread_forgotten_by_the_saver_gets_a_snapshot_not_a_wrong_delta(make: Make) -> None:
    saver = make()
    saver.put("first", 1, ["a"], {}, "k1")
    for i in range(TIPS_KEPT):  # push "first" out of the remembered tips
        saver.put(f"other{i}", 1, ["x"], {}, "k1")
    write = saver.put("first", 2, ["a", "b"], {}, "k2")
    assert write.snapshot
    checkpoint = saver.latest("first")
    assert checkpoint is not None
    assert checkpoint.caller_state == ["a", "b"]


def test_prefix_check_sees_an_older_item_edited_in_place(make: Make) -> None:
    saver = make(growth_check="prefix")
    messages: list[dict[str, object]] = [message(i) for i in range(5)]
    saver.put("t", 1, messages, {}, "t/1")
    messages[1]["content"] = "[tool result cleared]"  # an edit, in place, of an older item
    messages.append(message(5))
    assert saver.put("t", 2, messages, {}, "t/2").snapshot
    checkpoint = saver.latest("t")
    assert checkpoint is not None
    assert checkpoint.caller_state == messages


def test_tail_check_compares_only_the_last_item_as_documented(make: Make) -> None:
    saver = make(growth_check="tail")
    messages: list[dict[str, object]] = [message(i) for i in range(5)]
    saver.put("t", 1, messages, {}, "t/1")
    messages[4]["content"] = "the last one, changed"  # the last item: seen
    messages.append(message(5))
    assert saver.put("t", 2, messages, {}, "t/2").snapshot
    messages[1]["content"] = "[tool result cleared]"  # an older item: not looked at
    messages.append(message(6))
    assert not saver.put("t", 3, messages, {}, "t/3").snapshot
    checkpoint = saver.latest("t")
    assert checkpoint is not None
    assert checkpoint.caller_state[1] == message(1)  # the edit is not in the checkpoint
    assert checkpoint.caller_state[2:] == messages[2:]


def test_growth_check_must_be_prefix_or_tail(make: Make) -> None:
    with pytest.raises(InvalidValueError, match="growth_check must be 'prefix' or 'tail'"):
        make(growth_check="full")


def test_a_step_not_past_the_last_is_refused_and_nothing_is_written(saver: Saver) -> None:
    saver.put("t", 5, ["a"], {"n": 5}, "t/5")
    for step in (5, 4, 0):
        with pytest.raises(CheckpointConflictError, match="is at step 5") as caught:
            saver.put("t", step, ["a", "b"], {}, f"other/{step}")
        error = caught.value
        assert (error.thread_id, error.step, error.latest_step) == ("t", step, 5)
        assert isinstance(error, TechrevatiError)
        assert isinstance(error, ValueError)
        assert saver.turn_status("t", f"other/{step}") is TurnStatus.UNKNOWN
    checkpoint = saver.latest("t")
    assert checkpoint is not None
    assert (checkpoint.step, checkpoint.caller_state) == (5, ["a"])
    saver.put("t", 6, ["a", "b"], {}, "t/6")  # the thread goes on, as a delta on step 5
    again = saver.latest("t")
    assert again is not None
    assert again.caller_state == ["a", "b"]


def test_a_turn_commits_once(saver: Saver) -> None:
    saver.put("t", 1, ["a"], {}, "turn-1")
    with pytest.raises(CheckpointConflictError, match=r"'turn-1' .* already committed .* step 1"):
        saver.put("t", 2, ["a", "b"], {}, "turn-1")
    assert [c.step for c in saver.history("t")] == [1]


@pytest.mark.parametrize(
    ("state", "named"),
    [
        (
            {"messages": [{"at": datetime(2026, 1, 1)}]},
            r"caller_state\['messages'\]\[0\]\['at'\] is datetime",
        ),
        ({"tags": {"a", "b"}}, r"caller_state\['tags'\] is set"),
        ({"pair": (1, 2)}, r"caller_state\['pair'\] is a tuple \(1, 2\) .*pass a list"),
        ({"by_id": {1: "x"}}, r"caller_state\['by_id'\] is a dict with the int key 1"),
        ([1.0, float("nan")], r"caller_state\[1\] is nan \(JSON has no NaN"),
        ([b"bytes"], r"caller_state\[0\] is bytes b'bytes'"),
    ],
)
def test_a_non_json_caller_state_is_refused_by_name_before_anything_is_written(
    saver: Saver, state: object, named: str
) -> None:
    saver.put("t", 1, {"messages": []}, {}, "t/1")
    with pytest.raises(
        InvalidValueError, match="caller_state of thread 't' is not a JSON value: " + named
    ):
        saver.put("t", 2, state, {}, "t/2")
    assert saver.turn_status("t", "t/2") is TurnStatus.UNKNOWN
    checkpoint = saver.latest("t")
    assert checkpoint is not None
    assert checkpoint.step == 1


def test_a_non_json_item_appended_is_named_where_the_caller_put_it(saver: Saver) -> None:
    state: dict[str, Any] = {"messages": [message(0), message(1)]}
    saver.put("t", 1, state, {}, "t/1")
    state["messages"].append({"role": "tool", "content": {"rows": {3, 4}}})
    with pytest.raises(
        InvalidValueError, match=r"caller_state\['messages'\]\[2\]\['content'\]\['rows'\] is set"
    ):
        saver.put("t", 2, state, {}, "t/2")
    state["messages"][2]["content"] = "3 rows"  # fixed: the put goes through, as a delta
    assert not saver.put("t", 2, state, {}, "t/2").snapshot
    checkpoint = saver.latest("t")
    assert checkpoint is not None
    assert checkpoint.caller_state == state


def test_a_cycle_and_deep_nesting_are_refused(saver: Saver) -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    with pytest.raises(InvalidValueError, match="caller_state of thread 't' cannot be stored"):
        saver.put("t", 1, cycle, {}, "t/1")
    deep: list[object] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(InvalidValueError, match="nests too deep"):
        saver.put("t", 1, deep, {}, "t/1")
    assert saver.latest("t") is None


def test_the_runtime_state_must_be_a_json_object(saver: Saver) -> None:
    with pytest.raises(InvalidValueError, match="runtime_state must be a mapping"):
        saver.put("t", 1, [], ["not", "a", "mapping"], "t/1")  # type: ignore[arg-type]
    with pytest.raises(
        InvalidValueError, match=r"runtime_state of thread 't' is not a JSON value: .*\['spent'\]"
    ):
        saver.put("t", 1, [], {"spent": datetime(2026, 1, 1)}, "t/1")
    assert saver.latest("t") is None


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("", 1, "k"), "thread_id must be a non-empty str"),
        (("t", -1, "k"), "step must be an int >= 0"),
        (("t", True, "k"), "step must be an int >= 0"),
        (("t", 1, " "), "turn_key must be a non-empty str"),
    ],
)
def test_bad_arguments_are_refused_by_name(
    saver: Saver, args: tuple[str, int, str], named: str
) -> None:
    thread_id, step, turn_key = args
    with pytest.raises(InvalidValueError, match=named):
        saver.put(thread_id, step, [], {}, turn_key)


def test_begin_turn_tells_a_first_start_from_a_re_run_and_a_committed_turn(saver: Saver) -> None:
    assert saver.begin_turn("t", "t/1") is TurnStatus.UNKNOWN
    assert saver.turn_status("t", "t/1") is TurnStatus.STARTED
    pending = saver.pending_turn("t")
    assert pending == PendingTurn("t", "t/1", 1, T0 + timedelta(seconds=1))
    assert saver.begin_turn("t", "t/1") is TurnStatus.STARTED  # the re-run after a crash
    pending = saver.pending_turn("t")
    assert pending is not None
    assert (pending.attempts, pending.started_at) == (
        2,
        T0 + timedelta(seconds=1),
    )
    saver.put("t", 1, ["done"], {}, "t/1")
    assert saver.turn_status("t", "t/1") is TurnStatus.COMMITTED
    assert saver.pending_turn("t") is None
    assert saver.begin_turn("t", "t/1") is TurnStatus.COMMITTED  # changes nothing
    assert saver.pending_turn("t") is None


def test_pending_turn_is_the_most_recently_begun_of_those_not_committed(saver: Saver) -> None:
    saver.begin_turn("t", "a")
    saver.begin_turn("t", "b")
    saver.begin_turn("t", "a")  # begun again: still older than b
    pending = saver.pending_turn("t")
    assert pending is not None
    assert pending.turn_key == "b"
    saver.put("t", 1, [], {}, "b")
    pending = saver.pending_turn("t")
    assert pending is not None
    assert (pending.turn_key, pending.attempts) == ("a", 2)
    assert saver.pending_turn("other") is None


def test_a_put_without_begin_turn_still_commits_its_turn(saver: Saver) -> None:
    saver.put("t", 1, [], {}, "t/1")
    assert saver.turn_status("t", "t/1") is TurnStatus.COMMITTED


def test_delete_thread_removes_checkpoints_and_markers(saver: Saver) -> None:
    saver.put("t", 1, ["a"], {}, "t/1")
    saver.begin_turn("t", "t/2")
    saver.put("keep", 1, ["k"], {}, "k/1")
    saver.delete_thread("t")
    assert saver.latest("t") is None
    assert saver.pending_turn("t") is None
    assert saver.turn_status("t", "t/1") is TurnStatus.UNKNOWN
    assert saver.put("t", 1, ["a", "b"], {}, "t/1").snapshot  # starts over, whole
    checkpoint = saver.latest("t")
    assert checkpoint is not None
    assert checkpoint.caller_state == ["a", "b"]
    kept = saver.latest("keep")
    assert kept is not None
    assert kept.caller_state == ["k"]


def test_history_is_newest_first_and_each_checkpoint_is_rebuilt(saver: Saver) -> None:
    messages: list[object] = []
    expected = []
    for step in range(1, 13):
        messages.append(message(step))
        if step == 7:
            messages[0] = "replaced"  # one snapshot in the middle
        saver.put("t", step, messages, {"step": step}, f"t/{step}")
        expected.append(exact(messages))
    history = saver.history("t")
    assert [c.step for c in history] == list(range(12, 2, -1))  # DEFAULT_HISTORY = 10
    assert [exact(c.caller_state) for c in history] == expected[::-1][:10]
    assert [c.runtime_state["step"] for c in saver.history("t", limit=3)] == [12, 11, 10]
    everything = saver.history("t", limit=None)
    assert [exact(c.caller_state) for c in everything] == expected[::-1]
    with pytest.raises(InvalidValueError, match="limit must be None or an int >= 1"):
        saver.history("t", limit=0)


def test_keep_prunes_to_the_newest_back_to_a_snapshot(make: Make) -> None:
    saver = make(keep=3)
    messages: list[object] = []
    for step in range(1, 41):
        messages.append(message(step, size=300))
        if step % 10 == 0:
            messages = messages[-2:]  # a trimmed window: a snapshot every ten steps
        saver.put("t", step, messages, {}, f"t/{step}")
    history = saver.history("t", limit=None)
    steps = [c.step for c in history]
    assert steps[:3] == [40, 39, 38]
    assert 3 <= len(steps) <= 12  # the newest three, and the rows back to their snapshot
    assert steps == list(range(40, 40 - len(steps), -1))
    checkpoint = saver.latest("t")
    assert checkpoint is not None
    assert exact(checkpoint.caller_state) == exact(messages)
    assert saver.turn_status("t", "t/40") is TurnStatus.COMMITTED
    assert saver.turn_status("t", "t/2") is TurnStatus.UNKNOWN  # pruned with its checkpoint


def test_keep_must_be_at_least_one(make: Make) -> None:
    with pytest.raises(InvalidValueError, match="keep must be None or an int >= 1"):
        make(keep=0)


def test_a_closed_saver_refuses_use(make: Make) -> None:
    saver = make()
    saver.put("t", 1, [], {}, "t/1")
    saver.close()
    saver.close()  # idempotent
    for call in (
        lambda: saver.latest("t"),
        lambda: saver.put("t", 2, [], {}, "t/2"),
        lambda: saver.begin_turn("t", "t/2"),
        lambda: saver.turn_status("t", "t/2"),
        lambda: saver.pending_turn("t"),
        lambda: saver.history("t"),
        lambda: saver.delete_thread("t"),
    ):
        with pytest.raises(SaverClosedError, match="is closed"):
            call()


def test_the_async_twins_do_what_the_sync_methods_do(saver: Saver) -> None:
    async def main() -> tuple[object, ...]:
        first = await saver.abegin_turn("t", "t/1")
        pending = await saver.apending_turn("t")
        write = await saver.aput("t", 1, ["a"], {"n": 1}, "t/1")
        status = await saver.aturn_status("t", "t/1")
        await saver.aput("t", 2, ["a", "b"], {"n": 2}, "t/2")
        latest = await saver.alatest("t")
        history = await saver.ahistory("t", limit=5)
        await saver.adelete_thread("t")
        gone = await saver.alatest("t")
        return first, pending, write.snapshot, status, latest, [c.step for c in history], gone

    first, pending, snapshot, status, latest, steps, gone = asyncio.run(main())
    assert first is TurnStatus.UNKNOWN
    assert isinstance(pending, PendingTurn)
    assert pending.turn_key == "t/1"
    assert snapshot is True
    assert status is TurnStatus.COMMITTED
    assert isinstance(latest, Checkpoint)
    assert latest.caller_state == ["a", "b"]
    assert steps == [2, 1]
    assert gone is None


def test_aput_refuses_a_bad_state_before_anything_is_written(saver: Saver) -> None:
    with pytest.raises(InvalidValueError, match="is not a JSON value"):
        asyncio.run(saver.aput("t", 1, {"x": {1, 2}}, {}, "t/1"))
    assert saver.latest("t") is None


# --- properties ---------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
items = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)

# One step of a caller's loop, applied in place to its state:
# ("append", items) / ("edit", index, item) / ("edit_last", item) / ("pop",) / ("set", key, item)
# / ("replace", state) / ("nothing",)
ops_any = st.one_of(
    st.tuples(st.just("append"), st.lists(items, min_size=1, max_size=3)),
    st.tuples(st.just("edit"), st.integers(0, 50), items),
    st.tuples(st.just("edit_last"), items),
    st.tuples(st.just("pop")),
    st.tuples(st.just("set"), st.sampled_from(["step", "notes", "new"]), items),
    st.tuples(st.just("replace"), st.one_of(st.lists(items, max_size=4), items)),
    st.tuples(st.just("nothing")),
)
ops_tail_safe = st.one_of(  # what growth_check="tail" promises to see: no edit of an older item
    st.tuples(st.just("append"), st.lists(items, min_size=1, max_size=3)),
    st.tuples(st.just("edit_last"), items),
    st.tuples(st.just("pop")),
    st.tuples(st.just("set"), st.sampled_from(["step", "notes"]), items),
    # not by another list: one as long, with the same last item, is an edit of older items
    st.tuples(st.just("replace"), items.filter(lambda value: not isinstance(value, list))),
    st.tuples(st.just("nothing")),
)


def apply(state: Any, op: tuple[Any, ...]) -> Any:
    """Apply ``op`` to ``state`` in place where a caller would; return the (maybe new) state."""
    target = state["messages"] if isinstance(state, dict) and "messages" in state else state
    name = op[0]
    if name == "replace":
        return op[1]
    if name == "set":
        if isinstance(state, dict):
            state[op[1]] = op[2]
        return state
    if not isinstance(target, list):
        return state
    if name == "append":
        target.extend(op[1])
    elif name == "edit" and target:
        index = op[1] % len(target)
        if exact(target[index]) != exact(op[2]) and target[index] != op[2]:
            target[index] = op[2]  # an edit that == can see (1 -> 1.0 is no edit to ==)
    elif name == "edit_last" and target:
        if exact(target[-1]) != exact(op[1]) and target[-1] != op[1]:
            target[-1] = op[1]
    elif name == "pop" and target:
        target.pop()
    return state


starts = st.sampled_from(["list", "dict"])


def run_sequence(saver: Saver, thread_id: str, start: str, ops: list[tuple[Any, ...]]) -> list[str]:
    state: Any = [] if start == "list" else {"messages": [], "step": 0}
    expected = []
    for step, op in enumerate(ops, start=1):
        state = apply(state, op)
        saver.put(thread_id, step, state, {"step": step}, f"{thread_id}/{step}")
        expected.append(exact(state))
    return expected


def check_sequence(saver: Saver, thread_id: str, expected: list[str]) -> None:
    latest = saver.latest(thread_id)
    assert latest is not None
    assert exact(latest.caller_state) == expected[-1]
    history = saver.history(thread_id, limit=None)
    assert [c.step for c in history] == list(range(len(expected), 0, -1))
    assert [exact(c.caller_state) for c in history] == expected[::-1]
    assert [c.runtime_state for c in history] == [{"step": s} for s in range(len(expected), 0, -1)]


_counter = iter(range(10**9))


@pytest.mark.parametrize("growth_check", ["prefix", "tail"])
@settings(max_examples=examples(60), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), start=starts)
def test_any_sequence_of_states_comes_back_exactly(
    make: Make, growth_check: str, data: st.DataObject, start: str
) -> None:
    ops = data.draw(
        st.lists(ops_any if growth_check == "prefix" else ops_tail_safe, min_size=1, max_size=14)
    )
    saver = make(f"prop-{next(_counter)}.db", growth_check=growth_check)
    thread_id = "prop"
    expected = run_sequence(saver, thread_id, start, ops)
    check_sequence(saver, thread_id, expected)
    if isinstance(saver, SqliteSaver):  # a fresh process has no tip: the file alone says it
        with SqliteSaver(saver.path) as reopened:
            check_sequence(reopened, thread_id, expected)


# --- threads and writers --------------------------------------------------------------------


def test_threads_putting_to_their_own_thread_ids_lose_nothing(make: Make) -> None:
    saver = make()
    workers, steps = 6, 40

    def work(n: int) -> None:
        messages: list[object] = []
        for step in range(1, steps + 1):
            messages.append(f"w{n}-{step}")
            saver.put(f"w{n}", step, messages, {"n": step}, f"w{n}/{step}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(workers):
        history = saver.history(f"w{n}", limit=None)
        assert [c.step for c in history] == list(range(steps, 0, -1))
        for checkpoint in history:
            assert checkpoint.caller_state == [f"w{n}-{s}" for s in range(1, checkpoint.step + 1)]


def test_threads_racing_for_one_thread_id_take_each_step_exactly_once(
    make: Make, kind: str
) -> None:
    savers = [make(), make()] if kind == "sqlite" else [make()]  # two connections to one file
    workers, turns = 4, 25
    won: list[str] = []
    lock = threading.Lock()

    def work(n: int) -> None:
        saver = savers[n % len(savers)]
        mine = 0
        while mine < turns:
            latest = saver.latest("shared")
            step = 1 if latest is None else latest.step + 1
            state = [] if latest is None else latest.caller_state
            key = f"w{n}/{mine}"
            state.append(key)
            try:
                saver.put("shared", step, state, {"step": step}, key)
            except CheckpointConflictError:
                continue  # another thread took the step: read again
            with lock:
                won.append(key)
            mine += 1

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = savers[0].history("shared", limit=None)
    assert [c.step for c in history] == list(range(workers * turns, 0, -1))
    final = history[0].caller_state
    assert sorted(final) == sorted(won)
    assert len(set(final)) == workers * turns
    for checkpoint in history:  # each step holds exactly the keys committed up to it
        assert checkpoint.caller_state == final[: checkpoint.step]
        assert checkpoint.turn_key == final[checkpoint.step - 1]


def test_a_delta_planned_on_a_state_another_writer_replaced_is_stored_whole(
    tmp_path: Path,
) -> None:
    path = tmp_path / "two.db"
    with SqliteSaver(path) as a, SqliteSaver(path) as b:
        a.put("t", 1, ["a1"], {}, "k1")
        b.put("t", 2, ["b2"], {}, "k2")  # another process, another state
        write = a.put("t", 3, ["a1", "a3"], {}, "k3")  # a's tip says: a delta on step 1
        assert write.snapshot
        for saver in (a, b):
            checkpoint = saver.latest("t")
            assert checkpoint is not None
            assert checkpoint.caller_state == ["a1", "a3"]


def test_the_module_loads_sqlite3_only_when_sqlite_saver_is_used() -> None:
    code = (
        "import sys; from techrevati.runtime.checkpoints import InMemorySaver;"
        "InMemorySaver().put('t', 1, ['a'], {}, 't/1');"
        "print('sqlite3' in sys.modules, 'asyncio' in sys.modules);"
        "from techrevati.runtime.checkpoints import SqliteSaver;"
        "print('sqlite3' in sys.modules, SqliteSaver.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["False", "False", "True", "SqliteSaver"]


# --- the SQLite file --------------------------------------------------------------------


def test_the_file_is_a_versioned_wal_database_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    SqliteSaver(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA user_version").fetchone() == (CHECKPOINT_SCHEMA_VERSION,)
        assert conn.execute("PRAGMA application_id").fetchone() == (CHECKPOINT_APPLICATION_ID,)
    with SqliteSaver(path) as again:  # reopening our own file is fine
        assert again.latest("t") is None


def test_an_event_log_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    with SqliteSink(path, background=False) as sink:
        sink.write_event(AgentEvent(name="turn.completed", session_id="s"))
    with pytest.raises(SchemaError, match="is an event log of SqliteSink, not a checkpoint file"):
        SqliteSaver(path)


@pytest.mark.parametrize(
    ("setup", "named"),
    [
        (["CREATE TABLE mine (x)"], r"has tables \['mine'\] but no techrevati checkpoint schema"),
        (["PRAGMA application_id = 1234"], "belongs to another application"),
        (
            [f"PRAGMA application_id = {CHECKPOINT_APPLICATION_ID}", "PRAGMA user_version = 9"],
            "has checkpoint schema version 9; this library knows 1",
        ),
        (
            [f"PRAGMA application_id = {CHECKPOINT_APPLICATION_ID}", "PRAGMA user_version = 1"],
            r"missing \['checkpoints', 'turns'\]",
        ),
    ],
)
def test_a_database_of_another_schema_is_refused(
    tmp_path: Path, setup: list[str], named: str
) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        for statement in setup:
            conn.execute(statement)
    with pytest.raises(SchemaError, match=named):
        SqliteSaver(path)


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database, just some text that is long enough " * 40)
    with pytest.raises(SchemaError, match="is not a usable SQLite database"):
        SqliteSaver(path)


def test_sqlite_knobs_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="synchronous must be 'full' or 'normal'"):
        SqliteSaver(tmp_path / "a.db", synchronous="off")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="busy_timeout must be"):
        SqliteSaver(tmp_path / "a.db", busy_timeout=-1)


def test_each_put_is_one_transaction(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    statements: list[str] = []
    with SqliteSaver(path) as saver:
        saver._conn.set_trace_callback(statements.append)
        saver.put("t", 1, ["a"], {}, "t/1")
    assert statements[0] == "BEGIN IMMEDIATE"
    assert statements[-1] == "COMMIT"
    assert sum(s in {"BEGIN IMMEDIATE", "COMMIT"} for s in statements) == 2


# --- kill -9 ------------------------------------------------------------------------------

LOOP = r"""
import sqlite3, sys
from techrevati.runtime.checkpoints import SqliteSaver, TurnStatus

path, ledger_path, stop_at, stop_turn, turns = sys.argv[1:6]
stop_turn, turns = int(stop_turn), int(turns)
THREAD = "chat"


def pause(point, turn):
    # Stop here until killed: tell the test, then block on stdin (no sleep).
    if point == stop_at and turn == stop_turn:
        sys.stdout.write(f"paused {point} {turn}\n")
        sys.stdout.flush()
        sys.stdin.readline()
        raise SystemExit("not killed")


saver = SqliteSaver(path)
ledger = sqlite3.connect(ledger_path, isolation_level=None)  # the durable usage log
ledger.execute("CREATE TABLE IF NOT EXISTS charges (turn_key TEXT PRIMARY KEY, cost INTEGER)")


def charge(key, cost):
    # Charge a turn's usage once per key; return what the log holds for it.
    ledger.execute("INSERT OR IGNORE INTO charges VALUES (?, ?)", (key, cost))
    return ledger.execute("SELECT cost FROM charges WHERE turn_key = ?", (key,)).fetchone()[0]


cp = saver.latest(THREAD)
state = cp.caller_state if cp else {"messages": [], "turn": 0}
runtime = dict(cp.runtime_state) if cp else {"spent": 0, "reruns": []}
for turn in range(state["turn"] + 1, turns + 1):
    key = f"{THREAD}/{turn}"
    if saver.begin_turn(THREAD, key) is TurnStatus.STARTED:
        runtime["reruns"].append(key)  # the turn in flight at the crash, run again
    pause("begun", turn)  # the model call would be here
    reply = f"reply {turn}"
    runtime["spent"] += charge(key, 10 * turn)  # adopted, not charged again, on a re-run
    pause("charged", turn)
    state["messages"] += [f"ask {turn}", reply]
    state["turn"] = turn
    if turn == stop_turn and stop_at in ("in_put", "at_commit"):
        first = "INSERT INTO turns" if stop_at == "in_put" else "COMMIT"
        saver._conn.set_trace_callback(
            lambda sql: pause(stop_at, turn) if sql.startswith(first) else None
        )
    saver.put(THREAD, turn, state, runtime, key)
sys.stdout.write("done\n")
"""

STOPS = ["begun", "charged", "in_put", "at_commit"]
TURNS = 6
KILL_TURN = 4


def run_loop(db: Path, ledger: Path, stop_at: str, stop_turn: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", LOOP, str(db), str(ledger), stop_at, str(stop_turn), str(TURNS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_at(db: Path, ledger: Path, stop_at: str) -> None:
    child = run_loop(db, ledger, stop_at, KILL_TURN)
    assert child.stdout is not None
    line = child.stdout.readline()  # blocks until the child stops at the point
    if line != f"paused {stop_at} {KILL_TURN}\n":
        child.kill()
        pytest.fail(f"the child did not stop at {stop_at}: {line!r} {child.communicate()}")
    os.kill(child.pid, signal.SIGKILL)
    child.communicate(timeout=CHILD_TIMEOUT)
    assert child.returncode == -signal.SIGKILL


def charges(ledger: Path) -> dict[str, int]:
    with sqlite3.connect(ledger) as conn:
        return dict(conn.execute("SELECT turn_key, cost FROM charges ORDER BY turn_key"))


@pytest.mark.parametrize("stop_at", STOPS)
def test_kill_9_mid_turn_then_resume_loses_no_turn_and_charges_none_twice(
    tmp_path: Path, stop_at: str
) -> None:
    db, ledger = tmp_path / "checkpoints.db", tmp_path / "usage.db"
    kill_at(db, ledger, stop_at)

    # The file opens whole, with the last committed checkpoint and the turn in flight marked.
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with SqliteSaver(db) as saver:
        latest = saver.latest("chat")
        assert latest is not None
        assert latest.step == KILL_TURN - 1
        assert latest.caller_state == {
            "messages": [m for t in range(1, KILL_TURN) for m in (f"ask {t}", f"reply {t}")],
            "turn": KILL_TURN - 1,
        }
        assert latest.runtime_state == {
            "spent": sum(10 * t for t in range(1, KILL_TURN)),
            "reruns": [],
        }
        assert saver.pending_turn("chat") == PendingTurn(
            "chat",
            f"chat/{KILL_TURN}",
            1,
            saver.pending_turn("chat").started_at,  # type: ignore[union-attr]
        )
        assert saver.turn_status("chat", f"chat/{KILL_TURN}") is TurnStatus.STARTED
        assert saver.turn_status("chat", f"chat/{KILL_TURN - 1}") is TurnStatus.COMMITTED
    charged_before = f"chat/{KILL_TURN}" in charges(ledger)
    assert charged_before == (stop_at != "begun")

    # Resume: the turn in flight runs once more, the committed ones never.
    child = run_loop(db, ledger, "none", 0)
    out, err = child.communicate(timeout=CHILD_TIMEOUT)
    assert (child.returncode, out) == (0, "done\n"), err
    with SqliteSaver(db) as saver:
        final = saver.latest("chat")
        assert final is not None
        assert final.step == TURNS
        assert final.caller_state["messages"] == [
            m for t in range(1, TURNS + 1) for m in (f"ask {t}", f"reply {t}")
        ]
        assert final.runtime_state["reruns"] == [f"chat/{KILL_TURN}"]
        assert saver.pending_turn("chat") is None
        steps = [c.step for c in saver.history("chat", limit=None)]
        assert steps == list(range(TURNS, 0, -1))
    assert charges(ledger) == {f"chat/{t}": 10 * t for t in range(1, TURNS + 1)}
    assert final.runtime_state["spent"] == sum(10 * t for t in range(1, TURNS + 1))
