"""Execution pools: prefork (default), threads, solo and asyncio.

A pool runs :class:`Job` objects and reports their :class:`Result` objects to
the worker through ``on_done`` (a list at a time, from whatever thread it likes).
The worker hands it queued jobs through ``take``/``start_jobs`` and the pool takes
only what it can run. Each pool declares what it cannot do
(hard time limits, soft time limits, terminating a running task), and the
worker refuses a configuration that asks for it instead of ignoring it.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import inspect
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import resource
import select
import selectors
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from polyq import signals
from polyq.exceptions import DecodeError
from polyq.message import decode
from polyq.transport import Delivery

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    from polyq.app import Polyq

__all__ = ["POOLS", "AsyncioPool", "Job", "Pool", "PreforkPool", "Result", "SoloPool", "ThreadPool"]

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
        message = decode(delivery, app.accept)
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


class SoloPool(Pool):
    """Runs one task at a time in the thread that runs the worker (soft limits work
    there when it is the main thread)."""

    name = "solo"
    soft_time_limit = True

    def __init__(self, app: Polyq, concurrency: int, hostname: str, on_done: OnDone) -> None:
        super().__init__(app, 1, hostname, on_done)
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()

    def submit(self, job: Job) -> None:
        with self.lock:
            self.running[job.key] = job
        self._jobs.put(job)

    def run_forever(self, stop: threading.Event) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                if stop.is_set() and not self.running:
                    return
                continue
            if job is None:
                return
            self._finish(run_job(self.app, job, self.hostname))

    def grow(self, n: int = 1) -> None:
        raise NotImplementedError("the solo pool runs one task at a time; use threads or prefork")

    shrink = grow

    def stop(self, wait: bool) -> None:
        self._jobs.put(None)


class ThreadPool(Pool):
    """Runs tasks in threads of the worker process (I/O-bound tasks)."""

    name = "threads"

    def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=64, thread_name_prefix="polyq-task"
        )

    def submit(self, job: Job) -> None:
        with self.lock:
            self.running[job.key] = job
        self._executor.submit(self._run, job)

    def _run(self, job: Job) -> None:
        self._finish(run_job(self.app, job, self.hostname))

    def stop(self, wait: bool) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)


class _Terminated(BaseException):
    """Raised through a task's execution when ``revoke(terminate=True)`` cancelled
    its coroutine: not a failure of the task (no FAILURE, no retry, no hooks)."""


class AsyncioPool(Pool):
    """Runs ``async def`` tasks concurrently on one event loop (sync tasks in its
    default executor). ``revoke(terminate=True)`` cancels an ``async def`` task's
    coroutine: it stops at its next ``await`` (``CancelledError`` inside it, so its
    ``finally`` blocks run); a plain task in the executor runs to its end."""

    name = "asyncio"
    terminate = True

    def start(self) -> None:
        #: The coroutines running now, by task id, and those told to stop.
        self._coroutines: dict[str, concurrent.futures.Future[Any]] = {}
        self._terminated: set[str] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="polyq-asyncio", daemon=True
        )
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self.lock:
            self.running[job.key] = job
        asyncio.run_coroutine_threadsafe(self._run(job), self._loop)

    def terminate_job(self, task_id: str, signum: int = signal.SIGTERM) -> bool:
        """Cancel the coroutine of ``task_id`` (the signal does not apply)."""
        with self.lock:
            future = self._coroutines.get(task_id)
            if future is None:
                return False  # not running here, not yet at its body, or not async
            self._terminated.add(task_id)
        future.cancel()
        return True

    async def _run(self, job: Job) -> None:
        loop = asyncio.get_running_loop()

        def runner(task: Any, args: list[Any], kwargs: dict[str, Any]) -> Any:
            fn = task.run
            if not (
                inspect.iscoroutinefunction(fn)
                or inspect.iscoroutinefunction(getattr(fn, "__func__", None))
            ):
                return fn(*args, **kwargs)
            future = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), loop)
            with self.lock:
                self._coroutines[job.task_id] = future
            try:
                return future.result()
            except concurrent.futures.CancelledError:
                with self.lock:
                    terminated = job.task_id in self._terminated
                if terminated:
                    raise _Terminated from None
                raise
            finally:
                with self.lock:
                    self._coroutines.pop(job.task_id, None)

        def blocking() -> Result:
            started = time.monotonic()
            try:
                return run_job(self.app, job, self.hostname, run=runner)
            except _Terminated:
                return Result(
                    job.key,
                    "terminated",
                    job.task_id,
                    reason="terminated by revoke",
                    runtime=time.monotonic() - started,
                )
            finally:
                with self.lock:
                    self._terminated.discard(job.task_id)

        # Hooks, signals and the backend are synchronous: they run in a helper thread
        # while the task's coroutine itself runs on this loop.
        result = await loop.run_in_executor(None, blocking)
        self._finish(result)

    def stop(self, wait: bool) -> None:
        deadline = time.monotonic() + (3600 if wait else 0)
        while wait and self.running and time.monotonic() < deadline:
            time.sleep(0.05)
        self._loop.call_soon_threadsafe(self._loop.stop)


# -- prefork ---------------------------------------------------------------------


#: A child is given several jobs at once only while their expected run times add up
#: to no more than this: tiny tasks then cost one pipe message per batch instead of
#: per task, and a job queued behind others in a child waits at most about this long
#: (a longer task, or one never seen yet, goes only to an idle child, as with -O fair).
BATCH_BUDGET = 0.002
#: The most jobs one child holds at a time.
BATCH_MAX = 32
#: How long the pool lets results gather while children are busy.
RESULT_GATHER = 0.0005


@dataclasses.dataclass(eq=False)
class _Child:
    process: BaseProcess
    conn: Connection
    #: Jobs sent and not yet reported, in the order the child runs them: the first
    #: is the one running.
    jobs: dict[int, Job] = dataclasses.field(default_factory=dict)
    #: Accepted by ``take`` and not yet sent.
    unsent: list[Job] = dataclasses.field(default_factory=list)
    #: Expected seconds of work in ``jobs``; ``None`` while it holds an unbatchable job.
    queued: float | None = 0.0
    #: Jobs ever given to it (``max_tasks_per_child`` counts these).
    assigned: int = 0
    #: Why the parent killed it, if it did ("time_limit", "terminated").
    killed_for: str | None = None
    #: It said it will exit after its last result (or was told to): whatever it
    #: still holds was never started.
    retiring: bool = False

    @property
    def job(self) -> Job | None:
        """The job it is running, if any."""
        return next(iter(self.jobs.values()), None)


# Jobs and results cross the pipe as plain tuples pickled with the fastest protocol:
# a dataclass (and multiprocessing's own pickler) costs several times more per task.
_PROTOCOL = pickle.HIGHEST_PROTOCOL


def _fields(job: Job) -> tuple[Any, ...]:
    return (
        job.key,
        job.task_name,
        job.task_id,
        job.queue,
        job.message_id,
        job.body,
        job.headers,
        job.delivery_count,
        job.priority,
        job.time_limit,
        job.started,
    )


def _child_main(
    app: Polyq,
    conn: Connection,
    hostname: str,
    parent: int,
    max_tasks: int | None,
    max_memory_kib: int | None,
) -> None:
    # The parent handles shutdown signals; a child only stops when told or killed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    signals.worker_process_init.send(sender=None)
    done = 0
    try:
        while True:
            try:
                batch = pickle.loads(conn.recv_bytes())
            except (EOFError, OSError):
                return
            if batch is None:
                return
            for fields in batch:
                job = Job(*fields)
                result = run_job(app, job, hostname)
                done += 1
                retire = (max_tasks is not None and done >= max_tasks) or (
                    max_memory_kib is not None
                    and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > max_memory_kib
                )
                # One message per result (not per batch): a result is never lost with
                # the child, so a job that ran is never mistaken for one that did not.
                report = (
                    result.key,
                    result.action,
                    result.task_id,
                    result.state,
                    result.delay,
                    result.reason,
                    result.runtime,
                    retire,
                )
                conn.send_bytes(pickle.dumps(report, _PROTOCOL))
                if retire:
                    return  # the parent queues the rest of the batch again
    finally:
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)


def _spawned_child_main(
    app_path: str,
    settings: dict[str, Any],
    conn: Connection,
    hostname: str,
    parent: int,
    max_tasks: int | None,
    max_memory_kib: int | None,
) -> None:
    """A child started in a fresh interpreter: import the app by its ``-A`` path and
    apply the worker's explicit settings, then serve jobs like a forked child."""
    from polyq.loader import find_app

    app = find_app(app_path)
    for key, value in settings.items():
        app.conf[key] = value
    _child_main(app, conn, hostname, parent, max_tasks, max_memory_kib)


def _readable(conn: Connection) -> bool:
    # Connection.poll() builds and tears down a selector per call (~10 us); a poll
    # object is a plain allocation (and, unlike select(), takes any fd number).
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))


def _unwatch(selector: selectors.BaseSelector, fds: tuple[int, int]) -> None:
    for fd in fds:
        with contextlib.suppress(KeyError):
            selector.unregister(fd)


def _watch_parent(parent: int) -> None:
    # An orphan would go on running a task whose message will be delivered again.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


class PreforkPool(Pool):
    """Runs each task in one of N child processes (CPU-bound work; hard time
    limits and terminate, by killing and replacing the child).

    A job goes to an idle child. Only jobs of a task seen to run in well under
    :data:`BATCH_BUDGET` (and without a hard time limit) may also queue in a busy
    child, several per pipe message: that is what lets a no-op task run at
    thousands per second, and it never makes a slow task wait behind another.

    The first children are forked before the worker starts its threads. A child
    that replaces another (after a crash, a kill or recycling) is forked while
    those threads run, possibly in the middle of a database transaction: SQLite
    keeps per-process lock state a forked child would inherit and then wait on
    forever. So replacements start in a fresh interpreter (``spawn``) that imports
    the app by its ``-A`` path; without a path (an app run in-process), they fork.
    """

    name = "prefork"
    hard_time_limit = True
    soft_time_limit = True
    terminate = True
    recycles = True

    def __init__(
        self,
        app: Polyq,
        concurrency: int,
        hostname: str,
        on_done: OnDone,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        app_path: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(app, concurrency, hostname, on_done)
        self.max_tasks = max_tasks_per_child
        self.max_memory = max_memory_per_child
        self.app_path = app_path
        self.settings = settings or {}
        self._ctx = multiprocessing.get_context("fork")
        self._spawn_ctx = multiprocessing.get_context("spawn")
        self._started = False
        self._children: list[_Child] = []
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe()
        #: Moving average of each task's run time, which decides what may batch.
        self._runtime: dict[str, float] = {}

    def start(self) -> None:
        for _ in range(self.concurrency):
            self._children.append(self._spawn())
        self._started = True
        self._monitor = threading.Thread(target=self._watch, name="polyq-prefork", daemon=True)
        self._monitor.start()

    def _spawn(self) -> _Child:
        common = (self.hostname, os.getpid(), self.max_tasks, self.max_memory)
        name = f"ForkPoolWorker-{len(self._children) + 1}"
        if self._started and self.app_path:
            parent_conn, child_conn = self._spawn_ctx.Pipe(duplex=True)
            process: BaseProcess = self._spawn_ctx.Process(
                target=_spawned_child_main,
                args=(self.app_path, self.settings, child_conn, *common),
                name=name,
                daemon=True,
            )
        else:
            parent_conn, child_conn = self._ctx.Pipe(duplex=True)
            process = self._ctx.Process(
                target=_child_main, args=(self.app, child_conn, *common), name=name, daemon=True
            )
        process.start()
        child_conn.close()
        return _Child(process, parent_conn)

    def _expected(self, job: Job) -> float | None:
        """Seconds ``job`` is expected to run if it may share a child, else ``None``."""
        if job.time_limit:
            return None  # its deadline counts from when it is sent: it must start at once
        expected = self._runtime.get(job.task_name)
        if expected is None or expected > SHORT_TASK:
            return None
        return expected

    def _place(self, job: Job) -> _Child | None:
        expected = self._expected(job)
        busy = sum(1 for c in self._children if c.jobs or c.unsent)
        best: _Child | None = None
        for c in self._children:
            if c.retiring or (self.max_tasks is not None and c.assigned >= self.max_tasks):
                continue
            held = len(c.jobs) + len(c.unsent)
            if held == 0:
                if busy >= self.concurrency:
                    continue  # shrunk: a child beyond the concurrency stays idle
            elif (
                expected is None
                or c.queued is None
                or held >= BATCH_MAX
                or c.queued + expected > BATCH_BUDGET
            ):
                continue  # a busy child takes only tiny jobs, and only a few ms of them
            if best is None or held < len(best.jobs) + len(best.unsent):
                best = c
        return best

    def take(self, pending: collections.deque[Job]) -> list[Job]:
        taken: list[Job] = []
        with self.lock:
            while pending:
                job = pending[0]
                child = self._place(job)
                if child is None:
                    break  # no skipping ahead: the queue's order (priority) holds
                pending.popleft()
                expected = self._expected(job)
                if expected is None or child.queued is None:
                    child.queued = None
                else:
                    child.queued += expected
                child.unsent.append(job)
                child.assigned += 1
                self.running[job.key] = job
                taken.append(job)
        return taken

    def start_jobs(self, jobs: list[Job]) -> None:
        sends: list[tuple[_Child, list[Job]]] = []
        now = time.monotonic()
        limited = False
        with self.lock:
            for c in self._children:
                if c.unsent:
                    batch, c.unsent = c.unsent, []
                    for job in batch:
                        job.started = now
                        c.jobs[job.key] = job
                        limited = limited or bool(job.time_limit)
                    sends.append((c, batch))
        for c, batch in sends:
            try:
                c.conn.send_bytes(pickle.dumps([_fields(job) for job in batch], _PROTOCOL))
            except OSError:
                pass  # the child died; the monitor reports its jobs
        if limited:
            self._wake()  # the monitor must shorten its wait to this job's deadline

    def submit(self, job: Job) -> None:
        self.start_jobs(self.take(collections.deque([job])))

    def _wake(self) -> None:
        os.write(self._wake_w, b"x")

    def free_slots(self) -> int:
        # No liveness check here (it costs a waitpid per child): a dead child is
        # reaped by the monitor, and a job sent to it is reported as worker_lost.
        with self.lock:
            idle = sum(1 for c in self._children if not c.jobs and not c.unsent and not c.retiring)
            return max(0, min(idle, self.concurrency - len(self.running)))

    def _watch(self) -> None:
        # One selector for the pool's life, changed only when a child comes or goes:
        # building one per pass (as multiprocessing.connection.wait does) cost about
        # a tenth of the main process's time on a stream of tiny tasks.
        selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        watched: dict[_Child, tuple[int, int]] = {}  # child -> (sentinel, pipe fd)
        while True:
            with self.lock:
                children = list(self._children)
            if len(children) != len(watched) or any(c not in watched for c in children):
                # Every child's pipe is watched, busy or not, so a new job needs no wake-up.
                for c in [c for c in watched if c not in children]:
                    _unwatch(selector, watched.pop(c))
                for c in children:
                    if c not in watched:
                        watched[c] = (c.process.sentinel, c.conn.fileno())
                        for fd in watched[c]:
                            selector.register(fd, selectors.EVENT_READ)
            ready = {key.fd for key, _ in selector.select(self._next_deadline())}
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            results: list[Result] = []
            for c in children:
                if watched[c][1] in ready:
                    results.extend(self._read(c))
            if results:
                # All results read in this pass go to the worker together: one
                # hand-off (and one group of acks) for many tasks.
                self._finish_many(results)
                if self.running:
                    # Busy: let a few more results gather before the next pass, so
                    # tiny tasks are handled in groups, not with a wake-up each. An
                    # idle pool passes at once (no added latency for a lone task).
                    time.sleep(RESULT_GATHER)
            for c in children:
                if c.process.sentinel in ready:
                    _unwatch(selector, watched.pop(c))  # before _reap closes the pipe
                    self._reap(c)
            self._enforce_time_limits()
            if self._stopping and not any(c.process.is_alive() for c in self._children):
                selector.close()
                return

    def _next_deadline(self) -> float:
        now = time.monotonic()
        soonest = 1.0
        with self.lock:
            for c in self._children:
                job = c.job
                if job is not None and job.time_limit:
                    soonest = min(soonest, max(0.0, job.started + job.time_limit - now))
        return soonest

    def _read(self, c: _Child) -> list[Result]:
        """Every result the child has written so far."""
        results: list[Result] = []
        try:
            while True:
                *fields, retire = pickle.loads(c.conn.recv_bytes())
                results.append(Result(*fields))
                c.retiring = c.retiring or retire
                if not _readable(c.conn):
                    break
        except (EOFError, OSError):
            pass  # died; _reap reports what it held
        with self.lock:
            for result in results:
                job = c.jobs.pop(result.key, None)
                if job is not None:
                    average = self._runtime.get(job.task_name, result.runtime)
                    self._runtime[job.task_name] = 0.8 * average + 0.2 * result.runtime
            if not c.jobs:
                c.queued = 0.0
            elif c.queued is not None:
                c.queued = sum(self._runtime.get(j.task_name, 0.0) for j in c.jobs.values())
        return results

    def _reap(self, c: _Child) -> None:
        with self.lock:
            if c not in self._children:
                return
        # Results it wrote before it exited still count.
        if c.conn.poll():
            results = self._read(c)
            if results:
                self._finish_many(results)
        with self.lock:
            self._children.remove(c)
            held = list(c.jobs.values()) + c.unsent
            c.jobs, c.unsent = {}, []
        c.process.join(timeout=0)
        c.conn.close()
        if held and not c.retiring:
            # It runs its jobs in order and reports each: the first unreported one is
            # the one that was running when it died; the others never started.
            job, held = held[0], held[1:]
            action = c.killed_for or "worker_lost"
            code = c.process.exitcode
            reason = {
                "time_limit": f"hard time limit ({job.time_limit}s) exceeded",
                "terminated": "terminated by revoke",
            }.get(action, f"the process running the task died (exit code {code})")
            self._finish(
                Result(
                    job.key,
                    action,
                    job.task_id,
                    reason=reason,
                    runtime=time.monotonic() - job.started,
                )
            )
        if held:
            with self.lock:
                for job in held:
                    self.running.pop(job.key, None)
            if self.on_return is not None:
                self.on_return(held)
        if not self._stopping:
            with self.lock:
                replaced = len(self._children) < self.concurrency
                if replaced:
                    self._children.append(self._spawn())
            if replaced and self.on_capacity is not None:
                self.on_capacity()

    def _enforce_time_limits(self) -> None:
        now = time.monotonic()
        late: list[tuple[_Child, Job]] = []
        with self.lock:
            for c in self._children:
                job = c.job
                if (
                    job is not None
                    and job.time_limit
                    and now - job.started > job.time_limit
                    and c.killed_for is None
                ):
                    late.append((c, job))
        for c, job in late:
            logger.error(
                "Hard time limit (%ss) exceeded for %s[%s]: killing pid %s",
                job.time_limit,
                job.task_name,
                job.task_id,
                c.process.pid,
            )
            c.killed_for = "time_limit"
            _kill(c.process, signal.SIGKILL)

    def terminate_job(self, task_id: str, signum: int = signal.SIGTERM) -> bool:
        with self.lock:
            found = [c for c in self._children if c.job is not None and c.job.task_id == task_id]
        for c in found:
            c.killed_for = "terminated"
            # Children ignore SIGTERM (the parent owns shutdown); terminate means kill.
            _kill(c.process, signal.SIGKILL if signum == signal.SIGTERM else signum)
        return bool(found)

    def grow(self, n: int = 1) -> None:
        with self.lock:
            self.concurrency += n
            for _ in range(n):
                self._children.append(self._spawn())
        self._wake()
        if self.on_capacity is not None:
            self.on_capacity()

    def shrink(self, n: int = 1) -> None:
        with self.lock:
            n = min(n, self.concurrency - 1)
            self.concurrency -= n
            idle = [c for c in self._children if not c.jobs and not c.unsent and not c.retiring]
            for c in idle[:n]:
                c.retiring = True
                c.conn.send(None)

    def stop(self, wait: bool) -> None:
        self._stopping = True
        if wait:
            while True:
                with self.lock:
                    busy = any(c.jobs and c.process.is_alive() for c in self._children)
                if not busy:
                    break
                time.sleep(0.02)
            with self.lock:
                for c in self._children:
                    try:
                        c.conn.send(None)
                    except OSError:
                        pass
            deadline = time.monotonic() + 5
            for c in list(self._children):
                c.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for c in list(self._children):
            if c.process.is_alive():
                _kill(c.process, signal.SIGKILL)
                c.process.join(timeout=5)
        self._wake()


def _kill(process: BaseProcess, signum: int) -> None:
    if process.pid is not None:
        try:
            os.kill(process.pid, signum)
        except ProcessLookupError:
            pass


POOLS: dict[str, type[Pool]] = {p.name: p for p in (PreforkPool, ThreadPool, SoloPool, AsyncioPool)}
