"""The prefork pool, in parts: :mod:`.pool` (the parent's side: children, placing
jobs, reading results, time limits), :mod:`.child` (the child's loop), :mod:`.pipe`
(the messages between them) and :mod:`.batching` (which child takes a job)."""

from polyq.worker.pools.prefork.batching import BATCH_BUDGET, BATCH_MAX, Child
from polyq.worker.pools.prefork.pool import RESULT_GATHER, PreforkPool

__all__ = ["BATCH_BUDGET", "BATCH_MAX", "RESULT_GATHER", "Child", "PreforkPool"]
