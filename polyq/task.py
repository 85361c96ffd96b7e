"""``Task``: what ``@app.task`` makes, with Celery's options, hooks and calling API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from polyq import states
from polyq.exceptions import MaxRetriesExceededError, Retry
from polyq.request import Context, current_request
from polyq.result import AsyncResult, write_record

if TYPE_CHECKING:
    from polyq.app import Polyq
    from polyq.canvas import Signature

__all__ = ["Context", "Task", "current_request"]


class Task:
    """A task type. ``@app.task`` creates a subclass whose ``run`` is the function;
    subclass ``app.Task`` (or pass ``base=``) to share hooks between tasks.
    """

    #: Set by ``@app.task``.
    name: ClassVar[str] = ""
    app: ClassVar[Polyq]
    #: Retries before ``MaxRetriesExceededError``; ``None`` retries forever.
    max_retries: ClassVar[int | None] = 3
    #: Seconds before a retry when ``retry()`` is given no countdown.
    default_retry_delay: ClassVar[float] = 180.0
    #: Exceptions that retry the task automatically.
    autoretry_for: ClassVar[tuple[type[BaseException], ...]] = ()
    #: Options for the automatic ``retry()`` (``max_retries``, ``countdown``).
    retry_kwargs: ClassVar[dict[str, Any]] = {}
    #: Exponential backoff for autoretries: ``True`` (factor 1) or a factor in seconds.
    retry_backoff: ClassVar[bool | float] = False
    retry_backoff_max: ClassVar[float] = 600.0
    retry_jitter: ClassVar[bool] = True
    #: ``None`` follows ``task_acks_late`` (true by default: ack after running).
    acks_late: ClassVar[bool | None] = None
    acks_on_failure_or_timeout: ClassVar[bool | None] = None
    reject_on_worker_lost: ClassVar[bool | None] = None
    ignore_result: ClassVar[bool | None] = None
    store_errors_even_if_ignored: ClassVar[bool] = False
    #: ``"10/s"``, ``"100/m"``, ``"1000/h"`` per worker.
    rate_limit: ClassVar[str | None] = None
    time_limit: ClassVar[float | None] = None
    soft_time_limit: ClassVar[float | None] = None
    serializer: ClassVar[str | None] = None
    compression: ClassVar[str | None] = None
    track_started: ClassVar[bool | None] = None
    queue: ClassVar[str | None] = None
    priority: ClassVar[int | None] = None
    #: Seconds (or a datetime) after which a queued call is revoked instead of run.
    expires: ClassVar[Any] = None
    #: The function was declared with ``bind=True``.
    bind: ClassVar[bool] = False
    typing: ClassVar[bool] = True

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """The task's body (the decorated function)."""
        raise NotImplementedError(f"task {self.name} has no run()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task's body here and now, as a plain function call."""
        return self.run(*args, **kwargs)

    @property
    def request(self) -> Context:
        """The current call's context (an empty one outside a worker)."""
        req = current_request.get()
        if req is not None and req.task == self.name:
            return req
        return Context(task=self.name)

    # -- calling ---------------------------------------------------------------

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """Send the task with these arguments; shortcut for ``apply_async``."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task to a worker. Options: ``countdown``, ``eta``, ``expires``,
        ``queue``, ``priority``, ``task_id``, ``headers``, ``link``, ``link_error``,
        ``serializer``, ``compression``, ``time_limit``, ``soft_time_limit``,
        ``ignore_result``, ``retry``, ``retry_policy``, ``connection`` (publish in
        your own database transaction, SQL brokers). Runs locally when
        ``task_always_eager``."""
        self.app.finalize()  # once: task_annotations may set this task's options
        if self.app.conf.task_always_eager:
            return self.apply(args, kwargs, **options)
        return self.app.send_task(self.name, args, kwargs, task_type=self, **options)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Run the task here and now, as a worker would (hooks, retries, states);
        return an ``EagerResult``."""
        from polyq.execution import apply_eagerly

        return apply_eagerly(self, list(args or ()), dict(kwargs or {}), options)

    def signature(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> Signature:
        """A signature of this task (for canvas and callbacks)."""
        from polyq.canvas import Signature

        return Signature(self.name, args, kwargs, opts, app=self.app)

    subtask = signature

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature with these arguments (partial: a parent's result is prepended)."""
        return self.signature(args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: it ignores a parent's result."""
        return self.signature(args, kwargs, immutable=True)

    def map(self, it: Any) -> Signature:
        """A signature running this task on every item of ``it`` in one task (``xmap``)."""
        from polyq.canvas import xmap

        return xmap(self.s(), it, app=self.app)

    def starmap(self, it: Any) -> Signature:
        """A signature running this task on every argument tuple of ``it`` in one task."""
        from polyq.canvas import xstarmap

        return xstarmap(self.s(), it, app=self.app)

    def chunks(self, it: Any, n: int) -> Signature:
        """A signature splitting ``it`` into parts of ``n`` run in parallel (``chunks``)."""
        from polyq.canvas import chunks

        return chunks(self.s(), it, n, app=self.app)

    def AsyncResult(self, task_id: str) -> AsyncResult:
        """A result handle for ``task_id`` of this task."""
        return AsyncResult(task_id, app=self.app, task_name=self.name)

    # -- inside a running task -------------------------------------------------

    def retry(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        exc: BaseException | None = None,
        throw: bool = True,
        eta: Any = None,
        countdown: float | None = None,
        max_retries: int | None = None,
        **options: Any,
    ) -> Retry:
        """Send this call again with ``retries + 1`` and raise :class:`Retry`.

        Raises ``exc`` (or :class:`MaxRetriesExceededError`) instead once
        ``max_retries`` retries were made. Called outside a worker, re-raises
        ``exc``.
        """
        req = self.request
        if req.called_directly:
            if exc is not None:
                raise exc
            raise Retry("retry() called outside a worker", exc=exc)
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and req.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"Can't retry {self.name}[{req.id}] args:{req.args} kwargs:{req.kwargs}: "
                f"max_retries={limit} reached"
            )
        if eta is None and countdown is None:
            countdown = self.default_retry_delay
        retry_exc = Retry(exc=exc, when=countdown if eta is None else eta)
        if not req.is_eager:
            from polyq.message import TaskMessage

            queue = options.pop("queue", None) or req.delivery_info.get("queue")
            priority = options.pop("priority", req.delivery_info.get("priority", 0))
            message = TaskMessage(
                task=self.name,
                id=str(req.id),
                args=list(req.args if args is None else args),
                kwargs=dict(req.kwargs if kwargs is None else kwargs),
                retries=req.retries + 1,
                expires=req.expires,
                root_id=req.root_id,
                parent_id=req.parent_id,
                group_id=req.group,
                group_index=req.group_index,
                group_size=req.group_size,
                options=dict(req.options),
                headers=dict(req.headers),
                queue=queue or self.app.conf.task_default_queue,
                priority=int(priority or 0),
                time_limit=req.time_limit[0],
                soft_time_limit=req.time_limit[1],
            )
            self.app.publish(message, countdown=countdown, eta=eta, task_type=self)
        if throw:
            raise retry_exc
        return retry_exc

    def update_state(
        self,
        task_id: str | None = None,
        state: str | None = None,
        meta: Any = None,
        **kwargs: Any,
    ) -> None:
        """Store a custom state and meta (progress) for this (or another) task."""
        task_id = task_id or self.request.id
        if task_id is None:
            raise ValueError("update_state() needs a task_id outside a running task")
        record = {"status": state or states.STARTED, "result": meta, "task_id": task_id, **kwargs}
        # Not after a final state: a custom state (PROGRESS) cannot hide the outcome.
        write_record(self.app, task_id, record)

    # -- hooks (override in a base class) ---------------------------------------

    def before_start(self, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Called before the task body runs."""

    def on_success(
        self, retval: Any, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> None:
        """Called after the task body returned."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: str,
    ) -> None:
        """Called after the task body raised (``einfo`` is the formatted traceback)."""

    def on_retry(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: str,
    ) -> None:
        """Called when the task is to be retried."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: str | None,
    ) -> None:
        """Called after the task finished, whatever the outcome."""

    def backoff(self, retries: int) -> float:
        """The countdown of an automatic retry (``retry_backoff``, with jitter)."""
        import random

        factor = 1.0 if self.retry_backoff is True else float(self.retry_backoff)
        countdown = float(min(self.retry_backoff_max, factor * (2**retries)))
        if self.retry_jitter:
            countdown = random.uniform(0, countdown)
        return countdown

    def __repr__(self) -> str:
        return f"<@task: {self.name}>"
