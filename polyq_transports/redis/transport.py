"""The Redis transport: a leased, prioritised, delayable queue on sorted sets and Lua.

:class:`RedisTransport` holds the contract's methods. Publishing, receiving and
settling a delivery (ack, nack, dead-letter, extend) are here, each one script call;
the scripts are in ``lua/`` (run by :mod:`.scripts`, publishes on the connections of
:mod:`.connections`), the key layout and message format in :mod:`.layout`, queue
inspection in :mod:`.queues`, dead letters in :mod:`.dead_letters`, pub/sub in
:mod:`.broadcast`. Why it is built this way: ``docs/design/redis.md``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import weakref
from collections.abc import Sequence
from typing import Any, ClassVar

import redis
from redis.exceptions import NoScriptError

from polyq.exceptions import ConfigurationError
from polyq.transport import (
    Capabilities,
    DeadLetter,
    Delivery,
    OutgoingMessage,
    ScheduledMessage,
    Transport,
)
from polyq.url import query_options, redact
from polyq_clients.redis import connect, translate_errors
from polyq_transports.redis.broadcast import RedisSubscription, channel_name
from polyq_transports.redis.connections import IdleConnections
from polyq_transports.redis.dead_letters import DeadLetters
from polyq_transports.redis.layout import MAX_MESSAGE_SIZE, KeySpace, pack, priority_of, unpack
from polyq_transports.redis.queues import Queues
from polyq_transports.redis.scripts import Scripts

__all__ = ["RedisTransport"]

logger = logging.getLogger(__name__)

# Options understood here, and Celery Redis transport options that mean nothing to
# this design (accepted so a ported configuration does not warn).
_KNOWN_OPTIONS = frozenset(
    {
        "visibility_timeout", "namespace", "global_keyprefix", "master_name", "sentinel_kwargs",
        "socket_timeout", "socket_connect_timeout", "socket_keepalive", "health_check_interval",
        "max_connections", "retries", "retry_on_timeout", "username", "password", "protocol",
        "ssl", "broker_use_ssl", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile",
        "ssl_keyfile", "ssl_check_hostname", "ssl_password", "client_name", "db",
        "connect_timeout",
    }
)  # fmt: skip
_IGNORED_CELERY_OPTIONS = frozenset(
    {
        "polling_interval", "fanout_prefix", "fanout_patterns", "priority_steps", "sep",
        "queue_order_strategy", "unacked_mutex_expire", "unacked_mutex_key", "unacked_key",
        "unacked_index_key", "unacked_restore_limit", "max_retries", "interval_start",
        "interval_step", "interval_max", "result_chord_ordered", "retry_policy",
    }
)  # fmt: skip


class RedisTransport(Transport):
    """The Redis broker plugin (``redis://``, ``rediss://``, ``redis+sentinel://``)."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=True,
        max_delay=None,
        max_message_size=MAX_MESSAGE_SIZE,
        broadcast=True,
        lease="timeout",
        extend_lease=True,
        dead_letter=True,
        inspect_scheduled=True,
        may_duplicate=False,
        transactional_enqueue=False,
        durable=True,
        exact_size=True,
    )

    #: Most messages one publish script carries; bigger batches are split (pipelined).
    publish_chunk = 500

    def __init__(self, url: str, **options: Any) -> None:
        options = {**options, **query_options(url)}
        super().__init__(url, **options)
        if self.visibility_timeout <= 0:
            raise ConfigurationError(
                f"visibility_timeout must be positive seconds, got {self.visibility_timeout}"
            )
        unknown = set(options) - _KNOWN_OPTIONS - _IGNORED_CELERY_OPTIONS
        if unknown:
            logger.warning(
                "Redis transport %s ignores unknown option(s): %s",
                redact(url),
                ", ".join(sorted(unknown)),
            )
        self.namespace = str(options.get("namespace", options.get("global_keyprefix", "polyq")))
        self.namespace = self.namespace.rstrip(":_") or "polyq"
        client, self.db = connect(url, options)
        # Typed loosely on purpose: redis-py annotates every reply as a union of all
        # shapes, while with decode_responses=False ours are known (bytes, ints, lists).
        self._client: Any = client
        socket_timeout = float(options.get("socket_timeout", 10.0))
        # Every BLPOP must return well before the socket times out.
        self._max_block = max(0.05, socket_timeout / 2)
        self._lease_ms = int(self.visibility_timeout * 1000)
        self._rotation = itertools.count()
        self._checked_server = False
        self._keys = KeySpace(self.namespace)
        self._now_keys: dict[str, list[str]] = {}
        self._listed: set[str] = set()
        self._subscriptions: weakref.WeakSet[RedisSubscription] = weakref.WeakSet()
        self._scripts = Scripts(client)
        # Publishing runs EVALSHA on connections of our own (see IdleConnections) unless
        # a max_connections cap is set, which only the pool can enforce.
        self._connections = IdleConnections(client, enabled="max_connections" not in options)
        self._queues = Queues(client, self._keys, self._scripts, url)
        self._dead_letters = DeadLetters(client, self._keys, self._scripts, url)

    def _errors(self, what: str) -> translate_errors:
        return translate_errors(self.url, what)

    # -- producing -------------------------------------------------------------------

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        """Store ``messages`` with one script per queue and chunk, pipelined."""
        if kwargs.get("connection") is not None:
            raise ConfigurationError(
                "the Redis transport cannot join a database transaction (connection=...)"
            )
        if len(messages) == 1:  # the common .delay(): no grouping to do
            message = messages[0]
            args: list[Any]
            with self._errors("publish a message"):
                if message.delay > 0:
                    args = [message.queue, 0, 1, *self._publish_args(message)]
                    self._connections.evalsha(
                        self._scripts.publish, self._publish_keys(message.queue, args), args
                    )
                    return
                queue = message.queue
                args = [queue, 0, min(9, max(0, int(message.priority))), pack(message)]
                keys = self._now_keys.get(queue)
                if keys is None:
                    k = self._keys.of(queue)
                    keys = [k.ready, k.msg, k.seq, k.notify, self._keys.queues]
                    self._now_keys[queue] = keys
                if queue not in self._listed:
                    self._listed.add(queue)
                    args[1] = 1
                self._connections.evalsha(self._scripts.publish_now, keys, args)
            return
        by_queue: dict[str, list[Any]] = {}
        for message in messages:
            by_queue.setdefault(message.queue, []).extend(self._publish_args(message))
        calls: list[tuple[list[str], list[Any]]] = []
        step = self.publish_chunk * 3
        for queue, triples in by_queue.items():
            for start in range(0, len(triples), step):
                chunk = triples[start : start + step]
                args = [queue, 0, len(chunk) // 3, *chunk]
                calls.append((self._publish_keys(queue, args), args))
        if not calls:
            return
        with self._errors(f"publish {len(messages)} messages"):
            self._scripts.run([(self._scripts.publish, keys, args) for keys, args in calls])

    @staticmethod
    def _publish_args(message: OutgoingMessage) -> tuple[int, int, bytes]:
        priority = min(9, max(0, int(message.priority)))
        return priority, max(0, round(message.delay * 1000)), pack(message)

    def _publish_keys(self, queue: str, args: list[Any]) -> list[str]:
        """The script's keys; asks it to list ``queue`` the first time this
        instance publishes there (one ``SADD`` fewer per message after that)."""
        if queue not in self._listed:
            self._listed.add(queue)
            args[1] = 1
        k = self._keys.of(queue)
        return [k.ready, k.delayed, k.msg, k.seq, k.notify, self._keys.queues]

    # -- consuming -------------------------------------------------------------------

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """Lease up to ``max_messages`` in one script call; block on the queues'
        ``notify`` lists (never past ``wait``) when none is ready."""
        if not queues or max_messages <= 0:
            return []
        if not self._checked_server:
            self._checked_server = True
            self.check_server()
        # Rotate which queue is served first, so none is starved.
        shift = next(self._rotation) % len(queues)
        order = list(queues[shift:]) + list(queues[:shift])
        keys: list[str] = []
        for queue in order:
            k = self._keys.of(queue)
            keys += [k.ready, k.delayed, k.leased, k.msg, k.count, k.notify]
        notify = keys[5::6]
        args = [len(order), max_messages, self._lease_ms]
        deadline = time.monotonic() + max(0.0, wait)
        what = f"receive from {', '.join(order)}"
        with self._errors(what):
            reply = self._scripts.receive(keys=keys, args=args)
        while len(reply) <= 2:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            block = min(remaining, self._max_block)
            next_due, now = int(reply[0]), int(reply[1])
            if next_due >= 0:
                block = min(block, max(0.0, (next_due - now) / 1000 + 0.002))
            if block < 0.01:  # BLPOP's 0 means "forever": never send it
                with self._errors(what):
                    reply = self._scripts.receive(keys=keys, args=args)
                continue
            # BLPOP and the receive script travel together: Redis runs the script
            # the moment BLPOP returns, so a wake-up costs no extra round trip.
            with self._errors(what):
                pipe = self._client.pipeline(transaction=False)
                pipe.blpop(notify, timeout=round(block, 3))
                pipe.evalsha(self._scripts.receive.sha, len(keys), *keys, *args)
                _, reply = pipe.execute(raise_on_error=False)
                if isinstance(reply, NoScriptError):
                    reply = self._scripts.receive(keys=keys, args=args)
                elif isinstance(reply, Exception):
                    raise reply
        return self._deliveries(order, reply)

    def _deliveries(self, order: Sequence[str], reply: list[Any]) -> list[Delivery]:
        deliveries = []
        for i in range(2, len(reply), 4):
            member = reply[i + 1].decode()
            message_id, headers, body = unpack(reply[i + 3])
            deliveries.append(
                Delivery(
                    queue=order[int(reply[i])],
                    message_id=message_id,
                    body=body,
                    headers=headers,
                    delivery_count=int(reply[i + 2]),
                    receipt=(member, int(reply[i + 2])),
                    priority=priority_of(member),
                )
            )
        return deliveries

    @staticmethod
    def _by_queue(deliveries: Sequence[Delivery]) -> dict[str, list[str]]:
        grouped: dict[str, list[str]] = {}
        for delivery in deliveries:
            member, count = delivery.receipt
            grouped.setdefault(delivery.queue, []).extend((member, str(count)))
        return grouped

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete the messages; one script per queue, pipelined into one round trip."""
        grouped = self._by_queue(deliveries)
        if not grouped:
            return
        with self._errors(f"ack {len(deliveries)} message(s)"):
            self._scripts.run(
                [
                    (self._scripts.ack, [k.ready, k.delayed, k.leased, k.msg, k.count], args)
                    for k, args in ((self._keys.of(q), args) for q, args in grouped.items())
                ]
            )

    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Return the message to ``ready`` (or ``delayed`` for ``delay`` seconds)."""
        member, count = delivery.receipt
        k = self._keys.of(delivery.queue)
        delay_ms = max(0, round(delay * 1000))
        with self._errors(f"nack message {delivery.message_id}"):
            self._scripts.nack(
                keys=[k.ready, k.delayed, k.leased, k.count, k.notify],
                args=[member, str(count), delay_ms],
            )

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move the message to its queue's dead letters with ``reason``."""
        member, count = delivery.receipt
        k = self._keys.of(delivery.queue)
        with self._errors(f"dead-letter message {delivery.message_id}"):
            self._scripts.dead_letter(
                keys=[k.ready, k.delayed, k.leased, k.count, k.dead, k.deadinfo],
                args=[member, str(count), reason],
            )

    def extend_lease(self, deliveries: Sequence[Delivery]) -> None:
        """Push every held lease to ``visibility_timeout`` from now (server clock)."""
        grouped = self._by_queue(deliveries)
        if not grouped:
            return
        with self._errors(f"extend the lease of {len(deliveries)} message(s)"):
            self._scripts.run(
                [
                    (self._scripts.extend, [k.ready, k.leased, k.count], [self._lease_ms, *args])
                    for k, args in ((self._keys.of(q), args) for q, args in grouped.items())
                ]
            )

    # -- queues: see queues.py ----------------------------------------------------------

    def purge(self, queue: str) -> int:
        """Delete the ready and delayed messages of ``queue`` (not leased ones)."""
        return self._queues.purge(queue)

    def size(self, queue: str) -> int:
        """Ready + delayed + leased messages of ``queue``."""
        return self._queues.size(queue)

    def queues(self) -> list[str]:
        """Every queue ever published to under this namespace and database."""
        return self._queues.names()

    def scheduled(self, queue: str, limit: int = 100) -> list[ScheduledMessage]:
        """Delayed messages of ``queue``, soonest first."""
        return self._queues.scheduled(queue, limit)

    # -- dead letters: see dead_letters.py ------------------------------------------------

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of ``queue``, oldest first."""
        return self._dead_letters.read(queue, limit)

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Put dead letters back in ``ready`` with a fresh delivery count."""
        return self._dead_letters.replay(queue, message_ids)

    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue`` for good."""
        return self._dead_letters.purge(queue)

    # -- broadcast: see broadcast.py ------------------------------------------------------

    def broadcast(self, channel: str, body: bytes) -> None:
        """``PUBLISH`` on the namespaced channel (fire and forget)."""
        with self._errors(f"broadcast on {channel!r}"):
            self._client.publish(channel_name(self.namespace, self.db, channel), body)

    def subscribe(self, channel: str) -> RedisSubscription:
        """Listen on ``channel``; returns once Redis confirmed the subscription."""
        subscription = RedisSubscription(
            self._client.pubsub(),
            channel_name(self.namespace, self.db, channel),
            self.url,
            self._max_block * 2,
        )
        self._subscriptions.add(subscription)
        return subscription

    # -- lifecycle -------------------------------------------------------------------

    def check_server(self) -> None:
        """Log a warning when the server's eviction policy can delete queue keys.

        Called by the first ``receive`` (that is, at worker start). Managed Redis
        services often deny ``CONFIG``; the check is then skipped quietly.
        """
        try:
            reply = self._client.config_get("maxmemory-policy")
        except redis.ResponseError:
            logger.debug("CONFIG GET denied by %s; eviction policy not checked", self.describe())
            return
        except redis.RedisError as exc:
            logger.debug("could not check the eviction policy of %s: %s", self.describe(), exc)
            return
        decoded = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in reply.items()
        }
        policy = decoded.get("maxmemory-policy", "")
        if policy.startswith("allkeys"):
            logger.warning(
                "Redis at %s has maxmemory-policy=%s: under memory pressure it can evict "
                "queue keys and lose messages. Use noeviction (or a volatile-* policy) for "
                "the broker database.",
                self.describe(),
                policy,
            )

    def close(self) -> None:
        """Close open subscriptions and the connection pool; idempotent."""
        for subscription in list(self._subscriptions):
            subscription.close()
        self._connections.close()
        with contextlib.suppress(redis.RedisError):
            self._client.close()
            self._client.connection_pool.disconnect()

    def describe(self) -> str:
        """``redis://host:port/db`` with credentials redacted, and the namespace."""
        return f"{redact(self.url)} (namespace {self.namespace!r})"
