"""``Signature``: a task call described as data, and how one is rebuilt from a
message and sent. The composite kinds (chain, group, chord...) subclass it in
:mod:`polyq.canvas.primitives` and register themselves in :data:`KINDS`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast, runtime_checkable

from polyq.canvas.keys import CANVAS_KEYS
from polyq.current import default_app
from polyq.message import new_id
from polyq.result import AsyncResult

if TYPE_CHECKING:
    from polyq.app import Polyq
    from polyq.canvas.primitives import chain
    from polyq.task import Task

__all__ = [
    "KINDS",
    "Signature",
    "TaskLike",
    "as_list",
    "from_dict",
    "maybe_signature",
    "plain",
    "send",
    "signature",
    "to_signature",
]


@runtime_checkable
class TaskLike(Protocol):
    """What the canvas needs of a task (``polyq.task.Task`` is one): checked by
    shape, so the canvas does not import the task module at run time."""

    name: str

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of the task with these arguments."""
        ...


KINDS: dict[str, type[Signature]] = {}


def plain(value: Any) -> Any:
    """A deep copy with every mapping a plain ``dict`` (what goes on the wire)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    return value


def from_dict(value: dict[str, Any], app: Polyq | None = None) -> Signature:
    """Rebuild a signature (of the right kind) from its dict, e.g. out of a message.

    Always returns a new object (a deep copy); frozen ids are kept.
    """
    kind = value.get("subtask_type")
    cls = KINDS.get(kind) if kind else None
    if app is None and isinstance(value, Signature):
        app = value.bound_app
    if cls is None:
        sig = Signature.__new__(Signature)
        dict.__init__(sig, plain(value))
        sig.bound_app = app
        sig.setdefault("options", {})
        sig.setdefault("args", [])
        sig.setdefault("kwargs", {})
        return sig
    return cls._rebuild(plain(value), app)


def maybe_signature(value: Any, app: Polyq | None = None) -> Signature | None:
    """A signature from a dict (as received in a message) or a task; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, Signature):
        return value
    return to_signature(value, app)


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """Build a signature from a task name, a task, or a signature dict."""
    if isinstance(varies, Signature):
        return varies.clone()
    if isinstance(varies, dict):
        return from_dict(varies, kwargs.get("app"))
    return Signature(varies, *args, **kwargs)


def to_signature(value: Any, app: Polyq | None) -> Signature:
    if isinstance(value, Signature):
        return value
    if isinstance(value, dict):
        return from_dict(value, app)
    if isinstance(value, TaskLike):
        return value.s()
    raise TypeError(f"expected a signature, a task or a signature dict, not {value!r}")


class Signature(dict[str, Any]):
    """A task call described as data: ``add.s(2, 2)``, ``signature('tasks.add', (2, 2))``.

    Partial: arguments given when it is applied are *prepended* (a chain passes
    the previous result this way) unless the signature is immutable
    (``add.si(2, 2)``); keyword arguments are merged; ``.set(**options)`` sets
    sending options (``queue``, ``countdown``, ``priority``...).
    """

    #: ``subtask_type`` of the class (``None`` for a task call).
    kind: ClassVar[str | None] = None

    def __init__(
        self,
        task: str | dict[str, Any] | Task,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        *,
        immutable: bool = False,
        subtask_type: str | None = None,
        app: Polyq | None = None,
        **extra_options: Any,
    ) -> None:
        if isinstance(task, dict):
            super().__init__(plain(dict(task)))
        else:
            name = task if isinstance(task, str) else task.name
            if app is None and not isinstance(task, str):
                app = task.app
            opts = dict(options or {})
            opts.update(extra_options)
            immutable = bool(opts.pop("immutable", immutable))
            super().__init__(
                task=name,
                args=list(args or ()),
                kwargs=dict(kwargs or {}),
                options=opts,
                immutable=immutable,
                subtask_type=subtask_type,
            )
        #: The app given when the signature was made (``None``: the current app).
        self.bound_app = app

    @classmethod
    def _rebuild(cls, data: dict[str, Any], app: Polyq | None) -> Signature:
        sig = cls.__new__(cls)
        dict.__init__(sig, data)
        sig.bound_app = app
        return sig

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            KINDS[cls.kind] = cls

    # -- reading ---------------------------------------------------------------

    @property
    def app(self) -> Polyq:
        """The app used to send this signature (the current app if none was given)."""
        return self.bound_app or default_app()

    @property
    def name(self) -> str:
        """The task name."""
        return str(self["task"])

    task = name

    @property
    def type(self) -> Task:
        """The registered task this signature calls."""
        return self.app.tasks[self.name]

    @property
    def args(self) -> list[Any]:
        """Positional arguments."""
        return list(self["args"])

    @property
    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments."""
        return dict(self["kwargs"])

    @property
    def options(self) -> dict[str, Any]:
        """Sending options (``queue``, ``countdown``, ``link``...), the live dict."""
        return cast(dict[str, Any], self["options"])

    @property
    def immutable(self) -> bool:
        """Whether a parent's result is ignored."""
        return bool(self.get("immutable"))

    @property
    def id(self) -> str | None:
        """The task id, once frozen."""
        task_id = self["options"].get("task_id")
        return str(task_id) if task_id else None

    # -- building --------------------------------------------------------------

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> Signature:
        """A deep copy with ``args`` prepended (unless immutable), ``kwargs`` and options merged."""
        sig = from_dict(self, self.bound_app)
        sig.prepend_args(args, kwargs)
        sig["options"].update(opts)
        return sig

    def prepend_args(self, args: Sequence[Any] | None, kwargs: dict[str, Any] | None) -> None:
        """Apply partial arguments in place: ``args`` go before this signature's own,
        ``kwargs`` are merged over them; an immutable signature keeps its own."""
        if self.immutable:
            return
        if args:
            self["args"] = list(args) + list(self["args"])
        if kwargs:
            self["kwargs"] = {**self["kwargs"], **kwargs}

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Set sending options in place (``queue=``, ``countdown=``, ...); returns self."""
        if immutable is not None:
            self["immutable"] = immutable
        self["options"].update(options)
        return self

    def link(self, callback: Any) -> Signature:
        """Call ``callback`` with this task's result when it succeeds; returns the callback."""
        sig = to_signature(callback, self.bound_app)
        self["options"].setdefault("link", []).append(sig)
        return sig

    def link_error(self, errback: Any) -> Signature:
        """Call ``errback`` with this task's id when it fails; returns the errback."""
        sig = to_signature(errback, self.bound_app)
        self["options"].setdefault("link_error", []).append(sig)
        return sig

    on_error = link_error

    def freeze(self, _id: str | None = None) -> Any:
        """Assign the task id now (idempotent) and return the result handle."""
        opts = self["options"]
        if _id:
            opts["task_id"] = _id
        task_id = opts.setdefault("task_id", new_id())
        return AsyncResult(task_id, app=self.app, task_name=self.name)

    def final_tasks(self) -> list[Signature]:
        """The task signatures whose results are this signature's result."""
        return [self]

    def all_tasks(self) -> Iterator[Signature]:
        """Every task signature inside (for marking what will never run)."""
        yield self

    # -- sending ---------------------------------------------------------------

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the task, with ``args`` prepended and ``options`` merged."""
        sig = self.clone(args, kwargs)
        opts = {**sig["options"], **options}
        app = self.app
        if app.conf.task_always_eager:
            return sig.apply(**{k: v for k, v in opts.items() if k not in CANVAS_KEYS})
        return send(app, sig, opts)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """``apply_async`` with these arguments."""
        return self.apply_async(args, kwargs)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Run here and now, as a worker would (an ``EagerResult``)."""
        sig = self.clone(args, kwargs)
        opts = {k: v for k, v in {**sig["options"], **options}.items() if k not in CANVAS_KEYS}
        return self.app.tasks[sig.name].apply(sig["args"], sig["kwargs"], **opts)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task's function directly, in this process."""
        sig = self.clone(args, kwargs)
        return self.app.tasks[sig.name](*sig["args"], **sig["kwargs"])

    def __or__(self, other: Any) -> chain:  # type: ignore[override]
        return _chain(self, other, app=self.bound_app)

    def __ror__(self, other: Any) -> chain:  # type: ignore[override]
        return _chain(other, self, app=self.bound_app)

    def __reduce__(self) -> Any:
        return (from_dict, (plain(self),))

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        return from_dict(self, self.bound_app)

    def __repr__(self) -> str:
        args = ", ".join(
            [repr(a) for a in self["args"]] + [f"{k}={v!r}" for k, v in self["kwargs"].items()]
        )
        return f"{self.name}({args}){'!' if self.immutable else ''}"


def _chain(*steps: Any, app: Polyq | None) -> chain:
    # chain subclasses Signature in polyq.canvas.primitives, which imports this
    # module: it is found by its kind, as from_dict finds every kind.
    return cast("chain", cast(Any, KINDS["chain"])(*steps, app=app))


def send(app: Polyq, sig: Signature, opts: dict[str, Any]) -> AsyncResult:
    """Publish one task call; canvas keys go into the message's ``options``."""
    canvas = dict(opts.pop("options", None) or {})
    for key in CANVAS_KEYS:
        value = opts.pop(key, None)
        if value:
            canvas[key] = plain(value)
    for key in ("link", "link_error"):
        if opts.get(key):
            value = opts[key]
            opts[key] = [
                plain(to_signature(v, app)) for v in (value if isinstance(value, list) else [value])
            ]
    task = app.tasks.get(sig.name)
    if task is not None:
        return task.apply_async(sig["args"], sig["kwargs"], options=canvas or None, **opts)
    return app.send_task(sig.name, sig["args"], sig["kwargs"], options=canvas or None, **opts)


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]
