"""PermissionEnforcer.check cost with 50 roles x 50 denied tools and a few globs.

Run: ``.venv/bin/python -m bench.bench_permissions``

Prints the cached path (a repeated (role, tool) pair), the miss path (an
enforcer with ``cache_size=0``, so every call decides afresh as a cache miss
does), a non-ASCII name on the miss path, and a bare call for scale.
"""

from __future__ import annotations

from bench._timing import per_call_ns, report
from techrevati.runtime.permissions import (
    PermissionEnforcer,
    PermissionMode,
    PermissionPolicy,
    RolePermissionConfig,
)

ROLES = 50
DENIED_PER_ROLE = 50
GLOBS = ("fs.rm*", "shell.*", "net.post*", "secrets.[a-z]*")


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


def main() -> None:
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
    print(f"{ROLES} roles x {DENIED_PER_ROLE} denied tools + {len(GLOBS)} globs each")
    report(rows, baseline=bare)


if __name__ == "__main__":
    main()
