"""Real workers for tests: in a thread of the test process, or as a subprocess.

``start_worker`` runs a :class:`polyq.worker.Worker` in a thread (threads or
solo pool) — what a user's own test suite wants, like Celery's
``celery_worker``. :class:`WorkerProcess` runs ``python -m polyq ... worker`` as
a child process that tests can signal and kill, and always stops it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from polyq.app import Polyq

__all__ = ["WorkerProcess", "start_worker"]


@contextlib.contextmanager
def start_worker(
    app: Polyq,
    *,
    pool: str = "threads",
    concurrency: int = 2,
    queues: Sequence[str] | None = None,
    **options: Any,
) -> Iterator[Any]:
    """Run a worker for ``app`` in a background thread until the block ends."""
    from polyq.worker import Worker

    worker = Worker(
        app,
        pool=pool,
        concurrency=concurrency,
        queues=queues,
        install_signal_handlers=False,
        receive_wait=0.2,
        **options,
    )
    thread = threading.Thread(target=worker.start, name="polyq-test-worker", daemon=True)
    thread.start()
    if not worker.ready.wait(30):
        raise RuntimeError("the test worker did not start within 30s")
    try:
        yield worker
    finally:
        worker.stop(warm=True)
        thread.join(timeout=30)


class WorkerProcess:
    """``python -m polyq -A <app> worker <args>`` as a subprocess.

    The environment passes broker and backend URLs (``POLYQ_BROKER_URL`` ...).
    Use as a context manager; it is stopped (then killed) on exit.
    """

    def __init__(
        self,
        app_path: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:
        self.app_path = app_path
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.cwd = cwd
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="polyq-worker-", suffix=".log", delete=False
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout: float = 30.0) -> WorkerProcess:
        """Start the worker and wait until it logs that it is ready."""
        return self.launch().wait_ready(ready_timeout)

    def launch(self) -> WorkerProcess:
        """Start the worker process without waiting for it (see :meth:`wait_ready`)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polyq", "-A", self.app_path, "worker", *self.args],
            env=self.env,
            cwd=self.cwd,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, ready_timeout: float = 30.0) -> WorkerProcess:
        """Wait until the launched worker logs that it is ready."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if " ready: " in self.output():
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"worker not ready after {ready_timeout}s:\n{self.output()}")

    @property
    def pid(self) -> int:
        """The worker's main process id."""
        assert self.proc is not None
        return self.proc.pid

    def children(self) -> list[int]:
        """Process ids of the worker's pool children."""
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.pid:
                found.append(int(entry))
        return found

    def output(self) -> str:
        """Everything the worker logged so far."""
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the main process."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def kill_all(self) -> None:
        """SIGKILL the main process and its children at once (a machine dying)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        """Wait for the worker to exit; return its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL of the whole group if needed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill_all()
        if self.proc is not None:
            # Children of a killed main process exit on their own; make sure of it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
