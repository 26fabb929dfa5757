"""The ``report`` command: where the money, tokens and failures went, from a sink's file.

Point it at a database written by :class:`~techrevati.runtime.sinks.SqliteSink`
or a file written by :class:`~techrevati.runtime.sinks.JsonlSink` (told apart
by the SQLite header) and it prints cost by project, role, model and day,
tokens by kind, failures by class, and the slowest and most expensive
sessions, as aligned plain-text tables or, with ``--json``, as one JSON object
with costs as exact decimal strings. :func:`build_report` returns the same
figures as a :class:`Report` value for use from Python.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Final, Literal

from techrevati.runtime._validate import int_at_least
from techrevati.runtime.errors import InvalidValueError, ReportInputError, TechrevatiError
from techrevati.runtime.events import AgentEvent, EventName, UsageRecord
from techrevati.runtime.sinks import (
    CorruptRecordError,
    SessionRow,
    SqliteReader,
    read_jsonl,
    sessions_from_events,
)

__all__ = [
    "DEFAULT_TOP",
    "CostLine",
    "FailureLine",
    "Report",
    "ReportInputError",
    "build_report",
    "main",
]

DEFAULT_TOP: Final = 5
"""How many sessions the slowest and most expensive tables list."""

_SQLITE_HEADER: Final = b"SQLite format 3\x00"
_PROG: Final = "python -m techrevati.runtime report"
_TOKEN_KINDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cache_write_1h_tokens",
    "reasoning_tokens",
)
_FAILURE_COLUMN: Final = {
    EventName.TURN_FAILED.value: "turns",
    EventName.BREAKER_REJECTED.value: "turns",
    EventName.TOOL_FAILED.value: "tools",
    EventName.TOOL_DENIED.value: "tools",
    EventName.SESSION_FAILED.value: "sessions",
    EventName.SESSION_CANCELLED.value: "sessions",
}
# A retry always follows a failed turn that is already counted.
_NOT_A_FAILURE: Final = frozenset({EventName.TURN_RETRIED.value})


@dataclass(frozen=True, slots=True)
class CostLine:
    """Turns and exact cost of one project, role, model or day."""

    key: str | int | None
    turns: int
    cost_usd: Decimal


@dataclass(frozen=True, slots=True)
class FailureLine:
    """How often one failure class ended a turn, a tool call, a session, or something else."""

    failure_class: str
    turns: int = 0
    tools: int = 0
    sessions: int = 0
    other: int = 0

    @property
    def total(self) -> int:
        """All four counts together (a failed session usually also counts its failed turn)."""
        return self.turns + self.tools + self.sessions + self.other


@dataclass(frozen=True, slots=True)
class Report:
    """Every figure the report command prints."""

    source: str
    format: Literal["sqlite", "jsonl"]
    since: datetime | None
    until: datetime | None
    sessions: int
    turns: int
    unpriced_turns: int
    events: int
    cost_usd: Decimal
    cost_by_project: tuple[CostLine, ...]
    cost_by_role: tuple[CostLine, ...]
    cost_by_model: tuple[CostLine, ...]
    cost_by_day: tuple[CostLine, ...]
    tokens: tuple[tuple[str, int], ...]
    failures: tuple[FailureLine, ...]
    slowest_sessions: tuple[SessionRow, ...]
    most_expensive_sessions: tuple[SessionRow, ...]
    top: int = DEFAULT_TOP

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form: costs as exact decimal strings, times as ISO 8601."""
        return {
            "source": self.source,
            "format": self.format,
            "since": None if self.since is None else self.since.isoformat(),
            "until": None if self.until is None else self.until.isoformat(),
            "totals": {
                "sessions": self.sessions,
                "turns": self.turns,
                "unpriced_turns": self.unpriced_turns,
                "events": self.events,
                "cost_usd": _money(self.cost_usd),
            },
            "cost_by_project": _cost_dicts("project_id", self.cost_by_project),
            "cost_by_role": _cost_dicts("role", self.cost_by_role),
            "cost_by_model": _cost_dicts("model", self.cost_by_model),
            "cost_by_day": _cost_dicts("day", self.cost_by_day),
            "tokens": dict(self.tokens),
            "failures": [
                {
                    "failure_class": line.failure_class,
                    "turns": line.turns,
                    "tools": line.tools,
                    "sessions": line.sessions,
                    "other": line.other,
                }
                for line in self.failures
            ],
            "slowest_sessions": [row.to_dict() for row in self.slowest_sessions],
            "most_expensive_sessions": [row.to_dict() for row in self.most_expensive_sessions],
        }

    def to_text(self) -> str:
        """Return the human form: a heading line, totals, then aligned tables."""
        window = _window_text(self.since, self.until)
        unpriced = f" ({self.unpriced_turns} unpriced)" if self.unpriced_turns else ""
        parts = [
            f"Report for {self.source} ({self.format}), {window}",
            f"sessions {self.sessions}  turns {self.turns}{unpriced}  "
            f"events {self.events}  cost_usd {_money(self.cost_usd)}",
        ]
        for title, column, lines in (
            ("Cost by project", "project", self.cost_by_project),
            ("Cost by role", "role", self.cost_by_role),
            ("Cost by model", "model", self.cost_by_model),
            ("Cost by day (UTC)", "day", self.cost_by_day),
        ):
            rows = [[_key_text(line.key), str(line.turns), _money(line.cost_usd)] for line in lines]
            parts.append(_section(title, [column, "turns", "cost_usd"], rows, numeric={1, 2}))
        parts.append(
            _section(
                "Tokens by kind",
                ["kind", "tokens"],
                [[kind, str(count)] for kind, count in self.tokens],
                numeric={1},
            )
        )
        parts.append(
            _section(
                "Failures by class",
                ["failure_class", "turns", "tools", "sessions", "other"],
                [
                    [f.failure_class, str(f.turns), str(f.tools), str(f.sessions), str(f.other)]
                    for f in self.failures
                ],
                numeric={1, 2, 3, 4},
            )
        )
        headers = ["session_id", "status", "role", "project", "duration_s", "cost_usd", "turns"]
        for title, sessions in (
            (f"Slowest sessions (top {self.top})", self.slowest_sessions),
            (f"Most expensive sessions (top {self.top})", self.most_expensive_sessions),
        ):
            rows = [_session_cells(row) for row in sessions]
            parts.append(_section(title, headers, rows, numeric={4, 5, 6}))
        return "\n\n".join(parts) + "\n"


def build_report(
    path: str | os.PathLike[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    top: int = DEFAULT_TOP,
) -> Report:
    """Read ``path`` (SQLite or JSONL, told apart by the header) and compute the figures.

    ``since`` is inclusive and ``until`` exclusive; both must be aware.
    Raises ``FileNotFoundError`` for a missing file, :class:`ReportInputError`
    for a file that is not ours, and :class:`~techrevati.runtime.sinks.SchemaError`
    for a SQLite file without our schema.
    """
    for label, value in (("since", since), ("until", until)):
        if value is not None and (not isinstance(value, datetime) or value.tzinfo is None):
            raise InvalidValueError(f"{label} must be an aware datetime, got {value!r}")
    int_at_least("top", top, 1)
    source = Path(path)
    if not source.exists():
        raise FileNotFoundError(2, "no such file", str(source))
    if not source.is_file():
        raise ReportInputError(f"{source} is not a file")
    with open(source, "rb") as handle:
        head = handle.read(len(_SQLITE_HEADER))
    if head == _SQLITE_HEADER:
        with SqliteReader(source) as reader:
            events = reader.read_events(since=since, until=until)
            usage = reader.read_usage(since=since, until=until)
            sessions = reader.read_sessions(since=since, until=until)
        return _compute(
            str(source),
            "sqlite",
            since,
            until,
            events=events,
            usage=usage,
            sessions=sessions,
            top=top,
        )
    if head and not head.lstrip().startswith(b"{"):
        raise ReportInputError(f"{source} is neither a SQLite database nor a JSONL sink file")
    try:
        records = read_jsonl(source)
    except CorruptRecordError as exc:
        raise ReportInputError(
            f"{source} is neither a SQLite database nor a JSONL sink file ({exc})"
        ) from exc
    all_events = [r for r in records if isinstance(r, AgentEvent)]
    return _compute(
        str(source),
        "jsonl",
        since,
        until,
        events=[e for e in all_events if _within(e.timestamp, since, until)],
        usage=[
            r for r in records if isinstance(r, UsageRecord) and _within(r.timestamp, since, until)
        ],
        sessions=[
            row
            for row in sessions_from_events(all_events)
            if _within(row.started_at or row.ended_at, since, until)
        ],
        top=top,
    )


def main(argv: Sequence[str]) -> int:
    """Run ``report PATH [--json] [--since WHEN] [--until WHEN] [--top N]``; return the exit code.

    Prints the report on stdout and returns 0; for a missing or unreadable
    file, prints one line on stderr and returns 2 (as for bad arguments).
    """
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Summarise cost, tokens, failures and sessions from a sink's file.",
    )
    parser.add_argument("path", help="a SqliteSink database or a JsonlSink file")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--since", type=_parse_when, help="ISO date or datetime (inclusive; naive means UTC)"
    )
    parser.add_argument(
        "--until", type=_parse_when, help="ISO date or datetime (exclusive; naive means UTC)"
    )
    parser.add_argument(
        "--top", type=int, default=DEFAULT_TOP, help="sessions per table (default 5)"
    )
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        report = build_report(args.path, since=args.since, until=args.until, top=args.top)
    except FileNotFoundError:
        return _fail(f"no such file: {args.path}")
    except (TechrevatiError, OSError, sqlite3.Error) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.to_text(), end="")
    return 0


def _fail(message: str) -> int:
    print(f"report: {message}", file=sys.stderr)
    return 2


def _parse_when(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO date or datetime such as 2026-01-01, got {text!r}"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _within(when: datetime | None, since: datetime | None, until: datetime | None) -> bool:
    if when is None:
        return since is None and until is None
    return (since is None or when >= since) and (until is None or when < until)


def _compute(
    source: str,
    kind: Literal["sqlite", "jsonl"],
    since: datetime | None,
    until: datetime | None,
    *,
    events: Sequence[AgentEvent],
    usage: Sequence[UsageRecord],
    sessions: Sequence[SessionRow],
    top: int,
) -> Report:
    total = Decimal(0)
    tokens = dict.fromkeys(_TOKEN_KINDS, 0)
    for record in usage:
        total += record.cost_usd
        for token_kind in _TOKEN_KINDS:
            tokens[token_kind] += getattr(record, token_kind)
    total_tokens = tokens["input_tokens"] + tokens["output_tokens"]
    failures: dict[str, dict[str, int]] = {}
    for event in events:
        if event.failure_class is None or event.name in _NOT_A_FAILURE:
            continue
        counts = failures.setdefault(
            event.failure_class.value, {"turns": 0, "tools": 0, "sessions": 0, "other": 0}
        )
        counts[_FAILURE_COLUMN.get(event.name, "other")] += 1
    failure_lines = sorted(
        (FailureLine(failure_class=name, **counts) for name, counts in failures.items()),
        key=lambda line: (-line.total, line.failure_class),
    )
    timed = [row for row in sessions if row.duration_seconds is not None]
    costed = [row for row in sessions if row.cost_usd is not None]
    return Report(
        source=source,
        format=kind,
        since=since,
        until=until,
        sessions=len(sessions),
        turns=len(usage),
        unpriced_turns=sum(1 for record in usage if not record.priced),
        events=len(events),
        cost_usd=total,
        cost_by_project=_by(usage, lambda r: r.project_id),
        cost_by_role=_by(usage, lambda r: r.role),
        cost_by_model=_by(usage, lambda r: r.model),
        cost_by_day=tuple(
            sorted(
                _by(usage, lambda r: r.timestamp.astimezone(UTC).date().isoformat()),
                key=lambda line: str(line.key),
            )
        ),
        tokens=(
            *tokens.items(),
            ("total_tokens", total_tokens),
        ),
        failures=tuple(failure_lines),
        slowest_sessions=tuple(
            sorted(timed, key=lambda row: (-(row.duration_seconds or 0.0), row.session_id))[:top]
        ),
        most_expensive_sessions=tuple(
            sorted(costed, key=lambda row: (-(row.cost_usd or 0), row.session_id))[:top]
        ),
        top=top,
    )


def _by(
    usage: Iterable[UsageRecord], key: Callable[[UsageRecord], str | int | None]
) -> tuple[CostLine, ...]:
    """Group by ``key``: most expensive first, then most turns, then by key."""
    turns: dict[str | int | None, int] = {}
    costs: dict[str | int | None, Decimal] = {}
    for record in usage:
        value = key(record)
        turns[value] = turns.get(value, 0) + 1
        costs[value] = costs.get(value, Decimal(0)) + record.cost_usd
    lines = [CostLine(key=value, turns=turns[value], cost_usd=costs[value]) for value in turns]
    lines.sort(key=lambda line: (-line.cost_usd, -line.turns, _key_text(line.key)))
    return tuple(lines)


def _money(value: Decimal) -> str:
    return format(value, "f")


def _key_text(key: object) -> str:
    return "-" if key is None or key == "" else str(key)


def _cost_dicts(name: str, lines: Iterable[CostLine]) -> list[dict[str, object]]:
    return [
        {name: line.key, "turns": line.turns, "cost_usd": _money(line.cost_usd)} for line in lines
    ]


def _window_text(since: datetime | None, until: datetime | None) -> str:
    if since is None and until is None:
        return "all time"
    parts = []
    if since is not None:
        parts.append(f"since {since.isoformat()}")
    if until is not None:
        parts.append(f"until {until.isoformat()}")
    return " ".join(parts)


def _session_cells(row: SessionRow) -> list[str]:
    return [
        row.session_id,
        row.status.value,
        _key_text(row.role),
        _key_text(row.project_id),
        "-" if row.duration_seconds is None else f"{row.duration_seconds:.3f}",
        "-" if row.cost_usd is None else _money(row.cost_usd),
        "-" if row.turns is None else str(row.turns),
    ]


def _section(title: str, headers: list[str], rows: list[list[str]], *, numeric: set[int]) -> str:
    """Format ``title`` and an aligned table (numbers right, text left), or ``(none)``."""
    if not rows:
        return f"{title}\n(none)"
    widths = [max(len(cells[i]) for cells in (headers, *rows)) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if i in numeric else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([title, line(headers), rule, *(line(cells) for cells in rows)])
