"""Tasks for the monitoring tests; broker and backend come from POLYQ_BROKER_URL /
POLYQ_RESULT_BACKEND."""

from __future__ import annotations

import time

from polyq import Polyq

app = Polyq("monapp", result_extended=True)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@app.task(bind=True)
def progress(self: object, steps: int) -> int:
    for i in range(steps):
        self.update_state(state="PROGRESS", meta={"done": i, "total": steps})  # type: ignore[attr-defined]
        time.sleep(0.2)
    return steps


@app.task
def boom(message: str) -> None:
    raise ValueError(message)
