"""The SQS wire format and limits: each message travels as one JSON envelope in the
SQS body (see ``docs/design/sqs.md``), and SQS's size, delay, visibility and batch
limits."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
from typing import Any

__all__ = [
    "BATCH",
    "BATCH_BYTES",
    "DEFAULT_MAX_SIZE",
    "ENVELOPE",
    "LARGEST_SIZE",
    "NATIVE_DELAY_LIMIT",
    "VISIBILITY_LIMIT",
    "Receipt",
    "body_limit",
    "decode",
    "encode",
    "priority_of",
    "whole_seconds",
]

#: The key that marks an SQS body as a polyq envelope (its value is the version, 1).
ENVELOPE = "polyq_sqs"
#: The longest ``DelaySeconds`` SQS accepts (15 minutes).
NATIVE_DELAY_LIMIT = 900
#: The longest visibility timeout SQS accepts (12 hours).
VISIBILITY_LIMIT = 43_200
#: Messages per SQS batch call (send, receive, delete, change visibility).
BATCH = 10
# The total payload of one SendMessageBatch; kept at SQS's historical limit so a batch
# is accepted whatever the account's newer per-message maximum is.
BATCH_BYTES = 262_144
#: AWS's default ``MaximumMessageSize`` of a queue, and the largest it allows.
DEFAULT_MAX_SIZE = 262_144
LARGEST_SIZE = 1_048_576
# Room kept in a queue's MaximumMessageSize for the envelope's own keys and quoting.
ENVELOPE_ROOM = 1024


def body_limit(queue_max: int) -> int:
    """The largest body + id + headers that fits a queue of ``queue_max`` bytes
    whatever the body's content: binary bodies grow by a third in base64."""
    return (queue_max - ENVELOPE_ROOM) * 3 // 4


@dataclasses.dataclass(frozen=True)
class Receipt:
    """What ``Delivery.receipt`` holds: where the message came from and its handle."""

    queue_url: str
    handle: str
    sqs_id: str


def encode(fields: dict[str, Any], body: bytes) -> str:
    """The envelope as SQS-safe text (see ``docs/design/sqs.md``)."""
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


def decode(text: str) -> tuple[dict[str, Any], bytes] | None:
    """The envelope's fields and body, or ``None`` when ``text`` is not an envelope."""
    try:
        fields = json.loads(text)
    except ValueError:
        return None
    if not isinstance(fields, dict) or fields.get(ENVELOPE) != 1:
        return None
    try:
        if "b" in fields:
            return fields, base64.b64decode(fields["b"], validate=True)
        return fields, str(fields["t"]).encode("utf-8")
    except (KeyError, binascii.Error):
        return None


def priority_of(raw: dict[str, Any]) -> int:
    """The priority recorded in a raw SQS message's envelope (0 if none)."""
    decoded = decode(raw["Body"])
    return int(decoded[0].get("p", 0)) if decoded else 0


def whole_seconds(value: float, limit: int) -> int:
    """``value`` rounded up to whole seconds (never early), within ``0..limit``."""
    return max(0, min(limit, math.ceil(value - 1e-9)))
