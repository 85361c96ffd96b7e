"""RabbitMQ-specific behaviour, on the shared broker (queues deleted afterwards).

The conformance suite covers the contract; these tests cover what only this plugin
has: URL spellings and failover lists, clear errors (credentials never shown),
queues declared with other arguments, delivery counting across connection losses,
the delay levels (hours and days, ordering, purge and size), heartbeats while a
lease is held, unroutable publishes, threads sharing one instance, the
``consumer_timeout`` warning, and refusal after ``fork``; and the fast path (frames
read and written past pika's per-frame machinery) against pika's own.

Every test runs twice: with the fast path (``fast``) and with it forced off by
``POLYQ_AMQP_FASTPATH=0`` (``plain``), so the fallback is proved as well.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pika
import pytest

from polyq.exceptions import BrokerError, ConfigurationError
from polyq.registry import create_transport
from polyq.testing import services
from polyq.transport import OutgoingMessage, Transport
from polyq_transports.rabbitmq import RabbitMQTransport, fastpath
from polyq_transports.rabbitmq.consume import Consumer
from polyq_transports.rabbitmq.fastpath import FastConnection, PlainConnection


def _blocking(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url.split("?", 1)[0])
    if urlsplit(url).path in ("", "/", "//"):
        params.virtual_host = "/"
    return pika.BlockingConnection(params)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _msg(queue: str, body: bytes = b"x", **fields: object) -> OutgoingMessage:
    message_id = str(fields.pop("message_id", uuid.uuid4()))
    return OutgoingMessage(queue=queue, body=body, message_id=message_id, **fields)  # type: ignore[arg-type]


@pytest.fixture(params=["fast", "plain"], autouse=True)
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The delivery path of every transport the test builds."""
    if request.param == "plain":
        monkeypatch.setenv(fastpath.ENV_SWITCH, "0")
    else:
        monkeypatch.delenv(fastpath.ENV_SWITCH, raising=False)
    return str(request.param)


@pytest.fixture(scope="module")
def url() -> str:
    return services.amqp_url()


@pytest.fixture
def connect(url: str) -> Iterator[Callable[..., Transport]]:
    opened: list[Transport] = []

    def connect(**options: object) -> Transport:
        t = create_transport(options.pop("url", url), **options)  # type: ignore[arg-type]
        opened.append(t)
        return t

    yield connect
    for t in opened:
        with contextlib.suppress(Exception):
            t.close()


@pytest.fixture
def queue(url: str) -> Iterator[str]:
    name = f"pqrabbit-{uuid.uuid4().hex[:10]}"
    yield name
    cleaner = RabbitMQTransport(url)
    try:
        cleaner.delete_queue(name)
    finally:
        cleaner.close()
    assert _ready(url, name) is None
    assert _ready(url, f"{name}.delay.00") is None


def _ready(url: str, name: str) -> int | None:
    connection = _blocking(url)
    try:
        frame = connection.channel().queue_declare(name, passive=True)
        return int(frame.method.message_count)
    except pika.exceptions.ChannelClosedByBroker:
        return None
    finally:
        with contextlib.suppress(Exception):
            connection.close()


# -- URLs and errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "vhost"),
    [("", "/"), ("/", "/"), ("//", "/"), ("/%2F", "/"), ("/jobs", "jobs"), ("/a%2Fb", "a/b")],
)
def test_vhost_spellings(path: str, vhost: str) -> None:
    t = RabbitMQTransport(f"amqp://u:p@127.0.0.1:5672{path}")
    assert t._link.params[0].virtual_host == vhost
    t.close()


def test_pyamqp_alias_and_query_options(url: str, queue: str) -> None:
    alias = "pyamqp://" + url.split("://", 1)[1] + "?max_priority=9&heartbeat=10"
    t = create_transport(alias)
    try:
        assert isinstance(t, RabbitMQTransport)
        assert t.heartbeat == 10
        t.publish([_msg(queue, b"via alias")])
        assert [d.body for d in t.receive([queue], 1, 2.0)] == [b"via alias"]
    finally:
        t.close()


def test_wrong_password_is_a_clear_error_without_the_secret(url: str, queue: str) -> None:
    parts = urlsplit(url)
    bad = parts._replace(netloc=f"guest:s3cr3t-wrong@{parts.hostname}:{parts.port}").geturl()
    t = create_transport(bad, connect_timeout=2)
    start = time.monotonic()
    try:
        with pytest.raises(BrokerError) as info:
            t.publish([_msg(queue)])
    finally:
        t.close()
    assert time.monotonic() - start < 10
    text = str(info.value)
    assert "s3cr3t-wrong" not in text
    assert "authentication" in text.lower() or "access" in text.lower(), text


def test_failover_list_skips_a_dead_broker(
    url: str, queue: str, connect: Callable[..., Transport]
) -> None:
    parts = urlsplit(url)
    dead = parts._replace(netloc=f"guest:guest@127.0.0.1:{_free_port()}").geturl()
    t = connect(url=f"{dead};{url}", connect_timeout=3)
    t.publish([_msg(queue, b"through the second url")])
    assert [d.body for d in t.receive([queue], 1, 3.0)] == [b"through the second url"]
    assert "***" in t.describe() or "@" not in t.describe()


def test_queue_declared_with_other_arguments(
    url: str, queue: str, connect: Callable[..., Transport]
) -> None:
    connection = _blocking(url)
    connection.channel().queue_declare(queue, durable=True)  # no x-max-priority
    connection.close()
    with pytest.raises(ConfigurationError) as info:
        connect().publish([_msg(queue)])
    assert queue in str(info.value)
    assert "max_priority" in str(info.value)
    # Matching the existing queue works.
    t = connect(max_priority=0, queue_version=0)
    t.publish([_msg(queue, b"fits")])
    assert [d.body for d in t.receive([queue], 1, 2.0)] == [b"fits"]


def test_unroutable_publish_raises(url: str, queue: str, connect: Callable[..., Transport]) -> None:
    t = connect()
    t.publish([_msg(queue)])
    connection = _blocking(url)
    connection.channel().queue_delete(queue)
    connection.close()
    with pytest.raises(BrokerError, match="unroutable"):
        t.publish([_msg(queue)])
    t.publish([_msg(queue, b"again")])  # the queue is declared anew
    assert [d.body for d in t.receive([queue], 1, 2.0)] == [b"again"]


def test_a_batch_goes_out_in_few_writes_and_in_order(
    queue: str, connect: Callable[..., Transport], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    # pika writes each frame with its own send(); the fast path joins a batch into
    # large writes. Without it, pika writes everything (nothing passes the fast path).
    writes: list[int] = []
    write = FastConnection._write

    def counted(self: FastConnection, data: bytes) -> None:
        writes.append(len(data))
        write(self, data)

    t = connect()
    t.publish([_msg(queue)])
    monkeypatch.setattr(FastConnection, "_write", counted)
    t.publish([_msg(queue, f"{i}".encode(), message_id=f"m{i}") for i in range(3000)])
    monkeypatch.setattr(FastConnection, "_write", write)
    if mode == "fast":
        assert 0 < len(writes) <= 40, len(writes)  # 9,000 frames, about 30 slices
    else:
        assert writes == []
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < 3001 and time.monotonic() < deadline:
        batch = t.receive([queue], 500, 1.0)
        got.extend(d.body for d in batch)
        t.ack(batch)
    assert got == [b"x"] + [f"{i}".encode() for i in range(3000)]


def test_the_fast_path_switch(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(fastpath, "_explained", set())
    monkeypatch.delenv(fastpath.ENV_SWITCH, raising=False)
    low, high = fastpath.TESTED_PIKA
    assert low <= fastpath._pika_version(pika.__version__) < high, "pin the extra and retest"
    assert fastpath.choose() is True
    assert fastpath.choose(0) is False
    assert fastpath.choose("off") is False
    assert fastpath.choose(True) is True
    monkeypatch.setenv(fastpath.ENV_SWITCH, "0")
    assert fastpath.choose() is False
    assert fastpath.choose(1) is True  # the transport option wins over the environment
    monkeypatch.delenv(fastpath.ENV_SWITCH)
    with caplog.at_level(logging.DEBUG, logger="polyq.transports.rabbitmq"):
        assert fastpath.choose(None, version="1.5.0") is False
        assert fastpath.choose(None, version="1.3.2") is False
        assert fastpath.choose(None, version="1.5.0") is False
    outside = [r for r in caplog.records if "outside the tested range" in r.getMessage()]
    assert len(outside) == 2  # once per reason
    t = create_transport(url + ("&" if "?" in url else "?") + "fastpath=false")
    try:
        assert isinstance(t, RabbitMQTransport)
        assert t.fastpath is False
    finally:
        t.close()


def test_deliveries_take_the_chosen_path(
    queue: str, connect: Callable[..., Transport], monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    decoded: list[int] = []
    take = Consumer.take_delivery

    def counted(self: Consumer, *args: Any) -> bool:
        decoded.append(args[1])
        return take(self, *args)

    monkeypatch.setattr(Consumer, "take_delivery", counted)
    t = connect()
    assert isinstance(t, RabbitMQTransport)
    assert t.fastpath is (mode == "fast")
    t.publish([_msg(queue, f"{i}".encode()) for i in range(5)])
    got: list[bytes] = []
    deadline = time.monotonic() + 10
    while len(got) < 5 and time.monotonic() < deadline:
        batch = t.receive([queue], 5, 1.0)
        got.extend(d.body for d in batch)
        t.ack(batch)
    assert sorted(got) == [f"{i}".encode() for i in range(5)]
    expected = FastConnection if mode == "fast" else PlainConnection
    assert type(t._link.conn) is expected
    assert len(decoded) == (5 if mode == "fast" else 0)


def _plain_transport(sock: socket.socket, queued: int = 0) -> object:
    """A pika plaintext transport over ``sock``, as far as ``send_now`` looks at it."""
    from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport

    transport = _AsyncPlaintextTransport.__new__(_AsyncPlaintextTransport)
    transport._sock = sock  # type: ignore[attr-defined]
    transport._state = _AsyncPlaintextTransport._STATE_ACTIVE  # type: ignore[attr-defined]
    transport._tx_buffered_byte_count = queued  # type: ignore[attr-defined]
    return transport


def test_frames_go_to_the_socket_at_once_unless_something_is_queued_before() -> None:
    from polyq_transports.rabbitmq.fastpath import send_now as _send_now

    ours, peer = socket.socketpair()
    with ours, peer:
        ours.setblocking(False)
        peer.settimeout(2.0)
        assert _send_now(_plain_transport(ours), b"frame") == b""
        assert peer.recv(100) == b"frame"
        # Bytes pika still holds must go first: it is given everything.
        assert _send_now(_plain_transport(ours, queued=10), b"later") == b"later"
        # A full socket takes part of it; pika is given the rest, in order.
        big = bytes(range(256)) * 40_000
        rest = _send_now(_plain_transport(ours), big)
        assert 0 < len(rest) < len(big)
        assert big.endswith(rest)
        assert _send_now(_plain_transport(ours), b"more") == b"more"  # EAGAIN
        assert _send_now(object(), b"tls") == b"tls"  # not a plain transport


def test_a_publish_failing_half_way_raises_at_once(
    queue: str, connect: Callable[..., Transport], monkeypatch: pytest.MonkeyPatch
) -> None:
    t = connect(confirm_timeout=20)
    assert isinstance(t, RabbitMQTransport)
    t.publish([_msg(queue)])
    publishing = t._publisher.channel
    assert publishing is not None
    real = publishing.basic_publish
    calls = 0

    def flaky(*args: object, **kwargs: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise pika.exceptions.ChannelWrongStateError("channel closed")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(publishing, "basic_publish", flaky)
    start = time.monotonic()
    with pytest.raises(BrokerError, match="channel closed"):
        t.publish([_msg(queue) for _ in range(10)])
    assert time.monotonic() - start < 5  # not after confirm_timeout


def test_refuses_to_be_used_after_fork(queue: str, connect: Callable[..., Transport]) -> None:
    t = connect()
    assert isinstance(t, RabbitMQTransport)
    t._link.pid = -1  # what a forked child would see
    with pytest.raises(BrokerError, match="fork"):
        t.publish([_msg(queue)])


def test_consumer_timeout_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="polyq.transports.rabbitmq"):
        RabbitMQTransport("amqp://g:g@127.0.0.1//", time_limit=600).close()
        assert not caplog.records
        RabbitMQTransport("amqp://g:g@127.0.0.1//", time_limit=3600).close()
    assert any("consumer_timeout" in r.getMessage() for r in caplog.records)


# -- leases and delivery counts ----------------------------------------------------------


def test_delivery_count_rises_on_every_connection_loss(
    queue: str, connect: Callable[..., Transport]
) -> None:
    connect().publish([_msg(queue, message_id="poison")])
    for expected in (1, 2, 3, 4):
        t = connect()
        got = t.receive([queue], 1, 3.0)
        assert [(d.message_id, d.delivery_count) for d in got] == [("poison", expected)]
        t.close()  # as if the worker process died holding it


def test_heartbeats_keep_a_held_lease(queue: str, connect: Callable[..., Transport]) -> None:
    holder = connect(heartbeat=1)
    holder.publish([_msg(queue)])
    held = holder.receive([queue], 1, 2.0)
    assert held
    time.sleep(3.5)  # more than two heartbeat intervals without calling the transport
    assert connect().receive([queue], 1, 0.5) == []
    holder.ack(held)
    assert holder.size(queue) == 0


def test_prefetch_follows_demand(queue: str, connect: Callable[..., Transport]) -> None:
    t = connect()
    t.publish([_msg(queue) for _ in range(10)])
    assert len(t.receive([queue], 2, 2.0)) == 2
    # Only what was asked for is held: another consumer gets the rest.
    other = connect()
    deadline = time.monotonic() + 3
    got = 0
    while got < 8 and time.monotonic() < deadline:
        batch = other.receive([queue], 10, 0.5)
        other.ack(batch)
        got += len(batch)
    assert got == 8


def test_threads_share_one_transport(queue: str, connect: Callable[..., Transport]) -> None:
    t = connect()
    errors: list[BaseException] = []

    def produce(n: int) -> None:
        try:
            for i in range(50):
                t.publish([_msg(queue, message_id=f"{n}-{i}")])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    seen: set[str] = set()
    deadline = time.monotonic() + 10
    while len(seen) < 400 and time.monotonic() < deadline:
        batch = t.receive([queue], 100, 1.0)
        seen.update(d.message_id for d in batch)
        t.ack(batch)
    assert len(seen) == 400


# -- delays ------------------------------------------------------------------------------


def test_delays_come_out_in_due_order(queue: str, connect: Callable[..., Transport]) -> None:
    t = connect()
    start = time.monotonic()
    t.publish([_msg(queue, message_id="2.0", delay=2.0)])
    t.publish([_msg(queue, message_id="0.5", delay=0.5)])
    t.publish([_msg(queue, message_id="1.3", delay=1.3)])
    arrivals = []
    while len(arrivals) < 3 and time.monotonic() - start < 6:
        for d in t.receive([queue], 3, 1.0):
            arrivals.append((d.message_id, time.monotonic() - start))
            t.ack([d])
    assert [m for m, _ in arrivals] == ["0.5", "1.3", "2.0"]
    for message_id, at in arrivals:
        assert float(message_id) - 0.05 <= at <= float(message_id) + 0.8, arrivals


def test_hours_and_days_wait_in_their_levels(
    url: str, queue: str, connect: Callable[..., Transport]
) -> None:
    t = connect()
    two_hours, three_days = 2 * 3600.0, 3 * 86400.0
    t.publish([_msg(queue, delay=two_hours), _msg(queue, delay=three_days, priority=7)])
    # 72,000 units of 100 ms enter level 16; 2,592,000 units enter level 21.
    assert _ready(url, f"{queue}.delay.16") == 1
    assert _ready(url, f"{queue}.delay.21") == 1
    assert t.size(queue) == 2
    assert t.receive([queue], 10, 0.3) == []
    assert t.purge(queue) == 2
    assert t.size(queue) == 0
    with pytest.raises(ValueError, match="max_delay"):
        t.publish([_msg(queue, delay=RabbitMQTransport.capabilities.max_delay + 3600)])  # type: ignore[operator]


def test_inspecting_scheduled_messages_keeps_their_time(
    queue: str, connect: Callable[..., Transport]
) -> None:
    t = connect()
    start = time.monotonic()
    t.publish([_msg(queue, message_id="soon", delay=1.5, headers={"k": "v"})])
    time.sleep(0.5)
    listed = t.scheduled(queue)
    assert [(s.message_id, s.headers) for s in listed] == [("soon", {"k": "v"})]
    assert abs(listed[0].eta - (time.time() + 1.0)) < 0.5
    got = t.receive([queue], 1, 3.0)
    arrived = time.monotonic() - start
    assert [d.message_id for d in got] == ["soon"]
    assert got[0].delivery_count == 1
    assert 1.45 <= arrived <= 2.2, arrived


def test_missing_vhost_is_a_clear_error(url: str, queue: str) -> None:
    parts = urlsplit(url)
    t = create_transport(parts._replace(path="/no-such-vhost-polyq").geturl(), connect_timeout=2)
    try:
        with pytest.raises(BrokerError, match="vhost"):
            t.publish([_msg(queue)])
    finally:
        t.close()


def test_settling_after_close_is_not_an_error(
    queue: str, connect: Callable[..., Transport]
) -> None:
    t = connect()
    t.publish([_msg(queue), _msg(queue), _msg(queue)])
    got = t.receive([queue], 3, 3.0)
    assert len(got) == 3
    t.close()
    t.ack(got[:1])
    t.nack(got[1])
    t.dead_letter(got[2], "too late")
    other = connect()
    again = []
    deadline = time.monotonic() + 5
    while len(again) < 3 and time.monotonic() < deadline:
        again += other.receive([queue], 3 - len(again), 1.0)
    assert sorted(d.delivery_count for d in again) == [2, 2, 2]


def test_acks_in_any_order_and_grouping_settle_exactly_what_was_acked(
    queue: str, connect: Callable[..., Transport]
) -> None:
    # Runs of acks from the oldest go out as one multiple-ack; anything else one by
    # one. Either way the broker must settle exactly the acked messages: a wrong
    # multiple-ack would settle a message still running, a double ack kill the channel.
    t = connect()
    t.publish([_msg(queue, body=str(i).encode(), message_id=f"m{i}") for i in range(12)])
    got: list = []
    deadline = time.monotonic() + 10
    while len(got) < 12 and time.monotonic() < deadline:
        got += t.receive([queue], 12 - len(got), 1.0)
    by_id = {d.message_id: d for d in got}
    assert len(by_id) == 12
    t.ack([by_id["m2"], by_id["m3"]])  # behind m0, m1: one frame each
    t.ack([by_id["m0"]])  # m0 alone from the oldest: multiple up to m0
    t.nack(by_id["m5"])  # given back one by one, in the middle
    t.ack([by_id["m1"], by_id["m4"], by_id["m6"]])  # m1..m6 now a run
    t.ack([by_id[f"m{i}"] for i in (9, 8)])  # m7 still running
    time.sleep(0.5)
    # Only m5 (given back) comes again; m7, m10, m11 stay leased here.
    again = t.receive([queue], 10, 2.0)
    assert [d.message_id for d in again] == ["m5"]
    assert again[0].delivery_count == 2
    t.ack([*again, by_id["m7"], by_id["m10"], by_id["m11"]])
    time.sleep(0.5)
    t.close()
    other = connect()
    assert other.receive([queue], 10, 1.0) == [], "an acked message came back"
    assert other.size(queue) == 0


# -- reading deliveries without pika's frame objects ----------------------------------


def _wire(
    channel: int,
    body: bytes,
    props: pika.BasicProperties,
    *,
    tag: int = 7,
    consumer_tag: str = "ctag-1",
    redelivered: bool = False,
    frame_max: int = 131072,
) -> bytes:
    """A delivery as RabbitMQ writes it: method, content header, body frames."""
    from pika import frame, spec

    deliver = spec.Basic.Deliver(consumer_tag, tag, redelivered, "", "q")
    out = [
        frame.Method(channel, deliver).marshal(),
        frame.Header(channel, len(body), props).marshal(),
    ]
    step = frame_max - 8
    out += [frame.Body(channel, body[i : i + step]).marshal() for i in range(0, len(body), step)]
    return b"".join(out)


_PROPS = [
    pika.BasicProperties(
        delivery_mode=2, message_id="m1", priority=4, headers={"polyq": "1", "task": "t.add"}
    ),
    pika.BasicProperties(message_id="m2"),  # no headers, no priority
    # Every field polyq skips, around the ones it reads; headers of other types.
    pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={"s": "é", "n": 5, "raw": b"\xff\xfe", "x-polyq-deliveries": 3, "f": {"a": 1}},
        delivery_mode=2,
        priority=9,
        correlation_id="corr",
        reply_to="amq.rabbitmq.reply-to",
        expiration="60000",
        message_id="m3",
        timestamp=1_700_000_000,
        type="kind",
        user_id="guest",
        app_id="app",
    ),
]


@pytest.mark.parametrize("props", _PROPS)
@pytest.mark.parametrize("body", [b"", b"{}", bytes(range(256)) * 1000])
def test_a_delivery_reads_as_pika_reads_it(props: pika.BasicProperties, body: bytes) -> None:
    from pika import frame

    from polyq_transports.rabbitmq.fastpath import decode_delivery as _decode_delivery

    wire = _wire(3, body, props, frame_max=4096)  # the big body spans many frames
    taken: list[tuple] = []

    def take(*args: object) -> bool:
        taken.append(args)
        return True

    assert _decode_delivery(wire, 0, len(wire), 3, take) == len(wire)
    # pika, frame by frame, on the same bytes:
    pos, frames = 0, []
    while pos < len(wire):
        used, value = frame.decode_frame(wire[pos:])
        frames.append(value)
        pos += used
    method, header = frames[0].method, frames[1].properties
    expected = (
        method.consumer_tag,
        method.delivery_tag,
        header.headers or {},
        header.message_id or "",
        header.priority or 0,
        b"".join(f.fragment for f in frames[2:]),
    )
    assert taken == [expected]


def test_what_is_not_a_plain_whole_delivery_is_left_to_pika() -> None:
    from polyq_transports.rabbitmq.fastpath import decode_delivery as _decode_delivery

    def take(*args: object) -> bool:
        raise AssertionError("taken")

    props = _PROPS[0]
    wire = _wire(3, b"body", props)
    assert _decode_delivery(_wire(3, b"b", props, redelivered=True), 0, 999, 3, take) == 0
    method_end = len(wire) - len(b"body") - 8 - len(pika.frame.Header(3, 4, props).marshal())
    for cut in range(method_end, len(wire)):  # the rest is still on its way: wait for it
        assert _decode_delivery(wire[:cut], 0, cut, 3, take) == -1, cut
    assert _decode_delivery(wire, 0, len(wire), 4, take) == 0  # content on another channel
    broken = wire[:-1] + b"\x00"  # a bad frame-end octet
    assert _decode_delivery(broken, 0, len(broken), 3, take) == 0
    assert _decode_delivery(wire, 0, len(wire), 3, lambda *a: False) == 0  # refused


def test_the_connection_reads_fast_and_slow_frames_in_order_from_any_split() -> None:
    # Deliveries the fast path takes and frames it leaves to pika (a heartbeat, a
    # redelivery, a refused consumer) must come out in wire order, whatever the
    # socket reads cut, with every byte counted for the heartbeat checker.
    from pika import frame

    props = _PROPS[0]
    stream = [
        ("fast", _wire(3, b"one", props, tag=1)),
        ("pika", frame.Heartbeat().marshal()),
        ("pika", _wire(3, b"two", props, tag=2, redelivered=True)),
        ("fast", _wire(3, b"three" * 5000, props, tag=3, frame_max=4096)),
        ("pika", _wire(3, b"four", props, tag=4, consumer_tag="cancelled")),
        ("fast", _wire(3, b"", props, tag=5)),
    ]
    wire = b"".join(chunk for _, chunk in stream)
    for split in (1, 7, 100, 4096, len(wire)):
        seen: list[tuple[str, object]] = []
        conn = FastConnection.__new__(FastConnection)
        conn._frame_buffer = b""
        conn._own_reads = True
        conn.bytes_received = 0

        def take(ctag: str, tag: int, *rest: object, seen: list = seen) -> bool:
            if ctag == "cancelled":
                return False
            seen.append(("fast", tag))
            return True

        def process(value: object, seen: list = seen) -> None:
            method = getattr(value, "method", None)
            seen.append(("pika", getattr(method, "delivery_tag", type(value).__name__)))

        conn.deliveries = (3, take)
        conn._process_frame = process  # type: ignore[method-assign]
        for i in range(0, len(wire), split):
            conn._on_data_available(wire[i : i + split])
        fast = [tag for kind, tag in seen if kind == "fast"]
        assert fast == [1, 3, 5], split  # a delivery cut by a read waits for its rest
        assert [tag for _, tag in seen if tag in (1, 2, 3, 4, 5, "Heartbeat")] == [
            1,
            "Heartbeat",
            2,
            3,
            4,
            5,
        ], split
        assert conn.bytes_received == len(wire)
        assert conn._frame_buffer == b""
