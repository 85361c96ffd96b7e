"""SQS-specific behaviour of ``polyq_transports.sqs`` against moto's server on loopback
(reached by boto3 over HTTP), or ``POLYQ_TEST_SQS_URL``. Each test has its own queue
prefix; boto3 is used directly only to set up or inspect what polyq cannot express."""

from __future__ import annotations

import collections
import json
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest

from polyq.exceptions import BrokerError, ConfigurationError, InvalidQueueName, MessageTooLarge
from polyq.registry import create_transport
from polyq.testing import services
from polyq.transport import Delivery, OutgoingMessage
from polyq_transports.sqs import SQSTransport


def _msg(queue: str, i: int | str = 0, **kw: Any) -> OutgoingMessage:
    return OutgoingMessage(queue=queue, body=f"body-{i}".encode(), message_id=f"id-{i}", **kw)


@pytest.fixture
def url() -> str:
    return f"{services.sqs_url()}&queue_name_prefix=t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def transport(url: str):
    t = create_transport(url, visibility_timeout=2)
    yield t
    t.close()


@pytest.fixture
def sqs(url: str) -> Any:
    query = dict(parse_qsl(urlsplit(url).query))
    return boto3.client("sqs", region_name=query["region"], endpoint_url=query["endpoint_url"])


def _queue_url(t: SQSTransport, name: str) -> str:
    url = t.sqs_queues.queue_url(name)
    assert url is not None
    return url


def _until(t: SQSTransport, queues: list[str], count: int, timeout: float) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        batch = t.receive(queues, 10, 1.0)
        t.ack(batch)
        got += batch
    return got


# -- URLs, options, errors -----------------------------------------------------------


def test_options_from_url_and_keywords(url: str) -> None:
    t = create_transport(url, visibility_timeout=7.2, max_native_delay=60)
    assert isinstance(t, SQSTransport)
    assert t.prefix.startswith("t")
    assert t._visibility == 8, "the lease is rounded up to whole seconds, never down"
    assert t.capabilities.max_delay == 60.0
    assert SQSTransport.capabilities.max_delay == 900.0, "the class declaration was changed"
    assert t.capabilities.may_duplicate is True


def test_numeric_prefix_stays_a_string(url: str) -> None:
    base = url.split("&queue_name_prefix")[0]
    t = create_transport(base + "&queue_name_prefix=123")
    assert t.prefix == "123"


@pytest.mark.parametrize(
    "options",
    [{"max_native_delay": 0}, {"max_native_delay": 901}, {"visibility_timeout": 50000}],
)
def test_bad_options_are_configuration_errors(url: str, options: dict) -> None:
    with pytest.raises(ConfigurationError):
        create_transport(url, **options)


def test_credentials_in_url_are_never_shown() -> None:
    secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    t = create_transport(
        f"sqs://AKIAEXAMPLE:{secret}@?region=us-east-1&endpoint_url=http://127.0.0.1:9",
        max_attempts=1,
        connect_timeout=1,
    )
    assert secret not in t.describe()
    with pytest.raises(BrokerError) as info:
        t.publish([_msg("q")])
    assert secret not in str(info.value)
    assert "127.0.0.1:9" in str(info.value)


@pytest.mark.parametrize("name", ["billing.high", "billing:high", "billing high", "billing/high"])
def test_names_outside_sqs_charset_are_refused_not_mapped(
    transport: SQSTransport, name: str
) -> None:
    # Mapped, all four were the queue "billing-high": refused, they collide with nothing.
    transport.publish([_msg("billing-high", 1), _msg("jobs.fifo", 2)])
    with pytest.raises(InvalidQueueName, match="SQS allows letters, digits") as info:
        transport.publish([_msg(name, 3)])
    assert repr(name) in str(info.value) and "'billing-high'" in str(info.value)
    with pytest.raises(InvalidQueueName):
        transport.receive([name], 10, 0)
    assert transport.sqs_queues.queue_url("billing-high", create=False).endswith(
        transport.prefix + "billing-high"
    )
    assert set(transport.queues()) == {"billing-high", "jobs.fifo"}
    got = _until(transport, ["billing-high"], 1, 5)
    assert [d.message_id for d in got] == ["id-1"]


def test_overlong_sqs_name_is_refused(transport: SQSTransport) -> None:
    with pytest.raises(InvalidQueueName, match="SQS allows 80"):
        transport.publish([_msg("q" * 80)])


def test_existing_queues_only(url: str, sqs: Any) -> None:
    t = create_transport(url, create_queues=False)
    with pytest.raises(ConfigurationError, match="does not exist"):
        t.publish([_msg("missing")])
    sqs.create_queue(QueueName=t.prefix + "present")
    t.publish([_msg("present")])
    assert _until(t, ["present"], 1, 5)[0].body == b"body-0"
    assert t.size("never-created") == 0


def test_size_limit_read_from_the_queue(transport: SQSTransport, sqs: Any) -> None:
    sqs.create_queue(
        QueueName=transport.prefix + "small", Attributes={"MaximumMessageSize": "4096"}
    )
    limit = (4096 - 1024) * 3 // 4
    fits = OutgoingMessage("small", b"\x00" * (limit - 100), "a", {"h": "v"})
    too_big = OutgoingMessage("small", b"x" * limit, "b", {"h": "v"})
    transport.publish([fits])
    with pytest.raises(MessageTooLarge, match="4096"):
        transport.publish([_msg("small", 1), too_big])
    got = _until(transport, ["small"], 2, 3)
    assert [d.message_id for d in got] == ["a"], "part of a refused batch was sent"


def test_queues_created_with_the_configured_size(url: str, sqs: Any) -> None:
    t = create_transport(url, max_message_size=1048576)
    assert t.capabilities.max_message_size == (1048576 - 1024) * 3 // 4
    body = bytes(range(256)) * 2048  # 512 KiB of binary: 683 KiB in base64
    t.publish([OutgoingMessage("big", body, "big-1")])
    attributes = sqs.get_queue_attributes(
        QueueUrl=_queue_url(t, "big"),
        AttributeNames=["MaximumMessageSize", "MessageRetentionPeriod"],
    )["Attributes"]
    assert attributes["MaximumMessageSize"] == "1048576"
    # SQS's default of 4 days would silently delete a backlog older than that.
    assert attributes["MessageRetentionPeriod"] == "1209600"
    assert _until(t, ["big"], 1, 5)[0].body == body


def test_batches_stay_under_the_batch_payload_limit(transport: SQSTransport) -> None:
    # Ten 100 KB messages cannot share one 256 KiB SendMessageBatch.
    messages = [OutgoingMessage("b", b"y" * 100_000, f"m{i}") for i in range(10)]
    transport.publish(messages)
    got = _until(transport, ["b"], 10, 10)
    assert sorted(d.message_id for d in got) == sorted(m.message_id for m in messages)


# -- wire format ---------------------------------------------------------------------


def test_envelope_on_the_wire(transport: SQSTransport, sqs: Any) -> None:
    headers = {f"h{i}": f"v{i}" for i in range(30)}  # more than SQS's 10 attributes
    transport.publish(
        [
            OutgoingMessage("w", b"text body \xe2\x9c\x93", "text", headers),
            OutgoingMessage("w", b"\x80\x81 msgpack", "binary"),
            OutgoingMessage("w", "\ufffe\uffff\x00".encode(), "nonchars"),
        ]
    )
    raws = sqs.receive_message(
        QueueUrl=_queue_url(transport, "w"), MaxNumberOfMessages=10, WaitTimeSeconds=1
    )["Messages"]
    bodies = {json.loads(r["Body"])["id"]: json.loads(r["Body"]) for r in raws}
    assert bodies["text"]["t"] == "text body ✓"
    assert bodies["text"]["h"] == headers
    assert "b" in bodies["binary"] and "t" not in bodies["binary"]
    assert all("MessageAttributes" not in r for r in raws)
    for r in raws:
        sqs.change_message_visibility(
            QueueUrl=_queue_url(transport, "w"),
            ReceiptHandle=r["ReceiptHandle"],
            VisibilityTimeout=0,
        )
    got = {d.message_id: d for d in _until(transport, ["w"], 3, 5)}
    assert got["nonchars"].body == "\ufffe\uffff\x00".encode()
    assert got["text"].headers == headers


def test_foreign_message_is_delivered_raw(transport: SQSTransport, sqs: Any) -> None:
    transport.publish([_msg("f")])
    _until(transport, ["f"], 1, 3)
    sqs.send_message(QueueUrl=_queue_url(transport, "f"), MessageBody="not polyq")
    got = _until(transport, ["f"], 1, 3)
    assert len(got) == 1
    assert got[0].body == b"not polyq" and got[0].headers == {}


# -- receiving -------------------------------------------------------------------------


def test_receive_takes_more_than_ten(transport: SQSTransport) -> None:
    transport.publish([_msg("many", i) for i in range(25)])
    got = transport.receive(["many"], 25, 1.0)
    assert 10 < len(got) <= 25
    transport.ack(got)


def test_delivery_count_is_the_receive_count(transport: SQSTransport) -> None:
    transport.publish([_msg("c")])
    for expected in (1, 2, 3):
        (d,) = transport.receive(["c"], 1, 2.0)
        assert d.delivery_count == expected
        transport.nack(d)
    (d,) = transport.receive(["c"], 1, 2.0)
    transport.ack([d, d])  # twice: harmless
    transport.nack(d)  # after the ack: the lease is gone, not an error


def test_dead_letter_with_a_long_reason_at_the_size_limit(transport: SQSTransport) -> None:
    limit = transport.capabilities.max_message_size
    assert limit is not None
    body = bytes(range(256)) * ((limit - 200) // 256)
    transport.publish([OutgoingMessage("dl", body, "huge")])
    (d,) = transport.receive(["dl"], 1, 2.0)
    transport.dead_letter(d, "Traceback ...\n" * 5000)
    (letter,) = transport.dead_letters("dl")
    assert letter.body == body and letter.reason.startswith("Traceback")


# -- delays ----------------------------------------------------------------------------


def test_delay_beyond_the_native_limit_hops(url: str) -> None:
    """A lower native limit (an option production honours): a 3.5 s delay takes
    hops of at most 1 s through SQS, is never handed out early, and arrives on time."""
    t = create_transport(url, visibility_timeout=30, max_native_delay=1)
    start = time.time()
    t.publish([OutgoingMessage("eta", b"later", "eta-1", {"k": "v"}, delay=3.5)])
    got: list[Delivery] = []
    while not got and time.time() - start < 8:
        got = t.receive(["eta"], 10, 1.0)
    elapsed = time.time() - start
    assert got, "a delay beyond max_native_delay was lost"
    assert got[0].body == b"later" and got[0].headers == {"k": "v"}
    assert 3.5 <= elapsed < 3.5 + 2.0, f"delivered after {elapsed:.2f}s"
    assert got[0].delivery_count == 1, "the hops counted as deliveries"
    t.ack(got)
    assert t.size("eta") == 0


# -- FIFO ------------------------------------------------------------------------------


def test_fifo_keeps_order_and_delays_through_the_delay_queue(transport: SQSTransport) -> None:
    q = "ordered.fifo"
    transport.publish([_msg(q, i) for i in range(15)])
    start = time.monotonic()
    transport.publish([_msg(q, "late", delay=2)])
    assert transport.size(q) == 16
    got = _until(transport, [q], 15, 5)
    assert [d.message_id for d in got] == [f"id-{i}" for i in range(15)]
    late = _until(transport, [q], 1, 6)
    assert [d.message_id for d in late] == ["id-late"]
    assert time.monotonic() - start >= 2.0
    assert "ordered-fifo-delay" not in transport.queues()


def test_fifo_retry_with_the_same_id_is_not_deduplicated(transport: SQSTransport) -> None:
    q = "retry.fifo"
    transport.publish([_msg(q, 1)])
    transport.publish([_msg(q, 1)])  # same message id: a retry()
    assert len(_until(transport, [q], 2, 4)) == 2


def test_fifo_groups(transport: SQSTransport, sqs: Any) -> None:
    q = "groups.fifo"
    transport.publish([_msg(q, 1, headers={"MessageGroupId": "user-1"})])
    transport.publish([_msg(q, 2)], message_group_id="user-2")
    transport.publish([_msg(q, 3)])
    raws = sqs.receive_message(
        QueueUrl=_queue_url(transport, q),
        MaxNumberOfMessages=10,
        MessageSystemAttributeNames=["MessageGroupId"],
    )["Messages"]
    groups = {json.loads(r["Body"])["id"]: r["Attributes"]["MessageGroupId"] for r in raws}
    assert groups == {"id-1": "user-1", "id-2": "user-2", "id-3": "groups.fifo"}


# -- purge, dead letters, broadcast -----------------------------------------------------


def test_purge_twice_within_a_minute(transport: SQSTransport) -> None:
    transport.publish([_msg("p", i) for i in range(3)])
    assert transport.purge("p") == 3
    transport.publish([_msg("p", i) for i in range(2)])
    assert transport.purge("p") == 2  # AWS would refuse a second PurgeQueue: drained instead
    assert transport.size("p") == 0


def test_broadcast_orphans_are_deleted(url: str, sqs: Any) -> None:
    t = create_transport(url, broadcast_orphan_age=5)
    crashed = t.subscribe("ctl")  # never closed, as if its worker died
    crashed_url = crashed._url
    sqs.tag_queue(QueueUrl=crashed_url, Tags={"polyq-heartbeat": str(int(time.time()) - 60)})
    live = t.subscribe("ctl")
    remaining = sqs.list_queues(QueueNamePrefix=t.prefix + "polyq-bc-ctl-").get("QueueUrls", [])
    assert crashed_url not in remaining and live._url in remaining
    t.broadcast("ctl", b"hello")
    assert live.get(2.0) == b"hello"
    live.close()
    live.close()
    assert not sqs.list_queues(QueueNamePrefix=t.prefix + "polyq-bc-").get("QueueUrls")


def test_calls_are_batched(transport: SQSTransport) -> None:
    calls: collections.Counter[str] = collections.Counter()
    transport._client.meta.events.register(
        "before-call.sqs.*", lambda model, **_: calls.update([model.name])
    )
    transport.publish([_msg("n", i) for i in range(30)])
    got = _until(transport, ["n"], 30, 10)
    transport.extend_lease(got)
    assert len(got) == 30
    assert calls["SendMessageBatch"] == 3
    assert calls["DeleteMessageBatch"] <= 4
    assert calls["ChangeMessageVisibilityBatch"] == 3
    assert calls["ReceiveMessage"] <= 5


# -- priority bands ------------------------------------------------------------------------


def test_priorities_are_off_by_default(transport: SQSTransport) -> None:
    assert transport.capabilities.priority is False
    transport.publish([_msg("np", 1, priority=9)])
    assert transport.queues() == ["np"]


def test_every_priority_level_in_order(url: str) -> None:
    t = create_transport(url, priority_steps="0,1,2,3,4,5,6,7,8,9")
    assert t.capabilities.priority is True
    assert SQSTransport.capabilities.priority is False
    priorities = [3, 0, 9, 5, 1, 7, 2, 8, 4, 6]
    for p in priorities:
        t.publish([_msg("prio", p, priority=p)])
    assert t.size("prio") == 10
    order = []
    for _ in priorities:
        (d,) = t.receive(["prio"], 1, 1.0)
        assert d.queue == "prio"
        order.append(d.priority)
        t.ack([d])
    assert order == sorted(priorities, reverse=True)
    assert t.queues() == ["prio"]


def test_priority_steps_group_levels(url: str) -> None:
    t = create_transport(url, priority_steps=[0, 5, 9])
    t.publish([_msg("steps", p, priority=p) for p in (0, 4, 5, 8, 9)])
    assert t.sqs_queues.band("steps", 4) == "steps" and t.sqs_queues.band("steps", 8) == "steps-p5"
    got = [d.priority for d in _until(t, ["steps"], 5, 5)]
    assert got[0] == 9 and set(got[1:3]) == {5, 8} and set(got[3:]) == {0, 4}
    t.publish([_msg("steps", p, priority=p) for p in (0, 9)])
    assert t.purge("steps") == 2


def test_priority_on_fifo_with_a_delay(url: str) -> None:
    t = create_transport(url, priority_steps="0,9")
    q = "pf.fifo"
    t.publish([_msg(q, "low", priority=0)])
    t.publish([_msg(q, "high", priority=9, delay=1)])
    got = _until(t, [q], 1, 3)
    assert [d.message_id for d in got] == ["id-low"]
    got = _until(t, [q], 1, 5)
    assert [(d.message_id, d.priority) for d in got] == [("id-high", 9)]
    assert t.sqs_queues.queue_url("pf-p9.fifo", create=False) is not None


@pytest.mark.parametrize("steps", ["", "10", "a,b", [-1, 3], 5])
def test_bad_priority_steps(url: str, steps: Any) -> None:
    if steps == "":
        assert create_transport(url, priority_steps=steps).capabilities.priority is False
        return
    with pytest.raises(ConfigurationError, match="priority_steps"):
        create_transport(url, priority_steps=steps)
