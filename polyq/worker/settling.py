"""Settling finished jobs: the acker thread acknowledges them in groups (one round
trip for many), gives back those to run again and dead-letters the rest; and the
states stored for a task that could not store its own (killed, revoked, poison)."""

from __future__ import annotations

import itertools
import logging
import queue
import time
from typing import TYPE_CHECKING, Any

from polyq import states
from polyq.exceptions import BrokerError, RevokedError, TimeLimitExceeded, WorkerLostError
from polyq.execution import store_state
from polyq.transport import Delivery, Transport
from polyq.worker.pools import Result

if TYPE_CHECKING:
    from polyq.app import Polyq
    from polyq.worker.worker import Worker

__all__ = ["ACK_GATHER", "Acker", "dead_letter", "store_outside_task"]

logger = logging.getLogger("polyq.worker")

#: How long acknowledgements may gather while tasks are running (seconds).
ACK_GATHER = 0.002


def store_outside_task(
    app: Polyq,
    task_id: str,
    state: str,
    exc: BaseException | None,
    delivery: Delivery | None = None,
) -> None:
    """Store a state the task itself could not (killed, revoked, poison), and fail
    the workflow waiting on it (chain, chord) so that nothing hangs."""
    try:
        store_state(app, task_id, state, exc=exc)
    except Exception:
        logger.exception("could not store state %s of %s", state, task_id)
    if delivery is not None:
        from polyq.canvas import on_failure_outside_task

        cause = exc or RevokedError(f"task {task_id} was revoked")
        on_failure_outside_task(app, delivery, cause)


def dead_letter(transport: Transport, delivery: Delivery, reason: str) -> None:
    """Dead-letter ``delivery``; if the broker refuses, give it back for later."""
    try:
        transport.dead_letter(delivery, reason)
    except Exception:
        logger.exception("could not dead-letter %s; giving it back", delivery.message_id)
        # Back off a little where the broker can delay; one that cannot takes it back now
        # (a delay it cannot honour would be refused, losing the give-back too).
        limit = transport.capabilities.max_delay
        transport.nack(delivery, delay=5.0 if limit is None else min(5.0, limit))


class Acker:
    """Receives the pool's results (:meth:`on_done`) and settles them in its thread."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.backlog = worker.backlog
        #: Finished jobs, a list at a time; ``None`` tells the acker to stop.
        self._acks: queue.SimpleQueue[list[Result] | None] = queue.SimpleQueue()

    def on_done(self, results: list[Result]) -> None:
        """The pool's completion callback: queue ``results`` for the acker, wake the
        consumer if the window has room enough, and start queued work."""
        worker = self.worker
        backlog = self.backlog
        self._acks.put(results)
        limit = worker.window()
        with backlog.cond:
            # Waking the consumer for each finished task would cost a thread switch
            # per task; it takes messages in groups of half the window anyway. (The
            # flag is read under the lock it is set under: no wake-up is lost.)
            if worker.consumer.waiting and (
                len(backlog.pending) + len(worker.pool.running) <= limit // 2
            ):
                backlog.cond.notify_all()
        if not worker.stopping.is_set():
            worker.consumer.dispatch()

    def finish(self) -> None:
        """Tell the acker to stop once it has settled what is queued."""
        self._acks.put(None)

    def run(self) -> None:
        """The acker thread."""
        while True:
            try:
                if self._ack_batch():
                    return
            except Exception:
                logger.critical("acknowledging failed; the leases will expire", exc_info=True)

    def _ack_batch(self) -> bool:
        """Settle every finished job waiting; return True once told to stop."""
        batch = [self._acks.get()]
        if batch[0] is not None and self.worker.pool.running:
            # Tasks are still running: their results follow within moments, and one
            # round trip can acknowledge them all. An ack waits at most this long,
            # and a lone task (nothing else running) is acknowledged at once.
            time.sleep(ACK_GATHER)
        while True:
            try:
                batch.append(self._acks.get_nowait())
            except queue.Empty:
                break
        with self.backlog.lease_lock:
            return self._settle_batch(batch)

    def _settle_batch(self, batch: list[list[Result] | None]) -> bool:
        worker = self.worker
        transport = worker.transport
        to_ack: list[Delivery] = []
        results = list(itertools.chain.from_iterable(r or () for r in batch))
        deliveries = self.backlog.release_many([result.key for result in results])
        for result, delivery in zip(results, deliveries, strict=True):
            worker.processed += 1
            if worker.events.enabled:
                self._task_event(result)
            if delivery is None:
                continue  # acked before running (acks_late=False)
            action = self._settle(result, delivery)
            if action == "ack":
                to_ack.append(delivery)
            elif action == "requeue":
                if worker.stopping.is_set():
                    # Shutting down: let the consumer's last receive end first, or it
                    # could take this very message again only to give it back.
                    worker.join_consumer()
                _call(transport.nack, delivery, result.delay)
            else:
                dead_letter(transport, delivery, result.reason)
        finished = any(r is None for r in batch)
        if to_ack:
            _call(transport.ack, to_ack)
        return finished

    def _task_event(self, result: Result) -> None:
        kind = {
            states.SUCCESS: "task-succeeded",
            states.FAILURE: "task-failed",
            states.RETRY: "task-retried",
            states.REVOKED: "task-revoked",
        }.get(result.state or "", "task-failed" if result.action != "ack" else "task-succeeded")
        self.worker.events.send(
            kind,
            uuid=result.task_id,
            runtime=result.runtime,
            action=result.action,
            reason=result.reason or None,
        )

    def _settle(self, result: Result, delivery: Delivery) -> str:
        """Turn the pool's report into ack/requeue/dead_letter (storing states for kills)."""
        app = self.worker.app
        conf = app.conf
        task = app.tasks.get(delivery.headers.get("task", ""))
        if result.action == "time_limit":
            exc = TimeLimitExceeded(result.reason)
            store_outside_task(app, result.task_id, states.FAILURE, exc, delivery)
            acks = task.acks_on_failure_or_timeout if task else None
            if acks if acks is not None else conf.task_acks_on_failure_or_timeout:
                return "ack"
            return "dead_letter"
        if result.action == "terminated":
            store_outside_task(app, result.task_id, states.REVOKED, None, delivery)
            return "ack"
        if result.action == "worker_lost":
            reject = task.reject_on_worker_lost if task else None
            if reject if reject is not None else conf.task_reject_on_worker_lost:
                logger.warning("%s: delivering %s again", result.reason, result.task_id)
                return "requeue"
            lost = WorkerLostError(result.reason)
            store_outside_task(app, result.task_id, states.FAILURE, lost, delivery)
            return "ack"
        return result.action


def _call(fn: Any, *args: Any) -> None:
    for attempt in range(5):
        try:
            fn(*args)
            return
        except BrokerError as exc:
            logger.warning("%s failed (%s); retrying", getattr(fn, "__name__", fn), exc)
            time.sleep(0.2 * 2**attempt)
    logger.error(
        "giving up on %s; the lease will expire and the message come back",
        getattr(fn, "__name__", fn),
    )
