"""Remote control of a worker: the control thread and the commands it answers.

The control thread (:class:`ControlListener`) listens on the control channel (see
:mod:`polyq.control` for the protocol; with signing on, it drops a command whose
signature does not hold, with one log line); without broadcast it re-reads the durable
revokes now and then instead. ``revoke`` is handled by :func:`revoke` (no reply);
every other command goes to :func:`handle`. A command whose ``destination`` does
not name this worker is ignored. When it carries a ``reply_to`` channel the
handler's return value is broadcast there as ``{"ticket", "hostname", "reply"}``.

Handlers run in the control thread; the worker's consumer reads ``worker.queues``
on every iteration and the rate limits on each message, so replacing the list or
a limit is enough to take effect.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from polyq.control import CONTROL_CHANNEL
from polyq.events import message_fields
from polyq.exceptions import SecurityError
from polyq.security import KIND_CONTROL
from polyq.transport import Delivery
from polyq.worker.ratelimit import parse_rate

if TYPE_CHECKING:
    from polyq.worker.pools import Job
    from polyq.worker.worker import Worker

__all__ = ["COMMANDS", "ControlListener", "handle", "revoke", "stats"]

logger = logging.getLogger("polyq.worker")

Handler = Callable[["Worker", dict[str, Any]], Any]


class ControlListener:
    """The worker's control thread: revokes and commands, until the worker stops."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def run(self) -> None:
        """Listen (again after a pause if the broker goes away) until stopped."""
        worker = self.worker
        if not worker.transport.capabilities.broadcast:
            # No broadcast: re-read the durable revokes now and then instead.
            while not worker.stopped.wait(2.0):
                worker.revocations.load(worker.app)
            return
        pause = 1.0
        while not worker.stopped.is_set():
            try:
                self._listen_once()
                pause = 1.0
            except Exception:
                # The broker went away: revokes and commands must still arrive after it
                # comes back, so listen again (and re-read durable revokes) after a pause.
                logger.warning(
                    "control channel lost; listening again in %.0fs", pause, exc_info=True
                )
                worker.stopped.wait(pause)
                pause = min(pause * 2, 30.0)

    def _listen_once(self) -> None:
        worker = self.worker
        with worker.transport.subscribe(CONTROL_CHANNEL) as subscription:
            worker.revocations.load(worker.app)  # anything revoked while we were not listening
            while not worker.stopped.is_set():
                body = subscription.get(1.0)
                if body is None:
                    continue
                security = worker.app.security
                if security is not None:
                    try:
                        body = security.verifier.verify_broadcast(KIND_CONTROL, body)
                    except SecurityError as exc:
                        # One line, no traceback: a forged command must cost nothing.
                        logger.warning("refused a control message: %s", exc)
                        continue
                try:
                    command = json.loads(body)
                    arguments = command.get("arguments") or {}
                    if command["command"] == "revoke":
                        revoke(worker, arguments)
                    else:
                        handle(worker, command["command"], arguments)
                except Exception:
                    logger.exception("bad control message %r", body[:200])


def revoke(worker: Worker, arguments: dict[str, Any]) -> None:
    """Remember ``ids`` as revoked, kill them if running (``terminate``), and settle
    those queued here as REVOKED (the others are, when they arrive)."""
    ids = list(arguments.get("ids") or [])
    worker.revocations.add(ids)
    if arguments.get("terminate"):
        signum = getattr(signal, str(arguments.get("signal", "SIGTERM")), signal.SIGTERM)
        for task_id in ids:
            worker.pool.terminate_job(task_id, signum)
    worker.consumer.revoke_queued()


def handle(worker: Worker, command: str, arguments: dict[str, Any]) -> None:
    """Run ``command`` on ``worker`` and send the reply if one is wanted; unknown
    commands are answered with an error (and logged)."""
    destination = arguments.get("destination")
    if destination and worker.hostname not in destination:
        return
    handler = COMMANDS.get(command)
    if handler is None:
        logger.warning("unknown control command %r", command)
        reply: Any = {"error": f"unknown command {command!r}; known: {', '.join(sorted(COMMANDS))}"}
    else:
        try:
            reply = handler(worker, arguments)
        except Exception as exc:
            logger.exception("control command %s failed", command)
            reply = {"error": f"{type(exc).__name__}: {exc}"}
    reply_to = arguments.get("reply_to")
    if reply_to:
        body = json.dumps(
            {"ticket": arguments.get("ticket"), "hostname": worker.hostname, "reply": reply},
            default=str,
        ).encode()
        try:
            worker.transport.broadcast(str(reply_to), body)
        except Exception:
            logger.warning("could not reply to %s", command, exc_info=True)


def _job_info(worker: Worker, job: Job, running: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "id": job.task_id,
        "name": job.task_name,
        "queue": job.queue,
        "priority": job.priority,
        "delivery_count": job.delivery_count,
        "hostname": worker.hostname,
    }
    if running and job.started:
        # job.started is monotonic; report wall-clock time.
        info["time_start"] = time.time() - (time.monotonic() - job.started)
    try:
        delivery = Delivery(job.queue, job.message_id, job.body, job.headers, job.delivery_count)
        fields = message_fields(delivery, worker.app.accept)
        info.update(args=fields.get("args"), kwargs=fields.get("kwargs"), eta=fields.get("eta"))
    except Exception:
        logger.debug("cannot describe %s", job.task_id, exc_info=True)
    return info


def ping(worker: Worker, arguments: dict[str, Any]) -> Any:
    """``{"ok": "pong"}``."""
    return {"ok": "pong"}


def active(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Jobs running in the pool now."""
    with worker.pool.lock:
        jobs = list(worker.pool.running.values())
    return [_job_info(worker, job, True) for job in jobs]


def reserved(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Jobs prefetched and waiting for a pool slot (or their rate limit)."""
    jobs = worker.backlog.snapshot()
    return [_job_info(worker, job, False) for job in jobs]


def registered(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Names of the tasks this worker runs (polyq's own tasks left out)."""
    return sorted(name for name in worker.app.tasks if not name.startswith("polyq."))


def revoked(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Revoked ids this worker knows."""
    return worker.revocations.ids()


def active_queues(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Queues consumed."""
    return [{"name": q} for q in worker.queues]


def stats(worker: Worker, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pool, counters, uptime, queues and broker (credentials redacted); also the
    fields of each ``worker-heartbeat`` event."""
    pool = worker.pool
    reserved_count = worker.backlog.reserved_count()
    info: dict[str, Any] = {
        "hostname": worker.hostname,
        "pid": os.getpid(),
        "pool": worker.pool_name,
        "concurrency": pool.concurrency,
        "active": len(pool.running),
        "reserved": reserved_count,
        "scheduled": worker.backlog.scheduled_count(),
        "processed": worker.processed,
        "prefetch_limit": worker.prefetch_limit,
        "queues": list(worker.queues),
        "started_at": worker.started_at,
        "uptime": round(time.time() - worker.started_at, 1),
        "broker": worker.transport.describe(),
        "events": worker.events.enabled,
    }
    try:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        info["rusage"] = {
            "utime": usage.ru_utime,
            "stime": usage.ru_stime,
            "maxrss": usage.ru_maxrss,
        }
    except (ImportError, OSError):
        pass
    return info


def rate_limit(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Set ``task_name``'s rate limit on this worker (``None``/0 removes it)."""
    name = str(arguments.get("task_name"))
    task = worker.app.tasks.get(name)
    if task is None:
        return {"error": f"unknown task {name!r} on {worker.hostname}"}
    rate = arguments.get("rate_limit")
    per_second = parse_rate(rate)  # raises ValueError with the accepted forms
    task.rate_limit = rate or None  # type: ignore[misc]  # per-worker override
    worker.rate_limits.set(name, per_second)
    return {"ok": f"rate limit of {name} set to {rate or 'none'}"}


def time_limit(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Set ``task_name``'s soft and hard time limits (for tasks received from now on)."""
    name = str(arguments.get("task_name"))
    task = worker.app.tasks.get(name)
    if task is None:
        return {"error": f"unknown task {name!r} on {worker.hostname}"}
    hard, soft = arguments.get("hard"), arguments.get("soft")
    pool_cls = type(worker.pool)
    if hard and not pool_cls.hard_time_limit:
        return {"error": f"the {worker.pool_name} pool cannot enforce a hard time limit"}
    if soft and not pool_cls.soft_time_limit:
        return {"error": f"the {worker.pool_name} pool cannot enforce a soft time limit"}
    # Instance attributes shadow the class's: this worker only.
    task.time_limit = float(hard) if hard else None  # type: ignore[misc]
    task.soft_time_limit = float(soft) if soft else None  # type: ignore[misc]
    return {"ok": f"time limits of {name} set to soft={soft} hard={hard}"}


def shutdown(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Warm shutdown (after the reply is sent)."""
    logger.warning("shutdown requested remotely")
    # Stop once this reply is out: stopping closes the broker connection.
    threading.Timer(0.2, worker.stop, kwargs={"warm": True}).start()
    return {"ok": "shutting down"}


def _resize(worker: Worker) -> None:
    multiplier = max(1, worker.prefetch_limit // max(1, worker.concurrency))
    worker.concurrency = worker.pool.concurrency
    worker.prefetch_limit = max(worker.concurrency, worker.concurrency * multiplier)
    worker.backlog.wake()


def pool_grow(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Add ``n`` pool slots."""
    if worker.pool_name == "solo":
        return {"error": "the solo pool runs one task at a time and cannot grow"}
    n = int(arguments.get("n") or 1)
    worker.pool.grow(n)
    _resize(worker)
    return {"ok": f"pool now {worker.pool.concurrency}"}


def pool_shrink(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Remove ``n`` pool slots (never below one; running tasks finish)."""
    n = int(arguments.get("n") or 1)
    worker.pool.shrink(n)
    _resize(worker)
    return {"ok": f"pool now {worker.pool.concurrency}"}


def add_consumer(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Consume ``queue`` too."""
    queue = str(arguments.get("queue") or "")
    if not queue:
        return {"error": "add_consumer needs a queue"}
    if queue in worker.queues:
        return {"ok": f"already consuming {queue}"}
    worker.queues = [*worker.queues, queue]  # a new list: the consumer reads it each loop
    return {"ok": f"consuming from {queue}"}


def cancel_consumer(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Stop consuming ``queue`` (not the last one: a worker always consumes something)."""
    queue = str(arguments.get("queue") or "")
    if queue not in worker.queues:
        return {"error": f"not consuming {queue!r}"}
    if len(worker.queues) == 1:
        return {"error": f"{queue} is the only queue; use shutdown to stop the worker"}
    worker.queues = [q for q in worker.queues if q != queue]
    return {"ok": f"no longer consuming from {queue}"}


#: Command name -> handler.
COMMANDS: dict[str, Handler] = {
    "ping": ping,
    "active": active,
    "reserved": reserved,
    "registered": registered,
    "revoked": revoked,
    "active_queues": active_queues,
    "stats": stats,
    "rate_limit": rate_limit,
    "time_limit": time_limit,
    "shutdown": shutdown,
    "pool_grow": pool_grow,
    "pool_shrink": pool_shrink,
    "add_consumer": add_consumer,
    "cancel_consumer": cancel_consumer,
}
