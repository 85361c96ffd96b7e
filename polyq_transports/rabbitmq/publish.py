"""Publishing with confirms: one confirm-mode channel, batches whose callers wait for
the broker's ``basic.ack`` of every message.

See docs/design/rabbitmq.md (*Channels*).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
from collections.abc import Sequence
from typing import Any

import pika
from pika import spec
from pika.channel import Channel

from polyq.exceptions import BrokerError
from polyq.transport import OutgoingMessage

from .connection import Link, describe_close, resolve
from .topology import Topology, route

#: (exchange, routing key, body, properties, mandatory)
Item = tuple[str, str, bytes, pika.BasicProperties, bool]
#: Messages of a batch marshalled per turn of the I/O loop.
_PUBLISH_SLICE = 100


def _chain(future: concurrent.futures.Future[None], task: asyncio.Task[None]) -> None:
    """Pass an I/O-thread task's outcome to a caller's future."""
    if future.done():
        return
    if task.cancelled():
        future.set_exception(BrokerError("the publish was cancelled (transport closing)"))
    elif task.exception() is not None:
        future.set_exception(task.exception())
    else:
        future.set_result(None)


class _Batch:
    """Confirms awaited by one ``publish`` call."""

    __slots__ = ("errors", "future", "remaining")

    def __init__(
        self, future: asyncio.Future[None] | concurrent.futures.Future[None], count: int
    ) -> None:
        self.future = future
        self.remaining = count
        self.errors: list[str] = []

    def settle(self, error: str | None) -> None:
        if error is not None:
            self.errors.append(error)
        self.remaining -= 1
        if self.remaining <= 0 and not self.future.done():
            # The caller's thread may cancel a concurrent future in between (it gave
            # up waiting); that race is harmless.
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if self.errors:
                    self.future.set_exception(BrokerError("; ".join(sorted(set(self.errors)))))
                else:
                    self.future.set_result(None)

    def fail(self, error: str) -> None:
        if not self.future.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                self.future.set_exception(BrokerError(error))


class Publisher:
    """The publishing channel and the confirms it awaits (I/O thread only, except
    :meth:`encode`)."""

    def __init__(
        self, link: Link, topology: Topology, max_priority: int, confirm_timeout: float
    ) -> None:
        self.link = link
        self.topology = topology
        self.max_priority = max_priority
        self.confirm_timeout = confirm_timeout
        self.channel: Channel | None = None
        self.lock = asyncio.Lock()
        self.tag = 0  # the last publish's sequence number on the channel
        self.unconfirmed: dict[int, tuple[_Batch, str]] = {}
        self.returned: set[int] = set()

    async def open(self) -> None:
        """Open the confirm-mode channel."""
        channel = await self.link.channel()
        selected: asyncio.Future[None] = self.link.loop.create_future()
        self.link.inflight.add(selected)
        channel.add_on_close_callback(self._closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            self._on_confirm,
            callback=lambda _frame: resolve(selected)(),
        )
        try:
            await selected
        finally:
            self.link.inflight.discard(selected)
        self.tag = 0
        self.channel = channel

    def lost(self, message: str) -> None:
        """The connection closed: fail the unconfirmed publishes and forget the channel."""
        self._fail_unconfirmed(message + " before the broker confirmed the message")
        self.channel = None

    def _closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self.channel:
            return
        self.channel = None
        self._fail_unconfirmed(
            f"RabbitMQ closed the publishing channel ({describe_close(reason)}) before "
            "confirming the message"
        )

    def _fail_unconfirmed(self, message: str) -> None:
        pending, self.unconfirmed = self.unconfirmed, {}
        self.returned.clear()
        for batch, _mid in pending.values():
            batch.fail(message)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, spec.Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            tags = []
            for pending in self.unconfirmed:
                if pending > tag:
                    break
                tags.append(pending)
        else:
            tags = [tag]
        for done in tags:
            entry = self.unconfirmed.pop(done, None)
            if entry is None:
                continue
            batch, message_id = entry
            if done in self.returned:
                self.returned.discard(done)
                batch.settle(
                    f"no queue took message {message_id} (it was returned unroutable); "
                    "was its queue deleted while in use?"
                )
            elif not ok:
                batch.settle(f"RabbitMQ refused message {message_id} (basic.nack)")
            else:
                batch.settle(None)

    def _on_return(self, _channel: Channel, method: Any, props: Any, _body: bytes) -> None:
        # A return precedes the confirm of the same message; find that message.
        for tag, (_batch, message_id) in self.unconfirmed.items():
            if message_id == props.message_id and tag not in self.returned:
                self.returned.add(tag)
                break
        self.topology.declared.discard(method.routing_key)

    async def _ready(self) -> Channel:
        await self.link.connected()
        if self.channel is None or not self.channel.is_open:
            async with self.lock:
                if self.channel is None or not self.channel.is_open:
                    await self.open()
        assert self.channel is not None
        return self.channel

    async def send(self, items: Sequence[Item]) -> None:
        """Publish ``(exchange, routing key, body, properties, mandatory)`` items and
        wait until the broker has confirmed every one."""
        if not items:
            return
        channel = await self._ready()
        future: asyncio.Future[None] = self.link.loop.create_future()
        self._emit(channel, items, _Batch(future, len(items)))
        try:
            await asyncio.wait_for(asyncio.shield(future), self.confirm_timeout)
        except TimeoutError:
            future.cancel()
            raise BrokerError(
                f"RabbitMQ at {self.link.where()} did not confirm {len(items)} message(s) "
                f"within {self.confirm_timeout:.0f} s (a memory or disk alarm?); they may or "
                "may not have been stored"
            ) from None

    def properties(
        self, headers: dict[str, Any], message_id: str, priority: int
    ) -> pika.BasicProperties:
        """A persistent message's properties."""
        return pika.BasicProperties(
            delivery_mode=2,
            message_id=message_id,
            priority=min(max(priority, 0), self.max_priority) if self.max_priority else None,
            headers=headers,
        )

    def encode(self, messages: Sequence[OutgoingMessage]) -> tuple[list[Item], dict[str, int]]:
        """The publish items of ``messages``, and the top delay level per queue."""
        items = []
        tops: dict[str, int] = {}
        for message in messages:
            headers: dict[str, Any] = dict(message.headers)
            exchange, routing_key, level = route(message.queue, message.delay, headers)
            tops[message.queue] = max(tops.get(message.queue, -1), level)
            props = self.properties(headers, message.message_id, message.priority)
            items.append((exchange, routing_key, message.body, props, True))
        return items, tops

    async def publish(self, items: list[Item], tops: dict[str, int]) -> None:
        """The full path: connect, declare what ``tops`` needs, publish, await confirms."""
        await self.link.connected()
        await self.topology.prepare(tops)
        await self.send(items)

    def send_now(self, items: list[Item], future: concurrent.futures.Future[None]) -> None:
        """The fast path, in the I/O thread: publish at once if the channel is open,
        else take the full path (connect, declare, open the channel)."""
        channel = self.channel
        if channel is None or not channel.is_open or not self.link.up.is_set():
            task = self.link.loop.create_task(self.send(items))
            task.add_done_callback(functools.partial(_chain, future))
            return
        self._emit(channel, items, _Batch(future, len(items)))

    def _emit(self, channel: Channel, items: Sequence[Item], batch: _Batch, start: int = 0) -> None:
        """Publish ``items[start:]`` on ``channel``, each counted toward ``batch``'s
        confirms; a failure fails ``batch`` (this runs as a loop callback, where an
        exception would reach nobody)."""
        if batch.future.done():  # failed (channel lost, nack) or given up: send no more
            return
        if not channel.is_open:
            batch.fail(
                f"RabbitMQ at {self.link.where()} closed the publishing channel before the "
                "message was sent"
            )
            return
        # A slice at a time, letting the loop write each one before marshalling the
        # next: the broker stores the first messages while the rest are encoded.
        end = start + _PUBLISH_SLICE
        unconfirmed = self.unconfirmed
        try:
            with self.link.gathered():
                for exchange, routing_key, body, props, mandatory in items[start:end]:
                    channel.basic_publish(exchange, routing_key, body, props, mandatory)
                    self.tag += 1
                    unconfirmed[self.tag] = (batch, props.message_id or "")
        except Exception as exc:
            batch.fail(f"publishing to RabbitMQ at {self.link.where()} failed: {exc!r}")
            return
        if end < len(items):
            self.link.loop.call_soon(self._emit, channel, items, batch, end)

    def fire(self, exchange: str, body: bytes, props: pika.BasicProperties) -> None:
        """Publish without awaiting a confirm (broadcasts), if the channel is open."""
        channel = self.channel
        if channel is None or not channel.is_open:
            return  # the broker is away: a broadcast is not kept for later
        channel.basic_publish(exchange, "", body, props)
        self.tag += 1  # its confirm matches no waiting batch
