"""The dashboard's pages, JSON API, actions, authentication and ``/metrics``.

In-process: a worker thread and the Flask app on one ``memory://`` broker whose
URL carries a password (which must never reach a page). Over HTTP: ``polyq
monitor`` as a subprocess next to a worker process on SQLite, its ``/metrics``
read by prometheus_client's text-format parser.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from polyq import Polyq
from polyq.monitor.web import Monitor
from polyq.testing import services
from polyq.testing.worker import start_worker
from tests.core.monitor import monapp
from tests.core.monitor.support import APP, ROOT, use_broker
from tests.core.monitor.support import start_worker as start_worker_process

SECRET = "s3cret-pw"
ACTION = {"X-Polyq-Action": "1"}


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Polyq, Monitor, Any]]:
    url = f"memory://admin:{SECRET}@dash-{uuid.uuid4().hex[:8]}"
    app = Polyq("dash", broker=url, backend=url, result_extended=True)

    @app.task(name="dash.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="dash.boom")
    def boom() -> None:
        raise ValueError("kaput")

    @app.task(name="dash.progress", bind=True)
    def progress(self: Any, steps: int) -> int:
        for i in range(steps):
            self.update_state(state="PROGRESS", meta={"done": i, "total": steps})
            time.sleep(0.15)
        return steps

    monitor = Monitor(app, sample_interval=0.2)
    monitor.start()
    with start_worker(app, concurrency=2, hostname="dash@%h", send_events=True) as worker:
        yield app, monitor, worker
    monitor.stop()
    app.close()


def get(client: Any, path: str) -> Any:
    response = client.get(path)
    assert response.status_code == 200, (path, response.status_code)
    return response.get_json() if path.startswith("/api/") else response.get_data(as_text=True)


def test_workers_tasks_and_details(setup: tuple[Polyq, Monitor, Any]) -> None:
    app, monitor, worker = setup
    client = monitor.flask.test_client()
    host = worker.hostname
    workers = wait_for(
        lambda: [w for w in get(client, "/api/workers") if w["alive"]], what="worker"
    )
    assert workers[0]["hostname"] == host and workers[0]["pool"] == "threads"
    ok = app.send_task("dash.add", (2, 3))
    bad = app.send_task("dash.boom")
    slow = app.send_task("dash.progress", (8,))
    assert ok.get(timeout=10) == 5
    # Progress from update_state shows while the task runs.
    seen = wait_for(
        lambda: [
            t for t in get(client, "/api/tasks") if t["uuid"] == slow.id and t.get("progress")
        ],
        what="progress meta",
    )
    assert seen[0]["backend_state"] == "PROGRESS" and seen[0]["progress"]["total"] == 8
    running = get(client, "/api/workers")[0]["active_tasks"]
    assert [t["uuid"] for t in running] == [slow.id]
    slow.get(timeout=10)

    def finished() -> dict[str, dict[str, Any]]:
        tasks = {t["uuid"]: t for t in get(client, "/api/tasks?limit=50")}
        done = {i: tasks[i] for i in (ok.id, bad.id, slow.id) if i in tasks}
        return (
            done
            if all(t["state"] in ("SUCCESS", "FAILURE") for t in done.values()) and len(done) == 3
            else {}
        )

    tasks = wait_for(finished, what="three finished tasks")
    assert tasks[ok.id]["state"] == "SUCCESS" and tasks[ok.id]["args"] == "[2, 3]"
    assert tasks[bad.id]["state"] == "FAILURE"
    assert [t["uuid"] for t in get(client, "/api/tasks?state=FAILURE")] == [bad.id]
    assert [t["uuid"] for t in get(client, "/api/tasks?name=dash.add")] == [ok.id]
    assert [t["uuid"] for t in get(client, f"/api/tasks?search={ok.id[:8]}")] == [ok.id]
    assert [t["uuid"] for t in get(client, f"/api/tasks?worker={host}&name=dash.boom")] == [bad.id]
    detail = get(client, f"/api/tasks/{bad.id}")
    assert "ValueError" in detail["traceback"] and "kaput" in detail["result"]
    assert get(client, f"/api/tasks/{ok.id}")["result"] == 5
    assert client.get("/api/tasks/no-such-task").status_code == 404
    assert "dash.add" in get(client, "/api/task-names")
    points = get(client, "/api/throughput?seconds=60&step=5")
    assert sum(p["succeeded"] for p in points) >= 2 and sum(p["failed"] for p in points) == 1
    queues = wait_for(lambda: get(client, "/api/queues"), what="queue samples")
    assert queues[0]["name"] == "celery" and queues[0]["series"]
    overview = get(client, "/api/overview")
    assert overview["workers_online"] == 1 and overview["tasks_by_state"]["SUCCESS"] >= 2


def test_pages_render_and_never_show_secrets(setup: tuple[Polyq, Monitor, Any]) -> None:
    _, monitor, _ = setup
    client = monitor.flask.test_client()
    for path in (
        "/",
        "/workers",
        "/tasks",
        "/tasks/abc",
        "/queues",
        "/api/capabilities",
        "/api/workers",
        "/api/overview",
        "/metrics",
        "/static/monitor.js",
    ):
        response = client.get(path)
        assert response.status_code == 200, path
        body = response.get_data(as_text=True)
        assert SECRET not in body, path
    page = client.get("/workers")
    assert "memory://admin:***@" in page.get_data(as_text=True)
    assert "script-src" not in page.headers["Content-Security-Policy"]  # default-src 'self'
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]


def test_actions_need_the_action_header(setup: tuple[Polyq, Monitor, Any]) -> None:
    app, monitor, worker = setup
    client = monitor.flask.test_client()
    later = app.send_task("dash.add", (1, 1), countdown=300)
    # A plain form post (what a cross-site page can send) is refused.
    assert client.post(f"/api/tasks/{later.id}/revoke", data={"x": "1"}).status_code == 400
    assert client.post(f"/api/tasks/{later.id}/revoke", json={}).status_code == 400
    response = client.post(f"/api/tasks/{later.id}/revoke", json={}, headers=ACTION)
    assert response.status_code == 200
    assert later.id in app.control.revoked()
    assert get(client, f"/api/tasks/{later.id}")["revoked"] is True
    host = worker.hostname
    replies = client.post(
        "/api/rate_limit", json={"task_name": "dash.add", "rate_limit": "50/s"}, headers=ACTION
    ).get_json()["replies"]
    assert "50/s" in replies[0][host]["ok"]
    grown = client.post(f"/api/workers/{host}/pool_grow", json={"n": 1}, headers=ACTION)
    assert grown.get_json()["replies"] == [{host: {"ok": "pool now 3"}}]
    shrunk = client.post(f"/api/workers/{host}/pool_shrink", json={"n": 1}, headers=ACTION)
    assert shrunk.get_json()["replies"] == [{host: {"ok": "pool now 2"}}]
    assert client.post(f"/api/workers/{host}/explode", json={}, headers=ACTION).status_code == 404
    # Arguments out of range are refused before anything is sent, with the reason.
    bad = client.post(f"/api/workers/{host}/pool_grow", json={"n": -100}, headers=ACTION)
    assert bad.status_code == 400 and "n: must be from 1 to 100" in bad.get_json()["error"]
    slow = {"task_name": "dash.add", "rate_limit": "1e-9/s"}
    bad = client.post("/api/rate_limit", json=slow, headers=ACTION)
    assert bad.status_code == 400 and "max_rate_interval" in bad.get_json()["error"]


def test_basic_auth_and_token(setup: tuple[Polyq, Monitor, Any]) -> None:
    app, _, _ = setup
    guarded = Monitor(app, basic_auth="alice:wonder", token="t0ken")
    client = guarded.flask.test_client()
    for path in ("/", "/api/workers", "/metrics"):
        denied = client.get(path)
        assert denied.status_code == 401 and "Basic" in denied.headers["WWW-Authenticate"]
    good = base64.b64encode(b"alice:wonder").decode()
    bad = base64.b64encode(b"alice:nope").decode()
    assert client.get("/metrics", headers={"Authorization": f"Basic {good}"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": f"Basic {bad}"}).status_code == 401
    assert client.get("/api/workers", headers={"Authorization": "Bearer t0ken"}).status_code == 200
    assert client.get("/api/workers", headers={"Authorization": "Bearer nope"}).status_code == 401


# -- over HTTP, from the CLI --------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.e2e
def test_metrics_endpoint_parses(tmp_path: Path) -> None:
    url = services.sqlite_url(tmp_path)
    use_broker(monapp.app, url)
    port = _free_port()
    env = {"POLYQ_BROKER_URL": url, "POLYQ_RESULT_BACKEND": url, "PYTHONPATH": ROOT}
    monitor = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "polyq",
            "-A",
            APP,
            "monitor",
            "--port",
            str(port),
            "--basic-auth",
            "prom:scrape",
        ],
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    worker = start_worker_process(url, "-n", "metrics@%h", "-P", "threads", "-c", "2", "-E")
    auth = {"Authorization": "Basic " + base64.b64encode(b"prom:scrape").decode()}

    def scrape() -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=auth)
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            return response.read().decode()

    try:
        wait_for(lambda: _up(port), what="the monitor to listen")
        results = [monapp.add.delay(i, i) for i in range(5)]
        [r.get(timeout=15) for r in results]
        monapp.boom.delay("x").get(timeout=15, propagate=False)

        def parsed() -> dict[str, Any]:
            families = {f.name: f for f in text_string_to_metric_families(scrape())}
            samples = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in families.values()
                for s in f.samples
            }
            add_ok = samples.get(
                (
                    "polyq_tasks_total",
                    (("name", "tests.core.monitor.monapp.add"), ("state", "SUCCESS")),
                )
            )
            boom_failed = samples.get(
                (
                    "polyq_tasks_total",
                    (("name", "tests.core.monitor.monapp.boom"), ("state", "FAILURE")),
                )
            )
            online = samples.get(("polyq_workers_online", ()))
            return samples if add_ok == 5 and boom_failed == 1 and online else {}

        samples = wait_for(parsed, timeout=15, what="metrics with 5 successes")
        assert (
            samples[
                ("polyq_task_runtime_seconds_count", (("name", "tests.core.monitor.monapp.add"),))
            ]
            == 5
        )
        assert ("polyq_queue_depth", (("queue", "celery"),)) in samples
        assert samples[("polyq_workers_online", ())] == 1
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert denied.value.code == 401
        outside = _outside_address()
        if outside is not None:  # bound to loopback only
            assert not _up(port, outside)
    finally:
        worker.stop()
        monitor.terminate()
        try:
            monitor.wait(timeout=10)
        except subprocess.TimeoutExpired:
            monitor.kill()
            monitor.wait()
        assert monitor.stderr is not None
        monitor.stderr.close()
        monapp.app.close()


def _outside_address() -> str | None:
    """This machine's non-loopback address, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") else address


def _up(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
