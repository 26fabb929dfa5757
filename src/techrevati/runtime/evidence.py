"""Evidence that checks ran, and a gate that passes a quality level only on fresh, passing evidence.

Reach for :class:`EvidenceGate` when "good enough" must be shown, not judged:
each :class:`~techrevati.runtime.quality_gate.QualityLevel` needs named checks
to have passed against the revision under review, after its last change
(by default STANDARD needs ``tests.targeted``; STRICT adds ``tests.package``
and ``lint``; RELEASE adds ``tests.full``, ``review.approved`` and
``changelog.updated``). Record what ran as :class:`Evidence` (in an
:class:`EvidenceLog` when several threads report), and
:meth:`EvidenceGate.evaluate` says which requirements are missing, stale or
failed. It denies first: only a fresh passing record counts, and anything
malformed raises :class:`~techrevati.runtime.errors.InvalidValueError` naming
the bad value. :class:`EvidenceSatisfied` is the same gate as a policy-engine
condition, reading the evidence from ``PhaseContext.extra``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TypeAlias

from techrevati.runtime._clock import WallClock, utc_now
from techrevati.runtime._phase_context import FrozenMap, PhaseContext, parse_level
from techrevati.runtime._validate import required_callable, strict_bool
from techrevati.runtime.conditions import _Fact
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.quality_gate import QualityLevel

__all__ = [
    "CHANGED_AT_KEY",
    "DEFAULT_REQUIREMENTS",
    "EVIDENCE_KEY",
    "MAX_REQUIREMENT_LENGTH",
    "REVISION_KEY",
    "Evidence",
    "EvidenceGate",
    "EvidenceLog",
    "EvidenceOutcome",
    "EvidenceRequirements",
    "EvidenceSatisfied",
    "LevelNames",
]

MAX_REQUIREMENT_LENGTH: Final = 128
"""The longest requirement name accepted."""

EVIDENCE_KEY: Final = "evidence"
"""The ``PhaseContext.extra`` key :class:`EvidenceSatisfied` reads the records from."""
REVISION_KEY: Final = "revision"
"""The ``PhaseContext.extra`` key holding the revision under review."""
CHANGED_AT_KEY: Final = "changed_at"
"""The ``PhaseContext.extra`` key holding the time of the last change (optional)."""

LevelNames: TypeAlias = (
    Mapping[QualityLevel, Iterable[str]] | Mapping[str, Iterable[str]] | Mapping[int, Iterable[str]]
)
"""Requirement names by level: the level as a member, its name or its number."""

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_EVIDENCE_FIELDS: Final = frozenset(
    {"requirement", "passed", "exit_code", "ran_at", "revision", "command", "detail"}
)


def _requirement_name(value: object, name: str = "requirement") -> str:
    """Return ``value`` if it is a requirement name: letters, digits, ``_``, ``-``, ``.``.

    It must start with a letter or digit and be at most
    :data:`MAX_REQUIREMENT_LENGTH` characters (``tests.targeted``, ``lint``).
    """
    if (
        not isinstance(value, str)
        or len(value) > MAX_REQUIREMENT_LENGTH
        or _NAME.fullmatch(value) is None
    ):
        raise InvalidValueError(
            f"{name} must be a name of letters, digits, '_', '-' and '.' starting with a"
            f" letter or digit (at most {MAX_REQUIREMENT_LENGTH} characters), got {value!r}"
        )
    return value


@dataclass(frozen=True, slots=True, init=False)
class Evidence:
    """One record of a check that ran: which requirement, its result, when, against what.

    Give ``exit_code`` (``passed`` is then ``exit_code == 0``), ``passed``, or
    both when they agree (``passed=True`` with ``exit_code=1`` is refused).
    ``ran_at`` must be timezone-aware and is stored in UTC; ``revision`` is the
    revision the check ran against (a non-empty str without surrounding
    whitespace, compared exactly). ``command`` and ``detail`` are free text.
    """

    requirement: str
    passed: bool
    exit_code: int | None
    ran_at: datetime
    revision: str
    command: str | None
    detail: str | None

    def __init__(
        self,
        requirement: str,
        *,
        passed: bool | None = None,
        exit_code: int | None = None,
        ran_at: datetime,
        revision: str,
        command: str | None = None,
        detail: str | None = None,
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "requirement", _requirement_name(requirement))
        setattr_(self, "passed", _result(requirement, passed, exit_code))
        setattr_(self, "exit_code", exit_code)
        setattr_(self, "ran_at", _aware("ran_at", ran_at))
        setattr_(self, "revision", _revision("revision", revision))
        setattr_(self, "command", _str_or_none("command", command))
        setattr_(self, "detail", _str_or_none("detail", detail))

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (``ran_at`` as ISO 8601 in UTC)."""
        return {
            "requirement": self.requirement,
            "passed": self.passed,
            "exit_code": self.exit_code,
            "ran_at": _iso(self.ran_at),
            "revision": self.revision,
            "command": self.command,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Evidence:
        """Read what :meth:`to_dict` wrote; unknown keys and bad values are refused."""
        if not isinstance(data, Mapping):
            raise InvalidValueError(f"evidence must be a mapping, got {data!r}")
        unknown = sorted(str(key) for key in data if key not in _EVIDENCE_FIELDS)
        if unknown:
            raise InvalidValueError(f"evidence has unknown field(s) {', '.join(unknown)}")
        for key in ("requirement", "ran_at", "revision"):
            if key not in data:
                raise InvalidValueError(f"evidence has no {key!r}: {dict(data)!r}")
        return cls(
            _requirement_name(data["requirement"]),
            passed=_bool_or_none("passed", data.get("passed")),
            exit_code=_int_or_none("exit_code", data.get("exit_code")),
            ran_at=_parse_time("ran_at", data["ran_at"]),
            revision=_revision("revision", data["revision"]),
            command=_str_or_none("command", data.get("command")),
            detail=_str_or_none("detail", data.get("detail")),
        )


@dataclass(frozen=True, slots=True, init=False)
class EvidenceRequirements:
    """The evidence each level needs: the names it adds, plus those of every level below.

    ``added`` maps a level (a member, its name or number) to the requirement
    names it adds; levels not given add none. So the levels are cumulative by
    construction: whatever STANDARD needs, STRICT and RELEASE need too. A name
    may appear once only (at the lowest level that needs it).
    """

    added: Mapping[QualityLevel, tuple[str, ...]]
    _required: Mapping[QualityLevel, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __init__(self, added: LevelNames) -> None:
        own = _added_names(added)
        required: dict[QualityLevel, tuple[str, ...]] = {}
        below: tuple[str, ...] = ()
        for level in QualityLevel:
            below = (*below, *own[level])
            required[level] = below
        object.__setattr__(self, "added", FrozenMap(own))
        object.__setattr__(self, "_required", FrozenMap(required))

    def required(self, level: QualityLevel | str | int) -> tuple[str, ...]:
        """Every name ``level`` needs, lowest level's first."""
        return self._required[parse_level(level, "level")]

    def to_dict(self) -> dict[str, list[str]]:
        """Return ``{level name: [names it adds]}`` for every level."""
        return {level.name: list(names) for level, names in self.added.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> EvidenceRequirements:
        """Read what :meth:`to_dict` wrote (or any mapping of level to names)."""
        if not isinstance(data, Mapping):
            raise InvalidValueError(f"requirements must be a mapping, got {data!r}")
        # Names checked here for the types; the constructor checks the rest.
        added: dict[str, Iterable[str]] = {
            key: _name_list(names, str(key)) for key, names in data.items()
        }
        return cls(added)


@dataclass(frozen=True, slots=True)
class EvidenceOutcome:
    """The verdict of one :meth:`EvidenceGate.evaluate`.

    Every requirement of ``required`` is in exactly one place: fresh passing
    evidence, or ``missing`` (no record at all), ``stale`` (records exist, but
    none against ``revision`` at or after ``changed_at``) or ``failed`` (the
    latest fresh record failed). ``satisfied`` is true exactly when those three
    are empty. ``records`` holds the record that decided each requirement that
    has one: its latest fresh record, else its latest stale one.
    """

    satisfied: bool
    level: QualityLevel
    revision: str
    changed_at: datetime | None
    required: tuple[str, ...]
    missing: tuple[str, ...]
    stale: tuple[str, ...]
    failed: tuple[str, ...]
    records: Mapping[str, Evidence]

    @property
    def reason(self) -> str:
        """Say in words what passed, or every missing, stale and failed requirement."""
        where = f"at revision {self.revision!r}"
        if self.satisfied:
            if not self.required:
                return f"{self.level.name} needs no evidence"
            return f"{self.level.name} satisfied {where}: {', '.join(self.required)} passed"
        parts = []
        if self.missing:
            parts.append(f"missing {', '.join(self.missing)}")
        if self.stale:
            parts.append(f"stale {', '.join(self._why_stale(name) for name in self.stale)}")
        if self.failed:
            parts.append(f"failed {', '.join(self._why_failed(name) for name in self.failed)}")
        return f"{self.level.name} not satisfied {where}: {'; '.join(parts)}"

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (level by name, times as ISO 8601)."""
        return {
            "satisfied": self.satisfied,
            "level": self.level.name,
            "revision": self.revision,
            "changed_at": None if self.changed_at is None else _iso(self.changed_at),
            "required": list(self.required),
            "missing": list(self.missing),
            "stale": list(self.stale),
            "failed": list(self.failed),
            "records": {name: record.to_dict() for name, record in self.records.items()},
            "reason": self.reason,
        }

    def _why_stale(self, name: str) -> str:
        record = self.records[name]
        if record.revision != self.revision:
            return f"{name} (ran against revision {record.revision!r})"
        return f"{name} (ran at {_iso(record.ran_at)}, before the last change)"

    def _why_failed(self, name: str) -> str:
        code = self.records[name].exit_code
        return f"{name} (exit code {code})" if code is not None else name


@dataclass(frozen=True, slots=True, init=False)
class EvidenceGate:
    """Require fresh passing evidence for every requirement of ``level``.

    ``requirements`` defaults to :data:`DEFAULT_REQUIREMENTS`; a mapping is read
    as :class:`EvidenceRequirements` would.
    """

    level: QualityLevel
    requirements: EvidenceRequirements

    def __init__(
        self,
        level: QualityLevel | str | int,
        requirements: EvidenceRequirements | LevelNames | None = None,
    ) -> None:
        object.__setattr__(self, "level", parse_level(level, "level"))
        object.__setattr__(self, "requirements", _requirements(requirements))

    @property
    def required(self) -> tuple[str, ...]:
        """The names this gate needs evidence for."""
        return self.requirements.required(self.level)

    def evaluate(
        self,
        evidence: Iterable[Evidence],
        *,
        revision: str,
        changed_at: datetime | None = None,
    ) -> EvidenceOutcome:
        """Judge ``evidence`` for ``revision``, last changed at ``changed_at``.

        A record counts only if it ran against ``revision`` and, when
        ``changed_at`` is given, not before it; the latest counting record of
        each requirement decides (a tie goes to the one given last). Records
        of names the gate does not need are ignored.
        """
        return self._judge(
            _records(evidence, "evidence"),
            _revision("revision", revision),
            None if changed_at is None else _aware("changed_at", changed_at),
        )

    def _judge(
        self, records: tuple[Evidence, ...], revision: str, changed_at: datetime | None
    ) -> EvidenceOutcome:
        required = self.required
        fresh, stale = _latest(records, frozenset(required), revision, changed_at)
        missing, old, failed = [], [], []
        decided: dict[str, Evidence] = {}
        for name in required:
            if name in fresh:
                decided[name] = fresh[name]
                if not fresh[name].passed:
                    failed.append(name)
            elif name in stale:
                decided[name] = stale[name]
                old.append(name)
            else:
                missing.append(name)
        return EvidenceOutcome(
            satisfied=not (missing or old or failed),
            level=self.level,
            revision=revision,
            changed_at=changed_at,
            required=required,
            missing=tuple(missing),
            stale=tuple(old),
            failed=tuple(failed),
            records=FrozenMap(decided),
        )


class EvidenceLog:
    """Evidence as it is reported, in order; safe to share between threads.

    :meth:`record` stamps a record with ``clock()`` (an aware UTC datetime);
    :meth:`add` keeps one made elsewhere. The log is an iterable of
    :class:`Evidence`, so it can be passed to :meth:`EvidenceGate.evaluate`
    (which reads a snapshot).
    """

    __slots__ = ("_clock", "_lock", "_records")

    def __init__(self, records: Iterable[Evidence] = (), *, clock: WallClock = utc_now) -> None:
        self._clock: WallClock = required_callable("clock", clock)
        self._lock = threading.Lock()
        self._records: list[Evidence] = list(_records(records, "records"))

    def record(
        self,
        requirement: str,
        *,
        revision: str,
        passed: bool | None = None,
        exit_code: int | None = None,
        command: str | None = None,
        detail: str | None = None,
    ) -> Evidence:
        """Record that ``requirement``'s check ran now against ``revision``; return the record."""
        evidence = Evidence(
            requirement,
            passed=passed,
            exit_code=exit_code,
            ran_at=self._clock(),
            revision=revision,
            command=command,
            detail=detail,
        )
        return self.add(evidence)

    def add(self, evidence: Evidence) -> Evidence:
        """Keep ``evidence`` (an :class:`Evidence`) and return it."""
        if not isinstance(evidence, Evidence):
            raise InvalidValueError(f"evidence must be an Evidence, got {evidence!r}")
        with self._lock:
            self._records.append(evidence)
        return evidence

    def records(self, requirement: str | None = None) -> tuple[Evidence, ...]:
        """Return a snapshot of the records in the order they were kept (of one name, if given)."""
        with self._lock:
            kept = tuple(self._records)
        if requirement is None:
            return kept
        name = _requirement_name(requirement)
        return tuple(record for record in kept if record.requirement == name)

    def to_dict(self) -> dict[str, object]:
        """Return ``{"records": [...]}``, each record as :meth:`Evidence.to_dict` writes it."""
        return {"records": [record.to_dict() for record in self.records()]}

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, clock: WallClock = utc_now) -> EvidenceLog:
        """Read what :meth:`to_dict` wrote."""
        if not isinstance(data, Mapping) or set(data) != {"records"}:
            raise InvalidValueError(f"an evidence log must be {{'records': [...]}}, got {data!r}")
        rows = data["records"]
        if not isinstance(rows, list):
            raise InvalidValueError(f"records must be a list, got {rows!r}")
        return cls((Evidence.from_dict(row) for row in rows), clock=clock)

    def __iter__(self) -> Iterator[Evidence]:
        return iter(self.records())

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __repr__(self) -> str:
        return f"EvidenceLog({len(self)} record(s))"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class EvidenceSatisfied(_Fact):
    """Matches when ``ctx.extra`` holds fresh passing evidence for every requirement of ``level``.

    Reads ``ctx.extra["evidence"]`` (an :class:`EvidenceLog` or an iterable of
    :class:`Evidence`; absent means none), ``ctx.extra["revision"]`` (the
    revision under review; absent or ``None``, it does not match) and, if
    present and not ``None``, ``ctx.extra["changed_at"]``. A malformed value
    raises :class:`~techrevati.runtime.errors.InvalidValueError` (the engine
    reports it as a ``PolicyEvaluationError`` naming the rule). The reason is
    the outcome's: it names what is missing, stale or failed.
    """

    gate: EvidenceGate

    def __init__(
        self,
        level: QualityLevel | str | int,
        requirements: EvidenceRequirements | LevelNames | None = None,
    ) -> None:
        object.__setattr__(self, "gate", EvidenceGate(level, requirements))

    def outcome(self, ctx: PhaseContext) -> EvidenceOutcome | None:
        """Return the gate's outcome for the evidence in ``ctx`` (``None`` without a revision)."""
        extra = ctx.extra
        revision = extra.get(REVISION_KEY)
        if revision is None:
            return None
        changed_at = extra.get(CHANGED_AT_KEY)
        return self.gate._judge(
            _records(extra.get(EVIDENCE_KEY, ()), f"ctx.extra[{EVIDENCE_KEY!r}]"),
            _revision(f"ctx.extra[{REVISION_KEY!r}]", revision),
            None if changed_at is None else _aware(f"ctx.extra[{CHANGED_AT_KEY!r}]", changed_at),
        )

    def _matches(self, ctx: PhaseContext) -> bool:
        outcome = self.outcome(ctx)
        return outcome is not None and outcome.satisfied

    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        outcome = self.outcome(ctx)
        if outcome is None:
            return f"no revision to check evidence against: ctx.extra has no {REVISION_KEY!r}"
        return outcome.reason

    def __repr__(self) -> str:
        return f"EvidenceSatisfied({self.gate.level.name})"


def _latest(
    records: tuple[Evidence, ...],
    wanted: frozenset[str],
    revision: str,
    changed_at: datetime | None,
) -> tuple[dict[str, Evidence], dict[str, Evidence]]:
    """Return the latest fresh and the latest stale record of each wanted name."""
    fresh: dict[str, Evidence] = {}
    stale: dict[str, Evidence] = {}
    for record in records:
        name = record.requirement
        if name not in wanted:
            continue
        counts = record.revision == revision and (changed_at is None or record.ran_at >= changed_at)
        kept = fresh if counts else stale
        current = kept.get(name)
        if current is None or record.ran_at >= current.ran_at:
            kept[name] = record
    return fresh, stale


def _result(requirement: str, passed: object, exit_code: object) -> bool:
    """Whether the check passed, from ``passed``, ``exit_code`` or both (when they agree)."""
    code = _int_or_none("exit_code", exit_code)
    if passed is None:
        if code is None:
            raise InvalidValueError(f"evidence for {requirement!r} needs passed or exit_code")
        return code == 0
    result = strict_bool("passed", passed)
    if code is not None and result is not (code == 0):
        raise InvalidValueError(
            f"evidence for {requirement!r} says passed={result!r} but exit_code={code!r}"
        )
    return result


def _records(value: object, name: str) -> tuple[Evidence, ...]:
    # An EvidenceLog iterates over a snapshot of its records.
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidValueError(f"{name} must be an iterable of Evidence, got {value!r}")
    records = tuple(value)
    for record in records:
        if not isinstance(record, Evidence):
            raise InvalidValueError(f"{name} must hold Evidence records, got {record!r}")
    return records


def _added_names(added: object) -> dict[QualityLevel, tuple[str, ...]]:
    if not isinstance(added, Mapping):
        raise InvalidValueError(
            f"requirements must be a mapping of quality level to names, got {added!r}"
        )
    own: dict[QualityLevel, tuple[str, ...]] = dict.fromkeys(QualityLevel, ())
    given: set[QualityLevel] = set()
    where: dict[str, QualityLevel] = {}
    for key, names in added.items():
        level = parse_level(key, "requirements")
        if level in given:
            raise InvalidValueError(f"requirements name level {level.name} twice ({key!r})")
        given.add(level)
        own[level] = _name_list(names, level.name)
        for requirement in own[level]:
            if requirement in where:
                raise InvalidValueError(
                    f"requirement {requirement!r} is listed at {where[requirement].name}"
                    f" and {level.name}; list it once, at the lowest level that needs it"
                )
            where[requirement] = level
    return own


def _name_list(value: object, level: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise InvalidValueError(f"requirements of {level} must be a list of names, got {value!r}")
    return tuple(_requirement_name(name, f"a requirement of {level}") for name in value)


def _requirements(value: object) -> EvidenceRequirements:
    if value is None:
        return DEFAULT_REQUIREMENTS
    if isinstance(value, EvidenceRequirements):
        return value
    if isinstance(value, Mapping):
        return EvidenceRequirements(value)
    raise InvalidValueError(
        f"requirements must be EvidenceRequirements, a mapping or None, got {value!r}"
    )


def _aware(name: str, value: object) -> datetime:
    """Return ``value`` in UTC if it is a timezone-aware datetime."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise InvalidValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidValueError(f"{name} is out of range in UTC, got {value!r}") from None


def _parse_time(name: str, value: object) -> datetime:
    if not isinstance(value, str):
        raise InvalidValueError(f"{name} must be an ISO 8601 string, got {value!r}")
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidValueError(f"{name} must be an ISO 8601 string, got {value!r}") from None
    return _aware(name, when)


def _iso(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def _revision(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or value != value.strip():
        raise InvalidValueError(
            f"{name} must be a non-empty str without surrounding whitespace, got {value!r}"
        )
    return value


def _str_or_none(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InvalidValueError(f"{name} must be a str or None, got {value!r}")
    return value


def _bool_or_none(name: str, value: object) -> bool | None:
    return None if value is None else strict_bool(name, value)


def _int_or_none(name: str, value: object) -> int | None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise InvalidValueError(f"{name} must be an int or None, got {value!r}")
    return value


# Built last: the constructor's helpers above must exist first.
DEFAULT_REQUIREMENTS: Final = EvidenceRequirements(
    {
        QualityLevel.STANDARD: ("tests.targeted",),
        QualityLevel.STRICT: ("tests.package", "lint"),
        QualityLevel.RELEASE: ("tests.full", "review.approved", "changelog.updated"),
    }
)
"""The default requirements: MINIMAL needs nothing, each level above adds its own."""
