"""Amazon DynamoDB result backend (boto3), for ``dynamodb://`` URLs.

One item per key, expiry filtered on every read, chord sets counted by conditional
``UpdateItem``; ``wait`` polls. The boto3 client set-up is :mod:`polyq_clients.aws`'s
(shared with the SQS transport). URL, options and table layout: ``docs/design/sqs.md``.
"""

from __future__ import annotations

import ipaddress
import math
import secrets
import threading
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import botocore.exceptions

from polyq.backend import BackendCapabilities, ResultBackend
from polyq.exceptions import BrokerError, ConfigurationError
from polyq.url import redact, split_url
from polyq_clients import aws

__all__ = ["DynamoDBResultBackend"]

_DEFAULT_TABLE = "polyq_results"
# DynamoDB's item limit is 400 KB including attribute names and the key.
_ITEM_LIMIT = 400 * 1024
_READ_BATCH = 100
#: The largest chord this backend declares (see ``capabilities``).
_MAX_CHORD = 4_000
_WRITE_BATCH = 25
_LIVE = "(attribute_not_exists(#e) OR #e > :now)"
_GONE = "(attribute_not_exists(#k) OR #e <= :now)"


def _number(value: float) -> dict[str, str]:
    return {"N": str(Decimal(value).quantize(Decimal("0.001")))}


class DynamoDBResultBackend(ResultBackend):
    """Results in a DynamoDB table; see ``docs/design/sqs.md`` for URL, options and design."""

    capabilities = BackendCapabilities(
        push_wait=False,
        durable=True,
        # A chord's member set is one item (two map entries per member id) under
        # DynamoDB's 400 KB item limit: about 4,700 uuid members fit; 4,000 leaves room.
        max_chord_size=_MAX_CHORD,
    )

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        parts = split_url(url)  # a secret key in the user info may hold "/" as typed
        endpoint = options.get("endpoint_url")
        region = options.get("region", options.get("region_name"))
        if parts.hostname:
            # Celery's form: the host is a region, or a local endpoint.
            if parts.hostname == "localhost" or _is_ip(parts.hostname):
                endpoint = endpoint or f"http://{parts.hostname}:{parts.port or 8000}"
            else:
                region = region or parts.hostname
        path_table = parts.path.strip("/")
        self.table = str(options.get("table", options.get("table_name", path_table or "")))
        self.table = self.table or _DEFAULT_TABLE
        self.create_table = bool(options.get("create_table", True))
        self._client: Any = aws.create_client(
            "dynamodb",
            url,
            options,
            region=region,
            endpoint=endpoint,
            read_timeout=10,
            label="DynamoDB",
        )
        self._ready = threading.Event()
        self._lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------------

    def _call(self, operation: str, **params: Any) -> Any:
        """Call DynamoDB on the (existing) table; errors become :class:`BrokerError`,
        except a failed condition, which callers handle."""
        self._ensure_table()
        return self._raw(operation, **params)

    def _raw(self, operation: str, **params: Any) -> Any:
        try:
            return aws.call(self._client, operation, params, "DynamoDB", self.describe)
        except botocore.exceptions.ClientError as exc:
            code = aws.error_code(exc)
            if code == "ConditionalCheckFailedException" or (
                code == "ResourceNotFoundException" and operation == "describe_table"
            ):
                raise
            raise aws.refused("DynamoDB", self.describe(), operation, exc) from exc

    def _ensure_table(self) -> None:
        if self._ready.is_set():
            return
        with self._lock:
            if self._ready.is_set():
                return
            try:
                status = self._raw("describe_table", TableName=self.table)["Table"]["TableStatus"]
            except botocore.exceptions.ClientError as exc:
                if not self.create_table:
                    raise ConfigurationError(
                        f"DynamoDB table {self.table!r} does not exist at {self.describe()}; "
                        "create it (hash key k, string) or let polyq create it "
                        "(create_table=true)"
                    ) from exc
                status = self._create_table()
            deadline = time.monotonic() + 60
            while status != "ACTIVE":
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"DynamoDB table {self.table!r} at {self.describe()} is still "
                        f"{status} after 60 s"
                    )
                time.sleep(0.5)
                status = self._raw("describe_table", TableName=self.table)["Table"]["TableStatus"]
            self._ready.set()

    def _create_table(self) -> str:
        try:
            reply = self._raw(
                "create_table",
                TableName=self.table,
                KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            status = str(reply["TableDescription"]["TableStatus"])
        except BrokerError as exc:
            if "ResourceInUse" not in str(exc):
                raise
            status = "CREATING"  # another process created it first
        while status != "ACTIVE":
            time.sleep(0.5)
            status = self._raw("describe_table", TableName=self.table)["Table"]["TableStatus"]
        try:
            self._raw(
                "update_time_to_live",
                TableName=self.table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": "ttl_at"},
            )
        except BrokerError as exc:
            if "already enabled" not in str(exc).lower():
                raise
        return status

    @staticmethod
    def _expiry(ttl: float | None, now: float) -> dict[str, dict[str, str]]:
        if ttl is None:
            return {}
        at = now + max(0.0, ttl)
        return {"e": _number(at), "ttl_at": {"N": str(math.ceil(at))}}

    def _check_size(self, key: str, value: bytes) -> None:
        if len(value) + len(key.encode()) + 64 > _ITEM_LIMIT:
            raise BrokerError(
                f"a value of {len(value)} bytes for key {key!r} is over DynamoDB's 400 KB "
                "item limit; store large results elsewhere (S3) and return a reference"
            )

    @staticmethod
    def _live(item: Any, now: float) -> bool:
        """Whether a raw item exists and has not expired (whatever DynamoDB's lag)."""
        return bool(item) and ("e" not in item or float(item["e"]["N"]) > now)

    # -- the contract --------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The value under ``key`` (a strongly consistent read), unless expired."""
        reply = self._call(
            "get_item",
            TableName=self.table,
            Key={"k": {"S": key}},
            ConsistentRead=True,
            ProjectionExpression="#v, #e",
            ExpressionAttributeNames={"#v": "v", "#e": "e"},
        )
        item = reply.get("Item")
        if not self._live(item, time.time()) or "v" not in item:
            return None
        return bytes(item["v"]["B"])

    def set(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Store ``value`` under ``key`` (``PutItem``), replacing any value or set."""
        self._check_size(key, value)
        item = {"k": {"S": key}, "v": {"B": value}, **self._expiry(ttl, time.time())}
        self._call("put_item", TableName=self.table, Item=item)

    def delete(self, keys: Sequence[str]) -> None:
        """Remove ``keys`` and their sets (``BatchWriteItem``, 25 per call)."""
        requests = [{"DeleteRequest": {"Key": {"k": {"S": k}}}} for k in dict.fromkeys(keys)]
        self._batch_write(requests)

    def add_to_set(self, key: str, member: str, ttl: float | None = None) -> int:
        """Add ``member`` to the set ``key``; the set's size afterwards (see the docstring)."""
        # Marks this call's write, so a write that succeeded but whose reply was lost
        # (and was retried by botocore, or by the loop below) is recognised as ours.
        token = secrets.token_hex(4)
        for _ in range(50):
            now = time.time()
            expiry = self._expiry(ttl, now)
            # Every SET operand reads the item as it was before this update: the new
            # member's position and the new count are both the old count plus one.
            update = "SET #m.#x = :tok, #p.#x = #n + :one, #n = #n + :one"
            values: dict[str, Any] = {":tok": {"S": token}, ":one": {"N": "1"}}
            values[":now"] = _number(now)
            names = {"#m": "m", "#p": "p", "#n": "n", "#e": "e", "#x": member}
            if expiry:
                update += ", #e = :e, #t = :t"
                values[":e"], values[":t"] = expiry["e"], expiry["ttl_at"]
                names["#t"] = "ttl_at"
            try:
                reply = self._update_set(
                    key,
                    UpdateExpression=update,
                    ConditionExpression=f"attribute_exists(#m) AND attribute_not_exists(#m.#x) "
                    f"AND {_LIVE}",
                    ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValues="UPDATED_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
                return int(reply["Attributes"]["n"]["N"])
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                old: Any = exc.response.get("Item")
            if self._live(old, now) and "m" in old:
                present = old["m"]["M"].get(member)
                if present is None:
                    continue  # the set changed under us (expired, replaced): try again
                if present.get("S") == token:
                    return int(old["p"]["M"][member]["N"])  # our own write, retried
                return int(old["n"]["N"])  # a member added before: not counted again
            # No set yet, or an expired one, or a plain value: start the set afresh.
            item = {
                "k": {"S": key},
                "m": {"M": {member: {"S": token}}},
                "p": {"M": {member: {"N": "1"}}},
                "n": {"N": "1"},
                **expiry,
            }
            try:
                self._call(
                    "put_item",
                    TableName=self.table,
                    Item=item,
                    ConditionExpression=f"{_GONE} OR attribute_not_exists(#m)",
                    ExpressionAttributeNames={"#k": "k", "#e": "e", "#m": "m"},
                    ExpressionAttributeValues={":now": _number(now)},
                )
                return 1
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                    raise
                # Another member created the set first (or our put was retried): add to it.
        raise BrokerError(
            f"DynamoDB at {self.describe()}: could not add to set {key!r} after 50 attempts "
            "under contention"
        )

    def _update_set(self, key: str, **params: Any) -> Any:
        try:
            return self._call("update_item", TableName=self.table, Key={"k": {"S": key}}, **params)
        except BrokerError as exc:
            if "size" not in str(exc).lower():
                raise
            raise BrokerError(
                f"the set {key!r} has outgrown DynamoDB's 400 KB item limit (about 4,000 "
                f"members, such as a chord's header tasks); split the chord: {exc}"
            ) from exc

    def set_if_absent(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """A ``PutItem`` conditioned on ``key`` being absent or expired."""
        self._check_size(key, value)
        now = time.time()
        token = secrets.token_hex(8)
        item = {"k": {"S": key}, "v": {"B": value}, "w": {"S": token}, **self._expiry(ttl, now)}
        try:
            self._call(
                "put_item",
                TableName=self.table,
                Item=item,
                ConditionExpression=_GONE,
                ExpressionAttributeNames={"#k": "k", "#e": "e"},
                ExpressionAttributeValues={":now": _number(now)},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            # A put whose reply was lost and was retried finds its own token: it won.
            old: Any = exc.response.get("Item") or {}
            return bool(old.get("w", {}).get("S") == token)
        return True

    def set_state(self, key: str, value: bytes, ttl: float | None = None, *, final: bool) -> bool:
        """A ``PutItem`` conditioned on the item not holding a live final state (the
        item's ``f`` attribute, written with a final state): one atomic step."""
        self._check_size(key, value)
        now = time.time()
        token = secrets.token_hex(8)
        item = {"k": {"S": key}, "v": {"B": value}, "w": {"S": token}, **self._expiry(ttl, now)}
        if final:
            item["f"] = {"BOOL": True}
        try:
            self._call(
                "put_item",
                TableName=self.table,
                Item=item,
                # Absent, not final, or expired (an item without "e" never expires).
                ConditionExpression="attribute_not_exists(#k) OR attribute_not_exists(#f) "
                "OR (attribute_exists(#e) AND #e <= :now)",
                ExpressionAttributeNames={"#k": "k", "#f": "f", "#e": "e"},
                ExpressionAttributeValues={":now": _number(now)},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ConditionalCheckFailedException":
                raise
            # A put whose reply was lost and was retried finds its own token: it won.
            old: Any = exc.response.get("Item") or {}
            return bool(old.get("w", {}).get("S") == token)
        return True

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Values of the live ``keys`` (``BatchGetItem``, 100 per call, consistent)."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, bytes] = {}
        for i in range(0, len(unique), _READ_BATCH):
            request: dict[str, Any] = {
                self.table: {
                    "Keys": [{"k": {"S": k}} for k in unique[i : i + _READ_BATCH]],
                    "ConsistentRead": True,
                    "ProjectionExpression": "#k, #v, #e",
                    "ExpressionAttributeNames": {"#k": "k", "#v": "v", "#e": "e"},
                }
            }
            pause = 0.05
            while request:
                reply = self._call("batch_get_item", RequestItems=request)
                now = time.time()
                for item in reply.get("Responses", {}).get(self.table, []):
                    if self._live(item, now) and "v" in item:
                        found[item["k"]["S"]] = bytes(item["v"]["B"])
                request = reply.get("UnprocessedKeys") or {}
                if request:
                    time.sleep(pause)  # throttled: back off before asking for the rest
                    pause = min(pause * 2, 1.0)
        return found

    def set_many(self, items: Sequence[tuple[str, bytes]], ttl: float | None = None) -> None:
        """``set`` every pair (``BatchWriteItem``, 25 per call; the last value of a key wins)."""
        latest = dict(items)
        expiry = self._expiry(ttl, time.time())
        for key, value in latest.items():
            self._check_size(key, value)
        self._batch_write(
            [
                {"PutRequest": {"Item": {"k": {"S": k}, "v": {"B": v}, **expiry}}}
                for k, v in latest.items()
            ]
        )

    def _batch_write(self, requests: list[dict[str, Any]]) -> None:
        for i in range(0, len(requests), _WRITE_BATCH):
            pending: dict[str, Any] = {self.table: requests[i : i + _WRITE_BATCH]}
            pause = 0.05
            while pending:
                reply = self._call("batch_write_item", RequestItems=pending)
                pending = reply.get("UnprocessedItems") or {}
                if pending:
                    time.sleep(pause)
                    pause = min(pause * 2, 1.0)

    def keys(self, prefix: str, limit: int = 1000) -> list[str]:
        """Live keys starting with ``prefix`` (a filtered ``Scan``: meant for listings)."""
        found: list[str] = []
        params: dict[str, Any] = {
            "TableName": self.table,
            "ProjectionExpression": "#k",
            "FilterExpression": f"begins_with(#k, :p) AND {_LIVE}",
            "ExpressionAttributeNames": {"#k": "k", "#e": "e"},
            "ExpressionAttributeValues": {":p": {"S": prefix}, ":now": _number(time.time())},
            "ConsistentRead": True,
        }
        if not prefix:
            params["FilterExpression"] = _LIVE
            params["ExpressionAttributeNames"] = {"#e": "e", "#k": "k"}
            del params["ExpressionAttributeValues"][":p"]
        while len(found) < limit:
            reply = self._call("scan", **params)
            found += [item["k"]["S"] for item in reply.get("Items", [])]
            if "LastEvaluatedKey" not in reply:
                break
            params["ExclusiveStartKey"] = reply["LastEvaluatedKey"]
        return sorted(found)[:limit]

    def close(self) -> None:
        """Close the HTTP connection pool; idempotent."""
        self._client.close()

    def describe(self) -> str:
        """The redacted URL with the table and endpoint in use."""
        endpoint = self._client.meta.endpoint_url if hasattr(self, "_client") else "?"
        return redact(f"{self.url} (table {self.table}, endpoint {endpoint})")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
