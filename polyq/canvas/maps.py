"""``xmap`` and ``xstarmap``: one task applied to every item of a list, in one task."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from polyq.canvas.signatures import Signature, plain, to_signature

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["xmap", "xstarmap"]


class xmap(Signature):
    """``[task(item) for item in it]`` as one task (``polyq.map``), like Celery's ``map``."""

    def __init__(self, task: Any, it: Iterable[Any], app: Polyq | None = None) -> None:
        sig = to_signature(task, app)
        super().__init__("polyq.map", (plain(sig), list(it)), app=app or sig.bound_app)


class xstarmap(Signature):
    """``[task(*item) for item in it]`` as one task (``polyq.starmap``)."""

    def __init__(self, task: Any, it: Iterable[Any], app: Polyq | None = None) -> None:
        sig = to_signature(task, app)
        items = [list(i) for i in it]
        super().__init__("polyq.starmap", (plain(sig), items), app=app or sig.bound_app)
