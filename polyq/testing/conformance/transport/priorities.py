"""The transport suite: priorities 0..9, higher first (contract point 5)."""

from __future__ import annotations

from polyq.testing.conformance.transport.support import (
    TransportSuiteBase,
    make_message,
    receive_one,
)
from polyq.transport import Transport

__all__ = ["PriorityTests"]


class PriorityTests(TransportSuiteBase):
    """Higher priority first; equal priority first in, first out."""

    # -- priority (point 5) ------------------------------------------------------------

    def test_higher_priority_first(self, transport: Transport, queue: str) -> None:
        self.require(transport, "priority")
        priorities = [3, 0, 9, 5, 1, 7, 2, 8, 4, 6]
        for p in priorities:
            transport.publish([make_message(queue, priority=p, headers={"p": str(p)})])
        order = []
        for _ in priorities:
            got = receive_one(transport, [queue], self.slack)
            assert got is not None
            order.append(int(got.headers["p"]))
            assert got.priority == int(got.headers["p"]), "Delivery.priority is not as published"
            transport.ack([got])
        assert order == sorted(priorities, reverse=True), f"delivered in priority order {order}"

    def test_equal_priority_is_first_in_first_out(self, transport: Transport, queue: str) -> None:
        self.require(transport, "priority")
        sent = [make_message(queue, priority=4) for _ in range(6)]
        for m in sent:
            transport.publish([m])
        got = [receive_one(transport, [queue], self.slack) for _ in sent]
        ids = [m.message_id for m in sent]
        received = [ids.index(d.message_id) for d in got if d is not None]
        assert sorted(received) == list(range(6))
        inversions = sum(1 for i, a in enumerate(received) for b in received[i + 1 :] if a > b)
        assert inversions <= 1, f"equal-priority messages came out of order: {received}"
        transport.ack([d for d in got if d is not None])
