"""``amqp://``: RabbitMQ through pika, with publisher confirms and connection-bound leases.

URL
    ``amqp://user:password@host:5672/vhost`` (``amqps://`` for TLS; Celery's
    ``pyamqp://`` is accepted as an alias). A vhost of ``/`` is written ``//`` or
    ``/%2F``. Several brokers of a cluster are given separated by ``;``
    (``amqp://u:p@n1//;amqp://u:p@n2//``): they are tried in turn, at start-up and on
    every reconnection. The query string carries the options below.

Options (``broker_transport_options`` or the query string)
    ``max_priority`` (default 9): the ``x-max-priority`` of every work queue; 0
    declares queues without priority. It must match queues that already exist.
    ``prefetch_count`` (default: follow the worker's demand): the ``basic.qos`` of the
    consumer channel. ``heartbeat`` (seconds, default 30). ``connect_timeout``
    (seconds, default 10): how long an operation waits for a (re)connection before
    raising :class:`~polyq.exceptions.BrokerError`. ``confirm_timeout`` (seconds,
    default 30): how long ``publish`` waits for the broker's confirms.
    ``queue_version`` (default 2): the classic queues' ``x-queue-version``; version 2
    confirms persistent messages about 1.8x sooner on RabbitMQ 3.10 (measured:
    0.42 ms against 0.75 ms per confirmed publish) and is the only one from 4.0; 0
    leaves the argument out. With a consumer waiting, though, 3.10's version 2
    delivers a persistent message only once it is on disk (bare pika, polyq's queue
    arguments: 0.70 ms from publish to delivery against 0.23 ms, confirmed after
    0.83 against 0.58 ms), so the worker cannot run a task while its producer waits
    for the confirm: ``bench/rabbitmq_peers.py`` measured a ``delay().get()`` round
    trip of 0.94 ms p50 with version 1 against 1.28 ms, for half the one-call
    enqueue rate and three quarters of the drain rate. ``max_message_size`` (bytes,
    default 16 MiB, RabbitMQ 4's default limit).
    ``consumer_timeout`` (seconds, default 1800, the broker's default) and
    ``time_limit`` (the worker's hard time limit): see *Leases* below.
    ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``, ``ssl_verify`` (default
    true) for ``amqps://``.

Design
    *Threading.* pika connections are not thread-safe, so each transport instance
    owns one connection driven by one daemon I/O thread running an asyncio loop
    (pika's asyncio adapter). Every public method runs on the caller's thread and
    hands its broker work to that loop (``run_coroutine_threadsafe`` or
    ``call_soon_threadsafe``); nothing else touches pika. So one instance may be
    shared by all the threads of a web app or of a worker, and heartbeats keep
    flowing while tasks run for hours, whether or not anybody calls ``receive``.
    The thread starts on first use; an instance refuses to be used after ``fork``.

    *Channels.* One confirm-mode channel publishes everything; a message counts as
    published only when the broker has confirmed it (``basic.ack`` after it is on
    disk), so ``publish`` of a batch sends all messages at once and then waits for
    the confirms together. The frames of a batch (and of a batch of acks) go to the
    socket joined, in writes of up to 256 KiB, not one ``send()`` per frame as
    pika does: that alone made a batch publish about three times faster.
    ``mandatory`` is set, so a message that no queue takes raises instead of
    vanishing. A broker ``nack``, a return, a timeout or a lost
    connection before the confirm raises :class:`~polyq.exceptions.BrokerError` at
    the caller (the message may still have been stored: at-least-once). One
    consumer channel carries every ``basic.consume``, and declarations, purges and
    counts run each on a short-lived channel, so an error there (a queue declared
    with other arguments, a missing queue) closes only that channel.

    *Queue type: classic (version 2), durable, with* ``x-max-priority``. Quorum queues on
    RabbitMQ before 4.0 have no priorities (polyq would need ten queues per queue
    and could not order across them once prefetched), and a single node gains
    nothing from replication while paying Raft's cost on every message. Classic
    queues give native priorities 0..9 and the best throughput; a persistent
    message on a durable queue, confirmed, survives a broker restart. In a cluster
    a classic queue lives on one node, so while that node is down its queue is
    unavailable (its messages wait on that node's disk); replicated work queues
    would need quorum queues, which this plugin does not offer yet. The price is
    that a classic queue only flags a redelivery (``redelivered``) instead of
    counting it, so polyq counts deliveries itself in the header
    ``x-polyq-deliveries``: a ``nack`` republishes the message with the count of
    deliveries so far and acks the original; and a message the broker redelivers
    (its consumer's connection died, or the channel was closed) is, before anybody
    sees it, republished with its count raised and the redelivered copy acked. So
    ``delivery_count`` is exact even when a worker's connection dies again and
    again (a poison message that kills the process is still caught by
    ``task_max_deliveries``); the cost is one extra publish per redelivery, and a
    redelivered message goes to the back of its queue.

    *Delays without the delayed-message plugin and without head-of-line blocking.*
    A per-message TTL expires only at the head of a queue, so one TTL queue would
    hold a 1 s delay behind a 1 h one. Instead, delays are counted in units of
    100 ms and written in binary; level ``k`` of a queue is the queue
    ``<queue>.delay.<k>`` whose every message has the same TTL, ``2**k`` units, so
    within a level the oldest message is always the next to expire. A delayed
    message carries one header per bit (``polyq-delay-07: "1"``) and the name of its
    queue, and enters the exchange of its highest set bit. The level exchanges
    ``polyq.delay.<k>`` are headers exchanges shared by all queues: a message whose
    bit ``k`` is 1 goes to level ``k`` of its queue; one whose bit is 0 passes
    (exchange-to-exchange binding) to the exchange of level ``k-1``. A message that
    expires from level ``k`` is dead-lettered to the exchange of level ``k-1``, and
    from level 0 to the direct exchange ``polyq.delay.deliver``, where every work
    queue is bound by its own name (the routing key travels unchanged). A delay of
    ``d`` units thus visits only the levels of its set bits and waits exactly ``d``
    units in all, whatever longer delays are queued. The levels are *quorum*
    queues with ``x-dead-letter-strategy: at-least-once`` (and ``x-overflow:
    reject-publish``, which that strategy requires): a classic queue dead-letters
    at most once, so a broker crash between two levels could lose a delayed
    message; a quorum queue keeps it until the next level has confirmed it. 26
    levels (RabbitMQ caps a TTL at 2**32 ms) give a native ``max_delay`` of about 77
    days; the core re-delays longer ETAs in hops. Delays are rounded up to the next
    100 ms. A queue's levels are declared when a delay first needs them, bottom
    up, so the levels that exist are always ``0..n-1``: ``size`` and ``purge``
    include them, and ``scheduled`` reads them (consuming without acking, then
    giving the messages back, which costs a read of every delayed message of the
    queue). The price of per-queue levels is up to 26 small quorum queues per
    queue that uses long delays (declared in ~20 ms each, once).

    *Dead letters* are confirmed publishes to the durable classic queue
    ``<queue>.dlq`` with the reason in ``x-polyq-reason``; the original is acked
    only after the broker has confirmed the copy. They are read by consuming on a
    short-lived channel without acking and closing it (the broker puts them back in
    their order), and replayed by republishing and acking the chosen ones.

    *Broadcast* uses a transient fanout exchange ``polyq.broadcast.<channel>``;
    each subscription is an exclusive, auto-delete, server-named queue bound to it.
    The first broadcast on a channel declares the exchange and waits for its
    confirm; later ones are fire and forget (the contract's promise), so events and
    control commands cost no round trip.

    *Leases are connection-bound.* A received message stays unacked on the consumer
    channel until ``ack``; if the worker's connection dies (heartbeats stop within
    two ``heartbeat`` intervals), RabbitMQ returns it to the queue. The consumer
    channel's ``basic.qos`` follows the worker's demand unless ``prefetch_count``
    is given: it grows to the messages handed out plus the ``max_messages`` asked
    for (together, the worker's prefetch), and is never lowered while the queues
    stay the same (a lower qos would not take back what the broker already sent).
    Receipts carry the generation of the consumer channel: after a reconnection,
    acks and nacks of deliveries from the old channel are dropped (the broker
    already gave those messages back). RabbitMQ also closes a channel whose
    delivery stays unacked longer than its global ``consumer_timeout`` (30 min by
    default; only settable per queue from 3.11.15), which returns every message of
    that channel and runs them again: keep the hard time limit below it (a warning
    is logged when ``time_limit`` is not) and keep the prefetch multiplier at 1 for
    long tasks, because a prefetched message waits unacked too.

    *Reading deliveries.* pika turns every frame into objects (the method, a
    property set of fourteen fields, an assembler for the body) and re-slices its
    whole read buffer after each frame: about 40 us per delivery, the largest cost
    of a worker's main process on a stream of tiny tasks. So the connection reads a
    plain delivery on the consumer channel itself, in one pass over the bytes
    (:func:`_decode_delivery`), and hands every other frame to pika in order: a
    redelivery (whose count is raised through pika's objects), a delivery for a
    cancelled consumer, anything unexpected or malformed (which pika then reports).

    *Reconnection.* When the connection drops, the I/O thread reconnects with
    backoff (0.1 s doubling to 2 s), trying each URL in turn, re-opens the
    channels, declares queues and exchanges again as they are used (the broker may
    have restarted without its transient exchanges) and re-subscribes, so a
    subscription opened before an outage hears broadcasts after it (those sent
    during the outage are lost). Unconfirmed publishes fail at their callers (they
    are not silently resent, which could duplicate them); unacked deliveries were
    returned by the broker and come back with their count raised. An operation
    that finds no connection waits up to ``connect_timeout`` for one, then raises
    :class:`~polyq.exceptions.BrokerError`; ``receive`` waits at most its ``wait``
    and returns ``[]`` during a short outage.

    *Clean-up.* ``delete_queue(queue)`` (specific to this plugin) deletes a queue
    with its dead letters and delay levels; ``purge`` leaves the queues in place.

Capabilities
    priority; ``max_delay`` ~77 days; ``max_message_size`` 16 MiB; broadcast;
    connection-bound leases (``extend_lease`` is a no-op); dead letters; scheduled
    inspection; durable. ``size`` counts ready and delayed messages plus those this
    instance holds (AMQP does not count another consumer's unacked messages).
    ``queues`` lists only the queues this instance declared (AMQP cannot list a
    vhost). Counting or purging a queue probes its delay levels with passive
    declares, and pika logs the expected ``404`` of the first missing level as a
    warning.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import heapq
import itertools
import logging
import math
import os
import queue as queue_module
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import pika
import pika.data
import pika.exceptions
import pika.frame
from pika import spec
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport
from pika.channel import Channel

from polyq.exceptions import BrokerError, ConfigurationError, MessageTooLarge
from polyq.transport import (
    Capabilities,
    DeadLetter,
    Delivery,
    OutgoingMessage,
    ScheduledMessage,
    Subscription,
    Transport,
)
from polyq.url import redact

__all__ = ["RabbitMQTransport"]

logger = logging.getLogger("polyq.transports.rabbitmq")

T = TypeVar("T")

#: Delays are counted in units of this many milliseconds.
DELAY_UNIT_MS = 100
#: Level ``k`` holds messages for ``2**k`` units; the top level's TTL stays under
#: RabbitMQ's limit of 2**32 - 1 ms.
DELAY_LEVELS = 26
MAX_DELAY = (2**DELAY_LEVELS - 1) * DELAY_UNIT_MS / 1000.0
DELIVER_EXCHANGE = "polyq.delay.deliver"
BROADCAST_PREFIX = "polyq.broadcast."

H_DELIVERIES = "x-polyq-deliveries"
H_REASON = "x-polyq-reason"
H_FAILED_AT = "x-polyq-failed-at"
H_ETA = "x-polyq-eta"
H_QUEUE = "polyq-delay-queue"
_BIT_PREFIX = "polyq-delay-"
# Headers the broker or polyq add; they never reach the application.
_BROKER_HEADERS = frozenset(
    {
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)

_REFUSED = (
    pika.exceptions.ProbableAuthenticationError,
    pika.exceptions.AuthenticationError,
    pika.exceptions.ProbableAccessDeniedError,
)
#: (exchange, routing key, body, properties, mandatory)
_Item = tuple[str, str, bytes, pika.BasicProperties, bool]
_RECONNECT_MIN = 0.1
_RECONNECT_MAX = 2.0
#: A gathered run of frames goes to the socket in writes of about this size: big
#: enough to cost few syscalls, small enough that a partial send re-slices little.
_WRITE_CHUNK = 256 * 1024
#: Messages of a batch marshalled per turn of the I/O loop.
_PUBLISH_SLICE = 100


def _level_exchange(level: int) -> str:
    return f"polyq.delay.{level:02d}"


def _level_queue(queue: str, level: int) -> str:
    return f"{queue}.delay.{level:02d}"


def _bit_header(level: int) -> str:
    return f"{_BIT_PREFIX}{level:02d}"


def _user_headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """The application's headers, without polyq's and the broker's."""
    if not raw:
        return {}
    out: dict[str, str] = {}
    for key, value in raw.items():
        if key.startswith(("x-polyq-", _BIT_PREFIX)) or key in _BROKER_HEADERS:
            continue
        out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out


def _resolve(fut: asyncio.Future[Any]) -> Callable[..., None]:
    """A pika callback that completes ``fut`` with its first argument."""

    def done(*args: Any) -> None:
        if not fut.done():
            fut.set_result(args[0] if args else None)

    return done


def _on_conn_closed(fut: asyncio.Future[Any], _conn: Any, reason: BaseException) -> None:
    if not fut.done():
        fut.set_result(reason)


def _root_cause(exc: BaseException) -> BaseException:
    """The broker's answer inside pika's connection-workflow wrappers."""
    for _ in range(5):
        inner = getattr(exc, "exceptions", None) or ()
        if inner and isinstance(inner[-1], BaseException):
            exc = inner[-1]
        elif isinstance(getattr(exc, "exception", None), BaseException):
            exc = exc.exception  # type: ignore[attr-defined]
        else:
            break
    return exc


def _chain(future: concurrent.futures.Future[None], task: asyncio.Task[None]) -> None:
    """Pass an I/O-thread task's outcome to a caller's future."""
    if future.done():
        return
    if task.cancelled():
        future.set_exception(BrokerError("the publish was cancelled (transport closing)"))
    elif task.exception() is not None:
        future.set_exception(task.exception())
    else:
        future.set_result(None)


def _send_now(transport: Any, data: bytes) -> bytes:
    """Write to a plain TCP transport's socket what it takes at once, if pika has
    nothing queued before ``data``; return what is left for pika to queue.

    pika only queues a write and sends it on the loop's next turn, once the socket
    reports writable: a turn and two ``epoll_ctl`` calls later (about 50 us) for
    every publish and every ack, each on a round trip's critical path. Anything
    unusual (TLS, a queue already waiting, a full socket, an error) is left to
    pika, which reports errors as it always does.
    """
    if type(transport) is not _AsyncPlaintextTransport or transport.get_write_buffer_size():
        return data
    sock = getattr(transport, "_sock", None)
    if sock is None or getattr(transport, "_state", None) != transport._STATE_ACTIVE:
        return data
    try:
        sent = sock.send(data)
    except OSError:  # EAGAIN, or a broken socket pika's own send will meet too
        return data
    return data[sent:]


def _describe_close(reason: BaseException | None) -> str:
    if isinstance(reason, pika.exceptions.ChannelClosed | pika.exceptions.ConnectionClosed):
        return f"{reason.reply_code} {reason.reply_text}"
    return repr(reason) if reason is not None else "unknown reason"


#: A frame's head: type, channel, payload size (AMQP 0-9-1, section 4.2.3).
_FRAME_HEAD = struct.Struct(">BHI")
_FRAME_END = 0xCE
#: Basic.Deliver's class and method ids, as they open its method frame's payload.
_DELIVER = b"\x00\x3c\x00\x3c"
#: The content header's class, weight and body size, then the first flag word.
_CONTENT_HEAD = struct.Struct(">HHQH")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
#: One callable takes each delivery decoded by :func:`_decode_delivery`:
#: (consumer tag, delivery tag, headers, message id, priority, body) -> taken.
DeliveryTaker = Callable[[str, int, dict[str, Any], str, int, bytes], bool]


def _decode_table(buf: bytes, p: int) -> tuple[dict[str, Any], int]:
    """An AMQP field table at ``buf[p:]``: long strings read here, anything else by
    pika (polyq's own headers are all long strings)."""
    (size,) = _U32.unpack_from(buf, p)
    p += 4
    limit = p + size
    table: dict[str, Any] = {}
    while p < limit:
        n = buf[p]
        key = buf[p + 1 : p + 1 + n].decode()
        p += 1 + n
        if buf[p] == 0x53:  # "S"
            (n,) = _U32.unpack_from(buf, p + 1)
            raw = buf[p + 5 : p + 5 + n]
            p += 5 + n
            try:
                table[key] = raw.decode()
            except UnicodeDecodeError:
                table[key] = raw  # as pika gives it
        else:
            table[key], p = pika.data.decode_value(buf, p)
    return table, p


def _frame_end(buf: bytes, p: int, end: int, kind: int, channel: int) -> int:
    """Where the frame at ``buf[p]`` ends if it is a ``kind`` frame on ``channel``;
    -1 if ``buf`` ends before it does, 0 if it is another frame or malformed."""
    if end - p < 8:
        return -1
    found, chan, size = _FRAME_HEAD.unpack_from(buf, p)
    if found != kind or chan != channel:
        return 0
    after = p + 8 + size
    if after > end:
        return -1
    return after if buf[after - 1] == _FRAME_END else 0


def _decode_delivery(buf: bytes, pos: int, end: int, channel: int, take: DeliveryTaker) -> int:
    """Decode the delivery whose Basic.Deliver frame starts at ``buf[pos]`` and hand
    it to ``take``; return where its last frame ends, -1 if ``buf`` ends before
    that, or 0 to leave it to pika (a redelivery, an unknown consumer, a malformed
    frame: pika handles it or raises as it always does). Why: see *Reading
    deliveries* in the module's docstring.
    """
    try:
        _, _, size = _FRAME_HEAD.unpack_from(buf, pos)
        p = pos + 11
        n = buf[p]
        consumer_tag = buf[p + 1 : p + 1 + n].decode()
        p += 1 + n
        (delivery_tag,) = _U64.unpack_from(buf, p)
        if buf[p + 8] & 1:
            return 0  # redelivered: pika's path counts it (see _on_message)
        p = pos + 8 + size  # past the exchange and routing key, which polyq doesn't need
        if buf[p - 1] != _FRAME_END:
            return 0
        after = _frame_end(buf, p, end, 2, channel)  # the content header
        if after <= 0:
            return after
        _, _, body_size, flags = _CONTENT_HEAD.unpack_from(buf, p + 7)
        if flags & 1:
            return 0  # a second flag word: not a property set polyq writes
        p += 21
        headers: dict[str, Any] = {}
        message_id = ""
        priority = 0
        for bit in (15, 14):  # content type, content encoding
            if flags >> bit & 1:
                p += 1 + buf[p]
        if flags >> 13 & 1:
            headers, p = _decode_table(buf, p)
        if flags >> 12 & 1:  # delivery mode
            p += 1
        if flags >> 11 & 1:
            priority = buf[p]
            p += 1
        for bit in (10, 9, 8):  # correlation id, reply to, expiration
            if flags >> bit & 1:
                p += 1 + buf[p]
        if flags >> 7 & 1:
            n = buf[p]
            message_id = buf[p + 1 : p + 1 + n].decode()
        # The body: as many body frames as it takes (none for an empty body).
        p = after
        chunks: list[bytes] = []
        missing = body_size
        while missing > 0:
            after = _frame_end(buf, p, end, 3, channel)
            if after <= 0:
                return after
            chunks.append(buf[p + 7 : after - 1])
            missing -= after - p - 8
            p = after
    except (struct.error, IndexError, UnicodeDecodeError):
        return 0  # pika reads it again and reports what is wrong
    if missing < 0:
        return 0
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)  # none: an empty body
    return p if take(consumer_tag, delivery_tag, headers, message_id, priority, body) else 0


class _Connection(AsyncioConnection):  # type: ignore[misc]  # pika is untyped: its base is Any
    """pika's asyncio connection, able to hand a run of frames to the socket at once.

    pika queues every frame as its own buffer and sends each with its own
    ``send()``: three syscalls per published message (method, header, body), which
    cost more than everything else of a batch publish together. Inside
    :meth:`gathered`, frames are joined and written in few large chunks instead; the
    bytes and their order on the wire are the same. Either way a write goes to the
    socket at once when nothing waits before it (see :func:`_send_now`).
    """

    _frame_buffer: bytes  # pika's: what was read and not yet decoded

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._gathered: list[bytes] | None = None
        self._gathered_size = 0
        #: Set by the transport while it consumes: the consumer channel's number and
        #: who takes the deliveries decoded on it (see :func:`_decode_delivery`).
        self.deliveries: tuple[int, DeliveryTaker] | None = None
        super().__init__(*args, **kwargs)
        # The read path below uses pika internals (its read buffer and per-frame
        # dispatch); a pika without them keeps its own path.
        self._own_reads = isinstance(getattr(self, "_frame_buffer", None), bytes) and callable(
            getattr(self, "_process_frame", None)
        )

    def _on_data_available(self, data_in: bytes) -> None:
        """Read frames: plain deliveries on the consumer channel by
        :func:`_decode_delivery`, every other frame by pika, in order."""
        deliveries = self.deliveries
        if deliveries is None or not self._own_reads:
            super()._on_data_available(data_in)
            return
        channel, take = deliveries
        buf = self._frame_buffer + data_in if self._frame_buffer else data_in
        pos, end = 0, len(buf)
        while end - pos >= 8:
            kind, chan, size = _FRAME_HEAD.unpack_from(buf, pos)
            after = pos + 8 + size
            if after > end:
                break  # the rest of this frame is still on its way
            if kind == 1 and chan == channel and buf[pos + 7 : pos + 11] == _DELIVER:
                done = _decode_delivery(buf, pos, end, channel, take)
                if done > 0:
                    self.bytes_received += done - pos  # the heartbeat checker reads it
                    pos = done
                    continue
                if done < 0:
                    break  # the rest of this delivery is still on its way
            # One frame, sliced to its own size: pika's loop re-slices the whole
            # buffer after each frame.
            consumed, frame_value = pika.frame.decode_frame(buf[pos:after])
            self.bytes_received += consumed
            pos = after
            self._process_frame(frame_value)
        self._frame_buffer = buf[pos:]

    def _adapter_emit_data(self, data: bytes) -> None:
        gathered = self._gathered
        if gathered is None:
            self._write(data)
            return
        gathered.append(data)
        self._gathered_size += len(data)
        if self._gathered_size >= _WRITE_CHUNK:
            self._flush_gathered()

    def _flush_gathered(self) -> None:
        chunks = self._gathered
        if chunks:
            self._gathered = []
            self._gathered_size = 0
            self._write(b"".join(chunks))

    def _write(self, data: bytes) -> None:
        """Send ``data`` now when nothing is queued before it; pika queues the rest."""
        rest = _send_now(self._transport, data)
        if rest:
            super()._adapter_emit_data(rest)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """Join the frames emitted inside the block into few writes (I/O thread only)."""
        if self._gathered is not None:  # nested: the outer block writes
            yield
            return
        self._gathered = []
        try:
            yield
        finally:
            # Whatever was emitted is written even if the block failed half-way:
            # the frames are already counted by pika and their confirms awaited.
            self._flush_gathered()
            self._gathered = None


class _Receipt:
    """Where a delivery came from: the consumer channel's generation and tag."""

    __slots__ = ("generation", "tag")

    def __init__(self, generation: int, tag: int) -> None:
        self.generation = generation
        self.tag = tag

    def __repr__(self) -> str:
        return f"<receipt gen={self.generation} tag={self.tag}>"


class _Batch:
    """Confirms awaited by one ``publish`` call."""

    __slots__ = ("errors", "future", "remaining")

    def __init__(
        self, future: asyncio.Future[None] | concurrent.futures.Future[None], count: int
    ) -> None:
        self.future = future
        self.remaining = count
        self.errors: list[str] = []

    def settle(self, error: str | None) -> None:
        if error is not None:
            self.errors.append(error)
        self.remaining -= 1
        if self.remaining <= 0 and not self.future.done():
            # The caller's thread may cancel a concurrent future in between (it gave
            # up waiting); that race is harmless.
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if self.errors:
                    self.future.set_exception(BrokerError("; ".join(sorted(set(self.errors)))))
                else:
                    self.future.set_result(None)

    def fail(self, error: str) -> None:
        if not self.future.done():
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                self.future.set_exception(BrokerError(error))


class _TempChannel:
    """A short-lived channel whose RPCs are awaitable; a broker error closing it
    fails the pending RPC with the broker's reason."""

    def __init__(self, owner: RabbitMQTransport, channel: Channel) -> None:
        self.owner = owner
        self.channel = channel
        self.closed_by: BaseException | None = None
        self._waiting: set[asyncio.Future[Any]] = set()
        channel.add_on_close_callback(self._on_close)

    def _on_close(self, _channel: Channel, reason: BaseException) -> None:
        self.closed_by = reason
        for fut in self._waiting:
            if not fut.done():
                fut.set_exception(reason)

    async def call(self, start: Callable[..., Any]) -> Any:
        """Run ``start(callback=...)`` and wait for the callback's first argument."""
        if self.closed_by is not None:
            raise self.closed_by
        fut: asyncio.Future[Any] = self.owner._loop.create_future()
        self._waiting.add(fut)
        self.owner._inflight.add(fut)

        def done(*args: Any) -> None:
            if not fut.done():
                fut.set_result(args[0] if len(args) == 1 else args)

        try:
            start(callback=done)
            return await fut
        finally:
            self._waiting.discard(fut)
            self.owner._inflight.discard(fut)

    async def close(self) -> None:
        """Close the channel and wait until the broker has (messages it delivered
        unacked are back in their queues then)."""
        if not self.channel.is_open:
            return
        closed: asyncio.Future[Any] = self.owner._loop.create_future()
        self.channel.add_on_close_callback(lambda *_: _resolve(closed)())
        with contextlib.suppress(Exception):
            self.channel.close()
            await asyncio.wait_for(asyncio.shield(closed), 5.0)


class _Subscription(Subscription):
    """A broadcast listener: an exclusive queue bound to the channel's fanout."""

    def __init__(self, owner: RabbitMQTransport, channel: str) -> None:
        self.owner = owner
        self.exchange = BROADCAST_PREFIX + channel
        self.inbox: queue_module.SimpleQueue[bytes] = queue_module.SimpleQueue()
        self.pika_channel: Channel | None = None
        self.closed = False

    def get(self, timeout: float) -> bytes | None:
        """The next broadcast body, or ``None`` after ``timeout`` seconds."""
        try:
            return self.inbox.get(timeout=max(0.0, timeout))
        except queue_module.Empty:
            return None

    def close(self) -> None:
        """Cancel the queue's consumer (the broker deletes the queue); idempotent."""
        if self.closed:
            return
        self.closed = True
        self.owner._forget_subscription(self)


class RabbitMQTransport(Transport):
    """RabbitMQ transport: see the module docstring for the design."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        priority=True,
        max_delay=MAX_DELAY,
        max_message_size=16 * 1024 * 1024,
        broadcast=True,
        lease="connection",
        extend_lease=False,
        dead_letter=True,
        inspect_scheduled=True,
        may_duplicate=False,
        transactional_enqueue=False,
        durable=True,
    )

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.max_priority = int(options.get("max_priority", 9))
        if not 0 <= self.max_priority <= 255:
            raise ConfigurationError(
                f"max_priority={self.max_priority} for {redact(url)}: RabbitMQ takes 0..255 "
                "(polyq uses 0..9; 0 declares queues without priority)"
            )
        self.queue_version = int(options.get("queue_version", 2))
        if self.queue_version not in (0, 1, 2):
            raise ConfigurationError(
                f"queue_version={self.queue_version} for {redact(url)}: RabbitMQ's classic "
                "queues are version 1 or 2 (0 = the broker's default)"
            )
        fixed = options.get("prefetch_count")
        self.prefetch_count: int | None = int(fixed) if fixed else None
        self.heartbeat = int(options.get("heartbeat", 30))
        self.connect_timeout = float(options.get("connect_timeout", 10.0))
        self.confirm_timeout = float(options.get("confirm_timeout", 30.0))
        self.max_message_size = int(
            options.get("max_message_size", self.capabilities.max_message_size or 0)
        )
        self.consumer_timeout = float(options.get("consumer_timeout", 1800.0))
        self._params = [self._parameters(part) for part in self._split_urls(url)]
        time_limit = options.get("time_limit", options.get("task_time_limit"))
        if time_limit is not None:
            self.check_time_limit(float(time_limit))

        self._pid = os.getpid()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop = asyncio.new_event_loop()
        self._closed = False

        # -- state shared with callers, guarded by _cond ---------------------------
        self._cond = threading.Condition()
        self._buffer: list[tuple[int, int, Delivery]] = []  # (-priority, seq, delivery)
        self._seq = itertools.count()
        self._held: dict[str, int] = {}  # handed out and not yet settled, per queue
        self._want: tuple[str, ...] = ()
        self._demand = 0
        self._generation = 0
        # I/O thread only: the consumer channel's delivery tags not yet settled, in
        # delivery order, and those settled one by one ahead of an unsettled one. An
        # ack of a contiguous run from the oldest goes out as one multiple-ack frame.
        self._unsettled: collections.deque[int] = collections.deque()
        self._settled_early: set[int] = set()
        self._tracked_generation = 0
        self._up_flag = False
        self._down_since: float | None = None
        self._last_error: BaseException | None = None

        # -- state of the I/O thread only ----------------------------------------
        self._conn: _Connection | None = None
        self._up: asyncio.Event | None = None
        self._pub: Channel | None = None
        self._pub_lock: asyncio.Lock | None = None
        self._pub_tag = 0
        self._unconfirmed: dict[int, tuple[_Batch, str]] = {}
        self._returned: set[int] = set()
        self._consumer: Channel | None = None
        self._consumer_lock: asyncio.Lock | None = None
        self._consumer_rpc: _TempChannel | None = None
        self._consuming: dict[str, str] = {}  # queue -> consumer tag
        self._tag_queue: dict[str, str] = {}
        self._applied_qos = -1
        self._inflight: set[asyncio.Future[Any]] = set()
        self._declared: set[str] = set()
        self._exchanges: set[str] = set()
        self._levels: dict[str, int] = {}  # queue -> delay levels declared (0..n-1)
        self._shared_levels = 0  # level exchanges declared and chained
        self._subs: list[_Subscription] = []
        self._url_index = 0

    # -- configuration -------------------------------------------------------------

    @staticmethod
    def _split_urls(url: str) -> list[str]:
        parts = [part.strip() for part in url.split(";") if part.strip()]
        if not parts:
            raise ConfigurationError("empty RabbitMQ URL; expected amqp://user:password@host//")
        return parts

    def _parameters(self, url: str) -> pika.URLParameters:
        split = urlsplit(url)
        scheme = split.scheme.lower()
        if scheme == "pyamqp":
            scheme = "amqp"
        if scheme not in {"amqp", "amqps"}:
            raise ConfigurationError(
                f"{redact(url)} is not an AMQP URL; expected amqp://user:password@host:5672/vhost"
            )
        # The query string carries polyq's options, which pika would reject.
        bare = urlunsplit((scheme, split.netloc, split.path, "", ""))
        try:
            params = pika.URLParameters(bare)
        except Exception as exc:
            raise ConfigurationError(f"cannot parse the RabbitMQ URL {redact(url)}: {exc}") from exc
        # Celery's spelling: "//" (or nothing) is the vhost "/".
        vhost = unquote(split.path[1:]) if split.path not in ("", "/", "//") else "/"
        params.virtual_host = vhost
        params.heartbeat = self.heartbeat
        params.connection_attempts = 1
        params.socket_timeout = self.connect_timeout
        params.stack_timeout = self.connect_timeout
        params.blocked_connection_timeout = self.confirm_timeout
        params.client_properties = {"connection_name": f"polyq pid {os.getpid()}"}
        if scheme == "amqps":
            context = ssl.create_default_context(cafile=self.options.get("ssl_ca_certs"))
            certfile = self.options.get("ssl_certfile")
            if certfile:
                context.load_cert_chain(certfile, self.options.get("ssl_keyfile"))
            if not self.options.get("ssl_verify", True):
                logger.warning(
                    "TLS certificate verification is off for %s (ssl_verify=false)", redact(url)
                )
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            params.ssl_options = pika.SSLOptions(context, server_hostname=split.hostname)
        return params

    def check_time_limit(self, time_limit: float | None) -> bool:
        """Log a warning when a task's hard ``time_limit`` (seconds) is not below the
        broker's ``consumer_timeout``; return whether it is safe."""
        if time_limit is not None and time_limit < self.consumer_timeout:
            return True
        logger.warning(
            "hard time limit %s is not below RabbitMQ's consumer_timeout (%.0f s): a task that "
            "runs longer gets its channel closed by the broker, and every message of that "
            "channel runs again. Lower the time limit, or raise consumer_timeout in "
            "rabbitmq.conf and tell polyq with the transport option consumer_timeout.",
            "none" if time_limit is None else f"{time_limit:.0f} s",
            self.consumer_timeout,
        )
        return False

    def describe(self) -> str:
        """The redacted URL(s), the queue type and the prefetch policy."""
        prefetch = self.prefetch_count or "worker demand"
        return f"{redact(self.url)} (classic queues, prefetch {prefetch})"

    # -- the I/O thread --------------------------------------------------------------

    def _start(self) -> None:
        if os.getpid() != self._pid:
            raise BrokerError(
                "a RabbitMQ transport was used in a forked child; build a new one in the child"
            )
        if self._closed:
            raise BrokerError(f"the transport for {redact(self.url)} is closed")
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run_loop, name="polyq-amqp-io", daemon=True)
                thread.start()
                self._thread = thread

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._up = asyncio.Event()
        self._pub_lock = asyncio.Lock()
        self._consumer_lock = asyncio.Lock()
        self._loop.create_task(self._maintain())
        try:
            self._loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the I/O loop and wait for its result."""
        try:
            self._start()
        except BaseException:
            coro.close()  # never scheduled
            raise
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise BrokerError(
                f"RabbitMQ at {redact(self.url)} did not answer within {timeout:.0f} s"
            ) from None
        except pika.exceptions.AMQPError as exc:
            raise BrokerError(f"RabbitMQ at {redact(self.url)}: {_describe_close(exc)}") from exc

    def _soon(self, fn: Callable[[], None]) -> None:
        self._start()
        self._loop.call_soon_threadsafe(fn)

    async def _maintain(self) -> None:
        """Connect, and reconnect with backoff whenever the connection is lost."""
        backoff = _RECONNECT_MIN
        while not self._closed:
            conn = await self._connect_any()
            if conn is None:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX)
                continue
            closed: asyncio.Future[BaseException] = self._loop.create_future()
            self._conn = conn
            conn.add_on_close_callback(functools.partial(_on_conn_closed, closed))
            try:
                await self._setup()
            except Exception as exc:
                self._last_error = exc
                logger.warning("RabbitMQ at %s: setup failed: %s", self._where(), exc)
                with contextlib.suppress(Exception):
                    conn.close()
            else:
                backoff = _RECONNECT_MIN
                with self._cond:
                    self._up_flag = True
                    self._down_since = None
                assert self._up is not None
                self._up.set()
                logger.debug("connected to RabbitMQ at %s", self._where())
            reason = await closed
            self._lost(reason)
            if not self._closed:
                logger.warning(
                    "lost the connection to RabbitMQ at %s (%s); reconnecting",
                    self._where(),
                    _describe_close(reason),
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX)

    def _where(self) -> str:
        params = self._params[self._url_index]
        return redact(f"{params.host}:{params.port}")

    async def _connect_any(self) -> _Connection | None:
        """Try each URL in turn, starting with the last one that worked."""
        count = len(self._params)
        for step in range(count):
            index = (self._url_index + step) % count
            opened: asyncio.Future[_Connection] = self._loop.create_future()

            def on_error(
                _conn: Any, exc: str | Exception, fut: asyncio.Future[Any] = opened
            ) -> None:
                if not fut.done():
                    fut.set_exception(exc if isinstance(exc, Exception) else BrokerError(exc))

            def on_open(conn: Any, fut: asyncio.Future[Any] = opened) -> None:
                if fut.done():  # we gave up on it: do not leak a late connection
                    conn.close()
                else:
                    fut.set_result(conn)

            try:
                _Connection(
                    self._params[index],
                    on_open_callback=on_open,
                    on_open_error_callback=on_error,
                    custom_ioloop=self._loop,
                )
                conn = await asyncio.wait_for(opened, self.connect_timeout + 1)
            except Exception as exc:
                self._last_error = _root_cause(exc)
                continue
            self._url_index = index
            return conn
        with self._cond:
            if self._down_since is None:
                self._down_since = time.monotonic()
        return None

    async def _setup(self) -> None:
        """Open the publishing and consuming channels and resume consumers."""
        await self._open_publisher()
        await self._sync_consumers()
        for sub in list(self._subs):
            await self._open_subscription(sub)

    def _lost(self, reason: BaseException) -> None:
        """The connection closed: fail what waited on it and forget its channels."""
        assert self._up is not None
        self._up.clear()
        self._conn = None
        message = f"lost the connection to RabbitMQ at {self._where()} ({_describe_close(reason)})"
        self._fail_unconfirmed(message + " before the broker confirmed the message")
        for fut in list(self._inflight):
            if not fut.done():
                fut.set_exception(BrokerError(message))
        self._inflight.clear()
        self._pub = None
        self._forget_consumer()
        for sub in self._subs:
            sub.pika_channel = None
        # The broker may have restarted (transient exchanges gone) or been replaced:
        # declare everything again on the next connection.
        self._declared.clear()
        self._exchanges.clear()
        self._levels.clear()
        self._shared_levels = 0
        with self._cond:
            self._up_flag = False
            if self._down_since is None:
                self._down_since = time.monotonic()
            self._last_error = reason

    async def _connected(self) -> _Connection:
        assert self._up is not None
        if not self._up.is_set():
            if isinstance(self._last_error, _REFUSED):
                raise self._unreachable()  # retrying will not change the broker's mind
            try:
                await asyncio.wait_for(self._up.wait(), self.connect_timeout)
            except TimeoutError:
                raise self._unreachable() from None
        assert self._conn is not None
        return self._conn

    def _unreachable(self) -> BrokerError:
        last = self._last_error
        detail = _describe_close(last) if last is not None else "no answer"
        if isinstance(last, pika.exceptions.ProbableAccessDeniedError):
            detail = f"access denied ({last}); check that the vhost exists and the user may use it"
        elif isinstance(last, _REFUSED):
            detail = f"authentication failed ({last}); check the user and password in the URL"
        return BrokerError(
            f"cannot reach RabbitMQ at {redact(self.url)} within {self.connect_timeout:.0f} s: "
            f"{detail}. Check that the broker runs and the URL is right."
        )

    async def _channel(self) -> Channel:
        conn = self._conn
        if conn is None or not conn.is_open:  # open during setup, before _up is set
            conn = await self._connected()
        opened: asyncio.Future[Channel] = self._loop.create_future()
        self._inflight.add(opened)
        try:
            conn.channel(on_open_callback=_resolve(opened))
            return await opened
        finally:
            self._inflight.discard(opened)

    @contextlib.asynccontextmanager
    async def _temp(self) -> Any:
        channel = _TempChannel(self, await self._channel())
        try:
            yield channel
        finally:
            await channel.close()

    # -- publishing ------------------------------------------------------------------

    async def _open_publisher(self) -> None:
        channel = await self._channel()
        selected: asyncio.Future[None] = self._loop.create_future()
        self._inflight.add(selected)
        channel.add_on_close_callback(self._publisher_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(
            self._on_confirm,
            callback=lambda _frame: _resolve(selected)(),
        )
        try:
            await selected
        finally:
            self._inflight.discard(selected)
        self._pub_tag = 0
        self._pub = channel

    def _publisher_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self._pub:
            return
        self._pub = None
        self._fail_unconfirmed(
            f"RabbitMQ closed the publishing channel ({_describe_close(reason)}) before "
            "confirming the message"
        )

    def _fail_unconfirmed(self, message: str) -> None:
        pending, self._unconfirmed = self._unconfirmed, {}
        self._returned.clear()
        for batch, _mid in pending.values():
            batch.fail(message)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ok = isinstance(method, spec.Basic.Ack)
        tag = method.delivery_tag
        if method.multiple:
            tags = []
            for pending in self._unconfirmed:
                if pending > tag:
                    break
                tags.append(pending)
        else:
            tags = [tag]
        for done in tags:
            entry = self._unconfirmed.pop(done, None)
            if entry is None:
                continue
            batch, message_id = entry
            if done in self._returned:
                self._returned.discard(done)
                batch.settle(
                    f"no queue took message {message_id} (it was returned unroutable); "
                    "was its queue deleted while in use?"
                )
            elif not ok:
                batch.settle(f"RabbitMQ refused message {message_id} (basic.nack)")
            else:
                batch.settle(None)

    def _on_return(self, _channel: Channel, method: Any, props: Any, _body: bytes) -> None:
        # A return precedes the confirm of the same message; find that message.
        for tag, (_batch, message_id) in self._unconfirmed.items():
            if message_id == props.message_id and tag not in self._returned:
                self._returned.add(tag)
                break
        self._declared.discard(method.routing_key)

    async def _publisher(self) -> Channel:
        await self._connected()
        if self._pub is None or not self._pub.is_open:
            assert self._pub_lock is not None
            async with self._pub_lock:
                if self._pub is None or not self._pub.is_open:
                    await self._open_publisher()
        assert self._pub is not None
        return self._pub

    async def _send(
        self, items: Sequence[tuple[str, str, bytes, pika.BasicProperties, bool]]
    ) -> None:
        """Publish ``(exchange, routing key, body, properties, mandatory)`` items and
        wait until the broker has confirmed every one."""
        if not items:
            return
        channel = await self._publisher()
        future: asyncio.Future[None] = self._loop.create_future()
        self._emit(channel, items, _Batch(future, len(items)))
        try:
            await asyncio.wait_for(asyncio.shield(future), self.confirm_timeout)
        except TimeoutError:
            future.cancel()
            raise BrokerError(
                f"RabbitMQ at {self._where()} did not confirm {len(items)} message(s) within "
                f"{self.confirm_timeout:.0f} s (a memory or disk alarm?); they may or may not "
                "have been stored"
            ) from None

    def _properties(
        self, headers: dict[str, Any], message_id: str, priority: int
    ) -> pika.BasicProperties:
        return pika.BasicProperties(
            delivery_mode=2,
            message_id=message_id,
            priority=min(max(priority, 0), self.max_priority) if self.max_priority else None,
            headers=headers,
        )

    def _route(self, queue: str, delay: float, headers: dict[str, Any]) -> tuple[str, str, int]:
        """Return (exchange, routing key, top delay level or -1) and add the delay bits."""
        units = math.ceil(delay * 1000.0 / DELAY_UNIT_MS - 1e-9) if delay > 0 else 0
        if units <= 0:
            return "", queue, -1
        if units >= 2**DELAY_LEVELS:
            raise ValueError(
                f"delay {delay:.0f} s exceeds the RabbitMQ transport's max_delay "
                f"({MAX_DELAY:.0f} s); the core re-delays longer ETAs in hops"
            )
        top = units.bit_length() - 1
        for level in range(top + 1):
            headers[_bit_header(level)] = "1" if units >> level & 1 else "0"
        headers[H_QUEUE] = queue
        headers[H_ETA] = f"{time.time() + units * DELAY_UNIT_MS / 1000.0:.3f}"
        return _level_exchange(top), queue, top

    async def _prepare(self, tops: Mapping[str, int]) -> None:
        """Declare each queue, and its delay levels up to ``tops[queue]``."""
        for queue, top in tops.items():
            if queue not in self._declared:
                await self._declare_queue(queue)
            if top >= self._levels.get(queue, 0):
                await self._declare_levels(queue, top + 1)

    def _encode(self, messages: Sequence[OutgoingMessage]) -> tuple[list[_Item], dict[str, int]]:
        """The publish items of ``messages``, and the top delay level per queue."""
        items = []
        tops: dict[str, int] = {}
        for message in messages:
            headers: dict[str, Any] = dict(message.headers)
            exchange, routing_key, level = self._route(message.queue, message.delay, headers)
            tops[message.queue] = max(tops.get(message.queue, -1), level)
            props = self._properties(headers, message.message_id, message.priority)
            items.append((exchange, routing_key, message.body, props, True))
        return items, tops

    async def _publish(self, items: list[_Item], tops: dict[str, int]) -> None:
        await self._connected()
        await self._prepare(tops)
        await self._send(items)

    def _send_now(self, items: list[_Item], future: concurrent.futures.Future[None]) -> None:
        """The fast path, in the I/O thread: publish at once if the channel is open,
        else take the full path (connect, declare, open the channel)."""
        channel = self._pub
        if channel is None or not channel.is_open or self._up is None or not self._up.is_set():
            task = self._loop.create_task(self._send(items))
            task.add_done_callback(functools.partial(_chain, future))
            return
        self._emit(channel, items, _Batch(future, len(items)))

    def _emit(
        self, channel: Channel, items: Sequence[_Item], batch: _Batch, start: int = 0
    ) -> None:
        """Publish ``items[start:]`` on ``channel``, each counted toward ``batch``'s
        confirms; a failure fails ``batch`` (this runs as a loop callback, where an
        exception would reach nobody)."""
        if batch.future.done():  # failed (channel lost, nack) or given up: send no more
            return
        if not channel.is_open:
            batch.fail(
                f"RabbitMQ at {self._where()} closed the publishing channel before the "
                "message was sent"
            )
            return
        # A slice at a time, letting the loop write each one before marshalling the
        # next: the broker stores the first messages while the rest are encoded.
        end = start + _PUBLISH_SLICE
        unconfirmed = self._unconfirmed
        try:
            with self._gather():
                for exchange, routing_key, body, props, mandatory in items[start:end]:
                    channel.basic_publish(exchange, routing_key, body, props, mandatory)
                    self._pub_tag += 1
                    unconfirmed[self._pub_tag] = (batch, props.message_id or "")
        except Exception as exc:
            batch.fail(f"publishing to RabbitMQ at {self._where()} failed: {exc!r}")
            return
        if end < len(items):
            self._loop.call_soon(self._emit, channel, items, batch, end)

    def _gather(self) -> contextlib.AbstractContextManager[None]:
        """Frames emitted inside go to the socket in few writes (see :class:`_Connection`)."""
        conn = self._conn
        return conn.gathered() if conn is not None else contextlib.nullcontext()

    def _prepared(self, tops: dict[str, int]) -> bool:
        """Whether every queue and delay level is known to exist (read from the
        caller's thread: a hint, and a wrong one only costs an unroutable error)."""
        for queue, top in tops.items():
            if queue not in self._declared or top >= self._levels.get(queue, 0):
                return False
        return self._up_flag

    def publish(self, messages: Sequence[OutgoingMessage], **kwargs: Any) -> None:
        """Publish persistently and return once RabbitMQ has confirmed every message."""
        if kwargs.get("connection") is not None:
            raise ConfigurationError(
                "RabbitMQ cannot join a database transaction (publish(connection=...)); "
                "use a SQL broker for transactional enqueue"
            )
        if not messages:
            return
        for message in messages:
            size = len(message.body) + sum(len(k) + len(v) for k, v in message.headers.items())
            if self.max_message_size and size > self.max_message_size:
                raise MessageTooLarge(
                    f"message {message.message_id} for queue {message.queue!r} is {size} bytes; "
                    f"the RabbitMQ transport's limit is {self.max_message_size} bytes "
                    "(option max_message_size; RabbitMQ's max_message_size must allow it). "
                    "Nothing was sent: keep large payloads elsewhere and send a reference"
                )
            if message.delay > MAX_DELAY:
                raise ValueError(
                    f"delay {message.delay:.0f} s exceeds max_delay ({MAX_DELAY:.0f} s)"
                )
        items, tops = self._encode(messages)
        if not self._prepared(tops):
            self._call(self._publish(items, tops), self._budget())
            return
        # Everything is declared: hand the frames to the I/O thread and wait for the
        # confirms, without a coroutine per call (the common case, and the fast one).
        future: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._soon(functools.partial(self._send_now, items, future))
        try:
            future.result(self.confirm_timeout + 1.0)
        except concurrent.futures.TimeoutError:
            future.cancel()  # what is not sent yet stays unsent
            raise BrokerError(
                f"RabbitMQ at {redact(self.url)} did not confirm {len(items)} message(s) within "
                f"{self.confirm_timeout:.0f} s (a memory or disk alarm?); they may or may not "
                "have been stored"
            ) from None

    def _budget(self) -> float:
        # Connecting, declaring and confirming each have their own limit inside.
        return self.connect_timeout * 3 + self.confirm_timeout + 5

    # -- declaring -------------------------------------------------------------------

    def _queue_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        if self.max_priority:
            arguments["x-max-priority"] = self.max_priority
        if self.queue_version:
            arguments["x-queue-version"] = self.queue_version
        return arguments

    def _refused(self, what: str, exc: BaseException) -> Exception:
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker) and exc.reply_code == 406:
            return ConfigurationError(
                f"RabbitMQ refused to declare {what}: it already exists with other arguments "
                f"({exc.reply_text}). polyq declares work queues durable and classic with "
                f"{self._queue_arguments() or 'no arguments'}. Drain and delete it "
                "(rabbitmqctl delete_queue <name>), or set the transport options max_priority "
                "(0 = no priority) and queue_version (0 = the broker's default) to match it"
            )
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
            return BrokerError(f"RabbitMQ refused to declare {what}: {_describe_close(exc)}")
        if isinstance(exc, BrokerError):
            return exc
        return BrokerError(f"could not declare {what} on RabbitMQ at {self._where()}: {exc!r}")

    async def _declare_exchange(self, name: str, kind: str, durable: bool = True) -> None:
        if name in self._exchanges:
            return
        try:
            async with self._temp() as c:
                await c.call(
                    functools.partial(
                        c.channel.exchange_declare, name, exchange_type=kind, durable=durable
                    )
                )
        except Exception as exc:
            raise self._refused(f"exchange {name!r}", exc) from exc
        self._exchanges.add(name)

    async def _declare_queue(self, queue: str) -> None:
        await self._declare_exchange(DELIVER_EXCHANGE, "direct")
        try:
            async with self._temp() as c:
                await c.call(
                    functools.partial(
                        c.channel.queue_declare,
                        queue,
                        durable=True,
                        arguments=self._queue_arguments(),
                    )
                )
                await c.call(
                    functools.partial(
                        c.channel.queue_bind, queue, DELIVER_EXCHANGE, routing_key=queue
                    )
                )
        except Exception as exc:
            raise self._refused(f"queue {queue!r}", exc) from exc
        self._declared.add(queue)

    async def _declare_dlq(self, queue: str) -> str:
        name = f"{queue}.dlq"
        if name not in self._declared:
            try:
                async with self._temp() as c:
                    await c.call(functools.partial(c.channel.queue_declare, name, durable=True))
            except Exception as exc:
                raise self._refused(f"dead-letter queue {name!r}", exc) from exc
            self._declared.add(name)
        return name

    async def _declare_shared_levels(self, count: int) -> None:
        """Declare the level exchanges ``0..count-1`` and chain each to the one below."""
        await self._declare_exchange(DELIVER_EXCHANGE, "direct")
        for level in range(self._shared_levels, count):
            exchange = _level_exchange(level)
            below = _level_exchange(level - 1) if level else DELIVER_EXCHANGE
            await self._declare_exchange(exchange, "headers")
            try:
                async with self._temp() as c:
                    await c.call(
                        functools.partial(
                            c.channel.exchange_bind,
                            below,
                            exchange,
                            arguments={"x-match": "all", _bit_header(level): "0"},
                        )
                    )
            except Exception as exc:
                raise self._refused(f"delay exchange {exchange!r}", exc) from exc
            self._shared_levels = level + 1

    async def _declare_levels(self, queue: str, count: int) -> None:
        """Declare the delay level queues of ``queue`` up to ``count-1``, bottom up (so
        the levels that exist are always a prefix ``0..n-1``)."""
        await self._declare_shared_levels(count)
        for level in range(self._levels.get(queue, 0), count):
            exchange = _level_exchange(level)
            below = _level_exchange(level - 1) if level else DELIVER_EXCHANGE
            name = _level_queue(queue, level)
            arguments = {
                "x-queue-type": "quorum",
                "x-message-ttl": DELAY_UNIT_MS * 2**level,
                "x-dead-letter-exchange": below,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            }
            match = {"x-match": "all", _bit_header(level): "1", H_QUEUE: queue}
            try:
                async with self._temp() as c:
                    ch = c.channel
                    await c.call(
                        functools.partial(ch.queue_declare, name, durable=True, arguments=arguments)
                    )
                    await c.call(functools.partial(ch.queue_bind, name, exchange, arguments=match))
            except Exception as exc:
                raise self._refused(f"delay queue {name!r}", exc) from exc
            self._levels[queue] = level + 1

    async def _level_names(self, queue: str) -> list[tuple[str, int]]:
        """The delay level queues of ``queue`` that exist, with their ready counts."""
        found = []
        for level in range(DELAY_LEVELS):
            name = _level_queue(queue, level)
            count = await self._passive(name)
            if count is None:
                break
            found.append((name, count))
        return found

    # -- consuming -------------------------------------------------------------------

    async def _open_consumer(self) -> None:
        """Open the consumer channel and consume the wanted queues."""
        channel = await self._channel()
        channel.add_on_close_callback(self._consumer_closed)
        self._consumer = channel
        self._consumer_rpc = _TempChannel(self, channel)
        if self._conn is not None:
            self._conn.deliveries = (channel.channel_number, self._take_delivery)
        self._applied_qos = -1
        await self._apply_consumers()

    def _consumer_closed(self, channel: Channel, reason: BaseException) -> None:
        if channel is not self._consumer:
            return
        self._forget_consumer()
        alive = self._conn is not None and self._conn.is_open
        if alive and not isinstance(reason, pika.exceptions.ChannelClosedByClient):
            # consumer_timeout or a broker error: the messages went back; start over.
            logger.warning(
                "RabbitMQ closed the consumer channel (%s); its unacked messages return to "
                "their queues",
                _describe_close(reason),
            )
            self._loop.create_task(self._sync_quietly())

    async def _sync_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self._sync_consumers()

    def _forget_consumer(self) -> None:
        """The consumer channel is gone: its deliveries were returned by the broker."""
        self._consumer = None
        if self._conn is not None:
            self._conn.deliveries = None
        self._consuming.clear()
        self._tag_queue.clear()
        with self._cond:
            self._generation += 1
            self._buffer.clear()
            self._held.clear()

    async def _sync_consumers(self) -> None:
        """Make the consumer channel's qos and consumers match what callers want."""
        assert self._consumer_lock is not None
        async with self._consumer_lock:  # one change at a time: no consumer twice
            if self._consumer is not None and self._consumer.is_open:
                await self._apply_consumers()
            elif self._conn is not None and self._conn.is_open:
                await self._open_consumer()

    async def _apply_consumers(self) -> None:
        assert self._consumer is not None
        channel = self._consumer
        c = self._consumer_rpc
        assert c is not None
        with self._cond:
            want = self._want
            qos = self.prefetch_count or max(1, self._demand)
        for queue in want:
            if queue not in self._declared:
                await self._declare_queue(queue)
        if qos != self._applied_qos:
            self._applied_qos = qos
            await c.call(functools.partial(channel.basic_qos, prefetch_count=qos, global_qos=True))
        for queue in [q for q in self._consuming if q not in want]:
            tag = self._consuming.pop(queue)
            self._tag_queue.pop(tag, None)
            await c.call(functools.partial(channel.basic_cancel, tag))
            self._return_buffered(queue)
        for queue in want:
            if queue not in self._consuming:
                tag = channel.basic_consume(queue, self._on_message)
                self._consuming[queue] = tag
                self._tag_queue[tag] = queue

    def _return_buffered(self, queue: str) -> None:
        """Give back messages of ``queue`` received but not handed to anybody."""
        with self._cond:
            keep = [entry for entry in self._buffer if entry[2].queue != queue]
            gone = [entry[2] for entry in self._buffer if entry[2].queue == queue]
            heapq.heapify(keep)
            self._buffer = keep
        if self._consumer is not None:
            for delivery in gone:
                self._consumer.basic_nack(delivery.receipt.tag, requeue=True)

    def _on_message(self, channel: Channel, method: Any, props: Any, body: bytes) -> None:
        """pika's delivery callback: what :func:`_decode_delivery` leaves to pika."""
        raw = props.headers or {}
        queue = self._tag_queue.get(method.consumer_tag, method.routing_key)
        if method.redelivered:
            # The broker gave it back (a consumer died or returned it): count that
            # delivery by republishing with the count raised, then drop this copy.
            self._track(method.delivery_tag)
            previous = raw.get(H_DELIVERIES, 0)
            self._loop.create_task(
                self._recount(self._generation, method.delivery_tag, queue, props, body, previous)
            )
            return
        self._deliver(
            queue, method.delivery_tag, raw, props.message_id or "", props.priority or 0, body
        )

    def _take_delivery(
        self,
        consumer_tag: str,
        tag: int,
        headers: dict[str, Any],
        message_id: str,
        priority: int,
        body: bytes,
    ) -> bool:
        """The connection's fast path: a delivery decoded without pika."""
        queue = self._tag_queue.get(consumer_tag)
        if queue is None:
            return False  # cancelled: pika's channel gives it back
        self._deliver(queue, tag, headers, message_id, priority, body)
        return True

    def _track(self, tag: int) -> None:
        if self._tracked_generation != self._generation:
            # A new channel numbers its deliveries afresh.
            self._tracked_generation = self._generation
            self._unsettled.clear()
            self._settled_early.clear()
        self._unsettled.append(tag)

    def _deliver(
        self,
        queue: str,
        tag: int,
        headers: dict[str, Any],
        message_id: str,
        priority: int,
        body: bytes,
    ) -> None:
        """Buffer a (first) delivery for ``receive``."""
        self._track(tag)
        delivery = Delivery(
            queue=queue,
            message_id=message_id,
            body=body,
            headers=_user_headers(headers),
            delivery_count=int(headers.get(H_DELIVERIES, 0)) + 1,
            receipt=_Receipt(self._generation, tag),
            priority=priority,
        )
        with self._cond:
            heapq.heappush(self._buffer, (-delivery.priority, next(self._seq), delivery))
            self._cond.notify()

    async def _recount(
        self, generation: int, tag: int, queue: str, props: Any, body: bytes, previous: Any
    ) -> None:
        headers = dict(props.headers or {})
        headers[H_DELIVERIES] = int(previous) + 1
        props.headers = headers
        try:
            await self._send([("", queue, body, props, True)])
        except Exception as exc:
            logger.warning("could not recount a redelivered message of %r: %s", queue, exc)
            await asyncio.sleep(1.0)
            self._settle(generation, tag, requeue=True)
        else:
            self._settle(generation, tag, requeue=None)

    def _settle(self, generation: int, tag: int, requeue: bool | None) -> None:
        """Ack (``requeue`` None) or nack a delivery if its channel still lives."""
        channel = self._consumer
        if generation != self._generation or channel is None or not channel.is_open:
            return  # the broker already took it back when the channel closed
        if requeue is None:
            channel.basic_ack(tag)
        else:
            channel.basic_nack(tag, requeue=requeue)
        self._settled_early.add(tag)
        self._drop_settled()

    def _drop_settled(self) -> None:
        unsettled, early = self._unsettled, self._settled_early
        while unsettled and unsettled[0] in early:
            early.discard(unsettled.popleft())

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """Hand out up to ``max_messages`` deliveries, highest priority first."""
        if max_messages <= 0 or not queues:
            return []
        wanted = tuple(dict.fromkeys(queues))
        deadline = time.monotonic() + max(wait, 0.0)
        with self._cond:
            demand = sum(self._held.values()) + max_messages
            moved = wanted != self._want
            # The prefetch only grows with demand (until the queues change): a worker
            # asks for its free slots, so demand stays level, and a lower qos would
            # not take back what the broker already sent.
            grow = self.prefetch_count is None and demand > self._demand
            if moved or grow:
                self._demand = demand if moved else max(demand, self._demand)
            self._want = wanted
        if moved:
            try:
                self._sync(deadline)
            except BaseException:
                with self._cond:
                    self._want = ()  # so that the next call tries again
                raise
        elif grow:
            self._soon(self._sync_soon)
        names = set(wanted)
        with self._cond:
            while True:
                out = self._take(names, max_messages)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            if not out and not self._up_flag:
                since = self._down_since
                if since is not None and time.monotonic() - since > self.connect_timeout:
                    raise self._unreachable()
        return out

    def _sync(self, deadline: float) -> None:
        """Apply the wanted consumers and qos, waiting at most until ``deadline`` while
        the broker is away (a down broker is noticed by the next ``receive``)."""
        self._start()
        future = asyncio.run_coroutine_threadsafe(self._sync_when_up(), self._loop)
        try:
            future.result(max(deadline - time.monotonic(), 0) + self.connect_timeout)
        except concurrent.futures.TimeoutError:
            return
        except BrokerError:
            with self._cond:
                if self._up_flag:
                    raise
        except pika.exceptions.AMQPError as exc:
            raise BrokerError(f"RabbitMQ at {redact(self.url)}: {exc!r}") from exc

    def _sync_soon(self) -> None:
        """Apply a larger prefetch without making the caller wait for it."""
        if self._up is not None and self._up.is_set():
            self._loop.create_task(self._sync_quietly())  # errors surface on the next sync

    async def _sync_when_up(self) -> None:
        assert self._up is not None
        if not self._up.is_set():
            try:
                await asyncio.wait_for(self._up.wait(), self.connect_timeout)
            except TimeoutError:
                return
        await self._sync_consumers()

    def _take(self, names: set[str], limit: int) -> list[Delivery]:
        out: list[Delivery] = []
        skipped = []
        generation = self._generation
        while self._buffer and len(out) < limit:
            entry = heapq.heappop(self._buffer)
            delivery = entry[2]
            if delivery.receipt.generation != generation:
                continue
            if delivery.queue in names:
                out.append(delivery)
                self._held[delivery.queue] = self._held.get(delivery.queue, 0) + 1
            else:
                skipped.append(entry)
        for entry in skipped:
            heapq.heappush(self._buffer, entry)
        return out

    def _release(self, delivery: Delivery) -> bool:
        """Forget a handed-out delivery; return whether its channel still lives."""
        receipt = delivery.receipt
        if not isinstance(receipt, _Receipt):
            raise ValueError(f"not a delivery of this transport: {delivery!r}")
        with self._cond:
            if receipt.generation != self._generation:
                return False
            count = self._held.get(delivery.queue, 0)
            if count > 0:
                self._held[delivery.queue] = count - 1
            return True

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Ack; the frames are sent by the I/O thread without waiting for it."""
        settled = [(d.receipt.generation, d.receipt.tag) for d in deliveries if self._release(d)]
        if settled:
            self._soon(lambda: self._ack_all(settled))

    def _ack_all(self, settled: list[tuple[int, int]]) -> None:
        channel = self._consumer
        if channel is None or not channel.is_open:
            return  # the broker already took them back when the channel closed
        tags = {tag for generation, tag in settled if generation == self._generation}
        if self._tracked_generation != self._generation:
            tags.clear()  # not one delivery on this channel yet: nothing of it to ack
        # The oldest unsettled deliveries, as far as every one is acked now (or was
        # settled before): one ``basic.ack multiple`` on the last acked among them
        # settles the run on the broker (saving it a frame per message).
        last = None
        unsettled, early = self._unsettled, self._settled_early
        while unsettled and (unsettled[0] in tags or unsettled[0] in early):
            tag = unsettled.popleft()
            if tag in tags:
                tags.discard(tag)
                last = tag
            else:
                early.discard(tag)
        with self._gather():
            if last is not None:
                channel.basic_ack(last, multiple=True)
            for tag in sorted(tags):  # behind an unsettled one: one frame each
                channel.basic_ack(tag)
                early.add(tag)

    async def _replace(
        self,
        delivery: Delivery,
        target: str,
        delay: float,
        extra: dict[str, Any],
        declare: bool = True,
    ) -> None:
        """Publish a copy of ``delivery`` (to ``target``, after ``delay``), then ack it;
        if the copy is refused, give the original back instead and raise."""
        receipt: _Receipt = delivery.receipt
        headers: dict[str, Any] = dict(delivery.headers)
        headers.update(extra)
        exchange, routing_key, top = self._route(target, delay, headers)
        props = self._properties(headers, delivery.message_id, delivery.priority)
        try:
            if declare:
                await self._prepare({target: top})
            await self._send([(exchange, routing_key, delivery.body, props, True)])
        except BaseException:
            self._settle(receipt.generation, receipt.tag, requeue=True)
            raise
        self._settle(receipt.generation, receipt.tag, requeue=None)

    def nack(self, delivery: Delivery, delay: float = 0.0) -> None:
        """Requeue now or after ``delay`` seconds; the next delivery counts one more."""
        if not self._release(delivery):
            return
        extra = {H_DELIVERIES: delivery.delivery_count}
        self._call(self._replace(delivery, delivery.queue, delay, extra), self._budget())

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move to ``<queue>.dlq`` with the reason, once the broker confirmed the copy."""
        if not self._release(delivery):
            return

        async def move() -> None:
            await self._connected()
            dlq = await self._declare_dlq(delivery.queue)
            extra = {
                H_REASON: reason,
                H_FAILED_AT: f"{time.time():.6f}",
                H_DELIVERIES: delivery.delivery_count,
            }
            await self._replace(delivery, dlq, 0.0, extra, declare=False)

        self._call(move(), self._budget())

    def extend_lease(self, deliveries: Sequence[Delivery]) -> None:
        """A no-op: the lease lasts as long as the connection."""

    # -- queues ----------------------------------------------------------------------

    async def _passive(self, queue: str) -> int | None:
        """Ready messages in ``queue``, or None when it does not exist."""
        try:
            async with self._temp() as c:
                frame = await c.call(
                    functools.partial(c.channel.queue_declare, queue, passive=True)
                )
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 404:
                return None
            raise BrokerError(
                f"RabbitMQ refused to count {queue!r}: {_describe_close(exc)}"
            ) from exc
        return int(frame.method.message_count)

    async def _purge_one(self, queue: str) -> int:
        async with self._temp() as c:
            frame = await c.call(functools.partial(c.channel.queue_purge, queue))
        return int(frame.method.message_count)

    async def _purge(self, queue: str, delayed: bool = True) -> int:
        if await self._passive(queue) is None:
            return 0
        purged = await self._purge_one(queue)
        if delayed:
            for name, _count in await self._level_names(queue):
                purged += await self._purge_one(name)
        # Messages prefetched into this process but not handed out are waiting too.
        with self._cond:
            mine = [e for e in self._buffer if e[2].queue == queue]
            self._buffer = [e for e in self._buffer if e[2].queue != queue]
            heapq.heapify(self._buffer)
        for entry in mine:
            self._settle(entry[2].receipt.generation, entry[2].receipt.tag, requeue=None)
        return purged + len(mine)

    def purge(self, queue: str) -> int:
        """Delete the ready messages of ``queue`` (delayed ones still arrive later)."""
        return self._call(self._purge(queue), self._budget())

    async def _count(self, queue: str) -> int:
        ready = await self._passive(queue)
        if ready is None:
            return 0
        return ready + sum(count for _name, count in await self._level_names(queue))

    def size(self, queue: str) -> int:
        """Ready and delayed messages, plus those this instance holds."""
        ready = self._call(self._count(queue), self._budget())
        with self._cond:
            held = self._held.get(queue, 0)
            buffered = sum(1 for e in self._buffer if e[2].queue == queue)
        return ready + held + buffered

    async def _delete(self, queue: str) -> None:
        names = [queue, f"{queue}.dlq"] + [name for name, _ in await self._level_names(queue)]
        async with self._temp() as c:
            for name in names:
                await c.call(functools.partial(c.channel.queue_delete, name))
        self._declared.discard(queue)
        self._declared.discard(f"{queue}.dlq")
        self._levels.pop(queue, None)

    def delete_queue(self, queue: str) -> None:
        """Delete ``queue`` with its dead letters and delay levels, messages and all
        (RabbitMQ-specific: tests and tear-downs use it so nothing is left behind)."""
        self._call(self._delete(queue), self._budget())

    def queues(self) -> list[str]:
        """The work queues this instance declared (AMQP cannot list a vhost's queues)."""
        return sorted(q for q in self._declared if not q.endswith(".dlq"))

    # -- dead letters ----------------------------------------------------------------

    async def _browse(
        self,
        name: str,
        limit: int | None,
        handle: Callable[[_TempChannel, Any, Any, bytes], Awaitable[None]] | None = None,
    ) -> list[tuple[Any, bytes]]:
        """Consume up to ``limit`` messages of queue ``name`` (all that are ready when
        None) on a private channel without acking, pass each to ``handle``, then
        close the channel, which gives back every message ``handle`` did not ack in
        its place. Returns ``(properties, body)`` pairs, oldest first."""
        ready = await self._passive(name)
        if not ready:
            return []
        want = ready if limit is None else min(ready, limit)
        got: asyncio.Queue[tuple[Any, Any, bytes]] = asyncio.Queue()
        seen: list[tuple[Any, bytes]] = []
        async with self._temp() as c:
            ch = c.channel
            await c.call(functools.partial(ch.basic_qos, prefetch_count=min(want, 65535)))
            ch.basic_consume(name, lambda _c, m, p, b: got.put_nowait((m, p, b)))
            while len(seen) < want:
                try:
                    method, props, body = await asyncio.wait_for(got.get(), 2.0)
                except TimeoutError:
                    break  # another consumer took the rest
                seen.append((props, body))
                if handle is not None:
                    await handle(c, method, props, body)
        return seen

    async def _read_dlq(
        self,
        queue: str,
        limit: int | None,
        handle: Callable[[_TempChannel, Any, Any, bytes], Awaitable[None]] | None,
    ) -> list[DeadLetter]:
        letters = []
        for props, body in await self._browse(f"{queue}.dlq", limit, handle):
            raw = props.headers or {}
            failed_at = raw.get(H_FAILED_AT, 0)
            letters.append(
                DeadLetter(
                    queue=queue,
                    message_id=props.message_id or "",
                    body=body,
                    headers=_user_headers(raw),
                    reason=str(raw.get(H_REASON, "")),
                    failed_at=float(
                        failed_at.decode() if isinstance(failed_at, bytes) else failed_at
                    ),
                    receipt=props.message_id,
                )
            )
        return letters

    async def _scheduled(self, queue: str, limit: int) -> list[ScheduledMessage]:
        waiting = []
        for name, count in await self._level_names(queue):
            if count:
                waiting += await self._browse(name, None)
        listed = []
        for props, _body in waiting:
            raw = props.headers or {}
            eta = raw.get(H_ETA, 0)
            listed.append(
                ScheduledMessage(
                    queue=queue,
                    message_id=props.message_id or "",
                    headers=_user_headers(raw),
                    eta=float(eta.decode() if isinstance(eta, bytes) else eta),
                    priority=props.priority or 0,
                )
            )
        listed.sort(key=lambda m: m.eta)
        return listed[:limit]

    def scheduled(self, queue: str, limit: int = 100) -> list[ScheduledMessage]:
        """Delayed messages of ``queue``, soonest first. Each level queue is read
        without acking and given back (a message due meanwhile leaves its level as
        soon as it is back), so this costs a read of every delayed message."""
        if limit <= 0:
            return []
        return self._call(self._scheduled(queue, limit), self._budget() * 4)

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The dead letters of ``queue`` with their reasons, oldest first."""
        if limit <= 0:
            return []
        return self._call(self._read_dlq(queue, limit, None), self._budget())

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Republish dead letters to ``queue`` (delivery count reset) and drop them."""
        chosen = None if message_ids is None else set(message_ids)
        replayed = 0

        async def replay(c: _TempChannel, method: Any, props: Any, body: bytes) -> None:
            nonlocal replayed
            if chosen is not None and props.message_id not in chosen:
                return
            headers = _user_headers(props.headers)
            fresh = self._properties(dict(headers), props.message_id or "", props.priority or 0)
            await self._prepare({queue: -1})
            await self._send([("", queue, body, fresh, True)])
            c.channel.basic_ack(method.delivery_tag)
            replayed += 1

        self._call(self._read_dlq(queue, None, replay), self._budget() * 4)
        return replayed

    def purge_dead_letters(self, queue: str) -> int:
        """Delete every dead letter of ``queue``."""
        return self._call(self._purge(f"{queue}.dlq", delayed=False), self._budget())

    # -- broadcast -------------------------------------------------------------------

    def broadcast(self, channel: str, body: bytes) -> None:
        """Publish ``body`` on the fanout exchange of ``channel`` (transient). The
        first call declares the exchange and waits for the confirm; later ones are
        fire and forget, as the contract allows (events and control commands)."""
        exchange = BROADCAST_PREFIX + channel
        props = pika.BasicProperties(delivery_mode=1)
        if exchange in self._exchanges and self._up_flag:
            self._soon(functools.partial(self._broadcast_now, exchange, body, props))
            return

        async def send() -> None:
            await self._connected()
            await self._declare_exchange(exchange, "fanout", durable=False)
            await self._send([(exchange, "", body, props, False)])

        self._call(send(), self._budget())

    def _broadcast_now(self, exchange: str, body: bytes, props: pika.BasicProperties) -> None:
        channel = self._pub
        if channel is None or not channel.is_open:
            return  # the broker is away: a broadcast is not kept for later
        channel.basic_publish(exchange, "", body, props)
        self._pub_tag += 1  # its confirm matches no waiting batch

    def subscribe(self, channel: str) -> Subscription:
        """Listen on ``channel``; returns once the listening queue is bound."""
        sub = _Subscription(self, channel)

        async def start() -> None:
            # Registered once connected, so that a concurrent (re)connection setup,
            # which re-opens every registered subscription, cannot open it twice.
            await self._connected()
            self._subs.append(sub)
            await self._open_subscription(sub)

        try:
            self._call(start(), self._budget())
        except BaseException:
            sub.close()
            raise
        return sub

    async def _open_subscription(self, sub: _Subscription) -> None:
        if sub.closed:
            return
        await self._declare_exchange(sub.exchange, "fanout", durable=False)
        c = _TempChannel(self, await self._channel())
        ch = c.channel
        frame = await c.call(
            functools.partial(ch.queue_declare, "", exclusive=True, auto_delete=True)
        )
        name = frame.method.queue
        await c.call(functools.partial(ch.queue_bind, name, sub.exchange))
        ch.basic_consume(name, lambda _c, _m, _p, body: sub.inbox.put(body), auto_ack=True)
        sub.pika_channel = ch

    def _forget_subscription(self, sub: _Subscription) -> None:
        if self._thread is None or self._closed:
            return

        def stop() -> None:
            if sub in self._subs:
                self._subs.remove(sub)
            if sub.pika_channel is not None and sub.pika_channel.is_open:
                with contextlib.suppress(Exception):
                    sub.pika_channel.close()  # the exclusive queue goes with it

        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(stop)

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (held deliveries return to their queues); idempotent."""
        if self._closed:
            return
        with self._cond:
            # Held deliveries go back with the connection: settling them later is a
            # no-op, as for any lost lease.
            self._generation += 1
            self._buffer.clear()
            self._held.clear()
        self._closed = True
        thread = self._thread
        if thread is None or os.getpid() != self._pid:
            if thread is None:
                self._loop.close()
            return

        async def shutdown() -> None:
            conn = self._conn
            if conn is not None and conn.is_open:
                closed = self._loop.create_future()
                conn.add_on_close_callback(lambda *_: _resolve(closed)())
                with contextlib.suppress(Exception):
                    conn.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(closed, 5.0)
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()
            self._loop.call_soon(self._loop.stop)

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        thread.join(10.0)
        if not thread.is_alive():
            self._loop.close()
        with self._cond:
            self._cond.notify_all()
