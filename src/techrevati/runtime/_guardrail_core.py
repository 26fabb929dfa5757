"""What every guardrail shares: findings, results, actions, and the walk over a value.

Private: :mod:`techrevati.runtime.guardrails` re-exports the public names. A
built-in guardrail is a :class:`TextGuardrail`: it scans strings (its
``_scan`` returns :class:`Hit` spans) and the base walks the value around
them, strings inside dicts, lists and tuples to :data:`DEFAULT_MAX_DEPTH`,
naming where each finding is (``['to']``, ``[2]['body']``). A redacting
guardrail builds new containers only along the paths it changed and never
touches the value it was given; other values (numbers, objects) pass
unscanned.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, Protocol, runtime_checkable

from techrevati.runtime._validate import int_at_least, non_empty_str
from techrevati.runtime.errors import InvalidValueError

__all__ = [
    "ACTIONS",
    "DEFAULT_MAX_DEPTH",
    "TARGETS",
    "Guardrail",
    "GuardrailAction",
    "GuardrailFinding",
    "GuardrailResult",
    "GuardrailTarget",
    "Hit",
    "SpanIndex",
    "TextGuardrail",
    "checked_action",
    "checked_targets",
    "checked_template",
    "non_overlapping",
    "replaced",
]

GuardrailAction = Literal["flag", "redact", "block"]
"""What a guardrail does when a rule fires: report it, replace the span, or refuse the value."""

GuardrailTarget = Literal["arguments", "results", "model_output"]
"""What a guardrail looks at when it runs as a hook: tool arguments, tool results, model output."""

ACTIONS: Final[tuple[GuardrailAction, ...]] = ("flag", "redact", "block")
TARGETS: Final[tuple[GuardrailTarget, ...]] = ("arguments", "results", "model_output")

DEFAULT_MAX_DEPTH: Final = 64
"""How deeply nested dicts, lists and tuples are walked; deeper parts fire ``<name>.too_deep``."""

_SHOWN_FINDINGS: Final = 3
"""Findings a result's :attr:`~GuardrailResult.reason` names before "and N more"."""


@dataclass(frozen=True, slots=True)
class GuardrailFinding:
    """One rule that fired: which, where, and why, never the text it matched.

    ``field`` is where in the value (``""`` for the value itself when it is a
    string, ``"['to']"``, ``"[2]['body']"``; a hook prefixes ``args``,
    ``kwargs``, ``result`` or ``output``); ``span`` is ``(start, end)`` in
    that string, or ``None`` when the rule is about a whole container.
    """

    rule: str
    field: str
    span: tuple[int, int] | None
    reason: str

    @property
    def where(self) -> str:
        """``field`` and ``span`` in one word: ``"kwargs['to'][0:17]"``."""
        span = "" if self.span is None else f"[{self.span[0]}:{self.span[1]}]"
        return f"{self.field}{span}" or "value"


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """What one :meth:`Guardrail.check` found and what to pass on.

    ``allowed`` is False when the guardrail refuses the value (``action=
    "block"`` and a rule fired). ``fired`` lists the findings, in the order
    met. ``value`` is the value to use next: the redacted or neutralised
    copy when ``changed``, else the very object checked.
    """

    allowed: bool
    fired: tuple[GuardrailFinding, ...]
    value: object
    changed: bool
    guardrail: str
    action: GuardrailAction

    @property
    def rules(self) -> tuple[str, ...]:
        """The rules that fired, each once, in the order first met."""
        return tuple(dict.fromkeys(finding.rule for finding in self.fired))

    @property
    def reason(self) -> str:
        """The findings in one line, e.g. ``"pii.email at ['to'][0:17] (an email address)"``."""
        if not self.fired:
            return "nothing fired"
        shown = "; ".join(
            f"{f.rule} at {f.where} ({f.reason})" for f in self.fired[:_SHOWN_FINDINGS]
        )
        more = len(self.fired) - _SHOWN_FINDINGS
        return f"{shown}; and {more} more" if more > 0 else shown


@runtime_checkable
class Guardrail(Protocol):
    """What :class:`~techrevati.runtime.guardrails.GuardrailHook` and the sink wrapper need.

    ``on`` says which of tool arguments, tool results and model output it
    looks at when it runs as a hook. ``check`` must not change its argument.
    """

    @property
    def name(self) -> str:
        """The guardrail's name; its rules are named ``<name>.<rule>``."""

    @property
    def action(self) -> GuardrailAction:
        """What it does when a rule fires."""

    @property
    def on(self) -> frozenset[GuardrailTarget]:
        """What it looks at as a hook."""

    def check(self, value: object) -> GuardrailResult:
        """Scan ``value`` (a str, or dicts/lists/tuples of them) and say what fired."""


class Hit(NamedTuple):
    """A rule that fired on ``text[start:end]`` of one string, and what replaces the span."""

    rule: str
    start: int
    end: int
    reason: str
    replacement: str


class TextGuardrail:
    """Base of the built-in guardrails: walks the value, asks :meth:`_scan` about each string."""

    __slots__ = ("_action", "_max_depth", "_name", "_on")

    def __init__(
        self,
        name: str,
        action: object,
        on: object,
        max_depth: int,
    ) -> None:
        self._name = non_empty_str("name", name)
        self._action = checked_action(action)
        self._on = checked_targets(on)
        self._max_depth = int_at_least("max_depth", max_depth, 1)

    @property
    def name(self) -> str:
        """The guardrail's name; its rules are named ``<name>.<rule>``."""
        return self._name

    @property
    def action(self) -> GuardrailAction:
        """``"flag"``, ``"redact"`` or ``"block"``."""
        return self._action

    @property
    def on(self) -> frozenset[GuardrailTarget]:
        """What it looks at as a hook: ``arguments``, ``results``, ``model_output``."""
        return self._on

    def check(self, value: object) -> GuardrailResult:
        """Scan ``value``: a str, or dicts, lists and tuples holding strings (others pass).

        Never changes ``value``; a redacted copy is the result's ``value``.
        """
        findings: list[GuardrailFinding] = []
        new = self._visit(value, "", 0, findings, None)
        return GuardrailResult(
            allowed=not (findings and self._action == "block"),
            fired=tuple(findings),
            value=new,
            changed=new is not value,
            guardrail=self._name,
            action=self._action,
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self._name!r}, action={self._action!r})"

    # -- for subclasses ---------------------------------------------------------------

    def _scan(self, text: str, key: object) -> list[Hit]:
        """Return the hits in ``text`` (``key``: its key in a dict, else ``None``)."""
        raise NotImplementedError

    def _replacement(self, rule: str) -> str:
        """Return what replaces a value this guardrail could not scan (it fired ``rule``)."""
        raise NotImplementedError

    # -- the walk -----------------------------------------------------------------------

    def _visit(
        self,
        value: object,
        path: str,
        depth: int,
        findings: list[GuardrailFinding],
        key: object,
    ) -> object:
        if isinstance(value, str):
            return self._visit_text(value, path, findings, key)
        if not isinstance(value, Mapping | list | tuple):
            return value
        if depth >= self._max_depth:
            rule = f"{self._name}.too_deep"
            findings.append(
                GuardrailFinding(
                    rule, path, None, f"nested deeper than max_depth={self._max_depth}; not scanned"
                )
            )
            return self._replacement(rule) if self._action == "redact" else value
        if isinstance(value, Mapping):
            out: dict[object, object] = {}
            changed = False
            for item_key, item in value.items():
                new = self._visit(item, f"{path}[{item_key!r}]", depth + 1, findings, item_key)
                changed = changed or new is not item
                out[item_key] = new
            return out if changed else value
        items = list(value)
        changed = False
        for index, item in enumerate(items):
            new = self._visit(item, f"{path}[{index}]", depth + 1, findings, None)
            if new is not item:
                items[index] = new
                changed = True
        if not changed:
            return value
        return tuple(items) if isinstance(value, tuple) else items

    def _visit_text(
        self, text: str, path: str, findings: list[GuardrailFinding], key: object
    ) -> str:
        hits = self._scan(text, key)
        if not hits:
            return text
        findings.extend(GuardrailFinding(h.rule, path, (h.start, h.end), h.reason) for h in hits)
        return replaced(text, hits) if self._action == "redact" else text


def replaced(text: str, hits: Iterable[Hit]) -> str:
    """Return ``text`` with each hit's span replaced (overlaps merge; the first one's text wins)."""
    parts: list[str] = []
    done = 0
    for hit in sorted(hits, key=lambda h: (h.start, -h.end)):
        if hit.end <= done:
            continue  # inside a span already replaced
        if hit.start >= done:
            parts.append(text[done : hit.start])
            parts.append(hit.replacement)
        done = max(done, hit.end)
    parts.append(text[done:])
    return "".join(parts)


def non_overlapping(hits: Iterable[Hit], rank: Callable[[Hit], int]) -> list[Hit]:
    """Keep the hits that overlap no better one; lower ``rank`` wins, then earlier, then longer.

    Ranks are taken in turn: each hit of a rank is kept unless it overlaps a
    hit kept at a better rank or one kept before it at its own. O(n log n).
    """
    by_rank: dict[int, list[Hit]] = {}
    for hit in hits:
        by_rank.setdefault(rank(hit), []).append(hit)
    kept: list[Hit] = []
    starts: list[int] = []  # of the spans kept so far, sorted, disjoint
    ends: list[int] = []
    for level in sorted(by_rank):
        new: list[Hit] = []
        last_end = -1
        for hit in sorted(by_rank[level], key=lambda h: (h.start, h.start - h.end)):
            if hit.start < last_end or _overlaps(starts, ends, hit.start, hit.end):
                continue
            new.append(hit)
            last_end = hit.end
        kept.extend(new)
        spans = sorted([*zip(starts, ends, strict=True), *((h.start, h.end) for h in new)])
        starts = [start for start, _ in spans]
        ends = [end for _, end in spans]
    return sorted(kept, key=lambda h: (h.start, h.end))


def _overlaps(starts: list[int], ends: list[int], start: int, end: int) -> bool:
    """Whether ``[start, end)`` overlaps one of the disjoint sorted spans ``starts``/``ends``."""
    index = bisect_right(starts, start) - 1
    if index >= 0 and ends[index] > start:
        return True
    after = index + 1
    return after < len(starts) and starts[after] < end


class SpanIndex:
    """Answers "does one of these spans contain ``[start, end)``?" in O(log n)."""

    __slots__ = ("_max_end", "_starts")

    def __init__(self, spans: Iterable[tuple[int, int]]) -> None:
        ordered = sorted(spans)
        self._starts = [start for start, _ in ordered]
        running = -1
        self._max_end: list[int] = []
        for _, end in ordered:
            running = max(running, end)
            self._max_end.append(running)

    def contains(self, start: int, end: int) -> bool:
        """Whether a span starting at or before ``start`` reaches ``end``."""
        index = bisect_right(self._starts, start) - 1
        return index >= 0 and self._max_end[index] >= end


def checked_action(action: object) -> GuardrailAction:
    """Return ``action`` if it is ``"flag"``, ``"redact"`` or ``"block"``."""
    for known in ACTIONS:
        if action == known:
            return known
    raise InvalidValueError(f"action must be one of 'flag', 'redact', 'block', got {action!r}")


def checked_targets(on: object) -> frozenset[GuardrailTarget]:
    """Return ``on`` as a set of targets; each must be one of :data:`TARGETS`, at least one."""
    if isinstance(on, str):
        on = (on,)
    if not isinstance(on, Iterable):
        raise InvalidValueError(
            f"on must be a collection of 'arguments', 'results', 'model_output', got {on!r}"
        )
    given = tuple(on)
    targets: set[GuardrailTarget] = set()
    for item in given:
        for known in TARGETS:
            if item == known:
                targets.add(known)
                break
        else:
            raise InvalidValueError(
                f"on must name 'arguments', 'results' or 'model_output', got {item!r}"
            )
    if not targets:
        raise InvalidValueError(
            "on must name at least one of 'arguments', 'results', 'model_output'"
        )
    return frozenset(targets)


def checked_template(name: str, template: object, **sample: str) -> str:
    """Return ``template`` if it is a str that formats with exactly the ``sample`` fields."""
    if not isinstance(template, str):
        raise InvalidValueError(f"{name} must be a str, got {template!r}")
    try:
        template.format(**sample)
    except (KeyError, IndexError, ValueError) as exc:
        fields = ", ".join("{" + field + "}" for field in sample)
        raise InvalidValueError(
            f"{name} may use only the fields {fields}, got {template!r} ({exc!r})"
        ) from None
    return template
