"""End to end through worker processes on the embedded default (SQLite for both)."""

from __future__ import annotations

import pytest

from polyq.testing.conformance.e2e import CrashSuite, SmokeSuite


@pytest.fixture(scope="class")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'polyq.sqlite3'}"


class TestSQLiteSmoke(SmokeSuite):
    @pytest.fixture(scope="class")
    def transport_url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture(scope="class")
    def backend_url(self, sqlite_url: str) -> str:
        return sqlite_url


class TestSQLiteCrash(CrashSuite):
    @pytest.fixture(scope="class")
    def transport_url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture(scope="class")
    def backend_url(self, sqlite_url: str) -> str:
        return sqlite_url
