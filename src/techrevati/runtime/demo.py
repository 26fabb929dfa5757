"""A simulated two-phase project run against a fake model provider with injected faults.

``python -m techrevati.runtime demo`` runs it: a writer and a reviewer work
through a draft and a review phase while the fake provider answers with a 429
carrying a wait hint, a timeout, an outage that opens the circuit breaker and
recovers, a context overflow; a tool is denied and a project budget stops the
run. Then the loop essentials: a checkpointed thread resumed after a simulated
crash, a governance breach, a context overflow healed by compacting the
memory, and a turn routed around an open breaker. A fixed seed and a fake
clock make every run print the same timeline in well under a second, with no
real waiting.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Final, TextIO

from techrevati.runtime.checkpoints import InMemorySaver
from techrevati.runtime.circuit_breaker import CircuitBreaker, CircuitOpenError
from techrevati.runtime.events import AgentEvent, EventName
from techrevati.runtime.governance import Governance, GovernanceBreachedError
from techrevati.runtime.hooks import BaseHook, GuardrailViolatedError, ToolCall
from techrevati.runtime.memory import ConversationMemory
from techrevati.runtime.orchestrator import Orchestrator, Session
from techrevati.runtime.permissions import (
    PermissionDeniedError,
    PermissionEnforcer,
    PermissionMode,
    PermissionPolicy,
    RolePermissionConfig,
)
from techrevati.runtime.policy_engine import (
    AllAgentsComplete,
    CostExceeded,
    PhaseCompleted,
    PolicyAction,
    PolicyActionData,
    PolicyEngine,
    PolicyRule,
    QualityAt,
)
from techrevati.runtime.quality_gate import QualityGate, QualityLevel
from techrevati.runtime.retry_policy import RetryPolicy
from techrevati.runtime.routing import Candidate, HealthAwareRouter
from techrevati.runtime.usage import (
    Budget,
    BudgetExceededError,
    ModelPricing,
    UsageSnapshot,
    register_pricing,
)

__all__ = ["run_demo"]

SEED: Final = 7
_START: Final = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


class FakeClock:
    """Monotonic seconds, a wall clock and a sleep that only advances time."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        """Return the fake monotonic time."""
        return self.now

    def wall(self) -> datetime:
        """Return the fake wall-clock time (UTC)."""
        return _START + timedelta(seconds=self.now)

    def sleep(self, seconds: float) -> None:
        """Advance time instead of waiting."""
        self.now += seconds


class RateLimitError(Exception):
    """A provider 429 with a retry-after hint, shaped like the SDKs' errors."""

    status_code = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.response = _Response(429, {"retry-after": str(retry_after)})


class APITimeoutError(TimeoutError):
    """The provider did not answer in time."""


class InternalServerError(Exception):
    """A provider 503 during an outage."""

    status_code = 503


class ContextOverflowError(Exception):
    """A 400 whose message says the prompt is too long."""

    status_code = 400


@dataclass(frozen=True)
class _Response:
    status_code: int
    headers: dict[str, str]


@dataclass
class FakeReply:
    """What the fake provider returns: text and an OpenAI-shaped usage object."""

    text: str
    usage: dict[str, int]


class FakeProvider:
    """Answers prompts after injecting scripted faults; advances the fake clock per call."""

    def __init__(self, clock: FakeClock, rng: random.Random) -> None:
        self._clock = clock
        self._rng = rng
        self._faults: list[Callable[[], BaseException] | None] = []
        self.calls = 0

    def script(self, *faults: Callable[[], BaseException] | None) -> None:
        """Queue faults for the next calls (``None`` answers normally)."""
        self._faults.extend(faults)

    def complete(self, prompt: str, model: str) -> FakeReply:
        """Answer ``prompt`` on ``model`` or raise the next scripted fault."""
        self.calls += 1
        self._clock.sleep(0.4 + self._rng.random() * 0.4)
        fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            raise fault()
        prompt_tokens = 800 + self._rng.randrange(400) + len(prompt) * 3
        completion_tokens = 300 + self._rng.randrange(300)
        return FakeReply(
            text=f"[{model}] answer to {prompt!r}",
            usage={"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens},
        )


class NoSecretsGuardrail(BaseHook):
    """Veto tool calls whose arguments mention a secret."""

    def before_tool(self, call: ToolCall) -> ToolCall | None:
        """Refuse any tool call carrying the word 'password'."""
        if any("password" in str(arg) for arg in call.args):
            raise GuardrailViolatedError("tool arguments mention a password")
        return None


def run_demo(out: TextIO, *, seed: int = SEED) -> int:
    """Run the simulated project, print a timeline and a cost table to ``out``; return 0."""
    clock = FakeClock()
    rng = random.Random(seed)
    provider = FakeProvider(clock, rng)
    register_pricing("gpt-demo", ModelPricing(input_per_million="2.50", output_per_million="10"))
    register_pricing("claude-demo", ModelPricing(input_per_million="3", output_per_million="15"))
    breaker = CircuitBreaker(
        "fake-provider", failure_threshold=3, recovery_timeout_seconds=30.0, clock=clock.monotonic
    )
    permissions = PermissionEnforcer(
        PermissionPolicy(
            role_configs={
                "writer": RolePermissionConfig(
                    role="writer", mode=PermissionMode.WORKSPACE_WRITE, denied_tools=["shell.*"]
                ),
                "reviewer": RolePermissionConfig(role="reviewer", mode=PermissionMode.READ_ONLY),
            },
            tool_requirements={
                "fs.write": PermissionMode.WORKSPACE_WRITE,
                "fs.read": PermissionMode.READ_ONLY,
            },
        )
    )
    project_budget = Budget(max_usd="0.05")
    engine = PolicyEngine(
        [
            PolicyRule(
                name="advance-when-reviewed",
                condition=PhaseCompleted() & QualityAt(QualityLevel.STANDARD),
                actions=[PolicyActionData(PolicyAction.ADVANCE_PHASE)],
                priority=10,
            ),
            PolicyRule(
                name="escalate-on-spend",
                condition=CostExceeded("0.02"),
                actions=[PolicyActionData(PolicyAction.ESCALATE, {"to": "human"})],
                priority=20,
            ),
            PolicyRule(
                name="all-done",
                condition=AllAgentsComplete(),
                actions=[PolicyActionData(PolicyAction.NOTIFY, {"channel": "log"})],
            ),
        ]
    )
    timeline: list[AgentEvent] = []

    class TimelineSink:
        def write_event(self, event: AgentEvent) -> None:
            timeline.append(event)

    def orchestrator(role: str, phase: str) -> Orchestrator:
        return Orchestrator(
            role,
            phase,
            project_id="demo",
            permissions=permissions,
            circuit_breaker=breaker,
            policy_engine=engine,
            quality_gate=QualityGate(QualityLevel.STANDARD),
            budget=project_budget,
            retry=RetryPolicy(max_attempts=4, rng=random.Random(seed)),
            hooks=[NoSecretsGuardrail()],
            sinks=[TimelineSink()],
            clock=clock.monotonic,
            wall_clock=clock.wall,
            sleep=clock.sleep,
        )

    def ask(session: Session, prompt: str, *, fallback: tuple[str, ...] = ()) -> str:
        def call(model: str) -> FakeReply:
            return provider.complete(prompt, model)

        reply, _usage = session.run_turn(
            call,
            model="gpt-demo",
            fallback_models=fallback,
            estimate=UsageSnapshot(input_tokens=2000, output_tokens=600),
        )
        return reply.text

    sessions: list[Session] = []
    print(
        "techrevati-runtime demo: a writer and a reviewer, two phases, a faulty provider\n",
        file=out,
    )

    # Phase 1: the writer drafts; the provider rate-limits, times out and rejects a long prompt.
    with orchestrator("writer", "draft").session() as writer:
        sessions.append(writer)
        provider.script(lambda: RateLimitError("rate limit reached", retry_after=2.0))
        ask(writer, "outline the article")
        provider.script(lambda: APITimeoutError("request timed out"))
        ask(writer, "write the introduction", fallback=("claude-demo",))
        provider.script(
            lambda: ContextOverflowError("This model's maximum context length is 8192 tokens")
        )
        with contextlib.suppress(ContextOverflowError):
            # A smaller prompt is the writer's job; the session goes on.
            ask(writer, "paste the whole archive")
        writer.run_tool("fs.write", lambda path, text: len(text), "draft.md", "# Draft")
        with contextlib.suppress(PermissionDeniedError):
            writer.run_tool("shell.exec", lambda cmd: cmd, "rm -rf /")
        with contextlib.suppress(GuardrailViolatedError):
            writer.run_tool("fs.write", lambda path, text: len(text), "notes.md", "password=x")

    # Phase 2: the reviewer; an outage opens the breaker, which recovers after 30 s.
    with orchestrator("reviewer", "review").session() as reviewer:
        sessions.append(reviewer)
        provider.script(*(lambda: InternalServerError("service unavailable") for _ in range(3)))
        with contextlib.suppress(InternalServerError, CircuitOpenError):
            ask(reviewer, "review the draft")
        try:
            ask(reviewer, "review the draft again")
        except CircuitOpenError as exc:
            clock.sleep(exc.retry_after)  # wait for the probe instead of hammering
        ask(reviewer, "review the draft once the provider is back")
        reviewer.evaluate_gate(QualityLevel.STRICT)
        actions = reviewer.evaluate_policy(phase_completed=True, quality_level=QualityLevel.STRICT)
        print(
            "policy actions after review: " + ", ".join(a.action.value for a in actions) + "\n",
            file=out,
        )

    # Phase 3: more drafting until the project budget stops the run.
    try:
        with orchestrator("writer", "revise").session() as reviser:
            sessions.append(reviser)
            for n in range(1, 100):
                ask(reviser, f"revise section {n}")
    except BudgetExceededError as exc:
        print(f"run stopped by the project budget: {exc}\n", file=out)

    _print_timeline(out, timeline)
    _print_costs(out, sessions, project_budget)
    _loop_essentials(out, clock, provider)
    return 0


class SimulatedCrashError(Exception):
    """Stands in for ``kill -9``: the process dies in the middle of a step."""


def _loop_essentials(out: TextIO, clock: FakeClock, provider: FakeProvider) -> None:
    """Checkpoints, governance, memory and routing: four scenes, each in its own session."""
    print("\nloop essentials", file=out)
    events: list[AgentEvent] = []

    class Sink:
        def write_event(self, event: AgentEvent) -> None:
            if event.name in _ESSENTIALS:
                events.append(event)

    def orchestrator(**kwargs: object) -> Orchestrator:
        return Orchestrator(
            "writer",
            "essentials",
            sinks=[Sink()],
            clock=clock.monotonic,
            wall_clock=clock.wall,
            sleep=clock.sleep,
            **kwargs,  # type: ignore[arg-type]
        )

    def answer(prompt: str) -> Callable[..., FakeReply]:
        return lambda model="gpt-demo": provider.complete(prompt, model)

    # 1. A checkpointed thread: three steps, a crash in the third, then the resumed process.
    threads = InMemorySaver(clock=clock.wall)
    try:
        with orchestrator(checkpoints=threads).session(thread_id="chapter-1") as first:
            state: dict[str, list[str]] = {"drafts": []}
            for step in (1, 2, 3):
                reply, _ = first.run_turn(answer(f"draft part {step}"), model="gpt-demo")
                state = {"drafts": [*state["drafts"], reply.text]}
                if step == 3:
                    raise SimulatedCrashError("killed in step 3, before its checkpoint")
                first.checkpoint(state)
    except SimulatedCrashError as crash:
        print(f"  crash: {crash} (paid so far ${first.tracker.total_cost()})", file=out)
    with orchestrator(checkpoints=threads).session(thread_id="chapter-1") as resumed:
        kept = len(resumed.state["drafts"])
        print(
            f"  resumed chapter-1 at step {resumed.step} with {kept} drafts and "
            f"${resumed.tracker.total_cost()}; step 3 runs again as {resumed.turn_key}",
            file=out,
        )
        reply, _ = resumed.run_turn(answer("draft part 3"), model="gpt-demo")
        resumed.checkpoint({"drafts": [*resumed.state["drafts"], reply.text]})
    print(
        f"  chapter-1 done at step {resumed.step}: ${resumed.tracker.total_cost()} "
        "for its three steps, each charged once",
        file=out,
    )

    # 2. Governance: a hard stop the agent cannot retry its way past.
    governed = orchestrator(governance=Governance(max_turns=2)).session()
    with governed, contextlib.suppress(GovernanceBreachedError):
        for n in range(1, 10):
            governed.run_turn(answer(f"brainstorm idea {n}"), model="gpt-demo")
    print(
        f"  governance: {governed.tracker.turns} turns ran, the session ended "
        f"{governed.summary()['failure_class']}",
        file=out,
    )

    # 3. A context overflow healed by compacting the memory, the turn retried once.
    memory = ConversationMemory()
    memory.append({"role": "system", "content": "You edit articles."})
    for n in range(40):
        memory.append({"role": "user", "content": f"note {n}: " + "background " * 30})
    provider.script(lambda: ContextOverflowError("maximum context length is 8192 tokens"))
    with orchestrator().session(memory=memory) as healed:
        healed.run_turn(
            lambda model="gpt-demo": provider.complete(str(list(memory.messages))[:40], model),
            model="gpt-demo",
        )
    print(f"  context overflow healed: memory down to {len(memory)} of 41 messages", file=out)

    # 4. A route around an open breaker: the primary provider is down, the spare answers.
    primary = CircuitBreaker("gpt-provider", failure_threshold=1, clock=clock.monotonic)
    primary.force_open()
    router = HealthAwareRouter(
        [
            Candidate("gpt-demo", "gpt-provider", breaker=primary),
            Candidate("claude-demo", "claude-provider"),
        ],
        explore=0,
        clock=clock.monotonic,
    )
    with orchestrator(router=router).session() as routed:
        reply, _ = routed.run_turn(
            lambda model: provider.complete("summarise", model), model="gpt-demo"
        )
    print(
        f"  routed: {reply.text.split(']')[0].strip('[')} answered, gpt-provider skipped", file=out
    )

    print(file=out)
    for event in events:
        offset = (event.timestamp - _START).total_seconds()
        print(f"  t+{offset:7.2f}s  {event.name:<22} {_describe(event)}", file=out)


_ESSENTIALS: Final = frozenset(
    {
        EventName.SESSION_RESUMED,
        EventName.CHECKPOINT_SAVED,
        EventName.GOVERNANCE_BREACHED,
        EventName.MEMORY_COMPACTED,
        EventName.TURN_ROUTED,
    }
)


def _print_timeline(out: TextIO, events: list[AgentEvent]) -> None:
    shown = {
        EventName.SESSION_STARTED,
        EventName.SESSION_COMPLETED,
        EventName.SESSION_FAILED,
        EventName.TURN_COMPLETED,
        EventName.TURN_FAILED,
        EventName.TURN_RETRIED,
        EventName.MODEL_SWITCHED,
        EventName.TOOL_COMPLETED,
        EventName.TOOL_DENIED,
        EventName.HOOK_VETOED,
        EventName.BUDGET_EXCEEDED,
        EventName.BREAKER_STATE_CHANGED,
        EventName.BREAKER_REJECTED,
        EventName.GATE_EVALUATED,
    }
    print("timeline", file=out)
    for event in events:
        if event.name not in shown:
            continue
        offset = (event.timestamp - _START).total_seconds()
        who = f"{event.role}/{event.phase}" if event.role else "-"
        print(f"  t+{offset:7.2f}s  {who:<16} {event.name:<22} {_describe(event)}", file=out)
    print(file=out)


def _describe(event: AgentEvent) -> str:
    data = event.data
    if event.name == EventName.TURN_COMPLETED:
        return (
            f"{data['model']} in={data['input_tokens']} out={data['output_tokens']} "
            f"${data['cost_usd']}"
        )
    if event.name == EventName.TURN_RETRIED:
        return f"retry in {float(str(data['delay_seconds'])):.2f}s ({data['scenario']})"
    if event.name == EventName.TOOL_COMPLETED:
        return str(data["tool"])
    if event.name == EventName.GATE_EVALUATED:
        verdict = "satisfied" if data["satisfied"] else "not satisfied"
        return f"observed {data['observed']} vs required {data['required']}: {verdict}"
    if event.name == EventName.SESSION_COMPLETED:
        return f"{data['turns']} turns, ${data['cost_usd']}"
    if event.name == EventName.CHECKPOINT_SAVED:
        return f"{data['thread_id']} step {data['step']}"
    parts = [p for p in (event.failure_class, event.detail) if p]
    return " ".join(str(p) for p in parts)


def _print_costs(out: TextIO, sessions: list[Session], budget: Budget) -> None:
    rows: dict[str, list[Decimal | int]] = {}
    for session in sessions:
        for model, entry in session.tracker.per_model_summary().items():
            row = rows.setdefault(model, [0, 0, 0, Decimal(0)])
            row[0] = int(row[0]) + int(str(entry["turns"]))
            row[1] = int(row[1]) + int(str(entry["input_tokens"]))
            row[2] = int(row[2]) + int(str(entry["output_tokens"]))
            row[3] = Decimal(row[3]) + Decimal(str(entry["cost_usd"]))
    print(f"{'model':<14}{'turns':>7}{'input':>9}{'output':>9}{'cost (USD)':>14}", file=out)
    total = Decimal(0)
    for model, (turns, tokens_in, tokens_out, cost) in sorted(rows.items()):
        total += Decimal(cost)
        print(f"{model:<14}{turns:>7}{tokens_in:>9}{tokens_out:>9}{cost:>14.6f}", file=out)
    print(f"{'total':<39}{total:>14.6f}", file=out)
    print(f"project budget: {budget.spent_usd} of {budget.limits.max_usd} USD spent", file=out)
