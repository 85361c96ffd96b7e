"""The beat's state for dashboards (``polyq.beat.status``)."""

from __future__ import annotations

import dataclasses
import datetime
from typing import TYPE_CHECKING, Any

from polyq.beat.scheduler import Beat

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["status"]


def status(app: Polyq) -> dict[str, Any]:
    """The beat's state for dashboards: the current leader and every entry (JSON-able)."""
    b = Beat(app)
    return {
        "leader": b.leader(),
        "lease_time": b.lease_time,
        "timezone": str(b.tz),
        "entries": [
            {
                k: v.isoformat() if isinstance(v, datetime.datetime) else v
                for k, v in dataclasses.asdict(s).items()
            }
            for s in b.status()
        ],
    }
