"""RateLimiter.observe: OpenAI's and Anthropic's rate-limit headers tighten the limiter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anthropic
import httpx
import httpx2
import openai
import pytest

from techrevati.runtime import RateLimitedError, RateLimiter
from techrevati.runtime._rate_headers import duration_seconds
from tests import scripted_server as scripted
from tests.conftest import FakeClock

WALL = datetime(2025, 1, 1, tzinfo=UTC)


def limiter(clock: FakeClock) -> RateLimiter:
    return RateLimiter(
        requests_per_minute=100,
        tokens_per_minute=100_000,
        clock=clock,
        sleep=clock.sleep,
        wall_clock=lambda: WALL,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("6m0s", 360.0),
        ("1s", 1.0),
        ("20ms", 0.02),
        ("1m30.5s", 90.5),
        ("1h2m3.5s", 3723.5),
        (" 2.5 ", 2.5),
        ("0.5s", 0.5),
        ("500us", 0.0005),
    ],
)
def test_openai_durations(text: str, seconds: float) -> None:
    assert duration_seconds(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "-1s", "1 s", "5x", "1d", "inf", "nan", "s", "1e999"])
def test_malformed_durations_are_none(text: str) -> None:
    assert duration_seconds(text) is None


def test_openai_headers_cap_requests_until_the_reset() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    headers = httpx.Headers(
        {
            "X-RateLimit-Remaining-Requests": "1",
            "X-RateLimit-Reset-Requests": "1m30.5s",
            "x-ratelimit-remaining-tokens": "500",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert rl.observe(headers) == 2
    assert rl.try_acquire(input_tokens=400) is not None
    assert rl.try_acquire() is None  # the one request the server had left is used
    with pytest.raises(RateLimitedError) as info:
        rl.acquire(max_wait=10)
    assert info.value.limit_kind == "server"
    assert info.value.retry_after == 90.5
    clock.advance(90.5)
    # Requests reset; the tokens cap (100 left) holds until 6 minutes.
    assert rl.try_acquire(input_tokens=101) is None
    assert rl.try_acquire(input_tokens=100) is not None
    clock.advance(360 - 90.5)
    assert rl.try_acquire(input_tokens=5000) is not None


def test_anthropic_headers_with_rfc3339_resets_cap_input_and_output() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    reset = (WALL + timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    headers = {
        "anthropic-ratelimit-input-tokens-remaining": "1000",
        "anthropic-ratelimit-input-tokens-reset": reset,
        "anthropic-ratelimit-output-tokens-remaining": "50",
        "anthropic-ratelimit-output-tokens-reset": reset,
        "anthropic-ratelimit-requests-limit": "50",
    }
    assert rl.observe(headers) == 2
    assert rl.try_acquire(input_tokens=900, output_tokens=60) is None
    lease = rl.acquire(input_tokens=900, output_tokens=60)
    assert clock.slept == [30.0]
    assert lease.waited == 30.0


def test_plain_dicts_match_any_case() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    assert (
        rl.observe(
            {
                "ANTHROPIC-RATELIMIT-REQUESTS-REMAINING": "0",
                "Anthropic-RateLimit-Requests-Reset": "2025-01-01T00:00:05+00:00",
            }
        )
        == 1
    )
    assert rl.try_acquire() is None


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-remaining-requests": "0"},  # no reset: no horizon, ignored
        {"x-ratelimit-remaining-requests": "-1", "x-ratelimit-reset-requests": "1s"},
        {"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "1s"},
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "soon"},
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "0s"},
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:05",  # no zone
        },
        {
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": "2024-12-31T23:59:00Z",  # passed
        },
        {"retry-after": "soon"},
        {"retry-after": "0"},
        {},
    ],
)
def test_malformed_or_useless_headers_are_ignored(headers: dict[str, str]) -> None:
    clock = FakeClock()
    rl = limiter(clock)
    assert rl.observe(headers) == 0
    assert rl.try_acquire() is not None


@pytest.mark.parametrize("source", [None, 42, "x-ratelimit", object(), [("a", "b")]])
def test_things_without_headers_are_ignored(source: object) -> None:
    assert limiter(FakeClock()).observe(source) == 0


def test_a_hostile_header_container_never_raises() -> None:
    class Hostile:
        def get(self, name: str) -> str:
            raise RuntimeError("boom")

    class Carrier:
        @property
        def headers(self) -> object:
            raise RuntimeError("no")

    rl = limiter(FakeClock())
    assert rl.observe(Hostile()) == 0
    assert rl.observe(Carrier()) == 0


def _response(status: int, headers: dict[str, str]) -> httpx2.Response:
    """A response as the SDKs build theirs (on httpx2, whose Headers are read like httpx's)."""
    return httpx2.Response(status, headers=headers, request=httpx2.Request("POST", "http://x/v1"))


def test_a_real_openai_rate_limit_error_sets_retry_after_and_the_caps() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    error = openai.RateLimitError(
        "slow down",
        response=_response(
            429,
            {
                "retry-after-ms": "1500",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": "20ms",
            },
        ),
        body=None,
    )
    assert rl.observe(error) == 2
    lease = rl.acquire(input_tokens=1)
    assert clock.slept == [1.5]  # the retry-after holds requests; the token cap (20 ms) too
    assert lease.state == "active"


def test_a_real_anthropic_error_and_a_raw_response_are_read() -> None:
    clock = FakeClock()
    rl = limiter(clock)
    headers = {
        "anthropic-ratelimit-tokens-remaining": "10",
        "anthropic-ratelimit-tokens-reset": "2025-01-01T00:01:00Z",
        "retry-after": "7",
    }
    error = anthropic.RateLimitError("limited", response=_response(429, headers), body=None)
    assert rl.observe(error) == 2
    assert rl.observe(_response(200, headers)) == 2
    with pytest.raises(RateLimitedError) as info:
        rl.acquire(input_tokens=11, max_wait=0)
    assert info.value.retry_after == 60.0


def test_headers_from_a_real_sdk_call_over_loopback(
    scripted_server: scripted.ScriptedServer, openai_client: openai.OpenAI
) -> None:
    scripted_server.reply(
        200,
        scripted.openai_chat_completion("hi"),
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"},
    )
    raw = openai_client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    clock = FakeClock()
    rl = limiter(clock)
    assert rl.observe(raw) == 1
    rl.acquire()
    assert clock.slept == [2.0]
