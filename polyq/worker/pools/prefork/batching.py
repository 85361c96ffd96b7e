"""Which child of the prefork pool takes a job: an idle one, or, for a task seen to
run in well under :data:`BATCH_BUDGET`, a busy one too (several jobs per pipe
message). A longer task, or one never seen yet, goes only to an idle child."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from polyq.worker.pools.base import SHORT_TASK, Job

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

__all__ = ["BATCH_BUDGET", "BATCH_MAX", "Child", "expected_runtime", "place"]

BATCH_BUDGET = 0.002
#: The most jobs one child holds at a time.
BATCH_MAX = 32


@dataclasses.dataclass(eq=False)
class Child:
    """One child process of the prefork pool, and the jobs it holds."""

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


def expected_runtime(job: Job, runtimes: dict[str, float]) -> float | None:
    """Seconds ``job`` is expected to run if it may share a child, else ``None``
    (``runtimes``: the moving average of each task's run time)."""
    if job.time_limit:
        return None  # its deadline counts from when it is sent: it must start at once
    expected = runtimes.get(job.task_name)
    if expected is None or expected > SHORT_TASK:
        return None
    return expected


def place(
    children: list[Child],
    expected: float | None,
    concurrency: int,
    max_tasks: int | None,
) -> Child | None:
    """The child that should take a job expected to run ``expected`` seconds (see
    :func:`expected_runtime`), or ``None`` if none may take it now."""
    busy = sum(1 for c in children if c.jobs or c.unsent)
    best: Child | None = None
    for c in children:
        if c.retiring or (max_tasks is not None and c.assigned >= max_tasks):
            continue
        held = len(c.jobs) + len(c.unsent)
        if held == 0:
            if busy >= concurrency:
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
