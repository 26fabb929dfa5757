"""A small real MCP server over stdio, for tests/test_mcp.py and docs/mcp.md.

Run as ``python tests/mcp_server.py [--log PATH] [--collide]``. Every tool
call appends the tool's name to ``PATH`` first (one line each), so a test
can prove a call never reached the server. ``--collide`` adds a tool whose
name normalises like ``Get-Weather``'s sibling. ``shell`` only pretends: it
reports the command, it runs nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

try:  # mcp 2.x
    from mcp.server.mcpserver import MCPServer as Server
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError:  # pragma: no cover - mcp 1.x
    from mcp.server.fastmcp import FastMCP as Server  # type: ignore[no-redef, attr-defined]
    from mcp.server.fastmcp.exceptions import ToolError  # type: ignore[no-redef, import-not-found]


def build(log: Path | None, *, collide: bool = False) -> Any:
    """Return the server: its tools, each logging its name to ``log`` before it runs."""
    app = Server("techrevati-test", log_level="WARNING")
    served: list[str] = []

    def seen(name: str) -> None:
        served.append(name)
        if log is not None:
            with log.open("a", encoding="utf-8") as file:
                file.write(name + "\n")

    @app.tool()
    def echo(text: str) -> str:
        """Return the text."""
        seen("echo")
        return text

    @app.tool()
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        seen("add")
        return a + b

    @app.tool()
    def read_file(path: str) -> str:
        """Return a text file's contents."""
        seen("read_file")
        return Path(path).read_text(encoding="utf-8")

    @app.tool()
    def shell(command: str) -> str:
        """Pretend to run a shell command (nothing runs)."""
        seen("shell")
        return f"ran: {command}"

    @app.tool()
    def fail() -> str:
        """Answer with an error result."""
        seen("fail")
        raise ToolError("the disk is on fire")

    @app.tool()
    def die() -> str:
        """End the server process at once."""
        seen("die")
        os._exit(3)

    @app.tool()
    async def slow() -> str:
        """Never answer."""
        seen("slow")
        await asyncio.Event().wait()
        return "unreachable"

    @app.tool()
    def calls() -> int:
        """How many calls this server has served (this one included)."""
        seen("calls")
        return len(served)

    @app.tool(name="Get-Weather")
    def weather(city: str) -> str:
        """Tell the weather."""
        seen("Get-Weather")
        return f"sunny in {city}"

    if collide:

        @app.tool(name="get weather")
        def weather_again(city: str) -> str:
            """Tell the weather, again."""
            seen("get weather")
            return f"rainy in {city}"

        @app.tool(name="GET_WEATHER")
        def weather_loud(city: str) -> str:
            """Tell the weather, loudly."""
            seen("GET_WEATHER")
            return f"SUNNY IN {city}"

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--collide", action="store_true")
    options = parser.parse_args()
    build(options.log, collide=options.collide).run()


if __name__ == "__main__":
    main()
