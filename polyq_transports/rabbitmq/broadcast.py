"""Broadcast: a transient fanout exchange per channel, an exclusive queue per listener.

See docs/design/rabbitmq.md (*Broadcast*).
"""

from __future__ import annotations

import contextlib
import functools
import queue as queue_module

import pika
from pika.channel import Channel

from polyq.transport import Subscription

from .connection import Link, TempChannel
from .publish import Publisher
from .topology import Topology

BROADCAST_PREFIX = "polyq.broadcast."


class RabbitMQSubscription(Subscription):
    """A broadcast listener: an exclusive queue bound to the channel's fanout."""

    def __init__(self, owner: Broadcaster, channel: str) -> None:
        self.owner = owner
        self.exchange = BROADCAST_PREFIX + channel
        self.inbox: queue_module.SimpleQueue[bytes] = queue_module.SimpleQueue()
        self.pika_channel: Channel | None = None
        self.closed = False

    def get(self, timeout: float) -> bytes | None:
        """The next broadcast body, or ``None`` after ``timeout`` seconds."""
        try:
            return self.inbox.get(timeout=max(0.0, timeout))
        except queue_module.Empty:
            return None

    def close(self) -> None:
        """Cancel the queue's consumer (the broker deletes the queue); idempotent."""
        if self.closed:
            return
        self.closed = True
        self.owner.forget(self)


class Broadcaster:
    """Sends broadcasts and keeps the subscriptions (re-opened on every reconnection)."""

    def __init__(self, link: Link, topology: Topology, publisher: Publisher) -> None:
        self.link = link
        self.topology = topology
        self.publisher = publisher
        self.subs: list[RabbitMQSubscription] = []

    def broadcast(self, channel: str, body: bytes) -> None:
        """Publish ``body`` on the fanout exchange of ``channel`` (transient). The
        first call declares the exchange and waits for the confirm; later ones are
        fire and forget, as the contract allows (events and control commands)."""
        exchange = BROADCAST_PREFIX + channel
        props = pika.BasicProperties(delivery_mode=1)
        if exchange in self.topology.exchanges and self.link.up_flag:
            self.link.soon(functools.partial(self.publisher.fire, exchange, body, props))
            return

        async def send() -> None:
            await self.link.connected()
            await self.topology.declare_exchange(exchange, "fanout", durable=False)
            await self.publisher.send([(exchange, "", body, props, False)])

        self.link.call(send(), self.link.budget)

    def subscribe(self, channel: str) -> Subscription:
        """Listen on ``channel``; returns once the listening queue is bound."""
        sub = RabbitMQSubscription(self, channel)

        async def start() -> None:
            # Registered once connected, so that a concurrent (re)connection setup,
            # which re-opens every registered subscription, cannot open it twice.
            await self.link.connected()
            self.subs.append(sub)
            await self._open(sub)

        try:
            self.link.call(start(), self.link.budget)
        except BaseException:
            sub.close()
            raise
        return sub

    async def reopen(self) -> None:
        """After a (re)connection: listen again on every subscription's channel."""
        for sub in list(self.subs):
            await self._open(sub)

    def lost(self) -> None:
        """The connection closed, and the subscriptions' channels with it."""
        for sub in self.subs:
            sub.pika_channel = None

    async def _open(self, sub: RabbitMQSubscription) -> None:
        if sub.closed:
            return
        await self.topology.declare_exchange(sub.exchange, "fanout", durable=False)
        c = TempChannel(self.link, await self.link.channel())
        ch = c.channel
        frame = await c.call(
            functools.partial(ch.queue_declare, "", exclusive=True, auto_delete=True)
        )
        name = frame.method.queue
        await c.call(functools.partial(ch.queue_bind, name, sub.exchange))
        ch.basic_consume(name, lambda _c, _m, _p, body: sub.inbox.put(body), auto_ack=True)
        sub.pika_channel = ch

    def forget(self, sub: RabbitMQSubscription) -> None:
        """Stop ``sub`` (its exclusive queue goes with its channel)."""
        if self.link.thread is None or self.link.closed:
            return

        def stop() -> None:
            if sub in self.subs:
                self.subs.remove(sub)
            if sub.pika_channel is not None and sub.pika_channel.is_open:
                with contextlib.suppress(Exception):
                    sub.pika_channel.close()  # the exclusive queue goes with it

        with contextlib.suppress(RuntimeError):
            self.link.loop.call_soon_threadsafe(stop)
