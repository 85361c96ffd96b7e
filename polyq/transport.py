"""The broker contract: what every transport plugin promises the core.

A transport moves opaque messages (``bytes`` body, ``str`` headers, a message id)
between producers and workers. It knows nothing about tasks, retries or results:
the core encodes those into the envelope (:mod:`polyq.message`). Every point below
is checked by the conformance suite in :mod:`polyq.testing.conformance`.

Times are seconds as ``float``. Priorities are 0..9 and **higher runs first**.

Abstract methods are the minimum every plugin implements. The others are optional:
each has a default that is correct for a broker without the feature (a no-op, an
empty answer, or :class:`UnsupportedCapability` naming the capability), and a plugin
overrides the ones its :class:`Capabilities` (:mod:`polyq.capabilities`) declare.
The core calls only what is declared here, never a plugin-specific method.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar

from polyq.capabilities import Capabilities, UnsupportedCapability

__all__ = [
    "Capabilities",
    "DeadLetter",
    "Delivery",
    "OutgoingMessage",
    "ScheduledMessage",
    "Subscription",
    "Transport",
    "UnsupportedCapability",
]


@dataclasses.dataclass(frozen=True)
class OutgoingMessage:
    """One message to publish; see :meth:`Transport.publish`."""

    queue: str
    body: bytes
    message_id: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0
    priority: int = 0


@dataclasses.dataclass
class Delivery:
    """A received, leased message. Hand it back to ``ack``/``nack``/``dead_letter``."""

    queue: str
    message_id: str
    body: bytes
    headers: dict[str, str]
    #: 1 on the first delivery, raised by each redelivery (lease end, nack, crash).
    delivery_count: int
    #: The plugin's private handle (row id + lease token, receipt handle, tag...).
    receipt: Any = None
    priority: int = 0


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """A message the core gave up on, with the reason it gave."""

    queue: str
    message_id: str
    body: bytes
    headers: dict[str, str]
    reason: str
    #: Unix time it was dead-lettered.
    failed_at: float
    #: The plugin's handle for ``replay_dead_letters``.
    receipt: Any = None


@dataclasses.dataclass(frozen=True)
class ScheduledMessage:
    """A delayed message still waiting in the broker (``inspect scheduled``)."""

    queue: str
    message_id: str
    headers: dict[str, str]
    #: Unix time at which it becomes deliverable.
    eta: float
    priority: int = 0


class Subscription(abc.ABC):
    """A listener on a broadcast channel, opened by :meth:`Transport.subscribe`."""

    @abc.abstractmethod
    def get(self, timeout: float) -> bytes | None:
        """Return the next broadcast body, waiting up to ``timeout`` seconds;
        ``None`` when nothing arrived. Messages broadcast after ``subscribe``
        returned are never skipped while the subscription is open."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop listening and free the broker's resources; idempotent."""

    def __iter__(self) -> Iterator[bytes]:
        """Yield broadcasts forever (until ``close``), waiting one second at a time."""
        while True:
            body = self.get(1.0)
            if body is not None:
                yield body

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Transport(abc.ABC):
    """A broker plugin. One instance is used by one process; it must be safe to
    call from several threads of that process. Never carry one across ``fork``:
    the core builds a new one in each child.

    Plugins take their settings from the URL's query string and from
    ``broker_transport_options`` (passed as ``options``); ``visibility_timeout``
    (seconds, default 1800) is understood by every time-leased transport.
    """

    #: Declared by each plugin, every field spelled out (the defaults claim
    #: nothing); see :class:`Capabilities`.
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.options = options
        self.visibility_timeout: float = float(options.get("visibility_timeout", 1800.0))

    # -- producing -------------------------------------------------------------

    @abc.abstractmethod
    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        """Durably enqueue ``messages`` (a batch; send it in as few round trips as
        the broker allows).

        When this returns, every message is stored (committed, confirmed) and
        will be delivered: a message with ``delay > 0`` not before ``delay``
        seconds from now and soon after; a short delay is never held up behind a
        longer one. ``priority`` is 0..9, higher delivered first, where
        ``capabilities.priority``. Body, headers and ``message_id`` arrive exactly
        as sent. A queue that does not exist yet is created.

        Raises :class:`polyq.exceptions.MessageTooLarge` before sending anything
        that exceeds ``capabilities.max_message_size``, and
        :class:`polyq.exceptions.BrokerError` when the broker cannot be reached or
        refuses. Never drops a message silently. ``kwargs`` carries
        plugin-specific options (``connection=`` for transactional enqueue).
        """

    # -- consuming -------------------------------------------------------------

    @abc.abstractmethod
    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """Lease up to ``max_messages`` ready messages from ``queues``.

        Higher priority first, then oldest first; with several queues, none is
        starved. Blocks up to ``wait`` seconds when nothing is ready (without
        busy-polling the broker) and returns ``[]`` then. Each delivery is
        invisible to every other consumer until it is acked, nacked or
        dead-lettered, or its lease ends (``visibility_timeout`` seconds, or the
        connection closes for connection-bound leases); then it is delivered
        again with ``delivery_count`` raised.
        """

    @abc.abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove the messages for good (grouped in one round trip where possible).
        Acking a delivery twice, or one whose lease was lost, is not an error."""

    @abc.abstractmethod
    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Give the message back: deliverable again after ``delay`` seconds (now
        when 0), its ``delivery_count`` raised on the next delivery."""

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to the dead letters of its queue, keeping body,
        headers, id and ``reason``; it is not delivered again unless replayed."""

    def extend_lease(self, deliveries: Sequence[Delivery]) -> None:
        """Restart the lease of each held delivery at ``visibility_timeout``
        seconds from now. The worker calls this for every message it holds,
        running or prefetched, whatever the capabilities say.

        Optional: a plugin that declares ``capabilities.extend_lease`` overrides
        it. The default does nothing, which is right for connection-bound leases
        and for a broker without extension (whose worker must then finish within
        ``visibility_timeout``); declaring ``extend_lease`` without overriding it
        raises :class:`UnsupportedCapability`."""
        if self.capabilities.lease == "timeout" and self.capabilities.extend_lease:
            raise UnsupportedCapability(
                f"{type(self).__name__} declares capabilities.extend_lease but does not "
                "implement extend_lease"
            )

    def check_time_limit(self, time_limit: float | None) -> bool:
        """Say whether a task's hard ``time_limit`` (seconds; ``None``: no limit)
        is safe on this broker; the worker calls it once at start with
        ``task_time_limit``.

        Optional: a broker with its own delivery timeout (RabbitMQ's
        ``consumer_timeout``, which closes the channel of a consumer holding a
        message longer) overrides it to log a warning naming the fix and return
        ``False`` when a task may outlive that timeout. It must not raise for an
        unsafe limit: the worker still starts. The default, for brokers without
        such a timeout, accepts every limit (``True``)."""
        return True

    # -- queues ----------------------------------------------------------------

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Delete every message waiting in ``queue``, ready or delayed (not those
        leased right now); return how many were removed."""

    @abc.abstractmethod
    def size(self, queue: str) -> int:
        """Count messages in ``queue``: ready, delayed and leased (approximate
        where the broker only knows an approximation)."""

    def delete_queue(self, queue: str) -> None:
        """Remove ``queue`` and everything waiting in it (ready, delayed and its
        dead letters), leaving nothing of it in the broker; publishing to it again
        creates it anew. Tests and tear-downs use it.

        Optional: the default purges the queue and its dead letters, which is a
        complete deletion for brokers whose queues exist only as their messages
        (Redis keys, SQL rows). Brokers with queue objects (RabbitMQ, SQS)
        override it to delete those too."""
        self.purge(queue)
        if self.capabilities.dead_letter:
            self.purge_dead_letters(queue)

    def queues(self) -> list[str]:
        """Names of the queues the broker knows about (best effort; the default
        knows none)."""
        return []

    def scheduled(self, queue: str, limit: int = 100) -> list[ScheduledMessage]:
        """Delayed messages waiting in ``queue``, soonest first, at most ``limit``.

        Optional, with ``capabilities.inspect_scheduled``; the default (and any
        plugin without it) lists nothing."""
        return []

    # -- dead letters ----------------------------------------------------------

    # Optional, with ``capabilities.dead_letter``. A plugin without it keeps no dead
    # letters, so the defaults below (nothing listed, replayed or removed) are true.

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The dead letters of ``queue``, oldest first, at most ``limit``."""
        return []

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Put dead letters (all, or those with ``message_ids``) back on ``queue``
        with their body, headers and id; return how many were replayed."""
        return 0

    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue``; return how many were removed."""
        return 0

    # -- broadcast -------------------------------------------------------------

    def broadcast(self, channel: str, body: bytes) -> None:
        """Send ``body`` to every current subscriber of ``channel`` (fire and
        forget: a subscriber that is not listening now does not get it).

        Optional, with ``capabilities.broadcast``; the default raises
        :class:`UnsupportedCapability`."""
        raise UnsupportedCapability(
            f"{type(self).__name__} does not support broadcast (capabilities.broadcast)"
        )

    def subscribe(self, channel: str) -> Subscription:
        """Start listening on ``channel``; see :class:`Subscription`.

        Optional, with ``capabilities.broadcast``; the default raises
        :class:`UnsupportedCapability`."""
        raise UnsupportedCapability(
            f"{type(self).__name__} does not support broadcast (capabilities.broadcast)"
        )

    # -- administration --------------------------------------------------------

    def create_schema(self) -> None:
        """Create or upgrade the broker's own storage (tables, indexes; ``polyq db
        init``), idempotent and safe while other processes use the broker.

        Optional: the default, for brokers that need no setup, does nothing."""

    def cleanup(self) -> int:
        """Delete the broker's stale bookkeeping now (old broadcast rows of a SQL
        broker; ``polyq db cleanup``) without touching any message; return how
        many records were removed.

        Optional: the default, for brokers that expire their own, removes
        nothing and returns 0."""
        return 0

    # -- lifecycle -------------------------------------------------------------

    def close(self) -> None:
        """Release connections; idempotent. Connection-bound leases end here."""

    def describe(self) -> str:
        """A one-line description for logs, with credentials redacted."""
        from polyq.url import redact

        return redact(self.url)

    def __enter__(self) -> Transport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
