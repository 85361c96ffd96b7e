"""Beat entries: validating ``beat_schedule`` into :class:`Entry` objects, Celery's
``add_periodic_task``, and the zone crontab times are read in."""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import zoneinfo
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from polyq.exceptions import ConfigurationError
from polyq.schedules import BaseSchedule, maybe_schedule

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["Entry", "EntryStatus", "add_periodic_task", "load_schedule", "schedule_timezone"]

logger = logging.getLogger("polyq.beat")

#: ``options`` an entry may pass on to ``app.send_task``.
_SEND_OPTIONS = frozenset(
    {
        "queue",
        "priority",
        "expires",
        "headers",
        "countdown",
        "time_limit",
        "soft_time_limit",
        "ignore_result",
        "serializer",
        "compression",
    }
)
_ENTRY_KEYS = frozenset({"task", "schedule", "args", "kwargs", "options"})
_UTC = datetime.UTC


@dataclasses.dataclass(frozen=True)
class Entry:
    """One validated ``beat_schedule`` entry."""

    name: str
    task: str
    schedule: BaseSchedule
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EntryStatus:
    """An entry with its last run (from the backend) and next run, for listings."""

    name: str
    task: str
    schedule: str
    last_scheduled: datetime.datetime | None
    last_sent: datetime.datetime | None
    sent_by: str | None
    task_id: str | None
    total_run_count: int
    next_run: datetime.datetime | None


def load_schedule(schedule: Mapping[str, Any]) -> list[Entry]:
    """Validate ``beat_schedule``; raise :class:`ConfigurationError` naming the
    entry and what is wrong with it."""
    if not isinstance(schedule, Mapping):
        raise ConfigurationError(
            f"beat_schedule must be a dict of entry name -> entry, not {type(schedule).__name__}"
        )
    entries = []
    for name, spec in schedule.items():
        where = f"beat_schedule[{name!r}]"
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"{where}: entry names must be non-empty strings")
        if not isinstance(spec, Mapping):
            raise ConfigurationError(f"{where} must be a dict with 'task' and 'schedule'")
        unknown = set(spec) - _ENTRY_KEYS
        if unknown:
            hint = (
                " (intervals always count in UTC from the epoch)" if "relative" in unknown else ""
            )
            raise ConfigurationError(
                f"{where}: unknown key(s) {sorted(unknown)}{hint}; "
                f"an entry has {sorted(_ENTRY_KEYS)}"
            )
        task = spec.get("task")
        if not isinstance(task, str) or not task:
            raise ConfigurationError(f"{where}: 'task' must be the task's name, e.g. 'proj.add'")
        if "schedule" not in spec:
            raise ConfigurationError(
                f"{where}: 'schedule' is missing (seconds, a timedelta or crontab(...))"
            )
        try:
            sched = maybe_schedule(spec["schedule"])
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        args = spec.get("args") or ()
        if not isinstance(args, list | tuple):
            raise ConfigurationError(f"{where}: 'args' must be a list or tuple")
        kwargs = spec.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise ConfigurationError(f"{where}: 'kwargs' must be a dict")
        options = spec.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigurationError(f"{where}: 'options' must be a dict")
        bad = set(options) - _SEND_OPTIONS
        if bad:
            raise ConfigurationError(
                f"{where}: unsupported option(s) {sorted(bad)}; use {sorted(_SEND_OPTIONS)}"
            )
        entries.append(Entry(name, task, sched, tuple(args), dict(kwargs), dict(options)))
    return entries


def add_periodic_task(
    app: Polyq,
    schedule: Any,
    sig: Any,
    name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    **options: Any,
) -> str:
    """Celery's ``app.add_periodic_task``: add ``sig`` (a task's signature, a task,
    or a task name) to ``beat_schedule`` under ``name`` and return the entry name.

    ``args`` and ``kwargs`` are added to the signature's; ``options`` (``queue``,
    ``priority``, ``expires``...) override its options. Canvas (chains, groups)
    cannot be scheduled: schedule a task that builds it.
    """
    if isinstance(sig, Mapping):
        if sig.get("subtask_type"):
            raise ConfigurationError(
                f"add_periodic_task: a {sig['subtask_type']} cannot be scheduled; "
                "schedule a task that sends it"
            )
        task = str(sig["task"])
        args = [*(sig.get("args") or ()), *args]
        kwargs = {**(sig.get("kwargs") or {}), **(kwargs or {})}
        options = {**(sig.get("options") or {}), **options}
    else:
        task = sig if isinstance(sig, str) else str(sig.name)
        args, kwargs = list(args), dict(kwargs or {})
    kwargs = dict(kwargs or {})
    # Celery names an unnamed entry after the call it makes.
    shown = [*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())]
    entry_name = name or f"{task}({', '.join(shown)})"
    entry = {"task": task, "schedule": schedule, "args": list(args), "kwargs": kwargs}
    if options:
        entry["options"] = dict(options)
    load_schedule({entry_name: entry})  # fail now, naming the entry, not when beat starts
    app.conf.beat_schedule = {**(app.conf.beat_schedule or {}), entry_name: entry}
    return entry_name


def schedule_timezone(app: Polyq) -> datetime.tzinfo:
    """The zone crontab wall times are read in: ``timezone`` when set (Celery's
    rule, whatever ``enable_utc``); otherwise UTC, or the machine's local zone
    when ``enable_utc`` is false."""
    conf = app.conf
    if conf.is_set("timezone") or conf.enable_utc:
        name = conf.timezone or "UTC"
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(
                f"timezone {name!r} is not a known IANA zone (e.g. 'Europe/Paris'); "
                "on systems without tz data, pip install tzdata"
            ) from None
    return _local_zone()


def _local_zone() -> datetime.tzinfo:
    name = os.environ.get("TZ", "").lstrip(":")
    if not name:
        try:
            target = os.path.realpath("/etc/localtime")
            if "zoneinfo/" in target:
                name = target.split("zoneinfo/", 1)[1]
        except OSError:
            name = ""
    if name:
        try:
            return zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            pass
    zone = datetime.datetime.now().astimezone().tzinfo or _UTC
    logger.warning(
        "cannot name the local timezone; using the fixed offset %s (no daylight-saving "
        "changes): set the timezone setting",
        zone,
    )
    return zone
