"""The conformance suites on the shared PostgreSQL server, in tables of their own
(a unique ``table_prefix`` per class, dropped afterwards)."""

import uuid
from collections.abc import Iterator

import pytest

from polyq.registry import create_backend, create_transport
from polyq.testing import services
from polyq.testing.conformance import BackendSuite, TransportSuite


def _with_prefix(url: str, prefix: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}table_prefix={prefix}"


class TestPostgresTransport(TransportSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> Iterator[str]:
        url = _with_prefix(services.postgres_url(), f"pqt{uuid.uuid4().hex[:8]}_")
        yield url
        transport = create_transport(url)
        transport.drop_schema()  # type: ignore[attr-defined]
        transport.close()


class TestPostgresBackend(BackendSuite):
    @pytest.fixture(scope="class")
    def backend_url(self) -> Iterator[str]:
        url = _with_prefix(services.postgres_url(), f"pqb{uuid.uuid4().hex[:8]}_")
        yield url
        backend = create_backend(url)
        backend.drop_schema()  # type: ignore[attr-defined]
        backend.close()
