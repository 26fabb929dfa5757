"""Token usage of model turns: one meaning for every SDK, read from any response, totalled.

Reach for this module whenever a model call costs money. :class:`UsageSnapshot`
holds one turn's tokens in a single documented meaning (OpenAI-style: input
includes cache reads and writes, output includes reasoning) and reads them from
any major SDK's response with :meth:`UsageSnapshot.from_response`.
:class:`UsageTracker` keeps O(1) exact running totals per model, priced by
:mod:`~techrevati.runtime.pricing`. Pricing and budgets have modules of their
own (:mod:`~techrevati.runtime.pricing`, :mod:`~techrevati.runtime.budget`);
their names stay importable from here too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple

from techrevati.runtime._money import (
    _USD_POWER,
    MoneyInput,
    _format_usd,
    _scaled,
    _to_decimal,
    _usd,
)
from techrevati.runtime._usage_shapes import usage_fields
from techrevati.runtime.errors import InvalidValueError, UsageParseError
from techrevati.runtime.pricing import (
    _PRICES,
    LOGGER_NAME,
    LONG_CONTEXT_LITELLM_UNIT,
    LongContextTier,
    ModelPricing,
    PricingFileError,
    _femto,
    _lookup,
    _model_name,
    clear_pricing,
    get_pricing,
    has_pricing,
    load_pricing_from_file,
    register_pricing,
    unregister_pricing,
)

if TYPE_CHECKING:
    from techrevati.runtime.budget import (
        Budget,
        BudgetExceededError,
        BudgetReservation,
        LimitKind,
        ReservationError,
        UsageLimits,
    )

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

_BUDGET_NAMES: Final = frozenset(
    {
        "Budget",
        "BudgetExceededError",
        "BudgetReservation",
        "LimitKind",
        "ReservationError",
        "UsageLimits",
    }
)
"""Re-exported from :mod:`~techrevati.runtime.budget` on first use (it imports this module)."""


_TOKEN_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)


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
        fields, source = usage_fields(obj)
        try:
            return cls(*fields)
        except InvalidValueError as exc:
            raise UsageParseError(f"{source} is inconsistent: {exc}") from exc


UsageSnapshot.ZERO = UsageSnapshot()


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
        if budget is not None:
            from techrevati.runtime.budget import Budget  # noqa: PLC0415 (it imports this module)

            if not isinstance(budget, Budget):
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

    def is_over_budget(self, budget_usd: MoneyInput) -> bool:
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


_new_turn_cost: Final = tuple.__new__


def _require_snapshot(usage: object) -> None:
    if not isinstance(usage, UsageSnapshot):
        raise InvalidValueError(f"usage must be a UsageSnapshot, got {usage!r}")


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


def __getattr__(name: str) -> Any:
    if name in _BUDGET_NAMES:
        from techrevati.runtime import budget  # noqa: PLC0415 (budget imports this module)

        return getattr(budget, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_BUDGET_NAMES})
