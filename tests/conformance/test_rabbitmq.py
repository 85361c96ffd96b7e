"""The transport conformance suite on the shared RabbitMQ.

Each test's queues are deleted afterwards with everything polyq made for them (the
dead-letter queue and the delay level queues), so runs leave nothing on the broker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from polyq.testing import services
from polyq.testing.conformance import TransportSuite
from polyq_transports.rabbitmq import RabbitMQTransport


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
            cleaner = RabbitMQTransport(transport_url)
            try:
                for name in names:
                    cleaner.delete_queue(name)
            finally:
                cleaner.close()
