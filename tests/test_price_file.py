"""The pricing-file reader: rounding or refusing float artefacts, every bad entry in one error,
repeated keys, LiteLLM's tiers (``_above_`` thresholds, ``tiered_pricing`` ranges, xAI's
inclusive ones), one-hour cache writes, and the one warning per load."""

from __future__ import annotations

import json
import pickle
import warnings
from decimal import Decimal
from pathlib import Path

import pytest

from techrevati import runtime
from techrevati.runtime import pricing as pricing_module
from techrevati.runtime import usage as usage_module
from techrevati.runtime.errors import (
    InvalidValueError,
    PricingFileError,
    PricingFileNote,
    PricingFileWarning,
)
from techrevati.runtime.pricing import (
    LongContextTier,
    ModelPricing,
    get_pricing,
    has_pricing,
    load_pricing_from_file,
)
from techrevati.runtime.usage import UsageSnapshot
from tests.conftest import warned_from

pytestmark = pytest.mark.usefixtures("empty_pricing")


def _write(tmp_path: Path, text: str, name: str = "prices.json") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _load(path: Path, *, strict: bool = False) -> tuple[list[str], PricingFileWarning | None]:
    """Load ``path``; return the names and the one warning (None when there is none)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = load_pricing_from_file(path, strict=strict)
    found = [w.message for w in caught if isinstance(w.message, PricingFileWarning)]
    assert len(found) <= 1
    assert len(caught) == len(found)
    return names, (found[0] if found else None)


def _pricing(name: str) -> ModelPricing:
    found = get_pricing(name)
    assert found is not None
    return found


def test_load_pricing_from_file_is_the_same_function_everywhere() -> None:
    assert usage_module.load_pricing_from_file is pricing_module.load_pricing_from_file
    assert runtime.load_pricing_from_file is pricing_module.load_pricing_from_file
    assert runtime.PricingFileWarning is PricingFileWarning
    assert pricing_module.PricingFileNote is PricingFileNote


class _BytesPath:
    def __fspath__(self) -> bytes:
        return b"prices.json"


@pytest.mark.parametrize("path", [3, None, b"prices.json", _BytesPath()])
def test_path_must_be_a_str_path(path: object) -> None:
    with pytest.raises(InvalidValueError, match=r"path must be a str or a str os\.PathLike"):
        load_pricing_from_file(path)  # type: ignore[arg-type]


def test_strict_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(InvalidValueError, match="strict must be a bool, got 1"):
        load_pricing_from_file(tmp_path / "absent.json", strict=1)  # type: ignore[arg-type]


# -- float artefacts: rounded and reported by default, refused under strict -------------

ARTEFACTS = """{
  "clean": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05},
  "databricks-like": {
    "input_cost_per_token": 2.9999900000000002e-06,
    "output_cost_per_token": 1.5000020000000002e-05
  },
  "repeating": {"input_cost_per_token": 1.1428571428571428e-06, "output_cost_per_token": 0}
}"""


def test_over_precise_rates_are_rounded_half_even_and_reported_once(tmp_path: Path) -> None:
    names, warning = _load(_write(tmp_path, ARTEFACTS))
    assert names == ["clean", "databricks-like", "repeating"]
    assert warning is not None
    assert warning.rounded == (
        PricingFileNote(
            "databricks-like", "input_cost_per_token", "2.9999900000000002e-06", "0.00000299999"
        ),
        PricingFileNote(
            "databricks-like", "output_cost_per_token", "1.5000020000000002e-05", "0.00001500002"
        ),
        PricingFileNote(
            "repeating",
            "input_cost_per_token",
            "1.1428571428571428e-06",
            "0.000001142857143",
        ),
    )
    assert warning.skipped == warning.ignored == ()
    assert _pricing("databricks-like") == ModelPricing("2.99999", "15.00002")
    assert _pricing("repeating").input_per_million == Decimal("1.142857143")
    message = str(warning)
    assert message.startswith(f"{tmp_path / 'prices.json'}: 3 rates rounded half-even")
    assert "'repeating' input_cost_per_token: 1.1428571428571428e-06 -> 0.000001142857143" in (
        message
    )


def test_rounding_is_half_even_on_the_femto_dollar(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "ties": {
                "input_cost_per_token": "2.5e-15",
                "output_cost_per_token": 3.5e-15,
                "cache_read_input_token_cost": "1.5e-15",
                "cache_creation_input_token_cost": "1.49e-15",
            }
        }
    )
    _, warning = _load(_write(tmp_path, text))
    assert warning is not None
    assert [(note.text, note.detail) for note in warning.rounded] == [
        ("'2.5e-15'", "0.000000000000002"),  # a tie: to the even femto-dollar
        ("3.5e-15", "0.000000000000004"),
        ("'1.5e-15'", "0.000000000000002"),
        ("'1.49e-15'", "0.000000000000001"),
    ]
    assert _pricing("ties") == ModelPricing(
        "0.000000002",
        "0.000000004",
        cache_read_per_million="0.000000002",
        cache_write_per_million="0.000000001",
    )


def test_a_rate_that_would_round_to_zero_is_an_error(tmp_path: Path) -> None:
    text = '{"m": {"input_cost_per_token": 4e-16, "output_cost_per_token": 1e-06}}'
    with pytest.raises(PricingFileError) as info:
        _load(_write(tmp_path, text))
    assert info.value.entry == "m"
    assert info.value.reason == (
        "input_cost_per_token: 4e-16 is below the money grid (1e-15 USD per token): "
        "rounding would make it free"
    )


@pytest.mark.parametrize("strict", [False, True])
def test_an_absurdly_large_rate_is_an_error_naming_the_files_key(
    tmp_path: Path, strict: bool
) -> None:
    text = '{"m": {"input_cost_per_token": 1e-06, "output_cost_per_token": 1.5e9}}'
    with pytest.raises(PricingFileError) as info:
        load_pricing_from_file(_write(tmp_path, text), strict=strict)
    assert info.value.problems == (
        ("m", "output_cost_per_token: 1.5e9 is unreasonably large (1e9 USD per token or more)"),
    )


def test_strict_refuses_and_lists_every_over_precise_rate(tmp_path: Path) -> None:
    path = _write(tmp_path, ARTEFACTS)
    with pytest.raises(PricingFileError) as info:
        load_pricing_from_file(path, strict=True)
    error = info.value
    assert error.entry is None
    assert error.problems == (
        (
            "databricks-like",
            "input_cost_per_token: 2.9999900000000002e-06 has more precision than the money "
            "grid (1e-15 USD per token) holds; strict=True refuses to round it",
        ),
        (
            "databricks-like",
            "output_cost_per_token: 1.5000020000000002e-05 has more precision than the money "
            "grid (1e-15 USD per token) holds; strict=True refuses to round it",
        ),
        (
            "repeating",
            "input_cost_per_token: 1.1428571428571428e-06 has more precision than the money "
            "grid (1e-15 USD per token) holds; strict=True refuses to round it",
        ),
    )
    assert str(error).splitlines()[0] == f"{path}: 2 bad entries (3 problems):"
    assert str(error).splitlines()[3].startswith("  'repeating': input_cost_per_token: 1.14")
    assert not has_pricing("clean")


def test_strict_loads_a_clean_file_without_a_warning(tmp_path: Path) -> None:
    text = '{"clean": {"input_cost_per_token": 3e-06, "output_cost_per_token": 1.5e-05}}'
    assert _load(_write(tmp_path, text), strict=True) == (["clean"], None)


def test_every_bad_entry_is_listed_with_the_files_own_key_and_text(tmp_path: Path) -> None:
    text = """{
      "good": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06},
      "negative": {"input_cost_per_token": -1.5e-06, "output_cost_per_token": 2e-06},
      "nan": {"input_cost_per_token": NaN, "output_cost_per_token": 2e-06},
      "word": {"input_cost_per_token": 1e-06, "cache_read_input_token_cost": "cheap"},
      "not-an-object": 3
    }"""
    with pytest.raises(PricingFileError) as info:
        load_pricing_from_file(_write(tmp_path, text))
    assert info.value.problems == (
        ("negative", "input_cost_per_token must be finite and >= 0, got -1.5e-06"),
        ("nan", "input_cost_per_token must be finite and >= 0, got NaN"),
        ("word", "cache_read_input_token_cost must be a decimal number, got 'cheap'"),
        ("not-an-object", "entry must be an object, got int"),
    )
    assert "4 bad entries" in str(info.value)
    assert not has_pricing("good")


def test_a_single_bad_entry_keeps_the_one_entry_form(tmp_path: Path) -> None:
    text = '{"good": {"input_cost_per_token": 1e-06}, "bad": {"output_cost_per_token": -2e-06}}'
    path = _write(tmp_path, text)
    with pytest.raises(PricingFileError) as info:
        load_pricing_from_file(path)
    assert str(info.value) == (
        f"{path}: entry 'bad': output_cost_per_token must be finite and >= 0, got -2e-06"
    )
    assert info.value.problems == (
        ("bad", "output_cost_per_token must be finite and >= 0, got -2e-06"),
    )


def test_our_schema_lists_every_bad_entry_too(tmp_path: Path) -> None:
    models = {
        "a": {"input_per_million": "0.0000000001", "output_per_million": 1},
        "b": {"input_per_million": 1, "output_per_million": 1, "colour": "red"},
        "c": {"input_per_million": 1, "output_per_million": 1},
    }
    with pytest.raises(PricingFileError) as info:
        load_pricing_from_file(_write(tmp_path, json.dumps({"models": models})))
    assert [entry for entry, _ in info.value.problems] == ["a", "b"]
    assert "input_per_million has more precision" in info.value.problems[0][1]
    assert info.value.problems[1][1] == "unknown keys ['colour']"


def test_errors_and_warnings_pickle_with_their_lists(tmp_path: Path) -> None:
    error = PricingFileError.listing("p.json", (("a", "bad"), ("b", "worse")))
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.path, clone.entry, clone.problems, str(clone)) == (
        "p.json",
        None,
        (("a", "bad"), ("b", "worse")),
        str(error),
    )
    _, warning = _load(_write(tmp_path, ARTEFACTS))
    assert warning is not None
    copy = pickle.loads(pickle.dumps(warning))
    assert (copy.path, copy.rounded, str(copy)) == (warning.path, warning.rounded, str(warning))
    assert isinstance(warning, UserWarning)
    assert not isinstance(warning, runtime.TechrevatiError)


def test_the_warning_points_at_the_callers_line(tmp_path: Path) -> None:
    path = _write(tmp_path, ARTEFACTS)
    with pytest.warns(PricingFileWarning) as caught:
        load_pricing_from_file(path)
    assert warned_from(caught[0].filename, __file__)


def test_a_warning_can_be_turned_into_an_error_like_any_other(tmp_path: Path) -> None:
    path = _write(tmp_path, ARTEFACTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PricingFileWarning)
        with pytest.raises(PricingFileWarning):
            load_pricing_from_file(path)
    assert not has_pricing("clean")


# -- repeated keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        (
            '{"m": {"input_cost_per_token": 1e-06}, "m": {"input_cost_per_token": 2e-06}}',
            [("m", "model listed twice in the file")],
        ),
        (
            '{"m": {"input_cost_per_token": 1e-06, "input_cost_per_token": 2e-06}}',
            [("m", "key 'input_cost_per_token' appears twice in the file")],
        ),
        (
            '{"m": {"input_cost_per_token": 1e-06, "tiered_pricing": [{"range": [0, 10], '
            '"input_cost_per_token": 1e-06, "input_cost_per_token": 2e-06}]}}',
            [("m", "key 'tiered_pricing[0].input_cost_per_token' appears twice in the file")],
        ),
        (
            '{"models": {"m": {"input_per_million": 1, "output_per_million": 1,'
            ' "output_per_million": 2}}}',
            [("m", "key 'output_per_million' appears twice in the file")],
        ),
        (
            '{"models": {"m": {"input_per_million": 1, "output_per_million": 1},'
            ' "m": {"input_per_million": 1, "output_per_million": 2}}}',
            [("m", "model listed twice in the file")],
        ),
    ],
)
def test_a_repeated_key_is_an_error_naming_it(
    tmp_path: Path, text: str, problems: list[tuple[str, str]]
) -> None:
    with pytest.raises(PricingFileError) as info:
        load_pricing_from_file(_write(tmp_path, text))
    assert list(info.value.problems) == problems


def test_repeated_keys_are_listed_in_file_order_with_the_other_problems(tmp_path: Path) -> None:
    text = """{
      "a": {"input_cost_per_token": 1e-06, "input_cost_per_token": 2e-06},
      "b": {"input_cost_per_token": -1e-06},
      "c": {"input_cost_per_token": 1e-06},
      "c": {"input_cost_per_token": 2e-06}
    }"""
    with pytest.raises(PricingFileError) as info:
        load_pricing_from_file(_write(tmp_path, text))
    assert [entry for entry, _ in info.value.problems] == ["a", "b", "c"]


def test_models_given_twice_is_a_file_level_error(tmp_path: Path) -> None:
    with pytest.raises(PricingFileError, match="key 'models' appears twice") as info:
        load_pricing_from_file(_write(tmp_path, '{"models": {}, "models": {}}'))
    assert info.value.entry is None


# -- LiteLLM's tiers ----------------------------------------------------------------------


def _costs(name: str, *inputs: int, output: int = 1_000_000) -> list[Decimal]:
    pricing = _pricing(name)
    return [pricing.cost_usd(UsageSnapshot(tokens, output)) for tokens in inputs]


def test_several_above_thresholds_accumulate_like_litellm(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "m": {
                "input_cost_per_token": 1e-06,
                "output_cost_per_token": 2e-06,
                "cache_read_input_token_cost": 1e-07,
                "input_cost_per_token_above_32k_tokens": 3e-06,
                "output_cost_per_token_above_32k_tokens": 4e-06,
                "input_cost_per_token_above_256k_tokens": 5e-06,
                "input_cost_per_token_above_256_tokens": 9e-07,  # no "k": 256 tokens
                "litellm_provider": "kyma",
            }
        }
    )
    _load(_write(tmp_path, text))
    pricing = _pricing("m")
    assert [tier.threshold_tokens for tier in pricing.tiers] == [256, 32_000, 256_000]
    assert pricing.long_context is pricing.tiers[0]
    assert pricing.tiers[2] == LongContextTier(
        256_000, "5", "4", cache_read_per_million="0.1"
    )  # output from the 32k tier, cache reads from the base
    assert _costs("m", 256, 257, 32_000, 32_001, 256_000, 256_001) == [
        Decimal("2.000256"),  # base
        Decimal("2.0002313"),  # above 256 tokens: input 0.9
        Decimal("2.0288"),
        Decimal("4.096003"),  # above 32k: input 3, output 4
        Decimal("4.768"),
        Decimal("5.280005"),  # above 256k: input 5, output still 4
    ]


def test_xai_thresholds_are_inclusive(tmp_path: Path) -> None:
    entry = {
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 2e-06,
        "input_cost_per_token_above_200k_tokens": 3e-06,
    }
    text = json.dumps(
        {"xai/m": {**entry, "litellm_provider": "xai"}, "other": {**entry, "mode": "chat"}}
    )
    _load(_write(tmp_path, text))
    assert _pricing("xai/m").long_context == LongContextTier(199_999, "3", "2")
    assert _costs("xai/m", 199_999, 200_000) == [Decimal("2.199999"), Decimal("2.6")]
    assert _costs("other", 200_000, 200_001) == [Decimal("2.2"), Decimal("2.600003")]


def test_one_hour_cache_writes_have_their_own_rate_and_tier(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "claude-like": {
                "input_cost_per_token": 3e-06,
                "output_cost_per_token": 1.5e-05,
                "cache_creation_input_token_cost": 3.75e-06,
                "cache_creation_input_token_cost_above_1hr": 6e-06,
                "input_cost_per_token_above_200k_tokens": 6e-06,
                "cache_creation_input_token_cost_above_200k_tokens": 7.5e-06,
                "cache_creation_input_token_cost_above_1hr_above_200k_tokens": 1.2e-05,
            },
            "no-1h-rate": {
                "input_cost_per_token": 3e-06,
                "output_cost_per_token": 1.5e-05,
                "cache_creation_input_token_cost": 3.75e-06,
            },
        }
    )
    _load(_write(tmp_path, text))
    pricing = _pricing("claude-like")
    assert pricing.cache_write_1h_per_million == 6
    assert pricing.long_context == LongContextTier(
        200_000, "6", "15", cache_write_per_million="7.5", cache_write_1h_per_million="12"
    )
    hour = UsageSnapshot(
        1_000_000, 0, cache_write_tokens=1_000_000, cache_write_1h_tokens=1_000_000
    )
    assert pricing.cost_usd(hour) == Decimal("12")  # above 200k: the 1-hour rate above it
    short = UsageSnapshot(100_000, 0, cache_write_tokens=100_000, cache_write_1h_tokens=60_000)
    assert pricing.cost_usd(short) == Decimal("0.51")  # 40k x 3.75 + 60k x 6, per million
    plain = _pricing("no-1h-rate")
    assert plain.cache_write_1h_per_million is None
    assert plain.cost_usd(short) == Decimal("0.375")  # unset: the 5-minute rate


def test_tiered_pricing_ranges_become_whole_turn_tiers(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "qwen-like": {
                "litellm_provider": "dashscope",
                "tiered_pricing": [
                    {
                        "range": [32000.0, 128000.0],
                        "input_cost_per_token": 2e-06,
                        "output_cost_per_token": 8e-06,
                    },
                    {
                        "range": [0, 32000.0],
                        "input_cost_per_token": 1e-06,
                        "output_cost_per_token": 5e-06,
                        "cache_read_input_token_cost": 2e-07,
                        "output_cost_per_reasoning_token": 1e-05,
                    },
                ],
            }
        }
    )
    names, warning = _load(_write(tmp_path, text))
    assert (names, warning) == (["qwen-like"], None)
    pricing = _pricing("qwen-like")
    assert pricing == ModelPricing(
        0,
        0,
        long_context=LongContextTier(
            0,
            "1",
            "5",
            cache_read_per_million="0.2",
            reasoning_per_million="10",
            above=LongContextTier(32_000, "2", "8"),
        ),
    )
    # 0 input: no range applies (the base, free); then start < input <= end; past the
    # last range, the last one.
    assert _costs("qwen-like", 0, 1, 32_000, 32_001, 128_000, 5_000_000) == [
        Decimal("0"),
        Decimal("5.000001"),
        Decimal("5.032"),
        Decimal("8.064002"),
        Decimal("8.256"),
        Decimal("18"),
    ]


def test_tiered_pricing_gaps_and_overlaps_follow_litellms_choice(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "gaps": {
                "output_cost_per_token": 1e-06,
                "tiered_pricing": [
                    {"range": [0, 100], "input_cost_per_token": 1e-06},
                    {"range": [200, 300], "input_cost_per_token": 3e-06},
                    {"range": [250, 400], "input_cost_per_token": 5e-06},
                ],
            }
        }
    )
    _load(_write(tmp_path, text))
    per_token = [
        _pricing("gaps").cost_usd(UsageSnapshot(tokens, 0)) / tokens
        for tokens in (100, 101, 200, 201, 300, 301, 400, 401)
    ]
    # (100, 200]: no range, so the last; (250, 300] both match: the first by start wins.
    assert [rate * 10**6 for rate in per_token] == [1, 5, 5, 3, 3, 5, 5, 5]
    assert _pricing("gaps").tiers[0].output_per_million == 1  # the model's output rate


@pytest.mark.parametrize(
    ("tier", "problem"),
    [
        ({"range": [10, 5], "input_cost_per_token": 1e-06}, "range must be [start, end]"),
        ({"range": [0.5, 5], "input_cost_per_token": 1e-06}, "whole token counts"),
        ({"range": [0], "input_cost_per_token": 1e-06}, "got [0]"),
        ({"input_cost_per_token": 1e-06}, "got None"),
        ({"range": [0, 5], "input_cost_per_token": -1e-06}, "must be finite and >= 0"),
    ],
)
def test_a_malformed_range_is_an_error(tmp_path: Path, tier: object, problem: str) -> None:
    text = json.dumps({"m": {"output_cost_per_token": 1e-06, "tiered_pricing": [tier]}})
    with pytest.raises(PricingFileError, match=problem.replace("[", r"\[")) as info:
        load_pricing_from_file(_write(tmp_path, text))
    assert info.value.entry == "m"


def test_ranges_that_price_queries_are_not_per_token(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "search": {
                "litellm_provider": "exa_ai",
                "tiered_pricing": [{"input_cost_per_query": 0.005, "max_results_range": [0, 25]}],
            },
            "m": {"input_cost_per_token": 1e-06},
        }
    )
    assert _load(_write(tmp_path, text)) == (["m"], None)


# -- what LiteLLM's code adds, and what a load ignores ------------------------------------


def test_image_models_bill_output_at_the_image_token_rate(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "image-model": {
                "input_cost_per_token": 5e-06,
                "output_cost_per_image_token": 3e-05,
                "mode": "image_generation",
            }
        }
    )
    _load(_write(tmp_path, text))
    assert _pricing("image-model") == ModelPricing("5", "30")


def test_fireworks_cache_reads_default_to_half_the_input_rate(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "fw": {
                "litellm_provider": "fireworks_ai",
                "input_cost_per_token": 9e-07,
                "output_cost_per_token": 9e-07,
            },
            "fw-odd": {
                "litellm_provider": "fireworks_ai",
                "input_cost_per_token": 3e-15,
                "output_cost_per_token": 0,
            },
            "fw-priced": {
                "litellm_provider": "fireworks_ai",
                "input_cost_per_token": 9e-07,
                "cache_read_input_token_cost": 9e-07,
            },
        }
    )
    _, warning = _load(_write(tmp_path, text))
    assert _pricing("fw").cache_read_per_million == Decimal("0.45")
    assert _pricing("fw-priced").cache_read_per_million == Decimal("0.9")
    assert _pricing("fw-odd").cache_read_per_million == Decimal("0.000000002")  # 1.5 -> 2
    assert warning is not None
    assert [(n.entry, n.key) for n in warning.rounded] == [
        ("fw-odd", "cache_read_input_token_cost")
    ]


def test_conditional_prices_are_ignored_and_listed(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "claude-like": {
                "input_cost_per_token": 3e-06,
                "output_cost_per_token": 1.5e-05,
                "provider_specific_entry": {"us": 1.1, "fast": 2, "same": 1, "flag": True},
            },
            "deepseek-like": {
                "input_cost_per_token": 1e-06,
                "off_peak_pricing": {"input_cost_per_token": 5e-07, "hours_utc": "16:30-00:30"},
            },
        }
    )
    _, warning = _load(_write(tmp_path, text))
    assert warning is not None
    assert [(n.entry, n.key, n.text) for n in warning.ignored] == [
        ("claude-like", "provider_specific_entry.us", "1.1"),
        ("claude-like", "provider_specific_entry.fast", "2"),
        ("deepseek-like", "off_peak_pricing", ""),
    ]
    assert _pricing("claude-like") == ModelPricing("3", "15")  # the standard rates
    assert "3 conditional prices ignored (the standard rates are registered)" in str(warning)


def test_an_unrepresentable_tier_is_skipped_and_the_rest_loads(tmp_path: Path) -> None:
    text = json.dumps(
        {
            "partial": {
                "output_cost_per_token": 1.0000000000000001e-06,
                "tiered_pricing": [{"range": [0, 100], "output_cost_per_token": 2e-06}],
            },
            "m": {"input_cost_per_token": 1e-06},
        }
    )
    names, warning = _load(_write(tmp_path, text))
    assert names == ["m"]
    assert warning is not None
    assert warning.rounded == ()  # the skipped entry's artefact is not reported as rounded
    assert warning.skipped == (
        PricingFileNote(
            "partial",
            "tiered_pricing[0]",
            "",
            "a tiered_pricing tier without input_cost_per_token",
        ),
    )
    assert "1 entry skipped (left unpriced):\n  'partial' tiered_pricing[0]: a tiered" in str(
        warning
    )


# -- our schema: several tiers, the one-hour rate ------------------------------------------


def test_our_schema_takes_a_list_of_tiers_and_the_one_hour_rate(tmp_path: Path) -> None:
    text = """
[models."m"]
input_per_million = 1
output_per_million = 2
cache_write_1h_per_million = "2.5"

[[models."m".long_context]]
threshold_tokens = 256_000
input_per_million = 4
output_per_million = 8

[[models."m".long_context]]
threshold_tokens = 32_000
input_per_million = 2
output_per_million = 4
cache_write_1h_per_million = 3
"""
    assert _load(_write(tmp_path, text, "prices.toml")) == (["m"], None)
    assert _pricing("m") == ModelPricing(
        1,
        2,
        cache_write_1h_per_million="2.5",
        long_context=LongContextTier(
            32_000, 2, 4, cache_write_1h_per_million=3, above=LongContextTier(256_000, 4, 8)
        ),
    )


def test_our_schema_refuses_two_tiers_at_one_threshold(tmp_path: Path) -> None:
    tier = {"threshold_tokens": 10, "input_per_million": 1, "output_per_million": 1}
    models = {"m": {"input_per_million": 1, "output_per_million": 1, "long_context": [tier, tier]}}
    with pytest.raises(PricingFileError, match=r"share a threshold_tokens: \[10, 10\]"):
        load_pricing_from_file(_write(tmp_path, json.dumps({"models": models})))
