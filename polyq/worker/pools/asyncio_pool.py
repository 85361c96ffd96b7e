"""The asyncio pool: ``async def`` tasks concurrently on one event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import signal
import threading
import time
from typing import Any

from polyq.worker.pools.base import Job, Pool, Result, run_job

__all__ = ["AsyncioPool"]


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
            # Registered under the lock it is looked up with: a revoke arriving as the
            # coroutine starts waits for the registration instead of missing it.
            with self.lock:
                future = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), loop)
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
