"""The conformance suites on the shared Redis, each class under a namespace of its own
(every key it wrote is deleted afterwards). The result backend uses database 1, as a
deployment would, apart from the broker's database."""

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import redis

from polyq.testing import services
from polyq.testing.conformance import BackendSuite, TransportSuite


def _namespaced(url: str, db: int) -> tuple[str, str]:
    namespace = f"pqconf{uuid.uuid4().hex[:8]}"
    return urlsplit(url)._replace(path=f"/{db}", query=f"namespace={namespace}").geturl(), namespace


def _delete_namespace(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(urlsplit(url)._replace(query="").geturl())
    try:
        names = list(client.scan_iter(match=f"{namespace}:*", count=1000))
        for start in range(0, len(names), 500):
            client.delete(*names[start : start + 500])
    finally:
        client.close()


class TestRedisTransport(TransportSuite):
    @pytest.fixture(scope="class")
    def transport_url(self) -> Iterator[str]:
        url, namespace = _namespaced(services.redis_url(), 0)
        yield url
        _delete_namespace(url, namespace)


class TestRedisBackend(BackendSuite):
    @pytest.fixture(scope="class")
    def backend_url(self) -> Iterator[str]:
        url, namespace = _namespaced(services.redis_url(), 1)
        yield url
        _delete_namespace(url, namespace)
