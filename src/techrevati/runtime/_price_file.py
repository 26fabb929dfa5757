"""Pricing files read into :class:`~techrevati.runtime.pricing.ModelPricing`: ours and LiteLLM's.

Private: :func:`techrevati.runtime.pricing.load_pricing_from_file` is the way
in, and it imports this module on first use (so ``json`` and ``tomllib`` stay
out of the pricing module's import path). Everything is validated before
anything is registered: every bad entry is collected into one
:class:`PricingFileError`, and what a load rounded, skipped or ignored into one
:class:`PricingFileWarning`.

LiteLLM's rules, read from its ``cost_per_token`` (litellm 1.110) and mirrored
here so a loaded model costs what LiteLLM says it costs:

- ``<kind>_above_<N>[k]_tokens`` keys re-price the whole turn once its input
  exceeds the threshold (``>=`` for xAI); with several thresholds each crossed
  one overrides the kinds it names, the others keep the lower tier's rate.
- ``tiered_pricing`` ranges pick one tier for the whole turn by input,
  ``start < input <= end``, the last tier past the highest range; a tier's
  unset cache rates are its input rate, an unset output rate is the model's.
- ``cache_creation_input_token_cost_above_1hr`` is the one-hour cache write.
- ``<key>_flex``, ``_priority``, ``_ultrafast``, ``_balanced`` price the turns
  of that service tier (``cost_per_token(service_tier=...)``): each rate is
  the tier's key, else the default one (an ``_above_`` rate: the tier's, else
  the default's, else the tier's rate below; a one-hour write has no default
  fallback above a threshold); a reasoning rate falls back to the tier's
  output rate when the tier names an output rate.
- ``<key>_batches`` price batch turns as ``batch_cost_calculator`` does: the
  batch rates (each with its own ``_above_<N>_tokens_batches`` thresholds);
  no batch cache-read rate means the default one, no batch cache-write rate
  the batch input rate, no batch output rate half the default one, and no
  batch input rate half the default input, cache-read and cache-write rates
  (a cache read without a default rate then costs nothing, as in LiteLLM).
  Reasoning is billed at the output rate. An entry with no batch key has no
  batch tier: its batch turns are billed at the default rates, with a warning.
"""

from __future__ import annotations

import json
import re
import tomllib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Final

from techrevati.runtime._money import (
    _MAX_ADJUSTED,
    _RATE_POWER,
    _rounded,
    _scaled,
    _to_decimal,
)
from techrevati.runtime.errors import (
    InvalidValueError,
    PricingFileError,
    PricingFileNote,
    PricingFileWarning,
)
from techrevati.runtime.pricing import LONG_CONTEXT_LITELLM_UNIT, LongContextTier, ModelPricing

__all__ = ["parse_pricing_text", "read_pricing_file"]

_OUR_RATE_KEYS: Final = frozenset(
    {
        "input_per_million",
        "output_per_million",
        "cache_read_per_million",
        "cache_write_per_million",
        "cache_write_1h_per_million",
        "reasoning_per_million",
    }
)
_OUR_TIER_ENTRY_KEYS: Final = _OUR_RATE_KEYS | {"long_context"}
_OUR_MODEL_KEYS: Final = _OUR_TIER_ENTRY_KEYS | {"service_tiers"}
_OUR_NESTED: Final = frozenset({"long_context", "service_tiers"})
_OUR_TIER_KEYS: Final = _OUR_RATE_KEYS | {"threshold_tokens"}
_LITELLM_BASE: Final = {
    "input_cost_per_token": "input_per_million",
    "output_cost_per_token": "output_per_million",
    "cache_read_input_token_cost": "cache_read_per_million",
    "cache_creation_input_token_cost": "cache_write_per_million",
    "cache_creation_input_token_cost_above_1hr": "cache_write_1h_per_million",
    "output_cost_per_reasoning_token": "reasoning_per_million",
}
_LITELLM_THRESHOLD: Final = re.compile(
    r"^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost"
    r"|cache_creation_input_token_cost|cache_creation_input_token_cost_above_1hr)"
    r"_above_(\d+)(k?)_tokens$"
)
"""The threshold keys LiteLLM reads (a reasoning rate is never re-priced by a threshold)."""
_LITELLM_TIER_THRESHOLD: Final = re.compile(
    r"^(input_cost_per_token|output_cost_per_token|cache_read_input_token_cost"
    r"|cache_creation_input_token_cost|cache_creation_input_token_cost_above_1hr)"
    r"_above_(\d+)(k?)_tokens_(flex|priority|ultrafast|balanced|batches)$"
)
"""The threshold keys of one service tier (``input_cost_per_token_above_200k_tokens_priority``)."""
_LITELLM_SERVICE: Final = ("flex", "priority", "ultrafast", "balanced")
"""Suffixes LiteLLM's ``cost_per_token(service_tier=...)`` reads; each names our tier."""
_BATCHES: Final = "batches"
_TIER_ENDINGS: Final = tuple(f"_{suffix}" for suffix in (*_LITELLM_SERVICE, _BATCHES))
_ONE_HOUR: Final = "cache_creation_input_token_cost_above_1hr"
_CACHE_WRITE: Final = "cache_creation_input_token_cost"
_READ: Final = "cache_read_per_million"
_WRITE: Final = "cache_write_per_million"
_BATCH_KINDS: Final = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    _CACHE_WRITE,
    _ONE_HOUR,
)
"""The kinds ``batch_cost_calculator`` reads ``_batches`` rates of (no reasoning rate)."""
_LITELLM_SKIP: Final = "sample_spec"
_INCLUSIVE_PROVIDERS: Final = frozenset({"xai"})
"""Providers whose ``_above_`` thresholds bill from the threshold itself (``>=``)."""
_GRID: Final = "1e-15 USD per token"
_IMAGE_OUTPUT: Final = "output_cost_per_image_token"
_CACHE_READ: Final = "cache_read_input_token_cost"
_PER_TOKEN_TO_MILLION: Final = 6


class _FileNumber(Decimal):
    """A JSON number exactly as the file spells it: a Decimal whose repr is that text."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> _FileNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number

    def __repr__(self) -> str:
        return self.text


class _Object(dict[str, object]):
    """A JSON object that remembers the keys it was given more than once."""

    __slots__ = ("repeated",)
    repeated: tuple[str, ...]


def _json_object(pairs: list[tuple[str, object]]) -> _Object:
    obj = _Object()
    repeated = []
    for key, value in pairs:
        if key in obj and key not in repeated:
            repeated.append(key)
        obj[key] = value
    obj.repeated = tuple(repeated)
    return obj


def read_pricing_file(path: str, *, strict: bool) -> dict[str, ModelPricing]:
    """Read and validate the pricing file at ``path``; warn once about what was not kept as is."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PricingFileError(f"not UTF-8 text: {exc}", path=path) from exc
    parsed, warning = parse_pricing_text(
        text, path, toml=file.suffix.lower() == ".toml", strict=strict
    )
    if warning is not None:
        # user -> load_pricing_from_file -> read_pricing_file: point at the user's call
        warnings.warn(warning, stacklevel=3)
    return parsed


def parse_pricing_text(
    text: str, path: str, *, toml: bool, strict: bool
) -> tuple[dict[str, ModelPricing], PricingFileWarning | None]:
    """Parse and validate a whole pricing file: name -> pricing in file order, and the warning."""
    data: object
    try:
        if toml:
            data = tomllib.loads(text, parse_float=Decimal)
        else:
            data = json.loads(
                text,
                parse_float=_FileNumber,
                parse_constant=_FileNumber,
                object_pairs_hook=_json_object,
            )
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        kind = "TOML" if toml else "JSON"
        raise PricingFileError(f"invalid {kind}: {exc}", path=path) from exc
    if not isinstance(data, dict):
        raise PricingFileError(f"expected a top-level object, got {type(data).__name__}", path=path)
    reader = _Reader(strict=strict)
    if "models" in data:
        extra = sorted(set(data) - {"models"})
        if extra:
            raise PricingFileError(f"unknown top-level keys {extra} beside 'models'", path=path)
        if getattr(data, "repeated", ()):
            raise PricingFileError("key 'models' appears twice in the file", path=path)
        models = data["models"]
        if not isinstance(models, dict):
            raise PricingFileError(
                f"'models' must be a table of model entries, got {type(models).__name__}",
                path=path,
            )
        entries = reader.ours(models)
    elif _looks_like_litellm(data):
        entries = reader.litellm(data)
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
            reader.problem(raw, "model name must not be empty")
        elif name in result:
            reader.problem(raw, "model listed twice (names are stripped)")
        else:
            result[name] = pricing
    if reader.problems:
        raise PricingFileError.listing(path, tuple(reader.problems))
    warning = None
    if reader.rounded or reader.skipped or reader.ignored:
        warning = PricingFileWarning(
            path, tuple(reader.rounded), tuple(reader.skipped), tuple(reader.ignored)
        )
    return result, warning


def _looks_like_litellm(data: dict[str, object]) -> bool:
    return any(
        name == _LITELLM_SKIP
        or (
            isinstance(entry, dict)
            and (
                "litellm_provider" in entry
                or "tiered_pricing" in entry
                or any(key in entry for key in _LITELLM_BASE)
            )
        )
        for name, entry in data.items()
    )


class _Skip(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Signal that an entry's pricing cannot be represented: skip it, say why in the warning."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason


class _Reader:
    """One load's state: the problems found, and what was rounded, skipped or ignored."""

    def __init__(self, *, strict: bool) -> None:
        self.strict = strict
        self.problems: list[tuple[str, str]] = []
        self.rounded: list[PricingFileNote] = []
        self.skipped: list[PricingFileNote] = []
        self.ignored: list[PricingFileNote] = []
        self._read: dict[tuple[str, str], Decimal] = {}  # (entry, key) -> its rate, this entry

    def problem(self, entry: str, reason: str) -> None:
        self.problems.append((entry, reason))

    def repeated(self, obj: object, entry: str, where: str = "") -> None:
        """Report every key that a JSON object inside ``entry``'s ``obj`` repeats."""
        if isinstance(obj, dict):
            for key in getattr(obj, "repeated", ()):
                self.problem(entry, f"key {where + key!r} appears twice in the file")
            for key, value in obj.items():
                self.repeated(value, entry, f"{where}{key}.")
        elif isinstance(obj, list):
            for index, value in enumerate(obj):
                self.repeated(value, entry, f"{where[:-1]}[{index}].")

    def entries(self, table: dict[str, object]) -> Iterator[tuple[str, object]]:
        """Yield the entries of a models table in file order, reporting a name given twice."""
        twice = set(getattr(table, "repeated", ()))
        for name, entry in table.items():
            if name in twice:
                self.problem(name, "model listed twice in the file")
            yield name, entry

    # -- our schema ---------------------------------------------------------------

    def ours(self, models: dict[str, object]) -> list[tuple[str, ModelPricing]]:
        entries = []
        for name, entry in self.entries(models):
            self.repeated(entry, name)
            try:
                entries.append((name, _our_entry(entry)))
            except InvalidValueError as exc:
                self.problem(name, str(exc))
        return entries

    # -- LiteLLM's price file ---------------------------------------------------------

    def litellm(self, data: dict[str, object]) -> list[tuple[str, ModelPricing]]:
        entries = []
        for name, entry in self.entries(data):
            if name == _LITELLM_SKIP:
                continue
            if not isinstance(entry, dict):
                self.problem(name, f"entry must be an object, got {type(entry).__name__}")
                continue
            self.repeated(entry, name)
            count, rounded = len(self.problems), len(self.rounded)
            self._read.clear()
            try:
                pricing = self._litellm_entry(name, entry)
            except InvalidValueError as exc:
                self.problem(name, str(exc))
                continue
            except _Skip as skip:
                del self.rounded[rounded:]  # not registered: nothing of it was rounded
                self.skipped.append(PricingFileNote(name, skip.key, "", skip.reason))
                continue
            if pricing is not None and len(self.problems) == count:
                entries.append((name, pricing))
                self._conditional(name, entry)
        return entries

    def _litellm_entry(self, name: str, entry: dict[str, object]) -> ModelPricing | None:
        """Return the pricing of one LiteLLM entry, or None when it is not priced per token."""
        base = self._rates(name, entry, "")
        ranged = entry.get("tiered_pricing")
        # Ranges that price tokens decide every turn with input; the _above_ keys then never do
        # (and LiteLLM reads no service tier's rates: no entry with ranges names any).
        tiers = None if ranged is None else self._ranged_tiers(name, ranged, base)
        service: dict[str, ModelPricing] = {}
        if tiers is None:
            if "input_per_million" not in base and "output_per_million" not in base:
                return None  # not priced per token (image, audio, per-request, per-query models)
            raw = dict(base)
            self._litellm_defaults(name, entry, base)
            inclusive = entry.get("litellm_provider") in _INCLUSIVE_PROVIDERS
            above = self._above_rates(name, entry)
            tiers = self._threshold_tiers(base, above, inclusive=inclusive)
            suffixes = {key.rsplit("_", 1)[1] for key in entry if key.endswith(_TIER_ENDINGS)}
            for suffix in _LITELLM_SERVICE:
                if suffix in suffixes:  # most entries name no tier: no scan for one
                    pricing = self._suffixed_tier(name, entry, base, above, suffix, inclusive)
                    if pricing is not None:
                        service[suffix] = pricing
            batch = (
                None
                if _BATCHES not in suffixes
                else self._batch_tier(name, entry, raw, above, inclusive)
            )
            if batch is not None:
                service["batch"] = batch
        base.setdefault("input_per_million", Decimal(0))
        base.setdefault("output_per_million", Decimal(0))
        return _made(base, tiers, service)

    def _litellm_defaults(
        self, name: str, entry: dict[str, object], base: dict[str, Decimal]
    ) -> None:
        """Fill in the two rates LiteLLM's code, not its file, supplies."""
        image_output = entry.get(_IMAGE_OUTPUT)
        if not base.get("output_per_million") and image_output is not None:
            # An image model's output tokens are image tokens (cost_per_token does the same).
            base["output_per_million"] = self._per_token(name, _IMAGE_OUTPUT, image_output)
        if (
            entry.get("litellm_provider") == "fireworks_ai"
            and "cache_read_per_million" not in base
            and "input_per_million" in base
        ):
            # Fireworks bills cached input at half the input rate when the file names none.
            femto = _scaled(base["input_per_million"], _RATE_POWER, "input", _GRID)
            half = Decimal(f"{femto * 5}E-10")  # exact, whatever the caller's context
            text = "(unset: half of input_cost_per_token, as for fireworks_ai)"
            base["cache_read_per_million"] = self._on_grid(name, _CACHE_READ, half, text)

    def _rates(self, name: str, source: dict[str, object], where: str) -> dict[str, Decimal]:
        """Read the base rate keys of ``source`` (an entry or one tier) as USD per million."""
        return {
            ours: self._per_token(name, f"{where}{key}", value)
            for key, ours in _LITELLM_BASE.items()
            if (value := source.get(key)) is not None
        }

    def _above_rates(self, name: str, entry: dict[str, object]) -> dict[int, dict[str, Decimal]]:
        """Read the default ``_above_<N>_tokens`` rates: threshold -> our rate name -> rate."""
        above: dict[int, dict[str, Decimal]] = {}
        for key, value in entry.items():
            match = _LITELLM_THRESHOLD.match(key)
            if match is None or value is None:
                continue
            rate = self._per_token(name, key, value)
            above.setdefault(_threshold(match), {})[_LITELLM_BASE[match.group(1)]] = rate
        return above

    def _threshold_tiers(
        self,
        base: dict[str, Decimal],
        above: dict[int, dict[str, Decimal]],
        *,
        inclusive: bool,
    ) -> list[tuple[int, dict[str, Decimal]]]:
        tiers = []
        rates = dict(base)
        for threshold in sorted(above):
            rates = {**rates, **above[threshold]}  # a kind it does not name keeps its rate
            if inclusive and threshold == 0:
                raise _Skip(f"*_above_{threshold}_tokens", "an inclusive threshold of 0 tokens")
            tiers.append((threshold - 1 if inclusive else threshold, rates))
        return tiers

    def _suffixed_tier(  # noqa: PLR0917 (one entry's readings)
        self,
        name: str,
        entry: dict[str, object],
        base: dict[str, Decimal],
        above: dict[int, dict[str, Decimal]],
        suffix: str,
        inclusive: bool,
    ) -> ModelPricing | None:
        """Return the pricing of the ``_<suffix>`` tier, or None when the entry names none of it.

        As ``cost_per_token(service_tier=...)`` reads it: each rate is the
        tier's key, else the default key; above a threshold, the tier's
        ``_above_`` key, else the default's (except for the one-hour write),
        else the rate below.
        """
        own_above = self._tier_above(name, entry, suffix)
        rates = dict(base)
        named = bool(own_above)
        for key, ours in _LITELLM_BASE.items():
            value = entry.get(f"{key}_{suffix}")
            if value is not None:
                rates[ours] = self._per_token(name, f"{key}_{suffix}", value)
                named = True
        if not named:
            return None
        output = entry.get(f"output_cost_per_token_{suffix}")
        if output is not None and entry.get(f"output_cost_per_reasoning_token_{suffix}") is None:
            rates.pop("reasoning_per_million", None)  # billed at the tier's output rate
        image_output = entry.get(_IMAGE_OUTPUT)
        if not rates.get("output_per_million") and image_output is not None:
            rates["output_per_million"] = self._per_token(name, _IMAGE_OUTPUT, image_output)
        tiers = []
        level = dict(rates)
        for threshold in sorted(set(above) | set(own_above)):
            default_step = {
                kind: rate
                for kind, rate in above.get(threshold, {}).items()
                if kind != "cache_write_1h_per_million"  # no default fallback above (LiteLLM)
            }
            step = {**default_step, **own_above.get(threshold, {})}
            if not step:
                continue
            level = {**level, **step}
            if inclusive and threshold == 0:
                raise _Skip(f"*_above_0_tokens_{suffix}", "an inclusive threshold of 0 tokens")
            tiers.append((threshold - 1 if inclusive else threshold, level))
        return _made(rates, tiers)

    def _tier_above(
        self, name: str, entry: dict[str, object], suffix: str
    ) -> dict[int, dict[str, Decimal]]:
        """Read one tier's ``_above_<N>_tokens_<suffix>`` rates: threshold -> rate name -> rate."""
        above: dict[int, dict[str, Decimal]] = {}
        for key, value in entry.items():
            match = _LITELLM_TIER_THRESHOLD.match(key)
            if match is None or value is None or match.group(4) != suffix:
                continue
            rate = self._per_token(name, key, value)
            above.setdefault(_threshold(match), {})[_LITELLM_BASE[match.group(1)]] = rate
        return above

    def _batch_tier(
        self,
        name: str,
        entry: dict[str, object],
        raw: dict[str, Decimal],
        above: dict[int, dict[str, Decimal]],
        inclusive: bool,
    ) -> ModelPricing | None:
        """Return the batch tier as ``batch_cost_calculator`` bills it, or None without batch keys.

        ``raw`` holds the default rates as the file gives them (before the
        rates LiteLLM's code supplies), ``above`` the default thresholds.
        Each kind's rate is a step function of the input: it is read at 0
        input and just past every threshold, and a tier starts where it changes.
        """
        flat: dict[str, Decimal | None] = {}
        for key in _BATCH_KINDS:
            value = entry.get(f"{key}_{_BATCHES}")
            flat[key] = None if value is None else self._per_token(name, f"{key}_{_BATCHES}", value)
        steps: dict[str, dict[int, Decimal]] = {key: {} for key in _BATCH_KINDS}
        for threshold, rates in self._tier_above(name, entry, _BATCHES).items():
            for key in _BATCH_KINDS:
                if _LITELLM_BASE[key] in rates:
                    steps[key][threshold] = rates[_LITELLM_BASE[key]]
        if all(rate is None for rate in flat.values()) and not any(steps.values()):
            return None
        halves = self._batch_halves(name, raw)
        half_output = self._half(name, "output_cost_per_token", raw.get("output_per_million"))
        image_output = None
        image_rate = entry.get(_IMAGE_OUTPUT)
        if not raw.get("output_per_million") and image_rate is not None:
            # An image model's output tokens are image tokens: the batch image rate, else half.
            value = entry.get(f"{_IMAGE_OUTPUT}_{_BATCHES}")
            image_output = (
                self._half(name, _IMAGE_OUTPUT, self._per_token(name, _IMAGE_OUTPUT, image_rate))
                if value is None
                else self._per_token(name, f"{_IMAGE_OUTPUT}_{_BATCHES}", value)
            )

        def batch_rate(key: str, tokens: int) -> Decimal | None:
            crossed = [t for t in steps[key] if tokens > t or (inclusive and tokens == t)]
            return steps[key][max(crossed)] if crossed else flat[key]

        def default_read(tokens: int) -> Decimal | None:
            crossed = [t for t, rates in above.items() if tokens > t and _READ in rates]
            return above[max(crossed)][_READ] if crossed else raw.get(_READ)

        def rates_at(tokens: int) -> dict[str, Decimal]:
            rate_in = batch_rate("input_cost_per_token", tokens)
            if rate_in is None:  # no batch input rate: half the default ones
                rates = dict(halves)
            else:
                read = batch_rate(_CACHE_READ, tokens)
                found = {
                    "input_per_million": rate_in,
                    _READ: default_read(tokens) if read is None else read,
                    "cache_write_per_million": batch_rate(_CACHE_WRITE, tokens),
                    "cache_write_1h_per_million": batch_rate(_ONE_HOUR, tokens),
                }
                rates = {kind: rate for kind, rate in found.items() if rate is not None}
            output = batch_rate("output_cost_per_token", tokens)
            rates["output_per_million"] = half_output if output is None else output
            if image_output is not None:
                rates["output_per_million"] = image_output
            return rates

        points = {t - 1 if inclusive else t for kind in steps.values() for t in kind}
        points |= {t for t, rates in above.items() if _READ in rates}
        base = level = rates_at(0)
        tiers = []
        for point in sorted(p for p in points if p >= 0):
            rates = rates_at(point + 1)
            if rates != level:
                tiers.append((point, rates))
                level = rates
        return _made(base, tiers)

    def _batch_halves(self, name: str, raw: dict[str, Decimal]) -> dict[str, Decimal]:
        """Return the batch rates of an entry without a batch input rate: half the default ones.

        As ``batch_cost_calculator`` bills it: no default input rate bills no
        input at all; no default cache-read rate bills cache reads at nothing;
        cache writes (one-hour ones too) at half the cache-write rate, else
        half the input rate.
        """
        rate_in = raw.get("input_per_million")
        if rate_in is None:
            return dict.fromkeys(("input_per_million", _READ, _WRITE), Decimal(0))
        read = raw.get(_READ)
        write = raw.get(_WRITE, rate_in)
        return {
            "input_per_million": self._half(name, "input_cost_per_token", rate_in),
            _READ: Decimal(0) if read is None else self._half(name, _CACHE_READ, read),
            _WRITE: self._half(name, _CACHE_WRITE, write),
        }

    def _half(self, name: str, key: str, rate: Decimal | None) -> Decimal:
        """Return half of a default rate (0 for none), on the grid: LiteLLM's batch default."""
        if rate is None:
            return Decimal(0)
        femto = _scaled(rate, _RATE_POWER, key, _GRID)
        half = Decimal(f"{femto * 5}E-10")  # exact, whatever the caller's context
        text = f"(unset: half of {key}, as LiteLLM bills a batch)"
        return self._on_grid(name, f"{key}_{_BATCHES}", half, text)

    def _ranged_tiers(
        self, name: str, ranged: object, base: dict[str, Decimal]
    ) -> list[tuple[int, dict[str, Decimal]]] | None:
        """Turn ``tiered_pricing`` ranges into whole-turn tiers; None if no range prices tokens."""
        if not isinstance(ranged, list) or not ranged:
            raise InvalidValueError(f"tiered_pricing must be a non-empty list, got {ranged!r}")
        ranges: list[tuple[int, int, dict[str, Decimal], bool]] = []
        for index, tier in enumerate(ranged):
            where = f"tiered_pricing[{index}]"
            if not isinstance(tier, dict):
                raise InvalidValueError(f"{where} must be an object, got {tier!r}")
            if not any(key in tier for key in _LITELLM_BASE):
                return None  # e.g. search priced per query by result count
            if tier.get("input_cost_per_token") is None:
                raise _Skip(where, "a tiered_pricing tier without input_cost_per_token")
            start, end = _token_range(where, tier.get("range"))
            rates = self._rates(name, tier, f"{where}.")
            ranges.append((start, end, rates, tier.get("output_cost_per_token") is not None))
        # LiteLLM: sorted by start (stable), the first range with start < input <= end
        # wins, and an input past every range takes the last one.
        ranges.sort(key=lambda item: item[0])

        def chosen(tokens: int) -> int:
            for index, (start, end, _, _) in enumerate(ranges):
                if start < tokens <= end:
                    return index
            return len(ranges) - 1

        # The choice is constant between two consecutive bounds, so one tier per change.
        bounds = sorted({0, *(item[0] for item in ranges), *(item[1] for item in ranges)})
        steps: list[tuple[int, int]] = []
        for bound in bounds:
            index = chosen(bound + 1)
            if not steps or steps[-1][1] != index:
                steps.append((bound, index))
        tiers = []
        for threshold, index in steps:
            _, _, declared, declares_output = ranges[index]
            rates = dict(declared)
            # An unset output rate is the model's; so is an unset reasoning rate then.
            if not declares_output:
                rates["output_per_million"] = base.get("output_per_million", Decimal(0))
                if "reasoning_per_million" in base:
                    rates.setdefault("reasoning_per_million", base["reasoning_per_million"])
            tiers.append((threshold, rates))
        return tiers

    def _per_token(self, name: str, key: str, value: object) -> Decimal:
        """Convert USD per token to USD per million; round to the grid unless strict.

        Read once per entry and key (a tier may read a default key again): one note each.
        """
        memo = (name, key)
        known = self._read.get(memo)
        if known is not None:
            return known
        number = _to_decimal(value, key)
        rate = self._on_grid(name, key, _shifted(number, _PER_TOKEN_TO_MILLION), repr(value))
        self._read[memo] = rate
        return rate

    def _on_grid(self, name: str, key: str, per_million: Decimal, text: str) -> Decimal:
        """Return ``per_million`` if the grid holds it; else round it (noted) or, strict, refuse."""
        if not per_million.is_zero() and per_million.adjusted() >= _MAX_ADJUSTED:
            raise InvalidValueError(
                f"{key}: {text} is unreasonably large (1e9 USD per token or more)"
            )
        try:
            _scaled(per_million, _RATE_POWER, key, _GRID)
        except InvalidValueError:
            if self.strict:
                self.problem(
                    name,
                    f"{key}: {text} has more precision than the money grid ({_GRID}) holds; "
                    "strict=True refuses to round it",
                )
                return Decimal(0)
            rounded = _rounded(per_million, _RATE_POWER)
            if rounded.is_zero():
                raise InvalidValueError(
                    f"{key}: {text} is below the money grid ({_GRID}): rounding would make it free"
                ) from None
            per_token = _shifted(rounded, -_PER_TOKEN_TO_MILLION)
            self.rounded.append(PricingFileNote(name, key, text, f"{per_token:f}"))
            return rounded
        return per_million

    def _conditional(self, name: str, entry: dict[str, object]) -> None:
        """Note the prices of a registered entry that apply only to some requests."""
        if isinstance(entry.get("off_peak_pricing"), dict):
            self.ignored.append(
                PricingFileNote(
                    name, "off_peak_pricing", "", "lower rates at some hours; not applied"
                )
            )
        self._multipliers(name, entry)

    def _multipliers(self, name: str, entry: dict[str, object]) -> None:
        """Note the numeric ``provider_specific_entry`` multipliers of a registered entry."""
        specific = entry.get("provider_specific_entry")
        if not isinstance(specific, dict):
            return
        for key, value in specific.items():
            if isinstance(value, (int, Decimal)) and not isinstance(value, bool) and value != 1:
                self.ignored.append(
                    PricingFileNote(
                        name,
                        f"provider_specific_entry.{key}",
                        repr(value),
                        "a multiplier for requests routed that way; not applied",
                    )
                )


def _made(
    rates: Mapping[str, Decimal],
    tiers: Sequence[tuple[int, Mapping[str, object]]],
    service: Mapping[str, ModelPricing] | None = None,
) -> ModelPricing:
    """Build a pricing from our rate names (unset input and output rates are 0) and its tiers."""
    return ModelPricing(
        rates.get("input_per_million", Decimal(0)),
        rates.get("output_per_million", Decimal(0)),
        cache_read_per_million=rates.get(_READ),
        cache_write_per_million=rates.get(_WRITE),
        cache_write_1h_per_million=rates.get("cache_write_1h_per_million"),
        reasoning_per_million=rates.get("reasoning_per_million"),
        long_context=_chained(tiers),
        service_tiers=service,
    )


def _threshold(match: re.Match[str]) -> int:
    """Return the tokens an ``_above_<N>[k]_tokens`` key names."""
    return int(match.group(2)) * (LONG_CONTEXT_LITELLM_UNIT if match.group(3) else 1)


def _token_range(where: str, value: object) -> tuple[int, int]:
    """Return a ``[start, end]`` range of whole token counts, or raise naming it."""
    if isinstance(value, list) and len(value) == 2:
        bounds = []
        for bound in value:
            if isinstance(bound, bool) or not isinstance(bound, (int, Decimal, str)):
                break
            try:
                number = _to_decimal(bound, f"{where}.range")
            except InvalidValueError:
                break
            if number != number.to_integral_value():
                break
            bounds.append(int(number))
        else:
            start, end = bounds
            if start <= end:
                return start, end
    raise InvalidValueError(
        f"{where}.range must be [start, end], whole token counts with start <= end, got {value!r}"
    )


def _shifted(number: Decimal, places: int) -> Decimal:
    """Return ``number * 10**places`` exactly (an exponent shift, no arithmetic context)."""
    if number.is_zero():
        return Decimal(0)
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite, checked by _to_decimal
    shifted = Decimal((sign, digits, exponent + places))
    return Decimal(int(shifted)) if exponent + places >= 0 else shifted


def _our_entry(entry: object, *, tier: str | None = None) -> ModelPricing:
    """Return one entry of our schema as a pricing, or raise naming what is wrong.

    ``tier`` names the service tier an entry of ``service_tiers`` prices (it
    may not have service tiers of its own).
    """
    if not isinstance(entry, dict):
        raise InvalidValueError(f"entry must be a table of rates, got {type(entry).__name__}")
    unknown = sorted(set(entry) - (_OUR_MODEL_KEYS if tier is None else _OUR_TIER_ENTRY_KEYS))
    if unknown:
        raise InvalidValueError(f"unknown keys {unknown}")
    missing = sorted({"input_per_million", "output_per_million"} - set(entry))
    if missing:
        raise InvalidValueError(f"missing required keys {missing}")
    raw_tiers = entry.get("long_context")
    tiers = []
    if raw_tiers is not None:
        listed = raw_tiers if isinstance(raw_tiers, list) else [raw_tiers]
        tiers = [_our_tier(raw_tier) for raw_tier in listed]
    thresholds = [threshold for threshold, _ in tiers]
    if len(set(thresholds)) != len(thresholds):
        raise InvalidValueError(f"long_context tiers share a threshold_tokens: {thresholds}")
    service = _our_service_tiers(entry.get("service_tiers"))
    rates = {key: value for key, value in entry.items() if key not in _OUR_NESTED}
    return ModelPricing(**rates, long_context=_chained(tiers), service_tiers=service)


def _our_service_tiers(raw: object) -> dict[str, ModelPricing] | None:
    """Return the ``service_tiers`` table of an entry: tier name -> its pricing."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidValueError(
            f"service_tiers must be a table of tier name -> rates, got {type(raw).__name__}"
        )
    service = {}
    for name, tier_entry in raw.items():
        try:
            service[name] = _our_entry(tier_entry, tier=name)
        except InvalidValueError as exc:
            raise InvalidValueError(f"service_tiers.{name}: {exc}") from None
    return service


def _chained(tiers: Sequence[tuple[int, Mapping[str, object]]]) -> LongContextTier | None:
    """Build the chain of tiers (each one's ``above`` the next higher), lowest first."""
    chain = None
    for threshold, rates in sorted(tiers, key=lambda item: item[0], reverse=True):
        tier_rates = {"input_per_million": Decimal(0), "output_per_million": Decimal(0), **rates}
        chain = LongContextTier(threshold, **tier_rates, above=chain)  # type: ignore[arg-type]
    return chain


def _our_tier(raw_tier: object) -> tuple[int, dict[str, object]]:
    if not isinstance(raw_tier, dict):
        raise InvalidValueError(
            f"long_context must be a table or a list of tables, got {type(raw_tier).__name__}"
        )
    unknown = sorted(set(raw_tier) - _OUR_TIER_KEYS)
    if unknown:
        raise InvalidValueError(f"unknown long_context keys {unknown}")
    missing = sorted(
        {"threshold_tokens", "input_per_million", "output_per_million"} - set(raw_tier)
    )
    if missing:
        raise InvalidValueError(f"long_context is missing required keys {missing}")
    threshold = raw_tier["threshold_tokens"]
    LongContextTier(threshold, 0, 0)  # validates the threshold, naming it
    return threshold, {key: value for key, value in raw_tier.items() if key != "threshold_tokens"}
