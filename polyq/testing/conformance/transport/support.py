"""The transport suite's foundation: hooks, fixtures and helpers every topic shares.

:class:`TransportSuiteBase` holds what a plugin's test class may override (the
hooks and timing attributes) and the fixtures (fresh transports, unique queues);
the topic modules of this package add the tests, and
:class:`~polyq.testing.conformance.transport.TransportSuite` gathers them.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from polyq.registry import create_transport
from polyq.transport import Delivery, OutgoingMessage, Transport

__all__ = [
    "Connect",
    "TransportSuiteBase",
    "delays_natively",
    "drain",
    "drain_without_ack",
    "eventually",
    "free_port",
    "make_message",
    "receive_one",
]

#: The ``connect`` fixture: builds a transport for the URL under test.
Connect = Callable[..., Transport]


def make_message(queue: str, body: bytes | None = None, **fields: Any) -> OutgoingMessage:
    """An outgoing message on ``queue`` with a fresh id (and a body naming it)."""
    message_id = fields.pop("message_id", None) or str(uuid.uuid4())
    return OutgoingMessage(
        queue=queue,
        body=body if body is not None else f"body of {message_id}".encode(),
        message_id=message_id,
        **fields,
    )


def receive_one(t: Transport, queues: Sequence[str], timeout: float) -> Delivery | None:
    """The first delivery within ``timeout`` seconds (receive may return early, empty)."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        got = t.receive(queues, 1, max(remaining, 0.0))
        if got:
            assert len(got) == 1, f"receive(max_messages=1) returned {len(got)} deliveries"
            return got[0]
        if remaining <= 0:
            return None


def drain(t: Transport, queues: Sequence[str], count: int, timeout: float) -> list[Delivery]:
    """Receive and ack until ``count`` deliveries arrived or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    got: list[Delivery] = []
    while len(got) < count and time.monotonic() < deadline:
        batch = t.receive(queues, count - len(got), max(0.0, min(1.0, deadline - time.monotonic())))
        if batch:
            t.ack(batch)
        got.extend(batch)
    return got


def eventually(read: Callable[[], Any], expected: Any, timeout: float = 3.0) -> Any:
    """``read()`` once it equals ``expected`` (counts may lag), else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value == expected or time.monotonic() >= deadline:
            return value
        time.sleep(0.1)


def delays_natively(t: Transport, seconds: float) -> bool:
    """Whether ``t`` holds a ``seconds`` delay natively."""
    max_delay = t.capabilities.max_delay
    return max_delay is None or max_delay >= seconds


def free_port() -> int:
    """A loopback TCP port with nothing listening (right now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def drain_without_ack(t: Transport, queue: str, count: int, timeout: float) -> list[Delivery]:
    """Receive without acking until ``count`` deliveries arrived (asserts they did)."""
    deadline = time.monotonic() + timeout
    got: list[Delivery] = []
    while len(got) < count and time.monotonic() < deadline:
        got += t.receive([queue], count - len(got), max(0.0, min(1.0, deadline - time.monotonic())))
    assert len(got) == count, f"expected {count} deliveries, got {len(got)}"
    return got


class TransportSuiteBase:
    """Hooks, fixtures and skip helpers of the transport suite (no tests)."""

    #: The lease (visibility timeout) the tests run with: short, to keep them fast.
    visibility_timeout: ClassVar[float] = 1.5
    #: How late a delayed, nacked or lapsed message may arrive after its time.
    slack: ClassVar[float] = 2.0

    # -- hooks ---------------------------------------------------------------------

    def make_transport(self, url: str, **options: Any) -> Transport:
        """Build the transport under test (default: through the plugin registry)."""
        return create_transport(url, **options)

    def transport_options(self) -> dict[str, Any]:
        """Options given to every transport the suite builds."""
        return {"visibility_timeout": self.visibility_timeout}

    def unreachable_url(self, url: str) -> str | None:
        """The same broker URL pointing at a closed loopback port, or ``None`` to skip
        the test. Handles ``host:port`` URLs and an ``endpoint_url`` query option;
        override it for any other URL shape."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        try:
            if "endpoint_url" in query:
                endpoint = urlsplit(query["endpoint_url"])
                query["endpoint_url"] = urlunsplit(
                    endpoint._replace(netloc=f"127.0.0.1:{free_port()}")
                )
                # Not urlunsplit: it drops the "//" of a URL without a host (sqs://?...).
                return f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"
            # Only a network address is rewritten: ``memory://name`` names no host.
            # (``.port`` raises ValueError on multi-host netlocs, which are skipped too.)
            local = parts.hostname in ("localhost", "127.0.0.1", "::1")
            if parts.port is None and not local:
                return None
        except ValueError:
            return None
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@" if userinfo else ""
        return urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{free_port()}"))

    # -- fixtures ------------------------------------------------------------------

    @pytest.fixture
    def connect(self, transport_url: str) -> Iterator[Connect]:
        """A factory of transports for ``transport_url``, all closed after the test."""
        opened: list[Transport] = []

        def connect(**options: Any) -> Transport:
            t = self.make_transport(transport_url, **{**self.transport_options(), **options})
            opened.append(t)
            return t

        yield connect
        for t in opened:
            with contextlib.suppress(Exception):
                t.close()

    @pytest.fixture
    def transport(self, connect: Connect) -> Transport:
        """A transport for the test (another consumer: call ``connect()``)."""
        return connect()

    @pytest.fixture
    def new_queue(self, connect: Connect) -> Iterator[Callable[[], str]]:
        """A factory of unique queue names, deleted after the test."""
        names: list[str] = []

        def new_queue() -> str:
            names.append(f"pqconf-{uuid.uuid4().hex[:12]}")
            return names[-1]

        yield new_queue
        if names:
            with contextlib.suppress(Exception):
                cleaner = connect()
                for name in names:
                    # Nothing left behind on a shared broker, queue objects included.
                    cleaner.delete_queue(name)

    @pytest.fixture
    def queue(self, new_queue: Callable[[], str]) -> str:
        """A unique queue for the test."""
        return new_queue()

    # -- helpers -------------------------------------------------------------------

    @staticmethod
    def require(t: Transport, capability: str, present: bool | None = None) -> None:
        """Skip unless ``capability`` is declared (or ``present`` says it is usable)."""
        value = getattr(t.capabilities, capability)
        if not (bool(value) if present is None else present):
            pytest.skip(f"{type(t).__name__} declares capabilities.{capability}={value!r}")

    def require_delay(self, t: Transport, seconds: float = 1.0) -> None:
        """Skip unless the transport delays ``seconds`` natively. Only a test of the
        broker's own delay uses it: the end-to-end suites send countdowns to every
        broker, and the core holds what the broker cannot."""
        if not delays_natively(t, seconds):
            pytest.skip(
                f"{type(t).__name__} declares capabilities.max_delay="
                f"{t.capabilities.max_delay!r}: the broker cannot hold a {seconds:g} s delay"
            )
