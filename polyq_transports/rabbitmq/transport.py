"""``RabbitMQTransport``: the contract's methods, handing the work to the parts of the
package (connection, topology, publish, consume, dead_letters, broadcast).

The design and its reasons: docs/design/rabbitmq.md. The options: docs/brokers.md.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import pika.exceptions

from polyq.exceptions import BrokerError, ConfigurationError, MessageTooLarge
from polyq.queues import check_queue_name
from polyq.transport import (
    Capabilities,
    DeadLetter,
    Delivery,
    OutgoingMessage,
    ScheduledMessage,
    Subscription,
    Transport,
)
from polyq.url import redact

from . import fastpath
from .broadcast import Broadcaster
from .connection import Link, describe_close, parameters, split_urls
from .consume import Consumer
from .dead_letters import Browser
from .headers import H_DELIVERIES, H_FAILED_AT, H_REASON
from .publish import Publisher
from .topology import MAX_DELAY, Topology, route

logger = logging.getLogger("polyq.transports.rabbitmq")


class RabbitMQTransport(Transport):
    """RabbitMQ through pika, with publisher confirms and connection-bound leases.

    URL ``amqp://user:password@host:5672/vhost`` (``amqps://`` for TLS, ``pyamqp://``
    as an alias, several brokers separated by ``;``). Options: ``max_priority``,
    ``queue_version``, ``prefetch_count``, ``heartbeat``, ``connect_timeout``,
    ``confirm_timeout``, ``max_message_size``, ``consumer_timeout``, ``time_limit``,
    ``fastpath`` and the ``ssl_*`` options, described in docs/brokers.md.
    """

    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=True,
        max_delay=MAX_DELAY,
        max_message_size=16 * 1024 * 1024,
        broadcast=True,
        lease="connection",
        extend_lease=False,
        dead_letter=True,
        inspect_scheduled=True,
        may_duplicate=False,
        transactional_enqueue=False,
        durable=True,
        exact_size=True,
    )

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.max_priority = int(options.get("max_priority", 9))
        if not 0 <= self.max_priority <= 255:
            raise ConfigurationError(
                f"max_priority={self.max_priority} for {redact(url)}: RabbitMQ takes 0..255 "
                "(polyq uses 0..9; 0 declares queues without priority)"
            )
        self.queue_version = int(options.get("queue_version", 2))
        if self.queue_version not in (0, 1, 2):
            raise ConfigurationError(
                f"queue_version={self.queue_version} for {redact(url)}: RabbitMQ's classic "
                "queues are version 1 or 2 (0 = the broker's default)"
            )
        fixed = options.get("prefetch_count")
        self.prefetch_count: int | None = int(fixed) if fixed else None
        self.heartbeat = int(options.get("heartbeat", 30))
        self.connect_timeout = float(options.get("connect_timeout", 4.0))
        self.confirm_timeout = float(options.get("confirm_timeout", 30.0))
        self.max_message_size = int(
            options.get("max_message_size", self.capabilities.max_message_size or 0)
        )
        self.consumer_timeout = float(options.get("consumer_timeout", 1800.0))
        #: Whether deliveries and writes take the fast path (see ``fastpath``).
        self.fastpath = fastpath.choose(options.get("fastpath"))
        params = [
            parameters(part, options, self.heartbeat, self.connect_timeout, self.confirm_timeout)
            for part in split_urls(url)
        ]
        time_limit = options.get("time_limit", options.get("task_time_limit"))
        if time_limit is not None:
            self.check_time_limit(float(time_limit))

        cond = threading.Condition()
        self._link = Link(
            url,
            params,
            fastpath.connection_class(self.fastpath),
            self.connect_timeout,
            self.confirm_timeout,
            cond,
        )
        self._topology = topology = Topology(self._link, self.max_priority, self.queue_version)
        self._publisher = Publisher(self._link, topology, self.max_priority, self.confirm_timeout)
        self._consumer = Consumer(self._link, topology, self._publisher, self.prefetch_count, cond)
        self._browser = Browser(self._link, topology, self._publisher)
        self._broadcaster = Broadcaster(self._link, topology, self._publisher)
        self._link.on_setup = self._setup
        self._link.on_lost = self._lost

    # -- configuration -------------------------------------------------------------

    def check_time_limit(self, time_limit: float | None) -> bool:
        """Log a warning when a task's hard ``time_limit`` (seconds) is not below the
        broker's ``consumer_timeout``; return whether it is safe."""
        if time_limit is not None and time_limit < self.consumer_timeout:
            return True
        logger.warning(
            "hard time limit %s is not below RabbitMQ's consumer_timeout (%.0f s): a task that "
            "runs longer gets its channel closed by the broker, and every message of that "
            "channel runs again. Lower the time limit, or raise consumer_timeout in "
            "rabbitmq.conf and tell polyq with the transport option consumer_timeout.",
            "none" if time_limit is None else f"{time_limit:.0f} s",
            self.consumer_timeout,
        )
        return False

    def describe(self) -> str:
        """The redacted URL(s), the queue type and the prefetch policy."""
        prefetch = self.prefetch_count or "worker demand"
        return f"{redact(self.url)} (classic queues, prefetch {prefetch})"

    # -- the connection's life -------------------------------------------------------

    async def _setup(self) -> None:
        """After each (re)connection: open the publishing and consuming channels and
        resume consumers and subscriptions."""
        await self._publisher.open()
        await self._consumer.sync()
        await self._broadcaster.reopen()

    def _lost(self, message: str) -> None:
        """The connection closed: fail what waited on it and forget its channels."""
        self._publisher.lost(message)
        self._consumer.forget()
        self._broadcaster.lost()
        self._topology.forget()

    # -- publishing ------------------------------------------------------------------

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        """Publish persistently and return once RabbitMQ has confirmed every message."""
        if kwargs.get("connection") is not None:
            raise ConfigurationError(
                "RabbitMQ cannot join a database transaction (publish(connection=...)); "
                "use a SQL broker for transactional enqueue"
            )
        if not messages:
            return
        declared = self._topology.declared
        for message in messages:
            if message.queue not in declared:
                check_queue_name(message.queue)  # at once, not after a confirm timeout
            size = len(message.body) + sum(len(k) + len(v) for k, v in message.headers.items())
            if self.max_message_size and size > self.max_message_size:
                raise MessageTooLarge(
                    f"message {message.message_id} for queue {message.queue!r} is {size} bytes; "
                    f"the RabbitMQ transport's limit is {self.max_message_size} bytes "
                    "(option max_message_size; RabbitMQ's max_message_size must allow it). "
                    "Nothing was sent: keep large payloads elsewhere and send a reference"
                )
            if message.delay > MAX_DELAY:
                raise ValueError(
                    f"delay {message.delay:.0f} s exceeds max_delay ({MAX_DELAY:.0f} s)"
                )
        publisher = self._publisher
        items, tops = publisher.encode(messages)
        if not self._topology.prepared(tops):
            self._link.call(publisher.publish(items, tops), self._link.budget)
            return
        # Everything is declared: hand the frames to the I/O thread and wait for the
        # confirms, without a coroutine per call (the common case, and the fast one).
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._link.soon(functools.partial(publisher.send_now, items, future))
        try:
            future.result(self.confirm_timeout + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()  # what is not sent yet stays unsent
            raise BrokerError(
                f"RabbitMQ at {redact(self.url)} did not confirm {len(items)} message(s) within "
                f"{self.confirm_timeout:.0f} s (a memory or disk alarm?); they may or may not "
                "have been stored"
            ) from None
        except pika.exceptions.AMQPError as exc:  # a channel or connection closed under it
            raise BrokerError(f"RabbitMQ at {redact(self.url)}: {describe_close(exc)}") from exc

    # -- consuming -------------------------------------------------------------------

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """Hand out up to ``max_messages`` deliveries, highest priority first."""
        declared = self._topology.declared
        for queue in queues:
            if queue not in declared:
                # Here, in the caller's thread: raised in the consumer's setup, the
                # error would only make the I/O thread reconnect again and again.
                check_queue_name(queue)
        return self._consumer.receive(queues, max_messages, wait)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Ack; the frames are sent by the I/O thread without waiting for it."""
        consumer = self._consumer
        settled = [(d.receipt.generation, d.receipt.tag) for d in deliveries if consumer.release(d)]
        if settled:
            self._link.soon(lambda: consumer.ack_all(settled))

    async def _replace(
        self,
        delivery: Delivery,
        target: str,
        delay: float,
        extra: dict[str, Any],
        declare: bool = True,
    ) -> None:
        """Publish a copy of ``delivery`` (to ``target``, after ``delay``), then ack it;
        if the copy is refused, give the original back instead and raise."""
        receipt = delivery.receipt
        headers: dict[str, Any] = dict(delivery.headers)
        headers.update(extra)
        exchange, routing_key, top = route(target, delay, headers)
        props = self._publisher.properties(headers, delivery.message_id, delivery.priority)
        try:
            if declare:
                await self._topology.prepare({target: top})
            await self._publisher.send([(exchange, routing_key, delivery.body, props, True)])
        except BaseException:
            self._consumer.settle(receipt.generation, receipt.tag, requeue=True)
            raise
        self._consumer.settle(receipt.generation, receipt.tag, requeue=None)

    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Requeue now or after ``delay`` seconds; the next delivery counts one more."""
        if not self._consumer.release(delivery):
            return
        extra = {H_DELIVERIES: delivery.delivery_count}
        self._link.call(self._replace(delivery, delivery.queue, delay, extra), self._link.budget)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move to ``<queue>.dlq`` with the reason, once the broker confirmed the copy."""
        if not self._consumer.release(delivery):
            return

        async def move() -> None:
            await self._link.connected()
            dlq = await self._topology.declare_dlq(delivery.queue)
            extra = {
                H_REASON: reason,
                H_FAILED_AT: f"{time.time():.6f}",
                H_DELIVERIES: delivery.delivery_count,
            }
            await self._replace(delivery, dlq, 0.0, extra, declare=False)

        self._link.call(move(), self._link.budget)

    def extend_lease(self, deliveries: Sequence[Delivery]) -> None:
        """A no-op: the lease lasts as long as the connection."""

    # -- queues ----------------------------------------------------------------------

    async def _purge(self, queue: str, delayed: bool = True) -> int:
        topology = self._topology
        if await topology.passive(queue) is None:
            return 0
        purged = await topology.purge_one(queue)
        if delayed:
            for name, _count in await topology.level_names(queue):
                purged += await topology.purge_one(name)
        # Messages prefetched into this process but not handed out are waiting too.
        mine = self._consumer.take_buffered(queue)
        for delivery in mine:
            self._consumer.settle(delivery.receipt.generation, delivery.receipt.tag, None)
        return purged + len(mine)

    def purge(self, queue: str) -> int:
        """Delete the ready messages of ``queue`` (delayed ones still arrive later)."""
        return self._link.call(self._purge(queue), self._link.budget)

    def size(self, queue: str) -> int:
        """Ready and delayed messages, plus those this instance holds."""
        ready = self._link.call(self._topology.count(queue), self._link.budget)
        return ready + self._consumer.holding(queue)

    def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` with its dead letters and delay levels, messages and all
        (RabbitMQ-specific: tests and tear-downs use it so nothing is left behind)."""
        self._link.call(self._topology.delete(queue), self._link.budget)

    def queues(self) -> list[str]:
        """The work queues this instance declared (AMQP cannot list a vhost's queues)."""
        return sorted(q for q in self._topology.declared if not q.endswith(".dlq"))

    # -- dead letters and scheduled messages -----------------------------------------

    def scheduled(self, queue: str, limit: int = 100) -> list[ScheduledMessage]:
        """Delayed messages of ``queue``, soonest first. Each level queue is read
        without acking and given back (a message due meanwhile leaves its level as
        soon as it is back), so this costs a read of every delayed message."""
        return self._browser.scheduled(queue, limit)

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The dead letters of ``queue`` with their reasons, oldest first."""
        return self._browser.dead_letters(queue, limit)

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Republish dead letters to ``queue`` (delivery count reset) and drop them."""
        return self._browser.replay(queue, message_ids)

    def purge_dead_letters(self, queue: str) -> int:
        """Delete every dead letter of ``queue``."""
        return self._link.call(self._purge(f"{queue}.dlq", delayed=False), self._link.budget)

    # -- broadcast -------------------------------------------------------------------

    def broadcast(self, channel: str, body: bytes) -> None:
        """Publish ``body`` on the fanout exchange of ``channel`` (transient; after the
        first call, fire and forget)."""
        self._broadcaster.broadcast(channel, body)

    def subscribe(self, channel: str) -> Subscription:
        """Listen on ``channel``; returns once the listening queue is bound."""
        return self._broadcaster.subscribe(channel)

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (held deliveries return to their queues); idempotent."""
        if self._link.closed:
            return
        self._consumer.drop_all()
        self._link.close()
        with self._consumer.cond:
            self._consumer.cond.notify_all()
