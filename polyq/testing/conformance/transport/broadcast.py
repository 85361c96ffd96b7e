"""The transport suite: broadcast to every subscriber of a channel (contract point 8)."""

from __future__ import annotations

import contextlib
import uuid

from polyq.testing.conformance.transport.support import Connect, TransportSuiteBase
from polyq.transport import Subscription

__all__ = ["BroadcastTests"]


class BroadcastTests(TransportSuiteBase):
    """Broadcasts reach every current subscriber of their channel, and no other."""

    # -- broadcast (point 8) -----------------------------------------------------------

    def test_broadcast_reaches_every_subscriber(self, connect: Connect) -> None:
        sender = connect()
        self.require(sender, "broadcast")
        channel, other = f"pqconf-{uuid.uuid4().hex[:12]}", f"pqconf-{uuid.uuid4().hex[:12]}"
        with contextlib.ExitStack() as stack:
            subs: list[Subscription] = [
                stack.enter_context(connect().subscribe(channel)) for _ in range(2)
            ]
            elsewhere = stack.enter_context(connect().subscribe(other))
            bodies = [b"one", bytes(range(256)), b"three"]
            for body in bodies:
                sender.broadcast(channel, body)
            for sub in subs:
                got = [sub.get(self.slack) for _ in bodies]
                assert got == bodies, f"a subscriber missed or reordered broadcasts: got {got!r}"
            assert elsewhere.get(0.5) is None, "a broadcast reached another channel"
            subs[0].close()
            sender.broadcast(channel, b"four")
            assert subs[1].get(self.slack) == b"four"
