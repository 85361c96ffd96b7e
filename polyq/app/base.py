"""The application object ``Polyq``: settings, connections, the task registry and
sending; with ``shared_task``. Its glue lives beside it (:mod:`polyq.app.sending`,
:mod:`polyq.app.registration`); which app is current lives in :mod:`polyq.current`.

The app reaches four upper layers through lazy imports in one method each (the
facade edges named in docs/architecture.md): ``polyq.control`` (``app.control``),
``polyq.events`` (``task_send_sent_event``), ``polyq.worker`` (``app.Worker``) and
``polyq.beat`` (``app.add_periodic_task``). None of them imports the app at run time.
"""

from __future__ import annotations

import datetime
import importlib
import logging
import os
import time
import zoneinfo
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast, overload

from polyq import signals
from polyq.app.connections import Connections
from polyq.app.registration import annotate, register_builtin_tasks, run_autodiscover
from polyq.app.securing import setup_security
from polyq.app.sending import (
    as_list,
    jsonable_options,
    publish_with_retry,
    route,
    to_timestamp,
)
from polyq.backend import ResultBackend
from polyq.config import Settings, default_sqlite_url
from polyq.current import apps, default_app, register_app, set_default_factory
from polyq.exceptions import ConfigurationError
from polyq.message import TaskMessage, encode, new_id, new_ids
from polyq.request import current_request
from polyq.result import AsyncResult, GroupResult
from polyq.result import AsyncResult as _Result  # the method AsyncResult shadows it below
from polyq.security import Security
from polyq.serialization import AUTH, accepted_types
from polyq.task import Task
from polyq.transport import OutgoingMessage, Transport
from polyq.url import redact

__all__ = ["Polyq", "current_app", "default_app", "shared_task"]

logger = logging.getLogger("polyq.app")

#: ``shared_task`` registrations, run on every app created later too.
_shared_tasks: list[Callable[[Polyq], Task]] = []

#: Celery's name for the current app (the one created last).
current_app = default_app


def shared_task(*args: Any, **options: Any) -> Any:
    """Like ``@app.task`` for reusable apps: the task is registered on every app.

    Returns the task registered on the current app (the one created last).
    """

    def decorate(fun: Callable[..., Any]) -> Task:
        def register(app: Polyq) -> Task:
            return app.task(**options)(fun)

        _shared_tasks.append(register)
        for app in apps():
            register(app)
        return register(default_app())

    if len(args) == 1 and callable(args[0]) and not options:
        return decorate(args[0])
    return decorate


class Polyq:
    """A polyq application.

    ``Polyq()`` with no arguments uses the SQLite file ``polyq.sqlite3`` in the
    working directory as broker and result store (or ``POLYQ_BROKER_URL`` /
    ``POLYQ_RESULT_BACKEND``). ``broker`` and ``backend`` take URLs whose scheme
    picks the plugin (``redis://``, ``amqp://``, ``postgresql://``, ``sqs://``...).
    """

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        backend: str | None = None,
        *,
        include: Sequence[str] | None = None,
        config_source: Any = None,
        task_cls: type[Task] | None = None,
        **settings: Any,
    ) -> None:
        self.main = main
        self.conf = Settings()
        if config_source is not None:
            self.conf.from_object(config_source)
        if broker:
            self.conf["broker_url"] = broker
        if backend:
            self.conf["result_backend"] = backend
        if include:
            self.conf["include"] = list(include)
        for key, value in settings.items():
            self.conf[key] = value
        self._tasks: dict[str, Task] = {}
        self._connections = Connections(self)
        self._lock = self._connections.lock
        self._autodiscover: list[tuple[Any, str]] = []
        self._finalized = False
        base = task_cls or Task
        #: The base class of this app's tasks; subclass it for shared hooks.
        self.Task: type[Task] = type("Task", (base,), {"app": self, "__module__": __name__})
        from polyq.control import Control

        self.control = Control(self)
        register_app(self)
        for register in list(_shared_tasks):
            register(self)
        self._sent_events_enabled = False
        self._security: Security | None = None
        register_builtin_tasks(self)  # polyq.map, polyq.starmap

    # -- configuration ---------------------------------------------------------

    def config_from_object(self, obj: Any, namespace: str | None = None) -> None:
        """Read settings from an object, a module or its dotted name; with
        ``namespace='CELERY'`` only ``CELERY_``-prefixed names (Django settings)."""
        self.conf.from_object(obj, namespace)
        self._connections.reset()

    def config_from_envvar(self, variable: str, namespace: str | None = None) -> None:
        """Read settings from the module named by environment variable ``variable``."""
        module = os.environ.get(variable)
        if not module:
            raise ConfigurationError(f"environment variable {variable} is not set")
        self.config_from_object(module, namespace)

    def autodiscover_tasks(
        self,
        packages: Iterable[str] | Callable[[], Iterable[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.<related_name>`` for each package (a list or a callable
        returning one, e.g. Django's installed apps) when the app is finalized, or
        now with ``force``."""
        self._autodiscover.append((packages, related_name))
        if force:
            run_autodiscover(self._autodiscover)

    def finalize(self) -> None:
        """Import configured modules (``imports``, ``include``) and autodiscovered
        ones, and apply ``task_annotations`` to every task. Runs once, on first use:
        a worker's start, the first ``app.tasks``, the first send of a task."""
        if self._finalized:
            return
        self._finalized = True
        for module in [*self.conf.imports, *self.conf.include]:
            importlib.import_module(module)
        run_autodiscover(self._autodiscover)
        for task in list(self._tasks.values()):
            annotate(task, self.conf.task_annotations)

    @property
    def broker_url(self) -> str:
        """The broker URL in use (the SQLite default when none is configured)."""
        return self.conf.broker_url or default_sqlite_url()

    @property
    def backend_url(self) -> str:
        """The result backend URL in use (the SQLite default when none is configured)."""
        return self.conf.result_backend or default_sqlite_url()

    @property
    def result_ttl(self) -> float | None:
        """``result_expires`` in seconds (``None``: keep forever)."""
        expires = self.conf.result_expires
        if isinstance(expires, datetime.timedelta):
            return expires.total_seconds()
        return None if expires is None else float(expires)

    @property
    def accept(self) -> frozenset[str]:
        """Content types workers deserialize (``accept_content``)."""
        return accepted_types(self.conf.accept_content)

    @property
    def result_accept(self) -> frozenset[str]:
        """Content types accepted in results (``result_accept_content``; by default
        ``accept_content``, where ``auth`` stands for ``result_serializer``: results
        are not signed)."""
        conf = self.conf
        if conf.result_accept_content:
            return accepted_types(conf.result_accept_content)
        return accepted_types(
            [conf.result_serializer if item == AUTH else item for item in conf.accept_content]
        )

    # -- message signing ---------------------------------------------------------

    def setup_security(
        self,
        allowed_serializers: Sequence[str] | None = None,
        key: str | None = None,
        key_password: str | bytes | None = None,
        cert: str | None = None,
        store: str | None = None,
        digest: str | None = None,
        serializer: str = "json",
        *,
        shared_key: Any = None,
    ) -> Security:
        """Sign every task message, control command and event this app sends, and
        accept only signed ones (Celery's ``app.setup_security()``); see
        :func:`polyq.app.securing.setup_security` and docs/security.md."""
        self._security = setup_security(
            self.conf,
            allowed_serializers=allowed_serializers,
            key=key,
            key_password=key_password,
            cert=cert,
            store=store,
            digest=digest,
            serializer=serializer,
            shared_key=shared_key,
        )
        return self._security

    @property
    def security(self) -> Security | None:
        """How this app signs and verifies, or ``None`` without ``setup_security()``.
        Settings alone (``task_serializer='auth'`` or ``'auth'`` in ``accept_content``)
        set it up on first use, as a worker loading Celery-style settings expects."""
        if self._security is None:
            conf = self.conf
            if conf.task_serializer == AUTH or AUTH in (conf.accept_content or ()):
                with self._lock:
                    if self._security is None:
                        self.setup_security()
        return self._security

    @property
    def timezone(self) -> datetime.tzinfo:
        """``timezone`` as a tzinfo."""
        return zoneinfo.ZoneInfo(self.conf.timezone or "UTC")

    # -- connections (one per process, rebuilt after fork: polyq.app.connections) --

    @property
    def transport(self) -> Transport:
        """This process's broker connection (created on first use)."""
        return self._connections.transport()

    @property
    def backend(self) -> ResultBackend:
        """This process's result backend (created on first use)."""
        return self._connections.backend()

    def close(self) -> None:
        """Close this process's broker and backend connections."""
        self._connections.reset()

    # -- tasks -----------------------------------------------------------------

    @property
    def tasks(self) -> dict[str, Task]:
        """Registered tasks by name (importing configured modules first)."""
        self.finalize()
        return self._tasks

    @overload
    def task(self, fun: Callable[..., Any], /) -> Task: ...

    @overload
    def task(self, **options: Any) -> Callable[[Callable[..., Any]], Task]: ...

    def task(self, *args: Any, **options: Any) -> Any:
        """Decorator making a function a task: ``@app.task`` or ``@app.task(**options)``.

        Options: ``name``, ``bind``, ``base``, and every :class:`Task` attribute
        (``max_retries``, ``autoretry_for``, ``acks_late``, ``queue``, ...).
        """

        def decorate(fun: Callable[..., Any]) -> Task:
            return self._task_from_function(fun, **options)

        if len(args) == 1 and callable(args[0]) and not options:
            return decorate(args[0])
        if args:
            raise TypeError("@app.task takes keyword options only, e.g. @app.task(bind=True)")
        return decorate

    def _task_from_function(
        self,
        fun: Callable[..., Any],
        name: str | None = None,
        base: type[Task] | None = None,
        bind: bool = False,
        **options: Any,
    ) -> Task:
        name = name or self._task_name(fun)
        base = base or self.Task
        unknown = [k for k in options if not hasattr(Task, k)]
        if unknown:
            raise TypeError(f"unknown task option(s) {unknown} for task {name}")
        attrs: dict[str, Any] = {
            "name": name,
            "app": self,
            "bind": bind,
            "run": fun if bind else staticmethod(fun),
            "__doc__": fun.__doc__,
            "__module__": fun.__module__,
            "__wrapped__": fun,
            **options,
        }
        if "autoretry_for" in options:
            attrs["autoretry_for"] = tuple(options["autoretry_for"])
        cls = type(fun.__name__, (base,), attrs)
        task = cast(Task, cls())
        self._tasks[name] = task
        annotate(task, self.conf.task_annotations)
        return task

    def _task_name(self, fun: Callable[..., Any]) -> str:
        module = fun.__module__
        if module == "__main__" and self.main:
            module = self.main
        return f"{module}.{fun.__name__}"

    def register_task(self, task: Task | type[Task]) -> Task:
        """Register a class-based task (a ``Task`` subclass with a ``run`` and a ``name``)."""
        instance = task() if isinstance(task, type) else task
        if not instance.name:
            raise ValueError(f"{instance!r} has no name")
        type(instance).app = self
        self._tasks[instance.name] = instance
        annotate(instance, self.conf.task_annotations)
        return instance

    # -- sending ---------------------------------------------------------------

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        task_type: Task | None = None,
        countdown: float | None = None,
        eta: datetime.datetime | float | None = None,
        expires: datetime.datetime | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        task_id: str | None = None,
        headers: dict[str, str] | None = None,
        link: Any = None,
        link_error: Any = None,
        serializer: str | None = None,
        compression: str | None = None,
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        ignore_result: bool | None = None,
        connection: Any = None,
        retry: bool | None = None,
        retry_policy: dict[str, Any] | None = None,
        parent_id: str | None = None,
        root_id: str | None = None,
        group_id: str | None = None,
        group_index: int | None = None,
        group_size: int | None = None,
        options: dict[str, Any] | None = None,
        **extra: Any,
    ) -> AsyncResult:
        """Send a task by name (it need not be registered here). See ``apply_async``."""
        if extra:
            raise TypeError(f"unknown option(s) for sending {name}: {sorted(extra)}")
        task = task_type or self._tasks.get(name)
        route_options = route(self.conf, name, args, kwargs, task)
        queue = queue or route_options.get("queue") or (task.queue if task else None)
        if priority is None:
            priority = route_options.get("priority")
        if priority is None and task is not None:
            priority = task.priority
        if priority is None:
            priority = self.conf.task_default_priority
        if not isinstance(priority, int) or not 0 <= priority <= 9:
            raise ValueError(
                f"priority must be an int from 0 to 9 (higher runs first), not {priority!r}"
            )
        if expires is None and task is not None:
            expires = task.expires
        parent = current_request.get()
        if parent is not None and parent.id and not parent.is_eager:
            parent_id = parent_id or parent.id
            root_id = root_id or parent.root_id or parent.id
        if task_id:
            message_id = new_id()
        else:
            task_id, message_id = new_ids()
        if parent is not None and parent.id:
            parent.children.append(task_id)
        canvas_options: dict[str, Any] = {}
        if options or link is not None or link_error is not None:
            canvas_options = dict(options or {})
            if link is not None:
                canvas_options["link"] = as_list(link)
            if link_error is not None:
                canvas_options["link_error"] = as_list(link_error)
            canvas_options = jsonable_options(canvas_options)
        message = TaskMessage(
            task=name,
            id=task_id,
            args=list(args) if args else [],
            kwargs=dict(kwargs) if kwargs else {},
            expires=None if expires is None else self._to_timestamp(expires, relative=True),
            root_id=root_id or task_id,
            parent_id=parent_id,
            group_id=group_id,
            group_index=group_index,
            group_size=group_size,
            time_limit=time_limit,
            soft_time_limit=soft_time_limit,
            ignore_result=ignore_result,
            options=canvas_options,
            headers=dict(headers) if headers else {},
            queue=queue or self.conf.task_default_queue,
            priority=priority,
            message_id=message_id,
        )
        self.publish(
            message,
            countdown=countdown,
            eta=eta,
            task_type=task,
            serializer=serializer,
            compression=compression,
            connection=connection,
            retry=retry,
            retry_policy=retry_policy,
        )
        return AsyncResult(task_id, app=self, task_name=name)

    def publish(
        self,
        message: TaskMessage,
        *,
        countdown: float | None = None,
        eta: Any = None,
        task_type: Task | None = None,
        serializer: str | None = None,
        compression: str | None = None,
        connection: Any = None,
        retry: bool | None = None,
        retry_policy: dict[str, Any] | None = None,
    ) -> None:
        """Encode and publish one task message (ETA set from ``countdown``/``eta``)."""
        delay = 0.0
        if eta is None and countdown is None:
            message.eta = None
        else:
            now = time.time()
            when = self._to_timestamp(eta, relative=False) if eta is not None else None
            if countdown is not None:
                when = now + float(countdown)
            message.eta = when if when is not None and when > now else None
            delay = self.native_delay(message.eta, now)
        conf = self.conf
        if task_type is not None:
            serializer = serializer or task_type.serializer
            compression = compression or task_type.compression
        serializer = serializer or conf.task_serializer
        security = self.security
        if security is not None and serializer == AUTH:
            serializer = security.serializer
        out = encode(message, serializer, compression or conf.task_compression, delay=delay)
        if conf.task_send_sent_event and not self._sent_events_enabled:
            from polyq.events import enable_sent_events

            self._sent_events_enabled = True
            enable_sent_events(self)
        signals.before_task_publish.send(
            sender=message.task, body=out.body, headers=out.headers, routing_key=out.queue
        )
        if security is not None:
            # Signed after the signal: its handlers may add headers (trace context).
            out = security.signer.sign_task(out)
        self.publish_raw([out], connection=connection, retry=retry, retry_policy=retry_policy)
        signals.after_task_publish.send(
            sender=message.task, body=out.body, headers=out.headers, routing_key=out.queue
        )

    def publish_raw(
        self,
        messages: Sequence[OutgoingMessage],
        *,
        connection: Any = None,
        retry: bool | None = None,
        retry_policy: dict[str, Any] | None = None,
    ) -> None:
        """Publish encoded messages, retrying connection errors under
        ``task_publish_retry_policy`` before raising."""
        publish_with_retry(
            self.transport,
            self.conf,
            messages,
            connection=connection,
            retry=retry,
            retry_policy=retry_policy,
        )

    def _to_timestamp(self, value: Any, relative: bool) -> float | None:
        return to_timestamp(value, relative, self.conf.enable_utc, self.timezone)

    def native_delay(self, eta: float | None, now: float | None = None) -> float:
        """The delay to ask of the broker for ``eta``: all of it, or the broker's
        maximum (the worker re-delays the rest when the message arrives)."""
        if eta is None:
            return 0.0
        delay = max(0.0, eta - (now if now is not None else time.time()))
        limit = self.transport.capabilities.max_delay
        if limit is not None:
            delay = min(delay, limit)
        return delay

    # -- conveniences ----------------------------------------------------------

    def AsyncResult(self, task_id: str) -> AsyncResult:
        """A result handle for ``task_id``."""
        return AsyncResult(task_id, app=self)

    def GroupResult(self, group_id: str, results: Sequence[_Result]) -> Any:
        """A group result handle."""
        return GroupResult(group_id, results, app=self)

    def add_periodic_task(
        self, schedule: Any, sig: Any, name: str | None = None, **options: Any
    ) -> str:
        """Add a periodic task to ``beat_schedule`` (Celery's API); see ``polyq beat``."""
        from polyq.beat import add_periodic_task

        return add_periodic_task(self, schedule, sig, name, **options)

    def Worker(self, **options: Any) -> Any:
        """A :class:`polyq.worker.Worker` for this app."""
        from polyq.worker import Worker

        return Worker(self, **options)

    def __repr__(self) -> str:
        return f"<Polyq {self.main or '__main__'} broker={redact(self.broker_url)}>"


# ``default_app()`` (polyq.current) makes this when no app exists yet.
set_default_factory(lambda: Polyq("default"))
