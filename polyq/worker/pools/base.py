"""What every pool shares: the :class:`Job` the worker hands it, the :class:`Result`
it reports, :func:`run_job` (one job in this process and thread) and the
:class:`Pool` contract the worker drives (``take``/``start_jobs``, ``on_done``)."""

from __future__ import annotations

import abc
import collections
import dataclasses
import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from polyq import signals
from polyq.exceptions import DecodeError, SecurityError
from polyq.message import decode
from polyq.security import open_task
from polyq.transport import Delivery

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["SHORT_TASK", "Job", "OnDone", "Pool", "Result", "run_job"]

logger = logging.getLogger("polyq.worker")


@dataclasses.dataclass
class Job:
    """One message to run; ``key`` identifies it to the worker."""

    key: int
    task_name: str
    task_id: str
    queue: str
    message_id: str
    body: bytes
    headers: dict[str, str]
    delivery_count: int
    priority: int
    #: Hard limit in seconds (enforced by pools that can kill), or ``None``.
    time_limit: float | None = None
    started: float = 0.0

    @classmethod
    def from_delivery(
        cls,
        key: int,
        delivery: Delivery,
        task_name: str,
        task_id: str,
        time_limit: float | None = None,
    ) -> Job:
        """The job that runs ``delivery`` (whose headers named ``task_name``/``task_id``)."""
        return cls(
            key=key,
            task_name=task_name,
            task_id=task_id,
            queue=delivery.queue,
            message_id=delivery.message_id,
            body=delivery.body,
            headers=delivery.headers,
            delivery_count=delivery.delivery_count,
            priority=delivery.priority,
            time_limit=time_limit,
        )


@dataclasses.dataclass
class Result:
    """What the pool reports for a job (small and picklable)."""

    key: int
    action: str  # "ack" | "requeue" | "dead_letter" | "worker_lost" | "time_limit" | "terminated"
    task_id: str
    state: str | None = None
    delay: float = 0.0
    reason: str = ""
    runtime: float = 0.0


def run_job(app: Polyq, job: Job, hostname: str, run: Any = None) -> Result:
    """Decode and execute one job in the current process and thread (``run``
    replaces how the task body is called, e.g. on an event loop)."""
    from polyq.execution import execute

    delivery = Delivery(
        queue=job.queue,
        message_id=job.message_id,
        body=job.body,
        headers=job.headers,
        delivery_count=job.delivery_count,
        priority=job.priority,
    )
    try:
        # A signed message is verified here, in the pool (in parallel), before a byte
        # of its body is read; what goes on holds only its signed headers.
        delivery, accept = open_task(app.security, delivery, app.accept)
    except SecurityError as exc:
        logger.error("dead-lettering %s[%s]: %s", job.task_name, job.task_id, exc)
        return Result(job.key, "dead_letter", job.task_id, reason=f"signature refused: {exc}")
    try:
        message = decode(delivery, accept)
    except DecodeError as exc:
        return Result(job.key, "dead_letter", job.task_id, reason=f"cannot decode: {exc}")
    try:
        if run is None:
            outcome = execute(app, message, hostname=hostname)
        else:
            outcome = execute(app, message, hostname=hostname, run=run)
    except Exception as exc:  # a failure of polyq itself (backend down...), not of the task
        logger.exception("internal error running %s[%s]", job.task_name, job.task_id)
        signals.task_internal_error.send(sender=job.task_name, task_id=job.task_id, exception=exc)
        return Result(job.key, "requeue", job.task_id, delay=1.0, reason=f"internal error: {exc}")
    return Result(
        job.key,
        outcome.action,
        job.task_id,
        outcome.state,
        outcome.delay,
        outcome.reason,
        outcome.runtime,
    )


OnDone = Callable[[list[Result]], None]

#: A task that runs at most this long (seconds) counts as tiny: the prefork pool may
#: queue several in one child, and the worker may prefetch more of them.
SHORT_TASK = 0.0005


class Pool(abc.ABC):
    """Runs jobs with some concurrency and reports their results."""

    name: ClassVar[str]
    #: Can kill a task at its hard time limit.
    hard_time_limit: ClassVar[bool] = False
    #: Can raise ``SoftTimeLimitExceeded`` inside a task.
    soft_time_limit: ClassVar[bool] = False
    #: Can terminate a running task on ``revoke(terminate=True)``.
    terminate: ClassVar[bool] = False
    #: Honours ``max_tasks_per_child`` / ``max_memory_per_child``.
    recycles: ClassVar[bool] = False

    def __init__(self, app: Polyq, concurrency: int, hostname: str, on_done: OnDone) -> None:
        self.app = app
        self.concurrency = concurrency
        self.hostname = hostname
        self.on_done = on_done
        self.running: dict[int, Job] = {}
        self.lock = threading.Lock()
        #: Called when the pool gains capacity without a job finishing (a child
        #: replaced, the pool grown), so work waiting for a slot is started.
        self.on_capacity: Callable[[], None] | None = None
        #: Called with jobs the pool accepted but never started (their process
        #: went away first), so the worker queues them again.
        self.on_return: Callable[[list[Job]], None] | None = None
        #: Moving average of the run time of the latest tasks, and how many counted.
        self.average_runtime = 0.0
        self.finished = 0

    def start(self) -> None:
        """Start the pool's threads or processes."""

    @abc.abstractmethod
    def submit(self, job: Job) -> None:
        """Start ``job`` (there is a free slot)."""

    def free_slots(self) -> int:
        """How many more jobs can start now."""
        with self.lock:
            return max(0, self.concurrency - len(self.running))

    def take(self, pending: collections.deque[Job]) -> list[Job]:
        """Remove from the front of ``pending`` the jobs this pool accepts now, in
        order, and reserve room for them; :meth:`start_jobs` then starts them.
        The worker calls the two under one lock, so reservations never race."""
        jobs: list[Job] = []
        free = self.free_slots()
        while free > 0 and pending:
            jobs.append(pending.popleft())
            free -= 1
        return jobs

    def start_jobs(self, jobs: list[Job]) -> None:
        """Start the jobs :meth:`take` accepted."""
        for job in jobs:
            self.submit(job)

    def run_forever(self, stop: threading.Event) -> None:
        """Called in the worker's main thread until ``stop``; solo runs jobs here."""
        stop.wait()

    def terminate_job(self, task_id: str, signum: int = signal.SIGTERM) -> bool:
        """Kill the process running ``task_id``; ``False`` if not running here."""
        return False

    def grow(self, n: int = 1) -> None:
        """Add ``n`` slots."""
        with self.lock:
            self.concurrency += n

    def shrink(self, n: int = 1) -> None:
        """Remove ``n`` slots (running jobs finish first)."""
        with self.lock:
            self.concurrency = max(1, self.concurrency - n)

    def _finish(self, result: Result) -> None:
        self._finish_many([result])

    def _finish_many(self, results: list[Result]) -> None:
        with self.lock:
            for result in results:
                self.running.pop(result.key, None)
                # An average, not a streak: one hiccup of a tiny task (a GC pause, a
                # busy machine) must not count as a slow task, while a single 50 ms
                # task lifts it over the line at once.
                self.average_runtime = 0.8 * self.average_runtime + 0.2 * result.runtime
                self.finished += 1
        self.on_done(results)

    def tasks_are_short(self) -> bool:
        """Whether the latest tasks ran in under :data:`SHORT_TASK` seconds on average
        (and enough of them finished to tell), so holding many more of them queued
        delays nothing noticeably."""
        return self.finished >= 4 * self.concurrency and self.average_runtime <= SHORT_TASK

    @abc.abstractmethod
    def stop(self, wait: bool) -> None:
        """Stop: with ``wait``, after running jobs finish; else at once."""
