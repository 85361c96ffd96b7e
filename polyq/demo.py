"""The tasks ``polyq demo`` runs: a small mixed batch on the embedded default."""

from __future__ import annotations

import random
import time

from polyq.app import Polyq
from polyq.task import Task

app = Polyq("polyq.demo")


@app.task
def add(x: int, y: int) -> int:
    """Add two numbers after a short pause, like real work."""
    time.sleep(random.uniform(0.01, 0.05))
    return x + y


@app.task(bind=True, max_retries=3, default_retry_delay=0.3)
def flaky(self: Task, x: int) -> int:
    """Fail on the first try, then succeed: shows a retry."""
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError("the service blinked"))
    return x * 10


@app.task
def boom(message: str) -> None:
    """Always fail: shows how a failure is reported."""
    raise ValueError(message)
