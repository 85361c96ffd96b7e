"""Delays on SQS beyond what it holds natively: hops past ``max_native_delay`` and
the delay queues of FIFO queues, which refuse per-message delays (see
``docs/design/sqs.md``)."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

import botocore.exceptions

from polyq_transports.sqs.queues import SQSQueues, base_name, sqs_name
from polyq_transports.sqs.wire import BATCH, decode, encode, whole_seconds

__all__ = ["Delays"]

# How often a FIFO queue's delay queue is polled, at most, per queue and process.
_FIFO_DELAY_POLL = 1.0


class Delays:
    """Re-sends messages received before they are due, and forwards the due messages
    of FIFO delay queues into their FIFO queue."""

    def __init__(self, sqs: SQSQueues, max_native_delay: float) -> None:
        self._sqs = sqs
        self.max_native_delay = max_native_delay
        self._lock = threading.Lock()
        self._fifo_polled: dict[str, float] = {}

    def hop(
        self, queue: str, url: str, hops: list[tuple[dict[str, Any], bytes, dict[str, Any]]]
    ) -> None:
        """Re-send messages that are not due yet with the remaining delay, then delete
        the originals (a crash in between leaves a duplicate, never a loss)."""
        entries = []
        for fields, body, _ in hops:
            remaining = float(fields["due"]) - time.time()
            entry: dict[str, Any] = {"MessageBody": encode(dict(fields), body)}
            entry["DelaySeconds"] = whole_seconds(min(remaining, self.max_native_delay), 900)
            entries.append((entry, len(entry["MessageBody"].encode("utf-8"))))
        self._sqs.send(queue, url, entries)
        self._sqs.delete(url, [raw["ReceiptHandle"] for _, _, raw in hops])

    def forward_due(self, queue: str) -> None:
        """Move the due messages of a FIFO queue's delay queue into it (at most once a
        second per queue)."""
        now = time.monotonic()
        with self._lock:
            if now - self._fifo_polled.get(queue, 0.0) < _FIFO_DELAY_POLL:
                return
            self._fifo_polled[queue] = now
        delay_queue = base_name(queue) + "-delay"
        delay_url = self._sqs.queue_url(delay_queue, create=False)
        if delay_url is None:
            return
        while True:
            try:
                reply = self._sqs.call(
                    "receive_message",
                    QueueUrl=delay_url,
                    MaxNumberOfMessages=BATCH,
                    WaitTimeSeconds=0,
                    VisibilityTimeout=60,
                )
            except botocore.exceptions.ClientError as exc:
                raise self._sqs.error(f"ReceiveMessage from {delay_queue!r}", exc) from exc
            raws = reply.get("Messages", [])
            if not raws:
                return
            forward: dict[str, list[tuple[dict[str, Any], int]]] = collections.defaultdict(list)
            later: list[tuple[dict[str, Any], bytes, dict[str, Any]]] = []
            for raw in raws:
                decoded = decode(raw["Body"])
                group_id = sqs_name(queue)
                target = queue
                if decoded is None:
                    # Not ours: forwarded as is, so the core dead-letters it with a reason.
                    text = raw["Body"]
                else:
                    fields, body = decoded
                    if float(fields.get("due", 0)) > time.time():
                        later.append((fields, body, raw))
                        continue
                    group_id = str(fields.get("g") or group_id)
                    target = self._sqs.band(queue, int(fields.get("p", 0)))
                    clean = {k: v for k, v in fields.items() if k not in ("q", "g", "due")}
                    text = encode(clean, body)
                entry = {
                    "MessageBody": text,
                    "MessageGroupId": group_id,
                    # The delay queue's id: a repeated forward is dropped by SQS.
                    "MessageDeduplicationId": raw["MessageId"],
                }
                forward[target].append((entry, len(entry["MessageBody"].encode("utf-8"))))
            for target, entries in forward.items():
                self._sqs.send(target, self._sqs.require_url(target), entries)
            if later:
                self.hop(delay_queue, delay_url, later)
            waiting = {raw["ReceiptHandle"] for _, _, raw in later}
            self._sqs.delete(
                delay_url,
                [r["ReceiptHandle"] for r in raws if r["ReceiptHandle"] not in waiting],
            )
            if len(raws) < BATCH:
                return
