"""Broker URLs for tests: one function per broker, each returning a reachable URL.

Every function resolves its broker in the same order:

1. an environment variable (``POLYQ_TEST_REDIS_URL``, ``POLYQ_TEST_AMQP_URL``,
   ``POLYQ_TEST_POSTGRES_URL``, ``POLYQ_TEST_MYSQL_URL``, ``POLYQ_TEST_SQS_URL``),
   checked with a TCP connect so that a broker that is down is reported as such
   rather than as a confusing failure deep inside a test;
2. for SQS and DynamoDB only, a moto server started in this process on a free
   loopback port (once per test process, stopped at exit);
3. a throw-away container through ``testcontainers`` when Docker answers (once per
   test process, stopped at exit);
4. otherwise ``pytest.skip`` with a reason naming the broker and the variable to
   set, or ``pytest.fail`` when ``POLYQ_TEST_REQUIRE`` is ``all`` or a comma list
   naming the broker (``redis,amqp,postgres,mysql,sqs``), so CI cannot pass by
   skipping.

Results are cached per process: a test session probes each broker once. The
reasons for skipped brokers are kept in :data:`SKIPPED`, which the pytest plugin
prints at the end of the session.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from polyq.url import redact

__all__ = [
    "SKIPPED",
    "amqp_url",
    "dynamodb_url",
    "mysql_url",
    "postgres_url",
    "redis_url",
    "sqlite_url",
    "sqs_url",
]

#: Broker name → why its tests were skipped (printed at the end of the session).
SKIPPED: dict[str, str] = {}

_ENV = {
    "redis": "POLYQ_TEST_REDIS_URL",
    "amqp": "POLYQ_TEST_AMQP_URL",
    "postgres": "POLYQ_TEST_POSTGRES_URL",
    "mysql": "POLYQ_TEST_MYSQL_URL",
    "sqs": "POLYQ_TEST_SQS_URL",
}
_DEFAULT_PORTS = {
    "redis": 6379,
    "rediss": 6380,
    "amqp": 5672,
    "amqps": 5671,
    "pyamqp": 5672,
    "postgresql": 5432,
    "postgres": 5432,
    "mysql": 3306,
    "mariadb": 3306,
}
_CONNECT_TIMEOUT = 2.0

# The outcome of resolving each broker: ("url", url) or ("skip", reason). A test
# session probes each broker once, and starts at most one server per broker.
_resolved: dict[str, tuple[str, str]] = {}
_lock = threading.Lock()


def redis_url() -> str:
    """A Redis URL (``POLYQ_TEST_REDIS_URL``, else a container)."""
    return _url("redis", _redis_container)


def amqp_url() -> str:
    """A RabbitMQ URL (``POLYQ_TEST_AMQP_URL``, else a container)."""
    return _url("amqp", _rabbitmq_container)


def postgres_url() -> str:
    """A PostgreSQL URL (``POLYQ_TEST_POSTGRES_URL``, else a container)."""
    return _url("postgres", _postgres_container)


def mysql_url() -> str:
    """A MySQL/MariaDB URL (``POLYQ_TEST_MYSQL_URL``, else a container)."""
    return _url("mysql", _mysql_container)


def sqs_url() -> str:
    """An SQS URL (``POLYQ_TEST_SQS_URL``, else an in-process moto server)."""
    return _url("sqs", _moto_server)


def dynamodb_url() -> str:
    """A DynamoDB URL on the same endpoint as :func:`sqs_url` (moto serves both)."""
    query = urlsplit(sqs_url()).query
    return f"dynamodb://?{query}" if query else "dynamodb://"


def sqlite_url(tmp_path: Path | str) -> str:
    """A SQLite URL for a fresh database file in ``tmp_path``."""
    return f"sqlite:///{Path(tmp_path).resolve() / 'polyq.sqlite3'}"


# -- resolution ------------------------------------------------------------------


def _url(broker: str, start_local: Callable[[], str]) -> str:
    with _lock:
        if broker not in _resolved:
            _resolved[broker] = _resolve(broker, start_local)
    kind, value = _resolved[broker]
    if kind == "url":
        return value
    SKIPPED[broker] = value
    if _required(broker):
        pytest.fail(f"{value} (POLYQ_TEST_REQUIRE says {broker} must run)", pytrace=False)
    pytest.skip(value)


def _resolve(broker: str, start_local: Callable[[], str]) -> tuple[str, str]:
    env = _ENV[broker]
    url = os.environ.get(env)
    if url:
        problem = _unreachable(url)
        if problem:
            return "skip", f"{broker}: {env}={redact(url)} is not reachable ({problem})"
        return "url", url
    try:
        return "url", start_local()
    except _Unavailable as exc:
        return "skip", f"{broker}: set {env} to a running broker's URL ({exc})"


def _required(broker: str) -> bool:
    wanted = {part.strip().lower() for part in os.environ.get("POLYQ_TEST_REQUIRE", "").split(",")}
    return "all" in wanted or broker in wanted


def _unreachable(url: str) -> str | None:
    """Why a TCP connection to ``url``'s server fails, or ``None`` if it succeeds."""
    parts = urlsplit(url)
    endpoint = dict(parse_qsl(parts.query)).get("endpoint_url")
    if endpoint:
        parts = urlsplit(endpoint)
    host = parts.hostname
    if not host:  # e.g. sqs:// against real AWS: nothing local to probe
        return None
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme.split("+")[0], 0)
    if not port:
        port = 443 if parts.scheme == "https" else 80
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT):
            return None
    except OSError as exc:
        return f"cannot connect to {host}:{port}: {exc}"


class _Unavailable(Exception):
    """No local server could be started for a broker."""


# -- local servers -----------------------------------------------------------------


def _moto_server() -> str:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise _Unavailable(f'moto is not installed: pip install "moto[server]" ({exc})') from exc
    # The server logs every request at INFO through werkzeug; tests need none of it.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # boto3 refuses to sign without credentials; moto accepts any.
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    atexit.register(server.stop)
    host, port = server.get_host_and_port()
    query = urlencode({"region": "us-east-1", "endpoint_url": f"http://{host}:{port}"})
    return f"sqs://?{query}"


def _container(module: str, cls_name: str, *args: Any, **kwargs: Any) -> Any:
    """Start ``testcontainers.community.<module>.<cls_name>`` and stop it at exit.

    Only the ``community`` paths of testcontainers>=4.15 are used: the old ones warn,
    and warnings are errors in this test suite.
    """
    try:
        # Imported lazily: both are optional test dependencies.
        docker_errors = importlib.import_module("docker.errors")
        cls = getattr(importlib.import_module(f"testcontainers.community.{module}"), cls_name)
    except ImportError as exc:
        raise _Unavailable(f"testcontainers is not installed ({exc})") from exc
    try:
        container = cls(*args, **kwargs)
        container.start()
    except docker_errors.DockerException as exc:
        raise _Unavailable(f"Docker is not available: {exc}") from exc
    atexit.register(_stop_quietly, container)
    return container


def _stop_quietly(container: Any) -> None:
    with contextlib.suppress(Exception):
        container.stop()


def _redis_container() -> str:
    c = _container("redis", "RedisContainer", "redis:7-alpine")
    return f"redis://{c.get_container_host_ip()}:{c.get_exposed_port(6379)}/0"


def _rabbitmq_container() -> str:
    c = _container("rabbitmq", "RabbitMqContainer", "rabbitmq:3-alpine")
    return f"amqp://guest:guest@{c.get_container_host_ip()}:{c.get_exposed_port(5672)}//"


def _postgres_container() -> str:
    c = _container("postgres", "PostgresContainer", "postgres:16-alpine", driver=None)
    url: str = c.get_connection_url()
    return url.replace("postgresql+psycopg2://", "postgresql://")


def _mysql_container() -> str:
    c = _container("mysql", "MySqlContainer", "mariadb:11")
    url: str = c.get_connection_url()
    return url
