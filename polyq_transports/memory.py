"""``memory://``: an in-process broker, and the reference transport to read first.

It keeps every promise of :mod:`polyq.transport` with every capability declared,
so it is both the broker for tests and single-process apps and the model for a
plugin author.

URL
    ``memory://`` or ``memory://<name>``. Every transport with the same name in one
    process talks to the same broker; different names are different brokers.
    The query string carries options (``memory://jobs?visibility_timeout=30``).

Options
    ``visibility_timeout`` (seconds, default 1800): the lease of a received message.

Design
    The broker is a :class:`MemoryBroker` object, kept in a module-level registry by
    name. That registry is the one piece of module state, and it is deliberate: the
    store *is* the broker, so it must outlive any transport instance, exactly as a
    Redis server outlives a client (close a transport, open another on the same URL,
    and the messages are still there). A forked child starts with no brokers: an
    in-process store cannot be shared between processes.

    One lock guards the whole broker, and one condition variable on that lock wakes
    consumers when a message becomes ready. Each queue holds:

    * ``ready``: a heap ordered by (-priority, publish order): higher priority first,
      then oldest first;
    * ``delayed``: a heap ordered by due time, so a short delay published after a
      long one comes out first;
    * ``leases``: a heap ordered by lease deadline, so expired leases are found
      without scanning;
    * ``dead``: the dead letters, oldest first.

    Heaps cannot delete from the middle, so entries are invalidated instead: each
    message carries a generation number bumped on every state change, and a heap
    entry whose generation is stale is skipped when it surfaces. Due delayed
    messages and expired leases are moved to ``ready`` lazily, by the consumer that
    next looks; a waiting consumer sleeps on the condition until the earliest such
    deadline, never polling.

    A delivery's ``receipt`` is ``(message, lease token)``. Each lease has a fresh
    token, so an ack from a consumer whose lease ended and whose message was since
    leased to another consumer does nothing (at-least-once, never a lost message).

Capabilities
    priority, unbounded delay, no size limit, broadcast, time-based leases with
    extension, dead letters, scheduled inspection. Messages outlive every transport
    instance but not the process.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar
from urllib.parse import urlsplit

from polyq.exceptions import BrokerError
from polyq.transport import (
    Capabilities,
    DeadLetter,
    Delivery,
    OutgoingMessage,
    ScheduledMessage,
    Subscription,
    Transport,
)

__all__ = ["MemoryBroker", "MemoryTransport", "broker_for"]


@dataclasses.dataclass(eq=False)
class _Message:
    queue: str
    message_id: str
    body: bytes
    headers: dict[str, str]
    priority: int
    #: Publish order: the tie-breaker that makes equal priorities FIFO.
    seq: int
    state: str = "ready"  # ready | delayed | leased | gone
    #: Bumped on every state change; heap entries with an older one are stale.
    gen: int = 0
    deliveries: int = 0
    token: int | None = None
    #: Monotonic due time (delayed) or lease deadline (leased).
    due: float = 0.0


@dataclasses.dataclass
class _Queue:
    ready: list[tuple[int, int, int, _Message]] = dataclasses.field(default_factory=list)
    delayed: list[tuple[float, int, int, _Message]] = dataclasses.field(default_factory=list)
    leases: list[tuple[float, int, int, _Message]] = dataclasses.field(default_factory=list)
    dead: list[DeadLetter] = dataclasses.field(default_factory=list)
    #: Every message not yet acked or dead-lettered, for size and purge.
    live: set[_Message] = dataclasses.field(default_factory=set)


class MemoryBroker:
    """The shared state of one ``memory://<name>`` broker. Thread-safe."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queues: dict[str, _Queue] = {}
        self.channels: dict[str, set[_MemorySubscription]] = {}
        self._seq = itertools.count()
        self._tokens = itertools.count(1)

    # Every method below expects ``self.cond`` to be held by the caller.

    def queue(self, name: str) -> _Queue:
        """The queue called ``name``, created on first use."""
        return self.queues.setdefault(name, _Queue())

    def put(self, msg: _Message, delay: float) -> None:
        """Make ``msg`` ready now, or after ``delay`` seconds."""
        q = self.queue(msg.queue)
        q.live.add(msg)
        msg.gen += 1
        msg.token = None
        if delay > 0:
            msg.state, msg.due = "delayed", time.monotonic() + delay
            heapq.heappush(q.delayed, (msg.due, msg.seq, msg.gen, msg))
        else:
            msg.state = "ready"
            heapq.heappush(q.ready, (-msg.priority, msg.seq, msg.gen, msg))
        self.cond.notify_all()

    def promote(self, q: _Queue, now: float) -> None:
        """Move due delayed messages and expired leases to ``ready``."""
        for heap, state in ((q.delayed, "delayed"), (q.leases, "leased")):
            while heap and heap[0][0] <= now:
                _, _, gen, msg = heapq.heappop(heap)
                if msg.gen == gen and msg.state == state:
                    msg.state = "ready"
                    msg.gen += 1
                    # The token survives: an ack from the lapsed lease still counts
                    # until another consumer leases the message.
                    heapq.heappush(q.ready, (-msg.priority, msg.seq, msg.gen, msg))

    def lease(self, q: _Queue, visibility_timeout: float) -> _Message | None:
        """Lease the first ready message of ``q`` under a fresh token, if any."""
        while q.ready:
            _, _, gen, msg = heapq.heappop(q.ready)
            if msg.gen == gen and msg.state == "ready":
                msg.state, msg.token = "leased", next(self._tokens)
                msg.deliveries += 1
                self.extend(q, msg, visibility_timeout)
                return msg
        return None

    def extend(self, q: _Queue, msg: _Message, visibility_timeout: float) -> None:
        """(Re)start the lease of ``msg`` at ``visibility_timeout`` from now."""
        msg.gen += 1
        msg.due = time.monotonic() + visibility_timeout
        heapq.heappush(q.leases, (msg.due, msg.seq, msg.gen, msg))

    def next_deadline(self, queues: Sequence[str]) -> float | None:
        """The earliest time a delayed message or a lease in ``queues`` falls due."""
        times = [
            heap[0][0]
            for name in queues
            if (q := self.queues.get(name))
            for heap in (q.delayed, q.leases)
            if heap
        ]
        return min(times, default=None)

    def holds(self, delivery: Delivery) -> _Message | None:
        """The message of ``delivery`` if its lease is still the latest one."""
        msg, token = delivery.receipt
        if msg.token == token and msg.state in ("leased", "ready"):
            return msg  # type: ignore[no-any-return]
        return None

    def remove(self, msg: _Message) -> None:
        """Forget ``msg`` (acked or dead-lettered)."""
        msg.state, msg.token = "gone", None
        msg.gen += 1
        self.queue(msg.queue).live.discard(msg)

    def new_message(self, m: OutgoingMessage) -> _Message:
        """The broker's record of an outgoing message, numbered in publish order."""
        return _Message(m.queue, m.message_id, m.body, dict(m.headers), m.priority, next(self._seq))


# The broker registry: one broker per name, for the life of the process (see above).
_brokers: dict[str, MemoryBroker] = {}
_brokers_lock = threading.Lock()


def broker_for(url: str) -> MemoryBroker:
    """The broker shared by every ``memory://`` URL with the same name."""
    name = urlsplit(url).netloc
    with _brokers_lock:
        return _brokers.setdefault(name, MemoryBroker())


def _forget_brokers_after_fork() -> None:
    # A lock held by another thread at fork time would stay locked forever in the
    # child; the parent's messages are not the child's anyway.
    global _brokers_lock
    _brokers_lock = threading.Lock()
    _brokers.clear()


os.register_at_fork(after_in_child=_forget_brokers_after_fork)


class _MemorySubscription(Subscription):
    def __init__(self, broker: MemoryBroker, channel: str) -> None:
        self._broker, self._channel = broker, channel
        self._inbox: deque[bytes] = deque()
        self._cond = threading.Condition()

    def deliver(self, body: bytes) -> None:
        with self._cond:
            self._inbox.append(body)
            self._cond.notify_all()

    def get(self, timeout: float) -> bytes | None:
        with self._cond:
            self._cond.wait_for(lambda: self._inbox, timeout)
            return self._inbox.popleft() if self._inbox else None

    def close(self) -> None:
        with self._broker.cond:
            self._broker.channels.get(self._channel, set()).discard(self)


class MemoryTransport(Transport):
    """The in-process broker; see the module docstring."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=True,
        max_delay=None,
        max_message_size=None,
        broadcast=True,
        lease="timeout",
        extend_lease=True,
        dead_letter=True,
        inspect_scheduled=True,
        may_duplicate=False,
        transactional_enqueue=False,
        # Outlives every transport instance, though not the process (the contract's
        # "where the broker persists").
        durable=True,
        exact_size=True,
    )

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._broker = broker_for(url)
        self._closed = False
        # Rotates which queue is served first, so no queue of several is starved.
        self._turn = itertools.count()

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        """Store ``messages``; they are ready at once or after their delay."""
        self._check_open()
        for m in messages:
            if not 0 <= m.priority <= 9:
                raise ValueError(f"priority must be 0..9, got {m.priority} ({m.message_id})")
        with self._broker.cond:
            for m in messages:
                self._broker.put(self._broker.new_message(m), m.delay)

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """Lease up to ``max_messages``, taking one from each queue in turn."""
        self._check_open()
        broker, deadline = self._broker, time.monotonic() + wait
        start = next(self._turn) % max(len(queues), 1)
        with broker.cond:
            order = [broker.queue(name) for name in [*queues[start:], *queues[:start]]]
            while True:
                now = time.monotonic()
                for q in order:
                    broker.promote(q, now)
                taken = self._take(order, max_messages)
                if taken or now >= deadline:
                    return [self._delivery(msg) for msg in taken]
                due = broker.next_deadline(queues)
                broker.cond.wait((min(deadline, due) if due else deadline) - now)

    def _take(self, order: list[_Queue], max_messages: int) -> list[_Message]:
        """Lease up to ``max_messages``, one from each queue in turn."""
        taken: list[_Message] = []
        while len(taken) < max_messages:
            before = len(taken)
            for q in order:
                msg = self._broker.lease(q, self.visibility_timeout)
                if msg is not None:
                    taken.append(msg)
                    if len(taken) == max_messages:
                        break
            if len(taken) == before:
                break
        return taken

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove the messages; a stale or repeated ack does nothing."""
        with self._broker.cond:
            for d in deliveries:
                if msg := self._broker.holds(d):
                    self._broker.remove(msg)

    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Make the message deliverable again, now or after ``delay``."""
        with self._broker.cond:
            if msg := self._broker.holds(delivery):
                self._broker.put(msg, delay)

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to its queue's dead letters with ``reason``."""
        with self._broker.cond:
            if msg := self._broker.holds(delivery):
                self._broker.remove(msg)
                letter = DeadLetter(
                    msg.queue, msg.message_id, msg.body, dict(msg.headers), reason, time.time(), msg
                )
                self._broker.queue(msg.queue).dead.append(letter)

    def extend_lease(self, deliveries: Sequence[Delivery]) -> None:
        """Restart each held lease at ``visibility_timeout`` from now."""
        with self._broker.cond:
            for d in deliveries:
                msg = self._broker.holds(d)
                if msg and msg.state == "leased":
                    self._broker.extend(self._broker.queue(msg.queue), msg, self.visibility_timeout)

    def purge(self, queue: str) -> int:
        """Remove ready and delayed messages (leased ones stay with their holder)."""
        with self._broker.cond:
            q = self._broker.queue(queue)
            waiting = [m for m in q.live if m.state in ("ready", "delayed")]
            for msg in waiting:
                self._broker.remove(msg)
            return len(waiting)

    def size(self, queue: str) -> int:
        """Ready, delayed and leased messages in ``queue``."""
        with self._broker.cond:
            return len(self._broker.queue(queue).live)

    def queues(self) -> list[str]:
        """Every queue this broker has seen."""
        with self._broker.cond:
            return sorted(self._broker.queues)

    def scheduled(self, queue: str, limit: int = 100) -> list[ScheduledMessage]:
        """Delayed messages, soonest first, with their wall-clock ETA."""
        offset = time.time() - time.monotonic()
        with self._broker.cond:
            q = self._broker.queue(queue)
            waiting = sorted((m for m in q.live if m.state == "delayed"), key=lambda m: m.due)
            return [
                ScheduledMessage(m.queue, m.message_id, dict(m.headers), m.due + offset, m.priority)
                for m in waiting[:limit]
            ]

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The dead letters of ``queue``, oldest first."""
        with self._broker.cond:
            return list(self._broker.queue(queue).dead[:limit])

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Put dead letters back on ``queue`` as fresh messages."""
        wanted = None if message_ids is None else set(message_ids)
        with self._broker.cond:
            q = self._broker.queue(queue)
            replay = [d for d in q.dead if wanted is None or d.message_id in wanted]
            q.dead = [d for d in q.dead if d not in replay]
            for letter in replay:
                msg: _Message = letter.receipt
                msg.deliveries = 0
                self._broker.put(msg, 0.0)
            return len(replay)

    def purge_dead_letters(self, queue: str) -> int:
        """Forget the dead letters of ``queue``."""
        with self._broker.cond:
            q = self._broker.queue(queue)
            count, q.dead = len(q.dead), []
            return count

    def broadcast(self, channel: str, body: bytes) -> None:
        """Hand ``body`` to every open subscription on ``channel``."""
        self._check_open()
        with self._broker.cond:
            listeners = list(self._broker.channels.get(channel, ()))
        for sub in listeners:
            sub.deliver(body)

    def subscribe(self, channel: str) -> Subscription:
        """Listen on ``channel`` from now on."""
        self._check_open()
        sub = _MemorySubscription(self._broker, channel)
        with self._broker.cond:
            self._broker.channels.setdefault(channel, set()).add(sub)
        return sub

    def close(self) -> None:
        """Detach from the broker; its messages stay for the next transport."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise BrokerError(f"the transport for {self.url} is closed; create a new one")

    def _delivery(self, msg: _Message) -> Delivery:
        return Delivery(
            queue=msg.queue,
            message_id=msg.message_id,
            body=msg.body,
            headers=dict(msg.headers),
            delivery_count=msg.deliveries,
            receipt=(msg, msg.token),
            priority=msg.priority,
        )
