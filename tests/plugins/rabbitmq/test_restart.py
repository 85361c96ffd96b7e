"""RabbitMQ crash and restart under load, on a private node (never the shared one).

The test starts its own RabbitMQ node (own node name, ports, epmd, data and log
directories in a temp dir), publishes 10,000 messages one confirmed ``publish`` at a
time from one thread, and batches of 100 from another until the first is done, while
a third consumes and acks them; kills the node with SIGKILL part-way (a crash, not a
clean stop), starts it again on the same data, and checks the ledger:

* every ``publish`` either returned (confirmed) or raised ``BrokerError``, a batch
  as a whole;
* at least 90 % were confirmed, and publishing happened on both sides of the crash;
* every confirmed message was executed (consumed and acked) at least once;
* duplicates (a message executed twice because its ack died with the node) are
  counted and reported, as are unconfirmed messages that arrived anyway;
* a broadcast subscription opened before the crash hears broadcasts after it.

It runs with the fast path and without it (pika's own path).

Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from polyq.exceptions import BrokerError
from polyq.registry import create_transport
from polyq.transport import OutgoingMessage
from polyq_transports.rabbitmq import fastpath

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SERVER_CANDIDATES = [
    "/usr/lib/rabbitmq/bin/rabbitmq-server",  # Debian: the real script, not the su wrapper
    shutil.which("rabbitmq-server") or "",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class PrivateRabbit:
    """A throwaway RabbitMQ node; every process it starts is ended by pid/group."""

    def __init__(self, base: Path) -> None:
        server = next((p for p in SERVER_CANDIDATES if p and os.path.exists(p)), None)
        epmd = shutil.which("epmd")
        if server is None or epmd is None:
            pytest.skip("rabbitmq-server or epmd is not installed")
        self.server = server
        self.base = base
        self.port = _free_port()
        self.epmd_port = _free_port()
        self.node = f"polyqtest-{uuid.uuid4().hex[:8]}@localhost"
        (base / "plugins").write_text("[].\n")
        self.env = {
            **os.environ,
            "HOME": str(base),  # the Erlang cookie goes here
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(_free_port()),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(base / "rabbit.pid"),
        }
        # Our own epmd in the foreground, so rabbitmq-server does not daemonize one
        # that would outlive the test.
        self.epmd = subprocess.Popen(
            [epmd, "-port", str(self.epmd_port)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self, timeout: float = 90.0) -> float:
        """Boot the node; return how long it took to accept AMQP connections."""
        started = time.monotonic()
        log = open(self.base / "server.out", "ab")  # closed in kill()
        self.proc = subprocess.Popen(
            [self.server],
            env=self.env,
            cwd=self.base,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() ends all of it
        )
        self._log = log
        params = pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{self.port}/%2F")
        params.connection_attempts = 1
        params.socket_timeout = 1
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"private RabbitMQ exited: {self._tail()}")
            with contextlib.suppress(Exception):
                pika.BlockingConnection(params).close()
                return time.monotonic() - started
            time.sleep(0.2)
        raise RuntimeError(f"private RabbitMQ did not start within {timeout}s: {self._tail()}")

    def kill(self) -> None:
        """Crash the node: SIGKILL its whole process group (all started by us)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            # Erlang helpers (erl_child_setup, inet_gethost) were in the same group.
        if self.proc is not None:
            self._log.close()
        self.proc = None

    def stop(self) -> None:
        self.kill()
        if self.epmd.poll() is None:
            self.epmd.terminate()
            try:
                self.epmd.wait(5)
            except subprocess.TimeoutExpired:
                self.epmd.kill()
                self.epmd.wait(5)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.base / "server.out").read_text(errors="replace")[-2000:]
        return "(no output)"


@pytest.fixture
def rabbit(tmp_path: Path) -> Iterator[PrivateRabbit]:
    node = PrivateRabbit(tmp_path)
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "plain"])
def test_crash_and_restart_under_load(rabbit: PrivateRabbit, fast: bool) -> None:
    total = 10_000
    kill_at = 3_000
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    options = {"connect_timeout": 5.0, "confirm_timeout": 10.0, "heartbeat": 5, "fastpath": fast}
    producer = create_transport(rabbit.url, **options)
    consumer = create_transport(rabbit.url, **options)
    listener = create_transport(rabbit.url, **options)
    # The fast path (if this pika is in its tested range) or pika's own, as asked.
    assert getattr(consumer, "fastpath", None) is (fast and fastpath.choose())
    subscription = listener.subscribe("control")
    producer.broadcast("control", b"before")
    assert subscription.get(5) == b"before"

    confirmed: list[str] = []
    raised: list[str] = []
    executed: Counter[str] = Counter()
    lock = threading.Lock()
    produced = threading.Event()
    batches = {"confirmed": 0, "raised": 0}
    stop = threading.Event()
    crash_window: dict[str, float] = {}
    published_before_crash = 0

    def produce() -> None:
        for i in range(total):
            message_id = f"m{i:05d}"
            try:
                producer.publish([OutgoingMessage(queue, message_id.encode(), message_id)])
            except BrokerError:
                with lock:
                    raised.append(message_id)
            else:
                with lock:
                    confirmed.append(message_id)
        produced.set()

    def produce_batches() -> None:
        n = 0
        while not produced.is_set():
            ids = [f"b{n:04d}-{i:03d}" for i in range(100)]
            n += 1
            try:
                producer.publish([OutgoingMessage(queue, m.encode(), m) for m in ids])
            except BrokerError:
                with lock:
                    raised.extend(ids)
                    batches["raised"] += 1
            else:
                with lock:
                    confirmed.extend(ids)
                    batches["confirmed"] += 1
            time.sleep(0.1)

    def consume() -> None:
        while not stop.is_set():
            try:
                batch = consumer.receive([queue], 100, 0.5)
            except BrokerError:
                time.sleep(0.2)  # the broker is down: a worker would wait and retry
                continue
            with lock:
                executed.update(d.message_id for d in batch)
            consumer.ack(batch)

    threads = [
        threading.Thread(target=produce),
        threading.Thread(target=produce_batches),
        threading.Thread(target=consume),
    ]
    for thread in threads:
        thread.start()
    try:
        while True:
            with lock:
                done = sum(1 for m in (*confirmed, *raised) if m.startswith("m"))
            if done >= kill_at:
                break
            time.sleep(0.01)
        published_before_crash = done
        crash_window["killed"] = time.monotonic()
        rabbit.kill()
        crash_window["boot_s"] = rabbit.start()
        crash_window["back"] = time.monotonic()
        assert produced.wait(150), "the producer did not finish"
        confirmed_set = set(confirmed)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                missing = confirmed_set - set(executed)
            if not missing:
                break
            time.sleep(0.2)
        time.sleep(1.0)  # let any late duplicate show up
        # Broadcast survives too: the subscription was re-opened on the new node.
        deadline = time.monotonic() + 10
        heard = None
        while heard != b"after" and time.monotonic() < deadline:
            producer.broadcast("control", b"after")
            heard = subscription.get(0.5)
        assert heard == b"after", "a subscription did not come back after the restart"
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        subscription.close()
        for t in (producer, consumer, listener):
            t.close()

    confirmed_set = set(confirmed)
    missing = sorted(confirmed_set - set(executed))
    duplicates = sum(n - 1 for n in executed.values() if n > 1)
    unconfirmed_arrived = len(set(raised) & set(executed))
    singles = sum(1 for m in (*confirmed, *raised) if m.startswith("m"))
    figures = {
        "submitted": total,
        "batches_confirmed": batches["confirmed"],
        "batches_raised": batches["raised"],
        "published_before_crash": published_before_crash,
        "confirmed": len(confirmed),
        "raised_at_producer": len(raised),
        "executed_distinct": len(executed),
        "confirmed_lost": len(missing),
        "duplicate_executions": duplicates,
        "unconfirmed_but_delivered": unconfirmed_arrived,
        "node_boot_s": round(crash_window["boot_s"], 1),
        "outage_s": round(crash_window["back"] - crash_window["killed"], 1),
    }
    print(f"\nRabbitMQ crash/restart figures: {figures}")
    assert singles == total, "a publish neither returned nor raised"
    assert len(confirmed) + len(raised) == total + 100 * sum(batches.values())
    assert published_before_crash >= kill_at
    assert total - published_before_crash > 0, "nothing was published after the restart"
    confirmed_singles = sum(1 for m in confirmed if m.startswith("m"))
    assert confirmed_singles >= 0.9 * total, f"only {confirmed_singles} of {total} confirmed"
    assert not missing, f"{len(missing)} confirmed messages were never executed: {missing[:5]}"
