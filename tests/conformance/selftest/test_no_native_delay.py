"""The end-to-end suite on a broker without native delay (``capabilities.max_delay=0``).

``nodelay+sqlite://`` (``plugins/nodelay_plugin.py``) is the SQLite broker with every
delay refused: a countdown, an ETA or a retry's countdown can only work if the core
holds the message until it is due. The worker processes find the plugin through
the entry points in ``plugins/``, put on their ``PYTHONPATH`` (and on this
process's ``sys.path`` only while these tests run).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from polyq import registry
from polyq.testing.conformance.e2e import SmokeSuite
from polyq.testing.worker import WorkerProcess

PLUGINS = str(Path(__file__).parent / "plugins")


def _publish_log(broker_url: str) -> Path:
    """Where the workers' transports log what they publish: next to the database."""
    return Path(broker_url.removeprefix("nodelay+sqlite:///") + ".publishes")


@pytest.fixture(scope="class")
def plugins_on_path() -> Iterator[None]:
    # The registry reads entry points once per process: refreshed on the way in and
    # out, so these test-only schemes never show in another test of the same worker
    # (the generated capability page, for one).
    sys.path.insert(0, PLUGINS)
    importlib.invalidate_caches()
    registry.refresh()
    try:
        yield
    finally:
        sys.path.remove(PLUGINS)
        importlib.invalidate_caches()
        registry.refresh()


@pytest.fixture(scope="class")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('nodelay') / 'polyq.sqlite3'}"


class TestNoNativeDelaySmoke(SmokeSuite):
    @pytest.fixture(scope="class")
    def transport_url(self, plugins_on_path: None, sqlite_url: str) -> str:
        return f"nodelay+{sqlite_url}"

    @pytest.fixture(scope="class")
    def backend_url(self, sqlite_url: str) -> str:
        return sqlite_url

    def worker(self, env: dict[str, str], *args: str) -> WorkerProcess:
        path = os.pathsep.join([PLUGINS, env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))])
        log = str(_publish_log(env["POLYQ_BROKER_URL"]))
        return super().worker({**env, "PYTHONPATH": path, "POLYQ_NODELAY_PUBLISH_LOG": log}, *args)

    def test_eta_is_held_until_due_not_sent_round_again(self, records: str) -> None:
        # Needs the worker to hold a message the broker cannot delay until it is
        # due; a worker that re-publishes it at once (a zero "native" delay) spins.
        from polyq.testing.e2e_tasks import record

        result = record.apply_async((records,), countdown=2.0)
        result.get(timeout=20)
        log = _publish_log(str(self.transport.url))
        sent_again = log.read_text().split().count(result.id) if log.exists() else 0
        assert sent_again <= 1, (
            f"the worker re-published a task waiting 2 s {sent_again} times: with "
            "max_delay=0 it must hold the message until due, not send it round again"
        )

    def test_broker_has_no_native_delay(self) -> None:
        # The premise of this class: were it false, the tests would prove nothing new.
        assert self.transport.capabilities.max_delay == 0
