"""The transport conformance suite on every built-in broker (``matrix.BROKERS``).

Each broker gets its own test class instance per parameter, with a URL private to
it (namespace, table prefix, queue-name prefix or file); the plugin's quirks (an
``unreachable_url`` the generic rewrite cannot make, fail-fast options, how a used
queue is removed) come from its table entry.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from polyq.testing.conformance import TransportSuite
from tests.conformance.matrix import Broker, OnTransports


class TestTransportSuite(OnTransports, TransportSuite):
    @pytest.fixture(autouse=True)
    def _plugin(self, broker: Broker) -> None:
        # Bound to the test's own instance: the hooks below read it.
        self.plugin = broker

    def unreachable_url(self, url: str) -> str | None:
        if self.plugin.unreachable_url is not None:
            return self.plugin.unreachable_url(url)
        return super().unreachable_url(url)

    def transport_options(self) -> dict[str, Any]:
        return {**super().transport_options(), **self.plugin.transport_options}

    @pytest.fixture
    def new_queue(self, connect: Callable[..., Any]) -> Iterator[Callable[[], str]]:
        """Unique queue names, each removed after the test as the plugin's entry says
        (RabbitMQ deletes its queues), else purged with their dead letters."""
        names: list[str] = []

        def new_queue() -> str:
            names.append(f"pqconf-{uuid.uuid4().hex[:12]}")
            return names[-1]

        yield new_queue
        if names:
            with contextlib.suppress(Exception):
                cleaner = connect()
                for name in names:
                    if self.plugin.forget_queue is not None:
                        self.plugin.forget_queue(cleaner, name)
                        continue
                    cleaner.purge(name)
                    if cleaner.capabilities.dead_letter:
                        cleaner.purge_dead_letters(name)
