"""The lease keeper: extends the lease of every message the worker holds (running,
queued, or waiting for its ETA) so none is delivered twice (time-based leases only)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from polyq.worker.worker import Worker

__all__ = ["LeaseKeeper"]

logger = logging.getLogger("polyq.worker")


class LeaseKeeper:
    """Runs in its own thread until the worker has stopped."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def run(self) -> None:
        """Extend every held lease each third of the visibility timeout."""
        transport = self.worker.transport
        backlog = self.worker.backlog
        interval = max(0.2, transport.visibility_timeout / 3)
        while not self.worker.stopped.wait(interval):
            with backlog.lease_lock:
                held = backlog.held_deliveries()
                if not held:
                    continue
                try:
                    transport.extend_lease(held)
                except Exception:
                    logger.exception("extending %d leases failed", len(held))
