"""Task and worker events, broadcast on the broker for monitors.

Events are off by default (``-E`` / ``worker_send_task_events``). When off, the
worker's hot path pays one attribute check per task and nothing else: no event
is built, serialized or sent.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["EVENT_CHANNEL", "EventDispatcher"]

logger = logging.getLogger("polyq.events")

EVENT_CHANNEL = "polyq.events"


class EventDispatcher:
    """Sends events (``task-received``, ``worker-heartbeat``, ...) as JSON broadcasts."""

    def __init__(self, app: Polyq, hostname: str, enabled: bool) -> None:
        self.app = app
        self.hostname = hostname
        self.enabled = enabled and app.transport.capabilities.broadcast
        if enabled and not self.enabled:
            logger.warning("events requested but broker %s cannot broadcast; events are off",
                           app.transport.describe())

    def send(self, type_: str, **fields: Any) -> None:
        """Broadcast one event; never raises (a monitor must not break the worker)."""
        if not self.enabled:
            return
        event = {"type": type_, "hostname": self.hostname, "timestamp": time.time(),
                 "pid": os.getpid(), **fields}
        try:
            self.app.transport.broadcast(EVENT_CHANNEL, json.dumps(event, default=str).encode())
        except Exception:
            logger.debug("event %s not sent", type_, exc_info=True)


def default_hostname() -> str:
    """This machine's host name."""
    return socket.gethostname()
