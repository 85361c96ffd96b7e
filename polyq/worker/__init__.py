"""The worker: consumes messages, runs them in a pool, acknowledges them.

Start reading at :mod:`polyq.worker.worker` (the :class:`Worker` and the parts it
is made of); :mod:`polyq.worker.pools` runs the tasks.
"""

from polyq.worker.worker import Worker, expand_hostname

__all__ = ["Worker", "expand_hostname"]
