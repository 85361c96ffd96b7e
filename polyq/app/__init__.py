"""The application: ``Polyq`` (:mod:`polyq.app.base`), its sending and registration
glue (:mod:`polyq.app.sending`, :mod:`polyq.app.registration`), and the current app
(kept in :mod:`polyq.current` so results and signatures can reach it)."""

from polyq.app.base import Polyq, current_app, shared_task
from polyq.current import default_app

__all__ = ["Polyq", "current_app", "default_app", "shared_task"]
