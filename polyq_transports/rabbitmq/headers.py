"""The AMQP headers polyq writes on a message, and the application's headers among them.

See docs/design/rabbitmq.md for what each header is for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Deliveries so far, counted by polyq (a classic queue only flags a redelivery).
H_DELIVERIES = "x-polyq-deliveries"
#: Why a message was dead-lettered, and when (Unix time).
H_REASON = "x-polyq-reason"
H_FAILED_AT = "x-polyq-failed-at"
#: When a delayed message is due (Unix time), read by ``scheduled``.
H_ETA = "x-polyq-eta"
#: The work queue a delayed message is for (matched by the delay levels' bindings).
H_QUEUE = "polyq-delay-queue"
#: One header per bit of a delay (``polyq-delay-07: "1"``).
BIT_PREFIX = "polyq-delay-"
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


def bit_header(level: int) -> str:
    """The header carrying bit ``level`` of a delay."""
    return f"{BIT_PREFIX}{level:02d}"


def user_headers(raw: Mapping[str, Any] | None) -> dict[str, str]:
    """The application's headers, without polyq's and the broker's."""
    if not raw:
        return {}
    out: dict[str, str] = {}
    for key, value in raw.items():
        if key.startswith(("x-polyq-", BIT_PREFIX)) or key in _BROKER_HEADERS:
            continue
        out[key] = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return out
