"""SQS queues as the SQS transport sees them: polyq names checked against SQS's charset,
queues created on first use, URLs and sizes cached, priority bands, and the calls
that send, delete, count and purge (see ``docs/design/sqs.md``)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from typing import Any

import botocore.exceptions

from polyq.exceptions import BrokerError, ConfigurationError, InvalidQueueName
from polyq.queues import check_queue_name
from polyq.url import redact
from polyq_clients import aws
from polyq_clients.aws import error_code
from polyq_transports.sqs.wire import BATCH, BATCH_BYTES, DEFAULT_MAX_SIZE, LARGEST_SIZE

__all__ = [
    "BROADCAST_PREFIX",
    "GONE",
    "MISSING_QUEUE",
    "SQSQueues",
    "base_name",
    "channel_name",
    "dlq_name",
    "is_fifo",
    "parse_steps",
    "sqs_name",
]

#: The name prefix of broadcast subscribers' queues.
BROADCAST_PREFIX = "polyq-bc-"
# Errors that mean the message is gone or no longer ours: acking or extending it is moot.
GONE = {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight"}
MISSING_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


#: SQS's queue-name charset (``.fifo`` aside) and its longest name.
SQS_NAME = re.compile(r"[A-Za-z0-9_-]+")
SQS_MAX_NAME = 80


def sqs_name(name: str) -> str:
    """The SQS name of the polyq queue ``name``: ``name`` itself, or
    :class:`~polyq.exceptions.InvalidQueueName` when SQS would refuse it.

    SQS allows letters, digits, ``-`` and ``_`` (and a ``.fifo`` suffix). Names
    outside that charset are refused, not mapped: a mapping onto that charset that
    kept today's names unchanged cannot be injective, and one that is not made
    ``billing.high``, ``billing:high``, ``billing high`` and ``billing/high`` the
    same queue as ``billing-high`` (see docs/design/sqs.md)."""
    check_queue_name(name)
    base = name[:-5] if name.endswith(".fifo") else name
    if not SQS_NAME.fullmatch(base):
        bad = sorted({c for c in base if not SQS_NAME.fullmatch(c)})
        raise InvalidQueueName(
            f"queue name {name!r} has characters SQS does not allow in a queue name "
            f"({' '.join(repr(c) for c in bad)}); SQS allows letters, digits, '-' and '_' "
            f"(and a '.fifo' suffix). Rename the queue, e.g. {channel_name(name)!r} "
            "(polyq does not map names: two names mapping to one would share a queue)"
        )
    return name


def channel_name(channel: str) -> str:
    """The SQS spelling of a broadcast channel (``polyq.events`` -> ``polyq-events``):
    characters SQS refuses become ``-``. Only for polyq's own channel names, which
    do not collide once mapped; queue names go through :func:`sqs_name`."""
    base, fifo = (channel[:-5], ".fifo") if channel.endswith(".fifo") else (channel, "")
    return re.sub(r"[^A-Za-z0-9_-]", "-", base) + fifo


def is_fifo(name: str) -> bool:
    """Whether ``name`` is a FIFO queue (it ends in ``.fifo``)."""
    return name.endswith(".fifo")


def base_name(name: str) -> str:
    """``name`` without ``.fifo`` (``jobs.fifo`` -> ``jobs-fifo``): the stem of the
    standard queues polyq derives from it (``-delay``, ``-dlq``)."""
    return name[:-5] + "-fifo" if is_fifo(name) else name


def parse_steps(value: Any) -> list[int]:
    """``priority_steps`` as sorted distinct levels 0..9 (a list, or "0,5,9")."""
    items = value.split(",") if isinstance(value, str) else value
    items = items if isinstance(items, list | tuple) else [items]
    try:
        steps = sorted({int(str(item).strip()) for item in items})
    except ValueError:
        steps = []
    if len(steps) < 2 or steps[0] < 0 or steps[-1] > 9:
        raise ConfigurationError(
            f"priority_steps={value!r}: give two or more priority levels that get a queue "
            'of their own, between 0 and 9, e.g. priority_steps="0,5,9" (or a list)'
        )
    return steps


def dlq_name(queue: str) -> str:
    """The polyq-managed dead-letter queue of ``queue``."""
    return base_name(queue) + "-dlq"


class SQSQueues:
    """The SQS client of one transport and what it knows of its queues.

    ``priority_steps``: the levels that get a queue of their own (``None``: one queue
    per polyq queue); queues it creates get ``queue_max_size`` and ``retention``."""

    def __init__(
        self,
        client: Any,
        url: str,
        prefix: str,
        *,
        create_queues: bool,
        queue_max_size: int,
        retention: int,
        priority_steps: list[int] | None,
    ) -> None:
        self.client = client
        self.url = url
        self.prefix = prefix
        self.create_queues = create_queues
        self.queue_max_size = queue_max_size
        self.retention = retention
        self.priority_steps = priority_steps
        self._lock = threading.Lock()
        self._urls: dict[str, str] = {}
        self._max_sizes: dict[str, int] = {}

    def call(self, operation: str, **params: Any) -> Any:
        """Call the SQS API, turning client and connection errors into :class:`BrokerError`."""
        return aws.call(self.client, operation, params, "SQS", self.describe)

    def error(self, operation: str, exc: botocore.exceptions.ClientError) -> BrokerError:
        """The :class:`BrokerError` for ``operation`` refused by SQS."""
        return aws.refused("SQS", self.describe(), operation, exc)

    def describe(self) -> str:
        """The redacted URL with the endpoint, region and prefix in use."""
        region = self.client.meta.region_name
        endpoint = self.client.meta.endpoint_url
        return redact(f"{self.url} (region {region}, endpoint {endpoint}, prefix {self.prefix!r})")

    def queue_url(self, name: str, create: bool | None = None) -> str | None:
        """The URL of the SQS queue for the polyq queue ``name``; created when missing
        if ``create`` (default: the ``create_queues`` option), else ``None``."""
        with self._lock:
            cached = self._urls.get(name)
        if cached:
            return cached
        create = self.create_queues if create is None else create
        remote = self.prefix + sqs_name(name)
        if len(remote) > SQS_MAX_NAME:
            raise InvalidQueueName(
                f"queue name {name!r} makes the SQS queue {remote!r} ({len(remote)} "
                f"characters with the prefix); SQS allows {SQS_MAX_NAME}. Use a shorter "
                "name or prefix"
            )
        try:
            url = str(self.call("get_queue_url", QueueName=remote)["QueueUrl"])
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) not in MISSING_QUEUE:
                raise self.error(f"GetQueueUrl {remote}", exc) from exc
            if not create:
                return None
            # Dead letters carry a reason on top of the message: give them the most room.
            size = LARGEST_SIZE if name.endswith("-dlq") else self.queue_max_size
            attributes = {
                "MaximumMessageSize": str(size),
                "MessageRetentionPeriod": str(self.retention),
            }
            if is_fifo(remote):
                attributes["FifoQueue"] = "true"
            try:
                reply = self.call("create_queue", QueueName=remote, Attributes=attributes)
            except botocore.exceptions.ClientError as exc2:
                raise self.error(f"CreateQueue {remote}", exc2) from exc2
            url = str(reply["QueueUrl"])
        with self._lock:
            self._urls[name] = url
        return url

    def require_url(self, name: str) -> str:
        """The URL of ``name``'s queue, created if allowed; refused when missing."""
        url = self.queue_url(name)
        if url is None:
            raise ConfigurationError(
                f"SQS queue {self.prefix + sqs_name(name)!r} does not exist at "
                f"{self.describe()}; create it, or let polyq create queues on first use "
                "(create_queues=true)"
            )
        return url

    def max_size(self, name: str, url: str) -> int:
        """The queue's ``MaximumMessageSize`` (read once, then cached)."""
        with self._lock:
            cached = self._max_sizes.get(url)
        if cached:
            return cached
        try:
            reply = self.call(
                "get_queue_attributes", QueueUrl=url, AttributeNames=["MaximumMessageSize"]
            )
        except botocore.exceptions.ClientError as exc:
            raise self.error(f"GetQueueAttributes {name}", exc) from exc
        size = int(reply.get("Attributes", {}).get("MaximumMessageSize", DEFAULT_MAX_SIZE))
        with self._lock:
            self._max_sizes[url] = size
        return size

    def forget(self, name: str) -> None:
        """Drop cached facts about ``name`` (its queue was deleted behind our back)."""
        with self._lock:
            url = self._urls.pop(name, None)
            if url:
                self._max_sizes.pop(url, None)

    def band(self, queue: str, priority: int) -> str:
        """The SQS-side queue holding ``queue``'s messages of ``priority``: the queue
        itself for the lowest step (and without ``priority_steps``), else
        ``<queue>-p<step>``."""
        if not self.priority_steps:
            return queue
        step = max([s for s in self.priority_steps if s <= priority] or [self.priority_steps[0]])
        if step == self.priority_steps[0]:
            return queue
        if is_fifo(queue):
            return f"{queue[:-5]}-p{step}.fifo"
        return f"{queue}-p{step}"

    def bands(self, queue: str) -> list[str]:
        """The queues holding ``queue``'s messages, highest priority first."""
        return [self.band(queue, s) for s in reversed(self.priority_steps or [0])]

    def send(self, queue: str, url: str, entries: list[tuple[dict[str, Any], int]]) -> None:
        """Send ``(entry, encoded size)`` pairs in batches of at most 10 entries and
        ``BATCH_BYTES``."""
        chunk: list[dict[str, Any]] = []
        chunk_bytes = 0
        for entry, size in entries:
            if chunk and (len(chunk) == BATCH or chunk_bytes + size > BATCH_BYTES):
                self.send_batch(queue, url, chunk)
                chunk, chunk_bytes = [], 0
            chunk.append(entry)
            chunk_bytes += size
        if chunk:
            self.send_batch(queue, url, chunk)

    def send_batch(self, queue: str, url: str, entries: list[dict[str, Any]]) -> None:
        """Send one batch, retrying the entries SQS failed on its side (twice)."""
        try:
            if len(entries) == 1:
                self.call("send_message", QueueUrl=url, **entries[0])
                return
            pending = {str(i): entry for i, entry in enumerate(entries)}
            for attempt in range(3):
                reply = self.call(
                    "send_message_batch",
                    QueueUrl=url,
                    Entries=[{"Id": i, **entry} for i, entry in pending.items()],
                )
                failed = reply.get("Failed", [])
                if not failed:
                    return
                if any(f.get("SenderFault") for f in failed) or attempt == 2:
                    first = failed[0]
                    raise BrokerError(
                        f"SQS at {self.describe()}: {len(failed)} of {len(pending)} messages "
                        f"for queue {queue!r} were refused ({first.get('Code')}: "
                        f"{first.get('Message')}); the others were sent"
                    )
                pending = {f["Id"]: pending[f["Id"]] for f in failed}
                time.sleep(0.1 * (attempt + 1))
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in MISSING_QUEUE:
                self.forget(queue)
            raise self.error(f"SendMessage to {queue!r}", exc) from exc

    def delete(self, url: str, handles: Sequence[str]) -> None:
        """Delete messages by receipt handle; messages already gone are fine."""
        handles = list(dict.fromkeys(handles))  # a batch may not name a message twice
        for i in range(0, len(handles), BATCH):
            chunk = handles[i : i + BATCH]
            try:
                reply = self.call(
                    "delete_message_batch",
                    QueueUrl=url,
                    Entries=[{"Id": str(n), "ReceiptHandle": h} for n, h in enumerate(chunk)],
                )
            except botocore.exceptions.ClientError as exc:
                if error_code(exc) in MISSING_QUEUE:
                    continue  # the queue and its messages are gone already
                raise self.error("DeleteMessageBatch", exc) from exc
            failed = [f for f in reply.get("Failed", []) if f.get("Code") not in GONE]
            if failed:
                raise BrokerError(
                    f"SQS at {self.describe()}: {len(failed)} deletes refused "
                    f"({failed[0].get('Code')}: {failed[0].get('Message')})"
                )

    def counts(self, name: str) -> int:
        """SQS's approximate count of ready, in-flight and delayed messages of ``name``."""
        url = self.queue_url(name, create=False)
        if url is None:
            return 0
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        try:
            reply = self.call("get_queue_attributes", QueueUrl=url, AttributeNames=names)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) in MISSING_QUEUE:
                self.forget(name)
                return 0
            raise self.error(f"GetQueueAttributes {name!r}", exc) from exc
        attributes = reply.get("Attributes", {})
        return sum(int(attributes.get(n, 0)) for n in names)

    def purge(self, name: str) -> int:
        """``PurgeQueue`` on ``name`` (or, within a minute of the last, receive and
        delete what is ready); the approximate count removed."""
        url = self.queue_url(name, create=False)
        if url is None:
            return 0
        reply = self.call(
            "get_queue_attributes",
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
        )
        count = sum(int(v) for v in reply.get("Attributes", {}).values())
        try:
            self.call("purge_queue", QueueUrl=url)
        except botocore.exceptions.ClientError as exc:
            if error_code(exc) != "AWS.SimpleQueueService.PurgeQueueInProgress":
                raise self.error(f"PurgeQueue {name!r}", exc) from exc
            # One purge a minute per queue: drain what is ready instead.
            count = 0
            while True:
                raws = self.call(
                    "receive_message", QueueUrl=url, MaxNumberOfMessages=BATCH, WaitTimeSeconds=0
                ).get("Messages", [])
                if not raws:
                    break
                self.delete(url, [r["ReceiptHandle"] for r in raws])
                count += len(raws)
        return count

    def names(self) -> list[str]:
        """The queues under the prefix, without polyq's dead-letter, delay and
        broadcast queues (names as SQS spells them)."""
        names = []
        for url in self.list_urls(self.prefix):
            name = url.rsplit("/", 1)[-1][len(self.prefix) :]
            if name.startswith(BROADCAST_PREFIX) or re.search(r"-(dlq|delay)$", name):
                continue
            if self.priority_steps and re.search(r"-p\d(\.fifo)?$", name):
                continue
            names.append(name)
        return sorted(names)

    def list_urls(self, prefix: str) -> list[str]:
        """The URLs of every queue whose name starts with ``prefix`` (``ListQueues``)."""
        urls: list[str] = []
        params: dict[str, Any] = {"MaxResults": 1000}
        if prefix:
            params["QueueNamePrefix"] = prefix
        while True:
            try:
                reply = self.call("list_queues", **params)
            except botocore.exceptions.ClientError as exc:
                raise self.error("ListQueues", exc) from exc
            urls += reply.get("QueueUrls", [])
            if not reply.get("NextToken"):
                return urls
            params["NextToken"] = reply["NextToken"]
