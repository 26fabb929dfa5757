"""The deadline runner: a blocking call on a bounded pool of reusable daemon threads.

Nothing here sleeps: the calls block on events the test sets, and the few
deadlines that must pass are a few hundredths of a second on a call that
blocks (bounded, so a bug cannot stall the suite).
"""

from __future__ import annotations

import contextvars
import functools
import math
import threading
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from techrevati.runtime import _runner
from techrevati.runtime._runner import (
    DEFAULT_MAX_THREADS,
    DeadlineExceededError,
    DeadlineRunner,
    default_runner,
)

_REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("request", default="none")


class Blocker:
    """A call that blocks until released; the test can wait until ``n`` calls began."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._began = threading.Semaphore(0)

    def __call__(self) -> str:
        self._began.release()
        assert self.release.wait(10), "never released"
        return "released"

    def began(self, calls: int) -> None:
        for _ in range(calls):
            assert self._began.acquire(timeout=5), "a call never began"


class Observed(DeadlineRunner):
    """A runner that reports each worker offered back to the idle pool, and whether it stayed."""

    def __init__(self, max_threads: int = DEFAULT_MAX_THREADS) -> None:
        super().__init__(max_threads)
        self.given: list[bool] = []
        self._changed = threading.Condition()

    def _give_back(self, worker: Any) -> bool:
        kept = super()._give_back(worker)
        with self._changed:
            self.given.append(kept)
            self._changed.notify_all()
        return kept

    def wait_given(self, count: int) -> list[bool]:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.given) >= count, timeout=5)
            return list(self.given)


def _run_at_once(runner: DeadlineRunner, calls: int) -> None:
    """Run ``calls`` blocking calls at once (one caller thread each), then release them all."""
    blocker = Blocker()
    results: list[object] = []

    def caller() -> None:
        results.append(runner.run(blocker, 5))

    threads = [threading.Thread(target=caller) for _ in range(calls)]
    for thread in threads:
        thread.start()
    blocker.began(calls)  # every call holds its own thread now
    assert runner.busy == calls
    blocker.release.set()
    for thread in threads:
        thread.join(5)
    assert results == ["released"] * calls


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "2", None])
def test_max_threads_must_be_an_int_of_at_least_one(value: object) -> None:
    with pytest.raises(ValueError, match=r"^max_threads must be an int >= 1, got ") as caught:
        DeadlineRunner(value)  # type: ignore[arg-type]
    assert str(caught.value) == f"max_threads must be an int >= 1, got {value!r}"


def test_a_new_runner_reports_its_bound_and_has_started_nothing() -> None:
    runner = DeadlineRunner(3)
    assert (runner.max_threads, runner.busy, runner.threads_started) == (3, 0, 0)
    assert DeadlineRunner().max_threads == DEFAULT_MAX_THREADS == 32
    assert DeadlineRunner(1).max_threads == 1


# -- a call's result, exception and context ------------------------------------------------


def test_a_call_returns_its_value_from_a_named_daemon_thread() -> None:
    runner = DeadlineRunner()
    caller = threading.current_thread()

    def where() -> tuple[str, bool, bool]:
        me = threading.current_thread()
        return me.name, me.daemon, me is caller

    assert runner.run(where, 5) == ("techrevati-turn-worker", True, False)
    assert runner.threads_started == 1


def test_the_exception_of_fn_is_raised_unchanged_and_frees_its_thread() -> None:
    runner = DeadlineRunner(max_threads=1)
    error = ValueError("bad prompt")

    def fails() -> str:
        raise error

    for _ in range(3):  # the one slot is given back each time, or the second call would wait
        with pytest.raises(ValueError, match="bad prompt") as caught:
            runner.run(fails, 5)
        assert caught.value is error
        assert runner.busy == 0
    assert runner.run(lambda: "next", 5) == "next"
    assert runner.threads_started == 1  # the failed calls' thread was reused


def test_a_base_exception_of_fn_is_raised_unchanged_too() -> None:
    class Stop(BaseException):
        pass

    stop = Stop("stop")
    runner = DeadlineRunner(max_threads=1)

    def stops() -> None:
        raise stop

    with pytest.raises(Stop) as caught:
        runner.run(stops, 5)
    assert caught.value is stop
    assert runner.run(lambda: 7, 5) == 7


def test_none_is_a_result_not_a_failure() -> None:
    assert DeadlineRunner().run(lambda: None, 5) is None


def test_fn_runs_in_a_copy_of_the_callers_context() -> None:
    runner = DeadlineRunner()
    token = _REQUEST.set("req-42")
    try:

        def reads_and_writes() -> str:
            seen = _REQUEST.get()
            _REQUEST.set("changed on the worker")
            return seen

        assert runner.run(reads_and_writes, 5) == "req-42"
        assert _REQUEST.get() == "req-42"  # the worker's change stayed in its copy
    finally:
        _REQUEST.reset(token)
    assert runner.run(_REQUEST.get, 5) == "none"  # a later call sees the caller's context now


def test_an_infinite_timeout_waits_without_a_limit() -> None:
    assert DeadlineRunner().run(lambda: "done", math.inf) == "done"


# -- deadlines -----------------------------------------------------------------------------


def test_a_call_that_outlives_its_deadline_raises_and_keeps_its_thread_until_it_returns() -> None:
    runner = Observed(max_threads=2)
    blocker = Blocker()
    try:
        with pytest.raises(DeadlineExceededError) as caught:
            runner.run(blocker, 0.02)
        assert str(caught.value) == "call did not finish within 0.02 seconds"
        assert caught.value.started is True
        assert isinstance(caught.value, TimeoutError)
        blocker.began(1)
        assert runner.busy == 1  # still running, past its deadline
    finally:
        blocker.release.set()
    assert runner.wait_given(1) == [True]  # it finished late and rejoined the pool
    assert runner.busy == 0
    assert runner.run(lambda: "reused", 5) == "reused"
    assert runner.threads_started == 1


def test_a_full_pool_fails_a_new_call_at_its_deadline_without_making_it() -> None:
    runner = DeadlineRunner(max_threads=2)
    blocker = Blocker()
    made: list[int] = []
    try:
        for _ in range(2):
            with pytest.raises(DeadlineExceededError):
                runner.run(blocker, 0.02)
        blocker.began(2)
        with pytest.raises(DeadlineExceededError) as caught:
            runner.run(lambda: made.append(1), 0.02)
        assert caught.value.started is False
        assert str(caught.value) == (
            "no free thread within 0.02 seconds: all 2 are running calls "
            "that outlived their deadlines"
        )
        assert runner.busy == 2
        assert runner.threads_started == 2
    finally:
        blocker.release.set()
    assert made == []


def test_deadline_exceeded_started_defaults_to_true() -> None:
    assert DeadlineExceededError("late").started is True
    assert DeadlineExceededError("never began", started=False).started is False
    assert str(DeadlineExceededError("late")) == "late"


class _Spied(_runner._Outcome[Any]):
    """An outcome whose event records how long the caller waited for it."""

    waits: ClassVar[list[float | None]] = []

    def __init__(self) -> None:
        super().__init__()
        done = self.done
        waits = self.waits

        class Spy:
            def set(self) -> None:
                done.set()

            def wait(self, timeout: float | None = None) -> bool:
                waits.append(timeout)
                return done.wait(5)

        self.done = Spy()  # type: ignore[assignment]


@pytest.fixture
def spied(monkeypatch: pytest.MonkeyPatch) -> tuple[list[float | None], list[float]]:
    """Record the caller's waits, and drive the runner's monotonic clock from a list."""
    waits: list[float | None] = []
    monkeypatch.setattr(_Spied, "waits", waits)
    monkeypatch.setattr(_runner, "_Outcome", _Spied)
    readings: list[float] = []
    monkeypatch.setattr(_runner, "time", SimpleNamespace(monotonic=lambda: readings.pop(0)))
    return waits, readings


@pytest.mark.parametrize(
    ("timeout", "started", "now", "waited"),
    [
        (10.0, 100.0, 103.0, 7.0),  # the rest of the deadline, not all of it again
        (10.0, 100.0, 100.0, 10.0),
        (2.0, 100.0, 105.0, 0.0),  # past the deadline already: no wait, never a negative one
        (math.inf, 100.0, 250.0, None),  # no limit
    ],
)
def test_the_caller_waits_only_the_rest_of_its_deadline(
    spied: tuple[list[float | None], list[float]],
    timeout: float,
    started: float,
    now: float,
    waited: float | None,
) -> None:
    waits, readings = spied
    readings.extend([started, now])
    assert DeadlineRunner().run(lambda: "ok", timeout) == "ok"
    assert waits == [waited]
    assert readings == []


# -- the pool ------------------------------------------------------------------------------


def test_threads_are_reused_one_call_after_another() -> None:
    runner = Observed()
    for i in range(5):
        assert runner.run(functools.partial(int.__mul__, i, 2), 5) == i * 2
        runner.wait_given(i + 1)
    assert runner.threads_started == 1
    assert runner.given == [True] * 5


def test_at_most_eight_idle_threads_are_kept() -> None:
    runner = Observed(max_threads=12)
    _run_at_once(runner, 10)
    assert runner.threads_started == 10
    given = runner.wait_given(10)
    assert (given.count(True), given.count(False)) == (8, 2)  # two threads ended
    _run_at_once(runner, 10)
    assert runner.threads_started == 12  # the 8 idle ones were reused, 2 new were started
    given = runner.wait_given(20)
    assert (given[10:].count(True), given[10:].count(False)) == (8, 2)


def test_a_thread_that_cannot_start_gives_its_slot_back(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = DeadlineRunner(max_threads=1)
    failure = RuntimeError("can't start new thread")

    def no_thread(pool: DeadlineRunner) -> None:
        raise failure

    monkeypatch.setattr(_runner, "_Worker", no_thread)
    for _ in range(2):  # the slot came back, or the second call would wait for it
        with pytest.raises(RuntimeError) as caught:
            runner.run(lambda: "never", 0.5)
        assert caught.value is failure
        assert runner.busy == 0
    monkeypatch.undo()
    assert runner.run(lambda: "after", 5) == "after"


# -- the process-wide runner ---------------------------------------------------------------


def test_default_runner_is_made_once_with_the_default_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_runner, "_DEFAULT", None)
    first = default_runner()
    assert isinstance(first, DeadlineRunner)
    assert first.max_threads == DEFAULT_MAX_THREADS
    assert default_runner() is first
    assert _runner._DEFAULT is first


def test_default_runner_is_made_once_when_threads_race_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two threads that both saw no runner yet, queued on its lock, still get the same one."""
    real = threading.Lock()
    arrived = threading.Semaphore(0)

    class Gate:
        def __enter__(self) -> None:
            arrived.release()
            real.acquire()

        def __exit__(self, *exc: object) -> None:
            real.release()

    monkeypatch.setattr(_runner, "_DEFAULT", None)
    monkeypatch.setattr(_runner, "_DEFAULT_LOCK", Gate())
    got: list[DeadlineRunner] = []
    with real:  # hold the lock: both threads pass the unlocked check and queue on it

        def take() -> None:
            got.append(default_runner())

        threads = [threading.Thread(target=take) for _ in range(2)]
        for thread in threads:
            thread.start()
        for _ in range(2):
            assert arrived.acquire(timeout=5)
    for thread in threads:
        thread.join(5)
    assert len(got) == 2
    assert got[0] is got[1] is _runner._DEFAULT
