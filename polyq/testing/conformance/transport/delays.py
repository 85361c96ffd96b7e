"""The transport suite: delayed delivery held by the broker (contract point 4).

These tests need native delay and skip, naming ``capabilities.max_delay``, on a
broker without it; the end-to-end suite checks ETAs and countdowns on every broker."""

from __future__ import annotations

import time

from polyq.testing.conformance.transport.support import (
    Connect,
    TransportSuiteBase,
    make_message,
    receive_one,
)
from polyq.transport import Transport

__all__ = ["DelayTests"]


class DelayTests(TransportSuiteBase):
    """Delayed publish and nack, held by the broker, listed by ``scheduled``."""

    def test_nack_with_delay(self, transport: Transport, queue: str) -> None:
        self.require_delay(transport)
        transport.publish([make_message(queue)])
        held = receive_one(transport, [queue], self.slack)
        assert held is not None
        nacked_at = time.monotonic()
        transport.nack(held, delay=1.0)
        assert transport.receive([queue], 1, 0.7) == [], "nack(delay=1) redelivered too early"
        again = receive_one(transport, [queue], 1.0 + self.slack)
        elapsed = time.monotonic() - nacked_at
        assert again is not None, "a message nacked with a delay was lost"
        assert elapsed >= 0.95, f"nack(delay=1) redelivered after {elapsed:.2f}s"
        assert again.message_id == held.message_id
        assert again.delivery_count == 2
        transport.ack([again])

    # -- delayed delivery (point 4) ----------------------------------------------------

    def test_delayed_message_not_before_its_time(self, transport: Transport, queue: str) -> None:
        self.require_delay(transport)
        start = time.monotonic()
        transport.publish([make_message(queue, delay=1.0)])
        got = receive_one(transport, [queue], 1.0 + self.slack)
        elapsed = time.monotonic() - start
        assert got is not None, f"a 1s delayed message was not delivered within {elapsed:.1f}s"
        assert elapsed >= 0.95, f"a 1s delayed message was delivered after {elapsed:.2f}s"
        transport.ack([got])

    def test_short_delay_is_not_blocked_by_a_long_one(
        self, transport: Transport, queue: str
    ) -> None:
        self.require_delay(transport, 10)
        max_delay = transport.capabilities.max_delay
        long = make_message(queue, delay=60.0 if max_delay is None else min(60.0, max_delay))
        short = make_message(queue, delay=1.0)
        transport.publish([long])
        transport.publish([short])
        got = receive_one(transport, [queue], 1.0 + self.slack)
        assert got is not None, "a 1s delay published after a 60s one was held up behind it"
        assert got.message_id == short.message_id
        transport.ack([got])
        assert transport.receive([queue], 1, 0.5) == []

    def test_delayed_message_is_held_by_the_broker(self, connect: Connect, queue: str) -> None:
        producer = connect()
        self.require_delay(producer)
        sent = make_message(queue, delay=1.0)
        producer.publish([sent])
        producer.close()
        consumer = connect()
        got = receive_one(consumer, [queue], 1.0 + self.slack)
        assert got is not None, (
            "a delayed message was lost when its producer closed: it must wait in the broker"
        )
        assert got.message_id == sent.message_id
        consumer.ack([got])

    def test_scheduled_lists_delayed_messages(self, connect: Connect, queue: str) -> None:
        producer = connect()
        self.require_delay(producer, 30)
        self.require(producer, "inspect_scheduled")
        later = make_message(queue, delay=30.0, headers={"which": "later"}, priority=0)
        sooner = make_message(queue, delay=10.0, headers={"which": "sooner"})
        ready = make_message(queue)
        producer.publish([later, sooner, ready])
        inspector = connect()
        now = time.time()
        listed = inspector.scheduled(queue)
        assert [s.message_id for s in listed] == [sooner.message_id, later.message_id]
        assert abs(listed[0].eta - (now + 10)) < 3, "ScheduledMessage.eta is not its Unix due time"
        assert abs(listed[1].eta - (now + 30)) < 3
        assert listed[0].headers == {"which": "sooner"}
        assert listed[0].queue == queue
        assert [s.message_id for s in inspector.scheduled(queue, limit=1)] == [sooner.message_id]
