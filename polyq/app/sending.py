"""Sending glue of the app: routing (``task_routes``), times (``eta``/``expires``),
``link`` options as data, and publishing with the retry policy."""

from __future__ import annotations

import datetime
import fnmatch
import inspect
import logging
import time
from collections.abc import Sequence
from typing import Any

from polyq.config import Settings
from polyq.exceptions import BrokerError, BrokerRefused, ConfigurationError, MessageTooLarge
from polyq.queues import check_queue_name
from polyq.task import Task
from polyq.transport import OutgoingMessage, Transport
from polyq.url import redact

__all__ = ["jsonable_options", "publish_with_retry", "route", "to_timestamp"]

logger = logging.getLogger("polyq.app")


def publish_with_retry(
    transport: Transport,
    conf: Settings,
    messages: Sequence[OutgoingMessage],
    *,
    connection: Any = None,
    retry: bool | None = None,
    retry_policy: dict[str, Any] | None = None,
) -> None:
    """Publish encoded messages, retrying connection errors under
    ``task_publish_retry_policy`` before raising.

    A :class:`BrokerRefused` (wrong credentials, unknown vhost or database) and a
    :class:`MessageTooLarge` are raised at once: no retry changes them. Retries stop
    after the policy's ``max_retries``, or once the policy's ``timeout`` seconds
    (``broker_connection_timeout`` when the policy has none; ``None``: no limit)
    have passed since the first attempt, so a producer learns within seconds that
    the broker is away."""
    for message in messages:
        # Before the broker sees it: a bad name fails here at once, never after a hang.
        check_queue_name(message.queue)
    kwargs: dict[str, Any] = {}
    if connection is not None:
        if not transport.capabilities.transactional_enqueue:
            raise ConfigurationError(
                f"connection= (publish inside your database transaction) needs a SQL broker "
                f"on the same database; the broker {transport.describe()} cannot join a "
                "transaction. Remove connection= or use a postgresql://, mysql:// or "
                "sqlite:// broker."
            )
        kwargs["connection"] = connection
        retry = False  # the caller's transaction decides; a retry could duplicate it
    started = time.monotonic()
    try:
        transport.publish(messages, **kwargs)
    except BrokerError as exc:
        _publish_again(transport, conf, messages, kwargs, exc, retry, retry_policy, started)


def _publish_again(
    transport: Transport,
    conf: Settings,
    messages: Sequence[OutgoingMessage],
    kwargs: dict[str, Any],
    exc: BrokerError,
    retry: bool | None,
    retry_policy: dict[str, Any] | None,
    started: float,
) -> None:
    # publish_with_retry after a failed first attempt: the policy is read only now,
    # so a publish that succeeds at once pays nothing for it.
    if retry is None:
        retry = conf.task_publish_retry
    policy = {**conf.task_publish_retry_policy, **(retry_policy or {})}
    attempts = int(policy.get("max_retries", 3)) if retry else 0
    pause = float(policy.get("interval_start", 0.0))
    limit = policy.get("timeout", conf.broker_connection_timeout)
    deadline = None if limit is None else started + float(limit)
    attempt = 0
    while True:
        # A message the broker refuses for its size never fits, and a refusal of
        # our credentials or vhost is final: no retry.
        if (
            attempt >= attempts
            or isinstance(exc, MessageTooLarge | BrokerRefused)
            or (deadline is not None and time.monotonic() + pause >= deadline)
        ):
            raise exc
        logger.warning(
            "publish to %s failed (%s); retry %d/%d in %.1fs",
            redact(transport.describe()),
            redact(str(exc)),
            attempt + 1,
            attempts,
            pause,
        )
        time.sleep(pause)
        pause = min(
            pause + float(policy.get("interval_step", 0.2)),
            float(policy.get("interval_max", 1.0)),
        )
        attempt += 1
        try:
            transport.publish(messages, **kwargs)
            return
        except BrokerError as again:
            exc = again


def route(conf: Settings, name: str, args: Any, kwargs: Any, task: Task | None) -> dict[str, Any]:
    """Where ``task_routes`` sends a call of ``name``: ``{"queue": ..., ...}`` or ``{}``."""
    routes = conf.task_routes
    if not routes:
        return {}
    for router in routes if isinstance(routes, list | tuple) else [routes]:
        found: Any = None
        if callable(router):
            params = inspect.signature(router).parameters
            found = (
                router(name, args, kwargs, {}, task=task)
                if "task" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
                else router(name, args, kwargs, {})
            )
        elif isinstance(router, dict):
            for pattern, value in router.items():
                if pattern == name or fnmatch.fnmatchcase(name, pattern):
                    found = value
                    break
        if found:
            return {"queue": found} if isinstance(found, str) else dict(found)
    return {}


def to_timestamp(value: Any, relative: bool, enable_utc: bool, tz: datetime.tzinfo) -> float | None:
    """A POSIX time from a datetime (naive ones in UTC or ``tz``), a timedelta from
    now, or seconds (from now when ``relative``)."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC if enable_utc else tz)
        return float(value.timestamp())
    if isinstance(value, datetime.timedelta):
        return time.time() + value.total_seconds()
    if isinstance(value, int | float):
        return time.time() + float(value) if relative else float(value)
    raise TypeError(f"expected a datetime or a number of seconds, not {value!r}")


def as_list(value: Any) -> list[Any]:
    """``value`` as a list (a single item becomes a list of one)."""
    return list(value) if isinstance(value, list | tuple) else [value]


def jsonable_options(options: dict[str, Any]) -> dict[str, Any]:
    """The canvas options of a message as plain data."""
    # Signatures are dicts already; plain tasks given as link= become signatures.
    out: dict[str, Any] = {}
    for key, value in options.items():
        if key in ("link", "link_error"):
            out[key] = [dict(_to_signature(v)) for v in value]
        else:
            out[key] = value
    return out


def _to_signature(value: Any) -> Any:
    if isinstance(value, Task):
        return value.s()
    if isinstance(value, dict):
        return value  # a Signature is a dict too
    raise TypeError(f"link/link_error take signatures or tasks, not {value!r}")
