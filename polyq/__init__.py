"""polyq: a distributed task queue with pluggable brokers and result stores.

Porting from Celery: replace ``celery`` by ``polyq`` in imports and ``Celery``
by ``Polyq``; the names below are Celery's.

The names are imported on first use (module ``__getattr__``), so importing a
light module such as ``polyq.transport`` does not load the app, the canvas and
what they stand on.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Where each public name lives: ``name -> module`` (``states`` is a module itself).
_WHERE = {
    "AsyncResult": "polyq.result",
    "GroupResult": "polyq.result",
    "Polyq": "polyq.app",
    "ResultBackend": "polyq.backend",
    "Signature": "polyq.canvas",
    "Task": "polyq.task",
    "Transport": "polyq.transport",
    "chain": "polyq.canvas",
    "chord": "polyq.canvas",
    "chunks": "polyq.canvas",
    "current_app": "polyq.app",
    "group": "polyq.canvas",
    "maybe_signature": "polyq.canvas",
    "shared_task": "polyq.app",
    "signature": "polyq.canvas",
    "states": "polyq.states",
    "xmap": "polyq.canvas",
    "xstarmap": "polyq.canvas",
}

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


#: Modules whose objects fall back to the current app when given none: the app
#: module comes with them, so ``polyq.AsyncResult(id)`` finds (or makes) the default
#: app as it always did (``polyq.current`` cannot import the app itself).
_USE_CURRENT_APP = frozenset({"polyq.result", "polyq.canvas"})


def __getattr__(name: str) -> Any:
    """Import the module holding ``name`` on first use and cache the value here."""
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'polyq' has no attribute {name!r}")
    if where in _USE_CURRENT_APP:
        importlib.import_module("polyq.app")
    module = importlib.import_module(where)
    value = module if name == "states" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
