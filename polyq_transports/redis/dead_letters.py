"""Dead letters: reading a queue's, replaying them into ``ready``, purging them.

Moving a message there is the ``dead_letter`` script the transport runs on a
delivery; this module serves what comes after.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from polyq.transport import DeadLetter
from polyq_clients.redis import translate_errors
from polyq_transports.redis.layout import KeySpace, unpack
from polyq_transports.redis.scripts import Scripts

__all__ = ["DeadLetters"]


class DeadLetters:
    """The dead-letter operations of :class:`~polyq_transports.redis.RedisTransport`
    (``dead_letters``, ``replay_dead_letters``, ``purge_dead_letters``)."""

    def __init__(self, client: redis.Redis, keys: KeySpace, scripts: Scripts, url: str) -> None:
        # Typed loosely on purpose, as in the transport: redis-py's reply types are
        # unions of every shape.
        self._client: Any = client
        self._keys = keys
        self._scripts = scripts
        self._url = url

    def _errors(self, what: str) -> translate_errors:
        return translate_errors(self._url, what)

    def read(self, queue: str, limit: int | None) -> list[DeadLetter]:
        """Up to ``limit`` dead letters (all when ``None``), oldest first."""
        if limit is not None and limit <= 0:
            return []
        k = self._keys.of(queue)
        stop = -1 if limit is None else limit - 1
        with self._errors(f"read the dead letters of {queue!r}"):
            entries = self._client.zrange(k.dead, 0, stop, withscores=True)
            members = [m for m, _ in entries]
            if not members:
                return []
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(k.msg, members).hmget(k.deadinfo, members)
            payloads, reasons = pipe.execute()
        letters = []
        for (member, failed), payload, reason in zip(entries, payloads, reasons, strict=True):
            if payload is None:
                continue
            message_id, headers, body = unpack(payload)
            letters.append(
                DeadLetter(
                    queue=queue,
                    message_id=message_id,
                    body=body,
                    headers=headers,
                    reason=(reason or b"").decode(),
                    failed_at=float(failed) / 1000,
                    receipt=member.decode(),
                )
            )
        return letters

    def replay(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Put dead letters back in ``ready`` with a fresh delivery count."""
        wanted = None if message_ids is None else set(message_ids)
        members = [
            letter.receipt
            for letter in self.read(queue, None)
            if wanted is None or letter.message_id in wanted
        ]
        if not members:
            return 0
        k = self._keys.of(queue)
        with self._errors(f"replay dead letters of {queue!r}"):
            return int(
                self._scripts.replay(
                    keys=[k.ready, k.count, k.dead, k.deadinfo, k.notify], args=members
                )
            )

    def purge(self, queue: str) -> int:
        """Delete the dead letters of ``queue`` for good."""
        k = self._keys.of(queue)
        with self._errors(f"purge dead letters of {queue!r}"):
            return int(self._scripts.purge(keys=[k.msg, k.count, k.deadinfo, k.dead], args=[3]))
