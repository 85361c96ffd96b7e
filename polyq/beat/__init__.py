"""``polyq beat``: sends periodic tasks from ``beat_schedule``, safely when several
beats run (one leads at a time, through leases in the result backend).

- :mod:`polyq.beat.entries`: validating the schedule (:class:`Entry`), timezones;
- :mod:`polyq.beat.scheduler`: the :class:`Beat` loop and its leader lease;
- :mod:`polyq.beat.status`: what dashboards show;
- :mod:`polyq.beat.command`: the ``polyq beat`` command.

How the lease, fencing, missed runs and state work: ``docs/design/beat.md``.
"""

from polyq.beat.command import beat
from polyq.beat.entries import (
    Entry,
    EntryStatus,
    add_periodic_task,
    load_schedule,
    schedule_timezone,
)
from polyq.beat.scheduler import MISSED_POLICIES, Beat, start_embedded
from polyq.beat.status import status

__all__ = [
    "MISSED_POLICIES",
    "Beat",
    "Entry",
    "EntryStatus",
    "add_periodic_task",
    "beat",
    "load_schedule",
    "schedule_timezone",
    "start_embedded",
    "status",
]
