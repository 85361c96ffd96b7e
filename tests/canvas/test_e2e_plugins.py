"""The canvas suites through worker processes on every plugin.

Every result backend with the local (SQLite) transport runs the full set, stress
cases included; every broker runs the everyday set (its smoke set) with a result
backend beside it. Each class keeps to a namespace, table prefix or queue of its
own, removed afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from polyq.registry import create_backend, create_transport
from polyq.testing import services
from polyq.testing.conformance.canvas import CanvasStressSuite, CanvasSuite
from tests.conformance.test_dynamodb import dynamodb_endpoint  # noqa: F401 - a fixture

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="class")
def sqlite_transport(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('canvas-broker') / 'broker.sqlite3'}"


def _redis(db: int) -> Iterator[str]:
    import redis

    namespace = f"pqcanvas{uuid.uuid4().hex[:8]}"
    base = services.redis_url()
    url = urlsplit(base)._replace(path=f"/{db}", query=f"namespace={namespace}").geturl()
    yield url
    client = redis.Redis.from_url(urlsplit(url)._replace(query="").geturl())
    try:
        names = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        for start in range(0, len(names), 500):
            client.delete(*names[start : start + 500])
    finally:
        client.close()


def _sql(base: str, backend: bool) -> Iterator[str]:
    url = f"{base}{'&' if '?' in base else '?'}table_prefix=pqc{uuid.uuid4().hex[:8]}_"
    yield url
    plugin = create_backend(url) if backend else create_transport(url)
    plugin.drop_schema()  # type: ignore[attr-defined]
    plugin.close()


# -- every result backend, with the local transport ------------------------------


class _LocalTransport:
    @pytest.fixture(scope="class")
    def transport_url(self, sqlite_transport: str) -> str:
        return sqlite_transport


class TestRedisBackendCanvas(_LocalTransport, CanvasSuite):
    @pytest.fixture(scope="class")
    def backend_url(self) -> Iterator[str]:
        yield from _redis(1)


class TestRedisBackendCanvasStress(_LocalTransport, CanvasStressSuite):
    @pytest.fixture(scope="class")
    def backend_url(self) -> Iterator[str]:
        yield from _redis(1)


class TestPostgresBackendCanvas(_LocalTransport, CanvasSuite):
    @pytest.fixture(scope="class")
    def backend_url(self) -> Iterator[str]:
        yield from _sql(services.postgres_url(), backend=True)


class TestPostgresBackendCanvasStress(_LocalTransport, CanvasStressSuite):
    @pytest.fixture(scope="class")
    def backend_url(self) -> Iterator[str]:
        yield from _sql(services.postgres_url(), backend=True)


class TestMySQLBackendCanvas(_LocalTransport, CanvasSuite):
    @pytest.fixture(scope="class")
    def backend_url(self) -> Iterator[str]:
        yield from _sql(services.mysql_url(), backend=True)


class TestMySQLBackendCanvasStress(_LocalTransport, CanvasStressSuite):
    @pytest.fixture(scope="class")
    def backend_url(self) -> Iterator[str]:
        yield from _sql(services.mysql_url(), backend=True)


class TestDynamoDBBackendCanvas(_LocalTransport, CanvasSuite):
    @pytest.fixture(scope="class")
    def backend_url(self, dynamodb_endpoint: str) -> str:  # noqa: F811
        return f"{dynamodb_endpoint}&table=pqc_{uuid.uuid4().hex[:8]}"


@pytest.mark.timeout(300)
class TestDynamoDBBackendCanvasStress(_LocalTransport, CanvasStressSuite):
    # moto serves DynamoDB one request at a time here: ~1 minute for 1,000 members.
    big_chord_timeout = 240.0

    @pytest.fixture(scope="class")
    def backend_url(self, dynamodb_endpoint: str) -> str:  # noqa: F811
        return f"{dynamodb_endpoint}&table=pqc_{uuid.uuid4().hex[:8]}"


# -- every broker: the everyday set ------------------------------------------------


class TestRedisCanvas(CanvasSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> Iterator[str]:
        yield from _redis(0)

    @pytest.fixture(scope="class")
    def backend_url(self) -> Iterator[str]:
        yield from _redis(1)


class TestRabbitMQCanvas(CanvasSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.amqp_url()

    @pytest.fixture(scope="class")
    def backend_url(self, tmp_path_factory: pytest.TempPathFactory) -> str:
        return f"sqlite:///{tmp_path_factory.mktemp('canvas-results') / 'results.sqlite3'}"


class TestSQSCanvas(CanvasSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return f"{services.sqs_url()}&queue_name_prefix=pqc{uuid.uuid4().hex[:6]}-"

    @pytest.fixture(scope="class")
    def backend_url(self, dynamodb_endpoint: str) -> str:  # noqa: F811
        return f"{dynamodb_endpoint}&table=pqc_{uuid.uuid4().hex[:8]}"


class TestPostgresCanvas(CanvasSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> Iterator[str]:
        yield from _sql(services.postgres_url(), backend=False)

    @pytest.fixture(scope="class")
    def backend_url(self) -> Iterator[str]:
        yield from _sql(services.postgres_url(), backend=True)


class TestMySQLCanvas(CanvasSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> Iterator[str]:
        yield from _sql(services.mysql_url(), backend=False)

    @pytest.fixture(scope="class")
    def backend_url(self) -> Iterator[str]:
        yield from _sql(services.mysql_url(), backend=True)
