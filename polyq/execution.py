"""Running one task call: hooks, signals, retries, states and the ack decision.

The same path serves every worker pool and ``Task.apply()`` (eager mode), so a
task behaves the same in tests as in production. It returns an
:class:`Outcome` telling the worker what to do with the message; storing the
result happens here, before the worker acks (at-least-once: a crash between the
two runs the task again rather than losing its result).
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import os
import signal
import threading
import time
import traceback as tb
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from polyq import signals, states
from polyq.canvas.fields import check_options
from polyq.canvas.runtime import claim_once, on_failure, on_invalid_fields, on_success
from polyq.exceptions import (
    Ignore,
    InvalidWorkflow,
    MaxRetriesExceededError,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
)
from polyq.message import TaskMessage, new_id
from polyq.request import Context, current_request
from polyq.result import AsyncResult, EagerResult, in_task, store_state
from polyq.url import redact

if TYPE_CHECKING:
    from polyq.app import Polyq
    from polyq.task import Task

__all__ = ["EagerResult", "Outcome", "apply_eagerly", "execute", "store_state"]

logger = logging.getLogger("polyq.worker")


@dataclasses.dataclass
class Outcome:
    """What became of one call, and what the worker must do with its message."""

    action: Literal["ack", "requeue", "dead_letter"]
    task_id: str
    state: str | None = None
    #: ``requeue``: deliver again after this many seconds.
    delay: float = 0.0
    #: ``dead_letter``: why.
    reason: str = ""
    runtime: float = 0.0
    value: Any = None
    exc: BaseException | None = None
    traceback: str | None = None


class _SoftTimeLimit:
    """Raise ``SoftTimeLimitExceeded`` in the task after ``seconds`` (main thread only)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.armed = bool(seconds) and threading.current_thread() is threading.main_thread()

    def __enter__(self) -> None:
        if self.armed:
            signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, float(self.seconds or 0))

    def __exit__(self, *exc: object) -> None:
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def _fire(self, signum: int, frame: Any) -> None:
        raise SoftTimeLimitExceeded(f"soft time limit ({self.seconds}s) exceeded")


@contextmanager
def _running(ctx: Context) -> Iterator[None]:
    req_token = current_request.set(ctx)
    task_token = in_task.set(True)
    try:
        yield
    finally:
        in_task.reset(task_token)
        current_request.reset(req_token)


def _call(task: Task, args: list[Any], kwargs: dict[str, Any]) -> Any:
    value = task.run(*args, **kwargs)
    if inspect.isawaitable(value):
        # An ``async def`` task outside the asyncio pool: run it to completion here.
        return asyncio.run(_await(value))
    return value


async def _await(awaitable: Any) -> Any:
    return await awaitable


def _flag(task_value: bool | None, setting: bool) -> bool:
    return setting if task_value is None else task_value


def execute(
    app: Polyq,
    message: TaskMessage,
    *,
    hostname: str | None = None,
    eager: bool = False,
    run: Callable[[Task, list[Any], dict[str, Any]], Any] = _call,
) -> Outcome:
    """Run ``message``'s task once and decide the fate of its message."""
    conf = app.conf
    task = app.tasks[message.task]
    task_id = message.id
    ignore_result = (
        message.ignore_result
        if message.ignore_result is not None
        else _flag(task.ignore_result, conf.task_ignore_result)
    )
    store = not eager or conf.task_store_eager_result
    ctx = Context(
        id=task_id,
        task=task.name,
        args=message.args,
        kwargs=message.kwargs,
        retries=message.retries,
        eta=message.eta,
        expires=message.expires,
        root_id=message.root_id,
        parent_id=message.parent_id,
        group=message.group_id,
        group_index=message.group_index,
        group_size=message.group_size,
        headers=message.headers,
        options=message.options,
        delivery_info={
            "queue": message.queue,
            "priority": message.priority,
            "delivery_count": message.delivery_count,
            "message_id": message.message_id,
            "redelivered": message.delivery_count > 1,
        },
        hostname=hostname,
        is_eager=eager,
        called_directly=False,
        time_limit=(message.time_limit, message.soft_time_limit),
        ignore_result=ignore_result,
    )
    if message.options:
        # Checked before anything acts on them: a bad field found after the body ran
        # made the message come back, and the body run again, up to the delivery limit.
        problems = check_options(message.options)
        if problems:
            return _invalid_fields(app, task, message, problems, store, hostname)
    dedupe = store and conf.worker_deduplicate_successful_tasks and not eager
    if dedupe and AsyncResult(task_id, app=app).state == states.SUCCESS:
        logger.info("task %s[%s] already succeeded: skipped (deduplicated)", task.name, task_id)
        return Outcome("ack", task_id, states.SUCCESS)
    # Canvas steps sent more than once (chord callbacks, chain steps): only the
    # first published copy runs (see docs/design/canvas.md, "exactly once").
    once = bool(message.options and message.options.get("once")) and not eager
    if once and not claim_once(app, message):
        logger.info("task %s[%s] is a duplicate canvas step: skipped", task.name, task_id)
        return Outcome("ack", task_id, None)
    if store and _flag(task.track_started, conf.task_track_started):
        store_state(app, task_id, states.STARTED, {"pid": os.getpid(), "hostname": hostname})
    soft = message.soft_time_limit or task.soft_time_limit or conf.task_soft_time_limit
    args, kwargs = message.args, message.kwargs
    started = time.perf_counter()
    outcome: Outcome
    retval: Any = None
    einfo: str | None = None
    with _running(ctx):
        # Inside the running context, so receivers (tracing) see ``task.request``.
        signals.task_prerun.send(sender=task, task_id=task_id, task=task, args=args, kwargs=kwargs)
        try:
            task.before_start(task_id, args, kwargs)
            with _SoftTimeLimit(soft):
                try:
                    retval = run(task, args, kwargs)
                except Exception as exc:
                    if task.autoretry_for and isinstance(exc, task.autoretry_for):
                        _autoretry(task, exc)
                    raise
        except Retry as exc:
            einfo = tb.format_exc()
            outcome = _on_retry(app, task, message, exc, einfo, store, hostname)
        except Ignore:
            outcome = Outcome("ack", task_id, None)
        except Reject as exc:
            signals.task_rejected.send(sender=task, message=message, exc=exc)
            if exc.requeue:
                outcome = Outcome("requeue", task_id, None, reason=str(exc.reason))
            else:
                outcome = Outcome(
                    "dead_letter", task_id, None, reason=f"rejected by the task: {exc.reason}"
                )
        except Exception as exc:
            einfo = tb.format_exc()
            outcome = _on_failure(app, task, message, exc, einfo, store, ignore_result, hostname)
        else:
            outcome = _on_success(app, task, message, retval, store, ignore_result, hostname)
        outcome.runtime = time.perf_counter() - started
        try:
            task.after_return(outcome.state or "", retval, task_id, args, kwargs, einfo)
        except Exception:
            logger.exception("after_return of %s[%s] raised", task.name, task_id)
    signals.task_postrun.send(
        sender=task,
        task_id=task_id,
        task=task,
        args=args,
        kwargs=kwargs,
        retval=retval,
        state=outcome.state,
    )
    return outcome


def _autoretry(task: Task, exc: Exception) -> None:
    options = dict(task.retry_kwargs)
    if task.retry_backoff and "countdown" not in options:
        options["countdown"] = task.backoff(task.request.retries)
    try:
        task.retry(exc=exc, **options)
    except MaxRetriesExceededError:
        raise exc from None


def _on_success(
    app: Polyq,
    task: Task,
    message: TaskMessage,
    retval: Any,
    store: bool,
    ignore_result: bool,
    hostname: str | None,
) -> Outcome:
    if store and not ignore_result:
        try:
            store_state(
                app,
                message.id,
                states.SUCCESS,
                retval,
                message=message,
                hostname=hostname,
                extra=_children(),
            )
        except (TypeError, ValueError) as exc:
            # The value cannot be serialized: the call failed, say why instead of losing it.
            error = TypeError(
                f"the return value of {task.name} cannot be stored with result_serializer="
                f"{app.conf.result_serializer!r}: {exc}"
            )
            return _on_failure(
                app,
                task,
                message,
                error,
                "".join(tb.format_exception(error)),
                store,
                False,
                hostname,
            )
    try:
        task.on_success(retval, message.id, message.args, message.kwargs)
    except Exception:
        logger.exception("on_success of %s[%s] raised", task.name, message.id)
    signals.task_success.send(sender=task, result=retval)
    if message.options:  # nothing linked or chained: most tasks skip the canvas
        on_success(app, task, message, retval)
    return Outcome("ack", message.id, states.SUCCESS, value=retval)


def _invalid_fields(
    app: Polyq,
    task: Task,
    message: TaskMessage,
    problems: dict[str, str],
    store: bool,
    hostname: str | None,
) -> Outcome:
    exc = InvalidWorkflow(
        f"task {task.name}[{message.id}] was not run: its message carries unusable "
        f"workflow fields ({'; '.join(problems.values())}). Send workflows with the canvas "
        "API (chain, group, chord) rather than building their options by hand"
    )
    logger.error("%s", exc)
    if store:
        store_state(app, message.id, states.FAILURE, exc=exc, message=message, hostname=hostname)
    on_invalid_fields(app, message, exc, problems)
    return Outcome("dead_letter", message.id, states.FAILURE, exc=exc, reason=str(exc))


def _on_failure(
    app: Polyq,
    task: Task,
    message: TaskMessage,
    exc: BaseException,
    einfo: str,
    store: bool,
    ignore_result: bool,
    hostname: str | None,
) -> Outcome:
    if store and (not ignore_result or task.store_errors_even_if_ignored):
        store_state(app, message.id, states.FAILURE, exc=exc, message=message, hostname=hostname)
    shown = _shown(app, exc)
    logger.error("Task %s[%s] raised %s: %s", task.name, message.id, type(exc).__name__, shown)
    try:
        task.on_failure(exc, message.id, message.args, message.kwargs, einfo)
    except Exception:
        logger.exception("on_failure of %s[%s] raised", task.name, message.id)
    signals.task_failure.send(
        sender=task,
        task_id=message.id,
        exception=exc,
        args=message.args,
        kwargs=message.kwargs,
        traceback=einfo,
        einfo=einfo,
    )
    on_failure(app, task, message, exc)
    acks = _flag(task.acks_on_failure_or_timeout, app.conf.task_acks_on_failure_or_timeout)
    if acks:
        return Outcome("ack", message.id, states.FAILURE, exc=exc, traceback=einfo)
    return Outcome(
        "dead_letter",
        message.id,
        states.FAILURE,
        exc=exc,
        traceback=einfo,
        reason=f"task failed ({type(exc).__name__}: {shown}) and acks_on_failure_or_timeout is off",
    )


def _on_retry(
    app: Polyq,
    task: Task,
    message: TaskMessage,
    exc: Retry,
    einfo: str,
    store: bool,
    hostname: str | None,
) -> Outcome:
    cause = exc.exc if exc.exc is not None else exc
    if store:
        store_state(app, message.id, states.RETRY, exc=cause, message=message, hostname=hostname)
    logger.info("Task %s[%s] retry: %s", task.name, message.id, _shown(app, exc))
    try:
        task.on_retry(cause, message.id, message.args, message.kwargs, einfo)
    except Exception:
        logger.exception("on_retry of %s[%s] raised", task.name, message.id)
    signals.task_retry.send(sender=task, request=task.request, reason=cause, einfo=einfo)
    return Outcome("ack", message.id, states.RETRY, exc=exc)


def _shown(app: Polyq, exc: BaseException) -> str:
    """An exception's message as it leaves the task: in log lines, dead-letter
    reasons and events. Redacted (URL passwords, DSN secrets) unless
    ``result_redact_secrets`` is off, as the stored record is."""
    text = str(exc)
    return redact(text) if app.conf.result_redact_secrets else text


def _children() -> dict[str, Any] | None:
    req = current_request.get()
    if req is not None and req.children:
        return {"children": list(req.children)}
    return None


def apply_eagerly(
    task: Task, args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
) -> EagerResult:
    """Run ``task`` here as a worker would, retrying immediately on ``retry()``."""
    app = task.app
    message = TaskMessage(
        task=task.name,
        id=options.get("task_id") or _new_id(),
        args=args,
        kwargs=kwargs,
        retries=int(options.get("retries", 0)),
        options={k: options[k] for k in ("link", "link_error") if options.get(k)},
        headers=dict(options.get("headers") or {}),
        queue=options.get("queue") or app.conf.task_default_queue,
        soft_time_limit=options.get("soft_time_limit"),
    )
    parent = current_request.get()
    if parent is not None and parent.id:
        message.parent_id = parent.id
        message.root_id = parent.root_id or parent.id
    throw = options.get("throw", app.conf.task_eager_propagates)
    while True:
        outcome = execute(app, message, hostname="eager", eager=True)
        if outcome.state == states.RETRY:
            message.retries += 1
            continue
        break
    if outcome.state == states.FAILURE and throw and outcome.exc is not None:
        raise outcome.exc
    value = outcome.exc if outcome.state == states.FAILURE else outcome.value
    state = outcome.state or states.SUCCESS
    return EagerResult(app, message.id, state, value, outcome.traceback)


def _new_id() -> str:
    return new_id()
