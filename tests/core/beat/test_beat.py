"""The scheduler's logic in one process on memory://, with a simulated clock.

Each simulated beat is ticked when its own ``tick()`` asked to be woken, so
leases, take-overs, pauses and missed runs play out in simulated time; the
process tests (test_beat_processes.py) do the same with real processes and
signals.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import uuid
from zoneinfo import ZoneInfo

import pytest

from polyq import Polyq
from polyq.beat import Beat, load_schedule, schedule_timezone, status
from polyq.exceptions import BrokerError, ConfigurationError
from polyq.schedules import crontab

T0 = 1_800_000_000.0  # a round Unix time (2027-01-15 08:00 UTC)


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_app(schedule, **conf):
    name = uuid.uuid4().hex[:8]
    app = Polyq(f"beat{name}", broker=f"memory://{name}", backend=f"memory://{name}")
    app.conf.beat_schedule = schedule
    app.conf.beat_key_prefix = f"t{name}-"
    for key, value in conf.items():
        app.conf[key] = value
    return app


def drain(app, queue="celery"):
    """(entry, scheduled, sender) of every message waiting in ``queue``."""
    out = []
    while True:
        got = app.transport.receive([queue], 100, 0.0)
        if not got:
            return out
        for d in got:
            out.append(
                (d.headers["beat-entry"], d.headers["beat-scheduled"], d.headers["beat-sender"])
            )
        app.transport.ack(got)


def simulate(clock, beats, until, paused=()):
    """Tick every live beat when it asked to be woken, until ``until``."""
    wake = {b.name: clock.t for b in beats}
    while True:
        live = [b for b in beats if b.name not in paused]
        if not live:
            clock.t = until
            return
        b = min(live, key=lambda b: wake[b.name])
        if wake[b.name] > until:
            clock.t = until
            return
        clock.t = max(clock.t, wake[b.name])
        wake[b.name] = clock.t + max(b.tick(), 0.001)
        for other in beats:  # a paused beat resumes where it slept
            if other.name in paused:
                wake[other.name] = max(wake[other.name], clock.t)


def beats_for(app, clock, n=2, **kw):
    return [Beat(app, clock=clock, name=f"beat{i}", lease_time=2.0, **kw) for i in range(n)]


def every_second(app):
    app.conf.beat_schedule = {"tick": {"task": "t.tick", "schedule": 1.0}}


def test_two_beats_send_each_run_once():
    app = make_app({"tick": {"task": "t.tick", "schedule": 1.0, "args": [1]}})
    clock = Clock(T0 + 0.3)
    a, b = beats_for(app, clock)
    simulate(clock, [a, b], T0 + 20.0)
    sent = drain(app)
    times = [s for _, s, _ in sent]
    assert len(times) == len(set(times))
    # Every second from the first run to the end, by a single leader.
    assert len(times) >= 18
    assert len({sender for *_, sender in sent}) == 1


def test_leader_death_is_taken_over_within_the_lease():
    app = make_app({})
    every_second(app)
    clock = Clock(T0 + 0.3)
    a, b = beats_for(app, clock)
    simulate(clock, [a, b], T0 + 6.0)
    leader = a if a.is_leader() else b
    other = b if leader is a else a
    died = clock.t
    # The leader dies (never ticks again); the other must lead within 2 leases.
    simulate(clock, [leader, other], T0 + 16.0, paused={leader.name})
    sent = drain(app)
    times = [s for _, s, _ in sent]
    assert len(times) == len(set(times))
    by_other = sorted(s for _, s, who in sent if who == other.name)
    first = datetime.datetime.fromisoformat(by_other[0]).timestamp()
    assert first - died <= 2 * 2.0 + 1.0
    # The run at each second after the take-over is sent.
    assert datetime.datetime.fromisoformat(by_other[-1]).timestamp() == T0 + 16.0


def test_stale_leader_does_not_send_after_waking():
    app = make_app({})
    every_second(app)
    clock = Clock(T0 + 0.3)
    a, b = beats_for(app, clock)
    simulate(clock, [a, b], T0 + 5.0)
    leader = a if a.is_leader() else b
    other = b if leader is a else a
    paused_at = clock.t
    simulate(clock, [leader, other], T0 + 12.0, paused={leader.name})  # SIGSTOP
    simulate(clock, [leader, other], T0 + 20.0)  # SIGCONT
    sent = drain(app)
    times = [s for _, s, _ in sent]
    assert len(times) == len(set(times)), "a run was sent twice"
    late = [
        s
        for _, s, who in sent
        if who == leader.name and datetime.datetime.fromisoformat(s).timestamp() > paused_at
    ]
    assert late == []
    assert other.is_leader() and not leader.is_leader()


def test_two_leaders_at_once_still_send_each_run_once(monkeypatch):
    # Whatever the leases do (skewed clocks, a pause between fence and send),
    # the per-(entry, scheduled time) key is the last guard.
    app = make_app({})
    every_second(app)
    clock = Clock(T0 + 0.5)
    a, b = beats_for(app, clock)
    for beat in (a, b):
        monkeypatch.setattr(beat, "_holds_lease", lambda: True)
    entry = a.entries[0]
    results = [a._send(entry, T0), b._send(entry, T0), b._send(entry, T0 + 1)]
    assert results == [True, False, True]
    assert sorted(s for _, s, _ in drain(app)) == [
        datetime.datetime.fromtimestamp(T0, datetime.UTC).isoformat(),
        datetime.datetime.fromtimestamp(T0 + 1, datetime.UTC).isoformat(),
    ]


def test_deterministic_task_id_and_options():
    app = make_app(
        {
            "ping": {
                "task": "t.ping",
                "schedule": 5,
                "args": (1, 2),
                "kwargs": {"x": 3},
                "options": {"queue": "pings", "priority": 7, "expires": 30},
            }
        }
    )
    clock = Clock(T0 + 0.5)
    (a,) = beats_for(app, clock, n=1)
    simulate(clock, [a], T0 + 5.5)
    got = app.transport.receive(["pings"], 10, 0.0)
    assert len(got) == 1
    d = got[0]
    assert d.priority == 7
    assert d.headers["task"] == "t.ping"
    assert d.headers["expires"]
    assert (
        d.headers["beat-scheduled"]
        == datetime.datetime.fromtimestamp(T0 + 5, datetime.UTC).isoformat()
    )
    (st,) = a.status()
    assert st.task_id == d.headers["id"]
    assert st.total_run_count == 1
    assert st.last_scheduled == datetime.datetime.fromtimestamp(T0 + 5, datetime.UTC)
    assert st.next_run is not None
    snapshot = status(app)
    assert snapshot["entries"][0]["task_id"] == d.headers["id"]
    json.dumps(snapshot)


@pytest.mark.parametrize(("policy", "expected"), [("run_once", 1), ("skip", 0)])
def test_missed_runs_policy(policy, expected):
    app = make_app({"hourly": {"task": "t.h", "schedule": crontab(minute=0)}})
    clock = Clock(T0 + 60)
    (a,) = beats_for(app, clock, n=1, missed_policy=policy)
    simulate(clock, [a], T0 + 120)  # a new entry: nothing due before the next hour
    assert drain(app) == []
    # State says the last run was 5 hours ago; every beat was down since.
    key = a._key("state", "hourly")
    app.backend.set(key, json.dumps({"last_scheduled": T0 - 5 * 3600}).encode())
    clock.t = T0 + 1800
    (b,) = [Beat(app, clock=clock, name="late", lease_time=2.0, missed_policy=policy)]
    simulate(clock, [b], T0 + 1900)
    sent = drain(app)
    assert len(sent) == expected
    if expected:
        assert sent[0][1] == datetime.datetime.fromtimestamp(T0, datetime.UTC).isoformat()
    # Then back to normal: the next hour runs once.
    simulate(clock, [b], T0 + 3600 + 10)
    assert [s for _, s, _ in drain(app)] == [
        datetime.datetime.fromtimestamp(T0 + 3600, datetime.UTC).isoformat()
    ]


def test_new_entry_starts_with_its_next_run():
    app = make_app({"hourly": {"task": "t.h", "schedule": crontab(minute=0)}})
    clock = Clock(T0 + 1800)
    (a,) = beats_for(app, clock, n=1)
    simulate(clock, [a], T0 + 3000)
    assert drain(app) == []


def test_failed_publish_releases_the_run_and_retries(monkeypatch):
    app = make_app({})
    every_second(app)
    clock = Clock(T0 + 0.5)
    (a,) = beats_for(app, clock, n=1)
    real = app.send_task
    calls = []

    def flaky(*args, **kwargs):
        calls.append(kwargs["headers"]["beat-scheduled"])
        if len(calls) == 1:
            raise BrokerError("broker down")
        return real(*args, **kwargs)

    monkeypatch.setattr(app, "send_task", flaky)
    simulate(clock, [a], T0 + 3.5)
    sent = [s for _, s, _ in drain(app)]
    assert calls[0] == calls[1]  # the failed run was tried again
    assert sorted(sent) == sorted(set(sent))
    assert calls[0] in sent


def test_crontab_in_paris_through_spring_forward():
    # 2026-03-29 02:30 does not exist in Paris: it runs once at 03:00 CEST.
    paris = ZoneInfo("Europe/Paris")
    app = make_app(
        {"night": {"task": "t.n", "schedule": crontab(minute=30, hour=2)}}, timezone="Europe/Paris"
    )
    start = datetime.datetime(2026, 3, 28, 12, 0, tzinfo=paris).timestamp()
    clock = Clock(start)
    (a,) = [Beat(app, clock=clock, name="b", lease_time=600.0, max_interval=600.0)]
    simulate(clock, [a], start + 2 * 86400)
    sent = [datetime.datetime.fromisoformat(s).astimezone(paris) for _, s, _ in drain(app)]
    assert [t.isoformat(timespec="minutes") for t in sent] == [
        "2026-03-29T03:00+02:00",
        "2026-03-30T02:30+02:00",
    ]


def test_graceful_stop_hands_over_quickly():
    app = make_app({})
    every_second(app)
    clock = Clock(T0 + 0.3)
    a, b = beats_for(app, clock)
    simulate(clock, [a, b], T0 + 4.0)
    leader = a if a.is_leader() else b
    other = b if leader is a else a
    leader.release()
    stopped = clock.t
    simulate(clock, [other], T0 + 5.0)
    assert other.is_leader()
    assert clock.t - stopped <= 2.0 / 4 + 0.5


def test_schedule_validation_names_the_entry():
    with pytest.raises(ConfigurationError, match=r"beat_schedule\['x'\]: 'schedule' is missing"):
        load_schedule({"x": {"task": "t"}})
    with pytest.raises(ConfigurationError, match="'task' must be"):
        load_schedule({"x": {"schedule": 1}})
    with pytest.raises(ConfigurationError, match="unsupported option"):
        load_schedule({"x": {"task": "t", "schedule": 1, "options": {"exchange": "e"}}})
    with pytest.raises(ConfigurationError, match="unknown key"):
        load_schedule({"x": {"task": "t", "schedule": 1, "relative": True}})
    with pytest.raises(ConfigurationError, match="crontab"):
        load_schedule({"x": {"task": "t", "schedule": "daily"}})
    with pytest.raises(ConfigurationError, match="beat_missed_policy"):
        Beat(make_app({}), missed_policy="all")


def test_schedule_timezone_rules():
    app = make_app({})
    assert schedule_timezone(app) == ZoneInfo("UTC")
    app.conf.timezone = "Europe/Paris"
    assert schedule_timezone(app) == ZoneInfo("Europe/Paris")
    app.conf.timezone = "Mars/Olympus"
    with pytest.raises(ConfigurationError, match="IANA"):
        schedule_timezone(app)


def _backend(kind, tmp_path):
    from polyq.testing import services

    if kind == "sqlite":
        return services.sqlite_url(tmp_path)
    if kind in ("postgres", "mysql"):
        # Tables of its own on the shared server, dropped afterwards.
        url = services.postgres_url() if kind == "postgres" else services.mysql_url()
        return f"{url}{'&' if '?' in url else '?'}table_prefix=bt{uuid.uuid4().hex[:8]}_"
    return {
        "redis": services.redis_url,
        "postgres": services.postgres_url,
        "mysql": services.mysql_url,
        "dynamodb": services.dynamodb_url,
    }[kind]()


@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgres", "mysql", "dynamodb"])
def test_leases_on_real_backends(kind, tmp_path):
    """Three beats, each with its own connection to a real backend, in simulated
    time: a leader is elected, pauses, dies; every run is sent at most once."""
    url = _backend(kind, tmp_path)
    tag = uuid.uuid4().hex[:8]
    apps = []
    for _ in range(3):
        app = Polyq(f"beat{tag}", broker=f"memory://{tag}", backend=url)
        app.conf.beat_schedule = {"tick": {"task": "t.tick", "schedule": 1.0}}
        app.conf.beat_key_prefix = f"t{tag}-"
        apps.append(app)
    clock = Clock(T0 + 0.3)
    beats = [Beat(app, clock=clock, name=f"b{i}", lease_time=2.0) for i, app in enumerate(apps)]
    try:
        simulate(clock, beats, T0 + 4.0)
        (first,) = [b for b in beats if b.is_leader()]
        simulate(clock, beats, T0 + 9.0, paused={first.name})
        (second,) = [b for b in beats if b.is_leader()]
        assert second is not first
        simulate(clock, beats, T0 + 12.0)  # the paused one wakes up as a follower
        assert second.is_leader() and not first.is_leader()
        simulate(clock, beats, T0 + 18.0, paused={second.name})  # the leader dies
        assert sum(b.is_leader() for b in beats if b is not second) == 1
        sent = drain(apps[0])
        times = [s for _, s, _ in sent]
        assert len(times) == len(set(times))
        assert len(times) >= 18 - 2 * 2 * 2
        assert len({who for *_, who in sent}) >= 2  # the lead changed hands
    finally:
        for app in apps:
            with contextlib.suppress(Exception):
                app.backend.delete(app.backend.keys(f"t{tag}-", 10000))
        if "table_prefix=" in url:
            from polyq.registry import create_transport

            apps[0].backend.drop_schema()
            with create_transport(url) as transport:  # drops the shared <prefix>meta
                transport.drop_schema()
        for app in apps:
            app.close()


def test_leader_refused_the_next_slot_does_not_spin():
    # Another beat (clock ahead) took the next slot first: the leader leads to
    # the end of its slot, sleeping, and then follows.
    app = make_app({"daily": {"task": "t.d", "schedule": crontab(minute=0, hour=0)}})
    clock = Clock(T0 + 0.5)
    a, b = beats_for(app, clock)
    a.tick()
    assert a.is_leader()
    slot = a._slot(clock.t)
    assert b._claim(slot + 1, clock.t)
    clock.t = a._slot_start(slot + 1) - 0.3  # in a's claim window
    delay = a.tick()
    assert delay == pytest.approx(0.3, abs=0.01)
    assert a.tick() == pytest.approx(0.3, abs=0.01)
    clock.t += 0.3
    a.tick()
    assert not a.is_leader()


def test_add_periodic_task_like_celery():
    from polyq.beat import add_periodic_task

    app = make_app({})

    @app.task
    def add(x, y):
        return x + y

    name = add_periodic_task(app, 10.0, add.s(2, 3).set(queue="math"), name="add every 10")
    assert name == "add every 10"
    unnamed = add_periodic_task(app, crontab(minute=0), add.s(1), kwargs={"y": 4}, priority=5)
    assert unnamed == f"{add.name}(1, y=4)"
    schedule = app.conf.beat_schedule
    assert schedule["add every 10"]["args"] == [2, 3]
    assert schedule["add every 10"]["options"] == {"queue": "math"}
    assert schedule[unnamed]["options"] == {"priority": 5}
    assert [e.name for e in load_schedule(schedule)] == ["add every 10", unnamed]
    with pytest.raises(ConfigurationError, match="cannot be scheduled"):
        from polyq import chain

        add_periodic_task(app, 10, chain(add.s(1, 1), add.s(2)))
    with pytest.raises(ConfigurationError, match="unsupported option"):
        add_periodic_task(app, 10, add.s(1, 1), link=add.s(3))


def test_leader_paused_inside_a_send_sends_that_run_once_late():
    # The documented limit: a leader paused between its fence check and the
    # publish publishes that one run late, and nobody sends it a second time.
    import threading

    tag = uuid.uuid4().hex[:8]
    apps = []
    for _ in range(2):
        app = Polyq(f"beat{tag}", broker=f"memory://{tag}", backend=f"memory://{tag}")
        app.conf.beat_schedule = {"tick": {"task": "t.tick", "schedule": 1.0}}
        app.conf.beat_key_prefix = f"t{tag}-"
        apps.append(app)
    clock = Clock(T0 + 0.5)
    a = Beat(apps[0], clock=clock, name="a", lease_time=2.0)
    b = Beat(apps[1], clock=clock, name="b", lease_time=2.0)
    a.tick()
    assert a.is_leader()
    b.tick()
    entered, resume = threading.Event(), threading.Event()
    real = apps[0].send_task

    def stalled(*args, **kwargs):
        entered.set()
        resume.wait(10)
        return real(*args, **kwargs)

    apps[0].send_task = stalled  # type: ignore[method-assign]
    clock.t = T0 + 1.0  # the run at T0 + 1 is due; a takes its key and stalls
    paused = threading.Thread(target=a.tick)
    paused.start()
    assert entered.wait(5)
    simulate(clock, [b], T0 + 8.0)  # meanwhile b takes over and runs
    assert b.is_leader()
    resume.set()
    paused.join(5)
    simulate(clock, [a, b], T0 + 10.0)
    sent = drain(apps[0])
    times = [s for _, s, _ in sent]
    assert len(times) == len(set(times))
    late = datetime.datetime.fromtimestamp(T0 + 1.0, datetime.UTC).isoformat()
    assert [who for _, s, who in sent if s == late] == ["a"]
    assert all(who == "b" for _, s, who in sent if s != late)
