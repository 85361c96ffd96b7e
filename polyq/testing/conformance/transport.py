"""The transport conformance suite: every promise of :mod:`polyq.transport`, as tests.

Subclass :class:`TransportSuite` and give it a ``transport_url`` fixture::

    class TestMyTransport(TransportSuite):
        @pytest.fixture(scope="class")
        def transport_url(self) -> str:
            return "mybroker://127.0.0.1:9999"

Every test gets fresh transport instances and its own uniquely named queues
(purged afterwards), so the suite can run against a shared broker. A test skips
only when the transport's :class:`~polyq.transport.Capabilities` declare the
feature absent, and the skip reason names that capability.

Hooks a subclass may override: :meth:`~TransportSuite.make_transport` (to test a
class that is not registered under an entry point), :meth:`~TransportSuite.transport_options`
(extra options, e.g. credentials), :meth:`~TransportSuite.unreachable_url` (a URL for
the same broker on a closed port), and the timing attributes
:attr:`~TransportSuite.visibility_timeout` and :attr:`~TransportSuite.slack`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from polyq.exceptions import BrokerError, MessageTooLarge
from polyq.registry import create_transport
from polyq.transport import Capabilities, Delivery, OutgoingMessage, Subscription, Transport

__all__ = ["TransportSuite"]

Connect = Callable[..., Transport]


def _message(queue: str, body: bytes | None = None, **fields: Any) -> OutgoingMessage:
    message_id = fields.pop("message_id", None) or str(uuid.uuid4())
    return OutgoingMessage(
        queue=queue,
        body=body if body is not None else f"body of {message_id}".encode(),
        message_id=message_id,
        **fields,
    )


def _receive_one(t: Transport, queues: Sequence[str], timeout: float) -> Delivery | None:
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


def _drain(t: Transport, queues: Sequence[str], count: int, timeout: float) -> list[Delivery]:
    """Receive and ack until ``count`` deliveries arrived or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    got: list[Delivery] = []
    while len(got) < count and time.monotonic() < deadline:
        batch = t.receive(queues, count - len(got), max(0.0, min(1.0, deadline - time.monotonic())))
        if batch:
            t.ack(batch)
        got.extend(batch)
    return got


def _eventually(read: Callable[[], Any], expected: Any, timeout: float = 3.0) -> Any:
    """``read()`` once it equals ``expected`` (counts may lag), else its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if value == expected or time.monotonic() >= deadline:
            return value
        time.sleep(0.1)


def _delays(t: Transport, seconds: float) -> bool:
    """Whether ``t`` holds a ``seconds`` delay natively."""
    max_delay = t.capabilities.max_delay
    return max_delay is None or max_delay >= seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class TransportSuite:
    """Conformance tests for a transport plugin; subclass it with a ``transport_url`` fixture."""

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
                    endpoint._replace(netloc=f"127.0.0.1:{_free_port()}")
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
        return urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{_free_port()}"))

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
        """A factory of unique queue names, purged after the test."""
        names: list[str] = []

        def new_queue() -> str:
            names.append(f"pqconf-{uuid.uuid4().hex[:12]}")
            return names[-1]

        yield new_queue
        if names:
            with contextlib.suppress(Exception):
                cleaner = connect()
                for name in names:
                    cleaner.purge(name)
                    if cleaner.capabilities.dead_letter:
                        cleaner.purge_dead_letters(name)

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
        """Skip unless the transport delays ``seconds`` natively."""
        self.require(t, "max_delay", _delays(t, seconds))

    # -- basics and fidelity (contract point 10) -------------------------------------

    def test_capabilities_are_declared(self, transport: Transport) -> None:
        caps = transport.capabilities
        assert isinstance(caps, Capabilities)
        assert caps.lease in ("timeout", "connection")
        assert caps.max_delay is None or caps.max_delay >= 0
        assert caps.max_message_size is None or caps.max_message_size > 0

    def test_round_trip_is_byte_exact(self, transport: Transport, queue: str) -> None:
        body = bytes(range(256)) * 4
        headers = {
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "X-Mixed-Case": "Value With Spaces  ",
            "x-unicode": "héllo wörld ✓ 日本語 🚀",
            "x-empty": "",
            "x.dotted_name-1": '{"json": [1, 2]}',
        }
        message_id = f"Msg-{uuid.uuid4()}"
        transport.publish([_message(queue, body, message_id=message_id, headers=headers)])
        got = _receive_one(transport, [queue], self.slack)
        assert got is not None, "a published message was not delivered"
        assert got.message_id == message_id
        assert isinstance(got.body, bytes)
        assert got.body == body, "the body was altered in transit"
        assert got.headers == headers, "headers were altered, dropped or added"
        assert got.queue == queue
        assert got.delivery_count == 1
        transport.ack([got])

    def test_large_body(self, transport: Transport, queue: str) -> None:
        limit = transport.capabilities.max_message_size
        size = 1024 * 1024 if limit is None else min(1024 * 1024, limit - 4096)
        body = os.urandom(size)
        transport.publish([_message(queue, body, headers={"k": "v"})])
        got = _receive_one(transport, [queue], self.slack + 5)
        assert got is not None, f"a {size}-byte message was not delivered"
        assert got.body == body
        transport.ack([got])

    def test_batch_publish_delivers_every_message(self, transport: Transport, queue: str) -> None:
        sent = [_message(queue) for _ in range(25)]
        transport.publish(sent)
        got = _drain(transport, [queue], 25, self.slack + 5)
        assert sorted(d.message_id for d in got) == sorted(m.message_id for m in sent)
        assert {d.message_id: d.body for d in got} == {m.message_id: m.body for m in sent}

    def test_close_is_idempotent(self, connect: Connect) -> None:
        t = connect()
        t.close()
        t.close()

    # -- receive ---------------------------------------------------------------------

    def test_receive_nothing_waits_then_returns_empty(
        self, transport: Transport, queue: str
    ) -> None:
        start = time.monotonic()
        assert transport.receive([queue], 10, 1.0) == []
        elapsed = time.monotonic() - start
        assert elapsed >= 0.5, f"receive(wait=1.0) returned after {elapsed:.2f}s: it must block"
        assert elapsed <= 1.0 + self.slack, f"receive(wait=1.0) took {elapsed:.2f}s"

    def test_receive_wakes_when_a_message_arrives(
        self, transport: Transport, connect: Connect, queue: str
    ) -> None:
        producer = connect()
        timer = threading.Timer(0.3, producer.publish, [[_message(queue)]])
        start = time.monotonic()
        timer.start()
        try:
            got = transport.receive([queue], 1, 10.0)
        finally:
            timer.join()
        elapsed = time.monotonic() - start
        assert got, "a message published during receive(wait=10) was not returned"
        assert elapsed <= 0.3 + self.slack, f"receive woke {elapsed - 0.3:.2f}s after publish"
        transport.ack(got)

    def test_max_messages_is_respected(self, transport: Transport, queue: str) -> None:
        transport.publish([_message(queue) for _ in range(5)])
        seen: set[str] = set()
        deadline = time.monotonic() + self.slack + 5
        while len(seen) < 5 and time.monotonic() < deadline:
            batch = transport.receive([queue], 2, 1.0)
            assert len(batch) <= 2, f"receive(max_messages=2) returned {len(batch)}"
            seen.update(d.message_id for d in batch)
            transport.ack(batch)
        assert len(seen) == 5

    # -- durable publish (point 1) ---------------------------------------------------

    def test_publish_outlives_the_producer(self, connect: Connect, queue: str) -> None:
        producer = connect()
        self.require(producer, "durable")
        sent = _message(queue, headers={"a": "1"})
        producer.publish([sent])
        producer.close()
        consumer = connect()
        got = _receive_one(consumer, [queue], self.slack)
        assert got is not None, "a message published then closed was lost"
        assert (got.message_id, got.body, got.headers) == (sent.message_id, sent.body, {"a": "1"})
        consumer.ack([got])

    # -- leased receive (point 2) ----------------------------------------------------

    def test_leased_message_is_hidden_from_other_consumers(
        self, transport: Transport, connect: Connect, queue: str
    ) -> None:
        transport.publish([_message(queue)])
        held = _receive_one(transport, [queue], self.slack)
        assert held is not None
        other = connect()
        assert other.receive([queue], 10, self.visibility_timeout * 0.6) == [], (
            "a leased message was delivered to a second consumer before its lease ended"
        )
        transport.ack([held])

    def test_lease_ends_after_visibility_timeout(
        self, transport: Transport, connect: Connect, queue: str
    ) -> None:
        self.require(transport, "lease", transport.capabilities.lease == "timeout")
        transport.publish([_message(queue)])
        held = _receive_one(transport, [queue], self.slack)
        assert held is not None
        leased_at = time.monotonic()
        other = connect()
        again = _receive_one(other, [queue], self.visibility_timeout + self.slack)
        elapsed = time.monotonic() - leased_at
        assert again is not None, "a message whose lease ended was not delivered again"
        assert again.message_id == held.message_id
        assert elapsed >= self.visibility_timeout - 0.1, (
            f"redelivered {elapsed:.2f}s after the lease began, before visibility_timeout="
            f"{self.visibility_timeout}s"
        )
        assert again.delivery_count == 2
        other.ack([again])

    def test_extend_lease_keeps_message_hidden(
        self, transport: Transport, connect: Connect, queue: str
    ) -> None:
        caps = transport.capabilities
        self.require(transport, "extend_lease", caps.lease == "timeout" and caps.extend_lease)
        transport.publish([_message(queue)])
        held = _receive_one(transport, [queue], self.slack)
        assert held is not None
        other = connect()
        step = self.visibility_timeout / 4
        until = time.monotonic() + 2.5 * self.visibility_timeout
        while time.monotonic() < until:
            transport.extend_lease([held])
            assert other.receive([queue], 1, step) == [], (
                "a message was redelivered while its lease was being extended"
            )
        again = _receive_one(other, [queue], self.visibility_timeout + self.slack)
        assert again is not None, "the lease never ended after extensions stopped"
        assert again.delivery_count == 2
        other.ack([again])

    def test_connection_lease_returns_messages_on_close(self, connect: Connect, queue: str) -> None:
        consumer = connect()
        self.require(consumer, "lease", consumer.capabilities.lease == "connection")
        consumer.publish([_message(queue)])
        held = _receive_one(consumer, [queue], self.slack)
        assert held is not None
        other = connect()
        assert other.receive([queue], 1, self.visibility_timeout + 0.5) == [], (
            "a connection-bound lease ended while its connection was open"
        )
        consumer.close()
        again = _receive_one(other, [queue], self.slack + 3)
        assert again is not None, "closing the consumer did not return its message"
        assert again.message_id == held.message_id
        assert again.delivery_count == 2
        other.ack([again])

    # -- ack / nack (point 3) ----------------------------------------------------------

    def test_ack_removes_for_good(self, transport: Transport, queue: str) -> None:
        transport.publish([_message(queue) for _ in range(3)])
        got = _drain(transport, [queue], 3, self.slack + 3)  # acks, in one call per batch
        assert len(got) == 3
        transport.ack(got)  # a second ack is harmless
        assert _eventually(lambda: transport.size(queue), 0) == 0
        assert transport.receive([queue], 10, self.visibility_timeout + 0.5) == [], (
            "an acked message was delivered again"
        )

    def test_nack_requeues_now(self, transport: Transport, queue: str) -> None:
        transport.publish([_message(queue, b"payload")])
        held = _receive_one(transport, [queue], self.slack)
        assert held is not None
        transport.nack(held)
        again = _receive_one(transport, [queue], self.slack)
        assert again is not None, "a nacked message was not delivered again soon"
        assert (again.message_id, again.body) == (held.message_id, b"payload")
        assert again.delivery_count == 2
        transport.ack([again])

    def test_nack_with_delay(self, transport: Transport, queue: str) -> None:
        self.require_delay(transport)
        transport.publish([_message(queue)])
        held = _receive_one(transport, [queue], self.slack)
        assert held is not None
        nacked_at = time.monotonic()
        transport.nack(held, delay=1.0)
        assert transport.receive([queue], 1, 0.7) == [], "nack(delay=1) redelivered too early"
        again = _receive_one(transport, [queue], 1.0 + self.slack)
        elapsed = time.monotonic() - nacked_at
        assert again is not None, "a message nacked with a delay was lost"
        assert elapsed >= 0.95, f"nack(delay=1) redelivered after {elapsed:.2f}s"
        assert again.message_id == held.message_id
        assert again.delivery_count == 2
        transport.ack([again])

    # -- dead letters (point 6) ------------------------------------------------------

    def test_dead_letter_keeps_message_and_reason(self, transport: Transport, queue: str) -> None:
        self.require(transport, "dead_letter")
        sent = _message(queue, bytes(range(256)), headers={"x-trace": "t-1"})
        transport.publish([sent])
        held = _receive_one(transport, [queue], self.slack)
        assert held is not None
        transport.dead_letter(held, "poison: delivered 11 times")
        assert transport.receive([queue], 1, self.visibility_timeout + 0.5) == [], (
            "a dead-lettered message was delivered again"
        )
        letters = transport.dead_letters(queue)
        assert len(letters) == 1, f"expected one dead letter, found {len(letters)}"
        letter = letters[0]
        assert letter.message_id == sent.message_id
        assert letter.body == sent.body
        assert letter.headers == {"x-trace": "t-1"}
        assert letter.reason == "poison: delivered 11 times"
        assert letter.queue == queue
        assert abs(letter.failed_at - time.time()) < 60, "failed_at is not a Unix time of now"

    def test_replay_dead_letters(self, transport: Transport, queue: str) -> None:
        self.require(transport, "dead_letter")
        sent = [_message(queue, headers={"n": str(i)}) for i in range(2)]
        transport.publish(sent)
        for d in _drain_without_ack(transport, queue, 2, self.slack + 3):
            transport.dead_letter(d, "failed")
        assert len(transport.dead_letters(queue)) == 2
        assert transport.replay_dead_letters(queue, [sent[0].message_id]) == 1
        again = _receive_one(transport, [queue], self.slack)
        assert again is not None, "a replayed dead letter was not delivered"
        assert (again.message_id, again.body, again.headers) == (
            sent[0].message_id,
            sent[0].body,
            {"n": "0"},
        )
        transport.ack([again])
        remaining = transport.dead_letters(queue)
        assert [d.message_id for d in remaining] == [sent[1].message_id]
        assert transport.replay_dead_letters(queue) == 1
        again = _receive_one(transport, [queue], self.slack)
        assert again is not None
        assert again.message_id == sent[1].message_id
        transport.ack([again])
        assert transport.dead_letters(queue) == []

    def test_purge_dead_letters(self, transport: Transport, queue: str) -> None:
        self.require(transport, "dead_letter")
        transport.publish([_message(queue) for _ in range(3)])
        for d in _drain_without_ack(transport, queue, 3, self.slack + 3):
            transport.dead_letter(d, "failed")
        assert transport.purge_dead_letters(queue) == 3
        assert transport.dead_letters(queue) == []
        assert transport.replay_dead_letters(queue) == 0

    # -- delayed delivery (point 4) ----------------------------------------------------

    def test_delayed_message_not_before_its_time(self, transport: Transport, queue: str) -> None:
        self.require_delay(transport)
        start = time.monotonic()
        transport.publish([_message(queue, delay=1.0)])
        got = _receive_one(transport, [queue], 1.0 + self.slack)
        elapsed = time.monotonic() - start
        assert got is not None, f"a 1s delayed message was not delivered within {elapsed:.1f}s"
        assert elapsed >= 0.95, f"a 1s delayed message was delivered after {elapsed:.2f}s"
        transport.ack([got])

    def test_short_delay_is_not_blocked_by_a_long_one(
        self, transport: Transport, queue: str
    ) -> None:
        self.require_delay(transport, 10)
        max_delay = transport.capabilities.max_delay
        long = _message(queue, delay=60.0 if max_delay is None else min(60.0, max_delay))
        short = _message(queue, delay=1.0)
        transport.publish([long])
        transport.publish([short])
        got = _receive_one(transport, [queue], 1.0 + self.slack)
        assert got is not None, "a 1s delay published after a 60s one was held up behind it"
        assert got.message_id == short.message_id
        transport.ack([got])
        assert transport.receive([queue], 1, 0.5) == []

    def test_delayed_message_is_held_by_the_broker(self, connect: Connect, queue: str) -> None:
        producer = connect()
        self.require_delay(producer)
        sent = _message(queue, delay=1.0)
        producer.publish([sent])
        producer.close()
        consumer = connect()
        got = _receive_one(consumer, [queue], 1.0 + self.slack)
        assert got is not None, (
            "a delayed message was lost when its producer closed: it must wait in the broker"
        )
        assert got.message_id == sent.message_id
        consumer.ack([got])

    def test_scheduled_lists_delayed_messages(self, connect: Connect, queue: str) -> None:
        producer = connect()
        self.require_delay(producer, 30)
        self.require(producer, "inspect_scheduled")
        later = _message(queue, delay=30.0, headers={"which": "later"}, priority=0)
        sooner = _message(queue, delay=10.0, headers={"which": "sooner"})
        ready = _message(queue)
        producer.publish([later, sooner, ready])
        inspector = connect()
        now = time.time()
        listed = inspector.scheduled(queue)
        assert [s.message_id for s in listed] == [sooner.message_id, later.message_id]
        assert abs(listed[0].eta - (now + 10)) < 3, "ScheduledMessage.eta is not its Unix due time"
        assert abs(listed[1].eta - (now + 30)) < 3
        assert listed[0].headers == {"which": "sooner"}
        assert listed[0].queue == queue
        assert [s.message_id for s in inspector.scheduled(queue, limit=1)] == [sooner.message_id]

    # -- priority (point 5) ------------------------------------------------------------

    def test_higher_priority_first(self, transport: Transport, queue: str) -> None:
        self.require(transport, "priority")
        priorities = [3, 0, 9, 5, 1, 7, 2, 8, 4, 6]
        for p in priorities:
            transport.publish([_message(queue, priority=p, headers={"p": str(p)})])
        order = []
        for _ in priorities:
            got = _receive_one(transport, [queue], self.slack)
            assert got is not None
            order.append(int(got.headers["p"]))
            assert got.priority == int(got.headers["p"]), "Delivery.priority is not as published"
            transport.ack([got])
        assert order == sorted(priorities, reverse=True), f"delivered in priority order {order}"

    def test_equal_priority_is_first_in_first_out(self, transport: Transport, queue: str) -> None:
        self.require(transport, "priority")
        sent = [_message(queue, priority=4) for _ in range(6)]
        for m in sent:
            transport.publish([m])
        got = [_receive_one(transport, [queue], self.slack) for _ in sent]
        ids = [m.message_id for m in sent]
        received = [ids.index(d.message_id) for d in got if d is not None]
        assert sorted(received) == list(range(6))
        inversions = sum(1 for i, a in enumerate(received) for b in received[i + 1 :] if a > b)
        assert inversions <= 1, f"equal-priority messages came out of order: {received}"
        transport.ack([d for d in got if d is not None])

    # -- queues (point 7) --------------------------------------------------------------

    def test_queues_are_independent(
        self, transport: Transport, new_queue: Callable[[], str]
    ) -> None:
        first, second = new_queue(), new_queue()
        a, b = _message(first), _message(second)
        transport.publish([a, b])
        got = _receive_one(transport, [first], self.slack)
        assert got is not None
        assert got.message_id == a.message_id
        assert got.queue == first
        assert transport.receive([first], 1, 0.3) == []
        transport.ack([got])
        assert _eventually(lambda: transport.size(second), 1) == 1
        assert transport.purge(first) == 0
        assert _eventually(lambda: transport.size(second), 1) == 1, "purge touched another queue"
        got = _receive_one(transport, [second], self.slack)
        assert got is not None
        assert got.message_id == b.message_id
        assert got.queue == second
        transport.ack([got])

    def test_size_counts_ready_delayed_and_leased(self, transport: Transport, queue: str) -> None:
        delayed = _delays(transport, 30.0)
        messages = [_message(queue), _message(queue)]
        if delayed:
            messages.append(_message(queue, delay=30.0))
        transport.publish(messages)
        assert _eventually(lambda: transport.size(queue), len(messages)) == len(messages)
        held = _receive_one(transport, [queue], self.slack)
        assert held is not None
        assert _eventually(lambda: transport.size(queue), len(messages)) == len(messages), (
            "size() must count leased messages"
        )
        transport.ack([held])
        assert _eventually(lambda: transport.size(queue), len(messages) - 1) == len(messages) - 1

    def test_purge_removes_ready_and_delayed(self, transport: Transport, queue: str) -> None:
        messages = [_message(queue), _message(queue)]
        if _delays(transport, 30.0):
            messages.append(_message(queue, delay=30.0))
        transport.publish(messages)
        assert _eventually(lambda: transport.size(queue), len(messages)) == len(messages)
        assert transport.purge(queue) == len(messages)
        assert _eventually(lambda: transport.size(queue), 0) == 0
        assert transport.receive([queue], 10, 0.5) == []
        if transport.capabilities.inspect_scheduled:
            assert transport.scheduled(queue) == [], "purge left delayed messages"

    def test_several_queues_none_starved(
        self, transport: Transport, new_queue: Callable[[], str]
    ) -> None:
        busy, quiet = new_queue(), new_queue()
        transport.publish([_message(busy) for _ in range(40)])
        quiet_messages = [_message(quiet) for _ in range(3)]
        transport.publish(quiet_messages)
        quiet_ids = {m.message_id for m in quiet_messages}
        order: list[Delivery] = []
        for _ in range(10):
            got = _receive_one(transport, [busy, quiet], self.slack)
            assert got is not None
            order.append(got)
            transport.ack([got])
        assert any(d.queue == quiet for d in order), (
            "ten receives from [busy, quiet] never served the quiet queue"
        )
        rest = _drain(transport, [busy, quiet], 43 - len(order), self.slack + 5)
        everything = order + rest
        assert len({d.message_id for d in everything}) == 43
        assert {d.message_id for d in everything if d.queue == quiet} == quiet_ids

    # -- broadcast (point 8) -----------------------------------------------------------

    def test_broadcast_reaches_every_subscriber(self, connect: Connect) -> None:
        sender = connect()
        self.require(sender, "broadcast")
        channel, other = f"pqconf-{uuid.uuid4().hex[:12]}", f"pqconf-{uuid.uuid4().hex[:12]}"
        with contextlib.ExitStack() as stack:
            subs: list[Subscription] = [
                stack.enter_context(connect().subscribe(channel)) for _ in range(2)
            ]
            elsewhere = stack.enter_context(connect().subscribe(other))
            bodies = [b"one", bytes(range(256)), b"three"]
            for body in bodies:
                sender.broadcast(channel, body)
            for sub in subs:
                got = [sub.get(self.slack) for _ in bodies]
                assert got == bodies, f"a subscriber missed or reordered broadcasts: got {got!r}"
            assert elsewhere.get(0.5) is None, "a broadcast reached another channel"
            subs[0].close()
            sender.broadcast(channel, b"four")
            assert subs[1].get(self.slack) == b"four"

    # -- concurrency (point 9) ---------------------------------------------------------

    def test_many_producers_and_consumers(self, connect: Connect, queue: str) -> None:
        producers, consumers = [connect(), connect()], [connect(), connect()]
        per_producer, total = 100, 400
        sent: list[str] = []
        received: Counter[str] = Counter()
        held: set[str] = set()
        overlaps: list[str] = []
        errors: list[BaseException] = []
        lock = threading.Lock()
        done = threading.Event()

        def produce(t: Transport) -> None:
            try:
                for _ in range(per_producer // 10):
                    batch = [_message(queue) for _ in range(10)]
                    t.publish(batch)
                    with lock:
                        sent.extend(m.message_id for m in batch)
            except BaseException as exc:
                errors.append(exc)

        def consume(t: Transport) -> None:
            try:
                while not done.is_set():
                    batch = t.receive([queue], 10, 0.2)
                    with lock:
                        for d in batch:
                            if d.message_id in held:
                                overlaps.append(d.message_id)
                            held.add(d.message_id)
                            received[d.message_id] += 1
                    t.ack(batch)
                    with lock:
                        held.difference_update(d.message_id for d in batch)
                        if sum(received.values()) >= total:
                            done.set()
            except BaseException as exc:
                errors.append(exc)
                done.set()

        threads = [threading.Thread(target=produce, args=(producers[i % 2],)) for i in range(4)]
        threads += [threading.Thread(target=consume, args=(consumers[i % 2],)) for i in range(4)]
        for thread in threads:
            thread.start()
        done.wait(60)
        done.set()
        for thread in threads:
            thread.join(10)
        assert not errors, f"a producer or consumer thread raised: {errors[0]!r}"
        assert len(sent) == total
        missing = set(sent) - set(received)
        assert not missing, f"{len(missing)} of {total} messages were never delivered"
        # A broker that declares may_duplicate (SQS standard queues) may hand out a
        # second copy at any time, even while the first is held; nothing else may.
        if not consumers[0].capabilities.may_duplicate:
            assert not overlaps, f"{len(overlaps)} messages were held by two consumers at once"
            twice = [m for m, n in received.items() if n > 1]
            assert not twice, f"{len(twice)} messages were delivered twice without any failure"

    # -- clear failure (point 11) ------------------------------------------------------

    def test_message_too_large_is_refused_before_sending(
        self, transport: Transport, queue: str
    ) -> None:
        limit = transport.capabilities.max_message_size
        self.require(transport, "max_message_size", limit is not None)
        assert limit is not None
        ok, big = _message(queue, b"small"), _message(queue, b"x" * (limit + 1))
        with pytest.raises(MessageTooLarge):
            transport.publish([ok, big])
        assert transport.receive([queue], 10, 0.5) == [], (
            "part of a batch was sent although publish raised MessageTooLarge"
        )

    def test_unreachable_broker_raises_broker_error(self, transport_url: str, queue: str) -> None:
        url = self.unreachable_url(transport_url)
        if url is None:
            pytest.skip(f"{type(self).__name__}.unreachable_url() has no closed-port variant")
        start = time.monotonic()
        opened: list[Transport] = []

        def publish_to_closed_port() -> None:
            # Either building the transport or publishing may raise: both are clear.
            opened.append(self.make_transport(url, **self.transport_options()))
            opened[0].publish([_message(queue)])

        try:
            with pytest.raises(BrokerError):
                publish_to_closed_port()
        finally:
            for t in opened:
                with contextlib.suppress(Exception):
                    t.close()
        elapsed = time.monotonic() - start
        assert elapsed < 30, f"publishing to a closed port took {elapsed:.0f}s to fail"


def _drain_without_ack(t: Transport, queue: str, count: int, timeout: float) -> list[Delivery]:
    deadline = time.monotonic() + timeout
    got: list[Delivery] = []
    while len(got) < count and time.monotonic() < deadline:
        got += t.receive([queue], count - len(got), max(0.0, min(1.0, deadline - time.monotonic())))
    assert len(got) == count, f"expected {count} deliveries, got {len(got)}"
    return got
