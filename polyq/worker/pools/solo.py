"""The solo pool: one task at a time, in the thread that runs the worker."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING

from polyq.worker.pools.base import Job, OnDone, Pool, run_job

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["SoloPool"]


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
