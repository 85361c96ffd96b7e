"""Signatures and workflows: ``signature``, ``chain``, ``group`` (and callbacks).

A signature is a plain ``dict`` (task name, args, kwargs, options, immutable),
so it travels inside a message as data. Callbacks and the rest of a chain ride
in the message's ``options``; the worker sends them when the task finishes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from polyq.message import TaskMessage, new_id

if TYPE_CHECKING:
    from polyq.app import Polyq
    from polyq.result import AsyncResult, GroupResult
    from polyq.task import Task

__all__ = ["Signature", "chain", "group", "maybe_signature", "signature"]


class Signature(dict[str, Any]):
    """A task call described as data: ``add.s(2, 2)``, ``signature('tasks.add', (2, 2))``."""

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
            super().__init__(copy.deepcopy(dict(task)))
        else:
            name = task if isinstance(task, str) else task.name
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
        self._app = app

    @property
    def app(self) -> Polyq:
        """The app used to send this signature."""
        from polyq.app import default_app

        return self._app or default_app()

    @property
    def name(self) -> str:
        """The task name."""
        return str(self["task"])

    task = name

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
        """Sending options (queue, countdown, link, ...)."""
        return dict(self["options"])

    @property
    def immutable(self) -> bool:
        """Whether a parent's result is ignored."""
        return bool(self.get("immutable"))

    def clone(
        self, args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **opts: Any
    ) -> Signature:
        """A copy with ``args`` prepended (unless immutable), ``kwargs`` and options merged."""
        sig = Signature(dict(self), app=self._app)
        if args and not sig.immutable:
            sig["args"] = list(args) + sig["args"]
        if kwargs and not sig.immutable:
            sig["kwargs"] = {**sig["kwargs"], **kwargs}
        sig["options"].update(opts)
        return sig

    def set(self, immutable: bool | None = None, **options: Any) -> Signature:
        """Set sending options in place (``queue=``, ``countdown=``, ...); returns self."""
        if immutable is not None:
            self["immutable"] = immutable
        self["options"].update(options)
        return self

    def link(self, callback: Signature) -> Signature:
        """Call ``callback`` with this task's result when it succeeds."""
        self["options"].setdefault("link", []).append(dict(callback))
        return callback

    def link_error(self, errback: Signature) -> Signature:
        """Call ``errback`` with this task's id when it fails."""
        self["options"].setdefault("link_error", []).append(dict(errback))
        return errback

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the task, with extra ``args`` prepended and ``options`` merged."""
        sig = self.clone(args, kwargs)
        opts = {**sig["options"], **options}
        if self.get("subtask_type") == "chain":
            return chain(*[Signature(s, app=self._app) for s in opts.pop("tasks")]).apply_async(
                sig["args"], sig["kwargs"], **opts
            )
        if self.get("subtask_type") == "group":
            return group(*[Signature(s, app=self._app) for s in opts.pop("tasks")]).apply_async(
                sig["args"], sig["kwargs"], **opts
            )
        task = self.app.tasks.get(sig.name)
        if task is not None:
            return task.apply_async(sig["args"], sig["kwargs"], **opts)
        if self.app.conf.task_always_eager:
            raise LookupError(f"task {sig.name} is not registered on this app (eager mode)")
        return self.app.send_task(sig.name, sig["args"], sig["kwargs"], **opts)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        """``apply_async`` with these arguments."""
        return self.apply_async(args, kwargs)

    def apply(self, args: Sequence[Any] | None = None, **options: Any) -> AsyncResult:
        """Run here and now (eagerly)."""
        sig = self.clone(args)
        return self.app.tasks[sig.name].apply(sig["args"], sig["kwargs"], **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call the task's function directly."""
        sig = self.clone(args, kwargs)
        return self.app.tasks[sig.name](*sig["args"], **sig["kwargs"])

    def __or__(self, other: Any) -> chain:
        return chain(self, other)

    def __repr__(self) -> str:
        args = ", ".join([repr(a) for a in self["args"]] + [f"{k}={v!r}" for k, v in self["kwargs"].items()])
        return f"{self.name}({args}){'!' if self.immutable else ''}"

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        return Signature(copy.deepcopy(dict(self), memo), app=self._app)


def signature(varies: Any, *args: Any, **kwargs: Any) -> Signature:
    """Build a signature from a name, a task or a signature dict."""
    if isinstance(varies, Signature):
        return varies.clone()
    return Signature(varies, *args, **kwargs)


def maybe_signature(value: Any, app: Polyq | None = None) -> Signature | None:
    """A signature from a dict (as received in a message), or ``None``."""
    if value is None:
        return None
    if isinstance(value, Signature):
        return value
    return Signature(dict(value), app=app)


class chain(Signature):  # noqa: N801 - Celery's name
    """Run tasks one after another, each receiving the previous one's result."""

    def __init__(self, *tasks: Any, app: Polyq | None = None) -> None:
        flat: list[Signature] = []
        for t in tasks[0] if len(tasks) == 1 and isinstance(tasks[0], list | tuple) else tasks:
            sig = maybe_signature(t, app) if isinstance(t, dict) else t.s()
            assert sig is not None
            if sig.get("subtask_type") == "chain":
                flat.extend(Signature(s, app=app) for s in sig["options"]["tasks"])
            else:
                flat.append(sig)
        super().__init__("polyq.chain", options={"tasks": [dict(s) for s in flat]},
                         subtask_type="chain", app=app or (flat[0]._app if flat else None))
        self.tasks = flat

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult:
        """Send the first task; the rest travel with it and follow its result."""
        if not self.tasks:
            raise ValueError("an empty chain has nothing to run")
        first, rest = self.tasks[0].clone(args, kwargs), self.tasks[1:]
        ids = [new_id() for _ in self.tasks]
        remaining = []
        for sig, task_id in zip(rest, ids[1:], strict=True):
            clone = sig.clone()
            clone["options"]["task_id"] = task_id
            remaining.append(dict(clone))
        if remaining:
            first["options"]["chain"] = list(reversed(remaining))
        result = first.apply_async(task_id=ids[0], **options)
        # Rebuild the parent links so chain().get() waits for the last task.
        from polyq.result import AsyncResult as Result

        node = result
        for task_id in ids[1:]:
            node = Result(task_id, app=self.app, parent=node)
        return node

    def __or__(self, other: Any) -> chain:
        return chain(*self.tasks, other, app=self._app)

    def __call__(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks)


class group(Signature):  # noqa: N801 - Celery's name
    """Run tasks in parallel; ``GroupResult`` collects their results in order."""

    def __init__(self, *tasks: Any, app: Polyq | None = None) -> None:
        items: Iterable[Any] = (
            tasks[0] if len(tasks) == 1 and not isinstance(tasks[0], dict) else tasks
        )
        sigs = [t if isinstance(t, Signature) else Signature(dict(t), app=app) for t in items]
        super().__init__("polyq.group", options={"tasks": [dict(s) for s in sigs]},
                         subtask_type="group", app=app or (sigs[0]._app if sigs else None))
        self.tasks = sigs

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> GroupResult:
        """Send every task at once; return their ``GroupResult`` (saved)."""
        from polyq.result import GroupResult

        group_id = options.pop("group_id", None) or new_id()
        results = []
        for index, sig in enumerate(self.tasks):
            results.append(
                sig.clone(args, kwargs).apply_async(
                    group_id=group_id, group_index=index, group_size=len(self.tasks), **options
                )
            )
        result = GroupResult(group_id, results, app=self.app)
        if not self.app.conf.task_always_eager:
            result.save()
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> GroupResult:
        return self.apply_async(args, kwargs)

    def __repr__(self) -> str:
        return f"group({', '.join(repr(t) for t in self.tasks)})"


def on_success(app: Polyq, task: Task, message: TaskMessage, retval: Any) -> None:
    """Called by the worker after a success: send ``link`` callbacks and the chain's next step."""
    opts = message.options
    if not opts:
        return
    for callback in opts.get("link") or ():
        Signature(callback, app=app).clone((retval,)).apply_async(
            parent_id=message.id, root_id=message.root_id
        )
    remaining = list(opts.get("chain") or ())
    if remaining:
        nxt = Signature(remaining.pop(), app=app)
        extra = {"chain": remaining} if remaining else {}
        nxt_opts = nxt["options"]
        nxt_opts.update(extra)
        nxt.clone((retval,)).apply_async(parent_id=message.id, root_id=message.root_id)


def on_failure(app: Polyq, task: Task, message: TaskMessage, exc: BaseException) -> None:
    """Called by the worker after a failure: send ``link_error`` callbacks with the task id."""
    opts = message.options
    if not opts:
        return
    for errback in opts.get("link_error") or ():
        Signature(errback, app=app).clone((message.id,)).apply_async(
            parent_id=message.id, root_id=message.root_id
        )
