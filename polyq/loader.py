"""Finding the app that ``-A`` names: used by the CLI and by prefork children, which
load the app again after a spawn. It sits below both so neither imports the other."""

from __future__ import annotations

import importlib
import os
import sys

import click

from polyq.app import Polyq

__all__ = ["find_app"]


def find_app(path: str) -> Polyq:
    """Load the app named by ``-A``: ``module``, ``module:attribute`` or ``module.attribute``.

    Raises ``click.UsageError`` naming what could not be found.
    """
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name or "." not in module_name or attr:
            raise click.UsageError(
                f"-A {path}: cannot import module {exc.name!r} ({exc}). Check the name and that "
                "you run polyq from the directory that contains it (or set PYTHONPATH)."
            ) from None
        module_name, _, attr = module_name.rpartition(".")
        module = importlib.import_module(module_name)
    if attr:
        app = getattr(module, attr, None)
        if not isinstance(app, Polyq):
            raise click.UsageError(f"-A {path}: {module_name}.{attr} is not a Polyq app")
        return app
    for name in ("app", "polyq", "celery"):
        candidate = getattr(module, name, None)
        if isinstance(candidate, Polyq):
            return candidate
    found = [v for v in vars(module).values() if isinstance(v, Polyq)]
    if len(found) == 1:
        return found[0]
    raise click.UsageError(
        f"-A {path}: module {module_name} has no Polyq app (looked for 'app', 'polyq', 'celery' "
        "and any Polyq instance); write -A module:attribute"
    )
