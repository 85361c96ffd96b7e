"""Task results: the stored record format, ``AsyncResult`` and ``GroupResult``.

A task's record lives in the result backend under ``polyq-task-meta-<id>``. It is
serialized with ``result_serializer`` behind a short prefix naming the
serializer (``json:``), so a reader refuses a type it does not accept before
decoding. Exceptions are stored as a type name and message and re-raised by
``get()`` only for an allow-list of types (built-in exceptions, polyq's own and
``result_exception_allowlist``) — never by importing a path read from the store.
"""

from __future__ import annotations

import builtins
import contextvars
import datetime
import logging
import time
import traceback as tb
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from polyq import exceptions, serialization, states
from polyq.backend import final_mark
from polyq.current import default_app
from polyq.url import redact

if TYPE_CHECKING:
    from polyq.app import Polyq
    from polyq.message import TaskMessage

__all__ = [
    "AsyncResult",
    "EagerResult",
    "GroupResult",
    "ResultSet",
    "decode_record",
    "encode_record",
    "meta_key",
    "store_state",
    "write_record",
]

logger = logging.getLogger(__name__)

META_PREFIX = "polyq-task-meta-"
GROUP_PREFIX = "polyq-group-meta-"

#: Set while a task runs in this context, so ``get()`` inside a task can refuse.
in_task: contextvars.ContextVar[bool] = contextvars.ContextVar("polyq_in_task", default=False)


def meta_key(task_id: str) -> str:
    """The backend key of a task's record."""
    return META_PREFIX + task_id


def encode_record(record: dict[str, Any], serializer: str) -> bytes:
    """Serialize a task record with its serializer's name in front."""
    s = serialization.get_serializer(serializer)
    return s.name.encode() + b":" + s.dumps(record)


def decode_record(data: bytes, accept: frozenset[str]) -> dict[str, Any]:
    """Undo :func:`encode_record`, refusing serializers not in ``accept``."""
    name, _, payload = data.partition(b":")
    s = serialization.get_serializer(name.decode("ascii", "replace"))
    value = serialization.loads(payload, s.content_type, accept)
    if not isinstance(value, dict):
        raise exceptions.DecodeError("a task record is not a mapping")
    return value


def exception_fields(
    exc: BaseException, with_traceback: bool = True, redact_secrets: bool = False
) -> dict[str, Any]:
    """What a record keeps of an exception: its type's name, message and traceback;
    with ``redact_secrets``, URL passwords and secret ``key=value`` pairs in the
    message and traceback are hidden (:func:`polyq.url.redact`)."""
    message = str(exc)
    fields: dict[str, Any] = {
        "exc_type": type(exc).__name__,
        "exc_module": type(exc).__module__,
        "exc_message": redact(message) if redact_secrets else message,
    }
    if with_traceback:
        text = "".join(tb.format_exception(type(exc), exc, exc.__traceback__))
        fields["traceback"] = redact(text) if redact_secrets else text
    return fields


def _allowed_exception(record: dict[str, Any], allow: Sequence[Any]) -> BaseException:
    name = record.get("exc_type") or "Exception"
    module = record.get("exc_module") or ""
    message = record.get("exc_message") or ""
    candidates: list[type[BaseException]] = []
    for item in allow:
        if isinstance(item, type) and issubclass(item, BaseException):
            candidates.append(item)
    for cls in candidates:
        if cls.__name__ == name and cls.__module__ == module:
            return _build(cls, message)
    if module == "builtins":
        builtin = getattr(builtins, name, None)
        if isinstance(builtin, type) and issubclass(builtin, Exception):
            return _build(builtin, message)
    if module == "polyq.exceptions":
        ours = getattr(exceptions, name, None)
        if isinstance(ours, type) and issubclass(ours, exceptions.PolyqError):
            return _build(ours, message)
    return exceptions.TaskError(f"{module}.{name}" if module else name, message)


def _build(cls: type[BaseException], message: str) -> BaseException:
    try:
        return cls(message)
    except Exception:
        return exceptions.TaskError(cls.__name__, message)


class AsyncResult:
    """A handle on a task's state and return value, by task id."""

    def __init__(
        self,
        id: str,
        app: Polyq | None = None,
        task_name: str | None = None,
        parent: AsyncResult | None = None,
    ) -> None:
        if app is None:
            app = default_app()
        self.id = id
        self.app = app
        self.task_name = task_name
        self.parent = parent
        self._cache: dict[str, Any] | None = None

    # -- reading ---------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        if self._cache is not None:
            return self._cache
        return self._decode(self.app.backend.get(meta_key(self.id)))

    def _decode(self, data: bytes | None) -> dict[str, Any]:
        if data is None:
            return {"status": states.PENDING, "result": None}
        record = decode_record(data, self.app.result_accept)
        if record.get("status") in states.READY_STATES:
            self._cache = record
        return record

    @property
    def state(self) -> str:
        """One of :mod:`polyq.states`; ``PENDING`` when unknown."""
        return str(self._record().get("status", states.PENDING))

    status = state

    @property
    def info(self) -> Any:
        """The return value, the exception, or the custom meta of ``update_state``."""
        record = self._record()
        if record.get("status") in states.EXCEPTION_STATES and "exc_type" in record:
            return _allowed_exception(record, self.app.conf.result_exception_allowlist)
        return record.get("result")

    result = info

    @property
    def traceback(self) -> str | None:
        """The formatted traceback of a failure, if any."""
        value = self._record().get("traceback")
        return str(value) if value is not None else None

    @property
    def date_done(self) -> datetime.datetime | None:
        """When the task finished (UTC)."""
        done = self._record().get("date_done")
        return datetime.datetime.fromisoformat(done) if done else None

    @property
    def name(self) -> str | None:
        """The task name (stored with ``result_extended``)."""
        return self._record().get("name") or self.task_name

    @property
    def args(self) -> list[Any] | None:
        """Positional arguments (stored with ``result_extended``)."""
        return self._record().get("args")

    @property
    def kwargs(self) -> dict[str, Any] | None:
        """Keyword arguments (stored with ``result_extended``)."""
        return self._record().get("kwargs")

    @property
    def retries(self) -> int | None:
        """How many times the task was retried."""
        return self._record().get("retries")

    @property
    def worker(self) -> str | None:
        """Which worker ran it (stored with ``result_extended``)."""
        return self._record().get("worker")

    @property
    def children(self) -> list[AsyncResult]:
        """Results of tasks this task sent while it ran."""
        return [AsyncResult(i, app=self.app) for i in self._record().get("children") or []]

    def ready(self) -> bool:
        """Whether the task finished (succeeded, failed or was revoked)."""
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        """Whether the task succeeded."""
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        """Whether the task failed."""
        return self.state == states.FAILURE

    # -- waiting ---------------------------------------------------------------

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> Any:
        """Wait for the task to finish and return its value.

        Raises :class:`polyq.exceptions.TimeoutError` after ``timeout`` seconds,
        and, with ``propagate``, the task's exception (allow-listed types) or
        :class:`~polyq.exceptions.TaskError`. Calling it inside a task raises
        ``RuntimeError`` (waiting would deadlock the pool) unless
        ``disable_sync_subtasks=False``.
        """
        if disable_sync_subtasks and in_task.get():
            raise RuntimeError(
                "Never call result.get() within a task: it can deadlock the worker pool. "
                "Use a chain or a chord, or pass disable_sync_subtasks=False if you are sure."
            )
        record = self._wait_ready(timeout, max(interval, 0.05))
        status = record.get("status")
        if status == states.SUCCESS:
            return record.get("result")
        exc = _allowed_exception(record, self.app.conf.result_exception_allowlist)
        if status == states.REVOKED and record.get("exc_type") is None:
            exc = exceptions.RevokedError(f"task {self.id} was revoked")
        if propagate:
            raise exc
        return exc

    wait = get

    def _wait_ready(self, timeout: float | None, max_pause: float) -> dict[str, Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        backend = self.app.backend
        key = meta_key(self.id)
        pause = 0.005
        record = self._record()
        while True:
            if record.get("status") in states.READY_STATES:
                return record
            remaining = 3600.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise exceptions.TimeoutError(
                    f"task {self.id} did not finish within {timeout}s "
                    f"(state {record.get('status')})"
                )
            if record.get("status") == states.PENDING:
                # Nothing stored yet: the backend's wait returns as soon as a record
                # appears, with the record, so it is not read a second time.
                data = backend.wait(key, min(remaining, 5.0))
                record = self._decode(data) if data is not None else self._record()
            else:
                time.sleep(min(pause, remaining))
                pause = min(pause * 1.5, max_pause)
                record = self._record()

    # -- acting ----------------------------------------------------------------

    def forget(self) -> None:
        """Delete the stored record."""
        self._cache = None
        key = meta_key(self.id)
        # The final mark goes too, or the id could never store a state again.
        self.app.backend.delete([key, final_mark(key)])

    def revoke(self, terminate: bool = False, signal: str = "SIGTERM") -> None:
        """Revoke the task: it will not run (durable across worker restarts)."""
        self.app.control.revoke(self.id, terminate=terminate, signal=signal)

    def then(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - Celery async API
        """Not supported: polyq results are synchronous."""
        raise NotImplementedError("AsyncResult.then is not supported; use link= or a chain")

    def __eq__(self, other: object) -> bool:
        if isinstance(other, AsyncResult):
            return other.id == self.id
        if isinstance(other, str):
            return other == self.id
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<AsyncResult: {self.id}>"

    def __str__(self) -> str:
        return self.id


class ResultSet:
    """Several results waited on together."""

    def __init__(self, results: Sequence[AsyncResult], app: Polyq | None = None) -> None:
        self.results = list(results)
        self.app = app or (results[0].app if results else None)

    def __iter__(self) -> Iterator[AsyncResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int) -> AsyncResult:
        return self.results[index]

    def ready(self) -> bool:
        """Whether every task finished."""
        return all(r.ready() for r in self.results)

    def successful(self) -> bool:
        """Whether every task succeeded."""
        return all(r.successful() for r in self.results)

    def failed(self) -> bool:
        """Whether any task failed."""
        return any(r.failed() for r in self.results)

    def completed_count(self) -> int:
        """How many tasks succeeded."""
        return sum(1 for r in self.results if r.successful())

    def get(self, timeout: float | None = None, propagate: bool = True, **kwargs: Any) -> list[Any]:
        """The values of every task, in order (waits for all)."""
        return self.join(timeout=timeout, propagate=propagate, **kwargs)

    def join(
        self, timeout: float | None = None, propagate: bool = True, **kwargs: Any
    ) -> list[Any]:
        """The values of every task, in order; ``timeout`` is for the whole set."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for r in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(r.get(timeout=left, propagate=propagate, **kwargs))
        return values

    def forget(self) -> None:
        """Forget every result."""
        for r in self.results:
            r.forget()

    def revoke(self, terminate: bool = False) -> None:
        """Revoke every task."""
        for r in self.results:
            r.revoke(terminate=terminate)


class GroupResult(ResultSet):
    """The results of a group, with an id under which it can be saved and restored."""

    def __init__(
        self,
        id: str,
        results: Sequence[AsyncResult],
        app: Polyq | None = None,
        parent: AsyncResult | None = None,
    ) -> None:
        super().__init__(results, app)
        self.id = id
        self.parent = parent

    def save(self) -> None:
        """Store the member ids so :meth:`restore` can rebuild this result
        (nested groups are kept as nested groups)."""
        assert self.app is not None
        self.app.backend.set(
            GROUP_PREFIX + self.id,
            encode_record({"results": _member_ids(self)}, "json"),
            ttl=self.app.result_ttl,
        )

    def delete(self) -> None:
        """Remove the saved group (not its members' results)."""
        assert self.app is not None
        self.app.backend.delete([GROUP_PREFIX + self.id])

    @property
    def children(self) -> list[AsyncResult]:
        """The members' results (Celery's name)."""
        return self.results

    @classmethod
    def restore(cls, group_id: str, app: Polyq | None = None) -> GroupResult | None:
        """The group saved under ``group_id``, or ``None``."""
        app = app or default_app()
        data = app.backend.get(GROUP_PREFIX + group_id)
        if data is None:
            return None
        ids = decode_record(data, frozenset({"application/json"}))["results"]
        return _from_ids(cls, group_id, ids, app)

    def __repr__(self) -> str:
        return f"<GroupResult: {self.id} [{', '.join(r.id for r in self.results)}]>"


def _member_ids(result: GroupResult) -> list[Any]:
    # A group's members are AsyncResults or, for nested groups, GroupResults.
    members: list[Any] = list(result.results)
    return [
        {"group": r.id, "results": _member_ids(r)} if isinstance(r, GroupResult) else r.id
        for r in members
    ]


def _from_ids(cls: type[GroupResult], group_id: str, ids: list[Any], app: Polyq) -> GroupResult:
    members: list[Any] = [
        _from_ids(cls, i["group"], i["results"], app)
        if isinstance(i, dict)
        else AsyncResult(i, app=app)
        for i in ids
    ]
    return cls(group_id, members, app=app)


def store_state(
    app: Polyq,
    task_id: str,
    state: str,
    result: Any = None,
    *,
    exc: BaseException | None = None,
    message: TaskMessage | None = None,
    hostname: str | None = None,
    extra: dict[str, Any] | None = None,
) -> bool:
    """Write a task's record to the result backend; return whether it was stored.

    Final states never go backwards: once ``SUCCESS``, ``FAILURE`` or ``REVOKED``
    is stored for ``task_id``, nothing more is (a late ``RETRY`` or ``STARTED`` of
    a duplicate or stale execution, or a second final state: the first wins)
    until the record is forgotten or expires (:meth:`ResultBackend.set_state`).
    An exception's message and traceback are redacted unless
    ``result_redact_secrets`` is off: they often quote a connection URL or DSN."""
    record: dict[str, Any] = {"status": state, "result": result, "task_id": task_id}
    if exc is not None:
        record.update(exception_fields(exc, redact_secrets=app.conf.result_redact_secrets))
        record["result"] = None
    if state in states.READY_STATES:
        record["date_done"] = datetime.datetime.now(datetime.UTC).isoformat()
    if message is not None:
        record["retries"] = message.retries
        if app.conf.result_extended:
            record.update(
                name=message.task,
                args=message.args,
                kwargs=message.kwargs,
                queue=message.queue,
                worker=hostname,
            )
    if extra:
        record.update(extra)
    return write_record(app, task_id, record)


def write_record(app: Polyq, task_id: str, record: dict[str, Any]) -> bool:
    """Store ``record`` as ``task_id``'s state unless a final one is already stored
    (:meth:`ResultBackend.set_state`); return whether it was stored."""
    state = record.get("status")
    data = encode_record(record, app.conf.result_serializer)
    stored = app.backend.set_state(
        meta_key(task_id), data, app.result_ttl, final=state in states.READY_STATES
    )
    if not stored:
        logger.info(
            "task %s: state %s not stored, a final state was stored before it", task_id, state
        )
    return stored


class EagerResult(AsyncResult):
    """The result of ``apply()``: known at once, without asking the backend."""

    def __init__(self, app: Polyq, task_id: str, state: str, value: Any, tb_text: str | None):
        super().__init__(task_id, app=app)
        self._eager: dict[str, Any] = {"status": state, "result": value, "traceback": tb_text}
        if isinstance(value, BaseException):
            self._eager.update(exception_fields(value, with_traceback=False))
            self._eager["result"] = None
        self._exc = value if isinstance(value, BaseException) else None

    def _record(self) -> dict[str, Any]:
        return self._eager

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float = 0.5,
        disable_sync_subtasks: bool = True,
    ) -> Any:
        """The value, or the task's own exception object (eager keeps it as raised)."""
        if self._exc is not None:
            if propagate:
                raise self._exc
            return self._exc
        return self._eager["result"]

    @property
    def info(self) -> Any:
        """The return value or the exception."""
        return self._exc if self._exc is not None else self._eager["result"]

    result = info

    def __repr__(self) -> str:
        return f"<EagerResult: {self.id}>"
