"""A worker checks at start-up what it needs (broker and result backend plugins and
their connections) and exits 1 with one clear line when it cannot work.

Before, a worker whose result backend could not be used (unknown scheme, missing
extra, server down) kept running, failed every task with ``internal error`` and
dead-lettered it after ``task_max_deliveries``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

TASKS = """
from polyq import Polyq
app = Polyq("startapp")

@app.task
def add(x, y):
    return x + y
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "startapp.py").write_text(TASKS)
    return tmp_path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _worker(project: Path, **env: str) -> tuple[int, list[str], float]:
    """Run ``polyq -A startapp worker``; its exit code, its last stderr lines and how
    long it ran. A worker still running after 20 s fails the test."""
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "polyq", "-A", "startapp", "worker", "-P", "solo"],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "POLYQ_BROKER_URL": f"sqlite:///{project}/b.sqlite3", **env},
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the worker kept running although it cannot work")
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    return proc.returncode, lines, time.monotonic() - started


def test_an_unknown_result_backend_scheme_stops_the_worker(project: Path) -> None:
    code, errors, _ = _worker(project, POLYQ_RESULT_BACKEND="nosuchstore://somewhere/0")
    assert code == 1
    assert len(errors) == 1
    assert "nosuchstore" in errors[0] and "result backend" in errors[0]


def test_a_missing_extra_of_the_result_backend_stops_the_worker(project: Path) -> None:
    # boto3 shadowed by a package that cannot be imported: the DynamoDB extra "missing".
    (project / "boto3").mkdir()
    (project / "boto3" / "__init__.py").write_text("raise ImportError('no boto3 here')\n")
    code, errors, _ = _worker(
        project,
        POLYQ_RESULT_BACKEND="dynamodb://?region=us-east-1",
        PYTHONPATH=str(project) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    assert code == 1
    assert len(errors) == 1
    assert 'pip install "polyq[sqs]"' in errors[0]


def test_an_unreachable_result_backend_stops_a_worker_told_not_to_wait(project: Path) -> None:
    port = _closed_port()
    code, errors, took = _worker(
        project,
        POLYQ_RESULT_BACKEND=f"redis://127.0.0.1:{port}/0",
        POLYQ_BROKER_CONNECTION_RETRY_ON_STARTUP="false",
    )
    assert code == 1
    assert len(errors) == 1
    assert f"cannot reach the result backend at redis://127.0.0.1:{port}/0" in errors[0]
    assert took < 15


def test_by_default_the_worker_waits_for_its_result_backend(project: Path) -> None:
    port = _closed_port()
    env = {
        **os.environ,
        "POLYQ_BROKER_URL": f"sqlite:///{project}/b.sqlite3",
        "POLYQ_RESULT_BACKEND": f"redis://127.0.0.1:{port}/0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "polyq", "-A", "startapp", "worker", "-P", "solo"],
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=4)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "cannot reach the result backend" in err
    assert "ready" not in err  # it took no task while it could not store results
