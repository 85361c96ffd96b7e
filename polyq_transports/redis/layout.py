"""How a queue lives in Redis: the key names of a queue, and the stored form of a
message (:func:`pack`, :func:`unpack`). ``docs/design/redis.md`` explains the keys.
"""

from __future__ import annotations

import json
import struct

from polyq.exceptions import MessageTooLarge
from polyq.transport import OutgoingMessage

__all__ = ["MAX_MESSAGE_SIZE", "KeySpace", "QueueKeys", "pack", "priority_of", "unpack"]

#: Redis refuses bulk strings over ``proto-max-bulk-len`` (512 MiB by default);
#: keep a margin for the envelope around the body.
MAX_MESSAGE_SIZE = 512 * 1024 * 1024 - 64 * 1024

_LEN = struct.Struct(">I")
# Built once: json.dumps() with options builds a new encoder on every call.
_META_ENCODER = json.JSONEncoder(separators=(",", ":"))
_VERSION = b"\x01"


def pack(message: OutgoingMessage) -> bytes:
    """The stored form of a message: version, meta length, meta JSON, raw body.

    Raises :class:`MessageTooLarge` before building anything too big to store.
    """
    headers = message.headers
    meta = _META_ENCODER.encode(
        [message.message_id, headers if type(headers) is dict else dict(headers)]
    )
    encoded = meta.encode()
    size = 5 + len(encoded) + len(message.body)
    if size > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(
            f"message {message.message_id} for queue {message.queue!r} is {size} bytes; "
            f"Redis takes at most {MAX_MESSAGE_SIZE}. Nothing was sent: store large data "
            "elsewhere and pass a reference."
        )
    return _VERSION + _LEN.pack(len(encoded)) + encoded + message.body


def unpack(payload: bytes) -> tuple[str, dict[str, str], bytes]:
    """``(message_id, headers, body)`` of a stored message."""
    (size,) = _LEN.unpack_from(payload, 1)
    message_id, headers = json.loads(payload[5 : 5 + size])
    return message_id, headers, payload[5 + size :]


def priority_of(member: str) -> int:
    """The priority a ``"<priority>:<seq>"`` member was published with."""
    return int(member.split(":", 1)[0])


class QueueKeys:
    """The Redis key names of one queue (``docs/design/redis.md`` says what each holds)."""

    def __init__(self, namespace: str, queue: str) -> None:
        base = f"{namespace}:{{{queue}}}:"
        self.ready = base + "ready"
        self.delayed = base + "delayed"
        self.leased = base + "leased"
        self.msg = base + "msg"
        self.count = base + "count"
        self.notify = base + "notify"
        self.seq = base + "seq"
        self.dead = base + "dead"
        self.deadinfo = base + "deadinfo"


class KeySpace:
    """The key names under one namespace: each queue's, built once and kept, and the
    set listing the queues published to."""

    __slots__ = ("_queues", "namespace", "queues")

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        #: The set of every queue name published to under this namespace.
        self.queues = f"{namespace}:queues"
        self._queues: dict[str, QueueKeys] = {}

    def of(self, queue: str) -> QueueKeys:
        """The key names of ``queue``."""
        keys = self._queues.get(queue)
        if keys is None:
            keys = self._queues[queue] = QueueKeys(self.namespace, queue)
        return keys
