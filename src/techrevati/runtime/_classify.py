"""Read why an exception happened, without importing any SDK (private to ``retry_policy``).

The classifier looks only at class names along the MRO and at attributes the
provider SDKs are known to set (``status_code``, ``code``, ``type``, ``body``,
``response``, ``details``...), so it works on openai, anthropic, google,
botocore, httpx/httpx2, requests and litellm errors alike, and on look-alike
classes of your own. Every attribute read is guarded: a property that raises
never breaks classification. Use the public names through
:mod:`techrevati.runtime.retry_policy`.

This module holds the entry points and the walk over an exception's chain
(causes, contexts, groups, retry wrappers) that finds the exception that
decides. What one exception says, and what it wraps, is read by
``_classify_reading``; what each signal means is in ``_failure_signals``;
the server's wait hints are read by ``_wait_hints``; the scenario and
:class:`FailureInfo` types are in ``_failures``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from techrevati.runtime._classify_reading import _NO_LINKS, _links, _Reading, _shape, _visit
from techrevati.runtime._failure_signals import _S, _SPECIFIC_BAD_REQUEST
from techrevati.runtime._failures import (
    FAILURE_CLASS_BY_SCENARIO,
    RETRYABLE_SCENARIOS,
    FailureInfo,
    FailureScenario,
    Origin,
    failure_class_for,
)
from techrevati.runtime._wait_hints import _hint_headers
from techrevati.runtime.errors import InvalidValueError

__all__ = [
    "FAILURE_CLASS_BY_SCENARIO",
    "MAX_CHAIN_DEPTH",
    "MAX_CHAIN_NODES",
    "RETRYABLE_SCENARIOS",
    "FailureInfo",
    "FailureScenario",
    "Origin",
    "classify_exception",
    "failure_class_for",
    "inspect_exception",
]

MAX_CHAIN_DEPTH: Final = 8
"""How deep :func:`classify_exception` follows causes, contexts and wrappers."""

MAX_CHAIN_NODES: Final = 32
"""How many exceptions of one chain (groups included) are looked at, at most."""

_ORIGINS: Final = frozenset({"model", "tool"})

_Verdict = tuple[FailureScenario, BaseException, "_Reading | None", str | None]


def classify_exception(exc: BaseException, *, origin: Origin = "model") -> FailureScenario:
    """Return the :class:`FailureScenario` of ``exc``, following causes and wrappers.

    Structured signals anywhere in the chain (codes, class names, statuses)
    come first, nearest exception first; message phrases are the last
    resort. A generic code (``invalid_request_error``) yields to a status
    that says more (401, 408, 409, 429, 5xx...). A bad request whose response
    says ``x-should-retry: true`` is a ``provider_failure``, so the recipe
    retries it. ``origin="tool"`` turns timeouts into ``dependency_timeout`` and
    the default into ``tool_execution_error``. Never raises for an
    :class:`Exception`; ``KeyboardInterrupt``, ``SystemExit`` and
    ``asyncio.CancelledError`` are not failures and raise
    :class:`~techrevati.runtime.errors.InvalidValueError`.
    """
    return _classify(exc, origin)[0]


def inspect_exception(
    exc: BaseException,
    *,
    clock: Callable[[], float] = time.time,
    origin: Origin = "model",
) -> FailureInfo:
    """Classify ``exc`` and read its wait hints into a :class:`FailureInfo`.

    ``clock`` is the wall clock (``time.time``) that an HTTP-date
    ``retry-after`` is measured against.
    """
    scenario, node, reading, code = _classify(exc, origin)
    return (reading or _Reading(node)).info(scenario, code, clock)


def _classify(exc: BaseException, origin: str) -> _Verdict:
    if not isinstance(exc, Exception):
        raise InvalidValueError(
            f"exc must be an Exception to classify, got {type(exc).__name__}; "
            "KeyboardInterrupt, SystemExit and CancelledError are not failures: let them propagate"
        )
    if origin not in _ORIGINS:
        raise InvalidValueError(f"origin must be 'model' or 'tool', got {origin!r}")
    verdict = _walk(exc, origin)
    return _retry_anyway(verdict, origin) if verdict[0] is _S.BAD_REQUEST else verdict


def _retry_anyway(verdict: _Verdict, origin: str) -> _Verdict:
    """Turn a generic bad request the server says to retry into a retryable scenario.

    ``x-should-retry: true`` on a bad request (400, 404, 422, a generic code)
    makes it a ``provider_failure`` (``tool_execution_error`` for a tool), so
    the usual recipe (backoff, attempt budget) retries it, as the SDKs do.
    A specific diagnosis keeps its scenario even then (auth, quota, content
    policy, context overflow, output truncated, memory): its recipe names what
    the caller must change, which a blind retry would skip; only
    :attr:`FailureInfo.retryable` follows the header there.
    """
    _, node, reading, code = verdict
    if reading is None:
        reading = _Reading(node)
    headers = reading.headers()
    should = None if headers is None else _hint_headers(headers)[0]
    if should is None or should.strip().lower() != "true":
        return verdict[0], node, reading, code
    scenario = _S.TOOL_EXECUTION_ERROR if origin == "tool" else _S.PROVIDER_FAILURE
    return scenario, node, reading, code


def _walk(exc: Exception, origin: str) -> _Verdict:
    """Decide ``exc`` from its own signals, else from what it wraps, nearest first."""
    scenario, reading, code, links = _visit(exc)
    if not links:
        if scenario is None:
            return _last_resort([exc], origin)
        return _for_origin(scenario, origin), exc, reading, code
    # Walk causes, contexts, group members and wrappers, nearest first: the first
    # structured signal wins, except that a generic bad request yields to a more
    # specific cause. Message phrases are tried only when nothing is structured.
    best: _Verdict | None = None if scenario is None else (scenario, exc, reading, code)
    visited: list[BaseException] = [exc]
    seen: set[int] | None = None  # kept from the first branch on
    stack: list[tuple[BaseException, int]] = []
    depth = 0
    while True:
        if seen is None and len(links) == 1 and depth < MAX_CHAIN_DEPTH:
            # A plain ``raise ... from`` chain needs no bookkeeping: the depth bounds cycles.
            node = links[0]
            depth += 1
        else:  # the chain branches (or is deep): a stack, and the ids already seen
            if seen is None:
                seen = {id(done) for done in visited}
            if depth < MAX_CHAIN_DEPTH:
                for link in reversed(links):
                    stack.append((link, depth + 1))
            links = _NO_LINKS
            if not stack or len(seen) >= MAX_CHAIN_NODES:
                break
            node, depth = stack.pop()
            if id(node) in seen:
                continue
            seen.add(id(node))
        if not isinstance(node, Exception):
            links = _links(node, *_shape(node))
            continue
        visited.append(node)
        scenario, reading, code, links = _visit(node)
        if scenario is None:
            continue
        if best is None and scenario is not _S.BAD_REQUEST:
            return _for_origin(scenario, origin), node, reading, code
        if best is None:
            best = (scenario, node, reading, code)
        elif scenario in _SPECIFIC_BAD_REQUEST:
            return scenario, node, reading, code
    if best is not None:
        return best
    return _last_resort(visited, origin)


def _last_resort(visited: list[BaseException], origin: str) -> _Verdict:
    """Match message phrases, nearest exception first; else the default scenario."""
    for node in visited:
        reading = _Reading(node)
        phrased = reading.phrase()
        if phrased is not None:
            return _for_origin(phrased, origin), node, reading, None
    default = _S.TOOL_EXECUTION_ERROR if origin == "tool" else _S.LLM_ERROR
    return default, visited[0], None, None


def _for_origin(scenario: FailureScenario, origin: str) -> FailureScenario:
    if origin == "tool" and scenario is _S.LLM_TIMEOUT:
        return _S.DEPENDENCY_TIMEOUT
    return scenario
