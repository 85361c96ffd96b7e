"""Task registration glue: ``task_annotations``, ``autodiscover_tasks`` and the
built-in tasks ``polyq.map`` / ``polyq.starmap`` every app has."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from polyq.exceptions import ConfigurationError
from polyq.task import Task

if TYPE_CHECKING:
    from polyq.app.base import Polyq

__all__ = [
    "ANNOTATABLE",
    "NOT_ANNOTATABLE",
    "annotate",
    "register_builtin_tasks",
    "run_autodiscover",
]

#: Task attributes ``task_annotations`` may not set: identity, not behaviour.
NOT_ANNOTATABLE = frozenset({"name", "app", "bind", "run"})
ANNOTATABLE = sorted(
    k
    for k in vars(Task)
    if not k.startswith("_")
    and k not in NOT_ANNOTATABLE
    and not callable(getattr(Task, k))
    and not isinstance(vars(Task)[k], property)
)


def run_autodiscover(pending: list[tuple[Any, str]]) -> None:
    """Import ``<package>.<related_name>`` for every pending ``autodiscover_tasks``
    call, emptying ``pending``; a package without that module is skipped."""
    while pending:
        packages, related = pending.pop(0)
        if callable(packages):
            packages = packages()
        for package in packages or ():
            try:
                importlib.import_module(f"{package}.{related}")
            except ModuleNotFoundError as exc:
                if exc.name not in (f"{package}.{related}",):
                    raise


def annotate(task: Task, annotations: Any) -> None:
    """Set the attributes ``task_annotations`` gives ``task``: those for every
    task (``"*"``) first, then those for its name or from ``annotate(task)``, so
    the specific ones win (Celery applies ``"*"`` last)."""
    if not annotations:
        return
    many = isinstance(annotations, list | tuple)
    every: list[tuple[str, dict[str, Any]]] = []
    specific: list[tuple[str, dict[str, Any]]] = []
    for i, entry in enumerate(annotations if many else [annotations]):
        where = f"task_annotations[{i}]" if many else "task_annotations"
        if isinstance(entry, dict):
            if entry.get("*"):
                every.append((f"{where}['*']", dict(entry["*"])))
            if entry.get(task.name):
                specific.append((f"{where}[{task.name!r}]", dict(entry[task.name])))
        elif callable(getattr(entry, "annotate", None)):
            values = entry.annotate(task)
            if values:
                specific.append((f"{where}.annotate()", dict(values)))
        else:
            raise ConfigurationError(
                f"{where} is {entry!r}: give a dict of task name (or '*') to attributes, "
                "an object with annotate(task) returning such attributes, or a list of these"
            )
    cls = type(task)
    for where, values in every + specific:
        for key, value in values.items():
            if key.startswith("@"):
                raise ConfigurationError(
                    f"{where} wraps the method {key[1:]!r} of {task.name}: polyq does not "
                    "wrap task methods from settings; subclass app.Task with the method "
                    "and pass base= to @app.task"
                )
            if key not in ANNOTATABLE:
                raise ConfigurationError(
                    f"{where} sets {key!r} on {task.name}, which is not a task option; "
                    f"use one of: {', '.join(ANNOTATABLE)}"
                )
            setattr(cls, key, tuple(value) if key == "autoretry_for" else value)


def register_builtin_tasks(app: Polyq) -> None:
    """Register ``polyq.map`` and ``polyq.starmap`` on ``app`` (called when it is
    created): ``xmap``/``xstarmap`` signatures run them. ``task`` is the signature
    (a dict) of the task to call on each item."""

    def map_task(task: dict[str, Any], it: list[Any]) -> list[Any]:
        fun = app.tasks[str(task["task"])]
        return [fun(item) for item in it]

    def starmap_task(task: dict[str, Any], it: list[Any]) -> list[Any]:
        fun = app.tasks[str(task["task"])]
        return [fun(*item) for item in it]

    app.task(name="polyq.map")(map_task)
    app.task(name="polyq.starmap")(starmap_task)
