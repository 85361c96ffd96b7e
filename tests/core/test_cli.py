"""The ``polyq`` command line, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polyq.testing.worker import WorkerProcess

TASKS = """
from polyq import Polyq
app = Polyq("cliapp")

@app.task
def add(x, y):
    return x + y
"""


def polyq(
    *args: str, cwd: Path, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polyq", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        input=input,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "cliapp.py").write_text(TASKS)
    return tmp_path


def test_bad_app_path_exits_nonzero_with_a_clear_message(project: Path) -> None:
    missing = polyq("-A", "no_such_module", "worker", cwd=project)
    assert missing.returncode != 0
    assert "cannot import module 'no_such_module'" in missing.stderr
    no_app = polyq("-A", "cliapp:nothing", "worker", cwd=project)
    assert no_app.returncode != 0
    assert "cliapp.nothing is not a Polyq app" in no_app.stderr


def test_call_prints_the_path_and_result_reads_it(project: Path) -> None:
    env = {"POLYQ_BROKER_URL": "", "POLYQ_RESULT_BACKEND": ""}
    env = {k: v for k, v in os.environ.items() if k not in env}
    sent = subprocess.run(
        [sys.executable, "-m", "polyq", "-A", "cliapp", "call", "cliapp.add", "--args", "[2, 3]"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert sent.returncode == 0, sent.stderr
    assert f"sqlite:///{project}/polyq.sqlite3" in sent.stderr  # absolute path shown
    task_id = sent.stdout.strip()
    with WorkerProcess("cliapp", ["-c", "1"], env=env, cwd=str(project)):
        shown = subprocess.run(
            [sys.executable, "-m", "polyq", "-A", "cliapp", "result", task_id, "--wait", "20"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "SUCCESS: 5"


def test_bad_arguments_are_explained(project: Path) -> None:
    out = polyq("-A", "cliapp", "call", "cliapp.add", "--args", "{not json", cwd=project)
    assert out.returncode != 0
    assert "--args must be JSON" in out.stderr


def test_queues_purge_and_dlq(project: Path) -> None:
    url = f"sqlite:///{project}/q.sqlite3"
    env = {"POLYQ_BROKER_URL": url, "POLYQ_RESULT_BACKEND": url}
    for _ in range(3):
        assert (
            polyq(
                "-A", "cliapp", "call", "cliapp.add", "-a", "[1, 1]", cwd=project, env=env
            ).returncode
            == 0
        )
    listing = polyq("-A", "cliapp", "queues", cwd=project, env=env)
    assert "celery" in listing.stdout and " 3 " in listing.stdout
    purged = polyq("-A", "cliapp", "purge", "-f", cwd=project, env=env)
    assert "purged 3 message(s)" in purged.stdout

    from polyq.registry import create_transport
    from polyq.transport import OutgoingMessage

    transport = create_transport(url)
    transport.publish([OutgoingMessage("celery", b"junk", "bad-1", {"x": "y"})])
    delivery = transport.receive(["celery"], 1, 1.0)[0]
    transport.dead_letter(delivery, "undecodable: test")
    transport.close()
    dead = polyq("-A", "cliapp", "dlq", "list", cwd=project, env=env)
    assert "bad-1" in dead.stdout and "undecodable: test" in dead.stdout
    shown = polyq("-A", "cliapp", "dlq", "show", "bad-1", cwd=project, env=env)
    assert "reason:  undecodable: test" in shown.stdout and "junk" in shown.stdout
    replayed = polyq("-A", "cliapp", "dlq", "replay", cwd=project, env=env)
    assert "replayed 1 message(s)" in replayed.stdout
    assert " 1 " in polyq("-A", "cliapp", "queues", cwd=project, env=env).stdout


def test_demo_runs_well_under_fifteen_seconds(tmp_path: Path) -> None:
    started = time.monotonic()
    out = polyq("demo", cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stdout + out.stderr
    assert "summary: 1 FAILURE, 39 SUCCESS" in out.stdout
    assert "flaky(7) -> 70 after 1 retry" in out.stdout
    assert elapsed < 15, f"demo took {elapsed:.1f}s"


def test_a_worker_that_must_not_wait_for_its_broker_exits_with_why(project: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    env = {
        "POLYQ_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "POLYQ_RESULT_BACKEND": f"sqlite:///{project}/results.sqlite3",
        "POLYQ_BROKER_CONNECTION_RETRY_ON_STARTUP": "false",
    }
    started = time.monotonic()
    out = polyq("-A", "cliapp", "worker", "-P", "solo", cwd=project, env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert time.monotonic() - started < 30
    assert f"cannot reach the broker at redis://127.0.0.1:{port}/0" in out.stderr
    assert "broker_connection_retry_on_startup is false" in out.stderr
    # By default it waits for the broker instead (and is stopped here).
    del env["POLYQ_BROKER_CONNECTION_RETRY_ON_STARTUP"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "polyq", "-A", "cliapp", "worker", "-P", "solo"],
        cwd=project,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=4)
    finally:
        proc.kill()
        proc.wait(10)
