"""Consuming: one consumer channel, its prefetch, the buffer ``receive`` reads, delivery
counting, and settling (runs of acks as one multiple-ack frame).

See docs/design/rabbitmq.md (*Leases*, *Channels*, *Reading deliveries*).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import pika.exceptions
from pika.channel import Channel

from polyq.exceptions import BrokerError
from polyq.transport import Delivery
from polyq.url import redact

from .connection import Link, TempChannel, describe_close
from .headers import H_DELIVERIES, user_headers
from .publish import Publisher
from .topology import Topology

logger = logging.getLogger("polyq.transports.rabbitmq")


class Receipt:
    """Where a delivery came from: the consumer channel's generation and tag."""

    __slots__ = ("generation", "tag")

    def __init__(self, generation: int, tag: int) -> None:
        self.generation = generation
        self.tag = tag

    def __repr__(self) -> str:
        return f"<receipt gen={self.generation} tag={self.tag}>"


class Consumer:
    """The consumer channel and the deliveries it brought.

    ``cond`` guards what callers' threads share with the I/O thread: ``buffer``,
    ``held``, ``want``, ``demand`` and ``generation`` (and the link's ``up_flag``).
    """

    def __init__(
        self,
        link: Link,
        topology: Topology,
        publisher: Publisher,
        prefetch_count: int | None,
        cond: threading.Condition,
    ) -> None:
        self.link = link
        self.topology = topology
        self.publisher = publisher
        self.prefetch_count = prefetch_count
        # -- shared with callers, guarded by cond ----------------------------------
        self.cond = cond
        self.buffer: list[tuple[int, int, Delivery]] = []  # (-priority, seq, delivery)
        self.seq = itertools.count()
        self.held: dict[str, int] = {}  # handed out and not yet settled, per queue
        self.want: tuple[str, ...] = ()
        self.demand = 0
        self.generation = 0
        # -- the I/O thread's only -------------------------------------------------
        # The consumer channel's delivery tags not yet settled, in delivery order, and
        # those settled one by one ahead of an unsettled one. An ack of a contiguous
        # run from the oldest goes out as one multiple-ack frame.
        self.unsettled: collections.deque[int] = collections.deque()
        self.settled_early: set[int] = set()
        self.tracked_generation = 0
        self.channel: Channel | None = None
        self.lock = asyncio.Lock()
        self.rpc: TempChannel | None = None
        self.consuming: dict[str, str] = {}  # queue -> consumer tag
        self.tag_queue: dict[str, str] = {}
        self.applied_qos = -1

    # -- the consumer channel ----------------------------------------------------------

    async def _open(self) -> None:
        """Open the consumer channel and consume the wanted queues."""
        channel = await self.link.channel()
        channel.add_on_close_callback(self._closed)
        self.channel = channel
        self.rpc = TempChannel(self.link, channel)
        if self.link.conn is not None:
            self.link.conn.deliveries = (channel.channel_number, self.take_delivery)
        self.applied_qos = -1
        await self._apply()

    def _closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self.channel:
            return
        self.forget()
        alive = self.link.conn is not None and self.link.conn.is_open
        if alive and not isinstance(reason, pika.exceptions.ChannelClosedByClient):
            # consumer_timeout or a broker error: the messages went back; start over.
            logger.warning(
                "RabbitMQ closed the consumer channel (%s); its unacked messages return to "
                "their queues",
                describe_close(reason),
            )
            self.link.loop.create_task(self.sync_quietly())

    async def sync_quietly(self) -> None:
        """:meth:`sync`, its errors left for the next one to meet."""
        with contextlib.suppress(Exception):
            await self.sync()

    def forget(self) -> None:
        """The consumer channel is gone: its deliveries were returned by the broker."""
        self.channel = None
        if self.link.conn is not None:
            self.link.conn.deliveries = None
        self.consuming.clear()
        self.tag_queue.clear()
        with self.cond:
            self.generation += 1
            self.buffer.clear()
            self.held.clear()

    async def sync(self) -> None:
        """Make the consumer channel's qos and consumers match what callers want."""
        async with self.lock:  # one change at a time: no consumer twice
            if self.channel is not None and self.channel.is_open:
                await self._apply()
            elif self.link.conn is not None and self.link.conn.is_open:
                await self._open()

    async def _apply(self) -> None:
        assert self.channel is not None
        channel = self.channel
        c = self.rpc
        assert c is not None
        with self.cond:
            want = self.want
            qos = self.prefetch_count or max(1, self.demand)
        for queue in want:
            if queue not in self.topology.declared:
                await self.topology.declare_queue(queue)
        if qos != self.applied_qos:
            self.applied_qos = qos
            await c.call(functools.partial(channel.basic_qos, prefetch_count=qos, global_qos=True))
        for queue in [q for q in self.consuming if q not in want]:
            tag = self.consuming.pop(queue)
            self.tag_queue.pop(tag, None)
            await c.call(functools.partial(channel.basic_cancel, tag))
            self._return_buffered(queue)
        for queue in want:
            if queue not in self.consuming:
                tag = channel.basic_consume(queue, self._on_message)
                self.consuming[queue] = tag
                self.tag_queue[tag] = queue

    def _return_buffered(self, queue: str) -> None:
        """Give back messages of ``queue`` received but not handed to anybody."""
        with self.cond:
            keep = [entry for entry in self.buffer if entry[2].queue != queue]
            gone = [entry[2] for entry in self.buffer if entry[2].queue == queue]
            heapq.heapify(keep)
            self.buffer = keep
        if self.channel is not None:
            for delivery in gone:
                self.channel.basic_nack(delivery.receipt.tag, requeue=True)

    # -- deliveries (I/O thread) -------------------------------------------------------

    def _on_message(self, channel: Channel, method: Any, props: Any, body: bytes) -> None:
        """pika's delivery callback: what the fast path leaves to pika (everything
        when it is off)."""
        raw = props.headers or {}
        queue = self.tag_queue.get(method.consumer_tag, method.routing_key)
        if method.redelivered:
            # The broker gave it back (a consumer died or returned it): count that
            # delivery by republishing with the count raised, then drop this copy.
            self._track(method.delivery_tag)
            previous = raw.get(H_DELIVERIES, 0)
            self.link.loop.create_task(
                self._recount(self.generation, method.delivery_tag, queue, props, body, previous)
            )
            return
        self._deliver(
            queue, method.delivery_tag, raw, props.message_id or "", props.priority or 0, body
        )

    def take_delivery(
        self,
        consumer_tag: str,
        tag: int,
        headers: dict[str, Any],
        message_id: str,
        priority: int,
        body: bytes,
    ) -> bool:
        """The connection's fast path: a delivery decoded without pika."""
        queue = self.tag_queue.get(consumer_tag)
        if queue is None:
            return False  # cancelled: pika's channel gives it back
        self._deliver(queue, tag, headers, message_id, priority, body)
        return True

    def _track(self, tag: int) -> None:
        if self.tracked_generation != self.generation:
            # A new channel numbers its deliveries afresh.
            self.tracked_generation = self.generation
            self.unsettled.clear()
            self.settled_early.clear()
        self.unsettled.append(tag)

    def _deliver(
        self,
        queue: str,
        tag: int,
        headers: dict[str, Any],
        message_id: str,
        priority: int,
        body: bytes,
    ) -> None:
        """Buffer a (first) delivery for ``receive``."""
        self._track(tag)
        delivery = Delivery(
            queue=queue,
            message_id=message_id,
            body=body,
            headers=user_headers(headers),
            delivery_count=int(headers.get(H_DELIVERIES, 0)) + 1,
            receipt=Receipt(self.generation, tag),
            priority=priority,
        )
        with self.cond:
            heapq.heappush(self.buffer, (-delivery.priority, next(self.seq), delivery))
            self.cond.notify()

    async def _recount(
        self, generation: int, tag: int, queue: str, props: Any, body: bytes, previous: Any
    ) -> None:
        headers = dict(props.headers or {})
        headers[H_DELIVERIES] = int(previous) + 1
        props.headers = headers
        try:
            await self.publisher.send([("", queue, body, props, True)])
        except Exception as exc:
            logger.warning("could not recount a redelivered message of %r: %s", queue, exc)
            await asyncio.sleep(1.0)
            self.settle(generation, tag, requeue=True)
        else:
            self.settle(generation, tag, requeue=None)

    # -- settling (I/O thread) ---------------------------------------------------------

    def settle(self, generation: int, tag: int, requeue: bool | None) -> None:
        """Ack (``requeue`` None) or nack a delivery if its channel still lives."""
        channel = self.channel
        if generation != self.generation or channel is None or not channel.is_open:
            return  # the broker already took it back when the channel closed
        if requeue is None:
            channel.basic_ack(tag)
        else:
            channel.basic_nack(tag, requeue=requeue)
        self.settled_early.add(tag)
        self._drop_settled()

    def _drop_settled(self) -> None:
        unsettled, early = self.unsettled, self.settled_early
        while unsettled and unsettled[0] in early:
            early.discard(unsettled.popleft())

    def ack_all(self, settled: list[tuple[int, int]]) -> None:
        """Ack ``(generation, tag)`` pairs, a contiguous run as one multiple ack."""
        channel = self.channel
        if channel is None or not channel.is_open:
            return  # the broker already took them back when the channel closed
        tags = {tag for generation, tag in settled if generation == self.generation}
        if self.tracked_generation != self.generation:
            tags.clear()  # not one delivery on this channel yet: nothing of it to ack
        # The oldest unsettled deliveries, as far as every one is acked now (or was
        # settled before): one ``basic.ack multiple`` on the last acked among them
        # settles the run on the broker (saving it a frame per message).
        last = None
        unsettled, early = self.unsettled, self.settled_early
        while unsettled and (unsettled[0] in tags or unsettled[0] in early):
            tag = unsettled.popleft()
            if tag in tags:
                tags.discard(tag)
                last = tag
            else:
                early.discard(tag)
        with self.link.gathered():
            if last is not None:
                channel.basic_ack(last, multiple=True)
            for tag in sorted(tags):  # behind an unsettled one: one frame each
                channel.basic_ack(tag)
                early.add(tag)

    # -- callers' side -----------------------------------------------------------------

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """Hand out up to ``max_messages`` deliveries, highest priority first."""
        if max_messages <= 0 or not queues:
            return []
        wanted = tuple(dict.fromkeys(queues))
        deadline = time.monotonic() + max(wait, 0.0)
        with self.cond:
            demand = sum(self.held.values()) + max_messages
            moved = wanted != self.want
            # The prefetch only grows with demand (until the queues change): a worker
            # asks for its free slots, so demand stays level, and a lower qos would
            # not take back what the broker already sent.
            grow = self.prefetch_count is None and demand > self.demand
            if moved or grow:
                self.demand = demand if moved else max(demand, self.demand)
            self.want = wanted
        if moved:
            try:
                self._sync_from_caller(deadline)
            except BaseException:
                with self.cond:
                    self.want = ()  # so that the next call tries again
                raise
        elif grow:
            self.link.soon(self._sync_soon)
        names = set(wanted)
        link = self.link
        with self.cond:
            while True:
                out = self._take(names, max_messages)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0 or link.closed:
                    break
                self.cond.wait(remaining)
            if not out and not link.up_flag:
                since = link.down_since
                if since is not None and time.monotonic() - since > link.connect_timeout:
                    raise link.unreachable()
        return out

    def _sync_from_caller(self, deadline: float) -> None:
        """Apply the wanted consumers and qos, waiting at most until ``deadline`` while
        the broker is away (a down broker is noticed by the next ``receive``)."""
        self.link.start()
        future = asyncio.run_coroutine_threadsafe(self._sync_when_up(), self.link.loop)
        try:
            future.result(max(deadline - time.monotonic(), 0) + self.link.connect_timeout)
        except concurrent.futures.TimeoutError:
            return
        except BrokerError:
            with self.cond:
                if self.link.up_flag:
                    raise
        except pika.exceptions.AMQPError as exc:
            raise BrokerError(f"RabbitMQ at {redact(self.link.url)}: {exc!r}") from exc

    def _sync_soon(self) -> None:
        """Apply a larger prefetch without making the caller wait for it."""
        if self.link.up.is_set():
            self.link.loop.create_task(self.sync_quietly())  # errors surface on the next sync

    async def _sync_when_up(self) -> None:
        if not self.link.up.is_set():
            try:
                await asyncio.wait_for(self.link.up.wait(), self.link.connect_timeout)
            except TimeoutError:
                return
        await self.sync()

    def _take(self, names: set[str], limit: int) -> list[Delivery]:
        out: list[Delivery] = []
        skipped = []
        generation = self.generation
        while self.buffer and len(out) < limit:
            entry = heapq.heappop(self.buffer)
            delivery = entry[2]
            if delivery.receipt.generation != generation:
                continue
            if delivery.queue in names:
                out.append(delivery)
                self.held[delivery.queue] = self.held.get(delivery.queue, 0) + 1
            else:
                skipped.append(entry)
        for entry in skipped:
            heapq.heappush(self.buffer, entry)
        return out

    def release(self, delivery: Delivery) -> bool:
        """Forget a handed-out delivery; return whether its channel still lives."""
        receipt = delivery.receipt
        if not isinstance(receipt, Receipt):
            raise ValueError(f"not a delivery of this transport: {delivery!r}")
        with self.cond:
            if receipt.generation != self.generation:
                return False
            count = self.held.get(delivery.queue, 0)
            if count > 0:
                self.held[delivery.queue] = count - 1
            return True

    def take_buffered(self, queue: str) -> list[Delivery]:
        """Remove and return what was received for ``queue`` but not handed out."""
        with self.cond:
            mine = [e[2] for e in self.buffer if e[2].queue == queue]
            self.buffer = [e for e in self.buffer if e[2].queue != queue]
            heapq.heapify(self.buffer)
        return mine

    def holding(self, queue: str) -> int:
        """Messages of ``queue`` this instance holds: handed out or buffered."""
        with self.cond:
            held = self.held.get(queue, 0)
            buffered = sum(1 for e in self.buffer if e[2].queue == queue)
        return held + buffered

    def drop_all(self) -> None:
        """Closing: held deliveries go back with the connection, so settling them
        later is a no-op, as for any lost lease."""
        with self.cond:
            self.generation += 1
            self.buffer.clear()
            self.held.clear()
