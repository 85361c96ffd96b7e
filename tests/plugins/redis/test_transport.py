"""Redis-specific behaviour of ``polyq_transports.redis`` against real servers.

The shared Redis (``services.redis_url()``) is isolated by a unique namespace per
test. Tests that restart, reconfigure or lock down a server start a private
``redis-server`` on a free port in a temp dir and stop it by pid.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import polyq_clients.redis as redis_client
import polyq_transports.redis.connections as redis_connections
import polyq_transports.redis.layout as redis_layout
from polyq.exceptions import BrokerError, ConfigurationError, MessageTooLarge
from polyq.registry import create_transport
from polyq.testing import services
from polyq.transport import OutgoingMessage
from polyq_transports.redis import RedisTransport


def _with_db(url: str, db: int) -> str:
    return urlsplit(url)._replace(path=f"/{db}").geturl()


def _ns() -> str:
    return "t" + uuid.uuid4().hex[:10]


def _msg(queue: str, i: int | str, **kw) -> OutgoingMessage:
    return OutgoingMessage(queue=queue, body=f"body-{i}".encode(), message_id=f"id-{i}", **kw)


@pytest.fixture
def url() -> str:
    return services.redis_url()


@pytest.fixture
def make(url: str) -> Iterator:
    made: list[RedisTransport] = []

    def factory(**options) -> RedisTransport:
        options.setdefault("namespace", _ns())
        options.setdefault("visibility_timeout", 1.0)
        transport = create_transport(options.pop("url", url), **options)
        assert isinstance(transport, RedisTransport)
        made.append(transport)
        return transport

    yield factory
    for transport in made:
        for queue in transport.queues():
            transport.purge(queue)
            transport.purge_dead_letters(queue)
            k = transport._keys.of(queue)
            transport._client.delete(k.leased, k.msg, k.count, k.seq, k.notify)
        transport._client.delete(transport._keys.queues)
        transport.close()


# -- a private redis-server ------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own, started and stopped by pid."""

    def __init__(self, directory: Path, *args: str) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server binary not installed")
        self.dir = directory
        self.port = _free_port()
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.dir), "--save", "", *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    reply = s.recv(64)
                    if reply.startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError("private redis-server did not start")

    def kill(self) -> None:
        """SIGKILL: no shutdown save, like a crash."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator:
    servers: list[PrivateRedis] = []

    def start(*args: str) -> PrivateRedis:
        server = PrivateRedis(tmp_path / f"r{len(servers)}", *args)
        servers.append(server)
        return server

    for i in range(4):
        (tmp_path / f"r{i}").mkdir()
    yield start
    for server in servers:
        server.stop()


# -- queue semantics -------------------------------------------------------------------


def test_fidelity_priority_and_fifo(make) -> None:
    t = make()
    q = "main"
    t.publish([_msg(q, i, priority=i % 3, headers={"k": "v", "i": str(i)}) for i in range(9)])
    got = t.receive([q], 9, 1)
    assert [d.message_id for d in got] == [
        "id-2", "id-5", "id-8", "id-1", "id-4", "id-7", "id-0", "id-3", "id-6"
    ]  # fmt: skip
    assert got[0].body == b"body-2" and got[0].headers == {"k": "v", "i": "2"}
    assert {d.delivery_count for d in got} == {1} and got[0].priority == 2
    binary = OutgoingMessage(q, bytes(range(256)) * 4, "bin", {"ü": "☃"})
    t.publish([binary])
    (d,) = t.receive([q], 5, 1)
    assert (d.body, d.headers, d.message_id) == (binary.body, {"ü": "☃"}, "bin")
    t.ack([*got, d])
    assert t.size(q) == 0


def test_short_delay_is_not_blocked_behind_a_long_one(make) -> None:
    t = make()
    t.publish([_msg("d", "hour", delay=3600)])
    t.publish([_msg("d", "soon", delay=0.3)])
    assert [s.message_id for s in t.scheduled("d")] == ["id-soon", "id-hour"]
    start = time.monotonic()
    got = t.receive(["d"], 10, 2.0)
    elapsed = time.monotonic() - start
    assert [d.message_id for d in got] == ["id-soon"]
    assert 0.25 <= elapsed < 1.2, elapsed
    assert t.size("d") == 2  # the hour-long one waits; the leased one counts
    assert t.purge("d") == 1


def test_blocked_receive_wakes_on_publish(make) -> None:
    t = make()
    producer = make(namespace=t.namespace)
    timer = threading.Timer(0.2, lambda: producer.publish([_msg("w", 1)]))
    timer.start()
    start = time.monotonic()
    got = t.receive(["w"], 10, 5.0)
    assert [d.message_id for d in got] == ["id-1"]
    assert time.monotonic() - start < 1.0
    timer.join()


def test_receive_wait_longer_than_socket_timeout(make) -> None:
    # redis-py 8 defaults to a 5 s socket timeout; a BLPOP as long as it breaks.
    t = make(socket_timeout=0.5)
    start = time.monotonic()
    assert t.receive(["idle"], 10, 1.3) == []
    assert 1.25 <= time.monotonic() - start < 2.5


def test_lease_expiry_redelivers_with_count(make) -> None:
    t = make(visibility_timeout=1.0)
    t.publish([_msg("l", 1)])
    (first,) = t.receive(["l"], 1, 1)
    assert t.receive(["l"], 1, 0.2) == []  # invisible while leased
    (again,) = t.receive(["l"], 1, 2.5)
    assert again.message_id == "id-1" and again.delivery_count == 2
    t.ack([first])  # late ack of the lapsed lease: fenced, not an error
    assert t.size("l") == 1
    t.ack([again])
    assert t.size("l") == 0
    t.ack([again])  # twice is fine


def test_extend_lease_keeps_message_invisible(make) -> None:
    t = make(visibility_timeout=1.0)
    t.publish([_msg("x", 1)])
    (held,) = t.receive(["x"], 1, 1)
    for _ in range(4):
        time.sleep(0.4)
        t.extend_lease([held])
    assert t.receive(["x"], 1, 0.1) == []
    t.ack([held])
    assert t.size("x") == 0


def test_extend_takes_back_a_lapsed_lease_not_yet_redelivered(make) -> None:
    t = make(visibility_timeout=0.3)
    t.publish([_msg("x", 1)])
    (held,) = t.receive(["x"], 1, 1)
    time.sleep(0.4)
    t.receive(["other"], 1, 0)  # nobody consumes "x" meanwhile
    t.extend_lease([held])
    assert t.receive(["x"], 1, 0.1) == []
    t.ack([held])


def test_nack_and_delayed_nack(make) -> None:
    t = make()
    t.publish([_msg("n", 1)])
    (d,) = t.receive(["n"], 1, 1)
    t.nack(d)
    (d,) = t.receive(["n"], 1, 1)
    assert d.delivery_count == 2
    t.nack(d, delay=0.3)
    assert [s.message_id for s in t.scheduled("n")] == ["id-1"]
    start = time.monotonic()
    (d,) = t.receive(["n"], 1, 2)
    assert 0.25 <= time.monotonic() - start < 1.2
    assert d.delivery_count == 3
    t.ack([d])


def test_dead_letters_keep_reason_and_replay(make) -> None:
    t = make()
    t.publish([_msg("dl", i, headers={"h": str(i)}) for i in range(3)])
    got = t.receive(["dl"], 3, 1)
    for d in got:
        t.dead_letter(d, f"poison {d.message_id}")
    assert t.size("dl") == 0
    letters = t.dead_letters("dl")
    assert [(x.message_id, x.reason, x.body) for x in letters] == [
        (f"id-{i}", f"poison id-{i}", f"body-{i}".encode()) for i in range(3)
    ]
    assert letters[0].headers == {"h": "0"} and letters[0].failed_at > 1e9
    assert t.replay_dead_letters("dl", ["id-1"]) == 1
    (d,) = t.receive(["dl"], 5, 1)
    assert d.message_id == "id-1" and d.delivery_count == 1
    t.ack([d])
    assert t.purge_dead_letters("dl") == 2
    assert t.dead_letters("dl") == []


def test_queues_are_served_fairly(make) -> None:
    t = make()
    t.publish([_msg("busy", i) for i in range(100)] + [_msg("quiet", "q")])
    seen = set()
    for _ in range(2):
        got = t.receive(["busy", "quiet"], 10, 1)
        seen |= {d.queue for d in got}
        t.ack(got)
    assert seen == {"busy", "quiet"}
    assert sorted(t.queues()) == ["busy", "quiet"]


def test_concurrent_consumers_never_share_a_message(make) -> None:
    producer = make(visibility_timeout=30)
    n = 2000
    producer.publish([_msg("c", i) for i in range(n)])
    taken: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        t = make(namespace=producer.namespace, visibility_timeout=30)
        while True:
            got = t.receive(["c"], 37, 0.3)
            if not got:
                return
            with lock:
                taken.extend(d.message_id for d in got)
            t.ack(got)

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(taken) == n and len(set(taken)) == n
    assert producer.size("c") == 0


def test_broadcast_is_isolated_by_namespace_and_db(make, url: str) -> None:
    t = make()
    same = make(namespace=t.namespace)
    other_app = make()
    other_db = make(namespace=t.namespace, url=_with_db(url, 3))
    subs = [x.subscribe("ctl") for x in (same, other_app, other_db)]
    try:
        t.broadcast("ctl", b"hello")
        assert subs[0].get(1.0) == b"hello"
        assert subs[1].get(0.2) is None
        assert subs[2].get(0.2) is None
    finally:
        for s in subs:
            s.close()
            s.close()


# -- batching and idle cost --------------------------------------------------------------


def test_batches_take_one_round_trip(private_redis) -> None:
    server = private_redis()
    t = RedisTransport(server.url, namespace="b", visibility_timeout=5)
    admin = redis.Redis(port=server.port)
    try:
        t.publish([_msg("b", i) for i in range(10)])  # loads the scripts
        got = t.receive(["b"], 10, 1)
        t.ack(got)

        def calls() -> dict[str, int]:
            stats = admin.info("commandstats")
            return {c: stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "blpop")}

        before = calls()
        t.publish([_msg("b", i) for i in range(100)])
        got = t.receive(["b"], 100, 1)
        t.ack(got)
        assert len(got) == 100
        after = calls()
        assert after["evalsha"] - before["evalsha"] == 3  # publish, receive, ack
        assert after["blpop"] == before["blpop"]
        # an idle receive blocks instead of polling
        assert t.receive(["b"], 10, 1.0) == []
        idle = calls()
        assert idle["evalsha"] - after["evalsha"] <= 2 and idle["blpop"] - after["blpop"] <= 1
    finally:
        t.close()
        admin.close()


def test_single_publish_is_one_command_and_survives_lost_connections(private_redis) -> None:
    server = private_redis()
    t = RedisTransport(server.url, namespace="one", visibility_timeout=5)
    admin = redis.Redis(port=server.port)
    try:
        t.publish([_msg("one", 0)])  # loads the script
        admin.config_resetstat()
        for i in range(1, 4):
            t.publish([_msg("one", i, priority=i % 2)])
        stats = admin.info("commandstats")
        inside_the_script = {"incr", "hset", "zadd", "llen", "rpush"}
        sent = {k[8:] for k in stats if k.startswith("cmdstat_")} - inside_the_script
        assert sent == {"evalsha", "config|resetstat"}  # no PING, SCRIPT, SADD...
        assert stats["cmdstat_evalsha"]["calls"] == 3
        admin.client_kill_filter(_type="normal", skipme=True)  # e.g. a server timeout
        t.publish([_msg("one", 4)])
        admin.script_flush()  # as a restart without persistence would
        t.publish([_msg("one", 5)])
        t.publish([_msg("one", "later", delay=0.2)])
        got = t.receive(["one"], 10, 1)
        assert [d.message_id for d in got] == ["id-1", "id-3", "id-0", "id-2", "id-4", "id-5"]
        time.sleep(0.25)
        assert [d.message_id for d in t.receive(["one"], 10, 1)] == ["id-later"]
        assert t.queues() == ["one"]
    finally:
        t.close()
        admin.close()


def test_single_publish_without_hiredis(make, monkeypatch) -> None:
    monkeypatch.setattr(redis_connections, "_pack_command", None)  # redis-py packs
    t = make()
    t.publish([_msg("plain", 1, headers={"ü": "☃"})])
    (d,) = t.receive(["plain"], 1, 1)
    assert (d.message_id, d.body, d.headers) == ("id-1", b"body-1", {"ü": "☃"})


def test_single_publish_through_the_pool_under_max_connections(make) -> None:
    t = make(max_connections=2)
    for i in range(5):
        t.publish([_msg("capped", i)])
    assert t._connections.idle == []  # the pool, not our own connections, carried them
    assert len(t.receive(["capped"], 10, 1)) == 5


def test_publishing_threads_share_few_connections(make) -> None:
    t = make()
    barrier = threading.Barrier(4)

    def produce(n: int) -> None:
        barrier.wait()
        for i in range(50):
            t.publish([_msg("threads", f"{n}-{i}")])

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= len(t._connections.idle) <= 4
    got = t.receive(["threads"], 300, 1)
    assert len({d.message_id for d in got}) == 200


# -- durability ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ready_and_leased_messages_survive_a_redis_crash(private_redis) -> None:
    server = private_redis("--appendonly", "yes", "--appendfsync", "always")
    t = RedisTransport(server.url, namespace="dur", visibility_timeout=1)
    t.publish([_msg("dur", i) for i in range(3)])
    t.publish([_msg("dur", "later", delay=0.5)])
    (leased,) = t.receive(["dur"], 1, 1)
    t.close()
    server.kill()
    server.start()
    t = RedisTransport(server.url, namespace="dur", visibility_timeout=1)
    try:
        assert t.size("dur") == 4
        by_id: dict[str, int] = {}
        deadline = time.monotonic() + 4
        while len(by_id) < 4 and time.monotonic() < deadline:
            got = t.receive(["dur"], 10, 1)
            t.ack(got)
            for d in got:
                by_id.setdefault(d.message_id, d.delivery_count)
        assert by_id == {leased.message_id: 2, "id-1": 1, "id-2": 1, "id-later": 1}
        assert t.size("dur") == 0
    finally:
        t.close()


def test_down_broker_is_a_clear_error_without_the_password() -> None:
    url = f"redis://:s3cret@127.0.0.1:{_free_port()}/0"
    t = RedisTransport(url, socket_connect_timeout=0.5, retries=0)
    with pytest.raises(BrokerError) as info:
        t.publish([_msg("q", 1)])
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
    with pytest.raises(BrokerError):
        t.receive(["q"], 1, 0.1)
    assert "s3cret" not in t.describe()


def test_wrong_password_is_a_clear_error(private_redis) -> None:
    server = private_redis("--requirepass", "right")
    t = RedisTransport(f"redis://:wrong@127.0.0.1:{server.port}/0", retries=0)
    with pytest.raises(BrokerError, match="credentials") as info:
        t.size("q")
    assert "wrong" not in str(info.value)
    ok = RedisTransport(f"redis://:right@127.0.0.1:{server.port}/0")
    ok.publish([_msg("q", 1)])
    assert ok.size("q") == 1
    ok.close()


def test_message_too_large_sends_nothing(make, monkeypatch) -> None:
    t = make()
    monkeypatch.setattr(redis_layout, "MAX_MESSAGE_SIZE", 1000)
    with pytest.raises(MessageTooLarge):
        t.publish([_msg("big", 1), OutgoingMessage("big", b"x" * 2000, "huge")])
    assert t.size("big") == 0


def test_bad_configuration_is_refused(url: str) -> None:
    with pytest.raises(ConfigurationError, match="master_name"):
        RedisTransport("redis+sentinel://127.0.0.1:26379/0")
    with pytest.raises(ConfigurationError, match="database"):
        RedisTransport("redis://127.0.0.1:6379/abc")
    with pytest.raises(ConfigurationError, match="ssl_cert_reqs"):
        RedisTransport("rediss://127.0.0.1:6379/0?ssl_cert_reqs=maybe")


# -- eviction policy warning ---------------------------------------------------------------


def test_warns_when_eviction_can_delete_queue_keys(private_redis, caplog) -> None:
    server = private_redis("--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru")
    t = RedisTransport(server.url)
    with caplog.at_level(logging.WARNING, logger="polyq_transports.redis"):
        t.receive(["q"], 1, 0.05)
    assert "allkeys-lru" in caplog.text
    t.close()


def test_config_get_denied_is_skipped_quietly(private_redis, caplog) -> None:
    server = private_redis()
    admin = redis.Redis(port=server.port)
    admin.acl_setuser("app", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                      commands=["+@all", "-config"])  # fmt: skip
    admin.close()
    t = RedisTransport(f"redis://app:pw@127.0.0.1:{server.port}/0")
    with caplog.at_level(logging.WARNING):
        t.publish([_msg("q", 1)])
        assert len(t.receive(["q"], 1, 0.5)) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    t.close()


# -- deployment shapes -----------------------------------------------------------------------


@pytest.mark.slow
def test_sentinel_url_finds_the_master(private_redis, tmp_path: Path) -> None:
    master = private_redis()
    port = _free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor polyqmaster 127.0.0.1 {master.port} 1\n"
    )
    proc = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        sentinel = redis.Redis(port=port, retry=Retry(NoBackoff(), 0))
        while time.monotonic() < deadline:
            try:
                if sentinel.execute_command("SENTINEL", "get-master-addr-by-name", "polyqmaster"):
                    break
            except redis.ConnectionError:
                pass
            time.sleep(0.05)
        sentinel.close()
        url = f"redis+sentinel://127.0.0.1:{_free_port()},127.0.0.1:{port}/0"
        t = RedisTransport(url, master_name="polyqmaster", namespace="s")
        t.publish([_msg("s", 1)])
        (d,) = t.receive(["s"], 1, 1)
        t.ack([d])
        assert redis.Redis(port=master.port).exists("s:{s}:seq")
        t.close()
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=polyq-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
        "-out", "server.csr")  # fmt: skip
    (tmp_path / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-extfile", "ext.cnf", "-out", "server.crt")  # fmt: skip
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=other",
        "-keyout", "other.key", "-out", "other.crt")  # fmt: skip
    return {
        name: str(tmp_path / name) for name in ("ca.crt", "server.crt", "server.key", "other.crt")
    }


@pytest.mark.slow
def test_rediss_verifies_the_server_certificate(private_redis, tls_files) -> None:
    port = _free_port()
    private_redis("--tls-port", str(port), "--tls-cert-file", tls_files["server.crt"],
                  "--tls-key-file", tls_files["server.key"], "--tls-ca-cert-file",
                  tls_files["ca.crt"], "--tls-auth-clients", "no")  # fmt: skip
    ok = RedisTransport(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls_files['ca.crt']}")
    ok.publish([_msg("tls", 1)])
    assert ok.size("tls") == 1
    ok.close()
    wrong = RedisTransport(f"rediss://127.0.0.1:{port}/0", ssl_ca_certs=tls_files["other.crt"],
                           retries=0)  # fmt: skip
    with pytest.raises(BrokerError):
        wrong.size("tls")


def test_closing_the_transport_ends_a_waiting_subscription(make) -> None:
    t = make()
    sub = t.subscribe("ctl")
    got: list[bytes | None] = []
    reader = threading.Thread(target=lambda: got.append(sub.get(5.0)))
    reader.start()
    time.sleep(0.2)
    start = time.monotonic()
    t.close()  # as a worker's shutdown does while its control thread listens
    reader.join(2)
    assert got == [None] and time.monotonic() - start < 1


def test_scripts_flushed_by_a_restart_are_reloaded(private_redis) -> None:
    server = private_redis()
    t = RedisTransport(server.url, namespace="f", visibility_timeout=5)
    admin = redis.Redis(port=server.port)
    try:
        t.publish([_msg("a", 1), _msg("b", 2)])
        admin.script_flush()  # as a restart without persistence would
        got = t.receive(["a", "b"], 10, 1)
        assert len(got) == 2
        admin.script_flush()
        t.extend_lease(got)  # two queues: one pipelined round trip
        admin.script_flush()
        t.ack(got)
        assert t.size("a") == t.size("b") == 0
    finally:
        t.close()
        admin.close()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://localhost", ("redis", None, None, [("localhost", 6379)], 0)),
        ("redis://:p%40ss@h:6380/2", ("redis", None, "p@ss", [("h", 6380)], 2)),
        ("redis://user:pw@h/1?socket_timeout=3", ("redis", "user", "pw", [("h", 6379)], 1)),
        ("redis://secret@h", ("redis", None, "secret", [("h", 6379)], 0)),
        ("rediss://[::1]:7000/0", ("rediss", None, None, [("::1", 7000)], 0)),
        (
            "redis+sentinel://:pw@s1:26379,s2/3",
            ("redis+sentinel", None, "pw", [("s1", 26379), ("s2", 26379)], 3),
        ),
    ],
)
def test_url_forms(url: str, expected: tuple) -> None:
    assert redis_client.split_url(url) == expected


def test_celery_sentinel_url_lists_every_sentinel() -> None:
    client, db = redis_client.connect(
        "sentinel://:pw@127.0.0.1:26379;sentinel://:pw@127.0.0.1:26380/0",
        {"master_name": "mymaster"},
    )
    sentinels = client.connection_pool.sentinel_manager.sentinels
    ports = [s.connection_pool.connection_kwargs["port"] for s in sentinels]
    assert ports == [26379, 26380] and db == 0
    client.close()


@pytest.mark.slow
def test_sentinel_failover_is_followed(private_redis, tmp_path: Path) -> None:
    master = private_redis()
    replica = private_redis("--replicaof", "127.0.0.1", str(master.port))
    port = _free_port()
    conf = tmp_path / "failover-sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor pqm 127.0.0.1 {master.port} 1\n"
        "sentinel down-after-milliseconds pqm 300\nsentinel failover-timeout pqm 2000\n"
    )
    proc = subprocess.Popen(
        ["redis-server", str(conf), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    t = None
    try:
        t = RedisTransport(
            f"redis+sentinel://127.0.0.1:{port}/0", master_name="pqm", namespace="fo", retries=0
        )
        deadline = time.monotonic() + 10
        while True:  # the sentinel needs a moment to start
            try:
                t.publish([_msg("fo", 1)])
                break
            except BrokerError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        replica_client = redis.Redis(port=replica.port)
        while not replica_client.exists("fo:{fo}:msg"):  # replication is asynchronous
            assert time.monotonic() < deadline
            time.sleep(0.05)
        master.kill()
        start = time.monotonic()
        while True:
            try:
                t.publish([_msg("fo", 2)])
                break
            except BrokerError:  # until the sentinel has promoted the replica
                assert time.monotonic() - start < 15, "no failover within 15 s"
                time.sleep(0.1)
        got = t.receive(["fo"], 10, 1)
        assert sorted(d.message_id for d in got) == ["id-1", "id-2"]
        assert replica_client.info("replication")["role"] == "master"
        replica_client.close()
    finally:
        if t is not None:
            t.close()
        proc.terminate()
        proc.wait(5)
