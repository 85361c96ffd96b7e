"""The Redis plugin's errors on a private ``redis-server`` (never the shared one):
a restart under acks and publishes, and a ``requirepass`` server refusing a wrong
password for good (no retry, no waiting)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from polyq import Polyq
from polyq.app.sending import publish_with_retry
from polyq.config import Settings
from polyq.exceptions import BrokerError, BrokerRefused
from polyq.registry import create_transport
from polyq.transport import OutgoingMessage
from polyq.worker import settling
from tests.plugins.private_servers import PrivateRedis

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def server() -> Iterator[PrivateRedis]:
    private = PrivateRedis(password="right")
    try:
        private.start()
        yield private
    finally:
        private.cleanup()


def _message(queue: str) -> OutgoingMessage:
    return OutgoingMessage(queue, b"{}", uuid.uuid4().hex)


def test_wrong_password_is_refused_at_once(server: PrivateRedis) -> None:
    app = Polyq("redis-refused", broker=server.url("wrong"), backend="memory://")
    try:
        started = time.monotonic()
        with pytest.raises(BrokerRefused, match="refused the credentials"):
            app.send_task("t", (1,))
        assert time.monotonic() - started < 2.0
        with pytest.raises(BrokerRefused):
            app.transport.receive(["celery"], 1, 0.0)
    finally:
        app.close()


def test_a_restart_raises_broker_error_and_acks_and_publishes_are_retried(
    server: PrivateRedis,
) -> None:
    # No persistence: a restart empties the server. What matters is that every
    # call raises polyq's error while it is down and goes through once it is back.
    transport = create_transport(server.url("right"), connect_timeout=1)
    queue = f"restart-{uuid.uuid4().hex[:8]}"
    try:
        transport.publish([_message(queue)])
        held = transport.receive([queue], 1, 1.0)
        server.stop()
        for call in (
            lambda: transport.ack(held),
            lambda: transport.publish([_message(queue)]),
            lambda: transport.receive([queue], 1, 0.0),
            lambda: transport.size(queue),
        ):
            with pytest.raises(BrokerError):
                call()
        thread = threading.Thread(target=lambda: (time.sleep(1.0), server.start()))
        thread.start()
        try:
            settling._call(transport.ack, held)
            policy = {"max_retries": 40, "interval_start": 0.2, "interval_step": 0.0,
                      "interval_max": 0.2, "timeout": 30}  # fmt: skip
            publish_with_retry(
                transport, Settings(environ={}), [_message(queue)], retry_policy=policy
            )
        finally:
            thread.join()
        assert transport.size(queue) == 1
    finally:
        transport.close()
