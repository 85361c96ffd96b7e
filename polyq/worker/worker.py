"""The :class:`Worker`: its lifecycle (start, signals, warm and cold shutdown) and
the parts it is made of, each in its module:

- consumer thread (:mod:`.consumer`): receives messages into the free prefetch
  slots, checks each on its headers and queues it for the pool;
- the pool (:mod:`.pools`) runs jobs and reports results to the acker thread
  (:mod:`.settling`), which acknowledges finished messages in groups;
- lease keeper thread (:mod:`.leases`): extends the lease of every message held
  (running, queued or waiting for its ETA), time-based leases only;
- control thread (:mod:`.remote`): revokes and remote-control commands.

What they share lives in a :class:`~polyq.worker.backlog.Backlog` (held messages,
queued jobs), a :class:`~polyq.worker.revocations.Revocations` set and the
:class:`~polyq.worker.ratelimit.RateLimits`. A message is acked only after its task
finished and its result was stored (at-least-once), unless ``acks_late=False``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from polyq import signals
from polyq.events import EventDispatcher
from polyq.exceptions import ConfigurationError
from polyq.queues import check_queue_names
from polyq.worker import remote
from polyq.worker.backlog import Backlog
from polyq.worker.consumer import SHORT_TASK_PREFETCH, Consumer
from polyq.worker.leases import LeaseKeeper
from polyq.worker.pools import POOLS, Pool, PreforkPool
from polyq.worker.ratelimit import RateLimits
from polyq.worker.revocations import Revocations
from polyq.worker.settling import Acker
from polyq.worker.startup import check_connections

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["ETA_HOLD_LIMIT", "Worker", "expand_hostname"]

logger = logging.getLogger("polyq.worker")

#: Most messages a worker holds for their ETA when the broker cannot delay them.
ETA_HOLD_LIMIT = 10_000


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
        eta_hold_limit: int = ETA_HOLD_LIMIT,
    ) -> None:
        self.app = app
        #: ``module[:attribute]`` of the app (from ``-A``): lets the prefork pool start
        #: replacement children in a fresh interpreter.
        self.app_path = app_path
        conf = app.conf
        app.finalize()
        # Signing configured by settings alone loads its keys now, so a wrong path or
        # password stops the worker at start rather than failing every task.
        app.security  # noqa: B018
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
        # Checked here, before any broker sees them (a bad -Q fails the start at once).
        self.queues = check_queue_names(list(queues or [conf.task_default_queue]))
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
        # The result backend's plugin too, now: an unknown scheme or a missing extra
        # stops the worker here rather than failing every task it would run.
        app.backend  # noqa: B018
        # A broker with its own delivery timeout (RabbitMQ's consumer_timeout) warns
        # when the hard time limit would let a task outlive it.
        self.transport.check_time_limit(conf.task_time_limit)
        #: Most messages held for their ETA (a broker that cannot delay them).
        self.eta_hold_limit = eta_hold_limit
        self.backlog = Backlog()
        self.revocations = Revocations()
        self.rate_limits = RateLimits()
        #: Serializes handing jobs to the pool (the consumer and the pool both do).
        self.dispatch_lock = threading.Lock()
        #: Set when the worker stops taking messages (the start of any shutdown).
        self.stopping = threading.Event()
        #: Set once the pool and the worker's threads are running.
        self.ready = threading.Event()
        #: Set once the worker has stopped.
        self.stopped = threading.Event()
        self._cold = False
        self._shutting_down = False
        #: Why the worker stopped by itself, if it did (the CLI exits 1 with it).
        self.failure: str | None = None
        #: The worker's threads (liveness checks look for dead ones).
        self.threads: list[threading.Thread] = []
        self.processed = 0
        self.last_poll = time.monotonic()
        self.started_at = time.time()
        self.send_events = bool(send_events or conf.worker_send_task_events)
        self.events = EventDispatcher(app, self.hostname, self.send_events)
        self.consumer = Consumer(self)
        self.acker = Acker(self)
        self.pool: Pool = self._make_pool()
        self.pool.on_capacity = self.consumer.dispatch
        self.pool.on_return = self.consumer.return_jobs

    def window(self) -> int:
        """How many jobs the worker holds at most right now (queued or running)."""
        if self.adaptive_prefetch and self.pool.tasks_are_short():
            return max(self.prefetch_limit, self.concurrency * SHORT_TASK_PREFETCH)
        return self.prefetch_limit

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
                self.acker.on_done,
                self.max_tasks_per_child,
                self.max_memory_per_child,
                app_path=self.app_path,
                settings=_picklable(self.app.conf.explicit()),
            )
        return cls(self.app, self.concurrency, self.hostname, self.acker.on_done)

    # -- running ---------------------------------------------------------------

    def start(self) -> None:
        """Run until a shutdown signal (or :meth:`stop`); blocks the calling thread.
        Returns at once, with :attr:`failure` set, if the broker or the result
        backend refuses the worker, or cannot be reached and
        ``broker_connection_retry_on_startup`` is false (see :mod:`.startup`)."""
        self.failure = check_connections(self.app, self.transport, self.queues[0], self.stopping)
        if self.failure is not None:
            logger.critical("%s", self.failure)
            return
        signals.worker_init.send(sender=self)
        self.revocations.load(self.app)
        if self.install_signal_handlers:
            self._install_signal_handlers()
        self.pool.start()
        self._spawn(self.consumer.run, "polyq-consumer")
        self._spawn(self.acker.run, "polyq-acker")
        if self.transport.capabilities.lease == "timeout":
            self._spawn(LeaseKeeper(self).run, "polyq-leases")
        self._spawn(remote.ControlListener(self).run, "polyq-control")
        # monitoring: worker-online now, worker-heartbeat every few seconds (when -E)
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
            self.pool.run_forever(self.stopping)
            self.stopped.wait()
        finally:
            signals.worker_shutdown.send(sender=self)

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self, warm: bool = True) -> None:
        """Begin shutdown. Warm: take no more messages, give prefetched ones back at
        once, let running tasks finish (for at most ``worker_soft_shutdown_timeout``
        seconds when it is set, then cold). Cold: stop now; running tasks are given back."""
        if self.stopping.is_set() and warm:
            warm = False  # a second request is cold, as with a second signal
        elif warm:
            limit = float(self.app.conf.worker_soft_shutdown_timeout or 0)
            if limit > 0:
                timer = threading.Timer(limit, self._soft_shutdown_expired, (limit,))
                timer.daemon = True
                timer.start()
        self._cold = not warm
        self.stopping.set()
        threading.Thread(
            target=self._shutdown, args=(warm,), name="polyq-shutdown", daemon=True
        ).start()

    def _soft_shutdown_expired(self, limit: float) -> None:
        if self.stopped.is_set() or self._cold:
            return
        running = len(self.backlog.held_keys())
        logger.warning(
            "%d task(s) still running %.0f s into a warm shutdown "
            "(worker_soft_shutdown_timeout): stopping them and giving their messages back",
            running,
            limit,
        )
        self.stop(warm=False)

    def _shutdown(self, warm: bool) -> None:
        if not warm and self._shutting_down:
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
                self.stopped.set()

    def join_consumer(self) -> None:
        """Wait for the consumer's last receive to end (shutting down)."""
        for thread in self.threads:
            if thread.name == "polyq-consumer" and thread is not threading.current_thread():
                thread.join(timeout=self.receive_wait + 5)

    def _drain_and_stop(self, warm: bool) -> None:
        # First let the consumer finish the receive it may be in (at most one wait):
        # what it gets is handed back below, and nothing is taken after that, so a
        # message given back is not received again by this worker.
        self.join_consumer()
        for job in self.backlog.drain():
            self.give_back(job.key)
        for key in self.backlog.drain_timers():
            self.give_back(key)
        self.pool.stop(wait=warm)
        if not warm:
            for key in self.backlog.held_keys():
                self.give_back(key)
        self.acker.finish()
        for thread in self.threads:
            if thread.name == "polyq-acker":
                thread.join(timeout=10)

    def give_back(self, key: int) -> None:
        """Give the message held under ``key`` back to the broker (not settled here)."""
        with self.backlog.lease_lock:
            delivery = self.backlog.release(key)
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
