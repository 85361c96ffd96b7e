"""Test-only transports without native delay (``capabilities.max_delay == 0``).

They wrap a real transport (``nodelay+memory://name``, ``nodelay+sqlite:///path``;
built directly, they also take the inner URL itself)
and refuse every delay: ``publish`` of a message with ``delay > 0`` and
``nack(delay > 0)`` raise :class:`~polyq.exceptions.BrokerError`. So the core must
hold ETAs and countdowns itself, and a test passing on them proves it does.

With ``POLYQ_NODELAY_PUBLISH_LOG`` set, ``publish`` appends each message's task id
to that file (a test counts how often the core sent a waiting message round again).

Entry points: ``polyq_selftest_plugins-0.0.dist-info`` next to this file registers
both schemes, for worker processes started with this directory on ``PYTHONPATH``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any, ClassVar

from polyq.exceptions import BrokerError
from polyq.registry import create_transport
from polyq.transport import (
    Capabilities,
    DeadLetter,
    Delivery,
    OutgoingMessage,
    Subscription,
    Transport,
)
from polyq_transports.memory import MemoryTransport
from polyq_transports.sql import SQLTransport

__all__ = ["NoDelayMemoryTransport", "NoDelaySQLiteTransport", "NoNativeDelay"]

PREFIX = "nodelay+"
#: Environment variable naming a file where ``publish`` appends the task id (or
#: message id) of each message it sends, so a test can count re-publications.
PUBLISH_LOG = "POLYQ_NODELAY_PUBLISH_LOG"


def _without_delay(capabilities: Capabilities) -> Capabilities:
    # Nothing delayed ever waits in the broker, so there is nothing to list either.
    return dataclasses.replace(capabilities, max_delay=0.0, inspect_scheduled=False)


class NoNativeDelay(Transport):
    """A transport that delegates to the one named after ``nodelay+`` in its URL and
    refuses delays; subclasses declare the wrapped broker's capabilities without delay."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        # Built directly (a suite's make_transport hook), it may get the inner URL.
        inner = url[len(PREFIX) :] if url.startswith(PREFIX) else url
        self.inner = create_transport(inner, **options)

    @staticmethod
    def _refuse(delay: float, what: str) -> None:
        if delay > 0:
            raise BrokerError(
                f"{what} with delay={delay}: this broker has no native delay "
                "(capabilities.max_delay=0); the core must hold the message itself"
            )

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        """Publish through the wrapped transport; refuses any ``delay > 0``."""
        for m in messages:
            self._refuse(m.delay, f"publish of {m.message_id}")
        self.inner.publish(messages, **kwargs)
        log = os.environ.get(PUBLISH_LOG)
        if log:
            # One short append per batch: lines from several processes do not mix.
            with open(log, "a") as f:
                f.write("".join(f"{m.headers.get('id', m.message_id)}\n" for m in messages))

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """Receive from the wrapped transport."""
        return self.inner.receive(queues, max_messages, wait)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Ack on the wrapped transport."""
        self.inner.ack(deliveries)

    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Nack on the wrapped transport; refuses any ``delay > 0``."""
        self._refuse(delay, f"nack of {delivery.message_id}")
        self.inner.nack(delivery)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter on the wrapped transport."""
        self.inner.dead_letter(delivery, reason)

    def extend_lease(self, deliveries: Sequence[Delivery]) -> None:
        """Extend leases on the wrapped transport."""
        self.inner.extend_lease(deliveries)

    def check_time_limit(self, time_limit: float | None) -> bool:
        """The wrapped transport's answer."""
        return self.inner.check_time_limit(time_limit)

    def purge(self, queue: str) -> int:
        """Purge on the wrapped transport."""
        return self.inner.purge(queue)

    def size(self, queue: str) -> int:
        """Size on the wrapped transport."""
        return self.inner.size(queue)

    def delete_queue(self, queue: str) -> None:
        """Delete on the wrapped transport."""
        self.inner.delete_queue(queue)

    def queues(self) -> list[str]:
        """The wrapped transport's queues."""
        return self.inner.queues()

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The wrapped transport's dead letters."""
        return self.inner.dead_letters(queue, limit)

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Replay on the wrapped transport."""
        return self.inner.replay_dead_letters(queue, message_ids)

    def purge_dead_letters(self, queue: str) -> int:
        """Purge dead letters on the wrapped transport."""
        return self.inner.purge_dead_letters(queue)

    def broadcast(self, channel: str, body: bytes) -> None:
        """Broadcast on the wrapped transport."""
        self.inner.broadcast(channel, body)

    def subscribe(self, channel: str) -> Subscription:
        """Subscribe on the wrapped transport."""
        return self.inner.subscribe(channel)

    def create_schema(self) -> None:
        """The wrapped transport's schema."""
        self.inner.create_schema()

    def cleanup(self) -> int:
        """Clean up on the wrapped transport."""
        return self.inner.cleanup()

    def close(self) -> None:
        """Close the wrapped transport."""
        self.inner.close()


class NoDelayMemoryTransport(NoNativeDelay):
    """``nodelay+memory://name``: the memory broker without native delay."""

    capabilities: ClassVar[Capabilities] = _without_delay(MemoryTransport.capabilities)


class NoDelaySQLiteTransport(NoNativeDelay):
    """``nodelay+sqlite:///path``: the SQLite broker without native delay."""

    capabilities: ClassVar[Capabilities] = _without_delay(SQLTransport.capabilities)
