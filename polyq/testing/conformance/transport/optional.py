"""The transport suite: the optional methods of the contract the core calls.

``check_time_limit``, ``delete_queue``, ``cleanup`` and ``create_schema`` have
defaults in :class:`~polyq.transport.Transport` that suit a broker without the
feature; these tests hold a plugin's own version, or the default, to the contract.
A broker that does not declare ``broadcast`` must refuse it (the default raises
:class:`~polyq.transport.UnsupportedCapability`, a :class:`NotImplementedError`).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from polyq.testing.conformance.transport.support import (
    Connect,
    TransportSuiteBase,
    delays_natively,
    drain_without_ack,
    eventually,
    make_message,
    receive_one,
)
from polyq.transport import Transport

__all__ = ["OptionalMethodTests"]


class OptionalMethodTests(TransportSuiteBase):
    """Optional methods: correct where implemented, harmless defaults where not."""

    def test_check_time_limit_accepts_a_short_limit(self, transport: Transport) -> None:
        # Any delivery timeout a broker imposes is far above a minute; a plugin
        # refusing one would stop every worker with a time limit from starting.
        assert transport.check_time_limit(60.0) is True, (
            "check_time_limit(60.0) must accept a one-minute hard time limit"
        )
        assert isinstance(transport.check_time_limit(None), bool), (
            "check_time_limit(None) (no hard time limit) must answer True or False, not raise"
        )

    def test_exact_size_counts_at_once(self, transport: Transport, queue: str) -> None:
        # The dashboard shows a declared-exact depth as it is; an approximation (SQS)
        # is labelled as one. Only a declared-exact count must be right immediately.
        if not transport.capabilities.exact_size:
            pytest.skip("capabilities.exact_size is False: size() is an approximation")
        transport.publish([make_message(queue) for _ in range(3)])
        assert transport.size(queue) == 3, "exact_size: size() right after publish was not 3"
        (held,) = drain_without_ack(transport, queue, 1, self.slack + 3)
        assert transport.size(queue) == 3, "exact_size: size() must count a leased message"
        transport.ack([held])
        assert transport.size(queue) == 2, "exact_size: size() right after an ack was not 2"

    def test_delete_queue_removes_everything(
        self, transport: Transport, connect: Connect, new_queue: Callable[[], str]
    ) -> None:
        queue = new_queue()
        caps = transport.capabilities
        messages = [make_message(queue) for _ in range(3)]
        if delays_natively(transport, 30.0):
            messages.append(make_message(queue, delay=30.0))
        transport.publish(messages)
        if caps.dead_letter:
            (failed,) = drain_without_ack(transport, queue, 1, self.slack + 3)
            transport.dead_letter(failed, "failed")
        transport.delete_queue(queue)
        other = connect()
        assert eventually(lambda: other.size(queue), 0) == 0, "delete_queue left messages"
        assert other.receive([queue], 10, 0.5) == [], "a message of a deleted queue was delivered"
        if caps.dead_letter:
            assert other.dead_letters(queue) == [], "delete_queue left dead letters"
        if caps.inspect_scheduled:
            assert other.scheduled(queue) == [], "delete_queue left delayed messages"
        # A deleted queue is created again by the next publish.
        sent = make_message(queue)
        transport.publish([sent])
        got = receive_one(other, [queue], self.slack)
        assert got is not None, "publishing to a deleted queue did not create it again"
        assert got.message_id == sent.message_id
        other.ack([got])

    def test_cleanup_keeps_messages(self, transport: Transport, queue: str) -> None:
        sent = make_message(queue)
        transport.publish([sent])
        removed = transport.cleanup()
        assert isinstance(removed, int), f"cleanup() returned {removed!r}"
        assert removed >= 0, f"cleanup() returned {removed!r}"
        got = receive_one(transport, [queue], self.slack)
        assert got is not None, "cleanup() removed a waiting message"
        assert got.message_id == sent.message_id
        transport.ack([got])

    def test_create_schema_is_idempotent(self, transport: Transport, queue: str) -> None:
        sent = make_message(queue)
        transport.publish([sent])
        transport.create_schema()
        transport.create_schema()
        got = receive_one(transport, [queue], self.slack)
        assert got is not None, "create_schema() on a broker in use lost a waiting message"
        assert got.message_id == sent.message_id
        transport.ack([got])

    def test_undeclared_broadcast_is_refused(self, transport: Transport) -> None:
        if transport.capabilities.broadcast:
            pytest.skip(
                f"{type(transport).__name__} declares capabilities.broadcast=True "
                "(test_broadcast_reaches_every_subscriber covers it)"
            )
        # Control commands and events would vanish without a word otherwise.
        with pytest.raises(NotImplementedError):
            transport.broadcast("pqconf-undeclared", b"dropped?")
        with pytest.raises(NotImplementedError):
            transport.subscribe("pqconf-undeclared")
