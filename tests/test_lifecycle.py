from __future__ import annotations

import itertools
import json
import logging
import pickle
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.lifecycle import (
    DEFAULT_MAX_EVENTS,
    TERMINAL_STATUSES,
    TRANSITIONS,
    AgentRegistry,
    AgentStatus,
    AgentWorker,
    InvalidTransitionError,
    StatusEvent,
    UnknownWorkerError,
)
from tests.conftest import examples

S = AgentStatus
T0 = datetime(2025, 1, 1, tzinfo=UTC)

# The reference model, written out independently of the module's table.
REFERENCE: dict[AgentStatus, set[AgentStatus]] = {
    S.IDLE: {S.INITIALIZING, S.CANCELLED},
    S.INITIALIZING: {S.RUNNING, S.FAILED, S.CANCELLED},
    S.RUNNING: {S.WAITING_FOR_INPUT, S.COMPLETED, S.FAILED, S.CANCELLED},
    S.WAITING_FOR_INPUT: {S.RUNNING, S.FAILED, S.CANCELLED},
    S.COMPLETED: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
}


class FakeWallClock:
    """A wall clock that moves one second per reading, or as told."""

    def __init__(self, start: datetime = T0, step: timedelta = timedelta(seconds=1)) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> datetime:
        current = self.now
        self.now += self.step
        return current

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def run_to(worker: AgentWorker, *path: AgentStatus) -> None:
    for status in path:
        worker.transition(status)


# -- AgentStatus and the table ----------------------------------------------------


def test_status_values_are_lowercase_strings() -> None:
    assert [s.value for s in AgentStatus] == [
        "idle",
        "initializing",
        "running",
        "waiting_for_input",
        "completed",
        "failed",
        "cancelled",
    ]
    assert str(AgentStatus.RUNNING) == "running"
    assert isinstance(AgentStatus.RUNNING, str)
    assert f"{AgentStatus.WAITING_FOR_INPUT}" == "waiting_for_input"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("running", S.RUNNING),
        ("RUNNING", S.RUNNING),
        (" Waiting_For_Input\n", S.WAITING_FOR_INPUT),
        ("cancelled", S.CANCELLED),
        (S.FAILED, S.FAILED),
    ],
)
def test_parse_accepts_members_values_and_names_in_any_case(
    text: AgentStatus | str, expected: AgentStatus
) -> None:
    assert AgentStatus.parse(text) is expected


@pytest.mark.parametrize("bad", ["runing", "", "done", 3, None, b"running"])
def test_parse_rejects_unknown_status_naming_it(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="unknown agent status") as caught:
        AgentStatus.parse(bad)  # type: ignore[arg-type]
    assert repr(bad) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_transition_table_matches_the_documented_reference() -> None:
    assert set(TRANSITIONS) == set(AgentStatus)
    assert {status: set(targets) for status, targets in TRANSITIONS.items()} == REFERENCE
    assert all(isinstance(targets, frozenset) for targets in TRANSITIONS.values())


def test_transition_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        TRANSITIONS[S.COMPLETED] = frozenset({S.RUNNING})  # type: ignore[index]


def test_no_status_moves_to_itself_and_terminal_ones_accept_nothing() -> None:
    assert all(status not in targets for status, targets in TRANSITIONS.items())
    assert {S.COMPLETED, S.FAILED, S.CANCELLED} == TERMINAL_STATUSES
    assert {s for s in AgentStatus if s.is_terminal} == TERMINAL_STATUSES
    assert S.RUNNING.can_transition_to(S.COMPLETED)
    assert not S.IDLE.can_transition_to(S.RUNNING)


# The shortest path from IDLE to each status, to put a worker there.
PATH_TO: dict[AgentStatus, tuple[AgentStatus, ...]] = {
    S.IDLE: (),
    S.INITIALIZING: (S.INITIALIZING,),
    S.RUNNING: (S.INITIALIZING, S.RUNNING),
    S.WAITING_FOR_INPUT: (S.INITIALIZING, S.RUNNING, S.WAITING_FOR_INPUT),
    S.COMPLETED: (S.INITIALIZING, S.RUNNING, S.COMPLETED),
    S.FAILED: (S.INITIALIZING, S.FAILED),
    S.CANCELLED: (S.CANCELLED,),
}

EVERY_MOVE = [
    pytest.param(
        source,
        target,
        target in REFERENCE[source],
        id=f"{source}->{target}:{'allowed' if target in REFERENCE[source] else 'refused'}",
    )
    for source in AgentStatus
    for target in AgentStatus
]


@pytest.mark.parametrize(("source", "target", "allowed"), EVERY_MOVE)
def test_every_move_of_the_table_is_allowed_or_refused_as_documented(
    source: AgentStatus, target: AgentStatus, allowed: bool
) -> None:
    registry = AgentRegistry(clock=FakeWallClock())
    worker = registry.create(role="writer", phase="draft", worker_id="w")
    run_to(worker, *PATH_TO[source])
    assert worker.status is source
    assert (target in TRANSITIONS[source]) is allowed
    assert source.can_transition_to(target) is allowed
    assert worker.can_transition_to(target) is allowed
    assert worker.can_transition_to(target.value.upper()) is allowed
    assert source.is_terminal is (not REFERENCE[source])
    events = worker.events
    if allowed:
        event = worker.transition(target, detail="move")
        assert (event.previous_status, event.status, event.detail) == (source, target, "move")
        assert worker.status is target
        assert worker.events == (*events, event)
        assert registry.by_status(target) == [worker]
        assert registry.by_status(source) == []
        return
    listed = sorted(status.value for status in REFERENCE[source])
    after = f"allowed next: {', '.join(listed)}" if listed else "it is terminal"
    with pytest.raises(InvalidTransitionError) as caught:
        worker.transition(target, detail="move")
    assert str(caught.value) == (
        f"worker 'w' cannot go from {source.value} to {target.value} ({after})"
    )
    assert (caught.value.from_status, caught.value.to_status) == (source, target)
    assert worker.status is source
    assert worker.events == events
    assert registry.by_status(source) == [worker]


def test_worker_can_transition_to_rejects_an_unknown_status() -> None:
    worker = AgentWorker(role="writer", phase="draft")
    with pytest.raises(InvalidValueError, match="unknown agent status 'bogus'"):
        worker.can_transition_to("bogus")
    assert worker.status is S.IDLE


def test_every_status_is_reachable_from_idle_and_every_path_can_end() -> None:
    seen = {S.IDLE}
    frontier = [S.IDLE]
    while frontier:
        for target in TRANSITIONS[frontier.pop()]:
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(AgentStatus)
    for status in AgentStatus:
        assert status.is_terminal or TRANSITIONS[status] & TERMINAL_STATUSES


# -- AgentWorker ------------------------------------------------------------------


def test_seed_example_prints_one_line_per_transition(capsys: pytest.CaptureFixture[str]) -> None:
    registry = AgentRegistry()
    worker = registry.create(role="writer", phase="draft", project_id=42)

    worker.transition(AgentStatus.INITIALIZING)
    worker.transition(AgentStatus.RUNNING, detail="context_budget=8k")
    worker.transition(AgentStatus.COMPLETED, detail="observed=STRICT")

    for event in worker.events:
        print(f"{event.timestamp}: {event.status} - {event.detail}")

    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == [
        "initializing - None",
        "running - context_budget=8k",
        "completed - observed=STRICT",
    ]
    assert worker.is_terminal


def test_new_worker_is_idle_with_no_events_and_its_creation_time() -> None:
    worker = AgentWorker(role="writer", phase="draft", project_id="p-1", clock=FakeWallClock())
    assert worker.status is S.IDLE
    assert worker.events == ()
    assert worker.created_at == T0
    assert worker.changed_at == T0
    assert (worker.role, worker.phase, worker.project_id) == ("writer", "draft", "p-1")
    assert not worker.is_terminal
    assert worker.dropped_events == 0


def test_generated_ids_are_unique_hex() -> None:
    ids = {AgentWorker(role="r", phase="p").id for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)


def test_legal_transition_records_one_event_with_clock_time() -> None:
    clock = FakeWallClock()
    worker = AgentWorker(role="writer", phase="draft", worker_id="w1", clock=clock)
    event = worker.transition(S.INITIALIZING, detail="loading")
    assert event == StatusEvent(T0 + timedelta(seconds=1), S.INITIALIZING, S.IDLE, "loading")
    assert worker.events == (event,)
    assert worker.status is S.INITIALIZING
    assert worker.changed_at == event.timestamp


def test_transition_accepts_names_and_values() -> None:
    worker = AgentWorker(role="writer", phase="draft")
    worker.transition("INITIALIZING")
    worker.transition(" running ")
    assert worker.status is S.RUNNING
    assert [e.status for e in worker.events] == [S.INITIALIZING, S.RUNNING]


def test_orchestrator_paths_are_legal() -> None:
    worker = AgentWorker(role="writer", phase="draft")
    run_to(worker, S.INITIALIZING, S.RUNNING, S.WAITING_FOR_INPUT, S.RUNNING)
    run_to(worker, S.WAITING_FOR_INPUT, S.RUNNING, S.COMPLETED)
    assert [e.previous_status for e in worker.events] == [
        S.IDLE,
        S.INITIALIZING,
        S.RUNNING,
        S.WAITING_FOR_INPUT,
        S.RUNNING,
        S.WAITING_FOR_INPUT,
        S.RUNNING,
    ]
    failing = AgentWorker(role="writer", phase="draft")
    run_to(failing, S.INITIALIZING, S.FAILED)
    assert failing.status is S.FAILED
    cancelled = AgentWorker(role="writer", phase="draft")
    run_to(cancelled, S.CANCELLED)
    assert cancelled.is_terminal


def test_illegal_transition_raises_with_fields_and_changes_nothing() -> None:
    worker = AgentWorker(role="writer", phase="draft", worker_id="w-7", clock=FakeWallClock())
    run_to(worker, S.INITIALIZING, S.RUNNING, S.COMPLETED)
    before = (worker.status, worker.events, worker.changed_at)
    with pytest.raises(InvalidTransitionError) as caught:
        worker.transition(S.RUNNING, detail="again")
    error = caught.value
    assert (error.worker_id, error.from_status, error.to_status) == ("w-7", S.COMPLETED, S.RUNNING)
    assert "'w-7'" in str(error)
    assert "from completed to running" in str(error)
    assert "terminal" in str(error)
    assert isinstance(error, ValueError)
    assert isinstance(error, TechrevatiError)
    assert (worker.status, worker.events, worker.changed_at) == before


def test_lifecycle_errors_pickle_with_their_fields() -> None:
    error = InvalidTransitionError("w-1", S.IDLE, S.RUNNING)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.worker_id, copy.from_status, copy.to_status) == ("w-1", S.IDLE, S.RUNNING)
    assert str(copy) == str(error)
    missing = pickle.loads(pickle.dumps(UnknownWorkerError("gone")))
    assert missing.worker_id == "gone"
    assert str(missing) == "no worker with id 'gone' in this registry"


def test_illegal_transition_message_lists_allowed_targets() -> None:
    worker = AgentWorker(role="writer", phase="draft", worker_id="w")
    with pytest.raises(InvalidTransitionError, match=r"allowed next: cancelled, initializing"):
        worker.transition(S.RUNNING)


def test_self_transition_is_illegal() -> None:
    worker = AgentWorker(role="writer", phase="draft")
    run_to(worker, S.INITIALIZING, S.RUNNING)
    with pytest.raises(InvalidTransitionError):
        worker.transition(S.RUNNING)
    assert len(worker.events) == 2


def test_bad_status_or_detail_raise_before_any_change() -> None:
    worker = AgentWorker(role="writer", phase="draft")
    with pytest.raises(InvalidValueError, match="'bogus'"):
        worker.transition("bogus")
    with pytest.raises(InvalidValueError, match="detail"):
        worker.transition(S.INITIALIZING, detail=42)  # type: ignore[arg-type]
    assert worker.status is S.IDLE
    assert worker.events == ()


def test_clock_error_passes_through_and_changes_nothing() -> None:
    error = RuntimeError("clock broke")
    calls = iter([T0])

    def clock() -> datetime:
        for value in calls:
            return value
        raise error

    worker = AgentWorker(role="writer", phase="draft", clock=clock)
    with pytest.raises(RuntimeError) as caught:
        worker.transition(S.INITIALIZING)
    assert caught.value is error
    assert worker.status is S.IDLE
    assert worker.events == ()


def test_naive_clock_is_rejected() -> None:
    with pytest.raises(InvalidValueError, match="timezone-aware"):
        AgentWorker(role="writer", phase="draft", clock=datetime.now)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"role": ""}, "role"),
        ({"role": "  "}, "role"),
        ({"role": 3}, "role"),
        ({"phase": None}, "phase"),
        ({"project_id": True}, "project_id"),
        ({"project_id": 1.5}, "project_id"),
        ({"worker_id": ""}, "worker_id"),
        ({"max_events": 0}, "max_events"),
        ({"clock": "now"}, "clock"),
    ],
)
def test_worker_validates_its_arguments(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"role": "writer", "phase": "draft", **kwargs}
    with pytest.raises(InvalidValueError, match=field):
        AgentWorker(**args)  # type: ignore[arg-type]


def test_event_log_is_bounded_and_counts_dropped_events() -> None:
    worker = AgentWorker(role="writer", phase="draft", max_events=3)
    run_to(worker, S.INITIALIZING, S.RUNNING)
    for _ in range(3):
        run_to(worker, S.WAITING_FOR_INPUT, S.RUNNING)
    assert [e.status for e in worker.events] == [S.RUNNING, S.WAITING_FOR_INPUT, S.RUNNING]
    assert worker.dropped_events == 5
    assert worker.to_dict()["dropped_events"] == 5
    assert DEFAULT_MAX_EVENTS == 1000


def test_events_is_an_immutable_snapshot() -> None:
    worker = AgentWorker(role="writer", phase="draft")
    snapshot = worker.events
    worker.transition(S.INITIALIZING)
    assert snapshot == ()
    assert isinstance(worker.events, tuple)
    with pytest.raises(AttributeError):
        worker.events[0].detail = "changed"  # type: ignore[misc]


def test_worker_to_dict_is_json_with_iso_timestamps() -> None:
    worker = AgentWorker(
        role="writer", phase="draft", project_id=42, worker_id="w1", clock=FakeWallClock()
    )
    run_to(worker, S.INITIALIZING)
    worker.transition(S.RUNNING, detail="context_budget=8k")
    data = worker.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {
        "id": "w1",
        "role": "writer",
        "phase": "draft",
        "project_id": 42,
        "status": "running",
        "created_at": "2025-01-01T00:00:00+00:00",
        "events": [
            {
                "timestamp": "2025-01-01T00:00:01+00:00",
                "status": "initializing",
                "previous_status": "idle",
                "detail": None,
            },
            {
                "timestamp": "2025-01-01T00:00:02+00:00",
                "status": "running",
                "previous_status": "initializing",
                "detail": "context_budget=8k",
            },
        ],
        "dropped_events": 0,
    }
    assert "status=running" in repr(worker)


def test_status_event_validates_its_fields() -> None:
    with pytest.raises(InvalidValueError, match="timestamp"):
        StatusEvent(datetime(2025, 1, 1), S.RUNNING, S.IDLE)
    with pytest.raises(InvalidValueError, match="timestamp"):
        StatusEvent("2025-01-01", S.RUNNING, S.IDLE)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="status"):
        StatusEvent(T0, "running", S.IDLE)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="previous_status"):
        StatusEvent(T0, S.RUNNING, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="detail"):
        StatusEvent(T0, S.RUNNING, S.IDLE, detail=b"x")  # type: ignore[arg-type]


# -- listeners --------------------------------------------------------------------


def test_listeners_see_every_transition_in_order() -> None:
    seen: list[tuple[str, AgentStatus, AgentStatus]] = []

    def listener(worker: AgentWorker, event: StatusEvent) -> None:
        seen.append((worker.id, event.previous_status, event.status))

    worker = AgentWorker(role="writer", phase="draft", worker_id="w")
    worker.add_listener(listener)
    run_to(worker, S.INITIALIZING, S.RUNNING)
    worker.remove_listener(listener)
    worker.transition(S.COMPLETED)
    assert seen == [("w", S.IDLE, S.INITIALIZING), ("w", S.INITIALIZING, S.RUNNING)]


def test_raising_listener_is_logged_and_never_breaks_the_transition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    later: list[AgentStatus] = []

    def broken(worker: AgentWorker, event: StatusEvent) -> None:
        raise RuntimeError("listener bug")

    worker = AgentWorker(role="writer", phase="draft", worker_id="w")
    worker.add_listener(broken)
    worker.add_listener(lambda w, e: later.append(e.status))
    with caplog.at_level(logging.ERROR, logger="techrevati.runtime.lifecycle"):
        event = worker.transition(S.INITIALIZING)
    assert event.status is S.INITIALIZING
    assert worker.status is S.INITIALIZING
    assert later == [S.INITIALIZING]
    assert "listener" in caplog.text
    assert "listener bug" in caplog.text


def test_listener_errors_are_rejected_up_front() -> None:
    worker = AgentWorker(role="writer", phase="draft")
    with pytest.raises(InvalidValueError, match=r"^listener must be callable, got 'not callable'$"):
        worker.add_listener("not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="not registered"):
        worker.remove_listener(lambda w, e: None)


# -- AgentRegistry ----------------------------------------------------------------


def test_create_is_keyword_only_and_registers_the_worker() -> None:
    registry = AgentRegistry()
    with pytest.raises(TypeError):
        registry.create("writer", "draft")  # type: ignore[call-arg]
    worker = registry.create(role="writer", phase="draft", project_id=42)
    assert registry.get(worker.id) is worker
    assert registry.find(worker.id) is worker
    assert worker in registry
    assert worker.id in registry
    assert len(registry) == 1
    assert list(registry) == [worker]


def test_get_raises_unknown_worker_error_and_find_returns_none() -> None:
    registry = AgentRegistry()
    with pytest.raises(UnknownWorkerError) as caught:
        registry.get("missing")
    assert caught.value.worker_id == "missing"
    assert str(caught.value) == "no worker with id 'missing' in this registry"
    assert isinstance(caught.value, KeyError)
    assert isinstance(caught.value, TechrevatiError)
    assert registry.find("missing") is None
    assert "missing" not in registry
    assert 3 not in registry


def test_indexes_follow_every_transition() -> None:
    registry = AgentRegistry()
    a = registry.create(role="writer", phase="draft", project_id=1)
    b = registry.create(role="reviewer", phase="draft", project_id=1)
    c = registry.create(role="writer", phase="edit", project_id="x")
    assert registry.by_project(1) == [a, b]
    assert registry.by_project("x") == [c]
    assert registry.by_project(None) == []
    assert registry.by_role("writer") == [a, c]
    assert registry.by_status(S.IDLE) == [a, b, c]
    run_to(a, S.INITIALIZING, S.RUNNING)
    run_to(b, S.CANCELLED)
    assert registry.by_status(S.IDLE) == [c]
    assert registry.by_status("running") == [a]
    assert registry.by_status("CANCELLED") == [b]
    counts = registry.status_counts()
    assert counts[S.IDLE] == counts[S.RUNNING] == counts[S.CANCELLED] == 1
    assert sum(counts.values()) == 3


def test_remove_detaches_the_worker() -> None:
    registry = AgentRegistry()
    worker = registry.create(role="writer", phase="draft", project_id=5)
    assert registry.remove(worker.id) is worker
    assert worker not in registry
    assert registry.by_project(5) == []
    assert registry.by_role("writer") == []
    worker.transition(S.INITIALIZING)  # still works, registry unaffected
    assert registry.by_status(S.INITIALIZING) == []
    assert len(registry) == 0
    with pytest.raises(UnknownWorkerError):
        registry.remove(worker.id)


def test_register_tracks_a_worker_in_its_current_status() -> None:
    registry = AgentRegistry()
    worker = AgentWorker(role="writer", phase="draft", worker_id="outside")
    run_to(worker, S.INITIALIZING, S.RUNNING)
    assert registry.register(worker) is worker
    assert registry.by_status(S.RUNNING) == [worker]
    worker.transition(S.COMPLETED)
    assert registry.by_status(S.COMPLETED) == [worker]


def test_register_refuses_duplicates_and_a_second_registry() -> None:
    registry = AgentRegistry()
    worker = registry.create(role="writer", phase="draft", worker_id="dup")
    with pytest.raises(InvalidValueError, match="already belongs"):
        AgentRegistry().register(worker)
    with pytest.raises(InvalidValueError, match="'dup' is already registered"):
        registry.create(role="writer", phase="draft", worker_id="dup")
    with pytest.raises(InvalidValueError, match="AgentWorker"):
        registry.register("dup")  # type: ignore[arg-type]
    assert len(registry) == 1
    registry.remove("dup")
    other = AgentRegistry()
    other.register(worker)
    assert worker in other


def test_prune_terminal_removes_only_finished_workers() -> None:
    registry = AgentRegistry()
    done = registry.create(role="writer", phase="draft", project_id=1)
    failed = registry.create(role="writer", phase="draft", project_id=1)
    live = registry.create(role="writer", phase="draft", project_id=1)
    run_to(done, S.INITIALIZING, S.RUNNING, S.COMPLETED)
    run_to(failed, S.INITIALIZING, S.FAILED)
    run_to(live, S.INITIALIZING)
    assert registry.prune_terminal() == 2
    assert list(registry) == [live]
    assert registry.by_project(1) == [live]
    assert registry.prune_terminal() == 0


def test_prune_terminal_older_than_uses_the_registry_clock() -> None:
    clock = FakeWallClock(step=timedelta(0))
    registry = AgentRegistry(clock=clock)
    old = registry.create(role="writer", phase="draft")
    run_to(old, S.CANCELLED)
    clock.advance(60)
    recent = registry.create(role="writer", phase="draft")
    run_to(recent, S.CANCELLED)
    clock.advance(10)
    assert registry.prune_terminal(older_than=timedelta(seconds=30)) == 1
    assert list(registry) == [recent]
    assert registry.prune_terminal(older_than=10.0) == 1
    assert len(registry) == 0


@pytest.mark.parametrize("zero", [0, 0.0, timedelta(0)])
def test_prune_terminal_older_than_zero_removes_workers_finished_just_now(
    zero: timedelta | float,
) -> None:
    registry = AgentRegistry(clock=FakeWallClock(step=timedelta(0)))
    done = registry.create(role="writer", phase="draft")
    live = registry.create(role="writer", phase="draft")
    run_to(done, S.CANCELLED)
    assert registry.prune_terminal(older_than=zero) == 1
    assert list(registry) == [live]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (-1, "older_than must be >= 0, got -1"),
        (timedelta(-1), "older_than must be >= 0, got datetime.timedelta(days=-1)"),
        ("10", "older_than must be a timedelta or finite seconds, got '10'"),
    ],
)
def test_prune_terminal_names_the_bad_age(bad: object, message: str) -> None:
    with pytest.raises(InvalidValueError) as caught:
        AgentRegistry().prune_terminal(older_than=bad)  # type: ignore[arg-type]
    assert str(caught.value) == message


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "10", True, timedelta(-1)])
def test_prune_terminal_rejects_bad_ages(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="older_than"):
        AgentRegistry().prune_terminal(older_than=bad)  # type: ignore[arg-type]


def test_index_buckets_do_not_outlive_their_workers() -> None:
    registry = AgentRegistry()
    for project in range(50):
        worker = registry.create(role=f"role-{project}", phase="p", project_id=project)
        run_to(worker, S.CANCELLED)
    assert registry.prune_terminal() == 50
    assert registry._by_project == {}
    assert registry._by_role == {}
    assert registry._indexed == {}


def test_registry_validates_its_arguments() -> None:
    with pytest.raises(InvalidValueError, match="clock"):
        AgentRegistry(clock=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="max_events"):
        AgentRegistry(max_events=0)
    assert AgentRegistry(max_events=2).create(role="r", phase="p") is not None


# -- threads ----------------------------------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Make the interpreter switch threads often, so races show up in tests."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(before)


def assert_indexes_consistent(registry: AgentRegistry) -> None:
    workers = list(registry)
    assert len(workers) == len(registry)
    for status in AgentStatus:
        assert {w.id for w in registry.by_status(status)} == {
            w.id for w in workers if w.status is status
        }
    for role in {w.role for w in workers}:
        assert {w.id for w in registry.by_role(role)} == {w.id for w in workers if w.role == role}
    for project in {w.project_id for w in workers}:
        assert {w.id for w in registry.by_project(project)} == {
            w.id for w in workers if w.project_id == project
        }
    assert sum(registry.status_counts().values()) == len(registry)


@pytest.mark.usefixtures("fast_switching")
def test_threads_creating_transitioning_and_removing_keep_exact_counts() -> None:
    registry = AgentRegistry()
    threads_n, per_thread = 8, 150
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                worker = registry.create(role=f"r{index % 3}", phase="p", project_id=i % 5)
                run_to(worker, S.INITIALIZING, S.RUNNING, S.WAITING_FOR_INPUT, S.RUNNING)
                if i % 3 == 0:
                    worker.transition(S.COMPLETED)
                elif i % 3 == 1:
                    worker.transition(S.FAILED)
                if i % 5 == 0:
                    registry.remove(worker.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    kept_per_thread = per_thread - len(range(0, per_thread, 5))
    assert len(registry) == threads_n * kept_per_thread
    counts = registry.status_counts()
    expected = {S.COMPLETED: 0, S.FAILED: 0, S.RUNNING: 0}
    for i in range(per_thread):
        if i % 5:
            expected[(S.COMPLETED, S.FAILED, S.RUNNING)[i % 3]] += threads_n
    assert {s: counts[s] for s in expected} == expected
    assert_indexes_consistent(registry)
    assert registry.prune_terminal() == expected[S.COMPLETED] + expected[S.FAILED]
    assert len(registry) == expected[S.RUNNING]
    assert_indexes_consistent(registry)


@pytest.mark.usefixtures("fast_switching")
def test_concurrent_transitions_of_one_worker_never_lose_an_event() -> None:
    registry = AgentRegistry(max_events=10_000)
    worker = registry.create(role="writer", phase="draft")
    run_to(worker, S.INITIALIZING, S.RUNNING)
    threads_n, attempts = 6, 400
    barrier = threading.Barrier(threads_n)
    successes = [0] * threads_n

    def toggle(index: int) -> None:
        barrier.wait()
        for i in range(attempts):
            target = S.WAITING_FOR_INPUT if (i + index) % 2 else S.RUNNING
            try:
                worker.transition(target)
            except InvalidTransitionError:
                continue
            successes[index] += 1

    threads = [threading.Thread(target=toggle, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    events = worker.events
    assert len(events) == 2 + sum(successes)
    assert worker.dropped_events == 0
    for before, after in itertools.pairwise(events):
        assert after.previous_status is before.status
        assert after.status in REFERENCE[before.status]
    assert registry.by_status(worker.status) == [worker]
    assert sum(registry.status_counts().values()) == 1


@pytest.mark.usefixtures("fast_switching")
def test_removal_racing_transitions_keeps_indexes_consistent() -> None:
    registry = AgentRegistry()
    workers = [registry.create(role="writer", phase="p", project_id=i % 4) for i in range(300)]
    barrier = threading.Barrier(3)

    def advance(part: list[AgentWorker]) -> None:
        barrier.wait()
        for worker in part:
            run_to(worker, S.INITIALIZING, S.RUNNING, S.COMPLETED)

    def remove() -> None:
        barrier.wait()
        for worker in workers[::2]:
            registry.remove(worker.id)

    threads = [
        threading.Thread(target=advance, args=(workers[:150],)),
        threading.Thread(target=advance, args=(workers[150:],)),
        threading.Thread(target=remove),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(registry) == 150
    assert registry.status_counts()[S.COMPLETED] == 150
    assert_indexes_consistent(registry)


# -- the state machine ------------------------------------------------------------


class LifecycleMachine(RuleBasedStateMachine):
    """Random moves against the reference table and a model of the registry."""

    workers = Bundle("workers")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeWallClock()
        self.registry = AgentRegistry(clock=self.clock)
        self.model: dict[str, tuple[AgentStatus, str, int | None]] = {}
        self.event_counts: dict[str, int] = {}

    @rule(
        target=workers,
        role=st.sampled_from(["writer", "reviewer", "editor"]),
        project=st.sampled_from([None, 1, 2]),
    )
    def create(self, role: str, project: int | None) -> AgentWorker:
        worker = self.registry.create(role=role, phase="p", project_id=project)
        self.model[worker.id] = (S.IDLE, role, project)
        self.event_counts[worker.id] = 0
        return worker

    @rule(worker=workers, target_status=st.sampled_from(list(AgentStatus)))
    def transition(self, worker: AgentWorker, target_status: AgentStatus) -> None:
        before_status = worker.status
        before_events = worker.events
        if target_status in REFERENCE[before_status]:
            event = worker.transition(target_status, detail="ok")
            assert event.previous_status is before_status
            assert event.status is target_status
            assert worker.events == (*before_events, event)
            if worker.id in self.model:
                _, role, project = self.model[worker.id]
                self.model[worker.id] = (target_status, role, project)
        else:
            with pytest.raises(InvalidTransitionError) as caught:
                worker.transition(target_status, detail="no")
            assert caught.value.from_status is before_status
            assert caught.value.to_status is target_status
            assert worker.status is before_status
            assert worker.events == before_events

    @rule(worker=consumes(workers))
    def remove(self, worker: AgentWorker) -> None:
        if worker.id in self.model:
            assert self.registry.remove(worker.id) is worker
            del self.model[worker.id]
        else:
            with pytest.raises(UnknownWorkerError):
                self.registry.remove(worker.id)

    @precondition(lambda self: bool(self.model))
    @rule()
    def prune(self) -> None:
        finished = [i for i, (status, _, _) in self.model.items() if status.is_terminal]
        assert self.registry.prune_terminal() == len(finished)
        for worker_id in finished:
            del self.model[worker_id]

    @invariant()
    def indexes_match_the_model(self) -> None:
        assert len(self.registry) == len(self.model)
        for status in AgentStatus:
            assert {w.id for w in self.registry.by_status(status)} == {
                i for i, (s, _, _) in self.model.items() if s is status
            }
        for role in ("writer", "reviewer", "editor"):
            assert {w.id for w in self.registry.by_role(role)} == {
                i for i, (_, r, _) in self.model.items() if r == role
            }
        for project in (None, 1, 2):
            assert {w.id for w in self.registry.by_project(project)} == {
                i for i, (_, _, p) in self.model.items() if p == project
            }


LifecycleMachine.TestCase.settings = settings(max_examples=examples(60), stateful_step_count=40)
test_lifecycle_state_machine = LifecycleMachine.TestCase
