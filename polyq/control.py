"""Remote control: revokes (durable), commands to workers, and inspection with replies.

Revokes
    A revoke is written to the result backend with an expiry (so a task due
    tomorrow stays revoked across worker restarts: workers load every revoke
    when they start) and broadcast to live workers on :data:`CONTROL_CHANNEL`.

Commands and replies
    A command is one JSON broadcast ``{"command": name, "arguments": {...}}`` on
    the control channel. Three arguments are reserved: ``destination`` (a list
    of worker host names; absent means every worker), ``reply_to`` (a broadcast
    channel) and ``ticket`` (an id echoed in the replies). When a reply is
    wanted the caller subscribes to a fresh channel ``polyq.reply.<ticket>``
    *before* sending the command (broadcasts are fire and forget: a reply sent
    before the subscription would be lost), then collects
    ``{"ticket", "hostname", "reply"}`` broadcasts for ``timeout`` seconds, or
    until every destination answered. The workers' side is
    :mod:`polyq.worker.remote`.

    Replies take the shape Celery's have: a list of ``{hostname: reply}``.

Arguments
    Each command's arguments are checked here before anything is sent or stored
    (``app.control.pool_grow(-100)`` raises
    :class:`~polyq.control_args.ControlArgumentError` at once), and again by every
    worker, which trusts no command body (:mod:`polyq.control_args`).
Signing
    With ``app.setup_security()`` a command is sent in the signed broadcast form of
    :mod:`polyq.security.signing` and workers refuse any other (replies are not signed).

Brokers without broadcast
    Revokes still work (workers re-read them from the backend every 2 s);
    commands and inspection raise :class:`~polyq.exceptions.ConfigurationError`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from polyq.control_args import ALL_COMMANDS, MAX_REVOKE_IDS, Limits, check
from polyq.exceptions import ConfigurationError
from polyq.security import KIND_CONTROL

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["CONTROL_CHANNEL", "REPLY_PREFIX", "REVOKED_PREFIX", "Control", "Inspect"]

logger = logging.getLogger("polyq.control")

CONTROL_CHANNEL = "polyq.control"
REVOKED_PREFIX = "polyq-revoked-"
REPLY_PREFIX = "polyq.reply."
#: Revokes are kept at least this long (seconds), and never less than result_expires.
REVOKE_TTL = 7 * 86400.0

Replies = list[dict[str, Any]]


class Control:
    """``app.control``: commands for workers."""

    def __init__(self, app: Polyq) -> None:
        self.app = app

    # -- revokes -------------------------------------------------------------------

    def revoke(
        self,
        task_id: str | Sequence[str],
        terminate: bool = False,
        signal: str = "SIGTERM",
    ) -> None:
        """Revoke tasks: queued ones will not run; with ``terminate``, running ones
        are killed (prefork pool only). Durable: kept in the result backend."""
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        if not ids:
            return
        # Workers take at most MAX_REVOKE_IDS ids per broadcast: send more in several.
        chunks = [ids[i : i + MAX_REVOKE_IDS] for i in range(0, len(ids), MAX_REVOKE_IDS)]
        for chunk in chunks:  # every id checked before anything is stored or sent
            self.check("revoke", {"ids": chunk, "terminate": terminate, "signal": signal})
        ttl = max(REVOKE_TTL, self.app.result_ttl or 0.0)
        record = json.dumps({"terminate": terminate, "signal": signal, "at": time.time()}).encode()
        self.app.backend.set_many([(REVOKED_PREFIX + i, record) for i in ids], ttl=ttl)
        for chunk in chunks:
            self.broadcast("revoke", ids=chunk, terminate=terminate, signal=signal)

    def check(self, command: str, arguments: dict[str, Any]) -> None:
        """Raise :class:`~polyq.control_args.ControlArgumentError` when ``arguments`` are
        not valid for ``command`` under this app's ``worker_remote_control_*`` settings
        (commands polyq does not know are left to the workers to answer)."""
        if command in ALL_COMMANDS:
            check(command, arguments, Limits.from_settings(self.app.conf))

    def revoked(self) -> list[str]:
        """Ids of tasks revoked and not yet expired."""
        return [k[len(REVOKED_PREFIX) :] for k in self.app.backend.keys(REVOKED_PREFIX, 100000)]

    # -- commands ------------------------------------------------------------------

    def broadcast(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        destination: Sequence[str] | None = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
        **extra: Any,
    ) -> Any:
        """Send ``command`` to every listening worker (or those in ``destination``).

        Without ``reply``: returns ``True``, or ``False`` if the broker cannot
        broadcast. With ``reply``: waits up to ``timeout`` seconds (less when
        every destination, or ``limit`` workers, answered) and returns the
        replies as ``[{hostname: reply}, ...]``.
        """
        transport = self.app.transport
        args = {**(arguments or {}), **extra}
        self.check(command, args)
        if destination:
            args["destination"] = (
                [destination] if isinstance(destination, str) else list(destination)
            )
            if limit is None:
                limit = len(args["destination"])
        if not transport.capabilities.broadcast:
            if reply:
                raise ConfigurationError(
                    f"broker {transport.describe()} cannot broadcast, so workers cannot be "
                    f"asked to {command!r}; use a broker with broadcast (Redis, RabbitMQ, SQL, SQS)"
                )
            return False
        if not reply:
            self._send(command, args)
            return True
        ticket = uuid.uuid4().hex
        args["reply_to"] = REPLY_PREFIX + ticket
        args["ticket"] = ticket
        replies: Replies = []
        with transport.subscribe(args["reply_to"]) as subscription:
            self._send(command, args)
            deadline = time.monotonic() + timeout
            while limit is None or len(replies) < limit:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    break
                body = subscription.get(min(wait, 0.5))
                if body is None:
                    continue
                try:
                    answer = json.loads(body)
                except ValueError:
                    continue
                if isinstance(answer, dict) and answer.get("ticket") == ticket:
                    replies.append({str(answer.get("hostname")): answer.get("reply")})
        return sorted(replies, key=lambda r: next(iter(r)))

    def _send(self, command: str, arguments: dict[str, Any]) -> None:
        body = json.dumps({"command": command, "arguments": arguments}).encode()
        security = self.app.security
        if security is not None:
            # Workers with signing on refuse unsigned commands (docs/security.md).
            body = security.signer.sign_broadcast(KIND_CONTROL, body)
        self.app.transport.broadcast(CONTROL_CHANNEL, body)

    def _call(
        self,
        command: str,
        destination: Sequence[str] | None,
        reply: bool,
        timeout: float,
        **arguments: Any,
    ) -> Any:
        return self.broadcast(
            command, arguments, destination=destination, reply=reply, timeout=timeout
        )

    def ping(self, destination: Sequence[str] | None = None, timeout: float = 1.0) -> Replies:
        """Ask workers to answer ``pong``."""
        return self._call("ping", destination, True, timeout)  # type: ignore[no-any-return]

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
    ) -> Any:
        """Set a task's rate limit (per worker, e.g. ``"10/s"``; ``None``/0 removes it)."""
        return self._call(
            "rate_limit", destination, reply, timeout, task_name=task_name, rate_limit=rate_limit
        )

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
    ) -> Any:
        """Set a task's soft and hard time limits (seconds) on workers."""
        return self._call(
            "time_limit", destination, reply, timeout, task_name=task_name, soft=soft, hard=hard
        )

    def shutdown(
        self, destination: Sequence[str] | None = None, reply: bool = True, timeout: float = 1.0
    ) -> Any:
        """Warm-stop workers: they finish running tasks and give prefetched ones back."""
        return self._call("shutdown", destination, reply, timeout)

    def pool_grow(
        self,
        n: int = 1,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
    ) -> Any:
        """Add ``n`` pool slots (processes or threads)."""
        return self._call("pool_grow", destination, reply, timeout, n=n)

    def pool_shrink(
        self,
        n: int = 1,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
    ) -> Any:
        """Remove ``n`` pool slots (never below one)."""
        return self._call("pool_shrink", destination, reply, timeout, n=n)

    def add_consumer(
        self,
        queue: str,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
    ) -> Any:
        """Make workers consume ``queue`` too."""
        return self._call("add_consumer", destination, reply, timeout, queue=queue)

    def cancel_consumer(
        self,
        queue: str,
        destination: Sequence[str] | None = None,
        reply: bool = True,
        timeout: float = 1.0,
    ) -> Any:
        """Make workers stop consuming ``queue``."""
        return self._call("cancel_consumer", destination, reply, timeout, queue=queue)

    def inspect(self, destination: Sequence[str] | None = None, timeout: float = 1.0) -> Inspect:
        """Questions to workers: ``app.control.inspect().active()``."""
        return Inspect(self, destination, timeout)


class Inspect:
    """Read-only questions to workers; each returns ``[{hostname: answer}, ...]``."""

    def __init__(self, control: Control, destination: Sequence[str] | None, timeout: float) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout

    def _ask(self, command: str, **arguments: Any) -> Replies:
        return self.control.broadcast(  # type: ignore[no-any-return]
            command, arguments, destination=self.destination, reply=True, timeout=self.timeout
        )

    def ping(self) -> Replies:
        """``{"ok": "pong"}`` from each worker that answers."""
        return self._ask("ping")

    def active(self) -> Replies:
        """Tasks running now on each worker."""
        return self._ask("active")

    def reserved(self) -> Replies:
        """Tasks each worker prefetched and has not started yet (incl. rate-limited)."""
        return self._ask("reserved")

    def registered(self) -> Replies:
        """Task names each worker knows."""
        return self._ask("registered")

    def stats(self) -> Replies:
        """Pool, counters, uptime, queues and broker of each worker."""
        return self._ask("stats")

    def active_queues(self) -> Replies:
        """Queues each worker consumes."""
        return self._ask("active_queues")

    def revoked(self) -> Replies:
        """Revoked ids each worker knows."""
        return self._ask("revoked")

    def scheduled(
        self, queues: Sequence[str] | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Delayed messages waiting *in the broker* (workers hold none), soonest
        first: ``[{"queue", "id", "name", "eta", "priority"}]``. Not a worker reply."""
        app = self.control.app
        transport = app.transport
        names = list(queues or sorted(set(transport.queues()) | {app.conf.task_default_queue}))
        found: list[dict[str, Any]] = []
        for name in names:
            for message in transport.scheduled(name, limit):
                found.append(
                    {
                        "queue": message.queue,
                        "id": message.headers.get("id", message.message_id),
                        "name": message.headers.get("task"),
                        "eta": message.eta,
                        "priority": message.priority,
                    }
                )
        found.sort(key=lambda m: m["eta"])
        return found[:limit]
