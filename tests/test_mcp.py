"""MCP tools under the session's rules, against a real MCP server the tests start over stdio.

tests/mcp_server.py is a real server written with the ``mcp`` package's
server helpers, run as a subprocess (``sys.executable``, no network). It
appends each call's tool name to a log file before the tool runs, so a test
proves a refused call never reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp import ClientSession
from mcp.shared.exceptions import MCPError

from techrevati.runtime import Orchestrator
from techrevati.runtime._permission_names import grammar_violation
from techrevati.runtime.circuit_breaker import CircuitBreaker, CircuitOpenError, CircuitState
from techrevati.runtime.errors import GuardrailViolatedError, InvalidValueError
from techrevati.runtime.guardrails import PatternGuardrail, PiiRedactor
from techrevati.runtime.mcp import (
    McpResult,
    McpServerRefusedError,
    McpTimeoutError,
    McpToolError,
    connect_stdio,
    mcp_tool_name,
    mcp_tools,
)
from techrevati.runtime.orchestrator import Session
from techrevati.runtime.permissions import (
    PermissionDeniedError,
    PermissionMode,
    PermissionPolicy,
    RolePermissionConfig,
)
from tests.conftest import examples

SERVER = Path(__file__).with_name("mcp_server.py")
pytestmark = pytest.mark.timeout(60)


def orchestrator(
    *, allowed: list[str] | None = None, denied: tuple[str, ...] = (), policy: bool = True
) -> Orchestrator:
    config = RolePermissionConfig(
        "dev", PermissionMode.FULL_ACCESS, allowed_tools=allowed, denied_tools=denied
    )
    permissions = PermissionPolicy({"dev": config}) if policy else None
    return Orchestrator(role="dev", phase="build", permissions=permissions)


@contextlib.asynccontextmanager
async def served(tmp_path: Path, *flags: str) -> AsyncIterator[ClientSession]:
    """A connected client of a fresh server; its calls are logged to tmp_path/calls.log."""
    args = [str(SERVER), "--log", str(tmp_path / "calls.log"), *flags]
    with (tmp_path / "server.err").open("w", encoding="utf-8") as errlog:
        async with connect_stdio(sys.executable, args, errlog=errlog) as client:
            yield client


def served_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text(encoding="utf-8").split() if log.exists() else []


def state(breaker: CircuitBreaker) -> CircuitState:
    return breaker.state  # read afresh: mypy would narrow the property after one check


def tool_events(session: Session) -> list[tuple[str, object]]:
    return [
        (event.name, event.data.get("tool"))
        for event in session.events()
        if event.name.startswith("tool.")
    ]


# -- allowed calls ------------------------------------------------------------------------


def test_an_allowed_call_returns_the_result_and_records_tool_completed(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with served(tmp_path) as client, orchestrator().asession() as session:
            tools = await mcp_tools(session, client, server="files")
            echo = tools["files.echo"]
            assert echo.server_name == "echo"
            assert echo.description == "Return the text."
            assert echo.input_schema["required"] == ["text"]
            assert await echo.call(text="hello") == McpResult(
                "files.echo", "hello", {"result": "hello"}
            )
            assert (await tools["files.add"].call(a=2, b=3)).structured == {"result": 5}
            assert tool_events(session) == [
                ("tool.completed", "files.echo"),
                ("tool.completed", "files.add"),
            ]

    asyncio.run(scenario())
    assert served_calls(tmp_path) == ["echo", "add"]


def test_without_a_policy_every_tool_is_offered_and_runs(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with served(tmp_path) as client, orchestrator(policy=False).asession() as session:
            tools = await mcp_tools(session, client, server="files")
            assert "files.shell" in tools
            assert (await tools["files.shell"].call(command="rm -rf /")).text == "ran: rm -rf /"

    asyncio.run(scenario())
    assert served_calls(tmp_path) == ["shell"]


# -- denied calls -------------------------------------------------------------------------


def test_a_tool_denied_by_name_never_reaches_the_server(tmp_path: Path) -> None:
    async def scenario() -> None:
        orch = orchestrator(allowed=["files.echo", "files.calls"])
        async with served(tmp_path) as client, orch.asession() as session:
            tools = await mcp_tools(session, client, server="files")
            assert "files.add" in tools  # unlisted is not refused: the call is denied
            with pytest.raises(PermissionDeniedError) as denied:
                await tools["files.add"].call(a=1, b=2)
            assert denied.value.outcome.rule == "not_in_allowed_tools"
            served_so_far = await tools["files.calls"].call()
            assert served_so_far.structured == {"result": 1}  # only this call itself
            assert tool_events(session) == [
                ("tool.denied", "files.add"),
                ("tool.completed", "files.calls"),
            ]

    asyncio.run(scenario())
    assert served_calls(tmp_path) == ["calls"]


def test_a_call_is_decided_by_its_arguments(tmp_path: Path) -> None:
    async def scenario() -> None:
        orch = orchestrator(allowed=["files.shell(ls *)"])
        async with served(tmp_path) as client, orch.asession() as session:
            shell = (await mcp_tools(session, client, server="files"))["files.shell"]
            assert (await shell.call(command="ls -la")).text == "ran: ls -la"
            with pytest.raises(PermissionDeniedError) as denied:
                await shell.call(command="rm -rf /")
            assert denied.value.outcome.rule == "not_in_allowed_tools"

    asyncio.run(scenario())
    assert served_calls(tmp_path) == ["shell"]  # the rm never arrived


def test_a_denied_entry_with_an_argument_pattern_denies_the_call_not_the_server(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        orch = orchestrator(denied=("files.shell(rm *)",))
        async with served(tmp_path) as client, orch.asession() as session:
            shell = (await mcp_tools(session, client, server="files"))["files.shell"]
            with pytest.raises(PermissionDeniedError) as denied:
                await shell.call(command="rm -rf /")
            assert denied.value.outcome.rule == "denied_tools:files.shell(rm *)"
            assert (await shell.call(command="ls")).text == "ran: ls"

    asyncio.run(scenario())
    assert served_calls(tmp_path) == ["shell"]


# -- a server offering a denied tool ------------------------------------------------------


def test_a_server_offering_a_denied_tool_is_refused_loudly(tmp_path: Path) -> None:
    entries = ["files.shell", "FILES.Shell", "files.sh*", "*.shell"]

    async def scenario() -> None:
        async with served(tmp_path) as client:
            for entry in entries:
                async with orchestrator(denied=(entry,)).asession() as session:
                    with pytest.raises(McpServerRefusedError) as refused:
                        await mcp_tools(session, client, server="files")
                rule = f"denied_tools:{entry.lower()}"
                assert refused.value.denied == (("files.shell", "shell", rule),)
                assert refused.value.server == "files"
                assert "'files.shell'" in str(refused.value)
                assert rule in str(refused.value)
            raise LookupError("leaves the block bare")

    with pytest.raises(LookupError):  # not inside the SDK's exception group
        asyncio.run(scenario())
    assert served_calls(tmp_path) == []


def test_on_denied_skip_leaves_the_denied_tool_out_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> dict[str, Any]:
        orch = orchestrator(denied=("files.shell", "files.die"))
        async with served(tmp_path) as client, orch.asession() as session:
            with caplog.at_level(logging.WARNING, logger="techrevati.runtime.mcp"):
                tools = await mcp_tools(session, client, server="files", on_denied="skip")
            assert (await tools["files.echo"].call(text="still here")).text == "still here"
            return tools

    tools = asyncio.run(scenario())
    assert "files.shell" not in tools
    assert "files.die" not in tools
    assert "files.echo" in tools
    warned = [record.getMessage() for record in caplog.records]
    assert len(warned) == 2
    assert "'files.shell'" in warned[0]
    assert "denied_tools:files.shell" in warned[0]


# -- the breaker, errors and the timeout --------------------------------------------------


def test_the_breaker_opens_on_a_dying_server_and_then_refuses_without_contacting_it(
    tmp_path: Path,
) -> None:
    now = [0.0]
    breaker = CircuitBreaker("mcp:files", failure_threshold=2, clock=lambda: now[0])

    async def scenario() -> None:
        async with served(tmp_path) as client, orchestrator().asession() as session:
            tools = await mcp_tools(session, client, server="files", breaker=breaker)
            assert tools["files.echo"].breaker is breaker
            with pytest.raises(MCPError):
                await tools["files.die"].call()  # the server exits mid-call
            assert state(breaker) is CircuitState.CLOSED
            with pytest.raises(MCPError):
                await tools["files.echo"].call(text="anyone there?")
            assert state(breaker) is CircuitState.OPEN
            with pytest.raises(CircuitOpenError) as refused:
                await tools["files.add"].call(a=1, b=1)
            assert refused.value.name == "mcp:files"
            assert [name for name, _ in tool_events(session)] == ["tool.failed"] * 3

    asyncio.run(scenario())
    assert served_calls(tmp_path) == ["die"]
    assert breaker.metrics().failures == 2
    assert breaker.metrics().rejections == 1


def test_each_server_gets_its_own_breaker_by_default(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with served(tmp_path) as client, orchestrator().asession() as session:
            files = await mcp_tools(session, client, server="files")
            other = await mcp_tools(session, client, server="other")
            assert files["files.echo"].breaker is files["files.add"].breaker
            assert files["files.echo"].breaker.name == "mcp:files"
            assert other["other.echo"].breaker.name == "mcp:other"
            assert other["other.echo"].breaker is not files["files.echo"].breaker

    asyncio.run(scenario())


def test_an_error_result_raises_mcp_tool_error_and_counts_on_the_breaker(tmp_path: Path) -> None:
    breaker = CircuitBreaker("mcp:files", failure_threshold=2, clock=lambda: 0.0)

    async def scenario() -> None:
        async with served(tmp_path) as client, orchestrator().asession() as session:
            tools = await mcp_tools(session, client, server="files", breaker=breaker)
            with pytest.raises(McpToolError) as failed:
                await tools["files.fail"].call()
            assert failed.value.tool == "files.fail"
            assert "the disk is on fire" in failed.value.text
            assert breaker.metrics().consecutive_failures == 1
            await tools["files.echo"].call(text="fine")  # a success resets the count
            assert breaker.metrics().consecutive_failures == 0
            events = [e for e in session.events() if e.name == "tool.failed"]
            assert events[0].data["error_type"] == "McpToolError"

    asyncio.run(scenario())
    assert served_calls(tmp_path) == ["fail", "echo"]


@pytest.mark.timeout(30)
def test_a_call_past_its_timeout_raises_and_counts_on_the_breaker(tmp_path: Path) -> None:
    breaker = CircuitBreaker("mcp:files", failure_threshold=1, clock=lambda: 0.0)

    async def scenario() -> None:
        async with served(tmp_path) as client, orchestrator().asession() as session:
            tools = await mcp_tools(session, client, server="files", breaker=breaker, timeout=0.5)
            with pytest.raises(McpTimeoutError) as late:
                await tools["files.slow"].call()
            assert isinstance(late.value, TimeoutError)
            assert late.value.timeout == 0.5
            assert state(breaker) is CircuitState.OPEN
            with pytest.raises(CircuitOpenError):
                await tools["files.echo"].call(text="x")

    asyncio.run(scenario())
    assert served_calls(tmp_path) == ["slow"]


# -- guardrails ---------------------------------------------------------------------------


def test_guardrails_redact_a_result(tmp_path: Path) -> None:
    async def scenario() -> McpResult:
        async with served(tmp_path) as client, orchestrator().asession() as session:
            tools = await mcp_tools(session, client, server="files", guardrails=[PiiRedactor()])
            return await tools["files.echo"].call(text="write to alice@example.com")

    result = asyncio.run(scenario())
    assert result.text == "write to [email]"
    assert result.structured == {"result": "write to [email]"}


def test_a_blocking_guardrail_on_results_raises_after_the_call(tmp_path: Path) -> None:
    block = PatternGuardrail(deny=[r"password=\S+"], on=["results"], name="secrets")

    async def scenario() -> None:
        async with served(tmp_path) as client, orchestrator().asession() as session:
            tools = await mcp_tools(session, client, server="files", guardrails=[block])
            with pytest.raises(GuardrailViolatedError) as blocked:
                await tools["files.echo"].call(text="password=hunter2")
            assert blocked.value.hook == "secrets"
            assert blocked.value.point == "after_tool"
            assert "hunter2" not in str(blocked.value)
            assert tool_events(session) == [("tool.failed", "files.echo")]
            assert (await tools["files.echo"].call(text="nothing secret")).text == "nothing secret"

    asyncio.run(scenario())
    assert served_calls(tmp_path) == ["echo", "echo"]


def test_a_blocking_guardrail_on_arguments_stops_the_call_before_the_server(
    tmp_path: Path,
) -> None:
    block = PatternGuardrail(deny=[r"rm -rf"], on=["arguments"], name="danger")

    async def scenario() -> None:
        async with served(tmp_path) as client, orchestrator().asession() as session:
            tools = await mcp_tools(session, client, server="files", guardrails=[block])
            with pytest.raises(GuardrailViolatedError) as blocked:
                await tools["files.shell"].call(command="rm -rf /")
            assert blocked.value.point == "before_tool"
            assert (await tools["files.shell"].call(command="ls")).text == "ran: ls"

    asyncio.run(scenario())
    assert served_calls(tmp_path) == ["shell"]


# -- names --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "tool", "name"),
    [
        ("files", "echo", "files.echo"),
        ("files", "Get-Weather", "files.get-weather"),
        ("files", "get weather", "files.get_weather"),
        ("files", "fs.read", "files.fs_read"),
        ("files", "fs:read/all", "files.fs_read_all"),
        ("files", "\uff26\uff55\uff4c\uff4c", "files.full"),  # full-width letters
        ("files", "to\u200bol ", "files.tool"),  # a zero-width space, a trailing blank
        ("files", "caf\u00e9", "files.caf_"),
        ("Team.Files", "echo", "team.files.echo"),
    ],
)
def test_tool_names_are_normalised_to_the_grammar(prefix: str, tool: str, name: str) -> None:
    assert mcp_tool_name(prefix, tool) == name


@pytest.mark.parametrize(("prefix", "tool"), [("files", "   "), ("files", "\u200b"), ("a b", "x")])
def test_a_blank_tool_name_or_a_bad_prefix_is_refused(prefix: str, tool: str) -> None:
    with pytest.raises(InvalidValueError):
        mcp_tool_name(prefix, tool)


@pytest.mark.hypothesis
@settings(max_examples=examples(300))
@given(st.text(max_size=12))
def test_every_tool_name_becomes_one_valid_segment_under_its_prefix(tool: str) -> None:
    try:
        name = mcp_tool_name("srv", tool)
    except InvalidValueError:
        assert not tool.strip() or all(c.isspace() or not c.isprintable() for c in tool)
        return
    assert grammar_violation(name) is None
    assert name.startswith("srv.")
    assert "." not in name[4:]
    assert ":" not in name[4:]


def test_the_served_names_are_normalised_and_the_prefix_replaces_the_server(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with served(tmp_path) as client, orchestrator().asession() as session:
            tools = await mcp_tools(session, client, server="weather", prefix="wx")
            weather = tools["wx.get-weather"]
            assert weather.server_name == "Get-Weather"
            assert weather.breaker.name == "mcp:weather"
            assert (await weather.call(city="Oslo")).text == "sunny in Oslo"
            assert all(name.startswith("wx.") for name in tools)

    asyncio.run(scenario())
    assert served_calls(tmp_path) == ["Get-Weather"]


def test_two_server_tools_with_one_name_are_refused_naming_both(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with served(tmp_path, "--collide") as client, orchestrator().asession() as session:
            with pytest.raises(InvalidValueError) as clash:
                await mcp_tools(session, client, server="files")
            assert "'get weather'" in str(clash.value)
            assert "'GET_WEATHER'" in str(clash.value)
            assert "'files.get_weather'" in str(clash.value)

    asyncio.run(scenario())


# -- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"server": ""},
        {"server": "files", "prefix": "bad prefix"},
        {"server": "files", "timeout": 0},
        {"server": "files", "timeout": float("nan")},
        {"server": "files", "breaker": "mcp:files"},
        {"server": "files", "guardrails": "pii"},
        {"server": "files", "guardrails": [object()]},
        {"server": "files", "on_denied": "ignore"},
    ],
)
def test_bad_options_are_refused_before_the_server_is_asked(options: dict[str, Any]) -> None:
    async def scenario() -> None:
        async with orchestrator().asession() as session:
            with pytest.raises(InvalidValueError):
                await mcp_tools(session, object(), **options)  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_the_session_must_be_a_session() -> None:
    with pytest.raises(InvalidValueError):
        asyncio.run(mcp_tools(object(), object(), server="files"))  # type: ignore[arg-type]


def test_importing_the_module_imports_no_mcp() -> None:
    code = (
        "import sys, techrevati.runtime.mcp;"
        "print(any(m.split('.')[0] == 'mcp' for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "False"
