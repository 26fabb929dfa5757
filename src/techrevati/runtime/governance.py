"""Governance: hard-stop limits on one agent session that its own recovery cannot catch.

Reach for :class:`Governance` to say how far a session may go, whatever the
agent does: at most so many turns, dollars, failed turns in a row, tool calls
(in all and per tool) and seconds. It is a frozen value that many sessions
share; each session counts against it with its own :class:`GovernanceMeter`,
which refuses the turn or tool call that would go past a limit with
:class:`GovernanceBreachedError`. That error is one of the runtime's refusals,
not a failure of the model: ``retry_call``, the recipes and a session's retry
loop re-raise it unchanged, at once, and never retry it. The meter's
:meth:`~GovernanceMeter.snapshot` is plain JSON, so a checkpoint can keep it
and :meth:`GovernanceMeter.restore` can pick the count up again.
:class:`GovernanceBreached` and :class:`WithinGovernance` ask the same
questions of a policy engine's
:class:`~techrevati.runtime.policy_engine.PhaseContext`, reading the meter (or
its snapshot) from ``ctx.extra["governance"]``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import ClassVar, Final, NamedTuple, TypeAlias

from techrevati.runtime._money import _USD_POWER, MoneyInput, _scaled, _to_decimal, _usd, usd_text
from techrevati.runtime._permission_names import (
    grammar_violation,
    is_glob,
    normalize_permission_name,
)
from techrevati.runtime._phase_context import FrozenMap, PhaseContext
from techrevati.runtime._validate import (
    enum_member,
    optional_int_at_least,
    required_callable,
    seconds_or_none,
    strict_bool,
)
from techrevati.runtime.conditions import _Fact
from techrevati.runtime.errors import InvalidValueError, TechrevatiError

__all__ = [
    "GOVERNANCE_KEY",
    "MAX_TRACKED_TOOLS",
    "SNAPSHOT_VERSION",
    "Governance",
    "GovernanceBreached",
    "GovernanceBreachedError",
    "GovernanceLimit",
    "GovernanceMeter",
    "WithinGovernance",
]

GOVERNANCE_KEY: Final = "governance"
"""The ``PhaseContext.extra`` key the conditions read a meter (or its snapshot) from."""

MAX_TRACKED_TOOLS: Final = 1024
"""Distinct tool names a meter counts one by one; beyond them only the total (and limited names)."""

SNAPSHOT_VERSION: Final = 1
"""The ``version`` of what :meth:`GovernanceMeter.snapshot` writes."""

Figure: TypeAlias = int | Decimal | float
"""A limit or a count: ``int`` calls, ``Decimal`` dollars, ``float`` seconds."""


class GovernanceLimit(StrEnum):
    """Which limit of a :class:`Governance`; each value is the field's name."""

    TURNS = "max_turns"
    COST = "max_cost_usd"
    CONSECUTIVE_FAILURES = "max_consecutive_failures"
    TOOL_CALLS = "max_tool_calls"
    TOOL_CALLS_PER_NAME = "max_tool_calls_per_name"
    WALL_TIME = "max_wall_seconds"


_L = GovernanceLimit


class GovernanceBreachedError(TechrevatiError):
    """A :class:`GovernanceMeter` refused a turn or a tool call: a limit is used up.

    ``limit`` says which (a :class:`GovernanceLimit`), ``maximum`` is its
    value and ``value`` the figure that reached it (``int`` calls,
    ``Decimal`` dollars, ``float`` seconds); ``refused`` is ``"turn"`` or
    ``"tool"`` and ``tool`` the tool's normalised name (``""`` for a turn).
    Terminal: not a :class:`~techrevati.runtime.errors.TransientRuntimeError`,
    so a retry policy re-raises it at once and never retries it, and the
    meter refuses again on every later call.
    """

    _techrevati_refusal: ClassVar[bool] = True

    def __init__(
        self,
        limit: GovernanceLimit,
        maximum: Figure,
        value: Figure,
        *,
        refused: str = "turn",
        tool: str = "",
    ) -> None:
        self.limit = GovernanceLimit(limit)
        self.maximum = maximum
        self.value = value
        self.refused = refused
        self.tool = tool
        super().__init__(_message(self.limit, maximum, value, refused, tool))

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (dollars as a decimal string)."""
        return {
            "limit": self.limit.value,
            "maximum": _json_figure(self.maximum),
            "value": _json_figure(self.value),
            "refused": self.refused,
            "tool": self.tool,
        }

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_breach, (self.limit, self.maximum, self.value, self.refused, self.tool))


def _rebuild_breach(
    limit: GovernanceLimit, maximum: Figure, value: Figure, refused: str, tool: str
) -> GovernanceBreachedError:
    return GovernanceBreachedError(limit, maximum, value, refused=refused, tool=tool)


def _message(
    limit: GovernanceLimit, maximum: Figure, value: Figure, refused: str, tool: str
) -> str:
    what = f"call to tool {tool!r}" if refused == "tool" else "turn"
    used = {
        _L.TURNS: f"{value} turn(s) ran",
        _L.COST: f"${value} spent",
        _L.CONSECUTIVE_FAILURES: f"{value} failed turn(s) in a row",
        _L.TOOL_CALLS: f"{value} tool call(s) ran",
        _L.TOOL_CALLS_PER_NAME: f"{value} call(s) to {tool!r} ran",
        _L.WALL_TIME: f"{_seconds(value)}s elapsed",
    }[limit]
    shown = _seconds(maximum) if limit is _L.WALL_TIME else maximum
    name = f"{limit.value}[{tool!r}]" if limit is _L.TOOL_CALLS_PER_NAME else limit.value
    return f"governance limit {name}={shown} reached ({used}); {what} refused"


def _seconds(value: Figure) -> str:
    return f"{float(value):.3f}".rstrip("0").rstrip(".")


@dataclass(frozen=True, slots=True, init=False)
class Governance:
    """Hard-stop limits for one session; ``None`` (or no entry) means no limit of that kind.

    ``max_turns`` and ``max_consecutive_failures`` are ints >= 1;
    ``max_tool_calls`` and each value of ``max_tool_calls_per_name`` ints
    >= 0 (0 forbids such calls). ``max_cost_usd`` accepts what a budget's
    ``max_usd`` does (``Decimal``, ``int``, ``str``, or ``float`` read by its
    repr), > 0 and exact to 1e-15 USD; ``max_wall_seconds`` a number of
    seconds > 0. Tool names are compared the way permissions compare them
    (NFKC, case folded, trimmed), must be exact names inside the permission
    grammar (no globs), and two keys naming the same tool are refused.
    Frozen, hashable and safe to share between sessions and threads.
    """

    max_turns: int | None
    max_cost_usd: Decimal | None
    max_consecutive_failures: int | None
    max_tool_calls: int | None
    max_tool_calls_per_name: Mapping[str, int]
    max_wall_seconds: float | None
    _max_femto: int | None = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        *,
        max_turns: int | None = None,
        max_cost_usd: MoneyInput | None = None,
        max_consecutive_failures: int | None = None,
        max_tool_calls: int | None = None,
        max_tool_calls_per_name: Mapping[str, int] | None = None,
        max_wall_seconds: float | None = None,
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "max_turns", optional_int_at_least("max_turns", max_turns, 1))
        usd, femto = _cost_limit(max_cost_usd)
        setattr_(self, "max_cost_usd", usd)
        setattr_(self, "_max_femto", femto)
        setattr_(
            self,
            "max_consecutive_failures",
            optional_int_at_least("max_consecutive_failures", max_consecutive_failures, 1),
        )
        setattr_(self, "max_tool_calls", optional_int_at_least("max_tool_calls", max_tool_calls, 0))
        setattr_(self, "max_tool_calls_per_name", _per_name(max_tool_calls_per_name))
        setattr_(self, "max_wall_seconds", seconds_or_none("max_wall_seconds", max_wall_seconds))

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-serialisable dict (dollars as a decimal string) for :meth:`from_dict`."""
        return {
            "max_turns": self.max_turns,
            "max_cost_usd": None if self.max_cost_usd is None else str(self.max_cost_usd),
            "max_consecutive_failures": self.max_consecutive_failures,
            "max_tool_calls": self.max_tool_calls,
            "max_tool_calls_per_name": dict(self.max_tool_calls_per_name),
            "max_wall_seconds": self.max_wall_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Governance:
        """Read what :meth:`to_dict` wrote (every key optional, no others)."""
        if not isinstance(data, Mapping):
            raise InvalidValueError(f"governance limits must be a mapping, got {data!r}")
        unknown = set(data) - {limit.value for limit in GovernanceLimit}
        if unknown:
            raise InvalidValueError(f"unknown governance limit(s) {sorted(map(str, unknown))}")
        return cls(**data)  # type: ignore[arg-type]  # each value is checked by __init__


def _cost_limit(value: MoneyInput | None) -> tuple[Decimal | None, int | None]:
    if value is None:
        return None, None
    usd = _to_decimal(value, "max_cost_usd")
    if usd.is_zero():
        raise InvalidValueError(f"max_cost_usd must be > 0 or None, got {value!r}")
    return usd, _scaled(usd, _USD_POWER, "max_cost_usd", "1e-15 USD")


def _per_name(value: object) -> Mapping[str, int]:
    """Check ``max_tool_calls_per_name`` and key it by normalised tool name."""
    field_name = "max_tool_calls_per_name"
    if value is None:
        return FrozenMap({})
    if not isinstance(value, Mapping):
        raise InvalidValueError(
            f"{field_name} must be a mapping of tool name to int, got {value!r}"
        )
    limits: dict[str, int] = {}
    first_key: dict[str, object] = {}
    for key, limit in value.items():
        if not isinstance(key, str):
            raise InvalidValueError(f"{field_name} keys must be str tool names, got {key!r}")
        name = normalize_permission_name(str.__str__(key))
        problem = "it is a glob" if is_glob(name) else grammar_violation(name)
        if problem is not None:
            raise InvalidValueError(f"{field_name} key {key!r} is not a tool name: {problem}")
        if name in first_key:
            raise InvalidValueError(
                f"{field_name} keys {first_key[name]!r} and {key!r} name the same tool "
                f"{name!r} after normalisation"
            )
        first_key[name] = key
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise InvalidValueError(f"{field_name}[{key!r}] must be an int >= 0, got {limit!r}")
        limits[name] = limit
    return FrozenMap(limits)


class _Figures(NamedTuple):
    """What a meter has counted, as the conditions read it."""

    governance: Governance
    turns: int
    femto: int
    failures: int
    tools: int
    names: Mapping[str, int]
    elapsed: float
    breaches: tuple[GovernanceBreachedError, ...]


class GovernanceMeter:
    """One session's count against a :class:`Governance`; thread-safe, O(1) per call.

    Call :meth:`before_turn` before each turn (it counts the turn, or raises
    :class:`GovernanceBreachedError` when the turns, the dollars, the failed
    turns in a row or the wall time are used up), :meth:`after_turn` with the
    turn's cost and whether it failed, and :meth:`before_tool` before each
    tool call (it counts the call, or raises when the tool calls in all, those
    of that tool, or the wall time are used up). A limit is *reached* when
    its figure is at least the limit: with ``max_turns=3`` three turns run
    and the fourth is refused; with ``max_cost_usd=1`` no turn starts once
    $1 is spent. Every refusal is raised again on every later call, and kept
    in :attr:`breaches`. The wall time runs from the meter's creation on
    ``clock`` (``time.monotonic`` by default; any clock of seconds works).
    """

    __slots__ = (
        "_breaches",
        "_clock",
        "_cost",
        "_failures",
        "_limited",
        "_lock",
        "_max_failures",
        "_max_femto",
        "_max_tools",
        "_max_turns",
        "_max_wall",
        "_names",
        "_started",
        "_tools",
        "_turns",
        "governance",
    )

    def __init__(
        self, governance: Governance, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not isinstance(governance, Governance):
            raise InvalidValueError(f"governance must be a Governance, got {governance!r}")
        self.governance = governance
        self._clock = required_callable("clock", clock)
        # The limits, hoisted out of the frozen value for the hot path.
        self._max_turns = governance.max_turns
        self._max_femto = governance._max_femto
        self._max_failures = governance.max_consecutive_failures
        self._max_tools = governance.max_tool_calls
        self._max_wall = governance.max_wall_seconds
        self._limited: dict[str, int] = dict(governance.max_tool_calls_per_name)
        self._lock = threading.Lock()
        self._turns = 0
        self._cost = 0  # femto-dollars
        self._failures = 0  # in a row
        self._tools = 0
        self._names: dict[str, int] = {}
        self._breaches: dict[tuple[GovernanceLimit, str], GovernanceBreachedError] = {}
        self._started = float(clock())

    # -- counting ---------------------------------------------------------------------------

    def before_turn(self) -> int:
        """Count a new turn and return its number (1-based), or raise if a limit is used up.

        Checks, in this order: ``max_turns`` (that many turns already
        started), ``max_cost_usd`` (that much spent), ``max_consecutive_failures``
        (that many failed turns in a row) and ``max_wall_seconds``.
        """
        with self._lock:
            breach = self._turn_breach()
            if breach is None:
                self._turns += 1
                return self._turns
        raise breach

    def after_turn(
        self, cost_usd: MoneyInput | None = None, *, failed: bool = False
    ) -> GovernanceBreachedError | None:
        """Record a turn's cost and outcome; return the refusal it made certain, without raising.

        ``cost_usd`` is what the turn cost (what a budget's amounts accept,
        exact to 1e-15 USD; ``None`` for nothing). ``failed=True`` adds one to
        the failed turns in a row, ``False`` resets them to zero. Returns
        the :class:`GovernanceBreachedError` that the next :meth:`before_turn`
        will raise when this turn used up ``max_cost_usd`` or
        ``max_consecutive_failures`` (a session can stop at once), else
        ``None``. Never raises for a limit: the turn has already happened.
        """
        femto = 0 if cost_usd is None else _femto(cost_usd)
        return self._record_turn(femto, strict_bool("failed", failed))

    def before_tool(self, name: str) -> None:
        """Count a call of tool ``name``, or raise if a limit is used up.

        Checks ``max_tool_calls``, then the tool's own entry of
        ``max_tool_calls_per_name`` (``name`` compared normalised), then
        ``max_wall_seconds``.
        """
        if not isinstance(name, str):
            raise InvalidValueError(f"tool name must be a str, got {name!r}")
        key = normalize_permission_name(str.__str__(name))
        if not key:
            raise InvalidValueError(f"tool name must be a non-empty str, got {name!r}")
        limit = self._limited.get(key)
        with self._lock:
            breach = self._tool_breach(key, limit)
            if breach is None:
                self._tools += 1
                names = self._names
                count = names.get(key)
                if count is not None:
                    names[key] = count + 1
                elif limit is not None or len(names) < MAX_TRACKED_TOOLS:
                    names[key] = 1
                return
        raise breach

    def check_wall(self) -> None:
        """Raise if ``max_wall_seconds`` has passed since the meter started (no-op without it)."""
        if self._max_wall is None:
            return
        with self._lock:
            breach = self._wall_breach("turn", "")
        if breach is not None:
            raise breach

    # -- reading ----------------------------------------------------------------------------

    @property
    def turns(self) -> int:
        """Turns started (counted by :meth:`before_turn`)."""
        with self._lock:
            return self._turns

    @property
    def cost_usd(self) -> Decimal:
        """Dollars recorded by :meth:`after_turn`, exact."""
        with self._lock:
            return _usd(self._cost)

    @property
    def consecutive_failures(self) -> int:
        """Failed turns in a row, as :meth:`after_turn` reported them."""
        with self._lock:
            return self._failures

    @property
    def tool_calls(self) -> int:
        """Tool calls counted by :meth:`before_tool`, in all."""
        with self._lock:
            return self._tools

    @property
    def tool_calls_by_name(self) -> dict[str, int]:
        """Tool calls per normalised name (limited ones, and :data:`MAX_TRACKED_TOOLS` others)."""
        with self._lock:
            return dict(self._names)

    @property
    def elapsed_seconds(self) -> float:
        """Seconds on the meter's clock since it started (with a restored meter's earlier time)."""
        return float(self._clock()) - self._started

    @property
    def breaches(self) -> tuple[GovernanceBreachedError, ...]:
        """The refusals raised so far, first of each limit (and tool) only, in order."""
        with self._lock:
            return tuple(self._breaches.values())

    def snapshot(self) -> dict[str, object]:
        """Return the count as a JSON-serialisable dict for a checkpoint (:meth:`restore` reads it).

        Keys: ``version``, ``limits`` (:meth:`Governance.to_dict`), ``turns``,
        ``cost_usd`` (a decimal string), ``consecutive_failures``,
        ``tool_calls``, ``tool_calls_by_name``, ``started`` (the clock's
        reading at the start), ``elapsed_seconds`` and ``breaches`` (each
        :meth:`GovernanceBreachedError.to_dict`).
        """
        figures = self._figures()
        return {
            "version": SNAPSHOT_VERSION,
            "limits": self.governance.to_dict(),
            "turns": figures.turns,
            "cost_usd": usd_text(figures.femto),
            "consecutive_failures": figures.failures,
            "tool_calls": figures.tools,
            "tool_calls_by_name": dict(sorted(figures.names.items())),
            "started": self._started,
            "elapsed_seconds": figures.elapsed,
            "breaches": [breach.to_dict() for breach in figures.breaches],
        }

    @classmethod
    def restore(
        cls,
        snapshot: Mapping[str, object],
        *,
        governance: Governance | None = None,
        clock: Callable[[], float] = time.monotonic,
        count_downtime: bool = False,
    ) -> GovernanceMeter:
        """Rebuild a meter from :meth:`snapshot`'s dict; its counts go on from there.

        ``governance`` replaces the snapshot's own limits (to resume under
        new ones); by default they are read back. The wall time goes on from
        the snapshot's ``elapsed_seconds``, so the time between the snapshot
        and the restore is not counted; with ``count_downtime=True`` it runs
        from the snapshot's ``started`` instead, which needs the same clock
        in both processes (``time.time``). Anything malformed raises
        :class:`~techrevati.runtime.errors.InvalidValueError` naming it.
        """
        from techrevati.runtime._governance_snapshot import read_snapshot  # noqa: PLC0415

        read = read_snapshot(snapshot)
        meter = cls(governance or Governance.from_dict(read.limits), clock=clock)
        meter._turns = read.turns
        meter._cost = read.femto
        meter._failures = read.failures
        meter._tools = read.tools
        meter._names = dict(read.names)
        meter._breaches = {(b.limit, b.tool): b for b in read.breaches}
        strict_bool("count_downtime", count_downtime)
        meter._started = read.started if count_downtime else meter._started - read.elapsed
        return meter

    def __repr__(self) -> str:
        figures = self._figures()
        return (
            f"GovernanceMeter(turns={figures.turns}, cost_usd={_usd(figures.femto)}, "
            f"consecutive_failures={figures.failures}, tool_calls={figures.tools}, "
            f"breaches={len(figures.breaches)})"
        )

    # -- private ----------------------------------------------------------------------------

    def _record_turn(self, femto: int, failed: bool) -> GovernanceBreachedError | None:
        """:meth:`after_turn` with the cost already in femto-dollars (the session's form)."""
        with self._lock:
            self._cost += femto
            self._failures = self._failures + 1 if failed else 0
            if self._max_femto is not None and self._cost >= self._max_femto:
                return GovernanceBreachedError(_L.COST, _usd(self._max_femto), _usd(self._cost))
            failures = self._failures
            if self._max_failures is not None and failures >= self._max_failures:
                return GovernanceBreachedError(
                    _L.CONSECUTIVE_FAILURES, self._max_failures, failures
                )
            return None

    def _figures(self) -> _Figures:
        with self._lock:
            return _Figures(
                self.governance,
                self._turns,
                self._cost,
                self._failures,
                self._tools,
                dict(self._names),
                float(self._clock()) - self._started,
                tuple(self._breaches.values()),
            )

    def _turn_breach(self) -> GovernanceBreachedError | None:
        """Return the refusal of a new turn, or None (lock held)."""
        if self._max_turns is not None and self._turns >= self._max_turns:
            return self._refuse(_L.TURNS, self._max_turns, self._turns)
        if self._max_femto is not None and self._cost >= self._max_femto:
            return self._refuse(_L.COST, _usd(self._max_femto), _usd(self._cost))
        if self._max_failures is not None and self._failures >= self._max_failures:
            return self._refuse(_L.CONSECUTIVE_FAILURES, self._max_failures, self._failures)
        if self._max_wall is not None:
            return self._wall_breach("turn", "")
        return None

    def _tool_breach(self, key: str, limit: int | None) -> GovernanceBreachedError | None:
        """Return the refusal of a call of tool ``key``, or None (lock held)."""
        if self._max_tools is not None and self._tools >= self._max_tools:
            return self._refuse(_L.TOOL_CALLS, self._max_tools, self._tools, "tool", key)
        if limit is not None:
            count = self._names.get(key, 0)
            if count >= limit:
                return self._refuse(_L.TOOL_CALLS_PER_NAME, limit, count, "tool", key)
        if self._max_wall is not None:
            return self._wall_breach("tool", key)
        return None

    def _wall_breach(self, refused: str, tool: str) -> GovernanceBreachedError | None:
        """Return the wall time's refusal, or None (lock held, ``max_wall_seconds`` set)."""
        maximum = self._max_wall
        assert maximum is not None
        elapsed = float(self._clock()) - self._started
        if elapsed >= maximum:
            return self._refuse(_L.WALL_TIME, maximum, elapsed, refused, tool)
        return None

    def _refuse(
        self,
        limit: GovernanceLimit,
        maximum: Figure,
        value: Figure,
        refused: str = "turn",
        tool: str = "",
    ) -> GovernanceBreachedError:
        """Build a refusal and keep the first of its limit (lock held)."""
        breach = GovernanceBreachedError(limit, maximum, value, refused=refused, tool=tool)
        key = (limit, tool if limit is _L.TOOL_CALLS_PER_NAME else "")
        self._breaches.setdefault(key, breach)
        return breach


def _femto(cost: MoneyInput) -> int:
    return _scaled(_to_decimal(cost, "cost_usd"), _USD_POWER, "cost_usd", "1e-15 USD")


def _json_figure(value: Figure) -> object:
    return str(value) if isinstance(value, Decimal) else value


# -- the policy-engine conditions ------------------------------------------------------------


def _parse_limit(value: object) -> GovernanceLimit | None:
    return None if value is None else enum_member(GovernanceLimit, value, "governance limit")


def _figures_of(ctx: PhaseContext) -> _Figures | None:
    """Read the figures in ``ctx.extra["governance"]``: a meter, its snapshot, or None."""
    value = ctx.extra.get(GOVERNANCE_KEY)
    if value is None:
        return None
    if isinstance(value, GovernanceMeter):
        return value._figures()
    if isinstance(value, Mapping):
        from techrevati.runtime._governance_snapshot import read_snapshot  # noqa: PLC0415

        read = read_snapshot(value, f"ctx.extra[{GOVERNANCE_KEY!r}]")
        return _Figures(
            Governance.from_dict(read.limits),
            read.turns,
            read.femto,
            read.failures,
            read.tools,
            read.names,
            read.elapsed,
            read.breaches,
        )
    raise InvalidValueError(
        f"ctx.extra[{GOVERNANCE_KEY!r}] must be a GovernanceMeter or its snapshot, got {value!r}"
    )


_NO_FIGURES: Final = f"no governance figures: ctx.extra has no {GOVERNANCE_KEY!r}"


@dataclass(frozen=True, slots=True, init=False, repr=False)
class GovernanceBreached(_Fact):
    """Matches when the meter in ``ctx.extra["governance"]`` refused a turn or tool call.

    ``limit`` narrows it to one :class:`GovernanceLimit` (a member, its
    value such as ``"max_turns"``, or its name). The meter may be a live
    :class:`GovernanceMeter` or its :meth:`~GovernanceMeter.snapshot`; without
    one it does not match (and says so). A limit merely reached (three turns
    of ``max_turns=3``) is not a breach until a call is refused: ask
    :class:`WithinGovernance` for that.
    """

    limit: GovernanceLimit | None

    def __init__(self, limit: GovernanceLimit | str | None = None) -> None:
        object.__setattr__(self, "limit", _parse_limit(limit))

    def _first(self, ctx: PhaseContext) -> tuple[_Figures | None, GovernanceBreachedError | None]:
        figures = _figures_of(ctx)
        if figures is None:
            return None, None
        for breach in figures.breaches:
            if self.limit is None or breach.limit is self.limit:
                return figures, breach
        return figures, None

    def _matches(self, ctx: PhaseContext) -> bool:
        return self._first(ctx)[1] is not None

    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        figures, breach = self._first(ctx)
        if figures is None:
            return _NO_FIGURES
        if breach is not None:
            return str(breach)
        which = "no governance limit" if self.limit is None else f"{self.limit.value}"
        return f"{which} refused a call"

    def __repr__(self) -> str:
        return (
            "GovernanceBreached()"
            if self.limit is None
            else f"GovernanceBreached({self.limit.value!r})"
        )


@dataclass(frozen=True, slots=True, init=False, repr=False)
class WithinGovernance(_Fact):
    """Matches when every figure is below ``fraction`` of its limit, and nothing was refused.

    ``WithinGovernance()`` means room is left under every limit;
    ``~WithinGovernance(fraction=0.8)`` fires once 80 % of any limit is used
    (a rule to wrap up early). ``limit`` narrows it to one
    :class:`GovernanceLimit` (``max_tool_calls_per_name``: every named tool).
    The limits are ``governance`` when given, else the meter's own (a live
    meter's, or those its snapshot carries). ``fraction`` is a number in
    (0, 1], compared exactly (``0.7`` is 7/10). A limit of 0 (no such
    calls allowed) has no share to use and is left out. Without a meter in
    ``ctx.extra["governance"]`` nothing is known, so it does not match.
    """

    fraction: Decimal
    limit: GovernanceLimit | None
    governance: Governance | None
    _ratio: tuple[int, int] = field(init=False, compare=False)

    def __init__(
        self,
        fraction: float | Decimal | str = 1,
        limit: GovernanceLimit | str | None = None,
        *,
        governance: Governance | None = None,
    ) -> None:
        share = _fraction(fraction)
        if governance is not None and not isinstance(governance, Governance):
            raise InvalidValueError(f"governance must be a Governance or None, got {governance!r}")
        object.__setattr__(self, "fraction", share)
        object.__setattr__(self, "limit", _parse_limit(limit))
        object.__setattr__(self, "governance", governance)
        object.__setattr__(self, "_ratio", share.as_integer_ratio())

    def used_up(self, ctx: PhaseContext) -> tuple[GovernanceLimit, str, Figure, Figure] | None:
        """Return the first limit used up to ``fraction`` as ``(limit, tool, value, maximum)``.

        Raises :class:`~techrevati.runtime.errors.InvalidValueError` when
        ``ctx.extra`` holds no governance figures (check :meth:`check` first).
        """
        figures = _figures_of(ctx)
        if figures is None:
            raise InvalidValueError(_NO_FIGURES)
        return _first_used(self.governance or figures.governance, figures, self.limit, self._ratio)

    def _matches(self, ctx: PhaseContext) -> bool:
        figures = _figures_of(ctx)
        if figures is None or self._refused(figures) is not None:
            return False
        governance = self.governance or figures.governance
        return _first_used(governance, figures, self.limit, self._ratio) is None

    def _why(self, ctx: PhaseContext, matched: bool) -> str:
        figures = _figures_of(ctx)
        if figures is None:
            return _NO_FIGURES
        refused = self._refused(figures)
        if refused is not None:
            return str(refused)
        governance = self.governance or figures.governance
        used = _first_used(governance, figures, self.limit, self._ratio)
        share = "" if self.fraction == 1 else f"{self.fraction:%} of "
        if used is None:
            return f"every figure is below {share}its governance limit"
        limit, tool, value, maximum = used
        name = f"{limit.value}[{tool!r}]" if tool else limit.value
        return f"{name}: {value} has reached {share}the limit {maximum}"

    def _refused(self, figures: _Figures) -> GovernanceBreachedError | None:
        for breach in figures.breaches:
            if self.limit is None or breach.limit is self.limit:
                return breach
        return None

    def __repr__(self) -> str:
        parts = [] if self.fraction == 1 else [str(self.fraction)]
        if self.limit is not None:
            parts.append(repr(self.limit.value))
        return f"WithinGovernance({', '.join(parts)})"


def _fraction(value: object) -> Decimal:
    share = _to_decimal(value, "fraction")
    if share.is_zero() or share > 1:
        raise InvalidValueError(f"fraction must be > 0 and <= 1, got {value!r}")
    return share


def _first_used(
    governance: Governance,
    figures: _Figures,
    only: GovernanceLimit | None,
    ratio: tuple[int, int],
) -> tuple[GovernanceLimit, str, Figure, Figure] | None:
    """Return the first limit whose figure is at least ``ratio`` of it (limits of 0 left out)."""
    num, den = ratio
    rows: list[tuple[GovernanceLimit, str, int | float, int | float | None]] = [
        (_L.TURNS, "", figures.turns, governance.max_turns),
        (_L.COST, "", figures.femto, governance._max_femto),
        (_L.CONSECUTIVE_FAILURES, "", figures.failures, governance.max_consecutive_failures),
        (_L.TOOL_CALLS, "", figures.tools, governance.max_tool_calls),
    ]
    rows.extend(
        (_L.TOOL_CALLS_PER_NAME, name, figures.names.get(name, 0), limit)
        for name, limit in sorted(governance.max_tool_calls_per_name.items())
    )
    rows.append((_L.WALL_TIME, "", figures.elapsed, governance.max_wall_seconds))
    for limit, tool, value, maximum in _selected(rows, only):
        if maximum is None or maximum == 0:
            continue
        if value * den >= maximum * num:
            if limit is _L.COST:
                return limit, tool, _usd(int(value)), _usd(int(maximum))
            return limit, tool, value, maximum
    return None


def _selected(
    rows: Iterable[tuple[GovernanceLimit, str, int | float, int | float | None]],
    only: GovernanceLimit | None,
) -> Iterable[tuple[GovernanceLimit, str, int | float, int | float | None]]:
    return rows if only is None else (row for row in rows if row[0] is only)
