"""LiteLLM's own price file loads whole, and each loaded model costs what LiteLLM says.

The file is ``model_prices_and_context_window_backup.json`` from the installed
``litellm`` package (a dev extra, pinned in pyproject.toml: the counts below
are that version's), and the reference is LiteLLM's own ``cost_per_token``.
``LITELLM_LOCAL_MODEL_COST_MAP`` makes litellm read that file instead of
fetching its map from the network.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from techrevati.runtime.errors import PricingFileError, PricingFileWarning
from techrevati.runtime.pricing import get_pricing, load_pricing_from_file
from techrevati.runtime.usage import UsageSnapshot
from tests.conftest import examples, warned_from

pytestmark = pytest.mark.filterwarnings("ignore:.*ReadOnly.*:UserWarning")  # litellm's import

TOLERANCE = Decimal("1e-12")
"""LiteLLM adds floats; our costs are exact. Costs here are below $10, floats good to ~1e-15."""


@pytest.fixture(scope="module")
def litellm() -> ModuleType:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # never fetch the map
    return importlib.import_module("litellm")


@pytest.fixture(scope="module")
def price_file(litellm: ModuleType) -> Path:
    assert litellm.__file__ is not None
    path = Path(litellm.__file__).parent / "model_prices_and_context_window_backup.json"
    assert path.is_file()
    return path


@pytest.fixture(scope="module")
def raw(price_file: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(price_file.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def loaded(price_file: Path) -> Iterator[tuple[list[str], PricingFileWarning]]:
    from techrevati.runtime.pricing import clear_pricing

    clear_pricing()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = load_pricing_from_file(price_file)
    assert len(caught) == 1, [str(w.message) for w in caught]
    warning = caught[0].message
    assert isinstance(warning, PricingFileWarning)
    assert warned_from(caught[0].filename, __file__)  # the warning points at the caller
    yield names, warning
    clear_pricing()


_TOKEN_KEYS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "cache_creation_input_token_cost_above_1hr",
    "output_cost_per_reasoning_token",
)


def _has_per_token_price(entry: object) -> bool:
    """Our own reading of "priced per token": a token rate at the top or in a range."""
    if not isinstance(entry, dict):
        return False
    if any(entry.get(key) is not None for key in ("input_cost_per_token", "output_cost_per_token")):
        return True
    ranges = entry.get("tiered_pricing") or []
    return any(isinstance(tier, dict) and any(k in tier for k in _TOKEN_KEYS) for tier in ranges)


def test_every_entry_priced_per_token_is_registered_or_listed(
    raw: dict[str, Any], loaded: tuple[list[str], PricingFileWarning]
) -> None:
    names, warning = loaded
    priced = {name for name, entry in raw.items() if name != "sample_spec"}
    priced = {name for name in priced if _has_per_token_price(raw[name])}
    skipped = {note.entry for note in warning.skipped}
    assert set(names) | skipped == priced
    assert not set(names) & skipped
    assert len(names) == len(set(names))
    # Measured on litellm 1.110.2's file:
    assert len(raw) == 4878
    assert len(priced) == 3994
    assert len(names) == 3994  # 3,945 with top-level rates + 49 priced only by tiered_pricing
    tiered_only = [
        name
        for name, entry in raw.items()
        if isinstance(entry, dict)
        and entry.get("tiered_pricing")
        and entry.get("input_cost_per_token") is None
        and entry.get("output_cost_per_token") is None
    ]
    assert len(tiered_only) == 51
    assert len([name for name in tiered_only if name in names]) == 49  # 2 price search queries
    assert warning.skipped == ()
    assert len(warning.rounded) == 60
    assert len({note.entry for note in warning.rounded}) == 36
    kinds = [note.key.split(".")[0] for note in warning.ignored]
    assert (kinds.count("provider_specific_entry"), kinds.count("off_peak_pricing")) == (30, 10)


def test_every_rounded_rate_is_listed_with_its_key_and_text(
    raw: dict[str, Any], price_file: Path, loaded: tuple[list[str], PricingFileWarning]
) -> None:
    _, warning = loaded
    text = price_file.read_text(encoding="utf-8")
    message = str(warning)
    for note in warning.rounded:
        key = note.key.split(".")[-1]
        assert f'"{key}": {note.text}' in text  # the file's own spelling
        assert f"{note.entry!r} {note.key}: {note.text} -> {note.detail}" in message
        # half-even to 1e-15 USD per token, and no further
        rounded = Decimal(note.detail)
        assert rounded == Decimal(note.text).quantize(Decimal("1e-15"))
        assert rounded != Decimal(note.text)
    first = warning.rounded[0]
    assert (first.entry, first.key, first.text, first.detail) == (
        "databricks/databricks-claude-sonnet-4-1",
        "input_cost_per_token",
        "2.9999900000000002e-06",
        "0.00000299999",
    )
    assert {
        ("opencode_go/gpt-5.6-luna", "tiered_pricing[1].output_cost_per_token"),
        ("bigmodel/glm-5.3", "input_cost_per_token"),
    } <= {(note.entry, note.key) for note in warning.rounded}


def test_strict_refuses_the_file_listing_every_over_precise_rate(
    price_file: Path, loaded: tuple[list[str], PricingFileWarning]
) -> None:
    from techrevati.runtime.pricing import ModelPricing, register_pricing

    before = get_pricing("gpt-5.6")
    assert before is not None
    sentinel = ModelPricing(1, 1)
    register_pricing("gpt-5.6", sentinel)
    try:
        with pytest.raises(PricingFileError) as info:
            load_pricing_from_file(price_file, strict=True)
        assert get_pricing("gpt-5.6") is sentinel  # nothing from the file was registered
    finally:
        register_pricing("gpt-5.6", before)
    error = info.value
    assert error.entry is None
    assert len(error.problems) == 60
    assert len({entry for entry, _ in error.problems}) == 36
    assert (
        "'databricks/databricks-claude-sonnet-4-1': input_cost_per_token: "
        "2.9999900000000002e-06 has more precision than the money grid" in str(error)
    )
    assert str(error).count("\n") == 60


def _litellm_usage(litellm: ModuleType, usage: UsageSnapshot) -> object:
    """The same turn as LiteLLM's OpenAI-shaped Usage (prompt tokens include the cache)."""
    from litellm.types.utils import Usage

    details: dict[str, object] = {
        "cached_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }
    if usage.cache_write_1h_tokens:
        details["cache_creation_token_details"] = {
            "ephemeral_5m_input_tokens": usage.cache_write_tokens - usage.cache_write_1h_tokens,
            "ephemeral_1h_input_tokens": usage.cache_write_1h_tokens,
        }
    return Usage(
        prompt_tokens=usage.input_tokens,
        completion_tokens=usage.output_tokens,
        total_tokens=usage.input_tokens + usage.output_tokens,
        prompt_tokens_details=details,
        completion_tokens_details={"reasoning_tokens": usage.reasoning_tokens},
    )


def _litellm_cost(
    litellm: ModuleType, raw: dict[str, Any], model: str, usage: UsageSnapshot
) -> Decimal:
    provider = raw[model]["litellm_provider"]
    prompt, completion = litellm.cost_per_token(
        model=model, custom_llm_provider=provider, usage_object=_litellm_usage(litellm, usage)
    )
    return Decimal(repr(prompt + completion))


def _turn(
    inp: int, out: int, *, read: int = 0, write: int = 0, hour: int = 0, reasoning: int = 0
) -> UsageSnapshot:
    return UsageSnapshot(
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=hour,
        reasoning_tokens=reasoning,
    )


MIXED = _turn(150_000, 4_000, read=60_000, write=20_000, hour=15_000, reasoning=1_500)

# (model, turn, what the row covers); the expected cost is LiteLLM's.
TABLE: list[tuple[str, UsageSnapshot, str]] = [
    ("claude-sonnet-4-5", _turn(10_000, 500), "anthropic, plain"),
    ("claude-sonnet-4-5", _turn(10_000, 500, read=8_000), "cache read at 0.1x"),
    ("claude-sonnet-4-5", _turn(10_000, 500, write=8_000), "5-minute cache write at 1.25x"),
    ("claude-sonnet-4-5", _turn(10_000, 500, write=8_000, hour=8_000), "1-hour writes at 2x"),
    ("claude-sonnet-4-5", _turn(1_000_000, 0, write=1_000_000, hour=1_000_000), "$6, not $3.75"),
    ("claude-sonnet-4-5", _turn(30_000, 800, read=10_000, write=9_000, hour=4_000), "mixed"),
    (
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        _turn(200_000, 1_000, write=50_000, hour=20_000),
        "bedrock, at the 200k threshold",
    ),
    (
        "anthropic.claude-sonnet-4-5-20250929-v1:0",
        _turn(200_001, 1_000, write=50_000, hour=20_000),
        "bedrock, above: 1h write at its own above-200k rate",
    ),
    ("gpt-5.6", _turn(272_000, 2_000, read=100_000, reasoning=1_200), "openai, at 272k"),
    ("gpt-5.6", _turn(272_001, 2_000, read=100_000, reasoning=1_200), "openai, above 272k"),
    ("gpt-5.6", _turn(20_000, 3_000, reasoning=2_900), "reasoning at the output rate"),
    ("gpt-image-2", _turn(2_000, 4_160), "image output tokens at the image rate"),
    ("gemini-2.5-pro", _turn(200_000, 5_000, read=150_000, reasoning=4_000), "vertex, at 200k"),
    ("gemini-2.5-pro", _turn(200_001, 5_000, read=150_000, reasoning=4_000), "vertex, above"),
    ("xai/grok-4.3", _turn(199_999, 1_000, read=50_000), "xai, below 200k"),
    ("xai/grok-4.3", _turn(200_000, 1_000, read=50_000), "xai, at 200k: inclusive, above"),
    ("dashscope/qwen-turbo", _turn(5_000, 3_000, reasoning=2_000), "own reasoning rate"),
    ("dashscope/qwen3-coder-plus", _turn(32_000, 1_000, read=10_000), "ranges: at 32k"),
    ("dashscope/qwen3-coder-plus", _turn(32_001, 1_000, read=10_000), "ranges: above 32k"),
    ("dashscope/qwen3-coder-plus", _turn(2_000_000, 1_000), "ranges: past the last range"),
    ("dashscope/qwen-plus-2025-07-28", _turn(300_000, 9_000, reasoning=8_000), "range rates"),
    ("volcengine/doubao-seed-2-0-pro-260215", _turn(128_001, 500), "ranges, generic path"),
    ("opencode_go/grok-4.7", _turn(200_001, 500, read=100_000), "ranges with top-level rates"),
    ("kyma/qwen3.7-flash", _turn(32_001, 1_000, read=2_000), "two thresholds: the first"),
    ("kyma/qwen3.7-flash", _turn(256_001, 1_000, read=2_000), "two thresholds: the second"),
    ("fireworks-ai-default", _turn(10_000, 1_000, read=6_000), "fireworks: reads at half"),
    ("deepseek-reasoner", _turn(50_000, 2_000, read=45_000, reasoning=1_000), "deepseek"),
    ("gpt-4o", MIXED, "openai, every kind at once"),
    ("claude-haiku-5-5", _turn(100_001, 700, read=90_000, write=5_000), "100k threshold"),
    ("minimax/MiniMax-M3", _turn(512_001, 100), "512k threshold"),
    ("gemini/gemini-exp-1206", _turn(128_001, 100), "128k threshold, zero rates"),
    ("bigmodel/glm-5.3-flashx", _turn(0, 1_000), "an entry whose input rate was rounded"),
]


@pytest.mark.parametrize(
    ("model", "usage"), [row[:2] for row in TABLE], ids=[row[2] for row in TABLE]
)
def test_cost_equals_litellm_cost_per_token(
    litellm: ModuleType,
    raw: dict[str, Any],
    loaded: tuple[list[str], PricingFileWarning],
    model: str,
    usage: UsageSnapshot,
) -> None:
    assert raw[model].get("off_peak_pricing") is None  # LiteLLM's cost would depend on the hour
    pricing = get_pricing(model)
    assert pricing is not None
    ours = pricing.cost_usd(usage)
    theirs = _litellm_cost(litellm, raw, model, usage)
    assert abs(ours - theirs) <= TOLERANCE, (model, usage, ours, theirs)


def test_the_table_is_long_and_covers_every_kind_of_token() -> None:
    assert len(TABLE) >= 30
    turns = [usage for _, usage, _ in TABLE]
    assert any(u.cache_read_tokens for u in turns)
    assert any(u.cache_write_tokens > u.cache_write_1h_tokens for u in turns)
    assert any(u.cache_write_1h_tokens for u in turns)
    assert any(u.reasoning_tokens for u in turns)


_THRESHOLD_KEY = re.compile(r"^(input|output)_cost_per_token_above_(\d+)(k?)_tokens$")


def _thresholds(raw: dict[str, Any], names: list[str]) -> dict[tuple[int, bool], str]:
    """Every tier threshold in the file (``_above_`` keys, range bounds) -> its first model.

    Keyed by the threshold and whether it is inclusive (xAI bills from the threshold on).
    """
    found: dict[tuple[int, bool], str] = {}
    for name in names:
        entry = raw[name]
        if entry.get("off_peak_pricing") is not None:
            continue
        points: set[int] = set()
        for key in entry:
            match = _THRESHOLD_KEY.match(key)
            if match and entry[key] is not None:
                points.add(int(match.group(2)) * (1000 if match.group(3) else 1))
        for tier in entry.get("tiered_pricing") or []:
            if isinstance(tier, dict) and "input_cost_per_token" in tier:
                points.update(int(float(bound)) for bound in tier["range"])
        for point in points:
            found.setdefault((point, entry["litellm_provider"] == "xai"), name)
    return found


def test_every_tier_threshold_in_the_file_is_priced_as_litellm_prices_it(
    litellm: ModuleType, raw: dict[str, Any], loaded: tuple[list[str], PricingFileWarning]
) -> None:
    names, warning = loaded
    rounded = {note.entry for note in warning.rounded}
    found = _thresholds(raw, [name for name in names if name not in rounded])
    assert sorted(threshold for threshold, _ in found) == [
        0,
        32_000,
        100_000,
        128_000,
        200_000,
        200_000,  # xAI's, inclusive
        252_000,
        256_000,
        272_000,
        500_000,
        512_000,
        1_000_000,
    ]
    checked = 0
    for (threshold, _), model in found.items():
        pricing = get_pricing(model)
        assert pricing is not None
        for tokens in (threshold - 1, threshold, threshold + 1):
            if tokens < 0:
                continue
            cached = tokens // 3
            usage = _turn(tokens, 900, read=cached, write=tokens // 4, reasoning=300)
            ours = pricing.cost_usd(usage)
            theirs = _litellm_cost(litellm, raw, model, usage)
            assert abs(ours - theirs) <= TOLERANCE, (model, tokens, ours, theirs)
            checked += 1
    assert checked == 3 * len(found) - 1


def test_every_model_costs_what_litellm_says_for_a_mixed_turn(
    litellm: ModuleType, raw: dict[str, Any], loaded: tuple[list[str], PricingFileWarning]
) -> None:
    """Each registered model, one turn with every kind of token, against LiteLLM.

    Left out, each for a reason of LiteLLM's and not of the arithmetic: entries
    with off-peak hours (LiteLLM's cost depends on the clock), entries whose
    rates were rounded (off by less than a femto-dollar per token), names
    LiteLLM resolves to another entry (``deepseek-chat`` is priced as
    ``deepseek/deepseek-chat``), and Perplexity's, which LiteLLM prices with
    the cost Perplexity reports (its fallback drops the file's cache-write rates,
    and ``perplexity/perplexity/sonar`` is priced as ``perplexity/sonar``).
    """
    names, warning = loaded
    rounded = {note.entry for note in warning.rounded}
    usage = _turn(12_000, 700, read=5_000, write=3_000, hour=1_000, reasoning=200)
    compared = 0
    for name in names:
        entry = raw[name]
        provider = entry["litellm_provider"]
        if name in rounded or entry.get("off_peak_pricing") is not None or provider == "perplexity":
            continue
        if litellm.get_model_info(name, custom_llm_provider=provider)["key"] != name:
            continue
        pricing = get_pricing(name)
        assert pricing is not None
        ours = pricing.cost_usd(usage)
        theirs = _litellm_cost(litellm, raw, name, usage)
        assert abs(ours - theirs) <= TOLERANCE, (name, ours, theirs)
        compared += 1
    assert compared == 3_846


_bounds = st.integers(0, 60)


@given(ranges=st.lists(st.tuples(_bounds, _bounds).map(sorted), min_size=1, max_size=4))
@settings(
    max_examples=examples(300),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    deadline=None,
)
def test_a_turn_gets_the_range_litellm_selects(
    litellm: ModuleType, tmp_path: Path, ranges: list[list[int]]
) -> None:
    """Any ranges, gaps and overlaps included: every input is billed at the range LiteLLM picks."""
    from litellm.litellm_core_utils.llm_cost_calc.tiered_pricing import select_tier_for_input

    from techrevati.runtime.pricing import unregister_pricing

    tiers = [
        {"range": [start, end], "input_cost_per_token": f"{index + 1}e-06"}
        for index, (start, end) in enumerate(ranges)
    ]
    path = tmp_path / "ranges.json"
    path.write_text(json.dumps({"ranges": {"output_cost_per_token": 0, "tiered_pricing": tiers}}))
    load_pricing_from_file(path)
    pricing = get_pricing("ranges")
    assert pricing is not None
    for tokens in range(62):
        ours = pricing.cost_usd(UsageSnapshot(tokens, 0))
        chosen = select_tier_for_input(tiered_pricing=tiers, input_tokens=tokens)
        rate = Decimal(0) if chosen is None else Decimal(str(chosen["input_cost_per_token"]))
        assert ours == rate * tokens, tokens
    assert unregister_pricing("ranges")


# -- service tiers --------------------------------------------------------------------------
#
# LiteLLM prices flex, priority (and its sail/OpenAI ultrafast and balanced) turns in
# cost_per_token(service_tier=...), and batch turns in its batch_cost_calculator
# (cost_per_token(call_type="retrieve_batch"); its service_tier argument reads no
# _batches key). Every tier of every model is checked against the one LiteLLM uses.


def _litellm_tier_cost(
    litellm: ModuleType, raw: dict[str, Any], model: str, usage: UsageSnapshot
) -> Decimal:
    """What LiteLLM charges for ``usage`` at ``usage.service_tier`` (flex, priority, batch...)."""
    entry = raw[model]
    provider = entry["litellm_provider"]
    tier = usage.service_tier
    if tier != "batch":
        prompt, completion = litellm.cost_per_token(
            model=model,
            custom_llm_provider=provider,
            usage_object=_litellm_usage(litellm, usage),
            service_tier=tier,
        )
        return Decimal(repr(prompt + completion))
    details = _litellm_usage(litellm, usage)
    if not entry.get("output_cost_per_token") and entry.get("output_cost_per_image_token"):
        # An image model's output tokens are image tokens (as the default rates take them).
        assert details.completion_tokens_details is not None  # type: ignore[attr-defined]
        details.completion_tokens_details.image_tokens = usage.output_tokens  # type: ignore[attr-defined]
    prompt, completion = litellm.cost_per_token(
        model=model, custom_llm_provider=provider, usage_object=details, call_type="retrieve_batch"
    )
    return Decimal(repr(prompt + completion))


TIERS = ("flex", "priority", "batch")

# (model, turn, what the row covers); each row is priced at each of the three tiers.
TIER_TABLE: list[tuple[str, UsageSnapshot, str]] = [
    ("gpt-5", _turn(30_000, 2_000, read=20_000, reasoning=1_500), "openai"),
    ("gpt-5.1", _turn(8_000, 900, read=2_000), "openai, plain"),
    ("gpt-5.4", _turn(272_000, 3_000, read=100_000, reasoning=800), "openai, at 272k"),
    ("gpt-5.4", _turn(272_001, 3_000, read=100_000, reasoning=800), "openai, above 272k"),
    ("azure/gpt-5.4", _turn(300_000, 1_000, read=50_000), "azure, above 272k"),
    (
        "gemini/gemini-2.5-flash",
        _turn(40_000, 4_000, read=10_000, reasoning=3_000),
        "own reasoning",
    ),
    ("gemini/gemini-2.5-pro", _turn(200_001, 5_000, read=150_000, reasoning=4_000), "above 200k"),
    ("gemini-2.5-pro", _turn(150_000, 5_000, read=100_000), "vertex, below 200k"),
    ("vertex_ai/gemini-3.1-pro-preview", _turn(250_000, 2_000, read=80_000), "vertex"),
    ("amazon.nova-pro-v1:0", _turn(12_000, 700, read=5_000), "bedrock converse"),
    ("bedrock/ap-northeast-1/deepseek.v3.2", _turn(9_000, 800), "bedrock, a region"),
    ("bedrock_mantle/openai.gpt-oss-120b", _turn(20_000, 3_000, reasoning=2_500), "mantle"),
    ("gemini/gemini-2.5-flash-image", _turn(1_000, 1_290), "image output"),
    ("claude-sonnet-4-5", MIXED, "anthropic: batch only, the others at the default rates"),
]


TIER_CASES = [(model, usage, tier) for model, usage, _ in TIER_TABLE for tier in TIERS]


@pytest.mark.parametrize(
    "case", TIER_CASES, ids=[f"{what}, {tier}" for _, _, what in TIER_TABLE for tier in TIERS]
)
def test_each_tier_costs_what_litellm_charges_for_it(
    litellm: ModuleType,
    raw: dict[str, Any],
    loaded: tuple[list[str], PricingFileWarning],
    case: tuple[str, UsageSnapshot, str],
) -> None:
    model, usage, tier = case
    pricing = get_pricing(model)
    assert pricing is not None
    turn = dataclasses.replace(usage, service_tier=tier)
    ours = pricing.cost_usd(turn)
    theirs = _litellm_tier_cost(litellm, raw, model, turn)
    assert abs(ours - theirs) <= TOLERANCE, (model, tier, ours, theirs)


def test_the_tier_table_covers_ten_models_at_each_tier_and_every_kind_of_token(
    loaded: tuple[list[str], PricingFileWarning],
) -> None:
    # At each tier, ten models or more whose turn costs other than at the default rates.
    differ: dict[str, set[str]] = {tier: set() for tier in TIERS}
    for model, usage, _ in TIER_TABLE:
        pricing = get_pricing(model)
        assert pricing is not None
        for tier in TIERS:
            if pricing.cost_usd(dataclasses.replace(usage, service_tier=tier)) != (
                pricing.cost_usd(usage)
            ):
                differ[tier].add(model)
    assert all(len(models) >= 10 for models in differ.values()), differ
    turns = [usage for _, usage, _ in TIER_TABLE]
    assert any(u.cache_read_tokens for u in turns)
    assert any(u.cache_write_1h_tokens for u in turns)
    assert any(u.reasoning_tokens for u in turns)


def test_the_loader_reads_every_tier_the_file_prices(
    raw: dict[str, Any], loaded: tuple[list[str], PricingFileWarning]
) -> None:
    names, _ = loaded
    counts: dict[str, int] = {}
    for name in names:
        for tier in get_pricing(name).service_tiers:  # type: ignore[union-attr]
            counts[tier] = counts.get(tier, 0) + 1
    # Measured on litellm 1.110.2's file: every entry with a _flex, _priority, _batches,
    # _ultrafast or _balanced token rate has that tier (none of them has tiered_pricing).
    assert counts == {"batch": 593, "priority": 432, "flex": 312, "balanced": 10, "ultrafast": 8}
    suffixes = {"batch": "_batches"}
    for tier, count in counts.items():
        suffix = suffixes.get(tier, f"_{tier}")
        named = [
            name
            for name in names
            if any(
                key.startswith(_TOKEN_KEYS[:5]) and key.endswith(suffix) and value is not None
                for key, value in raw[name].items()
            )
        ]
        assert len(named) == count, tier
    gpt5 = get_pricing("gpt-5")
    assert gpt5 is not None
    assert (gpt5.input_per_million, gpt5.service_tiers["priority"].input_per_million) == (
        Decimal("1.25"),
        Decimal("2.5"),
    )
    assert gpt5.service_tiers["flex"].input_per_million == Decimal("0.625")
    assert gpt5.service_tiers["batch"].input_per_million == Decimal("0.625")
    o3 = get_pricing("o3")
    assert o3 is not None
    assert (o3.input_per_million, o3.service_tiers["priority"].input_per_million) == (
        Decimal(2),
        Decimal("3.5"),
    )


def _tier_turn(tokens: int, tier: str) -> UsageSnapshot:
    return UsageSnapshot(
        tokens,
        700,
        tokens * 5 // 12,
        tokens // 4,
        200,
        tokens // 12,
        service_tier=tier,
    )


def test_every_tier_of_every_model_costs_what_litellm_charges_for_a_mixed_turn(
    litellm: ModuleType, raw: dict[str, Any], loaded: tuple[list[str], PricingFileWarning]
) -> None:
    """Each registered model at each of its tiers, one turn with every kind of token.

    Left out as in the default-rates test above, and Fireworks' priority tier:
    LiteLLM's Fireworks cost function reads no service tier (it bills a
    priority turn at the default rates); we bill the file's priority rates.
    """
    names, warning = loaded
    rounded = {note.entry for note in warning.rounded}
    compared = fireworks = 0
    for name in names:
        entry = raw[name]
        provider = entry["litellm_provider"]
        if name in rounded or entry.get("off_peak_pricing") is not None or provider == "perplexity":
            continue
        if litellm.get_model_info(name, custom_llm_provider=provider)["key"] != name:
            continue
        pricing = get_pricing(name)
        assert pricing is not None
        for tier in pricing.service_tiers:
            turn = _tier_turn(12_000, tier)
            ours = pricing.cost_usd(turn)
            theirs = _litellm_tier_cost(litellm, raw, name, turn)
            if provider == "fireworks_ai" and tier == "priority":
                assert theirs == _litellm_cost(litellm, raw, name, turn)  # the default rates
                fireworks += 1
                continue
            assert abs(ours - theirs) <= TOLERANCE, (name, tier, ours, theirs)
            compared += 1
    assert (compared, fireworks) == (1_296, 49)


_TIER_THRESHOLD = re.compile(
    r"^(input|output|cache_read_input|cache_creation_input)_(cost_per_token|token_cost)"
    r"_above_(\d+)(k?)_tokens(_flex|_priority|_batches|_ultrafast|_balanced)?$"
)


def test_every_service_tier_threshold_in_the_file_is_priced_as_litellm_prices_it(
    litellm: ModuleType, raw: dict[str, Any], loaded: tuple[list[str], PricingFileWarning]
) -> None:
    """Each tier's thresholds (its own ``_above_`` keys and the default ones), one model each."""
    names, warning = loaded
    rounded = {note.entry for note in warning.rounded}
    found: dict[tuple[str, int, bool, bool], str] = {}
    for name in names:
        entry = raw[name]
        if name in rounded or entry.get("off_peak_pricing") is not None:
            continue
        if entry["litellm_provider"] == "fireworks_ai":
            continue
        pricing = get_pricing(name)
        assert pricing is not None
        for key, value in entry.items():
            match = _TIER_THRESHOLD.match(key)
            if match is None or value is None:
                continue
            point = int(match.group(3)) * (1000 if match.group(4) else 1)
            inclusive = entry["litellm_provider"] == "xai"
            for tier in pricing.service_tiers:
                own = match.group(5) == ("_batches" if tier == "batch" else f"_{tier}")
                found.setdefault((tier, point, inclusive, own), name)
    # Measured on litellm 1.110.2's file: each tier at each threshold, with the tier's own
    # _above_ rate there and with only the default one (xAI's inclusive ones too).
    assert len(found) == 18
    assert {tier for tier, *_ in found} == {"batch", "flex", "priority", "ultrafast"}
    assert {inclusive for _, _, inclusive, _ in found} == {False, True}
    checked = 0
    for (tier, point, *_), model in found.items():
        pricing = get_pricing(model)
        assert pricing is not None
        for tokens in (point - 1, point, point + 1):
            turn = _tier_turn(tokens, tier)
            ours = pricing.cost_usd(turn)
            theirs = _litellm_tier_cost(litellm, raw, model, turn)
            assert abs(ours - theirs) <= TOLERANCE, (model, tier, tokens, ours, theirs)
            checked += 1
    assert checked == 3 * len(found)


_KINDS = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
    "cache_creation_input_token_cost_above_1hr",
)
_rate = st.integers(1, 60).map(lambda n: f"{n}e-07")


@st.composite
def _entries(draw: st.DrawFn) -> dict[str, str]:
    """A LiteLLM entry with any mix of default, tier and threshold rates (as the file's text)."""
    entry = {"input_cost_per_token": draw(_rate), "output_cost_per_token": draw(_rate)}
    optional = [*_KINDS[2:], "output_cost_per_reasoning_token"]
    for tier in ("", "_flex", "_priority", "_batches"):
        kinds = optional if not tier else [*_KINDS, "output_cost_per_reasoning_token"]
        if tier == "_batches":
            kinds = list(_KINDS)  # LiteLLM reads no batch reasoning rate
        for kind in draw(st.lists(st.sampled_from(kinds), unique=True)):
            entry[f"{kind}{tier}"] = draw(_rate)
        for threshold in draw(st.lists(st.sampled_from([100, 200]), unique=True, max_size=2)):
            for kind in draw(st.lists(st.sampled_from(_KINDS), unique=True, min_size=1)):
                entry[f"{kind}_above_{threshold}_tokens{tier}"] = draw(_rate)
    return entry


_synthetic_turn = st.builds(
    lambda inp, out, read, write, hour, reasoning: _turn(
        inp,
        out,
        read=read * inp // 4,
        write=write * inp // 4,
        hour=min(hour, write * inp // 4),
        reasoning=reasoning * out // 2,
    ),
    st.sampled_from([0, 1, 99, 100, 101, 150, 199, 200, 201, 400]),
    st.integers(0, 50),
    st.integers(0, 2),
    st.integers(0, 2),
    st.integers(0, 60),
    st.integers(0, 2),
)


@given(entry=_entries(), usage=_synthetic_turn)
@example(  # a batch read falls back to the default rate above the default's threshold
    entry={
        "input_cost_per_token": "2e-07",
        "output_cost_per_token": "4e-07",
        "cache_read_input_token_cost": "1e-07",
        "cache_read_input_token_cost_above_100_tokens": "3e-07",
        "input_cost_per_token_batches": "1e-07",
    },
    usage=_turn(150, 10, read=75),
)
@settings(
    max_examples=examples(300),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    deadline=None,
)
def test_any_mix_of_tier_rates_costs_what_litellms_own_functions_charge(
    litellm: ModuleType, tmp_path: Path, entry: dict[str, str], usage: UsageSnapshot
) -> None:
    """Each tier's fallbacks (tier key, default key, the rate below a threshold) as LiteLLM's.

    Flex and priority against ``generic_cost_per_token(service_tier=...)``,
    batch against ``batch_cost_calculator``, both given the entry itself.
    """
    import logging

    from litellm.cost_calculator import batch_cost_calculator
    from litellm.litellm_core_utils.llm_cost_calc.utils import generic_cost_per_token

    from techrevati.runtime.pricing import LOGGER_NAME, unregister_pricing

    path = tmp_path / "synthetic.json"
    file_entry = {"litellm_provider": "openai", "mode": "chat", **entry}
    rates = ", ".join(f'"{key}": {value}' for key, value in entry.items())  # the text as is
    path.write_text(f'{{"synthetic": {{"litellm_provider": "openai", "mode": "chat", {rates}}}}}')
    load_pricing_from_file(path)
    pricing = get_pricing("synthetic")
    assert pricing is not None
    info: Any = {key: float(value) if key in entry else value for key, value in file_entry.items()}
    logging.getLogger(LOGGER_NAME).disabled = True  # a tier the entry names no rate of
    try:
        for tier in (None, "flex", "priority", "batch"):
            turn = dataclasses.replace(usage, service_tier=tier)
            ours = pricing.cost_usd(turn)
            details: Any = _litellm_usage(litellm, turn)
            if tier is not None and tier not in pricing.service_tiers:
                # A tier the entry names no rate of: the default rates, with a warning
                # (LiteLLM halves them for a batch, and for a priority turn above a
                # threshold takes a one-hour write at the cache-write rate).
                assert ours == pricing.cost_usd(usage)
                continue
            if tier == "batch":
                prompt, completion = batch_cost_calculator(
                    usage=details, model="synthetic", custom_llm_provider="openai", model_info=info
                )
            else:
                prompt, completion = generic_cost_per_token(
                    model="synthetic",
                    usage=details,
                    custom_llm_provider="openai",
                    service_tier=tier,
                    model_info=info,
                )
            theirs = Decimal(repr(prompt + completion))
            assert abs(ours - theirs) <= TOLERANCE, (tier, usage, ours, theirs)
    finally:
        logging.getLogger(LOGGER_NAME).disabled = False
        assert unregister_pricing("synthetic")
