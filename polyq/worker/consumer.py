"""The worker's consumer: receives messages into the free prefetch slots, checks
each on its headers alone (decodable, accepted content type, known task, delivery
count, ETA, expiry, revoked) and queues it for the pool, or settles it at once.

A message that arrives before its ETA goes back to the broker for the rest of the
wait when the broker can hold it (``Capabilities.max_delay``); a broker that cannot
(``max_delay`` 0, or too short to be worth a hop) has it held here until its ETA,
outside the prefetch window (see ``docs/workers.md``).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from typing import TYPE_CHECKING

from polyq import signals, states
from polyq.events import message_fields
from polyq.exceptions import DecodeError, SecurityError, WorkerLostError
from polyq.message import peek, timestamp_from_iso
from polyq.serialization import AUTH_CONTENT_TYPE
from polyq.transport import Delivery, OutgoingMessage
from polyq.worker.pools import Job
from polyq.worker.queue_trials import QueueTrials
from polyq.worker.settling import dead_letter, store_outside_task

if TYPE_CHECKING:
    from polyq.worker.worker import Worker

__all__ = ["ETA_SLACK", "MIN_HOP", "OVERFLOW_PAUSE", "SHORT_TASK_PREFETCH", "Consumer"]

logger = logging.getLogger("polyq.worker")

#: A message whose ETA is this close is run now rather than re-delayed.
ETA_SLACK = 0.05
#: Messages per process the worker may reserve while every recent task was tiny
#: (see ``Pool.tasks_are_short``) and the prefetch multiplier was left at its default.
SHORT_TASK_PREFETCH = 64
#: The shortest hop (seconds) worth sending a message back to the broker for: a
#: broker whose ``max_delay`` is shorter than this (and than the wait left) has the
#: message held here instead, rather than bounced every ``max_delay`` seconds.
MIN_HOP = 1.0
#: How long the consumer pauses after a receive that brought only messages it could
#: neither hold (the ETA hold is full) nor have the broker delay (``max_delay`` 0).
OVERFLOW_PAUSE = 1.0


class Consumer:
    """The consumer thread's loop and the checks it runs on each message; also the
    dispatcher that hands queued jobs to the pool (from this thread and the pool's)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.backlog = worker.backlog
        #: The consumer waits for room in the window (read under ``backlog.cond``).
        self.waiting = False
        self._keys = itertools.count(1)
        self._overflowed = 0
        #: Queues added by remote control that the broker has not accepted yet.
        self.trials = QueueTrials(worker)

    def run(self) -> None:
        """The consumer thread: receive and queue until the worker stops consuming."""
        stopping = self.worker.stopping
        while not stopping.is_set():
            try:
                self._consume_loop()
            except Exception:
                # Never let the consumer die silently: a worker that stops taking
                # messages but stays up is the worst failure there is.
                logger.critical("consumer loop failed; restarting it", exc_info=True)
                stopping.wait(1.0)

    def _consume_loop(self) -> None:
        worker = self.worker
        backlog = self.backlog
        transport = worker.transport
        errors = 0
        while not worker.stopping.is_set():
            worker.last_poll = time.monotonic()  # monitoring: liveness probe reads it
            if backlog.timers:
                for delivery in backlog.due_timers(time.time()):
                    self.accept(delivery)
            with backlog.cond:
                # Jobs count from receipt until they finish (queued, rate-limited or
                # running; acked early or not); a finished job waiting for its ack
                # no longer holds a place. Messages held for their ETA do not.
                limit = worker.window()
                inflight = len(backlog.pending) + len(backlog.delayed) + len(worker.pool.running)
                free = limit - inflight
                # While the pool still has prefetched work queued, wait until half the
                # window is free and take it in one round trip instead of one message
                # per call; an idle pool is refilled at once.
                full = free <= 0 or bool(backlog.pending and free < max(1, limit // 2))
                wait = worker.receive_wait
                if backlog.delayed:
                    wait = min(wait, max(0.01, backlog.delayed[0][0] - time.monotonic()))
                eta = backlog.next_timer()
                if eta is not None:
                    wait = min(wait, max(0.01, eta - time.time()))
                if full:
                    self.waiting = True
                    backlog.cond.wait(timeout=min(0.5, wait))
                    self.waiting = False
            if full:
                # Safety net: whatever freed pool capacity, queued work never waits
                # longer than this pause to start.
                self.dispatch()
                continue
            try:
                deliveries = self.trials.receive(worker.queues, free, wait)
                errors = 0
            except Exception as exc:
                errors += 1
                pause = min(10.0, 0.2 * 2**errors)
                logger.error(
                    "receive from %s failed (%s); retrying in %.1fs",
                    transport.describe(),
                    exc,
                    pause,
                )
                worker.stopping.wait(pause)
                continue
            self._overflowed = 0
            for delivery in deliveries:
                if worker.stopping.is_set():
                    transport.nack(delivery)
                    continue
                self.accept(delivery)
            self.dispatch()
            if deliveries and self._overflowed == len(deliveries):
                # Everything received went straight back (see _wait_for_eta): receiving
                # again at once would bring the same messages back, a busy loop.
                worker.stopping.wait(OVERFLOW_PAUSE)

    def accept(self, delivery: Delivery) -> None:
        """Check a new delivery on its headers and queue it, or settle it now."""
        worker = self.worker
        app = worker.app
        conf = app.conf
        try:
            name, task_id = peek(delivery)
        except DecodeError as exc:
            logger.error("dead-lettering undecodable message %s: %s", delivery.message_id, exc)
            dead_letter(worker.transport, delivery, f"undecodable: {exc}")
            return
        if delivery.delivery_count > conf.task_max_deliveries:
            if not self._authentic(delivery):
                return
            reason = (
                f"delivered {delivery.delivery_count} times, more than task_max_deliveries="
                f"{conf.task_max_deliveries} (the task keeps killing its worker, or is never acked)"
            )
            logger.error("dead-lettering %s[%s]: %s", name, task_id, reason)
            store_outside_task(app, task_id, states.FAILURE, WorkerLostError(reason), delivery)
            dead_letter(worker.transport, delivery, reason)
            return
        content_type = delivery.headers.get("content-type", "application/json")
        if content_type not in app.accept:
            reason = (
                f"content type {content_type!r} is not in accept_content "
                f"({', '.join(sorted(app.accept))}); not deserialized"
            )
            if AUTH_CONTENT_TYPE in app.accept:
                reason = f"unsigned message refused: {reason} (setup_security)"
            elif content_type == AUTH_CONTENT_TYPE:
                reason += "; it is signed: call app.setup_security() on this worker too"
            logger.error("dead-lettering %s[%s]: %s", name, task_id, reason)
            dead_letter(worker.transport, delivery, reason)
            return
        task = app.tasks.get(name)
        if task is None:
            reason = f"unknown task {name!r}: not registered on worker {worker.hostname}"
            logger.error("dead-lettering %s: %s", task_id, reason)
            signals.task_unknown.send(sender=worker, name=name, id=task_id, message=delivery)
            dead_letter(worker.transport, delivery, reason)
            return
        now = time.time()
        eta = timestamp_from_iso(delivery.headers.get("eta"))
        if eta is not None and eta - now > ETA_SLACK:
            self._wait_for_eta(delivery, eta, now)
            return
        expires = timestamp_from_iso(delivery.headers.get("expires"))
        if expires is not None and expires < now:
            if not self._authentic(delivery):
                return
            logger.info("task %s[%s] expired; revoked", name, task_id)
            self.revoke(delivery, name, task_id, expired=True)
            return
        if task_id in worker.revocations:
            self.revoke(delivery, name, task_id, expired=False)
            return
        signals.task_received.send(sender=worker, request=delivery)
        if worker.events.enabled:
            worker.events.send(
                "task-received",
                uuid=task_id,
                name=name,
                **message_fields(delivery, app.accept),
            )
        acks_late = task.acks_late if task.acks_late is not None else conf.task_acks_late
        key = next(self._keys)
        time_limit = delivery.headers.get("time_limit")
        job = Job.from_delivery(
            key,
            delivery,
            name,
            task_id,
            float(time_limit) if time_limit else (task.time_limit or conf.task_time_limit),
        )
        backlog = self.backlog
        if not acks_late:
            # At-most-once: the message is gone before the task runs.
            worker.transport.ack([delivery])
        else:
            with backlog.cond:
                backlog.held[key] = delivery
        rate = task.rate_limit or conf.task_default_rate_limit
        if rate:
            wait = worker.rate_limits.reserve(name, rate)
            if wait > 0:
                with backlog.cond:
                    heapq.heappush(backlog.delayed, (time.monotonic() + wait, key, job))
                return
        with backlog.cond:
            backlog.pending.append(job)

    def _authentic(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` may settle its task from here (store a state for its id):
        with signing on, only once its signature holds, else a forged message could mark
        any task id REVOKED or FAILURE. Rare paths (expired, poison), so checked here;
        a refused message is dead-lettered and ``False`` returned."""
        security = self.worker.app.security
        if security is None:
            return True
        try:
            security.verifier.verify_task(delivery)  # unsigned ones are refused too
        except SecurityError as exc:
            logger.error("dead-lettering %s: %s", delivery.message_id, exc)
            dead_letter(self.worker.transport, delivery, f"signature refused: {exc}")
            return False
        return True

    def dispatch(self) -> None:
        """Start the queued jobs the pool has room for (and the rate-limited ones
        whose turn came)."""
        worker = self.worker
        backlog = self.backlog
        # Called by the consumer and by the pool's completion callback: one at a
        # time, or both could claim the same free slot.
        with worker.dispatch_lock:
            with backlog.cond:
                now = time.monotonic()
                while backlog.delayed and backlog.delayed[0][0] <= now:
                    backlog.pending.append(heapq.heappop(backlog.delayed)[2])
                jobs = worker.pool.take(backlog.pending) if backlog.pending else []
            if not jobs:
                return
            worker.pool.start_jobs(jobs)
            if worker.events.enabled:
                for job in jobs:
                    worker.events.send("task-started", uuid=job.task_id, name=job.task_name)

    def return_jobs(self, jobs: list[Job]) -> None:
        """Jobs the pool accepted but never started: run them first, or give them back
        to the broker when shutting down."""
        if self.worker.stopping.is_set():
            for job in jobs:
                self.worker.give_back(job.key)
            return
        self.backlog.requeue_front(jobs)

    def _wait_for_eta(self, delivery: Delivery, eta: float, now: float) -> None:
        """``delivery`` is early: the broker holds it for the rest of the wait if it
        can, else it is held here (its lease kept) until its ETA."""
        worker = self.worker
        limit = worker.transport.capabilities.max_delay
        if limit is None or limit >= min(eta - now, MIN_HOP):
            self._redelay(delivery, eta, now)
            return
        if self.backlog.hold_until(eta, next(self._keys), delivery, worker.eta_hold_limit):
            return
        if limit > 0:
            self._redelay(delivery, eta, now)  # a hop of max_delay: slow, never busy
            return
        if not self._overflowed:  # once per receive, not per message
            logger.warning(
                "%d messages already wait here for their ETA (the broker cannot delay); "
                "giving %s back to the broker",
                worker.eta_hold_limit,
                delivery.message_id,
            )
        worker.transport.nack(delivery)
        self._overflowed += 1

    def _redelay(self, delivery: Delivery, eta: float, now: float) -> None:
        # The ETA is beyond what the broker could hold: send it back for the rest
        # of the wait rather than hold it here.
        app = self.worker.app
        delay = app.native_delay(eta, now)
        out = OutgoingMessage(
            queue=delivery.queue,
            body=delivery.body,
            message_id=delivery.message_id,
            headers=delivery.headers,
            delay=delay,
            priority=delivery.priority,
        )
        app.publish_raw([out])
        self.worker.transport.ack([delivery])

    def revoke(self, delivery: Delivery, name: str, task_id: str, expired: bool) -> None:
        """Store ``task_id`` as REVOKED, announce it and ack its message."""
        worker = self.worker
        store_outside_task(worker.app, task_id, states.REVOKED, None, delivery)
        signals.task_revoked.send(
            sender=worker, request=delivery, terminated=False, signum=None, expired=expired
        )
        if worker.events.enabled:
            worker.events.send("task-revoked", uuid=task_id, name=name, expired=expired)
        worker.transport.ack([delivery])

    def revoke_queued(self) -> None:
        """Settle as REVOKED the queued jobs whose ids were revoked."""
        revocations = self.worker.revocations
        dropped = self.backlog.remove(lambda job: job.task_id in revocations)
        for job in dropped:
            with self.backlog.lease_lock:
                delivery = self.backlog.release(job.key)
                if delivery is not None:
                    self.revoke(delivery, job.task_name, job.task_id, expired=False)

