"""The SQL plugin's errors: what a worker and a producer see when the database
restarts, and when it refuses them for good.

The restart tests run a private server (``initdb`` + ``postgres``, or
``mariadb-install-db`` + ``mariadbd``; see ``tests/plugins/private_servers.py``),
never the shared one. A driver's own exception (psycopg's or PyMySQL's
``OperationalError``) escaping a contract method skipped the worker's ack retry and
the publish retry policy, which only catch :class:`BrokerError`: acks were lost (the
tasks ran twice) and producers raised on a blip.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from polyq.app.sending import publish_with_retry
from polyq.config import Settings
from polyq.exceptions import BrokerError, BrokerRefused
from polyq.registry import create_transport
from polyq.testing.services import mysql_url, postgres_url
from polyq.transport import OutgoingMessage, Transport
from polyq.worker import settling
from tests.plugins.private_servers import PrivateMariaDB, PrivatePostgres

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(params=["postgres", "mysql"])
def server(request: pytest.FixtureRequest) -> Iterator[PrivatePostgres | PrivateMariaDB]:
    private = PrivatePostgres() if request.param == "postgres" else PrivateMariaDB()
    try:
        private.start()
        yield private
    finally:
        private.cleanup()


def _restart_later(server: PrivatePostgres | PrivateMariaDB, down: float) -> threading.Thread:
    """Stop the server now (a clean, fast shutdown) and start it ``down`` s later."""
    server.stop(signal.SIGINT if isinstance(server, PrivatePostgres) else signal.SIGTERM)

    def start() -> None:
        time.sleep(down)
        server.start()

    thread = threading.Thread(target=start)
    thread.start()
    return thread


def _message(queue: str) -> OutgoingMessage:
    return OutgoingMessage(queue, b"{}", uuid.uuid4().hex)


def test_a_restart_raises_broker_error_and_acks_and_publishes_are_retried(
    server: PrivatePostgres | PrivateMariaDB,
) -> None:
    transport = create_transport(server.url(), connect_timeout=2)
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    try:
        transport.publish([_message(queue) for _ in range(4)])
        held = transport.receive([queue], 4, 2.0)
        assert len(held) == 4
        restart = _restart_later(server, 1.5)
        try:
            # While it is down, every contract method raises polyq's error, never
            # the driver's.
            for name, call in [
                ("ack", lambda: transport.ack(held[:1])),
                ("publish", lambda: transport.publish([_message(queue)])),
                ("receive", lambda: transport.receive([queue], 1, 0.0)),
                ("nack", lambda: transport.nack(held[1])),
                ("extend_lease", lambda: transport.extend_lease(held[1:2])),
                ("size", lambda: transport.size(queue)),
            ]:
                with pytest.raises(BrokerError):
                    call()
                    pytest.fail(f"{name} did not raise while the database was down")
            # The worker's ack retry and the publish retry policy ride it out.
            settling._call(transport.ack, held)
            conf = Settings(environ={})
            policy = {"max_retries": 40, "interval_start": 0.2, "interval_step": 0.0,
                      "interval_max": 0.2, "timeout": 30}  # fmt: skip
            publish_with_retry(transport, conf, [_message(queue)], retry_policy=policy)
        finally:
            restart.join()
        # The acked messages are gone, the retried publish is there: exactly one.
        assert transport.size(queue) == 1
        again = transport.receive([queue], 10, 2.0)
        assert len(again) == 1
        transport.ack(again)
    finally:
        transport.close()


@pytest.mark.parametrize(
    "make_url",
    [
        pytest.param(lambda url: _with_user(url, "nosuchuser_polyq"), id="postgres-user"),
        pytest.param(lambda url: url.rsplit("/", 1)[0] + "/nosuchdb_polyq", id="postgres-db"),
    ],
)
def test_postgres_refusal_is_final_and_fast(make_url: object) -> None:
    _assert_refused(make_url(postgres_url()))  # type: ignore[operator]


@pytest.mark.parametrize(
    "make_url",
    [
        pytest.param(lambda url: _with_user(url, "nosuchuser_polyq"), id="mysql-user"),
        pytest.param(lambda url: url.rsplit("/", 1)[0] + "/nosuchdb_polyq", id="mysql-db"),
    ],
)
def test_mysql_refusal_is_final_and_fast(make_url: object) -> None:
    _assert_refused(make_url(mysql_url()))  # type: ignore[operator]


def _with_user(url: str, user: str) -> str:
    scheme, rest = url.split("://", 1)
    host = rest.rsplit("@", 1)[-1]
    return f"{scheme}://{user}:wrong@{host}"


def _assert_refused(url: str) -> None:
    transport: Transport = create_transport(url, connect_timeout=4)
    try:
        started = time.monotonic()
        with pytest.raises(BrokerRefused):
            transport.publish([_message("refused")])
        assert time.monotonic() - started < 3.0
        with pytest.raises(BrokerRefused):
            transport.size("refused")
    finally:
        transport.close()


def test_a_worker_rides_a_restart_without_running_a_task_twice(
    server: PrivatePostgres | PrivateMariaDB,
) -> None:
    # Leases short enough that a lost ack would show within the test: the message
    # would come back and run again. Before, the driver's exception skipped the
    # worker's ack retry (16 tasks ran twice on PostgreSQL, 14 on MariaDB).
    from polyq import Polyq
    from polyq.testing.worker import start_worker

    url = server.url() + ("&" if "?" in server.url() else "?") + "visibility_timeout=6"
    app = Polyq("restart-worker", broker=url, backend="memory://")
    app.conf.task_publish_retry_policy = {
        "max_retries": 60, "interval_start": 0.1, "interval_step": 0.0, "interval_max": 0.1,
        "timeout": 30,
    }  # fmt: skip
    runs: list[int] = []
    lock = threading.Lock()

    @app.task(name="restart.record", ignore_result=True)
    def record(n: int) -> None:
        time.sleep(0.05)
        with lock:
            runs.append(n)

    total = 200
    try:
        with start_worker(app, pool="threads", concurrency=4):
            for n in range(total):
                record.delay(n)
            # 200 tasks of 50 ms on 4 threads: acks are due all through the outage.
            time.sleep(0.5)
            restart = _restart_later(server, 2.0)
            restart.join()
            deadline = time.monotonic() + 60
            while len(set(runs)) < total and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(8)  # longer than a lease: a lost ack would deliver again
    finally:
        app.close()
    assert sorted(set(runs)) == list(range(total))
    twice = len(runs) - len(set(runs))
    assert twice == 0, f"{twice} task(s) ran twice"
