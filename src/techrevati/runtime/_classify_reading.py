"""One exception: what it says about its failure, and what it wraps.

Private to the classifier (:mod:`~techrevati.runtime._classify`). A
:class:`_Reading` holds what one exception says (HTTP status, error codes,
messages, headers), read lazily and guarded, and decides its scenario from
the tables in :mod:`~techrevati.runtime._failure_signals`; :func:`_visit`
decides one exception and :func:`_links` lists the exceptions it wraps
(causes, contexts, group members, retry wrappers). Which of a chain's
exceptions decides is ``_classify``'s walk.

The per-class caches and lookups used on every call live here, beside
their readers: a method called on a name imported with ``from ... import``
compiles (on CPython 3.11 at least) to a slower bound-method load.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Final

from techrevati.runtime._failure_signals import (
    _AMBIGUOUS_CODES,
    _CODES,
    _MUTE,
    _NAMES,
    _RANK,
    _REFINE,
    _S,
    _STATUS,
    _STRONG_NAMES,
)
from techrevati.runtime._failures import RETRYABLE_SCENARIOS, FailureInfo, FailureScenario
from techrevati.runtime._sdk import safe_getattr as _attr
from techrevati.runtime._wait_hints import (
    _detail_items,
    _get,
    _header_wait,
    _hint_headers,
    _retry_info,
)

_MAX_TEXT: Final = 4096
"""Message characters searched for phrases (error payloads can be large)."""

# The attributes the classifier reads; a class that has none of them (and an
# instance that sets none) is classified by its name alone, with no reads.
_ATTRIBUTES: Final = frozenset(
    {
        "status_code",
        "status",
        "code",
        "type",
        "error_code",
        "body",
        "response",
        "headers",
        "message",
        "details",
        "last_attempt",
        "cause",
    }
)
_EVERYTHING: Final[frozenset[str]] = frozenset({"*"})
# Read at construction, in this order; the rest (body, message, headers, details) lazily.
_STRUCTURED: Final = ("status_code", "status", "code", "type", "error_code", "response")
_STATUS_ATTRIBUTES: Final = frozenset({"status_code", "status", "code"})
_DECLARED_CACHE: dict[type[BaseException], frozenset[str]] = {}
_ERROR_INFO_TYPE: Final = "google.rpc.ErrorInfo"
_WRAPPERS: Final = frozenset({"last_attempt", "cause"})
_NO_LINKS: Final[list[BaseException]] = []  # shared; never mutated

_NO_RANK: Final = 99
# One lookup per code: (scenario, rank, specific enough to skip the message).
_CODE_INFO: Final[Mapping[str, tuple[FailureScenario, int, bool]]] = MappingProxyType(
    {
        code: (scenario, _RANK[scenario], code not in _AMBIGUOUS_CODES)
        for code, scenario in _CODES.items()
    }
)

# Bounded caches: classes made on the fly must not grow memory without limit.
_INFO_CACHE_SIZE: Final = 1024
_INFO_CACHE: dict[tuple[object, ...], FailureInfo] = {}
_NAME_CACHE_SIZE: Final = 1024
_NAME_CACHE: dict[type[BaseException], tuple[FailureScenario | None, FailureScenario | None]] = {}


class _Reading:
    """The signals of one exception, read lazily (internal; one per exception looked at).

    Construction reads only the cheap structured attributes (status, codes,
    the response); the body, messages, headers and details are read when a
    decision or a hint needs them. Every read is guarded.
    """

    __slots__ = (
        "_body_read",
        "_declared",
        "_own",
        "_response",
        "codes",
        "exc",
        "specific",
        "status",
        "texts",
    )

    def __init__(
        self,
        exc: BaseException,
        declared: frozenset[str] | None = None,
        own: Mapping[str, object] | None = None,
    ) -> None:
        self.exc = exc
        self.status: int | None = None
        self.codes: list[str] = []
        self.texts: list[str] = []
        self.specific = False
        self._body_read = False
        self._response: object = None
        if declared is None or own is None:
            declared, own = _shape(exc)
        self._declared = declared
        self._own = own
        if not declared and (not own or _ATTRIBUTES.isdisjoint(own)):
            self._body_read = True  # nothing to read: decided by class name alone
            return
        everything = declared is _EVERYTHING
        for name in _STRUCTURED:
            if everything or name in declared:  # maybe a property (httpx's .request raises)
                value = _attr(exc, name)
            elif name in own:
                value = own[name]  # a plain instance attribute: no descriptor in the way
            else:
                continue
            if value is None:
                continue
            if name == "response":
                self._response = value
                if self.status is None:
                    self._take_response_status(value)
            elif isinstance(value, str):
                if name in _STATUS_ATTRIBUTES and len(value) == 3 and value.isdigit():
                    self._take_status(int(value))  # litellm keeps the status as a str
                elif value:
                    self.codes.append(value)
            elif name in _STATUS_ATTRIBUTES and self.status is None:
                self._take_status(value)

    def has(self, name: str) -> bool:
        """Whether ``exc`` may have attribute ``name`` (its class or instance sets it)."""
        declared = self._declared
        return declared is _EVERYTHING or name in self._own or name in declared

    def read(self, name: str) -> object:
        """Return ``exc.<name>`` or None, never raising."""
        return _attr(self.exc, name) if self.has(name) else None

    def read_body(self) -> None:
        """Add the codes and messages of ``body`` and ``message`` (once)."""
        if self._body_read:
            return
        self._body_read = True
        body = self.read("body")
        if body is not None and (type(body) is dict or isinstance(body, Mapping)):
            inner = _get(body, "error")
            error = inner if type(inner) is dict or isinstance(inner, Mapping) else body
            self._take_mapping(error)
            self._take_details(_get(error, "details"))
        message = self.read("message")
        if isinstance(message, str) and message:
            self.texts.append(message)
        self.codes.extend(_error_reasons(self.read("details")))

    def headers(self) -> object:
        """Return the response headers (httpx, requests, botocore's dict) or ``.headers``."""
        response = self._response
        if response is not None:
            headers = _attr(response, "headers")
            if headers is None and (type(response) is dict or isinstance(response, Mapping)):
                headers = _get(_get(response, "ResponseMetadata"), "HTTPHeaders")
            if headers is not None:
                return headers
        return self.read("headers")

    def _take_details(self, details: object) -> None:
        """Add anthropic's ``details.error_code`` or Google's ``ErrorInfo`` reasons to the codes."""
        if type(details) is dict or isinstance(details, Mapping):
            code = _get(details, "error_code")
            if isinstance(code, str) and code:
                self.codes.append(code)
        elif isinstance(details, list | tuple):
            self.codes.extend(_error_reasons(details))

    def _take_response_status(self, response: object) -> None:
        """Read the status of the response (and botocore's error codes)."""
        status = _attr(response, "status_code")  # httpx, requests
        if status is None and (type(response) is dict or isinstance(response, Mapping)):
            self._take_mapping(_get(response, "Error"))  # botocore's dict
            status = _get(_get(response, "ResponseMetadata"), "HTTPStatusCode")
        self._take_status(status)

    def _take_status(self, value: object) -> None:
        if (
            self.status is None
            and isinstance(value, int)
            and not isinstance(value, bool)
            and 100 <= value <= 599
        ):
            self.status = int(value)  # api-core's codes are http.HTTPStatus members

    def _take_mapping(self, data: object) -> None:
        if not (type(data) is dict or isinstance(data, Mapping)):
            return
        for key in ("code", "Code", "type", "status"):
            value = _get(data, key)
            if isinstance(value, int):
                self._take_status(value)
            elif isinstance(value, str) and value:
                if len(value) == 3 and value.isdigit():
                    self._take_status(int(value))
                else:
                    self.codes.append(value)
        for key in ("message", "Message"):
            value = _get(data, key)
            if isinstance(value, str) and value:
                self.texts.append(value)

    def decide(self) -> tuple[FailureScenario | None, str | None]:
        """Return the scenario the structured signals support, and the code used.

        Phrases refine only a structured verdict that is too broad (a generic
        400, a 429 that may be quota); with no structured signal at all the
        answer is None and :meth:`phrase` is the last resort.
        """
        scenario, used, rank = self._from_codes() if self.codes else (None, None, _NO_RANK)
        if not self.specific and not self._body_read:
            self.read_body()
            if self.codes:
                scenario, used, rank = self._from_codes()
        cls = type(self.exc)
        names = _NAME_CACHE.get(cls) or _names_of(cls)
        strong = names[0]
        if strong is not None and _RANK[strong] < rank:
            return strong, None  # a specific class name (litellm's, openai's) says it all
        if scenario is None:
            scenario = self._by_status() or names[1]
        if scenario is None or self.specific or scenario not in _REFINE:
            return scenario, used
        refined = self._refine(scenario)
        if refined is not None:
            return refined, used
        if scenario is _S.BAD_REQUEST:
            # A generic code ("invalid_request_error" on a 401, 408, 409, 5xx) says
            # less than the status: the status decides, and the SDKs retry 408 and 409.
            by_status = self._by_status()
            if by_status is not None:
                return by_status, used
        return scenario, used

    def _by_status(self) -> FailureScenario | None:
        """Return the scenario of the HTTP status alone (None below 400)."""
        status = self.status
        if status is None or status < 400:
            return None
        scenario = _STATUS.get(status)
        if scenario is None:
            return _S.PROVIDER_FAILURE if status >= 500 else _S.BAD_REQUEST
        return scenario

    def phrase(self) -> FailureScenario | None:
        """Return what the message alone says: the last resort, never for programming errors."""
        if isinstance(self.exc, _MUTE):
            return None
        self.read_body()
        return self._refine(None)

    def _from_codes(self) -> tuple[FailureScenario | None, str | None, int]:
        scenario: FailureScenario | None = None
        used: str | None = None
        rank = _NO_RANK
        for code in self.codes:
            hit = _CODE_INFO.get(code) or _CODE_INFO.get(code.lower())
            if hit is not None and hit[1] < rank:
                scenario, rank, self.specific = hit
                used = code
        return scenario, used, rank

    def _refine(self, scenario: FailureScenario | None) -> FailureScenario | None:
        """Return what the phrases say in place of ``scenario`` (a key of ``_REFINE``), if any."""
        refinements = _REFINE[scenario]
        text = self._text()
        if refinements[0].search(text) is None:
            return None
        for pattern, refined in refinements[1]:
            if pattern.search(text) is None:
                continue
            if refined is _S.QUOTA_EXHAUSTED and scenario is _S.RATE_LIMIT and self._hinted():
                return None  # "retry in 13s" means a rate limit, whatever the text says
            return refined
        return None

    def _text(self) -> str:
        try:
            own = str(self.exc)
        except Exception:  # a broken __str__ must not break classification
            own = ""
        return "\n".join([*self.texts, own])[:_MAX_TEXT]

    def _hinted(self) -> bool:
        headers = self.headers()
        if headers is not None:
            _, millis, after = _hint_headers(headers)
            if _header_wait(millis, after, time.time) is not None:
                return True
        return _retry_info(self.read("details")) is not None

    def info(
        self, scenario: FailureScenario, code: str | None, clock: Callable[[], float]
    ) -> FailureInfo:
        """Build the :class:`FailureInfo` of this exception for ``scenario``."""
        retryable = scenario in RETRYABLE_SCENARIOS
        retry_after: float | None = None
        headers = self.headers()
        if headers is not None:
            should, millis, after = _hint_headers(headers)
            if should is not None:
                flag = should.strip().lower()
                if flag == "true":
                    retryable = True
                elif flag == "false":
                    retryable = False
            retry_after = _header_wait(millis, after, clock)
        if retry_after is None:
            retry_after = _retry_info(self.read("details"))
        if code is None and self.codes:
            code = self.codes[0]
        name = type(self.exc).__name__
        if retry_after is not None:
            return FailureInfo(scenario, retryable, retry_after, self.status, code, name)
        # Without a hint the value repeats: reuse the immutable FailureInfo.
        key = (scenario, retryable, self.status, code, name)
        cached = _INFO_CACHE.get(key)
        if cached is None:
            cached = FailureInfo(scenario, retryable, None, self.status, code, name)
            if len(_INFO_CACHE) >= _INFO_CACHE_SIZE:
                _INFO_CACHE.clear()
            _INFO_CACHE[key] = cached
        return cached


def _visit(
    exc: BaseException,
) -> tuple[FailureScenario | None, _Reading | None, str | None, list[BaseException]]:
    """Decide one exception; return its links too when the walk must go on."""
    declared, own = _shape(exc)
    reading: _Reading | None = None
    code: str | None = None
    if not declared and (not own or _ATTRIBUTES.isdisjoint(own)):
        cls = type(exc)
        strong, weak = _NAME_CACHE.get(cls) or _names_of(cls)
        scenario = strong or weak
        if scenario is not None and scenario in _REFINE:  # a generic name: read the message
            reading = _Reading(exc, declared, own)
            scenario, code = reading.decide()
    else:
        reading = _Reading(exc, declared, own)
        scenario, code = reading.decide()
    if scenario is not None and scenario is not _S.BAD_REQUEST:
        return scenario, reading, code, _NO_LINKS
    return scenario, reading, code, _links(exc, declared, own)


def _links(
    exc: BaseException, declared: frozenset[str], own: Mapping[str, object]
) -> list[BaseException]:
    """Return the exceptions ``exc`` wraps, nearest first."""
    cause = exc.__cause__
    context = None if exc.__suppress_context__ else exc.__context__
    if context is cause:
        context = None
    grouped = isinstance(exc, BaseExceptionGroup)
    wraps = declared is _EVERYTHING or not (
        declared.isdisjoint(_WRAPPERS) and _WRAPPERS.isdisjoint(own)
    )
    if not (grouped or wraps):
        if cause is None:
            return _NO_LINKS if context is None else [context]
        return [cause] if context is None else [cause, context]
    found: list[BaseException] = []
    if cause is not None:
        found.append(cause)
    if context is not None:
        found.append(context)
    if isinstance(exc, BaseExceptionGroup):
        found.extend(exc.exceptions)
    if not wraps:
        return found
    attempt = _attr(exc, "last_attempt")  # tenacity.RetryError: a finished Future
    if isinstance(attempt, BaseException):
        found.append(attempt)
    elif attempt is not None:
        inner = _future_exception(attempt)
        if inner is not None:
            found.append(inner)
    wrapped = _attr(exc, "cause")  # google.api_core RetryError
    if isinstance(wrapped, BaseException):
        found.append(wrapped)
    return found


def _future_exception(future: object) -> BaseException | None:
    try:
        done = getattr(future, "done", None)
        if callable(done) and not done():
            return None  # never block on a pending future
        get = getattr(future, "exception", None)
        value = get() if callable(get) else None
    except Exception:
        return None
    return value if isinstance(value, BaseException) else None


def _shape(exc: BaseException) -> tuple[frozenset[str], Mapping[str, object]]:
    """Return the attributes ``type(exc)`` declares and the instance's own ``__dict__``."""
    cls = type(exc)
    declared = _DECLARED_CACHE.get(cls)
    if declared is None:
        declared = _declared(cls)
    try:
        own: Mapping[str, object] = exc.__dict__
    except Exception:
        own = {}
    return declared, own


def _names_of(cls: type[BaseException]) -> tuple[FailureScenario | None, FailureScenario | None]:
    """Return the strong and the ordinary name verdicts along ``cls``'s MRO (cached)."""
    cached = _NAME_CACHE.get(cls)
    if cached is not None:
        return cached
    strong: FailureScenario | None = None
    weak: FailureScenario | None = None
    for klass in cls.__mro__:
        name = klass.__name__
        if strong is None:
            strong = _STRONG_NAMES.get(name)
        if weak is None:
            weak = _NAMES.get(name)
    if len(_NAME_CACHE) >= _NAME_CACHE_SIZE:
        _NAME_CACHE.clear()  # classes made on the fly must not grow memory without limit
    _NAME_CACHE[cls] = (strong, weak)
    return strong, weak


def _declared(cls: type[BaseException]) -> frozenset[str]:
    """Return the attributes read that ``cls`` provides (cached); all if it has ``__getattr__``."""
    cached = _DECLARED_CACHE.get(cls)
    if cached is not None:
        return cached
    if any("__getattr__" in vars(klass) for klass in cls.__mro__[:-1]):
        found = _EVERYTHING
    else:
        found = frozenset(
            name
            for name in _ATTRIBUTES
            if any(name in vars(klass) for klass in cls.__mro__ if klass is not BaseException)
        )
    if len(_DECLARED_CACHE) >= _NAME_CACHE_SIZE:
        _DECLARED_CACHE.clear()
    _DECLARED_CACHE[cls] = found
    return found


def _error_reasons(details: object) -> list[str]:
    """Return the ``reason`` of each ``google.rpc.ErrorInfo`` (dicts or protobuf messages)."""
    reasons: list[str] = []
    for item in _detail_items(details):
        if isinstance(item, Mapping):
            kind = _get(item, "@type")
            if not (isinstance(kind, str) and kind.endswith(_ERROR_INFO_TYPE)):
                continue
            reason = _get(item, "reason")
        elif type(item).__name__ == "ErrorInfo":
            reason = _attr(item, "reason")
        else:
            continue
        if isinstance(reason, str) and reason:
            reasons.append(reason)
    return reasons
