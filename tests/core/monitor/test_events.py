"""Events: the State keeper, batching dispatcher and receiver on a real broker,
``task-sent``, worker events from a live worker, and the liveness probe."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from polyq import Polyq
from polyq.events import (
    EventDispatcher,
    EventReceiver,
    State,
    enable_sent_events,
)
from polyq.testing import services
from tests.core.monitor import monapp
from tests.core.monitor.support import start_worker, use_broker


def ev(type_: str, uuid: str = "t1", ts: float | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "type": type_,
        "uuid": uuid,
        "hostname": "w@h",
        "timestamp": ts or time.time(),
        **fields,
    }


# -- State ------------------------------------------------------------------------------


def test_state_follows_a_task_and_never_goes_backwards() -> None:
    state = State()
    now = time.time()
    state.event(ev("task-received", ts=now, name="add", args="[1, 2]", kwargs="{}"))
    state.event(ev("task-succeeded", ts=now + 0.2, runtime=0.15))
    state.event(ev("task-started", ts=now + 0.1))  # late: must not undo SUCCESS
    task = state.task("t1")
    assert task is not None
    assert (task.state, task.name, task.worker, task.runtime) == ("SUCCESS", "add", "w@h", 0.15)
    assert task.received == now and task.started == now + 0.1
    assert state.counts[("add", "SUCCESS")] == 1
    assert state.runtime_buckets["add"][-1] == 1
    assert state.runtime_buckets["add"][0] == 0  # 0.15 s is above the 5 ms bucket


def test_state_retry_reopens_and_filters_search() -> None:
    state = State()
    state.event(ev("task-received", "a", name="add", args="[1, 'needle']"))
    state.event(ev("task-retried", "a"))
    state.event(ev("task-received", "a", retries=1))
    assert state.task("a").state == "RECEIVED"  # type: ignore[union-attr]
    assert state.task("a").retries == 1  # type: ignore[union-attr]
    state.event(ev("task-received", "b", name="mul", args="[3]"))
    state.event(ev("task-failed", "b", runtime=0.01))
    assert [t["uuid"] for t in state.task_list(search="NEEDLE")] == ["a"]
    assert [t["uuid"] for t in state.task_list(state="failure")] == ["b"]
    assert [t["uuid"] for t in state.task_list(name="add")] == ["a"]
    assert [t["uuid"] for t in state.task_list(worker="w@h")] == ["b", "a"]  # newest first
    assert state.task_names() == ["add", "mul"]
    assert sum(p["failed"] for p in state.series(60, 5)) == 1


def test_state_keeps_the_newest_tasks_and_tracks_workers() -> None:
    state = State(max_tasks=3)
    for i in range(5):
        state.event(ev("task-received", f"t{i}", name="x"))
    assert list(state.tasks) == ["t2", "t3", "t4"]
    state.event(
        {
            "type": "worker-heartbeat",
            "hostname": "w1",
            "timestamp": time.time(),
            "freq": 2.0,
            "active": 1,
            "processed": 7,
            "queues": ["celery"],
            "pool": "threads",
        }
    )
    state.event(
        {"type": "worker-heartbeat", "hostname": "w2", "timestamp": time.time() - 60, "freq": 2.0}
    )
    workers = {w["hostname"]: w for w in state.worker_list()}
    assert workers["w1"]["alive"] and workers["w1"]["processed"] == 7
    assert not workers["w2"]["alive"]  # silent for 30 heartbeats
    state.event({"type": "worker-offline", "hostname": "w1", "timestamp": time.time()})
    assert not state.worker_list()[0]["alive"]


# -- dispatcher and receiver on a real broker -----------------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    from tests.core.monitor.support import broker_for

    url = broker_for(request.param, tmp_path)
    app = Polyq("events-test", broker=url, backend=url)
    yield app
    app.close()


def test_events_are_batched_and_flushed_on_close(app: Polyq) -> None:
    received: list[dict[str, Any]] = []
    with EventReceiver(app) as receiver:
        dispatcher = EventDispatcher(app, "bench@h", True, flush_interval=0.1)
        dispatcher.start(lambda: {"active": 0, "processed": 500})
        for i in range(500):
            dispatcher.send("task-succeeded", uuid=str(i), runtime=0.001)
        dispatcher.close()
        for event in receiver.events(timeout=10):
            received.append(event)
            if event["type"] == "worker-offline":
                break
    types = [e["type"] for e in received]
    assert types[0] == "worker-online" and types[-1] == "worker-offline"
    assert [e["uuid"] for e in received if e["type"] == "task-succeeded"] == [
        str(i) for i in range(500)
    ]
    assert received[-1]["processed"] == 500 and received[-1]["hostname"] == "bench@h"
    # 502 events in a few broadcasts, not 502.
    assert dispatcher.sent == 502 and dispatcher.broadcasts < 30


def test_disabled_dispatcher_sends_nothing(app: Polyq) -> None:
    dispatcher = EventDispatcher(app, "off@h", False)
    dispatcher.send("task-received", uuid="x")
    dispatcher.close()
    assert dispatcher.sent == 0 and dispatcher._thread is None


def test_task_sent_events_carry_args(app: Polyq) -> None:
    @app.task(name="events.echo")
    def echo(value: Any) -> Any:
        return value

    with EventReceiver(app) as receiver:
        stop = enable_sent_events(app, hostname="client@h")
        try:
            result = echo.apply_async(({"k": "v"},), countdown=60)
        finally:
            stop()
        event = next(receiver.events(timeout=10))
    assert event["type"] == "task-sent" and event["uuid"] == result.id
    assert event["name"] == "events.echo" and event["args"] == "[{'k': 'v'}]"
    assert event["eta"] and event["queue"] == "celery"


# -- a live worker's events --------------------------------------------------------------


def test_live_worker_events(tmp_path: Path) -> None:
    url = services.sqlite_url(tmp_path)
    use_broker(monapp.app, url)
    state = State()
    receiver = EventReceiver(monapp.app).open()
    listener = threading.Thread(target=receiver.capture, args=(state.event,), daemon=True)
    listener.start()
    worker = start_worker(url, "-n", "ev@%h", "-P", "threads", "-c", "2", "-E")
    try:
        ok = monapp.add.delay(2, 3)
        bad = monapp.boom.delay("kaput")
        assert ok.get(timeout=15) == 5
        bad.get(timeout=15, propagate=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done = state.task(bad.id)
            if done is not None and done.state == "FAILURE" and state.task(ok.id):
                break
            time.sleep(0.05)
        task = state.task(ok.id)
        assert task is not None and task.state == "SUCCESS" and task.args == "[2, 3]"
        assert task.runtime is not None and task.received and task.started
        assert state.task(bad.id).state == "FAILURE"  # type: ignore[union-attr]
        (info,) = state.worker_list()
        assert info["alive"] and info["pool"] == "threads" and info["concurrency"] == 2
        worker.stop()
        deadline = time.monotonic() + 10
        while not state.worker_list()[0]["offline"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state.worker_list()[0]["offline"] is True  # worker-offline sent on shutdown
    finally:
        worker.stop()
        receiver.close()
        listener.join(timeout=5)
        monapp.app.close()


# -- liveness --------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_liveness_file_and_endpoint(tmp_path: Path) -> None:
    url = services.sqlite_url(tmp_path)
    beat = tmp_path / "alive"
    port = _free_port()
    worker = start_worker(
        url,
        "-n",
        "live@%h",
        "-P",
        "threads",
        "-c",
        "1",
        "--heartbeat-file",
        str(beat),
        "--health-port",
        str(port),
    )
    try:
        deadline = time.monotonic() + 10
        while not beat.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.time() - beat.stat().st_mtime < 10
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            assert response.status == 200 and response.read() == b"ok"
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=5)
        assert info.value.code == 404
    finally:
        worker.stop()
