"""A scripted HTTP server on 127.0.0.1 for driving real SDK clients in tests.

The test queues replies (status, headers, body; optionally ``hang``), the
server answers each request with the next one and records what it received.
When the script runs out it repeats the last reply (or a ``default``). A
``hang`` reply blocks its handler on an event, never on ``time.sleep``, until
the test calls :meth:`ScriptedServer.release` or the server closes, so the
client's own timeout fires; the wait is bounded by ``hang_limit`` either way.
A ``cut`` reply is a stream cut short: its connection is dropped after the
body, or held open until the client hangs up (which the test can wait for).

Also here: realistic JSON bodies of each provider (successes and error
envelopes) and factories for real SDK clients pointed at the server with the
SDK's own retries off. The SDKs are imported lazily, so this module imports
without any of them.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import anthropic
    import openai

CLIENT_TIMEOUT = 2.0
"""Seconds a client built here waits for an answer (a hang test passes a shorter one)."""

HANG_LIMIT = 5.0
"""Seconds a ``hang`` handler waits at most, in case nobody releases it."""

JSON_HEADERS: Mapping[str, str] = {"content-type": "application/json"}


CUT_SHORT_BYTES = 1 << 20
"""How many more bytes than it sends a ``cut`` reply's Content-Length announces."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted response; ``hang`` holds it back until released (then it is sent).

    ``cut`` makes ``body`` the start of a longer one (a stream cut mid-way): the
    Content-Length announces :data:`CUT_SHORT_BYTES` more, and after the body
    the server either drops the connection (``"drop"``: the client sees it cut)
    or keeps it open until the client hangs up (``"hold"``: counted, see
    :meth:`ScriptedServer.wait_for_hangup`), at most ``hang_limit`` seconds.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: bool = False
    cut: Literal["drop", "hold"] | None = None


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request the server received; header names are lower-cased."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    json: Any = None


def reply(
    status: int = 200,
    body: object = None,
    headers: Mapping[str, str] | None = None,
    *,
    hang: bool = False,
    cut: Literal["drop", "hold"] | None = None,
) -> Reply:
    """Build a :class:`Reply`: ``bytes``/``str`` bodies as is, anything else as JSON."""
    merged = dict(headers or {})
    if isinstance(body, bytes):
        raw = body
    elif isinstance(body, str):
        raw = body.encode()
    elif body is None:
        raw = b""
    else:
        raw = json.dumps(body).encode()
        if not any(name.lower() == "content-type" for name in merged):
            merged.update(JSON_HEADERS)
    return Reply(status, merged, raw, hang, cut)


NOTHING_SCRIPTED = reply(500, {"error": {"message": "nothing scripted", "type": "test_error"}})


class ScriptedServer:
    """A ThreadingHTTPServer on an ephemeral loopback port that plays a script.

    Use it as a context manager (the ``scripted_server`` fixture does): on exit
    it releases every hanging handler, stops serving and joins all its threads.
    """

    def __init__(self, *, default: Reply | None = None, hang_limit: float = HANG_LIMIT) -> None:
        self.default = default
        self.hang_limit = hang_limit
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._last: Reply | None = None
        self._requests: list[Recorded] = []
        self._released = threading.Event()
        self._hangups = threading.Semaphore(0)
        self._closing = False
        self._httpd = _HTTPServer(self)
        host, port = self._httpd.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.01},
            name="scripted-server",
            daemon=True,
        )

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def requests(self) -> list[Recorded]:
        """The requests received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def script(self, *replies: Reply) -> None:
        """Queue ``replies``, answered in order."""
        with self._lock:
            self._script.extend(replies)

    def reply(
        self,
        status: int = 200,
        body: object = None,
        headers: Mapping[str, str] | None = None,
        *,
        hang: bool = False,
        cut: Literal["drop", "hold"] | None = None,
    ) -> None:
        """Queue one reply (see :func:`reply`)."""
        self.script(reply(status, body, headers, hang=hang, cut=cut))

    def release(self) -> None:
        """Let every hanging handler, present and future, send its reply."""
        self._released.set()

    def wait_for_hangup(self, timeout: float = HANG_LIMIT) -> bool:
        """Wait until a client closes a connection held open by a ``cut="hold"`` reply.

        Each hang-up is counted once; False if none came within ``timeout``.
        """
        return self._hangups.acquire(timeout=timeout)

    def _await_hangup(self, connection: socket.socket) -> None:
        """Keep a ``hold`` reply's connection open until the client closes it (EOF)."""
        deadline = time.monotonic() + self.hang_limit
        while time.monotonic() < deadline:
            with self._lock:
                if self._closing:
                    return
            readable, _, _ = select.select([connection], [], [], 0.02)
            if not readable:
                continue
            try:
                data = connection.recv(4096)
            except OSError:
                data = b""  # a reset: hung up all the same
            if not data:
                self._hangups.release()
                return

    def close(self) -> None:
        """Drop hanging replies, stop serving and join the server's threads."""
        with self._lock:
            self._closing = True
        self._released.set()
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()  # joins the handler threads (daemon_threads is off)

    def _take(self, request: Recorded) -> Reply:
        with self._lock:
            self._requests.append(request)
            if self._script:
                self._last = self._script.popleft()
                return self._last
            return self.default or self._last or NOTHING_SCRIPTED

    def _hold(self) -> bool:
        """Wait for a release; False when the server is closing (drop the reply)."""
        self._released.wait(self.hang_limit)
        with self._lock:
            return not self._closing


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread: no leaks
    block_on_close = True

    def __init__(self, scripted: ScriptedServer) -> None:
        self.scripted = scripted
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet: a client that gave up (a timeout test) resets its socket."""


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.0"  # one request per connection: handler threads end promptly
    timeout = HANG_LIMIT  # bounds a read from a client that never sends

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output clean."""

    def _serve(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        scripted = self.server.scripted
        answer = scripted._take(
            Recorded(
                self.command,
                self.path,
                {name.lower(): value for name, value in self.headers.items()},
                body,
                _json_or_none(body),
            )
        )
        if answer.hang and not scripted._hold():
            return  # closing: the client gave up long ago
        with contextlib.suppress(OSError):  # the client hung up first
            self._send(answer)

    def _send(self, answer: Reply) -> None:
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        short = CUT_SHORT_BYTES if answer.cut is not None else 0
        self.send_header("Content-Length", str(len(answer.body) + short))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer.body)
        if answer.cut == "hold":
            self.wfile.flush()
            self.server.scripted._await_hangup(self.connection)


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


@contextlib.contextmanager
def refused_address() -> Iterator[str]:
    """Yield ``http://127.0.0.1:<port>`` where connections are refused.

    The port is bound but never listened on, so nothing else can take it
    while the test runs and every connect fails at once with ECONNREFUSED.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# -- real SDK clients, their retries off ---------------------------------------------------


def openai_client(url: str, *, timeout: float = CLIENT_TIMEOUT) -> openai.OpenAI:
    """``openai.OpenAI`` on ``url`` (``/v1`` added), ``max_retries=0``."""
    module: Any = importlib.import_module("openai")
    client: openai.OpenAI = module.OpenAI(
        api_key="test", base_url=url + "/v1", max_retries=0, timeout=timeout
    )
    return client


def async_openai_client(url: str, *, timeout: float = CLIENT_TIMEOUT) -> openai.AsyncOpenAI:
    """``openai.AsyncOpenAI`` on ``url``; use it in ``async with`` inside the test's loop."""
    module: Any = importlib.import_module("openai")
    client: openai.AsyncOpenAI = module.AsyncOpenAI(
        api_key="test", base_url=url + "/v1", max_retries=0, timeout=timeout
    )
    return client


def anthropic_client(url: str, *, timeout: float = CLIENT_TIMEOUT) -> anthropic.Anthropic:
    """``anthropic.Anthropic`` on ``url``, ``max_retries=0``."""
    module: Any = importlib.import_module("anthropic")
    client: anthropic.Anthropic = module.Anthropic(
        api_key="test", base_url=url, max_retries=0, timeout=timeout
    )
    return client


def async_anthropic_client(
    url: str, *, timeout: float = CLIENT_TIMEOUT
) -> anthropic.AsyncAnthropic:
    """``anthropic.AsyncAnthropic`` on ``url``; use it in ``async with`` inside the test's loop."""
    module: Any = importlib.import_module("anthropic")
    client: anthropic.AsyncAnthropic = module.AsyncAnthropic(
        api_key="test", base_url=url, max_retries=0, timeout=timeout
    )
    return client


def genai_client(url: str, *, timeout: float = CLIENT_TIMEOUT) -> Any:
    """``google.genai.Client`` on ``url``; it retries only with ``retry_options``, set to 1 try."""
    genai: Any = importlib.import_module("google.genai")
    types = genai.types
    options = types.HttpOptions(
        base_url=url,
        timeout=int(timeout * 1000),  # milliseconds
        retry_options=types.HttpRetryOptions(attempts=1),
    )
    return genai.Client(api_key="test", http_options=options)


def bedrock_client(url: str, *, timeout: float = CLIENT_TIMEOUT) -> Any:
    """A botocore ``bedrock-runtime`` client on ``url``: one attempt, short timeouts."""
    session = _botocore_session()
    config: Any = importlib.import_module("botocore.config").Config(
        retries={"total_max_attempts": 1, "mode": "standard"},
        read_timeout=timeout,
        connect_timeout=timeout,
    )
    return session.create_client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=config,
    )


@functools.cache
def _botocore_session() -> Any:
    """One botocore session for all clients: it caches the loaded service model (~0.5 s)."""
    return importlib.import_module("botocore.session").get_session()


# -- successful bodies -----------------------------------------------------------------------


def openai_chat_completion(
    content: str = "Hello!",
    *,
    finish_reason: str = "stop",
    prompt_tokens: int = 9,
    completion_tokens: int = 12,
    model: str = "gpt-4o-mini",
) -> dict[str, Any]:
    """A chat completion as ``POST /v1/chat/completions`` returns it, with usage."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def openai_chat_stream(content: str = "Hello!", *, finish_reason: str = "stop") -> Reply:
    """A streamed chat completion (server-sent events): one content chunk, then the finish."""

    def chunk(delta: Mapping[str, str], finish: str | None) -> str:
        event = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": dict(delta), "finish_reason": finish}],
        }
        return f"data: {json.dumps(event)}\n\n"

    events = chunk({"role": "assistant", "content": content}, None) + chunk({}, finish_reason)
    return reply(200, events + "data: [DONE]\n\n", {"content-type": "text/event-stream"})


def openai_response(
    text: str = "Hello!",
    *,
    input_tokens: int = 9,
    output_tokens: int = 12,
    incomplete_reason: str | None = None,
    model: str = "gpt-4o-mini",
) -> dict[str, Any]:
    """A Responses API object (``POST /v1/responses``); ``incomplete_reason`` marks it cut off."""
    return {
        "id": "resp_test",
        "object": "response",
        "created_at": 1_700_000_000,
        "status": "completed" if incomplete_reason is None else "incomplete",
        "incomplete_details": (
            None if incomplete_reason is None else {"reason": incomplete_reason}
        ),
        "error": None,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": "msg_test",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
    }


def anthropic_message(
    text: str = "Hello!",
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 9,
    output_tokens: int = 12,
    model: str = "claude-sonnet-4-5",
) -> dict[str, Any]:
    """A message as ``POST /v1/messages`` returns it, with usage."""
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def gemini_response(
    text: str = "Hello!",
    *,
    finish_reason: str = "STOP",
    prompt_tokens: int = 9,
    candidates_tokens: int = 12,
    model: str = "gemini-2.5-flash",
) -> dict[str, Any]:
    """A ``generateContent`` response with ``usageMetadata`` and ``finishReason``."""
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": finish_reason,
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": candidates_tokens,
            "totalTokenCount": prompt_tokens + candidates_tokens,
        },
        "modelVersion": model,
        "responseId": "resp-test",
    }


def converse_response(
    text: str = "Hello!",
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 9,
    output_tokens: int = 12,
) -> dict[str, Any]:
    """A Bedrock ``Converse`` response with usage and metrics."""
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop_reason,
        "usage": {
            "inputTokens": input_tokens,
            "outputTokens": output_tokens,
            "totalTokens": input_tokens + output_tokens,
        },
        "metrics": {"latencyMs": 42},
    }


# -- error envelopes -------------------------------------------------------------------------


def openai_error(
    message: str,
    *,
    type: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
) -> dict[str, Any]:
    """openai's ``{"error": {...}}`` envelope."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def anthropic_error(
    error_type: str, message: str, *, error_code: str | None = None
) -> dict[str, Any]:
    """anthropic's envelope; ``error_code`` goes to ``error.details.error_code``."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if error_code is not None:
        error["details"] = {"error_code": error_code}
    return {"type": "error", "error": error, "request_id": "req_test"}


def google_error(
    code: int, status: str, message: str, *details: Mapping[str, Any]
) -> dict[str, Any]:
    """Google's ``{"error": {"code", "message", "status", "details"}}`` envelope."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


def google_error_info(reason: str, *, domain: str = "googleapis.com") -> dict[str, Any]:
    """A ``google.rpc.ErrorInfo`` detail, as Gemini puts it in ``error.details``."""
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": domain,
        "metadata": {"service": "generativelanguage.googleapis.com"},
    }


def google_retry_info(delay: str) -> dict[str, Any]:
    """A ``google.rpc.RetryInfo`` detail, e.g. ``google_retry_info("13s")``."""
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def bedrock_error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> Reply:
    """A Bedrock (rest-json) error reply: the code in ``x-amzn-ErrorType`` and the body."""
    merged = {
        "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        "x-amzn-RequestId": "00000000-0000-0000-0000-000000000000",
        **(headers or {}),
    }
    return reply(status, {"message": message}, merged)
