"""Decisions that explain themselves: allow / deny / ask, rules on arguments, approvers.

The adversarial spellings and argument attacks are in test_permission_bypass.py;
this file covers the decision order, explain, and asking from a session.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from techrevati.runtime import Orchestrator
from techrevati.runtime._tool_gate import call_arguments
from techrevati.runtime.approvals import ApprovalLedger, ApprovalToken, arguments_digest
from techrevati.runtime.errors import InvalidValueError, PermissionDeniedError
from techrevati.runtime.permissions import (
    ApprovalAnswer,
    ApprovalRequest,
    PermissionEnforcer,
    PermissionMode,
    PermissionPolicy,
    RolePermissionConfig,
)
from tests.conftest import CollectingSink

M = PermissionMode


def policy(**config: Any) -> PermissionPolicy:
    workspace = config.pop("workspace", None)
    role = RolePermissionConfig(role="agent", mode=config.pop("mode", M.FULL_ACCESS), **config)
    return PermissionPolicy({"agent": role}, workspace=workspace)


# -- the order of the layers -------------------------------------------------------------------


def test_deny_beats_ask_beats_allow_and_each_says_which_layer() -> None:
    rules = policy(
        allowed_tools=["shell(npm *)", "fs.read"],
        ask_tools=["shell(npm publish *)"],
        denied_tools=["shell(npm publish --force *)"],
    )
    cases = {
        "npm test": ("allow", "allowed_tools", "allowed_tools:shell(npm *)"),
        "npm publish pkg": ("ask", "ask_tools", "ask_tools:shell(npm publish *)"),
        "npm publish --force pkg": (
            "deny",
            "denied_tools",
            "denied_tools:shell(npm publish --force *)",
        ),
        "make all": ("deny", "allowed_tools", "not_in_allowed_tools"),
    }
    for command, (effect, layer, rule) in cases.items():
        decision = rules.decide("agent", "shell", {"command": command})
        assert (decision.effect, decision.layer, decision.rule) == (effect, layer, rule), command
        assert decision.reason
    assert rules.decide("agent", "fs.read").allowed


def test_mode_decisions_carry_the_required_and_held_modes() -> None:
    rules = PermissionPolicy(
        {"agent": RolePermissionConfig(role="agent", mode=M.WORKSPACE_WRITE)},
        tool_requirements={"deploy": M.FULL_ACCESS},
    )
    denied = rules.decide("agent", "deploy")
    assert (denied.effect, denied.required, denied.held) == (
        "deny",
        M.FULL_ACCESS,
        M.WORKSPACE_WRITE,
    )
    allowed = rules.decide("agent", "read")
    assert (allowed.effect, allowed.required, allowed.held) == (
        "allow",
        M.READ_ONLY,
        M.WORKSPACE_WRITE,
    )
    assert denied.to_dict()["required"] == "FULL_ACCESS"
    assert not rules.decide("nobody", "read").allowed
    assert rules.decide("nobody", "read").required is None


def test_check_reports_ask_as_not_allowed_and_keeps_its_rule() -> None:
    rules = policy(ask_tools=["deploy"])
    outcome = rules.check("agent", "deploy")
    assert not outcome.allowed
    assert outcome.rule == "ask_tools:deploy"
    assert "needs approval" in outcome.reason


def test_a_deny_rule_that_cannot_read_its_argument_denies() -> None:
    rules = policy(denied_tools=["fs.write(path:/etc/**)"])
    for args in (None, {}, {"path": 5}, {"other": "/etc/x"}):
        decision = rules.decide("agent", "fs.write", args)
        assert decision.effect == "deny", args
        assert "needs the call's arguments" in decision.reason
    assert rules.decide("agent", "fs.write", {"path": "/tmp/x"}).allowed
    assert rules.decide("agent", "fs.read").allowed  # the rule is for fs.write only


def test_an_allow_rule_that_cannot_read_its_argument_does_not_allow() -> None:
    rules = policy(allowed_tools=["http.get(url:https://api.example.com/*)"])
    assert rules.decide("agent", "http.get", {"url": "https://api.example.com/v1"}).allowed
    assert not rules.decide("agent", "http.get").allowed
    assert not rules.decide("agent", "http.get", {"url": 7}).allowed


def test_a_pattern_over_the_whole_call_reads_its_one_argument() -> None:
    rules = policy(allowed_tools=["shell(git status)"])
    assert rules.decide("agent", "shell", "git status").allowed
    assert rules.decide("agent", "shell", {"cmd": "git status"}).allowed
    two = rules.decide("agent", "shell", {"cmd": "git status", "cwd": "."})
    assert not two.allowed


def test_malformed_entries_are_refused_at_construction() -> None:
    for entry in ("shell(npm", "shell)", "shell()", "shell(a)(b)x"):
        with pytest.raises(InvalidValueError, match="entry"):
            RolePermissionConfig(role="r", mode=M.READ_ONLY, allowed_tools=[entry])
    with pytest.raises(InvalidValueError, match="workspace"):
        PermissionPolicy({}, workspace=5)  # type: ignore[arg-type]


# -- the workspace -------------------------------------------------------------------------------


def test_paths_outside_the_workspace_are_denied_unless_named(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    rules = policy(
        workspace=tmp_path,
        allowed_tools=["fs.write(path:src/**)", "fs.read(path:/etc/hosts)", "fs.read(path:**)"],
    )
    assert rules.decide("agent", "fs.write", {"path": "src/a/b.py"}).allowed
    outside = rules.decide("agent", "fs.write", {"path": "../x"})
    assert (outside.effect, outside.layer, outside.rule) == ("deny", "workspace", "workspace:path")
    assert "outside the workspace" in outside.reason
    assert rules.decide("agent", "fs.read", {"path": "/etc/hosts"}).allowed  # named exactly
    assert not rules.decide("agent", "fs.read", {"path": "/etc/passwd"}).allowed
    assert rules.workspace == str(tmp_path.resolve())
    assert rules.uses_arguments("agent")


def test_a_symlink_out_of_the_workspace_is_resolved_before_matching(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    (workspace / "src").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    (workspace / "src" / "link").symlink_to(tmp_path / "secret")
    rules = policy(workspace=workspace, allowed_tools=["fs.read(path:src/**)"])
    decision = rules.decide("agent", "fs.read", {"path": "src/link"})
    assert decision.effect == "deny"
    assert decision.layer == "workspace"


# -- explain -------------------------------------------------------------------------------------


def test_explain_lists_every_rule_considered_and_why_it_did_not_match() -> None:
    rules = policy(allowed_tools=["shell(npm run *)", "fs.*"], denied_tools=["shell.rm"])
    explanation = rules.explain("agent", "shell", {"command": "npm test"})
    assert explanation.decision.rule == "not_in_allowed_tools"
    entries = [(check.layer, check.entry, check.result) for check in explanation.checks]
    assert ("denied_tools", "shell.rm", "no_match") in entries
    assert ("allowed_tools", "fs.*", "no_match") in entries
    assert ("allowed_tools", "shell(npm run *)", "no_match") in entries
    why = next(c.detail for c in explanation.checks if c.entry == "shell(npm run *)")
    assert "'npm run *' did not match command 'npm test'" in why
    assert explanation.checks[-1].result == "decided"
    assert str(explanation).startswith("deny: ")
    matched = rules.explain("agent", "shell", {"command": "npm run build"})
    assert matched.decision.allowed
    assert matched.checks[-2].result == "match"


def test_explain_and_decide_agree() -> None:
    rules = policy(allowed_tools=["a.*", "b(x:1*)"], ask_tools=["c"], denied_tools=["a.z"])
    for tool, args in [
        ("a.y", None),
        ("a.z", None),
        ("b", {"x": "12"}),
        ("b", {"x": "2"}),
        ("c", None),
    ]:
        assert rules.explain("agent", tool, args).decision == rules.decide("agent", tool, args)


# -- the enforcer ---------------------------------------------------------------------------------


def test_the_enforcer_caches_name_only_decisions_and_not_argument_ones() -> None:
    enforcer = PermissionEnforcer(policy(allowed_tools=["a", "shell(ls)"]))
    first = enforcer.decide("agent", "a")
    assert enforcer.decide("agent", "a") is first
    assert enforcer.decide("agent", "shell", "ls").allowed
    assert not enforcer.decide("agent", "shell", "ls -la").allowed  # never a cached answer
    enforcer.clear_cache()
    assert enforcer.decide("agent", "a") is not first
    assert enforcer.explain("agent", "a").decision == first


def test_call_arguments_are_bound_to_parameter_names() -> None:
    def write(path: str, content: str = "", *, mode: str = "w", **extra: object) -> None:
        raise AssertionError("never called")

    assert call_arguments(write, ("a.txt",), {"mode": "a", "x": 1}) == {
        "path": "a.txt",
        "mode": "a",
        "x": 1,
    }
    assert call_arguments(len, (1, 2, 3), {}) == {"0": 1, "1": 2, "2": 3}  # cannot bind: by index


# -- asking from a session -------------------------------------------------------------------------


def ask_orch(approver: Any = None, sink: CollectingSink | None = None) -> Orchestrator:
    rules = policy(ask_tools=["deploy"], allowed_tools=["deploy", "read"])
    return Orchestrator(
        "agent", "ship", permissions=rules, approver=approver, sinks=[] if sink is None else [sink]
    )


def deploy(target: str) -> str:
    return f"deployed {target}"


def names(sink: CollectingSink) -> list[str]:
    return [event.name for event in sink.events if event.name.startswith("tool.")]


def test_ask_with_nobody_to_ask_is_a_deny() -> None:
    sink = CollectingSink()
    with ask_orch(None, sink).session() as session, pytest.raises(PermissionDeniedError) as caught:
        session.run_tool("deploy", deploy, "prod")
    assert "nobody to ask" in caught.value.outcome.reason
    assert names(sink) == ["tool.approval_requested", "tool.denied"]


def test_allow_once_asks_every_time_and_allow_session_once() -> None:
    asked: list[ApprovalRequest] = []

    def once(request: ApprovalRequest) -> ApprovalAnswer:
        asked.append(request)
        return ApprovalAnswer.ALLOW_ONCE

    with ask_orch(once).session() as session:
        assert session.run_tool("deploy", deploy, "prod") == "deployed prod"
        session.run_tool("deploy", deploy, target="staging")
    assert [request.arguments for request in asked] == [{"target": "prod"}, {"target": "staging"}]
    assert asked[0].decision.effect == "ask"
    assert asked[0].tool == "deploy"

    asked.clear()
    sink = CollectingSink()

    def session_wide(request: ApprovalRequest) -> str:
        asked.append(request)
        return "allow_session"

    with ask_orch(session_wide, sink).session() as session:
        for _ in range(3):
            session.run_tool("deploy", deploy, "prod")
        session.run_tool("read", lambda: None)  # allowed outright: no approval events
    assert len(asked) == 1
    approved = [e for e in sink.events if e.name == "tool.approved"]
    assert [e.data["answer"] for e in approved] == ["allow_session"] * 3
    with ask_orch(session_wide).session() as fresh:  # a new session asks again
        fresh.run_tool("deploy", deploy, "prod")
    assert len(asked) == 2


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (ApprovalAnswer.DENY, "the approver denied it"),
        ("maybe", "answered 'maybe'"),
        (None, "answered None"),
        (True, "answered True"),
    ],
)
def test_a_deny_or_an_unclear_answer_denies(answer: object, reason: str) -> None:
    orch = ask_orch(lambda _request: answer)
    with orch.session() as session, pytest.raises(PermissionDeniedError, match=reason):
        session.run_tool("deploy", deploy, "prod")


def test_a_raising_approver_denies_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(_request: ApprovalRequest) -> str:
        raise RuntimeError("approval service down")

    denied = pytest.raises(PermissionDeniedError, match="RuntimeError: approval service down")
    with ask_orch(broken).session() as session, denied:
        session.run_tool("deploy", deploy, "prod")
    assert "approver failed" in caplog.text


def test_an_async_approver_is_awaited_by_arun_tool_and_refused_by_run_tool() -> None:
    async def approve(_request: ApprovalRequest) -> ApprovalAnswer:
        await asyncio.sleep(0)
        return ApprovalAnswer.ALLOW_ONCE

    async def adeploy(target: str) -> str:
        return f"deployed {target}"

    async def main() -> str:
        with ask_orch(approve).session() as session:
            return await session.arun_tool("deploy", adeploy, "prod")

    assert asyncio.run(main()) == "deployed prod"
    denied = pytest.raises(PermissionDeniedError, match="async approver needs arun_tool")
    with ask_orch(approve).session() as session, denied:
        session.run_tool("deploy", deploy, "prod")


def test_an_async_approver_that_raises_denies() -> None:
    async def broken(_request: ApprovalRequest) -> str:
        raise TimeoutError("no answer in time")

    async def adeploy(target: str) -> str:
        return target

    async def main() -> None:
        with ask_orch(broken).session() as session:
            await session.arun_tool("deploy", adeploy, "prod")

    with pytest.raises(PermissionDeniedError, match="TimeoutError: no answer in time"):
        asyncio.run(main())


def test_rules_on_arguments_see_the_tool_functions_parameter_names(tmp_path: Path) -> None:
    rules = policy(workspace=tmp_path, allowed_tools=["fs.write(path:notes/**)"])
    orch = Orchestrator("agent", "write", permissions=rules)

    def write(path: str, content: str) -> int:
        return len(content)

    with orch.session() as session:
        assert session.run_tool("fs.write", write, "notes/a.md", "hello") == 5
        with pytest.raises(PermissionDeniedError, match="outside the workspace"):
            session.run_tool("fs.write", write, path="../escape.md", content="x")
        with pytest.raises(PermissionDeniedError, match="not in the role's allowed_tools"):
            session.run_tool("fs.write", write, "other/a.md", "x")


# -- approval tokens ---------------------------------------------------------------------------


def token_orch(approver: Any = None) -> tuple[Orchestrator, ApprovalLedger]:
    ledger = ApprovalLedger()
    rules = policy(ask_tools=["deploy", "shell"], allowed_tools=["deploy", "shell"])
    orch = Orchestrator("agent", "ship", permissions=rules, approver=approver, approvals=ledger)
    return orch, ledger


def test_a_presented_token_approves_exactly_its_call_and_its_uses() -> None:
    orch, ledger = token_orch()
    token = ledger.grant(
        ApprovalToken(
            role="agent",
            tool="deploy",
            granted_by="alice",
            arguments_digest=arguments_digest({"target": "prod"}),
            max_uses=1,
        )
    )
    with orch.session() as session:
        session.present_token(token)
        with pytest.raises(PermissionDeniedError):
            session.run_tool("deploy", deploy, "staging")  # other arguments: not this token's
        assert session.run_tool("deploy", deploy, "prod") == "deployed prod"
        with pytest.raises(PermissionDeniedError):
            session.run_tool("deploy", deploy, "prod")  # its one use is spent
    assert len(ledger.uses(token.token_id)) == 1
    with pytest.raises(InvalidValueError, match="ApprovalToken"):
        orch.session().present_token("not a token")  # type: ignore[arg-type]


def test_an_approver_may_answer_with_a_token_that_covers_later_calls() -> None:
    asked: list[str] = []

    def grant(request: ApprovalRequest) -> ApprovalToken:
        asked.append(request.tool)
        return ApprovalToken(
            role=request.role,
            tool=request.tool,
            granted_by="bob",
            argument_pattern="command:npm run *",
            max_uses=2,
        )

    orch, ledger = token_orch(grant)

    def shell(command: str) -> str:
        return command

    with orch.session() as session:
        assert session.run_tool("shell", shell, "npm run a") == "npm run a"
        assert session.run_tool("shell", shell, command="npm run b") == "npm run b"  # the token
        assert asked == ["shell"]
        session.run_tool("shell", shell, "npm run c")  # used up: asked again, a new token
    assert asked == ["shell", "shell"]
    assert len(ledger.tokens()) == 2


def test_a_token_without_a_ledger_is_refused() -> None:
    def grant(request: ApprovalRequest) -> ApprovalToken:
        return ApprovalToken(role=request.role, tool=request.tool, granted_by="bob")

    orch = Orchestrator("agent", "ship", permissions=policy(ask_tools=["deploy"]), approver=grant)
    with orch.session() as session, pytest.raises(PermissionDeniedError, match="no ledger"):
        session.run_tool("deploy", deploy, "prod")
    with pytest.raises(InvalidValueError, match="approvals"):
        Orchestrator("agent", "ship", approvals=object())  # type: ignore[arg-type]
