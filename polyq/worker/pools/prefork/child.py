"""The prefork pool's child process: receives batches of jobs over its pipe, runs
them in order and reports each result; exits when told, when recycled
(``max_tasks_per_child``/``max_memory_per_child``) or when its parent is gone."""

from __future__ import annotations

import os
import resource
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from polyq import signals
from polyq.worker.pools.base import run_job
from polyq.worker.pools.prefork.pipe import decode_jobs, encode_result

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from polyq.app import Polyq

__all__ = ["child_main", "spawned_child_main"]


def child_main(
    app: Polyq,
    conn: Connection,
    hostname: str,
    parent: int,
    max_tasks: int | None,
    max_memory_kib: int | None,
) -> None:
    """A forked child's life: run the batches the parent sends until told to stop,
    recycled, or orphaned."""
    # The parent handles shutdown signals; a child only stops when told or killed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    signals.worker_process_init.send(sender=None)
    done = 0
    try:
        while True:
            try:
                batch = decode_jobs(conn.recv_bytes())
            except (EOFError, OSError):
                return
            if batch is None:
                return
            for job in batch:
                result = run_job(app, job, hostname)
                done += 1
                retire = (max_tasks is not None and done >= max_tasks) or (
                    max_memory_kib is not None
                    and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > max_memory_kib
                )
                # One message per result (not per batch): a result is never lost with
                # the child, so a job that ran is never mistaken for one that did not.
                conn.send_bytes(encode_result(result, retire))
                if retire:
                    return  # the parent queues the rest of the batch again
    finally:
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)


def spawned_child_main(
    app_path: str,
    settings: dict[str, Any],
    conn: Connection,
    hostname: str,
    parent: int,
    max_tasks: int | None,
    max_memory_kib: int | None,
) -> None:
    """A child started in a fresh interpreter: import the app by its ``-A`` path and
    apply the worker's explicit settings, then serve jobs like a forked child."""
    from polyq.loader import find_app

    app = find_app(app_path)
    for key, value in settings.items():
        app.conf[key] = value
    child_main(app, conn, hostname, parent, max_tasks, max_memory_kib)


def _watch_parent(parent: int) -> None:
    # An orphan would go on running a task whose message will be delivered again.
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)
