"""The transport suite: leased receive, lease end and extension (contract point 2)."""

from __future__ import annotations

import time

from polyq.testing.conformance.transport.support import (
    Connect,
    TransportSuiteBase,
    make_message,
    receive_one,
)
from polyq.transport import Transport

__all__ = ["LeaseTests"]


class LeaseTests(TransportSuiteBase):
    """A delivery is hidden while leased and comes back when its lease ends."""

    # -- leased receive (point 2) ----------------------------------------------------

    def test_leased_message_is_hidden_from_other_consumers(
        self, transport: Transport, connect: Connect, queue: str
    ) -> None:
        transport.publish([make_message(queue)])
        held = receive_one(transport, [queue], self.slack)
        assert held is not None
        other = connect()
        assert other.receive([queue], 10, self.visibility_timeout * 0.6) == [], (
            "a leased message was delivered to a second consumer before its lease ended"
        )
        transport.ack([held])

    def test_lease_ends_after_visibility_timeout(
        self, transport: Transport, connect: Connect, queue: str
    ) -> None:
        self.require(transport, "lease", transport.capabilities.lease == "timeout")
        transport.publish([make_message(queue)])
        held = receive_one(transport, [queue], self.slack)
        assert held is not None
        leased_at = time.monotonic()
        other = connect()
        again = receive_one(other, [queue], self.visibility_timeout + self.slack)
        elapsed = time.monotonic() - leased_at
        assert again is not None, "a message whose lease ended was not delivered again"
        assert again.message_id == held.message_id
        assert elapsed >= self.visibility_timeout - 0.1, (
            f"redelivered {elapsed:.2f}s after the lease began, before visibility_timeout="
            f"{self.visibility_timeout}s"
        )
        assert again.delivery_count == 2
        other.ack([again])

    def test_extend_lease_keeps_message_hidden(
        self, transport: Transport, connect: Connect, queue: str
    ) -> None:
        caps = transport.capabilities
        self.require(transport, "extend_lease", caps.lease == "timeout" and caps.extend_lease)
        transport.publish([make_message(queue)])
        held = receive_one(transport, [queue], self.slack)
        assert held is not None
        other = connect()
        step = self.visibility_timeout / 4
        until = time.monotonic() + 2.5 * self.visibility_timeout
        while time.monotonic() < until:
            transport.extend_lease([held])
            assert other.receive([queue], 1, step) == [], (
                "a message was redelivered while its lease was being extended"
            )
        again = receive_one(other, [queue], self.visibility_timeout + self.slack)
        assert again is not None, "the lease never ended after extensions stopped"
        assert again.delivery_count == 2
        other.ack([again])

    def test_connection_lease_returns_messages_on_close(self, connect: Connect, queue: str) -> None:
        consumer = connect()
        self.require(consumer, "lease", consumer.capabilities.lease == "connection")
        consumer.publish([make_message(queue)])
        held = receive_one(consumer, [queue], self.slack)
        assert held is not None
        other = connect()
        assert other.receive([queue], 1, self.visibility_timeout + 0.5) == [], (
            "a connection-bound lease ended while its connection was open"
        )
        consumer.close()
        again = receive_one(other, [queue], self.slack + 3)
        assert again is not None, "closing the consumer did not return its message"
        assert again.message_id == held.message_id
        assert again.delivery_count == 2
        other.ack([again])
