"""The redis-server test infrastructure (tests/redis_servers.py and its fixtures) works."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
import redis
import redis.exceptions
from redis.crc import key_slot

from tests.redis_servers import (
    RedisCluster3,
    RedisServer,
    RedisServerError,
    redis_server_binary,
    slot_ranges,
)

_SESSION_PIDS: list[int | None] = []


def _gone(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_binary_is_a_redis_server() -> None:
    binary = redis_server_binary()
    assert Path(binary).name == "redis-server"
    assert os.access(binary, os.X_OK)


def test_ping_set_get_over_the_unix_socket(redis_server: RedisServer) -> None:
    mode = os.stat(redis_server.socket_path).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o700
    assert redis_server.url == f"unix://{redis_server.socket_path}?db=0"
    with redis_server.client() as client:
        assert client.ping() is True
        assert client.set(b"k", b"v") is True
        assert client.get(b"k") == b"v"
        config = client.config_get("*")
    assert config["port"] == "0"  # no TCP listener at all
    assert config["save"] == ""
    assert config["appendonly"] == "no"
    with redis.Redis.from_url(redis_server.url, socket_timeout=2.0) as by_url:
        assert by_url.get(b"k") == b"v"


def test_ping_set_get_over_tcp_on_loopback() -> None:
    with RedisServer(tcp=True) as server:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with server.client(decode_responses=True) as client:
            assert client.ping() is True
            assert client.set("k", "v") is True
            assert client.get("k") == "v"
            assert client.config_get("bind") == {"bind": "127.0.0.1"}
            assert client.config_get("port") == {"port": str(server.port)}
        with redis.Redis.from_url(server.url, socket_timeout=2.0) as by_url:
            assert by_url.get("k") == b"v"


def test_the_async_client_talks_to_the_same_server(redis_server: RedisServer) -> None:
    async def roundtrip() -> bytes | str | None:
        client = redis_server.async_client()
        try:
            assert await client.ping() is True
            await client.set(b"a", b"1")
            return await client.get(b"a")
        finally:
            await client.aclose()

    assert asyncio.run(roundtrip()) == b"1"
    with redis_server.client() as client:
        assert client.get(b"a") == b"1"


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_gets_the_session_server_empty(redis_server: RedisServer, run: str) -> None:
    _SESSION_PIDS.append(redis_server.pid)
    assert len(set(_SESSION_PIDS)) == 1  # one server for the whole session
    with redis_server.client() as client:
        assert client.dbsize() == 0, f"{run}: the last test's keys are still there"
        client.set(b"left-behind", run)


def test_kill_breaks_clients_and_restart_brings_it_back_empty(
    fresh_redis_server: RedisServer,
) -> None:
    server = fresh_redis_server
    url, pid = server.url, server.pid
    client = server.client()
    assert client.set(b"k", b"v") is True
    server.kill()
    assert not server.running
    assert server.returncode == -9
    assert _gone(pid)
    with pytest.raises(redis.exceptions.ConnectionError):
        client.get(b"k")  # the open connection is cut
    with server.client() as new_client, pytest.raises(redis.exceptions.ConnectionError):
        new_client.ping()  # and nobody answers a new one
    assert server.restart().running
    assert server.pid != pid
    assert server.url == url
    assert client.get(b"k") is None  # the same client reconnects, to an empty server
    assert client.dbsize() == 0
    client.close()


def test_shutdown_nosave_ends_the_server_and_saves_nothing(
    fresh_redis_server: RedisServer,
) -> None:
    server = fresh_redis_server
    directory = server.directory
    assert directory is not None
    with server.client() as client:
        client.set(b"k", b"v")
    server.shutdown_nosave()
    assert not server.running
    assert server.returncode == 0
    assert any("ready to exit" in line for line in server.output())
    assert os.listdir(directory) == []  # no dump.rdb, and the socket file is removed
    with server.client() as client, pytest.raises(redis.exceptions.ConnectionError):
        client.ping()
    server.restart()
    with server.client() as client:
        assert client.ping() is True
        assert client.get(b"k") is None


def test_stop_ends_the_process_and_removes_its_directory() -> None:
    server = RedisServer().start()
    pid, directory = server.pid, server.directory
    assert directory is not None
    assert os.path.isdir(directory)
    server.stop()
    assert not server.running
    assert _gone(pid)
    assert not os.path.exists(directory)
    server.stop()  # a second stop is harmless


def test_a_server_that_never_gets_ready_is_killed_and_reported(tmp_path: Path) -> None:
    silent = tmp_path / "redis-server"
    silent.write_text("#!/bin/sh\necho 'starting, but never ready'\nexec sleep 30\n")
    silent.chmod(0o755)
    server = RedisServer(binary=str(silent), ready_timeout=0.3)
    with pytest.raises(RedisServerError, match=r"not ready within 0\.3 s") as caught:
        server.start()
    assert "starting, but never ready" in str(caught.value)
    assert not server.running
    assert _gone(server.pid)
    server.stop()


def test_a_server_that_exits_at_once_is_reported_with_its_output(tmp_path: Path) -> None:
    failing = tmp_path / "redis-server"
    failing.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR'\nexit 1\n")
    failing.chmod(0o755)
    server = RedisServer(binary=str(failing))
    with pytest.raises(RedisServerError, match="exited with 1 before it was ready") as caught:
        server.start()
    assert caught.value.output == ["FATAL CONFIG FILE ERROR"]
    server.stop()


# -- the cluster --------------------------------------------------------------


def test_every_cluster_node_is_ok_and_owns_its_third(redis_cluster: RedisCluster3) -> None:
    assert len(set(redis_cluster.nodes)) == 3
    for server in redis_cluster.servers:
        with server.client() as client:
            info = client.cluster("INFO")
            assert info["cluster_state"] == "ok"
            assert int(info["cluster_known_nodes"]) == 3
            assert int(info["cluster_slots_assigned"]) == 16384
    with redis_cluster.client() as client:
        owners = {node.port for node in client.get_primaries()}
        assert owners == set(redis_cluster.nodes)
        for port, (first, last) in zip(redis_cluster.nodes, slot_ranges(), strict=True):
            for slot in (first, last):
                assert client.nodes_manager.get_node_from_slot(slot).port == port


def _tag_in(first: int, last: int) -> str:
    """The first hash tag ``t0``, ``t1``... whose slot lies in ``first..last``."""
    for n in range(1000):
        if first <= key_slot(f"{{t{n}}}k".encode()) <= last:
            return f"t{n}"
    raise AssertionError(f"no tag among 1000 hashes into {first}..{last}")


def test_keys_with_different_hash_tags_land_on_different_nodes(
    redis_cluster: RedisCluster3,
) -> None:
    with redis_cluster.client() as client:
        keys = [f"{{{_tag_in(first, last)}}}k" for first, last in slot_ranges()]
        homes = []
        for key in keys:
            client.set(key, key)
            homes.append(client.get_node_from_key(key).port)
        assert homes == redis_cluster.nodes  # one key on each node, in slot order
        with redis_cluster.servers[0].client() as node_0:
            for key in keys:  # the server agrees with redis-py's CRC16
                assert node_0.cluster("KEYSLOT", key) == client.keyslot(key)
        for key, server in zip(keys, redis_cluster.servers, strict=True):
            with server.client() as direct:
                assert direct.get(key) == key.encode()  # stored on that node itself
                assert direct.dbsize() == 1


_TWO_KEYS = """
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2])
return redis.call('MGET', KEYS[1], KEYS[2])
"""


def test_eval_on_two_keys_of_one_hash_tag_works(redis_cluster: RedisCluster3) -> None:
    with redis_cluster.client() as client:
        assert client.keyslot("{order}:a") == client.keyslot("{order}:b")
        assert client.eval(_TWO_KEYS, 2, "{order}:a", "{order}:b", "1", "2") == [b"1", b"2"]
        assert client.mget("{order}:a", "{order}:b") == [b"1", b"2"]


def test_eval_across_two_slots_is_refused_with_crossslot(redis_cluster: RedisCluster3) -> None:
    with redis_cluster.client() as client:
        assert client.keyslot("{a}k") != client.keyslot("{b}k")
        with pytest.raises(redis.exceptions.RedisClusterException, match="same key slot"):
            client.eval(_TWO_KEYS, 2, "{a}k", "{b}k", "1", "2")  # redis-py refuses first
        with pytest.raises(redis.exceptions.ClusterCrossSlotError):  # the server's CROSSSLOT
            client.execute_command(
                "EVAL",
                _TWO_KEYS,
                2,
                "{a}k",
                "{b}k",
                "1",
                "2",
                target_nodes=client.get_random_node(),
            )
        with (
            redis_cluster.servers[0].client() as node_0,
            pytest.raises(redis.exceptions.ClusterCrossSlotError, match=r"^Keys in request don't"),
        ):
            node_0.eval(_TWO_KEYS, 2, "{a}k", "{b}k", "1", "2")
        assert client.exists("{a}k", "{b}k") == 0  # neither was written


@pytest.mark.parametrize("run", ["first", "second"])
def test_each_test_gets_the_cluster_empty(redis_cluster: RedisCluster3, run: str) -> None:
    for server in redis_cluster.servers:
        with server.client() as client:
            assert client.dbsize() == 0, f"{run}: the last test's keys are still there"
    with redis_cluster.client() as client:
        for tag in ("a", "b", "c", "d"):
            client.set(f"{{{tag}}}left-behind", run)
