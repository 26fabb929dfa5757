"""Shared test fakes and suite rules: a fake clock, a scripted loopback server with real
SDK clients on it, the Hypothesis profiles, and the rule that no test skips unannounced.

``scripted_server`` is a :class:`~tests.scripted_server.ScriptedServer` on
127.0.0.1; the client fixtures (``openai_client``, ``anthropic_client``,
``genai_client``, ``bedrock_client`` and the async twins) talk real HTTP to
it with the SDK's own retries off. They never skip: the SDKs are dev
dependencies, and a missing one must fail the run, not hide it. The bodies
to script come from ``scripted_server`` (the module):

    def test_rate_limit(scripted_server, openai_client):
        scripted_server.reply(429, openai_error("slow down"), {"retry-after": "2"})
        with pytest.raises(openai.RateLimitError):
            openai_client.chat.completions.create(model="m", messages=[...])
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings

from tests import scripted_server as scripted

if TYPE_CHECKING:
    import anthropic
    import openai

    from techrevati.runtime.events import AgentEvent, UsageRecord
    from techrevati.runtime.pricing import ModelPricing
    from tests.redis_servers import RedisCluster3, RedisServer


# Hypothesis: the same examples every run by default; TECHREVATI_HYPOTHESIS=explore
# draws new ones (seeded by --hypothesis-seed) and 5x as many.
settings.register_profile("fast", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", derandomize=False, deadline=None, print_blob=True)
HYPOTHESIS_PROFILE: str = os.environ.get("TECHREVATI_HYPOTHESIS", "fast")
"""``fast`` (the same examples every run) or ``explore`` (new examples each run, 5x as many)."""
if HYPOTHESIS_PROFILE not in ("fast", "explore"):
    raise pytest.UsageError(
        f"TECHREVATI_HYPOTHESIS must be fast or explore, got {HYPOTHESIS_PROFILE!r}"
    )
settings.load_profile(HYPOTHESIS_PROFILE)


def examples(count: int) -> int:
    """How many examples a property test runs: ``count``, or 5x that when exploring."""
    return count * 5 if HYPOTHESIS_PROFILE == "explore" else count


# No silent skips: a test that skips fails the run unless pyproject.toml's
# allowed_skips lists it with a reason.
def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "allowed_skips",
        type="linelist",
        help="test ids that may skip, each as 'nodeid | reason'; any other skip fails the run",
    )


_ALLOWED_SKIPS: set[str] = set()
_UNEXPECTED_SKIPS: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    for entry in config.getini("allowed_skips"):
        nodeid, bar, reason = entry.partition("|")
        if not bar or not reason.strip():
            raise pytest.UsageError(f"allowed_skips entry needs 'nodeid | reason', got {entry!r}")
        _ALLOWED_SKIPS.add(nodeid.strip())


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail") and report.nodeid not in _ALLOWED_SKIPS:
        _UNEXPECTED_SKIPS.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _UNEXPECTED_SKIPS and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _UNEXPECTED_SKIPS:
        terminalreporter.section("unexpected skips (not in allowed_skips of pyproject.toml)")
        for nodeid in _UNEXPECTED_SKIPS:
            terminalreporter.line(nodeid)


class FakeClock:
    """A monotonic clock that moves only when told to, or when code sleeps on it.

    Pass the instance as ``clock=`` and :meth:`sleep` (or :meth:`asleep`) as
    ``sleep=``: every sleep is recorded in :attr:`slept` and moves the clock,
    and nothing ever waits.
    """

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward (a monotonic clock never goes back)."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back, got {seconds!r}")
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        """Record ``seconds`` and advance the clock by them, at once."""
        self.slept.append(seconds)
        self.advance(seconds)

    async def asleep(self, seconds: float) -> None:
        """The async twin of :meth:`sleep`; it yields to the loop once, as a real sleep would."""
        self.sleep(seconds)
        await asyncio.sleep(0)


def warned_from(filename: str, test_file: str) -> bool:
    """Whether a warning's ``filename`` is the test's own file: its ``stacklevel`` is right.

    Under mutation testing mutmut's trampoline frames sit between the library
    and its caller, so a warning then points into mutmut; that is accepted
    there (and only there).
    """
    return filename == test_file or "mutmut" in Path(filename).parts


class CollectingSink:
    """An event and usage sink that keeps every record it is given, in order."""

    def __init__(self) -> None:
        self.events: list[AgentEvent] = []
        self.usage: list[UsageRecord] = []

    def write_event(self, event: AgentEvent) -> None:
        self.events.append(event)

    def write_usage(self, record: UsageRecord) -> None:
        self.usage.append(record)


@pytest.fixture
def priced_models() -> Iterator[None]:
    """Price ``m`` ($3/$15 per million) and ``backup`` ($1/$5), and nothing else, for one test."""
    from techrevati.runtime import ModelPricing, clear_pricing, register_pricing

    clear_pricing()
    register_pricing("m", ModelPricing(input_per_million="3", output_per_million="15"))
    register_pricing("backup", ModelPricing(input_per_million="1", output_per_million="5"))
    yield
    clear_pricing()


@pytest.fixture
def empty_pricing() -> Iterator[None]:
    """Start and end the test with an empty pricing registry."""
    from techrevati.runtime.pricing import clear_pricing

    clear_pricing()
    yield
    clear_pricing()


def price_model(model: str = "m", inp: str = "3", out: str = "15", **extra: object) -> ModelPricing:
    """Register and return a pricing for ``model`` ($3/$15 per million unless told)."""
    from techrevati.runtime.pricing import ModelPricing, register_pricing

    pricing = ModelPricing(inp, out, **extra)  # type: ignore[arg-type]
    register_pricing(model, pricing)
    return pricing


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def scripted_server() -> Iterator[scripted.ScriptedServer]:
    with scripted.ScriptedServer() as server:
        yield server


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL where every connection is refused at once."""
    with scripted.refused_address() as url:
        yield url


def _require(*modules: str) -> None:
    """Import the SDKs a fixture needs; a missing one is an error, never a skip."""
    for name in modules:
        importlib.import_module(name)


@pytest.fixture
def openai_client(scripted_server: scripted.ScriptedServer) -> Iterator[openai.OpenAI]:
    _require("openai")
    with scripted.openai_client(scripted_server.url) as client:
        yield client


@pytest.fixture
def async_openai_client(scripted_server: scripted.ScriptedServer) -> Iterator[openai.AsyncOpenAI]:
    """Use it inside the test's own ``asyncio.run``; it is closed at teardown."""
    _require("openai")
    client = scripted.async_openai_client(scripted_server.url)
    yield client
    asyncio.run(client.close())


@pytest.fixture
def anthropic_client(scripted_server: scripted.ScriptedServer) -> Iterator[anthropic.Anthropic]:
    _require("anthropic")
    with scripted.anthropic_client(scripted_server.url) as client:
        yield client


@pytest.fixture
def async_anthropic_client(
    scripted_server: scripted.ScriptedServer,
) -> Iterator[anthropic.AsyncAnthropic]:
    """Use it inside the test's own ``asyncio.run``; it is closed at teardown."""
    _require("anthropic")
    client = scripted.async_anthropic_client(scripted_server.url)
    yield client
    asyncio.run(client.close())


@pytest.fixture
def genai_client(scripted_server: scripted.ScriptedServer) -> Iterator[Any]:
    """A ``google.genai.Client`` (typed ``Any``: google's stubs are not checked)."""
    _require("google.genai")
    client = scripted.genai_client(scripted_server.url)
    yield client
    client.close()


@pytest.fixture
def bedrock_client(scripted_server: scripted.ScriptedServer) -> Iterator[Any]:
    """A botocore ``bedrock-runtime`` client (typed ``Any``: botocore has no stubs)."""
    _require("botocore")
    client = scripted.bedrock_client(scripted_server.url)
    yield client
    client.close()


# Real redis-server processes (tests/redis_servers.py). Each is started only when
# a test first asks for it; a missing redis-server is an error there, never a skip.
@pytest.fixture(scope="session")
def redis_session_server() -> Iterator[RedisServer]:
    """The session's one unix-socket server; tests take it through ``redis_server``."""
    from tests.redis_servers import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_server(redis_session_server: RedisServer) -> RedisServer:
    """The session's unix-socket ``RedisServer``, emptied (FLUSHALL) for this test.

    A test that kills or shuts down its server should take ``fresh_redis_server``;
    if one ends this one anyway, the next test gets it restarted at the same address.
    """
    if not redis_session_server.running:
        redis_session_server.restart()
    redis_session_server.flushall()
    return redis_session_server


@pytest.fixture
def fresh_redis_server() -> Iterator[RedisServer]:
    """A unix-socket ``RedisServer`` of this test's own, stopped and removed at teardown."""
    from tests.redis_servers import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_session_cluster() -> Iterator[RedisCluster3]:
    """The session's three-primary cluster; tests take it through ``redis_cluster``."""
    from tests.redis_servers import RedisCluster3

    with RedisCluster3() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_session_cluster: RedisCluster3) -> RedisCluster3:
    """The session's ``RedisCluster3``, every primary emptied (FLUSHALL) for this test.

    If a test left a node down, the cluster is built anew (on new ports) first.
    """
    if not redis_session_cluster.running:
        redis_session_cluster.stop()
        redis_session_cluster.start()
    redis_session_cluster.flushall()
    return redis_session_cluster
