"""Fixtures for the monitoring tests: real brokers (SQLite file, Redis under a
private namespace) and real worker processes, stopped by pid."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[3])
if ROOT not in sys.path:  # the worker subprocesses and the tests import tests.core.monitor.monapp
    sys.path.insert(0, ROOT)

from polyq.app import Polyq  # noqa: E402
from tests.core.monitor.support import broker_for, use_broker  # noqa: E402


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def broker_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return broker_for(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """Where browser tests write screenshots: $POLYQ_ARTIFACTS or ./artifacts (untracked)."""
    path = Path(os.environ.get("POLYQ_ARTIFACTS") or Path(ROOT) / "artifacts") / "monitor"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def fresh_app(broker_url: str) -> Iterator[Polyq]:
    from tests.core.monitor import monapp

    yield use_broker(monapp.app, broker_url)
    monapp.app.close()
