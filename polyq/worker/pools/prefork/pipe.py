"""What crosses the pipe between the prefork pool and a child: a batch of jobs one
way, one result at a time the other, as plain tuples pickled with the fastest
protocol (a dataclass, or multiprocessing's own pickler, costs several times more
per task)."""

from __future__ import annotations

import pickle
import select
from typing import TYPE_CHECKING, Any

from polyq.worker.pools.base import Job, Result

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

__all__ = ["decode_jobs", "encode_jobs", "encode_result", "read_results", "readable"]

PROTOCOL = pickle.HIGHEST_PROTOCOL


def encode_jobs(batch: list[Job]) -> bytes:
    """One pipe message carrying ``batch`` (``None`` is sent by itself to stop a child)."""
    return pickle.dumps([_fields(job) for job in batch], PROTOCOL)


def decode_jobs(data: bytes) -> list[Job] | None:
    """The jobs of one pipe message, or ``None``: the parent tells the child to stop."""
    batch = pickle.loads(data)
    if batch is None:
        return None
    return [Job(*fields) for fields in batch]


def encode_result(result: Result, retire: bool) -> bytes:
    """One result, and whether the child will exit after it (it is retiring)."""
    return pickle.dumps(
        (
            result.key,
            result.action,
            result.task_id,
            result.state,
            result.delay,
            result.reason,
            result.runtime,
            retire,
        ),
        PROTOCOL,
    )


def read_results(conn: Connection) -> tuple[list[Result], bool]:
    """Every result the child has written so far (call it when the pipe is readable),
    and whether the child said it is retiring. A child that died mid-way yields what
    it wrote before (the pool's reaper reports the rest)."""
    results: list[Result] = []
    retiring = False
    try:
        while True:
            *fields, retire = pickle.loads(conn.recv_bytes())
            results.append(Result(*fields))
            retiring = retiring or retire
            if not readable(conn):
                break
    except (EOFError, OSError):
        pass  # died; the reaper reports what it held
    return results, retiring


def _fields(job: Job) -> tuple[Any, ...]:
    return (
        job.key,
        job.task_name,
        job.task_id,
        job.queue,
        job.message_id,
        job.body,
        job.headers,
        job.delivery_count,
        job.priority,
        job.time_limit,
        job.started,
    )


def readable(conn: Connection) -> bool:
    """Whether a message waits on ``conn`` (without blocking)."""
    # Connection.poll() builds and tears down a selector per call (~10 us); a poll
    # object is a plain allocation (and, unlike select(), takes any fd number).
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN)
    return bool(poller.poll(0))
