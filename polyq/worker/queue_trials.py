"""Queues added at run time (``add_consumer``) on trial until the broker accepts them.

A worker consumes all its queues in one ``receive`` call, so a queue the broker
refuses (RabbitMQ: a queue that exists with other arguments, a name it reserves)
would make every receive fail and the worker stop consuming *all* its queues. So a
queue added by remote control is on trial: when a receive that includes it fails,
the consumer receives again at once without the queues on trial; if that works,
the broker refused them, and they are dropped (the ``add_consumer`` reply and an
ERROR log line say why); if it fails too, the broker itself is the trouble and the
trial goes on. The first receive that works with a queue on trial confirms it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from polyq.transport import Delivery

if TYPE_CHECKING:
    from polyq.worker.worker import Worker

__all__ = ["QueueTrials", "Trial"]

logger = logging.getLogger("polyq.worker")


class Trial:
    """The outcome of one queue's trial: :attr:`done` is set once it is known."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.done = threading.Event()
        #: Why the broker refused the queue; ``None`` while on trial or once accepted.
        self.error: str | None = None


class QueueTrials:
    """The worker's queues on trial, and the receive that tries them."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._lock = threading.Lock()
        self._pending: dict[str, Trial] = {}

    def start(self, queue: str) -> Trial:
        """Put ``queue`` on trial (call before adding it to ``worker.queues``)."""
        with self._lock:
            trial = self._pending.get(queue)
            if trial is None:
                trial = self._pending[queue] = Trial(queue)
            return trial

    def forget(self, queue: str) -> None:
        """``queue`` is no longer consumed (``cancel_consumer``): end its trial."""
        with self._lock:
            trial = self._pending.pop(queue, None)
        if trial is not None:
            trial.done.set()

    def receive(self, queues: Sequence[str], max_messages: int, wait: float) -> list[Delivery]:
        """``transport.receive(queues, ...)``, dropping the queues on trial that the
        broker refuses instead of failing for every queue."""
        transport = self.worker.transport
        if not self._pending:  # the common case: no lock taken on the hot path
            return transport.receive(queues, max_messages, wait)
        with self._lock:
            tried = [q for q in queues if q in self._pending]
        if not tried:
            return transport.receive(queues, max_messages, wait)
        try:
            deliveries = transport.receive(queues, max_messages, wait)
        except Exception as exc:
            others = [q for q in queues if q not in tried]
            if not others:
                raise
            # Raises (and the trial goes on) when the broker refuses the others too.
            deliveries = transport.receive(others, max_messages, 0.0)
            self._refuse(tried, exc)
            return deliveries
        self._settle(tried, None)
        return deliveries

    def _refuse(self, tried: list[str], exc: Exception) -> None:
        worker = self.worker
        worker.queues = [q for q in worker.queues if q not in tried]
        reason = f"the broker refused it: {exc}"
        for queue in tried:
            logger.error("no longer consuming %s (added by remote control): %s", queue, reason)
        self._settle(tried, reason)

    def _settle(self, tried: list[str], error: str | None) -> None:
        with self._lock:
            trials = [self._pending.pop(q) for q in tried if q in self._pending]
        for trial in trials:
            trial.error = error
            trial.done.set()
