"""Exact token usage, pricing, cost tracking and budgets for model turns.

Reach for this module whenever a model call costs money. :class:`UsageSnapshot`
holds one turn's tokens in a single documented meaning (OpenAI-style: input
includes cache reads and writes, output includes reasoning) and reads them from
any major SDK's response with :meth:`UsageSnapshot.from_response`.
:class:`ModelPricing` (registered per model name, or loaded from our JSON/TOML
schema or LiteLLM's price file) turns tokens into exact money: every amount is
an integer count of femto-dollars (1e-15 USD) inside, and a
:class:`decimal.Decimal` outside, so sums never drift and never depend on the
caller's decimal context. :class:`UsageTracker` keeps O(1) running totals per
model; :class:`Budget` is a thread-safe, shareable cap on dollars, tokens and
requests whose reservations stop concurrent callers from overshooting it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Final, Literal, NamedTuple

from techrevati.runtime.errors import InvalidValueError, TechrevatiError

__all__ = [
    "LONG_CONTEXT_LITELLM_UNIT",
    "LOGGER_NAME",
    "Budget",
    "BudgetExceededError",
    "BudgetReservation",
    "LimitKind",
    "LongContextTier",
    "ModelPricing",
    "PricingFileError",
    "ReservationError",
    "TurnCost",
    "UsageLimits",
    "UsageParseError",
    "UsageSnapshot",
    "UsageTracker",
    "clear_pricing",
    "get_pricing",
    "has_pricing",
    "load_pricing_from_file",
    "register_pricing",
    "unregister_pricing",
]

LOGGER_NAME: Final = "techrevati.runtime.usage"
"""The logger that reports unpriced models (one warning per model per process)."""

LONG_CONTEXT_LITELLM_UNIT: Final = 1000
"""LiteLLM's ``*_above_200k_tokens`` means above ``200 * 1000`` input tokens."""

LimitKind = Literal["usd", "tokens", "requests"]
"""Which limit of a :class:`Budget` refused a call."""

_LOG: Final = logging.getLogger(LOGGER_NAME)

_USD_POWER: Final = 15
"""Money is kept as integer femto-dollars: USD * 10**15."""
_RATE_POWER: Final = 9
"""A rate per million * 10**9 is femto-dollars per token, so 9 decimal places are exact."""
_MAX_ADJUSTED: Final = 15
"""Rates and limits must be below 10**15 USD: a guard against absurd exponents."""
_FORMAT_STEP: Final = 10**11
"""Femto-dollars in $0.0001, the resolution of :meth:`UsageTracker.format_cost`."""
_NO_TIER: Final = 1 << 62
"""Threshold used when a pricing has no long-context tier (the tier rates equal the base)."""

_RATE_FIELDS: Final = (
    "input_per_million",
    "output_per_million",
    "cache_read_per_million",
    "cache_write_per_million",
    "reasoning_per_million",
)

_TOKEN_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


# -- errors -----------------------------------------------------------------------


class UsageParseError(TechrevatiError, ValueError):
    """:meth:`UsageSnapshot.from_response` could not read token usage from an object.

    The message names the object's type and, where one is known, the field.
    """


class PricingFileError(TechrevatiError, ValueError):
    """A pricing file is malformed; nothing from it was registered.

    ``path`` is the file as given; ``entry`` the model entry at fault, or
    ``None`` when the file as a whole is wrong (bad JSON/TOML, unknown schema).
    """

    def __init__(self, message: str, path: str = "", entry: str | None = None) -> None:
        self.path = path
        self.entry = entry
        self.reason = message
        where = path if entry is None else f"{path}: entry {entry!r}"
        super().__init__(f"{where}: {message}" if where else message)

    def __reduce__(self) -> tuple[type[PricingFileError], tuple[str, str, str | None]]:
        return type(self), (self.reason, self.path, self.entry)


class BudgetExceededError(TechrevatiError):
    """A :class:`Budget` refused a call, or its spending went past a limit.

    ``limit_kind`` says which limit (``"usd"``, ``"tokens"`` or ``"requests"``);
    ``limit`` and ``spent`` are in that unit (``Decimal`` dollars for ``"usd"``,
    ``int`` otherwise), ``reserved`` is what open reservations hold and
    ``requested`` what the refused call asked for (zero from ``check_after``).
    ``limit_usd`` (``None`` without a dollar cap) and ``spent_usd`` are always
    the budget's dollar figures; ``model`` is the model asked for, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        limit_kind: LimitKind = "usd",
        limit: Decimal | int = 0,
        spent: Decimal | int = 0,
        reserved: Decimal | int = 0,
        requested: Decimal | int = 0,
        limit_usd: Decimal | None = None,
        spent_usd: Decimal = Decimal(0),
        model: str = "",
    ) -> None:
        self.limit_kind: LimitKind = limit_kind
        self.limit = limit
        self.spent = spent
        self.reserved = reserved
        self.requested = requested
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.model = model
        super().__init__(message)

    def __reduce__(self) -> tuple[type[BudgetExceededError], tuple[str], dict[str, object]]:
        return type(self), (str(self.args[0]),), dict(self.__dict__)


class ReservationError(TechrevatiError, RuntimeError):
    """:meth:`BudgetReservation.settle` was called on a settled or released reservation."""


# -- values -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """The tokens of one model turn (or a sum of turns), in one meaning for every SDK.

    ``input_tokens`` counts ALL input tokens, cache reads and writes included;
    ``cache_read_tokens`` and ``cache_write_tokens`` are parts of it.
    ``output_tokens`` counts all output tokens, reasoning included;
    ``reasoning_tokens`` is part of it. All are ints >= 0, and the parts never
    exceed their whole. ``+`` adds snapshots field by field;
    :data:`UsageSnapshot.ZERO` is the all-zero snapshot (what a turn whose
    usage is unknown is counted as). Immutable, so safe to share.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    ZERO: ClassVar[UsageSnapshot]
    """All fields zero."""

    def __post_init__(self) -> None:
        for name in _TOKEN_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidValueError(f"{name} must be an int >= 0, got {value!r}")
        cached = self.cache_read_tokens + self.cache_write_tokens
        if cached > self.input_tokens:
            raise InvalidValueError(
                "cache_read_tokens + cache_write_tokens must not exceed input_tokens "
                f"(input_tokens includes them), got {self.cache_read_tokens} + "
                f"{self.cache_write_tokens} > {self.input_tokens}"
            )
        if self.reasoning_tokens > self.output_tokens:
            raise InvalidValueError(
                "reasoning_tokens must not exceed output_tokens (output_tokens includes "
                f"them), got {self.reasoning_tokens} > {self.output_tokens}"
            )

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: UsageSnapshot) -> UsageSnapshot:
        if not isinstance(other, UsageSnapshot):
            return NotImplemented
        return UsageSnapshot(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cache_read_tokens + other.cache_read_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        """Return the five counts and ``total_tokens`` as a JSON-serialisable dict."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }

    @classmethod
    def from_response(cls, obj: object) -> UsageSnapshot:
        """Read the usage of a model response, of its usage object, or of a plain dict.

        Duck-typed, no SDK imported. Recognised shapes: OpenAI Chat Completions
        (``prompt_tokens``...), OpenAI Responses (``input_tokens`` with
        ``input_tokens_details``), Anthropic (``input_tokens`` that excludes the
        ``cache_*_input_tokens``), Gemini ``usage_metadata`` (snake or camel
        case) and Bedrock Converse (``inputTokens``...). A response is
        unwrapped through ``.usage`` / ``.usage_metadata`` (or those dict keys).
        Missing and ``None`` counts are 0. Raises :class:`UsageParseError`
        naming the type for anything else, including a response whose usage is
        ``None`` (a stream without usage) and an attribute that raises.
        """
        snapshot = _snapshot_from_usage(obj)
        if snapshot is not None:
            return snapshot
        for key in ("usage", "usage_metadata", "usageMetadata"):
            inner = _read(obj, key)
            if inner is _MISSING:
                continue
            where = f"{type(obj).__name__}.{key}"
            if inner is None:
                raise UsageParseError(
                    f"{where} is None: the response carries no usage "
                    "(a stream without usage, or an aborted call?)"
                )
            snapshot = _snapshot_from_usage(inner)
            if snapshot is None:
                raise UsageParseError(
                    f"unrecognised usage shape {type(inner).__name__} in {where}: expected "
                    "OpenAI, Anthropic, Gemini or Bedrock Converse token fields"
                )
            return snapshot
        raise UsageParseError(
            f"cannot read token usage from {type(obj).__name__}: expected a response with "
            ".usage or .usage_metadata, or an OpenAI, Anthropic, Gemini or Bedrock usage "
            "object or dict"
        )


UsageSnapshot.ZERO = UsageSnapshot()


@dataclass(frozen=True, slots=True, init=False)
class LongContextTier:
    """Rates that replace the base rates for a whole turn whose input is long.

    A turn is billed entirely at these rates when its ``input_tokens`` is
    strictly greater than ``threshold_tokens`` (``>``, as LiteLLM and the
    vendors do). Rates are USD per million tokens; unset cache rates default
    to this tier's input rate and an unset reasoning rate to its output rate.
    """

    threshold_tokens: int
    input_per_million: Decimal
    output_per_million: Decimal
    cache_read_per_million: Decimal | None
    cache_write_per_million: Decimal | None
    reasoning_per_million: Decimal | None
    _rates: tuple[int, int, int, int, int] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        threshold_tokens: int,
        input_per_million: Decimal | int | float | str,
        output_per_million: Decimal | int | float | str,
        *,
        cache_read_per_million: Decimal | int | float | str | None = None,
        cache_write_per_million: Decimal | int | float | str | None = None,
        reasoning_per_million: Decimal | int | float | str | None = None,
    ) -> None:
        if (
            not isinstance(threshold_tokens, int)
            or isinstance(threshold_tokens, bool)
            or threshold_tokens < 0
        ):
            raise InvalidValueError(
                f"threshold_tokens must be an int >= 0, got {threshold_tokens!r}"
            )
        _init_rates(
            self,
            (
                input_per_million,
                output_per_million,
                cache_read_per_million,
                cache_write_per_million,
                reasoning_per_million,
            ),
        )
        object.__setattr__(self, "threshold_tokens", threshold_tokens)


@dataclass(frozen=True, slots=True, init=False)
class ModelPricing:
    """What one model costs, in USD per million tokens, with exact arithmetic.

    Rates accept ``int``, ``float`` (converted through ``repr``, so ``3.0``
    becomes ``Decimal('3.0')`` exactly), ``str`` or ``Decimal`` and are stored
    as ``Decimal``. Unset cache read/write rates default to the input rate, an
    unset reasoning rate to the output rate. Each rate must be finite, >= 0,
    and exact to 1e-15 USD per token (at most 9 decimal places per million);
    anything else raises :class:`InvalidValueError` naming the field, never a
    silent rounding. ``long_context`` optionally re-prices long turns whole.
    """

    input_per_million: Decimal
    output_per_million: Decimal
    cache_read_per_million: Decimal | None
    cache_write_per_million: Decimal | None
    reasoning_per_million: Decimal | None
    long_context: LongContextTier | None
    _rates: tuple[int, int, int, int, int] = field(init=False, repr=False, compare=False)
    _tier: tuple[int, int, int, int, int] = field(init=False, repr=False, compare=False)
    _threshold: int = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        input_per_million: Decimal | int | float | str,
        output_per_million: Decimal | int | float | str,
        *,
        cache_read_per_million: Decimal | int | float | str | None = None,
        cache_write_per_million: Decimal | int | float | str | None = None,
        reasoning_per_million: Decimal | int | float | str | None = None,
        long_context: LongContextTier | None = None,
    ) -> None:
        rates = _init_rates(
            self,
            (
                input_per_million,
                output_per_million,
                cache_read_per_million,
                cache_write_per_million,
                reasoning_per_million,
            ),
        )
        if long_context is None:
            tier, threshold = rates, _NO_TIER
        elif isinstance(long_context, LongContextTier):
            tier, threshold = long_context._rates, long_context.threshold_tokens
        else:
            raise InvalidValueError(
                f"long_context must be a LongContextTier or None, got {long_context!r}"
            )
        object.__setattr__(self, "long_context", long_context)
        object.__setattr__(self, "_tier", tier)
        object.__setattr__(self, "_threshold", threshold)

    def cost_usd(self, usage: UsageSnapshot) -> Decimal:
        """Return the exact cost of one turn with ``usage`` at these rates."""
        _require_snapshot(usage)
        return _usd(_femto(self, usage))


class TurnCost(NamedTuple):
    """What one recorded turn cost: an immutable record returned by ``record_turn``.

    ``cost_femto_usd`` is the exact cost as an integer number of 1e-15 USD;
    :attr:`cost_usd` is the same amount as a ``Decimal``. ``priced`` is False
    when the model had no pricing (the cost is then zero).
    """

    model: str
    usage: UsageSnapshot
    cost_femto_usd: int
    priced: bool

    @property
    def cost_usd(self) -> Decimal:
        """The exact cost in USD."""
        return _usd(self.cost_femto_usd)


@dataclass(frozen=True, slots=True, init=False)
class UsageLimits:
    """The caps of a :class:`Budget`; ``None`` means no cap of that kind.

    ``max_usd`` accepts what :class:`ModelPricing` rates accept and must be
    exact to 1e-15 USD; the token and request caps are ints >= 0.
    """

    max_usd: Decimal | None
    max_total_tokens: int | None
    max_requests: int | None
    _max_femto: int | None = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        max_usd: Decimal | int | float | str | None = None,
        max_total_tokens: int | None = None,
        max_requests: int | None = None,
    ) -> None:
        if max_usd is None:
            usd, femto = None, None
        else:
            usd = _to_decimal(max_usd, "max_usd")
            femto = _scaled(usd, _USD_POWER, "max_usd", "1e-15 USD")
        for name, value in (("max_total_tokens", max_total_tokens), ("max_requests", max_requests)):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 0
            ):
                raise InvalidValueError(f"{name} must be an int >= 0 or None, got {value!r}")
        object.__setattr__(self, "max_usd", usd)
        object.__setattr__(self, "max_total_tokens", max_total_tokens)
        object.__setattr__(self, "max_requests", max_requests)
        object.__setattr__(self, "_max_femto", femto)


# -- tracker ----------------------------------------------------------------------


class _ModelTotals:
    """Running sums for one model inside a tracker (guarded by the tracker's lock)."""

    __slots__ = (
        "cache_read",
        "cache_write",
        "femto",
        "input",
        "name",
        "output",
        "reasoning",
        "turns",
        "unpriced_turns",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.turns = 0
        self.input = 0
        self.output = 0
        self.cache_read = 0
        self.cache_write = 0
        self.reasoning = 0
        self.femto = 0
        self.unpriced_turns = 0


class UsageTracker:
    """Running token and cost totals of many turns, per model, in O(1) per turn.

    ``record_turn`` prices a turn with the pricing registered for its model
    *at that moment* (re-registering later changes later turns only) and adds
    it to per-model running sums; no per-turn list is kept, so memory is
    bounded by the number of models. A model without pricing costs zero, is
    listed in :attr:`unpriced_models`, and is warned about once per process on
    the ``techrevati.runtime.usage`` logger. With ``budget=``, every recorded
    turn is also charged to that :class:`Budget` (never refused: check the
    budget before the call). Safe to share between threads.
    """

    __slots__ = ("_budget", "_by_key", "_by_name", "_lock")

    def __init__(self, *, budget: Budget | None = None) -> None:
        if budget is not None and not isinstance(budget, Budget):
            raise InvalidValueError(f"budget must be a Budget or None, got {budget!r}")
        self._budget = budget
        self._lock = threading.Lock()
        # Every spelling of a model name seen -> its totals; and stripped name -> totals.
        self._by_key: dict[str, _ModelTotals] = {}
        self._by_name: dict[str, _ModelTotals] = {}

    @property
    def budget(self) -> Budget | None:
        """The budget every recorded turn is charged to, if any."""
        return self._budget

    def record_turn(self, model: str, usage: UsageSnapshot) -> TurnCost:
        """Price ``usage`` for ``model``, add it to the totals, and return its cost.

        Raises :class:`InvalidValueError` if ``model`` is not a non-empty str or
        ``usage`` not a :class:`UsageSnapshot`.
        """
        if type(usage) is not UsageSnapshot:
            _require_snapshot(usage)
        try:
            pricing = _PRICES[model]
            totals = self._by_key[model]
        except (KeyError, TypeError):
            # First turn of this spelling, an unpriced model, a name to strip, or not a str.
            return self._record_slow(model, usage)
        inp = usage.input_tokens
        out = usage.output_tokens
        cache_read = usage.cache_read_tokens
        cache_write = usage.cache_write_tokens
        reasoning = usage.reasoning_tokens
        rate_in, extra_read, extra_write, rate_out, extra_reasoning = (
            pricing._tier if inp > pricing._threshold else pricing._rates
        )
        femto = inp * rate_in + out * rate_out
        if cache_read or cache_write or reasoning:
            femto += (
                cache_read * extra_read + cache_write * extra_write + reasoning * extra_reasoning
            )
        # ``with`` (not lock.acquire()): no thread switch can happen between taking
        # the lock and the first addition, which keeps contended trackers fast.
        with self._lock:
            totals.turns += 1
            totals.input += inp
            totals.output += out
            totals.femto += femto
            if cache_read or cache_write or reasoning:
                totals.cache_read += cache_read
                totals.cache_write += cache_write
                totals.reasoning += reasoning
        if self._budget is not None:
            self._budget._add_spend(model, femto, inp + out)
        return _new_turn_cost(TurnCost, (model, usage, femto, True))

    def cost_for_turn(self, model: str, usage: UsageSnapshot) -> Decimal:
        """Return what ``usage`` would cost for ``model`` now, without recording it."""
        _require_snapshot(usage)
        pricing = _lookup(_model_name(model))
        return Decimal(0) if pricing is None else _usd(_femto(pricing, usage))

    def total_cost(self) -> Decimal:
        """Return the exact total cost of every recorded turn."""
        with self._lock:
            femto = sum(t.femto for t in self._by_name.values())
        return _usd(femto)

    def total_usage(self) -> UsageSnapshot:
        """Return the summed tokens of every recorded turn."""
        with self._lock:
            rows = [_totals_tuple(t) for t in self._by_name.values()]
        return UsageSnapshot(*(sum(r[i] for r in rows) for i in range(1, 6)))

    @property
    def turns(self) -> int:
        """How many turns were recorded."""
        with self._lock:
            return sum(t.turns for t in self._by_name.values())

    @property
    def unpriced_models(self) -> frozenset[str]:
        """Models that had at least one turn recorded without pricing."""
        with self._lock:
            return frozenset(t.name for t in self._by_name.values() if t.unpriced_turns)

    def per_model_summary(self) -> dict[str, dict[str, object]]:
        """Return per-model totals (JSON-serialisable; ``cost_usd`` as an exact string).

        Keys per model: ``turns``, the five token counts, ``total_tokens``,
        ``cost_usd``, ``priced`` (every turn was priced) and ``unpriced_turns``.
        Models appear in the order first recorded.
        """
        with self._lock:
            rows = [(t.name, _totals_tuple(t)) for t in self._by_name.values()]
        return {name: _model_row(row) for name, row in rows}

    def format_cost(self) -> str:
        """Return the total cost like ``"$0.0330"``.

        Four decimals, rounded half up; ``"<$0.0001"`` for a non-zero total
        that would round to zero, ``"$0.0000"`` for exactly zero.
        """
        with self._lock:
            femto = sum(t.femto for t in self._by_name.values())
        return _format_usd(femto)

    def is_over_budget(self, budget_usd: Decimal | int | float | str) -> bool:
        """Return True when the total cost is strictly greater than ``budget_usd``.

        Spending exactly the budget is not over it. Compared exactly, with no
        rounding; ``budget_usd`` is validated like a :class:`UsageLimits` cap.
        """
        limit = _scaled(
            _to_decimal(budget_usd, "budget_usd"), _USD_POWER, "budget_usd", "1e-15 USD"
        )
        with self._lock:
            femto = sum(t.femto for t in self._by_name.values())
        return femto > limit

    def summary(self) -> dict[str, object]:
        """Return totals, per-model rows and unpriced models as a JSON-serialisable dict.

        Keys: ``turns``, the five token counts, ``total_tokens``, ``cost_usd``
        (exact string), ``cost`` (as :meth:`format_cost`), ``models``
        (as :meth:`per_model_summary`) and ``unpriced_models`` (sorted list).
        All read under one lock, so the figures agree with each other.
        """
        with self._lock:
            rows = [(t.name, _totals_tuple(t)) for t in self._by_name.values()]
        sums = [sum(row[i] for _, row in rows) for i in range(8)]
        return {
            "turns": sums[0],
            "input_tokens": sums[1],
            "output_tokens": sums[2],
            "cache_read_tokens": sums[3],
            "cache_write_tokens": sums[4],
            "reasoning_tokens": sums[5],
            "total_tokens": sums[1] + sums[2],
            "cost_usd": str(_usd(sums[6])),
            "cost": _format_usd(sums[6]),
            "models": {name: _model_row(row) for name, row in rows},
            "unpriced_models": sorted(name for name, row in rows if row[7]),
        }

    def __repr__(self) -> str:
        return f"UsageTracker(turns={self.turns}, cost={self.format_cost()})"

    def _record_slow(self, model: str, usage: UsageSnapshot) -> TurnCost:
        """First turn of a spelling, an unpriced model, or a name needing a strip."""
        name = _model_name(model)
        pricing = _lookup(name)
        femto = 0 if pricing is None else _femto(pricing, usage)
        with self._lock:
            totals = self._by_key.get(model)
            if totals is None:
                totals = self._by_name.get(name)
                if totals is None:
                    totals = self._by_name[name] = _ModelTotals(name)
                self._by_key[model] = totals
            totals.turns += 1
            totals.input += usage.input_tokens
            totals.output += usage.output_tokens
            totals.cache_read += usage.cache_read_tokens
            totals.cache_write += usage.cache_write_tokens
            totals.reasoning += usage.reasoning_tokens
            totals.femto += femto
            if pricing is None:
                totals.unpriced_turns += 1
        if self._budget is not None:
            self._budget._add_spend(name, femto, usage.input_tokens + usage.output_tokens)
        return TurnCost(name, usage, femto, pricing is not None)


# -- budget -----------------------------------------------------------------------


class Budget:
    """A thread-safe cap on dollars, tokens and requests, shareable by many trackers.

    Give it :class:`UsageLimits` or the same three keywords. Before a call,
    :meth:`check_before` refuses when a limit is already reached or the
    call's estimate would go past it; :meth:`reserve` does the same check
    and holds the estimate atomically, so concurrent callers can never
    overshoot together. After the call, settle the reservation with the
    actual usage (or :meth:`charge` without one). A limit is *reached* when
    spent plus reserved is at least the limit; spending is *over* it only
    when strictly greater (:meth:`check_after`, :meth:`is_exceeded`).

    A model without pricing costs $0 here too, but its tokens and requests
    still count. With ``fail_closed_on_unpriced=True`` and a dollar cap,
    :meth:`check_before` and :meth:`reserve` refuse unpriced models instead.
    Exact under concurrency: one lock guards integer femto-dollar sums.

    A call given no estimate holds what this budget expects that model to
    cost: the actual cost and tokens of its last settled or charged call
    (a conversation's next turn is usually at least as long as its last),
    or ``default_estimate`` for a model not seen yet (nothing without one). So concurrent callers
    overshoot a cap by at most the sum, over the calls in flight, of how much
    each one's actual cost exceeded what it held.
    """

    __slots__ = (
        "_expect",
        "_fail_closed",
        "_limits",
        "_lock",
        "_max_femto",
        "_max_requests",
        "_max_tokens",
        "_names",
        "_requests",
        "_reserved_femto",
        "_reserved_requests",
        "_reserved_tokens",
        "_spent_femto",
        "_spent_tokens",
        "default_estimate",
    )

    def __init__(
        self,
        limits: UsageLimits | None = None,
        *,
        max_usd: Decimal | int | float | str | None = None,
        max_total_tokens: int | None = None,
        max_requests: int | None = None,
        fail_closed_on_unpriced: bool = False,
        default_estimate: UsageSnapshot | None = None,
    ) -> None:
        keywords = (max_usd, max_total_tokens, max_requests)
        if limits is None:
            limits = UsageLimits(max_usd, max_total_tokens, max_requests)
        elif not isinstance(limits, UsageLimits):
            raise InvalidValueError(f"limits must be a UsageLimits or None, got {limits!r}")
        elif any(value is not None for value in keywords):
            raise InvalidValueError(
                "give either limits or max_usd/max_total_tokens/max_requests, not both"
            )
        if not isinstance(fail_closed_on_unpriced, bool):
            raise InvalidValueError(
                f"fail_closed_on_unpriced must be a bool, got {fail_closed_on_unpriced!r}"
            )
        if default_estimate is not None and type(default_estimate) is not UsageSnapshot:
            raise InvalidValueError(
                f"default_estimate must be a UsageSnapshot or None, got {default_estimate!r}"
            )
        self.default_estimate = default_estimate
        """What a call of a model this budget has not seen yet holds (``None``: nothing)."""
        # Per model: what a call with no estimate holds (the last actual call's figures).
        self._expect: dict[str, tuple[int, int]] = {}
        self._names: dict[str, str] = {}  # each spelling seen -> the stripped name
        self._limits = limits
        self._max_femto = limits._max_femto
        self._max_tokens = limits.max_total_tokens
        self._max_requests = limits.max_requests
        self._fail_closed = fail_closed_on_unpriced
        self._lock = threading.Lock()
        self._spent_femto = 0
        self._spent_tokens = 0
        self._requests = 0
        self._reserved_femto = 0
        self._reserved_tokens = 0
        self._reserved_requests = 0

    @property
    def limits(self) -> UsageLimits:
        """The caps this budget enforces."""
        return self._limits

    @property
    def fail_closed_on_unpriced(self) -> bool:
        """Whether calls to unpriced models are refused when a dollar cap is set."""
        return self._fail_closed

    @property
    def spent_usd(self) -> Decimal:
        """Dollars spent by settled reservations and charges."""
        return _usd(self._spent_femto)

    @property
    def reserved_usd(self) -> Decimal:
        """Dollars held by open reservations."""
        return _usd(self._reserved_femto)

    @property
    def spent_tokens(self) -> int:
        """Tokens (input + output) spent by settled reservations and charges."""
        return self._spent_tokens

    @property
    def reserved_tokens(self) -> int:
        """Tokens held by open reservations."""
        return self._reserved_tokens

    @property
    def requests(self) -> int:
        """Requests settled or charged."""
        return self._requests

    @property
    def reserved_requests(self) -> int:
        """Open reservations (each holds one request)."""
        return self._reserved_requests

    @property
    def remaining_usd(self) -> Decimal | None:
        """Dollars left after spending and reservations (never below 0); None if uncapped."""
        if self._max_femto is None:
            return None
        with self._lock:
            left = self._max_femto - self._spent_femto - self._reserved_femto
        return _usd(max(left, 0))

    def check_before(self, estimate: UsageSnapshot | None = None, *, model: str = "") -> None:
        """Raise :class:`BudgetExceededError` unless a call with ``estimate`` fits.

        Refuses when any limit is already reached (spent + reserved >= limit)
        or when spent + reserved + the estimate's cost, tokens, or one more
        request would go past it. The estimate is priced for ``model``; with
        ``model=""`` (no model) it costs nothing; with no estimate the call
        is expected to cost what the class docstring says. Reserves nothing: use
        :meth:`reserve` when calls may run concurrently.
        """
        name = "" if model == "" else _model_name(model)
        femto, tokens = self._price_estimate(name, estimate)
        with self._lock:
            if estimate is None and name:
                femto, tokens = self._expect.get(name, (femto, tokens))
            self._refuse_if_over(femto, tokens, name)

    def check_after(self) -> None:
        """Raise :class:`BudgetExceededError` if spending is strictly over a limit."""
        with self._lock:
            checks: tuple[tuple[LimitKind, int | None, int], ...] = (
                ("usd", self._max_femto, self._spent_femto),
                ("tokens", self._max_tokens, self._spent_tokens),
                ("requests", self._max_requests, self._requests),
            )
            for kind, limit, spent in checks:
                if limit is not None and spent > limit:
                    raise self._error(kind, limit, spent, after=True)

    def reserve(self, model: str, estimate: UsageSnapshot | None = None) -> BudgetReservation:
        """Atomically check that a call fits and hold its estimate until settled.

        Refuses exactly as :meth:`check_before` (raising
        :class:`BudgetExceededError`); otherwise holds the estimate's cost,
        tokens and one request. Settle the returned reservation with the actual
        usage, or release it; as a context manager it is released on exit
        unless settled.
        """
        name, femto, tokens = self._hold(model, estimate)
        return BudgetReservation(self, name, femto, tokens)

    def _hold(self, model: str, estimate: UsageSnapshot | None) -> tuple[str, int, int]:
        """Check and hold one call as :meth:`reserve` does; return (name, femto, tokens) held.

        The bare engine of :meth:`reserve`, for callers that track the hold
        themselves (a session's turn) and give it back with
        :meth:`_settle_hold` or :meth:`_release_hold`, exactly once.
        """
        name = self._names.get(model) if type(model) is str else None
        if name is None:
            name = _model_name(model)
            if len(self._names) < _MAX_SPELLINGS:
                self._names[model] = name
        if estimate is None and self.default_estimate is None and not self._fail_closed:
            femto = tokens = 0  # the common case: nothing to price outside the lock
        else:
            femto, tokens = self._price_estimate(name, estimate)
        with self._lock:
            if estimate is None:
                femto, tokens = self._expect.get(name, (femto, tokens))
            limit = self._max_femto
            if limit is not None and (
                self._spent_femto + self._reserved_femto + (femto or 1) > limit
            ):
                self._refuse_if_over(femto, tokens, name)
            limit = self._max_tokens
            if limit is not None and (
                self._spent_tokens + self._reserved_tokens + (tokens or 1) > limit
            ):
                self._refuse_if_over(femto, tokens, name)
            limit = self._max_requests
            if limit is not None and self._requests + self._reserved_requests + 1 > limit:
                self._refuse_if_over(femto, tokens, name)
            self._reserved_femto += femto
            self._reserved_tokens += tokens
            self._reserved_requests += 1
        return name, femto, tokens

    def charge(self, model: str, usage: UsageSnapshot) -> TurnCost:
        """Add a call's actual cost, tokens and one request; never refuses.

        Use when no reservation was made; follow with :meth:`check_after` to
        learn whether the spend went over.
        """
        _require_snapshot(usage)
        name = _model_name(model)
        pricing = _lookup(name)
        femto = 0 if pricing is None else _femto(pricing, usage)
        self._add_spend(name, femto, usage.input_tokens + usage.output_tokens)
        return TurnCost(name, usage, femto, pricing is not None)

    def is_exceeded(self) -> bool:
        """Return True when spending is strictly over any limit."""
        with self._lock:
            return (
                (self._max_femto is not None and self._spent_femto > self._max_femto)
                or (self._max_tokens is not None and self._spent_tokens > self._max_tokens)
                or (self._max_requests is not None and self._requests > self._max_requests)
            )

    def summary(self) -> dict[str, object]:
        """Return limits, spending and reservations as a JSON-serialisable dict."""
        with self._lock:
            spent, reserved = self._spent_femto, self._reserved_femto
            tokens, reserved_tokens = self._spent_tokens, self._reserved_tokens
            requests, reserved_requests = self._requests, self._reserved_requests
        max_usd = self._limits.max_usd
        return {
            "max_usd": None if max_usd is None else str(max_usd),
            "max_total_tokens": self._max_tokens,
            "max_requests": self._max_requests,
            "spent_usd": str(_usd(spent)),
            "reserved_usd": str(_usd(reserved)),
            "spent_tokens": tokens,
            "reserved_tokens": reserved_tokens,
            "requests": requests,
            "reserved_requests": reserved_requests,
        }

    def __repr__(self) -> str:
        return f"Budget({self._limits!r}, spent_usd={self.spent_usd})"

    def _price_estimate(self, name: str, estimate: UsageSnapshot | None) -> tuple[int, int]:
        """Return the estimate's (femto-dollars, tokens); refuse unpriced models if fail-closed."""
        if estimate is not None:
            _require_snapshot(estimate)
        if not name:
            return 0, 0 if estimate is None else estimate.total_tokens
        pricing = _lookup(name)
        if pricing is None and self._fail_closed and self._max_femto is not None:
            raise BudgetExceededError(
                f"budget refused model {name!r}: it has no pricing and the budget fails "
                "closed on unpriced models",
                limit_kind="usd",
                limit=_usd(self._max_femto),
                spent=self.spent_usd,
                reserved=self.reserved_usd,
                limit_usd=_usd(self._max_femto),
                spent_usd=self.spent_usd,
                model=name,
            )
        if estimate is None:
            estimate = self.default_estimate
            if estimate is None:
                return 0, 0
        femto = 0 if pricing is None else _femto(pricing, estimate)
        return femto, estimate.total_tokens

    def _refuse_if_over(self, femto: int, tokens: int, model: str) -> None:
        """Raise if a call costing ``femto``/``tokens`` does not fit (lock held)."""
        checks: tuple[tuple[LimitKind, int | None, int, int, int], ...] = (
            ("usd", self._max_femto, self._spent_femto, self._reserved_femto, femto),
            ("tokens", self._max_tokens, self._spent_tokens, self._reserved_tokens, tokens),
            ("requests", self._max_requests, self._requests, self._reserved_requests, 1),
        )
        for kind, limit, spent, reserved, wanted in checks:
            if limit is None:
                continue
            committed = spent + reserved
            if committed >= limit or committed + wanted > limit:
                raise self._error(kind, limit, spent, reserved=reserved, wanted=wanted, model=model)

    def _error(
        self,
        kind: LimitKind,
        limit: int,
        spent: int,
        *,
        reserved: int = 0,
        wanted: int = 0,
        model: str = "",
        after: bool = False,
    ) -> BudgetExceededError:
        """Build the error for ``kind`` from raw integer figures (lock held)."""
        return _limit_error(
            kind,
            limit,
            spent,
            reserved=reserved,
            wanted=wanted,
            model=model,
            after=after,
            limit_femto=self._max_femto,
            spent_femto=self._spent_femto,
        )

    def _add_spend(self, name: str, femto: int, tokens: int) -> None:
        with self._lock:
            self._spent_femto += femto
            self._spent_tokens += tokens
            self._requests += 1
            self._expect[name] = (femto, tokens)

    def _settle(self, reservation: BudgetReservation, femto: int, tokens: int) -> None:
        with self._lock:
            state = reservation._state
            if state != "active":
                raise ReservationError(
                    f"cannot settle a {state} reservation for model {reservation.model!r}; "
                    "use Budget.charge to add spend without one"
                )
            reservation._state = "settled"
            self._settle_locked(
                reservation.model, reservation._femto, reservation._tokens, femto, tokens
            )

    def _settle_hold(
        self, name: str, held_femto: int, held_tokens: int, femto: int, tokens: int
    ) -> None:
        """Replace a hold taken by :meth:`_hold` with the call's actual cost."""
        with self._lock:
            self._settle_locked(name, held_femto, held_tokens, femto, tokens)

    def _settle_locked(
        self, name: str, held_femto: int, held_tokens: int, femto: int, tokens: int
    ) -> None:
        self._reserved_femto -= held_femto
        self._reserved_tokens -= held_tokens
        self._reserved_requests -= 1
        self._spent_femto += femto
        self._spent_tokens += tokens
        self._requests += 1
        self._expect[name] = (femto, tokens)  # what the model's next call should hold

    def _release(self, reservation: BudgetReservation) -> bool:
        with self._lock:
            if reservation._state != "active":
                return False
            reservation._state = "released"
            self._release_locked(reservation._femto, reservation._tokens)
            return True

    def _release_hold(self, held_femto: int, held_tokens: int) -> None:
        """Give back a hold taken by :meth:`_hold` (the call was not billed)."""
        with self._lock:
            self._release_locked(held_femto, held_tokens)

    def _release_locked(self, held_femto: int, held_tokens: int) -> None:
        self._reserved_femto -= held_femto
        self._reserved_tokens -= held_tokens
        self._reserved_requests -= 1


class BudgetReservation:
    """An estimate held by a :class:`Budget` until the call it guards finishes.

    Made by :meth:`Budget.reserve`. :meth:`settle` replaces the hold with the
    actual spend (once: a second settle, or a settle after release, raises
    :class:`ReservationError` so nothing is charged twice); :meth:`release`
    drops the hold and is a no-op when already settled or released. As a
    context manager it releases on exit unless settled. Safe to share
    between threads (its state is guarded by the budget's lock).
    """

    __slots__ = ("_budget", "_femto", "_state", "_tokens", "model")

    def __init__(self, budget: Budget, model: str, femto: int, tokens: int) -> None:
        self._budget = budget
        self.model = model
        self._femto = femto
        self._tokens = tokens
        self._state: Literal["active", "settled", "released"] = "active"

    @property
    def budget(self) -> Budget:
        """The budget holding this reservation."""
        return self._budget

    @property
    def state(self) -> Literal["active", "settled", "released"]:
        """``"active"`` until settled or released."""
        return self._state

    @property
    def reserved_usd(self) -> Decimal:
        """The estimated cost held."""
        return _usd(self._femto)

    @property
    def reserved_tokens(self) -> int:
        """The estimated tokens held."""
        return self._tokens

    def settle(self, actual: UsageSnapshot) -> TurnCost:
        """Replace the hold with the actual usage's cost and return that cost.

        The actual cost is charged even when it exceeds the estimate (the
        money is spent); follow with :meth:`Budget.check_after` to learn
        whether that went over a limit.
        """
        _require_snapshot(actual)
        name = _model_name(self.model)
        pricing = _lookup(name)
        femto = 0 if pricing is None else _femto(pricing, actual)
        self._budget._settle(self, femto, actual.input_tokens + actual.output_tokens)
        return TurnCost(name, actual, femto, pricing is not None)

    def release(self) -> bool:
        """Drop the hold; return False (and do nothing) if already settled or released."""
        return self._budget._release(self)

    def __enter__(self) -> BudgetReservation:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._budget._release(self)

    def __repr__(self) -> str:
        return (
            f"BudgetReservation(model={self.model!r}, state={self._state!r}, "
            f"reserved_usd={self.reserved_usd}, reserved_tokens={self._tokens})"
        )


# -- pricing registry -----------------------------------------------------------------

_PRICES: dict[str, ModelPricing] = {}
"""Model name (stripped) -> pricing. Written under _REGISTRY_LOCK; read without it."""
_WARNED: set[str] = set()
"""Unpriced models already warned about in this process."""
_REGISTRY_LOCK: Final = threading.Lock()


def register_pricing(model: str, pricing: ModelPricing) -> None:
    """Register (or replace) the pricing of ``model``; thread-safe, last one wins.

    The name is matched exactly after stripping surrounding whitespace (case
    matters). Turns already recorded keep the cost they had.
    """
    name = _model_name(model)
    if not isinstance(pricing, ModelPricing):
        raise InvalidValueError(f"pricing must be a ModelPricing, got {pricing!r}")
    with _REGISTRY_LOCK:
        _PRICES[name] = pricing


def has_pricing(model: str) -> bool:
    """Return True if ``model`` (stripped) has registered pricing."""
    return _model_name(model) in _PRICES


def get_pricing(model: str) -> ModelPricing | None:
    """Return the pricing registered for ``model`` (stripped), or None."""
    return _PRICES.get(_model_name(model))


def unregister_pricing(model: str) -> bool:
    """Forget the pricing of ``model``; return whether it had one."""
    name = _model_name(model)
    with _REGISTRY_LOCK:
        return _PRICES.pop(name, None) is not None


def clear_pricing() -> None:
    """Forget every registered pricing and which unpriced models were warned about.

    Meant for tests; the registry starts empty.
    """
    with _REGISTRY_LOCK:
        _PRICES.clear()
        _WARNED.clear()


def load_pricing_from_file(path: str | os.PathLike[str]) -> list[str]:
    r"""Register every model priced in a JSON or TOML file; return their names in file order.

    ``.toml`` files are read as TOML, anything else as JSON; numbers are read
    as exact decimals. Two schemas are accepted: ours,
    ``{"models": {name: {"input_per_million": ..., "output_per_million": ...,
    "cache_read_per_million", "cache_write_per_million",
    "reasoning_per_million", "long_context": {"threshold_tokens": ...,
    ...rates}}}}`` (numbers or strings), and LiteLLM's
    ``model_prices_and_context_window.json`` (USD per token; see the usage
    docs for which keys are read and which entries are skipped). All or
    nothing: any bad entry raises one :class:`PricingFileError` naming the
    file and the entry, and nothing is registered. A missing file raises
    ``FileNotFoundError`` (other ``OSError``\ s pass through too).
    """
    where = os.fspath(path)
    file = Path(where)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PricingFileError(f"not UTF-8 text: {exc}", path=where) from exc
    parsed = _parse_pricing_text(text, where, toml=file.suffix.lower() == ".toml")
    with _REGISTRY_LOCK:
        _PRICES.update(parsed)
    return list(parsed)


# -- private helpers ----------------------------------------------------------------

_MISSING: Final = object()
_new_turn_cost: Final = tuple.__new__
_MAX_SPELLINGS: Final = 4096
"""Model-name spellings a budget remembers (stripped once each), at most."""


def _model_name(model: object) -> str:
    """Return ``model`` stripped, or raise naming it if it is not a non-empty str."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidValueError(f"model must be a non-empty str, got {model!r}")
    return model.strip()


def _lookup(name: str) -> ModelPricing | None:
    """Return the pricing of ``name``; warn once per process when there is none."""
    pricing = _PRICES.get(name)
    if pricing is None and name not in _WARNED:
        with _REGISTRY_LOCK:
            first = name not in _WARNED
            _WARNED.add(name)
        if first:
            _LOG.warning(
                "no pricing registered for model %r: its turns cost $0 and it is listed as "
                "unpriced (register_pricing or load_pricing_from_file to price it)",
                name,
            )
    return pricing


def _limit_error(
    kind: LimitKind,
    limit: int,
    spent: int,
    *,
    reserved: int,
    wanted: int,
    model: str,
    after: bool,
    limit_femto: int | None,
    spent_femto: int,
) -> BudgetExceededError:
    """Build the :class:`BudgetExceededError` of one limit from raw integer figures."""
    show: Callable[[int], str] = _money if kind == "usd" else str
    raw = (limit, spent, reserved, wanted)
    figures: tuple[Decimal | int, ...] = tuple(_usd(v) for v in raw) if kind == "usd" else raw
    unit = {"usd": "", "tokens": " tokens", "requests": " requests"}[kind]
    if after:
        message = f"budget exceeded ({kind}): spent {show(spent)}{unit} > limit {show(limit)}"
    elif spent + reserved >= limit:
        message = (
            f"budget exhausted ({kind}): spent {show(spent)} + reserved {show(reserved)}"
            f"{unit} has reached the limit {show(limit)}"
        )
    else:
        message = (
            f"budget would be exceeded ({kind}): spent {show(spent)} + reserved "
            f"{show(reserved)} + this call {show(wanted)}{unit} > limit {show(limit)}"
        )
    if model:
        message += f" (model {model!r})"
    return BudgetExceededError(
        message,
        limit_kind=kind,
        limit=figures[0],
        spent=figures[1],
        reserved=figures[2],
        requested=figures[3],
        limit_usd=None if limit_femto is None else _usd(limit_femto),
        spent_usd=_usd(spent_femto),
        model=model,
    )


def _cost_femto(model: str, usage: UsageSnapshot) -> int:
    """Return what ``usage`` costs for ``model`` now, in 1e-15 USD (0 when unpriced)."""
    pricing = _lookup(_model_name(model))
    return 0 if pricing is None else _femto(pricing, usage)


def _require_snapshot(usage: object) -> None:
    if not isinstance(usage, UsageSnapshot):
        raise InvalidValueError(f"usage must be a UsageSnapshot, got {usage!r}")


def _femto(pricing: ModelPricing, usage: UsageSnapshot) -> int:
    """Return the exact cost of ``usage`` in femto-dollars (disjoint parts, whole-turn tier)."""
    rates = pricing._tier if usage.input_tokens > pricing._threshold else pricing._rates
    rate_in, extra_read, extra_write, rate_out, extra_reasoning = rates
    return (
        usage.input_tokens * rate_in
        + usage.cache_read_tokens * extra_read
        + usage.cache_write_tokens * extra_write
        + usage.output_tokens * rate_out
        + usage.reasoning_tokens * extra_reasoning
    )


def _init_rates(
    target: ModelPricing | LongContextTier, given: tuple[object, object, object, object, object]
) -> tuple[int, int, int, int, int]:
    """Validate and store the five rates of ``target``; store and return its integer rates.

    The integer rates are femto-dollars per token, arranged so that
    ``in*r0 + cache_read*r1 + cache_write*r2 + out*r3 + reasoning*r4`` equals
    uncached input at the input rate + cache reads + cache writes + non-reasoning
    output at the output rate + reasoning, each at its own rate.
    """
    femto: dict[str, int] = {}
    for name, value in zip(_RATE_FIELDS, given, strict=True):
        rate = None
        if value is not None or name in ("input_per_million", "output_per_million"):
            rate = _to_decimal(value, name)
            femto[name] = _scaled(rate, _RATE_POWER, name, "1e-15 USD per token (9 decimals)")
        object.__setattr__(target, name, rate)
    rate_in = femto["input_per_million"]
    rate_out = femto["output_per_million"]
    rates = (
        rate_in,
        femto.get("cache_read_per_million", rate_in) - rate_in,
        femto.get("cache_write_per_million", rate_in) - rate_in,
        rate_out,
        femto.get("reasoning_per_million", rate_out) - rate_out,
    )
    object.__setattr__(target, "_rates", rates)
    return rates


def _to_decimal(value: object, name: str) -> Decimal:
    """Return ``value`` as a finite Decimal >= 0, or raise naming ``name`` and the value."""
    if isinstance(value, bool):
        raise InvalidValueError(f"{name} must be a number, not a bool, got {value!r}")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(repr(value))
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except (InvalidOperation, ValueError):
            raise InvalidValueError(f"{name} must be a decimal number, got {value!r}") from None
    else:
        raise InvalidValueError(
            f"{name} must be a Decimal, int, float or str, got {type(value).__name__} {value!r}"
        )
    if not number.is_finite() or (number.is_signed() and number != 0):
        raise InvalidValueError(f"{name} must be finite and >= 0, got {value!r}")
    if number.is_zero():
        return Decimal(0)
    if number.adjusted() >= _MAX_ADJUSTED:
        raise InvalidValueError(f"{name} is unreasonably large (>= 1e15), got {value!r}")
    return number


def _scaled(number: Decimal, power: int, name: str, unit: str) -> int:
    """Return ``number * 10**power`` as an exact int, or raise if it is not whole."""
    numerator, denominator = number.as_integer_ratio()
    scale: int = 10**power
    whole, rest = divmod(numerator * scale, denominator)
    if rest:
        raise InvalidValueError(
            f"{name} has more precision than {unit} can hold exactly, got {number:f} "
            "(refusing to round it)"
        )
    return whole


def _usd(femto: int) -> Decimal:
    """Return ``femto`` femto-dollars as an exact Decimal, trailing zeros dropped.

    Built from a string, so the caller's decimal context plays no part.
    """
    if not femto:
        return Decimal(0)
    exponent = -_USD_POWER
    while exponent < 0 and not femto % 10:
        femto //= 10
        exponent += 1
    return Decimal(f"{femto}E{exponent}")


def _money(femto: int) -> str:
    return f"${_usd(femto)}"


def _format_usd(femto: int) -> str:
    """``$`` and four decimals, half up; ``<$0.0001`` for tiny non-zero amounts."""
    steps = (femto + _FORMAT_STEP // 2) // _FORMAT_STEP
    if steps == 0 and femto > 0:
        return "<$0.0001"
    return f"${steps // 10_000}.{steps % 10_000:04d}"


def _totals_tuple(totals: _ModelTotals) -> tuple[int, int, int, int, int, int, int, int]:
    return (
        totals.turns,
        totals.input,
        totals.output,
        totals.cache_read,
        totals.cache_write,
        totals.reasoning,
        totals.femto,
        totals.unpriced_turns,
    )


def _model_row(row: tuple[int, int, int, int, int, int, int, int]) -> dict[str, object]:
    turns, inp, out, cache_read, cache_write, reasoning, femto, unpriced = row
    return {
        "turns": turns,
        "input_tokens": inp,
        "output_tokens": out,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": reasoning,
        "total_tokens": inp + out,
        "cost_usd": str(_usd(femto)),
        "priced": unpriced == 0,
        "unpriced_turns": unpriced,
    }


# -- reading SDK usage ------------------------------------------------------------------


def _read(obj: object, name: str) -> object:
    """Return ``obj[name]`` or ``obj.name``, ``_MISSING`` if absent; wrap other failures."""
    try:
        if isinstance(obj, Mapping):
            return obj.get(name, _MISSING)
        return getattr(obj, name, _MISSING)
    except Exception as exc:
        raise UsageParseError(
            f"reading {name!r} of {type(obj).__name__} raised {type(exc).__name__}: {exc}"
        ) from exc


def _count(obj: object, name: str, source: str) -> int:
    """Return the token count ``name`` of ``obj`` (0 when missing or None)."""
    value = _read(obj, name)
    if value is _MISSING or value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UsageParseError(f"{source} field {name} must be an int >= 0, got {value!r}")
    return value


def _nested(obj: object, name: str, field_name: str, source: str) -> int:
    """Return ``obj.name.field_name`` as a count (0 when either level is missing)."""
    details = _read(obj, name)
    if details is _MISSING or details is None:
        return 0
    return _count(details, field_name, f"{source} {name}")


def _has(obj: object, *names: str) -> bool:
    return any(_read(obj, name) is not _MISSING for name in names)


def _snapshot_from_usage(usage: object) -> UsageSnapshot | None:
    """Return the snapshot of a usage object/dict of a known shape, else None."""
    if isinstance(usage, (str, bytes, bytearray, int, float)) or usage is None:
        return None
    kind = type(usage).__name__
    if _has(usage, "prompt_tokens", "completion_tokens"):
        source = f"OpenAI chat usage ({kind})"
        fields = (
            _count(usage, "prompt_tokens", source),
            _count(usage, "completion_tokens", source),
            _nested(usage, "prompt_tokens_details", "cached_tokens", source),
            _nested(usage, "prompt_tokens_details", "cache_write_tokens", source),
            _nested(usage, "completion_tokens_details", "reasoning_tokens", source),
        )
    elif _has(usage, "prompt_token_count", "candidates_token_count", "thoughts_token_count"):
        source = f"Gemini usage_metadata ({kind})"
        thoughts = _count(usage, "thoughts_token_count", source)
        fields = (
            _count(usage, "prompt_token_count", source)
            + _count(usage, "tool_use_prompt_token_count", source),
            _count(usage, "candidates_token_count", source) + thoughts,
            _count(usage, "cached_content_token_count", source),
            0,
            thoughts,
        )
    elif _has(usage, "promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount"):
        source = f"Gemini usageMetadata ({kind})"
        thoughts = _count(usage, "thoughtsTokenCount", source)
        fields = (
            _count(usage, "promptTokenCount", source)
            + _count(usage, "toolUsePromptTokenCount", source),
            _count(usage, "candidatesTokenCount", source) + thoughts,
            _count(usage, "cachedContentTokenCount", source),
            0,
            thoughts,
        )
    elif _has(usage, "inputTokens", "outputTokens"):
        source = f"Bedrock Converse usage ({kind})"
        cache_read = _count(usage, "cacheReadInputTokens", source)
        cache_write = _count(usage, "cacheWriteInputTokens", source)
        fields = (
            _count(usage, "inputTokens", source) + cache_read + cache_write,
            _count(usage, "outputTokens", source),
            cache_read,
            cache_write,
            0,
        )
    elif _has(usage, "input_tokens", "output_tokens"):
        if _has(usage, "cache_creation_input_tokens", "cache_read_input_tokens"):
            source = f"Anthropic usage ({kind})"
            cache_read = _count(usage, "cache_read_input_tokens", source)
            cache_write = _count(usage, "cache_creation_input_tokens", source)
            out = _count(usage, "output_tokens", source)
            thinking = _nested(usage, "output_tokens_details", "thinking_tokens", source)
            fields = (
                _count(usage, "input_tokens", source) + cache_read + cache_write,
                out,
                cache_read,
                cache_write,
                min(thinking, out),  # documented as <= output_tokens; an approximation
            )
        else:
            source = f"OpenAI Responses usage ({kind})"
            fields = (
                _count(usage, "input_tokens", source),
                _count(usage, "output_tokens", source),
                _nested(usage, "input_tokens_details", "cached_tokens", source),
                _nested(usage, "input_tokens_details", "cache_write_tokens", source),
                _nested(usage, "output_tokens_details", "reasoning_tokens", source),
            )
    else:
        return None
    try:
        return UsageSnapshot(*fields)
    except InvalidValueError as exc:
        raise UsageParseError(f"{source} is inconsistent: {exc}") from exc


# -- reading pricing files -----------------------------------------------------------

_OUR_RATE_KEYS: Final = frozenset(
    {
        "input_per_million",
        "output_per_million",
        "cache_read_per_million",
        "cache_write_per_million",
        "reasoning_per_million",
    }
)
_OUR_MODEL_KEYS: Final = _OUR_RATE_KEYS | {"long_context"}
_OUR_TIER_KEYS: Final = _OUR_RATE_KEYS | {"threshold_tokens"}

_LITELLM_BASE: Final = {
    "input_cost_per_token": "input_per_million",
    "output_cost_per_token": "output_per_million",
    "cache_read_input_token_cost": "cache_read_per_million",
    "cache_creation_input_token_cost": "cache_write_per_million",
    "output_cost_per_reasoning_token": "reasoning_per_million",
}
_LITELLM_TIER: Final = re.compile(
    r"^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost"
    r"|cache_creation_input_token_cost|output_cost_per_reasoning_token)_above_(\d+)k_tokens$"
)
_LITELLM_SKIP: Final = "sample_spec"


def _parse_pricing_text(text: str, path: str, *, toml: bool) -> dict[str, ModelPricing]:
    """Parse and validate a whole pricing file; return name -> pricing in file order."""
    data: object
    try:
        if toml:
            data = tomllib.loads(text, parse_float=Decimal)
        else:
            data = json.loads(text, parse_float=Decimal, parse_constant=Decimal)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if toml else "JSON"
        raise PricingFileError(f"invalid {kind}: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise PricingFileError(f"expected a top-level object, got {type(data).__name__}", path=path)
    if "models" in data:
        extra = sorted(set(data) - {"models"})
        if extra:
            raise PricingFileError(f"unknown top-level keys {extra} beside 'models'", path=path)
        models = data["models"]
        if not isinstance(models, dict):
            raise PricingFileError(
                f"'models' must be a table of model entries, got {type(models).__name__}",
                path=path,
            )
        entries = [(name, _our_entry(name, entry, path)) for name, entry in models.items()]
    elif _looks_like_litellm(data):
        entries = _litellm_entries(data, path)
    else:
        raise PricingFileError(
            "unknown schema: expected {'models': {...}} or LiteLLM's "
            "model_prices_and_context_window.json",
            path=path,
        )
    result: dict[str, ModelPricing] = {}
    for raw, pricing in entries:
        name = raw.strip()
        if not name:
            raise PricingFileError("model name must not be empty", path=path, entry=raw)
        if name in result:
            raise PricingFileError("model listed twice (names are stripped)", path=path, entry=raw)
        result[name] = pricing
    return result


def _our_entry(name: str, entry: object, path: str) -> ModelPricing:
    if not isinstance(entry, dict):
        raise PricingFileError(
            f"entry must be a table of rates, got {type(entry).__name__}", path=path, entry=name
        )
    unknown = sorted(set(entry) - _OUR_MODEL_KEYS)
    if unknown:
        raise PricingFileError(f"unknown keys {unknown}", path=path, entry=name)
    missing = sorted({"input_per_million", "output_per_million"} - set(entry))
    if missing:
        raise PricingFileError(f"missing required keys {missing}", path=path, entry=name)
    try:
        tier = None
        raw_tier = entry.get("long_context")
        if raw_tier is not None:
            if not isinstance(raw_tier, dict):
                raise InvalidValueError(
                    f"long_context must be a table, got {type(raw_tier).__name__}"
                )
            unknown = sorted(set(raw_tier) - _OUR_TIER_KEYS)
            if unknown:
                raise InvalidValueError(f"unknown long_context keys {unknown}")
            missing = sorted(
                {"threshold_tokens", "input_per_million", "output_per_million"} - set(raw_tier)
            )
            if missing:
                raise InvalidValueError(f"long_context is missing required keys {missing}")
            tier = LongContextTier(**raw_tier)
        rates = {key: value for key, value in entry.items() if key != "long_context"}
        return ModelPricing(**rates, long_context=tier)
    except InvalidValueError as exc:
        raise PricingFileError(str(exc), path=path, entry=name) from exc


def _looks_like_litellm(data: dict[str, object]) -> bool:
    return any(
        name == _LITELLM_SKIP
        or (
            isinstance(entry, dict)
            and ("litellm_provider" in entry or any(key in entry for key in _LITELLM_BASE))
        )
        for name, entry in data.items()
    )


def _litellm_entries(data: dict[str, object], path: str) -> list[tuple[str, ModelPricing]]:
    entries: list[tuple[str, ModelPricing]] = []
    unsupported: list[str] = []
    for name, entry in data.items():
        if name == _LITELLM_SKIP:
            continue
        if not isinstance(entry, dict):
            raise PricingFileError(
                f"entry must be an object, got {type(entry).__name__}", path=path, entry=name
            )
        try:
            pricing = _litellm_pricing(entry)
        except InvalidValueError as exc:
            raise PricingFileError(str(exc), path=path, entry=name) from exc
        if pricing is _UNSUPPORTED:
            unsupported.append(name)
        elif isinstance(pricing, ModelPricing):
            entries.append((name, pricing))
    if unsupported:
        _LOG.warning(
            "%s: skipped %d LiteLLM entries whose pricing cannot be represented "
            "(tiered_pricing, or several long-context thresholds): %s",
            path,
            len(unsupported),
            ", ".join(unsupported[:10]) + (", ..." if len(unsupported) > 10 else ""),
        )
    return entries


_UNSUPPORTED: Final = object()


def _litellm_pricing(entry: dict[str, object]) -> ModelPricing | object | None:
    """Return the pricing of one LiteLLM entry, None to skip it, or _UNSUPPORTED."""
    base = {
        ours: _per_token(entry[key], key)
        for key, ours in _LITELLM_BASE.items()
        if entry.get(key) is not None
    }
    if "input_per_million" not in base and "output_per_million" not in base:
        return None  # not priced per token (image, audio, per-request models)
    if entry.get("tiered_pricing") is not None:
        return _UNSUPPORTED
    tiers: dict[int, dict[str, Decimal]] = {}
    for key, value in entry.items():
        match = _LITELLM_TIER.match(key)
        if match is None or value is None:
            continue
        threshold = int(match.group(2)) * LONG_CONTEXT_LITELLM_UNIT
        tiers.setdefault(threshold, {})[_LITELLM_BASE[match.group(1)]] = _per_token(value, key)
    if len(tiers) > 1:
        return _UNSUPPORTED
    base.setdefault("input_per_million", Decimal(0))
    base.setdefault("output_per_million", Decimal(0))
    tier = None
    for threshold, above in tiers.items():
        rates = {**base, **above}  # a kind without an "above" rate keeps its base rate
        tier = LongContextTier(threshold, **rates)
    return ModelPricing(**base, long_context=tier)


def _per_token(value: object, key: str) -> Decimal:
    """Convert a LiteLLM USD-per-token value to USD per million, exactly."""
    number = _to_decimal(value, key)
    if number.is_zero():
        return number
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite, checked by _to_decimal
    shifted = Decimal((sign, digits, exponent + 6))
    return Decimal(int(shifted)) if exponent + 6 >= 0 else shifted
