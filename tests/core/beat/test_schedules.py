"""Crontab parsing and next/previous run computation, including daylight saving."""

from __future__ import annotations

import datetime
from zoneinfo import ZoneInfo

import pytest

from polyq.schedules import crontab, maybe_schedule, schedule

UTC = datetime.UTC
NY = ZoneInfo("America/New_York")
PARIS = ZoneInfo("Europe/Paris")


def runs(sched, start, count, tz):
    """``count`` successive runs after ``start``, as local ISO strings with offsets."""
    out, t = [], start
    for _ in range(count):
        t = sched.next_after(t, tz)
        assert t.tzinfo is not None
        out.append(t.astimezone(tz).isoformat(timespec="minutes"))
    return out


# -- parsing ---------------------------------------------------------------------


def test_defaults_every_minute():
    c = crontab()
    assert c.minute == frozenset(range(60))
    assert c.hour == frozenset(range(24))
    assert c.day_of_week == frozenset(range(7))
    assert not c.fixed_time


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("*/15", {0, 15, 30, 45}),
        ("10-50/10", {10, 20, 30, 40, 50}),
        ("1,3, 5", {1, 3, 5}),
        ("5/20", {5, 25, 45}),
        (7, {7}),
        ([0, 30], {0, 30}),
        ({"5", "10-12"}, {5, 10, 11, 12}),
        ("58-2", {58, 59, 0, 1, 2}),
    ],
)
def test_minute_field(spec, expected):
    assert crontab(minute=spec).minute == frozenset(expected)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("mon-fri", {1, 2, 3, 4, 5}),
        ("sun", {0}),
        ("7", {0}),
        ("1-7", {0, 1, 2, 3, 4, 5, 6}),
        ("fri-mon", {5, 6, 0, 1}),
        ("Saturday,sunday", {6, 0}),
        ("*/2", {0, 2, 4, 6}),
    ],
)
def test_day_of_week_field(spec, expected):
    assert crontab(day_of_week=spec).day_of_week == frozenset(expected)


def test_month_names():
    assert crontab(month_of_year="jan,jul-sep").month_of_year == frozenset({1, 7, 8, 9})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"minute": 60}, "out of range 0-59"),
        ({"hour": "25"}, "out of range 0-23"),
        ({"minute": "*/0"}, "step"),
        ({"day_of_week": "funday"}, "not a number or a known name"),
        ({"minute": "1--2"}, "cannot parse"),
        ({"day_of_month": 0}, "out of range 1-31"),
        ({"day_of_month": 31, "month_of_year": "feb,apr"}, "never happens"),
        ({"minute": True}, "bool"),
        ({"minute": 1.5}, "expected a string"),
    ],
)
def test_bad_fields_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        crontab(**kwargs)


def test_from_string_uses_cron_field_order():
    c = crontab.from_string("*/5 9-17 1 jan mon-fri")
    assert c == crontab(
        minute="*/5", hour="9-17", day_of_month=1, month_of_year=1, day_of_week="mon-fri"
    )
    assert c.describe() == "*/5 9-17 1 jan mon-fri"
    with pytest.raises(ValueError, match="5 fields"):
        crontab.from_string("* * *")


def test_fixed_time_is_crons_rule():
    assert crontab(minute=30, hour=2).fixed_time
    assert not crontab(minute="*/15", hour=2).fixed_time
    assert not crontab(minute=0, hour="*").fixed_time
    assert not crontab(minute=0, hour="*/2").fixed_time


# -- next / previous run in UTC ----------------------------------------------------------


def test_next_after_is_strict_and_walks_days_months():
    c = crontab(minute=0, hour=12)
    t = datetime.datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    assert c.next_after(t, UTC) == datetime.datetime(2026, 2, 1, 12, 0, tzinfo=UTC)
    assert c.next_after(t - datetime.timedelta(seconds=1), UTC) == t
    assert c.last_at_or_before(t, UTC) == t
    assert c.last_at_or_before(t - datetime.timedelta(seconds=1), UTC) == t - datetime.timedelta(
        days=1
    )


def test_day_of_month_and_week_must_both_match():
    first_monday = crontab(minute=0, hour=9, day_of_month="1-7", day_of_week="mon")
    start = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    assert runs(first_monday, start, 3, UTC) == [
        "2026-01-05T09:00+00:00",
        "2026-02-02T09:00+00:00",
        "2026-03-02T09:00+00:00",
    ]


def test_leap_day_on_a_weekday_is_found_years_ahead():
    c = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week="mon")
    start = datetime.datetime(2026, 1, 1, tzinfo=UTC)
    assert c.next_after(start, UTC) == datetime.datetime(2044, 2, 29, tzinfo=UTC)
    assert c.last_at_or_before(start, UTC) == datetime.datetime(2016, 2, 29, tzinfo=UTC)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        crontab().next_after(datetime.datetime(2026, 1, 1), UTC)


# -- daylight saving (cron's rules) ----------------------------------------------------------


def test_fixed_job_in_skipped_hour_runs_once_after_the_jump_new_york():
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
    c = crontab(minute=30, hour=2)
    start = datetime.datetime(2026, 3, 7, 12, 0, tzinfo=NY)
    assert runs(c, start, 3, NY) == [
        "2026-03-08T03:00-04:00",  # once, right after the jump
        "2026-03-09T02:30-04:00",
        "2026-03-10T02:30-04:00",
    ]


def test_several_fixed_runs_in_the_skipped_hour_collapse_to_one_paris():
    # 2026-03-29: Paris jumps from 02:00 CET to 03:00 CEST.
    c = crontab(minute="0,20,40", hour=2)
    start = datetime.datetime(2026, 3, 28, 12, 0, tzinfo=PARIS)
    assert runs(c, start, 4, PARIS) == [
        "2026-03-29T03:00+02:00",
        "2026-03-30T02:00+02:00",
        "2026-03-30T02:20+02:00",
        "2026-03-30T02:40+02:00",
    ]


def test_fixed_job_in_repeated_hour_runs_once_new_york():
    # 2026-11-01: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    c = crontab(minute=30, hour=1)
    start = datetime.datetime(2026, 10, 31, 12, 0, tzinfo=NY)
    assert runs(c, start, 3, NY) == [
        "2026-11-01T01:30-04:00",  # the first pass only
        "2026-11-02T01:30-05:00",
        "2026-11-03T01:30-05:00",
    ]


def test_fixed_job_in_repeated_hour_runs_once_paris():
    # 2026-10-25: 03:00 CEST falls back to 02:00 CET; 02:15 happens twice.
    c = crontab(minute=15, hour=2)
    start = datetime.datetime(2026, 10, 24, 12, 0, tzinfo=PARIS)
    assert runs(c, start, 2, PARIS) == ["2026-10-25T02:15+02:00", "2026-10-26T02:15+01:00"]


def test_wildcard_job_follows_elapsed_time_across_both_changes():
    every_30 = crontab(minute="*/30")
    spring = datetime.datetime(2026, 3, 8, 1, 0, tzinfo=NY)
    assert runs(every_30, spring, 3, NY) == [
        "2026-03-08T01:30-05:00",
        "2026-03-08T03:00-04:00",  # 02:00 and 02:30 do not exist; nothing to catch up
        "2026-03-08T03:30-04:00",
    ]
    autumn = datetime.datetime(2026, 11, 1, 0, 40, tzinfo=NY)
    assert runs(every_30, autumn, 5, NY) == [
        "2026-11-01T01:00-04:00",
        "2026-11-01T01:30-04:00",
        "2026-11-01T01:00-05:00",  # the repeated hour runs again: real time goes on
        "2026-11-01T01:30-05:00",
        "2026-11-01T02:00-05:00",
    ]


def test_hourly_job_in_spring_gap_is_not_doubled():
    hourly = crontab(minute=0)
    start = datetime.datetime(2026, 3, 29, 0, 30, tzinfo=PARIS)
    assert runs(hourly, start, 3, PARIS) == [
        "2026-03-29T01:00+01:00",
        "2026-03-29T03:00+02:00",
        "2026-03-29T04:00+02:00",
    ]


def test_previous_run_across_dst_matches_next():
    c = crontab(minute=30, hour=2)
    after_jump = datetime.datetime(2026, 3, 8, 12, 0, tzinfo=NY)
    assert c.last_at_or_before(after_jump, NY) == datetime.datetime(2026, 3, 8, 3, 0, tzinfo=NY)
    repeat = crontab(minute=30, hour=1)
    later = datetime.datetime(2026, 11, 1, 12, 0, tzinfo=NY)
    # 01:30 EDT, the first pass (compared in UTC: PEP 495 makes ambiguous times unequal)
    first_pass = datetime.datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert repeat.last_at_or_before(later, NY) == first_pass


def test_every_run_in_a_dst_week_is_unique_and_ordered():
    c = crontab(minute="*/10")
    t = datetime.datetime(2026, 10, 31, 0, 0, tzinfo=PARIS)
    seen = []
    for _ in range(3 * 24 * 6):
        t = c.next_after(t, PARIS)
        seen.append(t)
    assert seen == sorted(set(seen))
    # 3 days of 10-minute runs plus the 6 of the repeated hour (elapsed time).
    span = seen[-1] - seen[0]
    assert span == datetime.timedelta(minutes=10) * (len(seen) - 1)


# -- intervals ------------------------------------------------------------------------


def test_interval_aligned_on_the_epoch_in_utc():
    s = schedule(datetime.timedelta(minutes=15))
    t = datetime.datetime(2026, 3, 8, 1, 50, tzinfo=NY)  # DST does not matter
    nxt = s.next_after(t, NY)
    assert nxt == datetime.datetime(2026, 3, 8, 7, 0, tzinfo=UTC)
    assert s.next_after(nxt, NY) - nxt == datetime.timedelta(minutes=15)
    assert s.last_at_or_before(nxt, NY) == nxt
    assert s.run_every == datetime.timedelta(minutes=15)


def test_fractional_interval():
    s = schedule(0.25)
    t = datetime.datetime(2026, 1, 1, 0, 0, 0, 100000, tzinfo=UTC)
    assert s.next_after(t, UTC) == datetime.datetime(2026, 1, 1, 0, 0, 0, 250000, tzinfo=UTC)


def test_maybe_schedule():
    assert maybe_schedule(30) == schedule(30.0)
    assert maybe_schedule(datetime.timedelta(seconds=5)) == schedule(5)
    c = crontab()
    assert maybe_schedule(c) is c
    with pytest.raises(TypeError, match="crontab"):
        maybe_schedule("every minute")
    with pytest.raises(ValueError, match="positive"):
        schedule(0)
