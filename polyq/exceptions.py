"""Exceptions, with Celery's names where Celery has the same concept."""

from __future__ import annotations

from typing import Any

__all__ = [
    "BrokerError",
    "BrokerRefused",
    "ChordError",
    "ConfigurationError",
    "ContentDisallowed",
    "DecodeError",
    "Ignore",
    "ImproperlyConfigured",
    "InvalidQueueName",
    "InvalidWorkflow",
    "MaxRetriesExceededError",
    "MessageTooLarge",
    "PolyqError",
    "Reject",
    "Retry",
    "RevokedError",
    "SecurityError",
    "SoftTimeLimitExceeded",
    "TaskError",
    "TimeLimitExceeded",
    "TimeoutError",
    "UnknownScheme",
    "WorkerLostError",
]


class PolyqError(Exception):
    """Base class of every polyq error."""


class ConfigurationError(PolyqError):
    """A setting, URL or option is wrong; the message says which and how to fix it."""


ImproperlyConfigured = ConfigurationError


class InvalidQueueName(ConfigurationError, ValueError):
    """A queue name the broker would refuse, or would fold into another queue's name
    (control characters, characters outside the broker's charset, names equal under
    the database's collation); the message names the queue, the reason and the fix.
    Raised before anything is sent. A :class:`ValueError` too."""


class UnknownScheme(ConfigurationError):
    """No installed plugin serves a URL's scheme, or its client library is missing."""


class BrokerError(PolyqError):
    """The broker could not be reached or refused an operation."""


class BrokerRefused(BrokerError):
    """The broker answered and refused us for good: wrong credentials, access denied,
    an unknown virtual host or database. Trying again cannot help, so the publish
    retry policy does not retry it and a worker stops at once; fix the URL or the
    broker's users and permissions."""


class MessageTooLarge(BrokerError):
    """A message exceeds the broker's maximum size; nothing was sent."""


class DecodeError(PolyqError):
    """A message could not be decoded (not an envelope polyq understands)."""


class ContentDisallowed(DecodeError):
    """A message's content type is not in ``accept_content``; it was not deserialized."""


class SecurityError(DecodeError):
    """A signed message, command or event failed verification (unsigned, altered,
    signed by an untrusted or expired certificate, or too old); it was not acted on.
    Celery's name for the same error."""


class TimeoutError(PolyqError):
    """Waiting for a result took longer than the timeout."""


class TaskError(PolyqError):
    """A task failed with an exception type that is not re-raised by ``get()``."""

    def __init__(self, exc_type: str, message: str) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.exc_message = message


class ChordError(PolyqError):
    """A chord could not run its callback (a header task failed)."""


class InvalidWorkflow(PolyqError, ValueError):
    """A workflow field carried in a task message (``chord``, ``chain``, ``link``,
    ``once``...) or in a chord's stored record has the wrong type or is out of range;
    the message names the field. The task is failed with it once and its message
    dead-lettered: its body does not run. A :class:`ValueError` too."""


class RevokedError(PolyqError):
    """The task was revoked."""


class WorkerLostError(PolyqError):
    """The process running the task died."""


class Retry(PolyqError):
    """Raised by ``Task.retry()``: the task will run again."""

    def __init__(
        self, message: str | None = None, exc: BaseException | None = None, when: Any = None
    ) -> None:
        self.exc = exc
        self.when = when
        super().__init__(message or (f"Retry in {when}s: {exc!r}" if when is not None else "Retry"))


class MaxRetriesExceededError(PolyqError):
    """``retry()`` was called after ``max_retries`` retries."""


class Reject(PolyqError):
    """Raised by a task to reject its message: requeued when ``requeue``, else dead-lettered."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class Ignore(PolyqError):
    """Raised by a task to ack its message without storing any state."""


class SoftTimeLimitExceeded(PolyqError):
    """Raised inside a task when its soft time limit passes."""


class TimeLimitExceeded(PolyqError):
    """The task hit its hard time limit and its process was killed."""
