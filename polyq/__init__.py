"""polyq: a distributed task queue with pluggable brokers and result stores.

Porting from Celery: replace ``celery`` by ``polyq`` in imports and ``Celery``
by ``Polyq``; the names below are Celery's.
"""

from polyq import states
from polyq.app import Polyq, current_app, shared_task
from polyq.backend import ResultBackend
from polyq.canvas import (
    Signature,
    chain,
    chord,
    chunks,
    group,
    maybe_signature,
    signature,
    xmap,
    xstarmap,
)
from polyq.result import AsyncResult, GroupResult
from polyq.task import Task
from polyq.transport import Transport

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "GroupResult",
    "Polyq",
    "ResultBackend",
    "Signature",
    "Task",
    "Transport",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "group",
    "maybe_signature",
    "shared_task",
    "signature",
    "states",
    "xmap",
    "xstarmap",
]
