"""Message signing on every broker (issue 17): with Celery's settings and
``app.setup_security()``, a worker runs signed tasks and dead-letters, with the
reason, every task that is unsigned, altered (body, task name) or signed by a key
the store does not trust; it refuses a forged ``shutdown`` and keeps serving.

``TestSigningOnEveryBroker`` runs a worker in a thread (threads pool: verification
runs in the pool, as in production) once per broker of ``matrix.BROKERS``;
``TestSignedWorkerProcess`` runs a real prefork worker process configured by
settings alone (environment variables), as a deployment would.
Keys and certificates are made at test time (polyq.testing.pki).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from polyq import Polyq, security
from polyq.control import CONTROL_CHANNEL
from polyq.message import TaskMessage, encode, new_id
from polyq.testing.pki import PKI, make_pki
from polyq.testing.worker import WorkerProcess, start_worker
from polyq.transport import OutgoingMessage
from tests.conformance.matrix import BROKERS, Broker

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

#: One of each broker (the RabbitMQ plugin once: its plain mode changes no header).
SIGNING_BROKERS = [b for b in BROKERS.values() if b.transport and b.name != "rabbitmq-plain"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _intruder(pki: PKI) -> security.Security:
    # Issued by the same CA as the trusted signer, but not in the store.
    return security.build(key=pki.untrusted.key, cert=pki.untrusted.cert, store=pki.store)


def _wait_dead(app: Polyq, queue: str, ids: list[str], timeout: float = 20) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        found = {d.message_id: d.reason for d in app.transport.dead_letters(queue, 1000)}
        if all(i in found for i in ids):
            return found
        time.sleep(0.1)
    raise AssertionError(f"not all of {ids} dead-lettered: {found}")


class TestSigningOnEveryBroker:
    @pytest.fixture(
        scope="class", params=[pytest.param(b, id=b.id, marks=b.marks) for b in SIGNING_BROKERS]
    )
    def broker(self, request: pytest.FixtureRequest) -> Broker:
        return request.param  # type: ignore[no-any-return]

    @pytest.fixture(scope="class")
    def app(
        self, broker: Broker, pki: PKI, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[Polyq]:
        assert broker.transport is not None
        urls = broker.transport(tmp_path_factory)
        broker_url = next(urls)
        backends = broker.backend(tmp_path_factory) if broker.backend else None
        backend_url = next(backends) if backends else f"memory://sign-{uuid.uuid4().hex[:8]}"
        app = Polyq("signing", broker=broker_url, backend=backend_url)
        # Celery's settings, then Celery's call.
        app.conf.update(
            broker_transport_options=dict(broker.transport_options),
            task_default_queue=f"sign-{uuid.uuid4().hex[:10]}",
            security_key=pki.key,
            security_certificate=pki.cert,
            security_cert_store=pki.store,
            security_digest="sha256",
            task_serializer="auth",
            accept_content=["auth"],
        )
        app.setup_security()

        @app.task(name="sign.add")
        def add(x: int, y: int) -> int:
            return x + y

        @app.task(name="sign.echo")
        def echo(value: Any) -> Any:
            return value

        try:
            yield app
        finally:
            app.close()  # the worker closed the connection it shared; open a new one
            try:
                app.transport.purge_dead_letters(app.conf.task_default_queue)
                app.transport.delete_queue(app.conf.task_default_queue)
            finally:
                app.close()
                for gen in (urls, backends):
                    if gen is not None:
                        gen.close()

    @pytest.fixture(scope="class")
    def worker(self, app: Polyq) -> Iterator[Any]:
        with start_worker(app, queues=[app.conf.task_default_queue]) as worker:
            yield worker

    def test_signed_task_runs(self, app: Polyq, worker: Any) -> None:
        assert app.tasks["sign.add"].delay(2, 2).get(timeout=30) == 4
        sent = app.tasks["sign.add"].apply_async((3, 4), countdown=0.3, expires=60)
        assert sent.get(timeout=30) == 7

    def test_unsigned_and_forged_tasks_are_dead_lettered(
        self, app: Polyq, worker: Any, pki: PKI
    ) -> None:
        queue = str(app.conf.task_default_queue)
        done = app.tasks["sign.add"].delay(2, 2)
        assert done.get(timeout=30) == 4
        assert app.security is not None
        signer = app.security.signer

        def forged() -> TaskMessage:
            # Reuses the finished task's id: run, it would replace its result.
            return TaskMessage(task="sign.echo", id=done.id, args=["pwned"], queue=queue)

        unsigned = encode(forged(), "json")
        untrusted = _intruder(pki).signer.sign_task(encode(forged(), "json"))
        genuine = signer.sign_task(
            encode(TaskMessage(task="sign.add", id=done.id, args=[1, 1], queue=queue), "json")
        )
        body = OutgoingMessage(queue, b'{"args":["pwned"],"kwargs":{}}', new_id(), genuine.headers)
        renamed_headers = dict(genuine.headers, task="sign.echo")
        renamed = OutgoingMessage(queue, genuine.body, new_id(), renamed_headers)
        app.transport.publish([unsigned, untrusted, body, renamed])
        reasons = _wait_dead(
            app, queue, [m.message_id for m in (unsigned, untrusted, body, renamed)]
        )
        assert "unsigned message refused" in reasons[unsigned.message_id]
        assert "signed by an untrusted certificate" in reasons[untrusted.message_id]
        assert "bad signature" in reasons[body.message_id]
        assert "bad signature" in reasons[renamed.message_id]
        # Nothing forged ran: the stored result is still the genuine one.
        assert app.AsyncResult(done.id).get(timeout=5) == 4
        assert app.tasks["sign.add"].delay(20, 22).get(timeout=30) == 42

    def test_forged_shutdown_is_refused(self, app: Polyq, worker: Any, pki: PKI) -> None:
        command = json.dumps({"command": "shutdown", "arguments": {}}).encode()
        app.transport.broadcast(CONTROL_CHANNEL, command)
        app.transport.broadcast(
            CONTROL_CHANNEL, _intruder(pki).signer.sign_broadcast("control", command)
        )
        # A signed ping is answered after the forged commands were read and dropped.
        replies = app.control.ping(timeout=5)
        assert replies and all(r for r in replies)
        time.sleep(0.5)  # a remote shutdown stops the worker 0.2 s after its reply
        assert not worker.stopped.is_set()
        assert app.tasks["sign.add"].delay(5, 5).get(timeout=30) == 10


class TestSignedWorkerProcess:
    """A prefork worker process configured by settings alone (environment variables:
    task_serializer and accept_content 'auth', the security_* paths): the children
    verify; unsigned tasks are dead-lettered; a forged shutdown is refused."""

    @pytest.fixture(scope="class", params=[pytest.param(BROKERS["sqlite"], id="sqlite")])
    def broker(self, request: pytest.FixtureRequest) -> Broker:
        return request.param  # type: ignore[no-any-return]

    def test_prefork_worker_runs_only_signed_tasks(
        self, broker: Broker, pki: PKI, tmp_path_factory: pytest.TempPathFactory
    ) -> None:
        assert broker.transport is not None
        urls = broker.transport(tmp_path_factory)
        url = next(urls)
        queue = f"sign-{uuid.uuid4().hex[:10]}"
        env = {
            "POLYQ_BROKER_URL": url,
            "POLYQ_RESULT_BACKEND": url,
            "POLYQ_TASK_DEFAULT_QUEUE": queue,
            "POLYQ_SECURITY_KEY": pki.key,
            "POLYQ_SECURITY_CERTIFICATE": pki.cert,
            "POLYQ_SECURITY_CERT_STORE": pki.store,
            "POLYQ_TASK_SERIALIZER": "auth",
            "POLYQ_ACCEPT_CONTENT": '["auth"]',
        }
        client = Polyq("client", broker=url, backend=url, task_default_queue=queue)
        client.setup_security(key=pki.second.key, cert=pki.second.cert, store=pki.store)
        try:
            with WorkerProcess(
                "polyq.testing.e2e_tasks", ["-Q", queue, "-c", "2", "-l", "INFO"], env=env
            ) as worker:  # started (ready) on entry, stopped on exit
                name = "polyq.testing.e2e_tasks.add"
                assert client.send_task(name, (2, 2)).get(timeout=30) == 4
                unsigned = encode(TaskMessage(task=name, args=[1, 1], queue=queue), "json")
                forged = _intruder(pki).signer.sign_task(
                    encode(TaskMessage(task=name, args=[1, 1], queue=queue), "json")
                )
                client.transport.publish([unsigned, forged])
                reasons = _wait_dead(client, queue, [unsigned.message_id, forged.message_id])
                assert "unsigned message refused" in reasons[unsigned.message_id]
                assert "untrusted certificate" in reasons[forged.message_id]
                shutdown = json.dumps({"command": "shutdown", "arguments": {}}).encode()
                client.transport.broadcast(CONTROL_CHANNEL, shutdown)
                assert client.control.ping(timeout=5)
                time.sleep(0.5)
                assert worker.proc is not None and worker.proc.poll() is None
                assert "refused a control message" in worker.output()
                assert client.send_task(name, (20, 22)).get(timeout=30) == 42
        finally:
            client.close()
            urls.close()
