"""End to end through worker processes on every broker, with the result stores the
issues pair them with. Each class gets the broker's URL from ``polyq.testing.services``
(environment variable, else a container, else skip — or fail under POLYQ_TEST_REQUIRE)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from polyq.registry import create_backend, create_transport
from polyq.testing import services
from polyq.testing.conformance.e2e import CrashSuite, SmokeSuite


def _isolated_sql(url: str) -> Iterator[str]:
    """``url`` with tables of its own (a unique prefix) on a shared server, dropped after."""
    prefix = f"e2e{uuid.uuid4().hex[:8]}_"
    isolated = f"{url}{'&' if '?' in url else '?'}table_prefix={prefix}"
    yield isolated
    for part in (create_transport(isolated), create_backend(isolated)):
        try:
            part.drop_schema()  # type: ignore[attr-defined]
        finally:
            part.close()


@pytest.fixture(scope="class")
def postgres_isolated() -> Iterator[str]:
    yield from _isolated_sql(services.postgres_url())


@pytest.fixture(scope="class")
def mysql_isolated() -> Iterator[str]:
    yield from _isolated_sql(services.mysql_url())


@pytest.fixture(scope="module")
def sqlite_results(tmp_path_factory: pytest.TempPathFactory) -> str:
    return services.sqlite_url(Path(tmp_path_factory.mktemp("results")))


# -- Redis ---------------------------------------------------------------------------


class TestRedisRedisSmoke(SmokeSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.redis_url()

    @pytest.fixture(scope="class")
    def backend_url(self) -> str:
        return services.redis_url()


class TestRedisSQLSmoke(SmokeSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.redis_url()

    @pytest.fixture(scope="class")
    def backend_url(self, sqlite_results: str) -> str:
        return sqlite_results


class TestRedisCrash(CrashSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.redis_url()

    @pytest.fixture(scope="class")
    def backend_url(self) -> str:
        return services.redis_url()


# -- RabbitMQ ------------------------------------------------------------------------


class TestRabbitMQRedisSmoke(SmokeSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.amqp_url()

    @pytest.fixture(scope="class")
    def backend_url(self) -> str:
        return services.redis_url()


class TestRabbitMQSQLSmoke(SmokeSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.amqp_url()

    @pytest.fixture(scope="class")
    def backend_url(self, sqlite_results: str) -> str:
        return sqlite_results


class TestRabbitMQCrash(CrashSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.amqp_url()

    @pytest.fixture(scope="class")
    def backend_url(self) -> str:
        return services.redis_url()


# -- SQS -----------------------------------------------------------------------------


class TestSQSDynamoDBSmoke(SmokeSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.sqs_url()

    @pytest.fixture(scope="class")
    def backend_url(self) -> str:
        return services.dynamodb_url()


class TestSQSRedisSmoke(SmokeSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.sqs_url()

    @pytest.fixture(scope="class")
    def backend_url(self) -> str:
        return services.redis_url()


class TestSQSSQLSmoke(SmokeSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.sqs_url()

    @pytest.fixture(scope="class")
    def backend_url(self, sqlite_results: str) -> str:
        return sqlite_results


class TestSQSCrash(CrashSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> str:
        return services.sqs_url()

    @pytest.fixture(scope="class")
    def backend_url(self, sqlite_results: str) -> str:
        return sqlite_results


# -- PostgreSQL and MariaDB ----------------------------------------------------------


class TestPostgresSmoke(SmokeSuite):
    @pytest.fixture(scope="class")
    def transport_url(self, postgres_isolated: str) -> str:
        return postgres_isolated

    @pytest.fixture(scope="class")
    def backend_url(self, postgres_isolated: str) -> str:
        return postgres_isolated


class TestPostgresCrash(CrashSuite):
    @pytest.fixture(scope="class")
    def transport_url(self, postgres_isolated: str) -> str:
        return postgres_isolated

    @pytest.fixture(scope="class")
    def backend_url(self, postgres_isolated: str) -> str:
        return postgres_isolated


class TestMySQLSmoke(SmokeSuite):
    @pytest.fixture(scope="class")
    def transport_url(self, mysql_isolated: str) -> str:
        return mysql_isolated

    @pytest.fixture(scope="class")
    def backend_url(self, mysql_isolated: str) -> str:
        return mysql_isolated


class TestMySQLCrash(CrashSuite):
    @pytest.fixture(scope="class")
    def transport_url(self, mysql_isolated: str) -> str:
        return mysql_isolated

    @pytest.fixture(scope="class")
    def backend_url(self, mysql_isolated: str) -> str:
        return mysql_isolated
