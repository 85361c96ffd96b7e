"""The SQS transport's contract methods: publish, receive, ack, nack, extend_lease,
and the delegation of the rest to the package's other modules. Options are read
here; design: ``docs/design/sqs.md``."""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

import botocore.exceptions

from polyq.exceptions import BrokerError, ConfigurationError, MessageTooLarge
from polyq.transport import (
    Capabilities,
    DeadLetter,
    Delivery,
    OutgoingMessage,
    Subscription,
    Transport,
)
from polyq.url import redact, split_url
from polyq_clients import aws
from polyq_clients.aws import error_code
from polyq_transports.sqs.broadcast import Broadcasts
from polyq_transports.sqs.dead_letters import DeadLetters
from polyq_transports.sqs.delays import Delays
from polyq_transports.sqs.queues import (
    GONE,
    MISSING_QUEUE,
    SQSQueues,
    base_name,
    is_fifo,
    parse_steps,
    sqs_name,
)
from polyq_transports.sqs.wire import (
    BATCH,
    DEFAULT_MAX_SIZE,
    ENVELOPE,
    LARGEST_SIZE,
    NATIVE_DELAY_LIMIT,
    VISIBILITY_LIMIT,
    Receipt,
    body_limit,
    decode,
    encode,
    whole_seconds,
)

__all__ = ["SQSTransport"]

log = logging.getLogger("polyq_transports.sqs")

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _guarded(method: _Method) -> _Method:
    """A contract method whose botocore errors, wherever raised inside it, leave as
    :class:`BrokerError` (:class:`BrokerRefused` for refused credentials): the
    core retries and reports on polyq's errors only."""

    @functools.wraps(method)
    def guarded(self: SQSTransport, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except botocore.exceptions.ClientError as exc:
            raise aws.refused("SQS", self.describe(), method.__name__, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise BrokerError(f"SQS at {self.describe()}: {method.__name__} failed: {exc}") from exc

    return cast(_Method, guarded)


class SQSTransport(Transport):
    """Amazon SQS broker; see ``docs/design/sqs.md`` for the design and
    ``docs/brokers.md`` for the URL and options."""

    capabilities = Capabilities(
        priority=False,
        max_delay=float(NATIVE_DELAY_LIMIT),
        max_message_size=body_limit(DEFAULT_MAX_SIZE),
        broadcast=True,
        lease="timeout",
        extend_lease=True,
        dead_letter=True,
        inspect_scheduled=False,
        may_duplicate=True,
        transactional_enqueue=False,
        durable=True,
        exact_size=False,
    )

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        parts = split_url(url)  # Celery's sqs://KEY:SECRET@ with "/" in the secret
        if parts.path not in ("", "/"):
            raise ConfigurationError(
                f"{redact(url)}: an sqs:// URL has no path; give the region and queue "
                "prefix as query options, e.g. sqs://?region=eu-west-1&queue_name_prefix=app-"
            )
        self.prefix = str(options.get("queue_name_prefix", options.get("queue_prefix", "")))
        self.create_queues = bool(options.get("create_queues", True))
        self.wait_time_seconds = max(0, min(20, int(options.get("wait_time_seconds", 20))))
        self.max_native_delay = float(options.get("max_native_delay", NATIVE_DELAY_LIMIT))
        if not 1 <= self.max_native_delay <= NATIVE_DELAY_LIMIT:
            raise ConfigurationError(
                f"max_native_delay={self.max_native_delay!r}: SQS holds a message 1 to "
                f"{NATIVE_DELAY_LIMIT} seconds; pick a value in that range"
            )
        if not 0 <= self.visibility_timeout <= VISIBILITY_LIMIT:
            raise ConfigurationError(
                f"visibility_timeout={self.visibility_timeout!r}: SQS accepts 0 to "
                f"{VISIBILITY_LIMIT} seconds (12 hours)"
            )
        self.queue_max_size = int(options.get("max_message_size", DEFAULT_MAX_SIZE))
        if not 1024 < self.queue_max_size <= LARGEST_SIZE:
            raise ConfigurationError(
                f"max_message_size={self.queue_max_size!r}: SQS queues take 1024 to "
                f"{LARGEST_SIZE} bytes (262144 is AWS's default)"
            )
        # SQS takes whole seconds; rounded up so a lease never ends early.
        self._visibility = whole_seconds(self.visibility_timeout, VISIBILITY_LIMIT)
        changes: dict[str, Any] = {}
        if self.max_native_delay != NATIVE_DELAY_LIMIT:
            changes["max_delay"] = self.max_native_delay
        if self.queue_max_size != DEFAULT_MAX_SIZE:
            changes["max_message_size"] = body_limit(self.queue_max_size)
        # SQS deletes a message older than the queue's retention without a trace, so
        # queues polyq creates keep messages as long as SQS allows (14 days, not 4).
        self.retention = int(options.get("message_retention_period", 1_209_600))
        if not 60 <= self.retention <= 1_209_600:
            raise ConfigurationError(
                f"message_retention_period={self.retention!r}: SQS keeps messages 60 to "
                "1209600 seconds (14 days)"
            )
        self.default_group = options.get("message_group_id")
        steps = options.get("priority_steps")
        self.priority_steps = parse_steps(steps) if steps not in (None, "", False) else None
        if self.priority_steps:
            changes["priority"] = True
        self.broadcast_heartbeat = float(options.get("broadcast_heartbeat", 60.0))
        self.broadcast_orphan_age = float(options.get("broadcast_orphan_age", 600.0))
        if changes:
            # An instance attribute: the core hops ETAs, sizes messages and orders
            # priorities by these.
            self.capabilities = dataclasses.replace(  # type: ignore[misc]
                type(self).capabilities, **changes
            )

        region = options.get("region", options.get("region_name"))
        self._client: Any = aws.create_client(
            "sqs",
            url,
            options,
            region=region,
            endpoint=options.get("endpoint_url"),
            # Above the longest long poll, so a poll is never cut short by the client.
            read_timeout=30,
            label="SQS",
        )
        self.sqs_queues = SQSQueues(
            self._client,
            url,
            self.prefix,
            create_queues=self.create_queues,
            queue_max_size=self.queue_max_size,
            retention=self.retention,
            priority_steps=self.priority_steps,
        )
        self._sqs = self.sqs_queues
        self._delays = Delays(self._sqs, self.max_native_delay)
        self._dead_letters = DeadLetters(self._sqs, self.publish)
        self._broadcasts = Broadcasts(
            self._sqs, self.broadcast_heartbeat, self.broadcast_orphan_age
        )
        self._lock = threading.Lock()
        self._rotation = 0

    # -- producing ---------------------------------------------------------------

    @_guarded
    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        """Send ``messages`` with ``SendMessageBatch`` (10 per call, per queue).

        ``message_group_id=`` sets the FIFO group of messages without a
        ``MessageGroupId`` header. Every message is encoded and size-checked before
        the first is sent.
        """
        group = kwargs.get("message_group_id")
        now = time.time()
        outgoing: dict[str, list[tuple[dict[str, Any], int]]] = collections.defaultdict(list)
        raw_sizes: dict[str, int] = collections.defaultdict(int)
        for message in messages:
            sqs_name(message.queue)  # refuses a name SQS would not take, before any send
            fields: dict[str, Any] = {ENVELOPE: 1, "id": message.message_id}
            fields["h"] = dict(message.headers)
            if message.priority:
                fields["p"] = message.priority
            delay = max(0.0, float(message.delay))
            if delay > self.max_native_delay:
                fields["due"] = now + delay
                delay = self.max_native_delay
            target = self._sqs.band(message.queue, message.priority)
            entry: dict[str, Any] = {}
            if is_fifo(message.queue):
                group_id = str(
                    message.headers.get("MessageGroupId")
                    or group
                    or self.default_group
                    or sqs_name(message.queue)
                )
                if delay > 0:
                    # FIFO queues refuse per-message delays: wait in the delay queue.
                    fields["q"], fields["g"] = message.queue, group_id
                    target = base_name(message.queue) + "-delay"
                else:
                    entry["MessageGroupId"] = group_id
                    entry["MessageDeduplicationId"] = uuid.uuid4().hex
            if delay > 0:
                entry["DelaySeconds"] = whole_seconds(delay, int(self.max_native_delay))
            entry["MessageBody"] = encode(fields, message.body)
            outgoing[target].append((entry, len(entry["MessageBody"].encode("utf-8"))))
            raw = len(message.body) + len(message.message_id.encode())
            raw += sum(len(k.encode()) + len(v.encode()) for k, v in message.headers.items())
            raw_sizes[target] = max(raw_sizes[target], raw)
        urls = {queue: self._sqs.require_url(queue) for queue in outgoing}
        for queue, entries in outgoing.items():
            limit = self._sqs.max_size(queue, urls[queue])
            largest = max(size for _, size in entries)
            if raw_sizes[queue] > body_limit(limit) or largest > limit:
                raise MessageTooLarge(
                    f"a message for queue {queue!r} has {raw_sizes[queue]} bytes of body, "
                    f"id and headers ({largest} once encoded), over the "
                    f"{body_limit(limit)} bytes polyq allows on an SQS queue whose "
                    f"MaximumMessageSize is {limit} (binary bodies travel in base64, a "
                    "third larger); nothing was sent. Store large payloads elsewhere and "
                    "pass a reference, or use queues with a larger MaximumMessageSize "
                    "(up to 1 MiB: option max_message_size for queues polyq creates)"
                )
        for queue, entries in outgoing.items():
            self._sqs.send(queue, urls[queue], entries)

    # -- consuming ---------------------------------------------------------------

    @_guarded
    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """Lease up to ``max_messages`` messages (see *Receiving and leases* in
        ``docs/design/sqs.md``)."""
        if not queues or max_messages <= 0:
            return []
        deadline = time.monotonic() + max(0.0, wait)
        with self._lock:
            start = self._rotation % len(queues)
            self._rotation += 1
        order = list(queues[start:]) + list(queues[:start])
        for queue in order:
            if is_fifo(queue):
                self._delays.forward_due(queue)
        # Every (queue, SQS queue) to poll, highest priority band first.
        bands = {queue: self._sqs.bands(queue) for queue in order}
        urls = [
            (queue, self._sqs.require_url(bands[queue][level]))
            for level in range(len(bands[order[0]]))
            for queue in order
        ]
        found: list[Delivery] = []
        if len(urls) > 1:
            # What is ready everywhere first (higher bands first), so a busy queue
            # cannot starve another.
            for queue, url in urls:
                found += self._receive_from(queue, url, max_messages - len(found), 0)
                if len(found) >= max_messages:
                    return found
            if found:
                return found
        # Then a long poll on the first queue's lowest band, where most messages go.
        queue, url = urls[-len(order)]
        polled = len(urls) > 1  # the short polls above count as this call's poll
        while not found:
            remaining = deadline - time.monotonic()
            # SQS waits in whole seconds: rounded to the nearest, so ``wait=1`` long
            # polls for a second (waking as soon as a message comes) rather than
            # sleeping blind, at the price of overrunning ``wait`` by under half a second.
            poll = min(self.wait_time_seconds, int(remaining + 0.5))
            if poll < 1 and polled:
                # Nothing there and too little time left to long-poll: wait it out
                # rather than let a caller with a short ``wait`` spin on the API.
                time.sleep(max(0.0, remaining))
                return []
            found += self._receive_from(queue, url, max_messages, max(0, poll))
            polled = True
        # A full batch may hide more ready messages: take them without waiting.
        while len(found) < max_messages and len(found) % BATCH == 0:
            more = self._receive_from(queue, url, max_messages - len(found), 0)
            if not more:
                break
            found += more
        return found

    def _receive_from(self, queue: str, url: str, limit: int, wait: int) -> list[Delivery]:
        try:
            reply = self._sqs.call(
                "receive_message",
                QueueUrl=url,
                MaxNumberOfMessages=max(1, min(BATCH, limit)),
                WaitTimeSeconds=wait,
                VisibilityTimeout=self._visibility,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in MISSING_QUEUE:
                self._sqs.forget(queue)
            raise self._sqs.error(f"ReceiveMessage from {queue!r}", exc) from exc
        deliveries: list[Delivery] = []
        hops: list[tuple[dict[str, Any], bytes, dict[str, Any]]] = []
        for raw in reply.get("Messages", []):
            receipt = Receipt(url, raw["ReceiptHandle"], raw["MessageId"])
            count = int(raw.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            decoded = decode(raw["Body"])
            if decoded is None:
                # Not ours: delivered as is, so the core dead-letters it with a reason.
                deliveries.append(
                    Delivery(queue, raw["MessageId"], raw["Body"].encode(), {}, count, receipt)
                )
                continue
            fields, body = decoded
            if float(fields.get("due", 0)) > time.time():
                hops.append((fields, body, raw))
                continue
            deliveries.append(
                Delivery(
                    queue=queue,
                    message_id=str(fields["id"]),
                    body=body,
                    headers={str(k): str(v) for k, v in fields.get("h", {}).items()},
                    delivery_count=count,
                    receipt=receipt,
                    priority=int(fields.get("p", 0)),
                )
            )
        if hops:
            self._delays.hop(queue, url, hops)
        return deliveries

    @_guarded
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete the messages with ``DeleteMessageBatch``, grouped per queue."""
        by_url: dict[str, list[str]] = collections.defaultdict(list)
        for delivery in deliveries:
            receipt: Receipt = delivery.receipt
            by_url[receipt.queue_url].append(receipt.handle)
        for url, handles in by_url.items():
            self._sqs.delete(url, handles)

    @_guarded
    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Make the message visible again after ``delay`` (at most 12 hours)."""
        receipt: Receipt = delivery.receipt
        try:
            self._sqs.call(
                "change_message_visibility",
                QueueUrl=receipt.queue_url,
                ReceiptHandle=receipt.handle,
                VisibilityTimeout=whole_seconds(delay, VISIBILITY_LIMIT),
            )
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in GONE | MISSING_QUEUE:
                return  # the lease was lost: the message comes back by itself
            raise self._sqs.error(f"ChangeMessageVisibility on {delivery.queue!r}", exc) from exc

    @_guarded
    def extend_lease(self, deliveries: Sequence[Delivery]) -> None:
        """Restart each lease at ``visibility_timeout`` (``ChangeMessageVisibilityBatch``)."""
        by_url: dict[str, list[Delivery]] = collections.defaultdict(list)
        # A batch may not name a message twice: one entry per receipt handle.
        unique = {d.receipt.handle: d for d in deliveries}
        for delivery in unique.values():
            by_url[delivery.receipt.queue_url].append(delivery)
        for url, held in by_url.items():
            for i in range(0, len(held), BATCH):
                chunk = held[i : i + BATCH]
                try:
                    reply = self._sqs.call(
                        "change_message_visibility_batch",
                        QueueUrl=url,
                        Entries=[
                            {
                                "Id": str(n),
                                "ReceiptHandle": d.receipt.handle,
                                "VisibilityTimeout": self._visibility,
                            }
                            for n, d in enumerate(chunk)
                        ],
                    )
                except botocore.exceptions.ClientError as exc:
                    raise self._sqs.error("ChangeMessageVisibilityBatch", exc) from exc
                for failure in reply.get("Failed", []):
                    delivery = chunk[int(failure["Id"])]
                    log.warning(
                        "SQS could not extend the lease of message %s on %r (%s: %s); "
                        "SQS caps a message's visibility at 12 hours from its receipt, "
                        "and it may be delivered again",
                        delivery.message_id,
                        delivery.queue,
                        failure.get("Code"),
                        failure.get("Message"),
                    )

    @_guarded
    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Send the message with ``reason`` to ``<queue>-dlq``, then delete it."""
        self._dead_letters.dead_letter(delivery, reason)

    # -- queues (see .queues) ------------------------------------------------------

    @_guarded
    def size(self, queue: str) -> int:
        """SQS's approximate count of ready, delayed and in-flight messages."""
        total = sum(self._sqs.counts(band) for band in self._sqs.bands(queue))
        if is_fifo(queue):
            total += self._sqs.counts(base_name(queue) + "-delay")
        return total

    @_guarded
    def purge(self, queue: str) -> int:
        """``PurgeQueue`` (see ``docs/design/sqs.md``); returns the approximate count."""
        removed = sum(self._sqs.purge(band) for band in self._sqs.bands(queue))
        if is_fifo(queue):
            removed += self._sqs.purge(base_name(queue) + "-delay")
        return removed

    @_guarded
    def queues(self) -> list[str]:
        """The queues under the prefix, without polyq's dead-letter, delay and
        broadcast queues (names as SQS spells them)."""
        return self._sqs.names()

    # -- dead letters (see .dead_letters) --------------------------------------------

    @_guarded
    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The dead letters of ``queue``, oldest first (a scan of ``<queue>-dlq``)."""
        return self._dead_letters.dead_letters(queue, limit)

    @_guarded
    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Publish the chosen dead letters back on ``queue``, then delete them."""
        return self._dead_letters.replay_dead_letters(queue, message_ids)

    @_guarded
    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue`` (received and deleted, so the count is exact)."""
        return self._dead_letters.purge_dead_letters(queue)

    # -- broadcast (see .broadcast) --------------------------------------------------

    @_guarded
    def broadcast(self, channel: str, body: bytes) -> None:
        """Send ``body`` to the queue of every current subscriber of ``channel``."""
        self._broadcasts.broadcast(channel, body)

    @_guarded
    def subscribe(self, channel: str) -> Subscription:
        """Create this subscriber's queue (and delete the channel's orphans)."""
        return self._broadcasts.subscribe(channel)

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connection pool; idempotent."""
        self._client.close()

    def describe(self) -> str:
        """The redacted URL with the endpoint, region and prefix in use."""
        if not hasattr(self, "_sqs"):
            return redact(f"{self.url} (region ?, endpoint ?, prefix {self.prefix!r})")
        return self._sqs.describe()
