"""The transport conformance suite on every built-in broker (``matrix.BROKERS``).

Each broker gets its own test class instance per parameter, with a URL private to
it (namespace, table prefix, queue-name prefix or file); the plugin's quirks (an
``unreachable_url`` the generic rewrite cannot make, fail-fast options) come from its
table entry; the suite deletes every queue a test used (``Transport.delete_queue``).
"""

from __future__ import annotations

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
