"""The request of the running task: ``Context`` (``self.request``) and the context
variable holding it. A leaf module, so logging and execution can read the running
task without importing ``polyq.task``."""

from __future__ import annotations

import contextvars
import dataclasses
from typing import Any

__all__ = ["Context", "current_request"]


@dataclasses.dataclass
class Context:
    """``self.request`` of a running task: what the message said and where it came from."""

    id: str | None = None
    task: str | None = None
    args: list[Any] = dataclasses.field(default_factory=list)
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group: str | None = None
    group_index: int | None = None
    group_size: int | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    delivery_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    hostname: str | None = None
    is_eager: bool = False
    called_directly: bool = True
    time_limit: tuple[float | None, float | None] = (None, None)
    ignore_result: bool = False
    #: Tasks sent while this one ran (their ids), stored as ``children``.
    children: list[str] = dataclasses.field(default_factory=list)

    @property
    def delivery_count(self) -> int:
        """How many times this message has been delivered (1 the first time)."""
        return int(self.delivery_info.get("delivery_count", 1))

    @property
    def callbacks(self) -> list[Any] | None:
        """``link`` signatures to call with the result."""
        return self.options.get("link")

    @property
    def errbacks(self) -> list[Any] | None:
        """``link_error`` signatures to call on failure."""
        return self.options.get("link_error")


#: The request of the task running in this context (thread, coroutine or process).
current_request: contextvars.ContextVar[Context | None] = contextvars.ContextVar(
    "polyq_request", default=None
)
