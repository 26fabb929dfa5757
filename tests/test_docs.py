"""Every ```python block in README.md and docs/*.md runs, in order, per file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _blocks(path: Path) -> list[str]:
    return _BLOCK.findall(path.read_text(encoding="utf-8"))


def test_docs_exist_and_have_examples() -> None:
    assert (ROOT / "README.md").is_file()
    assert sum(len(_blocks(p)) for p in DOC_FILES) > 0


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_every_python_block_runs(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    # Blocks of one page share a namespace, like a reader following along;
    # each page starts fresh and runs in its own temporary directory.
    monkeypatch.chdir(tmp_path)
    if path.name == "integrations.md":  # its wrapped client talks to a scripted server
        from tests.scripted_server import openai_chat_completion
        from tests.test_stream_turns_real_http import openai_chat

        server = request.getfixturevalue("scripted_server")
        server.reply(200, openai_chat_completion())
        server.script(openai_chat("Hel", "lo", usage=(12, 3)))  # the streaming helper's
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
    if path.name == "memory.md":  # tiktoken reads the encodings litellm ships (offline)
        from tests.test_memory import offline_tiktoken

        offline_tiktoken(monkeypatch)
    if path.name == "fleet.md":  # its examples talk to a real redis-server the tests start
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_server").url)
    if path.name == "openai_agents.md":  # its examples talk to a scripted OpenAI server
        from tests.test_openai_agents import script_the_docs

        server = request.getfixturevalue("scripted_server")
        script_the_docs(server)
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "test")
    if path.name == "langchain.md":  # its ChatOpenAI talks to a scripted server on 127.0.0.1
        from tests.scripted_server import openai_chat_completion

        server = request.getfixturevalue("scripted_server")
        server.reply(200, openai_chat_completion(prompt_tokens=1000, completion_tokens=250))
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setenv("LANGCHAIN_TRACING_V2", "false")
    if path.name == "mcp.md":  # its examples start the stdio MCP server of tests/mcp_server.py
        monkeypatch.setenv("MCP_TEST_SERVER", str(ROOT / "tests" / "mcp_server.py"))
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for index, block in enumerate(_blocks(path)):
        code = compile(block, f"{path.name}[block {index}]", "exec")
        exec(code, namespace)
