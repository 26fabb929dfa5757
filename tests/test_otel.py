from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from techrevati.runtime.errors import InvalidValueError, TechrevatiError
from techrevati.runtime.events import AgentEvent, AgentFailureClass, EventSink, UsageSink
from techrevati.runtime.otel import MissingDependencyError, OtelSink
from techrevati.runtime.sinks import SinkFanout

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T0_NS = 1_767_268_800_000_000_000


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ns(seconds: float) -> int:
    return T0_NS + round(seconds * 1e9)


class Traces:
    """A private tracer provider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.spans() if s.name == name]
        return span


@pytest.fixture
def traces() -> Traces:
    return Traces()


@pytest.fixture
def sink(traces: Traces) -> OtelSink:
    return OtelSink(tracer_provider=traces.provider)


def ev(
    name: str,
    seconds: float,
    *,
    session_id: str = "s1",
    role: str = "writer",
    project_id: str | int | None = 42,
    failure: AgentFailureClass | None = None,
    detail: str | None = None,
    **data: object,
) -> AgentEvent:
    return AgentEvent(
        name=name,
        role=role,
        phase="draft",
        failure_class=failure,
        detail=detail,
        data=data,
        timestamp=at(seconds),
        session_id=session_id,
        worker_id=f"w-{session_id}",
        project_id=project_id,
    )


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def test_importing_the_module_does_not_import_opentelemetry() -> None:
    code = (
        "import sys, techrevati.runtime.otel\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')\n"
        "print(loaded)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "[]"


def test_a_missing_opentelemetry_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(MissingDependencyError) as info:
        OtelSink()
    error = info.value
    assert isinstance(error, ImportError)
    assert isinstance(error, TechrevatiError)
    assert "pip install 'techrevati-runtime[otel]'" in str(error)
    assert (error.package, error.extra, error.name) == ("opentelemetry-api", "otel", error.package)
    assert isinstance(error.__cause__, ImportError)


def test_a_session_becomes_a_span_with_its_turns_as_timed_children(
    traces: Traces, sink: OtelSink
) -> None:
    sink.write_event(ev("session.started", 0))
    sink.write_event(
        ev(
            "turn.completed",
            2.5,
            model="model-a",
            duration_seconds=1.5,
            input_tokens=5000,
            output_tokens=1200,
            cache_read_tokens=1000,
            cache_write_tokens=10,
            cache_write_1h_tokens=4,
            reasoning_tokens=300,
            cost_usd="0.033",
            attempt=1,
        )
    )
    sink.write_event(ev("session.completed", 4, duration_seconds=4.0, cost_usd="0.033", turns=1))
    session, turn = traces.named("invoke_agent writer"), traces.named("chat model-a")
    assert (turn.start_time, turn.end_time) == (ns(1.0), ns(2.5))
    assert (session.start_time, session.end_time) == (ns(0), ns(4))
    assert turn.parent is not None
    assert turn.parent.span_id == session.context.span_id
    assert turn.context.trace_id == session.context.trace_id
    assert turn.kind is SpanKind.CLIENT
    assert attrs(turn) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "model-a",
        "gen_ai.usage.input_tokens": 5000,
        "gen_ai.usage.output_tokens": 1200,
        "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.cache_creation.input_tokens": 10,
        "techrevati.usage.cache_creation_1h.input_tokens": 4,
        "gen_ai.usage.reasoning.output_tokens": 300,
        "techrevati.cost_usd": "0.033",
        "techrevati.attempt": 1,
        "techrevati.role": "writer",
        "techrevati.phase": "draft",
        "techrevati.project_id": 42,
        "techrevati.session_id": "s1",
        "techrevati.worker_id": "w-s1",
    }
    assert turn.status.status_code is StatusCode.UNSET
    session_attrs = attrs(session)
    assert session_attrs["gen_ai.operation.name"] == "invoke_agent"
    assert session_attrs["gen_ai.agent.name"] == "writer"
    assert session_attrs["gen_ai.conversation.id"] == "s1"
    assert session_attrs["techrevati.status"] == "completed"
    assert session_attrs["techrevati.cost_usd"] == "0.033"
    assert session_attrs["techrevati.turns"] == 1
    assert session.status.status_code is StatusCode.UNSET
    assert sink.open_sessions == 0


def test_a_failed_turn_is_an_error_span_with_error_type(traces: Traces, sink: OtelSink) -> None:
    sink.write_event(ev("session.started", 0))
    sink.write_event(
        ev(
            "turn.failed",
            3,
            failure=AgentFailureClass.RATE_LIMIT,
            detail="RateLimitError: slow down",
            model="model-a",
            duration_seconds=0.25,
            error_type="RateLimitError",
        )
    )
    sink.write_event(
        ev(
            "breaker.rejected",
            4,
            failure=AgentFailureClass.DEPENDENCY_FAILED,
            model="model-a",
            duration_seconds=0.0,
        )
    )
    failed, rejected = [s for s in traces.spans() if s.name == "chat model-a"]
    assert (failed.start_time, failed.end_time) == (ns(2.75), ns(3))
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "RateLimitError: slow down"
    assert attrs(failed)["error.type"] == "RateLimitError"
    assert attrs(failed)["techrevati.failure_class"] == "rate_limit"
    assert attrs(rejected)["error.type"] == "dependency_failed"  # no error_type: the class
    assert rejected.start_time == rejected.end_time == ns(4)


def test_tool_calls_become_execute_tool_spans(traces: Traces, sink: OtelSink) -> None:
    sink.write_event(ev("session.started", 0))
    sink.write_event(ev("tool.completed", 2, tool="search", duration_seconds=0.5))
    sink.write_event(
        ev(
            "tool.failed",
            3,
            failure=AgentFailureClass.TOOL_ERROR,
            tool="fetch",
            duration_seconds=1.0,
            error_type="TimeoutError",
        )
    )
    sink.write_event(ev("tool.denied", 4, failure=AgentFailureClass.PERMISSION_DENIED, tool="rm"))
    tools = traces.spans()  # the session is still open
    assert [s.name for s in tools] == [
        "execute_tool search",
        "execute_tool fetch",
        "execute_tool rm",
    ]
    search, fetch, rm = tools
    assert (search.start_time, search.end_time) == (ns(1.5), ns(2))
    assert attrs(search)["gen_ai.operation.name"] == "execute_tool"
    assert attrs(search)["gen_ai.tool.name"] == "search"
    assert search.kind is SpanKind.INTERNAL
    assert search.status.status_code is StatusCode.UNSET
    assert attrs(fetch)["error.type"] == "TimeoutError"
    assert attrs(rm)["error.type"] == "permission_denied"
    assert rm.status.status_code is StatusCode.ERROR
    sink.write_event(ev("session.completed", 5))
    session = traces.named("invoke_agent writer")
    assert {s.parent.span_id for s in tools if s.parent} == {session.context.span_id}


@pytest.mark.parametrize(
    ("end", "failure", "error_type"),
    [
        ("session.failed", AgentFailureClass.BUDGET_EXCEEDED, "BudgetExceededError"),
        ("session.cancelled", AgentFailureClass.CANCELLED, None),
    ],
)
def test_failed_and_cancelled_sessions_end_with_error_status(
    traces: Traces,
    sink: OtelSink,
    end: str,
    failure: AgentFailureClass,
    error_type: str | None,
) -> None:
    sink.write_event(ev("session.started", 0))
    data: dict[str, object] = {"duration_seconds": 9.0, "cost_usd": "1.5", "turns": 3}
    if error_type:
        data["error_type"] = error_type
    sink.write_event(
        AgentEvent(
            name=end,
            role="writer",
            failure_class=failure,
            data=data,
            timestamp=at(9),
            session_id="s1",
        )
    )
    (session,) = traces.spans()
    assert session.status.status_code is StatusCode.ERROR
    assert attrs(session)["error.type"] == (error_type or failure.value)
    assert attrs(session)["techrevati.failure_class"] == failure.value
    assert attrs(session)["techrevati.status"] == end.removeprefix("session.")


def test_breaker_changes_are_span_events_on_the_sessions_they_touch(
    traces: Traces, sink: OtelSink
) -> None:
    sink.write_event(ev("session.started", 0, session_id="mine"))
    sink.write_event(ev("session.started", 0, session_id="other-role", role="reviewer"))
    change = ev(
        "breaker.state_changed",
        2,
        session_id="",
        breaker="model-api",
        from_state="closed",
        to_state="open",
    )
    sink.write_event(change)
    sink.write_event(ev("breaker.state_changed", 3, session_id="", role="nobody", breaker="x"))
    sink.write_event(
        ev("turn.retried", 3.5, session_id="mine", failure=AgentFailureClass.RATE_LIMIT, attempt=1)
    )
    for sid in ("mine", "other-role"):
        sink.write_event(ev("session.completed", 5, session_id=sid))
    mine, other = traces.spans()
    assert [e.name for e in mine.events] == ["breaker.state_changed", "turn.retried"]
    breaker = mine.events[0]
    assert breaker.timestamp == ns(2)
    assert dict(breaker.attributes or {}) == {
        "techrevati.breaker": "model-api",
        "techrevati.from_state": "closed",
        "techrevati.to_state": "open",
    }
    assert dict(mine.events[1].attributes or {})["techrevati.failure_class"] == "rate_limit"
    assert list(other.events) == []
    assert sink.orphaned == 1


def test_a_session_end_without_its_start_rebuilds_the_span_from_the_duration(
    traces: Traces, sink: OtelSink
) -> None:
    sink.write_event(ev("turn.completed", 1, session_id="late", model="m", duration_seconds=1))
    sink.write_event(ev("session.completed", 10, session_id="late", duration_seconds=7.5))
    turn, session = traces.spans()
    assert turn.parent is None  # no session span existed yet
    assert (session.start_time, session.end_time) == (ns(2.5), ns(10))


def test_open_session_spans_are_bounded_and_closed_at_close(traces: Traces) -> None:
    sink = OtelSink(tracer_provider=traces.provider, max_open_sessions=2)
    for n in range(3):
        sink.write_event(ev("session.started", n, session_id=f"s{n}"))
    assert (sink.open_sessions, sink.evicted) == (2, 1)
    (evicted,) = traces.spans()
    assert attrs(evicted)["techrevati.evicted"] is True
    assert attrs(evicted)["gen_ai.conversation.id"] == "s0"
    sink.close()
    assert sink.open_sessions == 0
    assert [attrs(s).get("techrevati.incomplete") for s in traces.spans()] == [None, True, True]


def test_the_session_span_nests_under_the_callers_active_span(
    traces: Traces, sink: OtelSink
) -> None:
    tracer = traces.provider.get_tracer("app")
    with tracer.start_as_current_span("http request") as request:
        sink.write_event(ev("session.started", 0))
        sink.write_event(ev("session.completed", 1))
    session = traces.named("invoke_agent writer")
    assert session.parent is not None
    assert session.parent.span_id == request.get_span_context().span_id


def test_spans_stay_with_their_sessions_when_hammered_from_threads(
    traces: Traces, sink: OtelSink
) -> None:
    threads_n, sessions_each, turns_each = 8, 25, 3

    def run(worker: int) -> None:
        for n in range(sessions_each):
            sid = f"t{worker}-{n}"
            sink.write_event(ev("session.started", 0, session_id=sid))
            for turn in range(turns_each):
                sink.write_event(
                    ev("turn.completed", turn + 1, session_id=sid, model=sid, duration_seconds=1)
                )
            sink.write_event(ev("session.completed", 10, session_id=sid))

    threads = [threading.Thread(target=run, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    spans = traces.spans()
    sessions = {
        attrs(s)["techrevati.session_id"]: s for s in spans if s.name.startswith("invoke_agent")
    }
    turns = [s for s in spans if s.name.startswith("chat ")]
    assert len(sessions) == threads_n * sessions_each
    assert len(turns) == threads_n * sessions_each * turns_each
    for turn in turns:
        owner = sessions[attrs(turn)["gen_ai.request.model"]]
        assert turn.parent is not None
        assert turn.parent.span_id == owner.context.span_id
    assert sink.open_sessions == 0


def test_otel_sink_is_an_event_sink_that_works_behind_a_fanout(traces: Traces) -> None:
    sink = OtelSink(tracer=traces.provider.get_tracer("custom"))
    assert isinstance(sink, EventSink)
    assert not isinstance(sink, UsageSink)
    fanout = SinkFanout([sink])
    fanout.write_event(ev("session.started", 0))
    fanout.write_event(ev("worker.status_changed", 0.5))  # ignored: no span for it
    fanout.write_event(ev("session.completed", 1))
    (span,) = traces.spans()
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "custom"
    assert fanout.failure_count == 0


def test_otel_sink_rejects_bad_arguments(traces: Traces) -> None:
    with pytest.raises(InvalidValueError, match="pass tracer or tracer_provider, not both"):
        OtelSink(tracer_provider=traces.provider, tracer=traces.provider.get_tracer("x"))
    with pytest.raises(InvalidValueError, match="max_open_sessions must be an int >= 1, got 0"):
        OtelSink(tracer_provider=traces.provider, max_open_sessions=0)


def test_by_default_spans_go_to_the_global_tracer_provider_even_one_set_later(
    traces: Traces, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry import trace
    from opentelemetry.util._once import Once

    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # restored after the test
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", Once())
    sink = OtelSink()  # no provider yet: the global proxy
    trace.set_tracer_provider(traces.provider)
    sink.write_event(ev("session.started", 0))
    sink.write_event(ev("session.completed", 1))
    (span,) = traces.spans()
    assert span.name == "invoke_agent writer"
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "techrevati.runtime"


def test_span_events_with_no_open_session_are_counted_as_orphaned(
    traces: Traces, sink: OtelSink
) -> None:
    sink.write_event(ev("turn.retried", 1, session_id="never-started", attempt=1))
    sink.write_event(ev("budget.exceeded", 2, session_id=""))
    sink.write_event(ev("breaker.state_changed", 3, session_id="never-started", breaker="b"))
    assert sink.orphaned == 3
    sink.write_event(ev("session.started", 4, session_id="s1"))
    sink.write_event(ev("breaker.state_changed", 5, session_id="s1", breaker="b", to_state=7))
    sink.write_event(ev("handoff", 6, session_id="s1", detail="to reviewer", to="reviewer"))
    sink.write_event(ev("session.completed", 7, session_id="s1"))
    assert sink.orphaned == 3
    (session,) = traces.spans()
    assert [(e.name, dict(e.attributes or {})) for e in session.events] == [
        ("breaker.state_changed", {"techrevati.breaker": "b"}),  # a non-text state is left out
        ("handoff", {"techrevati.detail": "to reviewer", "techrevati.to": "reviewer"}),
    ]
    assert [e.timestamp for e in session.events] == [ns(5), ns(6)]


def test_span_events_keep_only_scalar_data(traces: Traces, sink: OtelSink) -> None:
    sink.write_event(ev("session.started", 0))
    sink.write_event(
        ev(
            "turn.model_switched",
            1,
            failure=AgentFailureClass.RATE_LIMIT,
            to_model="m2",
            attempt=2,
            ratio=0.5,
            fallback=True,
            models=["m1", "m2"],
            extra={"k": 1},
            nothing=None,
        )
    )
    sink.write_event(ev("session.completed", 2))
    (event,) = traces.named("invoke_agent writer").events
    assert dict(event.attributes or {}) == {
        "techrevati.failure_class": "rate_limit",
        "techrevati.to_model": "m2",
        "techrevati.attempt": 2,
        "techrevati.ratio": 0.5,
        "techrevati.fallback": True,
    }


def test_session_events_without_a_session_id_make_no_span(traces: Traces, sink: OtelSink) -> None:
    sink.write_event(ev("session.started", 0, session_id=""))
    sink.write_event(ev("session.failed", 1, session_id=""))
    assert sink.open_sessions == 0
    assert traces.spans() == []


def test_a_session_started_again_ends_its_first_span_as_evicted(
    traces: Traces, sink: OtelSink
) -> None:
    sink.write_event(ev("session.started", 0))
    sink.write_event(ev("session.started", 1))
    assert (sink.open_sessions, sink.evicted) == (1, 0)  # replaced, not evicted for room
    (first,) = traces.spans()
    assert attrs(first)["techrevati.evicted"] is True
    assert first.start_time == ns(0)
    sink.write_event(ev("session.completed", 2))
    second = traces.spans()[1]
    assert (second.start_time, second.end_time) == (ns(1), ns(2))
    assert "techrevati.evicted" not in attrs(second)


def test_spans_of_anonymous_events_carry_only_what_the_event_says(
    traces: Traces, sink: OtelSink
) -> None:
    bare = AgentEvent(name="session.started", session_id="s", timestamp=at(0))
    sink.write_event(bare)
    sink.write_event(AgentEvent(name="turn.completed", session_id="s", timestamp=at(1)))
    sink.write_event(AgentEvent(name="tool.completed", session_id="s", timestamp=at(2)))
    sink.write_event(
        AgentEvent(name="session.failed", session_id="s", timestamp=at(3), data={"error_type": ""})
    )
    session, turn, tool = (traces.named(n) for n in ("invoke_agent", "chat", "execute_tool"))
    assert attrs(turn) == {"gen_ai.operation.name": "chat", "techrevati.session_id": "s"}
    assert attrs(tool) == {"gen_ai.operation.name": "execute_tool", "techrevati.session_id": "s"}
    assert attrs(session) == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.conversation.id": "s",
        "techrevati.session_id": "s",
        "techrevati.status": "failed",
        "error.type": "unknown",  # neither an error type nor a failure class
    }
    assert session.status.status_code is StatusCode.ERROR
    assert session.status.description == "unknown"


def test_otel_sink_repr_counts_its_open_sessions(sink: OtelSink) -> None:
    sink.write_event(ev("session.started", 0))
    assert repr(sink) == "OtelSink(open_sessions=1)"
