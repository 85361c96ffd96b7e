"""The canvas conformance suites on SQLite (broker and result backend in one file)."""

from __future__ import annotations

import pytest

from polyq.testing.conformance.canvas import CanvasStressSuite, CanvasSuite

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="class")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('canvas') / 'polyq.sqlite3'}"


class TestSQLiteCanvas(CanvasSuite):
    @pytest.fixture(scope="class")
    def transport_url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture(scope="class")
    def backend_url(self, sqlite_url: str) -> str:
        return sqlite_url


class TestSQLiteCanvasStress(CanvasStressSuite):
    @pytest.fixture(scope="class")
    def transport_url(self, sqlite_url: str) -> str:
        return sqlite_url

    @pytest.fixture(scope="class")
    def backend_url(self, sqlite_url: str) -> str:
        return sqlite_url
