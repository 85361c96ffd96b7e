"""Which built-in plugin runs which conformance suite: the one table.

:data:`BROKERS` says, per plugin, how a test class gets a URL of its own (a Redis
namespace, a SQL table prefix, an SQS queue-name prefix, a SQLite file...) and how
what it wrote is removed afterwards. :data:`PAIRS` lists the broker x result-backend
pairs and the end-to-end and canvas suites each one runs. The test modules under
``tests/conformance/`` subclass the packaged suites once each and parametrize them
over this table (:class:`OnTransports`, :class:`OnBackends`, :func:`on_pairs`), so a
node id reads ``TestSmokeSuite::test_round_trip[rabbitmq-redis]``, and ``tests/conftest.py``
marks each test with the brokers in its id (``pytest -m redis``).

Adding a plugin: give it an entry in :data:`BROKERS`, a marker in ``pyproject.toml``,
and the pairs it should run in :data:`PAIRS`.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest

from polyq.registry import create_backend, create_transport
from polyq.testing import services

#: Makes a URL private to one test class, and removes what the class left there
#: once the generator is closed.
URLFactory = Callable[[pytest.TempPathFactory], Iterator[str]]

# -- per-plugin isolation ---------------------------------------------------------------


def _memory(tmp: pytest.TempPathFactory) -> Iterator[str]:
    yield f"memory://conformance-{uuid.uuid4().hex[:8]}"


def _sqlite(tmp: pytest.TempPathFactory) -> Iterator[str]:
    yield services.sqlite_url(tmp.mktemp("sqlite"))


def _sqlite_unreachable(url: str) -> str:
    # The SQLite "broker" cannot be down; a file in a missing directory can be
    # unusable, which must fail just as clearly.
    return "sqlite:////nonexistent-polyq-dir/sub/polyq.sqlite3"


def _redis(db_offset: int) -> URLFactory:
    """Keys under a namespace of their own, deleted afterwards. The result backend
    (``db_offset`` 1) uses the database after the broker's, as a deployment would."""

    def make(tmp: pytest.TempPathFactory) -> Iterator[str]:
        import redis

        base = urlsplit(services.redis_url())
        db = (int(base.path.strip("/") or 0) + db_offset) % 16
        namespace = f"pqconf{uuid.uuid4().hex[:8]}"
        yield base._replace(path=f"/{db}", query=f"namespace={namespace}").geturl()
        client = redis.Redis.from_url(base._replace(path=f"/{db}", query="").geturl())
        try:
            names = list(client.scan_iter(match=f"{namespace}:*", count=1000))
            for start in range(0, len(names), 500):
                client.delete(*names[start : start + 500])
        finally:
            client.close()

    return make


def _rabbitmq(tmp: pytest.TempPathFactory) -> Iterator[str]:
    # Queues are unique per test (and per end-to-end class); each is deleted after
    # its test by the suite's ``delete_queue`` (RabbitMQ declares real queues).
    yield services.amqp_url()


def _rabbitmq_plain(tmp: pytest.TempPathFactory) -> Iterator[str]:
    # The fast delivery path off (pika reads and writes every frame), so the fallback
    # used with an untested pika is proved by the same suites.
    url = services.amqp_url()
    yield url + ("&" if "?" in url else "?") + "fastpath=0"


def _sqs(tmp: pytest.TempPathFactory) -> Iterator[str]:
    yield f"{services.sqs_url()}&queue_name_prefix=pq{uuid.uuid4().hex[:6]}-"


def _sqs_unreachable(url: str) -> str:
    # The suite's generic rewrite drops the '//' of a URL with an empty host
    # (sqs://?...); swap the endpoint's port for a closed one directly.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return re.sub(r"endpoint_url=[^&]*", f"endpoint_url=http://127.0.0.1:{port}", url)


def _sql(server_url: Callable[[], str]) -> URLFactory:
    """Tables of their own on the shared server (a unique ``table_prefix``), the
    transport's and the backend's dropped afterwards."""

    def make(tmp: pytest.TempPathFactory) -> Iterator[str]:
        base = server_url()
        url = f"{base}{'&' if '?' in base else '?'}table_prefix=pq{uuid.uuid4().hex[:8]}_"
        yield url
        for plugin in (create_transport(url), create_backend(url)):
            try:
                plugin.drop_schema()  # type: ignore[attr-defined]
            finally:
                plugin.close()

    return make


def _dynamodb(tmp: pytest.TempPathFactory) -> Iterator[str]:
    yield f"{_dynamodb_endpoint()}&table=pq_{uuid.uuid4().hex[:8]}"


# -- the table -------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Broker:
    """One built-in plugin, as the conformance tests use it."""

    #: The pytest marker and the parameter id (``pytest -m redis``).
    name: str
    #: URL of a transport private to one test class, or None: no transport plugin.
    transport: URLFactory | None = None
    #: URL of a result backend private to one test class, or None: no backend plugin.
    backend: URLFactory | None = None
    #: Paired with itself, broker and results share one URL (one SQLite file, one set
    #: of SQL tables), as the embedded default deploys them.
    one_url: bool = False
    #: ``TransportSuite.unreachable_url`` for URLs the generic rewrite cannot handle.
    unreachable_url: Callable[[str], str | None] | None = None
    #: Extra ``TransportSuite.transport_options``.
    transport_options: Mapping[str, Any] = field(default_factory=dict)
    #: Seconds ``CanvasStressSuite``'s 1,000-member chord may take with this backend.
    big_chord_timeout: float | None = None
    #: Extra marks on every test using this plugin.
    marks: tuple[pytest.MarkDecorator, ...] = ()

    @property
    def id(self) -> str:
        """The parameter id: the plugin's name."""
        return self.name

    def __repr__(self) -> str:
        return f"Broker({self.name!r})"


BROKERS: dict[str, Broker] = {
    b.name: b
    for b in (
        Broker("memory", transport=_memory, backend=_memory),
        Broker(
            "sqlite",
            transport=_sqlite,
            backend=_sqlite,
            one_url=True,
            unreachable_url=_sqlite_unreachable,
        ),
        Broker("redis", transport=_redis(0), backend=_redis(1)),
        Broker(
            "rabbitmq",
            transport=_rabbitmq,
            # Give up on the closed port after 3 s rather than the default 10 s.
            transport_options={"connect_timeout": 3},
        ),
        Broker(
            "rabbitmq-plain",
            transport=_rabbitmq_plain,
            transport_options={"connect_timeout": 3},
        ),
        Broker(
            "sqs",
            transport=_sqs,
            unreachable_url=_sqs_unreachable,
            # Fail fast on the closed port instead of botocore's four attempts.
            transport_options={"max_attempts": 1, "connect_timeout": 2},
        ),
        Broker(
            "dynamodb",
            backend=_dynamodb,
            # moto serves DynamoDB one request at a time here: ~1 minute for 1,000 members.
            big_chord_timeout=240.0,
            marks=(pytest.mark.timeout(300),),
        ),
        Broker(
            "postgres",
            transport=_sql(services.postgres_url),
            backend=_sql(services.postgres_url),
            one_url=True,
        ),
        Broker(
            "mysql",
            transport=_sql(services.mysql_url),
            backend=_sql(services.mysql_url),
            one_url=True,
        ),
    )
}

SMOKE, CRASH, CANVAS, CANVAS_STRESS = "smoke", "crash", "canvas", "canvas-stress"
#: Many tasks retrying at once on two workers (final states never go backwards).
RETRY_STORM = "retry-storm"

#: (broker, result backend) → the end-to-end and canvas suites that pair runs. Every
#: broker runs the smoke and canvas sets with a result store beside it; every result
#: store runs the canvas stress set behind the local (SQLite) broker.
PAIRS: dict[tuple[str, str], frozenset[str]] = {
    ("sqlite", "sqlite"): frozenset({SMOKE, CRASH, CANVAS, CANVAS_STRESS, RETRY_STORM}),
    ("sqlite", "redis"): frozenset({CANVAS, CANVAS_STRESS}),
    ("sqlite", "postgres"): frozenset({CANVAS, CANVAS_STRESS}),
    ("sqlite", "mysql"): frozenset({CANVAS, CANVAS_STRESS}),
    ("sqlite", "dynamodb"): frozenset({CANVAS, CANVAS_STRESS}),
    ("redis", "redis"): frozenset({SMOKE, CRASH, CANVAS, RETRY_STORM}),
    ("redis", "sqlite"): frozenset({SMOKE}),
    ("rabbitmq", "redis"): frozenset({SMOKE, CRASH}),
    ("rabbitmq", "sqlite"): frozenset({SMOKE, CANVAS}),
    ("rabbitmq-plain", "redis"): frozenset({SMOKE}),
    ("sqs", "dynamodb"): frozenset({SMOKE, CANVAS}),
    ("sqs", "redis"): frozenset({SMOKE}),
    ("sqs", "sqlite"): frozenset({SMOKE, CRASH}),
    ("postgres", "postgres"): frozenset({SMOKE, CRASH, CANVAS}),
    ("mysql", "mysql"): frozenset({SMOKE, CRASH, CANVAS}),
}


@dataclass(frozen=True, repr=False)
class Pair:
    """A broker and a result backend, run together through worker processes."""

    transport: Broker
    backend: Broker

    @property
    def id(self) -> str:
        """The parameter id: ``<broker>-<result backend>``."""
        return f"{self.transport.name}-{self.backend.name}"

    def __repr__(self) -> str:
        return f"Pair({self.id!r})"


# -- parametrized fixtures for the suites ------------------------------------------------


def _param(value: Broker | Pair, *brokers: Broker) -> Any:
    marks = [mark for broker in brokers for mark in broker.marks]
    return pytest.param(value, id=value.id, marks=marks)


class OnTransports:
    """Mixin: the ``broker`` and ``transport_url`` fixtures of a transport suite,
    parametrized over every plugin of :data:`BROKERS` with a transport."""

    @pytest.fixture(scope="class", params=[_param(b, b) for b in BROKERS.values() if b.transport])
    def broker(self, request: pytest.FixtureRequest) -> Broker:
        """The plugin under test."""
        return request.param  # type: ignore[no-any-return]

    @pytest.fixture(scope="class")
    def transport_url(
        self, broker: Broker, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[str]:
        assert broker.transport is not None
        yield from broker.transport(tmp_path_factory)


class OnBackends:
    """Mixin: the ``broker`` and ``backend_url`` fixtures of a backend suite,
    parametrized over every plugin of :data:`BROKERS` with a result backend."""

    @pytest.fixture(scope="class", params=[_param(b, b) for b in BROKERS.values() if b.backend])
    def broker(self, request: pytest.FixtureRequest) -> Broker:
        """The plugin under test."""
        return request.param  # type: ignore[no-any-return]

    @pytest.fixture(scope="class")
    def backend_url(
        self, broker: Broker, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[str]:
        assert broker.backend is not None
        yield from broker.backend(tmp_path_factory)


def on_pairs(suite: str) -> type:
    """A mixin giving an end-to-end or canvas suite the ``pair``, ``transport_url``
    and ``backend_url`` fixtures, parametrized over the :data:`PAIRS` that run ``suite``."""
    pairs = [Pair(BROKERS[t], BROKERS[b]) for (t, b), suites in PAIRS.items() if suite in suites]
    if not pairs:
        raise ValueError(f"no pair runs the {suite!r} suite")

    class _Pairs:
        @pytest.fixture(scope="class", params=[_param(p, p.transport, p.backend) for p in pairs])
        def pair(self, request: pytest.FixtureRequest) -> Pair:
            """The broker and result backend under test."""
            return request.param  # type: ignore[no-any-return]

        @pytest.fixture(scope="class")
        def transport_url(
            self, pair: Pair, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[str]:
            assert pair.transport.transport is not None
            yield from pair.transport.transport(tmp_path_factory)

        @pytest.fixture(scope="class")
        def backend_url(
            self, pair: Pair, transport_url: str, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[str]:
            if pair.transport is pair.backend and pair.backend.one_url:
                yield transport_url
                return
            assert pair.backend.backend is not None
            yield from pair.backend.backend(tmp_path_factory)

    _Pairs.__name__ = _Pairs.__qualname__ = f"OnPairs[{suite}]"
    return _Pairs


# -- a DynamoDB endpoint that applies one request at a time -------------------------------


class _OneDynamoDBRequestAtATime:
    """WSGI middleware serialising moto's DynamoDB requests.

    DynamoDB applies the writes to an item one after another (that is what makes a
    conditional update atomic), but moto's threaded server does not, and loses
    concurrent updates of one item, which the atomicity tests would report as the
    plugin's fault. SQS requests are not serialised (long polls must overlap)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            return self.app(environ, start_response)
        with self.lock:
            # Materialised under the lock: the response is built by then.
            return list(self.app(environ, start_response))


_dynamodb_lock = threading.Lock()
_dynamodb_base: list[str] = []


def _dynamodb_endpoint() -> str:
    """``dynamodb://?...`` on ``POLYQ_TEST_SQS_URL``'s endpoint when it is set
    (LocalStack, AWS); otherwise on a moto server on loopback started once per test
    process (stopped at exit) that serves DynamoDB requests one at a time."""
    if os.environ.get("POLYQ_TEST_SQS_URL"):
        return services.dynamodb_url()
    with _dynamodb_lock:
        if not _dynamodb_base:
            _dynamodb_base.append(_start_serialised_moto())
    return _dynamodb_base[0]


def _start_serialised_moto() -> str:
    pytest.importorskip("moto")
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        os.environ.setdefault(name, value)
    app = _OneDynamoDBRequestAtATime(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop() -> None:
        server.shutdown()
        thread.join(10)

    atexit.register(stop)
    host, port = server.server_address[:2]
    return "dynamodb://?" + urlencode(
        {"region": "us-east-1", "endpoint_url": f"http://{host}:{port}"}
    )
