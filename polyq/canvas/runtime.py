"""The canvas on the worker's side: after a task ends, send what follows it
(``link`` callbacks, the next chain step, a chord's body) or fail it, exactly once
(see docs/design/canvas.md)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import TYPE_CHECKING, Any

from polyq import states
from polyq.canvas.fields import check_chord_record, check_signature
from polyq.canvas.keys import (
    CHORD_FAILED_PREFIX,
    CHORD_FIRED_PREFIX,
    CHORD_MEMBERS_PREFIX,
    CHORD_PREFIX,
    ERRBACK_NS,
    ONCE_PREFIX,
)
from polyq.canvas.primitives import apply_step
from polyq.canvas.signatures import as_list, from_dict
from polyq.exceptions import ChordError
from polyq.message import TaskMessage, decode
from polyq.result import decode_record, meta_key, store_state
from polyq.security import open_task

if TYPE_CHECKING:
    from polyq.app import Polyq
    from polyq.task import Task
    from polyq.transport import Delivery

__all__ = [
    "claim_once",
    "on_failure",
    "on_failure_outside_task",
    "on_invalid_fields",
    "on_success",
]

logger = logging.getLogger("polyq.canvas")


# -- the worker's side ----------------------------------------------------------


def claim_once(app: Polyq, message: TaskMessage) -> bool:
    """Whether a message sent with ``once`` may run: the first published copy of a
    task id claims it; a redelivery of that same message (same message id) or a
    ``retry()`` of it runs again, any other copy does not."""
    backend = app.backend
    key = ONCE_PREFIX + message.id
    mine = message.message_id.encode()
    for _ in range(3):
        if backend.set_if_absent(key, mine, app.result_ttl):
            return True
        current = backend.get(key)
        if current is not None:
            return current == mine or message.retries > 0
        # The claim expired between the two calls: try again.
    return True


def on_success(app: Polyq, task: Task, message: TaskMessage, retval: Any) -> None:
    """After a success (result stored): send ``link`` callbacks, the chain's next
    step, and count the task in its chord."""
    opts = message.options
    if not opts:
        return
    lineage: dict[str, Any] = {"parent_id": message.id, "root_id": message.root_id}
    for callback in as_list(opts.get("link")):
        from_dict(callback, app).apply_async((retval,), **lineage)
    remaining = list(opts.get("chain") or ())
    if remaining:
        nxt = from_dict(remaining.pop(), app)
        rest = [from_dict(r, app) for r in reversed(remaining)]
        apply_step(nxt, (retval,), rest, {**lineage, "once": True})
    info = opts.get("chord")
    if info:
        _chord_member_done(app, message, info)


def on_failure(app: Polyq, task: Task | None, message: TaskMessage, exc: BaseException) -> None:
    """After a failure (stored): send ``link_error`` errbacks with the task id, fail
    what follows in the chain, and fail the chord the task belongs to."""
    opts = message.options
    if not opts:
        return
    lineage: dict[str, Any] = {"parent_id": message.id, "root_id": message.root_id}
    for errback in as_list(opts.get("link_error")):
        from_dict(errback, app).apply_async((message.id,), **lineage)
    for step in opts.get("chain") or ():
        for sig in from_dict(step, app).all_tasks():
            info = sig["options"].get("chord")
            if info:
                _chord_failed(app, info, message.id, exc)
            elif sig.id:
                _store_failure(app, sig.id, exc, cause=message.id)
    info = opts.get("chord")
    if info:
        _chord_failed(app, info, message.id, exc)


def on_failure_outside_task(app: Polyq, delivery: Delivery, exc: BaseException) -> None:
    """For the worker, when it ends a task without the task's own failure path
    running (hard time limit, process lost for good, dead-lettered after too many
    deliveries, revoked or expired): fail what follows it in its chain and the
    chord it belongs to, so nothing waits for it forever. Cheap for plain tasks
    (one header check); never raises."""
    if delivery.headers.get("polyq") is None:
        return
    try:
        delivery, accept = open_task(app.security, delivery, app.accept)
        message = decode(delivery, accept)
        if message.options:
            on_failure(app, None, message, exc)
    except Exception:
        logger.exception("could not fail the workflow of task %s", delivery.headers.get("id"))


def on_invalid_fields(
    app: Polyq, message: TaskMessage, exc: BaseException, problems: dict[str, str]
) -> None:
    """For the worker, when a message's workflow fields are unusable (see
    :func:`polyq.canvas.fields.check_options`) and its task was not run: fail what
    the usable fields still name (the chain's next steps, the chord by its id, the
    errbacks), so the workflow ends once instead of waiting. Never raises."""
    options = message.options if isinstance(message.options, dict) else {}
    clean = {key: value for key, value in options.items() if key not in problems}
    info = options.get("chord")
    if "chord" in problems and isinstance(info, dict) and _chord_id_ok(info.get("id")):
        clean["chord"] = {"id": info["id"]}  # enough to fail the chord it names
    if not clean:
        return
    try:
        on_failure(app, None, dataclasses.replace(message, options=clean), exc)
    except Exception:
        logger.exception("could not fail the workflow of task %s", message.id)


def _chord_id_ok(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 255


def _store_failure(app: Polyq, task_id: str, exc: BaseException, cause: str) -> None:
    store_state(app, task_id, states.FAILURE, exc=exc, extra={"cause": cause})


def _load_chord(app: Polyq, group_id: str) -> dict[str, Any] | None:
    data = app.backend.get(CHORD_PREFIX + group_id)
    if data is None:
        return None
    return decode_record(data, app.accept)


def _chord_member_done(app: Polyq, message: TaskMessage, info: dict[str, Any]) -> None:
    backend = app.backend
    group_id, size = str(info["id"]), int(info["size"])
    count = backend.add_to_set(CHORD_MEMBERS_PREFIX + group_id, message.id, app.result_ttl)
    if count < size:
        return
    fired = backend.get_many([CHORD_FIRED_PREFIX + group_id, CHORD_FAILED_PREFIX + group_id])
    if fired:
        return
    record = _load_chord(app, group_id)
    if record is None:
        logger.error(
            "chord %s completed but its record is gone (expired? result_expires=%s): "
            "its callback cannot be sent",
            group_id,
            app.conf.result_expires,
        )
        return
    problem = check_chord_record(record, group_id, size)
    if problem:
        _chord_failed(app, info, message.id, ChordError(f"{problem}; the chord is failed"))
        return
    ids: list[str] = record["results"]
    found = backend.get_many([meta_key(i) for i in ids])
    values = []
    for task_id in ids:
        data = found.get(meta_key(task_id))
        state = decode_record(data, app.result_accept) if data is not None else None
        if state is None or state.get("status") != states.SUCCESS:
            status = state.get("status") if state else "missing"
            _chord_failed(
                app, info, task_id, ChordError(f"header task {task_id} result is {status}")
            )
            return
        values.append(state.get("result"))
    body = from_dict(record["body"], app)
    # Publish first, then mark: a crash in between republishes (on redelivery of
    # this message), and the ``once`` claim drops the second copy.
    body.apply_async((values,), once=True, parent_id=message.id, root_id=message.root_id)
    backend.set(CHORD_FIRED_PREFIX + group_id, b"1", ttl=app.result_ttl)


def _chord_failed(app: Polyq, info: dict[str, Any], member_id: str, exc: BaseException) -> None:
    backend = app.backend
    group_id = str(info["id"])
    if backend.get(CHORD_FIRED_PREFIX + group_id) is not None:
        return
    record = _load_chord(app, group_id)
    if record is None:
        logger.error("chord %s failed but its record is gone: nothing to mark", group_id)
        return
    problem = (
        check_signature(record.get("body"), f"chord {group_id} record.body")
        if isinstance(record, dict)
        else f"chord {group_id} record is not a mapping"
    )
    if problem:
        logger.error("chord %s failed and its body cannot be failed: %s", group_id, problem)
        backend.set(CHORD_FAILED_PREFIX + group_id, member_id.encode(), ttl=app.result_ttl)
        return
    body = from_dict(record["body"], app)
    error = exc if isinstance(exc, ChordError) else None
    if error is None:
        error = ChordError(
            f"chord {group_id}: header task {member_id} raised {type(exc).__name__}: {exc}"
        )
    targets = list(body.all_tasks())
    for sig in targets:
        if sig.id:
            _store_failure(app, sig.id, error, cause=member_id)
    backend.set(CHORD_FAILED_PREFIX + group_id, member_id.encode(), ttl=app.result_ttl)
    result_id = body.final_tasks()[0].id if body.final_tasks() else None
    errbacks = as_list(targets[0]["options"].get("link_error")) if targets else []
    for index, errback in enumerate(errbacks):
        errback_id = str(uuid.uuid5(ERRBACK_NS, f"{group_id}:{index}"))
        from_dict(errback, app).apply_async(
            (result_id,), task_id=errback_id, once=True, parent_id=member_id
        )
