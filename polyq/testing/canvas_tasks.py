"""Tasks the canvas conformance suite runs in real worker processes.

The app takes its broker, backend and options from the environment
(``POLYQ_BROKER_URL``, ``POLYQ_RESULT_BACKEND``, ``POLYQ_BROKER_TRANSPORT_OPTIONS``,
``POLYQ_TASK_DEFAULT_QUEUE``), like :mod:`polyq.testing.e2e_tasks`. Every task
takes an optional ``log`` path and appends one JSON line per execution to it, so
a test counts executions exactly (lines from several processes never interleave:
one short ``O_APPEND`` write each).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from polyq import signals
from polyq.app import Polyq
from polyq.task import Task

app = Polyq("polyq.testing.canvas_tasks")


def _log(log: str | None, task: Task, **extra: Any) -> None:
    if not log:
        return
    line = {
        "task": task.name,
        "id": task.request.id,
        "pid": os.getpid(),
        "delivery_count": task.request.delivery_count,
        "at": time.time(),
        **extra,
    }
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def read_log(log: str) -> list[dict[str, Any]]:
    """The executions recorded in ``log``."""
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f if line.strip()]


@app.task(bind=True, name="canvas.add")
def add(self: Task, x: int, y: int, log: str | None = None) -> int:
    """x + y."""
    _log(log, self)
    return x + y


@app.task(bind=True, name="canvas.mul")
def mul(self: Task, x: int, y: int, log: str | None = None) -> int:
    """x * y."""
    _log(log, self)
    return x * y


@app.task(bind=True, name="canvas.tsum")
def tsum(self: Task, values: list[int], log: str | None = None) -> int:
    """The sum of a chord's results."""
    _log(log, self, n=len(values))
    return sum(values)


@app.task(bind=True, name="canvas.collect")
def collect(self: Task, values: list[Any], log: str | None = None) -> list[Any]:
    """A chord's results as they arrived (checks their order)."""
    _log(log, self, n=len(values))
    return values


@app.task(bind=True, name="canvas.fail")
def fail(self: Task, *args: Any, log: str | None = None) -> None:
    """Always raise ``ValueError``."""
    _log(log, self)
    raise ValueError("canvas boom")


@app.task(bind=True, name="canvas.errback")
def errback(self: Task, task_id: str, log: str | None = None) -> str:
    """Record that an errback ran, for ``task_id``."""
    _log(log, self, failed=task_id)
    return task_id


@app.task(bind=True, name="canvas.barrier")
def barrier(self: Task, x: int, directory: str, n: int, log: str | None = None) -> int:
    """Arrive at a barrier of ``n`` tasks (files in ``directory``), wait for all, return ``x``.

    The header tasks of a chord thus finish together, on different workers.
    """
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{x}-{self.request.id}"), "w"):
        pass
    deadline = time.monotonic() + 30
    while len(os.listdir(directory)) < n and time.monotonic() < deadline:
        time.sleep(0.002)
    _log(log, self)
    return x


@app.task(bind=True, name="canvas.crash_once")
def crash_once(self: Task, x: int, log: str | None = None) -> int:
    """Return ``x``; on its first delivery the process dies right after the result
    is stored (before the chord counts it): see the ``task_success`` handler."""
    _log(log, self)
    return x


@signals.task_prerun.connect
def _count_execution(sender: Any = None, task_id: str | None = None, **kwargs: Any) -> None:
    # Every task body this worker starts, whatever the task (a helper task such as
    # a chord-unlock poller would show up here): ``POLYQ_CANVAS_EXECUTIONS`` names the file.
    path = os.environ.get("POLYQ_CANVAS_EXECUTIONS")
    if path:
        line = json.dumps(
            {"task": getattr(sender, "name", None), "id": task_id, "pid": os.getpid()}
        )
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


@signals.task_success.connect
def _die_after_store(sender: Any = None, result: Any = None, **kwargs: Any) -> None:
    # ``task_success`` is sent after the result is stored and before the canvas
    # hooks: dying here is a worker lost between storing and counting/publishing.
    if getattr(sender, "name", None) == "canvas.crash_once" and sender.request.delivery_count == 1:
        os._exit(17)
