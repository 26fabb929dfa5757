"""Cost of classifying one exception, next to a bare call (goal: <= 5 us each).

Run: ``.venv/bin/python -m bench.bench_classify``

Rows: a plain ``TimeoutError``; an openai ``RateLimitError`` with headers (if
openai is importable; a look-alike otherwise); that error wrapped twice
(``raise ... from``); and :func:`inspect_exception`, which also parses the
``retry-after`` headers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from bench._timing import per_call_ns, report
from techrevati.runtime.retry_policy import classify_exception, inspect_exception

GOAL_NS = 5_000.0


class _Response:
    def __init__(self) -> None:
        self.status_code = 429
        self.headers = {"retry-after-ms": "1500", "retry-after": "2", "x-request-id": "req_1"}


class RateLimitError(Exception):
    """Shaped like openai's, for when openai is not installed."""

    def __init__(self) -> None:
        super().__init__("Rate limit reached")
        self.message = "Rate limit reached"
        self.status_code = 429
        self.code = "rate_limit_exceeded"
        self.type = "requests"
        self.body = {"message": self.message, "type": "requests", "code": self.code}
        self.response = _Response()


def _rate_limit_error() -> tuple[str, Exception]:
    try:
        openai = importlib.import_module("openai")
        httpx2 = importlib.import_module("httpx2")
    except ImportError:
        return "look-alike RateLimitError", RateLimitError()
    error = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}
    request = httpx2.Request("POST", "https://api.openai.com/v1/chat/completions")
    headers = {
        "retry-after-ms": "1500",
        "retry-after": "2",
        "x-request-id": "req_1",
        "x-ratelimit-limit-requests": "500",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "120ms",
        "content-type": "application/json",
    }
    response = httpx2.Response(429, headers=headers, json={"error": error}, request=request)
    exc: Exception = openai.RateLimitError("Rate limit reached", response=response, body=error)
    return "openai.RateLimitError", exc


def _wrapped(inner: Exception) -> Exception:
    middle = RuntimeError("provider call failed")
    middle.__cause__ = inner
    outer = RuntimeError("agent step failed")
    outer.__cause__ = middle
    return outer


def _bare() -> None:
    return None


def main() -> None:
    """Print ns per call for each case, next to a bare call."""
    name, rate_limit = _rate_limit_error()
    timeout = TimeoutError("slow")
    chained = _wrapped(rate_limit)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("classify_exception(TimeoutError)", lambda: classify_exception(timeout)),
        (f"classify_exception({name})", lambda: classify_exception(rate_limit)),
        ("classify_exception(2 wrappers -> rate limit)", lambda: classify_exception(chained)),
        (f"inspect_exception({name}, headers)", lambda: inspect_exception(rate_limit)),
        ("inspect_exception(TimeoutError)", lambda: inspect_exception(timeout)),
    ]
    bare = per_call_ns(_bare)
    rows = [("bare call", bare)]
    rows.extend((label, per_call_ns(fn, number=20_000)) for label, fn in cases)
    report(rows, baseline=bare)
    worst = max(ns for _, ns in rows[1:])
    verdict = "met" if worst <= GOAL_NS else "missed"
    print(
        f"\nslowest case {worst / 1000:.2f} us per call; goal <= {GOAL_NS / 1000:.0f} us {verdict}"
    )


if __name__ == "__main__":
    main()
