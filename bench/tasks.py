"""Tasks for the benchmarks: a no-op, and an echo for round trips."""

from __future__ import annotations

from polyq import Polyq

app = Polyq("bench.tasks")


@app.task(ignore_result=True)
def noop(i: int) -> None:
    """Do nothing (throughput)."""


@app.task
def echo(i: int) -> int:
    """Return the argument (round trip)."""
    return i
