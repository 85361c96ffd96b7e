"""The threads pool: tasks in threads of the worker process (I/O-bound work)."""

from __future__ import annotations

import concurrent.futures

from polyq.worker.pools.base import Job, Pool, run_job

__all__ = ["ThreadPool"]


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
