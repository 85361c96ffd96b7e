"""The transport suite: publish, receive, ack and nack, queues (contract points 1, 3, 7, 10)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable

from polyq.capabilities import Capabilities
from polyq.testing.conformance.transport.support import (
    Connect,
    TransportSuiteBase,
    delays_natively,
    drain,
    eventually,
    make_message,
    receive_one,
)
from polyq.transport import Delivery, Transport

__all__ = ["BasicsTests"]


class BasicsTests(TransportSuiteBase):
    """Fidelity, receive, durable publish, ack/nack and queue management."""

    # -- basics and fidelity (contract point 10) -------------------------------------

    def test_capabilities_are_declared(self, transport: Transport) -> None:
        caps = transport.capabilities
        assert isinstance(caps, Capabilities)
        assert caps.lease in ("timeout", "connection")
        assert caps.max_delay is None or caps.max_delay >= 0
        assert caps.max_message_size is None or caps.max_message_size > 0
        assert type(transport).capabilities is not Transport.capabilities, (
            f"{type(transport).__name__} does not declare its capabilities: the defaults "
            "claim nothing, so every optional feature would go unused and untested"
        )

    def test_round_trip_is_byte_exact(self, transport: Transport, queue: str) -> None:
        body = bytes(range(256)) * 4
        headers = {
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "X-Mixed-Case": "Value With Spaces  ",
            "x-unicode": "héllo wörld ✓ 日本語 🚀",
            "x-empty": "",
            "x.dotted_name-1": '{"json": [1, 2]}',
        }
        message_id = f"Msg-{uuid.uuid4()}"
        transport.publish([make_message(queue, body, message_id=message_id, headers=headers)])
        got = receive_one(transport, [queue], self.slack)
        assert got is not None, "a published message was not delivered"
        assert got.message_id == message_id
        assert isinstance(got.body, bytes)
        assert got.body == body, "the body was altered in transit"
        assert got.headers == headers, "headers were altered, dropped or added"
        assert got.queue == queue
        assert got.delivery_count == 1
        transport.ack([got])

    def test_large_body(self, transport: Transport, queue: str) -> None:
        limit = transport.capabilities.max_message_size
        size = 1024 * 1024 if limit is None else min(1024 * 1024, limit - 4096)
        body = os.urandom(size)
        transport.publish([make_message(queue, body, headers={"k": "v"})])
        got = receive_one(transport, [queue], self.slack + 5)
        assert got is not None, f"a {size}-byte message was not delivered"
        assert got.body == body
        transport.ack([got])

    def test_batch_publish_delivers_every_message(self, transport: Transport, queue: str) -> None:
        sent = [make_message(queue) for _ in range(25)]
        transport.publish(sent)
        got = drain(transport, [queue], 25, self.slack + 5)
        assert sorted(d.message_id for d in got) == sorted(m.message_id for m in sent)
        assert {d.message_id: d.body for d in got} == {m.message_id: m.body for m in sent}

    def test_close_is_idempotent(self, connect: Connect) -> None:
        t = connect()
        t.close()
        t.close()

    # -- receive ---------------------------------------------------------------------

    def test_receive_nothing_waits_then_returns_empty(
        self, transport: Transport, queue: str
    ) -> None:
        start = time.monotonic()
        assert transport.receive([queue], 10, 1.0) == []
        elapsed = time.monotonic() - start
        assert elapsed >= 0.5, f"receive(wait=1.0) returned after {elapsed:.2f}s: it must block"
        assert elapsed <= 1.0 + self.slack, f"receive(wait=1.0) took {elapsed:.2f}s"

    def test_receive_wakes_when_a_message_arrives(
        self, transport: Transport, connect: Connect, queue: str
    ) -> None:
        producer = connect()
        timer = threading.Timer(0.3, producer.publish, [[make_message(queue)]])
        start = time.monotonic()
        timer.start()
        try:
            got = transport.receive([queue], 1, 10.0)
        finally:
            timer.join()
        elapsed = time.monotonic() - start
        assert got, "a message published during receive(wait=10) was not returned"
        assert elapsed <= 0.3 + self.slack, f"receive woke {elapsed - 0.3:.2f}s after publish"
        transport.ack(got)

    def test_max_messages_is_respected(self, transport: Transport, queue: str) -> None:
        transport.publish([make_message(queue) for _ in range(5)])
        seen: set[str] = set()
        deadline = time.monotonic() + self.slack + 5
        while len(seen) < 5 and time.monotonic() < deadline:
            batch = transport.receive([queue], 2, 1.0)
            assert len(batch) <= 2, f"receive(max_messages=2) returned {len(batch)}"
            seen.update(d.message_id for d in batch)
            transport.ack(batch)
        assert len(seen) == 5

    # -- durable publish (point 1) ---------------------------------------------------

    def test_publish_outlives_the_producer(self, connect: Connect, queue: str) -> None:
        producer = connect()
        self.require(producer, "durable")
        sent = make_message(queue, headers={"a": "1"})
        producer.publish([sent])
        producer.close()
        consumer = connect()
        got = receive_one(consumer, [queue], self.slack)
        assert got is not None, "a message published then closed was lost"
        assert (got.message_id, got.body, got.headers) == (sent.message_id, sent.body, {"a": "1"})
        consumer.ack([got])

    # -- ack / nack (point 3) ----------------------------------------------------------

    def test_ack_removes_for_good(self, transport: Transport, queue: str) -> None:
        transport.publish([make_message(queue) for _ in range(3)])
        got = drain(transport, [queue], 3, self.slack + 3)  # acks, in one call per batch
        assert len(got) == 3
        transport.ack(got)  # a second ack is harmless
        assert eventually(lambda: transport.size(queue), 0) == 0
        assert transport.receive([queue], 10, self.visibility_timeout + 0.5) == [], (
            "an acked message was delivered again"
        )

    def test_nack_requeues_now(self, transport: Transport, queue: str) -> None:
        transport.publish([make_message(queue, b"payload")])
        held = receive_one(transport, [queue], self.slack)
        assert held is not None
        transport.nack(held)
        again = receive_one(transport, [queue], self.slack)
        assert again is not None, "a nacked message was not delivered again soon"
        assert (again.message_id, again.body) == (held.message_id, b"payload")
        assert again.delivery_count == 2
        transport.ack([again])

    # -- queues (point 7) --------------------------------------------------------------

    def test_queues_are_independent(
        self, transport: Transport, new_queue: Callable[[], str]
    ) -> None:
        first, second = new_queue(), new_queue()
        a, b = make_message(first), make_message(second)
        transport.publish([a, b])
        got = receive_one(transport, [first], self.slack)
        assert got is not None
        assert got.message_id == a.message_id
        assert got.queue == first
        assert transport.receive([first], 1, 0.3) == []
        transport.ack([got])
        assert eventually(lambda: transport.size(second), 1) == 1
        assert transport.purge(first) == 0
        assert eventually(lambda: transport.size(second), 1) == 1, "purge touched another queue"
        got = receive_one(transport, [second], self.slack)
        assert got is not None
        assert got.message_id == b.message_id
        assert got.queue == second
        transport.ack([got])

    def test_size_counts_ready_delayed_and_leased(self, transport: Transport, queue: str) -> None:
        delayed = delays_natively(transport, 30.0)
        messages = [make_message(queue), make_message(queue)]
        if delayed:
            messages.append(make_message(queue, delay=30.0))
        transport.publish(messages)
        assert eventually(lambda: transport.size(queue), len(messages)) == len(messages)
        held = receive_one(transport, [queue], self.slack)
        assert held is not None
        assert eventually(lambda: transport.size(queue), len(messages)) == len(messages), (
            "size() must count leased messages"
        )
        transport.ack([held])
        assert eventually(lambda: transport.size(queue), len(messages) - 1) == len(messages) - 1

    def test_purge_removes_ready_and_delayed(self, transport: Transport, queue: str) -> None:
        messages = [make_message(queue), make_message(queue)]
        if delays_natively(transport, 30.0):
            messages.append(make_message(queue, delay=30.0))
        transport.publish(messages)
        assert eventually(lambda: transport.size(queue), len(messages)) == len(messages)
        assert transport.purge(queue) == len(messages)
        assert eventually(lambda: transport.size(queue), 0) == 0
        assert transport.receive([queue], 10, 0.5) == []
        if transport.capabilities.inspect_scheduled:
            assert transport.scheduled(queue) == [], "purge left delayed messages"

    def test_several_queues_none_starved(
        self, transport: Transport, new_queue: Callable[[], str]
    ) -> None:
        busy, quiet = new_queue(), new_queue()
        transport.publish([make_message(busy) for _ in range(40)])
        quiet_messages = [make_message(quiet) for _ in range(3)]
        transport.publish(quiet_messages)
        quiet_ids = {m.message_id for m in quiet_messages}
        order: list[Delivery] = []
        for _ in range(10):
            got = receive_one(transport, [busy, quiet], self.slack)
            assert got is not None
            order.append(got)
            transport.ack([got])
        assert any(d.queue == quiet for d in order), (
            "ten receives from [busy, quiet] never served the quiet queue"
        )
        rest = drain(transport, [busy, quiet], 43 - len(order), self.slack + 5)
        everything = order + rest
        assert len({d.message_id for d in everything}) == 43
        assert {d.message_id for d in everything if d.queue == quiet} == quiet_ids
