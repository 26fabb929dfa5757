"""MCP tools under the session's rules: permissions, a breaker per server, a timeout, guardrails.

An optional integration: ``pip install 'techrevati-runtime[mcp]'`` (the
official ``mcp`` package). Nothing from ``mcp`` is imported until
:func:`connect_stdio` is entered or :func:`mcp_tools` is called, so the
package stays free of dependencies.

``await mcp_tools(session, client_session, server="files")`` lists the tools
of a connected MCP ``ClientSession`` and returns one :class:`McpTool` per
tool, keyed by its session name (:func:`mcp_tool_name`: ``"files.read_file"``,
lowercased, characters outside the name grammar replaced by ``_``). Each
``await tool.call(**arguments)`` is one
:meth:`Session.arun_tool <techrevati.runtime.orchestrator.Session.arun_tool>`:
the permission policy decides with the call's arguments by name (so
``"files.shell(ls *)"`` rules work) and a denied call never reaches the
server; the server's circuit breaker guards the request; ``timeout`` bounds
it; the guardrails judge the arguments and the result; the session records
``tool.completed``, ``tool.failed`` or ``tool.denied``. A result the server
marks as an error raises :class:`McpToolError`, a request past its timeout
:class:`McpTimeoutError`; both count on the breaker, as do transport errors
(a server that died), which pass through as the SDK raised them.

A server offering a tool that the session's role is denied by a plain
``denied_tools`` entry (denied whatever the arguments) is refused as a whole
with :class:`McpServerRefusedError` (``on_denied="skip"`` leaves such tools
out and logs a warning instead). See docs/mcp.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import sys
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal, TextIO

from techrevati.runtime._log import get_logger
from techrevati.runtime._permission_names import grammar_violation, normalize_permission_name
from techrevati.runtime._validate import instance_or_none, non_empty_str, seconds_or_none
from techrevati.runtime.circuit_breaker import CircuitBreaker
from techrevati.runtime.errors import (
    GuardrailViolatedError,
    InvalidValueError,
    MissingDependencyError,
    TechrevatiError,
)

if TYPE_CHECKING:
    from mcp import ClientSession

    from techrevati.runtime.guardrails import Guardrail, GuardrailResult
    from techrevati.runtime.orchestrator import Session
    from techrevati.runtime.permissions import PermissionPolicy

__all__ = [
    "DEFAULT_MCP_TIMEOUT_SECONDS",
    "McpResult",
    "McpServerRefusedError",
    "McpTimeoutError",
    "McpTool",
    "McpToolError",
    "OnDenied",
    "connect_stdio",
    "mcp_tool_name",
    "mcp_tools",
]

DEFAULT_MCP_TIMEOUT_SECONDS: Final = 30.0
"""How long one tool request may take before :class:`McpTimeoutError` (``timeout=``)."""

OnDenied = Literal["raise", "skip"]
"""What a tool denied by a plain ``denied_tools`` entry does: refuse the server, or skip it."""

_LOG: Final = get_logger("techrevati.runtime.mcp")
_KEPT: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-")
_MAX_PAGES: Final = 1000
"""``tools/list`` pages read before a server handing out cursors forever is refused."""


# -- errors -------------------------------------------------------------------------------


class McpToolError(TechrevatiError):
    """The server answered a call with an error result (``isError``); ``text`` is its message."""

    def __init__(self, tool: str, text: str) -> None:
        self.tool = tool
        self.text = text
        super().__init__(f"MCP tool {tool!r} failed: {text or '(no message)'}")


class McpTimeoutError(TechrevatiError, TimeoutError):
    """A tool request took longer than its ``timeout``; the server may still be running it."""

    def __init__(self, tool: str, timeout: float) -> None:
        self.tool = tool
        self.timeout = timeout
        super().__init__(f"MCP tool {tool!r} did not answer within {timeout:g} seconds")


class McpServerRefusedError(TechrevatiError, PermissionError):
    """A server offers tools the role is denied by name; ``denied`` lists them.

    Each entry of ``denied`` is ``(session name, the server's name, rule)``,
    the rule as the policy names it (``"denied_tools:files.shell"``).
    """

    def __init__(self, server: str, role: str, denied: Sequence[tuple[str, str, str]]) -> None:
        self.server = server
        self.role = role
        self.denied = tuple(denied)
        listed = "; ".join(
            f"{name!r} (the server's {raw!r}) by {rule}" for name, raw, rule in denied
        )
        super().__init__(
            f"MCP server {server!r} refused: it offers tools that role {role!r} is denied "
            f"whatever the arguments: {listed}. Remove the entries, ask the server not to offer "
            "them, or pass on_denied='skip' to leave them out"
        )


# -- values -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class McpResult:
    """What a tool call returned, as the guardrails passed it on.

    ``text`` is the result's text blocks joined by newlines; ``structured``
    the structured content, when the server sent one. ``other`` holds the
    content blocks that are not text (images, audio, resources) as the SDK
    gave them; the guardrails do not look at those.
    """

    tool: str
    text: str
    structured: object = None
    other: tuple[object, ...] = ()


class McpTool:
    """One server tool as a session tool; made by :func:`mcp_tools`.

    ``name`` is the session name the policy and the events see,
    ``server_name`` the name the server gave it; ``description`` and
    ``input_schema`` are the server's, for the model.
    """

    __slots__ = (
        "_breaker",
        "_client",
        "_guardrails",
        "_session",
        "_timeout",
        "description",
        "input_schema",
        "name",
        "server",
        "server_name",
    )

    def __init__(
        self,
        name: str,
        server_name: str,
        *,
        server: str,
        description: str,
        input_schema: Mapping[str, object],
        session: Session,
        client: Any,
        breaker: CircuitBreaker,
        timeout: float | None,
        guardrails: tuple[Guardrail, ...],
    ) -> None:
        self.name = name
        self.server_name = server_name
        self.server = server
        self.description = description
        self.input_schema = input_schema
        self._session = session
        self._client = client
        self._breaker = breaker
        self._timeout = timeout
        self._guardrails = guardrails

    @property
    def breaker(self) -> CircuitBreaker:
        """The breaker guarding this tool's server (shared by the server's tools)."""
        return self._breaker

    async def call(self, /, **arguments: object) -> McpResult:
        """Call the tool through the session with ``arguments`` (by name, as the schema says).

        Raises ``PermissionDeniedError`` (the server is not contacted),
        ``CircuitOpenError`` (nor here), :class:`McpTimeoutError`,
        :class:`McpToolError`, ``GuardrailViolatedError``, or the SDK's error
        for a broken connection.
        """
        return await self._session.arun_tool(self.name, self._run, **arguments)

    def __repr__(self) -> str:
        return (
            f"McpTool(name={self.name!r}, server={self.server!r}, server_name={self.server_name!r})"
        )

    async def _run(self, /, **arguments: object) -> McpResult:
        """Run the call the policy allowed, with the arguments the hooks left."""
        arguments = self._judged_arguments(arguments)
        result = await self._breaker.acall(self._request, arguments)
        return self._judged_result(result)

    async def _request(self, arguments: dict[str, object]) -> McpResult:
        """One request to the server, bounded by the timeout; an error result raises."""
        timer = asyncio.timeout(self._timeout)
        try:
            async with timer:
                raw = await self._client.call_tool(self.server_name, arguments)
        except TimeoutError:
            if self._timeout is None or not timer.expired():
                raise
            raise McpTimeoutError(self.name, self._timeout) from None
        text, other = _content(_field(raw, "content", "content") or ())
        if _field(raw, "is_error", "isError"):
            raise McpToolError(self.name, text)
        return McpResult(
            self.name, text, _field(raw, "structured_content", "structuredContent"), other
        )

    def _judged_arguments(self, arguments: dict[str, object]) -> dict[str, object]:
        value: object = arguments
        for guardrail in self._guardrails:
            if "arguments" in guardrail.on:
                value = _passed(guardrail, value, self.name, "before_tool")
        return value if isinstance(value, dict) else arguments

    def _judged_result(self, result: McpResult) -> McpResult:
        value: object = {"text": result.text, "structured": result.structured}
        for guardrail in self._guardrails:
            if "results" in guardrail.on:
                value = _passed(guardrail, value, self.name, "after_tool")
        if not isinstance(value, dict):
            return result
        return replace(result, text=str(value.get("text", "")), structured=value.get("structured"))


# -- building the tools ---------------------------------------------------------------------


def mcp_tool_name(prefix: str, tool: str) -> str:
    """Return the session name of server tool ``tool``: ``f"{prefix}.{tool}"``, normalised.

    ``tool`` is normalised as permission names are (NFKC, case folded,
    invisible format characters dropped, trimmed), then every character other
    than ``a-z``, ``0-9``, ``_`` and ``-`` becomes ``_`` (so ``"Get Weather"``
    is ``"get_weather"`` and ``"fs.read"`` is ``"fs_read"``: one segment under
    the prefix, which ``"<prefix>.*"`` covers). ``prefix`` must already be a
    valid name (:data:`~techrevati.runtime.permissions.NAME_GRAMMAR`).
    ``InvalidValueError`` for a bad prefix or a tool name that is blank.
    """
    return f"{_checked_prefix(prefix)}.{_segment(tool)}"


async def mcp_tools(
    session: Session,
    client_session: ClientSession,
    *,
    server: str,
    breaker: CircuitBreaker | None = None,
    timeout: float | None = DEFAULT_MCP_TIMEOUT_SECONDS,
    guardrails: Iterable[Guardrail] = (),
    prefix: str | None = None,
    on_denied: OnDenied = "raise",
) -> dict[str, McpTool]:
    """List the server's tools and return them as session tools, by session name, in its order.

    ``server`` names the server (the breaker's name is ``f"mcp:{server}"``,
    made here unless ``breaker`` is given, shared by every tool of the
    server); ``prefix`` (default ``server``) starts every tool's name (see
    :func:`mcp_tool_name`). ``timeout`` bounds each request in seconds
    (None: unbounded). ``guardrails`` judge each call's arguments (those
    ``on`` ``"arguments"``) and each result (``on`` ``"results"``), in order:
    a block raises ``GuardrailViolatedError``, a redaction passes the
    redacted value on.

    Raises ``InvalidValueError`` when two server tools get the same name
    (naming both) and :class:`McpServerRefusedError` when the session's role
    is denied a tool by a plain ``denied_tools`` entry, unless
    ``on_denied="skip"``.
    """
    _require_mcp()
    from techrevati.runtime.orchestrator import Session  # noqa: PLC0415

    if not isinstance(session, Session):
        raise InvalidValueError(f"session must be a Session, got {session!r}")
    server = non_empty_str("server", server)
    chosen = _checked_prefix(server if prefix is None else prefix, "prefix" if prefix else "server")
    instance_or_none("breaker", breaker, CircuitBreaker)
    bounded = seconds_or_none("timeout", timeout)
    judges = _checked_guardrails(guardrails)
    if on_denied not in ("raise", "skip"):
        raise InvalidValueError(f"on_denied must be 'raise' or 'skip', got {on_denied!r}")
    guard = CircuitBreaker(f"mcp:{server}") if breaker is None else breaker
    listed = await _list_tools(client_session)
    named = _named(chosen, listed)
    denied = _denied_by_name(session, named)
    if denied and on_denied == "raise":
        raise McpServerRefusedError(server, session._orch.role, denied)
    for name, raw, rule in denied:
        _LOG.warning("MCP server %r: tool %r (%r) left out, denied by %s", server, name, raw, rule)
    skipped = {name for name, _, _ in denied}
    return {
        name: McpTool(
            name,
            _field(tool, "name", "name"),
            server=server,
            description=_field(tool, "description", "description") or "",
            input_schema=_field(tool, "input_schema", "inputSchema") or {},
            session=session,
            client=client_session,
            breaker=guard,
            timeout=bounded,
            guardrails=judges,
        )
        for name, tool in named.items()
        if name not in skipped
    }


@contextlib.asynccontextmanager
async def connect_stdio(
    command: str,
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    errlog: TextIO | None = None,
) -> AsyncIterator[ClientSession]:
    """Start an MCP server as a subprocess and yield an initialised ``ClientSession`` to it.

    ``mcp``'s ``stdio_client`` with ``StdioServerParameters(command, args,
    env, cwd)`` and ``ClientSession.initialize()``; leaving the block closes
    the session and ends the process (the SDK closes its stdin, then
    terminates it). ``errlog`` receives the server's stderr (default
    ``sys.stderr``). An exception leaving the block leaves it as raised, not
    inside the exception group the SDK's task groups wrap it in.
    """
    non_empty_str("command", command)
    if isinstance(args, str) or not all(isinstance(arg, str) for arg in args):
        raise InvalidValueError(f"args must be a sequence of str, got {args!r}")
    _require_mcp()
    from mcp import ClientSession, StdioServerParameters  # noqa: PLC0415
    from mcp.client.stdio import stdio_client  # noqa: PLC0415

    params = StdioServerParameters(
        command=command,
        args=list(args),
        env=None if env is None else dict(env),
        cwd=None if cwd is None else os.fspath(cwd),
    )
    log = sys.stderr if errlog is None else errlog
    try:
        async with (
            stdio_client(params, errlog=log) as (read, write),
            ClientSession(read, write) as client,
        ):
            await client.initialize()
            yield client
    except BaseExceptionGroup as group:
        # The SDK's task groups wrap what the block raised; a lone error is passed on bare.
        sole = _sole(group)
        if sole is None:
            raise
        raise sole from None


# -- helpers --------------------------------------------------------------------------------


def _require_mcp() -> None:
    """Import ``mcp`` on first use; without it, say which extra installs it."""
    try:
        import mcp  # noqa: F401, PLC0415
    except ImportError:  # pragma: no cover - the dev set installs it
        raise MissingDependencyError("mcp", "mcp") from None


def _sole(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """Return the one exception inside (nested) ``group``, or None if it holds several."""
    inner = group.exceptions
    if len(inner) != 1:
        return None
    only = inner[0]
    return _sole(only) if isinstance(only, BaseExceptionGroup) else only


def _checked_prefix(prefix: object, field: str = "prefix") -> str:
    if not isinstance(prefix, str):
        raise InvalidValueError(f"{field} must be a str, got {prefix!r}")
    name = normalize_permission_name(prefix)
    problem = grammar_violation(name)
    if problem is not None:
        raise InvalidValueError(f"{field} {prefix!r} is not a valid name: {problem}")
    return name


def _segment(tool: object) -> str:
    if not isinstance(tool, str):
        raise InvalidValueError(f"an MCP tool name must be a str, got {tool!r}")
    segment = "".join(c if c in _KEPT else "_" for c in normalize_permission_name(tool))
    if not segment:
        raise InvalidValueError(f"an MCP tool name must not be blank, got {tool!r}")
    return segment


def _named(prefix: str, tools: list[Any]) -> dict[str, Any]:
    """Key the server's tools by session name; two tools with one name are refused."""
    named: dict[str, Any] = {}
    for tool in tools:
        raw = _field(tool, "name", "name")
        name = mcp_tool_name(prefix, raw)
        taken = named.get(name)
        if taken is not None:
            raise InvalidValueError(
                f"MCP tools {_field(taken, 'name', 'name')!r} and {raw!r} both become {name!r} "
                "(names are lowercased and every character other than a-z, 0-9, '_' and '-' "
                "replaced by '_'); give the server distinct names"
            )
        named[name] = tool
    return named


def _denied_by_name(session: Session, named: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """Return the tools the role is denied whatever the arguments: (name, raw name, rule)."""
    enforcer = session._orch.permissions
    if enforcer is None:
        return []
    role = session._orch.role
    plain = _plain_denials(enforcer.policy, role)
    if plain is None:
        return []
    denied = []
    for name, tool in named.items():
        decision = plain.decide(role, name)
        if decision.layer == "denied_tools":
            denied.append((name, _field(tool, "name", "name"), decision.rule))
    return denied


def _plain_denials(policy: PermissionPolicy, role: str) -> PermissionPolicy | None:
    """Return a policy of the role's ``denied_tools`` entries that have no argument pattern."""
    from techrevati.runtime.permissions import (  # noqa: PLC0415
        PermissionMode,
        PermissionPolicy,
        RolePermissionConfig,
    )

    config = policy.role_config(role)
    if config is None:
        return None
    entries = [entry for entry in config.denied_tools if "(" not in entry]
    if not entries:
        return None
    only = RolePermissionConfig(config.role, PermissionMode.FULL_ACCESS, denied_tools=entries)
    return PermissionPolicy({config.role: only})


async def _list_tools(client: Any) -> list[Any]:
    """Every tool the server lists, following its cursors (``mcp`` 1.x and 2.x)."""
    tools: list[Any] = []
    cursor: str | None = None
    for _ in range(_MAX_PAGES):
        page = await (client.list_tools() if cursor is None else _next_page(client, cursor))
        tools.extend(_field(page, "tools", "tools") or ())
        cursor = _field(page, "next_cursor", "nextCursor")
        if not cursor:
            return tools
    raise InvalidValueError(f"the MCP server listed more than {_MAX_PAGES} pages of tools")


def _next_page(client: Any, cursor: str) -> Any:
    if "params" in inspect.signature(client.list_tools).parameters:
        from mcp.types import PaginatedRequestParams  # noqa: PLC0415

        return client.list_tools(params=PaginatedRequestParams(cursor=cursor))
    return client.list_tools(cursor=cursor)  # mcp 1.x


def _field(obj: object, name: str, v1_name: str) -> Any:
    """Read a field under its ``mcp`` 2.x name, else its 1.x (camelCase) one."""
    value = getattr(obj, name, None)
    return getattr(obj, v1_name, None) if value is None else value


def _content(blocks: Iterable[object]) -> tuple[str, tuple[object, ...]]:
    texts: list[str] = []
    other: list[object] = []
    for block in blocks:
        text = getattr(block, "text", None)
        if getattr(block, "type", None) == "text" and isinstance(text, str):
            texts.append(text)
        else:
            other.append(block)
    return "\n".join(texts), tuple(other)


def _checked_guardrails(guardrails: object) -> tuple[Guardrail, ...]:
    if isinstance(guardrails, str) or not isinstance(guardrails, Iterable):
        raise InvalidValueError(f"guardrails must be a sequence of guardrails, got {guardrails!r}")
    judges = tuple(guardrails)
    for judge in judges:
        if not callable(getattr(judge, "check", None)) or not hasattr(judge, "on"):
            raise InvalidValueError(f"a guardrail needs check() and on, got {judge!r}")
    return judges


def _passed(guardrail: Guardrail, value: object, tool: str, point: str) -> object:
    """Judge ``value``: the value to pass on, or GuardrailViolatedError for a block."""
    result: GuardrailResult = guardrail.check(value)
    if not result.allowed:
        raise GuardrailViolatedError(
            f"MCP tool {tool!r}: {result.reason}", hook=result.guardrail, point=point
        )
    if result.fired:
        _LOG.info("guardrail %r fired on MCP tool %r: %s", result.guardrail, tool, result.reason)
    return result.value if result.changed else value
