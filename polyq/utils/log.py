"""Logging: ``get_task_logger`` and the worker's log setup."""

from __future__ import annotations

import logging
import sys

from polyq import signals
from polyq.request import current_request
from polyq.url import redact

__all__ = ["get_logger", "get_task_logger", "setup_logging"]


def get_logger(name: str) -> logging.Logger:
    """A plain logger (Celery's ``get_logger``)."""
    return logging.getLogger(name)


def get_task_logger(name: str) -> logging.Logger:
    """A logger for task modules: its records carry the running task's name and id."""
    logger = logging.getLogger(f"polyq.task.{name}")
    if not any(isinstance(f, _TaskFilter) for f in logger.filters):
        logger.addFilter(_TaskFilter())
    return logger


class _TaskFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        req = current_request.get()
        record.task_name = (req.task if req else None) or "???"
        record.task_id = (req.id if req else None) or "???"
        return True


class _RedactingFormatter(logging.Formatter):
    # Broker URLs end up in exception messages; never let a password reach a log.
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _TaskFormatter(_RedactingFormatter):
    def __init__(self, fmt: str, task_fmt: str) -> None:
        super().__init__(fmt)
        self._task = _RedactingFormatter(task_fmt)

    def format(self, record: logging.LogRecord) -> str:
        if record.name.startswith("polyq.task.") and hasattr(record, "task_id"):
            return self._task.format(record)
        return super().format(record)


def setup_logging(loglevel: str | int, fmt: str, task_fmt: str, hijack_root: bool = True) -> None:
    """Configure logging for a worker, unless a ``setup_logging`` receiver did."""
    level = logging.getLevelName(loglevel.upper()) if isinstance(loglevel, str) else loglevel
    if signals.setup_logging.send(sender=None, loglevel=level, format=fmt):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_TaskFormatter(fmt, task_fmt))
    root = logging.getLogger()
    if hijack_root:
        for old in list(root.handlers):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    signals.after_setup_logger.send(sender=None, logger=root, loglevel=level, format=fmt)
