"""The worker: consumes messages, runs them in a pool, acknowledges them.

Threads of the worker's main process:

- **consumer**: leases up to the free prefetch slots (``concurrency *
  prefetch_multiplier``) from the broker, checks each message on its headers
  alone (decodable, accepted content type, known task, delivery count, ETA,
  expiry, revoked) and queues it for the pool;
- **acker**: acknowledges finished messages in groups (one round trip for many);
- **lease keeper**: extends the lease of every message held — running or
  prefetched — so a long task, or one waiting behind it, is never delivered
  twice (time-based leases only);
- **control**: listens for broadcast commands (revoke) where the broker can.

A message is acked only after its task finished and its result was stored
(at-least-once), unless the task has ``acks_late=False``.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from polyq import signals, states
from polyq.control import CONTROL_CHANNEL, REVOKED_PREFIX
from polyq.events import EventDispatcher, message_fields
from polyq.exceptions import (
    BrokerError,
    ConfigurationError,
    DecodeError,
    RevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from polyq.execution import store_state
from polyq.message import peek
from polyq.transport import Delivery
from polyq.worker.pools import POOLS, Job, Pool, PreforkPool, Result
from polyq.worker.ratelimit import TokenBucket, parse_rate

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["Worker", "expand_hostname"]

logger = logging.getLogger("polyq.worker")

#: A message whose ETA is this close is run now rather than re-delayed.
ETA_SLACK = 0.05
#: Messages per process the worker may reserve while every recent task was tiny
#: (see ``Pool.tasks_are_short``) and the prefetch multiplier was left at its default.
SHORT_TASK_PREFETCH = 64
#: How long acknowledgements may gather while tasks are running (seconds).
ACK_GATHER = 0.002


def expand_hostname(template: str | None) -> str:
    """Expand ``%h`` (host name), ``%n`` (short name) and ``%d`` (domain) as Celery does."""
    full = socket.gethostname()
    short, _, domain = full.partition(".")
    template = template or "polyq@%h"
    return template.replace("%h", full).replace("%n", short).replace("%d", domain)


class Worker:
    """Consume ``queues`` and run their tasks in a pool until stopped."""

    def __init__(
        self,
        app: Polyq,
        *,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        hostname: str | None = None,
        pool: str | None = None,
        prefetch_multiplier: int | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        install_signal_handlers: bool = True,
        receive_wait: float = 1.0,
        send_events: bool = False,
        app_path: str | None = None,
    ) -> None:
        self.app = app
        #: ``module[:attribute]`` of the app (from ``-A``): lets the prefork pool start
        #: replacement children in a fresh interpreter.
        self.app_path = app_path
        conf = app.conf
        app.finalize()
        if time_limit is not None:
            conf.task_time_limit = time_limit
        if soft_time_limit is not None:
            conf.task_soft_time_limit = soft_time_limit
        self.pool_name = pool or conf.worker_pool
        if self.pool_name not in POOLS:
            raise ConfigurationError(
                f"unknown pool {self.pool_name!r}; choose one of {', '.join(POOLS)}"
            )
        self.concurrency = int(concurrency or conf.worker_concurrency or os.cpu_count() or 1)
        if self.pool_name == "solo":
            self.concurrency = 1
        self.queues = list(queues or [conf.task_default_queue])
        self.hostname = expand_hostname(hostname)
        multiplier = (
            prefetch_multiplier
            if prefetch_multiplier is not None
            else (conf.worker_prefetch_multiplier)
        )
        self.prefetch_limit = max(self.concurrency, self.concurrency * int(multiplier))
        # Celery's advice for tiny tasks is a large multiplier; unless one was chosen,
        # the worker follows it by itself while its tasks stay tiny, and falls back to
        # the multiplier (fair to long tasks and to other workers) as soon as one is not.
        self.adaptive_prefetch = prefetch_multiplier is None and not conf.is_set(
            "worker_prefetch_multiplier"
        )
        self.max_tasks_per_child = max_tasks_per_child or conf.worker_max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child or conf.worker_max_memory_per_child
        self.install_signal_handlers = install_signal_handlers
        self.receive_wait = receive_wait
        self._check_pool_supports()

        self.transport = app.transport
        check = getattr(self.transport, "check_time_limit", None)
        if check is not None:
            # A broker with its own delivery timeout (RabbitMQ's consumer_timeout) warns
            # when the hard time limit would let a task outlive it.
            check(conf.task_time_limit)
        self._held: dict[int, Delivery] = {}
        self._pending: collections.deque[Job] = collections.deque()
        self._delayed: list[tuple[float, int, Job]] = []  # rate-limited, by start time
        self._keys = itertools.count(1)
        self._cond = threading.Condition()
        self._dispatch_lock = threading.Lock()
        # Held while leases are extended and while held messages are settled or given
        # back, so an extension from a stale snapshot never re-leases a message that
        # was just given back (that would hide it for a whole visibility timeout).
        self._lease_lock = threading.Lock()
        #: Finished jobs for the acker, a list at a time; ``None`` tells it to stop.
        self._acks: queue.SimpleQueue[list[Result] | None] = queue.SimpleQueue()
        self._stop_consuming = threading.Event()
        #: Set once the pool and the worker's threads are running.
        self.ready = threading.Event()
        self._stopped = threading.Event()
        self._cold = False
        self._consumer_waiting = False
        #: Why the worker stopped by itself, if it did (the CLI exits 1 with it).
        self.failure: str | None = None
        self._revoked: set[str] = set()
        self._buckets: dict[str, TokenBucket] = {}
        self._threads: list[threading.Thread] = []
        self.processed = 0
        self.last_poll = time.monotonic()
        self.started_at = time.time()
        self.send_events = bool(send_events or conf.worker_send_task_events)
        self.events = EventDispatcher(app, self.hostname, self.send_events)
        self.pool: Pool = self._make_pool()
        self.pool.on_capacity = self._dispatch
        self.pool.on_return = self._return_jobs

    # -- configuration checks --------------------------------------------------

    def _check_pool_supports(self) -> None:
        cls = POOLS[self.pool_name]
        conf = self.app.conf
        limited = [t.name for t in self.app.tasks.values() if t.time_limit]
        if (conf.task_time_limit or limited) and not cls.hard_time_limit:
            raise ConfigurationError(
                f"a hard time limit is set (--time-limit / task_time_limit / time_limit= on "
                f"{limited or 'all tasks'}) but the {self.pool_name} pool cannot stop a running "
                "task; use --pool prefork, or drop the hard limit"
            )
        soft = [t.name for t in self.app.tasks.values() if t.soft_time_limit]
        if (conf.task_soft_time_limit or soft) and not cls.soft_time_limit:
            raise ConfigurationError(
                f"a soft time limit is set but the {self.pool_name} pool cannot interrupt a "
                "task; use --pool prefork or solo, or drop the soft limit"
            )
        if (self.max_tasks_per_child or self.max_memory_per_child) and not cls.recycles:
            raise ConfigurationError(
                f"--max-tasks-per-child/--max-memory-per-child need the prefork pool, not "
                f"{self.pool_name}"
            )

    def _make_pool(self) -> Pool:
        cls = POOLS[self.pool_name]
        if cls is PreforkPool:
            return PreforkPool(
                self.app,
                self.concurrency,
                self.hostname,
                self._on_done,
                self.max_tasks_per_child,
                self.max_memory_per_child,
                app_path=self.app_path,
                settings=_picklable(self.app.conf.explicit()),
            )
        return cls(self.app, self.concurrency, self.hostname, self._on_done)

    # -- running ---------------------------------------------------------------

    def start(self) -> None:
        """Run until a shutdown signal (or :meth:`stop`); blocks the calling thread.
        Returns at once, with :attr:`failure` set, if the broker cannot be reached and
        ``broker_connection_retry_on_startup`` is false."""
        if self.app.conf.broker_connection_retry_on_startup is False:
            try:
                self.transport.size(self.queues[0])  # any call that needs the broker
            except Exception as exc:
                self.failure = (
                    f"cannot reach the broker at {self.transport.describe()} on start-up "
                    f"({exc}), and broker_connection_retry_on_startup is false: not "
                    "starting. Start the broker first, or leave the setting true to wait for it"
                )
                logger.critical("%s", self.failure)
                return
        signals.worker_init.send(sender=self)
        self._load_revoked()
        if self.install_signal_handlers:
            self._install_signal_handlers()
        self.pool.start()
        self._spawn(self._consume, "polyq-consumer")
        self._spawn(self._ack_loop, "polyq-acker")
        if self.transport.capabilities.lease == "timeout":
            self._spawn(self._keep_leases, "polyq-leases")
        self._spawn(self._listen_control, "polyq-control")
        # monitoring: worker-online now, worker-heartbeat every few seconds (when -E)
        from polyq.worker import remote

        self.events.start(lambda: remote.stats(self))
        logger.info(
            "polyq worker %s ready: pool=%s concurrency=%d queues=%s broker=%s backend=%s",
            self.hostname,
            self.pool_name,
            self.concurrency,
            ",".join(self.queues),
            self.transport.describe(),
            self.app.backend.describe(),
        )
        signals.worker_ready.send(sender=self)
        self.ready.set()
        try:
            self.pool.run_forever(self._stop_consuming)
            self._stopped.wait()
        finally:
            signals.worker_shutdown.send(sender=self)

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, warm: bool = True) -> None:
        """Begin shutdown. Warm: take no more messages, give prefetched ones back at
        once, let running tasks finish (for at most ``worker_soft_shutdown_timeout``
        seconds when it is set, then cold). Cold: stop now; running tasks are given back."""
        if self._stop_consuming.is_set() and warm:
            warm = False  # a second request is cold, as with a second signal
        elif warm:
            limit = float(self.app.conf.worker_soft_shutdown_timeout or 0)
            if limit > 0:
                timer = threading.Timer(limit, self._soft_shutdown_expired, (limit,))
                timer.daemon = True
                timer.start()
        self._cold = not warm
        self._stop_consuming.set()
        threading.Thread(
            target=self._shutdown, args=(warm,), name="polyq-shutdown", daemon=True
        ).start()

    def _soft_shutdown_expired(self, limit: float) -> None:
        if self._stopped.is_set() or self._cold:
            return
        with self._cond:
            running = len(self._held)
        logger.warning(
            "%d task(s) still running %.0f s into a warm shutdown "
            "(worker_soft_shutdown_timeout): stopping them and giving their messages back",
            running,
            limit,
        )
        self.stop(warm=False)

    def _shutdown(self, warm: bool) -> None:
        if not warm and getattr(self, "_shutting_down", False):
            # Cold after warm: kill what runs now; the warm path finishes the rest.
            self.pool.stop(wait=False)
            return
        self._shutting_down = True
        self.ready.wait(30)  # a stop that races start() waits for the pool to exist
        logger.info("%s shutdown: %s", "warm" if warm else "cold", self.hostname)
        try:
            self._drain_and_stop(warm)
        except Exception:
            logger.exception("error during shutdown of %s", self.hostname)
        finally:
            self.events.close()  # monitoring: worker-offline and the last events
            try:
                self.transport.close()
            finally:
                self._stopped.set()

    def _join_consumer(self) -> None:
        for thread in self._threads:
            if thread.name == "polyq-consumer" and thread is not threading.current_thread():
                thread.join(timeout=self.receive_wait + 5)

    def _drain_and_stop(self, warm: bool) -> None:
        # First let the consumer finish the receive it may be in (at most one wait):
        # what it gets is handed back below, and nothing is taken after that, so a
        # message given back is not received again by this worker.
        self._join_consumer()
        with self._cond:
            returned = list(self._pending) + [job for _, _, job in self._delayed]
            self._pending.clear()
            self._delayed.clear()
            self._cond.notify_all()
        for job in returned:
            self._give_back(job.key)
        self.pool.stop(wait=warm)
        if not warm:
            with self._cond:
                running = list(self._held)
            for key in running:
                self._give_back(key)
        self._acks.put(None)
        for thread in self._threads:
            if thread.name == "polyq-acker":
                thread.join(timeout=10)

    def _give_back(self, key: int) -> None:
        with self._lease_lock:
            self._give_back_locked(key)

    def _give_back_locked(self, key: int) -> None:
        with self._cond:
            delivery = self._held.pop(key, None)
        if delivery is not None:
            try:
                self.transport.nack(delivery)
            except Exception:
                logger.warning(
                    "could not give message %s back; its lease will expire",
                    delivery.message_id,
                    exc_info=True,
                )

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def warm(signum: int, frame: Any) -> None:
            self.stop(warm=True)

        def cold(signum: int, frame: Any) -> None:
            self.stop(warm=False)

        signal.signal(signal.SIGTERM, warm)
        signal.signal(signal.SIGINT, warm)
        signal.signal(signal.SIGQUIT, cold)

    # -- consuming -------------------------------------------------------------

    def _consume(self) -> None:
        while not self._stop_consuming.is_set():
            try:
                self._consume_loop()
            except Exception:
                # Never let the consumer die silently: a worker that stops taking
                # messages but stays up is the worst failure there is.
                logger.critical("consumer loop failed; restarting it", exc_info=True)
                self._stop_consuming.wait(1.0)

    def _consume_loop(self) -> None:
        errors = 0
        while not self._stop_consuming.is_set():
            self.last_poll = time.monotonic()  # monitoring: liveness probe reads it
            with self._cond:
                # Jobs count from receipt until they finish (queued, rate-limited or
                # running; acked early or not); a finished job waiting for its ack
                # no longer holds a place.
                limit = self.window()
                inflight = len(self._pending) + len(self._delayed) + len(self.pool.running)
                free = limit - inflight
                # While the pool still has prefetched work queued, wait until half the
                # window is free and take it in one round trip instead of one message
                # per call; an idle pool is refilled at once.
                full = free <= 0 or bool(self._pending and free < max(1, limit // 2))
                if full:
                    self._consumer_waiting = True
                    self._cond.wait(timeout=0.5)
                    self._consumer_waiting = False
                wait = self.receive_wait
                if self._delayed:
                    wait = min(wait, max(0.01, self._delayed[0][0] - time.monotonic()))
            if full:
                # Safety net: whatever freed pool capacity, queued work never waits
                # longer than this pause to start.
                self._dispatch()
                continue
            try:
                deliveries = self.transport.receive(self.queues, free, wait)
                errors = 0
            except Exception as exc:
                errors += 1
                pause = min(10.0, 0.2 * 2**errors)
                logger.error(
                    "receive from %s failed (%s); retrying in %.1fs",
                    self.transport.describe(),
                    exc,
                    pause,
                )
                self._stop_consuming.wait(pause)
                continue
            for delivery in deliveries:
                if self._stop_consuming.is_set():
                    self.transport.nack(delivery)
                    continue
                self._accept(delivery)
            self._dispatch()

    def window(self) -> int:
        """How many jobs the worker holds at most right now (queued or running)."""
        if self.adaptive_prefetch and self.pool.tasks_are_short():
            return max(self.prefetch_limit, self.concurrency * SHORT_TASK_PREFETCH)
        return self.prefetch_limit

    def _accept(self, delivery: Delivery) -> None:
        """Check a new delivery on its headers and queue it, or settle it now."""
        conf = self.app.conf
        try:
            name, task_id = peek(delivery)
        except DecodeError as exc:
            logger.error("dead-lettering undecodable message %s: %s", delivery.message_id, exc)
            self._dead_letter(delivery, f"undecodable: {exc}")
            return
        if delivery.delivery_count > conf.task_max_deliveries:
            reason = (
                f"delivered {delivery.delivery_count} times, more than task_max_deliveries="
                f"{conf.task_max_deliveries} (the task keeps killing its worker, or is never acked)"
            )
            logger.error("dead-lettering %s[%s]: %s", name, task_id, reason)
            self._store(task_id, states.FAILURE, WorkerLostError(reason), delivery)
            self._dead_letter(delivery, reason)
            return
        content_type = delivery.headers.get("content-type", "application/json")
        if content_type not in self.app.accept:
            reason = (
                f"content type {content_type!r} is not in accept_content "
                f"({', '.join(sorted(self.app.accept))}); not deserialized"
            )
            logger.error("dead-lettering %s[%s]: %s", name, task_id, reason)
            self._dead_letter(delivery, reason)
            return
        task = self.app.tasks.get(name)
        if task is None:
            reason = f"unknown task {name!r}: not registered on worker {self.hostname}"
            logger.error("dead-lettering %s: %s", task_id, reason)
            signals.task_unknown.send(sender=self, name=name, id=task_id, message=delivery)
            self._dead_letter(delivery, reason)
            return
        now = time.time()
        eta = _timestamp(delivery.headers.get("eta"))
        if eta is not None and eta - now > ETA_SLACK:
            self._redelay(delivery, eta, now)
            return
        expires = _timestamp(delivery.headers.get("expires"))
        if expires is not None and expires < now:
            logger.info("task %s[%s] expired; revoked", name, task_id)
            self._revoke(delivery, name, task_id, expired=True)
            return
        if task_id in self._revoked:
            self._revoke(delivery, name, task_id, expired=False)
            return
        signals.task_received.send(sender=self, request=delivery)
        if self.events.enabled:
            self.events.send(
                "task-received",
                uuid=task_id,
                name=name,
                **message_fields(delivery, self.app.accept),
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
        if not acks_late:
            # At-most-once: the message is gone before the task runs.
            self.transport.ack([delivery])
        else:
            with self._cond:
                self._held[key] = delivery
        rate = task.rate_limit or conf.task_default_rate_limit
        with self._cond:
            if rate:
                bucket = self._buckets.get(name)
                if bucket is None:
                    bucket = self._buckets[name] = TokenBucket(parse_rate(rate) or 1e9)
                wait = bucket.take()
                if wait > 0:
                    # Reserve the next token now, so later calls queue up behind this one.
                    bucket._tokens -= 1.0
                    heapq.heappush(self._delayed, (time.monotonic() + wait, key, job))
                    return
            self._pending.append(job)

    def _dispatch(self) -> None:
        # Called by the consumer and by the pool's completion callback: one at a
        # time, or both could claim the same free slot.
        with self._dispatch_lock:
            with self._cond:
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    self._pending.append(heapq.heappop(self._delayed)[2])
                jobs = self.pool.take(self._pending) if self._pending else []
            if not jobs:
                return
            self.pool.start_jobs(jobs)
            if self.events.enabled:
                for job in jobs:
                    self.events.send("task-started", uuid=job.task_id, name=job.task_name)

    def _return_jobs(self, jobs: list[Job]) -> None:
        """Jobs the pool accepted but never started: run them first, or give them back
        to the broker when shutting down."""
        if self._stop_consuming.is_set():
            for job in jobs:
                self._give_back(job.key)
            return
        with self._cond:
            self._pending.extendleft(reversed(jobs))
            self._cond.notify_all()

    def _redelay(self, delivery: Delivery, eta: float, now: float) -> None:
        # The ETA is beyond what the broker could hold: send it back for the rest
        # of the wait rather than hold it here.
        from polyq.transport import OutgoingMessage

        delay = self.app.native_delay(eta, now)
        out = OutgoingMessage(
            queue=delivery.queue,
            body=delivery.body,
            message_id=delivery.message_id,
            headers=delivery.headers,
            delay=delay,
            priority=delivery.priority,
        )
        self.app.publish_raw([out])
        self.transport.ack([delivery])

    def _revoke(self, delivery: Delivery, name: str, task_id: str, expired: bool) -> None:
        self._store(task_id, states.REVOKED, None, delivery)
        signals.task_revoked.send(
            sender=self, request=delivery, terminated=False, signum=None, expired=expired
        )
        if self.events.enabled:
            self.events.send("task-revoked", uuid=task_id, name=name, expired=expired)
        self.transport.ack([delivery])

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        try:
            self.transport.dead_letter(delivery, reason)
        except Exception:
            logger.exception("could not dead-letter %s; giving it back", delivery.message_id)
            self.transport.nack(delivery, delay=5.0)

    def _store(
        self,
        task_id: str,
        state: str,
        exc: BaseException | None,
        delivery: Delivery | None = None,
    ) -> None:
        """Store a state the task itself could not (killed, revoked, poison), and fail
        the workflow waiting on it (chain, chord) so that nothing hangs."""
        try:
            store_state(self.app, task_id, state, exc=exc)
        except Exception:
            logger.exception("could not store state %s of %s", state, task_id)
        if delivery is not None:
            from polyq.canvas import on_failure_outside_task

            cause = exc or RevokedError(f"task {task_id} was revoked")
            on_failure_outside_task(self.app, delivery, cause)

    # -- finishing -------------------------------------------------------------

    def _on_done(self, results: list[Result]) -> None:
        self._acks.put(results)
        limit = self.window()
        with self._cond:
            # Waking the consumer for each finished task would cost a thread switch
            # per task; it takes messages in groups of half the window anyway. (The
            # flag is read under the lock it is set under: no wake-up is lost.)
            if self._consumer_waiting and (
                len(self._pending) + len(self.pool.running) <= limit // 2
            ):
                self._cond.notify_all()
        if not self._stop_consuming.is_set():
            self._dispatch()

    def _ack_loop(self) -> None:
        while True:
            try:
                if self._ack_batch():
                    return
            except Exception:
                logger.critical("acknowledging failed; the leases will expire", exc_info=True)

    def _ack_batch(self) -> bool:
        """Settle every finished job waiting; return True once told to stop."""
        batch = [self._acks.get()]
        if batch[0] is not None and self.pool.running:
            # Tasks are still running: their results follow within moments, and one
            # round trip can acknowledge them all. An ack waits at most this long,
            # and a lone task (nothing else running) is acknowledged at once.
            time.sleep(ACK_GATHER)
        while True:
            try:
                batch.append(self._acks.get_nowait())
            except queue.Empty:
                break
        with self._lease_lock:
            return self._settle_batch(batch)

    def _settle_batch(self, batch: list[list[Result] | None]) -> bool:
        to_ack: list[Delivery] = []
        results = list(itertools.chain.from_iterable(r or () for r in batch))
        with self._cond:
            deliveries = [self._held.pop(result.key, None) for result in results]
        for result, delivery in zip(results, deliveries, strict=True):
            self.processed += 1
            if self.events.enabled:
                self._task_event(result)
            if delivery is None:
                continue  # acked before running (acks_late=False)
            action = self._settle(result, delivery)
            if action == "ack":
                to_ack.append(delivery)
            elif action == "requeue":
                if self._stop_consuming.is_set():
                    # Shutting down: let the consumer's last receive end first, or it
                    # could take this very message again only to give it back.
                    self._join_consumer()
                self._call(self.transport.nack, delivery, result.delay)
            else:
                self._dead_letter(delivery, result.reason)
        finished = any(r is None for r in batch)
        if to_ack:
            self._call(self.transport.ack, to_ack)
        return finished

    def _task_event(self, result: Result) -> None:
        kind = {
            states.SUCCESS: "task-succeeded",
            states.FAILURE: "task-failed",
            states.RETRY: "task-retried",
            states.REVOKED: "task-revoked",
        }.get(result.state or "", "task-failed" if result.action != "ack" else "task-succeeded")
        self.events.send(
            kind,
            uuid=result.task_id,
            runtime=result.runtime,
            action=result.action,
            reason=result.reason or None,
        )

    def _settle(self, result: Result, delivery: Delivery) -> str:
        """Turn the pool's report into ack/requeue/dead_letter (storing states for kills)."""
        conf = self.app.conf
        task = self.app.tasks.get(delivery.headers.get("task", ""))
        if result.action == "time_limit":
            exc = TimeLimitExceeded(result.reason)
            self._store(result.task_id, states.FAILURE, exc, delivery)
            acks = task.acks_on_failure_or_timeout if task else None
            if acks if acks is not None else conf.task_acks_on_failure_or_timeout:
                return "ack"
            return "dead_letter"
        if result.action == "terminated":
            self._store(result.task_id, states.REVOKED, None, delivery)
            return "ack"
        if result.action == "worker_lost":
            reject = task.reject_on_worker_lost if task else None
            if reject if reject is not None else conf.task_reject_on_worker_lost:
                logger.warning("%s: delivering %s again", result.reason, result.task_id)
                return "requeue"
            lost = WorkerLostError(result.reason)
            self._store(result.task_id, states.FAILURE, lost, delivery)
            return "ack"
        return result.action

    def _call(self, fn: Any, *args: Any) -> None:
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

    # -- leases ----------------------------------------------------------------

    def _keep_leases(self) -> None:
        interval = max(0.2, self.transport.visibility_timeout / 3)
        while not self._stopped.wait(interval):
            with self._lease_lock:
                with self._cond:
                    held = list(self._held.values())
                if not held:
                    continue
                try:
                    self.transport.extend_lease(held)
                except Exception:
                    logger.exception("extending %d leases failed", len(held))

    # -- revokes ---------------------------------------------------------------

    def _load_revoked(self) -> None:
        try:
            keys = self.app.backend.keys(REVOKED_PREFIX, 100000)
        except Exception:
            logger.exception("could not load revoked task ids")
            return
        self._revoked.update(k[len(REVOKED_PREFIX) :] for k in keys)

    def _listen_control(self) -> None:
        if not self.transport.capabilities.broadcast:
            # No broadcast: re-read the durable revokes now and then instead.
            while not self._stopped.wait(2.0):
                self._load_revoked()
            return
        pause = 1.0
        while not self._stopped.is_set():
            try:
                self._listen_once()
                pause = 1.0
            except Exception:
                # The broker went away: revokes and commands must still arrive after it
                # comes back, so listen again (and re-read durable revokes) after a pause.
                logger.warning(
                    "control channel lost; listening again in %.0fs", pause, exc_info=True
                )
                self._stopped.wait(pause)
                pause = min(pause * 2, 30.0)

    def _listen_once(self) -> None:
        with self.transport.subscribe(CONTROL_CHANNEL) as subscription:
            self._load_revoked()  # anything revoked while we were not listening
            while not self._stopped.is_set():
                body = subscription.get(1.0)
                if body is None:
                    continue
                try:
                    command = json.loads(body)
                    self._handle_control(command["command"], command.get("arguments") or {})
                except Exception:
                    logger.exception("bad control message %r", body[:200])

    def _handle_control(self, command: str, arguments: dict[str, Any]) -> None:
        if command != "revoke":
            from polyq.worker import remote

            remote.handle(self, command, arguments)
            return
        if command == "revoke":
            ids = list(arguments.get("ids") or [])
            self._revoked.update(ids)
            if arguments.get("terminate"):
                signum = getattr(signal, str(arguments.get("signal", "SIGTERM")), signal.SIGTERM)
                for task_id in ids:
                    self.pool.terminate_job(task_id, signum)
            with self._cond:
                dropped = [job for job in self._pending if job.task_id in self._revoked]
                for job in dropped:
                    self._pending.remove(job)
            for job in dropped:
                with self._lease_lock:
                    with self._cond:
                        delivery = self._held.pop(job.key, None)
                    if delivery is not None:
                        self._revoke(delivery, job.task_name, job.task_id, expired=False)


def _picklable(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings that can be sent to a spawned child (the rest it re-reads on import)."""
    import pickle

    kept = {}
    for key, value in settings.items():
        try:
            pickle.dumps(value)
        except Exception:
            continue
        kept[key] = value
    return kept


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    import datetime

    parsed = datetime.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()
