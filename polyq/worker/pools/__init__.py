"""Execution pools: prefork (default), threads, solo and asyncio.

A pool runs :class:`Job` objects and reports their :class:`Result` objects to
the worker through ``on_done`` (a list at a time, from whatever thread it likes).
The worker hands it queued jobs through ``take``/``start_jobs`` and the pool takes
only what it can run. Each pool declares what it cannot do
(hard time limits, soft time limits, terminating a running task), and the
worker refuses a configuration that asks for it instead of ignoring it.

:mod:`.base` holds what they share; each pool has its module (the prefork pool a
package).
"""

from polyq.worker.pools.asyncio_pool import AsyncioPool
from polyq.worker.pools.base import SHORT_TASK, Job, OnDone, Pool, Result, run_job
from polyq.worker.pools.prefork import BATCH_BUDGET, BATCH_MAX, RESULT_GATHER, PreforkPool
from polyq.worker.pools.solo import SoloPool
from polyq.worker.pools.threads import ThreadPool

__all__ = [
    "BATCH_BUDGET",
    "BATCH_MAX",
    "POOLS",
    "RESULT_GATHER",
    "SHORT_TASK",
    "AsyncioPool",
    "Job",
    "OnDone",
    "Pool",
    "PreforkPool",
    "Result",
    "SoloPool",
    "ThreadPool",
    "run_job",
]

#: Pool name (``--pool``) -> class.
POOLS: dict[str, type[Pool]] = {p.name: p for p in (PreforkPool, ThreadPool, SoloPool, AsyncioPool)}
