"""Typed outputs: check a model's answer against a spec, get a typed value, retry with feedback.

Reach for :class:`OutputSpec` when the answer must have a shape: a JSON value
(its top-level type and required keys), a regex with named groups, any
callable of yours, or a pydantic model (when pydantic is installed; imported
only then). :meth:`OutputSpec.parse` takes the text, or an SDK response
whose text it reads (OpenAI, Anthropic, Gemini, Bedrock), and returns the
typed value or raises :class:`OutputValidationError`, whose ``feedback`` is
written to be sent back to the model. :func:`validated_call` (and
:func:`avalidated_call`) is the recipe for that failure: call again with the
feedback, a bounded number of times, then escalate with
:class:`OutputEscalationError`, which carries every attempt's feedback;
:class:`OutputRun` is the same bookkeeping for a loop of your own.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import FunctionType
from typing import Any, Final, Generic, TypeVar, cast, overload

from techrevati.runtime._validate import int_at_least, required_callable
from techrevati.runtime.errors import (
    InvalidValueError,
    MissingDependencyError,
    TechrevatiError,
)

__all__ = [
    "DEFAULT_MAX_CHARS",
    "DEFAULT_MAX_DEPTH",
    "MAX_INT_DIGITS",
    "OutputEscalationError",
    "OutputRun",
    "OutputSpec",
    "OutputValidationError",
    "avalidated_call",
    "bind_feedback",
    "feedback_caller",
    "validated_call",
]

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
J = TypeVar("J")
M = TypeVar("M")

DEFAULT_MAX_CHARS: Final = 1_000_000
"""The longest answer a spec reads (characters); a longer one is invalid, never parsed."""

DEFAULT_MAX_DEPTH: Final = 100
"""How deeply a JSON answer may nest arrays and objects."""

MAX_INT_DIGITS: Final = 4300
"""The most digits of one JSON integer (CPython's own default limit, whatever the process set)."""

_REPR_TEXT: Final = 80
"""Characters of the answer an error's repr shows."""

_JSON_TYPES: Final[dict[type, str]] = {
    dict: "a JSON object",
    list: "a JSON array",
    str: "a JSON string",
    int: "a JSON integer",
    float: "a JSON number",
    bool: "true or false",
}

_CALLABLE_REFUSALS: Final = (ValueError, TypeError, LookupError, AssertionError, RecursionError)
"""What a callable spec's function may raise to say "invalid" (anything else propagates)."""


class OutputValidationError(TechrevatiError, ValueError):
    """An answer did not fit its :class:`OutputSpec`.

    ``spec`` names the spec, ``text`` is the answer's text (empty when none
    could be read) and ``feedback`` says what is wrong in words meant for the
    model ("The answer is not valid JSON: ... Answer with ..."). ``attempt``
    is the attempt's number under :class:`OutputRun` (0 outside one). Not
    retried by a retry policy: the recipe for it is :func:`validated_call`.
    """

    def __init__(self, spec: str, feedback: str, text: str = "", *, attempt: int = 0) -> None:
        self.spec = spec
        self.feedback = feedback
        self.text = text
        self.attempt = attempt
        super().__init__(f"output {spec!r} is invalid: {feedback}")

    def __repr__(self) -> str:
        shown = self.text if len(self.text) <= _REPR_TEXT else self.text[:_REPR_TEXT] + "..."
        return (
            f"OutputValidationError(spec={self.spec!r}, feedback={self.feedback!r}, "
            f"text={shown!r}, attempt={self.attempt})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_invalid, (self.spec, self.feedback, self.text, self.attempt))


def _rebuild_invalid(spec: str, feedback: str, text: str, attempt: int) -> OutputValidationError:
    return OutputValidationError(spec, feedback, text, attempt=attempt)


class OutputEscalationError(TechrevatiError):
    """Every attempt's answer was invalid: the caller (or a person) must decide.

    ``errors`` holds each attempt's :class:`OutputValidationError` in order
    (``feedback`` their feedback); the last one is also the ``__cause__``.
    """

    def __init__(self, spec: str, errors: Iterable[OutputValidationError]) -> None:
        self.spec = spec
        self.errors = tuple(errors)
        last = self.errors[-1].feedback if self.errors else "no attempt"
        super().__init__(
            f"output {spec!r} still invalid after {len(self.errors)} attempt(s); last: {last}"
        )

    @property
    def feedback(self) -> tuple[str, ...]:
        """Each attempt's feedback, in order."""
        return tuple(error.feedback for error in self.errors)

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.spec, self.errors))


class _Refused(Exception):  # noqa: N818 (private: turned into OutputValidationError)
    """What a spec's parser raises: the feedback, without the spec's name or the text."""

    def __init__(self, feedback: str) -> None:
        self.feedback = feedback
        super().__init__(feedback)


@dataclass(frozen=True, slots=True, eq=False)
class OutputSpec(Generic[T_co]):
    """What an answer must be, and how to read it into a ``T``; frozen, safe to share.

    Make one with :meth:`json`, :meth:`regex`, :meth:`callable` or
    :meth:`pydantic`. ``name`` names it in errors (and events); ``kind`` is
    the constructor's name; an answer longer than ``max_chars`` is invalid
    without being parsed.
    """

    name: str
    kind: str
    max_chars: int
    _parse: Callable[[str], T_co] = field(repr=False)

    @overload
    @classmethod
    def json(
        cls,
        required_keys: Iterable[str] = (),
        *,
        name: str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> OutputSpec[dict[str, Any]]: ...

    @overload
    @classmethod
    def json(
        cls,
        required_keys: Iterable[str] = (),
        *,
        type: type[J],
        name: str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> OutputSpec[J]: ...

    @classmethod
    def json(
        cls,
        required_keys: Iterable[str] = (),
        *,
        type: type[Any] = dict,
        name: str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> OutputSpec[Any]:
        """Expect a JSON answer of top-level ``type`` (an object by default) with ``required_keys``.

        ``type`` is one of ``dict``, ``list``, ``str``, ``int``, ``float``
        (an integer is accepted and returned as a float) or ``bool``;
        ``required_keys`` only goes with ``dict``. One fenced code block
        (```` ```json ... ``` ````) around the value is allowed; other text
        around it is not. Bounded: at most ``max_chars`` characters,
        ``max_depth`` levels of nesting and :data:`MAX_INT_DIGITS` digits an
        integer; ``NaN``, ``Infinity`` and a number too large for a float
        are invalid.
        """
        if type not in _JSON_TYPES:
            raise InvalidValueError(
                f"type must be one of dict, list, str, int, float, bool, got {type!r}"
            )
        keys = _key_names(required_keys)
        if keys and type is not dict:
            raise InvalidValueError(f"required_keys go with type=dict, got type={type.__name__}")
        depth = int_at_least("max_depth", max_depth, 1)
        label = name if name is not None else f"json {type.__name__}"
        return cls._made(label, "json", max_chars, _json_parser(type, keys, depth))

    @classmethod
    def regex(
        cls,
        pattern: str | Any,
        *,
        flags: int = 0,
        fullmatch: bool = False,
        name: str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
    ) -> OutputSpec[dict[str, str | None]]:
        """Expect an answer matching ``pattern``; the value is its named groups (``groupdict()``).

        ``pattern`` is a str or a compiled ``re.Pattern[str]`` and must have
        at least one named group (``(?P<name>...)``). It is searched for in
        the answer, or must match all of it with ``fullmatch=True``. A group
        that took no part in the match is ``None``. ``max_chars`` bounds the
        text; the pattern's own backtracking is the pattern's (keep it linear).
        """
        if isinstance(pattern, re.Pattern):
            if flags:
                raise InvalidValueError("give flags in the compiled pattern, not both")
            compiled = pattern
        elif isinstance(pattern, str):
            try:
                compiled = re.compile(pattern, flags)
            except re.error as exc:
                raise InvalidValueError(
                    f"pattern {pattern!r} is not a valid regex: {exc}"
                ) from None
        else:
            raise InvalidValueError(f"pattern must be a str or re.Pattern, got {pattern!r}")
        if not isinstance(compiled.pattern, str):
            raise InvalidValueError(f"pattern must match text (str), got {compiled.pattern!r}")
        if not compiled.groupindex:
            raise InvalidValueError(
                f"pattern {compiled.pattern!r} has no named group; name what to return "
                "with (?P<name>...)"
            )
        if not isinstance(fullmatch, bool):
            raise InvalidValueError(f"fullmatch must be a bool, got {fullmatch!r}")
        label = name if name is not None else f"regex {compiled.pattern!r}"
        return cls._made(label, "regex", max_chars, _regex_parser(compiled, fullmatch))

    @classmethod
    def callable(
        cls,
        fn: Callable[[str], T],
        *,
        name: str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
    ) -> OutputSpec[T]:
        """Expect an answer that ``fn(text)`` turns into a value (raising to say it is invalid).

        ``ValueError``, ``TypeError``, ``LookupError`` (``KeyError``...),
        ``AssertionError`` and ``RecursionError`` mean invalid: their message
        becomes the feedback (an :class:`OutputValidationError` keeps its
        own). Anything else is a bug in ``fn`` and propagates unchanged.
        """
        required_callable("fn", fn)
        label = name if name is not None else getattr(fn, "__qualname__", repr(fn))
        return cls._made(label, "callable", max_chars, _callable_parser(fn))

    @classmethod
    def pydantic(
        cls,
        model: type[M],
        *,
        name: str | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
    ) -> OutputSpec[M]:
        """Expect a JSON answer that validates as ``model``, a pydantic ``BaseModel`` subclass.

        Pydantic is imported here, not before (it is not a dependency of
        this package); without it, :class:`MissingDependencyError` says how
        to install it. One fenced code block around the JSON is allowed.
        Pydantic's own parser bounds nesting and integer size.
        """
        try:
            import pydantic  # noqa: PLC0415 (optional: only this constructor needs it)
        except ImportError:
            raise MissingDependencyError("pydantic", "pydantic") from None
        if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            raise InvalidValueError(f"model must be a pydantic BaseModel subclass, got {model!r}")
        label = name if name is not None else model.__name__
        return cls._made(label, "pydantic", max_chars, _pydantic_parser(model, pydantic))

    @classmethod
    def _made(
        cls, name: object, kind: str, max_chars: object, parse: Callable[[str], T]
    ) -> OutputSpec[T]:
        if not isinstance(name, str) or not name.strip():
            raise InvalidValueError(f"name must be a non-empty str, got {name!r}")
        return OutputSpec(name, kind, int_at_least("max_chars", max_chars, 1), parse)

    def parse(self, value: object) -> T_co:
        """Return the typed value of ``value`` (the answer's text, or an SDK response).

        Raises :class:`OutputValidationError` when the answer does not fit
        (or a response has no text: a refusal, only tool calls), and
        :class:`~techrevati.runtime.errors.InvalidValueError` when ``value``
        is neither text nor a response of a known shape.
        """
        if type(value) is str:
            text = value
        else:
            read_text, no_text = _text_reader()
            try:
                text = read_text(value)
            except no_text as exc:
                raise OutputValidationError(self.name, _no_text(str(exc))) from None
        if len(text) > self.max_chars:
            raise OutputValidationError(
                self.name,
                f"The answer is too long ({len(text)} characters, at most {self.max_chars}). "
                "Answer more briefly.",
                text,
            )
        try:
            return self._parse(text)
        except _Refused as exc:
            raise OutputValidationError(self.name, exc.feedback, text) from None
        except OutputValidationError as exc:  # a callable spec's own
            raise OutputValidationError(self.name, exc.feedback, text) from exc


@functools.cache
def _text_reader() -> tuple[Callable[[object], str], type[Exception]]:
    """Import the response reader on first use (it loads the usage readers)."""
    from techrevati.runtime._outputs_text import NoText, read_text  # noqa: PLC0415

    return read_text, NoText


def _no_text(reason: str) -> str:
    return f"The answer has no text: {reason.rstrip('.')}. Answer with text in the required format."


def _key_names(keys: object) -> tuple[str, ...]:
    if isinstance(keys, str | bytes) or not isinstance(keys, Iterable):
        raise InvalidValueError(f"required_keys must be an iterable of str, got {keys!r}")
    names = tuple(keys)
    for key in names:
        if not isinstance(key, str):
            raise InvalidValueError(f"required_keys must hold str keys, got {key!r}")
    if len(set(names)) != len(names):
        raise InvalidValueError(f"required_keys must not repeat, got {names!r}")
    return names


# -- the parsers ------------------------------------------------------------------------


def _unfenced(text: str) -> str:
    """``text`` without surrounding blanks and one code fence around it (```` ```json ````)."""
    body = text.strip()
    if len(body) >= 6 and body.startswith("```") and body.endswith("```"):
        newline = body.find("\n")
        info = body[3:newline].strip() if newline != -1 else "?"
        if newline != -1 and (not info or info.replace("-", "").replace("_", "").isalnum()):
            return body[newline + 1 : -3].strip()
    return body


def _json_parser(kind: type, keys: tuple[str, ...], max_depth: int) -> Callable[[str], Any]:
    import json  # noqa: PLC0415 (only JSON specs need it)

    decoder = json.JSONDecoder(
        parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant
    )
    tokens = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]', re.DOTALL)
    wanted = _JSON_TYPES[kind]
    instruction = f"Answer with only {wanted}" + (
        f" that has the key(s) {', '.join(map(repr, keys))}." if keys else "."
    )

    def parse(text: str) -> Any:
        body = _unfenced(text)
        _check_depth(body, max_depth, tokens)
        try:
            value = decoder.decode(body)
        except json.JSONDecodeError as exc:
            raise _Refused(
                f"The answer is not valid JSON: {exc.msg} at line {exc.lineno} column "
                f"{exc.colno}. {instruction}"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise _Refused(f"The answer is not usable JSON: {exc}. {instruction}") from None
        return _typed(value, kind, keys, wanted, instruction)

    return parse


def _check_depth(body: str, max_depth: int, tokens: Any) -> None:
    """Refuse JSON nested deeper than ``max_depth``, before the decoder recurses into it."""
    if body.count("[") + body.count("{") <= max_depth:
        return  # cannot nest deeper than it has brackets
    depth = 0
    for match in tokens.finditer(body):
        char = body[match.start()]
        if char in "[{":
            depth += 1
            if depth > max_depth:
                raise _Refused(
                    f"The answer nests deeper than {max_depth} levels. Answer with flatter JSON."
                )
        elif char in "]}":
            depth -= 1


def _typed(value: Any, kind: type, keys: tuple[str, ...], wanted: str, instruction: str) -> Any:
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        got = _JSON_TYPES.get(type(value), "null") if value is not None else "null"
        raise _Refused(f"The answer is {got}, not {wanted}. {instruction}")
    if keys:
        missing = [key for key in keys if key not in cast("dict[str, Any]", value)]
        if missing:
            raise _Refused(
                f"The JSON object lacks the required key(s) {', '.join(map(repr, missing))}. "
                f"{instruction}"
            )
    return value


def _bounded_int(digits: str) -> int:
    if len(digits) - digits.startswith("-") > MAX_INT_DIGITS:
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(digits)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:40]} is too large")
    return value


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _regex_parser(pattern: Any, fullmatch: bool) -> Callable[[str], dict[str, str | None]]:
    match_fn = pattern.fullmatch if fullmatch else pattern.search
    how = "match" if fullmatch else "contain a match for"
    feedback = f"The answer does not {how} the required format (the regex {pattern.pattern!r})."

    def parse(text: str) -> dict[str, str | None]:
        match = match_fn(text)
        if match is None:
            raise _Refused(feedback)
        groups: dict[str, str | None] = match.groupdict()
        return groups

    return parse


def _callable_parser(fn: Callable[[str], T]) -> Callable[[str], T]:
    def parse(text: str) -> T:
        try:
            return fn(text)
        except OutputValidationError:
            raise
        except _CALLABLE_REFUSALS as exc:
            message = str(exc) or type(exc).__name__
            raise _Refused(f"The answer was refused: {message}") from None

    return parse


def _pydantic_parser(model: type[M], pydantic: Any) -> Callable[[str], M]:
    validation_error = pydantic.ValidationError

    def parse(text: str) -> M:
        try:
            value: M = model.model_validate_json(_unfenced(text))  # type: ignore[attr-defined]
        except validation_error as exc:
            raise _Refused(_pydantic_feedback(model.__name__, exc)) from None
        except (ValueError, RecursionError) as exc:
            raise _Refused(f"The answer could not be read as {model.__name__}: {exc}") from None
        return value

    return parse


def _pydantic_feedback(model: str, exc: Any) -> str:
    problems = []
    for error in exc.errors(include_url=False)[:20]:
        where = ".".join(str(part) for part in error.get("loc", ())) or "the answer"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
    more = exc.error_count() - len(problems)
    tail = f"; and {more} more" if more > 0 else ""
    return (
        f"The answer does not fit the schema {model}: {'; '.join(problems)}{tail}. "
        f"Answer with a JSON object that fits {model}."
    )


# -- the recipe: retry with the feedback, bounded, then escalate -----------------------------


class OutputRun(Generic[T]):
    """The bookkeeping of one validated call: the attempts, the feedback, the escalation.

    :meth:`feed` each answer: it returns the typed value; or it raises the
    attempt's :class:`OutputValidationError` while attempts remain (and
    :attr:`feedback` then holds what to tell the model next); or, on the
    last allowed attempt, :class:`OutputEscalationError` carrying every
    attempt's error. ``attempts`` counts calls, the first included (3 = up
    to 2 retries). One run per call; not for sharing between threads.
    """

    __slots__ = ("_errors", "attempts", "feedback", "spec")

    def __init__(self, spec: OutputSpec[T], attempts: int = 3) -> None:
        if not isinstance(spec, OutputSpec):
            raise InvalidValueError(f"spec must be an OutputSpec, got {spec!r}")
        self.spec: OutputSpec[T] = spec
        self.attempts = int_at_least("attempts", attempts, 1)
        self.feedback: str | None = None
        """The feedback for the next call: None before the first failure."""
        self._errors: list[OutputValidationError] = []

    @property
    def errors(self) -> tuple[OutputValidationError, ...]:
        """Each failed attempt's error, in order."""
        return tuple(self._errors)

    @property
    def attempt(self) -> int:
        """The number of the next attempt (1-based)."""
        return len(self._errors) + 1

    def feed(self, answer: object) -> T:
        """Validate one attempt's answer (text or an SDK response); see the class docstring."""
        if len(self._errors) >= self.attempts:
            raise OutputEscalationError(self.spec.name, self._errors)
        try:
            return self.spec.parse(answer)
        except OutputValidationError as exc:
            error = OutputValidationError(
                exc.spec, exc.feedback, exc.text, attempt=len(self._errors) + 1
            )
            self._errors.append(error)
            if len(self._errors) >= self.attempts:
                raise OutputEscalationError(self.spec.name, self._errors) from error
            self.feedback = error.feedback
            raise error from None


def feedback_caller(fn: Callable[..., T]) -> Callable[[str | None], T]:
    """Return ``attempt(feedback)``: ``fn(feedback=feedback)`` if ``fn`` takes it, else ``fn()``.

    ``fn`` is inspected once, here: it takes the feedback when it has a
    parameter named ``feedback`` that can be passed by keyword (``**kwargs``
    alone does not count: it may forward to an SDK that refuses it). The
    first attempt gets ``feedback=None``.
    """
    required_callable("fn", fn)
    if _takes_feedback(fn):
        return lambda feedback: fn(feedback=feedback)
    return lambda feedback: fn()


def bind_feedback(fn: Callable[..., T], feedback: str | None) -> Callable[..., T]:
    """Return ``fn`` with ``feedback=`` bound if it takes that keyword, else ``fn`` itself.

    Unlike :func:`feedback_caller`, every other parameter stays open (a
    ``functools.partial``), so a caller that passes more keywords (a
    session's ``model=``) still can, and still sees them in the signature.
    """
    required_callable("fn", fn)
    return functools.partial(fn, feedback=feedback) if _takes_feedback(fn) else fn


def _takes_feedback(fn: Callable[..., object]) -> bool:
    if type(fn) is FunctionType and not hasattr(fn, "__wrapped__"):
        # A plain function: its code says (inspect.signature costs microseconds).
        code = fn.__code__
        names = code.co_varnames[
            code.co_posonlyargcount : code.co_argcount + code.co_kwonlyargcount
        ]
        return "feedback" in names and not hasattr(fn, "__signature__")
    try:
        parameter = inspect.signature(fn).parameters.get("feedback")
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    return parameter is not None and parameter.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    )


def validated_call(
    fn: Callable[..., object],
    spec: OutputSpec[T],
    *,
    attempts: int = 3,
    on_feedback: Callable[[OutputValidationError], object] | None = None,
) -> T:
    """Call ``fn`` until its answer fits ``spec``; return the typed value.

    ``fn`` returns the answer (text or an SDK response) and may take a
    ``feedback`` keyword (:func:`feedback_caller`): ``None`` the first time,
    then the last attempt's :attr:`OutputValidationError.feedback`.
    ``on_feedback(error)`` is called before each retry (e.g. to append the
    feedback to your message list). After ``attempts`` invalid answers
    raises :class:`OutputEscalationError` with every attempt's feedback.
    ``fn``'s own exceptions propagate unchanged.
    """
    run = OutputRun(spec, attempts)
    call = feedback_caller(fn)
    _check_hook(on_feedback)
    while True:
        try:
            return run.feed(call(run.feedback))
        except OutputValidationError as exc:
            if on_feedback is not None:
                on_feedback(exc)


async def avalidated_call(
    fn: Callable[..., Awaitable[object]],
    spec: OutputSpec[T],
    *,
    attempts: int = 3,
    on_feedback: Callable[[OutputValidationError], object] | None = None,
) -> T:
    """Async twin of :func:`validated_call`: ``fn`` returns an awaitable answer.

    ``on_feedback`` may be sync or async (an awaitable it returns is awaited).
    """
    run = OutputRun(spec, attempts)
    call = feedback_caller(fn)
    _check_hook(on_feedback)
    while True:
        try:
            return run.feed(await call(run.feedback))
        except OutputValidationError as exc:
            if on_feedback is not None:
                pending = on_feedback(exc)
                if isinstance(pending, Awaitable):
                    await pending


def _check_hook(hook: object) -> None:
    if hook is not None and not callable(hook):
        raise InvalidValueError(f"on_feedback must be callable or None, got {hook!r}")
