"""The suite's own rules: an unannounced skip fails the run; the Hypothesis profiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hypothesis import settings

from tests.conftest import HYPOTHESIS_PROFILE, examples

ROOT = Path(__file__).resolve().parent.parent

_SKIPPING = """
import pytest

def test_skips():
    pytest.skip("a missing part")

def test_passes():
    pass
"""


def _run_with_suite_rules(tmp_path: Path, *ini: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(_SKIPPING, encoding="utf-8")
    options = [arg for entry in ini for arg in ("-o", entry)]
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-c",
            "/dev/null",
            *options,
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_sample.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_skip_not_listed_fails_the_run_and_is_named(tmp_path: Path) -> None:
    done = _run_with_suite_rules(tmp_path)
    assert done.returncode == 1, done.stdout
    assert "unexpected skips" in done.stdout
    assert "test_sample.py::test_skips" in done.stdout


def test_a_listed_skip_with_a_reason_passes(tmp_path: Path) -> None:
    done = _run_with_suite_rules(tmp_path, "allowed_skips=test_sample.py::test_skips | demo")
    assert done.returncode == 0, done.stdout


def test_an_allowed_skip_without_a_reason_is_a_usage_error(tmp_path: Path) -> None:
    done = _run_with_suite_rules(tmp_path, "allowed_skips=test_sample.py::test_skips")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "needs 'nodeid | reason'" in done.stdout + done.stderr


def test_the_fast_profile_is_fixed_and_explore_draws_ten_times_more() -> None:
    current = settings()
    if HYPOTHESIS_PROFILE == "fast":
        assert current.derandomize is True
        assert examples(20) == 20
    else:
        assert current.derandomize is False
        assert examples(20) == 100
    assert current.deadline is None
