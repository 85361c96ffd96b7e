"""Broadcast on SQS, which has no fanout: a queue per subscriber, found by name and
sent to one by one; orphaned queues of crashed subscribers expire by heartbeat
(see ``docs/design/sqs.md``)."""

from __future__ import annotations

import collections
import threading
import time
import uuid

import botocore.exceptions

from polyq.exceptions import ConfigurationError
from polyq.transport import Subscription
from polyq_clients.aws import error_code
from polyq_transports.sqs.queues import (
    BROADCAST_PREFIX,
    MISSING_QUEUE,
    SQSQueues,
    channel_name,
)
from polyq_transports.sqs.wire import BATCH, ENVELOPE, decode, encode

__all__ = ["Broadcasts", "SQSSubscription"]

# The tag a subscriber's queue carries: the Unix time it last listened.
_HEARTBEAT_TAG = "polyq-heartbeat"


class Broadcasts:
    """Sends to and subscribes on broadcast channels: a subscriber's queue is tagged
    every ``broadcast_heartbeat`` seconds while it listens, and deleted by a later
    ``subscribe`` once its tag is older than ``broadcast_orphan_age``."""

    def __init__(
        self, sqs: SQSQueues, broadcast_heartbeat: float, broadcast_orphan_age: float
    ) -> None:
        self._sqs = sqs
        self.broadcast_heartbeat = broadcast_heartbeat
        self.broadcast_orphan_age = broadcast_orphan_age

    def _channel_prefix(self, channel: str) -> str:
        return f"{self._sqs.prefix}{BROADCAST_PREFIX}{channel_name(channel)}-"

    def broadcast(self, channel: str, body: bytes) -> None:
        """Send ``body`` to the queue of every current subscriber of ``channel``."""
        text = encode({ENVELOPE: 1, "id": uuid.uuid4().hex, "h": {}}, body)
        for url in self._sqs.list_urls(self._channel_prefix(channel)):
            try:
                self._sqs.call("send_message", QueueUrl=url, MessageBody=text)
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) not in MISSING_QUEUE:
                    raise self._sqs.error(
                        f"SendMessage to broadcast queue of {channel!r}", exc
                    ) from exc
                # The subscriber closed meanwhile: nobody to tell.

    def subscribe(self, channel: str) -> Subscription:
        """Create this subscriber's queue (and delete the channel's orphans)."""
        prefix = self._channel_prefix(channel)
        self._delete_orphans(prefix)
        name = prefix + uuid.uuid4().hex[:12]
        if len(name) > 80:
            raise ConfigurationError(
                f"broadcast queue name {name!r} is over SQS's 80 characters; use a "
                "shorter queue_name_prefix or channel name"
            )
        try:
            url = self._sqs.call(
                "create_queue",
                QueueName=name,
                Attributes={"MessageRetentionPeriod": "60"},
                tags={_HEARTBEAT_TAG: str(int(time.time()))},
            )["QueueUrl"]
        except botocore.exceptions.ClientError as exc:
            raise self._sqs.error(f"CreateQueue {name}", exc) from exc
        return SQSSubscription(self._sqs, str(url), self.broadcast_heartbeat)

    def _delete_orphans(self, prefix: str) -> None:
        now = time.time()
        for url in self._sqs.list_urls(prefix):
            try:
                tags = self._sqs.call("list_queue_tags", QueueUrl=url).get("Tags", {})
                beat = float(tags.get(_HEARTBEAT_TAG, now))
                if now - beat > self.broadcast_orphan_age:
                    self._sqs.call("delete_queue", QueueUrl=url)
            except botocore.exceptions.ClientError:
                continue  # deleted by someone else, or not ours to judge


class SQSSubscription(Subscription):
    """One subscriber's own queue; see *Broadcast* in ``docs/design/sqs.md``."""

    def __init__(self, sqs: SQSQueues, url: str, heartbeat: float) -> None:
        self._sqs = sqs
        self._heartbeat_every = heartbeat
        self._url = url
        self._buffer: collections.deque[bytes] = collections.deque()
        self._beat = time.monotonic()
        self._closed = threading.Event()

    def get(self, timeout: float) -> bytes | None:
        """The next broadcast, long-polling this subscriber's queue up to ``timeout``."""
        deadline = time.monotonic() + max(0.0, timeout)
        polled = False
        while not self._buffer:
            if self._closed.is_set():
                return None
            remaining = deadline - time.monotonic()
            wait = min(20, int(remaining + 0.5))  # whole seconds, as in receive()
            if wait < 1 and polled:
                time.sleep(max(0.0, remaining))
                return None
            try:
                self._heartbeat()
                reply = self._sqs.call(
                    "receive_message",
                    QueueUrl=self._url,
                    MaxNumberOfMessages=BATCH,
                    WaitTimeSeconds=max(0, wait),
                )
            except botocore.exceptions.ClientError as exc:
                if self._closed.is_set():
                    return None  # closed from another thread while we listened
                raise self._sqs.error("listening for broadcasts", exc) from exc
            polled = True
            raws = reply.get("Messages", [])
            if raws:
                # Fire and forget: taken off the queue at once, held only in memory.
                self._sqs.delete(self._url, [r["ReceiptHandle"] for r in raws])
                for raw in raws:
                    decoded = decode(raw["Body"])
                    if decoded is not None:
                        self._buffer.append(decoded[1])
        return self._buffer.popleft()

    def _heartbeat(self) -> None:
        if time.monotonic() - self._beat < self._heartbeat_every:
            return
        self._beat = time.monotonic()
        self._sqs.call(
            "tag_queue", QueueUrl=self._url, Tags={_HEARTBEAT_TAG: str(int(time.time()))}
        )

    def close(self) -> None:
        """Delete this subscriber's queue; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._sqs.call("delete_queue", QueueUrl=self._url)
        except botocore.exceptions.ClientError:
            pass  # already gone (cleaned up as an orphan)
