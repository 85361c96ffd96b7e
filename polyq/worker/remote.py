"""Remote control of a worker: the control thread and the commands it answers.

The control thread (:class:`ControlListener`) listens on the control channel (see
:mod:`polyq.control` for the protocol; with signing on, it drops a command whose
signature does not hold, with one log line); without broadcast, or with
``worker_enable_remote_control`` off, it re-reads the durable revokes now and then
instead. ``revoke`` is handled by :func:`revoke` (no reply); every other command
goes to :func:`handle`. A command whose ``destination`` does not name this worker
is ignored. When it carries a ``reply_to`` channel the handler's return value is
broadcast there as ``{"ticket", "hostname", "reply"}``.

Trust: a command body is data from the broker. A command not listed in
``worker_remote_control_commands`` is refused, and every command checks its
arguments (:mod:`polyq.control_args`) before it changes anything: a bad one gets an
error reply naming the argument and its allowed range, one WARNING log line, and
leaves the worker as it was.

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
from polyq.control_args import (
    ALL_COMMANDS,
    ControlArgumentError,
    Limits,
    allowed_commands,
    check,
    check_envelope,
)
from polyq.events import message_fields
from polyq.exceptions import ConfigurationError, SecurityError
from polyq.security import KIND_CONTROL
from polyq.transport import Delivery

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
        enabled = worker.app.conf.worker_enable_remote_control
        if enabled:
            _warn_unknown_commands(worker)
        else:
            logger.info(
                "remote control is off (worker_enable_remote_control=False): not listening "
                "on the control channel; revokes are read from the result backend every 2 s"
            )
        if not worker.transport.capabilities.broadcast or not enabled:
            # No broadcast (or not listening): re-read the durable revokes now and then.
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


def _warn_unknown_commands(worker: Worker) -> None:
    try:
        allowed = allowed_commands(worker.app.conf.worker_remote_control_commands)
    except ConfigurationError as exc:
        logger.warning("%s", exc)
        return
    unknown = sorted(allowed - set(ALL_COMMANDS))
    if unknown:
        logger.warning(
            "worker_remote_control_commands names unknown commands %s (ignored); known: %s",
            ", ".join(unknown),
            ", ".join(ALL_COMMANDS),
        )


def _refusal(worker: Worker, command: str) -> str | None:
    """Why ``command`` is not accepted here (``None``: it is)."""
    try:
        allowed = allowed_commands(worker.app.conf.worker_remote_control_commands)
    except ConfigurationError as exc:
        return str(exc)
    if command in allowed:
        return None
    return (
        f"command {command!r} is turned off on {worker.hostname} "
        f"(not in worker_remote_control_commands)"
    )


def _limits(worker: Worker) -> Limits:
    return Limits.from_settings(worker.app.conf)


def _envelope(worker: Worker, command: str, arguments: Any) -> dict[str, Any] | None:
    """The checked ``destination``/``reply_to``/``ticket``; ``None`` (and a warning)
    when they are malformed: nobody can be told, and the command may not be for us."""
    try:
        return check_envelope(arguments)
    except ControlArgumentError as exc:
        logger.warning("refused control command %.40r: %s", command, exc)
        return None


def revoke(worker: Worker, arguments: dict[str, Any]) -> None:
    """Remember ``ids`` as revoked, kill them if running (``terminate``), and settle
    those queued here as REVOKED (the others are, when they arrive)."""
    envelope = _envelope(worker, "revoke", arguments)
    if envelope is None:
        return
    refusal = _refusal(worker, "revoke")
    try:
        if refusal is not None:
            raise ControlArgumentError(refusal)
        checked = check("revoke", arguments, _limits(worker))
    except ControlArgumentError as exc:
        logger.warning("refused control command 'revoke': %s", exc)
        _reply(worker, "revoke", envelope, {"error": str(exc)})
        return
    ids = checked["ids"]
    worker.revocations.add(ids)
    if checked["terminate"]:
        signum = signal.Signals[checked["signal"]]
        for task_id in ids:
            worker.pool.terminate_job(task_id, signum)
    worker.consumer.revoke_queued()


def handle(worker: Worker, command: str, arguments: dict[str, Any]) -> None:
    """Run ``command`` on ``worker`` and send the reply if one is wanted; unknown,
    turned-off commands and bad arguments are answered with an error (and logged)."""
    envelope = _envelope(worker, command, arguments)
    if envelope is None:
        return
    destination = envelope.get("destination")
    if destination and worker.hostname not in destination:
        return
    handler = COMMANDS.get(command) if isinstance(command, str) else None
    refusal = _refusal(worker, command) if handler is not None else None
    reply: Any
    if handler is None:
        logger.warning("unknown control command %.40r", command)
        reply = {"error": f"unknown command {command!r:.40}; known: {', '.join(sorted(COMMANDS))}"}
    elif refusal is not None:
        logger.warning("refused control command %r: %s", command, refusal)
        reply = {"error": refusal}
    else:
        try:
            reply = handler(worker, arguments)
        except ControlArgumentError as exc:
            logger.warning("refused control command %r: %s", command, exc)
            reply = {"error": str(exc)}
        except Exception as exc:
            logger.exception("control command %s failed", command)
            reply = {"error": f"{type(exc).__name__}: {exc}"}
    _reply(worker, command, envelope, reply)


def _reply(worker: Worker, command: str, envelope: dict[str, Any], reply: Any) -> None:
    reply_to = envelope.get("reply_to")
    if not reply_to:
        return
    body = json.dumps(
        {"ticket": envelope.get("ticket"), "hostname": worker.hostname, "reply": reply},
        default=str,
    ).encode()
    try:
        worker.transport.broadcast(reply_to, body)
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


def _task(worker: Worker, command: str, name: str) -> Any:
    task = worker.app.tasks.get(name)
    if task is None:
        raise ControlArgumentError(f"{command}: unknown task {name!r} on {worker.hostname}")
    return task


def rate_limit(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Set ``task_name``'s rate limit on this worker (``None``/0 removes it); a rate
    slower than one task per ``worker_remote_control_max_rate_interval`` is refused."""
    checked = check("rate_limit", arguments, _limits(worker))
    name, rate = checked["task_name"], checked["rate_limit"]
    task = _task(worker, "rate_limit", name)
    task.rate_limit = rate  # per-worker override
    worker.rate_limits.set(name, checked["per_second"])
    return {"ok": f"rate limit of {name} set to {rate or 'none'}"}


def time_limit(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Set ``task_name``'s soft and hard time limits (for tasks received from now on);
    each at least ``worker_remote_control_min_time_limit`` seconds, soft below hard."""
    checked = check("time_limit", arguments, _limits(worker))
    name, soft, hard = checked["task_name"], checked["soft"], checked["hard"]
    task = _task(worker, "time_limit", name)
    pool_cls = type(worker.pool)
    if hard and not pool_cls.hard_time_limit:
        return {"error": f"the {worker.pool_name} pool cannot enforce a hard time limit"}
    if soft and not pool_cls.soft_time_limit:
        return {"error": f"the {worker.pool_name} pool cannot enforce a soft time limit"}
    # Instance attributes shadow the class's: this worker only.
    task.time_limit = hard
    task.soft_time_limit = soft
    return {"ok": f"time limits of {name} set to soft={soft} hard={hard}"}


def shutdown(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Warm shutdown (after the reply is sent)."""
    check("shutdown", arguments, _limits(worker))
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
    """Add ``n`` pool slots, up to ``worker_remote_control_max_concurrency`` in all."""
    limits = _limits(worker)
    n = check("pool_grow", arguments, limits)["n"]
    if worker.pool_name == "solo":
        return {"error": "the solo pool runs one task at a time and cannot grow"}
    ceiling, now = limits.ceiling(), worker.pool.concurrency
    if now + n > ceiling:
        room = f"from 1 to {ceiling - now}" if ceiling > now else "none: it is at its ceiling"
        raise ControlArgumentError(
            f"pool_grow: n={n} would make the pool {now + n}, above {ceiling} "
            f"(worker_remote_control_max_concurrency); n allowed now: {room}"
        )
    worker.pool.grow(n)
    _resize(worker)
    return {"ok": f"pool now {worker.pool.concurrency}"}


def pool_shrink(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Remove ``n`` pool slots (never below one; running tasks finish)."""
    n = check("pool_shrink", arguments, _limits(worker))["n"]
    now = worker.pool.concurrency
    if n > now - 1:
        room = f"from 1 to {now - 1}" if now > 1 else "none: it has one slot"
        raise ControlArgumentError(
            f"pool_shrink: n={n} would leave the pool below one slot (it has {now}); "
            f"n allowed now: {room}"
        )
    worker.pool.shrink(n)
    _resize(worker)
    return {"ok": f"pool now {worker.pool.concurrency}"}


#: How long ``add_consumer`` waits for the broker to accept the queue before replying.
ADD_CONSUMER_WAIT = 0.8


def add_consumer(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Consume ``queue`` too: a valid name, not a broker's dead-letter, delay or
    internal queue. A queue the broker refuses is dropped again, and the other queues
    are still consumed (see :mod:`polyq.worker.queue_trials`)."""
    queue = check("add_consumer", arguments, _limits(worker))["queue"]
    if queue in worker.queues:
        return {"ok": f"already consuming {queue}"}
    trial = worker.consumer.trials.start(queue)
    worker.queues = [*worker.queues, queue]  # a new list: the consumer reads it each loop
    if not trial.done.wait(ADD_CONSUMER_WAIT):
        # The consumer has not received since (a long wait, or a full prefetch window).
        return {
            "ok": f"consuming from {queue} (not yet confirmed by the broker: if it refuses "
            "the queue, the worker drops it again and logs why; see inspect active_queues)"
        }
    if trial.error is not None:
        return {"error": f"add_consumer: not consuming {queue}: {trial.error}"}
    return {"ok": f"consuming from {queue}"}


def cancel_consumer(worker: Worker, arguments: dict[str, Any]) -> Any:
    """Stop consuming ``queue`` (not the last one: a worker always consumes something)."""
    queue = check("cancel_consumer", arguments, _limits(worker))["queue"]
    if queue not in worker.queues:
        return {"error": f"not consuming {queue!r}"}
    if len(worker.queues) == 1:
        return {"error": f"{queue} is the only queue; use shutdown to stop the worker"}
    worker.queues = [q for q in worker.queues if q != queue]
    worker.consumer.trials.forget(queue)
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
