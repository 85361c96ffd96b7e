"""Which app is current: the apps created in this process, newest last.

A low module so that results and signatures, which fall back to the current app
when given none, need not import ``polyq.app`` (which imports them). ``polyq.app``
registers each new app here and installs the factory of the default app.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from polyq.exceptions import ConfigurationError

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["apps", "default_app", "register_app", "set_default_factory"]

#: The apps created in this process, oldest first: Celery's ``current_app`` is the last.
_apps: list[Polyq] = []
_factory: list[Callable[[], Polyq]] = []


def register_app(app: Polyq) -> None:
    """Make ``app`` the current app (``Polyq.__init__`` calls this)."""
    _apps.append(app)


def apps() -> list[Polyq]:
    """The apps created in this process, oldest first (a copy)."""
    return list(_apps)


def set_default_factory(factory: Callable[[], Polyq]) -> None:
    """How :func:`default_app` makes an app when none exists (set by ``polyq.app``)."""
    _factory[:] = [factory]


def default_app() -> Polyq:
    """The current app, creating a default one (SQLite in the working directory) if none."""
    if not _apps:
        if not _factory:
            # Only reachable when polyq.app was never imported in this process.
            raise ConfigurationError(
                "no polyq app exists in this process: create one with polyq.Polyq(...) "
                "or pass app= to AsyncResult / signature"
            )
        _factory[0]()
    return _apps[-1]
