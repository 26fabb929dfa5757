"""OpenTelemetry traces from runtime events: a span per session, per model turn, per tool call.

Reach for :class:`OtelSink` when your traces already go to an OpenTelemetry
backend and you want agent sessions in them, with the GenAI semantic
convention attributes (``gen_ai.operation.name``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``...) plus ``techrevati.*`` ones (role, phase,
project, exact cost, failure class). It is an event sink: add it to the
orchestrator's ``sinks`` or a :class:`~techrevati.runtime.sinks.SinkFanout`.
OpenTelemetry is an optional extra (``pip install 'techrevati-runtime[otel]'``)
and is imported only when an :class:`OtelSink` is created, never by importing
this module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final

from techrevati.runtime.errors import InvalidValueError, MissingDependencyError
from techrevati.runtime.events import AgentEvent, EventName

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer, TracerProvider

__all__ = [
    "DEFAULT_MAX_OPEN_SESSIONS",
    "INSTRUMENTATION_NAME",
    "OTEL_EXTRA",
    "MissingDependencyError",
    "OtelSink",
]

DEFAULT_MAX_OPEN_SESSIONS: Final = 10_000
"""Session spans an :class:`OtelSink` keeps open before ending the oldest."""

INSTRUMENTATION_NAME: Final = "techrevati.runtime"
"""The tracer (instrumentation scope) name the spans are made with."""

OTEL_EXTRA: Final = "otel"
"""The package extra that installs OpenTelemetry."""

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND: Final = timedelta(microseconds=1)
_SESSION_END: Final = frozenset(
    {
        EventName.SESSION_COMPLETED.value,
        EventName.SESSION_FAILED.value,
        EventName.SESSION_CANCELLED.value,
    }
)
_TURN_ERRORS: Final = frozenset({EventName.TURN_FAILED.value, EventName.BREAKER_REJECTED.value})
_TOOL_ERRORS: Final = frozenset({EventName.TOOL_FAILED.value, EventName.TOOL_DENIED.value})
# Events recorded as span events on their session span.
_SPAN_EVENTS: Final = frozenset(
    {
        EventName.TURN_RETRIED.value,
        EventName.MODEL_SWITCHED.value,
        EventName.BUDGET_EXCEEDED.value,
        EventName.HOOK_VETOED.value,
        EventName.HANDOFF.value,
    }
)
_TOKEN_ATTRIBUTES: Final = (
    ("input_tokens", "gen_ai.usage.input_tokens"),
    ("output_tokens", "gen_ai.usage.output_tokens"),
    ("cache_read_tokens", "gen_ai.usage.cache_read.input_tokens"),
    ("cache_write_tokens", "gen_ai.usage.cache_creation.input_tokens"),
    ("cache_write_1h_tokens", "techrevati.usage.cache_creation_1h.input_tokens"),
    ("reasoning_tokens", "gen_ai.usage.reasoning.output_tokens"),
)


@dataclass(frozen=True, slots=True)
class _Api:
    """The OpenTelemetry names the sink uses, imported on demand."""

    trace: ModuleType
    span_kind: Any
    status: Any
    status_code: Any


class OtelSink:
    """Turn runtime events into OpenTelemetry spans.

    - ``session.started`` opens a span ``invoke_agent {role}`` (child of the
      span active in the caller, if any); ``session.completed`` / ``failed``
      / ``cancelled`` ends it at the event's time, failed and cancelled ones
      with status ERROR and ``error.type``.
    - ``turn.completed`` / ``turn.failed`` / ``breaker.rejected`` make a span
      ``chat {model}`` that starts ``duration_seconds`` before the event and
      ends at it, a child of its session's span (found by ``session_id``).
    - ``tool.completed`` / ``failed`` / ``denied`` make ``execute_tool {tool}``
      spans the same way.
    - ``breaker.state_changed`` and a few others (``turn.retried``,
      ``turn.model_switched``, ``budget.exceeded``, ``hook.vetoed``,
      ``handoff``) become span events on the session span; a breaker event
      without a ``session_id`` goes to every open session of the same role,
      phase and project.

    Pass your ``tracer_provider`` (or a ``tracer``); by default the global
    provider is used. At most ``max_open_sessions`` session spans stay open:
    beyond that the oldest is ended with ``techrevati.evicted = true``.
    Safe to share between threads.
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        tracer: Tracer | None = None,
        max_open_sessions: int = DEFAULT_MAX_OPEN_SESSIONS,
    ) -> None:
        if tracer is not None and tracer_provider is not None:
            raise InvalidValueError("pass tracer or tracer_provider, not both")
        if (
            not isinstance(max_open_sessions, int)
            or isinstance(max_open_sessions, bool)
            or max_open_sessions < 1
        ):
            raise InvalidValueError(
                f"max_open_sessions must be an int >= 1, got {max_open_sessions!r}"
            )
        api = _load_api()
        self._api = api
        if tracer is None:
            if tracer_provider is None:
                tracer = api.trace.get_tracer(INSTRUMENTATION_NAME)
            else:
                tracer = tracer_provider.get_tracer(INSTRUMENTATION_NAME)
        self._tracer: Tracer = tracer
        self._max_open = max_open_sessions
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[Span, tuple[str, str, object]]] = {}
        self._evicted = 0
        self._orphaned = 0
        self._handlers: dict[str, Callable[[AgentEvent], None]] = {
            EventName.SESSION_STARTED.value: self._session_started,
            EventName.BREAKER_STATE_CHANGED.value: self._breaker_changed,
        }
        for name in _SESSION_END:
            self._handlers[name] = self._session_ended
        for name in (EventName.TURN_COMPLETED.value, *_TURN_ERRORS):
            self._handlers[name] = self._turn
        for name in (EventName.TOOL_COMPLETED.value, *_TOOL_ERRORS):
            self._handlers[name] = self._tool
        for name in _SPAN_EVENTS:
            self._handlers[name] = self._session_event

    @property
    def open_sessions(self) -> int:
        """Session spans started and not yet ended."""
        with self._lock:
            return len(self._sessions)

    @property
    def evicted(self) -> int:
        """Session spans ended early because ``max_open_sessions`` were open."""
        return self._evicted

    @property
    def orphaned(self) -> int:
        """Span events dropped because no open session span matched them."""
        return self._orphaned

    def write_event(self, event: AgentEvent) -> None:
        """Make or end the span ``event`` stands for; other events are ignored. O(1)."""
        handler = self._handlers.get(event.name)
        if handler is not None:
            handler(event)

    def close(self) -> None:
        """End every session span still open (``techrevati.incomplete = true``)."""
        with self._lock:
            spans = [span for span, _ in self._sessions.values()]
            self._sessions.clear()
        for span in spans:
            span.set_attribute("techrevati.incomplete", True)
            span.end()

    def __repr__(self) -> str:
        return f"OtelSink(open_sessions={len(self._sessions)})"

    # -- handlers -------------------------------------------------------------------

    def _session_started(self, event: AgentEvent) -> None:
        if not event.session_id:
            return
        span = self._session_span(event, _ns(event.timestamp))
        owner = (event.role, event.phase, event.project_id)
        evict: list[Span] = []
        with self._lock:
            previous = self._sessions.pop(event.session_id, None)
            if previous is not None:
                evict.append(previous[0])
            self._sessions[event.session_id] = (span, owner)
            while len(self._sessions) > self._max_open:
                oldest = next(iter(self._sessions))
                evict.append(self._sessions.pop(oldest)[0])
                self._evicted += 1
        for old in evict:
            old.set_attribute("techrevati.evicted", True)
            old.end()

    def _session_ended(self, event: AgentEvent) -> None:
        if not event.session_id:
            return
        with self._lock:
            entry = self._sessions.pop(event.session_id, None)
        data = event.data
        end = _ns(event.timestamp)
        if entry is None:  # its start was never seen: rebuild it from the duration
            span = self._session_span(event, end - round(_duration(data) * 1e9))
        else:
            span = entry[0]
        span.set_attribute("techrevati.status", event.name.removeprefix("session."))
        for key in ("duration_seconds", "cost_usd", "turns"):
            value = data.get(key)
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                span.set_attribute(f"techrevati.{key}", value)
        if event.name != EventName.SESSION_COMPLETED.value:
            self._set_error(span, event)
        span.end(end_time=end)

    def _turn(self, event: AgentEvent) -> None:
        data = event.data
        model = data.get("model")
        attributes = _common(event)
        attributes["gen_ai.operation.name"] = "chat"
        if isinstance(model, str) and model:
            attributes["gen_ai.request.model"] = model
        for key, attribute in _TOKEN_ATTRIBUTES:
            value = data.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                attributes[attribute] = value
        for key in ("cost_usd", "attempt"):
            value = data.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool):
                attributes[f"techrevati.{key}"] = value
        name = f"chat {model}" if isinstance(model, str) and model else "chat"
        self._child_span(event, name, attributes, client=True, failed=event.name in _TURN_ERRORS)

    def _tool(self, event: AgentEvent) -> None:
        tool = event.data.get("tool")
        attributes = _common(event)
        attributes["gen_ai.operation.name"] = "execute_tool"
        if isinstance(tool, str) and tool:
            attributes["gen_ai.tool.name"] = tool
        name = f"execute_tool {tool}" if isinstance(tool, str) and tool else "execute_tool"
        self._child_span(event, name, attributes, client=False, failed=event.name in _TOOL_ERRORS)

    def _breaker_changed(self, event: AgentEvent) -> None:
        data = event.data
        attributes: dict[str, str | int | float | bool] = {}
        for key in ("breaker", "from_state", "to_state"):
            value = data.get(key)
            if isinstance(value, str):
                attributes[f"techrevati.{key}"] = value
        owner = (event.role, event.phase, event.project_id)
        with self._lock:
            if event.session_id:
                entry = self._sessions.get(event.session_id)
                targets = [] if entry is None else [entry[0]]
            else:
                targets = [span for span, of in self._sessions.values() if of == owner]
            if not targets:
                self._orphaned += 1
        for span in targets:
            span.add_event(str(event.name), attributes=attributes, timestamp=_ns(event.timestamp))

    def _session_event(self, event: AgentEvent) -> None:
        with self._lock:
            entry = self._sessions.get(event.session_id) if event.session_id else None
            if entry is None:
                self._orphaned += 1
                return
        span = entry[0]
        attributes: dict[str, str | int | float | bool] = {}
        if event.detail:
            attributes["techrevati.detail"] = event.detail
        if event.failure_class is not None:
            attributes["techrevati.failure_class"] = event.failure_class.value
        for key, value in event.data.items():
            if isinstance(value, (str, int, float, bool)):
                attributes[f"techrevati.{key}"] = value
        span.add_event(str(event.name), attributes=attributes, timestamp=_ns(event.timestamp))

    # -- helpers --------------------------------------------------------------------

    def _child_span(
        self,
        event: AgentEvent,
        name: str,
        attributes: dict[str, str | int | float | bool],
        *,
        client: bool,
        failed: bool,
    ) -> None:
        api = self._api
        with self._lock:
            entry = self._sessions.get(event.session_id) if event.session_id else None
        context = None if entry is None else api.trace.set_span_in_context(entry[0])
        end = _ns(event.timestamp)
        start = end - round(_duration(event.data) * 1e9)
        span = self._tracer.start_span(
            name,
            context=context,
            kind=api.span_kind.CLIENT if client else api.span_kind.INTERNAL,
            start_time=start,
            attributes=attributes,
        )
        if failed:
            self._set_error(span, event)
        span.end(end_time=end)

    def _session_span(self, event: AgentEvent, start_time: int) -> Span:
        attributes = _common(event)
        attributes["gen_ai.operation.name"] = "invoke_agent"
        attributes["gen_ai.conversation.id"] = event.session_id
        if event.role:
            attributes["gen_ai.agent.name"] = event.role
        if event.worker_id:
            attributes["gen_ai.agent.id"] = event.worker_id
        return self._tracer.start_span(
            f"invoke_agent {event.role}".rstrip(),
            kind=self._api.span_kind.INTERNAL,
            start_time=start_time,
            attributes=attributes,
        )

    def _set_error(self, span: Span, event: AgentEvent) -> None:
        error_type = event.data.get("error_type")
        failure = None if event.failure_class is None else event.failure_class.value
        if not isinstance(error_type, str) or not error_type:
            error_type = failure or "unknown"
        span.set_attribute("error.type", error_type)
        if failure is not None:
            span.set_attribute("techrevati.failure_class", failure)
        span.set_status(self._api.status(self._api.status_code.ERROR, event.detail or error_type))


def _load_api() -> _Api:
    """Import OpenTelemetry now, or say which extra installs it."""
    try:  # imported here, not at the top: the extra is optional
        from opentelemetry import trace  # noqa: PLC0415
        from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: PLC0415
    except ImportError as exc:
        raise MissingDependencyError("opentelemetry-api", OTEL_EXTRA) from exc
    return _Api(trace=trace, span_kind=SpanKind, status=Status, status_code=StatusCode)


def _common(event: AgentEvent) -> dict[str, str | int | float | bool]:
    attributes: dict[str, str | int | float | bool] = {}
    if event.role:
        attributes["techrevati.role"] = event.role
    if event.phase:
        attributes["techrevati.phase"] = event.phase
    if event.project_id is not None:
        attributes["techrevati.project_id"] = event.project_id
    if event.session_id:
        attributes["techrevati.session_id"] = event.session_id
    if event.worker_id:
        attributes["techrevati.worker_id"] = event.worker_id
    return attributes


def _duration(data: Mapping[str, object]) -> float:
    value = data.get("duration_seconds")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return 0.0


def _ns(when: datetime) -> int:
    """Nanoseconds since the epoch, exact to the microsecond."""
    return (when - _EPOCH) // _MICROSECOND * 1000
