"""The transport suite: clear failures, never silent loss (contract point 11)."""

from __future__ import annotations

import contextlib
import time

import pytest

from polyq.exceptions import BrokerError, MessageTooLarge
from polyq.testing.conformance.transport.support import TransportSuiteBase, make_message
from polyq.transport import Transport

__all__ = ["FailureTests"]


class FailureTests(TransportSuiteBase):
    """Oversized messages and unreachable brokers fail clearly and early."""

    # -- clear failure (point 11) ------------------------------------------------------

    def test_message_too_large_is_refused_before_sending(
        self, transport: Transport, queue: str
    ) -> None:
        limit = transport.capabilities.max_message_size
        self.require(transport, "max_message_size", limit is not None)
        assert limit is not None
        ok, big = make_message(queue, b"small"), make_message(queue, b"x" * (limit + 1))
        with pytest.raises(MessageTooLarge):
            transport.publish([ok, big])
        assert transport.receive([queue], 10, 0.5) == [], (
            "part of a batch was sent although publish raised MessageTooLarge"
        )

    def test_unreachable_broker_raises_broker_error(self, transport_url: str, queue: str) -> None:
        url = self.unreachable_url(transport_url)
        if url is None:
            pytest.skip(f"{type(self).__name__}.unreachable_url() has no closed-port variant")
        start = time.monotonic()
        opened: list[Transport] = []

        def publish_to_closed_port() -> None:
            # Either building the transport or publishing may raise: both are clear.
            opened.append(self.make_transport(url, **self.transport_options()))
            opened[0].publish([make_message(queue)])

        try:
            with pytest.raises(BrokerError):
                publish_to_closed_port()
        finally:
            for t in opened:
                with contextlib.suppress(Exception):
                    t.close()
        elapsed = time.monotonic() - start
        assert elapsed < 30, f"publishing to a closed port took {elapsed:.0f}s to fail"
