"""Model pricing: per-token rates, the registry that holds them, and pricing files.

:class:`ModelPricing` (with optional :class:`LongContextTier` tiers, and rates
per service tier: flex, priority, batch) turns a turn's tokens into exact
money. Register one per model name with :func:`register_pricing`
(thread-safe), or load many from our JSON/TOML schema or LiteLLM's price file
with :func:`load_pricing_from_file` (the reading itself lives in the private
``_price_file`` module, loaded on first use). A model without pricing costs
zero and is warned about once per process; a turn of a service tier its model
has no rates for is billed at the default rates and warned about once per
model and tier.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from techrevati.runtime._log import get_logger
from techrevati.runtime._money import (
    _RATE_POWER,
    MoneyInput,
    _scaled,
    _to_decimal,
    _usd,
)
from techrevati.runtime._usage_shapes import DEFAULT_SERVICE_TIER, SERVICE_TIERS, tier_name
from techrevati.runtime._validate import non_empty_str
from techrevati.runtime.errors import (
    InvalidValueError,
    PricingFileError,
    PricingFileNote,
    PricingFileWarning,
)

if TYPE_CHECKING:
    from techrevati.runtime.usage import UsageSnapshot

__all__ = [
    "DEFAULT_SERVICE_TIER",
    "LONG_CONTEXT_LITELLM_UNIT",
    "LOGGER_NAME",
    "SERVICE_TIERS",
    "LongContextTier",
    "ModelPricing",
    "PricingFileError",
    "PricingFileNote",
    "PricingFileWarning",
    "clear_pricing",
    "get_pricing",
    "has_pricing",
    "load_pricing_from_file",
    "register_pricing",
    "tier_name",
    "unregister_pricing",
]


LOGGER_NAME: Final = "techrevati.runtime.usage"
"""The logger that reports unpriced models (one warning per model per process) and service
tiers billed at the default rates (one warning per model and tier)."""
LONG_CONTEXT_LITELLM_UNIT: Final = 1000
"""LiteLLM's ``*_above_200k_tokens`` means above ``200 * 1000`` input tokens."""
_LOG: Final = get_logger(LOGGER_NAME)
_OLD_PICKLE_FIELDS: Final = 11
"""How many values a ModelPricing pickled before service tiers holds."""
_NO_TIER: Final = 1 << 62
"""The ``_threshold`` of a pricing without a long-context tier: no turn is above it."""
_RATE_FIELDS: Final = (
    "input_per_million",
    "output_per_million",
    "cache_read_per_million",
    "cache_write_per_million",
    "cache_write_1h_per_million",
    "reasoning_per_million",
)

_FullRates = tuple[int, int, int, int, int, int]
"""Femto-dollars per token: input, cache-read extra, cache-write extra, output, reasoning
extra, one-hour cache-write extra (each extra over its whole's rate)."""


@dataclass(frozen=True, slots=True, init=False)
class LongContextTier:
    """Rates that replace the base rates for a whole turn whose input is long.

    A turn is billed entirely at these rates when its ``input_tokens`` is
    strictly greater than ``threshold_tokens`` (``>``, as LiteLLM and the
    vendors do). ``above`` optionally chains the next tier, at a higher
    threshold, which takes over past its own threshold (a price list with
    several steps). Rates are USD per million tokens; unset cache rates default
    to this tier's input rate, an unset one-hour cache-write rate to this
    tier's cache-write rate, and an unset reasoning rate to its output rate.
    """

    threshold_tokens: int
    input_per_million: Decimal
    output_per_million: Decimal
    cache_read_per_million: Decimal | None
    cache_write_per_million: Decimal | None
    cache_write_1h_per_million: Decimal | None
    reasoning_per_million: Decimal | None
    above: LongContextTier | None
    _full: _FullRates = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        threshold_tokens: int,
        input_per_million: MoneyInput,
        output_per_million: MoneyInput,
        *,
        cache_read_per_million: MoneyInput | None = None,
        cache_write_per_million: MoneyInput | None = None,
        cache_write_1h_per_million: MoneyInput | None = None,
        reasoning_per_million: MoneyInput | None = None,
        above: LongContextTier | None = None,
    ) -> None:
        if (
            not isinstance(threshold_tokens, int)
            or isinstance(threshold_tokens, bool)
            or threshold_tokens < 0
        ):
            raise InvalidValueError(
                f"threshold_tokens must be an int >= 0, got {threshold_tokens!r}"
            )
        if above is not None and (
            not isinstance(above, LongContextTier) or above.threshold_tokens <= threshold_tokens
        ):
            raise InvalidValueError(
                "above must be None or a LongContextTier with a higher threshold_tokens "
                f"than {threshold_tokens}, got {above!r}"
            )
        _init_rates(
            self,
            (
                input_per_million,
                output_per_million,
                cache_read_per_million,
                cache_write_per_million,
                cache_write_1h_per_million,
                reasoning_per_million,
            ),
        )
        object.__setattr__(self, "threshold_tokens", threshold_tokens)
        object.__setattr__(self, "above", above)


@dataclass(frozen=True, slots=True, init=False)
class ModelPricing:
    """What one model costs, in USD per million tokens, with exact arithmetic.

    Rates accept ``int``, ``float`` (converted through ``repr``, so ``3.0``
    becomes ``Decimal('3.0')`` exactly), ``str`` or ``Decimal`` and are stored
    as ``Decimal``. Unset cache read/write rates default to the input rate, an
    unset one-hour cache-write rate (``cache_write_1h_per_million``, charged on
    :attr:`UsageSnapshot.cache_write_1h_tokens`) to the cache-write rate, an
    unset reasoning rate to the output rate. Each rate must be finite, >= 0,
    and exact to 1e-15 USD per token (at most 9 decimal places per million);
    anything else raises :class:`InvalidValueError` naming the field, never a
    silent rounding. ``long_context`` optionally re-prices long turns whole
    (a :class:`LongContextTier`, which may chain higher ones); :attr:`tiers`
    lists every tier, lowest threshold first.

    ``service_tiers`` maps a service tier (``"flex"``, ``"priority"``,
    ``"batch"``, ...; see :data:`SERVICE_TIERS`) to the whole pricing of a
    turn served at that tier, which replaces these rates for it (its own
    defaults and long-context tiers apply; it may not have service tiers of
    its own). A turn whose :attr:`UsageSnapshot.service_tier` is ``None`` or
    ``"default"`` takes these rates; one of a tier with no entry here (OpenAI's
    ``"scale"``, a ``"batch"`` turn of a model priced without batch rates)
    takes them too, and is warned about once per model and tier.
    """

    input_per_million: Decimal
    output_per_million: Decimal
    cache_read_per_million: Decimal | None
    cache_write_per_million: Decimal | None
    cache_write_1h_per_million: Decimal | None
    reasoning_per_million: Decimal | None
    long_context: LongContextTier | None
    service_tiers: Mapping[str, ModelPricing] = field(compare=False)
    """Service tier -> the pricing of its turns (read-only; empty when there is none)."""
    tiers: tuple[LongContextTier, ...] = field(init=False, repr=False, compare=False)
    """Every long-context tier, lowest threshold first: ``long_context`` and its ``above`` chain."""
    _service: tuple[tuple[str, ModelPricing], ...] = field(init=False, repr=False)
    """``service_tiers`` as sorted pairs: what equality and the hash compare."""
    _threshold: int = field(init=False, repr=False, compare=False)
    _full: _FullRates = field(init=False, repr=False, compare=False)
    _above: tuple[tuple[int, _FullRates], ...] = field(init=False, repr=False, compare=False)

    def __init__(
        self,
        input_per_million: MoneyInput,
        output_per_million: MoneyInput,
        *,
        cache_read_per_million: MoneyInput | None = None,
        cache_write_per_million: MoneyInput | None = None,
        cache_write_1h_per_million: MoneyInput | None = None,
        reasoning_per_million: MoneyInput | None = None,
        long_context: LongContextTier | None = None,
        service_tiers: Mapping[str, ModelPricing] | None = None,
    ) -> None:
        _init_rates(
            self,
            (
                input_per_million,
                output_per_million,
                cache_read_per_million,
                cache_write_per_million,
                cache_write_1h_per_million,
                reasoning_per_million,
            ),
        )
        if long_context is not None and not isinstance(long_context, LongContextTier):
            raise InvalidValueError(
                f"long_context must be a LongContextTier or None, got {long_context!r}"
            )
        tiers: list[LongContextTier] = []
        tier = long_context
        while tier is not None:
            tiers.append(tier)
            tier = tier.above
        object.__setattr__(self, "long_context", long_context)
        object.__setattr__(self, "tiers", tuple(tiers))
        # Highest threshold first: _femto takes the first tier the input is above.
        above = tuple((tier.threshold_tokens, tier._full) for tier in reversed(tiers))
        object.__setattr__(self, "_above", above)
        threshold = _NO_TIER if long_context is None else long_context.threshold_tokens
        object.__setattr__(self, "_threshold", threshold)  # turns up to it take the base rates
        service = _service_tiers(service_tiers)
        object.__setattr__(self, "_service", tuple(sorted(service.items())))
        object.__setattr__(self, "service_tiers", MappingProxyType(service))

    def cost_usd(self, usage: UsageSnapshot) -> Decimal:
        """Return the exact cost of one turn with ``usage`` at these rates.

        The rates of ``usage.service_tier`` when this pricing has them; the
        default rates otherwise (a tier without rates is warned about once).
        """
        from techrevati.runtime.usage import _require_snapshot  # noqa: PLC0415 (a cycle)

        _require_snapshot(usage)
        return _usd(_femto(self, usage))

    def for_tier(self, service_tier: str | None) -> ModelPricing | None:
        """Return the pricing of turns served at ``service_tier``, or None when it has none here.

        ``None`` and ``"default"`` (and its aliases, such as ``"standard"``) are
        this pricing itself.
        """
        tier = tier_name(service_tier)
        if tier is None or tier is DEFAULT_SERVICE_TIER:
            return self
        return self.service_tiers.get(tier)

    def __getstate__(self) -> tuple[object, ...]:
        return (
            self.input_per_million,
            self.output_per_million,
            self.cache_read_per_million,
            self.cache_write_per_million,
            self.cache_write_1h_per_million,
            self.reasoning_per_million,
            self.long_context,
            dict(self.service_tiers),
        )

    def __setstate__(self, state: Sequence[object]) -> None:
        # A pickle from before service tiers holds every field, the derived ones too (11).
        values = (*state[:7], None) if len(state) == _OLD_PICKLE_FIELDS else tuple(state)
        *rates, long_context, service = values
        ModelPricing.__init__(
            self,
            *rates[:2],  # type: ignore[arg-type]
            cache_read_per_million=rates[2],  # type: ignore[arg-type]
            cache_write_per_million=rates[3],  # type: ignore[arg-type]
            cache_write_1h_per_million=rates[4],  # type: ignore[arg-type]
            reasoning_per_million=rates[5],  # type: ignore[arg-type]
            long_context=long_context,  # type: ignore[arg-type]
            service_tiers=service,  # type: ignore[arg-type]
        )


def _service_tiers(given: object) -> dict[str, ModelPricing]:
    """Validate ``service_tiers`` and return it with its names normalised, in sorted order."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        raise InvalidValueError(
            f"service_tiers must be a mapping of tier name to ModelPricing, got {given!r}"
        )
    service: dict[str, ModelPricing] = {}
    for key, pricing in given.items():
        tier = tier_name(key, "service_tiers key")
        if tier is None or tier is DEFAULT_SERVICE_TIER:
            raise InvalidValueError(
                f"service_tiers key {key!r} names the default tier: its rates are the pricing's own"
            )
        if tier in service:
            raise InvalidValueError(f"service_tiers names tier {tier!r} twice (as {key!r})")
        if not isinstance(pricing, ModelPricing):
            raise InvalidValueError(
                f"service_tiers[{key!r}] must be a ModelPricing, got {pricing!r}"
            )
        if pricing.service_tiers:
            raise InvalidValueError(
                f"service_tiers[{key!r}] has service tiers of its own; a tier's pricing has none"
            )
        service[tier] = pricing
    return dict(sorted(service.items()))


_PRICES: dict[str, ModelPricing] = {}
"""Model name (stripped) -> pricing. Written under _REGISTRY_LOCK; read without it."""
_WARNED: set[str] = set()
"""Unpriced models already warned about in this process."""
_TIER_WARNED: set[tuple[str, str]] = set()
"""(model, tier) pairs already warned about: a tier the model has no rates for."""
_REGISTRY_LOCK: Final = threading.Lock()


class _HotRates:
    """What a tracker's hot path reads to price turns of one registered name, with no lookup.

    Made by ``usage`` from the name's current pricing (``pricing``) the first
    time a tracker records a turn of it, and shared by every tracker. Turns
    with ``input_tokens`` up to ``threshold`` are priced with ``base``, those
    above it and up to ``ceiling`` with ``tier`` (six small ints each, times
    ``scale``: see ``usage._plan_for``); any other turn takes the slow path.
    When the name's registration changes, :meth:`retire` sets both limits to
    -1, so every later turn takes the slow path, which looks the name up again.
    """

    __slots__ = ("base", "ceiling", "pricing", "scale", "service", "threshold", "tier")

    def __init__(
        self,
        pricing: ModelPricing,
        plan: tuple[int, int, tuple[int, ...], tuple[int, ...], int] | None,
    ) -> None:
        self.pricing = pricing
        if plan is None:  # no plan could be read: born retired
            plan = (-1, -1, (0,) * 6, (0,) * 6, 0)
        self.threshold, self.ceiling, self.base, self.tier, self.scale = plan
        self.service: dict[str, _HotRates] = {}
        """Service tier -> the hot rates of its pricing (added, and retired, under the lock)."""

    def retire(self) -> None:
        """Send every later turn to the slow path (the caller holds _REGISTRY_LOCK).

        The ceiling goes first: a turn that read the old threshold still
        compares against a ceiling of the same pricing, or of none. The
        service tiers' rates retire with the name's.
        """
        self.ceiling = -1
        self.threshold = -1
        for rates in self.service.values():
            rates.retire()


_HOT: dict[str, _HotRates] = {}
"""Registered name -> the hot rates of its current pricing, once a turn needed them.

Written under _REGISTRY_LOCK; an entry is retired and dropped whenever its
name is registered again, unregistered or cleared.
"""


def _retire(names: Iterable[str]) -> None:
    """Retire the hot rates of ``names`` (the caller holds _REGISTRY_LOCK)."""
    for name in names:
        hot = _HOT.pop(name, None)
        if hot is not None:
            hot.retire()


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
        _retire((name,))


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
        _retire((name,))
        return _PRICES.pop(name, None) is not None


def clear_pricing() -> None:
    """Forget every registered pricing and which unpriced models and tiers were warned about.

    Meant for tests; the registry starts empty.
    """
    with _REGISTRY_LOCK:
        _retire(list(_HOT))
        _PRICES.clear()
        _WARNED.clear()
        _TIER_WARNED.clear()


def load_pricing_from_file(path: str | os.PathLike[str], *, strict: bool = False) -> list[str]:
    r"""Register every model priced in a JSON or TOML file; return their names in file order.

    ``.toml`` files are read as TOML, anything else as JSON; numbers are read
    as exact decimals, and a JSON object that repeats a key is an error naming
    it. Two schemas are accepted: ours, ``{"models": {name: {"input_per_million":
    ..., "output_per_million": ..., "cache_read_per_million",
    "cache_write_per_million", "cache_write_1h_per_million",
    "reasoning_per_million", "long_context": {"threshold_tokens": ...,
    ...rates} or a list of such tables}}}`` (numbers or strings), and LiteLLM's
    ``model_prices_and_context_window.json`` (USD per token; see the usage docs
    for which keys are read).

    A LiteLLM rate finer than the money grid (1e-15 USD per token: a float
    artefact such as ``2.9999900000000002e-06``) is rounded to it half-even;
    entries whose pricing cannot be represented are skipped, and prices for
    some requests only (``provider_specific_entry`` multipliers,
    ``off_peak_pricing`` hours) are ignored. All three are reported
    in one :class:`PricingFileWarning` per load, naming each entry, its key and
    its text. ``strict=True`` refuses to round instead. Any other bad entry
    (a negative, NaN or non-number rate, a repeated key, an unknown key in our
    schema, an over-precise rate in our schema or under ``strict``) raises one
    :class:`PricingFileError` listing every bad entry, and nothing is
    registered. A missing file raises ``FileNotFoundError`` (other
    ``OSError``\ s pass through too).
    """
    where = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(where, str):
        raise InvalidValueError(f"path must be a str or a str os.PathLike, got {path!r}")
    if not isinstance(strict, bool):
        raise InvalidValueError(f"strict must be a bool, got {strict!r}")
    from techrevati.runtime._price_file import read_pricing_file  # noqa: PLC0415 (json, tomllib)

    parsed = read_pricing_file(where, strict=strict)
    with _REGISTRY_LOCK:
        _PRICES.update(parsed)
        _retire(parsed)
    return list(parsed)


def _model_name(model: object) -> str:
    """Return ``model`` stripped, or raise naming it if it is not a non-empty str."""
    return non_empty_str("model", model).strip()


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


def _cost_femto(model: str, usage: UsageSnapshot) -> int:
    """Return what ``usage`` costs for ``model`` now, in 1e-15 USD (0 when unpriced)."""
    name = _model_name(model)
    pricing = _lookup(name)
    return 0 if pricing is None else _femto(pricing, usage, name)


def _tier_pricing(pricing: ModelPricing, tier: str, name: str) -> ModelPricing | None:
    """Return the pricing of ``tier`` (not the default one), or None after warning once.

    ``name`` is the model the warning names; "" when the caller has none
    (:meth:`ModelPricing.cost_usd`, a budget). Thread-safe: whatever the
    threads, one warning per (name, tier) per process (until :func:`clear_pricing`).
    """
    found = pricing.service_tiers.get(tier)
    if found is not None:
        return found
    key = (name, tier)
    if key not in _TIER_WARNED:
        with _REGISTRY_LOCK:
            first = key not in _TIER_WARNED
            _TIER_WARNED.add(key)
        if first:
            known = ", ".join(pricing.service_tiers) or "none"
            _LOG.warning(
                "no %r service-tier rates for %s (its tiers: %s): its %r turns are billed at "
                "the default rates (give the pricing service_tiers=, or load a price file "
                "that prices the tier)",
                tier,
                f"model {name!r}" if name else "a pricing",
                known,
                tier,
            )
    return None


def _femto(pricing: ModelPricing, usage: UsageSnapshot, name: str = "") -> int:
    """Return the exact cost of ``usage`` in femto-dollars (disjoint parts, whole-turn tier).

    Priced at ``usage.service_tier``'s rates when ``pricing`` has them, else
    at its own (warned about once per ``name`` and tier).
    """
    tier = usage.service_tier
    if tier is not None and tier is not DEFAULT_SERVICE_TIER:
        pricing = _tier_pricing(pricing, tier, name) or pricing
    return _rates_femto(pricing, usage)


def _rates_femto(pricing: ModelPricing, usage: UsageSnapshot) -> int:
    """Return the exact cost of ``usage`` at ``pricing``'s own rates, whatever its tier."""
    inp = usage.input_tokens
    rates = pricing._full
    if inp > pricing._threshold:
        for threshold, rates in pricing._above:  # noqa: B007 (the loop picks ``rates``)
            if inp > threshold:
                break
    rate_in, extra_read, extra_write, rate_out, extra_reasoning, extra_1h = rates
    return (
        inp * rate_in
        + usage.cache_read_tokens * extra_read
        + usage.cache_write_tokens * extra_write
        + usage.cache_write_1h_tokens * extra_1h
        + usage.output_tokens * rate_out
        + usage.reasoning_tokens * extra_reasoning
    )


def _init_rates(
    target: ModelPricing | LongContextTier,
    given: tuple[object, object, object, object, object, object],
) -> _FullRates:
    """Validate and store the six rates of ``target``; store its integer rates and return them.

    The integer rates are femto-dollars per token, arranged so that
    ``in*r0 + cache_read*r1 + cache_write*r2 + out*r3 + reasoning*r4 +
    cache_write_1h*r5`` equals uncached input at the input rate + cache reads +
    cache writes (the one-hour ones at their own rate) + non-reasoning output
    at the output rate + reasoning, each at its own rate.
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
    rate_write = femto.get("cache_write_per_million", rate_in)
    rates = (
        rate_in,
        femto.get("cache_read_per_million", rate_in) - rate_in,
        rate_write - rate_in,
        rate_out,
        femto.get("reasoning_per_million", rate_out) - rate_out,
        femto.get("cache_write_1h_per_million", rate_write) - rate_write,
    )
    object.__setattr__(target, "_full", rates)
    return rates
