"""``add_consumer`` on the real broker: a queue RabbitMQ refuses must not stop the
worker consuming its other queues (issue 17).

On the old code, ``add_consumer <queue>.dlq`` made every ``receive`` fail (RabbitMQ
refuses to declare the dead-letter queue as a work queue: PRECONDITION_FAILED, other
arguments), so the worker stopped consuming every queue while replying ``ok``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pika
import pytest

from polyq import Polyq
from polyq.control import CONTROL_CHANNEL
from polyq.registry import create_transport
from polyq.testing import services
from polyq.testing.worker import start_worker
from polyq.transport import OutgoingMessage


def _blocking(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url.split("?", 1)[0])
    if urlsplit(url).path in ("", "/", "//"):
        params.virtual_host = "/"
    return pika.BlockingConnection(params)


@pytest.fixture
def url() -> str:
    return services.amqp_url()


@pytest.fixture
def queue(url: str) -> Iterator[str]:
    name = f"rc-{uuid.uuid4().hex[:10]}"
    yield name
    transport = create_transport(url)
    try:
        transport.delete_queue(name)
    finally:
        transport.close()
    connection = _blocking(url)
    try:
        channel = connection.channel()
        channel.queue_delete(f"{name}-legacy")
    finally:
        connection.close()


@pytest.fixture
def app(url: str) -> Iterator[Polyq]:
    name = f"rc-{uuid.uuid4().hex[:8]}"
    app = Polyq("rc", broker_url=url, result_backend=f"memory://{name}")

    @app.task(name="rc.add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


def _make_dead_letter_queue(url: str, queue: str) -> None:
    """Dead-letter one message of ``queue`` from another connection, so that
    ``<queue>.dlq`` exists on the broker (declared as a dead-letter queue)."""
    transport = create_transport(url)
    try:
        transport.publish([OutgoingMessage(queue=queue, body=b"{}", message_id="dead-1")])
        deliveries = transport.receive([queue], 1, 5.0)
        assert deliveries, "the message to dead-letter did not arrive"
        transport.dead_letter(deliveries[0], "made by the test")
        assert len(transport.dead_letters(queue)) == 1
    finally:
        transport.close()


def test_add_consumer_of_a_dead_letter_queue_is_refused_and_consumption_goes_on(
    app: Polyq, url: str, queue: str
) -> None:
    _make_dead_letter_queue(url, queue)
    add = app.tasks["rc.add"]
    with start_worker(app, queues=[queue]) as worker:
        assert add.apply_async((1, 2), queue=queue).get(timeout=15) == 3
        reply = _forge_add_consumer(app, f"{queue}.dlq")
        time.sleep(1.0)  # the consumer has received with the new list of queues by now
        # First the finding itself: the worker still consumes its queue.
        assert add.apply_async((2, 3), queue=queue).get(timeout=15) == 5
        assert "dead-letter" in reply.get("error", "")
        assert worker.queues == [queue]


def test_a_queue_the_broker_refuses_is_dropped_and_the_others_still_consumed(
    app: Polyq, url: str, queue: str
) -> None:
    legacy = f"{queue}-legacy"
    # A queue declared by someone else with other arguments: polyq's declaration (with
    # x-max-priority) is refused by the broker with PRECONDITION_FAILED.
    connection = _blocking(url)
    try:
        connection.channel().queue_declare(legacy, durable=True)
    finally:
        connection.close()
    add = app.tasks["rc.add"]
    with start_worker(app, queues=[queue]) as worker:
        assert add.apply_async((1, 2), queue=queue).get(timeout=15) == 3
        reply = _forge_add_consumer(app, legacy)
        time.sleep(1.0)
        assert add.apply_async((2, 3), queue=queue).get(timeout=15) == 5
        error = reply.get("error", "")
        assert "not consuming" in error and "PRECONDITION_FAILED" in error
        assert worker.queues == [queue]


def _forge_add_consumer(app: Polyq, queue: str) -> dict[str, str]:
    """``add_consumer`` as a raw body on the control channel (no client-side check),
    with the worker's reply."""
    ticket = uuid.uuid4().hex
    reply_to = "polyq.reply." + ticket
    body = {
        "command": "add_consumer",
        "arguments": {"queue": queue, "reply_to": reply_to, "ticket": ticket},
    }
    with app.transport.subscribe(reply_to) as subscription:
        app.transport.broadcast(CONTROL_CHANNEL, json.dumps(body).encode())
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            raw = subscription.get(0.2)
            if raw is not None:
                reply: dict[str, str] = json.loads(raw)["reply"]
                return reply
    raise AssertionError("the worker did not reply")
