"""Usage shapes the SDKs really send, the one-hour cache-write count, and the tracker's fast path.

Every input is built with the real SDK types (openai, anthropic, google-genai,
botocore, a botocore client over loopback for ConverseStream); the provider
table of docs/usage.md is checked row by row against them.
"""

from __future__ import annotations

import binascii
import copy
import dataclasses
import decimal
import json
import pickle
import re
import struct
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import anthropic.types as anthropic_types
import botocore.parsers
import botocore.session
import pytest
from google.genai import types as genai_types
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types import CompletionUsage
from openai.types.responses import ResponseUsage

from techrevati.runtime import usage as usage_module
from techrevati.runtime.errors import InvalidValueError
from techrevati.runtime.events import UsageRecord
from techrevati.runtime.pricing import (
    LongContextTier,
    ModelPricing,
    _femto,
    _rates_femto,
    register_pricing,
)
from techrevati.runtime.usage import UsageParseError, UsageSnapshot, UsageTracker
from tests.conftest import CollectingSink, examples
from tests.scripted_server import ScriptedServer, reply

pytestmark = pytest.mark.usefixtures("empty_pricing")

ROOT = Path(__file__).resolve().parent.parent
MILLION = 1_000_000


# -- building real SDK objects ----------------------------------------------------------------


def _bedrock_model() -> Any:
    return botocore.session.get_session().get_service_model("bedrock-runtime")


def _converse(usage: dict[str, Any]) -> dict[str, Any]:
    """Parse a Converse HTTP body exactly as boto3's client would, with botocore."""
    model = _bedrock_model()
    operation = model.operation_model("Converse")
    body = {
        "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
        "stopReason": "end_turn",
        "usage": usage,
        "metrics": {"latencyMs": 120},
    }
    parser = botocore.parsers.create_parser(model.metadata["protocol"])
    parsed: dict[str, Any] = parser.parse(
        {"status_code": 200, "headers": {}, "body": json.dumps(body).encode()},
        operation.output_shape,
    )
    return parsed


def _event_message(event_type: str, payload: object) -> bytes:
    """Encode one AWS event-stream message (the wire format of ConverseStream)."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    encoded = b""
    for name, value in headers.items():
        raw = value.encode()
        encoded += bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(raw)) + raw
    body = json.dumps(payload).encode()
    prelude = struct.pack(">II", 16 + len(encoded) + len(body), len(encoded))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + encoded + body
    return message + struct.pack(">I", binascii.crc32(message))


def _converse_stream_events(
    server: ScriptedServer, client: Any, metadata: dict[str, Any]
) -> list[dict[str, Any]]:
    """Stream a scripted ConverseStream through the real botocore client; return its events."""
    frames = [
        _event_message("messageStart", {"role": "assistant"}),
        _event_message("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}}),
        _event_message("contentBlockStop", {"contentBlockIndex": 0}),
        _event_message("messageStop", {"stopReason": "end_turn"}),
        _event_message("metadata", metadata),
    ]
    server.script(
        reply(200, b"".join(frames), {"content-type": "application/vnd.amazon.eventstream"})
    )
    answer = client.converse_stream(
        modelId="anthropic.claude", messages=[{"role": "user", "content": [{"text": "hi"}]}]
    )
    return list(answer["stream"])


def _stream_metadata_event(request: pytest.FixtureRequest, raw: dict[str, Any]) -> object:
    server = request.getfixturevalue("scripted_server")
    client = request.getfixturevalue("bedrock_client")
    events = _converse_stream_events(server, client, raw["metadata"])
    (event,) = [e for e in events if "metadata" in e]
    return event


# -- the provider table of docs/usage.md, one real object per row ------------------------------

_TABLE_HEADING = "#### Which fields are read, per provider"

Build = Callable[[pytest.FixtureRequest, dict[str, Any]], object]

ROWS: dict[str, tuple[dict[str, Any], Build, UsageSnapshot]] = {
    "OpenAI Chat Completions (`CompletionUsage`)": (
        {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "cache_write_tokens": 50},
            "completion_tokens_details": {"reasoning_tokens": 192},
        },
        lambda _, raw: CompletionUsage.model_validate(raw),
        UsageSnapshot(2006, 300, 1920, 50, 192),
    ),
    "OpenAI Responses (`ResponseUsage`)": (
        {
            "input_tokens": 5000,
            "output_tokens": 700,
            "total_tokens": 5700,
            "input_tokens_details": {"cached_tokens": 4000, "cache_write_tokens": 200},
            "output_tokens_details": {"reasoning_tokens": 500},
        },
        lambda _, raw: ResponseUsage.model_validate(raw),
        UsageSnapshot(5000, 700, 4000, 200, 500),
    ),
    "DeepSeek (OpenAI Chat shape)": (
        {
            "prompt_tokens": 50_000,
            "completion_tokens": 900,
            "total_tokens": 50_900,
            "prompt_tokens_details": {"cached_tokens": 45_000},
            "prompt_cache_hit_tokens": 45_000,
            "prompt_cache_miss_tokens": 5_000,
            "completion_tokens_details": {"reasoning_tokens": 400},
        },
        lambda _, raw: CompletionUsage.model_validate(raw),
        UsageSnapshot(50_000, 900, 45_000, 0, 400),
    ),
    "xAI (OpenAI Chat shape)": (
        {  # xAI's own example: reasoning outside completion_tokens, inside total_tokens
            "prompt_tokens": 32,
            "completion_tokens": 9,
            "total_tokens": 135,
            "prompt_tokens_details": {
                "text_tokens": 32,
                "audio_tokens": 0,
                "image_tokens": 0,
                "cached_tokens": 6,
            },
            "completion_tokens_details": {
                "reasoning_tokens": 94,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
            "num_sources_used": 0,
        },
        lambda _, raw: CompletionUsage.model_validate(raw),
        UsageSnapshot(32, 103, 6, 0, 94),
    ),
    "Anthropic Messages (`Usage`)": (
        {
            "input_tokens": 10,
            "output_tokens": 500,
            "cache_creation_input_tokens": 1500,
            "cache_read_input_tokens": 20_000,
            "cache_creation": {"ephemeral_5m_input_tokens": 500, "ephemeral_1h_input_tokens": 1000},
            "output_tokens_details": {"thinking_tokens": 320},
            "service_tier": "standard",
        },
        lambda _, raw: anthropic_types.Usage.model_validate(raw),
        UsageSnapshot(21_510, 500, 20_000, 1500, 320, 1000, service_tier="default"),
    ),
    "Gemini, google-genai (`usage_metadata`)": (
        {
            "prompt_token_count": 1000,
            "tool_use_prompt_token_count": 10,
            "candidates_token_count": 200,
            "cached_content_token_count": 600,
            "thoughts_token_count": 300,
            "total_token_count": 1510,
        },
        lambda _, raw: genai_types.GenerateContentResponse(
            usage_metadata=genai_types.GenerateContentResponseUsageMetadata.model_validate(raw)
        ),
        UsageSnapshot(1010, 500, 600, 0, 300),
    ),
    "Gemini REST JSON (`usageMetadata`)": (
        {
            "usageMetadata": {
                "promptTokenCount": 800,
                "toolUsePromptTokenCount": 5,
                "candidatesTokenCount": 50,
                "cachedContentTokenCount": 700,
                "thoughtsTokenCount": 25,
                "totalTokenCount": 880,
            }
        },
        lambda _, raw: raw,
        UsageSnapshot(805, 75, 700, 0, 25),
    ),
    'Bedrock Converse (`response["usage"]`)': (
        {
            "inputTokens": 30,
            "outputTokens": 200,
            "totalTokens": 1330,
            "cacheReadInputTokens": 900,
            "cacheWriteInputTokens": 200,
            "cacheDetails": [{"ttl": "1h", "inputTokens": 150}, {"ttl": "5m", "inputTokens": 50}],
        },
        lambda _, raw: _converse(raw),
        UsageSnapshot(1130, 200, 900, 200, 0, 150),
    ),
    "Bedrock ConverseStream (`metadata` event)": (
        {
            "metadata": {
                "usage": {
                    "inputTokens": 30,
                    "outputTokens": 200,
                    "totalTokens": 1330,
                    "cacheReadInputTokens": 900,
                    "cacheWriteInputTokens": 200,
                    "cacheDetails": [
                        {"ttl": "1h", "inputTokens": 150},
                        {"ttl": "5m", "inputTokens": 50},
                    ],
                },
                "metrics": {"latencyMs": 80},
            }
        },
        _stream_metadata_event,
        UsageSnapshot(1130, 200, 900, 200, 0, 150),
    ),
}


def _doc_rows() -> dict[str, list[str]]:
    """Return the provider table's rows (first cell -> all cells) from docs/usage.md."""
    text = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8")
    lines = text.split(_TABLE_HEADING, 1)[1].strip().splitlines()
    table = []
    for line in lines:
        if not line.startswith("|"):
            break
        table.append(line)
    rows = {}
    for line in table[2:]:  # skip the header and the |---| line
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        rows[cells[0]] = cells
    return rows


def _keys(value: object) -> Iterator[str]:
    """Every mapping key anywhere inside ``value``."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield key
            yield from _keys(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _keys(inner)


def _named_fields(cells: list[str]) -> set[str]:
    """The field names a row's mapping cells mention (identifiers inside backticks)."""
    names: set[str] = set()
    for cell in cells:
        for code in re.findall(r"`([^`]+)`", cell):
            names.update(part for part in re.split(r"\W+", code) if part.isidentifier())
    return names


def test_the_table_has_exactly_the_rows_tested_here() -> None:
    assert list(_doc_rows()) == list(ROWS)


@pytest.mark.parametrize("row", list(ROWS))
def test_each_table_row_reads_the_real_sdk_object(row: str, request: pytest.FixtureRequest) -> None:
    raw, build, expected = ROWS[row]
    cells = _doc_rows()[row]
    missing = _named_fields(cells[1:6]) - set(_keys(raw))
    assert not missing, f"the docs name fields this row's input lacks: {sorted(missing)}"
    assert UsageSnapshot.from_response(build(request, raw)) == expected


def test_each_table_row_says_where_its_service_tier_is_reported() -> None:
    header = (ROOT / "docs" / "usage.md").read_text(encoding="utf-8").split(_TABLE_HEADING, 1)[1]
    assert "| `service_tier` |" in header.strip().splitlines()[0]
    for row, cells in _doc_rows().items():
        assert len(cells) == 8, row
        tier = cells[6]
        assert re.search(r"service_?[tT]ier|none reported", tier), (row, tier)


# -- Anthropic: the one-hour / five-minute split of the cache writes ---------------------------


def _message(usage: dict[str, Any]) -> anthropic_types.Message:
    return anthropic_types.Message.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": usage,
        }
    )


def test_anthropic_message_carries_the_one_hour_split() -> None:
    usage = {
        "input_tokens": 4,
        "output_tokens": 7,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
    }
    expected = UsageSnapshot(3004, 7, 0, 3000, 0, 2000)
    assert UsageSnapshot.from_response(_message(usage)) == expected
    assert UsageSnapshot.from_response({"usage": usage}) == expected


def test_a_sessions_turn_event_and_usage_record_carry_the_one_hour_writes() -> None:
    from techrevati.runtime import EventName, Orchestrator

    usage = {
        "input_tokens": 4,
        "output_tokens": 7,
        "cache_creation_input_tokens": 3000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
    }
    register_pricing(
        "claude",
        ModelPricing("3", "15", cache_write_per_million="3.75", cache_write_1h_per_million="6"),
    )
    memory = CollectingSink()
    orch = Orchestrator(role="writer", phase="draft", sinks=[memory])
    with orch.session() as session:
        session.run_turn(lambda: _message(usage), model="claude")
    (completed,) = [e for e in memory.events if e.name == EventName.TURN_COMPLETED]
    assert completed.data["cache_write_tokens"] == 3000
    assert completed.data["cache_write_1h_tokens"] == 2000
    # 4 input tokens at $3/M, 1000 five-minute writes at $3.75/M, 2000 one-hour writes at
    # $6/M and 7 output tokens at $15/M
    assert completed.data["cost_usd"] == "0.015867"
    (record,) = memory.usage
    assert record.cache_write_1h_tokens == 2000


def test_anthropic_split_without_a_total_is_the_total() -> None:
    usage = anthropic_types.Usage(
        input_tokens=5,
        output_tokens=1,
        cache_creation=anthropic_types.CacheCreation(
            ephemeral_1h_input_tokens=300, ephemeral_5m_input_tokens=200
        ),
    )
    assert usage.cache_creation_input_tokens is None
    assert UsageSnapshot.from_response(usage) == UsageSnapshot(505, 1, 0, 500, 0, 300)


def test_anthropic_writes_the_split_leaves_out_are_five_minute_writes() -> None:
    usage = anthropic_types.Usage.model_validate(
        {
            "input_tokens": 1,
            "output_tokens": 1,
            "cache_creation_input_tokens": 900,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 300},
        }
    )
    assert UsageSnapshot.from_response(usage) == UsageSnapshot(901, 1, 0, 900, 0, 300)


def test_anthropic_split_larger_than_the_total_is_refused() -> None:
    usage = anthropic_types.Usage.model_validate(
        {
            "input_tokens": 1,
            "output_tokens": 1,
            "cache_creation_input_tokens": 100,
            "cache_creation": {"ephemeral_5m_input_tokens": 60, "ephemeral_1h_input_tokens": 50},
        }
    )
    with pytest.raises(
        UsageParseError,
        match=r"Anthropic usage \(Usage\) is inconsistent: one-hour \+ five-minute cache writes "
        r"\(50 \+ 60\) exceed all cache writes \(100\)",
    ):
        UsageSnapshot.from_response(usage)


def test_anthropic_bad_split_count_names_the_field() -> None:
    usage = {
        "input_tokens": 1,
        "output_tokens": 1,
        "cache_creation": {"ephemeral_5m_input_tokens": 1, "ephemeral_1h_input_tokens": -2},
    }
    with pytest.raises(
        UsageParseError, match=r"cache_creation field ephemeral_1h_input_tokens .* got -2"
    ):
        UsageSnapshot.from_response(usage)


def test_a_one_hour_write_costs_what_anthropic_bills() -> None:
    # Claude Sonnet: $3/M input, 5-minute writes 1.25x ($3.75), one-hour writes 2x ($6).
    register_pricing(
        "sonnet",
        ModelPricing("3", "15", cache_write_per_million="3.75", cache_write_1h_per_million="6"),
    )
    one_hour = UsageSnapshot.from_response(
        {
            "input_tokens": 0,
            "output_tokens": 0,
            "cache_creation_input_tokens": MILLION,
            "cache_creation": {
                "ephemeral_5m_input_tokens": 0,
                "ephemeral_1h_input_tokens": MILLION,
            },
        }
    )
    five_minutes = UsageSnapshot(MILLION, cache_write_tokens=MILLION)
    tracker = UsageTracker()
    for _ in range(2):  # the first turn takes the slow path, the second the fast one
        assert tracker.record_turn("sonnet", one_hour).cost_usd == Decimal("6")
        assert tracker.record_turn("sonnet", five_minutes).cost_usd == Decimal("3.75")
    assert tracker.total_cost() == Decimal("19.5")
    assert tracker.cost_for_turn("sonnet", one_hour) == Decimal("6")
    assert tracker.total_usage().cache_write_1h_tokens == 2 * MILLION


# -- DeepSeek's cache hits and misses ------------------------------------------------------------


def test_deepseek_cache_hits_are_billed_at_the_cache_read_rate() -> None:
    # deepseek-chat: $0.28/M on a cache miss, $0.028/M on a hit, $0.42/M output.
    register_pricing("deepseek-chat", ModelPricing("0.28", "0.42", cache_read_per_million="0.028"))
    usage = UsageSnapshot.from_response(
        CompletionUsage.model_validate(
            {
                "prompt_tokens": 50_000,
                "completion_tokens": 1000,
                "total_tokens": 51_000,
                "prompt_cache_hit_tokens": 45_000,
                "prompt_cache_miss_tokens": 5000,
            }
        )
    )
    assert usage == UsageSnapshot(50_000, 1000, cache_read_tokens=45_000)
    cost = UsageTracker().record_turn("deepseek-chat", usage).cost_usd
    assert cost == Decimal("0.00140") + Decimal("0.00126") + Decimal("0.00042")
    uncached = UsageTracker().record_turn("deepseek-chat", UsageSnapshot(50_000, 1000)).cost_usd
    assert uncached / cost > 4


def test_deepseek_without_prompt_tokens_adds_hits_and_misses() -> None:
    usage = {"completion_tokens": 2, "prompt_cache_hit_tokens": 30, "prompt_cache_miss_tokens": 5}
    assert UsageSnapshot.from_response(usage) == UsageSnapshot(35, 2, 30)


def test_deepseek_hits_alone_are_read() -> None:
    usage = CompletionUsage.model_validate(
        {
            "prompt_tokens": 80,
            "completion_tokens": 2,
            "total_tokens": 82,
            "prompt_cache_hit_tokens": 64,
        }
    )
    assert UsageSnapshot.from_response(usage) == UsageSnapshot(80, 2, 64)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"prompt_cache_hit_tokens": 40, "prompt_cache_miss_tokens": 20},
            r"prompt_cache_hit_tokens \+ prompt_cache_miss_tokens \(40 \+ 20\) "
            r"!= prompt_tokens \(50\)",
        ),
        (
            {"prompt_cache_hit_tokens": 40, "prompt_tokens_details": {"cached_tokens": 30}},
            r"prompt_cache_hit_tokens \(40\) != prompt_tokens_details.cached_tokens \(30\)",
        ),
        ({"prompt_cache_hit_tokens": "40"}, r"prompt_cache_hit_tokens must be .* got '40'"),
    ],
)
def test_deepseek_counts_that_disagree_are_refused(extra: dict[str, Any], message: str) -> None:
    usage = CompletionUsage.model_validate(
        {"prompt_tokens": 50, "completion_tokens": 1, "total_tokens": 51, **extra}
    )
    with pytest.raises(UsageParseError, match=message):
        UsageSnapshot.from_response(usage)


# -- xAI's reasoning outside completion_tokens --------------------------------------------------


def test_xai_reasoning_is_billed_as_output_of_which_reasoning() -> None:
    register_pricing("grok", ModelPricing("2", "10", reasoning_per_million="20"))
    raw = ROWS["xAI (OpenAI Chat shape)"][0]
    usage = UsageSnapshot.from_response(CompletionUsage.model_validate(raw))
    assert (usage.output_tokens, usage.reasoning_tokens) == (103, 94)
    # 32 input at $2/M, 9 plain output at $10/M, 94 reasoning at $20/M.
    expected = Decimal(32 * 2 + 9 * 10 + 94 * 20) / MILLION
    assert UsageTracker().record_turn("grok", usage).cost_usd == expected


@pytest.mark.parametrize(
    ("total", "output"),
    [
        (110, 70),  # xAI with less reasoning than completion: total = 40 + 50 + 20
        (90, 50),  # OpenAI's meaning: total = prompt + completion, reasoning inside
        (None, 50),  # no total: OpenAI's meaning
        (95, 50),  # a total that matches neither: OpenAI's meaning
    ],
)
def test_reasoning_outside_completion_is_told_from_total_tokens(
    total: int | None, output: int
) -> None:
    raw: dict[str, Any] = {
        "prompt_tokens": 40,
        "completion_tokens": 50,
        "completion_tokens_details": {"reasoning_tokens": 20},
    }
    if total is None:  # the SDK requires total_tokens: build the object without it
        sdk_usage = CompletionUsage.model_construct(**raw)
        assert sdk_usage.total_tokens is None
    else:
        sdk_usage = CompletionUsage.model_validate({**raw, "total_tokens": total})
    usage = UsageSnapshot.from_response(sdk_usage)
    assert (usage.output_tokens, usage.reasoning_tokens) == (output, 20)


def test_xai_responses_api_usage_is_told_the_same_way() -> None:
    usage = ResponseUsage.model_validate(
        {
            "input_tokens": 32,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 9,
            "output_tokens_details": {"reasoning_tokens": 94},
            "total_tokens": 135,
        }
    )
    assert UsageSnapshot.from_response(usage) == UsageSnapshot(32, 103, reasoning_tokens=94)


# -- Bedrock: cacheDetails and the ConverseStream metadata event -------------------------------


def test_bedrock_cache_details_without_a_write_total() -> None:
    parsed = _converse(
        {
            "inputTokens": 10,
            "outputTokens": 3,
            "totalTokens": 53,
            "cacheDetails": [{"ttl": "5m", "inputTokens": 25}, {"ttl": "1h", "inputTokens": 15}],
        }
    )
    assert UsageSnapshot.from_response(parsed) == UsageSnapshot(50, 3, 0, 40, 0, 15)


@pytest.mark.parametrize(
    ("details", "message"),
    [
        ([{"ttl": "24h", "inputTokens": 1}], r"cacheDetails ttl must be '1h' or '5m', got '24h'"),
        ([{"inputTokens": 1}], r"cacheDetails ttl must be '1h' or '5m', got no ttl"),
        ({"ttl": "1h"}, r"cacheDetails must be a list, got dict"),
        ([{"ttl": "1h", "inputTokens": 9}], r"one-hour \+ five-minute cache writes \(9 \+ 0\)"),
    ],
)
def test_bedrock_bad_cache_details_are_refused(details: object, message: str) -> None:
    usage = {"inputTokens": 1, "outputTokens": 1, "cacheWriteInputTokens": 5}
    with pytest.raises(UsageParseError, match=message):
        UsageSnapshot.from_response({**usage, "cacheDetails": details})


def test_converse_stream_metadata_event_from_the_real_client(
    scripted_server: ScriptedServer, bedrock_client: Any
) -> None:
    metadata = {
        "usage": {"inputTokens": 12, "outputTokens": 34, "totalTokens": 46},
        "metrics": {"latencyMs": 5},
    }
    events = _converse_stream_events(scripted_server, bedrock_client, metadata)
    assert [next(iter(event)) for event in events] == [
        "messageStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    assert UsageSnapshot.from_response(events[-1]) == UsageSnapshot(12, 34)
    # Any other event has no usage: an error naming it, never a silent zero.
    with pytest.raises(UsageParseError, match="cannot read token usage from dict"):
        UsageSnapshot.from_response(events[3])


def test_a_metadata_event_with_usage_none_is_a_clear_error() -> None:
    with pytest.raises(UsageParseError, match=r"dict\.metadata\.usage is None"):
        UsageSnapshot.from_response({"metadata": {"usage": None}})
    with pytest.raises(UsageParseError, match=r"unrecognised usage shape int in dict\.metadata"):
        UsageSnapshot.from_response({"metadata": {"usage": 5}})
    with pytest.raises(UsageParseError, match="cannot read token usage from dict"):
        UsageSnapshot.from_response({"metadata": "not an event"})


# -- UsageSnapshot.cache_write_1h_tokens ------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, True, 1.0, "3", None])
def test_one_hour_writes_are_validated_naming_field_and_value(bad: object) -> None:
    with pytest.raises(InvalidValueError) as info:
        UsageSnapshot(10, cache_write_tokens=5, cache_write_1h_tokens=bad)  # type: ignore[arg-type]
    assert f"cache_write_1h_tokens must be an int >= 0, got {bad!r}" == str(info.value)


def test_one_hour_writes_are_a_part_of_the_cache_writes() -> None:
    with pytest.raises(
        InvalidValueError,
        match=r"^cache_write_1h_tokens must not exceed cache_write_tokens \(cache_write_tokens "
        r"includes them\), got 6 > 5$",
    ):
        UsageSnapshot(10, cache_write_tokens=5, cache_write_1h_tokens=6)
    assert UsageSnapshot(10, cache_write_tokens=5, cache_write_1h_tokens=5).cache_write_1h_tokens


def test_int_subclasses_still_count() -> None:
    class Tokens(int):
        pass

    usage = UsageSnapshot(Tokens(10), Tokens(2), cache_write_tokens=Tokens(4))
    assert usage == UsageSnapshot(10, 2, 0, 4)


def test_one_hour_writes_add_and_serialise() -> None:
    a = UsageSnapshot(10, 5, 2, 3, 1, 2)
    b = UsageSnapshot(1, 2, 0, 1, 2, 1)
    assert a + b == UsageSnapshot(11, 7, 2, 4, 3, 3)
    assert a.to_dict() == {
        "input_tokens": 10,
        "output_tokens": 5,
        "cache_read_tokens": 2,
        "cache_write_tokens": 3,
        "reasoning_tokens": 1,
        "cache_write_1h_tokens": 2,
        "total_tokens": 15,
    }
    # The counts in field order; the tier (the last field) is no count.
    assert [f.name for f in dataclasses.fields(a)] == [*list(a.to_dict())[:6], "service_tier"]
    counts = {k: v for k, v in a.to_dict().items() if k != "total_tokens"}
    assert dataclasses.asdict(a) == {**counts, "service_tier": None}


def test_snapshots_copy_pickle_and_replace_with_their_counts() -> None:
    usage = UsageSnapshot(10, 5, 2, 3, 1, 2)
    for same in (pickle.loads(pickle.dumps(usage)), copy.copy(usage), copy.deepcopy(usage)):
        assert same == usage
        assert UsageTracker().record_turn("unpriced", same).usage == usage
    replaced = dataclasses.replace(usage, cache_write_1h_tokens=0)
    assert replaced + usage == UsageSnapshot(20, 10, 4, 6, 2, 2)


def test_a_pickle_from_before_one_hour_writes_loads_with_zero() -> None:
    restored = UsageSnapshot.__new__(UsageSnapshot)
    restored.__setstate__([10, 5, 2, 3, 1])  # what a five-field snapshot pickled
    assert restored == UsageSnapshot(10, 5, 2, 3, 1, 0)
    assert restored + restored == UsageSnapshot(20, 10, 4, 6, 2, 0)


def test_usage_records_carry_one_hour_writes() -> None:
    record = UsageRecord(model="m", cache_write_tokens=4, cache_write_1h_tokens=3)
    assert record.to_dict()["cache_write_1h_tokens"] == 3
    with pytest.raises(InvalidValueError, match="cache_write_1h_tokens must be an int >= 0"):
        UsageRecord(model="m", cache_write_1h_tokens=-1)


def test_tracker_summaries_carry_one_hour_writes() -> None:
    register_pricing("m", ModelPricing("3", "15"))
    tracker = UsageTracker()
    tracker.record_turn("m", UsageSnapshot(100, 1, 0, 40, 0, 30))
    tracker.record_turn("m", UsageSnapshot(100, 1, 0, 40, 0, 10))
    tracker.record_turn("other", UsageSnapshot(5, 1, 0, 5, 0, 5))
    assert tracker.total_usage() == UsageSnapshot(205, 3, 0, 85, 0, 45)
    assert tracker.per_model_summary()["m"]["cache_write_1h_tokens"] == 40
    summary = tracker.summary()
    assert summary["cache_write_1h_tokens"] == 45
    assert summary["models"]["other"]["cache_write_1h_tokens"] == 5  # type: ignore[index]


# -- the tracker's fast path: exact, whatever the pricing -------------------------------------

TIERED = ModelPricing(
    "3",
    "15",
    cache_read_per_million="0.3",
    cache_write_per_million="3.75",
    cache_write_1h_per_million="6",
    reasoning_per_million="18",
    long_context=LongContextTier(
        200_000,
        "6",
        "22.5",
        cache_read_per_million="0.6",
        above=LongContextTier(1_000_000, "9.000000001", "30"),
    ),
)
PRICINGS = [
    ModelPricing("3", "15"),
    ModelPricing("0.000000001", "0"),
    ModelPricing("0", "0"),
    ModelPricing("1.5", "2", long_context=LongContextTier(0, "3", "4")),  # every turn is long
    TIERED,
]


@st.composite
def snapshots(draw: st.DrawFn) -> UsageSnapshot:
    one_hour = draw(st.integers(0, 3 * MILLION))
    cache_write = one_hour + draw(st.integers(0, MILLION))
    cache_read = draw(st.integers(0, MILLION))
    reasoning = draw(st.integers(0, 100_000))
    return UsageSnapshot(
        cache_read + cache_write + draw(st.sampled_from([0, 1, 199_999, 200_000, 2 * MILLION])),
        reasoning + draw(st.integers(0, 100_000)),
        cache_read,
        cache_write,
        reasoning,
        one_hour,
    )


@settings(max_examples=examples(60))
@given(st.sampled_from(PRICINGS), st.lists(snapshots(), min_size=1, max_size=40))
def test_every_turn_costs_what_pricing_says_and_totals_add_up(
    pricing: ModelPricing, turns: list[UsageSnapshot]
) -> None:
    register_pricing("m", pricing)
    tracker = UsageTracker()
    costs = [tracker.record_turn("m", usage) for usage in turns * 2]  # fast path after the first
    assert [c.cost_femto_usd for c in costs] == [_femto(pricing, u) for u in turns * 2]
    assert tracker.total_cost() == sum((c.cost_usd for c in costs), Decimal(0))
    assert tracker.total_usage() == sum(turns * 2, UsageSnapshot.ZERO)
    assert tracker.turns == 2 * len(turns)


def test_long_runs_fold_exactly_at_every_read() -> None:
    register_pricing("m", TIERED)
    tracker = UsageTracker()
    usage = UsageSnapshot(5000, 1200, 4000, 500, 300, 200)
    each = _femto(TIERED, usage)
    for turn in range(1, 2001):
        tracker.record_turn("m", usage)
        if turn % 333 == 0 or turn in (255, 256, 257, 512):
            assert tracker.turns == turn
            cost = Decimal(tracker.summary()["cost_usd"])  # type: ignore[arg-type]
            assert cost == Decimal(each * turn).scaleb(-15)
            assert tracker.total_usage() == UsageSnapshot(*(n * turn for n in usage._counts))
    assert tracker.per_model_summary()["m"]["turns"] == 2000


def test_re_registering_reprices_later_turns_only() -> None:
    register_pricing("m", ModelPricing("1", "1"))
    tracker = UsageTracker()
    usage = UsageSnapshot(MILLION)
    assert [tracker.record_turn("m", usage).cost_usd for _ in range(3)] == [1, 1, 1]
    register_pricing("m", ModelPricing("2", "1"))
    assert [tracker.record_turn("m", usage).cost_usd for _ in range(3)] == [2, 2, 2]
    register_pricing("m", ModelPricing("1", "1"))  # an equal pricing, a new object
    assert tracker.record_turn("m", usage).cost_usd == 1
    assert tracker.total_cost() == Decimal(10)


def test_spellings_subclasses_and_unpriced_turns_take_the_slow_path_exactly() -> None:
    class Counted(UsageSnapshot):
        pass

    register_pricing("m", ModelPricing("3", "15"))
    tracker = UsageTracker()
    usage = UsageSnapshot(MILLION, MILLION)
    assert tracker.record_turn(" m ", usage).model == "m"
    assert tracker.record_turn(" m ", usage).cost_usd == 18
    assert tracker.record_turn("m", Counted(MILLION, MILLION)).cost_usd == 18
    assert tracker.record_turn("m", usage).cost_usd == 18
    assert tracker.record_turn("m", usage).cost_usd == 18
    assert tracker.record_turn("gone", usage).priced is False
    assert tracker.per_model_summary()["m"]["turns"] == 5
    assert tracker.total_cost() == 90


@pytest.mark.parametrize("bad", [None, 5, ["m"], ""])
def test_fast_path_bad_model_names_are_typed_errors(bad: object) -> None:
    register_pricing("m", ModelPricing("3", "15"))
    tracker = UsageTracker()
    tracker.record_turn("m", UsageSnapshot(1))
    with pytest.raises(InvalidValueError, match="model"):
        tracker.record_turn(bad, UsageSnapshot(1))  # type: ignore[arg-type]
    with pytest.raises(InvalidValueError, match="usage must be a UsageSnapshot"):
        tracker.record_turn("m", {"prompt_tokens": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize("fake", [mock.Mock(), mock.MagicMock(), mock.Mock(_counts=(1, 2))])
def test_fast_path_mocks_are_not_snapshots(fake: object) -> None:
    register_pricing("m", ModelPricing("3", "15"))
    tracker = UsageTracker()
    tracker.record_turn("m", UsageSnapshot(1))
    with pytest.raises(InvalidValueError, match="usage must be a UsageSnapshot"):
        tracker.record_turn("m", fake)  # type: ignore[arg-type]
    assert tracker.turns == 1


@pytest.mark.parametrize(
    "has_fee",
    [
        lambda u: u.input_tokens > 1000,  # caught by the probes (the tier rate is not whole)
        lambda u: u.output_tokens > 5,  # not seen by one-token probes: caught by the check
    ],
    ids=["input-fee", "output-fee"],
)
def test_a_pricing_the_rates_cannot_be_read_off_is_priced_turn_by_turn(
    monkeypatch: pytest.MonkeyPatch, has_fee: Callable[[UsageSnapshot], bool]
) -> None:
    # A cost that is not linear in the counts (a flat fee of 7e-15 USD): no plan is
    # made, and every turn is priced by _rates_femto on the slow path.
    def with_fee(pricing: ModelPricing, usage: UsageSnapshot) -> int:
        return _rates_femto(pricing, usage) + (7 if has_fee(usage) else 0)

    monkeypatch.setattr(usage_module, "_rates_femto", with_fee)
    monkeypatch.setattr(usage_module, "_PLANS", {})
    pricing = ModelPricing("3", "15")
    register_pricing("m", pricing)
    assert usage_module._plan_for(pricing) is None
    tracker = UsageTracker()
    turns = [UsageSnapshot(10), UsageSnapshot(2000, 6), UsageSnapshot(2000, 6)]
    costs = [tracker.record_turn("m", u).cost_femto_usd for u in turns]
    assert costs == [with_fee(pricing, u) for u in turns]
    assert costs[1] == 6_000_000_000_000 + 90_000_000_000 + 7


def test_memory_stays_bounded_when_nobody_reads() -> None:
    register_pricing("m", ModelPricing("3", "15"))
    tracker = UsageTracker()
    for _ in range(10 * usage_module._FOLD_AT + 7):
        tracker.record_turn("m", UsageSnapshot(1, 1))
        assert len(tracker._fast["m"][1].pending) < usage_module._FOLD_AT
    assert tracker.turns == 10 * usage_module._FOLD_AT + 7


def test_plans_are_read_once_per_equal_pricing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(usage_module, "_PLANS", {})
    read: list[ModelPricing] = []
    real = usage_module._plan_for

    def counted(pricing: ModelPricing) -> Any:
        read.append(pricing)
        return real(pricing)

    monkeypatch.setattr(usage_module, "_plan_for", counted)
    for _ in range(3):
        register_pricing("m", ModelPricing("3", "15"))
        UsageTracker().record_turn("m", UsageSnapshot(1))
    assert len(read) == 1


def test_readers_see_whole_turns_while_eight_threads_record() -> None:
    register_pricing("m", ModelPricing("3", "15", cache_read_per_million="0.3"))
    tracker = UsageTracker()
    usage = UsageSnapshot(1000, 100, 400, 0, 10)
    each = tracker.cost_for_turn("m", usage)
    start = threading.Barrier(9)
    done = threading.Event()
    per_thread = 20_000
    seen: list[tuple[int, int, str]] = []

    def record() -> None:
        start.wait()
        for _ in range(per_thread):
            tracker.record_turn("m", usage)

    def read() -> None:
        start.wait()
        while not done.is_set():
            summary = tracker.summary()
            seen.append((summary["turns"], summary["input_tokens"], summary["cost_usd"]))  # type: ignore[arg-type]

    threads = [threading.Thread(target=record) for _ in range(8)]
    reader = threading.Thread(target=read)
    for thread in (*threads, reader):
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    reader.join()
    assert tracker.turns == 8 * per_thread
    assert tracker.total_cost() == each * 8 * per_thread
    assert seen, "the reader never read"
    for turns, inp, cost in seen:
        # A summary never shows part of a turn: tokens and money agree with the count.
        assert (inp, Decimal(cost)) == (turns * 1000, each * turns)


def test_plain_and_cached_turns_fold_exactly_whatever_their_size() -> None:
    register_pricing("m", ModelPricing("3", "15"))
    tracker = UsageTracker()
    big = 2**70
    plain, cached = UsageSnapshot(big, big // 3), UsageSnapshot(big, big, big // 2, big // 4, 7, 3)
    small = UsageSnapshot(9, 8, 0, 0, 1)
    turns = [plain, cached] * 300 + [small] * 300 + [plain] * 7 + [cached] * 11
    costs = [tracker.record_turn("m", usage) for usage in turns]
    assert [c.cost_femto_usd for c in costs] == [_femto(ModelPricing("3", "15"), u) for u in turns]
    assert tracker.total_usage() == sum(turns, UsageSnapshot.ZERO)
    assert tracker.turns == len(turns)
    femto = sum(c.cost_femto_usd for c in costs)
    assert tracker.total_cost() == Decimal(femto).scaleb(-15, decimal.Context(prec=60))


def test_unregistering_clearing_and_loading_a_file_reprice_the_next_turn(tmp_path: Path) -> None:
    from techrevati.runtime.pricing import clear_pricing, load_pricing_from_file
    from techrevati.runtime.usage import unregister_pricing

    usage = UsageSnapshot(MILLION)
    tracker = UsageTracker()

    def priced_twice() -> list[Decimal]:
        return [tracker.record_turn("m", usage).cost_usd for _ in range(2)]

    register_pricing("m", ModelPricing("1", "1"))
    assert priced_twice() == [1, 1]
    assert unregister_pricing("m")
    assert [tracker.record_turn("m", usage).priced for _ in range(2)] == [False, False]
    register_pricing("m", ModelPricing("2", "1"))
    assert priced_twice() == [2, 2]
    clear_pricing()
    assert [tracker.record_turn("m", usage).priced for _ in range(2)] == [False, False]
    register_pricing("m", ModelPricing("2", "1"))
    assert priced_twice() == [2, 2]
    path = tmp_path / "prices.json"
    path.write_text('{"models": {"m": {"input_per_million": 5, "output_per_million": 1}}}')
    load_pricing_from_file(path)
    assert priced_twice() == [5, 5]
    assert tracker.total_cost() == 20  # 1 + 1, 2 + 2, 2 + 2, 5 + 5


def test_trackers_share_one_hot_rates_per_registration() -> None:
    from techrevati.runtime.pricing import _HOT

    register_pricing("m", ModelPricing("3", "15"))
    first, second = UsageTracker(), UsageTracker()
    first.record_turn("m", UsageSnapshot(1))
    second.record_turn("m", UsageSnapshot(1))
    hot = _HOT["m"]
    assert first._fast["m"][0] is hot
    assert second._fast["m"][0] is hot
    register_pricing("m", ModelPricing("3", "15"))
    assert "m" not in _HOT
    assert (hot.threshold, hot.ceiling) == (-1, -1)  # retired: the next turn looks again
    assert first.record_turn("m", UsageSnapshot(MILLION)).cost_usd == 3
    assert first._fast["m"][0] is _HOT["m"] is not hot


def test_no_hot_rates_for_a_pricing_replaced_since_it_was_looked_up() -> None:
    old = ModelPricing("1", "1")
    register_pricing("m", old)
    register_pricing("m", ModelPricing("2", "1"))
    assert usage_module._hot_rates("m", old) is None
    unregister = usage_module.unregister_pricing
    unregister("m")
    assert usage_module._hot_rates("m", old) is None


def test_retiring_lowers_the_ceiling_before_the_threshold() -> None:
    # A turn that read the old threshold must then read a ceiling of the old pricing or -1,
    # never pass a lowered threshold and find the old ceiling (it would take the tier's rates).
    from techrevati.runtime.pricing import _HotRates

    order: list[str] = []

    class Recorded(_HotRates):
        __slots__ = ()

        def __setattr__(self, name: str, value: object) -> None:
            order.append(name)
            super().__setattr__(name, value)

    hot = Recorded(ModelPricing("1", "1"), None)
    assert (hot.threshold, hot.ceiling) == (-1, -1)  # no plan: every turn is slow
    order.clear()
    hot.retire()
    assert order == ["ceiling", "threshold"]


def test_turns_racing_re_registration_cost_one_pricing_or_the_other() -> None:
    cheap, dear = ModelPricing("1", "1"), TIERED
    register_pricing("m", cheap)
    tracker = UsageTracker()
    usages = [UsageSnapshot(150_000, 10, 5, 5), UsageSnapshot(250_000, 10, 5, 5)]
    allowed = {u: {_femto(cheap, u), _femto(dear, u)} for u in usages}
    start = threading.Barrier(5)
    costs: list[list[usage_module.TurnCost]] = [[] for _ in range(4)]

    def record(out: list[usage_module.TurnCost]) -> None:
        start.wait()
        for turn in range(5000):
            out.append(tracker.record_turn("m", usages[turn % 2]))

    threads = [threading.Thread(target=record, args=(out,)) for out in costs]
    for thread in threads:
        thread.start()
    start.wait()
    while any(thread.is_alive() for thread in threads):
        register_pricing("m", dear)
        register_pricing("m", cheap)
    for thread in threads:
        thread.join()
    recorded = [cost for out in costs for cost in out]
    assert all(c.cost_femto_usd in allowed[c.usage] for c in recorded)
    assert tracker.turns == 20_000
    assert tracker.total_cost() == sum((c.cost_usd for c in recorded), Decimal(0))


# -- durable records: JSONL and SQLite keep the one-hour writes; old files read as 0 -----------


def test_jsonl_round_trip_and_old_lines(tmp_path: Path) -> None:
    from techrevati.runtime.jsonl import JsonlSink, read_jsonl

    path = tmp_path / "usage.jsonl"
    record = UsageRecord(model="m", input_tokens=9, cache_write_tokens=5, cache_write_1h_tokens=4)
    with JsonlSink(path, background=False) as sink:
        sink.write_usage(record)
    old = json.loads(path.read_text())
    del old["cache_write_1h_tokens"]
    with path.open("a") as file:
        file.write(json.dumps(old) + "\n")
    stored = list(read_jsonl(path))
    assert [r.cache_write_1h_tokens for r in stored] == [4, 0]  # type: ignore[union-attr]
    assert stored[0] == record


def test_sqlite_stores_one_hour_writes_and_migrates_a_version_2_file(tmp_path: Path) -> None:
    import sqlite3

    from techrevati.runtime.sqlite import SCHEMA_VERSION, SchemaError, SqliteReader, SqliteSink

    path = tmp_path / "v2.db"
    old = UsageRecord(model="m", input_tokens=9, cache_write_tokens=5)
    with SqliteSink(path, background=False) as sink:
        sink.write_usage(old)
    with sqlite3.connect(path) as conn:  # make it the file version 2 wrote
        conn.executescript("DROP VIEW turns; DROP VIEW session_summary")
        conn.execute("ALTER TABLE usage DROP COLUMN cache_write_1h_tokens")
        conn.execute("ALTER TABLE usage DROP COLUMN service_tier")
        conn.execute("PRAGMA user_version = 2")
    with pytest.raises(SchemaError, match=r"schema version 2.*open it once with SqliteSink"):
        SqliteReader(path)
    new = UsageRecord(model="m", input_tokens=9, cache_write_tokens=5, cache_write_1h_tokens=3)
    with SqliteSink(path, background=False) as sink:
        sink.write_usage(new)
        assert [r.cache_write_1h_tokens for r in sink.read_usage()] == [0, 3]
    with SqliteReader(path) as reader:
        assert reader.read_usage()[1] == new
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
