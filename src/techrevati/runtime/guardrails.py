"""Content guardrails: checks on the values that flow through tool calls, model output and sinks.

Permissions decide *who* may call a tool (role x tool); guardrails look at
*what* goes in and out (value x context). Each guardrail is a plain object
with ``check(value) -> GuardrailResult`` that you can call on its own, and
:class:`GuardrailHook` runs a list of them as a session hook: on tool
arguments (``before_tool``), tool results (``after_tool``) and model output
(``after_model``). Three come built in:

- :class:`PatternGuardrail`: your deny regexes (with allow exceptions) on
  arguments and results;
- :class:`PiiRedactor`: emails, phone numbers, card numbers (Luhn), IBANs
  (mod-97) and API-key-shaped secrets, replaced by ``[email]`` and the like;
- :class:`InjectionDetector`: prompt-injection heuristics on tool output
  (phrasings, chat markup, hidden text), neutralised by default.

Each finding names the rule that fired and where, never the text it matched.
An action says what happens then: ``"flag"`` (report), ``"redact"`` (replace
the span) or ``"block"`` (refuse: the hook raises
:class:`~techrevati.runtime.errors.GuardrailViolatedError`).
:func:`redacting_sink` puts a redactor in front of any event sink, and
:func:`redacting_inputs` in front of a model call's messages. The detectors
are heuristics: docs/guardrails.md gives their measured precision and recall
and what they miss.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final, ParamSpec, TypeVar, cast

from techrevati.runtime._guardrail_core import (
    DEFAULT_MAX_DEPTH,
    Guardrail,
    GuardrailAction,
    GuardrailFinding,
    GuardrailResult,
    GuardrailTarget,
    Hit,
    SpanIndex,
    TextGuardrail,
    checked_template,
)
from techrevati.runtime._guardrail_injection import INJECTION_RULES, InjectionDetector
from techrevati.runtime._pii import PII_KINDS, PiiKind, PiiRedactor, iban_valid, luhn_valid
from techrevati.runtime._validate import callable_or_none, int_at_least, strict_bool
from techrevati.runtime.errors import GuardrailViolatedError, InvalidValueError
from techrevati.runtime.events import AgentEvent, EventSink, UsageRecord, UsageSink
from techrevati.runtime.hooks import BaseHook, ModelCall, ToolCall

__all__ = [
    "DEFAULT_MAX_CHARS",
    "DEFAULT_MAX_DEPTH",
    "GUARDRAIL_FIRED",
    "INJECTION_RULES",
    "MODEL_INPUT_KEYS",
    "PII_KINDS",
    "Guardrail",
    "GuardrailAction",
    "GuardrailFinding",
    "GuardrailHook",
    "GuardrailReport",
    "GuardrailResult",
    "GuardrailTarget",
    "GuardrailViolatedError",
    "InjectionDetector",
    "PatternGuardrail",
    "PiiKind",
    "PiiRedactor",
    "iban_valid",
    "luhn_valid",
    "redacting_inputs",
    "redacting_sink",
]

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_MAX_CHARS: Final = 1_000_000
"""The longest string a :class:`PatternGuardrail` scans; a longer one fires ``<name>.too_long``."""

GUARDRAIL_FIRED: Final = "guardrail.fired"
"""The name of the event :class:`GuardrailHook` writes to its ``sink`` when a rule fires."""

MODEL_INPUT_KEYS: Final = ("messages", "input", "system", "contents", "instructions", "prompt")
"""The keyword arguments :func:`redacting_inputs` redacts: each SDK's name for the prompt."""

Pattern = str | re.Pattern[str]


class PatternGuardrail(TextGuardrail):
    r"""Your regexes on arguments and results: a ``deny`` match fires unless ``allow`` covers it.

    ``deny`` is a list of patterns (rules ``<name>.deny[0]``, ...) or a mapping
    of rule names to patterns (``<name>.<key>``). A deny match lying wholly
    inside a match of an ``allow`` pattern (in the same string) does not fire:
    ``deny=[r"https?://\S+"], allow=[r"https://docs\.python\.org/\S*"]``
    refuses every URL but the docs'. Patterns are compiled once, here; a bad
    one raises :class:`InvalidValueError` naming it. Empty matches never fire.

    Python's ``re`` backtracks, so a pattern of yours with nested repeats
    (``(a+)+$``) can take exponential time on a crafted input; that risk is
    yours to avoid. What bounds it here is ``max_chars``: a string longer
    than that is not scanned at all and fires ``<name>.too_long`` instead
    (refused, flagged, or replaced whole, as the action says).
    """

    __slots__ = ("_allow", "_deny", "_max_chars", "_template")

    def __init__(
        self,
        deny: Iterable[Pattern] | Mapping[str, Pattern],
        allow: Iterable[Pattern] = (),
        *,
        action: GuardrailAction = "block",
        on: GuardrailTarget | Iterable[GuardrailTarget] = ("arguments", "results"),
        replacement: str = "[redacted]",
        name: str = "pattern",
        max_chars: int = DEFAULT_MAX_CHARS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        super().__init__(name, action, on, max_depth)
        if isinstance(deny, Mapping):
            named = [(f"{name}.{key}", f"deny[{key!r}]", value) for key, value in deny.items()]
        elif isinstance(deny, str | re.Pattern):
            raise InvalidValueError(f"deny must be a list or mapping of patterns, got {deny!r}")
        else:
            named = [(f"{name}.deny[{i}]", f"deny[{i}]", value) for i, value in enumerate(deny)]
        if not named:
            raise InvalidValueError("deny must hold at least one pattern")
        self._deny = tuple((rule, _compiled(label, value)) for rule, label, value in named)
        if isinstance(allow, str | re.Pattern):
            raise InvalidValueError(f"allow must be a list of patterns, got {allow!r}")
        self._allow = tuple(_compiled(f"allow[{i}]", value) for i, value in enumerate(allow))
        self._template = checked_template("replacement", replacement, rule="pattern.deny[0]")
        self._max_chars = int_at_least("max_chars", max_chars, 1)

    @property
    def rules(self) -> tuple[str, ...]:
        """The rule names of the deny patterns, in order."""
        return tuple(rule for rule, _ in self._deny)

    def _scan(self, text: str, key: object) -> list[Hit]:
        if len(text) > self._max_chars:
            rule = f"{self._name}.too_long"
            reason = f"{len(text)} characters, more than max_chars={self._max_chars}; not scanned"
            return [Hit(rule, 0, len(text), reason, self._replacement(rule))]
        hits: list[Hit] = []
        allowed: SpanIndex | None = None
        for rule, pattern in self._deny:
            for match in pattern.finditer(text):
                start, end = match.span()
                if start == end:
                    continue
                if self._allow:
                    if allowed is None:
                        allowed = SpanIndex(
                            m.span()
                            for p in self._allow
                            for m in p.finditer(text)
                            if m.end() > m.start()
                        )
                    if allowed.contains(start, end):
                        continue
                reason = f"matches {pattern.pattern[:60]!r}"
                hits.append(Hit(rule, start, end, reason, self._replacement(rule)))
        return hits

    def _replacement(self, rule: str) -> str:
        return self._template.format(rule=rule)


@dataclass(frozen=True, slots=True)
class GuardrailReport:
    """What fired at one hook point of one call: :class:`GuardrailHook` hands it to ``on_fired``.

    ``point`` is ``"before_tool"``, ``"after_tool"`` or ``"after_model"``;
    ``subject`` the tool's name or the model's. ``results`` holds the result
    of each guardrail that fired, in the order they ran. ``blocked`` says the
    call is refused (the hook raises next); ``replaced`` that the hook passed
    on a redacted value.
    """

    point: str
    subject: str
    role: str
    phase: str
    session_id: str
    results: tuple[GuardrailResult, ...]
    blocked: bool
    replaced: bool

    @property
    def fired(self) -> tuple[GuardrailFinding, ...]:
        """Every finding of every result, in order."""
        return tuple(finding for result in self.results for finding in result.fired)

    @property
    def rules(self) -> tuple[str, ...]:
        """The rules that fired, each once."""
        return tuple(dict.fromkeys(finding.rule for finding in self.fired))

    @property
    def reason(self) -> str:
        """One line naming the guardrails and the findings."""
        what = "tool" if self.point.endswith("_tool") else "model"
        return f"{what} {self.subject!r}: " + "; ".join(
            f"{result.guardrail} ({result.action}): {result.reason}" for result in self.results
        )

    def to_event(self) -> AgentEvent:
        """Return the ``guardrail.fired`` event of this report (rules and fields, never text)."""
        subject_key = "tool" if self.point.endswith("_tool") else "model"
        data: dict[str, object] = {
            "point": self.point,
            subject_key: self.subject,
            "guardrails": [result.guardrail for result in self.results],
            "actions": [result.action for result in self.results],
            "rules": list(self.rules),
            "fields": list(dict.fromkeys(finding.field for finding in self.fired)),
            "findings": len(self.fired),
            "blocked": self.blocked,
            "replaced": self.replaced,
        }
        return AgentEvent(
            name=GUARDRAIL_FIRED,
            role=self.role,
            phase=self.phase,
            detail=self.reason,
            data=data,
            session_id=self.session_id,
        )


class GuardrailHook(BaseHook):
    """Run guardrails as a session hook: ``Orchestrator(hooks=[GuardrailHook([...])])``.

    Each guardrail runs where both its own ``on`` and the hook's switch say:
    on tool arguments (``before_tool``: ``args`` and ``kwargs``), tool results
    (``after_tool``) and model output (``after_model``). They run in order,
    each on what the one before passed on. A redacted value replaces the
    call's arguments or the result; a refusal raises
    :class:`GuardrailViolatedError` naming the rules (the session records it
    as a ``hook.vetoed`` event and the call fails). Model output that is a
    str, dict or list is redacted like a tool result; an SDK response object
    is read for its text, which is checked (and can be refused) but not
    rewritten.

    When something fired, a :class:`GuardrailReport` goes to ``on_fired`` and
    a ``guardrail.fired`` event to ``sink`` (each if given), before the
    refusal. :attr:`counts` totals the findings per rule. A hook cannot yet
    write to the session's own event log; pass the orchestrator's sink as
    ``sink`` to see the events beside the session's.
    """

    def __init__(
        self,
        guardrails: Iterable[Guardrail],
        *,
        on_tool_arguments: bool = True,
        on_tool_results: bool = True,
        on_model_output: bool = True,
        on_fired: Callable[[GuardrailReport], object] | None = None,
        sink: EventSink | None = None,
    ) -> None:
        given: object = guardrails
        if not isinstance(given, Iterable) or isinstance(given, str | bytes):
            raise InvalidValueError(f"guardrails must be a list of guardrails, got {given!r}")
        checked = tuple(guardrails)
        for guardrail in checked:
            if not isinstance(guardrail, Guardrail):
                raise InvalidValueError(
                    f"each guardrail must have name, action, on and check(value), got {guardrail!r}"
                )
        if not checked:
            raise InvalidValueError("guardrails must hold at least one guardrail")
        self.guardrails = checked
        switches = {
            "arguments": strict_bool("on_tool_arguments", on_tool_arguments),
            "results": strict_bool("on_tool_results", on_tool_results),
            "model_output": strict_bool("on_model_output", on_model_output),
        }
        self._at: dict[str, tuple[Guardrail, ...]] = {
            target: tuple(g for g in checked if on and target in g.on)
            for target, on in switches.items()
        }
        self._on_fired = callable_or_none("on_fired", on_fired)
        if sink is not None and not isinstance(sink, EventSink):
            raise InvalidValueError(f"sink must have write_event(event), got {sink!r}")
        self._sink = sink
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def counts(self) -> dict[str, int]:
        """Findings so far, per rule."""
        with self._lock:
            return dict(self._counts)

    def before_tool(self, call: ToolCall) -> ToolCall | None:
        """Check the call's arguments; pass on redacted ones, or refuse the call."""
        guardrails = self._at["arguments"]
        if not guardrails:
            return None
        args: object = call.args
        kwargs: object = call.kwargs
        results: list[GuardrailResult] = []
        for guardrail in guardrails:
            on_args = guardrail.check(args)
            on_kwargs = guardrail.check(kwargs)
            args, kwargs = on_args.value, on_kwargs.value
            result = _merged(on_args, "args", on_kwargs, "kwargs")
            if result.fired:
                results.append(result)
            if not result.allowed:
                break
        replaced = args is not call.args or kwargs is not call.kwargs
        if replaced and not (isinstance(args, tuple) and isinstance(kwargs, Mapping)):
            raise GuardrailViolatedError(
                "a guardrail returned arguments that are not a tuple and a mapping",
                hook=type(self).__name__,
                point="before_tool",
            )
        self._report("before_tool", call.name, call, results, replaced)
        if not replaced:
            return None
        return replace(
            call, args=cast("tuple[object, ...]", args), kwargs=cast("Mapping[str, object]", kwargs)
        )

    def after_tool(self, call: ToolCall, result: object) -> object | None:
        """Check the tool's result; pass on a redacted one, or refuse it."""
        guardrails = self._at["results"]
        if not guardrails:
            return None
        new, results = _run(guardrails, result, "result")
        self._report("after_tool", call.name, call, results, new is not result)
        return None if new is result else new

    def after_model(self, call: ModelCall, result: object) -> object | None:
        """Check the model's output; pass on a redacted one (text or JSON), or refuse it."""
        guardrails = self._at["model_output"]
        if not guardrails:
            return None
        if isinstance(result, str | Mapping | list | tuple):
            new, results = _run(guardrails, result, "output")
            self._report("after_model", call.model, call, results, new is not result)
            return None if new is result else new
        text = _response_text(result)
        if text is None:
            return None
        _, results = _run(guardrails, text, "output.text")
        self._report("after_model", call.model, call, results, False)
        return None

    def _report(
        self,
        point: str,
        subject: str,
        call: ToolCall | ModelCall,
        results: Sequence[GuardrailResult],
        replaced: bool,
    ) -> None:
        if not results:
            return
        blocked = not all(result.allowed for result in results)
        report = GuardrailReport(
            point=point,
            subject=subject,
            role=call.role,
            phase=call.phase,
            session_id=call.session_id,
            results=tuple(results),
            blocked=blocked,
            replaced=replaced and not blocked,
        )
        with self._lock:
            self._counts.update(finding.rule for finding in report.fired)
        if self._on_fired is not None:
            self._on_fired(report)
        event = report.to_event() if self._sink is not None or call.emit is not None else None
        if call.emit is not None and event is not None:  # the session's own log and sinks
            call.emit(GUARDRAIL_FIRED, event.detail, event.data)
        if self._sink is not None and event is not None:
            self._sink.write_event(event)
        if blocked:
            raise GuardrailViolatedError(report.reason, hook=type(self).__name__, point=point)


def _run(
    guardrails: Sequence[Guardrail], value: object, prefix: str
) -> tuple[object, list[GuardrailResult]]:
    """Pass ``value`` through each guardrail in turn; stop at the first refusal."""
    results: list[GuardrailResult] = []
    for guardrail in guardrails:
        result = _prefixed(guardrail.check(value), prefix)
        value = result.value
        if result.fired:
            results.append(result)
        if not result.allowed:
            break
    return value, results


def _prefixed(result: GuardrailResult, prefix: str) -> GuardrailResult:
    if not result.fired:
        return result
    fired = tuple(replace(f, field=prefix + f.field) for f in result.fired)
    return replace(result, fired=fired)


def _merged(
    first: GuardrailResult, first_prefix: str, second: GuardrailResult, second_prefix: str
) -> GuardrailResult:
    """One result for a guardrail's two checks of a call: its ``args`` and its ``kwargs``."""
    return GuardrailResult(
        allowed=first.allowed and second.allowed,
        fired=_prefixed(first, first_prefix).fired + _prefixed(second, second_prefix).fired,
        value=(first.value, second.value),
        changed=first.changed or second.changed,
        guardrail=first.guardrail,
        action=first.action,
    )


def _response_text(result: object) -> str | None:
    """Return the text of an SDK response, or ``None`` when it has none we can read."""
    from techrevati.runtime._outputs_text import NoText, read_text  # noqa: PLC0415 (loads usage)

    try:
        return read_text(result)
    except (NoText, InvalidValueError):
        return None


# -- redacting what leaves the process ----------------------------------------------------


def redacting_sink(sink: EventSink | UsageSink, redactor: Guardrail) -> EventSink | UsageSink:
    """Wrap ``sink`` so each event's ``detail`` and ``data`` are redacted before it gets them.

    ``redactor`` must redact (``action="redact"``), e.g. :class:`PiiRedactor`.
    A changed event is a new :class:`~techrevati.runtime.events.AgentEvent`;
    the one given is never changed. Usage records carry no free text and pass
    unchanged. The wrapper takes events, usage or both, as ``sink`` does, and
    passes ``flush`` and ``close`` on.
    """
    _require_redacting("redacting_sink", redactor)
    takes_events = isinstance(sink, EventSink)
    takes_usage = isinstance(sink, UsageSink)
    if takes_events and takes_usage:
        return _RedactingBoth(sink, redactor)
    if takes_events:
        return _RedactingEvents(sink, redactor)
    if takes_usage:
        return _RedactingUsage(sink, redactor)
    raise InvalidValueError(f"sink must have write_event or write_usage, got {sink!r}")


def redacting_inputs(
    fn: Callable[P, T],
    redactor: Guardrail,
    *,
    keys: str | Collection[str] = MODEL_INPUT_KEYS,
    on_fired: Callable[[GuardrailResult], object] | None = None,
) -> Callable[P, T]:
    """Wrap a model call so the prompt it is given is redacted first.

    With ``create = redacting_inputs(client.chat.completions.create, PiiRedactor())``
    the keyword arguments named in ``keys`` (``messages``, ``input``,
    ``system``, ... by default) are redacted by ``redactor`` (which must
    redact) before ``fn`` is called; the caller's own lists are not changed.
    ``on_fired`` gets each result in which something fired. An async ``fn``
    works too: the wrapper returns its awaitable.
    """
    _require_redacting("redacting_inputs", redactor)
    if isinstance(keys, str):
        keys = (keys,)
    names = tuple(keys)
    for key in names:
        if not isinstance(key, str):
            raise InvalidValueError(f"keys must hold only str, got {key!r}")
    report = callable_or_none("on_fired", on_fired)
    target = cast("Callable[..., T]", fn)

    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        given: dict[str, object] = dict(kwargs)
        for key in names:
            if key in given:
                result = redactor.check(given[key])
                given[key] = result.value
                if report is not None and result.fired:
                    report(result)
        return target(*args, **given)

    call.__wrapped__ = fn  # type: ignore[attr-defined]
    call.__name__ = getattr(fn, "__name__", "redacting_inputs")
    call.__doc__ = getattr(fn, "__doc__", None)
    return call


def _require_redacting(where: str, redactor: object) -> None:
    if not isinstance(redactor, Guardrail):
        raise InvalidValueError(
            f"{where} needs a guardrail (name, action, on, check), got {redactor!r}"
        )
    if redactor.action != "redact":
        raise InvalidValueError(
            f"{where} needs a guardrail whose action is 'redact', got {redactor.action!r}"
        )


class _Redacting:
    """What every redacting sink shares: the sink, the redactor, and passing flush and close on."""

    __slots__ = ("_redactor", "_sink")

    def __init__(self, sink: object, redactor: Guardrail) -> None:
        self._sink = sink
        self._redactor = redactor

    @property
    def sink(self) -> object:
        """The wrapped sink."""
        return self._sink

    def flush(self) -> None:
        """Flush the wrapped sink, if it can."""
        flush = getattr(self._sink, "flush", None)
        if callable(flush):
            flush()

    def close(self) -> None:
        """Close the wrapped sink, if it can."""
        close = getattr(self._sink, "close", None)
        if callable(close):
            close()

    def __repr__(self) -> str:
        return f"redacting_sink({self._sink!r}, {self._redactor!r})"


class _RedactingEvents(_Redacting):
    __slots__ = ()

    def write_event(self, event: AgentEvent) -> None:
        """Redact the event's ``detail`` and ``data``, then pass it on."""
        cast(EventSink, self._sink).write_event(_redacted_event(event, self._redactor))


class _RedactingUsage(_Redacting):
    __slots__ = ()

    def write_usage(self, record: UsageRecord) -> None:
        """Pass the record on unchanged (it holds no free text)."""
        cast(UsageSink, self._sink).write_usage(record)


class _RedactingBoth(_RedactingEvents):
    __slots__ = ()

    def write_usage(self, record: UsageRecord) -> None:
        """Pass the record on unchanged (it holds no free text)."""
        cast(UsageSink, self._sink).write_usage(record)


def _redacted_event(event: AgentEvent, redactor: Guardrail) -> AgentEvent:
    detail = event.detail
    if detail is not None:
        detail_result = redactor.check(detail)
        if detail_result.changed and isinstance(detail_result.value, str):
            detail = detail_result.value
    data = redactor.check(event.data)
    new_data = data.value if data.changed and isinstance(data.value, Mapping) else event.data
    if detail is event.detail and new_data is event.data:
        return event
    return replace(event, detail=detail, data=new_data)


def _compiled(label: str, pattern: object) -> re.Pattern[str]:
    if isinstance(pattern, re.Pattern):
        if not isinstance(pattern.pattern, str):
            raise InvalidValueError(f"{label} must be a str pattern, got bytes {pattern.pattern!r}")
        return pattern
    if not isinstance(pattern, str):
        raise InvalidValueError(f"{label} must be a regex (str or re.Pattern), got {pattern!r}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InvalidValueError(
            f"{label} is not a valid regular expression ({exc}): {pattern!r}"
        ) from None
