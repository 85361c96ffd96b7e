"""Tasks the end-to-end suite runs in real worker processes.

The app takes its broker, backend and options from the environment
(``POLYQ_BROKER_URL``, ``POLYQ_RESULT_BACKEND``, ``POLYQ_BROKER_TRANSPORT_OPTIONS``,
``POLYQ_TASK_DEFAULT_QUEUE``), so the suite points the same module at any plugin.
Executions are recorded as JSON lines appended to a file the test names.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from polyq.app import Polyq
from polyq.exceptions import SoftTimeLimitExceeded
from polyq.task import Task

app = Polyq("polyq.testing.e2e_tasks")


def _record(path: str, task: Task, start: float, **extra: Any) -> None:
    line = {
        "id": task.request.id,
        "pid": os.getpid(),
        "start": start,
        "end": time.time(),
        "delivery_count": task.request.delivery_count,
        "retries": task.request.retries,
        **extra,
    }
    # One short O_APPEND write per line: lines from several processes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def _mark_started(path: str, task: Task) -> None:
    fd = os.open(path + ".started", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{task.request.id} {os.getpid()}\n".encode())
    finally:
        os.close(fd)


def started(path: str, task_id: str) -> bool:
    """Whether the task ``task_id`` has started (at least once) recording into ``path``."""
    try:
        with open(path + ".started") as f:
            return any(line.split()[0] == task_id for line in f if line.strip())
    except FileNotFoundError:
        return False


def read_records(path: str) -> list[dict[str, Any]]:
    """The executions recorded in ``path``."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


@app.task
def add(x: int, y: int) -> int:
    """Add."""
    return x + y


@app.task(bind=True)
def record(self: Task, path: str, seconds: float = 0.0, value: Any = None) -> Any:
    """Sleep ``seconds`` and record the execution in ``path`` (``path.started`` gets a
    line as soon as it starts, so a test can act while it runs)."""
    start = time.time()
    _mark_started(path, self)
    if seconds:
        time.sleep(seconds)
    _record(path, self, start)
    return value


@app.task(bind=True, max_retries=2, default_retry_delay=0.2)
def retry_twice(self: Task, path: str) -> int:
    """Fail twice, then succeed; records every attempt."""
    _record(path, self, time.time())
    if self.request.retries < 2:
        raise self.retry(exc=ConnectionError(f"attempt {self.request.retries}"))
    return self.request.retries


@app.task(bind=True, max_retries=2)
def retry_then_fail(self: Task) -> None:
    """Retry at once (``countdown=0``) until the retries run out, then fail."""
    raise self.retry(exc=RuntimeError(f"attempt {self.request.retries}"), countdown=0)


@app.task(bind=True, max_retries=2)
def retry_late_then_fail(self: Task, pause: float) -> None:
    """:func:`retry_then_fail`, but ``pause`` seconds pass between sending the retry
    and storing ``RETRY`` (a child descheduled at that moment): the next attempts
    run, and the last stores ``FAILURE``, before this run's ``RETRY`` is written."""
    retry = self.retry(
        exc=RuntimeError(f"attempt {self.request.retries}"), countdown=0, throw=False
    )
    time.sleep(pause)
    raise retry


@app.task(autoretry_for=(KeyError,), max_retries=1, retry_backoff=0.1, retry_jitter=False)
def always_fails() -> None:
    """Raise a built-in exception (retried once automatically, then failed)."""
    raise KeyError("missing")


@app.task(bind=True, soft_time_limit=0.5)
def soft_limited(self: Task) -> str:
    """Run past its soft limit and report that it was told."""
    try:
        time.sleep(5)
    except SoftTimeLimitExceeded:
        return "soft limit caught"
    return "not interrupted"


@app.task(time_limit=0.7)
def hard_limited() -> str:
    """Run past its hard limit: the worker kills the process."""
    time.sleep(30)
    return "not killed"


@app.task(bind=True)
def progress(self: Task, steps: int) -> int:
    """Report progress with update_state."""
    for i in range(steps):
        self.update_state(state="PROGRESS", meta={"done": i + 1, "total": steps})
    return steps


@app.task(acks_late=False, bind=True)
def at_most_once(self: Task, path: str, seconds: float) -> None:
    """Acked before it runs."""
    start = time.time()
    time.sleep(seconds)
    _record(path, self, start)
