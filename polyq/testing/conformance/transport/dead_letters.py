"""The transport suite: dead letters kept, listed, replayed and purged (contract point 6)."""

from __future__ import annotations

import time

from polyq.testing.conformance.transport.support import (
    TransportSuiteBase,
    drain_without_ack,
    make_message,
    receive_one,
)
from polyq.transport import Transport

__all__ = ["DeadLetterTests"]


class DeadLetterTests(TransportSuiteBase):
    """Dead letters keep the message and the reason, and can be replayed or purged."""

    # -- dead letters (point 6) ------------------------------------------------------

    def test_dead_letter_keeps_message_and_reason(self, transport: Transport, queue: str) -> None:
        self.require(transport, "dead_letter")
        sent = make_message(queue, bytes(range(256)), headers={"x-trace": "t-1"})
        transport.publish([sent])
        held = receive_one(transport, [queue], self.slack)
        assert held is not None
        transport.dead_letter(held, "poison: delivered 11 times")
        assert transport.receive([queue], 1, self.visibility_timeout + 0.5) == [], (
            "a dead-lettered message was delivered again"
        )
        letters = transport.dead_letters(queue)
        assert len(letters) == 1, f"expected one dead letter, found {len(letters)}"
        letter = letters[0]
        assert letter.message_id == sent.message_id
        assert letter.body == sent.body
        assert letter.headers == {"x-trace": "t-1"}
        assert letter.reason == "poison: delivered 11 times"
        assert letter.queue == queue
        assert abs(letter.failed_at - time.time()) < 60, "failed_at is not a Unix time of now"

    def test_replay_dead_letters(self, transport: Transport, queue: str) -> None:
        self.require(transport, "dead_letter")
        sent = [make_message(queue, headers={"n": str(i)}) for i in range(2)]
        transport.publish(sent)
        for d in drain_without_ack(transport, queue, 2, self.slack + 3):
            transport.dead_letter(d, "failed")
        assert len(transport.dead_letters(queue)) == 2
        assert transport.replay_dead_letters(queue, [sent[0].message_id]) == 1
        again = receive_one(transport, [queue], self.slack)
        assert again is not None, "a replayed dead letter was not delivered"
        assert (again.message_id, again.body, again.headers) == (
            sent[0].message_id,
            sent[0].body,
            {"n": "0"},
        )
        transport.ack([again])
        remaining = transport.dead_letters(queue)
        assert [d.message_id for d in remaining] == [sent[1].message_id]
        assert transport.replay_dead_letters(queue) == 1
        again = receive_one(transport, [queue], self.slack)
        assert again is not None
        assert again.message_id == sent[1].message_id
        transport.ack([again])
        assert transport.dead_letters(queue) == []

    def test_purge_dead_letters(self, transport: Transport, queue: str) -> None:
        self.require(transport, "dead_letter")
        transport.publish([make_message(queue) for _ in range(3)])
        for d in drain_without_ack(transport, queue, 3, self.slack + 3):
            transport.dead_letter(d, "failed")
        assert transport.purge_dead_letters(queue) == 3
        assert transport.dead_letters(queue) == []
        assert transport.replay_dead_letters(queue) == 0
