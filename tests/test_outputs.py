"""Typed outputs: each kind of spec, the JSON bounds, reading real SDK responses, and the
retry-with-feedback recipe (validated_call, avalidated_call, OutputRun)."""

from __future__ import annotations

import asyncio
import functools
import json
import pickle
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from techrevati.runtime.errors import InvalidValueError, MissingDependencyError, TechrevatiError
from techrevati.runtime.outputs import (
    DEFAULT_MAX_DEPTH,
    MAX_INT_DIGITS,
    OutputEscalationError,
    OutputRun,
    OutputSpec,
    OutputValidationError,
    avalidated_call,
    bind_feedback,
    feedback_caller,
    validated_call,
)
from techrevati.runtime.retry_policy import RetryPolicy, retry_call
from tests import scripted_server as scripted
from tests.conftest import examples
from tests.scripted_server import (
    ScriptedServer,
    anthropic_message,
    converse_response,
    gemini_response,
    openai_chat_completion,
    openai_response,
)

HYPOTHESIS = settings(max_examples=examples(200))


def invalid(spec: OutputSpec[Any], value: object) -> OutputValidationError:
    with pytest.raises(OutputValidationError) as caught:
        spec.parse(value)
    return caught.value


# -- JSON ---------------------------------------------------------------------------------


def test_json_object_with_required_keys() -> None:
    spec = OutputSpec.json(["title", "score"])
    assert spec.parse('{"title": "t", "score": 3, "more": null}') == {
        "title": "t",
        "score": 3,
        "more": None,
    }
    error = invalid(spec, '{"title": "t"}')
    assert error.feedback == (
        "The JSON object lacks the required key(s) 'score'. "
        "Answer with only a JSON object that has the key(s) 'title', 'score'."
    )
    assert (error.spec, error.text) == ("json dict", '{"title": "t"}')
    assert str(error) == f"output 'json dict' is invalid: {error.feedback}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('```json\n{"a": 1}\n```', {"a": 1}),
        ('  ```\n{"a": 1}\n```  \n', {"a": 1}),
        ('```JSON5\r\n{"a": 1}\r\n```', {"a": 1}),
        ('\n {"a": 1} \n', {"a": 1}),
    ],
)
def test_one_code_fence_and_blanks_around_the_json_are_allowed(text: str, expected: object) -> None:
    assert OutputSpec.json().parse(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        'Here it is: {"a": 1}',
        '{"a": 1} hope this helps',
        '```json {"a": 1}```',  # no newline after the info string
        '```json\n{"a": 1}\n``` and more ```',
        '```a b\n{"a": 1}\n```',  # an info string with a space is not one
        "",
    ],
)
def test_other_text_around_the_json_is_invalid(text: str) -> None:
    assert "not valid JSON" in invalid(OutputSpec.json(), text).feedback


@pytest.mark.parametrize(
    ("kind", "text", "value"),
    [
        (list, "[1, 2]", [1, 2]),
        (str, '"hi"', "hi"),
        (int, "42", 42),
        (float, "2.5", 2.5),
        (float, "3", 3.0),
        (bool, "true", True),
    ],
)
def test_json_of_each_top_level_type(kind: type, text: str, value: object) -> None:
    parsed: object = OutputSpec.json(type=kind).parse(text)
    assert parsed == value
    assert type(parsed) is kind


@pytest.mark.parametrize(
    ("kind", "text", "got"),
    [
        (int, "true", "true or false"),
        (bool, "1", "a JSON integer"),
        (int, "1.0", "a JSON number"),
        (dict, "null", "null"),
        (dict, "[]", "a JSON array"),
        (list, '{"a": 1}', "a JSON object"),
    ],
)
def test_json_of_another_type_is_invalid_and_says_which(kind: type, text: str, got: str) -> None:
    error = invalid(OutputSpec.json(type=kind), text)
    assert error.feedback.startswith(f"The answer is {got}, not ")


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"type": tuple}, "type must be one of"),
        ({"type": list, "required_keys": ["a"]}, "required_keys go with type=dict"),
        ({"required_keys": "ab"}, "required_keys must be an iterable"),
        ({"required_keys": [1]}, "str keys"),
        ({"required_keys": ["a", "a"]}, "must not repeat"),
        ({"max_depth": 0}, "max_depth"),
        ({"max_chars": 0}, "max_chars"),
        ({"name": " "}, "name must be a non-empty str"),
    ],
)
def test_a_bad_json_spec_is_refused_at_construction(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidValueError, match=re.escape(named)):
        OutputSpec.json(**kwargs)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_nesting_is_bounded_before_the_decoder_recurses() -> None:
    spec = OutputSpec.json(type=list)
    assert spec.parse(_nested(DEFAULT_MAX_DEPTH)) is not None
    error = invalid(spec, _nested(DEFAULT_MAX_DEPTH + 1))
    assert error.feedback == "The answer nests deeper than 100 levels. Answer with flatter JSON."
    shallow = OutputSpec.json(type=list, max_depth=2)
    assert "deeper than 2" in invalid(shallow, '[[1], {"a": [2]}]').feedback
    assert shallow.parse("[[1], [2], [3]]") == [[1], [2], [3]]  # width is not depth


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = json.dumps({"code": "[" * 500 + "{" * 500, "q": 'say \\"[[[[\\"'})
    assert OutputSpec.json(max_depth=2).parse(text)["code"].startswith("[[[")


def test_a_recursion_error_inside_the_decoder_becomes_invalid_never_raw() -> None:
    limit = sys.getrecursionlimit()
    spec = OutputSpec.json(type=list, max_depth=10 * limit)
    error = invalid(spec, _nested(5 * limit))
    assert "not usable JSON" in error.feedback


def test_integers_are_bounded_whatever_the_process_allows() -> None:
    spec = OutputSpec.json(type=int)
    assert spec.parse("-" + "9" * MAX_INT_DIGITS) == -int("9" * MAX_INT_DIGITS)
    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # unlimited for the process
    try:
        error = invalid(spec, "9" * (MAX_INT_DIGITS + 1))
    finally:
        sys.set_int_max_str_digits(old)
    assert f"more than {MAX_INT_DIGITS} digits" in error.feedback


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('{"a": NaN}', "NaN is not a JSON number"),
        ('{"a": Infinity}', "Infinity is not a JSON number"),
        ('{"a": -Infinity}', "-Infinity is not a JSON number"),
        ('{"a": 1e999}', "the number 1e999 is too large"),
        ('{"a": -1e999}', "the number -1e999 is too large"),
    ],
)
def test_non_finite_numbers_are_invalid(text: str, why: str) -> None:
    assert why in invalid(OutputSpec.json(), text).feedback


def test_an_answer_over_max_chars_is_invalid_without_being_parsed() -> None:
    spec = OutputSpec.json(max_chars=10)
    assert spec.parse('{"a": 123}') == {"a": 123}
    error = invalid(spec, '{"a": 1234}')
    assert error.feedback == (
        "The answer is too long (11 characters, at most 10). Answer more briefly."
    )


@HYPOTHESIS
@given(st.text(max_size=200))
def test_any_text_parses_or_is_invalid_nothing_else(text: str) -> None:
    for spec in (OutputSpec.json(), OutputSpec.json(type=list, max_depth=3)):
        errors: list[OutputValidationError] = []
        try:
            spec.parse(text)
        except OutputValidationError as exc:
            errors.append(exc)
        assert all(error.feedback and error.text == text for error in errors)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)


@HYPOTHESIS
@given(st.dictionaries(st.text(max_size=8), _JSON, max_size=5))
def test_an_object_round_trips_through_json(value: dict[str, Any]) -> None:
    text = json.dumps(value)
    assert OutputSpec.json(value.keys()).parse(text) == value


# -- regex --------------------------------------------------------------------------------


def test_regex_returns_the_named_groups_searched_for() -> None:
    spec = OutputSpec.regex(r"score: (?P<score>\d+)(?:/(?P<out_of>\d+))?")
    assert spec.parse("My verdict... score: 7/10, done") == {"score": "7", "out_of": "10"}
    assert spec.parse("score: 7") == {"score": "7", "out_of": None}
    error = invalid(spec, "no score here")
    assert error.feedback.startswith("The answer does not contain a match for the required format")
    assert spec.name.startswith("regex ")


def test_regex_fullmatch_and_flags() -> None:
    spec = OutputSpec.regex(r"(?P<word>yes|no)", flags=re.IGNORECASE, fullmatch=True)
    assert spec.parse("YES") == {"word": "YES"}
    assert "does not match the required format" in invalid(spec, "yes!").feedback
    compiled = OutputSpec.regex(re.compile(r"(?P<n>\d)"), name="digit")
    assert compiled.parse("a1") == {"n": "1"}
    assert compiled.name == "digit"


@pytest.mark.parametrize(
    ("pattern", "kwargs", "named"),
    [
        (r"\d+", {}, "no named group"),
        (r"(\d+)", {}, "no named group"),
        (r"(?P<a>", {}, "not a valid regex"),
        (b"(?P<a>x)", {}, "must be a str or re.Pattern"),
        (re.compile(rb"(?P<a>x)"), {}, "must match text"),
        (re.compile(r"(?P<a>x)"), {"flags": re.I}, "flags"),
        (r"(?P<a>x)", {"fullmatch": 1}, "fullmatch"),
    ],
)
def test_a_bad_regex_spec_is_refused(pattern: Any, kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidValueError, match=named):
        OutputSpec.regex(pattern, **kwargs)


# -- callable -----------------------------------------------------------------------------


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"{value} is not positive")
    return value


def test_a_callable_spec_turns_its_refusals_into_feedback() -> None:
    spec = OutputSpec.callable(_positive)
    assert spec.parse("5") == 5
    assert spec.name == "_positive"
    assert invalid(spec, "-1").feedback == "The answer was refused: -1 is not positive"
    assert "invalid literal" in invalid(spec, "x").feedback
    keyed = OutputSpec.callable(lambda text: {"a": 1}[text], name="keyed")
    assert invalid(keyed, "b").feedback == "The answer was refused: 'b'"

    def own(text: str) -> str:
        raise OutputValidationError("inner", "Say it in French.", text)

    error = invalid(OutputSpec.callable(own, name="french"), "hello")
    assert (error.spec, error.feedback, error.text) == ("french", "Say it in French.", "hello")


def test_a_callable_spec_lets_a_bug_through_unchanged() -> None:
    def buggy(text: str) -> str:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        OutputSpec.callable(buggy).parse("x")
    with pytest.raises(InvalidValueError, match="fn must be callable"):
        OutputSpec.callable("x")  # type: ignore[arg-type]


# -- pydantic -----------------------------------------------------------------------------


class Review(pydantic.BaseModel):
    title: str
    score: int = pydantic.Field(ge=0, le=10)


def test_a_pydantic_spec_returns_the_model() -> None:
    spec = OutputSpec.pydantic(Review)
    assert spec.parse('```json\n{"title": "ok", "score": 7}\n```') == Review(title="ok", score=7)
    assert (spec.name, spec.kind) == ("Review", "pydantic")


def test_pydantic_feedback_names_each_field_without_urls() -> None:
    error = invalid(OutputSpec.pydantic(Review), '{"score": 11}')
    assert error.feedback == (
        "The answer does not fit the schema Review: title: Field required; "
        "score: Input should be less than or equal to 10. "
        "Answer with a JSON object that fits Review."
    )
    assert "errors.pydantic.dev" not in error.feedback
    assert "Invalid JSON" in invalid(OutputSpec.pydantic(Review), "{").feedback


def test_pydantic_is_bounded_by_its_own_parser() -> None:
    class Deep(pydantic.BaseModel):
        x: Any

    assert (
        "recursion limit"
        in invalid(OutputSpec.pydantic(Deep), '{"x": ' + _nested(300) + "}").feedback
    )
    assert (
        "number out of range"
        in invalid(OutputSpec.pydantic(Deep), '{"x": ' + "9" * 5000 + "}").feedback
    )


def test_a_pydantic_spec_needs_a_model() -> None:
    with pytest.raises(InvalidValueError, match="BaseModel subclass"):
        OutputSpec.pydantic(dict)
    with pytest.raises(InvalidValueError, match="BaseModel subclass"):
        OutputSpec.pydantic(Review(title="x", score=1))  # type: ignore[arg-type]


def test_without_pydantic_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pydantic", None)  # makes `import pydantic` fail
    with pytest.raises(MissingDependencyError) as caught:
        OutputSpec.pydantic(Review)
    assert isinstance(caught.value, ImportError)
    assert "pip install 'techrevati-runtime[pydantic]'" in str(caught.value)


def test_importing_outputs_imports_neither_pydantic_nor_json() -> None:
    code = (
        "import sys, techrevati.runtime.outputs;"
        "print(sorted({'pydantic', 'json'} & set(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]"


# -- reading text out of responses ---------------------------------------------------------

ANSWER = '{"verdict": "ship"}'
SPEC = OutputSpec.json(["verdict"])


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as running:
        yield running


def test_reads_a_real_openai_chat_completion(server: ScriptedServer) -> None:
    server.reply(200, openai_chat_completion(ANSWER))
    with scripted.openai_client(server.url) as client:
        response = client.chat.completions.create(model="m", messages=[])
    assert isinstance(response, openai.types.chat.ChatCompletion)
    assert SPEC.parse(response) == {"verdict": "ship"}
    assert SPEC.parse(response.model_dump()) == {"verdict": "ship"}


def test_reads_a_real_openai_response(server: ScriptedServer) -> None:
    server.reply(200, openai_response(ANSWER))
    with scripted.openai_client(server.url) as client:
        response = client.responses.create(model="m", input="hi")
    assert SPEC.parse(response) == {"verdict": "ship"}
    assert SPEC.parse(response.model_dump()) == {"verdict": "ship"}


def test_reads_a_real_anthropic_message(server: ScriptedServer) -> None:
    server.reply(200, anthropic_message(ANSWER))
    with scripted.anthropic_client(server.url) as client:
        message = client.messages.create(model="m", max_tokens=10, messages=[])
    assert isinstance(message, anthropic.types.Message)
    assert SPEC.parse(message) == {"verdict": "ship"}


def test_reads_a_real_gemini_response(server: ScriptedServer) -> None:
    body = gemini_response("ignored")
    body["candidates"][0]["content"]["parts"] = [
        {"text": "thinking...", "thought": True},
        {"text": ANSWER[:5]},
        {"text": ANSWER[5:]},
    ]
    server.reply(200, body)
    client = scripted.genai_client(server.url)
    try:
        response = client.models.generate_content(model="m", contents="hi")
    finally:
        client.close()
    assert SPEC.parse(response) == {"verdict": "ship"}
    assert SPEC.parse(body) == {"verdict": "ship"}  # the REST dict too


def test_reads_a_real_bedrock_converse_response(server: ScriptedServer) -> None:
    server.reply(200, converse_response(ANSWER))
    client = scripted.bedrock_client(server.url)
    try:
        response = client.converse(
            modelId="m", messages=[{"role": "user", "content": [{"text": "hi"}]}]
        )
    finally:
        client.close()
    assert SPEC.parse(response) == {"verdict": "ship"}


def test_reads_bytes_and_langchain_messages() -> None:
    from langchain_core.messages import AIMessage

    assert SPEC.parse(ANSWER.encode()) == {"verdict": "ship"}
    assert "not UTF-8 text" in invalid(SPEC, b"\xff{}").feedback
    assert SPEC.parse(AIMessage(content=ANSWER)) == {"verdict": "ship"}
    blocks = AIMessage(content=[{"type": "text", "text": ANSWER}])
    assert SPEC.parse(blocks) == {"verdict": "ship"}
    as_dict = {"role": "assistant", "content": [{"type": "text", "text": ANSWER}, "\n"]}
    assert SPEC.parse(as_dict) == {"verdict": "ship"}
    assert "has no text part" in invalid(SPEC, {"content": [{"type": "image"}]}).feedback


def _chat(message: dict[str, Any], finish: str = "stop") -> openai.types.chat.ChatCompletion:
    body = openai_chat_completion()
    body["choices"][0]["message"] = {"role": "assistant", **message}
    body["choices"][0]["finish_reason"] = finish
    return openai.types.chat.ChatCompletion.model_validate(body)


_TOOL_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "search", "arguments": "{}"},
}


@pytest.mark.parametrize(
    ("response", "why"),
    [
        (
            _chat({"content": None, "refusal": "I can't help with that."}),
            "the model refused: I can't",
        ),
        (
            _chat({"content": None, "tool_calls": [_TOOL_CALL]}, "tool_calls"),
            "tool calls and no text",
        ),
        (_chat({"content": None}), "the message has no text"),
        ({"choices": []}, "no choices"),
        (
            anthropic.types.Message.model_validate(
                {
                    **anthropic_message(),
                    "content": [{"type": "tool_use", "id": "t", "name": "s", "input": {}}],
                    "stop_reason": "tool_use",
                }
            ),
            "no text block (stop_reason 'tool_use')",
        ),
        ({"candidates": [], "promptFeedback": {"blockReason": "SAFETY"}}, "blocked: SAFETY"),
        (
            {"candidates": [{"content": {"parts": []}, "finishReason": "MAX_TOKENS"}]},
            "finish_reason 'MAX_TOKENS'",
        ),
        (
            {"output": [{"type": "message", "content": [{"type": "refusal", "refusal": "No."}]}]},
            "the model refused: No.",
        ),
        ({"output": [{"type": "function_call", "name": "f"}]}, "no output text"),
        ({"output": {"message": {"content": [{"toolUse": {}}]}}}, "no text block"),
    ],
)
def test_a_response_without_text_is_invalid_saying_why(response: object, why: str) -> None:
    error = invalid(SPEC, response)
    assert why in error.feedback
    assert error.feedback.startswith("The answer has no text: ")
    assert error.feedback.endswith(". Answer with text in the required format.")
    assert ".." not in error.feedback
    assert error.text == ""


@pytest.mark.parametrize("value", [None, 42, {"answer": 1}, ["a"], object()])
def test_a_value_that_is_no_response_is_the_callers_mistake(value: object) -> None:
    with pytest.raises(InvalidValueError, match="cannot read an answer's text"):
        SPEC.parse(value)


def test_a_property_that_raises_reads_as_absent() -> None:
    class Hostile:
        @property
        def choices(self) -> object:
            raise RuntimeError("boom")

        text = ANSWER

    assert SPEC.parse(Hostile()) == {"verdict": "ship"}


# -- the errors ---------------------------------------------------------------------------


def test_the_errors_pickle_and_the_repr_truncates_the_text() -> None:
    error = OutputValidationError("s", "Fix it.", "x" * 500, attempt=2)
    assert isinstance(error, TechrevatiError)
    assert isinstance(error, ValueError)
    assert "x" * 80 + "..." in repr(error)
    assert "x" * 81 not in repr(error)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.spec, copy.feedback, copy.text, copy.attempt) == ("s", "Fix it.", "x" * 500, 2)
    escalation = OutputEscalationError("s", [error, OutputValidationError("s", "Again.")])
    assert escalation.feedback == ("Fix it.", "Again.")
    assert str(escalation) == "output 's' still invalid after 2 attempt(s); last: Again."
    assert pickle.loads(pickle.dumps(escalation)).feedback == ("Fix it.", "Again.")


def test_retry_call_does_not_retry_an_invalid_output() -> None:
    calls: list[int] = []

    def fn() -> object:
        calls.append(1)
        return SPEC.parse("not json")

    with pytest.raises(OutputValidationError):
        retry_call(fn, policy=RetryPolicy(max_attempts=4, sleep=lambda s: pytest.fail("slept")))
    assert calls == [1]


# -- the recipe ---------------------------------------------------------------------------


class Model:
    """A scripted model: each call returns the next answer and records the feedback it got."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.feedback: list[str | None] = []

    def __call__(self, feedback: str | None = None) -> object:
        self.feedback.append(feedback)
        return self.answers.pop(0)


def test_validated_call_feeds_the_error_back_until_the_answer_fits() -> None:
    model = Model("oops", '{"x": 1}', ANSWER)
    seen: list[OutputValidationError] = []
    assert validated_call(model, SPEC, attempts=3, on_feedback=seen.append) == {"verdict": "ship"}
    assert model.feedback[0] is None
    assert "not valid JSON" in str(model.feedback[1])
    assert "lacks the required key(s) 'verdict'" in str(model.feedback[2])
    assert [error.attempt for error in seen] == [1, 2]
    assert [error.feedback for error in seen] == model.feedback[1:]


def test_validated_call_escalates_after_the_attempts_with_every_feedback() -> None:
    model = Model("a", "b", "c", ANSWER)
    seen: list[OutputValidationError] = []
    with pytest.raises(OutputEscalationError) as caught:
        validated_call(model, SPEC, attempts=3, on_feedback=seen.append)
    escalation = caught.value
    assert len(model.feedback) == 3  # never a fourth call
    assert len(escalation.errors) == 3
    assert [error.text for error in escalation.errors] == ["a", "b", "c"]
    assert escalation.__cause__ is escalation.errors[-1]
    assert len(seen) == 2  # no feedback hook after the last attempt
    assert escalation.spec == SPEC.name


def test_validated_call_with_one_attempt_never_retries() -> None:
    model = Model("nope")
    with pytest.raises(OutputEscalationError):
        validated_call(model, SPEC, attempts=1)
    assert model.feedback == [None]


def test_a_callable_without_a_feedback_parameter_is_called_bare() -> None:
    answers = iter(["bad", ANSWER])
    assert validated_call(lambda: next(answers), SPEC) == {"verdict": "ship"}


def test_the_callables_own_errors_propagate() -> None:
    def broken() -> str:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError, match="down"):
        validated_call(broken, SPEC)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [({"attempts": 0}, "attempts"), ({"on_feedback": 3}, "on_feedback")],
)
def test_validated_call_checks_its_arguments(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidValueError, match=named):
        validated_call(Model(ANSWER), SPEC, **kwargs)
    with pytest.raises(InvalidValueError, match="spec must be an OutputSpec"):
        validated_call(Model(ANSWER), "json")  # type: ignore[arg-type]


def test_avalidated_call_awaits_the_callable_and_an_async_hook() -> None:
    model = Model("x", ANSWER, "still bad")
    hooked: list[str] = []

    async def answer(feedback: str | None = None) -> object:
        await asyncio.sleep(0)
        return model(feedback)

    async def hook(error: OutputValidationError) -> None:
        await asyncio.sleep(0)
        hooked.append(error.feedback)

    result = asyncio.run(avalidated_call(answer, SPEC, attempts=2, on_feedback=hook))
    assert result == {"verdict": "ship"}
    assert hooked == [model.feedback[1]]
    with pytest.raises(OutputEscalationError):
        asyncio.run(avalidated_call(answer, SPEC, attempts=1, on_feedback=print))


def test_an_output_run_used_by_hand() -> None:
    run = OutputRun(OutputSpec.json(type=int), attempts=2)
    assert (run.attempt, run.feedback) == (1, None)
    with pytest.raises(OutputValidationError) as first:
        run.feed("x")
    assert first.value.attempt == 1
    assert run.feedback == first.value.feedback
    assert run.attempt == 2
    with pytest.raises(OutputEscalationError):
        run.feed("y")
    with pytest.raises(OutputEscalationError):  # used up: it stays escalated
        run.feed("3")
    assert len(run.errors) == 2
    assert OutputRun(OutputSpec.json(type=int)).feed("3") == 3


def test_feedback_caller_inspects_the_signature_once() -> None:
    received: list[object] = []

    def keyword_only(*, feedback: str | None) -> str:
        received.append(feedback)
        return "k"

    def positional(feedback: str | None = None) -> str:
        received.append(feedback)
        return "p"

    def forwards(**kwargs: object) -> str:
        received.append(kwargs)
        return "f"

    assert feedback_caller(keyword_only)("a") == "k"
    assert feedback_caller(positional)("b") == "p"
    assert feedback_caller(forwards)("c") == "f"  # **kwargs does not count
    assert received == ["a", "b", {}]
    assert feedback_caller(dict)(None) == {}  # no feedback parameter

    def positional_only(feedback: str | None = None, /) -> str:
        received.append(feedback)
        return "o"

    assert feedback_caller(positional_only)("d") == "o"  # cannot take it by keyword
    assert received.pop() is None

    def logged(fn: Any) -> Any:
        @functools.wraps(fn)
        def wrapper(*args: object, **kwargs: object) -> object:
            return fn(*args, **kwargs)

        return wrapper

    assert feedback_caller(logged(positional))("e") == "p"  # the wrapped signature counts
    assert received.pop() == "e"
    assert feedback_caller(logged(lambda: "bare"))("f") == "bare"

    class Caller:
        def __call__(self, *, feedback: str | None) -> str:
            received.append(feedback)
            return "c"

    assert feedback_caller(Caller())("g") == "c"
    assert received.pop() == "g"
    with pytest.raises(InvalidValueError, match="fn must be callable"):
        feedback_caller(None)  # type: ignore[arg-type]


def test_bind_feedback_leaves_the_other_parameters_open() -> None:
    import inspect

    def turn(model: str, feedback: str | None = None) -> str:
        return f"{model}: {feedback}"

    def plain(model: str) -> str:
        return model

    bound = bind_feedback(turn, "add the score")
    assert bound(model="m") == "m: add the score"
    assert "model" in inspect.signature(bound).parameters
    assert bind_feedback(plain, "ignored") is plain
    with pytest.raises(InvalidValueError, match="fn must be callable"):
        bind_feedback(3, None)  # type: ignore[arg-type]


@HYPOTHESIS
@given(st.lists(st.booleans(), min_size=1, max_size=6), st.integers(1, 5))
def test_validated_call_makes_exactly_the_calls_it_should(valid: list[bool], attempts: int) -> None:
    answers = [ANSWER if ok else f"bad {index}" for index, ok in enumerate(valid)]
    answers += ["never"] * attempts
    model = Model(*answers)
    first_valid = next((index for index, ok in enumerate(valid) if ok), None)
    if first_valid is not None and first_valid < attempts:
        assert validated_call(model, SPEC, attempts=attempts) == {"verdict": "ship"}
        assert len(model.feedback) == first_valid + 1
    else:
        with pytest.raises(OutputEscalationError) as caught:
            validated_call(model, SPEC, attempts=attempts)
        assert len(model.feedback) == attempts
        assert len(caught.value.errors) == attempts
    for index, feedback in enumerate(model.feedback[1:], start=1):
        assert feedback == invalid(SPEC, answers[index - 1]).feedback  # the previous answer's
