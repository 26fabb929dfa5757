"""The ``report`` command: where the money, tokens and failures went, from a sink's file.

Point it at a database written by :class:`~techrevati.runtime.sinks.SqliteSink`
or a file written by :class:`~techrevati.runtime.sinks.JsonlSink` (told apart
by the SQLite header) and it prints cost by project, role, model, service
tier and day, tokens by kind, failures by class, and the slowest and most expensive
sessions, as aligned plain-text tables, as one JSON object with costs as
exact decimal strings (``--format json``), or as CSV (``--format csv``).
Malformed rows are skipped and counted (``--strict`` refuses them instead),
and every figure and text prints in bounded space, control characters
escaped. :func:`build_report` returns the same figures as a :class:`Report`
value for use from Python.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Context, Decimal
from pathlib import Path
from typing import Final, Literal, TextIO, cast

from techrevati.runtime._report_rows import (
    Malformed,
    Record,
    read_jsonl_rows,
    read_sqlite_rows,
)
from techrevati.runtime._sessions import fold_session, is_session_event
from techrevati.runtime._validate import int_at_least
from techrevati.runtime.errors import InvalidValueError, ReportInputError, TechrevatiError
from techrevati.runtime.events import AgentEvent, EventName, UsageRecord
from techrevati.runtime.sinks import SessionRow, SqliteReader

__all__ = [
    "DEFAULT_TOP",
    "CostLine",
    "FailureLine",
    "Report",
    "ReportInputError",
    "SkippedRows",
    "build_report",
    "main",
]

DEFAULT_TOP: Final = 5
"""How many sessions the slowest and most expensive tables list."""

_DEFAULT_TIER: Final = "default"
"""The service tier of a turn whose tier was not reported (billed at the default rates)."""

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
_FORMATS: Final = ("text", "json", "csv")
_MAX_CELL: Final = 80
"""Text cells longer than this are cut to 77 characters and ``...`` (JSON and CSV keep them)."""
_MAX_REASON_CELL: Final = 200
# What a terminal or a spreadsheet would act on: C0 and C1 controls, DEL, the
# line and paragraph separators, bidirectional overrides, and lone surrogates.
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_FORMULA_START: Final = frozenset("=+-@")
_SUM: Final = Context(prec=60, rounding=ROUND_HALF_EVEN)
"""Sums of costs (each below 1e15, on the 1e-15 grid) stay exact here, whatever the context."""


@dataclass(frozen=True, slots=True)
class CostLine:
    """Turns and exact cost of one project, role, model, service tier or day."""

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
class SkippedRows:
    """The malformed rows of one SQLite table or one JSONL kind, and the first one's reason.

    ``source`` is the table (``events``, ``usage``, ``sessions``) or the
    line's kind (``event``, ``usage``, or ``other`` for a line that is not
    JSON, not an object, or of no known kind); ``first_row`` is the first
    bad row's rowid, or its line number in a JSONL file.
    """

    source: str
    rows: int
    first_row: int
    first_reason: str


@dataclass(frozen=True, slots=True)
class Report:
    """Every figure the report command prints.

    ``cost_by_tier`` groups turns by the service tier that served them
    (``"default"`` also holds the turns whose tier was not reported).
    """

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
    skipped: tuple[SkippedRows, ...] = ()
    cost_by_tier: tuple[CostLine, ...] = ()

    @property
    def skipped_rows(self) -> int:
        """How many rows or lines were malformed and left out of every figure."""
        return sum(line.rows for line in self.skipped)

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
            "cost_by_tier": _cost_dicts("service_tier", self.cost_by_tier),
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
            "skipped": [
                {
                    "source": line.source,
                    "rows": line.rows,
                    "first_row": line.first_row,
                    "first_reason": line.first_reason,
                }
                for line in self.skipped
            ],
        }

    def to_text(self) -> str:
        """Return the human form: a heading line, totals, then aligned tables."""
        window = _window_text(self.since, self.until)
        unpriced = f" ({self.unpriced_turns} unpriced)" if self.unpriced_turns else ""
        parts = [
            f"Report for {_escaped(self.source)} ({self.format}), {window}",
            f"sessions {self.sessions}  turns {self.turns}{unpriced}  "
            f"events {self.events}  cost_usd {_money(self.cost_usd)}",
        ]
        if self.skipped:
            parts.append(
                _section(
                    f"Skipped rows (malformed: {self.skipped_rows})",
                    ["source", "rows", "first_row", "first_reason"],
                    [
                        [
                            line.source,
                            str(line.rows),
                            str(line.first_row),
                            _cell(line.first_reason, _MAX_REASON_CELL),
                        ]
                        for line in self.skipped
                    ],
                    numeric={1, 2},
                )
            )
        for title, column, lines in (
            ("Cost by project", "project", self.cost_by_project),
            ("Cost by role", "role", self.cost_by_role),
            ("Cost by model", "model", self.cost_by_model),
            ("Cost by service tier", "service_tier", self.cost_by_tier),
            ("Cost by day (UTC)", "day", self.cost_by_day),
        ):
            rows = [
                [_cell(_key_text(line.key)), str(line.turns), _money(line.cost_usd)]
                for line in lines
            ]
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

    def to_csv(self) -> str:
        """Return the spreadsheet form: the JSON form's sections as CSV, one block each.

        Each block is a header row (``section`` and the JSON field names), then
        one row per line, its first cell the section's name; a blank row
        separates blocks. Text cells have control characters escaped, and a
        cell starting with ``=``, ``+``, ``-`` or ``@`` is prefixed with ``'``
        so that no spreadsheet runs it as a formula. ``None`` is an empty cell.
        """
        data = self.to_dict()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        for index, (section, headers, rows) in enumerate(_csv_blocks(data)):
            if index:
                writer.writerow([])
            writer.writerow(["section", *headers])
            writer.writerows([section, *map(_csv_cell, row)] for row in rows)
        return buffer.getvalue()


def build_report(
    path: str | os.PathLike[str],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    top: int = DEFAULT_TOP,
    strict: bool = False,
) -> Report:
    """Read ``path`` (SQLite or JSONL, told apart by the header) and compute the figures.

    ``since`` is inclusive and ``until`` exclusive; both must be aware. A
    malformed row or line is left out of every figure and counted in
    :attr:`Report.skipped` (over the whole file, whatever the window); with
    ``strict=True`` the first one raises :class:`ReportInputError` naming its
    table and rowid, or its line number, and why. Reads one row at a time.
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
    tally = _Tally(since, until, top)
    if head == _SQLITE_HEADER:
        with SqliteReader(source):
            pass  # the schema check, with the sinks' own messages
        with closing(read_sqlite_rows(source)) as rows:
            for row in _good_rows(rows, source, "sqlite", strict, tally):
                tally.add(row)
        return tally.report(str(source), "sqlite")
    if head and not head.lstrip().startswith(b"{"):
        raise ReportInputError(f"{source} is neither a SQLite database nor a JSONL sink file")
    sessions: dict[str, SessionRow] = {}
    with closing(read_jsonl_rows(source)) as lines:
        for record in _good_rows(lines, source, "jsonl", strict, tally):
            if isinstance(record, AgentEvent) and is_session_event(record):
                sessions[record.session_id] = fold_session(sessions.get(record.session_id), record)
            tally.add(record)
    if tally.unrecognised is not None:
        raise ReportInputError(
            f"{source} is neither a SQLite database nor a JSONL sink file "
            f"({_where(source, 'jsonl', tally.unrecognised)}: {tally.unrecognised.reason})"
        )
    for session in sessions.values():
        tally.add_session(session)
    return tally.report(str(source), "jsonl")


def main(argv: Sequence[str]) -> int:
    """Run ``report PATH [--format F | --json] [--since W] [--until W] [--top N] [--strict]``.

    ``--audit AUDIT_DB`` (``--audit-key-file F``) also checks an audit chain
    and shows its status: a line in text, the ``audit`` key in JSON; a broken
    chain exits 2 after the report.

    Prints the report on stdout and returns 0 (a note on stderr when rows
    were skipped); for a missing or unreadable file, a file that is not
    ours, or a malformed row under ``--strict``, prints one line on stderr
    and returns 2 (as for bad arguments).
    """
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description="Summarise cost, tokens, failures and sessions from a sink's file.",
    )
    parser.add_argument("path", help="a SqliteSink database or a JsonlSink file")
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument(
        "--format", choices=_FORMATS, default="text", help="text (default), json or csv"
    )
    shape.add_argument("--json", action="store_true", help="the same as --format json")
    parser.add_argument(
        "--since", type=_parse_when, help="ISO date or datetime (inclusive; naive means UTC)"
    )
    parser.add_argument(
        "--until", type=_parse_when, help="ISO date or datetime (exclusive; naive means UTC)"
    )
    parser.add_argument(
        "--top", type=int, default=DEFAULT_TOP, help="sessions per table (default 5)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 2 at the first malformed row, naming it"
    )
    parser.add_argument(
        "--audit",
        metavar="AUDIT_DB",
        help="also check an AuditSink file's hash chain and show its status (exit 2 if broken)",
    )
    parser.add_argument("--audit-key-file", metavar="FILE", help="the audit chain's HMAC key")
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        report = build_report(
            args.path, since=args.since, until=args.until, top=args.top, strict=args.strict
        )
        chain = None if args.audit is None else _chain_status(args.audit, args.audit_key_file)
    except FileNotFoundError as exc:
        return _fail(f"no such file: {exc.filename or args.path}")
    except (TechrevatiError, OSError, sqlite3.Error) as exc:
        return _fail(str(exc))
    shape_name = "json" if args.json else args.format
    if shape_name == "json":
        data = report.to_dict()
        if chain is not None:
            data["audit"] = chain
        _write(sys.stdout, json.dumps(data, indent=2) + "\n")
    elif shape_name == "csv":
        _write(sys.stdout, report.to_csv())
    else:
        _write(sys.stdout, report.to_text())
        if chain is not None:
            _write(sys.stdout, f"\naudit chain ({chain['path']}): {chain['summary']}\n")
    if chain is not None and not chain["ok"]:
        print(f"report: the audit chain is broken: {chain['summary']}", file=sys.stderr)
        return 2
    if report.skipped:
        counts = ", ".join(f"{line.source} {line.rows}" for line in report.skipped)
        print(
            f"report: skipped {report.skipped_rows} malformed rows ({counts}); "
            "--strict refuses them",
            file=sys.stderr,
        )
    return 0


def _chain_status(path: str, key_file: str | None) -> dict[str, object]:
    """Return the audit chain's status (``audit.chain_status``); audit is imported here."""
    from techrevati.runtime.audit import chain_status, read_key_file  # noqa: PLC0415

    if not Path(path).exists():
        raise FileNotFoundError(2, "no such file", path)
    key = None if key_file is None else read_key_file(key_file)
    return chain_status(path, key=key)


def _fail(message: str) -> int:
    print(f"report: {_escaped(message)}", file=sys.stderr)
    return 2


def _write(stream: TextIO, text: str) -> None:
    """Write ``text``; on a stream that cannot encode some character, write it as an escape."""
    try:
        stream.write(text)
    except UnicodeEncodeError:
        encoding = getattr(stream, "encoding", None) or "ascii"
        stream.write(text.encode(encoding, "backslashreplace").decode(encoding))


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


def _good_rows(
    rows: Iterable[Record | Malformed],
    path: Path,
    kind: Literal["sqlite", "jsonl"],
    strict: bool,
    tally: _Tally,
) -> Iterator[Record]:
    """Pass the records through; count each malformed row, or raise at the first when strict."""
    for row in rows:
        if not isinstance(row, Malformed):
            yield row
        elif strict:
            raise ReportInputError(f"{_where(path, kind, row)}: {row.reason}")
        else:
            tally.skip(row)


def _where(path: Path, kind: Literal["sqlite", "jsonl"], row: Malformed) -> str:
    """``runs.db: usage row 7`` or ``agent.jsonl:7`` (the form of the sinks' reader errors)."""
    if kind == "jsonl":
        return f"{path}:{row.row}"
    return f"{path}: {row.source} row {row.row}"


class _Tally:
    """The figures so far, one record at a time: only the groups and the sessions are kept."""

    def __init__(self, since: datetime | None, until: datetime | None, top: int) -> None:
        self.since, self.until, self.top = since, until, top
        self.events = 0
        self.total = Decimal(0)
        self.tokens = dict.fromkeys(_TOKEN_KINDS, 0)
        self.unpriced = 0
        self.turns = 0
        self.groups: tuple[_Groups, ...] = tuple(_Groups() for _ in range(5))
        self.failures: dict[str, dict[str, int]] = {}
        self.sessions: list[SessionRow] = []
        self.skipped: dict[str, tuple[int, Malformed]] = {}
        self.recognised = False
        self.unrecognised: Malformed | None = None

    def add(self, record: Record) -> None:
        """Count an event, a usage record or a session row, if it falls in the window."""
        self.recognised = True
        self.unrecognised = None
        if isinstance(record, SessionRow):
            self.add_session(record)
            return
        if not _within(record.timestamp, self.since, self.until):
            return
        if isinstance(record, UsageRecord):
            self._add_usage(record)
            return
        self.events += 1
        if record.failure_class is None or record.name in _NOT_A_FAILURE:
            return
        counts = self.failures.setdefault(
            record.failure_class.value, {"turns": 0, "tools": 0, "sessions": 0, "other": 0}
        )
        counts[_FAILURE_COLUMN.get(record.name, "other")] += 1

    def add_session(self, row: SessionRow) -> None:
        """Keep a session row, if it started (or, never started, ended) in the window."""
        if _within(row.started_at or row.ended_at, self.since, self.until):
            self.sessions.append(row)

    def skip(self, row: Malformed) -> None:
        """Count a malformed row under its table or kind; the first one's reason is kept."""
        count, first = self.skipped.get(row.source, (0, row))
        self.skipped[row.source] = (count + 1, first)
        if row.source == "other":
            if not self.recognised and self.unrecognised is None:
                self.unrecognised = row
        else:
            self.recognised = True
            self.unrecognised = None

    def report(self, source: str, kind: Literal["sqlite", "jsonl"]) -> Report:
        """Return the figures as a :class:`Report`."""
        failure_lines = sorted(
            (FailureLine(failure_class=name, **counts) for name, counts in self.failures.items()),
            key=lambda line: (-line.total, line.failure_class),
        )
        timed = [row for row in self.sessions if row.duration_seconds is not None]
        costed = [row for row in self.sessions if row.cost_usd is not None]
        by_project, by_role, by_model, by_tier, by_day = (groups.lines() for groups in self.groups)
        return Report(
            source=source,
            format=kind,
            since=self.since,
            until=self.until,
            sessions=len(self.sessions),
            turns=self.turns,
            unpriced_turns=self.unpriced,
            events=self.events,
            cost_usd=self.total,
            cost_by_project=by_project,
            cost_by_role=by_role,
            cost_by_model=by_model,
            cost_by_day=tuple(sorted(by_day, key=lambda line: str(line.key))),
            cost_by_tier=by_tier,
            tokens=(
                *self.tokens.items(),
                ("total_tokens", self.tokens["input_tokens"] + self.tokens["output_tokens"]),
            ),
            failures=tuple(failure_lines),
            slowest_sessions=tuple(
                sorted(timed, key=lambda row: (-(row.duration_seconds or 0.0), row.session_id))[
                    : self.top
                ]
            ),
            most_expensive_sessions=tuple(
                sorted(costed, key=lambda row: (_SUM.minus(row.cost_usd or 0), row.session_id))[
                    : self.top
                ]
            ),
            top=self.top,
            skipped=tuple(
                SkippedRows(source, count, first.row, first.reason)
                for source, (count, first) in sorted(self.skipped.items())
            ),
        )

    def _add_usage(self, record: UsageRecord) -> None:
        self.turns += 1
        self.unpriced += not record.priced
        self.total = _SUM.add(self.total, record.cost_usd)
        for token_kind in _TOKEN_KINDS:
            self.tokens[token_kind] += getattr(record, token_kind)
        day = record.timestamp.astimezone(UTC).date().isoformat()
        tier = record.service_tier or _DEFAULT_TIER
        keys = (record.project_id, record.role, record.model, tier, day)
        for groups, key in zip(self.groups, keys, strict=True):
            groups.add(key, record.cost_usd)


class _Groups:
    """Turns and cost per key, in the order keys first appear."""

    __slots__ = ("turns",)

    def __init__(self) -> None:
        self.turns: dict[str | int | None, tuple[int, Decimal]] = {}

    def add(self, key: str | int | None, cost: Decimal) -> None:
        turns, total = self.turns.get(key, (0, Decimal(0)))
        self.turns[key] = (turns + 1, _SUM.add(total, cost))

    def lines(self) -> tuple[CostLine, ...]:
        """Most expensive first, then most turns, then by key."""
        lines = [
            CostLine(key=key, turns=turns, cost_usd=cost)
            for key, (turns, cost) in self.turns.items()
        ]
        lines.sort(key=lambda line: (_SUM.minus(line.cost_usd), -line.turns, _key_text(line.key)))
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
        _cell(row.session_id),
        row.status.value,
        _cell(_key_text(row.role)),
        _cell(_key_text(row.project_id)),
        "-" if row.duration_seconds is None else f"{row.duration_seconds:.3f}",
        "-" if row.cost_usd is None else _money(row.cost_usd),
        "-" if row.turns is None else str(row.turns),
    ]


def _escaped(text: str) -> str:
    r"""Return ``text`` with every character a terminal would act on as ``\x1b`` or ``\u202e``."""
    if text.isascii() and text.isprintable():
        return text
    return _UNSAFE.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _cell(text: str, limit: int = _MAX_CELL) -> str:
    """Return ``text`` escaped for a terminal, cut to ``limit`` characters (``...`` at the end)."""
    shown = _escaped(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


_SESSION_FIELDS: Final = (
    "session_id",
    "status",
    "role",
    "project_id",
    "duration_seconds",
    "cost_usd",
    "turns",
)


def _csv_blocks(data: dict[str, object]) -> Iterator[tuple[str, list[str], list[list[object]]]]:
    """Yield each section of the JSON form as its name, its field names and its rows."""
    yield (
        "report",
        ["source", "format", "since", "until"],
        [[data["source"], data["format"], data["since"], data["until"]]],
    )
    totals = _mapping(data["totals"])
    yield "totals", list(totals), [list(totals.values())]
    for section, key in (
        ("cost_by_project", "project_id"),
        ("cost_by_role", "role"),
        ("cost_by_model", "model"),
        ("cost_by_tier", "service_tier"),
        ("cost_by_day", "day"),
    ):
        fields = (key, "turns", "cost_usd")
        yield section, list(fields), _columns(data[section], fields)
    tokens = _mapping(data["tokens"])
    yield "tokens", ["kind", "tokens"], [[kind, count] for kind, count in tokens.items()]
    failure_fields = ("failure_class", "turns", "tools", "sessions", "other")
    yield "failures", list(failure_fields), _columns(data["failures"], failure_fields)
    for section in ("slowest_sessions", "most_expensive_sessions"):
        yield section, list(_SESSION_FIELDS), _columns(data[section], _SESSION_FIELDS)
    skipped_fields = ("source", "rows", "first_row", "first_reason")
    yield "skipped", list(skipped_fields), _columns(data["skipped"], skipped_fields)


def _mapping(value: object) -> dict[str, object]:
    return cast("dict[str, object]", value)


def _columns(lines: object, fields: Sequence[str]) -> list[list[object]]:
    return [[_mapping(line)[field] for field in fields] for line in cast("list[object]", lines)]


def _csv_cell(value: object) -> str:
    """Return one CSV cell: text escaped, and guarded against being read as a formula."""
    if value is None:
        return ""
    text = _escaped(value if isinstance(value, str) else str(value))
    if text.lstrip()[:1] in _FORMULA_START:
        return "'" + text
    return text


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
