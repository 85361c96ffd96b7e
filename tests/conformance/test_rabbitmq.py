"""The transport conformance suite on the shared RabbitMQ.

Each test's queues are deleted afterwards with everything polyq made for them (the
dead-letter queue and the delay level queues), so runs leave nothing on the broker.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pika
import pytest

from polyq.testing import services
from polyq.testing.conformance import TransportSuite
from polyq_transports.rabbitmq import DELAY_LEVELS


def delete_queues(url: str, names: list[str]) -> None:
    """Delete ``names`` and their ``.dlq`` and ``.delay.NN`` companions, if present."""
    params = pika.URLParameters(url.split("?", 1)[0])
    if urlsplit(url).path in ("", "/", "//"):
        params.virtual_host = "/"
    connection = pika.BlockingConnection(params)
    try:
        channel = connection.channel()
        for name in names:
            companions = [name, f"{name}.dlq"]
            companions += [f"{name}.delay.{level:02d}" for level in range(DELAY_LEVELS)]
            for queue in companions:
                if channel.is_closed:
                    channel = connection.channel()
                with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                    channel.queue_delete(queue)
    finally:
        connection.close()


class TestRabbitMQTransport(TransportSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.amqp_url()

    @pytest.fixture
    def new_queue(self, transport_url: str) -> Iterator[Callable[[], str]]:
        names: list[str] = []

        def new_queue() -> str:
            names.append(f"pqconf-{uuid.uuid4().hex[:12]}")
            return names[-1]

        yield new_queue
        if names:
            delete_queues(transport_url, names)
