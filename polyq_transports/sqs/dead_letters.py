"""Dead letters on SQS: polyq's own ``<queue>-dlq`` queue keeps each failed message
with its reason (a redrive policy cannot record one); listing, replaying and purging
scan that queue (see ``docs/design/sqs.md``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import botocore.exceptions

from polyq.transport import DeadLetter, Delivery, OutgoingMessage
from polyq_transports.sqs.queues import SQSQueues, dlq_name
from polyq_transports.sqs.wire import BATCH, ENVELOPE, Receipt, decode, encode, priority_of

__all__ = ["DeadLetters"]


class DeadLetters:
    """The dead-letter queues of one transport; ``publish`` puts replayed letters
    back on their queue (the transport's own ``publish``)."""

    def __init__(
        self, sqs: SQSQueues, publish: Callable[[Sequence[OutgoingMessage]], None]
    ) -> None:
        self._sqs = sqs
        self._publish = publish

    def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Send the message with ``reason`` to ``<queue>-dlq``, then delete it."""
        fields: dict[str, Any] = {
            ENVELOPE: 1,
            "id": delivery.message_id,
            "h": dict(delivery.headers),
            "reason": reason,
            "failed_at": time.time(),
            "from": delivery.queue,
        }
        if delivery.priority:
            fields["p"] = delivery.priority
        dlq = dlq_name(delivery.queue)
        url = self._sqs.queue_url(dlq, create=True)
        assert url is not None
        body = encode(fields, delivery.body)
        size = len(body.encode("utf-8"))
        limit = self._sqs.max_size(dlq, url)
        if size > limit:
            # The reason pushed it over: keep the message, shorten the reason.
            fields["reason"] = reason[: max(0, len(reason) - (size - limit) - 16)] + "..."
            body = encode(fields, delivery.body)
        self._sqs.send_batch(dlq, url, [{"MessageBody": body}])
        receipt: Receipt = delivery.receipt
        self._sqs.delete(receipt.queue_url, [receipt.handle])

    def _scan(self, name: str) -> tuple[str | None, list[dict[str, Any]]]:
        """Receive every visible message of ``name`` (leased for a minute); the caller
        deletes some and hands the rest to :meth:`_release`."""
        url = self._sqs.queue_url(name, create=False)
        if url is None:
            return None, []
        seen: dict[str, dict[str, Any]] = {}
        while True:
            try:
                reply = self._sqs.call(
                    "receive_message",
                    QueueUrl=url,
                    MaxNumberOfMessages=BATCH,
                    # One second of long polling asks every SQS server, not a sample.
                    WaitTimeSeconds=1 if seen else 0,
                    VisibilityTimeout=60,
                )
            except botocore.exceptions.ClientError as exc:
                raise self._sqs.error(f"ReceiveMessage from {name!r}", exc) from exc
            raws = reply.get("Messages", [])
            if not raws:
                if seen:
                    return url, list(seen.values())
                # An empty short poll on AWS may have missed servers: ask once more.
                reply = self._sqs.call(
                    "receive_message",
                    QueueUrl=url,
                    MaxNumberOfMessages=BATCH,
                    WaitTimeSeconds=1,
                    VisibilityTimeout=60,
                )
                raws = reply.get("Messages", [])
                if not raws:
                    return url, []
            for raw in raws:
                seen[raw["MessageId"]] = raw

    def _release(self, url: str, raws: Iterable[dict[str, Any]]) -> None:
        handles = [r["ReceiptHandle"] for r in raws]
        for i in range(0, len(handles), BATCH):
            self._sqs.call(
                "change_message_visibility_batch",
                QueueUrl=url,
                Entries=[
                    {"Id": str(n), "ReceiptHandle": h, "VisibilityTimeout": 0}
                    for n, h in enumerate(handles[i : i + BATCH])
                ],
            )

    def _dead(self, queue: str, raw: dict[str, Any]) -> DeadLetter:
        decoded = decode(raw["Body"])
        if decoded is None:
            return DeadLetter(
                queue, raw["MessageId"], raw["Body"].encode(), {}, "unreadable", 0.0, raw
            )
        fields, body = decoded
        return DeadLetter(
            queue=queue,
            message_id=str(fields["id"]),
            body=body,
            headers={str(k): str(v) for k, v in fields.get("h", {}).items()},
            reason=str(fields.get("reason", "")),
            failed_at=float(fields.get("failed_at", 0.0)),
            receipt=raw,
        )

    def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The dead letters of ``queue``, oldest first (a scan of ``<queue>-dlq``)."""
        url, raws = self._scan(dlq_name(queue))
        if url is None:
            return []
        self._release(url, raws)
        letters = sorted((self._dead(queue, r) for r in raws), key=lambda d: d.failed_at)
        return letters[:limit]

    def replay_dead_letters(self, queue: str, message_ids: Sequence[str] | None = None) -> int:
        """Publish the chosen dead letters back on ``queue``, then delete them."""
        url, raws = self._scan(dlq_name(queue))
        if url is None:
            return 0
        wanted = None if message_ids is None else set(message_ids)
        chosen, rest = [], []
        for raw in raws:
            letter = self._dead(queue, raw)
            if wanted is None or letter.message_id in wanted:
                chosen.append((letter, raw))
            else:
                rest.append(raw)
        self._release(url, rest)
        if chosen:
            self._publish(
                [
                    OutgoingMessage(queue, d.body, d.message_id, d.headers, 0.0, priority_of(raw))
                    for d, raw in chosen
                ]
            )
            self._sqs.delete(url, [raw["ReceiptHandle"] for _, raw in chosen])
        return len(chosen)

    def purge_dead_letters(self, queue: str) -> int:
        """Delete the dead letters of ``queue`` (received and deleted, so the count is exact)."""
        url, raws = self._scan(dlq_name(queue))
        if url is None:
            return 0
        self._sqs.delete(url, [r["ReceiptHandle"] for r in raws])
        return len(raws)
