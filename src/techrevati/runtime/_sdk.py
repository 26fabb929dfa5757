"""Read an SDK's exception without importing the SDK: guarded attributes, HTTP status, codes.

Private. Every read survives a property that raises (httpx's ``.request``
when unset, a hostile ``__getattr__``). The circuit breaker's default
failure test, :func:`is_dependency_failure`, lives here with the readers it
uses; the classifier (``_classify``) reads attributes through
:func:`safe_getattr` too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from techrevati.runtime.errors import is_refusal

__all__ = ["is_dependency_failure", "safe_getattr"]

# Substrings of a class name (along the MRO) or an AWS error code that mean
# "throttled or timed out" even when the HTTP status is a 4xx (AWS answers
# ThrottlingException with 400). Narrow on purpose: SDKs name 4xx errors with
# words such as "Unavailable" or "Network" (a 402 BillingUnavailable, a 400
# KeyNetworkBlocked), so only these override a 4xx status.
_OVERRIDE_HINTS: Final = (
    "Throttl",
    "TooManyRequests",
    "RateLimit",
    "RequestLimitExceeded",
    "ThroughputExceeded",
    "SlowDown",
    "Timeout",
    "TimedOut",
    "Overloaded",
)


_COUNTED_4XX: Final = frozenset({408, 429})


def is_dependency_failure(exc: BaseException) -> bool:
    """Return True if ``exc`` looks like the dependency's fault, not the caller's.

    The default failure predicate. It reads the HTTP status from
    ``status_code``, ``status``, ``code`` (ints only), ``response.status_code``,
    ``response.status`` or a botocore ``response["ResponseMetadata"]
    ["HTTPStatusCode"]``: 5xx, 408 and 429 count; any other 4xx (bad request,
    auth, not found, ...) does not, unless the class name along the MRO or an
    AWS error code says throttling or timeout (``ThrottlingException`` comes
    as a 400). Exceptions without a status count: timeouts, connection
    errors, any ``OSError`` and anything unknown. Never raises, imports no
    SDK; cancellations (non-``Exception`` BaseExceptions) and the runtime's own
    refusals (a spent budget, a denied tool, a governance limit) return False.
    """
    if not isinstance(exc, Exception) or is_refusal(exc):
        return False
    try:
        status = _http_status(exc)
        if status is None or status >= 500 or status in _COUNTED_4XX:
            return True
        if any(hint in cls.__name__ for cls in type(exc).__mro__ for hint in _OVERRIDE_HINTS):
            return True
        code = _aws_error_code(exc)
        return code is not None and any(hint in code for hint in _OVERRIDE_HINTS)
    except Exception:  # a hostile __getattr__ or __mro__; be conservative
        return True


def _http_status(exc: BaseException) -> int | None:
    """Return the first 4xx/5xx int status the exception carries, looking everywhere safe."""
    for attr in ("status_code", "status", "code"):
        status = _as_status(safe_getattr(exc, attr))
        if status is not None:
            return status
    response = safe_getattr(exc, "response")
    if response is None:
        return None
    if isinstance(response, Mapping):  # botocore ClientError.response
        try:
            metadata = response.get("ResponseMetadata")
            if isinstance(metadata, Mapping):
                return _as_status(metadata.get("HTTPStatusCode"))
        except Exception:
            return None
        return None
    for attr in ("status_code", "status"):
        status = _as_status(safe_getattr(response, attr))
        if status is not None:
            return status
    return None


def _aws_error_code(exc: BaseException) -> str | None:
    response = safe_getattr(exc, "response")
    if not isinstance(response, Mapping):
        return None
    try:
        error = response.get("Error")
        code = error.get("Code") if isinstance(error, Mapping) else None
    except Exception:
        return None
    return code if isinstance(code, str) else None


def safe_getattr(obj: object, name: str) -> object:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that raises (httpx's .request when unset, ...)
        return None


def _as_status(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
        return int(value)
    return None
