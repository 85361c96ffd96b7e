"""Sending events: the event protocol's names (:data:`EVENT_CHANNEL`, heartbeat
timing, batch limits), :class:`EventDispatcher` (batched broadcasts, used by the
worker) and ``task-sent`` events from clients. Why batches: docs/design/events.md."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from polyq import signals
from polyq.message import decode
from polyq.security import KIND_EVENT, SIGNATURE_HEADER
from polyq.serialization import AUTH_CONTENT_TYPE
from polyq.transport import Delivery

if TYPE_CHECKING:
    from polyq.app import Polyq

__all__ = [
    "ARG_REPR_LIMIT",
    "BATCH_EVENTS",
    "EVENT_CHANNEL",
    "HEARTBEAT_EXPIRY",
    "HEARTBEAT_INTERVAL",
    "MAX_BATCH_BYTES",
    "SIGNED_OVERHEAD",
    "EventDispatcher",
    "decode_events",
    "default_hostname",
    "enable_sent_events",
    "message_fields",
]

logger = logging.getLogger("polyq.events")

EVENT_CHANNEL = "polyq.events"
#: Seconds between two ``worker-heartbeat`` events of a worker.
HEARTBEAT_INTERVAL = 2.0
#: A worker is offline when no heartbeat came for this many heartbeat intervals.
HEARTBEAT_EXPIRY = 3.0
#: One broadcast carries at most this many bytes of events (SQL brokers cap at 256 KiB).
MAX_BATCH_BYTES = 128 * 1024
#: Events per broadcast at most (then split further if the bytes exceed MAX_BATCH_BYTES).
BATCH_EVENTS = 256
#: Bytes kept free in a batch for its signature line when signing is on (an RSA-4096
#: signature line is under 900 bytes).
SIGNED_OVERHEAD = 2048
#: Repr of arguments in events is cut to this many characters.
ARG_REPR_LIMIT = 1024


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= ARG_REPR_LIMIT else text[: ARG_REPR_LIMIT - 3] + "..."


def message_fields(delivery: Delivery, accept: frozenset[str]) -> dict[str, Any]:
    """Event fields describing a task message: args and kwargs (as short reprs),
    retries, eta, expires, root and parent ids. Only called when events are on:
    it decodes the body, which the worker otherwise leaves to the pool."""

    headers = delivery.headers
    fields: dict[str, Any] = {
        "queue": delivery.queue,
        "retries": int(headers.get("retries", 0) or 0),
        "eta": headers.get("eta") or None,
        "expires": headers.get("expires") or None,
        "root_id": headers.get("root_id") or None,
        "parent_id": headers.get("parent_id") or None,
    }
    content_type = headers.get("content-type")
    if content_type == AUTH_CONTENT_TYPE:
        # For display only (the pool verifies before running): the body's own type.
        content_type = _signed_type(headers.get(SIGNATURE_HEADER))
    try:
        if content_type == "application/json" and not headers.get("compression"):
            # The common case, without building a whole TaskMessage (a third of the cost).
            body = json.loads(delivery.body)
            args, kwargs = body.get("args", []), body.get("kwargs", {})
        else:
            message = decode(delivery, accept)
            args, kwargs = message.args, message.kwargs
    except Exception:  # an event must never stop a task; the worker reports bad messages
        return fields
    fields["args"] = _short_repr(args)
    fields["kwargs"] = _short_repr(kwargs)
    return fields


def _signed_type(signature: str | None) -> str | None:
    try:
        found = json.loads(signature or "").get("type")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


class EventDispatcher:
    """Sends events (``task-received``, ``worker-heartbeat``, ...) as batched JSON broadcasts.

    ``send`` is cheap and never raises; call :meth:`close` to flush the last
    events (the worker does, before closing its broker connection).
    """

    def __init__(
        self,
        app: Polyq,
        hostname: str,
        enabled: bool,
        *,
        flush_interval: float = 0.2,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.app = app
        self.hostname = hostname
        self.enabled = enabled and app.transport.capabilities.broadcast
        if enabled and not self.enabled:
            logger.warning(
                "events requested but broker %s cannot broadcast; events are off",
                app.transport.describe(),
            )
        self.flush_interval = flush_interval
        self.heartbeat_interval = heartbeat_interval
        self._buffer: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._info: Callable[[], dict[str, Any]] | None = None
        #: Events and broadcasts sent so far (the batching ratio, for tests and benchmarks).
        self.sent = 0
        self.broadcasts = 0

    def send(self, type_: str, **fields: Any) -> None:
        """Queue one event for the next broadcast; never raises (a monitor must not
        break the worker)."""
        if not self.enabled or self._closed.is_set():
            return
        fields["type"] = type_
        fields["hostname"] = self.hostname
        fields["timestamp"] = time.time()
        fields["pid"] = pid = os.getpid()
        with self._lock:
            self._buffer.append(fields)  # a fresh dict: ** built it for this call
            if self._thread is None or self._pid != pid:
                self._start_thread()

    def start(self, info: Callable[[], dict[str, Any]] | None = None) -> None:
        """Announce the worker (``worker-online``) and send ``worker-heartbeat``
        every ``heartbeat_interval`` with the fields ``info()`` returns."""
        if not self.enabled:
            return
        self._info = info
        self.send("worker-online", **self._worker_fields())

    def _worker_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"freq": self.heartbeat_interval}
        try:
            fields["loadavg"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
        if self._info is not None:
            try:
                fields.update(self._info())
            except Exception:
                logger.debug("heartbeat fields failed", exc_info=True)
        return fields

    def _start_thread(self) -> None:
        # Called with the lock held; a forked child gets a fresh buffer and thread.
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._buffer = self._buffer[-1:]
        self._thread = threading.Thread(target=self._run, name="polyq-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_interval
        while not self._closed.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._info is not None and time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.heartbeat_interval
                self.send("worker-heartbeat", **self._worker_fields())
            self.flush()

    def flush(self) -> None:
        """Broadcast the buffered events now (in as few broadcasts as fit)."""
        with self._lock:
            events, self._buffer = self._buffer, []
        if not events:
            return
        limit = self.app.transport.capabilities.max_message_size or MAX_BATCH_BYTES
        limit = min(limit, MAX_BATCH_BYTES)
        if self.app.security is not None:
            limit -= SIGNED_OVERHEAD  # room for the signature line in front of the batch
        for start in range(0, len(events), BATCH_EVENTS):
            self._send_batch(events[start : start + BATCH_EVENTS], limit)

    def _send_batch(self, events: list[dict[str, Any]], limit: int) -> None:
        # One dumps() per batch (much cheaper than one per event); halve a batch
        # that comes out too big for the broker.
        data = json.dumps(events, default=str, separators=(",", ":")).encode()
        if len(data) > limit and len(events) > 1:
            half = len(events) // 2
            self._send_batch(events[:half], limit)
            self._send_batch(events[half:], limit)
            return
        security = self.app.security
        if security is not None:
            data = security.signer.sign_broadcast(KIND_EVENT, data)
        try:
            self.app.transport.broadcast(EVENT_CHANNEL, data)
            self.sent += len(events)
            self.broadcasts += 1
        except Exception:
            logger.debug("%d events not sent", len(events), exc_info=True)

    def close(self) -> None:
        """Send ``worker-offline`` (if :meth:`start` was called) and flush; idempotent."""
        if not self.enabled or self._closed.is_set():
            return
        if self._info is not None:
            self.send("worker-offline", **self._worker_fields())
        self._closed.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self.flush()


def enable_sent_events(app: Polyq, hostname: str | None = None) -> Callable[[], None]:
    """Send ``task-sent`` for every task this process publishes (what
    ``task_send_sent_event`` asks for); return a function that stops it.

    Signals are process-wide, so with several apps in one process each
    published task is reported on the broker of ``app``.
    """
    dispatcher = EventDispatcher(app, hostname or default_hostname(), True)

    def on_publish(sender: Any = None, body: bytes = b"", headers: Any = None, **kw: Any) -> None:
        headers = dict(headers or {})
        queue = str(kw.get("routing_key") or "")
        delivery = Delivery(queue, headers.get("id", ""), body, headers, 0)
        dispatcher.send(
            "task-sent",
            uuid=headers.get("id"),
            name=headers.get("task", str(sender)),
            **message_fields(delivery, app.accept),
        )

    signals.after_task_publish.connect(on_publish)

    def stop() -> None:
        signals.after_task_publish.disconnect(on_publish)
        dispatcher.close()

    return stop


def default_hostname() -> str:
    """This machine's host name."""
    return socket.gethostname()


# -- receiving ----------------------------------------------------------------


def decode_events(body: bytes) -> list[dict[str, Any]]:
    """The events in one broadcast (a JSON list, or one JSON object); ``[]`` if
    the body is not JSON events."""
    try:
        data = json.loads(body)
    except ValueError:
        return []
    items = data if isinstance(data, list) else [data]
    return [e for e in items if isinstance(e, dict) and isinstance(e.get("type"), str)]
