"""The conformance suites on SQLite: a fresh database file per test class."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from polyq.testing import services
from polyq.testing.conformance import BackendSuite, TransportSuite


class TestSQLiteTransport(TransportSuite):
    @pytest.fixture(scope="class")
    def transport_url(self, tmp_path_factory: pytest.TempPathFactory) -> str:
        return services.sqlite_url(tmp_path_factory.mktemp("sqlite-transport"))

    def unreachable_url(self, url: str) -> str | None:
        # The SQLite "broker" cannot be down; a file in a missing directory can
        # be unusable, which must fail just as clearly.
        return "sqlite:////nonexistent-polyq-dir/sub/polyq.sqlite3"


class TestSQLiteBackend(BackendSuite):
    @pytest.fixture(scope="class")
    def backend_url(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
        path: Path = tmp_path_factory.mktemp("sqlite-backend")
        yield services.sqlite_url(path)
