"""mypy --strict checks what passes through the wrappers: retry_call, run_tool and the rest."""

from __future__ import annotations

import re
from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "tests" / "typing" / "wrong_arguments.py"
_EXPECT = re.compile(r"#\s*expect:\s*([a-z-]+)")
_ERROR = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[a-z-]+)\]$")


def _expected() -> set[tuple[int, str]]:
    marks = set()
    for number, line in enumerate(CASES.read_text(encoding="utf-8").splitlines(), start=1):
        found = _EXPECT.search(line)
        if found:
            marks.add((number, found.group(1)))
    return marks


def test_wrong_arguments_through_the_wrappers_are_type_errors() -> None:
    stdout, stderr, _ = api.run(
        [
            "--strict",
            "--show-error-codes",
            "--no-error-summary",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(CASES),
        ]
    )
    found = set()
    for line in stdout.splitlines():
        error = _ERROR.match(line)
        if error and Path(error["file"]).name == CASES.name:
            found.add((int(error["line"]), error["code"]))
    assert stderr == ""
    assert found == _expected(), stdout
