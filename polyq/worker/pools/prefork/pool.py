"""The prefork pool: each task runs in one of N child processes (CPU-bound work;
hard time limits and terminate, by killing and replacing the child). The child's
loop is :mod:`.child`, the pipe messages :mod:`.pipe`, which child takes a job
:mod:`.batching`."""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import selectors
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from polyq.worker.pools.base import Job, OnDone, Pool, Result
from polyq.worker.pools.prefork.batching import Child, expected_runtime, place
from polyq.worker.pools.prefork.child import child_main, spawned_child_main
from polyq.worker.pools.prefork.pipe import encode_jobs, read_results

if TYPE_CHECKING:
    from multiprocessing.process import BaseProcess

    from polyq.app import Polyq

__all__ = ["RESULT_GATHER", "PreforkPool"]

logger = logging.getLogger("polyq.worker")

#: How long the pool lets results gather while children are busy.
RESULT_GATHER = 0.0005


def _unwatch(selector: selectors.BaseSelector, fds: tuple[int, int]) -> None:
    for fd in fds:
        with contextlib.suppress(KeyError):
            selector.unregister(fd)


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
        self._children: list[Child] = []
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

    def _spawn(self) -> Child:
        common = (self.hostname, os.getpid(), self.max_tasks, self.max_memory)
        name = f"ForkPoolWorker-{len(self._children) + 1}"
        if self._started and self.app_path:
            parent_conn, child_conn = self._spawn_ctx.Pipe(duplex=True)
            process: BaseProcess = self._spawn_ctx.Process(
                target=spawned_child_main,
                args=(self.app_path, self.settings, child_conn, *common),
                name=name,
                daemon=True,
            )
        else:
            parent_conn, child_conn = self._ctx.Pipe(duplex=True)
            process = self._ctx.Process(
                target=child_main, args=(self.app, child_conn, *common), name=name, daemon=True
            )
        process.start()
        child_conn.close()
        return Child(process, parent_conn)

    def _expected(self, job: Job) -> float | None:
        """Seconds ``job`` is expected to run if it may share a child, else ``None``."""
        return expected_runtime(job, self._runtime)

    def take(self, pending: collections.deque[Job]) -> list[Job]:
        taken: list[Job] = []
        with self.lock:
            while pending:
                job = pending[0]
                expected = self._expected(job)
                child = place(self._children, expected, self.concurrency, self.max_tasks)
                if child is None:
                    break  # no skipping ahead: the queue's order (priority) holds
                pending.popleft()
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
        sends: list[tuple[Child, list[Job]]] = []
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
                c.conn.send_bytes(encode_jobs(batch))
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
        watched: dict[Child, tuple[int, int]] = {}  # child -> (sentinel, pipe fd)
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

    def _read(self, c: Child) -> list[Result]:
        """Every result the child has written so far."""
        results, retiring = read_results(c.conn)
        c.retiring = c.retiring or retiring
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

    def _reap(self, c: Child) -> None:
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
        late: list[tuple[Child, Job]] = []
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
