from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from techrevati.runtime import clear_pricing
from techrevati.runtime.__main__ import main
from techrevati.runtime.demo import run_demo


@pytest.fixture(autouse=True)
def _empty_pricing() -> Iterator[None]:
    clear_pricing()
    yield
    clear_pricing()


def _run() -> str:
    out = io.StringIO()
    assert run_demo(out) == 0
    return out.getvalue()


def test_demo_shows_every_injected_fault_and_the_cost_table() -> None:
    text = _run()
    for needle in (
        "turn.failed            rate_limit",
        "retry in 2.00s (rate_limit)",
        "llm_timeout",
        "turn.model_switched    gpt-demo -> claude-demo",
        "context_overflow",
        "tool.denied",
        "hook.vetoed",
        "closed -> open",
        "breaker.rejected",
        "half_open -> closed",
        "budget.exceeded",
        "run stopped by the project budget",
        "policy actions after review: advance_phase",
        "claude-demo",
        "total",
    ):
        assert needle in text, needle


def test_demo_is_deterministic() -> None:
    assert _run() == _run()


def test_module_command_runs_the_demo_quickly() -> None:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "techrevati.runtime", "demo"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    elapsed = time.perf_counter() - started
    assert done.returncode == 0, done.stderr
    assert "timeline" in done.stdout
    assert done.stderr == ""
    assert elapsed < 5.0


def test_unknown_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nonsense"]) == 2
    assert "usage" in capsys.readouterr().err
    assert main(["--help"]) == 0


def test_report_command_is_wired(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "/nonexistent/file.db"]) == 2
    assert capsys.readouterr().err
