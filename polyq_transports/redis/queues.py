"""Reading and emptying queues: their size and names, the delayed messages waiting
in them (``inspect scheduled``), and purging them.
"""

from __future__ import annotations

from typing import Any

import redis

from polyq.transport import ScheduledMessage
from polyq_clients.redis import translate_errors
from polyq_transports.redis.layout import KeySpace, priority_of, unpack
from polyq_transports.redis.scripts import Scripts

__all__ = ["Queues"]


class Queues:
    """The queue-level operations of :class:`~polyq_transports.redis.RedisTransport`
    (``purge``, ``size``, ``queues``, ``scheduled``), on the transport's client."""

    def __init__(self, client: redis.Redis, keys: KeySpace, scripts: Scripts, url: str) -> None:
        # Typed loosely on purpose, as in the transport: redis-py's reply types are
        # unions of every shape.
        self._client: Any = client
        self._keys = keys
        self._scripts = scripts
        self._url = url

    def _errors(self, what: str) -> translate_errors:
        return translate_errors(self._url, what)

    def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue`` (not leased ones)."""
        k = self._keys.of(queue)
        with self._errors(f"purge queue {queue!r}"):
            return int(self._scripts.purge(keys=[k.msg, k.count, k.ready, k.delayed], args=[2]))

    def size(self, queue: str) -> int:
        """Ready + delayed + leased messages of ``queue``."""
        k = self._keys.of(queue)
        with self._errors(f"read the size of queue {queue!r}"):
            pipe = self._client.pipeline(transaction=False)
            pipe.zcard(k.ready).zcard(k.delayed).zcard(k.leased)
            return sum(int(n) for n in pipe.execute())

    def names(self) -> list[str]:
        """Every queue ever published to under this namespace and database."""
        with self._errors("list queues"):
            return sorted(m.decode() for m in self._client.smembers(self._keys.queues))

    def scheduled(self, queue: str, limit: int = 100) -> list[ScheduledMessage]:
        """Delayed messages of ``queue``, soonest first."""
        if limit <= 0:
            return []
        k = self._keys.of(queue)
        with self._errors(f"list scheduled messages of {queue!r}"):
            entries = self._client.zrange(k.delayed, 0, limit - 1, withscores=True)
            members = [m for m, _ in entries]
            payloads = self._client.hmget(k.msg, members) if members else []
        found = []
        for (member, due), payload in zip(entries, payloads, strict=True):
            if payload is None:
                continue
            message_id, headers, _ = unpack(payload)
            found.append(
                ScheduledMessage(
                    queue=queue,
                    message_id=message_id,
                    headers=headers,
                    eta=float(due) / 1000,
                    priority=priority_of(member.decode()),
                )
            )
        return found
