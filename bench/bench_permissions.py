"""Permission checks: the cached enforcer, 5,000 globs in one role, and decide with arguments.

Run: ``.venv/bin/python -m bench.bench_permissions``

Three parts, each next to a bare call measured in the same run:

1. ``PermissionEnforcer.check`` with 50 roles x 50 denied tools and a few
   globs: the cached path (a repeated (role, tool) pair), the miss path (an
   enforcer with ``cache_size=0``, so every call decides afresh as a cache
   miss does), and a non-ASCII name on the miss path.
2. One role with 5,000 glob entries in ``denied_tools`` (unique literal
   prefixes ``tool_<i>_*``, groups sharing a prefix ``grp_<k>_*_<i>``, and
   globs that start with a wildcard ``*_<i>``): the build time (best of 5,
   and the first check after a build, which compiles the globs it tries),
   then ``PermissionPolicy.check`` (no cache) for a name denied by the last
   glob, a name matching nothing, a name matching the first glob, and more.
3. 50 roles x 50 rules, plain names, globs and argument rules on shell, fs
   and http tools, with a workspace (a temporary directory):
   ``PermissionPolicy.decide`` (no cache) for a plain name, a shell command,
   a path and a URL; ``PermissionPolicy.check`` and ``PermissionEnforcer``
   (miss and hit) for the plain name, and ``PermissionEnforcer.decide``
   without arguments (cached) on a hit; the same at 500 rules per role (450 on
   other tools) to show a decision costs the rules of its own tool; and, for
   scale, one ``os.path.realpath`` of the path and one ``urlsplit`` of the URL.

Add ``--cpu`` to time parts 2 and 3 by the CPU time of the thread
(``time.thread_time``) instead of the wall clock: on a shared machine that
leaves out the time the process waits for a core.

Parts 2 and 3 are timed in interleaved rounds (``bench._timing.interleaved``:
every row once per round, the minimum kept), with a bare dict lookup and a
bare three-argument call in the same rounds; each row ends with its goal.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import timeit
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from bench._timing import Measure, interleaved, per_call_ns, report, sync_loop_ns
from techrevati.runtime.permissions import (
    PermissionEnforcer,
    PermissionMode,
    PermissionPolicy,
    RolePermissionConfig,
)

ROLES = 50
DENIED_PER_ROLE = 50
GLOBS = ("fs.rm*", "shell.*", "net.post*", "secrets.[a-z]*")

SCALE_GLOBS = 5_000
BUILDS = 5
SCALE_ROUNDS = 5
RULE_ROUNDS = 7
DECIDE_CALLS = 2_000
BARE_CALLS = 200_000
HIT_CALLS = 100_000

BUILD_GOAL_MS = 100.0
CHECK_GOAL_US = 5.0
MISS_GOAL_US = 2.0
HIT_GOAL_NS = 300.0


# -- part 1: the cached enforcer (50 roles x 50 denied tools) --------------------


def build_policy() -> PermissionPolicy:
    """50 roles, each denying 50 exact tools plus a few globs; some tool requirements."""
    configs = [
        RolePermissionConfig(
            role=f"role_{r}",
            mode=PermissionMode(1 + r % 3),
            denied_tools=[*(f"tool_{r}_{t}" for t in range(DENIED_PER_ROLE)), *GLOBS],
        )
        for r in range(ROLES)
    ]
    requirements = {f"write_{t}": PermissionMode.WORKSPACE_WRITE for t in range(50)}
    requirements["deploy*"] = PermissionMode.FULL_ACCESS
    return PermissionPolicy.from_configs(configs, tool_requirements=requirements)


def _bare(role: str, tool: str) -> None:
    return None


def enforcer_table() -> None:
    """Print ns per check on the hit and miss paths next to a bare call."""
    policy = build_policy()
    enforcer = PermissionEnforcer(policy)
    uncached = PermissionEnforcer(policy, cache_size=0)
    role, allowed_tool, denied_tool = "role_49", "write_7", "tool_49_25"
    glob_denied, unicode_tool = "shell.exec", "\uff34ool_49_25 "
    for tool in (allowed_tool, denied_tool, glob_denied):
        enforcer.check(role, tool)  # warm the cache
    assert not enforcer.check(role, denied_tool).allowed
    assert not uncached.check(role, unicode_tool).allowed

    bare = per_call_ns(lambda: _bare(role, allowed_tool))
    rows = [
        ("bare call (two args)", bare),
        ("check, cache hit, allowed", per_call_ns(lambda: enforcer.check(role, allowed_tool))),
        (
            "check, cache hit, denied (exact)",
            per_call_ns(lambda: enforcer.check(role, denied_tool)),
        ),
        ("check, cache hit, denied (glob)", per_call_ns(lambda: enforcer.check(role, glob_denied))),
        ("is_allowed, cache hit", per_call_ns(lambda: enforcer.is_allowed(role, allowed_tool))),
        (
            "check, cache miss, allowed by mode (ASCII)",
            per_call_ns(lambda: uncached.check(role, allowed_tool), number=50_000),
        ),
        (
            "check, cache miss, denied exact (ASCII)",
            per_call_ns(lambda: uncached.check(role, denied_tool), number=50_000),
        ),
        (
            "check, cache miss, denied by glob (ASCII)",
            per_call_ns(lambda: uncached.check(role, glob_denied), number=50_000),
        ),
        (
            "check, cache miss, denied (full-width + space)",
            per_call_ns(lambda: uncached.check(role, unicode_tool), number=50_000),
        ),
    ]
    print(f"1. {ROLES} roles x {DENIED_PER_ROLE} denied tools + {len(GLOBS)} globs each")
    report(rows, baseline=bare)


# -- shared by parts 2 and 3 ------------------------------------------------------


def _bare3(role: str, tool: str, args: object) -> None:
    return None


def _bare_rows() -> dict[str, Measure]:
    """The two baselines, as interleaved variants."""
    table = {f"tool_{i}": i for i in range(64)}
    return {
        "bare dict lookup": _timed(lambda: table.get("tool_7"), BARE_CALLS),
        "bare call (three args)": _timed(lambda: _bare3("role_49", "read_7", None), BARE_CALLS),
    }


def _show_time(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.1f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} us"
    return f"{ns:.0f} ns"


def _table(
    title: str,
    best: dict[str, float],
    goals: dict[str, float],
    extra: Sequence[tuple[str, float, float | None]] = (),
) -> None:
    """Print one row per variant: time, x dict lookup, x bare call, goal and verdict."""
    lookup = best["bare dict lookup"]
    call = best["bare call (three args)"]
    print(title)
    print(f"{'case':<56} {'per call':>10} {'x dict':>8} {'x call':>8}  goal")
    rows = [(name, ns, goals.get(name)) for name, ns in best.items()]
    for index, (name, ns, goal) in enumerate([*extra, *rows]):
        verdict = ""
        if goal is not None:
            verdict = f"<= {_show_time(goal)}: {'met' if ns <= goal else 'NOT met'}"
        ratios = ("-", "-") if index < len(extra) else (f"{ns / lookup:.1f}", f"{ns / call:.1f}")
        print(f"{name:<56} {_show_time(ns):>10} {ratios[0]:>8} {ratios[1]:>8}  {verdict}")


# -- part 2: 5,000 globs in one role ---------------------------------------------


def scale_entries(count: int = SCALE_GLOBS, *, floating: bool = True) -> list[str]:
    """``count`` globs: mostly unique prefixes, 10 % in groups of a shared prefix, 5 % ``*_<i>``.

    The last entry is ``tool_<count - 1>_*``; without ``floating`` the
    ``*_<i>`` globs are left out.
    """
    entries: list[str] = []
    for i in range(count):
        if i % 20 == 7:
            if floating:
                entries.append(f"*_{i}")
        elif i % 10 == 3:
            entries.append(f"grp_{i // 10 % 5}_*_{i}")  # 5 prefixes shared by 100 globs each
        else:
            entries.append(f"tool_{i}_*")
    return entries


def _scale_policy(entries: list[str]) -> PermissionPolicy:
    config = RolePermissionConfig("big", PermissionMode.FULL_ACCESS, denied_tools=entries)
    return PermissionPolicy({"big": config})


def _build_ms(entries: list[str], first_check: str | None) -> float:
    """Best of ``BUILDS`` builds in ms (and the first check after it, if named), cold regexes."""
    best = float("inf")
    for _ in range(BUILDS):
        re.purge()  # the globs compile on first use; a warm re cache would hide it
        start = time.perf_counter()
        policy = _scale_policy(entries)
        if first_check is not None:
            policy.check("big", first_check)
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def scale_table() -> None:
    """Print build and uncached check times for one role of 5,000 globs."""
    entries = scale_entries()
    no_floating = scale_entries(floating=False)
    policy = _scale_policy(entries)
    plain = _scale_policy(no_floating)
    last_floating = max(i for i in range(SCALE_GLOBS) if i % 20 == 7)
    last_shared = max(i for i in range(SCALE_GLOBS) if i % 10 == 3 and i % 20 != 7)
    cases = {
        "check: denied by the last glob": (policy, f"tool_{SCALE_GLOBS - 1}_run", "tool_"),
        "check: matches nothing": (policy, "nothing.matches", None),
        "check: denied by the first glob": (policy, "tool_0_run", "tool_0_*"),
        "check: denied by the last *_<i> glob": (policy, f"x_{last_floating}", "*_"),
        "check: denied by the last of 100 sharing a prefix": (
            policy,
            f"grp_{last_shared // 10 % 5}_x_{last_shared}",
            "grp_",
        ),
        "check, no *_<i> globs: denied by the last glob": (
            plain,
            f"tool_{SCALE_GLOBS - 1}_run",
            "tool_",
        ),
        "check, no *_<i> globs: matches nothing": (plain, "nothing.matches", None),
    }
    for name, (which, tool, rule) in cases.items():
        outcome = which.check("big", tool)
        assert (rule is None) == outcome.allowed, (name, outcome)
        assert rule is None or outcome.rule.startswith(f"denied_tools:{rule}"), (name, outcome)
    assert policy.check("big", f"tool_{SCALE_GLOBS - 1}_run").rule == (
        f"denied_tools:{entries[-1]}"
    )

    builds: list[tuple[str, float, float | None]] = [
        ("build the policy (5,000 globs)", _build_ms(entries, None) * 1e6, BUILD_GOAL_MS * 1e6),
        (
            "build + first check (nothing matches: compiles)",
            _build_ms(entries, "nothing.matches") * 1e6,
            None,
        ),
        ("build the policy (4,750 globs, no *_<i>)", _build_ms(no_floating, None) * 1e6, None),
    ]
    variants = _bare_rows()
    for name, (which, tool, _rule) in cases.items():
        variants[name] = _checker(which, tool)
    best = interleaved(variants, rounds=SCALE_ROUNDS)
    goals = dict.fromkeys(cases, CHECK_GOAL_US * 1e3)
    _table(
        f"\n2. one role, {SCALE_GLOBS:,} globs in denied_tools (250 start with a wildcard, "
        f"500 share 5 prefixes); PermissionPolicy.check, no cache; best of "
        f"{SCALE_ROUNDS} interleaved rounds (builds: best of {BUILDS})",
        best,
        goals,
        builds,
    )


def _checker(policy: PermissionPolicy, tool: str) -> Measure:
    calls = max(20, int(2e6 / max(1.0, _rough_ns(lambda: policy.check("big", tool)))))
    return _timed(lambda: policy.check("big", tool), calls)


def _rough_ns(fn: Callable[[], object]) -> float:
    """A first guess at ns per call, to size the timed loops (~2 ms each)."""
    return sync_loop_ns(fn, 50)


# -- part 3: 50 roles x 50 rules with argument patterns ---------------------------


def rule_entries(role: int, extra: int = 0) -> tuple[list[str], list[str], list[str]]:
    """(denied, ask, allowed) for one role: 50 entries, plus ``extra`` on other tools."""
    denied = [
        *(f"tool_{role}_{t}" for t in range(8)),
        "net.raw.*",
        "secrets.*",
        "shell(rm *)",
        "shell(curl *)",
        "fs.write(path:secrets/**)",
        "fs.write(path:.git/**)",
        "http.get(url:https://evil.example/*)",
    ]
    ask = [
        "shell(git push *)",
        "deploy.*",
        "http.post(url:https://api.example.com/*)",
        "fs.delete(path:**)",
        f"mail_{role}",
    ]
    allowed = [
        *(f"read_{t}" for t in range(13)),
        "docs.*",
        "search.*",
        "calc_*",
        "shell(npm run *)",
        "shell(npm test)",
        "shell(git status)",
        "shell(git diff *)",
        "shell(ls *)",
        "fs.read(path:**)",
        "fs.write(path:src/**)",
        "fs.write(path:tests/**)",
        "fs.write(path:docs/*.md)",
        "http.get(url:https://api.example.com/*)",
        "http.get(url:https://docs.python.org/*)",
        "http.get(url:https://pypi.org/*)",
        f"write_{role}",
        "todo.*",
    ]
    for k in range(extra):
        target = (denied, ask, allowed)[k % 3]
        target.append(f"other_{k}" if k % 2 else f"other_tool_{k}(text:*{k}*)")
    return denied, ask, allowed


def rule_policy(workspace: str, extra: int = 0) -> PermissionPolicy:
    """50 roles x (50 + ``extra``) rules, some tool requirements, the given workspace."""
    configs: dict[str, RolePermissionConfig] = {}
    for r in range(ROLES):
        denied, ask, allowed = rule_entries(r, extra)
        configs[f"role_{r}"] = RolePermissionConfig(
            f"role_{r}",
            PermissionMode(1 + r % 3),
            allowed_tools=allowed,
            denied_tools=denied,
            ask_tools=ask,
        )
    requirements: dict[str, PermissionMode | str | int] = {
        "shell": PermissionMode.FULL_ACCESS,
        "fs.write": "workspace_write",
    }
    return PermissionPolicy(configs, requirements, workspace=workspace)


def rules_table(workspace: str) -> None:
    """Print decide (no cache), check and the enforcer on 50 roles x 50 rules."""
    (Path(workspace) / "src" / "app").mkdir(parents=True)
    (Path(workspace) / "src" / "app" / "main.py").write_text("", encoding="utf-8")
    policy = rule_policy(workspace)
    wide = rule_policy(workspace, extra=450)
    enforcer = PermissionEnforcer(policy)
    missing = PermissionEnforcer(policy, cache_size=0)
    role = "role_49"
    calls: dict[str, tuple[str, dict[str, str], str]] = {
        "(a) plain name": ("read_7", {"query": "permissions"}, "allowed_tools:read_7"),
        "(b) shell command": (
            "shell",
            {"command": "npm run build"},
            "allowed_tools:shell(npm run *)",
        ),
        "(c) path, workspace": (
            "fs.write",
            {"path": "src/app/main.py", "content": "x"},
            "allowed_tools:fs.write(path:src/**)",
        ),
        "(d) URL": (
            "http.get",
            {"url": "https://API.example.com:443/v1/items?page=2"},
            "allowed_tools:http.get(url:https://api.example.com/*)",
        ),
    }
    for which in (policy, wide):
        for tool, args, rule in calls.values():
            decision = which.decide(role, tool, args)
            assert decision.allowed, decision
            assert decision.rule == rule, decision
    assert enforcer.check(role, "read_7").rule == "allowed_tools:read_7"
    assert enforcer.decide(role, "read_7").rule == "allowed_tools:read_7"

    variants = _bare_rows()
    goals: dict[str, float] = {}
    for label, (tool, args, _rule) in calls.items():
        name = f"decide {label}"
        variants[name] = _timed(_decider(policy, role, tool, args), DECIDE_CALLS)
        goals[name] = MISS_GOAL_US * 1e3
    variants["check (a), PermissionPolicy.check, no cache"] = _timed(
        lambda: policy.check(role, "read_7"), DECIDE_CALLS
    )
    variants["check (a), PermissionEnforcer, cache_size=0"] = _timed(
        lambda: missing.check(role, "read_7"), DECIDE_CALLS
    )
    variants["check (a), PermissionEnforcer, cache hit"] = _timed(
        lambda: enforcer.check(role, "read_7"), HIT_CALLS
    )
    variants["decide (a), args=None, PermissionEnforcer, cache hit"] = _timed(
        lambda: enforcer.decide(role, "read_7"), HIT_CALLS
    )
    goals["decide (a), args=None, PermissionEnforcer, cache hit"] = HIT_GOAL_NS
    goals["check (a), PermissionPolicy.check, no cache"] = MISS_GOAL_US * 1e3
    goals["check (a), PermissionEnforcer, cache_size=0"] = MISS_GOAL_US * 1e3
    goals["check (a), PermissionEnforcer, cache hit"] = HIT_GOAL_NS
    for label in ("(a) plain name", "(b) shell command"):
        tool, args, _rule = calls[label]
        name = f"decide {label}, 500 rules a role"
        variants[name] = _timed(_decider(wide, role, tool, args), DECIDE_CALLS)
    # What (c) and (d) cannot do without: resolve the path once, split the URL once.
    target = str(Path(workspace) / "src" / "app" / "main.py")
    url = calls["(d) URL"][1]["url"]
    variants["for scale: one os.path.realpath of the (c) path"] = _timed(
        lambda: os.path.realpath(target), DECIDE_CALLS
    )
    variants["for scale: one urllib.parse.urlsplit of the (d) URL"] = _timed(
        lambda: urllib.parse.urlsplit(url).hostname, DECIDE_CALLS
    )
    best = interleaved(variants, rounds=RULE_ROUNDS)
    _table(
        f"\n3. {ROLES} roles x 50 rules (plain, globs, shell/fs/http argument rules), "
        f"workspace a temporary directory; role_49; best of {RULE_ROUNDS} interleaved rounds",
        best,
        goals,
    )


def _decider(
    policy: PermissionPolicy, role: str, tool: str, args: dict[str, str]
) -> Callable[[], object]:
    return lambda: policy.decide(role, tool, args)


def _timed(fn: Callable[[], object], calls: int) -> Measure:
    """``calls`` calls of ``fn`` per measurement: wall clock, or with ``--cpu`` the thread's CPU."""
    if "--cpu" in sys.argv[1:]:
        timer = timeit.Timer(fn, timer=time.thread_time)  # timeit turns the GC off too
        return lambda: timer.timeit(calls) / calls * 1e9
    return lambda: sync_loop_ns(fn, calls)


def main() -> None:
    """Print the three tables."""
    started = time.perf_counter()
    flags = "".join(f" {arg}" for arg in sys.argv[1:])
    clock = "thread CPU time (--cpu)" if "--cpu" in sys.argv[1:] else "wall clock"
    print(f"command: nice -n 5 .venv/bin/python -m bench.bench_permissions{flags}")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{os.cpu_count()} cores, load average {load}; parts 2 and 3 timed by {clock}\n")
    enforcer_table()
    scale_table()
    with tempfile.TemporaryDirectory(prefix="bench-permissions-") as workspace:
        rules_table(workspace)
    print(f"\ntotal {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
