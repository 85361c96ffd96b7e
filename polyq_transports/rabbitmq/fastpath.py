"""The fast path: reading deliveries and writing frames past pika's per-frame machinery.

This is the ONLY module of the plugin that touches pika internals (why the fast path
exists, and what it saves: docs/design/rabbitmq.md, *Reading deliveries* and
*Channels*). It relies on:

1. ``Connection._on_data_available(data)``: overridden, pika's entry point for bytes read
   from the socket.
2. ``Connection._frame_buffer`` (bytes read and not yet decoded) and
   ``Connection._process_frame(frame)`` (pika's per-frame dispatch): read, replaced and
   called by that override.
3. ``Connection.bytes_received``: kept counting, pika's heartbeat checker reads it.
4. ``BaseConnection._adapter_emit_data(data)``: overridden, pika's entry point for bytes
   to write.
5. ``BaseConnection._transport`` and the private class
   ``pika.adapters.utils.io_services_utils._AsyncPlaintextTransport`` with its ``_sock``,
   ``_state`` and ``_STATE_ACTIVE`` (and the public ``get_write_buffer_size()``): to
   write to the socket at once (:func:`send_now`).
6. ``pika.frame.decode_frame`` and ``pika.data.decode_value``: undocumented module
   functions, used to hand pika one frame and to read a header value of a rare type.

It is used only with a pika in :data:`TESTED_PIKA` and can be forced off with the
transport option ``fastpath=0`` (or ``?fastpath=0`` in the URL) or the environment
variable ``POLYQ_AMQP_FASTPATH=0``; then :class:`PlainConnection` is pika's own connection
and every frame takes pika's public path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.data
import pika.frame
from pika.adapters.asyncio_connection import AsyncioConnection

try:
    from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport
except ImportError:  # a pika without it: the fast path stays off (see choose())
    _AsyncPlaintextTransport = None

logger = logging.getLogger("polyq.transports.rabbitmq")

#: pika versions the fast path is tested with: from the first, up to the second excluded.
TESTED_PIKA = ((1, 4), (1, 5))
#: The environment variable that forces the fast path off (``0``, ``false``, ``no``, ``off``).
ENV_SWITCH = "POLYQ_AMQP_FASTPATH"
_OFF = frozenset({"0", "false", "no", "off"})
_explained: set[str] = set()  # reasons already logged (once per process each)

#: A gathered run of frames goes to the socket in writes of about this size: big
#: enough to cost few syscalls, small enough that a partial send re-slices little.
_WRITE_CHUNK = 256 * 1024

#: A frame's head: type, channel, payload size (AMQP 0-9-1, section 4.2.3).
_FRAME_HEAD = struct.Struct(">BHI")
_FRAME_END = 0xCE
#: Basic.Deliver's class and method ids, as they open its method frame's payload.
_DELIVER = b"\x00\x3c\x00\x3c"
#: The content header's class, weight and body size, then the first flag word.
_CONTENT_HEAD = struct.Struct(">HHQH")
_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
#: One callable takes each delivery decoded by :func:`decode_delivery`:
#: (consumer tag, delivery tag, headers, message id, priority, body) -> taken.
DeliveryTaker = Callable[[str, int, dict[str, Any], str, int, bytes], bool]


def _pika_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def choose(option: Any = None, version: str | None = None) -> bool:
    """Whether to use the fast path: not when the transport option (``fastpath``) or
    :data:`ENV_SWITCH` says off, nor with a pika outside :data:`TESTED_PIKA`. Each
    reason for not using it is logged once at DEBUG."""
    version = pika.__version__ if version is None else version
    low, high = TESTED_PIKA
    if option is not None and str(option).strip().lower() in _OFF:
        why = f"the transport option fastpath={option}"
    elif option is None and os.environ.get(ENV_SWITCH, "").strip().lower() in _OFF:
        why = f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    elif not low <= _pika_version(version) < high:
        why = (
            f"pika {version} is outside the tested range "
            f"{'.'.join(map(str, low))} to {'.'.join(map(str, high))} (excluded)"
        )
    elif _AsyncPlaintextTransport is None:
        why = "this pika has no _AsyncPlaintextTransport"
    else:
        return True
    if why not in _explained:
        _explained.add(why)
        logger.debug("RabbitMQ fast path off (%s): pika reads and writes every frame", why)
    return False


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


def decode_delivery(buf: bytes, pos: int, end: int, channel: int, take: DeliveryTaker) -> int:
    """Decode the delivery whose Basic.Deliver frame starts at ``buf[pos]`` and hand
    it to ``take``; return where its last frame ends, -1 if ``buf`` ends before
    that, or 0 to leave it to pika (a redelivery, an unknown consumer, a malformed
    frame: pika handles it or raises as it always does). Why: see *Reading
    deliveries* in docs/design/rabbitmq.md.
    """
    try:
        _, _, size = _FRAME_HEAD.unpack_from(buf, pos)
        p = pos + 11
        n = buf[p]
        consumer_tag = buf[p + 1 : p + 1 + n].decode()
        p += 1 + n
        (delivery_tag,) = _U64.unpack_from(buf, p)
        if buf[p + 8] & 1:
            return 0  # redelivered: pika's path counts it (see Consumer.on_message)
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


def send_now(transport: Any, data: bytes) -> bytes:
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


class PlainConnection(AsyncioConnection):  # type: ignore[misc]  # pika is untyped: its base is Any
    """pika's asyncio connection as it is, with the fast path's two hooks doing nothing:
    every frame is read and written by pika's public path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Ignored here (see :class:`FastConnection`); set by the consumer all the same.
        self.deliveries: tuple[int, DeliveryTaker] | None = None
        super().__init__(*args, **kwargs)

    def gathered(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to join: pika writes each frame itself."""
        return contextlib.nullcontext()


class FastConnection(AsyncioConnection):  # type: ignore[misc]  # pika is untyped: its base is Any
    """pika's asyncio connection, able to hand a run of frames to the socket at once
    and to read plain deliveries without pika's frame objects.

    pika queues every frame as its own buffer and sends each with its own
    ``send()``: three syscalls per published message (method, header, body), which
    cost more than everything else of a batch publish together. Inside
    :meth:`gathered`, frames are joined and written in few large chunks instead; the
    bytes and their order on the wire are the same. Either way a write goes to the
    socket at once when nothing waits before it (see :func:`send_now`).
    """

    _frame_buffer: bytes  # pika's: what was read and not yet decoded

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._gathered: list[bytes] | None = None
        self._gathered_size = 0
        #: Set by the consumer while it consumes: the consumer channel's number and
        #: who takes the deliveries decoded on it (see :func:`decode_delivery`).
        self.deliveries: tuple[int, DeliveryTaker] | None = None
        super().__init__(*args, **kwargs)
        # The read path below uses pika internals (its read buffer and per-frame
        # dispatch); a pika without them keeps its own path.
        self._own_reads = isinstance(getattr(self, "_frame_buffer", None), bytes) and callable(
            getattr(self, "_process_frame", None)
        )

    def _on_data_available(self, data_in: bytes) -> None:
        """Read frames: plain deliveries on the consumer channel by
        :func:`decode_delivery`, every other frame by pika, in order."""
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
                done = decode_delivery(buf, pos, end, channel, take)
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
        rest = send_now(self._transport, data)
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


def connection_class(fast: bool) -> type[FastConnection] | type[PlainConnection]:
    """The connection class for the path chosen by :func:`choose`."""
    return FastConnection if fast else PlainConnection
