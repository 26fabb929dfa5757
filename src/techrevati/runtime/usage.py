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

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple, cast

from techrevati.runtime._money import (
    _USD_POWER,
    MoneyInput,
    _format_usd,
    _scaled,
    _to_decimal,
    _usd,
)
from techrevati.runtime._usage_shapes import (
    DEFAULT_SERVICE_TIER,
    SERVICE_TIERS,
    tier_name,
    usage_fields,
)
from techrevati.runtime.errors import InvalidValueError, UsageParseError
from techrevati.runtime.pricing import (
    _HOT,
    _PRICES,
    _REGISTRY_LOCK,
    LOGGER_NAME,
    LONG_CONTEXT_LITELLM_UNIT,
    LongContextTier,
    ModelPricing,
    PricingFileError,
    _femto,
    _HotRates,
    _lookup,
    _model_name,
    _rates_femto,
    _tier_pricing,
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
    "DEFAULT_SERVICE_TIER",
    "LONG_CONTEXT_LITELLM_UNIT",
    "LOGGER_NAME",
    "SERVICE_TIERS",
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
    "tier_name",
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
    "cache_write_1h_tokens",
)
_Counts = tuple[int, int, int, int, int, int]


class _CountsSlot:
    """A hidden slot for :class:`UsageSnapshot`'s counts as one tuple (not a dataclass field).

    Set once when a snapshot is made; the tracker's hot path reads it in one step.
    """

    __slots__ = ("_counts",)
    _counts: _Counts


@dataclass(frozen=True, slots=True)
class UsageSnapshot(_CountsSlot):
    """The tokens of one model turn (or a sum of turns), in one meaning for every SDK.

    ``input_tokens`` counts ALL input tokens, cache reads and writes included;
    ``cache_read_tokens`` and ``cache_write_tokens`` are parts of it.
    ``cache_write_1h_tokens`` is the part of ``cache_write_tokens`` written
    with a one-hour life (Anthropic and Bedrock bill it at a higher rate than
    the default five minutes). ``output_tokens`` counts all output tokens,
    reasoning included; ``reasoning_tokens`` is part of it. All are ints >= 0,
    and the parts never exceed their whole.

    ``service_tier`` (keyword only) is the tier that served the turn, which
    sets its rates: ``None`` when unknown (billed at the default rates), else
    a name as :func:`~techrevati.runtime.pricing.tier_name` keeps it
    (``"default"``, ``"flex"``, ``"priority"``, ``"batch"``; ``"standard"``
    reads as ``"default"``, and a tier we do not know, such as OpenAI's
    ``"scale"``, is kept lowercased). :meth:`from_response` reads it from the
    response. ``+`` adds snapshots field by field and keeps the tier both
    share (``None`` when they differ); :data:`UsageSnapshot.ZERO` is the
    all-zero snapshot (what a turn whose usage is unknown is counted as).
    Immutable, so safe to share.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_tokens: int = 0
    service_tier: str | None = field(default=None, kw_only=True)

    ZERO: ClassVar[UsageSnapshot]
    """All fields zero."""

    def __post_init__(self) -> None:
        if self.service_tier is not None:
            object.__setattr__(self, "service_tier", tier_name(self.service_tier))
        counts = (
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
            self.cache_write_1h_tokens,
        )
        inp, out, cache_read, cache_write, reasoning, one_hour = counts
        if (
            type(inp) is int
            and type(out) is int
            and type(cache_read) is int
            and type(cache_write) is int
            and type(reasoning) is int
            and type(one_hour) is int
            and cache_read >= 0
            and 0 <= one_hour <= cache_write
            and cache_read + cache_write <= inp
            and 0 <= reasoning <= out
        ):  # the usual case, checked at once; anything else is checked one by one below
            object.__setattr__(self, "_counts", counts)
            return
        for name, value in zip(_TOKEN_FIELDS, counts, strict=True):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidValueError(f"{name} must be an int >= 0, got {value!r}")
        if cache_read + cache_write > inp:
            raise InvalidValueError(
                "cache_read_tokens + cache_write_tokens must not exceed input_tokens "
                f"(input_tokens includes them), got {cache_read} + {cache_write} > {inp}"
            )
        if reasoning > out:
            raise InvalidValueError(
                "reasoning_tokens must not exceed output_tokens (output_tokens includes "
                f"them), got {reasoning} > {out}"
            )
        if one_hour > cache_write:
            raise InvalidValueError(
                "cache_write_1h_tokens must not exceed cache_write_tokens (cache_write_tokens "
                f"includes them), got {one_hour} > {cache_write}"
            )
        object.__setattr__(self, "_counts", counts)

    def __setstate__(self, state: Sequence[int | str | None]) -> None:
        # Six counts and the tier; a pickle from before service_tier has six counts, one
        # from before cache_write_1h_tokens five. Any other length is refused (by zip).
        values = tuple(state)
        size = len(_TOKEN_FIELDS)
        tier = None
        if len(values) == size + 1 and (values[-1] is None or isinstance(values[-1], str)):
            counts, tier = values[:size], values[-1]
        else:
            counts = (*values, 0) if len(values) == size - 1 else values
        for name, value in zip(_TOKEN_FIELDS, counts, strict=True):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_counts", tuple(counts))
        object.__setattr__(self, "service_tier", tier_name(tier))

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    def __add__(self, other: UsageSnapshot) -> UsageSnapshot:
        if not isinstance(other, UsageSnapshot):
            return NotImplemented
        tier = self.service_tier if self.service_tier == other.service_tier else None
        return UsageSnapshot(
            *map(sum, zip(self._counts, other._counts, strict=True)), service_tier=tier
        )

    def to_dict(self) -> dict[str, int]:
        """Return the six counts and ``total_tokens`` as a JSON-serialisable dict.

        The counts only: :attr:`service_tier` is not a count (read the attribute).
        """
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
        }

    @classmethod
    def from_response(cls, obj: object, *, service_tier: str | None = None) -> UsageSnapshot:
        """Read the usage of a model response, of its usage object, or of a plain dict.

        Duck-typed, no SDK imported. Recognised shapes: OpenAI Chat Completions
        (``prompt_tokens``...), OpenAI Responses (``input_tokens`` with
        ``input_tokens_details``), DeepSeek's and xAI's variants of the Chat
        shape, Anthropic (``input_tokens`` that excludes the
        ``cache_*_input_tokens``), Gemini ``usage_metadata`` (snake or camel
        case) and Bedrock Converse (``inputTokens``...). A response is
        unwrapped through ``.usage`` / ``.usage_metadata`` (or those dict keys),
        a Bedrock ConverseStream ``{"metadata": {"usage": ...}}`` event through
        both. docs/usage.md lists the fields read for each provider. Missing
        and ``None`` counts are 0. Raises :class:`UsageParseError` naming the
        type for anything else, including a response whose usage is ``None``
        (a stream without usage), counts that contradict each other, and an
        attribute that raises.

        The service tier is read too: OpenAI's ``response.service_tier`` (Chat
        and Responses; a bare usage object has none), Anthropic's
        ``usage.service_tier``, Gemini's ``usage_metadata.service_tier`` or
        ``traffic_type``, Bedrock's ``response["serviceTier"]["type"]``; a tier
        that is not a string is none. ``service_tier=`` states it instead,
        whatever the response says: a batch API's results are billed as
        ``"batch"`` (OpenAI's batch output says ``"default"``).
        """
        fields, source, tier = usage_fields(obj)
        if service_tier is not None:
            tier = tier_name(service_tier)
        try:
            return cls(*fields, service_tier=tier)
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


_FOLD_AT: Final = 256
"""Turns a model's pending list holds before the recording thread folds it into the sums."""


class _ModelTotals:
    """Running sums for one model's turns of one service tier (guarded by the tracker's lock).

    A model's default-tier totals (turns with no tier or ``"default"``) are
    the ones its name maps to; they hold the model's other tiers' totals in
    ``service``, by tier, in the order first recorded. ``pending`` and
    ``pending_parts`` hold the fast-path turns not yet added to the sums (see
    :func:`_fold`): appending to a list is atomic, so the hot path takes no
    lock, and :func:`_fold` adds the lists in one locked step before any sum
    is read. ``tier_unpriced_turns`` counts turns of this tier billed at the
    default rates for want of the tier's (slow path only: such a tier has no
    hot rates).
    """

    __slots__ = (
        "counts",
        "femto",
        "name",
        "pending",
        "pending_parts",
        "service",
        "tier_unpriced_turns",
        "turns",
        "unpriced_turns",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.turns = 0
        self.counts: _Counts = (0, 0, 0, 0, 0, 0)
        self.femto = 0
        self.unpriced_turns = 0
        self.tier_unpriced_turns = 0
        self.pending: list[tuple[int, ...]] = []  # (input, output, femto-dollars)
        self.pending_parts: list[tuple[int, ...]] = []  # (*six counts, femto-dollars)
        self.service: dict[str, _ModelTotals] = {}

    def of_tier(self, tier: str | None) -> _ModelTotals:
        """Return the totals of this model's ``tier`` turns, made on first use (lock held)."""
        if tier is None:
            return self
        totals = self.service.get(tier)
        if totals is None:
            totals = self.service[tier] = _ModelTotals(self.name)
        return totals


class UsageTracker:
    """Running token and cost totals of many turns, per model, in O(1) per turn.

    ``record_turn`` prices a turn with the pricing registered for its model
    *at that moment* (re-registering later changes later turns only), at the
    rates of the service tier that served it (``usage.service_tier``), and
    adds it to per-model (and per-tier) running sums; no per-turn list is kept
    beyond a bounded buffer per model and tier, so memory is bounded by the
    number of models and tiers. A model without pricing costs zero, is listed
    in :attr:`unpriced_models`, and is warned about once per process on the
    ``techrevati.runtime.usage`` logger; a turn of a tier its model has no
    rates for is billed at the default rates, listed in :attr:`unpriced_tiers`
    and warned about once per model and tier.
    With ``budget=``, every recorded turn is also charged to that
    :class:`Budget` (never refused: check the budget before the call). Safe to
    share between threads.
    """

    __slots__ = ("_budget", "_by_key", "_by_name", "_fast", "_fast_tiers", "_lock")

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
        # A registered name as spelt in the registry -> its rates and totals (under the lock);
        # and -> service tier -> that tier's rates and totals.
        self._fast: dict[str, tuple[_HotRates, _ModelTotals]] = {}
        self._fast_tiers: dict[str, dict[str, tuple[_HotRates, _ModelTotals]]] = {}

    @property
    def budget(self) -> Budget | None:
        """The budget every recorded turn is charged to, if any."""
        return self._budget

    def record_turn(self, model: str, usage: UsageSnapshot) -> TurnCost:
        """Price ``usage`` for ``model``, add it to the totals, and return its cost.

        Raises :class:`InvalidValueError` if ``model`` is not a non-empty str or
        ``usage`` not a :class:`UsageSnapshot`.
        """
        try:
            tier = usage.service_tier
            if tier is None or tier is DEFAULT_SERVICE_TIER:
                rates, totals = self._fast[model]
            else:
                rates, totals = self._fast_tiers[model][tier]
            inp, out, cache_read, cache_write, reasoning, one_hour = usage._counts
        except (KeyError, TypeError, AttributeError, ValueError):
            # First turn of this spelling (or tier), an unpriced model or tier, a name to
            # strip, not a str, or no snapshot (a subclass of one is priced alike).
            return self._record_slow(model, usage)
        if inp > rates.threshold:
            if inp > rates.ceiling:  # retired (registration changed), or past a second tier
                return self._record_slow(model, usage)
            rate_in, rate_out, extra_read, extra_write, extra_reasoning, extra_1h = rates.tier
        else:
            rate_in, rate_out, extra_read, extra_write, extra_reasoning, extra_1h = rates.base
        if cache_read or cache_write or reasoning:  # one_hour is part of cache_write
            femto = (
                inp * rate_in
                + out * rate_out
                + cache_read * extra_read
                + cache_write * extra_write
                + reasoning * extra_reasoning
                + one_hour * extra_1h
            ) * rates.scale
            pending = totals.pending_parts
            pending.append((inp, out, cache_read, cache_write, reasoning, one_hour, femto))
        else:
            femto = (inp * rate_in + out * rate_out) * rates.scale
            pending = totals.pending
            pending.append((inp, out, femto))  # atomic: the next fold adds it up
        if len(pending) >= _FOLD_AT:
            with self._lock:
                _fold(totals)
        if self._budget is not None:
            self._budget._add_spend(model, femto, inp + out)
        return _new_turn_cost(TurnCost, (model, usage, femto, True))

    def cost_for_turn(self, model: str, usage: UsageSnapshot) -> Decimal:
        """Return what ``usage`` would cost for ``model`` now, at its tier, without recording it."""
        _require_snapshot(usage)
        name = _model_name(model)
        pricing = _lookup(name)
        return Decimal(0) if pricing is None else _usd(_femto(pricing, usage, name))

    def total_cost(self) -> Decimal:
        """Return the exact total cost of every recorded turn."""
        return _usd(self._rows()[1][6])

    def total_usage(self) -> UsageSnapshot:
        """Return the summed tokens of every recorded turn."""
        return UsageSnapshot(*self._rows()[1][:6])

    @property
    def turns(self) -> int:
        """How many turns were recorded."""
        return self._rows()[1][7]

    @property
    def unpriced_models(self) -> frozenset[str]:
        """Models that had at least one turn recorded without pricing."""
        with self._lock:
            return frozenset(
                t.name
                for t in self._by_name.values()
                if t.unpriced_turns or any(part.unpriced_turns for part in t.service.values())
            )

    @property
    def unpriced_tiers(self) -> frozenset[tuple[str, str]]:
        """``(model, tier)`` pairs with a turn billed at the default rates for want of the tier's.

        A priced model's turn of a service tier its pricing has no rates for
        (OpenAI's ``"scale"``, a ``"batch"`` turn of a model priced without
        batch rates): charged at the default rates, so fail closed on these
        if a tier's discount or surcharge matters.
        """
        with self._lock:
            return frozenset(
                (t.name, tier)
                for t in self._by_name.values()
                for tier, part in t.service.items()
                if part.tier_unpriced_turns
            )

    def per_model_summary(self) -> dict[str, dict[str, object]]:
        """Return per-model totals (JSON-serialisable; ``cost_usd`` as an exact string).

        Keys per model: ``turns``, the six token counts, ``total_tokens``,
        ``cost_usd``, ``priced`` (every turn was priced), ``unpriced_turns``
        and ``service_tiers``: the same keys per service tier that served the
        model's turns (``"default"`` for turns with no tier or the default
        one, first; the others in the order first recorded), each also with
        ``tier_unpriced_turns`` (turns billed at the default rates for want of
        the tier's). Models appear in the order first recorded.
        """
        return {name: _model_row(row, parts) for name, row, parts in self._rows()[0]}

    def format_cost(self) -> str:
        """Return the total cost like ``"$0.0330"``.

        Four decimals, rounded half up; ``"<$0.0001"`` for a non-zero total
        that would round to zero, ``"$0.0000"`` for exactly zero.
        """
        return _format_usd(self._rows()[1][6])

    def is_over_budget(self, budget_usd: MoneyInput) -> bool:
        """Return True when the total cost is strictly greater than ``budget_usd``.

        Spending exactly the budget is not over it. Compared exactly, with no
        rounding; ``budget_usd`` is validated like a :class:`UsageLimits` cap.
        """
        limit = _scaled(
            _to_decimal(budget_usd, "budget_usd"), _USD_POWER, "budget_usd", "1e-15 USD"
        )
        return self._rows()[1][6] > limit

    def summary(self) -> dict[str, object]:
        """Return totals, per-model rows and unpriced models as a JSON-serialisable dict.

        Keys: ``turns``, the six token counts, ``total_tokens``, ``cost_usd``
        (exact string), ``cost`` (as :meth:`format_cost`), ``models``
        (as :meth:`per_model_summary`), ``unpriced_models`` (sorted list) and
        ``unpriced_tiers`` (sorted ``[model, tier]`` pairs, as
        :attr:`unpriced_tiers`). All read under one lock, so the figures agree
        with each other.
        """
        rows, sums = self._rows()
        return {
            "turns": sums[7],
            **dict(zip(_TOKEN_FIELDS, sums[:6], strict=True)),
            "total_tokens": sums[0] + sums[1],
            "cost_usd": str(_usd(sums[6])),
            "cost": _format_usd(sums[6]),
            "models": {name: _model_row(row, parts) for name, row, parts in rows},
            "unpriced_models": sorted(name for name, row, _ in rows if row[8]),
            "unpriced_tiers": sorted(
                [name, tier] for name, _, parts in rows for tier, part in parts if part[9]
            ),
        }

    def __repr__(self) -> str:
        return f"UsageTracker(turns={self.turns}, cost={self.format_cost()})"

    def _rows(self) -> tuple[list[tuple[str, _Row, list[tuple[str, _Row]]]], _Row]:
        """Fold every pending turn; return each model's row, its tiers' rows, and the sums.

        All in one lock. A row is the six counts, femto-dollars, turns,
        unpriced turns and tier-unpriced turns; a model's row is the sum of
        its tiers' (``"default"`` first when it had default-tier turns).
        """
        with self._lock:
            models = []
            for totals in self._by_name.values():
                parts = []
                _fold(totals)
                if totals.turns:
                    parts.append((DEFAULT_SERVICE_TIER, _row_of(totals)))
                for tier, part in totals.service.items():
                    _fold(part)
                    parts.append((tier, _row_of(part)))
                models.append((totals.name, parts))
        rows = [(name, _summed([row for _, row in parts]), parts) for name, parts in models]
        return rows, _summed([row for _, row, _ in rows])

    def _record_slow(self, model: str, usage: UsageSnapshot) -> TurnCost:
        """Record a first turn (of a spelling or tier), an unpriced model or tier, a bad call."""
        _require_snapshot(usage)
        name = _model_name(model)
        tier = usage.service_tier
        if tier == DEFAULT_SERVICE_TIER:
            tier = None
        pricing = _lookup(name)
        fell_back = False
        rates = None
        if pricing is None:
            femto = 0
        else:
            used = pricing if tier is None else _tier_pricing(pricing, tier, name)
            if used is None:  # no rates for the tier: the default ones (warned about once)
                used, fell_back = pricing, True
            femto = _rates_femto(used, usage)
            if name == model and not fell_back:  # a name spelt as registered: the fast path
                fast = (
                    self._fast.get(model)
                    if tier is None
                    else self._fast_tiers.get(model, {}).get(tier)
                )
                rates = fast[0] if fast is not None else None
                if rates is None or rates.pricing is not used:
                    rates = _hot_rates(name, pricing, tier, used)
        with self._lock:
            totals = self._by_key.get(model)
            if totals is None:
                totals = self._by_key[model] = self._totals(name)
            totals = totals.of_tier(tier)
            totals.turns += 1
            totals.counts = _plus(totals.counts, usage._counts)
            totals.femto += femto
            if pricing is None:
                totals.unpriced_turns += 1
            if fell_back:
                totals.tier_unpriced_turns += 1
            if tier is None:
                if rates is not None:
                    self._fast[model] = (rates, totals)
                elif model in self._fast:  # unregistered since
                    del self._fast[model]
            elif rates is not None:
                self._fast_tiers.setdefault(model, {})[tier] = (rates, totals)
            elif tier in self._fast_tiers.get(model, ()):  # unregistered, or the tier dropped
                del self._fast_tiers[model][tier]
        if self._budget is not None:
            self._budget._add_spend(name, femto, usage.input_tokens + usage.output_tokens)
        return _new_turn_cost(TurnCost, (name, usage, femto, pricing is not None))

    def _restore(self, model: str, usage: UsageSnapshot, femto: int, *, priced: bool) -> None:
        """Add a turn recorded earlier (a log being resumed) at the cost it was charged then.

        Not priced again and not charged to :attr:`budget`: the log says what was paid.
        """
        name = _model_name(model)
        tier = usage.service_tier
        with self._lock:
            totals = self._by_key.get(model)
            if totals is None:
                totals = self._by_key[model] = self._totals(name)
            totals = totals.of_tier(None if tier == DEFAULT_SERVICE_TIER else tier)
            totals.turns += 1
            totals.counts = _plus(totals.counts, usage._counts)
            totals.femto += femto
            if not priced:
                totals.unpriced_turns += 1

    def _restore_totals(
        self,
        model: str,
        usage: UsageSnapshot,
        femto: int,
        *,
        turns: int,
        unpriced_turns: int = 0,
        tier_unpriced_turns: int = 0,
    ) -> None:
        """Add the totals of ``turns`` earlier turns of one model and tier at once (a checkpoint).

        ``usage`` holds their summed counts (and the tier), ``femto`` what they
        were charged. Not priced again and not charged to :attr:`budget`.
        """
        name = _model_name(model)
        tier = usage.service_tier
        with self._lock:
            totals = self._by_key.get(model)
            if totals is None:
                totals = self._by_key[model] = self._totals(name)
            totals = totals.of_tier(None if tier == DEFAULT_SERVICE_TIER else tier)
            totals.turns += turns
            totals.counts = _plus(totals.counts, usage._counts)
            totals.femto += femto
            totals.unpriced_turns += unpriced_turns
            totals.tier_unpriced_turns += tier_unpriced_turns

    def _totals(self, name: str) -> _ModelTotals:
        """Return the totals of the stripped ``name``, made on first use (under the lock)."""
        totals = self._by_name.get(name)
        if totals is None:
            totals = self._by_name[name] = _ModelTotals(name)
        return totals


_Row = tuple[int, int, int, int, int, int, int, int, int, int]
_NO_ROW: Final[_Row] = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
_new_turn_cost: Final = tuple.__new__


def _row_of(totals: _ModelTotals) -> _Row:
    """Return the row of folded totals (see :meth:`UsageTracker._rows`)."""
    return (
        *totals.counts,
        totals.femto,
        totals.turns,
        totals.unpriced_turns,
        totals.tier_unpriced_turns,
    )


def _summed(rows: Sequence[_Row]) -> _Row:
    """Return the column sums of ``rows`` (:data:`_NO_ROW` for none)."""
    if not rows:
        return _NO_ROW
    return cast(_Row, tuple(map(sum, zip(*rows, strict=True))))


def _fold(totals: _ModelTotals) -> None:
    """Add a model's pending turns to its sums (the caller holds the tracker's lock).

    A pending turn is a tuple: ``(input, output, femto-dollars)`` for a turn
    with no cache or reasoning tokens, in ``pending``, and all six counts and
    then the femto-dollars in ``pending_parts``; C-level ``zip`` and ``sum``
    add up each column (not ``strict``: the hot path makes every tuple whole).
    Only folds remove from the lists (under the lock); the hot path only
    appends, so the first ``n`` items stay the ones added. From the first
    ``del`` to the last assignment no call is made, so no signal handler
    (Ctrl-C) can run between taking the turns out and adding them.
    """
    plain, parts = totals.pending, totals.pending_parts
    n, m = len(plain), len(parts)
    if not (n or m):
        return
    inp, out, read, write, reasoning, one_hour = totals.counts
    femto = totals.femto
    if n:
        plain_in, plain_out, plain_femto = map(sum, zip(*plain[:n], strict=False))
        inp, out, femto = inp + plain_in, out + plain_out, femto + plain_femto
    if m:
        sums = tuple(map(sum, zip(*parts[:m], strict=False)))
        inp, out, femto = inp + sums[0], out + sums[1], femto + sums[6]
        read, write, reasoning, one_hour = (
            read + sums[2],
            write + sums[3],
            reasoning + sums[4],
            one_hour + sums[5],
        )
    del plain[:n]
    del parts[:m]
    totals.counts = (inp, out, read, write, reasoning, one_hour)
    totals.femto = femto
    totals.turns += n + m


def _plus(a: _Counts, b: _Counts) -> _Counts:
    """Return the sum of two six-count tuples."""
    a0, a1, a2, a3, a4, a5 = a
    b0, b1, b2, b3, b4, b5 = b
    return (a0 + b0, a1 + b1, a2 + b2, a3 + b3, a4 + b4, a5 + b5)


class _Plan(NamedTuple):
    """Exact rates for the hot path, read off one :class:`ModelPricing` (see :func:`_plan_for`).

    A turn with ``input_tokens`` up to ``threshold`` is priced with ``base``,
    one above it and up to ``ceiling`` with ``tier``; a longer one (a pricing
    with more tiers) takes the slow path. ``base`` and ``tier`` hold six small
    ints (per input, output, cache-read, cache-write, reasoning and one-hour
    write token; the parts as the difference from their whole's rate) whose dot
    product with the counts, times ``scale``, is the cost in femto-dollars.
    """

    threshold: int
    ceiling: int
    base: _Counts
    tier: _Counts
    scale: int


_NO_CEILING: Final = 1 << 256
"""A ceiling no token count reaches (the pricing has at most one tier)."""
_PLANS: dict[ModelPricing, _Plan | None] = {}
"""Plans already read, by pricing value: every session's tracker reads the same few."""
_PLANS_KEPT: Final = 1024


def _plan_of(pricing: ModelPricing) -> _Plan | None:
    """Return :func:`_plan_for` of ``pricing``, read once per equal pricing (a bounded cache)."""
    try:
        return _PLANS[pricing]
    except KeyError:
        pass
    plan = _plan_for(pricing)
    if len(_PLANS) >= _PLANS_KEPT:
        _PLANS.clear()
    _PLANS[pricing] = plan
    return plan


def _hot_rates(
    name: str,
    pricing: ModelPricing,
    tier: str | None = None,
    used: ModelPricing | None = None,
) -> _HotRates | None:
    """Return the shared hot rates of ``name``'s current pricing ``pricing``, made on first use.

    With ``tier``, those of the tier, whose pricing is ``used`` (one of
    ``pricing.service_tiers``), kept by the name's and retired with them.
    None when ``name`` was registered again or unregistered since ``pricing``
    was looked up (the turn is priced with ``pricing``; the next one looks again).
    """
    plan = _plan_of(pricing)  # slow the first time: outside the lock
    tier_plan = None if used is None else _plan_of(used)
    with _REGISTRY_LOCK:
        if _PRICES.get(name) is not pricing:
            return None
        hot = _HOT.get(name)
        if hot is None:
            hot = _HOT[name] = _HotRates(pricing, plan)
        if tier is None or used is None:
            return hot
        child = hot.service.get(tier)
        if child is None or child.pricing is not used:
            child = hot.service[tier] = _HotRates(used, tier_plan)
        return child


def _plan_for(pricing: ModelPricing) -> _Plan | None:
    """Return a :class:`_Plan` that prices exactly as ``pricing`` does, or None.

    The rates are read off :func:`~techrevati.runtime.pricing._rates_femto`
    itself, the one definition of a turn's cost at given rates, with
    one-token probes below the first long-context threshold and just above
    it (the cost is linear in the counts within a tier), then divided by
    their greatest common divisor so the hot path multiplies small ints.
    As a guard, the plan must also agree with ``_rates_femto`` on mixed turns
    around the threshold and below the ceiling. None (every turn priced on
    the slow path) for a pricing the probes cannot read: a first threshold
    of 0, or any disagreement.
    """
    thresholds = []
    tier = pricing.long_context
    while tier is not None:
        thresholds.append(tier.threshold_tokens)
        tier = getattr(tier, "above", None)
    threshold = thresholds[0] if thresholds else _NO_CEILING
    ceiling = thresholds[1] if len(thresholds) > 1 else _NO_CEILING
    if threshold < 1:
        return None
    base = _coefficients(pricing, 1)
    tier_rates = _coefficients(pricing, threshold + 1)
    if base is None or tier_rates is None:
        return None
    scale = math.gcd(*base, *tier_rates) or 1
    plan = _Plan(
        threshold,
        ceiling,
        cast(_Counts, tuple(c // scale for c in base)),
        cast(_Counts, tuple(c // scale for c in tier_rates)),
        scale,
    )
    for inp in {1, 9, threshold, threshold + 1, min(2 * threshold + 3, ceiling), ceiling}:
        usage = UsageSnapshot(inp, 5 + inp // 3, inp // 5, inp // 4, 3, inp // 9)
        if _planned(plan, usage) != _rates_femto(pricing, usage):
            return None
    return plan


def _coefficients(pricing: ModelPricing, inp: int) -> _Counts | None:
    """Return the cost per token of each count for turns of ``inp`` input tokens, or None."""
    at = _rates_femto(pricing, UsageSnapshot(inp))
    rate_in, left = divmod(at, inp)
    if left:
        return None

    def extra(*counts: int) -> int:
        return _rates_femto(pricing, UsageSnapshot(inp, *counts)) - at

    rate_out = extra(1)
    write = extra(0, 0, 1)
    return (
        rate_in,
        rate_out,
        extra(0, 1),
        write,
        extra(1, 0, 0, 1) - rate_out,
        extra(0, 0, 1, 0, 1) - write,
    )


def _planned(plan: _Plan, usage: UsageSnapshot) -> int:
    """Return the cost the hot path computes for ``usage`` with ``plan``."""
    rates = plan.tier if usage.input_tokens > plan.threshold else plan.base
    return plan.scale * sum(count * rate for count, rate in zip(usage._counts, rates, strict=True))


def _require_snapshot(usage: object) -> None:
    if not isinstance(usage, UsageSnapshot):
        raise InvalidValueError(f"usage must be a UsageSnapshot, got {usage!r}")


def _model_row(row: _Row, parts: Sequence[tuple[str, _Row]]) -> dict[str, object]:
    """Return a model's summary row, with a row per service tier under ``service_tiers``."""
    return {
        **_tier_row(row),
        "service_tiers": {
            tier: {**_tier_row(part), "tier_unpriced_turns": part[9]} for tier, part in parts
        },
    }


def _tier_row(row: _Row) -> dict[str, object]:
    *counts, femto, turns, unpriced, _ = row
    return {
        "turns": turns,
        **dict(zip(_TOKEN_FIELDS, counts, strict=True)),
        "total_tokens": counts[0] + counts[1],
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
