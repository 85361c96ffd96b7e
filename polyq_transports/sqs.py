"""Amazon SQS transport (boto3), for ``sqs://`` URLs.

URL and options
---------------
``sqs://`` uses boto3's usual credential chain (environment, shared config and
credentials files, SSO, instance or task role). Everything else comes from the
query string or from ``broker_transport_options`` (the query string wins)::

    sqs://?region=eu-west-1&queue_name_prefix=prod-
    sqs://?region=us-east-1&endpoint_url=http://127.0.0.1:5000     # moto, LocalStack
    sqs://AKIA...:secret@?region=eu-west-1    # Celery's spelling; prefer the chain

``region`` (alias ``region_name``), ``endpoint_url`` (emulators, VPC endpoints),
``queue_name_prefix`` (alias ``queue_prefix``, Celery's name), ``create_queues``
(default true: a queue is created on first use; false when the queues exist already
and the credentials may not create any), ``visibility_timeout`` (default 1800 s),
``wait_time_seconds`` (longest single long poll, default 20), ``max_native_delay``
(default 900: the longest delay SQS is asked to hold; see *Delays*),
``message_group_id`` (default group of FIFO queues), ``max_message_size`` (see
*The wire format*), ``message_retention_period`` (of the queues polyq creates:
default 14 days, SQS's longest, rather than its default of 4 days, after which SQS
deletes a waiting message without a trace), ``profile_name``,
``aws_access_key_id``/``aws_secret_access_key``/``aws_session_token``,
``connect_timeout``/``read_timeout``/``max_attempts`` (botocore's), and the
broadcast options below. Credentials are never printed: error messages quote the
URL through :func:`polyq.url.redact` and never the options.

Queue names are the polyq name with the prefix in front; characters SQS refuses
(anything but letters, digits, ``-`` and ``_``) become ``-``, as kombu does, so
``myapp.tasks`` is the SQS queue ``myapp-tasks``. A name ending in ``.fifo`` is a
FIFO queue.

The wire format
---------------
An SQS message body is text, and a message has at most 10 attributes, so each
message travels as one JSON envelope in the body: ``{"polyq_sqs": 1, "id":
message id, "h": headers, "t": body}``, with the body as text when it is valid
UTF-8 and as ``"b": base64`` otherwise (msgpack). No message attributes are used,
so headers are unlimited in number and nothing is lost in translation.

Sizes: the limit is the queue's own ``MaximumMessageSize``, read with
``GetQueueAttributes`` (256 KiB by default on AWS, up to 1 MiB; queues polyq creates
get the ``max_message_size`` option, default 262144, and dead-letter queues 1 MiB so a
reason always fits). As base64 makes a binary body a third larger, polyq allows a
message whose body, id and headers together are at most ``(MaximumMessageSize -
1024) * 3 / 4`` bytes (195,840 on a default queue), whatever its content, and
declares that as ``max_message_size``; a larger one raises
:class:`~polyq.exceptions.MessageTooLarge` before anything of the batch is sent.
Large payloads belong elsewhere (S3), passed by reference.
A message that is not a polyq envelope is delivered with its raw body and no
headers, so the core dead-letters it with a reason instead of losing it.

Receiving and leases
--------------------
``receive`` long-polls (``WaitTimeSeconds``: ``wait`` rounded to the nearest whole
second, at most 20; a shorter ``wait`` short-polls once, then sleeps) for batches
of up to 10 with the transport's ``VisibilityTimeout``. With several queues it
first takes what is ready on each, starting at a rotating queue so none starves,
then long-polls one of them (rotating) for the rest of ``wait``. ``extend_lease``
is ``ChangeMessageVisibilityBatch``; ``ack`` is ``DeleteMessageBatch``; ``nack`` sets
the visibility to the delay; ``delivery_count`` is ``ApproximateReceiveCount``.
SQS caps a message's total visibility at 12 hours from its receipt; an extension
past that fails and is logged as a warning.

Delays
------
SQS holds a message at most 900 s (``DelaySeconds``). The transport declares
``max_delay`` = ``max_native_delay`` (900 unless set lower, which is how the long-ETA
path is tested for real), so the core hops longer ETAs: it publishes with the
longest native delay and the ETA in a header, and re-publishes the remainder on
receipt. Should a caller still pass a longer delay, the transport hops by itself:
the envelope carries the due time, and a message received early is re-sent with
the remaining delay and deleted. Neither path uses the visibility timeout, whose
receives count towards a redrive policy, and no worker holds a waiting message.

FIFO queues reject per-message delays. A delayed message for ``jobs.fifo`` is sent
to the standard queue ``jobs-fifo-delay`` instead; when it becomes visible there,
``receive`` on ``jobs.fifo`` forwards it into the FIFO queue (with its group id,
and the delay queue's message id as deduplication id, so a forward repeated within
5 minutes is dropped by SQS) and deletes it. A delayed message therefore takes its
place in its group's order when it falls due. The delay queue is polled at most
once a second per queue and process. A FIFO message's group comes from the
``MessageGroupId`` header, else ``publish(..., message_group_id=...)``, else the
``message_group_id`` option, else the queue name (one strictly ordered group).
Its deduplication id is new for every publish, so a retry is never swallowed by
the 5-minute deduplication window. ``nack`` with a delay on a FIFO queue holds its
whole group back for that delay, as SQS does.

Dead letters, purge, size
-------------------------
A redrive policy cannot record why a message failed, so ``dead_letter`` sends the
envelope plus reason and time to polyq's own standard queue ``<queue>-dlq``
(``<base>-fifo-dlq`` for FIFO queues) and deletes the original. Listing, replaying
and purging dead letters scan that queue (receive, then make the rest visible
again). ``purge`` is ``PurgeQueue`` (also on the FIFO delay queue); SQS has no
other way to remove delayed messages, it removes in-flight messages too, and AWS
allows it once a minute per queue: a second purge within the minute falls back to
receiving and deleting the ready messages. The count it returns and ``size`` are
SQS's approximate counters. Waiting delayed messages cannot be listed on SQS
(``inspect_scheduled`` is false).

Broadcast
---------
SQS has no fanout, so each ``subscribe`` creates its own queue
``<prefix>polyq-bc-<channel>-<random>`` (message retention 60 s, the minimum), and
``broadcast`` lists the channel's queues (``ListQueues``) and sends to each: one
``ListQueues`` plus one ``SendMessage`` per subscriber, so events for every task
are costly on AWS. A subscriber tags its queue with a heartbeat at most every
``broadcast_heartbeat`` seconds (default 60) while it listens and deletes it on
``close``; ``subscribe`` deletes the channel's queues whose heartbeat is older than
``broadcast_orphan_age`` (default 600 s), which is how the queues of crashed
workers go away. ``ListQueues`` is eventually consistent on AWS: a subscriber may
miss broadcasts sent in the first seconds after ``subscribe`` returned.

Priorities
----------
SQS has none. By default polyq declares ``priority`` false and ignores it. With the
option ``priority_steps`` (e.g. ``"0,5,9"``, or all ten levels ``"0,1,2,3,4,5,6,7,8,9"``)
it routes by priority to separate SQS queues, one per step: a message goes to the
queue of the highest step not above its priority, ``<queue>`` for the lowest step
and ``<queue>-p<step>`` for the others (``<base>-p<step>.fifo`` for FIFO queues), and
``receive`` takes what is ready from the highest band down before long-polling the
lowest, then declares ``priority`` true. The order is as good as SQS's short polls,
which on AWS sample a subset of servers: mostly, not strictly, higher first. Each
band costs an extra ``ReceiveMessage`` per receive while the queues are empty.

Standard queues may deliver a message twice without any failure
(``may_duplicate``); FIFO queues do not, but capabilities are per class.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import botocore.config
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
from polyq.url import redact

__all__ = ["SQSTransport"]

log = logging.getLogger(__name__)

_ENVELOPE = "polyq_sqs"
_NATIVE_DELAY_LIMIT = 900
_VISIBILITY_LIMIT = 43_200
_BATCH = 10
# The total payload of one SendMessageBatch; kept at SQS's historical limit so a batch
# is accepted whatever the account's newer per-message maximum is.
_BATCH_BYTES = 262_144
_DEFAULT_MAX_SIZE = 262_144
_LARGEST_SIZE = 1_048_576
# Room kept in a queue's MaximumMessageSize for the envelope's own keys and quoting.
_ENVELOPE_ROOM = 1024


def _body_limit(queue_max: int) -> int:
    """The largest body + id + headers that fits a queue of ``queue_max`` bytes
    whatever the body's content: binary bodies grow by a third in base64."""
    return (queue_max - _ENVELOPE_ROOM) * 3 // 4


_BROADCAST = "polyq-bc-"
_HEARTBEAT_TAG = "polyq-heartbeat"
_FIFO_DELAY_POLL = 1.0
# Errors that mean the message is gone or no longer ours: acking or extending it is moot.
_GONE = {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight"}
_MISSING_QUEUE = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}


@dataclasses.dataclass(frozen=True)
class _Receipt:
    """What ``Delivery.receipt`` holds: where the message came from and its handle."""

    queue_url: str
    handle: str
    sqs_id: str


def _sqs_name(name: str) -> str:
    base, fifo = (name[:-5], ".fifo") if name.endswith(".fifo") else (name, "")
    return re.sub(r"[^A-Za-z0-9_-]", "-", base) + fifo


def _is_fifo(name: str) -> bool:
    return name.endswith(".fifo")


def _base(name: str) -> str:
    return name[:-5] + "-fifo" if _is_fifo(name) else name


def _parse_steps(value: Any) -> list[int]:
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


def _encode(fields: dict[str, Any], body: bytes) -> str:
    """The envelope as SQS-safe text (see the module docstring)."""
    encoded = base64.b64encode(body).decode("ascii")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        fields["b"] = encoded
    else:
        # Text travels as is unless JSON's escapes (control characters) make it
        # longer than base64, which keeps every body within 4/3 of its size.
        quoted = json.dumps(text, ensure_ascii=False)
        if len(quoted.encode("utf-8")) <= len(encoded) + 2:
            fields["t"] = text
        else:
            fields["b"] = encoded
    text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    # json escapes control characters; these two noncharacters are valid UTF-8 but
    # outside the character set SQS accepts, and occur only inside JSON strings.
    return text.replace("\ufffe", "\\ufffe").replace("\uffff", "\\uffff")


def _decode(text: str) -> tuple[dict[str, Any], bytes] | None:
    """The envelope's fields and body, or ``None`` when ``text`` is not an envelope."""
    try:
        fields = json.loads(text)
    except ValueError:
        return None
    if not isinstance(fields, dict) or fields.get(_ENVELOPE) != 1:
        return None
    try:
        if "b" in fields:
            return fields, base64.b64decode(fields["b"], validate=True)
        return fields, str(fields["t"]).encode("utf-8")
    except (KeyError, binascii.Error):
        return None


def _priority(raw: dict[str, Any]) -> int:
    """The priority recorded in a raw SQS message's envelope (0 if none)."""
    decoded = _decode(raw["Body"])
    return int(decoded[0].get("p", 0)) if decoded else 0


def _seconds(value: float, limit: int) -> int:
    """``value`` rounded up to whole seconds (never early), within ``0..limit``."""
    return max(0, min(limit, math.ceil(value - 1e-9)))


class SQSTransport(Transport):
    """Amazon SQS broker; see the module docstring for URL, options and design."""

    capabilities = Capabilities(
        priority=False,
        max_delay=float(_NATIVE_DELAY_LIMIT),
        max_message_size=_body_limit(_DEFAULT_MAX_SIZE),
        broadcast=True,
        lease="timeout",
        extend_lease=True,
        dead_letter=True,
        inspect_scheduled=False,
        may_duplicate=True,
        transactional_enqueue=False,
        durable=True,
    )

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        parts = urlsplit(url)
        if parts.path not in ("", "/"):
            raise ConfigurationError(
                f"{redact(url)}: an sqs:// URL has no path; give the region and queue "
                "prefix as query options, e.g. sqs://?region=eu-west-1&queue_name_prefix=app-"
            )
        self.prefix = str(options.get("queue_name_prefix", options.get("queue_prefix", "")))
        self.create_queues = bool(options.get("create_queues", True))
        self.wait_time_seconds = max(0, min(20, int(options.get("wait_time_seconds", 20))))
        self.max_native_delay = float(options.get("max_native_delay", _NATIVE_DELAY_LIMIT))
        if not 1 <= self.max_native_delay <= _NATIVE_DELAY_LIMIT:
            raise ConfigurationError(
                f"max_native_delay={self.max_native_delay!r}: SQS holds a message 1 to "
                f"{_NATIVE_DELAY_LIMIT} seconds; pick a value in that range"
            )
        if not 0 <= self.visibility_timeout <= _VISIBILITY_LIMIT:
            raise ConfigurationError(
                f"visibility_timeout={self.visibility_timeout!r}: SQS accepts 0 to "
                f"{_VISIBILITY_LIMIT} seconds (12 hours)"
            )
        self.queue_max_size = int(options.get("max_message_size", _DEFAULT_MAX_SIZE))
        if not 1024 < self.queue_max_size <= _LARGEST_SIZE:
            raise ConfigurationError(
                f"max_message_size={self.queue_max_size!r}: SQS queues take 1024 to "
                f"{_LARGEST_SIZE} bytes (262144 is AWS's default)"
            )
        # SQS takes whole seconds; rounded up so a lease never ends early.
        self._visibility = _seconds(self.visibility_timeout, _VISIBILITY_LIMIT)
        changes: dict[str, Any] = {}
        if self.max_native_delay != _NATIVE_DELAY_LIMIT:
            changes["max_delay"] = self.max_native_delay
        if self.queue_max_size != _DEFAULT_MAX_SIZE:
            changes["max_message_size"] = _body_limit(self.queue_max_size)
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
        self.priority_steps = _parse_steps(steps) if steps not in (None, "", False) else None
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

        session_args: dict[str, Any] = {}
        if parts.username:
            session_args["aws_access_key_id"] = unquote(parts.username)
            session_args["aws_secret_access_key"] = unquote(parts.password or "")
        for key in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
            if options.get(key):
                session_args[key] = str(options[key])
        if options.get("profile_name"):
            session_args["profile_name"] = str(options["profile_name"])
        region = options.get("region", options.get("region_name"))
        if region:
            session_args["region_name"] = str(region)
        config = botocore.config.Config(
            connect_timeout=float(options.get("connect_timeout", 5)),
            # Above the longest long poll, so a poll is never cut short by the client.
            read_timeout=float(options.get("read_timeout", 30)),
            retries={"max_attempts": int(options.get("max_attempts", 4)), "mode": "standard"},
        )
        endpoint = options.get("endpoint_url")
        try:
            # A session per instance: boto3's default session is shared global state.
            self._client: Any = boto3.session.Session(**session_args).client(
                "sqs", endpoint_url=str(endpoint) if endpoint else None, config=config
            )
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            raise ConfigurationError(f"{redact(url)}: cannot set up the SQS client: {exc}") from exc
        self._lock = threading.Lock()
        self._urls: dict[str, str] = {}
        self._max_sizes: dict[str, int] = {}
        self._rotation = 0
        self._fifo_polled: dict[str, float] = {}

    # -- plumbing ----------------------------------------------------------------

    def _call(self, operation: str, **params: Any) -> Any:
        """Call the SQS API, turning client and connection errors into :class:`BrokerError`."""
        try:
            return getattr(self._client, operation)(**params)
        except botocore.exceptions.ClientError:
            raise
        except botocore.exceptions.NoCredentialsError as exc:
            raise BrokerError(
                f"SQS at {self.describe()}: no AWS credentials found; set them in the "
                "environment, a profile or an instance role (boto3's usual chain)"
            ) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise BrokerError(f"SQS at {self.describe()}: {operation} failed: {exc}") from exc

    def _error(self, operation: str, exc: botocore.exceptions.ClientError) -> BrokerError:
        code = exc.response.get("Error", {}).get("Code", "?")
        message = exc.response.get("Error", {}).get("Message", "")
        return BrokerError(f"SQS at {self.describe()}: {operation} refused ({code}): {message}")

    @staticmethod
    def _code(exc: botocore.exceptions.ClientError) -> str:
        return str(exc.response.get("Error", {}).get("Code", ""))

    def _queue_url(self, name: str, create: bool | None = None) -> str | None:
        """The URL of the SQS queue for the polyq queue ``name``; created when missing
        if ``create`` (default: the ``create_queues`` option), else ``None``."""
        with self._lock:
            cached = self._urls.get(name)
        if cached:
            return cached
        create = self.create_queues if create is None else create
        sqs_name = self.prefix + _sqs_name(name)
        try:
            url = str(self._call("get_queue_url", QueueName=sqs_name)["QueueUrl"])
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) not in _MISSING_QUEUE:
                raise self._error(f"GetQueueUrl {sqs_name}", exc) from exc
            if not create:
                return None
            # Dead letters carry a reason on top of the message: give them the most room.
            size = _LARGEST_SIZE if name.endswith("-dlq") else self.queue_max_size
            attributes = {
                "MaximumMessageSize": str(size),
                "MessageRetentionPeriod": str(self.retention),
            }
            if _is_fifo(sqs_name):
                attributes["FifoQueue"] = "true"
            try:
                reply = self._call("create_queue", QueueName=sqs_name, Attributes=attributes)
            except botocore.exceptions.ClientError as exc2:
                raise self._error(f"CreateQueue {sqs_name}", exc2) from exc2
            url = str(reply["QueueUrl"])
        with self._lock:
            self._urls[name] = url
        return url

    def _require_url(self, name: str) -> str:
        url = self._queue_url(name)
        if url is None:
            raise ConfigurationError(
                f"SQS queue {self.prefix + _sqs_name(name)!r} does not exist at "
                f"{self.describe()}; create it, or let polyq create queues on first use "
                "(create_queues=true)"
            )
        return url

    def _max_size(self, name: str, url: str) -> int:
        with self._lock:
            cached = self._max_sizes.get(url)
        if cached:
            return cached
        try:
            reply = self._call(
                "get_queue_attributes", QueueUrl=url, AttributeNames=["MaximumMessageSize"]
            )
        except botocore.exceptions.ClientError as exc:
            raise self._error(f"GetQueueAttributes {name}", exc) from exc
        size = int(reply.get("Attributes", {}).get("MaximumMessageSize", _DEFAULT_MAX_SIZE))
        with self._lock:
            self._max_sizes[url] = size
        return size

    def _forget(self, name: str) -> None:
        """Drop cached facts about ``name`` (its queue was deleted behind our back)."""
        with self._lock:
            url = self._urls.pop(name, None)
            if url:
                self._max_sizes.pop(url, None)

    def _band(self, queue: str, priority: int) -> str:
        """The SQS-side queue holding ``queue``'s messages of ``priority``: the queue
        itself for the lowest step (and without ``priority_steps``), else
        ``<queue>-p<step>``."""
        if not self.priority_steps:
            return queue
        step = max([s for s in self.priority_steps if s <= priority] or [self.priority_steps[0]])
        if step == self.priority_steps[0]:
            return queue
        if _is_fifo(queue):
            return f"{queue[:-5]}-p{step}.fifo"
        return f"{queue}-p{step}"

    def _bands(self, queue: str) -> list[str]:
        """The queues holding ``queue``'s messages, highest priority first."""
        return [self._band(queue, s) for s in reversed(self.priority_steps or [0])]

    # -- producing ---------------------------------------------------------------

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
            fields: dict[str, Any] = {_ENVELOPE: 1, "id": message.message_id}
            fields["h"] = dict(message.headers)
            if message.priority:
                fields["p"] = message.priority
            delay = max(0.0, float(message.delay))
            if delay > self.max_native_delay:
                fields["due"] = now + delay
                delay = self.max_native_delay
            target = self._band(message.queue, message.priority)
            entry: dict[str, Any] = {}
            if _is_fifo(message.queue):
                group_id = str(
                    message.headers.get("MessageGroupId")
                    or group
                    or self.default_group
                    or _sqs_name(message.queue)
                )
                if delay > 0:
                    # FIFO queues refuse per-message delays: wait in the delay queue.
                    fields["q"], fields["g"] = message.queue, group_id
                    target = _base(message.queue) + "-delay"
                else:
                    entry["MessageGroupId"] = group_id
                    entry["MessageDeduplicationId"] = uuid.uuid4().hex
            if delay > 0:
                entry["DelaySeconds"] = _seconds(delay, int(self.max_native_delay))
            entry["MessageBody"] = _encode(fields, message.body)
            outgoing[target].append((entry, len(entry["MessageBody"].encode("utf-8"))))
            raw = len(message.body) + len(message.message_id.encode())
            raw += sum(len(k.encode()) + len(v.encode()) for k, v in message.headers.items())
            raw_sizes[target] = max(raw_sizes[target], raw)
        urls = {queue: self._require_url(queue) for queue in outgoing}
        for queue, entries in outgoing.items():
            limit = self._max_size(queue, urls[queue])
            largest = max(size for _, size in entries)
            if raw_sizes[queue] > _body_limit(limit) or largest > limit:
                raise MessageTooLarge(
                    f"a message for queue {queue!r} has {raw_sizes[queue]} bytes of body, "
                    f"id and headers ({largest} once encoded), over the "
                    f"{_body_limit(limit)} bytes polyq allows on an SQS queue whose "
                    f"MaximumMessageSize is {limit} (binary bodies travel in base64, a "
                    "third larger); nothing was sent. Store large payloads elsewhere and "
                    "pass a reference, or use queues with a larger MaximumMessageSize "
                    "(up to 1 MiB: option max_message_size for queues polyq creates)"
                )
        for queue, entries in outgoing.items():
            self._send(queue, urls[queue], entries)

    def _send(self, queue: str, url: str, entries: list[tuple[dict[str, Any], int]]) -> None:
        chunk: list[dict[str, Any]] = []
        chunk_bytes = 0
        for entry, size in entries:
            if chunk and (len(chunk) == _BATCH or chunk_bytes + size > _BATCH_BYTES):
                self._send_batch(queue, url, chunk)
                chunk, chunk_bytes = [], 0
            chunk.append(entry)
            chunk_bytes += size
        if chunk:
            self._send_batch(queue, url, chunk)

    def _send_batch(self, queue: str, url: str, entries: list[dict[str, Any]]) -> None:
        try:
            if len(entries) == 1:
                self._call("send_message", QueueUrl=url, **entries[0])
                return
            pending = {str(i): entry for i, entry in enumerate(entries)}
            for attempt in range(3):
                reply = self._call(
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
            if self._code(exc) in _MISSING_QUEUE:
                self._forget(queue)
            raise self._error(f"SendMessage to {queue!r}", exc) from exc

    # -- consuming ---------------------------------------------------------------

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """Lease up to ``max_messages`` messages (see *Receiving and leases*)."""
        if not queues or max_messages <= 0:
            return []
        deadline = time.monotonic() + max(0.0, wait)
        with self._lock:
            start = self._rotation % len(queues)
            self._rotation += 1
        order = list(queues[start:]) + list(queues[:start])
        for queue in order:
            if _is_fifo(queue):
                self._forward_due(queue)
        # Every (queue, SQS queue) to poll, highest priority band first.
        bands = {queue: self._bands(queue) for queue in order}
        urls = [
            (queue, self._require_url(bands[queue][level]))
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
        while len(found) < max_messages and len(found) % _BATCH == 0:
            more = self._receive_from(queue, url, max_messages - len(found), 0)
            if not more:
                break
            found += more
        return found

    def _receive_from(self, queue: str, url: str, limit: int, wait: int) -> list[Delivery]:
        try:
            reply = self._call(
                "receive_message",
                QueueUrl=url,
                MaxNumberOfMessages=max(1, min(_BATCH, limit)),
                WaitTimeSeconds=wait,
                VisibilityTimeout=self._visibility,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) in _MISSING_QUEUE:
                self._forget(queue)
            raise self._error(f"ReceiveMessage from {queue!r}", exc) from exc
        deliveries: list[Delivery] = []
        hops: list[tuple[dict[str, Any], bytes, dict[str, Any]]] = []
        for raw in reply.get("Messages", []):
            receipt = _Receipt(url, raw["ReceiptHandle"], raw["MessageId"])
            count = int(raw.get("Attributes", {}).get("ApproximateReceiveCount", 1))
            decoded = _decode(raw["Body"])
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
            self._hop(queue, url, hops)
        return deliveries

    def _hop(
        self, queue: str, url: str, hops: list[tuple[dict[str, Any], bytes, dict[str, Any]]]
    ) -> None:
        """Re-send messages that are not due yet with the remaining delay, then delete
        the originals (a crash in between leaves a duplicate, never a loss)."""
        entries = []
        for fields, body, _ in hops:
            remaining = float(fields["due"]) - time.time()
            entry: dict[str, Any] = {"MessageBody": _encode(dict(fields), body)}
            entry["DelaySeconds"] = _seconds(min(remaining, self.max_native_delay), 900)
            entries.append((entry, len(entry["MessageBody"].encode("utf-8"))))
        self._send(queue, url, entries)
        self._delete(url, [raw["ReceiptHandle"] for _, _, raw in hops])

    def _forward_due(self, queue: str) -> None:
        """Move the due messages of a FIFO queue's delay queue into it (at most once a
        second per queue)."""
        now = time.monotonic()
        with self._lock:
            if now - self._fifo_polled.get(queue, 0.0) < _FIFO_DELAY_POLL:
                return
            self._fifo_polled[queue] = now
        delay_queue = _base(queue) + "-delay"
        delay_url = self._queue_url(delay_queue, create=False)
        if delay_url is None:
            return
        while True:
            try:
                reply = self._call(
                    "receive_message",
                    QueueUrl=delay_url,
                    MaxNumberOfMessages=_BATCH,
                    WaitTimeSeconds=0,
                    VisibilityTimeout=60,
                )
            except botocore.exceptions.ClientError as exc:
                raise self._error(f"ReceiveMessage from {delay_queue!r}", exc) from exc
            raws = reply.get("Messages", [])
            if not raws:
                return
            forward: dict[str, list[tuple[dict[str, Any], int]]] = collections.defaultdict(list)
            later: list[tuple[dict[str, Any], bytes, dict[str, Any]]] = []
            for raw in raws:
                decoded = _decode(raw["Body"])
                group_id = _sqs_name(queue)
                target = queue
                if decoded is None:
                    # Not ours: forwarded as is, so the core dead-letters it with a reason.
                    text = raw["Body"]
                else:
                    fields, body = decoded
                    if float(fields.get("due", 0)) > time.time():
                        later.append((fields, body, raw))
                        continue
                    group_id = str(fields.get("g") or group_id)
                    target = self._band(queue, int(fields.get("p", 0)))
                    clean = {k: v for k, v in fields.items() if k not in ("q", "g", "due")}
                    text = _encode(clean, body)
                entry = {
                    "MessageBody": text,
                    "MessageGroupId": group_id,
                    # The delay queue's id: a repeated forward is dropped by SQS.
                    "MessageDeduplicationId": raw["MessageId"],
                }
                forward[target].append((entry, len(entry["MessageBody"].encode("utf-8"))))
            for target, entries in forward.items():
                self._send(target, self._require_url(target), entries)
            if later:
                self._hop(delay_queue, delay_url, later)
            waiting = {raw["ReceiptHandle"] for _, _, raw in later}
            self._delete(
                delay_url,
                [r["ReceiptHandle"] for r in raws if r["ReceiptHandle"] not in waiting],
            )
            if len(raws) < _BATCH:
                return

    def _delete(self, url: str, handles: Sequence[str]) -> None:
        handles = list(dict.fromkeys(handles))  # a batch may not name a message twice
        for i in range(0, len(handles), _BATCH):
            chunk = handles[i : i + _BATCH]
            try:
                reply = self._call(
                    "delete_message_batch",
                    QueueUrl=url,
                    Entries=[{"Id": str(n), "ReceiptHandle": h} for n, h in enumerate(chunk)],
                )
            except botocore.exceptions.ClientError as exc:
                if self._code(exc) in _MISSING_QUEUE:
                    continue  # the queue and its messages are gone already
                raise self._error("DeleteMessageBatch", exc) from exc
            failed = [f for f in reply.get("Failed", []) if f.get("Code") not in _GONE]
            if failed:
                raise BrokerError(
                    f"SQS at {self.describe()}: {len(failed)} deletes refused "
                    f"({failed[0].get('Code')}: {failed[0].get('Message')})"
                )

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Delete the messages with ``DeleteMessageBatch``, grouped per queue."""
        by_url: dict[str, list[str]] = collections.defaultdict(list)
        for delivery in deliveries:
            receipt: _Receipt = delivery.receipt
            by_url[receipt.queue_url].append(receipt.handle)
        for url, handles in by_url.items():
            self._delete(url, handles)

    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Make the message visible again after ``delay`` (at most 12 hours)."""
        receipt: _Receipt = delivery.receipt
        try:
            self._call(
                "change_message_visibility",
                QueueUrl=receipt.queue_url,
                ReceiptHandle=receipt.handle,
                VisibilityTimeout=_seconds(delay, _VISIBILITY_LIMIT),
            )
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) in _GONE | _MISSING_QUEUE:
                return  # the lease was lost: the message comes back by itself
            raise self._error(f"ChangeMessageVisibility on {delivery.queue!r}", exc) from exc

    def extend_lease(self, deliveries: Sequence[Delivery]) -> None:
        """Restart each lease at ``visibility_timeout`` (``ChangeMessageVisibilityBatch``)."""
        by_url: dict[str, list[Delivery]] = collections.defaultdict(list)
        # A batch may not name a message twice: one entry per receipt handle.
        unique = {d.receipt.handle: d for d in deliveries}
        for delivery in unique.values():
            by_url[delivery.receipt.queue_url].append(delivery)
        for url, held in by_url.items():
            for i in range(0, len(held), _BATCH):
                chunk = held[i : i + _BATCH]
                try:
                    reply = self._call(
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
                    raise self._error("ChangeMessageVisibilityBatch", exc) from exc
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

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Send the message with ``reason`` to ``<queue>-dlq``, then delete it."""
        fields: dict[str, Any] = {
            _ENVELOPE: 1,
            "id": delivery.message_id,
            "h": dict(delivery.headers),
            "reason": reason,
            "failed_at": time.time(),
            "from": delivery.queue,
        }
        if delivery.priority:
            fields["p"] = delivery.priority
        dlq = self._dlq(delivery.queue)
        url = self._queue_url(dlq, create=True)
        assert url is not None
        body = _encode(fields, delivery.body)
        size = len(body.encode("utf-8"))
        limit = self._max_size(dlq, url)
        if size > limit:
            # The reason pushed it over: keep the message, shorten the reason.
            fields["reason"] = reason[: max(0, len(reason) - (size - limit) - 16)] + "..."
            body = _encode(fields, delivery.body)
        self._send_batch(dlq, url, [{"MessageBody": body}])
        self.ack([delivery])

    # -- queues ------------------------------------------------------------------

    @staticmethod
    def _dlq(queue: str) -> str:
        return _base(queue) + "-dlq"

    def _counts(self, name: str) -> int:
        url = self._queue_url(name, create=False)
        if url is None:
            return 0
        names = [
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ]
        try:
            reply = self._call("get_queue_attributes", QueueUrl=url, AttributeNames=names)
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) in _MISSING_QUEUE:
                self._forget(name)
                return 0
            raise self._error(f"GetQueueAttributes {name!r}", exc) from exc
        attributes = reply.get("Attributes", {})
        return sum(int(attributes.get(n, 0)) for n in names)

    def size(self, queue: str) -> int:
        """SQS's approximate count of ready, delayed and in-flight messages."""
        total = sum(self._counts(band) for band in self._bands(queue))
        if _is_fifo(queue):
            total += self._counts(_base(queue) + "-delay")
        return total

    def purge(self, queue: str) -> int:
        """``PurgeQueue`` (see *Dead letters, purge, size*); returns the approximate count."""
        removed = sum(self._purge(band) for band in self._bands(queue))
        if _is_fifo(queue):
            removed += self._purge(_base(queue) + "-delay")
        return removed

    def _purge(self, name: str) -> int:
        url = self._queue_url(name, create=False)
        if url is None:
            return 0
        reply = self._call(
            "get_queue_attributes",
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
        )
        count = sum(int(v) for v in reply.get("Attributes", {}).values())
        try:
            self._call("purge_queue", QueueUrl=url)
        except botocore.exceptions.ClientError as exc:
            if self._code(exc) != "AWS.SimpleQueueService.PurgeQueueInProgress":
                raise self._error(f"PurgeQueue {name!r}", exc) from exc
            # One purge a minute per queue: drain what is ready instead.
            count = 0
            while True:
                raws = self._call(
                    "receive_message", QueueUrl=url, MaxNumberOfMessages=_BATCH, WaitTimeSeconds=0
                ).get("Messages", [])
                if not raws:
                    break
                self._delete(url, [r["ReceiptHandle"] for r in raws])
                count += len(raws)
        return count

    def queues(self) -> list[str]:
        """The queues under the prefix, without polyq's dead-letter, delay and
        broadcast queues (names as SQS spells them)."""
        names = []
        for url in self._list(self.prefix):
            name = url.rsplit("/", 1)[-1][len(self.prefix) :]
            if name.startswith(_BROADCAST) or re.search(r"-(dlq|delay)$", name):
                continue
            if self.priority_steps and re.search(r"-p\d(\.fifo)?$", name):
                continue
            names.append(name)
        return sorted(names)

    def _list(self, prefix: str) -> list[str]:
        urls: list[str] = []
        params: dict[str, Any] = {"MaxResults": 1000}
        if prefix:
            params["QueueNamePrefix"] = prefix
        while True:
            try:
                reply = self._call("list_queues", **params)
            except botocore.exceptions.ClientError as exc:
                raise self._error("ListQueues", exc) from exc
            urls += reply.get("QueueUrls", [])
            if not reply.get("NextToken"):
                return urls
            params["NextToken"] = reply["NextToken"]

    # -- dead letters --------------------------------------------------------------

    def _scan(self, name: str) -> tuple[str | None, list[dict[str, Any]]]:
        """Receive every visible message of ``name`` (leased for a minute); the caller
        deletes some and hands the rest to :meth:`_release`."""
        url = self._queue_url(name, create=False)
        if url is None:
            return None, []
        seen: dict[str, dict[str, Any]] = {}
        while True:
            try:
                reply = self._call(
                    "receive_message",
                    QueueUrl=url,
                    MaxNumberOfMessages=_BATCH,
                    # One second of long polling asks every SQS server, not a sample.
                    WaitTimeSeconds=1 if seen else 0,
                    VisibilityTimeout=60,
                )
            except botocore.exceptions.ClientError as exc:
                raise self._error(f"ReceiveMessage from {name!r}", exc) from exc
            raws = reply.get("Messages", [])
            if not raws:
                if seen:
                    return url, list(seen.values())
                # An empty short poll on AWS may have missed servers: ask once more.
                reply = self._call(
                    "receive_message",
                    QueueUrl=url,
                    MaxNumberOfMessages=_BATCH,
                    WaitTimeSeconds=1,
                    VisibilityTimeout=60,
                )
                raws = reply.get("Messages", [])
                if not raws:
                    return url, []
            for raw in raws:
                seen[raw["MessageId"]] = raw

    def _release(self, url: str, raws: Iterable[dict[str, Any]]) -> None:
        handles = [r["ReceiptHandle"] for r in raws]
        for i in range(0, len(handles), _BATCH):
            self._call(
                "change_message_visibility_batch",
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": h, "VisibilityTimeout": 0}
                    for n, h in enumerate(handles[i : i + _BATCH])
                ],
            )

    def _dead(self, queue: str, raw: dict[str, Any]) -> DeadLetter:
        decoded = _decode(raw["Body"])
        if decoded is None:
            return DeadLetter(
                queue, raw["MessageId"], raw["Body"].encode(), {}, "unreadable", 0.0, raw
            )
        fields, body = decoded
        return DeadLetter(
            queue=queue,
            message_id=str(fields["id"]),
            body=body,
            headers={str(k): str(v) for k, v in fields.get("h", {}).items()},
            reason=str(fields.get("reason", "")),
            failed_at=float(fields.get("failed_at", 0.0)),
            receipt=raw,
        )

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The dead letters of ``queue``, oldest first (a scan of ``<queue>-dlq``)."""
        url, raws = self._scan(self._dlq(queue))
        if url is None:
            return []
        self._release(url, raws)
        letters = sorted((self._dead(queue, r) for r in raws), key=lambda d: d.failed_at)
        return letters[:limit]

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Publish the chosen dead letters back on ``queue``, then delete them."""
        url, raws = self._scan(self._dlq(queue))
        if url is None:
            return 0
        wanted = None if message_ids is None else set(message_ids)
        chosen, rest = [], []
        for raw in raws:
            letter = self._dead(queue, raw)
            if wanted is None or letter.message_id in wanted:
                chosen.append((letter, raw))
            else:
                rest.append(raw)
        self._release(url, rest)
        if chosen:
            self.publish(
                [
                    OutgoingMessage(queue, d.body, d.message_id, d.headers, 0.0, _priority(raw))
                    for d, raw in chosen
                ]
            )
            self._delete(url, [raw["ReceiptHandle"] for _, raw in chosen])
        return len(chosen)

    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue`` (received and deleted, so the count is exact)."""
        url, raws = self._scan(self._dlq(queue))
        if url is None:
            return 0
        self._delete(url, [r["ReceiptHandle"] for r in raws])
        return len(raws)

    # -- broadcast ---------------------------------------------------------------

    def _channel_prefix(self, channel: str) -> str:
        return f"{self.prefix}{_BROADCAST}{_sqs_name(channel)}-"

    def broadcast(self, channel: str, body: bytes) -> None:
        """Send ``body`` to the queue of every current subscriber of ``channel``."""
        text = _encode({_ENVELOPE: 1, "id": uuid.uuid4().hex, "h": {}}, body)
        for url in self._list(self._channel_prefix(channel)):
            try:
                self._call("send_message", QueueUrl=url, MessageBody=text)
            except botocore.exceptions.ClientError as exc:
                if self._code(exc) not in _MISSING_QUEUE:
                    raise self._error(
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
            url = self._call(
                "create_queue",
                QueueName=name,
                Attributes={"MessageRetentionPeriod": "60"},
                tags={_HEARTBEAT_TAG: str(int(time.time()))},
            )["QueueUrl"]
        except botocore.exceptions.ClientError as exc:
            raise self._error(f"CreateQueue {name}", exc) from exc
        return _SQSSubscription(self, str(url))

    def _delete_orphans(self, prefix: str) -> None:
        now = time.time()
        for url in self._list(prefix):
            try:
                tags = self._call("list_queue_tags", QueueUrl=url).get("Tags", {})
                beat = float(tags.get(_HEARTBEAT_TAG, now))
                if now - beat > self.broadcast_orphan_age:
                    self._call("delete_queue", QueueUrl=url)
            except botocore.exceptions.ClientError:
                continue  # deleted by someone else, or not ours to judge

    # -- lifecycle -----------------------------------------------------------------

    def close(self) -> None:
        """Close the HTTP connection pool; idempotent."""
        self._client.close()

    def describe(self) -> str:
        """The redacted URL with the endpoint, region and prefix in use."""
        region = self._client.meta.region_name if hasattr(self, "_client") else "?"
        endpoint = self._client.meta.endpoint_url if hasattr(self, "_client") else "?"
        return redact(f"{self.url} (region {region}, endpoint {endpoint}, prefix {self.prefix!r})")


class _SQSSubscription(Subscription):
    """One subscriber's own queue; see *Broadcast* in the module docstring."""

    def __init__(self, transport: SQSTransport, url: str) -> None:
        self._transport = transport
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
                reply = self._transport._call(
                    "receive_message",
                    QueueUrl=self._url,
                    MaxNumberOfMessages=_BATCH,
                    WaitTimeSeconds=max(0, wait),
                )
            except botocore.exceptions.ClientError as exc:
                if self._closed.is_set():
                    return None  # closed from another thread while we listened
                raise self._transport._error("listening for broadcasts", exc) from exc
            polled = True
            raws = reply.get("Messages", [])
            if raws:
                # Fire and forget: taken off the queue at once, held only in memory.
                self._transport._delete(self._url, [r["ReceiptHandle"] for r in raws])
                for raw in raws:
                    decoded = _decode(raw["Body"])
                    if decoded is not None:
                        self._buffer.append(decoded[1])
        return self._buffer.popleft()

    def _heartbeat(self) -> None:
        if time.monotonic() - self._beat < self._transport.broadcast_heartbeat:
            return
        self._beat = time.monotonic()
        self._transport._call(
            "tag_queue", QueueUrl=self._url, Tags={_HEARTBEAT_TAG: str(int(time.time()))}
        )

    def close(self) -> None:
        """Delete this subscriber's queue; idempotent."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            self._transport._call("delete_queue", QueueUrl=self._url)
        except botocore.exceptions.ClientError:
            pass  # already gone (cleaned up as an orphan)
