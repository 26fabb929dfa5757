"""load_pricing_from_file: our JSON/TOML schema, LiteLLM's price file, all-or-nothing errors."""

from __future__ import annotations

import json
import pickle
from decimal import Decimal
from pathlib import Path

import pytest

from techrevati.runtime.errors import PricingFileWarning, TechrevatiError
from techrevati.runtime.usage import (
    LongContextTier,
    ModelPricing,
    PricingFileError,
    UsageSnapshot,
    get_pricing,
    has_pricing,
    load_pricing_from_file,
    register_pricing,
)

pytestmark = pytest.mark.usefixtures("empty_pricing")


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# -- our schema ---------------------------------------------------------------------

OURS_JSON = """
{
  "models": {
    "model-a": {"input_per_million": "3", "output_per_million": 15},
    "model-b": {
      "input_per_million": 1.25,
      "output_per_million": "10",
      "cache_read_per_million": 0.125,
      "cache_write_per_million": "1.5625",
      "reasoning_per_million": 12,
      "long_context": {
        "threshold_tokens": 200000,
        "input_per_million": 2.5,
        "output_per_million": "15"
      }
    }
  }
}
"""


def test_our_json_schema_registers_every_model_in_file_order(tmp_path: Path) -> None:
    names = load_pricing_from_file(_write(tmp_path, "prices.json", OURS_JSON))
    assert names == ["model-a", "model-b"]
    assert get_pricing("model-a") == ModelPricing("3", "15")
    expected_b = ModelPricing(
        "1.25",
        "10",
        cache_read_per_million="0.125",
        cache_write_per_million="1.5625",
        reasoning_per_million="12",
        long_context=LongContextTier(200_000, "2.5", "15"),
    )
    assert get_pricing("model-b") == expected_b


def test_json_numbers_are_read_as_exact_decimals(tmp_path: Path) -> None:
    text = '{"models": {"m": {"input_per_million": 0.1, "output_per_million": 0.3}}}'
    load_pricing_from_file(_write(tmp_path, "p.json", text))
    pricing = get_pricing("m")
    assert pricing is not None
    assert str(pricing.input_per_million) == "0.1"
    usage = UsageSnapshot(input_tokens=3_000_000, output_tokens=1_000_000)
    assert pricing.cost_usd(usage) == Decimal("0.6")


def test_our_toml_schema(tmp_path: Path) -> None:
    text = """
[models."model-a"]
input_per_million = 3
output_per_million = "15"

[models."model-b"]
input_per_million = 1.25
output_per_million = 10.0
cache_read_per_million = 0.125

[models."model-b".long_context]
threshold_tokens = 128_000
input_per_million = 2.5
output_per_million = 15
"""
    names = load_pricing_from_file(str(_write(tmp_path, "prices.TOML", text)))
    assert names == ["model-a", "model-b"]
    pricing = get_pricing("model-b")
    assert pricing is not None
    assert str(pricing.output_per_million) == "10.0"
    assert pricing.long_context == LongContextTier(128_000, "2.5", "15")


def test_names_are_stripped_and_loading_replaces_existing_pricing(tmp_path: Path) -> None:
    register_pricing("m", ModelPricing(100, 100))
    text = '{"models": {" m ": {"input_per_million": 1, "output_per_million": 2}}}'
    assert load_pricing_from_file(_write(tmp_path, "p.json", text)) == ["m"]
    assert get_pricing("m") == ModelPricing(1, 2)


def test_a_byte_order_mark_is_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + OURS_JSON.encode())
    assert load_pricing_from_file(path) == ["model-a", "model-b"]


def test_an_empty_models_table_registers_nothing(tmp_path: Path) -> None:
    assert load_pricing_from_file(_write(tmp_path, "p.json", '{"models": {}}')) == []


# -- LiteLLM's format ---------------------------------------------------------------

LITELLM = {
    "sample_spec": {
        "input_cost_per_token": 0.0,
        "output_cost_per_token": 0.0,
        "litellm_provider": "one of https://docs.litellm.ai/docs/providers",
        "max_tokens": "LEGACY parameter",
    },
    "claude-like": {
        "input_cost_per_token": 3e-06,
        "output_cost_per_token": 1.5e-05,
        "cache_read_input_token_cost": 3e-07,
        "cache_creation_input_token_cost": 3.75e-06,
        "cache_creation_input_token_cost_above_1hr": 6e-06,
        "input_cost_per_token_above_200k_tokens": 6e-06,
        "output_cost_per_token_above_200k_tokens": 2.25e-05,
        "cache_read_input_token_cost_above_200k_tokens": 6e-07,
        "litellm_provider": "anthropic",
        "max_input_tokens": 1_000_000,
        "mode": "chat",
        "supports_prompt_caching": True,
    },
    "nova-like": {
        "cache_read_input_token_cost": 5.46875e-07,
        "input_cost_per_token": 2.1875e-06,
        "output_cost_per_token": 1.75e-05,
        "output_cost_per_reasoning_token": 2e-05,
        "litellm_provider": "bedrock_converse",
    },
    "gemini-like": {
        "input_cost_per_token": 7.5e-08,
        "output_cost_per_token": 3e-07,
        "input_cost_per_token_above_128k_tokens": 1.5e-07,
        "litellm_provider": "gemini",
    },
    "embedding-like": {"input_cost_per_token": 1e-07, "litellm_provider": "openai"},
    "dall-e-like": {
        "input_cost_per_pixel": 1.9e-08,
        "output_cost_per_pixel": 0.0,
        "litellm_provider": "openai",
        "mode": "image_generation",
    },
    "null-costs": {"input_cost_per_token": None, "output_cost_per_token": None},
}


def test_litellm_file_registers_token_priced_models_exactly(tmp_path: Path) -> None:
    path = _write(tmp_path, "model_prices_and_context_window.json", json.dumps(LITELLM))
    names = load_pricing_from_file(path)
    assert names == ["claude-like", "nova-like", "gemini-like", "embedding-like"]
    assert not has_pricing("sample_spec")
    assert not has_pricing("dall-e-like")
    assert get_pricing("claude-like") == ModelPricing(
        "3",
        "15",
        cache_read_per_million="0.3",
        cache_write_per_million="3.75",
        cache_write_1h_per_million="6",
        long_context=LongContextTier(
            200_000,
            "6",
            "22.5",
            cache_read_per_million="0.6",
            cache_write_per_million="3.75",  # no "above" rate: the base rate stays
            cache_write_1h_per_million="6",
        ),
    )
    nova = get_pricing("nova-like")
    assert nova is not None
    assert str(nova.cache_read_per_million) == "0.546875"
    assert str(nova.input_per_million) == "2.1875"
    assert nova.reasoning_per_million == 20
    gemini = get_pricing("gemini-like")
    assert gemini is not None
    assert gemini.long_context == LongContextTier(128_000, "0.15", "0.3")
    embedding = get_pricing("embedding-like")
    assert embedding == ModelPricing("0.1", 0)


def test_litellm_long_context_tier_bills_whole_turn_above_200k(tmp_path: Path) -> None:
    load_pricing_from_file(_write(tmp_path, "litellm.json", json.dumps(LITELLM)))
    pricing = get_pricing("claude-like")
    assert pricing is not None
    short = UsageSnapshot(input_tokens=200_000, output_tokens=1_000_000)
    long = UsageSnapshot(input_tokens=200_001, output_tokens=1_000_000)
    assert pricing.cost_usd(short) == Decimal("0.6") + Decimal("15")
    assert pricing.cost_usd(long) == Decimal("1.200006") + Decimal("22.5")


def test_litellm_entries_we_cannot_represent_are_skipped_with_one_warning(
    tmp_path: Path,
) -> None:
    data = {
        "unpriced-range": {
            "output_cost_per_token": 4e-07,
            "tiered_pricing": [{"range": [0, 256000], "output_cost_per_token": 5e-08}],
        },
        "ranged": {
            "input_cost_per_token": 5e-08,
            "output_cost_per_token": 4e-07,
            "tiered_pricing": [{"range": [0, 256000], "cache_read_input_token_cost": 5e-08}],
        },
        "plain": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},
    }
    with pytest.warns(PricingFileWarning) as caught:
        names = load_pricing_from_file(_write(tmp_path, "l.json", json.dumps(data)))
    assert names == ["plain"]
    assert len(caught) == 1
    warning = caught[0].message
    assert isinstance(warning, PricingFileWarning)
    assert [(n.entry, n.key) for n in warning.skipped] == [
        ("unpriced-range", "tiered_pricing[0]"),
        ("ranged", "tiered_pricing[0]"),
    ]
    assert "'unpriced-range' tiered_pricing[0]: a tiered_pricing tier without" in str(warning)


def test_litellm_string_costs_are_accepted(tmp_path: Path) -> None:
    data = {"m": {"input_cost_per_token": "0.000003", "output_cost_per_token": "1.5e-5"}}
    load_pricing_from_file(_write(tmp_path, "l.json", json.dumps(data)))
    assert get_pricing("m") == ModelPricing("3", "15")


# -- failures: one typed error, nothing registered -------------------------------------


def _assert_refused(
    path: Path, *, entry: str | None, match: str, previously: tuple[str, ...] = ()
) -> PricingFileError:
    with pytest.raises(PricingFileError, match=match) as info:
        load_pricing_from_file(path)
    error = info.value
    assert error.path == str(path)
    assert error.entry == entry
    assert str(path) in str(error)
    if entry is not None:
        assert repr(entry) in str(error)
    assert isinstance(error, ValueError)
    assert isinstance(error, TechrevatiError)
    for name in ("good", *previously):
        assert not has_pricing(name)
    return error


@pytest.mark.parametrize(
    ("bad_rate", "match"),
    [
        ("-1", "output_per_million must be finite and >= 0"),
        ("NaN", "output_per_million must be finite and >= 0"),
        ("true", "output_per_million must be a number, not a bool"),
        ("[1]", "output_per_million must be a Decimal, int, float or str"),
        ('"cheap"', "output_per_million must be a decimal number"),
        ('"0.0000000001"', "output_per_million has more precision"),
    ],
)
def test_a_bad_rate_refuses_the_whole_file(tmp_path: Path, bad_rate: str, match: str) -> None:
    text = (
        '{"models": {"good": {"input_per_million": 1, "output_per_million": 1},'
        f' "bad": {{"input_per_million": 1, "output_per_million": {bad_rate}}}}}}}'
    )
    _assert_refused(_write(tmp_path, "p.json", text), entry="bad", match=match)


@pytest.mark.parametrize(
    ("entry_text", "match"),
    [
        ('{"input_per_million": 1}', r"missing required keys \['output_per_million'\]"),
        ('{"input_per_million": 1, "output_per_million": 1, "inptu": 2}', "unknown keys"),
        ('"3"', "entry must be a table of rates, got str"),
        (
            '{"input_per_million": 1, "output_per_million": 1, "long_context": 5}',
            "long_context must be a table",
        ),
        (
            '{"input_per_million": 1, "output_per_million": 1, '
            '"long_context": {"input_per_million": 2, "output_per_million": 2}}',
            "long_context is missing required keys",
        ),
        (
            '{"input_per_million": 1, "output_per_million": 1, '
            '"long_context": {"threshold_tokens": 5, "input_per_million": 2, '
            '"output_per_million": 2, "colour": 1}}',
            "unknown long_context keys",
        ),
        (
            '{"input_per_million": 1, "output_per_million": 1, '
            '"long_context": {"threshold_tokens": 1.5, "input_per_million": 2, '
            '"output_per_million": 2}}',
            "threshold_tokens must be an int",
        ),
    ],
)
def test_a_malformed_entry_refuses_the_whole_file(
    tmp_path: Path, entry_text: str, match: str
) -> None:
    text = (
        '{"models": {"good": {"input_per_million": 1, "output_per_million": 1},'
        f' "bad": {entry_text}}}}}'
    )
    _assert_refused(_write(tmp_path, "p.json", text), entry="bad", match=match)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"models": {"good": {', "invalid JSON"),
        ("[1, 2]", "expected a top-level object, got list"),
        ('{"models": [1]}', "'models' must be a table"),
        ('{"models": {}, "version": 2}', "unknown top-level keys"),
        ('{"good": 1, "other": {"price": 2}}', "unknown schema"),
        ("{}", "unknown schema"),
    ],
)
def test_a_malformed_file_is_refused_as_a_whole(tmp_path: Path, text: str, match: str) -> None:
    _assert_refused(_write(tmp_path, "p.json", text), entry=None, match=match)


def test_invalid_toml_is_refused(tmp_path: Path) -> None:
    _assert_refused(_write(tmp_path, "p.toml", "[models\n"), entry=None, match="invalid TOML")


def test_duplicate_names_after_stripping_are_refused(tmp_path: Path) -> None:
    text = (
        '{"models": {"good": {"input_per_million": 1, "output_per_million": 1},'
        ' " good": {"input_per_million": 2, "output_per_million": 2}}}'
    )
    _assert_refused(_write(tmp_path, "p.json", text), entry=" good", match="listed twice")


def test_empty_model_name_is_refused(tmp_path: Path) -> None:
    text = '{"models": {" ": {"input_per_million": 1, "output_per_million": 1}}}'
    _assert_refused(_write(tmp_path, "p.json", text), entry=" ", match="must not be empty")


def test_a_bad_litellm_entry_refuses_the_whole_file(tmp_path: Path) -> None:
    data = {
        "good": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},
        "bad": {"input_cost_per_token": -1e-06, "output_cost_per_token": 2e-06},
    }
    error = _assert_refused(
        _write(tmp_path, "l.json", json.dumps(data)),
        entry="bad",
        match="input_cost_per_token must be finite and >= 0",
    )
    assert error.reason.startswith("input_cost_per_token")


def test_a_float_artifact_in_litellm_is_refused_under_strict(tmp_path: Path) -> None:
    text = (
        '{"good": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},'
        ' "artifact": {"input_cost_per_token": 2.4999999999999998e-06,'
        ' "output_cost_per_token": 1e-05}}'
    )
    path = _write(tmp_path, "l.json", text)
    with pytest.raises(PricingFileError) as info:
        load_pricing_from_file(path, strict=True)
    assert info.value.entry == "artifact"
    assert info.value.reason == (
        "input_cost_per_token: 2.4999999999999998e-06 has more precision than the money "
        "grid (1e-15 USD per token) holds; strict=True refuses to round it"
    )
    assert not has_pricing("good")


def test_litellm_non_object_entry_is_refused(tmp_path: Path) -> None:
    data = {"good": {"input_cost_per_token": 1e-06}, "bad": 3}
    _assert_refused(
        _write(tmp_path, "l.json", json.dumps(data)), entry="bad", match="must be an object"
    )


def test_json_infinity_is_refused_naming_the_entry(tmp_path: Path) -> None:
    text = '{"good": {"input_cost_per_token": 1e-06}, "bad": {"output_cost_per_token": Infinity}}'
    _assert_refused(_write(tmp_path, "l.json", text), entry="bad", match="finite")


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(b'{"models": {"\xff": {}}}')
    _assert_refused(path, entry=None, match="not UTF-8")


def test_a_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_pricing_from_file(tmp_path / "nope.json")


def test_pricing_file_error_pickles_with_path_and_entry() -> None:
    error = PricingFileError("bad rate", path="p.json", entry="m")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.path, clone.entry, clone.reason, str(clone)) == (
        "p.json",
        "m",
        "bad rate",
        "p.json: entry 'm': bad rate",
    )
