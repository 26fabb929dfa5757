"""Shared state on Redis: one budget, one breaker, one rate limit for a fleet of workers.

A :class:`RedisStore` wraps a Redis client you made (``redis.Redis``,
``redis.cluster.RedisCluster``, their ``redis.asyncio`` twins, or a
compatible client such as Valkey's),
so connection settings, TLS and auth stay yours. Give it to a primitive and
that primitive's state lives on the server, shared by every process that
names the same store prefix and primitive name::

    store = RedisStore(redis.Redis(host=..., socket_timeout=0.5), prefix="acme")
    budget = Budget(max_usd="50", store=store, name="project-42")
    breaker = CircuitBreaker("openai", store=store)
    limiter = RateLimiter(requests_per_minute=500, store=store, name="openai:gpt-4o")

Every decision (a budget's reserve, settle or release; a breaker's
admission or settlement; a limiter's admission or release) is one Lua
script, run atomically on the server in one round trip, with the server's
own clock (``TIME``), so workers with skewed clocks agree. Each script's
keys share one hash tag (``{<prefix>:<kind>:<name>}``), so the store works
on Redis Cluster. Budget holds, open rate-limited calls and half-open probes
are leases with a TTL: a worker killed while holding one strands nothing.

When Redis is unreachable, slow (past the client's ``socket_timeout``) or
answers with an error, the store's policy for that kind of primitive
decides: ``"fail_closed"`` refuses the call with
:class:`~techrevati.runtime.errors.StoreUnavailableError` (the default for
budgets), ``"fail_open"`` decides in this process with a local stand-in
holding this worker's share of the limits (``1 / fleet_size``; the default
for breakers and limiters). After a failure the store does not try Redis
again for ``retry_interval`` seconds, then does; listeners hear
``store.unavailable`` and ``store.recovered``, and each is logged. No
redis-py exception ever reaches the caller.

This module imports nothing from redis-py until a store is made.
"""

from __future__ import annotations

import inspect
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal

from techrevati.runtime._clock import Clock
from techrevati.runtime._log import get_logger
from techrevati.runtime._redis_scripts import Script
from techrevati.runtime._validate import callable_or_none, non_negative_number
from techrevati.runtime.errors import (
    InvalidValueError,
    MissingDependencyError,
    StoreUnavailableError,
)

if TYPE_CHECKING:
    import asyncio
    from concurrent.futures import Future
    from types import ModuleType

__all__ = ["FailurePolicy", "RedisStore", "StoreListener", "StoreUnavailableError"]

_LOG: Final = get_logger("techrevati.runtime.redis_store")

FailurePolicy = Literal["fail_open", "fail_closed"]
"""What a primitive does when the store cannot decide."""

StoreListener = Callable[[str, dict[str, object]], object]
"""Called with ``"store.unavailable"`` or ``"store.recovered"`` and facts about it."""

_POLICIES: Final = ("fail_open", "fail_closed")
_MIN_LEASE: Final = 0.001
_KINDS: Final = ("budget", "breaker", "limiter")
_FORBIDDEN_IN_NAMES: Final = frozenset("{}")


class RedisStore:
    """A Redis server holding the state of budgets, breakers and limiters shared by a fleet.

    ``client`` is a redis-py client (or compatible) with a
    ``socket_timeout``, so every call the store makes can time out:
    synchronous (``redis.Redis``, ``RedisCluster``) or asynchronous
    (``redis.asyncio.Redis``, its ``RedisCluster``). An async client is
    driven on the store's own event loop thread, so sync callers can use it
    too; give the store a client of its own (an asyncio connection belongs to
    one loop). Async entry points (``aacquire``, ``areserve``, ``acall``,
    ``async with breaker``, ``arun_turn``) await each decision, with either
    kind of client (a sync one on a worker thread), so the caller's loop
    keeps running; settlements are sent from sync code, one round trip each.
    ``prefix`` starts every key (letters, digits and ``_-.:``).
    ``budget_policy``, ``breaker_policy`` and ``limiter_policy`` say what
    each kind of primitive does when Redis cannot decide (see the module
    docstring); ``fleet_size`` (>= 1) is how many workers share the limits,
    so that a fail-open worker keeps ``1 / fleet_size`` of each.
    ``lease_ttl`` (seconds) is how long a budget hold, an open rate-limited
    call or a half-open probe outlives a worker that died holding it.
    ``retry_interval`` (seconds, on ``clock``) is how long after a failure
    the store decides locally before it tries Redis again.
    """

    __slots__ = (
        "_async",
        "_client",
        "_clock",
        "_errors",
        "_listeners",
        "_lock",
        "_loop",
        "_loop_pid",
        "_retry_at",
        "_time_offset_ms",
        "_unavailable",
        "_worker",
        "breaker_policy",
        "budget_policy",
        "fleet_size",
        "lease_ttl",
        "limiter_policy",
        "prefix",
        "retry_interval",
    )

    def __init__(
        self,
        client: object,
        *,
        prefix: str = "techrevati",
        budget_policy: FailurePolicy = "fail_closed",
        breaker_policy: FailurePolicy = "fail_open",
        limiter_policy: FailurePolicy = "fail_open",
        fleet_size: int = 1,
        lease_ttl: float = 120.0,
        retry_interval: float = 1.0,
        clock: Clock | None = None,
        listeners: Iterable[StoreListener] = (),
    ) -> None:
        redis = _redis_module()
        self._errors: tuple[type[BaseException], ...] = (redis.exceptions.RedisError, OSError)
        self._async = _check_client(client)
        self._client: Any = client
        self._loop: asyncio.AbstractEventLoop | None = None  # an async client's own loop
        self._loop_pid = 0
        self.prefix = _checked_name("prefix", prefix)
        """The start of every key this store writes."""
        self.budget_policy: FailurePolicy = _policy("budget_policy", budget_policy)
        self.breaker_policy: FailurePolicy = _policy("breaker_policy", breaker_policy)
        self.limiter_policy: FailurePolicy = _policy("limiter_policy", limiter_policy)
        if type(fleet_size) is not int or fleet_size < 1:
            raise InvalidValueError(f"fleet_size must be an int >= 1, got {fleet_size!r}")
        self.fleet_size = fleet_size
        """How many workers share the limits (a fail-open worker keeps its share)."""
        self.lease_ttl = non_negative_number("lease_ttl", lease_ttl, above_zero=True)
        if self.lease_ttl < _MIN_LEASE:
            raise InvalidValueError(
                f"lease_ttl must be at least {_MIN_LEASE} s (leases count in milliseconds), "
                f"got {lease_ttl!r}"
            )
        """Seconds a hold, an open call or a probe outlives the worker that took it."""
        self.retry_interval = non_negative_number("retry_interval", retry_interval)
        """Seconds after a failure before the store tries Redis again."""
        self._clock: Clock = callable_or_none("clock", clock) or time.monotonic
        self._lock = threading.Lock()
        self._unavailable: str | None = None  # why the last call failed; None: available
        self._retry_at = -math.inf
        self._time_offset_ms = 0  # tests move the server's clock forward with this
        self._worker = uuid.uuid4().hex[:12]
        self._listeners: list[StoreListener] = []
        for listener in listeners:
            self.add_listener(listener)

    @property
    def available(self) -> bool:
        """False from a failed call until the next call that reaches Redis succeeds."""
        return self._unavailable is None

    def add_listener(self, listener: StoreListener) -> None:
        """Call ``listener(event, data)`` on ``store.unavailable`` and ``store.recovered``."""
        if not callable(listener):
            raise InvalidValueError(f"listener must be callable, got {listener!r}")
        with self._lock:
            self._listeners.append(listener)

    def remove_listener(self, listener: StoreListener) -> None:
        """Stop calling ``listener``; a no-op if it was not added."""
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def policy(self, kind: str) -> FailurePolicy:
        """Return the failure policy for ``"budget"``, ``"breaker"`` or ``"limiter"``."""
        if kind == "budget":
            return self.budget_policy
        if kind == "breaker":
            return self.breaker_policy
        if kind == "limiter":
            return self.limiter_policy
        raise InvalidValueError(f"kind must be one of {', '.join(_KINDS)}, got {kind!r}")

    def share(self, limit: int) -> int:
        """Return this worker's share of ``limit`` when it decides alone (at least 1)."""
        return max(1, limit // self.fleet_size)

    def keys(self, kind: str, name: str, *parts: str) -> list[str]:
        """Return the keys of one primitive's state: one hash tag, so one cluster slot."""
        tag = f"{{{self.prefix}:{kind}:{name}}}"
        return [f"{tag}:{part}" for part in parts]

    def new_id(self) -> str:
        """Return a fresh id for a hold or a lease (unique across the fleet)."""
        return f"{self._worker}-{uuid.uuid4().hex[:16]}"

    def run(self, script: Script, keys: Sequence[str], args: Sequence[object], what: str) -> Any:
        """Run ``script`` on ``keys`` with ``args``; raise :class:`StoreUnavailableError` if not.

        ``what`` names the primitive for the error and the events. While the
        store is backing off after a failure, raises at once without
        calling Redis. With an async client the script runs on the store's
        own event loop thread and this call waits for it.
        """
        argv = self._argv(args, what)
        try:
            if self._async:
                result = self._on_own_loop(self._aeval(script, keys, argv)).result()
            else:
                result = self._eval(script, keys, argv)
        except self._errors as exc:
            raise self._unavailable_error(exc, what) from exc
        if self._unavailable is not None:
            self._recovered(what)
        return result

    async def arun(
        self, script: Script, keys: Sequence[str], args: Sequence[object], what: str
    ) -> Any:
        """Async twin of :meth:`run`: the caller's event loop keeps running meanwhile.

        With an async client the script runs on the store's own loop; with
        a sync client, on a worker thread.
        """
        import asyncio  # noqa: PLC0415 (only async callers need it)

        argv = self._argv(args, what)
        try:
            if self._async:
                result = await asyncio.wrap_future(
                    self._on_own_loop(self._aeval(script, keys, argv))
                )
            else:
                result = await asyncio.to_thread(self._eval, script, keys, argv)
        except self._errors as exc:
            raise self._unavailable_error(exc, what) from exc
        if self._unavailable is not None:
            self._recovered(what)
        return result

    def ping(self) -> bool:
        """Return True if Redis answers now (a health check; never raises)."""
        try:
            if self._async:
                return bool(self._on_own_loop(self._client.ping()).result())
            return bool(self._client.ping())
        except self._errors:
            return False

    def close(self) -> None:
        """Stop the store's own event loop thread (an async client's); the client stays open."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)

    def _argv(self, args: Sequence[object], what: str) -> tuple[object, ...]:
        """Refuse at once while backing off; else the script's arguments after the offset."""
        if self._unavailable is not None and self._clock() < self._retry_at:
            raise StoreUnavailableError(
                self.prefix, what, f"backing off after: {self._unavailable}"
            )
        return (self._time_offset_ms, *args)

    def _eval(self, script: Script, keys: Sequence[str], argv: Sequence[object]) -> Any:
        client = self._client
        try:
            return client.evalsha(script.sha, len(keys), *keys, *argv)
        except self._errors as exc:
            if not _is_noscript(exc):
                raise
            return client.eval(script.source, len(keys), *keys, *argv)

    async def _aeval(self, script: Script, keys: Sequence[str], argv: Sequence[object]) -> Any:
        client = self._client
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *argv)
        except self._errors as exc:
            if not _is_noscript(exc):
                raise
            return await client.eval(script.source, len(keys), *keys, *argv)

    def _on_own_loop(self, coroutine: Coroutine[Any, Any, Any]) -> Future[Any]:
        """Run ``coroutine`` on the store's own loop (started on first use, again after a fork)."""
        import asyncio  # noqa: PLC0415

        with self._lock:
            loop = self._loop
            if loop is None or self._loop_pid != os.getpid():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name=f"techrevati-store-{self.prefix}", daemon=True
                )
                thread.start()
                self._loop, self._loop_pid = loop, os.getpid()
        return asyncio.run_coroutine_threadsafe(coroutine, loop)

    def _unavailable_error(self, exc: BaseException, what: str) -> StoreUnavailableError:
        reason = f"{type(exc).__name__}: {exc}"
        self._failed(reason, what)
        return StoreUnavailableError(self.prefix, what, reason)

    def __repr__(self) -> str:
        state = "available" if self._unavailable is None else "unavailable"
        return f"RedisStore(prefix={self.prefix!r}, {state})"

    def _failed(self, reason: str, what: str) -> None:
        with self._lock:
            first = self._unavailable is None
            self._unavailable = reason
            self._retry_at = self._clock() + self.retry_interval
            listeners = tuple(self._listeners) if first else ()
        if first:
            _LOG.warning("store %r unavailable (%s): %s", self.prefix, what, reason)
            self._tell(listeners, "store.unavailable", {"reason": reason, "primitive": what})

    def _recovered(self, what: str) -> None:
        with self._lock:
            reason, self._unavailable = self._unavailable, None
            listeners = tuple(self._listeners) if reason is not None else ()
        if reason is not None:
            _LOG.info("store %r recovered (%s)", self.prefix, what)
            self._tell(listeners, "store.recovered", {"after": reason, "primitive": what})

    def _tell(
        self, listeners: tuple[StoreListener, ...], event: str, data: dict[str, object]
    ) -> None:
        data = {"store": self.prefix, **data}
        for listener in listeners:
            try:
                listener(event, dict(data))
            except Exception:
                _LOG.exception("store %r: listener %r failed on %s", self.prefix, listener, event)


class FallbackError(Exception):
    """Internal: the store could not decide, and the primitive decides locally (or not at all).

    Raised by a primitive's own step runner instead of
    :class:`StoreUnavailableError` when its policy is fail-open (or the step
    is one whose failure changes nothing the caller must hear of); never
    leaves the primitive.
    """


def checked_primitive_name(name: object) -> str:
    """Return ``name`` if it can name a primitive's keys, else raise InvalidValueError."""
    return _checked_name("name", name)


def _checked_name(field: str, name: object) -> str:
    if type(name) is not str or not name or not name.isprintable():
        raise InvalidValueError(f"{field} must be a non-empty printable str, got {name!r}")
    bad = sorted(_FORBIDDEN_IN_NAMES.intersection(name))
    if bad or any(char.isspace() for char in name):
        raise InvalidValueError(
            f"{field} {name!r} may not hold braces or spaces (they would break the key's hash tag)"
        )
    return name


def _policy(field: str, value: object) -> FailurePolicy:
    if value == "fail_open":
        return "fail_open"
    if value == "fail_closed":
        return "fail_closed"
    raise InvalidValueError(f"{field} must be one of {', '.join(_POLICIES)}, got {value!r}")


def _redis_module() -> ModuleType:
    try:
        import redis  # noqa: PLC0415 (optional extra, imported only when a store is made)
        import redis.exceptions  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependencyError("redis", "redis") from exc
    return redis


def _check_client(client: object) -> bool:
    """Refuse what cannot serve as a client (no script calls, no timeout); True if async."""
    for method in ("evalsha", "eval"):
        if not callable(getattr(client, method, None)):
            raise InvalidValueError(
                f"client must be a Redis client with {method}() (redis.Redis, RedisCluster, "
                f"or compatible), got {client!r}"
            )
    timeout = _socket_timeout(client)
    if timeout is None:
        raise InvalidValueError(
            f"client {client!r} has no socket_timeout: every store call must be able to time "
            "out; make the client with socket_timeout=<seconds>"
        )
    return any(
        inspect.iscoroutinefunction(getattr(client, method, None))
        for method in ("evalsha", "execute_command")
    )


def _socket_timeout(client: object) -> float | None:
    """Return the client's socket timeout, or -1.0 for a client whose kind is unknown here."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None)
    if kwargs is None:
        manager = getattr(client, "nodes_manager", None)
        kwargs = getattr(manager, "connection_kwargs", None)
    if not isinstance(kwargs, dict):
        return -1.0
    timeout = kwargs.get("socket_timeout")
    return None if timeout is None else float(timeout)


def _is_noscript(exc: BaseException) -> bool:
    return type(exc).__name__ == "NoScriptError" or str(exc).startswith("NOSCRIPT")
