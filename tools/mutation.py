"""Mutation testing of the critical modules with mutmut: score per module and the survivors.

Run (not part of CI: a group takes minutes to an hour on two cores)::

    .venv/bin/python -m pip install -q -e '.[mutation]'
    .venv/bin/python tools/mutation.py breaker          # one group
    .venv/bin/python tools/mutation.py --list           # the groups and their modules
    .venv/bin/python tools/mutation.py retry --report   # re-read a finished run

Each group is run in a copy of the working tree (``/tmp/techrevati-mutation/<group>``
unless ``--workdir``), so the checkout is never touched: mutmut mutates only
the group's modules, runs for each mutant the tests that cover its function,
and this script prints one row per module (mutants, killed, survived, score)
and writes every survivor's diff to ``survivors.txt`` in the work folder.

A mutant counts as killed when a test fails on it or it times out. Four
test files cannot run under mutmut's trampolines and are left out of its
runs: ``test_circuit_breaker_interrupts.py`` (it interrupts the library's own
frames, and mutmut adds frames), ``test_imports.py`` (mutmut itself is loaded
into every process), ``test_typing.py`` (it type-checks the sources) and
``test_sink_backpressure.py`` (its clock tells a write waiting for room by
its caller's function name, ``_wait_for_room``, which mutmut renames).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "src/techrevati/runtime"

GROUPS: dict[str, tuple[str, ...]] = {
    "breaker": (
        "circuit_breaker.py",
        "_breaker_state.py",
        "_breaker_permit.py",
        "_breaker_settings.py",
        "_windows.py",
    ),
    "money": ("budget.py", "pricing.py", "usage.py", "_usage_shapes.py", "_money.py"),
    "permissions": (
        "permissions.py",
        "_permission_names.py",
        "_permission_args.py",
        "_tool_gate.py",
        "approvals.py",
    ),
    "lifecycle": ("lifecycle.py",),
    "retry": (
        "retry_policy.py",
        "_retry_run.py",
        "_recovery_context.py",
        "_retry_settings.py",
        "_retry_stats.py",
        "_backoff.py",
        "_recipes.py",
    ),
    "classify": (
        "_classify.py",
        "_classify_reading.py",
        "_failures.py",
        "_failure_signals.py",
        "_wait_hints.py",
        "_sdk.py",
    ),
    "sinks": (
        "sinks.py",
        "_sink_base.py",
        "jsonl.py",
        "sqlite.py",
        "_sqlite_schema.py",
        "_sqlite_rows.py",
        "_sessions.py",
        "_record_text.py",
    ),
    "turns": (
        "_turns.py",
        "_session_core.py",
        "_responses.py",
        "_runner.py",
        "_async_deadline.py",
        "orchestrator.py",
    ),
}
"""The critical modules, in groups that share their tests."""

UNRUNNABLE_TESTS = (
    "tests/test_circuit_breaker_interrupts.py",
    "tests/test_imports.py",
    "tests/test_typing.py",
    "tests/test_sink_backpressure.py",
)
ALSO_COPY = ("README.md", "CHANGELOG.md", "CONTRIBUTING.md", "LICENSE", "docs", "bench", ".ci")
KILLED = {"killed", "timeout", "segfault"}
"""mutmut statuses that mean a test noticed the mutant."""
NOT_RUN = "not checked"
"""The mutmut status of a mutant no test run has reached."""
RUNS = 3
"""How many times ``mutmut run`` is started while mutants are left unchecked."""


def main() -> int:
    """Run or report one group; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("group", nargs="?", choices=sorted(GROUPS))
    parser.add_argument("--list", action="store_true", help="print the groups and exit")
    parser.add_argument("--report", action="store_true", help="only re-read a finished run")
    parser.add_argument("--workdir", type=Path, help="where the copy lives")
    parser.add_argument("--max-children", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.list or args.group is None:
        for name, modules in GROUPS.items():
            print(f"{name:<12} {' '.join(modules)}")
        return 0
    workdir: Path = args.workdir or Path("/tmp/techrevati-mutation") / args.group
    if not args.report:
        _prepare(workdir, GROUPS[args.group])
        env = {**os.environ, "PYTHONPATH": str(workdir / "mutants" / "src")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        # mutmut's first run sometimes stops in its run of the unmutated suite; a
        # second run goes on where it stopped (its output is kept in mutmut.log).
        for _ in range(RUNS):
            with (workdir / "mutmut.log").open("a", encoding="utf-8") as log:
                subprocess.run(
                    [_mutmut(), "run", "--max-children", str(args.max_children)],
                    cwd=workdir,
                    env=env,
                    check=False,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if not _statuses(workdir)[1][NOT_RUN]:
                break
    return _report(workdir, GROUPS[args.group])


def _mutmut() -> str:
    found = shutil.which("mutmut", path=str(Path(sys.executable).parent))
    if found is None:
        sys.exit("mutmut is not installed: .venv/bin/python -m pip install -e '.[mutation]'")
    return found


def _prepare(workdir: Path, modules: tuple[str, ...]) -> None:
    """Copy the working tree to ``workdir`` and configure mutmut for ``modules`` only."""
    if workdir.exists():
        shutil.rmtree(workdir)
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in listed:
        source = ROOT / name
        if source.is_file():
            target = workdir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    others = sorted(
        f"{PACKAGE}/{path.name}"
        for path in (ROOT / PACKAGE).glob("*.py")
        if path.name not in modules
    )
    unknown = [m for m in modules if not (ROOT / PACKAGE / m).is_file()]
    if unknown:
        sys.exit(f"no such module in {PACKAGE}: {', '.join(unknown)}")
    ignores = ", ".join(f'"--ignore={path}"' for path in UNRUNNABLE_TESTS)
    config = (
        "\n[tool.mutmut]\n"
        'source_paths = ["src/"]\n'
        f"do_not_mutate = [{', '.join(repr(o).replace(chr(39), chr(34)) for o in others)}]\n"
        'pytest_add_cli_args_test_selection = ["tests/"]\n'
        f'pytest_add_cli_args = [{ignores}, "-x", "-q"]\n'
        f"also_copy = [{', '.join(chr(34) + c + chr(34) for c in ALSO_COPY)}]\n"
    )
    with (workdir / "pyproject.toml").open("a", encoding="utf-8") as file:
        file.write(config)
    # The import path must exist when the interpreter starts, or it is never searched.
    (workdir / "mutants" / "src").mkdir(parents=True, exist_ok=True)


def _report(workdir: Path, modules: tuple[str, ...]) -> int:
    """Print the score per module and write the survivors' diffs; 0 if every module >= 90%."""
    statuses, _, survivors = _statuses(workdir, modules)
    print(f"{'module':<22} {'mutants':>7} {'killed':>7} {'survived':>8} {'score':>7}")
    total = Counter[str]()
    below = False
    for module, counts in statuses.items():
        total.update(counts)
        below |= _row(module, counts)
    _row("all", total)
    unchecked = total[NOT_RUN]
    if unchecked:
        print(
            f"{unchecked} mutants were never run: mutmut stopped early (its run of the "
            f"unmutated tests failed, or it was killed); run `mutmut run` in {workdir} to see why"
        )
        return 2
    with (workdir / "survivors.txt").open("w", encoding="utf-8") as out:
        for name in survivors:
            shown = subprocess.run(
                [_mutmut(), "show", name], cwd=workdir, capture_output=True, text=True, check=False
            ).stdout
            out.write(shown.rstrip() + "\n\n")
    print(f"{len(survivors)} survivors, diffs in {workdir / 'survivors.txt'}")
    return 1 if below else 0


def _statuses(
    workdir: Path, modules: tuple[str, ...] | None = None
) -> tuple[dict[str, Counter[str]], Counter[str], list[str]]:
    """Read ``mutmut results``: statuses per module (of ``modules``), all, and the survivors."""
    results = subprocess.run(
        [_mutmut(), "results", "--all", "true"],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    statuses: dict[str, Counter[str]] = {m.removesuffix(".py"): Counter() for m in modules or ()}
    total = Counter[str]()
    survivors: list[str] = []
    for line in results.splitlines():
        match = re.match(r"\s*techrevati\.runtime\.(\w+)\.(\S+): (.+)$", line)
        if match is None:
            continue
        module, status = match.group(1), match.group(3).strip()
        total[status] += 1
        if module not in statuses:
            continue
        statuses[module][status] += 1
        if status not in KILLED:
            survivors.append(f"techrevati.runtime.{module}.{match.group(2)}")
    return statuses, total, survivors


def _row(module: str, counts: Counter[str]) -> bool:
    mutants = sum(counts.values())
    killed = sum(counts[s] for s in KILLED)
    score = killed / mutants if mutants else 1.0
    print(f"{module:<22} {mutants:>7} {killed:>7} {mutants - killed:>8} {score:>7.1%}")
    return score < 0.9


if __name__ == "__main__":
    sys.exit(main())
