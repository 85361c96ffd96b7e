"""DynamoDB-specific behaviour of ``polyq_backends.dynamodb`` against moto's server on
loopback (or ``POLYQ_TEST_SQS_URL``'s endpoint), each test in a table of its own."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import boto3
import pytest

from polyq.exceptions import BrokerError, ConfigurationError
from polyq.registry import create_backend
from polyq.testing import services
from polyq_backends.dynamodb import DynamoDBResultBackend


@pytest.fixture
def table() -> str:
    return f"pqt_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def url(table: str) -> str:
    return f"{services.dynamodb_url()}&table={table}"


@pytest.fixture
def ddb(url: str) -> Any:
    query = dict(parse_qsl(urlsplit(url).query))
    return boto3.client("dynamodb", region_name=query["region"], endpoint_url=query["endpoint_url"])


def test_table_is_created_with_ttl(url: str, table: str, ddb: Any) -> None:
    b = create_backend(url)
    assert isinstance(b, DynamoDBResultBackend)
    b.set("k", b"v", ttl=60)
    description = ddb.describe_table(TableName=table)["Table"]
    assert description["KeySchema"] == [{"AttributeName": "k", "KeyType": "HASH"}]
    ttl = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "ttl_at" and ttl["TimeToLiveStatus"] == "ENABLED"
    item = ddb.get_item(TableName=table, Key={"k": {"S": "k"}})["Item"]
    assert int(item["ttl_at"]["N"]) >= time.time() + 59
    assert abs(float(item["e"]["N"]) - (time.time() + 60)) < 5


def test_existing_table_only(url: str) -> None:
    b = create_backend(url, create_table=False)
    with pytest.raises(ConfigurationError, match="does not exist"):
        b.get("k")


def test_expired_items_are_filtered_before_dynamodb_deletes_them(
    url: str, table: str, ddb: Any
) -> None:
    b = create_backend(url)
    b.set("seed", b"x")
    past = time.time() - 3600
    ddb.put_item(
        TableName=table,
        Item={
            "k": {"S": "stale"},
            "v": {"B": b"old"},
            "e": {"N": str(past)},
            "ttl_at": {"N": str(int(past))},
        },
    )
    assert ddb.get_item(TableName=table, Key={"k": {"S": "stale"}}).get("Item"), (
        "the store still holds the expired item (DynamoDB deletes lazily)"
    )
    assert b.get("stale") is None
    assert b.get_many(["stale", "seed"]) == {"seed": b"x"}
    assert b.keys("") == ["seed"]
    assert b.set_if_absent("stale", b"new") is True
    assert b.get("stale") == b"new"


def test_celery_style_url(table: str) -> None:
    b = create_backend(f"dynamodb://AKIAX:s3cr3t@eu-west-3/{table}")
    assert isinstance(b, DynamoDBResultBackend)
    assert b.table == table
    assert b._client.meta.region_name == "eu-west-3"
    assert "s3cr3t" not in b.describe()
    local = create_backend(f"dynamodb://@localhost:8001/{table}")
    assert local._client.meta.endpoint_url == "http://localhost:8001"


def test_unreachable_endpoint_is_a_broker_error(table: str) -> None:
    b = create_backend(
        f"dynamodb://?region=us-east-1&endpoint_url=http://127.0.0.1:9&table={table}",
        max_attempts=1,
        connect_timeout=1,
    )
    with pytest.raises(BrokerError, match=r"127\.0\.0\.1:9"):
        b.get("k")


def test_value_over_the_item_limit(url: str) -> None:
    b = create_backend(url)
    with pytest.raises(BrokerError, match="400 KB"):
        b.set("big", b"x" * 410_000)
    b.set("fits", b"x" * 300_000)
    assert b.get("fits") == b"x" * 300_000


def test_set_replaced_by_a_value_and_back(url: str) -> None:
    b = create_backend(url)
    assert b.add_to_set("s", "a") == 1
    b.set("s", b"value")
    assert b.get("s") == b"value"
    assert b.add_to_set("s", "a") == 1, "a set does not continue a value's item"


def test_a_retried_add_counts_its_own_position(url: str) -> None:
    """A write that succeeded but whose reply was lost is retried by botocore; the
    retry must find the call's own token and return its position (not the size by
    then, nor nothing). Likewise a retried winning set_if_absent still wins."""
    b = create_backend(url)
    other = create_backend(url)
    assert b.add_to_set("chord", "m1") == 1
    assert b.add_to_set("chord", "m2") == 2
    lost = {"UpdateItem": 0, "PutItem": 0}

    def lose_the_reply(attempts: int, operation: Any, **_: Any) -> float | None:
        if operation.name in lost and attempts == 1:
            lost[operation.name] += 1
            if operation.name == "UpdateItem":
                # Someone else adds a member between our write and its retry.
                assert other.add_to_set("chord", "m4") == 4
            return 0.0  # retry at once, as after a reply lost on the network
        return None

    b._client.meta.events.register_first("needs-retry.dynamodb", lose_the_reply)
    assert b.add_to_set("chord", "m3") == 3
    assert b.set_if_absent("lock", b"me") is True
    assert lost == {"UpdateItem": 1, "PutItem": 1}, "the retry path was not exercised"
    assert other.set_if_absent("lock", b"someone else") is False
    assert b.add_to_set("chord", "m1") == 4


def test_a_chord_above_the_item_limit_fails_at_send_time(url: str) -> None:
    # Its member set could never fit one 400 KB item: it would never fire.
    from polyq import Polyq, chord
    from polyq.exceptions import ChordError

    broker = f"memory://{uuid.uuid4().hex}"
    app = Polyq("ddb-chord", broker=broker, backend=url)
    try:

        @app.task(name="ddb.add")
        def add(x: int, y: int) -> int:
            return x + y

        limit = app.backend.capabilities.max_chord_size
        assert limit == 4_000
        with pytest.raises(ChordError, match="max_chord_size"):
            chord([add.s(i, i) for i in range(limit + 1)])(add.s(0))
        assert app.transport.size(app.conf.task_default_queue) == 0
    finally:
        app.close()
