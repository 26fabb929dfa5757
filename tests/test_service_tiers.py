"""Service tiers: read from real SDK responses, priced at the tier's rates, warned about once.

The tier that served a turn (OpenAI's ``service_tier``, Anthropic's
``usage.service_tier``, Gemini's ``traffic_type``, Bedrock's ``serviceTier``)
rides on the :class:`UsageSnapshot`; a :class:`ModelPricing` holds a pricing
per tier; a tier its model has no rates for is billed at the default rates
and warned about once per model and tier. LiteLLM parity for every tier of
every model in its price file is in ``test_litellm_prices``.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import pickle
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic.types as anthropic_types
import anthropic.types.messages as anthropic_batches
import botocore.parsers
import botocore.session
import pytest
from google.genai import types as genai_types
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

from techrevati.runtime import pricing as pricing_module
from techrevati.runtime._money import _usd
from techrevati.runtime.budget import Budget
from techrevati.runtime.errors import InvalidValueError, PricingFileError, UsageParseError
from techrevati.runtime.events import EventName, UsageRecord
from techrevati.runtime.orchestrator import Orchestrator
from techrevati.runtime.pricing import (
    DEFAULT_SERVICE_TIER,
    LOGGER_NAME,
    SERVICE_TIERS,
    LongContextTier,
    ModelPricing,
    _rates_femto,
    clear_pricing,
    get_pricing,
    load_pricing_from_file,
    register_pricing,
    tier_name,
    unregister_pricing,
)
from techrevati.runtime.usage import UsageSnapshot, UsageTracker
from tests.conftest import CollectingSink, examples

pytestmark = pytest.mark.usefixtures("empty_pricing")

FLEX = ModelPricing("0.625", "5", cache_read_per_million="0.0625")
PRIORITY = ModelPricing("2.5", "20", cache_read_per_million="0.25")
BATCH = ModelPricing("0.625", "5", cache_read_per_million="0.0625")
GPT5 = ModelPricing(
    "1.25",
    "10",
    cache_read_per_million="0.125",
    service_tiers={"flex": FLEX, "priority": PRIORITY, "batch": BATCH},
)
"""gpt-5 as its price list has it: $1.25/M default, $0.625/M flex and batch, $2.50/M priority."""
TURN = UsageSnapshot(1_000_000, 100_000, 400_000)
"""1M input (400k cached) and 100k output: $0.75 + $0.05 + $1 at the default rates."""


def tier_rows(tracker: UsageTracker, model: str) -> dict[str, dict[str, Any]]:
    """The ``service_tiers`` rows of ``model`` in the tracker's summary."""
    rows = tracker.per_model_summary()[model]["service_tiers"]
    assert isinstance(rows, dict)
    return rows


def tiers_warned(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER_NAME and "service-tier rates" in r.getMessage()
    ]


# -- tier names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (None, None),
        ("default", "default"),
        ("standard", "default"),  # Anthropic, Gemini
        (" Standard ", "default"),
        ("flex", "flex"),
        ("FLEX", "flex"),
        ("priority", "priority"),
        ("fast", "priority"),  # OpenAI serves (and reports) fast mode as priority
        ("batch", "batch"),
        ("batches", "batch"),  # LiteLLM's suffix
        ("ultrafast", "ultrafast"),
        ("balanced", "balanced"),
        ("scale", "scale"),  # OpenAI's Scale Tier: kept, billed at the default rates
        ("auto", "auto"),
        ("Reserved", "reserved"),  # Bedrock's reserved capacity
        ("", None),
        ("   ", None),
        (genai_types.ServiceTier.FLEX, "flex"),  # google-genai's str-valued enum
    ],
)
def test_a_tier_name_is_kept_in_one_spelling(given: object, kept: str | None) -> None:
    assert tier_name(given) == kept
    assert UsageSnapshot(1, service_tier=given).service_tier == kept  # type: ignore[arg-type]


def test_a_known_tier_is_always_the_same_object() -> None:
    # The hot path compares with "is": every spelling of a known tier gives one object.
    assert tier_name("".join(["def", "ault"])) is DEFAULT_SERVICE_TIER
    assert tier_name("Standard") is DEFAULT_SERVICE_TIER
    assert tier_name("".join(["fl", "ex"])) is tier_name("flex")
    assert SERVICE_TIERS == ("default", "flex", "priority", "batch", "ultrafast", "balanced")


@pytest.mark.parametrize("bad", [1, 1.5, b"flex", ["flex"], "x" * 65])
def test_a_bad_tier_is_refused_naming_it(bad: object) -> None:
    with pytest.raises(InvalidValueError, match="service_tier must be") as info:
        UsageSnapshot(1, service_tier=bad)  # type: ignore[arg-type]
    assert repr(bad)[:20] in str(info.value)


def test_snapshots_of_different_tiers_differ_and_add_to_no_tier() -> None:
    flex = UsageSnapshot(10, 5, service_tier="flex")
    assert flex != UsageSnapshot(10, 5)
    assert hash(flex) == hash(UsageSnapshot(10, 5, service_tier="FLEX"))
    assert flex + flex == UsageSnapshot(20, 10, service_tier="flex")
    assert flex + UsageSnapshot(1, 1) == UsageSnapshot(11, 6)  # mixed: no tier
    assert (flex + UsageSnapshot(1, 1, service_tier="batch")).service_tier is None
    assert flex.to_dict() == UsageSnapshot(10, 5).to_dict()  # the counts only
    assert "service_tier='flex'" in repr(flex)


OLD_SNAPSHOT = (
    "gASVQgAAAAAAAACMGHRlY2hyZXZhdGkucnVudGltZS51c2FnZZSMDVVzYWdlU25hcHNob3SUk5QpgZRdlChLCksF"
    "SwJLA0sBSwJlYi4="
)
"""``pickle.dumps(UsageSnapshot(10, 5, 2, 3, 1, 2))`` by the library before service tiers."""
OLD_PRICING = (
    "gASV7gAAAAAAAACMGnRlY2hyZXZhdGkucnVudGltZS5wcmljaW5nlIwMTW9kZWxQcmljaW5nlJOUKYGUXZQojAdk"
    "ZWNpbWFslIwHRGVjaW1hbJSTlIwBM5SFlFKUaAeMAjE1lIWUUpRoB4wDMC4zlIWUUpROTk5oAIwPTG9uZ0NvbnRl"
    "eHRUaWVylJOUKYGUXZQoSwpoB4wBNpSFlFKUaAeMAjMwlIWUUpROTk5OTiiKBQC8oGUBSwBLAIoFAKwj/AZLAEsA"
    "dJRlYmgThZRLCiiKBQBe0LIAigUARRFf/0sAigUA1hF+A0sASwB0lEsKaBuGlIWUZWIu"
)
"""``pickle.dumps(ModelPricing(3, 15, cache_read_per_million="0.3", long_context=
LongContextTier(10, 6, 30)))`` by the library before service tiers."""


def test_snapshots_and_pricings_pickle_with_their_tiers_and_from_before_tiers() -> None:
    flex = UsageSnapshot(10, 5, 2, 3, 1, 2, service_tier="flex")
    assert pickle.loads(pickle.dumps(flex)) == flex
    assert copy.deepcopy(flex) == flex
    old = pickle.loads(base64.b64decode(OLD_SNAPSHOT))
    assert old == UsageSnapshot(10, 5, 2, 3, 1, 2)
    assert old.service_tier is None
    assert pickle.loads(pickle.dumps(GPT5)) == GPT5
    assert pickle.loads(pickle.dumps(GPT5)).service_tiers["flex"] == FLEX
    before = pickle.loads(base64.b64decode(OLD_PRICING))
    assert before == ModelPricing(
        3, 15, cache_read_per_million="0.3", long_context=LongContextTier(10, 6, 30)
    )
    assert dict(before.service_tiers) == {}
    assert before.cost_usd(UsageSnapshot(11, 1)) == Decimal("0.000096")  # the tier above 10


# -- reading the tier from real SDK responses ---------------------------------------------

CHAT_USAGE = {"prompt_tokens": 2000, "completion_tokens": 300, "total_tokens": 2300}


def _chat(tier: str | None) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-5",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "hi"},
                }
            ],
            "usage": CHAT_USAGE,
            "service_tier": tier,
        }
    )


@pytest.mark.parametrize(
    ("served", "kept"),
    [
        ("default", "default"),
        ("flex", "flex"),
        ("priority", "priority"),
        ("scale", "scale"),
        ("auto", "auto"),
        ("fast", "priority"),
        (None, None),
    ],
)
def test_openai_chat_completion_carries_its_tier(served: str | None, kept: str | None) -> None:
    response = _chat(served)
    assert UsageSnapshot.from_response(response) == UsageSnapshot(2000, 300, service_tier=kept)
    # The bare usage object has no tier: it lives on the response.
    assert UsageSnapshot.from_response(response.usage).service_tier is None
    assert (
        UsageSnapshot.from_response(CompletionUsage.model_validate(CHAT_USAGE)).service_tier is None
    )
    assert UsageSnapshot.from_response(response.model_dump()).service_tier == kept


def test_openai_stream_chunk_with_usage_carries_its_tier() -> None:
    chunk = ChatCompletionChunk.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-5",
            "choices": [],
            "usage": CHAT_USAGE,
            "service_tier": "flex",
        }
    )
    assert UsageSnapshot.from_response(chunk).service_tier == "flex"


@pytest.mark.parametrize("served", ["default", "flex", "priority", "scale", "ultrafast"])
def test_openai_responses_response_carries_its_tier(served: str) -> None:
    response = Response.model_validate(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 1_700_000_000,
            "model": "gpt-5",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 5000,
                "output_tokens": 700,
                "total_tokens": 5700,
                "input_tokens_details": {"cached_tokens": 4000, "cache_write_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 500},
            },
            "service_tier": served,
        }
    )
    assert UsageSnapshot.from_response(response) == UsageSnapshot(
        5000, 700, 4000, 0, 500, service_tier=served
    )


def _message(tier: str | None) -> anthropic_types.Message:
    return anthropic_types.Message.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 10,
                "output_tokens": 500,
                "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 0,
                "service_tier": tier,
            },
        }
    )


@pytest.mark.parametrize(
    ("served", "kept"),
    [("standard", "default"), ("priority", "priority"), ("batch", "batch"), (None, None)],
)
def test_anthropic_usage_carries_its_tier(served: str | None, kept: str | None) -> None:
    message = _message(served)
    expected = UsageSnapshot(2010, 500, 2000, service_tier=kept)
    assert UsageSnapshot.from_response(message) == expected
    assert UsageSnapshot.from_response(message.usage) == expected  # in the usage itself


def test_an_anthropic_batch_result_is_a_batch_turn() -> None:
    result = anthropic_batches.MessageBatchIndividualResponse.model_validate(
        {
            "custom_id": "req-1",
            "result": {"type": "succeeded", "message": _message("batch").model_dump()},
        }
    )
    assert result.result.type == "succeeded"
    assert UsageSnapshot.from_response(result.result.message).service_tier == "batch"


@pytest.mark.parametrize(
    ("traffic", "kept"),
    [
        (genai_types.TrafficType.ON_DEMAND, "default"),
        (genai_types.TrafficType.ON_DEMAND_PRIORITY, "priority"),
        (genai_types.TrafficType.ON_DEMAND_FLEX, "flex"),
        (genai_types.TrafficType.PROVISIONED_THROUGHPUT, "provisioned_throughput"),
        (genai_types.TrafficType.TRAFFIC_TYPE_UNSPECIFIED, None),
        (None, None),
    ],
)
def test_gemini_traffic_type_is_its_tier(traffic: object, kept: str | None) -> None:
    response = genai_types.GenerateContentResponse(
        usage_metadata=genai_types.GenerateContentResponseUsageMetadata(
            prompt_token_count=1000,
            candidates_token_count=200,
            traffic_type=traffic,  # type: ignore[arg-type]
        )
    )
    assert UsageSnapshot.from_response(response) == UsageSnapshot(1000, 200, service_tier=kept)
    raw = {"promptTokenCount": 1000, "candidatesTokenCount": 200}
    if traffic is not None:
        raw["trafficType"] = traffic.value  # type: ignore[attr-defined]
    rest = UsageSnapshot.from_response({"usageMetadata": raw})
    assert rest.service_tier == kept


@pytest.mark.parametrize(
    ("tier", "kept"),
    [
        (genai_types.ServiceTier.FLEX, "flex"),
        (genai_types.ServiceTier.PRIORITY, "priority"),
        (genai_types.ServiceTier.STANDARD, "default"),
        (genai_types.ServiceTier.UNSPECIFIED, None),
    ],
)
def test_gemini_api_usage_metadata_service_tier(tier: object, kept: str | None) -> None:
    message = genai_types.LiveServerMessage(
        usage_metadata=genai_types.UsageMetadata(
            prompt_token_count=100,
            response_token_count=20,  # the Live API's name for the candidates' tokens
            thoughts_token_count=5,
            service_tier=tier,  # type: ignore[arg-type]
        )
    )
    assert UsageSnapshot.from_response(message) == UsageSnapshot(
        100, 25, reasoning_tokens=5, service_tier=kept
    )


def _bedrock(service_tier: str | None, operation: str = "Converse") -> dict[str, Any]:
    """Parse a Converse HTTP body exactly as boto3's client would, with botocore."""
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("Converse").output_shape
    assert "serviceTier" in shape.members
    body: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 30, "outputTokens": 200, "totalTokens": 230},
        "metrics": {"latencyMs": 120},
    }
    if service_tier is not None:
        body["serviceTier"] = {"type": service_tier}
    parser = botocore.parsers.create_parser(model.metadata["protocol"])
    parsed: dict[str, Any] = parser.parse(
        {"status_code": 200, "headers": {}, "body": json.dumps(body).encode()}, shape
    )
    return parsed


@pytest.mark.parametrize(
    ("served", "kept"),
    [("default", "default"), ("priority", "priority"), ("flex", "flex"), ("reserved", "reserved")],
)
def test_bedrock_converse_service_tier(served: str, kept: str) -> None:
    response = _bedrock(served)
    assert response["serviceTier"] == {"type": served}
    assert UsageSnapshot.from_response(response) == UsageSnapshot(30, 200, service_tier=kept)
    # A ConverseStream metadata event carries it beside its usage.
    event = {"metadata": {"usage": response["usage"], "serviceTier": {"type": served}}}
    assert UsageSnapshot.from_response(event).service_tier == kept
    assert UsageSnapshot.from_response(_bedrock(None)).service_tier is None


def test_the_caller_states_the_tier_over_what_the_response_says() -> None:
    # An OpenAI batch output line's body says "default"; it is billed as a batch turn.
    body = _chat("default").model_dump()
    line: dict[str, Any] = {"custom_id": "req-1", "response": {"body": body}}
    assert line["response"]["body"] is body
    assert UsageSnapshot.from_response(body).service_tier == "default"
    assert UsageSnapshot.from_response(body, service_tier="batch").service_tier == "batch"
    assert UsageSnapshot.from_response(CHAT_USAGE, service_tier="Batches").service_tier == "batch"
    with pytest.raises(InvalidValueError, match="service_tier must be a str or None, got 7"):
        UsageSnapshot.from_response(body, service_tier=7)  # type: ignore[arg-type]


def test_a_tier_that_is_no_string_is_no_tier_but_a_raising_one_is_an_error() -> None:
    class Odd:
        usage = CHAT_USAGE
        service_tier = 42

    assert UsageSnapshot.from_response(Odd()) == UsageSnapshot(2000, 300)

    class Hostile:
        usage = CHAT_USAGE

        @property
        def service_tier(self) -> str:
            raise RuntimeError("boom")

    with pytest.raises(UsageParseError, match="reading 'service_tier' of Hostile raised"):
        UsageSnapshot.from_response(Hostile())


# -- pricing per tier ---------------------------------------------------------------------


def test_a_turn_is_billed_at_the_rates_of_the_tier_that_served_it() -> None:
    register_pricing("gpt-5", GPT5)
    tracker = UsageTracker()
    costs = {
        tier: tracker.record_turn("gpt-5", UsageSnapshot(*TURN._counts, service_tier=tier))
        for tier in (None, "default", "flex", "batch", "priority")
    }
    assert {tier: cost.cost_usd for tier, cost in costs.items()} == {
        None: Decimal("1.8"),  # 600k * 1.25 + 400k * 0.125 + 100k * 10, per million
        "default": Decimal("1.8"),
        "flex": Decimal("0.9"),  # half
        "batch": Decimal("0.9"),
        "priority": Decimal("3.6"),  # twice
    }
    assert tracker.total_cost() == Decimal("9.0")
    assert tracker.cost_for_turn("gpt-5", UsageSnapshot(1_000_000, service_tier="priority")) == (
        Decimal("2.5")
    )
    assert GPT5.cost_usd(UsageSnapshot(1_000_000, service_tier="flex")) == Decimal("0.625")
    assert GPT5.for_tier("flex") is FLEX
    assert GPT5.for_tier("standard") is GPT5
    assert GPT5.for_tier(None) is GPT5
    assert GPT5.for_tier("scale") is None


def test_a_tier_pricing_has_its_own_long_context_tiers() -> None:
    flex = ModelPricing("1", "2", long_context=LongContextTier(100, "10", "20"))
    pricing = ModelPricing("3", "15", service_tiers={"flex": flex})
    register_pricing("m", pricing)
    tracker = UsageTracker()
    for _ in range(3):  # the second and third take the fast path
        assert tracker.record_turn("m", UsageSnapshot(100, service_tier="flex")).cost_femto_usd == (
            100_000_000_000
        )
        assert tracker.record_turn("m", UsageSnapshot(101, service_tier="flex")).cost_femto_usd == (
            1_010_000_000_000
        )
    assert "flex" in tracker._fast_tiers["m"]


@pytest.mark.parametrize(
    ("service", "match"),
    [
        ({"default": FLEX}, "names the default tier"),
        ({"standard": FLEX}, "names the default tier"),
        ({"batch": FLEX, "batches": FLEX}, "names tier 'batch' twice"),
        ({"flex": "0.5"}, r"service_tiers\['flex'\] must be a ModelPricing"),
        ({"flex": GPT5}, "has service tiers of its own"),
        ({7: FLEX}, "service_tiers key must be a str or None, got 7"),
        (["flex"], "service_tiers must be a mapping"),
    ],
)
def test_bad_service_tiers_are_refused_naming_them(service: object, match: str) -> None:
    with pytest.raises(InvalidValueError, match=match):
        ModelPricing("1", "2", service_tiers=service)  # type: ignore[arg-type]


def test_tiers_are_part_of_a_pricings_value() -> None:
    plain = ModelPricing("1.25", "10", cache_read_per_million="0.125")
    assert plain != GPT5
    same = ModelPricing(
        "1.25",
        "10",
        cache_read_per_million="0.125",
        service_tiers={"Batches": BATCH, "priority": PRIORITY, "FLEX": FLEX},
    )
    assert same == GPT5
    assert hash(same) == hash(GPT5)
    assert list(same.service_tiers) == ["batch", "flex", "priority"]  # normalised, sorted
    with pytest.raises(TypeError):
        same.service_tiers["flex"] = PRIORITY  # type: ignore[index]
    assert "service_tiers=mappingproxy({'batch'" in repr(same)


# -- the warning for a tier without rates -------------------------------------------------


def test_a_tier_without_rates_is_billed_at_the_default_rates_and_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    register_pricing("gpt-5", GPT5)
    register_pricing("claude", ModelPricing("3", "15"))
    tracker = UsageTracker()
    default = tracker.record_turn("gpt-5", TURN).cost_usd
    for _ in range(3):
        for tier in ("scale", "auto"):  # OpenAI names no rates for these
            turn = UsageSnapshot(*TURN._counts, service_tier=tier)
            assert tracker.record_turn("gpt-5", turn).cost_usd == default
        assert tracker.record_turn("claude", UsageSnapshot(10, service_tier="batch")).priced
    warned = tiers_warned(caplog)
    assert len(warned) == 3  # once per model and tier, never silent
    assert warned[0] == (
        "no 'scale' service-tier rates for model 'gpt-5' (its tiers: batch, flex, priority): "
        "its 'scale' turns are billed at the default rates (give the pricing service_tiers=, "
        "or load a price file that prices the tier)"
    )
    assert "model 'claude' (its tiers: none)" in warned[2]
    assert tracker.unpriced_tiers == {("gpt-5", "scale"), ("gpt-5", "auto"), ("claude", "batch")}
    assert tier_rows(tracker, "gpt-5")["scale"]["tier_unpriced_turns"] == 3
    assert tracker.summary()["unpriced_tiers"] == [
        ["claude", "batch"],
        ["gpt-5", "auto"],
        ["gpt-5", "scale"],
    ]
    assert "scale" not in tracker._fast_tiers.get("gpt-5", {})  # such turns stay on the slow path
    clear_pricing()  # forgets what was warned about, too
    register_pricing("gpt-5", GPT5)
    UsageTracker().record_turn("gpt-5", UsageSnapshot(1, service_tier="scale"))
    assert len(tiers_warned(caplog)) == 4


def test_other_callers_warn_too_naming_what_they_know(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    pricing = ModelPricing("3", "15")
    register_pricing("m", pricing)
    batch = UsageSnapshot(1_000_000, service_tier="batch")
    assert pricing.cost_usd(batch) == 3  # the default rates
    assert UsageTracker().cost_for_turn("m", batch) == 3
    assert Budget().charge("m", batch).cost_usd == 3
    warned = tiers_warned(caplog)
    assert len(warned) == 2
    assert "for a pricing (its tiers: none)" in warned[0]  # no name where there is none
    assert "for model 'm'" in warned[1]


def test_an_unpriced_model_is_not_warned_about_its_tier(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    tracker = UsageTracker()
    cost = tracker.record_turn("mystery", UsageSnapshot(10, service_tier="flex"))
    assert (cost.cost_femto_usd, cost.priced) == (0, False)
    assert tiers_warned(caplog) == []
    assert tracker.unpriced_models == {"mystery"}
    assert tracker.unpriced_tiers == frozenset()


def test_the_warning_is_once_per_model_and_tier_whatever_the_threads(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    register_pricing("m", ModelPricing("3", "15"))
    tracker = UsageTracker()
    start = threading.Barrier(8)
    turns = [UsageSnapshot(10, 1, service_tier=t) for t in ("flex", "batch", "scale")]

    def worker() -> None:
        start.wait()
        for _ in range(200):
            for turn in turns:
                tracker.record_turn("m", turn)
                tracker.cost_for_turn("m", turn)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter will
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    warned = tiers_warned(caplog)
    assert sorted(w.split("'")[1] for w in warned) == ["batch", "flex", "scale"]
    assert tracker.turns == 8 * 200 * 3
    tiers = tier_rows(tracker, "m")
    assert {t: row["tier_unpriced_turns"] for t, row in tiers.items()} == dict.fromkeys(
        ("flex", "batch", "scale"), 1600
    )
    assert tracker.total_cost() == 4800 * ModelPricing("3", "15").cost_usd(UsageSnapshot(10, 1))


class _SlowSet(set[tuple[str, str]]):
    """A set whose membership test takes a while: every thread checks before any adds."""

    def __contains__(self, item: object) -> bool:
        found = super().__contains__(item)
        time.sleep(0.002)  # decided, then slow: a check outside the lock would race here
        return found


def test_the_warned_check_and_add_is_atomic(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    monkeypatch.setattr(pricing_module, "_TIER_WARNED", _SlowSet())
    pricing = ModelPricing("3", "15")
    start = threading.Barrier(6)

    def worker() -> None:
        start.wait()
        pricing.cost_usd(UsageSnapshot(10, service_tier="flex"))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tiers_warned(caplog)) == 1


# -- the tracker's per-tier totals ---------------------------------------------------------


def test_per_model_summary_breaks_each_model_down_by_tier() -> None:
    register_pricing("gpt-5", GPT5)
    tracker = UsageTracker()
    tracker.record_turn("gpt-5", UsageSnapshot(1000, 100, service_tier="flex"))
    tracker.record_turn("gpt-5", UsageSnapshot(1000, 100))
    tracker.record_turn("gpt-5", UsageSnapshot(1000, 100, service_tier="default"))
    tracker.record_turn("gpt-5", UsageSnapshot(1000, 100, service_tier="flex"))
    row = tracker.per_model_summary()["gpt-5"]
    tiers = row["service_tiers"]
    assert isinstance(tiers, dict)
    assert list(tiers) == ["default", "flex"]  # "default" holds the turns with no tier too
    assert (tiers["default"]["turns"], tiers["default"]["cost_usd"]) == (2, "0.0045")
    assert (tiers["flex"]["turns"], tiers["flex"]["cost_usd"]) == (2, "0.00225")
    assert tiers["flex"]["input_tokens"] == 2000
    assert (row["turns"], row["cost_usd"], row["input_tokens"]) == (4, "0.00675", 4000)
    assert tracker.summary()["models"] == tracker.per_model_summary()
    assert (
        json.loads(json.dumps(tracker.summary()))["models"]["gpt-5"]["service_tiers"]["flex"][
            "turns"
        ]
        == 2
    )
    assert tracker.total_usage() == UsageSnapshot(4000, 400)


def test_turns_reported_as_default_are_the_default_tier_on_every_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    register_pricing("gpt-5", GPT5)
    tracker = UsageTracker()
    reported = UsageSnapshot.from_response(_chat("default"))  # what OpenAI sends each time
    costs = [tracker.record_turn("gpt-5", reported).cost_usd for _ in range(3)]
    costs.append(tracker.record_turn(" gpt-5 ", reported).cost_usd)  # the slow path again
    costs.append(tracker.record_turn("gpt-5", UsageSnapshot(2000, 300)).cost_usd)
    assert costs == [GPT5.cost_usd(UsageSnapshot(2000, 300))] * 5
    assert tiers_warned(caplog) == []
    assert tracker.unpriced_tiers == frozenset()
    assert list(tier_rows(tracker, "gpt-5")) == ["default"]
    assert tier_rows(tracker, "gpt-5")["default"]["turns"] == 5
    assert "gpt-5" not in tracker._fast_tiers


def test_a_model_with_tier_turns_only_has_no_default_row() -> None:
    register_pricing("gpt-5", GPT5)
    tracker = UsageTracker()
    tracker.record_turn("gpt-5", UsageSnapshot(1000, service_tier="batch"))
    assert list(tier_rows(tracker, "gpt-5")) == ["batch"]
    assert tracker.turns == 1


def test_tier_rates_retire_when_the_model_is_registered_again() -> None:
    register_pricing("gpt-5", GPT5)
    tracker = UsageTracker()
    flex = UsageSnapshot(1_000_000, service_tier="flex")
    assert [tracker.record_turn("gpt-5", flex).cost_usd for _ in range(3)] == [Decimal("0.625")] * 3
    rates = tracker._fast_tiers["gpt-5"]["flex"][0]
    register_pricing(
        "gpt-5", ModelPricing("1.25", "10", service_tiers={"flex": ModelPricing(1, 1)})
    )
    assert rates.threshold == -1  # retired with the name's rates
    assert [tracker.record_turn("gpt-5", flex).cost_usd for _ in range(2)] == [Decimal(1)] * 2
    register_pricing("gpt-5", ModelPricing("1.25", "10"))  # the tier is gone: default rates
    assert tracker.record_turn("gpt-5", flex).cost_usd == Decimal("1.25")
    assert "flex" not in tracker._fast_tiers["gpt-5"]
    assert unregister_pricing("gpt-5")
    assert tracker.record_turn("gpt-5", flex).priced is False


def test_a_tracker_with_a_budget_charges_the_tier_cost() -> None:
    register_pricing("gpt-5", GPT5)
    budget = Budget(max_usd=10)
    tracker = UsageTracker(budget=budget)
    for _ in range(2):
        tracker.record_turn("gpt-5", UsageSnapshot(1_000_000, service_tier="priority"))
    assert budget.spent_usd == Decimal("5")


def test_restored_turns_keep_their_tier() -> None:
    tracker = UsageTracker()
    tracker._restore("m", UsageSnapshot(10, 1, service_tier="batch"), 7, priced=True)
    tracker._restore("m", UsageSnapshot(10, 1, service_tier="default"), 9, priced=True)
    tiers = tier_rows(tracker, "m")
    assert [(t, r["turns"]) for t, r in tiers.items()] == [("default", 1), ("batch", 1)]
    assert tracker.total_cost() == Decimal("1.6E-14")


_tier = st.sampled_from([None, "default", "flex", "priority", "batch", "scale"])
_turn = st.builds(
    lambda inp, out, read, reasoning, tier: UsageSnapshot(
        inp, out, min(read, inp), 0, min(reasoning, out), service_tier=tier
    ),
    st.integers(0, 3_000),
    st.integers(0, 500),
    st.integers(0, 3_000),
    st.integers(0, 500),
    _tier,
)


@given(turns=st.lists(_turn, min_size=1, max_size=40))
@settings(max_examples=examples(80))
def test_fast_and_slow_paths_bill_each_tier_exactly(turns: list[UsageSnapshot]) -> None:
    """Every turn costs its tier's rates (the default ones for "scale"), on whatever path."""
    clear_pricing()
    flex = ModelPricing("0.5", "4", long_context=LongContextTier(1000, "1", "8"))
    pricing = ModelPricing("2", "8", service_tiers={"flex": flex, "priority": PRIORITY})
    register_pricing("m", pricing)
    logging.getLogger(LOGGER_NAME).disabled = True
    try:
        tracker = UsageTracker()
        costs = [tracker.record_turn("m", turn).cost_femto_usd for turn in turns]
    finally:
        logging.getLogger(LOGGER_NAME).disabled = False
    expected = [_rates_femto(pricing.for_tier(t.service_tier) or pricing, t) for t in turns]
    assert costs == expected
    rows = tier_rows(tracker, "m")
    assert sum(row["turns"] for row in rows.values()) == len(turns)
    assert sum(Decimal(row["cost_usd"]) for row in rows.values()) == tracker.total_cost()
    for label, row in rows.items():
        mine = [
            c for c, t in zip(costs, turns, strict=True) if (t.service_tier or "default") == label
        ]
        assert Decimal(row["cost_usd"]) == _usd(sum(mine))


# -- our pricing file ---------------------------------------------------------------------


def test_our_schema_prices_service_tiers(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(
        """
[models."gpt-5"]
input_per_million = "1.25"
output_per_million = 10
cache_read_per_million = "0.125"

[models."gpt-5".service_tiers.flex]
input_per_million = "0.625"
output_per_million = 5

[models."gpt-5".service_tiers.batches]
input_per_million = "0.625"
output_per_million = 5
long_context = { threshold_tokens = 272000, input_per_million = "1.25", output_per_million = 10 }
""",
        encoding="utf-8",
    )
    assert load_pricing_from_file(path) == ["gpt-5"]
    pricing = get_pricing("gpt-5")
    assert pricing is not None
    assert list(pricing.service_tiers) == ["batch", "flex"]
    assert pricing.service_tiers["batch"].tiers[0].threshold_tokens == 272_000
    assert pricing.cost_usd(UsageSnapshot(1_000_000, service_tier="flex")) == Decimal("0.625")


@pytest.mark.parametrize(
    ("tiers", "match"),
    [
        ({"flex": {"input_per_million": 1}}, r"service_tiers\.flex: missing required keys"),
        (
            {"flex": {"input_per_million": 1, "output_per_million": 2, "cost": 3}},
            r"service_tiers\.flex: unknown keys \['cost'\]",
        ),
        (
            {"flex": {"input_per_million": 1, "output_per_million": 2, "service_tiers": {}}},
            r"service_tiers\.flex: unknown keys \['service_tiers'\]",
        ),
        ({"default": {"input_per_million": 1, "output_per_million": 2}}, "names the default tier"),
        ([1], "service_tiers must be a table of tier name -> rates, got list"),
    ],
)
def test_our_schema_refuses_bad_service_tiers(tmp_path: Path, tiers: object, match: str) -> None:
    path = tmp_path / "prices.json"
    entry = {"input_per_million": 1, "output_per_million": 2, "service_tiers": tiers}
    path.write_text(json.dumps({"models": {"m": entry}}), encoding="utf-8")
    with pytest.raises(PricingFileError, match=match):
        load_pricing_from_file(path)
    assert get_pricing("m") is None


# -- a session's turns: events, usage records ---------------------------------------------


def test_a_sessions_turn_is_billed_and_recorded_at_the_tier_its_response_names() -> None:
    register_pricing("gpt-5", GPT5)
    memory = CollectingSink()
    orch = Orchestrator(role="writer", phase="draft", sinks=[memory])
    with orch.session() as session:
        _, usage = session.run_turn(lambda: _chat("flex"), model="gpt-5")
        session.run_turn(lambda: _chat(None), model="gpt-5")
        stated = UsageSnapshot(2000, 300, service_tier="batch")  # a batch API result
        session.run_turn(lambda: "done", model="gpt-5", usage=stated)
    assert usage.service_tier == "flex"
    completed = [e for e in memory.events if e.name == EventName.TURN_COMPLETED]
    # flex: 2000 * 0.625 + 300 * 5 per million; the untiered turn has no tier key at all
    assert [e.data.get("service_tier") for e in completed] == ["flex", None, "batch"]
    assert "service_tier" not in completed[1].data
    assert [e.data["cost_usd"] for e in completed] == ["0.00275", "0.0055", "0.00275"]
    assert [r.service_tier for r in memory.usage] == ["flex", None, "batch"]
    assert [r.cost_usd for r in memory.usage] == [
        Decimal("0.00275"),
        Decimal("0.0055"),
        Decimal("0.00275"),
    ]
    assert list(tier_rows(session.tracker, "gpt-5")) == ["default", "flex", "batch"]


def test_a_usage_record_checks_its_tier() -> None:
    assert UsageRecord(model="m", service_tier="flex").to_dict()["service_tier"] == "flex"
    assert UsageRecord(model="m").to_dict()["service_tier"] is None
    with pytest.raises(InvalidValueError, match="service_tier must be a str or None, got 3"):
        UsageRecord(model="m", service_tier=3)  # type: ignore[arg-type]


# -- streamed turns and resumed sessions keep the tier -------------------------------------


def _streamed(chunks: list[Any]) -> tuple[UsageSnapshot | None, Decimal]:
    register_pricing("gpt-5", GPT5)
    with Orchestrator("writer", "draft").session() as session:
        turn = session.stream_turn(lambda: iter(chunks), model="gpt-5")
        list(turn)
    return turn.usage, session.tracker.total_cost()


def test_an_openai_chat_stream_is_billed_at_its_chunks_tier() -> None:
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 0}
    chunks = [
        {"choices": [{"delta": {"content": "Hi"}}], "usage": None, "service_tier": "flex"},
        {"choices": [], "usage": usage, "service_tier": "flex"},
    ]
    got, cost = _streamed(chunks)
    assert got is not None
    assert got.service_tier == "flex"
    assert cost == Decimal("0.625")  # flex rates, not the default $1.25


def test_an_anthropic_stream_keeps_the_tier_of_its_usage() -> None:
    start = {"input_tokens": 1_000_000, "output_tokens": 1, "service_tier": "priority"}
    chunks = [
        {"type": "message_start", "message": {"usage": start}},
        {"type": "message_delta", "usage": {"output_tokens": 0}},
    ]
    got, cost = _streamed(chunks)
    assert got is not None
    assert got.service_tier == "priority"
    assert cost == Decimal("2.5")


def test_a_responses_stream_is_billed_at_its_responses_tier() -> None:
    usage = {"input_tokens": 1_000_000, "output_tokens": 0}
    chunks = [
        {"type": "response.created", "response": {"usage": None}},
        {"type": "response.completed", "response": {"usage": usage, "service_tier": "flex"}},
    ]
    got, cost = _streamed(chunks)
    assert got is not None
    assert got.service_tier == "flex"
    assert cost == Decimal("0.625")


def test_a_bedrock_stream_is_billed_at_its_metadata_tier() -> None:
    metadata = {
        "usage": {"inputTokens": 1_000_000, "outputTokens": 0},
        "serviceTier": {"type": "priority"},
    }
    chunks = [{"messageStart": {"role": "assistant"}}, {"metadata": metadata}]
    got, cost = _streamed(chunks)
    assert got is not None
    assert got.service_tier == "priority"
    assert cost == Decimal("2.5")


def test_a_resumed_session_keeps_each_turns_tier(tmp_path: Path) -> None:
    from techrevati.runtime.sinks import SqliteSink

    register_pricing("gpt-5", GPT5)
    path = tmp_path / "runs.db"
    with SqliteSink(path) as sink:
        crashed = Orchestrator("writer", "draft", sinks=[sink]).session()
        crashed.__enter__()  # never left: the process dies with the session open
        flex = UsageSnapshot(1_000_000, service_tier="flex")
        crashed.run_turn(lambda: "ok", model="gpt-5", usage=flex)
    resumed = Orchestrator("writer", "draft").resume(crashed.id, from_=path)
    rows = tier_rows(resumed.tracker, "gpt-5")
    assert list(rows) == ["flex"]
    assert resumed.tracker.total_cost() == Decimal("0.625")


def test_a_budget_names_the_model_when_it_warns_of_a_tier_without_rates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER_NAME)
    register_pricing("budgeted-model", ModelPricing("3", "15"))
    budget = Budget(max_usd="10")
    budget.charge("budgeted-model", UsageSnapshot(1_000_000, service_tier="nightly"))
    assert budget.spent_usd == Decimal(3)  # the default rates
    assert any("model 'budgeted-model'" in line for line in tiers_warned(caplog))
