"""Cost of checking a typed output, next to the bare parse it wraps.

Run: ``.venv/bin/python -m bench.bench_outputs``

Rows, timed in interleaved rounds (every row once per round, each row's
minimum kept): ``json.loads`` of a small object (4 keys, 90 characters) and
``OutputSpec.json`` with 2 required keys on the same text; the same spec
reading a fenced answer and a real openai ``ChatCompletion`` (the text
read out of the response first); a regex spec with two named groups next to
``re.search`` + ``groupdict()``; ``Model.model_validate_json`` and
``OutputSpec.pydantic(Model)``; and ``validated_call`` whose first answer
fits (the recipe's overhead when nothing goes wrong).
"""

from __future__ import annotations

import json
import re

import pydantic
from openai.types.chat import ChatCompletion

from bench._timing import Measure, interleaved, report, sync_loop_ns
from techrevati.runtime.outputs import OutputSpec, validated_call

ROUNDS = 11
NUMBER = 20_000

TEXT = '{"verdict": "ship", "score": 8, "reasons": ["tests pass", "small diff"], "risk": null}'
FENCED = f"```json\n{TEXT}\n```"
GRADE = "Overall the change is good. grade: B+ (would ship)"
PATTERN = r"grade: (?P<letter>[A-F])(?P<sign>[+-])?"


class Review(pydantic.BaseModel):
    verdict: str
    score: int
    reasons: list[str]
    risk: str | None


def _completion() -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": TEXT},
                }
            ],
        }
    )


def main() -> None:
    """Print ns per parse of each row, next to ``json.loads`` of the same text."""
    spec = OutputSpec.json(["verdict", "score"])
    regex_spec = OutputSpec.regex(PATTERN)
    compiled = re.compile(PATTERN)
    model_spec = OutputSpec.pydantic(Review)
    completion = _completion()

    def bare_regex() -> object:
        match = compiled.search(GRADE)
        return None if match is None else match.groupdict()

    def recipe() -> object:
        return validated_call(lambda: TEXT, spec)

    rows: dict[str, Measure] = {
        "json.loads": lambda: sync_loop_ns(lambda: json.loads(TEXT), NUMBER),
        "OutputSpec.json(2 keys).parse(text)": lambda: sync_loop_ns(
            lambda: spec.parse(TEXT), NUMBER
        ),
        "  .parse(fenced text)": lambda: sync_loop_ns(lambda: spec.parse(FENCED), NUMBER),
        "  .parse(openai ChatCompletion)": lambda: sync_loop_ns(
            lambda: spec.parse(completion), NUMBER
        ),
        "re.search + groupdict": lambda: sync_loop_ns(bare_regex, NUMBER),
        "OutputSpec.regex.parse": lambda: sync_loop_ns(lambda: regex_spec.parse(GRADE), NUMBER),
        "Review.model_validate_json": lambda: sync_loop_ns(
            lambda: Review.model_validate_json(TEXT), NUMBER
        ),
        "OutputSpec.pydantic(Review).parse": lambda: sync_loop_ns(
            lambda: model_spec.parse(TEXT), NUMBER
        ),
        "validated_call, first answer fits": lambda: sync_loop_ns(recipe, NUMBER),
    }
    best = interleaved(rows, rounds=ROUNDS)
    print(f"typed outputs; best of {ROUNDS} interleaved rounds of {NUMBER:,} parses")
    report(
        list(best.items()), baseline=best["json.loads"], label="json.loads", unit="parse", digits=2
    )


if __name__ == "__main__":
    main()
