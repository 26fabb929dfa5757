"""UsageSnapshot.from_response against objects built with the real SDKs, offline."""

from __future__ import annotations

import json
from typing import Any

import anthropic.types as anthropic_types
import botocore.parsers
import botocore.session
import pytest
from google.genai import types as genai_types
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion
from openai.types.responses import Response, ResponseUsage

from techrevati.runtime.errors import TechrevatiError
from techrevati.runtime.usage import UsageParseError, UsageSnapshot

# -- OpenAI Chat Completions --------------------------------------------------------

CHAT_USAGE: dict[str, Any] = {
    "prompt_tokens": 2006,
    "completion_tokens": 300,
    "total_tokens": 2306,
    "prompt_tokens_details": {"cached_tokens": 1920, "cache_write_tokens": 50, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 192, "accepted_prediction_tokens": 0},
}
CHAT_EXPECTED = UsageSnapshot(
    input_tokens=2006,
    output_tokens=300,
    cache_read_tokens=1920,
    cache_write_tokens=50,
    reasoning_tokens=192,
)


def _chat_completion(usage: dict[str, Any] | None) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-test",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": "hi"},
                }
            ],
            "usage": usage,
        }
    )


def test_openai_chat_completion_response() -> None:
    assert UsageSnapshot.from_response(_chat_completion(CHAT_USAGE)) == CHAT_EXPECTED


def test_openai_completion_usage_object_and_plain_dicts() -> None:
    usage = CompletionUsage.model_validate(CHAT_USAGE)
    assert UsageSnapshot.from_response(usage) == CHAT_EXPECTED
    assert UsageSnapshot.from_response(CHAT_USAGE) == CHAT_EXPECTED
    assert UsageSnapshot.from_response({"id": "x", "usage": CHAT_USAGE}) == CHAT_EXPECTED


def test_openai_chat_usage_without_details_counts_zero_for_the_parts() -> None:
    usage = CompletionUsage(prompt_tokens=10, completion_tokens=5, total_tokens=15)
    assert UsageSnapshot.from_response(usage) == UsageSnapshot(10, 5)


def test_openai_chat_response_without_usage_is_a_clear_error() -> None:
    with pytest.raises(UsageParseError, match=r"ChatCompletion\.usage is None"):
        UsageSnapshot.from_response(_chat_completion(None))


# -- OpenAI Responses ---------------------------------------------------------------

RESPONSES_USAGE: dict[str, Any] = {
    "input_tokens": 5000,
    "output_tokens": 700,
    "total_tokens": 5700,
    "input_tokens_details": {"cached_tokens": 4000, "cache_write_tokens": 200},
    "output_tokens_details": {"reasoning_tokens": 500},
}
RESPONSES_EXPECTED = UsageSnapshot(5000, 700, 4000, 200, 500)


def test_openai_responses_response_and_usage() -> None:
    response = Response.model_validate(
        {
            "id": "resp_1",
            "object": "response",
            "created_at": 1_700_000_000,
            "model": "gpt-test",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": RESPONSES_USAGE,
        }
    )
    assert UsageSnapshot.from_response(response) == RESPONSES_EXPECTED
    usage = ResponseUsage.model_validate(RESPONSES_USAGE)
    assert UsageSnapshot.from_response(usage) == RESPONSES_EXPECTED
    # Input here already includes the cached tokens: nothing is added.
    assert UsageSnapshot.from_response(usage).input_tokens == 5000


# -- Anthropic ----------------------------------------------------------------------

ANTHROPIC_USAGE: dict[str, Any] = {
    "input_tokens": 10,
    "output_tokens": 500,
    "cache_creation_input_tokens": 1000,
    "cache_read_input_tokens": 20_000,
    "output_tokens_details": {"thinking_tokens": 320},
    "service_tier": "standard",
}


def test_anthropic_message_input_is_made_inclusive_of_cache() -> None:
    message = anthropic_types.Message.model_validate(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-test",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": ANTHROPIC_USAGE,
        }
    )
    expected = UsageSnapshot(
        input_tokens=21_010,
        output_tokens=500,
        cache_read_tokens=20_000,
        cache_write_tokens=1000,
        reasoning_tokens=320,
        service_tier="default",  # Anthropic's "standard"
    )
    assert UsageSnapshot.from_response(message) == expected
    assert UsageSnapshot.from_response(message.usage) == expected
    assert UsageSnapshot.from_response({"usage": ANTHROPIC_USAGE}) == expected


def test_anthropic_usage_with_null_cache_fields() -> None:
    usage = anthropic_types.Usage(input_tokens=12, output_tokens=3)
    assert usage.cache_read_input_tokens is None
    assert UsageSnapshot.from_response(usage) == UsageSnapshot(12, 3)


def test_anthropic_thinking_tokens_are_capped_at_output() -> None:
    usage = anthropic_types.Usage.model_validate(
        {
            "input_tokens": 1,
            "output_tokens": 10,
            "cache_read_input_tokens": 0,
            "output_tokens_details": {"thinking_tokens": 12},
        }
    )
    assert UsageSnapshot.from_response(usage).reasoning_tokens == 10


# -- Gemini -------------------------------------------------------------------------


def test_gemini_response_adds_thoughts_to_output_and_tool_prompt_to_input() -> None:
    response = genai_types.GenerateContentResponse(
        usage_metadata=genai_types.GenerateContentResponseUsageMetadata(
            prompt_token_count=1000,
            candidates_token_count=200,
            cached_content_token_count=600,
            thoughts_token_count=300,
            tool_use_prompt_token_count=10,
            total_token_count=1510,
        )
    )
    expected = UsageSnapshot(
        input_tokens=1010,
        output_tokens=500,
        cache_read_tokens=600,
        cache_write_tokens=0,
        reasoning_tokens=300,
    )
    assert UsageSnapshot.from_response(response) == expected
    assert UsageSnapshot.from_response(response.usage_metadata) == expected
    assert UsageSnapshot.from_response(response).total_tokens == 1510


def test_gemini_rest_json_in_camel_case() -> None:
    body = {
        "candidates": [],
        "usageMetadata": {
            "promptTokenCount": 800,
            "candidatesTokenCount": 50,
            "cachedContentTokenCount": 700,
            "thoughtsTokenCount": 25,
            "totalTokenCount": 875,
        },
    }
    expected = UsageSnapshot(800, 75, 700, 0, 25)
    assert UsageSnapshot.from_response(body) == expected
    parsed = genai_types.GenerateContentResponse.model_validate(body)
    assert UsageSnapshot.from_response(parsed) == expected


def test_gemini_metadata_with_only_none_fields_is_zero() -> None:
    response = genai_types.GenerateContentResponse(
        usage_metadata=genai_types.GenerateContentResponseUsageMetadata()
    )
    assert UsageSnapshot.from_response(response) == UsageSnapshot.ZERO


# -- Bedrock Converse ---------------------------------------------------------------


def _bedrock_converse(usage: dict[str, int]) -> dict[str, Any]:
    """Parse a Converse HTTP body exactly as boto3's client would, with botocore."""
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    operation = model.operation_model("Converse")
    assert set(usage) <= set(operation.output_shape.members["usage"].members)
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


def test_bedrock_converse_input_is_made_inclusive_of_cache() -> None:
    response = _bedrock_converse(
        {
            "inputTokens": 30,
            "outputTokens": 200,
            "totalTokens": 1230,
            "cacheReadInputTokens": 900,
            "cacheWriteInputTokens": 100,
        }
    )
    expected = UsageSnapshot(
        input_tokens=1030, output_tokens=200, cache_read_tokens=900, cache_write_tokens=100
    )
    assert UsageSnapshot.from_response(response) == expected
    assert UsageSnapshot.from_response(response["usage"]) == expected


def test_bedrock_converse_without_cache_fields() -> None:
    response = _bedrock_converse({"inputTokens": 30, "outputTokens": 20, "totalTokens": 50})
    assert UsageSnapshot.from_response(response) == UsageSnapshot(30, 20)


# -- failures -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "text", b"bytes", 42, 1.5, [1, 2], object()])
def test_unrecognised_objects_raise_naming_the_type(value: object) -> None:
    with pytest.raises(UsageParseError) as info:
        UsageSnapshot.from_response(value)
    assert type(value).__name__ in str(info.value)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TechrevatiError)


def test_unrecognised_usage_inside_a_response() -> None:
    with pytest.raises(UsageParseError, match=r"unrecognised usage shape dict in dict\.usage"):
        UsageSnapshot.from_response({"usage": {"tokens": 5}})


def test_a_raising_property_becomes_a_parse_error_with_its_cause() -> None:
    class Flaky:
        @property
        def usage(self) -> object:
            raise RuntimeError("connection reset")

    with pytest.raises(
        UsageParseError, match="reading 'usage' of Flaky raised RuntimeError"
    ) as info:
        UsageSnapshot.from_response(Flaky())
    assert isinstance(info.value.__cause__, RuntimeError)


def test_a_property_raising_attribute_error_counts_as_missing() -> None:
    class Partial:
        @property
        def prompt_tokens(self) -> int:
            return 7

        @property
        def completion_tokens(self) -> int:
            raise AttributeError("not yet")

    assert UsageSnapshot.from_response(Partial()) == UsageSnapshot(input_tokens=7)


@pytest.mark.parametrize("bad", [-3, "12", 1.0, True])
def test_bad_counts_name_the_field_and_value(bad: object) -> None:
    with pytest.raises(UsageParseError) as info:
        UsageSnapshot.from_response({"prompt_tokens": 10, "completion_tokens": bad})
    assert "completion_tokens" in str(info.value)
    assert repr(bad) in str(info.value)


def test_inconsistent_counts_are_a_parse_error() -> None:
    usage = {
        "prompt_tokens": 10,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 11},
    }
    with pytest.raises(UsageParseError, match=r"OpenAI chat usage \(dict\) is inconsistent"):
        UsageSnapshot.from_response(usage)


def test_objects_with_usage_attributes_are_duck_typed() -> None:
    class Usage:
        input_tokens = 100
        output_tokens = 5
        cache_read_input_tokens = 50
        cache_creation_input_tokens = None

    class Reply:
        usage = Usage()

    assert UsageSnapshot.from_response(Reply()) == UsageSnapshot(150, 5, 50, 0, 0)
