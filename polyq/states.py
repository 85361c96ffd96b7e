"""Task states, with Celery's names and meanings."""

from __future__ import annotations

__all__ = [
    "FAILURE",
    "PENDING",
    "READY_STATES",
    "RECEIVED",
    "RETRY",
    "REVOKED",
    "STARTED",
    "SUCCESS",
    "UNREADY_STATES",
]

#: Unknown to the backend: not yet run, or forgotten, or expired.
PENDING = "PENDING"
#: A worker has the message.
RECEIVED = "RECEIVED"
#: The task has begun (stored only with ``track_started``).
STARTED = "STARTED"
#: The task failed and will run again.
RETRY = "RETRY"
#: Finished and returned a value.
SUCCESS = "SUCCESS"
#: Raised an exception, hit its time limit, or exhausted its retries.
FAILURE = "FAILURE"
#: Revoked before or while it ran.
REVOKED = "REVOKED"

READY_STATES = frozenset({SUCCESS, FAILURE, REVOKED})
UNREADY_STATES = frozenset({PENDING, RECEIVED, STARTED, RETRY})
EXCEPTION_STATES = frozenset({RETRY, FAILURE, REVOKED})
