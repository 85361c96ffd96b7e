"""The embedded default under real load: several worker processes sharing one SQLite file."""

from __future__ import annotations

import collections
import itertools
import json
import sqlite3
import time
from pathlib import Path

import pytest

from polyq.testing.e2e_tasks import app, read_records, record, started
from polyq.testing.worker import WorkerProcess

pytestmark = [pytest.mark.slow, pytest.mark.sqlite]

E2E_APP = "polyq.testing.e2e_tasks"


@pytest.fixture
def sqlite_env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path / 'polyq.sqlite3'}"
    queue = "load"
    app.conf.update(
        broker_url=url,
        result_backend=url,
        task_default_queue=queue,
        broker_transport_options={"visibility_timeout": 2.0},
    )
    app.close()
    yield {
        "POLYQ_BROKER_URL": url,
        "POLYQ_RESULT_BACKEND": url,
        "POLYQ_TASK_DEFAULT_QUEUE": queue,
        "POLYQ_BROKER_TRANSPORT_OPTIONS": json.dumps({"visibility_timeout": 2.0}),
    }
    app.close()


def test_thousand_tasks_two_workers_each_once(sqlite_env: dict[str, str], tmp_path: Path) -> None:
    """1,000 tasks from one producer, two workers with -c 2: each ran once, both
    workers did a fair share, and executions overlapped in time.

    ``--prefetch-multiplier 1`` is the setting for an even split (as with Celery):
    with the default of 4, a worker that wins the SQLite write lock a few times in
    a row reserves more. With very short tasks the split still drifts towards 2:1,
    because SQLite's busy handler backs off for up to 100 ms while the other
    worker's processes take the lock; tasks of 50 ms keep the contention low."""
    path = str(tmp_path / "runs.jsonl")
    results = [record.delay(path, 0.05, i) for i in range(1000)]
    workers = [
        WorkerProcess(
            E2E_APP,
            ["-Q", "load", "-c", "2", "--prefetch-multiplier", "1", "-n", f"w{i}@%h"],
            env=sqlite_env,
        )
        for i in range(2)
    ]
    try:
        for w in workers:
            w.launch()  # both start together on the full queue
        for w in workers:
            w.wait_ready()
        pids = {w.pid: set(w.children()) for w in workers}
        assert [r.get(timeout=120) for r in results] == list(range(1000))
    finally:
        logs = [w.output()[-1500:] for w in workers]
        for w in workers:
            w.stop()
    runs = read_records(path)
    by_id = collections.Counter(r["id"] for r in runs)
    assert len(by_id) == 1000 and set(by_id.values()) == {1}, "each task ran exactly once"
    share = collections.Counter()
    for r in runs:
        owner = [main for main, children in pids.items() if r["pid"] in children]
        assert owner, f"execution in unknown process {r['pid']}"
        share[owner[0]] += 1
    print(f"executions per worker: {dict(share)}")
    assert len(share) == 2, f"both workers must run tasks: {share}\n" + "\n".join(logs)
    assert all(n >= 300 for n in share.values()), f"unfair split between workers: {share}"
    spans = sorted((r["start"], r["end"]) for r in runs)
    overlapping = sum(1 for a, b in itertools.pairwise(spans) if b[0] < a[1])
    print(f"overlapping consecutive executions: {overlapping}")
    assert overlapping > 100, "executions should overlap: the workers run in parallel"


def test_lease_extensions_are_visible_in_sqlite(sqlite_env: dict[str, str], tmp_path: Path) -> None:
    """A task three times longer than the visibility timeout runs once, and the
    broker's own table shows its lease end moving forward while it runs."""
    path = str(tmp_path / "runs.jsonl")
    db = sqlite_env["POLYQ_BROKER_URL"].removeprefix("sqlite:///")
    with WorkerProcess(E2E_APP, ["-Q", "load", "-c", "1"], env=sqlite_env):
        result = record.delay(path, 6.0, "long")
        behind = [record.delay(path, 0.0, i) for i in range(2)]
        lease_ends = []
        deadline = time.time() + 6
        while time.time() < deadline:
            with sqlite3.connect(db) as conn:
                row = conn.execute(
                    "SELECT visible_at FROM polyq_messages WHERE state = 2 AND message_id = ("
                    "SELECT message_id FROM polyq_messages WHERE headers LIKE ?)",
                    (f"%{result.id}%",),
                ).fetchone()
            if row:
                lease_ends.append(row[0])
            time.sleep(0.25)
        assert result.get(timeout=30) == "long"
        for r in behind:
            r.get(timeout=30)
    distinct = sorted(set(lease_ends))
    print(f"lease ends seen in polyq_messages.visible_at: {distinct}")
    assert len(distinct) >= 3, f"the lease was extended (lease ends seen: {distinct})"
    runs = collections.Counter(r["id"] for r in read_records(path))
    assert runs[result.id] == 1
    assert all(runs[r.id] == 1 for r in behind)


@pytest.mark.parametrize("how", ["second TERM", "QUIT"])
def test_cold_shutdown_stops_now_and_gives_the_task_back(
    sqlite_env: dict[str, str], tmp_path: Path, how: str
) -> None:
    """A second TERM (or a QUIT) stops the worker at once; the interrupted task is
    given back to the queue and runs again elsewhere, not lost."""
    import signal

    path = str(tmp_path / "runs.jsonl")
    worker = WorkerProcess(E2E_APP, ["-Q", "load", "-c", "1"], env=sqlite_env).start()
    try:
        result = record.delay(path, 4.0, "finished")
        deadline = time.time() + 20
        while not started(path, result.id) and time.time() < deadline:
            time.sleep(0.05)
        if how == "QUIT":
            worker.signal(signal.SIGQUIT)
        else:
            worker.signal(signal.SIGTERM)
            time.sleep(0.3)
            worker.signal(signal.SIGTERM)
        stopping = time.monotonic()
        worker.wait(timeout=10)
        assert time.monotonic() - stopping < 5, "cold shutdown must not wait for the task"
    finally:
        worker.stop()
    assert read_records(path) == []
    given_back = time.time()
    with WorkerProcess(E2E_APP, ["-Q", "load", "-c", "1"], env=sqlite_env):
        assert result.get(timeout=40) == "finished"
    (run,) = read_records(path)
    assert run["delivery_count"] == 2
    # Given back at once, not left to its lease (2 s) to expire.
    assert run["start"] - given_back < 2.0 + 1.0


def test_a_warm_shutdown_longer_than_the_soft_timeout_turns_cold(
    sqlite_env: dict[str, str], tmp_path: Path
) -> None:
    """With worker_soft_shutdown_timeout, one TERM waits that long for running tasks,
    then stops them and gives their messages back (what a container's grace period
    needs), instead of waiting until a SIGKILL."""
    import signal

    path = str(tmp_path / "runs.jsonl")
    env = {**sqlite_env, "POLYQ_WORKER_SOFT_SHUTDOWN_TIMEOUT": "1"}
    worker = WorkerProcess(E2E_APP, ["-Q", "load", "-c", "1"], env=env).start()
    try:
        result = record.delay(path, 6.0, "finished")
        deadline = time.time() + 20
        while not started(path, result.id) and time.time() < deadline:
            time.sleep(0.05)
        worker.signal(signal.SIGTERM)
        stopping = time.monotonic()
        worker.wait(timeout=10)
        waited = time.monotonic() - stopping
        assert 0.8 < waited < 4, f"stopped after {waited:.1f} s, not about 1 s"
        assert "worker_soft_shutdown_timeout" in worker.output()
    finally:
        worker.stop()
    assert read_records(path) == []
    with WorkerProcess(E2E_APP, ["-Q", "load", "-c", "1"], env=sqlite_env):
        assert result.get(timeout=40) == "finished"
    (run,) = read_records(path)
    assert run["delivery_count"] == 2


def test_max_tasks_per_child_recycles_children(sqlite_env: dict[str, str], tmp_path: Path) -> None:
    """With --max-tasks-per-child 2, each child process runs at most two tasks and is
    replaced; every task still runs once."""
    path = str(tmp_path / "runs.jsonl")
    with WorkerProcess(
        E2E_APP,
        ["-Q", "load", "-c", "1", "--max-tasks-per-child", "2"],
        env=sqlite_env,
        cwd=str(Path(__file__).parents[3]),
    ):
        results = [record.delay(path, 0.0, i) for i in range(6)]
        assert [r.get(timeout=60) for r in results] == list(range(6))
    per_pid = collections.Counter(r["pid"] for r in read_records(path))
    assert len(per_pid) >= 3, per_pid
    assert max(per_pid.values()) <= 2, per_pid
