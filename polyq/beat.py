"""``polyq beat``: sends periodic tasks, safely when several beats run.

Entries come from the ``beat_schedule`` setting (Celery's format)::

    app.conf.beat_schedule = {
        "cleanup": {"task": "proj.tasks.cleanup", "schedule": crontab(minute=0, hour=3)},
        "ping": {"task": "proj.tasks.ping", "schedule": 30.0, "args": [1],
                 "options": {"queue": "pings", "priority": 5, "expires": 25}},
    }

Schedules (:mod:`polyq.schedules`) are pure functions of the configuration, so
every beat process computes the same *scheduled times*. Beats coordinate only
through the result backend (:class:`polyq.backend.ResultBackend`): no local file
or lock, so beats on different machines or directories are safe.

Leader election: time-sliced leases
-----------------------------------
Time is cut into *slots* of ``beat_lease_time`` seconds (slot ``k`` is
``[k*T, (k+1)*T)`` in Unix time). A beat leads slot ``k`` if it stored its token
under ``<prefix>leader-<k>`` with ``set_if_absent``: exactly one beat wins each
slot, and no key is ever overwritten — the backend has no compare-and-set, and
"read the token, then ``set`` to renew" can overwrite a lease another beat took
between the read and the write. Instead the leader renews by claiming the
*next* slot in the last quarter of its own, while the others try a slot only a
short grace after it began, so the incumbent keeps the lead and a dead leader
is replaced at the start of the first slot it did not claim: within one to two
lease times. A leader that stops cleanly deletes its slot keys, and another beat
takes over within a quarter of a lease.

Fencing and deduplication
-------------------------
Before every send the leader re-reads the key of the current slot (by its own
clock) and sends only if it holds its token: a beat that was stopped
(``SIGSTOP``, a long GC pause, a suspended VM) past its lease wakes up in a slot
it does not own and sends nothing. The final guard is a key per (entry,
scheduled time), ``<prefix>sent-<entry>-<time>``, taken with ``set_if_absent``
before publishing: whatever the leases do, a scheduled run is published at most
once. The message's task id is derived from the same pair (UUID 5), so a run is
also recognisable downstream.

Limits, stated honestly: (1) a beat paused *between* its last check and the
publish can still publish that one run late — once, never twice; (2) a beat
killed between taking the run's key and publishing loses that run (at most once,
as a periodic run is meant to be; a publish that *fails* releases the key, logs
an error and is retried); (3) slots are read from each beat's wall clock, so
clocks skewed by more than the grace (a tenth of a lease, at most 1 s) make the
lead change hands more often — the per-run key still prevents duplicates.

Missed runs
-----------
A run is *on time* when the leader reaches it within ``beat_lease_time`` of its
scheduled time (and after this beat started); all on-time runs are sent. Older
runs were missed (every beat was down, or a leader died): with
``beat_missed_policy = "run_once"`` (the default) the latest missed run is sent
once, on start or take-over, unless an on-time run follows it; with ``"skip"``
missed runs are dropped. A new entry (no state yet) starts with its next run.

State
-----
``<prefix>state-<entry>`` holds, per entry, the last run's scheduled time, when
and by which beat it was sent, its task id and a run count (JSON). ``polyq beat
--list`` and :func:`status` (for the dashboard) read it. The leader also calls the
backend's ``cleanup()`` once an hour (Celery's beat runs ``backend_cleanup``), so
expired run keys and results do not pile up in stores without native expiry.

Settings: ``beat_schedule``, ``beat_lease_time`` (seconds, default 10),
``beat_missed_policy``, ``beat_max_loop_interval`` (longest sleep, default 5 s),
``beat_key_prefix`` (default ``polyq-beat-``; give apps sharing one backend
different prefixes), ``timezone`` and ``enable_utc`` (see :func:`schedule_timezone`).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import signal
import socket
import threading
import time
import uuid
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from polyq.exceptions import ConfigurationError, PolyqError
from polyq.schedules import BaseSchedule, maybe_schedule
from polyq.url import redact

if TYPE_CHECKING:
    from polyq.app import Polyq

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

logger = logging.getLogger("polyq.beat")

#: Values of ``beat_missed_policy``.
MISSED_POLICIES = ("run_once", "skip")
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
#: Most on-time runs of one entry sent in one pass (a 1 ms interval is a mistake).
_MAX_RUNS_PER_PASS = 1000
_UTC = datetime.UTC
#: Seconds between the leader's backend cleanups.
_CLEANUP_EVERY = 3600.0


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


class _LostLease(Exception):
    """This beat no longer leads; stop sending in this pass."""


class Beat:
    """The scheduler. ``run()`` blocks until ``stop()``; ``tick()`` is one pass.

    ``clock`` (Unix time) is injectable for tests; everything else comes from the
    app's settings unless given here.
    """

    def __init__(
        self,
        app: Polyq,
        *,
        lease_time: float | None = None,
        missed_policy: str | None = None,
        max_interval: float | None = None,
        clock: Callable[[], float] = time.time,
        name: str | None = None,
    ) -> None:
        conf = app.conf
        self.app = app
        self.entries = load_schedule(conf.beat_schedule or {})
        self.tz = schedule_timezone(app)
        self.lease_time = float(lease_time if lease_time is not None else conf.beat_lease_time)
        if not math.isfinite(self.lease_time) or self.lease_time <= 0:
            raise ConfigurationError(
                f"beat_lease_time must be a positive number of seconds, not {self.lease_time!r}"
            )
        self.missed_policy = missed_policy or conf.beat_missed_policy
        if self.missed_policy not in MISSED_POLICIES:
            raise ConfigurationError(
                f"beat_missed_policy must be one of {MISSED_POLICIES}, not {self.missed_policy!r}"
            )
        self.max_interval = float(
            max_interval if max_interval is not None else conf.beat_max_loop_interval
        )
        self.prefix = str(conf.beat_key_prefix)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.token = uuid.uuid4().hex
        self._clock = clock
        # Incumbents claim the next slot in the last quarter of theirs; the others
        # wait a grace into a slot before trying it, so the incumbent wins the race.
        self._claim_lead = self.lease_time / 4
        self._grace = min(self.lease_time / 10, 1.0)
        self._owned: set[int] = set()
        self._refused: int | None = None  # a next slot another beat took first
        self._last_led: int | None = None
        self._cursors: dict[str, float] = {}
        self._next_memo: dict[str, tuple[float, float]] = {}
        self._started_at: float | None = None
        self._stop = threading.Event()
        self._failed = False
        self._next_cleanup = 0.0
        #: The thread running :meth:`run` when started by :func:`start_embedded`.
        self.thread: threading.Thread | None = None

    # -- keys ----------------------------------------------------------------------

    def _key(self, kind: str, name: str, suffix: str = "") -> str:
        key = f"{self.prefix}{kind}-{name}{suffix}"
        if len(key) > 200:  # SQL backends index keys up to 255 characters
            digest = hashlib.sha1(name.encode(), usedforsecurity=False).hexdigest()
            key = f"{self.prefix}{kind}-{digest}{suffix}"
        return key

    def _leader_key(self, slot: int) -> str:
        return f"{self.prefix}leader-{slot}"

    # -- leases --------------------------------------------------------------------

    def _slot(self, now: float) -> int:
        return math.floor(now / self.lease_time)

    def _slot_start(self, slot: int) -> float:
        return slot * self.lease_time

    def _claim(self, slot: int, now: float) -> bool:
        value = json.dumps(
            {
                "token": self.token,
                "beat": self.name,
                "slot": slot,
                "until": self._slot_start(slot + 1),
            }
        ).encode()
        # The key only has to outlive its slot; the slot, not the ttl, bounds the lease.
        ttl = self._slot_start(slot + 1) - now + 2 * self.lease_time
        return self.app.backend.set_if_absent(self._leader_key(slot), value, ttl=ttl)

    def _maintain_lease(self, now: float) -> None:
        current = self._slot(now)
        had_current = current in self._owned
        self._owned = {slot for slot in self._owned if slot >= current}
        if (
            not had_current
            and now - self._slot_start(current) >= self._grace
            and self._claim(current, now)
        ):
            self._owned.add(current)
        if (
            current in self._owned
            and current + 1 not in self._owned
            and self._refused != current + 1
            and now >= self._slot_start(current + 1) - self._claim_lead
        ):
            if self._claim(current + 1, now):
                self._owned.add(current + 1)
            else:
                # Another beat has the next slot (its clock runs ahead): lead to the
                # end of this one, without asking again.
                self._refused = current + 1
                logger.info("beat %s hands over the lead after slot %d", self.name, current)

    def _holds_lease(self) -> bool:
        """Re-read the current slot's key: the fence before each send."""
        slot = self._slot(self._clock())
        if slot not in self._owned:
            return False
        raw = self.app.backend.get(self._leader_key(slot))
        if raw is None:
            return False
        try:
            return bool(json.loads(raw).get("token") == self.token)
        except ValueError:
            return False

    def is_leader(self) -> bool:
        """Whether this beat leads the current slot (as far as it knows)."""
        return self._slot(self._clock()) in self._owned

    def release(self) -> None:
        """Give up the slots this beat holds, so another beat takes over at once."""
        for slot in sorted(self._owned):
            key = self._leader_key(slot)
            try:
                raw = self.app.backend.get(key)
                if raw is not None and json.loads(raw).get("token") == self.token:
                    # Only this beat could have stored its token there; the slot key
                    # is never rewritten, so deleting it cannot drop another's lease.
                    self.app.backend.delete([key])
            except Exception as exc:
                logger.warning("beat could not release its lease: %s", redact(str(exc)))
        self._owned.clear()
        self._last_led = None

    # -- state ---------------------------------------------------------------------

    def _read_state(self, entry: Entry) -> dict[str, Any] | None:
        raw = self.app.backend.get(self._key("state", entry.name))
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            logger.warning("beat: ignoring unreadable state for entry %r", entry.name)
            return None
        return value if isinstance(value, dict) else None

    def _write_state(self, entry: Entry, due: float, task_id: str, sent_at: float) -> None:
        old = self._read_state(entry) or {}
        if float(old.get("last_scheduled") or 0) >= due:
            return  # a later run is already recorded (a late, stale send)
        state = {
            "entry": entry.name,
            "task": entry.task,
            "last_scheduled": due,
            "last_sent": sent_at,
            "sent_by": self.name,
            "task_id": task_id,
            "total_run_count": int(old.get("total_run_count") or 0) + 1,
        }
        self.app.backend.set(self._key("state", entry.name), json.dumps(state).encode())

    def _load_cursors(self, now: float) -> None:
        """A new term: start from the runs recorded by whichever beat led before."""
        self._cursors = {}
        for entry in self.entries:
            state = self._read_state(entry)
            last = state.get("last_scheduled") if state else None
            self._cursors[entry.name] = float(last) if last is not None else now

    # -- planning and sending --------------------------------------------------------

    def _next(self, entry: Entry, after: float) -> float:
        # Asked for the same cursor on every pass; a crontab takes a few ms to answer.
        cached = self._next_memo.get(entry.name)
        if cached is not None and cached[0] == after:
            return cached[1]
        when = datetime.datetime.fromtimestamp(after, _UTC)
        result = entry.schedule.next_after(when, self.tz).timestamp()
        self._next_memo[entry.name] = (after, result)
        return result

    def plan(self, entry: Entry, cursor: float, now: float) -> list[float]:
        """Scheduled times (Unix) to send for runs in ``(cursor, now]`` (see the
        module docstring for on-time and missed runs)."""
        first = self._next(entry, cursor)
        if first > now:
            return []
        cutoff = now - self.lease_time
        if self._started_at is not None:
            cutoff = max(cutoff, self._started_at)
        due = first if first > cutoff else self._next(entry, max(cursor, cutoff))
        runs: list[float] = []
        while due <= now and len(runs) < _MAX_RUNS_PER_PASS:
            runs.append(due)
            due = self._next(entry, due)
        if first <= cutoff and not runs and self.missed_policy == "run_once":
            at = datetime.datetime.fromtimestamp(cutoff, _UTC)
            latest = entry.schedule.last_at_or_before(at, self.tz)
            if latest is not None and latest.timestamp() > cursor:
                runs.append(latest.timestamp())
        if first <= cutoff and not runs and self.missed_policy == "skip":
            logger.info("beat: skipping missed runs of %r (beat_missed_policy=skip)", entry.name)
        return runs

    def _send(self, entry: Entry, due: float) -> bool:
        """Send the run of ``entry`` scheduled at ``due`` unless another beat did."""
        if not self._holds_lease():
            raise _LostLease
        scheduled = datetime.datetime.fromtimestamp(due, _UTC).isoformat()
        key = self._key("sent", entry.name, f"-{scheduled}")
        now = self._clock()
        period = max(self._next(entry, due) - due, 0.0)
        # Long enough that no beat can still consider this run when the key goes.
        ttl = max(2 * period, 20 * self.lease_time, 600.0)
        marker = json.dumps({"beat": self.name, "at": now}).encode()
        if not self.app.backend.set_if_absent(key, marker, ttl=ttl):
            logger.debug("beat: %r at %s was already sent", entry.name, scheduled)
            return False
        task_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"polyq-beat:{key}"))
        options = dict(entry.options)
        headers = {
            **dict(options.pop("headers", None) or {}),
            "beat-entry": entry.name,
            "beat-scheduled": scheduled,
            "beat-sender": self.name,
        }
        try:
            self.app.send_task(
                entry.task,
                list(entry.args),
                dict(entry.kwargs),
                task_id=task_id,
                headers=headers,
                **options,
            )
        except BaseException:
            # Not published: free the run so the next pass (or leader) can send it.
            self.app.backend.delete([key])
            raise
        logger.info(
            "Scheduler: Sending due task %s (%s) scheduled %s id=%s",
            entry.name,
            entry.task,
            scheduled,
            task_id,
        )
        self._write_state(entry, due, task_id, now)
        return True

    def _run_due(self, now: float) -> None:
        slot = self._slot(now)
        if self._last_led is None or self._last_led < slot - 1:
            logger.info("beat %s leads (lease %gs, slot %d)", self.name, self.lease_time, slot)
            self._load_cursors(now)
        self._last_led = slot
        for entry in self.entries:
            cursor = self._cursors.get(entry.name, now)
            for due in self.plan(entry, cursor, now):
                try:
                    self._send(entry, due)
                except _LostLease:
                    raise
                except Exception as exc:
                    self._failed = True
                    logger.error(
                        "beat: sending %r (%s) scheduled %s failed, will retry: %s",
                        entry.name,
                        entry.task,
                        datetime.datetime.fromtimestamp(due, _UTC).isoformat(),
                        redact(str(exc)),
                    )
                    break
                cursor = due
            else:
                if self._next(entry, cursor) <= now:
                    cursor = now  # missed runs the policy dropped
            # The cursor stays on a scheduled time, so the next run is computed
            # once per run rather than on every pass.
            self._cursors[entry.name] = cursor

    def _cleanup(self) -> None:
        """Delete expired keys (this beat's run keys, expired results) once an hour,
        as Celery's beat runs ``backend_cleanup``: stores without native expiry
        (SQL) would otherwise keep them until ``polyq db cleanup``."""
        if time.monotonic() < self._next_cleanup:
            return
        self._next_cleanup = time.monotonic() + _CLEANUP_EVERY
        try:
            removed = self.app.backend.cleanup()
        except Exception as exc:
            logger.warning("beat: backend cleanup failed: %s", redact(str(exc)))
            return
        if removed:
            logger.info("beat: deleted %d expired record(s) from the backend", removed)

    def tick(self) -> float:
        """One pass: keep the lease, send what is due; return seconds to sleep."""
        now = self._clock()
        if self._started_at is None:
            self._started_at = now
        self._failed = False
        self._maintain_lease(now)
        if self._slot(now) in self._owned:
            try:
                self._run_due(now)
                self._cleanup()
            except _LostLease:
                logger.warning("beat %s lost the lead; not sending", self.name)
                self._owned.clear()
                self._last_led = None
        return self._sleep_for(self._clock())

    def _sleep_for(self, now: float) -> float:
        current = self._slot(now)
        wake = now + self.max_interval
        if current in self._owned:
            last = max(self._owned)
            if self._refused == last + 1:
                wake = min(wake, self._slot_start(last + 1))  # the lead ends there
            else:
                wake = min(wake, self._slot_start(last + 1) - self._claim_lead)
            for entry in self.entries:
                wake = min(wake, self._next(entry, self._cursors.get(entry.name, now)))
        else:
            # Try again a grace into the next slot, or soon if the leader stepped down.
            wake = min(wake, self._slot_start(current + 1) + self._grace, now + self.lease_time / 4)
        delay = max(0.0, wake - now)
        if self._failed:  # a publish failed: retry it, but not in a busy loop
            delay = max(delay, min(1.0, self.lease_time / 4))
        return delay

    # -- running ---------------------------------------------------------------------

    def run(self) -> None:
        """Run until :meth:`stop`; backend or broker errors are logged and retried."""
        # Load the app's task modules: sending then applies each task's own
        # queue, priority and expiry defaults and task_routes, as .delay() does.
        self.app.finalize()
        if not self.entries:
            logger.warning("beat: beat_schedule is empty, nothing to send")
        logger.info(
            "beat %s ready: %d entr%s, lease %.3gs, missed runs: %s, backend %s, tz %s",
            self.name,
            len(self.entries),
            "y" if len(self.entries) == 1 else "ies",
            self.lease_time,
            self.missed_policy,
            redact(self.app.backend_url),
            self.tz,
        )
        pause = 0.1
        try:
            while not self._stop.is_set():
                try:
                    delay = self.tick()
                    pause = 0.1
                except Exception as exc:
                    logger.error("beat: %s (retrying in %.1fs)", redact(str(exc)), pause)
                    delay, pause = pause, min(pause * 2, self.lease_time / 2)
                self._stop.wait(delay)
        finally:
            self.release()
            logger.info("beat %s stopped", self.name)

    def stop(self) -> None:
        """Ask :meth:`run` to return (it releases the lease on its way out)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread started by :func:`start_embedded` to finish."""
        if self.thread is not None:
            self.thread.join(timeout)

    def status(self) -> list[EntryStatus]:
        """Every entry with its last run (from the backend) and its next run."""
        now = datetime.datetime.fromtimestamp(self._clock(), _UTC)
        out = []
        for entry in self.entries:
            state = self._read_state(entry) or {}

            def when(value: Any) -> datetime.datetime | None:
                return None if value is None else datetime.datetime.fromtimestamp(value, _UTC)

            out.append(
                EntryStatus(
                    name=entry.name,
                    task=entry.task,
                    schedule=entry.schedule.describe(),
                    last_scheduled=when(state.get("last_scheduled")),
                    last_sent=when(state.get("last_sent")),
                    sent_by=state.get("sent_by"),
                    task_id=state.get("task_id"),
                    total_run_count=int(state.get("total_run_count") or 0),
                    next_run=entry.schedule.next_after(now, self.tz),
                )
            )
        return out

    def leader(self) -> str | None:
        """The beat leading the current slot (``host:pid``), from the backend."""
        raw = self.app.backend.get(self._leader_key(self._slot(self._clock())))
        if raw is None:
            return None
        try:
            return str(json.loads(raw).get("beat"))
        except ValueError:
            return None


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


def start_embedded(app: Polyq, **options: Any) -> Beat:
    """Run a beat in a daemon thread of this process (``worker -B``); ``stop()`` it."""
    b = Beat(app, **options)
    thread = threading.Thread(target=b.run, name="polyq-beat", daemon=True)
    thread.start()
    b.thread = thread
    return b


def _fmt(value: datetime.datetime | None, tz: datetime.tzinfo) -> str:
    if value is None:
        return "never"
    return value.astimezone(tz).isoformat(sep=" ", timespec="seconds")


@click.command("beat")
@click.option("--list", "show_list", is_flag=True, help="show entries, last and next runs; exit")
@click.option("-l", "--loglevel", default="INFO", show_default=True)
@click.option("--max-interval", type=float, help="longest sleep between checks, seconds")
@click.option("--lease-time", type=float, help="leader lease, seconds (beat_lease_time)")
@click.option("-s", "--schedule", "schedule_file", hidden=True, help="Celery's; ignored")
@click.pass_obj
def beat(
    obj: Any,
    show_list: bool,
    loglevel: str,
    max_interval: float | None,
    lease_time: float | None,
    schedule_file: str | None,
) -> None:
    """Send periodic tasks (beat_schedule). Several beats may run: one leads."""
    app: Polyq = obj.app
    if schedule_file:
        click.echo(
            "polyq beat: -s/--schedule ignored: the state lives in the result backend", err=True
        )
    try:
        b = Beat(app, max_interval=max_interval, lease_time=lease_time)
        if show_list:
            _print_list(b)
            return
    except PolyqError as exc:
        raise click.ClickException(redact(str(exc))) from None
    from polyq.utils.log import setup_logging

    setup_logging(
        loglevel,
        app.conf.worker_log_format,
        app.conf.worker_task_log_format,
        app.conf.worker_hijack_root_logger,
    )
    click.echo(f"broker:  {redact(app.broker_url)}", err=True)
    click.echo(f"backend: {redact(app.backend_url)}", err=True)

    def on_signal(signum: int, frame: Any) -> None:
        b.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    b.run()


def _print_list(b: Beat) -> None:
    leader = b.leader()
    click.echo(f"leader:   {leader or 'none (no beat running)'}")
    click.echo(f"timezone: {b.tz}")
    rows: Sequence[EntryStatus] = b.status()
    if not rows:
        click.echo("beat_schedule is empty")
    for s in rows:
        click.echo(f"\n{s.name}  ->  {s.task}  [{s.schedule}]")
        last = _fmt(s.last_scheduled, b.tz)
        if s.last_sent is not None:
            last += f" (sent {_fmt(s.last_sent, b.tz)} by {s.sent_by}, id {s.task_id})"
        click.echo(f"  last run: {last}")
        click.echo(f"  next run: {_fmt(s.next_run, b.tz)}")
        click.echo(f"  runs:     {s.total_run_count}")
