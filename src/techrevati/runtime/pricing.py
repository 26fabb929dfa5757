"""Model pricing: per-token rates, the registry that holds them, and pricing files.

:class:`ModelPricing` (with an optional :class:`LongContextTier`) turns a
turn's tokens into exact money. Register one per model name with
:func:`register_pricing` (thread-safe), or load many from our JSON/TOML schema
or LiteLLM's price file with :func:`load_pricing_from_file`. A model without
pricing costs zero and is warned about once per process.
"""

from __future__ import annotations

import json
import os
import re
import threading
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Final

from techrevati.runtime._log import get_logger
from techrevati.runtime._money import (
    _RATE_POWER,
    MoneyInput,
    _scaled,
    _to_decimal,
    _usd,
)
from techrevati.runtime._validate import non_empty_str
from techrevati.runtime.errors import InvalidValueError, PricingFileError

if TYPE_CHECKING:
    from techrevati.runtime.usage import UsageSnapshot

__all__ = [
    "LONG_CONTEXT_LITELLM_UNIT",
    "LOGGER_NAME",
    "LongContextTier",
    "ModelPricing",
    "PricingFileError",
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
_LOG: Final = get_logger(LOGGER_NAME)
_NO_TIER: Final = 1 << 62
"""Threshold used when a pricing has no long-context tier (the tier rates equal the base)."""
_RATE_FIELDS: Final = (
    "input_per_million",
    "output_per_million",
    "cache_read_per_million",
    "cache_write_per_million",
    "reasoning_per_million",
)


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
        input_per_million: MoneyInput,
        output_per_million: MoneyInput,
        *,
        cache_read_per_million: MoneyInput | None = None,
        cache_write_per_million: MoneyInput | None = None,
        reasoning_per_million: MoneyInput | None = None,
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
        input_per_million: MoneyInput,
        output_per_million: MoneyInput,
        *,
        cache_read_per_million: MoneyInput | None = None,
        cache_write_per_million: MoneyInput | None = None,
        reasoning_per_million: MoneyInput | None = None,
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
        from techrevati.runtime.usage import _require_snapshot  # noqa: PLC0415 (a cycle)

        _require_snapshot(usage)
        return _usd(_femto(self, usage))


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
    pricing = _lookup(_model_name(model))
    return 0 if pricing is None else _femto(pricing, usage)


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
