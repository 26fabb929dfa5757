from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

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


def test_demo_shows_the_loop_essentials() -> None:
    text = _run().split("loop essentials", 1)[1]
    for needle in (
        "crash: killed in step 3, before its checkpoint",
        "resumed chapter-1 at step 2 with 2 drafts",
        "step 3 runs again as chapter-1/3",
        "chapter-1 done at step 3",
        "session.resumed        thread chapter-1 at step 2; step 3 runs again",
        "governance: 2 turns ran, the session ended governance_breached",
        "governance.breached    governance_breached governance limit max_turns=2",
        "context overflow healed: memory down to 30 of 41 messages",
        "memory.compacted       dropped 11 messages",
        "routed: claude-demo answered, gpt-provider skipped",
        "skipped: gpt-provider/gpt-demo (breaker 'gpt-provider' forced open",
    ):
        assert needle in text, needle
    # Resumed with the two kept steps' cost, then one more step: not the crashed one too
    # (each step costs about the same, so that would be about twice the kept cost).
    kept = Decimal(text.split("drafts and $", 1)[1].split(";", 1)[0])
    done = Decimal(text.split("done at step 3: $", 1)[1].split(" ", 1)[0])
    assert kept < done < kept * Decimal("1.75")


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


def test_audit_command_is_wired(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from techrevati.runtime.audit import AuditLog

    path = tmp_path / "audit.db"
    with AuditLog(path) as log:
        log.append("note", {"n": 1})
    assert main(["audit", "verify", str(path)]) == 0
    assert capsys.readouterr().out.startswith("ok")
    done = subprocess.run(
        [sys.executable, "-m", "techrevati.runtime", "audit", "verify", str(tmp_path / "none.db")],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr
