"""Remote-control commands a worker answers (besides ``revoke``, handled inline).

Each handler takes the worker and the command's arguments. Commands come from
``app.control`` as broadcasts on the control channel.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polyq.worker import Worker

__all__ = ["handle"]

logger = logging.getLogger("polyq.worker")


def handle(worker: Worker, command: str, arguments: dict[str, Any]) -> None:
    """Run ``command`` on ``worker``; unknown commands are logged and ignored."""
    destination = arguments.get("destination")
    if destination and worker.hostname not in destination:
        return
    if command == "shutdown":
        logger.warning("shutdown requested remotely")
        worker.stop(warm=True)
    else:
        logger.warning("unknown control command %r", command)
