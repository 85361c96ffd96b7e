"""The transport conformance suite on the shared RabbitMQ.

Each test's queues are deleted afterwards with everything polyq made for them (the
dead-letter queue and the delay level queues), so runs leave nothing on the broker.
The suite runs twice: with the fast path, and with it off (``?fastpath=0`` in the URL),
so pika's own path is proved too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from polyq.testing import services
from polyq.testing.conformance import TransportSuite
from polyq.transport import Transport
from polyq_transports.rabbitmq import RabbitMQTransport


class TestRabbitMQTransport(TransportSuite):
    """With the fast path (the installed pika is in the tested range)."""

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
            cleaner = RabbitMQTransport(transport_url)
            try:
                for name in names:
                    cleaner.delete_queue(name)
            finally:
                cleaner.close()


class TestRabbitMQTransportWithoutFastPath(TestRabbitMQTransport):
    """With the fast path off through the URL option: pika reads and writes every frame."""

    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        url = services.amqp_url()
        return url + ("&" if "?" in url else "?") + "fastpath=0"

    def test_the_fast_path_is_off(self, transport: Transport) -> None:
        assert isinstance(transport, RabbitMQTransport)
        assert transport.fastpath is False
