"""Signals with Celery's names, so Sentry- and OpenTelemetry-style integrations hook in.

Signals are module-level, as in Celery, because integrations connect to them at
import time before any app exists. A receiver that raises is logged, never
allowed to break the task or the worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = [
    "Signal",
    "after_setup_logger",
    "after_setup_task_logger",
    "after_task_publish",
    "before_task_publish",
    "setup_logging",
    "task_failure",
    "task_internal_error",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_retry",
    "task_revoked",
    "task_success",
    "task_unknown",
    "worker_init",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_ready",
    "worker_shutdown",
]

logger = logging.getLogger("polyq.signals")
Receiver = Callable[..., Any]


class Signal:
    """A named hook: ``@signal.connect`` a receiver, ``signal.send(sender, **kw)`` calls them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._receivers: list[tuple[Receiver, Any]] = []
        self._lock = threading.Lock()

    def connect(self, receiver: Receiver | None = None, *, sender: Any = None) -> Any:
        """Register ``receiver`` (usable as ``@connect`` or ``@connect(sender=...)``);
        with ``sender``, it is called only for that sender (a task name or object)."""

        def register(fn: Receiver) -> Receiver:
            with self._lock:
                self._receivers.append((fn, sender))
            return fn

        return register(receiver) if receiver is not None else register

    def disconnect(self, receiver: Receiver) -> None:
        """Remove every registration of ``receiver``."""
        with self._lock:
            self._receivers = [(fn, s) for fn, s in self._receivers if fn is not receiver]

    @property
    def receivers(self) -> list[Receiver]:
        """The connected receivers."""
        return [fn for fn, _ in self._receivers]

    def send(self, sender: Any = None, **kwargs: Any) -> list[tuple[Receiver, Any]]:
        """Call every receiver that matches ``sender``; return their results."""
        if not self._receivers:
            return []
        results = []
        for fn, wanted in list(self._receivers):
            if wanted is not None and wanted != sender and getattr(sender, "name", None) != wanted:
                continue
            try:
                results.append((fn, fn(sender=sender, signal=self, **kwargs)))
            except Exception as exc:
                logger.exception("signal %s receiver %r raised", self.name, fn)
                results.append((fn, exc))
        return results

    def __repr__(self) -> str:
        return f"<Signal {self.name}>"


before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
task_rejected = Signal("task_rejected")
task_unknown = Signal("task_unknown")
task_internal_error = Signal("task_internal_error")
worker_init = Signal("worker_init")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
after_setup_task_logger = Signal("after_setup_task_logger")
