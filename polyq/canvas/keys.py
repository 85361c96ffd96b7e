"""The canvas's names in the result backend and in message options."""

from __future__ import annotations

import uuid

__all__ = [
    "CANVAS_KEYS",
    "CHORD_FAILED_PREFIX",
    "CHORD_FIRED_PREFIX",
    "CHORD_MEMBERS_PREFIX",
    "CHORD_PREFIX",
    "ERRBACK_NS",
    "FIRST_ONLY",
    "GROUP_KEYS",
    "ONCE_PREFIX",
]

CHORD_PREFIX = "polyq-chord-"
CHORD_MEMBERS_PREFIX = "polyq-chord-members-"
CHORD_FIRED_PREFIX = "polyq-chord-fired-"
CHORD_FAILED_PREFIX = "polyq-chord-failed-"
ONCE_PREFIX = "polyq-once-"

#: Message options the canvas owns (everything else is a sending option).
CANVAS_KEYS = ("chain", "chord", "once")
#: Options that belong to the first step of a chain only.
FIRST_ONLY = frozenset(
    {
        "task_id",
        "countdown",
        "eta",
        "parent_id",
        "root_id",
        "group_id",
        "group_index",
        "group_size",
        "once",
    }
)
GROUP_KEYS = ("group_id", "group_index", "group_size")
#: Namespace for errback ids derived from a chord id.
ERRBACK_NS = uuid.UUID("4f6a1c52-7d7e-4d8e-9a51-6b1f3f0c2a10")
