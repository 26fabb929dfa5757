"""Incidents: notice the events that matter, report them with a severity and a deadline.

Reach for :class:`IncidentDetector` to turn a session's events into incident
reports someone must act on. It is an event sink
(``Orchestrator(sinks=[detector])``); its rules look at each event and the
built-in ones find a governance breach, repeated authentication failures
within a window, a denied call to a dangerous tool and an enforced budget
breach. Each finding becomes an :class:`IncidentReport` (kind, severity, the
events involved, the sessions and workers, when it was detected and the
deadline for reporting it, ``detected_at`` plus the period of its severity),
goes to every :class:`IncidentSink`, and stays in :meth:`~IncidentDetector.incidents`
until you :meth:`~IncidentDetector.mark_reported` it;
:meth:`~IncidentDetector.overdue` lists the ones past their deadline on the
injected clock. A sink that raises loses nothing: the report is kept and
offered again on the next event or :meth:`~IncidentDetector.flush`; a rule
that raises is logged and the others still run.

The default periods (2 days for a critical incident, 15 for a serious one,
none for a minor one) are examples, not anyone's legal deadlines: set
``periods=`` from your own obligations. These are technical building blocks,
not legal advice.
"""

from __future__ import annotations

import fnmatch
import json
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol, runtime_checkable

from techrevati.runtime._clock import WallClock, utc_now
from techrevati.runtime._log import get_logger
from techrevati.runtime._permission_names import normalize_permission_name
from techrevati.runtime._validate import enum_member, int_at_least, non_empty_str, required_callable
from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.events import AgentEvent, AgentFailureClass, EventName

if TYPE_CHECKING:
    from techrevati.runtime.audit import AuditAppender

__all__ = [
    "DEFAULT_AUTH_FAILURES",
    "DEFAULT_AUTH_WINDOW",
    "DEFAULT_DANGEROUS_TOOLS",
    "DEFAULT_REPORTING_PERIODS",
    "MAX_EVENTS_PER_INCIDENT",
    "AuditIncidentSink",
    "AuthFailureRule",
    "BudgetExceededRule",
    "DangerousToolDeniedRule",
    "EventRef",
    "Finding",
    "GovernanceBreachRule",
    "IncidentDetector",
    "IncidentReport",
    "IncidentRule",
    "IncidentSink",
    "JsonlIncidentSink",
    "Severity",
    "UnknownIncidentError",
    "default_rules",
]

_LOG: Final = get_logger("techrevati.runtime.incidents")

MAX_EVENTS_PER_INCIDENT: Final = 50
"""Events an incident lists; later occurrences are only counted."""

DEFAULT_AUTH_FAILURES: Final = 3
"""Authentication failures within the window that make an incident."""

DEFAULT_AUTH_WINDOW: Final = timedelta(minutes=10)
"""The window :data:`DEFAULT_AUTH_FAILURES` are counted in (by the events' timestamps)."""

DEFAULT_DANGEROUS_TOOLS: Final = ("*shell*", "*exec*", "*delete*")
"""Globs of tool names whose denied calls make an incident."""


class Severity(StrEnum):
    """How bad an incident is: ``minor < serious < critical``."""

    MINOR = "minor"
    SERIOUS = "serious"
    CRITICAL = "critical"


DEFAULT_REPORTING_PERIODS: Final[Mapping[Severity, timedelta | None]] = {
    Severity.CRITICAL: timedelta(days=2),
    Severity.SERIOUS: timedelta(days=15),
    Severity.MINOR: None,
}
"""Example reporting periods per severity (None: no deadline); set your own."""


class UnknownIncidentError(TechrevatiError, KeyError):
    """No incident of that id is known to the detector."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# -- values -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventRef:
    """The part of an event an incident keeps: name, time, who, and the detail."""

    name: str
    timestamp: datetime
    session_id: str = ""
    worker_id: str = ""
    role: str = ""
    failure_class: str | None = None
    detail: str | None = None

    @classmethod
    def of(cls, event: AgentEvent) -> EventRef:
        """Return the reference to ``event``."""
        failure = None if event.failure_class is None else event.failure_class.value
        return cls(
            str(event.name),
            event.timestamp,
            event.session_id,
            event.worker_id,
            event.role,
            failure,
            event.detail,
        )

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict."""
        return {
            "name": self.name,
            "timestamp": self.timestamp.isoformat(),
            "session_id": self.session_id,
            "worker_id": self.worker_id,
            "role": self.role,
            "failure_class": self.failure_class,
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class Finding:
    """What a rule found in an event: an incident of ``kind``, or one more of an open one.

    ``key`` groups findings: while an incident of the same key is open (not
    reported), a new finding adds to it instead of opening another.
    """

    kind: str
    severity: Severity
    summary: str
    events: tuple[AgentEvent, ...]
    key: str = ""
    facts: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IncidentReport:
    """One incident: what, how bad, which events, when detected and by when to report it.

    ``deadline`` is ``detected_at`` plus the reporting period of the
    severity (None: no deadline); ``reported_at`` is set by
    :meth:`IncidentDetector.mark_reported`. ``occurrences`` counts the
    findings grouped into it; ``events`` lists the first
    :data:`MAX_EVENTS_PER_INCIDENT` of their events.
    """

    id: str
    kind: str
    severity: Severity
    summary: str
    detected_at: datetime
    first_seen: datetime
    last_seen: datetime
    events: tuple[EventRef, ...]
    session_ids: tuple[str, ...]
    worker_ids: tuple[str, ...]
    deadline: datetime | None
    occurrences: int = 1
    facts: Mapping[str, object] = field(default_factory=dict)
    reported_at: datetime | None = None
    key: str = ""

    def overdue(self, now: datetime) -> bool:
        """Whether it is unreported and ``now`` is past its deadline."""
        return self.reported_at is None and self.deadline is not None and now > self.deadline

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (times as ISO 8601)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "severity": self.severity.value,
            "summary": self.summary,
            "detected_at": self.detected_at.isoformat(),
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "deadline": None if self.deadline is None else self.deadline.isoformat(),
            "reported_at": None if self.reported_at is None else self.reported_at.isoformat(),
            "occurrences": self.occurrences,
            "session_ids": list(self.session_ids),
            "worker_ids": list(self.worker_ids),
            "events": [ref.to_dict() for ref in self.events],
            "facts": dict(self.facts),
        }

    def to_markdown(self) -> str:
        """Return the report as a short Markdown document."""
        deadline = "none" if self.deadline is None else self.deadline.isoformat()
        reported = "not yet" if self.reported_at is None else self.reported_at.isoformat()
        lines = [
            f"## Incident {self.id}: {self.kind} ({self.severity.value})",
            "",
            _md(self.summary),
            "",
            f"- Detected: {self.detected_at.isoformat()}",
            f"- First seen: {self.first_seen.isoformat()}; last seen: {self.last_seen.isoformat()}",
            f"- Occurrences: {self.occurrences}",
            f"- Reporting deadline: {deadline}",
            f"- Reported: {reported}",
            f"- Sessions: {', '.join(self.session_ids) or 'none'}",
            f"- Workers: {', '.join(self.worker_ids) or 'none'}",
        ]
        lines.extend(f"- {_md(str(k))}: {_md(_fact(v))}" for k, v in self.facts.items())
        lines += ["", "| time | event | session | detail |", "|---|---|---|---|"]
        lines.extend(
            f"| {ref.timestamp.isoformat()} | {_md(ref.name)} | {_md(ref.session_id)} | "
            f"{_md(ref.detail or '')} |"
            for ref in self.events
        )
        return "\n".join(lines) + "\n"


# -- rules ------------------------------------------------------------------------------------


@runtime_checkable
class IncidentRule(Protocol):
    """Looks at each event; returns a :class:`Finding` when it is (part of) an incident."""

    def observe(self, event: AgentEvent) -> Finding | None:
        """Return what ``event`` shows, or None."""


class GovernanceBreachRule:
    """A ``governance.breached`` event is an incident (serious by default), one per session."""

    kind: Final = "governance_breach"

    def __init__(self, severity: Severity | str = Severity.SERIOUS) -> None:
        self.severity = enum_member(Severity, severity, "severity")

    def observe(self, event: AgentEvent) -> Finding | None:  # noqa: D102
        if event.name != EventName.GOVERNANCE_BREACHED:
            return None
        limit = str(event.data.get("limit", ""))
        return Finding(
            self.kind,
            self.severity,
            f"governance limit {limit or '?'} breached: {event.detail or ''}".rstrip(": "),
            (event,),
            key=f"{self.kind}:{event.session_id}:{limit}",
            facts={"limit": limit, "maximum": event.data.get("maximum")},
        )


class AuthFailureRule:
    """``threshold`` authentication failures within ``window`` (event time) are an incident.

    Counts ``turn.failed`` (and ``tool.failed``) events whose failure class
    is ``auth_failure``, across every session the detector sees (a revoked
    key fails them all). After an incident the count starts afresh.
    """

    kind: Final = "auth_failures"

    def __init__(
        self,
        threshold: int = DEFAULT_AUTH_FAILURES,
        window: timedelta = DEFAULT_AUTH_WINDOW,
        *,
        severity: Severity | str = Severity.SERIOUS,
    ) -> None:
        self.threshold = int_at_least("threshold", threshold, 1)
        if not isinstance(window, timedelta) or window <= timedelta(0):
            raise InvalidValueError(f"window must be a timedelta > 0, got {window!r}")
        self.window = window
        self.severity = enum_member(Severity, severity, "severity")
        self._lock = threading.Lock()
        self._seen: deque[AgentEvent] = deque()

    def observe(self, event: AgentEvent) -> Finding | None:  # noqa: D102
        if event.failure_class is not AgentFailureClass.AUTH_FAILURE or event.name not in (
            EventName.TURN_FAILED,
            EventName.TOOL_FAILED,
        ):
            return None
        with self._lock:
            seen = self._seen
            seen.append(event)
            while seen and event.timestamp - seen[0].timestamp > self.window:
                seen.popleft()
            if len(seen) < self.threshold:
                return None
            found = tuple(seen)
            seen.clear()
        return Finding(
            self.kind,
            self.severity,
            f"{len(found)} authentication failures within {_span(self.window)}",
            found,
            key=self.kind,
            facts={"threshold": self.threshold, "window_seconds": self.window.total_seconds()},
        )


class DangerousToolDeniedRule:
    """A denied call to a tool whose name matches ``patterns`` is an incident (serious).

    Names are compared as permissions compare them (NFKC, case folded);
    patterns are ``fnmatch`` globs. One incident per session and tool.
    """

    kind: Final = "dangerous_tool_denied"

    def __init__(
        self,
        patterns: Iterable[str] = DEFAULT_DANGEROUS_TOOLS,
        *,
        severity: Severity | str = Severity.SERIOUS,
    ) -> None:
        if isinstance(patterns, str):
            raise InvalidValueError(f"patterns must be a collection of globs, not {patterns!r}")
        self.patterns = tuple(
            normalize_permission_name(non_empty_str("pattern", p)) for p in patterns
        )
        self.severity = enum_member(Severity, severity, "severity")

    def observe(self, event: AgentEvent) -> Finding | None:  # noqa: D102
        if event.name != EventName.TOOL_DENIED:
            return None
        tool = event.data.get("tool")
        name = normalize_permission_name(tool) if isinstance(tool, str) else ""
        matched = next((p for p in self.patterns if fnmatch.fnmatchcase(name, p)), None)
        if matched is None:
            return None
        return Finding(
            self.kind,
            self.severity,
            f"a call to the dangerous tool {name!r} was denied",
            (event,),
            key=f"{self.kind}:{event.session_id}:{name}",
            facts={"tool": name, "pattern": matched, "rule": event.data.get("rule")},
        )


class BudgetExceededRule:
    """An enforced ``budget.exceeded`` (the call was refused) is an incident (minor)."""

    kind: Final = "budget_breach"

    def __init__(self, severity: Severity | str = Severity.MINOR) -> None:
        self.severity = enum_member(Severity, severity, "severity")

    def observe(self, event: AgentEvent) -> Finding | None:  # noqa: D102
        if event.name != EventName.BUDGET_EXCEEDED or event.data.get("enforced") is not True:
            return None
        return Finding(
            self.kind,
            self.severity,
            f"a budget refused a model call: {event.detail or ''}".rstrip(": "),
            (event,),
            key=f"{self.kind}:{event.session_id}",
            facts={"model": event.data.get("model")},
        )


def default_rules() -> list[IncidentRule]:
    """Return fresh built-in rules: governance breach, auth failures, dangerous tool, budget."""
    return [
        GovernanceBreachRule(),
        AuthFailureRule(),
        DangerousToolDeniedRule(),
        BudgetExceededRule(),
    ]


# -- sinks ------------------------------------------------------------------------------------


@runtime_checkable
class IncidentSink(Protocol):
    """Receives each new :class:`IncidentReport`; raising means "not delivered, try again"."""

    def write_incident(self, report: IncidentReport) -> None:
        """Store or send one report."""


class JsonlIncidentSink:
    """Append each report as one JSON line to a file, flushed and fsynced before returning."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        """The file."""
        return self._path

    def write_incident(self, report: IncidentReport) -> None:  # noqa: D102
        line = json.dumps(report.to_dict(), sort_keys=True, default=str) + "\n"
        with self._lock, self._path.open("a", encoding="utf-8") as out:
            out.write(line)
            out.flush()
            os.fsync(out.fileno())


class AuditIncidentSink:
    """Append each report to an :class:`~techrevati.runtime.audit.AuditLog` as ``incident``."""

    def __init__(self, log: AuditAppender) -> None:
        if not callable(getattr(log, "append", None)):
            raise InvalidValueError(f"log must be an AuditLog or AuditSink, got {log!r}")
        self._log = log

    def write_incident(self, report: IncidentReport) -> None:  # noqa: D102
        self._log.append("incident", report.to_dict())


def _sink_call(sink: object) -> Callable[[IncidentReport], object]:
    write = getattr(sink, "write_incident", None)
    if callable(write):
        return write  # type: ignore[no-any-return]
    if callable(sink):
        return sink
    raise InvalidValueError(f"sinks must be IncidentSinks or callables, got {sink!r}")


# -- the detector -----------------------------------------------------------------------------


class IncidentDetector:
    """An event sink that turns findings into incident reports and delivers them.

    ``rules`` are :class:`IncidentRule` objects (default: :func:`default_rules`).
    ``sinks`` are :class:`IncidentSink` objects or plain callables given each
    new report. ``clock`` is the wall clock stamping ``detected_at`` and
    deciding :meth:`overdue`. ``periods`` maps each :class:`Severity` to its
    reporting period (a ``timedelta``, or None for no deadline); missing
    severities take :data:`DEFAULT_REPORTING_PERIODS`. Safe to share between
    threads and sessions.
    """

    def __init__(
        self,
        rules: Iterable[IncidentRule] | None = None,
        *,
        clock: WallClock = utc_now,
        sinks: Iterable[IncidentSink | Callable[[IncidentReport], object]] = (),
        periods: Mapping[Severity | str, timedelta | None] | None = None,
    ) -> None:
        self._rules = tuple(default_rules() if rules is None else rules)
        for rule in self._rules:
            if not callable(getattr(rule, "observe", None)):
                raise InvalidValueError(f"rules must have an observe(event) method, got {rule!r}")
        self._clock = required_callable("clock", clock)
        self._sinks = tuple(sinks)
        self._deliver = [_sink_call(sink) for sink in self._sinks]
        self._periods = dict(DEFAULT_REPORTING_PERIODS)
        for severity, period in (periods or {}).items():
            if period is not None and (not isinstance(period, timedelta) or period < timedelta(0)):
                raise InvalidValueError(
                    f"periods[{severity!r}] must be a timedelta >= 0 or None, got {period!r}"
                )
            self._periods[enum_member(Severity, severity, "severity", field="periods")] = period
        self._lock = threading.Lock()
        self._incidents: dict[str, IncidentReport] = {}
        self._open_keys: dict[str, str] = {}
        self._undelivered: list[deque[IncidentReport]] = [deque() for _ in self._deliver]
        self._delivering = False
        self._rule_failures = 0
        self._sink_failures = 0

    @property
    def rules(self) -> tuple[IncidentRule, ...]:
        """The rules, in the order they see each event."""
        return self._rules

    @property
    def sinks(self) -> tuple[object, ...]:
        """Where reports go."""
        return self._sinks

    @property
    def periods(self) -> Mapping[Severity, timedelta | None]:
        """The reporting period of each severity."""
        return dict(self._periods)

    @property
    def rule_failures(self) -> int:
        """How many times a rule raised."""
        return self._rule_failures

    @property
    def sink_failures(self) -> int:
        """How many deliveries raised (each retried later)."""
        return self._sink_failures

    @property
    def undelivered(self) -> int:
        """Reports waiting for a sink that refused them, counted once per sink."""
        with self._lock:
            return sum(len(queue) for queue in self._undelivered)

    def write_event(self, event: AgentEvent) -> None:
        """Run every rule on ``event``; record what they find; deliver what is waiting."""
        for rule in self._rules:
            try:
                finding = rule.observe(event)
            except Exception:
                with self._lock:
                    self._rule_failures += 1
                _LOG.exception("incident rule %r failed on %s", rule, event.name)
                continue
            if finding is not None:
                self._found(finding)
        self._flush_sinks()

    def observe(self, events: Iterable[AgentEvent]) -> list[IncidentReport]:
        """Feed ``events`` (such as a session's ``events()``); return the incidents opened."""
        before = set(self._incidents)
        for event in events:
            self.write_event(event)
        with self._lock:
            return [r for i, r in self._incidents.items() if i not in before]

    def flush(self) -> int:
        """Offer every waiting report to its sink again; return how many still wait."""
        self._flush_sinks()
        return self.undelivered

    def incidents(self, *, reported: bool | None = None) -> list[IncidentReport]:
        """Return the incidents in the order detected (only reported, or unreported, if asked)."""
        with self._lock:
            found = list(self._incidents.values())
        if reported is None:
            return found
        return [r for r in found if (r.reported_at is not None) is reported]

    def get(self, incident_id: str) -> IncidentReport:
        """Return the incident of ``incident_id``; :class:`UnknownIncidentError` else."""
        with self._lock:
            found = self._incidents.get(incident_id)
        if found is None:
            raise UnknownIncidentError(f"no incident {incident_id!r}")
        return found

    def overdue(self, now: datetime | None = None) -> list[IncidentReport]:
        """Return the unreported incidents past their deadline at ``now`` (default: the clock)."""
        at = self._clock() if now is None else now
        return [r for r in self.incidents() if r.overdue(at)]

    def mark_reported(self, incident_id: str, *, at: datetime | None = None) -> IncidentReport:
        """Note that the incident was reported (at ``at``, default the clock); return it.

        A later finding of the same key opens a new incident.
        """
        when = self._clock() if at is None else at
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise InvalidValueError(f"at must be a timezone-aware datetime, got {when!r}")
        with self._lock:
            found = self._incidents.get(incident_id)
            if found is None:
                raise UnknownIncidentError(f"no incident {incident_id!r}")
            done = replace(found, reported_at=when)
            self._incidents[incident_id] = done
            if self._open_keys.get(found.key) == incident_id:
                del self._open_keys[found.key]
        return done

    def __repr__(self) -> str:
        return (
            f"IncidentDetector(rules={len(self._rules)}, incidents={len(self._incidents)}, "
            f"undelivered={self.undelivered})"
        )

    # -- inside -------------------------------------------------------------------------------

    def _found(self, finding: Finding) -> None:
        refs = tuple(EventRef.of(event) for event in finding.events)
        if not refs:
            return
        with self._lock:
            open_id = self._open_keys.get(finding.key) if finding.key else None
            if open_id is not None:
                self._incidents[open_id] = _grown(self._incidents[open_id], refs)
                return
            now = self._clock()
            period = self._periods.get(finding.severity)
            report = IncidentReport(
                id=f"incident-{uuid.uuid4().hex[:16]}",
                kind=finding.kind,
                severity=finding.severity,
                summary=finding.summary,
                detected_at=now,
                first_seen=min(ref.timestamp for ref in refs),
                last_seen=max(ref.timestamp for ref in refs),
                events=refs[:MAX_EVENTS_PER_INCIDENT],
                session_ids=_unique(ref.session_id for ref in refs),
                worker_ids=_unique(ref.worker_id for ref in refs),
                deadline=None if period is None else now + period,
                facts=dict(finding.facts),
                key=finding.key,
            )
            self._incidents[report.id] = report
            if finding.key:
                self._open_keys[finding.key] = report.id
            for queue in self._undelivered:
                queue.append(report)
        _LOG.warning(
            "incident %s: %s (%s), deadline %s",
            report.id,
            report.kind,
            report.severity.value,
            report.deadline,
        )

    def _flush_sinks(self) -> None:
        """Deliver waiting reports in order, each sink on its own; a failure stops that sink."""
        with self._lock:
            if self._delivering or not any(self._undelivered):
                return
            self._delivering = True
        try:
            for deliver, queue in zip(self._deliver, self._undelivered, strict=True):
                while True:
                    with self._lock:
                        if not queue:
                            break
                        report = queue[0]
                    try:
                        deliver(report)
                    except Exception:
                        with self._lock:
                            self._sink_failures += 1
                        _LOG.exception("incident sink %r failed on %s; kept", deliver, report.id)
                        break
                    with self._lock:
                        queue.popleft()
        finally:
            with self._lock:
                self._delivering = False


def _grown(report: IncidentReport, refs: Sequence[EventRef]) -> IncidentReport:
    events = (*report.events, *refs)[:MAX_EVENTS_PER_INCIDENT]
    return replace(
        report,
        occurrences=report.occurrences + 1,
        events=events,
        last_seen=max(report.last_seen, *(ref.timestamp for ref in refs)),
        session_ids=_unique([*report.session_ids, *(ref.session_id for ref in refs)]),
        worker_ids=_unique([*report.worker_ids, *(ref.worker_id for ref in refs)]),
    )


def _unique(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


def _span(window: timedelta) -> str:
    seconds = window.total_seconds()
    return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g}s"


def _fact(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _md(text: str) -> str:
    """Text safe in one Markdown table cell or list item (pipes and newlines escaped)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")
