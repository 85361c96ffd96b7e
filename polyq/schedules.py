"""Schedules for periodic tasks: fixed intervals and ``crontab`` (Celery's names).

A schedule answers two questions about instants (timezone-aware ``datetime``):
:meth:`BaseSchedule.next_after` (the first run strictly after a time) and
:meth:`BaseSchedule.last_at_or_before` (the latest run at or before a time). The
beat (:mod:`polyq.beat`) builds everything else on these two, and every beat
process computes the same instants from the same configuration, without talking
to the others: that is what lets beats deduplicate a run by (entry, scheduled
time).

Intervals
---------
``schedule(run_every)`` (or a plain number of seconds, or a ``timedelta``, in
``beat_schedule``) runs at the multiples of the interval counted from the Unix
epoch, in UTC: ``timedelta(hours=1)`` runs at the top of every UTC hour, ``30``
at :00 and :30 of every minute. Counting from a fixed origin instead of "the
last run" makes the run times identical in every beat process, survives a lost
state, and is immune to daylight-saving changes (intervals count in UTC).

Crontab
-------
``crontab(minute, hour, day_of_week, day_of_month, month_of_year)`` with cron's
syntax in each field: ``*``, ``5``, ``1-5``, ``*/15``, ``10-50/10``, ``1,3,5``,
names for days (``mon``, ``sunday``; 0 or 7 is Sunday) and months (``jan``),
ranges that wrap (``fri-mon``); or an int or a collection of ints. The times are
wall-clock times in the app's ``timezone``. As in Celery, ``day_of_month`` and
``day_of_week`` must *both* match (``day_of_month="1-7", day_of_week="mon"`` is
the first Monday of the month), unlike Vixie cron, which ORs them.

Daylight saving follows cron's rule (ISC/Vixie cron): a *fixed-time* job — one
whose minute and hour fields do not start with ``*`` — scheduled in the hour
that is skipped when clocks go forward runs once, right after the jump; one
scheduled in the hour that repeats when clocks go back runs once, the first
time. A *wildcard* job (``minute="*/15"``, ``hour="*"``) follows elapsed time:
nothing to catch up after the jump, and it runs in both passes of the repeated
hour.
"""

from __future__ import annotations

import abc
import datetime
import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["BaseSchedule", "crontab", "maybe_schedule", "schedule"]

_UTC = datetime.UTC
#: Zones never move their clocks by more than this (Lord Howe: 30 min; most: 1 h).
_MAX_SHIFT = datetime.timedelta(hours=3)
#: How far to look for a matching day (29 Feb on a given weekday recurs within 28 years).
_MAX_DAYS = 366 * 29


class BaseSchedule(abc.ABC):
    """When a periodic task runs; implement both methods for a custom schedule."""

    @abc.abstractmethod
    def next_after(self, after: datetime.datetime, tz: datetime.tzinfo) -> datetime.datetime:
        """The first run strictly after ``after`` (aware), as an aware UTC datetime.

        ``tz`` is the app's schedule timezone (wall-clock schedules use it).
        """

    @abc.abstractmethod
    def last_at_or_before(
        self, at: datetime.datetime, tz: datetime.tzinfo
    ) -> datetime.datetime | None:
        """The latest run at or before ``at`` (aware), in UTC; ``None`` if none."""

    def describe(self) -> str:
        """A short human description for ``polyq beat --list``."""
        return repr(self)


class schedule(BaseSchedule):  # lower case: Celery's name
    """Run every ``run_every`` (seconds or ``timedelta``), aligned on the Unix epoch in UTC."""

    def __init__(self, run_every: float | datetime.timedelta) -> None:
        seconds = (
            run_every.total_seconds()
            if isinstance(run_every, datetime.timedelta)
            else float(run_every)
        )
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"an interval must be a positive number of seconds, not {run_every!r}")
        #: The interval in seconds.
        self.seconds = seconds

    @property
    def run_every(self) -> datetime.timedelta:
        """The interval as a ``timedelta`` (Celery's attribute)."""
        return datetime.timedelta(seconds=self.seconds)

    def next_after(self, after: datetime.datetime, tz: datetime.tzinfo) -> datetime.datetime:
        """The first multiple of the interval after ``after``."""
        ts = _timestamp(after)
        k = math.floor(ts / self.seconds) + 1
        while k * self.seconds <= ts:  # float rounding
            k += 1
        return _from_timestamp(k * self.seconds)

    def last_at_or_before(self, at: datetime.datetime, tz: datetime.tzinfo) -> datetime.datetime:
        """The latest multiple of the interval at or before ``at``."""
        ts = _timestamp(at)
        k = math.floor(ts / self.seconds)
        while k * self.seconds > ts:
            k -= 1
        return _from_timestamp(k * self.seconds)

    def describe(self) -> str:
        """``every 30s`` style."""
        return f"every {self.seconds:g}s"

    def __repr__(self) -> str:
        return f"<schedule: every {self.seconds:g}s>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, schedule) and other.seconds == self.seconds

    def __hash__(self) -> int:
        return hash(("schedule", self.seconds))


_DAY_NAMES = {
    name: number
    for number, names in enumerate(
        [
            ("sun", "sunday"),
            ("mon", "monday"),
            ("tue", "tues", "tuesday"),
            ("wed", "wednesday"),
            ("thu", "thur", "thurs", "thursday"),
            ("fri", "friday"),
            ("sat", "saturday"),
        ]
    )
    for name in names
}
_MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
        start=1,
    )
}
_PART = re.compile(r"^(?P<range>\*|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>\d+))?$")


class _Field:
    """One parsed crontab field: the values it matches and whether it was a wildcard."""

    def __init__(
        self,
        what: str,
        spec: Any,
        low: int,
        high: int,
        names: dict[str, int] | None = None,
        sunday_is_7: bool = False,
    ) -> None:
        self.what = what
        self.low = low
        self.high = high
        self.names = names or {}
        self.sunday_is_7 = sunday_is_7
        self.spec = spec
        if isinstance(spec, bool):
            raise self._error("a bool is not a crontab value")
        if isinstance(spec, int):
            self.star = False
            self.values = frozenset([self._check(spec)])
        elif isinstance(spec, str):
            text = spec.strip().lower()
            self.star = text.startswith("*")
            self.values = frozenset(self._parse(text))
        elif isinstance(spec, Iterable):
            items = list(spec)
            values: set[int] = set()
            for item in items:
                if isinstance(item, bool) or not isinstance(item, int | str):
                    raise self._error(f"{item!r} is not an int or a string")
                values |= {self._check(item)} if isinstance(item, int) else self._parse(item)
            self.star = False
            self.values = frozenset(values)
        else:
            raise self._error(f"expected a string, an int or a collection of ints, not {spec!r}")
        if not self.values:
            raise self._error("matches nothing")

    def _error(self, detail: str) -> ValueError:
        return ValueError(f"crontab {self.what}={self.spec!r}: {detail}")

    def _check(self, value: int) -> int:
        if self.sunday_is_7 and value == 7:
            return 0
        if not self.low <= value <= self.high:
            top = 7 if self.sunday_is_7 else self.high
            raise self._error(f"{value} is out of range {self.low}-{top}")
        return value

    def _number(self, token: str) -> int:
        if token.isdigit():
            return self._check(int(token))
        if token in self.names:
            return self.names[token]
        raise self._error(f"{token!r} is not a number or a known name")

    def _parse(self, text: str) -> set[int]:
        values: set[int] = set()
        for part in text.strip().lower().split(","):
            match = _PART.match(part.strip())
            if not match:
                raise self._error(f"cannot parse {part!r} (use *, N, A-B, */S or A-B/S)")
            step = int(match["step"]) if match["step"] else 1
            if step < 1:
                raise self._error("a step must be at least 1")
            span = match["range"]
            if span == "*":
                first, last = self.low, self.high
            elif "-" in span:
                start, end = span.split("-")
                first, last = self._number(start), self._number(end)
                if self.sunday_is_7 and end == "7":
                    last = 7  # "1-7" is Monday to Sunday, not an empty wrap
            else:
                first = self._number(span)
                last = self.high if match["step"] else first
            values.update(self._expand(first, last, step))
        return values

    def _expand(self, first: int, last: int, step: int) -> Iterator[int]:
        if last >= first:
            seq = list(range(first, last + 1))
        else:  # a range that wraps: fri-mon, 22-2
            seq = list(range(first, self.high + 1)) + list(range(self.low, last + 1))
        for value in seq[::step]:
            yield 0 if self.sunday_is_7 and value == 7 else value


class crontab(BaseSchedule):  # lower case: Celery's name
    """A cron-like schedule in the app's ``timezone`` (see the module docstring).

    ``crontab()`` runs every minute; ``crontab(minute=0, hour="*/3")`` every three
    hours; ``crontab(minute=30, hour=7, day_of_week="mon-fri")`` at 7:30 on weekdays.
    """

    def __init__(
        self,
        minute: Any = "*",
        hour: Any = "*",
        day_of_week: Any = "*",
        day_of_month: Any = "*",
        month_of_year: Any = "*",
    ) -> None:
        self._minute = _Field("minute", minute, 0, 59)
        self._hour = _Field("hour", hour, 0, 23)
        self._dow = _Field("day_of_week", day_of_week, 0, 6, _DAY_NAMES, sunday_is_7=True)
        self._dom = _Field("day_of_month", day_of_month, 1, 31)
        self._moy = _Field("month_of_year", month_of_year, 1, 12, _MONTH_NAMES)
        #: The matching values of each field (Celery exposes these sets too).
        self.minute = self._minute.values
        self.hour = self._hour.values
        self.day_of_week = self._dow.values
        self.day_of_month = self._dom.values
        self.month_of_year = self._moy.values
        if not any(
            day <= _days_in_month(m) for m in self.month_of_year for day in self.day_of_month
        ):
            raise ValueError(
                f"crontab day_of_month={day_of_month!r} month_of_year={month_of_year!r} "
                "never happens (no such day in those months)"
            )
        #: Cron's "fixed-time job": neither minute nor hour starts with ``*``.
        self.fixed_time = not (self._minute.star or self._hour.star)
        self._times = sorted((h, m) for h in self.hour for m in self.minute)

    @classmethod
    def from_string(cls, text: str) -> crontab:
        """Parse a five-field cron line: ``"*/5 9-17 * * mon-fri"`` (minute hour
        day-of-month month day-of-week, cron's order)."""
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(
                f"a crontab line has 5 fields (minute hour day-of-month month day-of-week), "
                f"not {len(fields)}: {text!r}"
            )
        minute, hour, dom, moy, dow = fields
        return cls(minute, hour, dow, dom, moy)

    # -- which days and times match ----------------------------------------------

    def _day_matches(self, day: datetime.date) -> bool:
        return (
            day.month in self.month_of_year
            and day.day in self.day_of_month
            and (day.weekday() + 1) % 7 in self.day_of_week
        )

    def _instant(self, naive: datetime.datetime, tz: datetime.tzinfo) -> list[datetime.datetime]:
        """The UTC instants at which local wall time ``naive`` fires (0, 1 or 2)."""
        first = naive.replace(tzinfo=tz, fold=0)
        utc0 = first.astimezone(_UTC)
        if utc0.astimezone(tz).replace(tzinfo=None) != naive:
            # Skipped by a jump forward: fixed-time jobs run once, right after it.
            return [_after_gap(naive, tz)] if self.fixed_time else []
        utc1 = naive.replace(tzinfo=tz, fold=1).astimezone(_UTC)
        if utc1 != utc0 and not self.fixed_time:
            return [utc0, utc1]  # a repeated wall time: wildcard jobs run in both passes
        return [utc0]

    def next_after(self, after: datetime.datetime, tz: datetime.tzinfo) -> datetime.datetime:
        """The first run strictly after ``after``."""
        after = _aware(after)
        local = after.astimezone(tz).replace(tzinfo=None)
        lo = local - _MAX_SHIFT  # earlier wall times cannot be after ``after``
        best: datetime.datetime | None = None
        best_naive = lo
        day = lo.date()
        for _ in range(_MAX_DAYS):
            if self._day_matches(day):
                for hour, minute in self._times:
                    naive = datetime.datetime(day.year, day.month, day.day, hour, minute)
                    if naive < lo:
                        continue
                    if best is not None and naive > best_naive + _MAX_SHIFT * 2:
                        return best
                    for t in self._instant(naive, tz):
                        if t > after and (best is None or t < best):
                            best, best_naive = t, naive
            day += datetime.timedelta(days=1)
        if best is not None:
            return best
        raise ValueError(f"{self!r} never runs after {after.isoformat()}")

    def last_at_or_before(
        self, at: datetime.datetime, tz: datetime.tzinfo
    ) -> datetime.datetime | None:
        """The latest run at or before ``at``."""
        at = _aware(at)
        local = at.astimezone(tz).replace(tzinfo=None)
        hi = local + _MAX_SHIFT  # later wall times cannot be at or before ``at``
        best: datetime.datetime | None = None
        best_naive = hi
        day = hi.date()
        for _ in range(_MAX_DAYS):
            if self._day_matches(day):
                for hour, minute in reversed(self._times):
                    naive = datetime.datetime(day.year, day.month, day.day, hour, minute)
                    if naive > hi:
                        continue
                    if best is not None and naive < best_naive - _MAX_SHIFT * 2:
                        return best
                    for t in self._instant(naive, tz):
                        if t <= at and (best is None or t > best):
                            best, best_naive = t, naive
            day -= datetime.timedelta(days=1)
        return best

    def describe(self) -> str:
        """The five cron fields (minute hour day-of-month month day-of-week)."""
        return " ".join(
            _field_text(f) for f in (self._minute, self._hour, self._dom, self._moy, self._dow)
        )

    def __repr__(self) -> str:
        return f"<crontab: {self.describe()}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, crontab) and (
            self.minute,
            self.hour,
            self.day_of_week,
            self.day_of_month,
            self.month_of_year,
            self.fixed_time,
        ) == (
            other.minute,
            other.hour,
            other.day_of_week,
            other.day_of_month,
            other.month_of_year,
            other.fixed_time,
        )

    def __hash__(self) -> int:
        return hash((self.minute, self.hour, self.day_of_week, self.day_of_month))


def maybe_schedule(value: Any) -> BaseSchedule:
    """A schedule from ``beat_schedule``'s ``schedule`` value: a schedule object, a
    number of seconds or a ``timedelta``."""
    if isinstance(value, BaseSchedule):
        return value
    if isinstance(value, datetime.timedelta) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    ):
        return schedule(value)
    raise TypeError(
        f"a schedule is a number of seconds, a timedelta, schedule(...) or crontab(...), "
        f"not {value!r}"
    )


def _field_text(field: _Field) -> str:
    if isinstance(field.spec, str):
        return field.spec.strip().lower().replace(" ", "")
    return ",".join(str(v) for v in sorted(field.values))


def _days_in_month(month: int) -> int:
    return 29 if month == 2 else 30 if month in (4, 6, 9, 11) else 31


def _aware(value: datetime.datetime) -> datetime.datetime:
    if value.tzinfo is None:
        raise ValueError(f"expected a timezone-aware datetime, not {value!r}")
    return value


def _timestamp(value: datetime.datetime) -> float:
    return _aware(value).timestamp()


def _from_timestamp(ts: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, _UTC)


def _after_gap(naive: datetime.datetime, tz: datetime.tzinfo) -> datetime.datetime:
    """The instant clocks jumped to, for a wall time skipped by that jump."""
    probe = naive.replace(second=0, microsecond=0)
    for _ in range(48 * 60):  # gaps are at most a day (Samoa, 2011)
        probe += datetime.timedelta(minutes=1)
        utc = probe.replace(tzinfo=tz).astimezone(_UTC)
        if utc.astimezone(tz).replace(tzinfo=None) == probe:
            return utc
    raise ValueError(f"no wall time after {naive} exists in {tz}")
