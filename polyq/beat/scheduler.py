"""The beat scheduler: the loop that sends due runs while this beat holds the
leader lease (time-sliced, so two beats running at once send each run once).
How the lease, the fencing and missed runs work: ``docs/design/beat.md``."""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from polyq.beat.entries import Entry, EntryStatus, load_schedule, schedule_timezone
from polyq.exceptions import ConfigurationError
from polyq.url import redact

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = ["MISSED_POLICIES", "Beat", "start_embedded"]

logger = logging.getLogger("polyq.beat")

#: Values of ``beat_missed_policy``.
MISSED_POLICIES = ("run_once", "skip")
#: Most on-time runs of one entry sent in one pass (a 1 ms interval is a mistake).
_MAX_RUNS_PER_PASS = 1000
_UTC = datetime.UTC
#: Seconds between the leader's backend cleanups.
_CLEANUP_EVERY = 3600.0


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


def start_embedded(app: Polyq, **options: Any) -> Beat:
    """Run a beat in a daemon thread of this process (``worker -B``); ``stop()`` it."""
    b = Beat(app, **options)
    thread = threading.Thread(target=b.run, name="polyq-beat", daemon=True)
    thread.start()
    b.thread = thread
    return b
