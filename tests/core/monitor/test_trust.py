"""The dashboard's trust boundaries (issue 17): what a request or an event may do.

Each test is a finding on the old dashboard (main 85de4c2) that it failed:

- any ``Host`` header was answered (a DNS-rebinding page reached the dashboard);
- bad query parameters answered 500, and ``/api/throughput?step=100000000`` ran for
  seconds holding the state lock;
- an id in a URL could name another route (``../workers/<name>/shutdown?x=``);
- 100,000 injected events grew the process without bound, and a ``/metrics`` scrape
  grew with them.

In-process: a worker thread and the Flask app on one ``memory://`` broker. The
revoke of a hostile id clicked in a real browser is in test_browser.py.
"""

from __future__ import annotations

import gc
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from polyq import Polyq
from polyq.events import State
from polyq.monitor.web import Monitor

ACTION = {"X-Polyq-Action": "1"}
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def setup() -> Iterator[tuple[Polyq, Monitor, Any]]:
    from polyq.testing.worker import start_worker

    url = f"memory://trust-{uuid.uuid4().hex[:8]}"
    app = Polyq("trust", broker=url, backend=url)

    @app.task(name="trust.add")
    def add(x: int, y: int) -> int:
        return x + y

    monitor = Monitor(app, sample_interval=0.2)
    monitor.start()
    with start_worker(app, concurrency=1, hostname="trust@%h", send_events=True) as worker:
        yield app, monitor, worker
    monitor.stop()
    app.close()


# -- Host header (DNS rebinding) --------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:5555", "localhost.evil.example", "127.0.0.1.nip.io", ""]
)
def test_a_foreign_host_header_is_refused(setup: tuple[Polyq, Monitor, Any], host: str) -> None:
    _, monitor, _ = setup
    client = monitor.flask.test_client()
    for path in ("/", "/api/workers", "/metrics"):
        response = client.get(path, headers={"Host": host})
        assert response.status_code == 400, (path, host)
        assert "--allowed-host" in response.get_data(as_text=True)
        assert (
            client.post(
                "/api/workers/w/shutdown", json={}, headers={**ACTION, "Host": host}
            ).status_code
            == 400
        )


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:5555", "127.0.0.1:5555", "[::1]:5555", "LOCALHOST:80"]
)
def test_loopback_host_names_are_answered(setup: tuple[Polyq, Monitor, Any], host: str) -> None:
    _, monitor, _ = setup
    assert (
        monitor.flask.test_client().get("/api/workers", headers={"Host": host}).status_code == 200
    )


def test_allowed_hosts_from_the_argument_and_the_setting(setup: tuple[Polyq, Monitor, Any]) -> None:
    app, _, _ = setup
    mon = Monitor(app, allowed_hosts=["dash.example.com", ".corp.example"])
    client = mon.flask.test_client()
    for host, status in [
        ("dash.example.com", 200),
        ("dash.example.com:443", 200),
        ("corp.example", 200),
        ("a.b.corp.example:8080", 200),
        ("evilcorp.example", 400),
        ("evil.example", 400),
        ("localhost:5555", 200),
    ]:
        assert client.get("/api/overview", headers={"Host": host}).status_code == status, host
    # A probe may name the pod's address: /healthz tells nothing and answers any Host.
    assert client.get("/healthz", headers={"Host": "10.1.2.3:5555"}).status_code == 200
    app.conf.monitor_allowed_hosts = ["from-settings.example"]
    try:
        configured = Monitor(app).flask.test_client()
        ok = configured.get("/api/overview", headers={"Host": "from-settings.example"})
        assert ok.status_code == 200
    finally:
        app.conf.monitor_allowed_hosts = []
    bound = Monitor(app)
    bound.allow_bind_address("0.0.0.0")
    bound.allow_bind_address("10.1.2.3")
    assert bound.flask.test_client().get("/", headers={"Host": "10.1.2.3:5555"}).status_code == 200
    assert "0.0.0.0" not in bound.allowed_hosts
    anything = Monitor(app, allowed_hosts=["*"]).flask.test_client()
    assert anything.get("/api/overview", headers={"Host": "any.example"}).status_code == 200


def test_exposing_the_dashboard_warns() -> None:
    from polyq.monitor.cli import exposure_warnings

    assert exposure_warnings("127.0.0.1", False, ("localhost",)) == []
    bare = exposure_warnings("0.0.0.0", False, ("localhost", "127.0.0.1", "::1"))
    assert len(bare) == 2
    assert "--basic-auth" in bare[0] and "--allowed-host" in bare[1]
    assert exposure_warnings("0.0.0.0", True, ("localhost", "dash.example.com")) == []
    assert "DNS-rebinding" in exposure_warnings("0.0.0.0", True, ("*",))[0]


# -- query parameters --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("/api/tasks?limit=abc", "limit"),
        ("/api/tasks?limit=0", "limit"),
        ("/api/tasks?limit=1000000", "limit"),
        ("/api/tasks?state=NOPE", "state"),
        ("/api/tasks?search=" + "x" * 300, "search"),
        ("/api/tasks?name=%00", "name"),
        ("/api/throughput?step=100000000", "step"),
        ("/api/throughput?step=0", "step"),
        ("/api/throughput?step=1.5", "step"),
        ("/api/throughput?seconds=abc", "seconds"),
        ("/api/throughput?seconds=100000000", "seconds"),
        ("/api/throughput?seconds=-5", "seconds"),
        ("/api/throughput?seconds=60&step=61", "step"),
    ],
)
def test_bad_query_parameters_get_400_naming_the_parameter(
    setup: tuple[Polyq, Monitor, Any], query: str, parameter: str
) -> None:
    _, monitor, _ = setup
    started = time.monotonic()
    response = monitor.flask.test_client().get(query)
    assert response.status_code == 400, (query, response.status_code)
    body = response.get_json()
    assert body["parameter"] == parameter and parameter in body["error"]
    assert time.monotonic() - started < 2.0  # the old step=100000000 took 7.9 s


def test_bad_action_bodies_get_400_naming_the_parameter(setup: tuple[Polyq, Monitor, Any]) -> None:
    _, monitor, worker = setup
    client = monitor.flask.test_client()
    host = worker.hostname
    for path, body, parameter in [
        (f"/api/workers/{host}/pool_grow", {"n": "abc"}, "n"),
        (f"/api/workers/{host}/pool_grow", {"n": 10**9}, "n"),
        ("/api/rate_limit", {"task_name": "trust.add", "rate_limit": "fast"}, "rate_limit"),
        ("/api/rate_limit", {"rate_limit": "1/s"}, "task_name"),
        ("/api/rate_limit", {"task_name": "trust.add", "destination": 5}, "destination"),
        ("/api/revoke", {"task_id": ["a"]}, "task_id"),
        ("/api/revoke", {"task_id": "a", "terminate": "yes"}, "terminate"),
        ("/api/revoke", [1, 2], "body"),
    ]:
        response = client.post(path, json=body, headers=ACTION)
        assert response.status_code == 400, (path, body)
        assert response.get_json()["parameter"] == parameter, (path, body)


def test_throughput_points_whatever_the_step() -> None:
    state = State(history=900)
    now = time.time()
    for ago in range(0, 600, 3):  # 200 successes over ten minutes
        state.event({"type": "task-succeeded", "uuid": f"t{ago}", "timestamp": now - ago})
    state.event({"type": "task-failed", "uuid": "f", "timestamp": now - 1})
    # Far outside the window: neither counted nor able to displace a second in it.
    state.event({"type": "task-failed", "uuid": "old", "timestamp": now - 10**7})
    state.event({"type": "task-failed", "uuid": "new", "timestamp": now + 10**7})
    for step in (1, 5, 60, 900):
        points = state.series(900, step)
        assert len(points) <= 900 // step + 2
        assert sum(p["succeeded"] for p in points) == 200
        assert sum(p["failed"] for p in points) == 1
    with pytest.raises(ValueError, match="step"):
        state.series(300, 10**8)


# -- ids in URLs -------------------------------------------------------------------------


def test_a_hostile_task_id_is_revoked_by_its_body_and_shuts_nothing_down(
    setup: tuple[Polyq, Monitor, Any],
) -> None:
    app, monitor, worker = setup
    client = monitor.flask.test_client()
    hostile = f"../workers/{worker.hostname}/shutdown?x="
    response = client.post("/api/revoke", json={"task_id": hostile}, headers=ACTION)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert hostile in app.control.revoked()
    assert app.control.ping(destination=[worker.hostname], timeout=2.0)


@pytest.mark.parametrize(
    ("method", "path", "parameter"),
    [
        ("get", "/api/tasks/%2E%2E", "task_id"),
        ("get", "/api/tasks/a%5Cb", "task_id"),
        ("get", "/api/tasks/a%3Fb", "task_id"),
        ("post", "/api/tasks/%2E%2E/revoke", "task_id"),
        ("post", "/api/tasks/x%23y/revoke", "task_id"),
        ("post", "/api/workers/%2E/shutdown", "hostname"),
        ("post", "/api/workers/a%5C..%5Cb/pool_grow", "hostname"),
    ],
)
def test_ids_with_path_characters_are_refused_in_urls(
    setup: tuple[Polyq, Monitor, Any], method: str, path: str, parameter: str
) -> None:
    _, monitor, _ = setup
    client = monitor.flask.test_client()
    response = getattr(client, method)(path, json={}, headers=ACTION)
    assert response.status_code == 400, (path, response.status_code)
    assert response.get_json()["parameter"] == parameter
    assert client.get("/tasks/%2E%2E").status_code == 400


def test_the_page_script_encodes_every_id_it_puts_in_a_url(
    setup: tuple[Polyq, Monitor, Any],
) -> None:
    _, monitor, _ = setup
    script = monitor.flask.test_client().get("/static/monitor.js").get_data(as_text=True)
    # Every template literal building a URL interpolates ids only through segment().
    for literal in re.findall(r"`(/[^`]*)`", script):
        for expression in re.findall(r"\$\{([^}]*)\}", literal):
            assert expression.startswith("segment(") or expression == "query", literal
    assert '"/api/revoke", { task_id: id' in script


# -- memory and /metrics under injected events ---------------------------------------------

N_EVENTS = 100_000


def hostile_events(n: int) -> Iterator[dict[str, Any]]:
    """What anyone able to publish on the event channel can send: every task, task
    name and worker new, 8 KiB arguments (each its own string, as decoded from JSON),
    timestamps anywhere in time."""
    now = time.time()
    big = "x" * 8192
    for i in range(n):
        kind = ("task-received", "task-succeeded", "worker-heartbeat")[i % 3]
        if kind == "worker-heartbeat":
            queues = [f"q{i}-{j}" for j in range(8)]
            yield {"type": kind, "hostname": f"w{i}@x", "timestamp": now, "queues": queues}
            continue
        yield {
            "type": kind,
            "uuid": f"id-{i}",
            "name": f"evil.task{i}",
            "hostname": f"w{i}@x",
            "timestamp": now + ((i * 7919) % 2_000_000) - 1_000_000,
            "runtime": 0.01,
            "args": f"{i:08d}{big}",
            "kwargs": f"{i:08d}{big}",
        }


def test_injected_events_keep_memory_bounded(setup: tuple[Polyq, Monitor, Any]) -> None:
    app, _, _ = setup
    monitor = Monitor(app)  # the defaults: 10,000 tasks, 5,000 workers, 1,000 names
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    for event in hostile_events(N_EVENTS):
        monitor.state.event(event)
    gc.collect()
    grown = (process.memory_info().rss - before) / MiB
    # The old code kept all of it: 221 MiB here, against 33 MiB now.
    assert grown < 96, f"{N_EVENTS} events grew the process by {grown:.0f} MiB"
    state = monitor.state
    assert len(state.tasks) == 10000 and len(state.workers) == 5000
    assert len(state.task_names()) <= 1000
    assert max(len(t.args or "") for t in state.tasks.values()) <= 1024


class _NotToBeRead(dict):  # type: ignore[type-arg]
    """Stands in for the tasks kept: reading it fails the test."""

    def _refuse(self, *args: Any) -> Any:
        raise AssertionError("the scrape read the tasks kept")

    __iter__ = values = items = keys = __len__ = _refuse  # type: ignore[assignment]


def test_a_scrape_reads_counters_not_the_history(setup: tuple[Polyq, Monitor, Any]) -> None:
    app, _, _ = setup
    monitor = Monitor(app)
    client = monitor.flask.test_client()
    events = hostile_events(N_EVENTS)
    sizes = []
    # Half the events already fill every bound (5,000 workers, 1,000 names).
    for batch in (N_EVENTS // 2, N_EVENTS // 2):
        for _ in range(batch):
            monitor.state.event(next(events))
        sizes.append(len(client.get("/metrics").get_data()))
    # Labels are capped, so the scrape is the same size after 50,000 or 100,000 events
    # (the old one grew with every new name: 22 MB of text after 50,000, 41 MB after 100,000).
    assert sizes[1] <= sizes[0] * 1.05, sizes
    kept = monitor.state.tasks
    monitor.state.tasks = _NotToBeRead()  # type: ignore[assignment]
    try:
        text = client.get("/metrics").get_data(as_text=True)
        overview = client.get("/api/overview").get_json()
    finally:
        monitor.state.tasks = kept
    assert 'polyq_tasks_total{name="(other)",state="SUCCESS"}' in text
    assert overview["tasks_by_state"] == {"RECEIVED": 5000, "SUCCESS": 5000}


# -- the command line ------------------------------------------------------------------------


def test_the_monitor_command_takes_hosts_and_bounds(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from click.testing import CliRunner

    from polyq.cli import main
    from polyq.testing import services
    from tests.core.monitor import monapp
    from tests.core.monitor.support import APP, use_broker

    served: dict[str, Any] = {}

    def serve(self: Monitor, host: str = "127.0.0.1", port: int = 5555) -> None:
        served.update(monitor=self, host=host)

    monkeypatch.setattr(Monitor, "serve", serve)
    use_broker(monapp.app, services.sqlite_url(tmp_path))
    try:
        args = ["-A", APP, "monitor", "--address", "0.0.0.0", "--allowed-host", "dash.example"]
        args += ["--allowed-host", ".corp.example", "--max-tasks", "50", "--max-workers", "7"]
        result = CliRunner().invoke(main, [*args, "--max-task-names", "9"])
        assert result.exit_code == 0, result.output
        monitor: Monitor = served["monitor"]
        assert {"dash.example", ".corp.example", "localhost"} <= set(monitor.allowed_hosts)
        state = monitor.state
        assert (state.max_tasks, state.max_workers, state.max_task_names) == (50, 7, 9)
        assert "without --basic-auth or --token" in result.output
        assert "no --allowed-host" not in result.output
        bare = CliRunner().invoke(main, ["-A", APP, "monitor", "--address", "0.0.0.0"])
        assert "no --allowed-host" in bare.output and "--basic-auth" in bare.output
        assert served["monitor"].state.max_tasks == 10000
        refused = CliRunner().invoke(main, ["-A", APP, "monitor", "--max-tasks", "0"])
        assert refused.exit_code != 0 and "--max-tasks" in refused.output
    finally:
        monapp.app.close()
    # The setting from the environment, comma-separated.
    monkeypatch.setenv("POLYQ_MONITOR_ALLOWED_HOSTS", "a.example, b.example:8080")
    app = Polyq("env", broker=f"memory://env-{uuid.uuid4().hex[:8]}")
    assert {"a.example", "b.example"} <= set(Monitor(app).allowed_hosts)
    app.close()
