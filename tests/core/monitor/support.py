"""Helpers shared by the monitoring tests (imported as ``tests.core.monitor.support``)."""

from __future__ import annotations

import uuid
from pathlib import Path

from polyq.app import Polyq
from polyq.testing import services
from polyq.testing.worker import WorkerProcess

ROOT = str(Path(__file__).resolve().parents[3])
APP = "tests.core.monitor.monapp"


def broker_for(kind: str, tmp: Path) -> str:
    """A broker (and result store) URL private to one test module or class."""
    if kind == "sqlite":
        return services.sqlite_url(tmp)
    url = services.redis_url()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}namespace=pqmon-{uuid.uuid4().hex[:10]}"


def use_broker(app: Polyq, url: str) -> Polyq:
    """Point the shared test app at ``url`` (dropping connections to the last one)."""
    app.close()
    app.conf.broker_url = url
    app.conf.result_backend = url
    return app


def start_worker(url: str, *args: str) -> WorkerProcess:
    """``polyq -A tests.core.monitor.monapp worker <args>`` on ``url``, ready."""
    env = {"POLYQ_BROKER_URL": url, "POLYQ_RESULT_BACKEND": url, "PYTHONPATH": ROOT}
    return WorkerProcess(APP, ["-l", "INFO", *args], env=env, cwd=ROOT).start()
