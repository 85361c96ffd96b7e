"""The task message envelope, version 1.

A task message is a transport message (body, headers, message id). Everything a
worker needs to decide what to do *before* deserializing the body travels in
string headers: the task name and id, retries, ETA, expiry, lineage and the
content type, so a refused content type is dead-lettered unread. The body holds
only the arguments and canvas options. See ``docs/message-format.md``.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

from polyq import serialization
from polyq.exceptions import DecodeError
from polyq.transport import Delivery, OutgoingMessage

__all__ = [
    "ENVELOPE_VERSION",
    "RESERVED_HEADERS",
    "TaskMessage",
    "decode",
    "encode",
    "new_id",
    "new_ids",
    "timestamp_from_iso",
]

ENVELOPE_VERSION = "1"

#: Header names the envelope owns; user headers may not reuse them.
RESERVED_HEADERS = frozenset(
    {
        "polyq",
        "task",
        "id",
        "retries",
        "eta",
        "expires",
        "root_id",
        "parent_id",
        "group_id",
        "group_index",
        "group_size",
        "content-type",
        "compression",
        "time_limit",
        "soft_time_limit",
        "ignore_result",
        # The signature of a signed message (polyq.security); never a custom header.
        "signature",
    }
)


def new_id() -> str:
    """A new task or message id (a UUID4 string, as Celery's)."""
    return _uuid4(os.urandom(16))


def new_ids() -> tuple[str, str]:
    """Two new ids (a task's and its message's) from one read of the OS's randomness."""
    raw = os.urandom(32)
    return _uuid4(raw[:16]), _uuid4(raw[16:])


def _uuid4(random16: bytes) -> str:
    # str(uuid.UUID(bytes=..., version=4)) with the version and variant bits set by
    # hand: the same string for a third of the cost (uuid.UUID validates its input).
    raw = bytearray(random16)
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _to_iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat()


def timestamp_from_iso(text: str | None) -> float | None:
    """The epoch seconds of an ISO 8601 header value (naive means UTC); ``None`` for none."""
    if not text:
        return None
    parsed = datetime.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


@dataclasses.dataclass
class TaskMessage:
    """A task invocation as the core sees it (decoded from, or encoded to, the wire)."""

    task: str
    id: str = dataclasses.field(default_factory=new_id)
    args: list[Any] = dataclasses.field(default_factory=list)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    retries: int = 0
    #: Unix time before which the task must not run.
    eta: float | None = None
    #: Unix time after which the task is revoked instead of run.
    expires: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    group_size: int | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool | None = None
    #: Canvas: ``link``, ``link_error``, ``chain``, ``chord`` (signature dicts).
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Custom headers (trace context and the user's own), sent verbatim.
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    queue: str = "celery"
    priority: int = 0
    #: Filled on decode: the transport's message id and delivery count.
    message_id: str = dataclasses.field(default_factory=new_id)
    delivery_count: int = 1


def encode(
    msg: TaskMessage, serializer: str = "json", compression: str | None = None, delay: float = 0.0
) -> OutgoingMessage:
    """Turn ``msg`` into a transport message, published after ``delay`` seconds."""
    if msg.headers and not RESERVED_HEADERS.isdisjoint(msg.headers):
        clash = RESERVED_HEADERS.intersection(msg.headers)
        raise ValueError(
            f"custom headers may not use the envelope's names {sorted(clash)}; rename them"
        )
    # Copied only when not a plain list/dict: pickle would keep a tuple, which no
    # worker accepts as args.
    args = msg.args if type(msg.args) is list else list(msg.args)
    kwargs = msg.kwargs if type(msg.kwargs) is dict else dict(msg.kwargs)
    body_value: dict[str, Any] = {"args": args, "kwargs": kwargs}
    if msg.options:
        body_value["options"] = msg.options
    content_type, body = serialization.dumps(body_value, serializer)
    headers: dict[str, str] = dict(msg.headers)
    headers["polyq"] = ENVELOPE_VERSION
    headers["task"] = msg.task
    headers["id"] = msg.id
    headers["content-type"] = content_type
    # Optional headers only when set (one test each: most calls set one or two).
    if msg.retries:
        headers["retries"] = str(msg.retries)
    if msg.eta is not None:
        headers["eta"] = _to_iso(msg.eta)
    if msg.expires is not None:
        headers["expires"] = _to_iso(msg.expires)
    if msg.root_id is not None:
        headers["root_id"] = str(msg.root_id)
    if msg.parent_id is not None:
        headers["parent_id"] = str(msg.parent_id)
    if msg.group_id is not None:
        headers["group_id"] = str(msg.group_id)
    if msg.group_index is not None:
        headers["group_index"] = str(msg.group_index)
    if msg.group_size is not None:
        headers["group_size"] = str(msg.group_size)
    if msg.time_limit is not None:
        headers["time_limit"] = str(msg.time_limit)
    if msg.soft_time_limit is not None:
        headers["soft_time_limit"] = str(msg.soft_time_limit)
    if msg.ignore_result is not None:
        headers["ignore_result"] = "1" if msg.ignore_result else "0"
    if compression:
        headers["compression"] = compression
        body = serialization.compress(body, compression)
    return OutgoingMessage(
        queue=msg.queue,
        body=body,
        message_id=msg.message_id,
        headers=headers,
        delay=max(0.0, delay),
        priority=msg.priority,
    )


def peek(delivery: Delivery) -> tuple[str, str]:
    """The task name and id from a delivery's headers, without touching the body.

    Raises :class:`DecodeError` when the headers are not a polyq envelope.
    """
    headers = delivery.headers
    if headers.get("polyq") != ENVELOPE_VERSION or "task" not in headers or "id" not in headers:
        raise DecodeError(
            f"message {delivery.message_id} is not a polyq v{ENVELOPE_VERSION} task message "
            f"(headers: {sorted(headers)[:10]})"
        )
    return headers["task"], headers["id"]


def decode(delivery: Delivery, accept: frozenset[str]) -> TaskMessage:
    """Decode a delivery into a :class:`TaskMessage`.

    Raises :class:`polyq.exceptions.ContentDisallowed` (body left unread) when
    the content type is not in ``accept``, and :class:`DecodeError` for anything
    else that is not a well-formed envelope.
    """
    task, task_id = peek(delivery)
    h = delivery.headers
    content_type = h.get("content-type", "application/json")
    if content_type not in accept:
        # Checked before decompressing too: nothing of a refused message is processed.
        serialization.loads(b"", content_type, accept)
    body = delivery.body
    if h.get("compression"):
        body = serialization.decompress(body, h["compression"])
    value = serialization.loads(body, content_type, accept)
    if not isinstance(value, dict) or not isinstance(value.get("args", []), list):
        raise DecodeError(f"message {delivery.message_id}: body is not an args/kwargs mapping")
    kwargs = value.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise DecodeError(f"message {delivery.message_id}: kwargs is not a mapping")
    try:
        return TaskMessage(
            task=task,
            id=task_id,
            args=value.get("args", []),
            kwargs=kwargs,
            retries=int(h.get("retries", 0)),
            eta=timestamp_from_iso(h.get("eta")),
            expires=timestamp_from_iso(h.get("expires")),
            root_id=h.get("root_id"),
            parent_id=h.get("parent_id"),
            group_id=h.get("group_id"),
            group_index=_opt(int, h.get("group_index")),
            group_size=_opt(int, h.get("group_size")),
            time_limit=_opt(float, h.get("time_limit")),
            soft_time_limit=_opt(float, h.get("soft_time_limit")),
            ignore_result=None if "ignore_result" not in h else h["ignore_result"] == "1",
            options=value.get("options") or {},
            headers={k: v for k, v in h.items() if k not in RESERVED_HEADERS},
            queue=delivery.queue,
            priority=delivery.priority,
            message_id=delivery.message_id,
            delivery_count=delivery.delivery_count,
        )
    except ValueError as exc:
        raise DecodeError(f"message {delivery.message_id}: bad header value: {exc}") from exc


def _opt(kind: type[Any], raw: str | None) -> Any:
    return None if raw is None else kind(raw)
