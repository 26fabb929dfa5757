"""Resuming a session from its log: the runtime's own accounting, rebuilt after a crash.

Private: :meth:`~techrevati.runtime.orchestrator.Orchestrator.resume` is the
entry point. A process killed with ``kill -9`` loses its sessions' counters,
but its SQLite or JSONL log keeps every record flushed before the kill. This
reads one session's records through the public readers (a path is opened
read-only), folds them into what a session keeps (turns, usage and cost per
model at the cost charged then, budget spent, failures, retries, tool calls,
event counts, the worker's last status) and returns a session with the same
id that goes on from there. The figures are a function of the log alone, so
resuming twice from one log gives the same totals, and a shared
:class:`~techrevati.runtime.budget.Budget` counts each record once.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from techrevati.runtime._classify import FailureScenario
from techrevati.runtime._money import _USD_POWER, _scaled, _to_decimal
from techrevati.runtime._validate import non_empty_str
from techrevati.runtime.errors import InvalidValueError, SessionStateError, TechrevatiError
from techrevati.runtime.events import AgentEvent, EventName, UsageRecord
from techrevati.runtime.lifecycle import TERMINAL_STATUSES, AgentStatus
from techrevati.runtime.orchestrator import Session
from techrevati.runtime.pricing import _model_name
from techrevati.runtime.usage import UsageSnapshot, UsageTracker

if TYPE_CHECKING:
    from techrevati.runtime.jsonl import JsonlSink
    from techrevati.runtime.orchestrator import Orchestrator
    from techrevati.runtime.sqlite import SqliteReader, SqliteSink

    Source = str | os.PathLike[str] | SqliteSink | SqliteReader | JsonlSink

__all__ = ["resume_session"]

_SQLITE_HEADER: Final = b"SQLite format 3\x00"
_STARTED: Final = EventName.SESSION_STARTED.value
_ENDS: Final[Mapping[str, str]] = {
    EventName.SESSION_COMPLETED.value: "completed",
    EventName.SESSION_FAILED.value: "failed",
    EventName.SESSION_CANCELLED.value: "cancelled",
}
_COMPLETED: Final = EventName.TURN_COMPLETED.value
_RETRIED: Final = EventName.TURN_RETRIED.value
_BUDGET: Final = EventName.BUDGET_EXCEEDED.value
_VETOED: Final = EventName.HOOK_VETOED.value
_ATTEMPT_ENDS: Final = frozenset(
    {_COMPLETED, EventName.TURN_FAILED.value, EventName.BREAKER_REJECTED.value}
)
"""Events that end an attempt of a turn (a vetoed or refused attempt is checked apart)."""
_FAILURES: Final = frozenset(
    {
        EventName.TURN_FAILED.value,
        EventName.BREAKER_REJECTED.value,
        EventName.TOOL_FAILED.value,
        EventName.TOOL_DENIED.value,
        EventName.HOOK_VETOED.value,
        _BUDGET,
    }
)
"""Events whose failure class a session counts in its failures (each is one)."""
_TOOL_CALLS: Final = frozenset({EventName.TOOL_COMPLETED.value, EventName.TOOL_FAILED.value})


def resume_session(
    orch: Orchestrator,
    session_id: str,
    source: Source,
    metadata: Mapping[str, object] | None,
) -> Session:
    """Read session ``session_id`` from ``source`` and return it rebuilt, not yet entered."""
    non_empty_str("session_id", session_id)
    events, usage, label = _read(source, session_id)
    if not events and not usage:
        raise InvalidValueError(
            f"session_id {session_id!r} is not in {label}: it holds no event or usage "
            "record of that session"
        )
    folded = _fold(events)
    _check_resumable(orch, session_id, folded, label)
    spend = _Spend.of(usage, session_id, label)
    return _ResumedSession(
        orch, session_id=session_id, events=events, folded=folded, spend=spend, metadata=metadata
    )


@dataclass(slots=True)
class _Folded:
    """What one session's events say, folded in order."""

    turns: int = 0
    turns_completed: int = 0
    without_usage: int = 0
    tool_calls: int = 0
    retries: int = 0
    budget_warnings: int = 0
    timed_out: bool = False
    scenarios: list[str] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    first: AgentEvent | None = None
    started: Mapping[str, object] | None = None  # the last session.started's data
    ended: str | None = None  # how the session ended, if it did
    status: str | None = None  # the worker's status at the last event that had one
    worker_id: str = ""


def _fold(events: Sequence[AgentEvent]) -> _Folded:
    """Count the events as the session that wrote them counted them."""
    folded = _Folded()
    retrying = False  # a turn.retried came: the next attempt belongs to the same turn
    for event in events:
        name, data = event.name, event.data
        if folded.first is None:
            folded.first = event
        if name == _COMPLETED:
            folded.turns_completed += 1
        else:
            folded.counts[name] += 1
        if data.get("usage_unknown") is True:  # a turn.completed, or a stream failed midway
            folded.without_usage += 1
        if name in _FAILURES and event.failure_class is not None:
            folded.failures[event.failure_class.value] += 1
        if name == _RETRIED:
            retrying = True
            folded.retries += 1
            scenario = data.get("scenario")
            if isinstance(scenario, str):
                folded.scenarios.append(scenario)
        elif _ends_attempt(name, data):
            if not retrying:
                folded.turns += 1
            retrying = False
        if name in _TOOL_CALLS:
            folded.tool_calls += 1
        elif name == _BUDGET and data.get("enforced") is False:
            folded.budget_warnings += 1
        elif name == EventName.TURN_FAILED.value and data.get("error_type") == "TurnTimeoutError":
            folded.timed_out = True
        elif name == _STARTED:
            folded.started = dict(data)
        elif name in _ENDS:
            folded.ended = _ENDS[name]
        if event.status is not None:
            folded.status = event.status
        if event.worker_id:
            folded.worker_id = event.worker_id
    return folded


def _ends_attempt(name: str, data: Mapping[str, object]) -> bool:
    """Whether the event ends an attempt: called, refused by a budget, or vetoed before."""
    if name in _ATTEMPT_ENDS:
        return True
    if name == _BUDGET:
        return data.get("enforced") is True
    return name == _VETOED and data.get("point") == "before_model"


def _check_resumable(orch: Orchestrator, session_id: str, folded: _Folded, label: str) -> None:
    """Refuse a session of other owners, one that ended, or one still open in this process."""
    first = folded.first
    if first is not None and (first.role, first.phase, first.project_id) != (
        orch.role,
        orch.phase,
        orch.project_id,
    ):
        raise InvalidValueError(
            f"session_id {session_id!r} in {label} belongs to role {first.role!r}, phase "
            f"{first.phase!r}, project_id {first.project_id!r}; this orchestrator is role "
            f"{orch.role!r}, phase {orch.phase!r}, project_id {orch.project_id!r}"
        )
    ended = folded.ended
    if ended is None and folded.status in TERMINAL_STATUSES:
        ended = f"its worker is {folded.status}"
    if ended is not None:
        raise SessionStateError(
            f"session {session_id!r} already ended ({ended}) in {label}: only a session "
            "that never ended can be resumed; start a new one with orch.session()"
        )
    worker = orch.registry.find(folded.worker_id) if folded.worker_id else None
    if worker is not None and not worker.is_terminal:
        raise SessionStateError(
            f"session {session_id!r} is still open in this process (its worker "
            f"{worker.id!r} is {worker.status.value}): end it before resuming it"
        )


@dataclass(frozen=True, slots=True)
class _Spend:
    """What one session's usage records say it was charged."""

    turns: tuple[tuple[str, UsageSnapshot, int, bool], ...]  # model, usage, femto, priced
    femto: int
    tokens: int

    @classmethod
    def of(cls, records: Sequence[UsageRecord], session_id: str, label: str) -> _Spend:
        turns = []
        for number, record in enumerate(records, start=1):
            try:
                usage = UsageSnapshot(
                    record.input_tokens,
                    record.output_tokens,
                    record.cache_read_tokens,
                    record.cache_write_tokens,
                    record.reasoning_tokens,
                    record.cache_write_1h_tokens,
                    service_tier=record.service_tier,
                )
                cost = _to_decimal(record.cost_usd, "cost_usd")
                femto = _scaled(cost, _USD_POWER, "cost_usd", "1e-15 USD")
                _model_name(record.model)
            except InvalidValueError as exc:
                raise InvalidValueError(
                    f"usage record {number} of session {session_id!r} in {label} cannot be "
                    f"resumed: {exc}"
                ) from exc
            turns.append((record.model, usage, femto, record.priced))
        return cls(
            tuple(turns),
            sum(turn[2] for turn in turns),
            sum(turn[1].total_tokens for turn in turns),
        )

    def last_per_model(self) -> dict[str, tuple[int, int]]:
        """Each model's last charge (femto, tokens), keyed as the session's cap keys them."""
        return {model: (femto, usage.total_tokens) for model, usage, femto, _ in self.turns}


class _ResumedSession(Session):
    """A session whose accounting starts from its log; entered like any other."""

    def __init__(
        self,
        orch: Orchestrator,
        *,
        session_id: str,
        events: Sequence[AgentEvent],
        folded: _Folded,
        spend: _Spend,
        metadata: Mapping[str, object] | None,
    ) -> None:
        super().__init__(orch, metadata=folded.started if metadata is None else metadata)
        self.id = session_id
        self._waiting = folded.status == AgentStatus.WAITING_FOR_INPUT.value
        for model, usage, femto, priced in spend.turns:
            self.tracker._restore(model, usage, femto, priced=priced)
        self._turns = folded.turns
        self._turns_completed = folded.turns_completed
        self._turns_without_usage = folded.without_usage
        self._tool_calls = folded.tool_calls
        self._retries = folded.retries
        self._budget_warnings = folded.budget_warnings
        self._timed_out = folded.timed_out
        self._failures.update(folded.failures)
        self._event_counts.update(folded.counts)
        self._written = len(events)
        self._log.extend(events[-orch.event_capacity :])
        for value in folded.scenarios:
            try:
                scenario = FailureScenario(value)
            except ValueError:
                continue  # a scenario this version does not know
            self.recovery._claim_total(scenario)
        self._cap_spent = spend.femto
        last = spend.last_per_model()
        self._cap_expect.update((model, femto) for model, (femto, _) in last.items())
        budget = orch.budget
        if budget is not None:
            expect = {_model_name(model): figures for model, figures in last.items()}
            figures = (spend.femto, spend.tokens, len(spend.turns))
            budget._count_resumed(session_id, figures, expect, _counted(self.tracker))

    def _start(self) -> None:
        super()._start()
        if self._waiting:
            self._transition(AgentStatus.WAITING_FOR_INPUT, "resumed waiting for input")


def _counted(tracker: UsageTracker) -> Callable[[], tuple[int, int, int]]:
    """Return what a resumed session charged a shared budget: femto, tokens, turns."""

    def counted() -> tuple[int, int, int]:
        inp, out, _, _, _, _, femto, turns, _, _ = tracker._rows()[1]
        return femto, inp + out, turns

    return counted


def _read(source: Source, session_id: str) -> tuple[list[AgentEvent], list[UsageRecord], str]:
    """Return the session's events and usage records, oldest first, and the source's name."""
    from techrevati.runtime.jsonl import JsonlSink  # noqa: PLC0415 (json)
    from techrevati.runtime.sqlite import SqliteReader, SqliteSink  # noqa: PLC0415 (sqlite3)

    if isinstance(source, SqliteSink | SqliteReader):
        label = os.fspath(source.path)
        with _reading(label):
            if isinstance(source, SqliteSink) and source.closed:
                return _read_sqlite(source.path, session_id, label)
            events = source.read_events(session_id=session_id)
            return events, source.read_usage(session_id=session_id), label
    if isinstance(source, JsonlSink):
        source.flush()
        path = source.path
    elif isinstance(source, str | os.PathLike) and not isinstance(source, bytes):
        path = Path(source)
    else:
        raise InvalidValueError(
            "from_ must be a path, a SqliteSink, a SqliteReader or a JsonlSink, got "
            f"{type(source).__name__} {source!r}"
        )
    label = os.fspath(path)
    with _reading(label):
        with open(path, "rb") as handle:
            header = handle.read(len(_SQLITE_HEADER))
        if header == _SQLITE_HEADER:
            return _read_sqlite(path, session_id, label)
        return (*_read_jsonl(path, session_id), label)


def _read_sqlite(
    path: Path, session_id: str, label: str
) -> tuple[list[AgentEvent], list[UsageRecord], str]:
    from techrevati.runtime.sqlite import SqliteReader  # noqa: PLC0415 (sqlite3)

    with SqliteReader(path) as reader:
        events = reader.read_events(session_id=session_id)
        return events, reader.read_usage(session_id=session_id), label


def _read_jsonl(path: Path, session_id: str) -> tuple[list[AgentEvent], list[UsageRecord]]:
    from techrevati.runtime.jsonl import read_jsonl  # noqa: PLC0415 (json)

    events: list[AgentEvent] = []
    usage: list[UsageRecord] = []
    for record in read_jsonl(path):  # a torn last line is skipped by the reader
        if record.session_id != session_id:
            continue
        if isinstance(record, AgentEvent):
            events.append(record)
        else:
            usage.append(record)
    return events, usage


@contextmanager
def _reading(label: str) -> Iterator[None]:
    """Let the library's own errors through; name the source in any other."""
    try:
        yield
    except TechrevatiError:
        raise
    except Exception as exc:
        raise InvalidValueError(
            f"from_ {label!r} cannot be read: {type(exc).__name__}: {exc}"
        ) from exc
