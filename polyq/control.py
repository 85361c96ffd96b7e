"""Remote control: revokes (durable) and broadcast commands to workers.

A revoke is written to the result backend with an expiry (so a task due
tomorrow stays revoked across worker restarts) and broadcast to live workers
on the ``control`` channel where the broker can broadcast.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["CONTROL_CHANNEL", "REVOKED_PREFIX", "Control"]

logger = logging.getLogger("polyq.control")

CONTROL_CHANNEL = "polyq.control"
REVOKED_PREFIX = "polyq-revoked-"
#: Revokes are kept at least this long (seconds), and never less than result_expires.
REVOKE_TTL = 7 * 86400.0


class Control:
    """``app.control``: commands for workers."""

    def __init__(self, app: Polyq) -> None:
        self.app = app

    def revoke(
        self,
        task_id: str | Sequence[str],
        terminate: bool = False,
        signal: str = "SIGTERM",
    ) -> None:
        """Revoke tasks: queued ones will not run; with ``terminate``, running ones
        are killed (prefork pool only)."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        ttl = max(REVOKE_TTL, self.app.result_ttl or 0.0)
        record = json.dumps({"terminate": terminate, "signal": signal, "at": time.time()}).encode()
        self.app.backend.set_many([(REVOKED_PREFIX + i, record) for i in ids], ttl=ttl)
        self.broadcast("revoke", ids=ids, terminate=terminate, signal=signal)

    def revoked(self) -> list[str]:
        """Ids of tasks revoked and not yet expired."""
        return [k[len(REVOKED_PREFIX) :] for k in self.app.backend.keys(REVOKED_PREFIX, 100000)]

    def broadcast(self, command: str, **arguments: Any) -> bool:
        """Send a command to every listening worker; ``False`` if the broker cannot broadcast."""
        transport = self.app.transport
        if not transport.capabilities.broadcast:
            return False
        body = json.dumps({"command": command, "arguments": arguments}).encode()
        try:
            transport.broadcast(CONTROL_CHANNEL, body)
        except NotImplementedError:
            return False
        return True
