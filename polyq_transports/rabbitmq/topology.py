"""What polyq declares on the broker: work queues (classic, with priorities), their
dead-letter queues, and the delay levels; and how a delay picks its level.

See docs/design/rabbitmq.md (*Queue type*, *Delays*).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping
from typing import Any

import pika.exceptions

from polyq.exceptions import BrokerError, ConfigurationError
from polyq.queues import check_queue_name

from .connection import Link, describe_close
from .headers import H_ETA, H_QUEUE, bit_header

#: Delays are counted in units of this many milliseconds.
DELAY_UNIT_MS = 100
#: Level ``k`` holds messages for ``2**k`` units; the top level's TTL stays under
#: RabbitMQ's limit of 2**32 - 1 ms.
DELAY_LEVELS = 26
MAX_DELAY = (2**DELAY_LEVELS - 1) * DELAY_UNIT_MS / 1000.0
DELIVER_EXCHANGE = "polyq.delay.deliver"


def level_exchange(level: int) -> str:
    """The headers exchange of delay level ``level``, shared by all queues."""
    return f"polyq.delay.{level:02d}"


def level_queue(queue: str, level: int) -> str:
    """The queue holding ``queue``'s messages at delay level ``level``."""
    return f"{queue}.delay.{level:02d}"


def route(queue: str, delay: float, headers: dict[str, Any]) -> tuple[str, str, int]:
    """Return (exchange, routing key, top delay level or -1) and add the delay bits."""
    units = math.ceil(delay * 1000.0 / DELAY_UNIT_MS - 1e-9) if delay > 0 else 0
    if units <= 0:
        return "", queue, -1
    if units >= 2**DELAY_LEVELS:
        raise ValueError(
            f"delay {delay:.0f} s exceeds the RabbitMQ transport's max_delay "
            f"({MAX_DELAY:.0f} s); the core re-delays longer ETAs in hops"
        )
    top = units.bit_length() - 1
    for level in range(top + 1):
        headers[bit_header(level)] = "1" if units >> level & 1 else "0"
    headers[H_QUEUE] = queue
    headers[H_ETA] = f"{time.time() + units * DELAY_UNIT_MS / 1000.0:.3f}"
    return level_exchange(top), queue, top


class Topology:
    """Declares queues and exchanges as they are first used, and remembers which exist
    (forgotten on every reconnection: the broker may have restarted)."""

    def __init__(self, link: Link, max_priority: int, queue_version: int) -> None:
        self.link = link
        self.max_priority = max_priority
        self.queue_version = queue_version
        self.declared: set[str] = set()
        self.exchanges: set[str] = set()
        self.levels: dict[str, int] = {}  # queue -> delay levels declared (0..n-1)
        self.shared_levels = 0  # level exchanges declared and chained

    def forget(self) -> None:
        """The connection was lost: declare everything again on the next one (the
        broker may have restarted, its transient exchanges gone, or been replaced)."""
        self.declared.clear()
        self.exchanges.clear()
        self.levels.clear()
        self.shared_levels = 0

    def queue_arguments(self) -> dict[str, Any]:
        """The arguments every work queue is declared with."""
        arguments: dict[str, Any] = {}
        if self.max_priority:
            arguments["x-max-priority"] = self.max_priority
        if self.queue_version:
            arguments["x-queue-version"] = self.queue_version
        return arguments

    def _refused(self, what: str, exc: BaseException) -> Exception:
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == 406:
            return ConfigurationError(
                f"RabbitMQ refused to declare {what}: it already exists with other arguments "
                f"({exc.reply_text}). polyq declares work queues durable and classic with "
                f"{self.queue_arguments() or 'no arguments'}. Drain and delete it "
                "(rabbitmqctl delete_queue <name>), or set the transport options max_priority "
                "(0 = no priority) and queue_version (0 = the broker's default) to match it"
            )
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
            return BrokerError(f"RabbitMQ refused to declare {what}: {describe_close(exc)}")
        if isinstance(exc, BrokerError):
            return exc
        return BrokerError(f"could not declare {what} on RabbitMQ at {self.link.where()}: {exc!r}")

    def prepared(self, tops: Mapping[str, int]) -> bool:
        """Whether every queue and delay level is known to exist (read from the
        caller's thread: a hint, and a wrong one only costs an unroutable error)."""
        for queue, top in tops.items():
            if queue not in self.declared or top >= self.levels.get(queue, 0):
                return False
        return self.link.up_flag

    async def prepare(self, tops: Mapping[str, int]) -> None:
        """Declare each queue, and its delay levels up to ``tops[queue]``."""
        for queue, top in tops.items():
            if queue not in self.declared:
                await self.declare_queue(queue)
            if top >= self.levels.get(queue, 0):
                await self._declare_levels(queue, top + 1)

    async def declare_exchange(self, name: str, kind: str, durable: bool = True) -> None:
        """Declare exchange ``name`` once per connection."""
        if name in self.exchanges:
            return
        try:
            async with self.link.temp() as c:
                await c.call(
                    functools.partial(
                        c.channel.exchange_declare, name, exchange_type=kind, durable=durable
                    )
                )
        except Exception as exc:
            raise self._refused(f"exchange {name!r}", exc) from exc
        self.exchanges.add(name)

    async def declare_queue(self, queue: str) -> None:
        """Declare work queue ``queue`` and bind it to the delay levels' way out.

        A name polyq refuses (:func:`polyq.queues.check_queue_name`) fails here, at
        once: RabbitMQ closed the channel on a name with a newline and the publish
        that followed hung until its timeout (28 s) before failing."""
        check_queue_name(queue)
        await self.declare_exchange(DELIVER_EXCHANGE, "direct")
        try:
            async with self.link.temp() as c:
                await c.call(
                    functools.partial(
                        c.channel.queue_declare,
                        queue,
                        durable=True,
                        arguments=self.queue_arguments(),
                    )
                )
                await c.call(
                    functools.partial(
                        c.channel.queue_bind, queue, DELIVER_EXCHANGE, routing_key=queue
                    )
                )
        except Exception as exc:
            raise self._refused(f"queue {queue!r}", exc) from exc
        self.declared.add(queue)

    async def declare_dlq(self, queue: str) -> str:
        """Declare ``queue``'s dead-letter queue; return its name."""
        name = f"{queue}.dlq"
        if name not in self.declared:
            try:
                async with self.link.temp() as c:
                    await c.call(functools.partial(c.channel.queue_declare, name, durable=True))
            except Exception as exc:
                raise self._refused(f"dead-letter queue {name!r}", exc) from exc
            self.declared.add(name)
        return name

    async def _declare_shared_levels(self, count: int) -> None:
        """Declare the level exchanges ``0..count-1`` and chain each to the one below."""
        await self.declare_exchange(DELIVER_EXCHANGE, "direct")
        for level in range(self.shared_levels, count):
            exchange = level_exchange(level)
            below = level_exchange(level - 1) if level else DELIVER_EXCHANGE
            await self.declare_exchange(exchange, "headers")
            try:
                async with self.link.temp() as c:
                    await c.call(
                        functools.partial(
                            c.channel.exchange_bind,
                            below,
                            exchange,
                            arguments={"x-match": "all", bit_header(level): "0"},
                        )
                    )
            except Exception as exc:
                raise self._refused(f"delay exchange {exchange!r}", exc) from exc
            self.shared_levels = level + 1

    async def _declare_levels(self, queue: str, count: int) -> None:
        """Declare the delay level queues of ``queue`` up to ``count-1``, bottom up (so
        the levels that exist are always a prefix ``0..n-1``)."""
        await self._declare_shared_levels(count)
        for level in range(self.levels.get(queue, 0), count):
            exchange = level_exchange(level)
            below = level_exchange(level - 1) if level else DELIVER_EXCHANGE
            name = level_queue(queue, level)
            arguments = {
                "x-queue-type": "quorum",
                "x-message-ttl": DELAY_UNIT_MS * 2**level,
                "x-dead-letter-exchange": below,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
            match = {"x-match": "all", bit_header(level): "1", H_QUEUE: queue}
            try:
                async with self.link.temp() as c:
                    ch = c.channel
                    await c.call(
                        functools.partial(ch.queue_declare, name, durable=True, arguments=arguments)
                    )
                    await c.call(functools.partial(ch.queue_bind, name, exchange, arguments=match))
            except Exception as exc:
                raise self._refused(f"delay queue {name!r}", exc) from exc
            self.levels[queue] = level + 1

    async def level_names(self, queue: str) -> list[tuple[str, int]]:
        """The delay level queues of ``queue`` that exist, with their ready counts."""
        found = []
        for level in range(DELAY_LEVELS):
            name = level_queue(queue, level)
            count = await self.passive(name)
            if count is None:
                break
            found.append((name, count))
        return found

    async def passive(self, queue: str) -> int | None:
        """Ready messages in ``queue``, or None when it does not exist."""
        try:
            async with self.link.temp() as c:
                frame = await c.call(
                    functools.partial(c.channel.queue_declare, queue, passive=True)
                )
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise BrokerError(
                f"RabbitMQ refused to count {queue!r}: {describe_close(exc)}"
            ) from exc
        return int(frame.method.message_count)

    async def purge_one(self, queue: str) -> int:
        """Purge one queue; return how many messages it held."""
        async with self.link.temp() as c:
            frame = await c.call(functools.partial(c.channel.queue_purge, queue))
        return int(frame.method.message_count)

    async def count(self, queue: str) -> int:
        """Ready and delayed messages of ``queue`` on the broker."""
        ready = await self.passive(queue)
        if ready is None:
            return 0
        return ready + sum(count for _name, count in await self.level_names(queue))

    async def delete(self, queue: str) -> None:
        """Delete ``queue`` with its dead-letter queue and delay levels."""
        names = [queue, f"{queue}.dlq"] + [name for name, _ in await self.level_names(queue)]
        async with self.link.temp() as c:
            for name in names:
                await c.call(functools.partial(c.channel.queue_delete, name))
        self.declared.discard(queue)
        self.declared.discard(f"{queue}.dlq")
        self.levels.pop(queue, None)
