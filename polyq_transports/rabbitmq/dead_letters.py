"""Reading queues without consuming them: dead letters (list, replay) and the delayed
messages of the delay levels (``scheduled``).

A queue is read on a private channel without acking, and the channel's close gives
back what was not acked. See docs/design/rabbitmq.md (*Dead letters*, *Delays*).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from polyq.transport import DeadLetter, ScheduledMessage

from .connection import Link, TempChannel
from .headers import H_ETA, H_FAILED_AT, H_REASON, user_headers
from .publish import Publisher
from .topology import Topology

#: Called with each message read: (channel, method, properties, body).
Handler = Callable[[TempChannel, Any, Any, bytes], Awaitable[None]]


class Browser:
    """Reads dead-letter and delay-level queues, and replays dead letters."""

    def __init__(self, link: Link, topology: Topology, publisher: Publisher) -> None:
        self.link = link
        self.topology = topology
        self.publisher = publisher

    async def _browse(
        self, name: str, limit: int | None, handle: Handler | None = None
    ) -> list[tuple[Any, bytes]]:
        """Consume up to ``limit`` messages of queue ``name`` (all that are ready when
        None) on a private channel without acking, pass each to ``handle``, then
        close the channel, which gives back every message ``handle`` did not ack in
        its place. Returns ``(properties, body)`` pairs, oldest first."""
        ready = await self.topology.passive(name)
        if not ready:
            return []
        want = ready if limit is None else min(ready, limit)
        got: asyncio.Queue[tuple[Any, Any, bytes]] = asyncio.Queue()
        seen: list[tuple[Any, bytes]] = []
        async with self.link.temp() as c:
            ch = c.channel
            await c.call(functools.partial(ch.basic_qos, prefetch_count=min(want, 65535)))
            ch.basic_consume(name, lambda _c, m, p, b: got.put_nowait((m, p, b)))
            while len(seen) < want:
                try:
                    method, props, body = await asyncio.wait_for(got.get(), 2.0)
                except TimeoutError:
                    break  # another consumer took the rest
                seen.append((props, body))
                if handle is not None:
                    await handle(c, method, props, body)
        return seen

    async def _read_dlq(
        self, queue: str, limit: int | None, handle: Handler | None
    ) -> list[DeadLetter]:
        letters = []
        for props, body in await self._browse(f"{queue}.dlq", limit, handle):
            raw = props.headers or {}
            failed_at = raw.get(H_FAILED_AT, 0)
            letters.append(
                DeadLetter(
                    queue=queue,
                    message_id=props.message_id or "",
                    body=body,
                    headers=user_headers(raw),
                    reason=str(raw.get(H_REASON, "")),
                    failed_at=float(
                        failed_at.decode() if isinstance(failed_at, bytes) else failed_at
                    ),
                    receipt=props.message_id,
                )
            )
        return letters

    async def _scheduled(self, queue: str, limit: int) -> list[ScheduledMessage]:
        waiting = []
        for name, count in await self.topology.level_names(queue):
            if count:
                waiting += await self._browse(name, None)
        listed = []
        for props, _body in waiting:
            raw = props.headers or {}
            eta = raw.get(H_ETA, 0)
            listed.append(
                ScheduledMessage(
                    queue=queue,
                    message_id=props.message_id or "",
                    headers=user_headers(raw),
                    eta=float(eta.decode() if isinstance(eta, bytes) else eta),
                    priority=props.priority or 0,
                )
            )
        listed.sort(key=lambda m: m.eta)
        return listed[:limit]

    def scheduled(self, queue: str, limit: int) -> list[ScheduledMessage]:
        """Delayed messages of ``queue``, soonest first (see ``Transport.scheduled``)."""
        if limit <= 0:
            return []
        return self.link.call(self._scheduled(queue, limit), self.link.budget * 4)

    def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        """The dead letters of ``queue`` with their reasons, oldest first."""
        if limit <= 0:
            return []
        return self.link.call(self._read_dlq(queue, limit, None), self.link.budget)

    def replay(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Republish dead letters to ``queue`` (delivery count reset) and drop them."""
        chosen = None if message_ids is None else set(message_ids)
        replayed = 0

        async def replay(c: TempChannel, method: Any, props: Any, body: bytes) -> None:
            nonlocal replayed
            if chosen is not None and props.message_id not in chosen:
                return
            headers = user_headers(props.headers)
            fresh = self.publisher.properties(
                dict(headers), props.message_id or "", props.priority or 0
            )
            await self.topology.prepare({queue: -1})
            await self.publisher.send([("", queue, body, fresh, True)])
            c.channel.basic_ack(method.delivery_tag)
            replayed += 1

        self.link.call(self._read_dlq(queue, None, replay), self.link.budget * 4)
        return replayed
