"""polyq.message: the task envelope on the wire."""

import pickle
import time

import pytest

from polyq import message
from polyq.exceptions import ContentDisallowed, DecodeError
from polyq.message import RESERVED_HEADERS, TaskMessage, decode, encode, peek
from polyq.transport import Delivery, OutgoingMessage

JSON = frozenset({"application/json"})

#: Set when a malicious pickle is loaded: it must never be.
UNPICKLED: list[str] = []


def _mark_unpickled() -> None:
    UNPICKLED.append("loaded")


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (_mark_unpickled, ())


def _deliver(out: OutgoingMessage, count: int = 1) -> Delivery:
    """What a transport would hand back for ``out``."""
    return Delivery(
        queue=out.queue,
        message_id=out.message_id,
        body=out.body,
        headers=dict(out.headers),
        delivery_count=count,
        priority=out.priority,
    )


def test_round_trip_keeps_every_field() -> None:
    eta = time.time() + 60
    sent = TaskMessage(
        task="proj.tasks.add",
        args=[1, "two", [3.5, None]],
        kwargs={"flag": True, "name": "héllo ✓"},
        retries=2,
        eta=eta,
        expires=eta + 3600,
        root_id="root",
        parent_id="parent",
        group_id="group",
        group_index=3,
        group_size=10,
        time_limit=30.0,
        soft_time_limit=25.5,
        ignore_result=True,
        options={"link": [{"task": "proj.tasks.log"}]},
        headers={"traceparent": "00-abc-def-01", "x-custom": "v"},
        queue="high",
        priority=7,
    )
    out = encode(sent, delay=1.5)
    assert out.delay == 1.5
    assert out.priority == 7
    assert out.queue == "high"
    got = decode(_deliver(out, count=3), JSON)
    assert got.delivery_count == 3
    assert got.eta is not None and abs(got.eta - eta) < 1e-3
    assert got.expires is not None and abs(got.expires - (eta + 3600)) < 1e-3
    got.eta, got.expires, got.delivery_count = sent.eta, sent.expires, sent.delivery_count
    assert got == sent


def test_minimal_message_round_trip_uses_defaults() -> None:
    sent = TaskMessage(task="t")
    got = decode(_deliver(encode(sent)), JSON)
    assert (got.task, got.id, got.args, got.kwargs) == ("t", sent.id, [], {})
    assert got.retries == 0
    assert got.eta is None
    assert got.ignore_result is None
    assert got.headers == {}


def test_headers_are_strings_and_name_the_task() -> None:
    out = encode(TaskMessage(task="t", retries=1, group_index=0))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.headers.items())
    assert out.headers["task"] == "t"
    assert out.headers["content-type"] == "application/json"
    assert out.headers["group_index"] == "0", "a zero index must still travel"


@pytest.mark.parametrize("name", sorted(RESERVED_HEADERS))
def test_custom_header_may_not_reuse_an_envelope_name(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        encode(TaskMessage(task="t", headers={name: "x"}))


def test_refused_content_type_is_not_deserialized() -> None:
    out = encode(TaskMessage(task="t"), serializer="pickle")
    delivery = _deliver(out)
    delivery.body = pickle.dumps({"args": [_Exploit()], "kwargs": {}})
    UNPICKLED.clear()
    with pytest.raises(ContentDisallowed):
        decode(delivery, JSON)
    assert UNPICKLED == [], "a refused pickle body was loaded"


def test_refused_content_type_is_not_decompressed_either() -> None:
    delivery = _deliver(encode(TaskMessage(task="t"), serializer="pickle", compression="zlib"))
    delivery.body = b"not zlib at all"
    with pytest.raises(ContentDisallowed):
        decode(delivery, JSON)


def test_accepted_pickle_round_trips() -> None:
    accept = frozenset({"application/x-python-serialize"})
    out = encode(TaskMessage(task="t", args=[{1, 2}]), serializer="pickle")
    assert decode(_deliver(out), accept).args == [{1, 2}]


def test_compression_round_trip() -> None:
    out = encode(TaskMessage(task="t", args=["x" * 10_000]), compression="zlib")
    assert len(out.body) < 1000
    assert decode(_deliver(out), JSON).args == ["x" * 10_000]


def test_foreign_message_is_a_decode_error() -> None:
    foreign = Delivery("q", "m1", b"{}", {"content-type": "application/json"}, 1)
    with pytest.raises(DecodeError):
        peek(foreign)
    with pytest.raises(DecodeError):
        decode(foreign, JSON)


def test_garbage_body_is_a_decode_error() -> None:
    delivery = _deliver(encode(TaskMessage(task="t")))
    delivery.body = b"\xff not json"
    with pytest.raises(DecodeError):
        decode(delivery, JSON)


def test_peek_reads_headers_only() -> None:
    sent = TaskMessage(task="proj.t")
    delivery = _deliver(encode(sent))
    delivery.body = b"unreadable"
    assert peek(delivery) == ("proj.t", sent.id)


def test_new_ids_are_unique() -> None:
    assert len({message.new_id() for _ in range(1000)}) == 1000


def test_new_ids_are_uuid4_strings_and_pairs_differ() -> None:
    import uuid

    for _ in range(200):
        task_id, message_id = message.new_ids()
        for text in (task_id, message_id, message.new_id()):
            parsed = uuid.UUID(text)
            assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
        assert task_id != message_id


def test_tuple_args_stay_a_list_under_pickle() -> None:
    sent = TaskMessage(task="t", args=(1, 2), kwargs={"a": 1})  # type: ignore[arg-type]
    out = encode(sent, "pickle")
    got = decode(_deliver(out), frozenset({"application/x-python-serialize"}))
    assert got.args == [1, 2] and got.kwargs == {"a": 1}
